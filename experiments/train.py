"""Supervised training configs: ``jaxprotect train --config experiments/train.py:<variant>``.

Variants:
  fashion_mnist_mini  small CNN on the embedded 10k/2k slice (default, offline)
  fashion_mnist       small CNN on full Fashion-MNIST IDX files (--config.data_dir=DIR)
  fashion_mnist_resnet18  ResNet-18 (CIFAR stem) on full Fashion-MNIST
  cifar10             ResNet-18, 60 epochs, SGD 0.1 cosine, crop+flip (the victim recipe
                      of the unlearnable-examples literature); TFDS or --config.data_dir
                      holding cifar-10-python.tar.gz
  cifar100            the same on CIFAR-100
"""

from jaxprotect.config import train_config


def get_config(arg: str | None = None):
  c = train_config()
  variant = arg or "fashion_mnist_mini"
  if variant == "fashion_mnist_mini":
    pass
  elif variant == "fashion_mnist":
    c.dataset = "fashion_mnist"
    c.epochs = 10
  elif variant == "fashion_mnist_resnet18":
    c.dataset = "fashion_mnist"
    c.model = "resnet18"
    c.epochs = 30
    c.optimizer.lr = 0.1
    c.augment = "crop4,flip"
  elif variant in ("cifar10", "cifar100"):
    c.dataset = variant
    c.model = "resnet18"
    c.epochs = 60
    c.optimizer.lr = 0.1
    c.augment = "crop4,flip"
  else:
    raise ValueError(f"unknown variant {variant!r} of experiments/train.py")
  return c
