"""Supervised training configs: ``jaxprotect train --config experiments/train.py:<variant>``.

Variants:
  fashion_mnist_mini  small CNN on the embedded 10k/2k slice (default, offline)
  fashion_mnist       small CNN on full Fashion-MNIST IDX files (--config.data.dir=DIR)
  fashion_mnist_resnet18  ResNet-18 (CIFAR stem) on full Fashion-MNIST
  cifar10             ResNet-18, 60 epochs, SGD 0.1 cosine, crop+flip (the victim recipe
                      of the unlearnable-examples literature); TFDS or --config.data.dir
                      holding cifar-10-python.tar.gz
  cifar100            the same on CIFAR-100

Sections: ``data``, ``train`` (the model and its recipe), ``runtime``
(``jaxprotect.config.train_config``); override a field with
``--config.train.epochs=10``.
"""

from jaxprotect.config import parse_variant, train_config

VARIANTS = ("fashion_mnist_mini", "fashion_mnist", "fashion_mnist_resnet18", "cifar10", "cifar100")


def get_config(arg: str | None = None):
  variant, _ = parse_variant(arg, VARIANTS, where="experiments/train.py")
  c = train_config()
  t = c.train
  if variant == "fashion_mnist":
    c.data.name = "fashion_mnist"
    t.epochs = 10
  elif variant == "fashion_mnist_resnet18":
    c.data.name = "fashion_mnist"
    t.model = "resnet18"
    t.epochs = 30
    t.optimizer.lr = 0.1
    t.augment = "crop4,flip"
  elif variant in ("cifar10", "cifar100"):
    c.data.name = variant
    t.model = "resnet18"
    t.epochs = 60
    t.optimizer.lr = 0.1
    t.augment = "crop4,flip"
  return c
