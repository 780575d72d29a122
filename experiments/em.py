"""Error-minimizing noise (Huang et al., ICLR 2021):

  jaxprotect poison   --config experiments/em.py:<dataset>[,classwise][,random] --workdir DIR
  jaxprotect evaluate --config experiments/em.py:<same> --config.evaluate.poison=DIR --workdir DIR2

Datasets:
  fashion_mnist_mini  the embedded 10k/2k slice (offline; small CNN surrogate and victim)
  fashion_mnist_cpu   full Fashion-MNIST with small CNNs (--config.data.dir=DIR)
  fashion_mnist       full Fashion-MNIST, ResNet-18 surrogate and victim (a GPU run)
  cifar10, cifar100, svhn_cropped   the reference setup (TFDS or --config.data.dir)
``,classwise``: class-wise noise (per outer iteration one PGD pass over a fixed 20% subset,
each class taking the mean of its examples' perturbations).
``,random``: the control -- uniform noise in [-eps, eps] (sample- or class-wise), not crafted.
Reference defaults: eps 8/255, 10 surrogate steps + 20 PGD steps of 0.8/255 per outer
iteration over batches of 512, stop when the surrogate's error on the perturbed set is
below 1%; surrogate SGD 0.1, momentum 0.9, weight decay 5e-4, gradient clip 5.

Sections (``jaxprotect.unlearnable.unlearnable_config``): ``data``, ``surrogate``,
``craft``, ``victim``, ``evaluate``, ``export``, ``runtime``. Override a field with e.g.
``--config.craft.eps=0.1``, ``--config.surrogate.model=mlp``,
``--config.surrogate.model_kwargs.width=16``, ``--config.victim.epochs=5``,
``--config.data.train_subset=2000``, ``--config.runtime.num_devices=1``.
"""

from jaxprotect.config import parse_variant
from jaxprotect.unlearnable.crafting import unlearnable_config

VARIANTS = ("fashion_mnist_mini", "fashion_mnist_cpu", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
OPTIONS = ("classwise", "random")


def get_config(arg: str | None = None):
  variant, options = parse_variant(arg, VARIANTS, OPTIONS, where="experiments/em.py")
  c = unlearnable_config()
  if variant in ("fashion_mnist_mini", "fashion_mnist_cpu"):
    # Small CNNs for surrogate and victim: what a CPU can run.
    c.data.name = "fashion_mnist_mini" if variant == "fashion_mnist_mini" else "fashion_mnist"
    c.surrogate.model = "small_cnn"
    c.surrogate.model_kwargs.width = 32  # overridable: --config.surrogate.model_kwargs.width=16
    c.surrogate.optimizer.lr = 0.05
    c.craft.pgd.batch_size = 256
    c.victim.model = "small_cnn"
    c.victim.epochs = 15
    c.victim.optimizer.lr = 0.05
    c.victim.augment = "crop2,flip"
  else:  # ResNet-18 surrogate and victim (unlearnable_config's defaults)
    c.data.name = variant
  if "classwise" in options:
    c.craft.mode = "class"
  if "random" in options:
    c.craft.method = "random"
  return c
