"""The recovery attack of Wang et al. ("Provably Unlearnable Data Examples", NDSS 2025)
against a model trained on protected data:

  jaxprotect recover --config experiments/recover.py[:<variant>] --config.recover.model=RUN_DIR --workdir DIR

RUN_DIR is a finished training run (``jaxprotect train``'s workdir, or the ``poisoned`` /
``clean`` victim directory of ``jaxprotect evaluate``). The attacker holds
``recover.fraction`` of the clean test split; accuracies are reported on the rest.

Variants:
  reference  the authors' recovery script (README, section 4): eta 0.2 .. 2.0 in steps of
             0.2, 20% of the test split for the attacker, fine-tuning batches of 128 with the
             weight change projected; random search over 1000 draws of radius eta (default)
  quick      etas 0.2, 0.5, 1.0, 2.0, 5 fine-tuning epochs, 100 random-search draws
"""

from jaxprotect.config import parse_variant
from jaxprotect.unlearnable.recovery import recover_config


def get_config(arg: str | None = None):
  variant, _ = parse_variant(arg, ("reference", "quick"), where="experiments/recover.py")
  c = recover_config()
  if variant == "quick":
    c.recover.etas = (0.2, 0.5, 1.0, 2.0)
    c.recover.finetune.epochs = 5
    c.recover.random_search.num_draws = 100
  return c
