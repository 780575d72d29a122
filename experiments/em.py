"""Error-minimizing noise (Huang et al., ICLR 2021):

  jaxprotect poison   --config experiments/em.py:<dataset>[,classwise] --workdir DIR
  jaxprotect evaluate --config experiments/em.py:<same> --config.poison=DIR --workdir DIR2

Datasets:
  fashion_mnist_mini  the embedded 10k/2k slice (offline; small CNN surrogate and victim)
  fashion_mnist_cpu   full Fashion-MNIST with small CNNs (--config.data_dir=DIR)
  fashion_mnist       full Fashion-MNIST, ResNet-18 surrogate and victim (a GPU run)
  cifar10, cifar100, svhn_cropped   the reference setup (TFDS or --config.data_dir)
``,classwise``: class-wise noise (per outer iteration one PGD pass over a fixed 20% subset,
each class taking the mean of its examples' perturbations).
``,random``: the control -- uniform noise in [-eps, eps] (sample- or class-wise), not crafted.
Reference defaults: eps 8/255, 10 surrogate steps + 20 PGD steps of 0.8/255 per outer
iteration over batches of 512, stop when the surrogate's error on the perturbed set is
below 1%; surrogate SGD 0.1, momentum 0.9, weight decay 5e-4, gradient clip 5.
"""

from jaxprotect.unlearnable.crafting import unlearnable_config, with_dataset


def get_config(arg: str | None = None):
  parts = (arg or "fashion_mnist_mini").split(",")
  unknown = set(parts[1:]) - {"classwise", "random"}
  if unknown:
    raise ValueError(f"unknown options {sorted(unknown)} in experiments/em.py:{arg}")
  c = with_dataset(unlearnable_config(), parts[0])
  if "classwise" in parts[1:]:
    c.mode = "class"
  if "random" in parts[1:]:
    c.method = "random"
  return c
