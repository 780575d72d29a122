"""Certified (q, eta)-learnability of a trained model (Wang et al., NDSS 2025):

  jaxprotect certify --config experiments/certify.py[:<variant>] --config.certify.model=RUN_DIR --workdir DIR

RUN_DIR is a finished training run: ``jaxprotect train``'s workdir, the ``poisoned`` /
``clean`` victim directory of ``jaxprotect evaluate``, or a finished ``jaxprotect poison``
workdir, whose surrogate at the end of crafting is certified (what the authors' certify.sh
certifies: the surrogate trained on the unlearnable examples). The draws are evaluated on
the clean test split of the data the model was trained on (``--config.certify.test_subset=n``:
its first n images).

Variants:
  reference  the authors' certify.sh: N = 1000 draws, sigma 0.25, q 0.9, confidence
             0.99, the eta sweep 0.001 .. 2.0 of their certify.py (default)
  quick      N = 100 draws (abstains at larger eta: the warning says how many draws
             each eta needs)
"""

from jaxprotect.config import parse_variant
from jaxprotect.unlearnable.certify import certify_config


def get_config(arg: str | None = None):
  variant, _ = parse_variant(arg, ("reference", "quick"), where="experiments/certify.py")
  c = certify_config()
  if variant == "quick":
    c.certify.num_draws = 100
  return c
