"""Error-minimizing noise (Huang et al., ICLR 2021):

  jaxprotect poison   --config experiments/em.py:<dataset>[,classwise][,random][,reference] --workdir DIR
  jaxprotect evaluate --config experiments/em.py:<same> --config.evaluate.poison=DIR --workdir DIR2

Datasets:
  fashion_mnist_mini  the embedded 10k/2k slice (offline; small CNN surrogate and victim)
  fashion_mnist_cpu   full Fashion-MNIST with small CNNs (--config.data.dir=DIR)
  fashion_mnist       full Fashion-MNIST, ResNet-18 surrogate and victim (a GPU run)
  cifar10, cifar100, svhn_cropped   the reference setup (TFDS or --config.data.dir)
``,classwise``: class-wise noise (per outer iteration one PGD pass over a fixed 20% subset,
each class taking the mean of its examples' perturbations).
``,random``: the control -- uniform noise in [-eps, eps] (sample- or class-wise), not crafted.
Defaults: eps 8/255, 10 surrogate steps (batch 128) + 20 PGD steps of 0.8/255 per outer
iteration over batches of 512, stop when the surrogate's error on the perturbed set is
below 1%; surrogate SGD 0.1, momentum 0.9, weight decay 5e-4, gradient clip 5; uniform
initial noise; victims ResNet-18, 60 epochs, batch 128, SGD 0.1 cosine, crop 4 + flip,
no gradient clip, trained on x + delta in float.

``,reference``: every field as the authors' code sets it (HanxunH/Unlearnable-Examples at
f347155ee23b002788c6594d1843076d796b2a88; each value below cites its file and line). It
changes: surrogate batch 512 (here 128); class-wise 1 PGD step per batch (here 20), its
stop rule measured on the 20% subset (``craft.stop_on="subset"``) and that subset
re-batched in a new order every outer iteration (``craft.reshuffle="always"``);
sample-wise batches in the fixed order (``"never"``, as today for EM); the noise starts at
zero (``--random_start`` off); victims clip gradients at norm 5; the poisoned images are
stored as uint8 the way the reference does (``evaluate.quantize="floor"``:
``clip(255 x + 255 delta, 0, 255)`` truncated) and only the positive part of the noise
reaches them (``evaluate.drop_negative=True``: ``PoisonCIFAR10`` clamps the noise tensor to
[0, 255] before adding it, a bug its author acknowledged in the repository's issue #13;
``--config.evaluate.drop_negative=false`` adds the whole noise). CIFAR-100: surrogate and
victim weight decay 5e-5, 100 victim epochs, 20 surrogate steps sample-wise; SVHN: 30
victim epochs, no victim augmentation. The Fashion-MNIST variants take the CIFAR-10 values
(there is no reference for them) and keep their models (small CNNs on the CPU variants).
Known differences left: the surrogate's training batches are drawn in a new random order
each epoch (the reference's sample-wise crafting trains on them in the fixed order,
perturbation.py:279/298); learning rates decay per step (the reference's cosine steps per
epoch); the class-wise subset is a plain random 20% (the reference's is stratified,
dataset.py:314-317); the surrogate trains and is evaluated on clip(x + delta, 0, 1) (the
reference adds the noise without clipping, perturbation.py:182/255/317); CIFAR-100's
victim augmentation lacks the reference's RandomRotation(20) (dataset.py:34); there is
no limit on outer iterations in the reference (kept at 100 here).

Sections (``jaxprotect.unlearnable.unlearnable_config``): ``data``, ``surrogate``,
``craft``, ``victim``, ``evaluate``, ``export``, ``runtime``. Override a field with e.g.
``--config.craft.eps=0.1``, ``--config.surrogate.model=mlp``,
``--config.surrogate.model_kwargs.width=16``, ``--config.victim.epochs=5``,
``--config.data.train_subset=2000``, ``--config.runtime.num_devices=1``.
"""

from jaxprotect.config import parse_variant
from jaxprotect.unlearnable.crafting import unlearnable_config

