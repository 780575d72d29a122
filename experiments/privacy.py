"""The privacy experiment of "Privacy for Free" (Dong, Zhao, Lyu, ICML 2022) with the
baselines of "No Free Lunch in Privacy for Free" (Carlini, Feldman, Nasr, arXiv
2209.14987): membership inference against networks trained on condensed sets (DSA, DM,
DC), a random real subset of the same size, and the real half pools::

  jaxprotect mia --config experiments/privacy.py[:<variant>] --workdir DIR

Each of ``mia.num_models`` targets trains from its own random half of a candidate pool;
each in turn is attacked with the others as shadow models (LiRA leave-one-out). Every set
type uses the same training recipe (``jaxprotect.privacy.experiment``).

Variants:
  fashion_mnist_mini  the embedded 10k/2k slice, sized for a loaded 2-core CPU (about
                      17 minutes): pool 500 (the first 500 training images; each target
                      trains from 250, about 25 per class, so ipc 10 fits every half and
                      the 16 x 250 = 4000 non-member scores resolve TPR at 0.1% FPR),
                      M = 16 targets, ConvNet width 16 (depth 3, instance norm; width 32
                      measured 2-3x slower), ipc 10; DM 100 iterations (the reference
                      runs 20,000; 0.2-0.3 s an iteration here, 16 condensations per
                      set); sets real, random, dm. DSA and DC are configured (4
                      iterations each, loops (1, 1); DC from noise) but not in
                      ``mia.sets``: the DSA cell (16 condensations and targets) took 11
                      minutes on 2 busy CPU cores; add them with
                      --config.mia.sets=real,random,dm,dsa,dc (finished cells are read
                      back); targets trained 60 epochs (+1) with batch 50 (so a
                      synthetic set of 100 images takes 2 steps an epoch, a real half of
                      250 takes 5), lr x0.1 after half, DSA augmentation; one target per
                      chunk (on XLA:CPU a vmap of 16 ConvNets ran 1.6x slower than the
                      same 16 one after another; the vmapped program is the same).
                      (default)
  fashion_mnist       reference-like settings on full Fashion-MNIST (--config.data.dir,
                      default ../shared/data/fashion-mnist): pool 10,000, M = 16,
                      ConvNet width 128, ipc 10, DM 20,000 iterations, DSA and DC 1000
                      iterations with the reference's loops (10, 50), targets 300 epochs
                      with batch 256, all 16 targets of a set trained together (an
                      accelerator run).

Override a field with e.g. ``--config.mia.sets=real,random,dm``,
``--config.mia.num_models=32``, ``--config.condense.dm.iterations=500``,
``--config.target.epochs=100``.
"""

import pathlib

from jaxprotect.config import parse_variant
from jaxprotect.privacy.experiment import privacy_config

VARIANTS = ("fashion_mnist_mini", "fashion_mnist")
FMNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


def get_config(arg: str | None = None):
  variant, _ = parse_variant(arg, VARIANTS, where="experiments/privacy.py")
  c = privacy_config()
  c.mia.num_models = 16
  c.condense.ipc = 10
  if variant == "fashion_mnist_mini":
    c.data.name = "fashion_mnist_mini"
    c.mia.pool_size = 500
    c.mia.sets = ("real", "random", "dm")
    c.mia.models_per_chunk = 1
    c.target.model_kwargs.width = 16
    c.target.epochs = 60
    c.target.batch_size = 50
    c.condense.dm.iterations = 100
    for method in ("dsa", "dc"):  # configured, not in mia.sets (see the docstring)
      c.condense[method].iterations = 4
      c.condense[method].outer_loop = 1
      c.condense[method].inner_loop = 1
  else:
    c.data.name = "fashion_mnist"
    c.data.dir = str(FMNIST_DIR)
    c.mia.pool_size = 10000
    c.mia.sets = ("real", "random", "dsa", "dm", "dc")
    c.target.model_kwargs.width = 128
    c.target.epochs = 300
    c.target.batch_size = 256
  return c
