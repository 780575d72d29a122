"""Dataset condensation and its privacy ("Privacy for Free", Dong, Zhao & Lyu, ICML 2022;
DC: Zhao, Mopuri & Bilen, ICLR 2021; DSA: Zhao & Bilen, ICML 2021; DM: Zhao & Bilen,
WACV 2023):

  jaxprotect condense --config experiments/condense.py:<dataset>[,dc|dsa|dm][,ipc1|ipc10|ipc50][,reference]
      --workdir DIR

writes the synthetic set (``DIR/synthetic``: npz, a PNG grid per class, manifest), its
test accuracy over three evaluation seeds trained together (``results.json``) and its
nearest real training images under L2 and SSIM with the baselines (``neighbours.json``,
``closest_pairs.png``). Defaults: DM, 10 images per class.

Datasets:
  fashion_mnist_mini  the embedded 10k/2k Fashion-MNIST slice, sized for a CPU: ConvNet
                      width 32 (not 128), 200 DM or 10 DC/DSA iterations (not 20000 / 1000),
                      evaluation 100 epochs for DSA/DM and 50 for DC (not 1000 / 300). A
                      quick check that the pipeline runs, not the paper's numbers;
                      ``,reference`` restores every reference value on this slice.
  fashion_mnist       full Fashion-MNIST from ../shared/data/fashion-mnist (override with
                      --config.data.dir=DIR), the reference settings (a GPU run)
  cifar10             CIFAR-10 (TFDS, or --config.data.dir=DIR), the reference settings
Options:
  dc, dsa, dm         the method (init: noise for DC, real for DSA and DM, as the reference)
  ipc1, ipc10, ipc50  images per class (DC's published Fashion-MNIST accuracies 70.5 / 82.3
                      / 83.6 are reported beside the result)
  reference           the reference's iterations, evaluation epochs and ConvNet width (the
                      full datasets have them already)

Override a field with e.g. ``--config.condense.iterations=50``,
``--config.condense.model_kwargs.width=16``, ``--config.evaluate.epochs=20``,
``--config.data.train_subset=2000``, ``--config.neighbours.ssim=false``,
``--config.runtime.checkpoint.every_iterations=10``.
"""

from jaxprotect.config import parse_variant
from jaxprotect.privacy.condensation import condensation_config

VARIANTS = ("fashion_mnist_mini", "fashion_mnist", "cifar10")
OPTIONS = ("dc", "dsa", "dm", "ipc1", "ipc10", "ipc50", "reference")
# What a CPU can run on the embedded slice (fashion_mnist_mini).
CPU_ITERATIONS = {"dc": 10, "dsa": 10, "dm": 200}
CPU_EPOCHS = {"dc": 50, "dsa": 100, "dm": 100}


def get_config(arg: str | None = None):
  variant, options = parse_variant(arg, VARIANTS, OPTIONS, where="experiments/condense.py")
  methods = [o for o in options if o in ("dc", "dsa", "dm")]
  sizes = [o for o in options if o.startswith("ipc")]
  if len(methods) > 1 or len(sizes) > 1:
    raise ValueError(f"experiments/condense.py: expected at most one method and one ipc option, got {options}")
  c = condensation_config()
  c.data.name = variant
  if methods:
    c.condense.method = methods[0]
  if sizes:
    c.condense.ipc = int(sizes[0][3:])
  if variant == "fashion_mnist":
    c.data.dir = "../shared/data/fashion-mnist"
  if variant == "fashion_mnist_mini" and "reference" not in options:
    c.condense.model_kwargs.width = 32
    c.condense.iterations = CPU_ITERATIONS[c.condense.method]
    c.evaluate.epochs = CPU_EPOCHS[c.condense.method]
  return c