VARIANTS = ("fashion_mnist_mini", "fashion_mnist_cpu", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
OPTIONS = ("classwise", "random", "reference")


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
  if "reference" in options:
    reference(c, variant)
  return c


def reference(c, variant: str) -> None:
  """Sets every field of ``c`` (an EM config of ``variant``, its ``craft.mode`` already set)
  to the value of HanxunH/Unlearnable-Examples (commit f347155). File:line citations are
  of that repository; the shell settings are scripts/<dataset>/min-min-noise/<mode>-noise/."""
  classwise = c.craft.mode == "class"
  cifar100, svhn = variant == "cifar100", variant == "svhn_cropped"
  # Surrogate (perturbation.py builds it from configs/<dataset>/resnet18.yaml; the zoo's resnet18
  # on the GPU variants, the small CNNs stay on the CPU ones).
  s = c.surrogate
  s.batch_size = 512  # perturbation.py:28 (--train_batch_size default, not overridden by the scripts)
  s.augment = ""  # perturbation.py:153/273 no_train_augments=True -> dataset.py:112-113 (ToTensor only)
  s.optimizer.name = "sgd"  # configs/cifar10/resnet18.yaml:14
  s.optimizer.lr = 0.1  # configs/cifar10/resnet18.yaml:15
  s.optimizer.momentum = 0.9  # configs/cifar10/resnet18.yaml:17
  s.optimizer.weight_decay = 5e-5 if cifar100 else 5e-4  # configs/cifar10/resnet18.yaml:16, cifar100/resnet18.yaml:16
  s.optimizer.schedule = "constant"  # the crafting loops never step the scheduler (perturbation.py:143-233, 265-392)
  s.optimizer.grad_clip = 5.0  # configs/cifar10/resnet18.yaml:3, applied in trainer.py:66
  s.seed = 0  # perturbation.py:21 (--seed 0)
  # Crafting.
  k = c.craft
  k.eps = 8 / 255  # exp_setting.sh:12 (epsilon=8), perturbation.py:52
  k.delta_init = "zeros"  # perturbation.py:48 (--random_start off) and 460-463: torch.zeros(noise_shape)
  k.pgd.step_size = 0.8 / 255  # exp_setting.sh:13 (step_size=0.8), perturbation.py:53
  k.pgd.step_size_end = None  # constant step size (toolbox.py:43)
  k.pgd.steps = 1 if classwise else 20  # classwise-noise/exp_setting.sh:14 (num_steps=1), samplewise:14 (=20)
  k.pgd.batch_size = 512  # the same loader as the surrogate's: perturbation.py:28, 146-159, 266-279
  # train_step: perturbation.py:39 (default 10); cifar100/min-min-noise/samplewise-noise/exp_setting.sh:15 (=20)
  k.train_steps = 20 if cifar100 and not classwise else 10
  k.stop_error = 0.01  # exp_setting.sh:15 (universal_stop_error=0.01)
  # Stop rule on the examples the noise is fitted on: class-wise the 20% subset (perturbation.py:225,
  # classwise exp_setting.sh:16 universal_train_target='train_subset'), sample-wise all (perturbation.py:367).
  k.stop_on = "subset" if classwise else "all"
  k.class_subset = 0.2  # perturbation.py:36 (--universal_train_portion 0.2), used at 156 (--use_subset)
  # Batch order: class-wise a shuffled loader over the subset (perturbation.py:156-157 train_shuffle=True),
  # sample-wise the fixed order (perturbation.py:279 train_shuffle=False).
  k.reshuffle = "always" if classwise else "never"
  k.max_iterations = 100  # no limit in the reference (perturbation.py:166/293 loop until the stop rule): a safeguard
  # Victim (main.py with configs/<dataset>/resnet18.yaml, PoisonCIFAR10/100/SVHN of dataset.py).
  v = c.victim
  v.epochs = 100 if cifar100 else 30 if svhn else 60  # configs/cifar10/resnet18.yaml:2, cifar100:2, svhn:2
  v.batch_size = 128  # main.py:30 (--train_batch_size default 128), passed at main.py:148
  v.optimizer.name = "sgd"  # configs/cifar10/resnet18.yaml:14
  v.optimizer.lr = 0.1  # configs/cifar10/resnet18.yaml:15
  v.optimizer.momentum = 0.9  # configs/cifar10/resnet18.yaml:17
  v.optimizer.weight_decay = 5e-5 if cifar100 else 5e-4  # configs/cifar10/resnet18.yaml:16, cifar100:16
  v.optimizer.schedule = "cosine"  # configs/cifar10/resnet18.yaml:19-22 (CosineAnnealingLR, eta_min 0)
  v.optimizer.grad_clip = 5.0  # configs/cifar10/resnet18.yaml:3, applied in trainer.py:66
  # dataset.py:27-28 RandomCrop(32, padding=4) + RandomHorizontalFlip (CIFAR-100 adds RandomRotation(20),
  # dataset.py:34, not available here); SVHN: ToTensor only (dataset.py:37-38).
  v.augment = "none" if svhn else "crop4,flip"
  v.seed = 0  # main.py:19 (--seed 0)
  e = c.evaluate
  e.quantize = "floor"  # dataset.py:433-435: float32 data + noise, np.clip(0, 255), .astype(np.uint8)
  e.drop_negative = True  # dataset.py:385: perturb_tensor.mul(255).clamp_(0, 255) (the noise's negative part is lost)
