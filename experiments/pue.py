"""Provably unlearnable examples (PUE; Wang et al., "Provably Unlearnable Data Examples",
NDSS 2025): EM's min-min crafting whose surrogate, once it fits the perturbed set better
than ``pue.switch_accuracy``, trains under random weight perturbations, and whose PGD
steps average the objective over weight draws -- noise meant to stay unlearnable for every
model near the surrogate, so that its certified (q, eta)-learnability is low.

  jaxprotect poison   --config experiments/pue.py:<dataset>[,classwise][,reference] --workdir DIR
  jaxprotect evaluate --config experiments/pue.py:<same> --config.evaluate.poison=DIR --workdir DIR2
  jaxprotect certify  --config experiments/certify.py --config.certify.model=DIR2/poisoned --workdir DIR3

Datasets and ``,classwise`` as in experiments/em.py (this file starts from its config).
Weight noise (``pue``): levels 0, 0.05, ..., 0.25 (``sigma_step``, ``sigma``); the
PGD steps average over ``draws`` = 10 models per level, the surrogate's gradient over
``train_draws`` (the reference's ``--avgtimes``, 100 by default). Each PGD step is one sign
step per level, as the reference's ``min_min_attack_robust`` takes them. The CPU variants
(``fashion_mnist_mini``, ``fashion_mnist_cpu``) use levels 0 .. 0.05 in steps of 0.01, 4
draws each and 2 PGD steps: see the code for why.

``,reference``: the authors' make_pue.sh (NeuralSec/certified-data-learnability at
3f34839): 1 PGD step per batch (``num_steps=1``) of 0.8/255, eps 8/255, 20 surrogate steps
per outer iteration (``train_step=20``), stop when the error on the class-wise subset is
below 10% (``universal_stop_error=0.1``, ``universal_train_target=train_subset``),
``robust_noise`` 0.25 in steps of 0.05 (make_pue.py: ``robust_noise_step``), ``u_p`` = 10
draws per PGD level, ``avgtimes`` = 100 surrogate draws (make_pue.py default). The
reference switches the robust mode on at a fixed outer iteration (``--turn_on_robust``,
default 99999, i.e. never in the script as released); the paper switches it on once the
surrogate's training accuracy exceeds 50%, which is what ``switch_accuracy`` does here.
"""

import pathlib

from jaxprotect.config import from_file, parse_variant

_EM = pathlib.Path(__file__).with_name("em.py")
VARIANTS = ("fashion_mnist_mini", "fashion_mnist_cpu", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
OPTIONS = ("classwise", "reference")


def get_config(arg: str | None = None):
  variant, options = parse_variant(arg, VARIANTS, OPTIONS, where="experiments/pue.py")
  c = from_file(f"{_EM}:{','.join([variant, *[o for o in options if o == 'classwise']])}")
  k = c.craft
  k.method = "pue"
  if variant.startswith("fashion_mnist_"):
    # CPU variants (small CNNs without BatchNorm): noise levels 0 .. 0.05 -- at 0.25 per
    # weight a small CNN is at chance level and its training under that noise diverges
    # (measured on the embedded slice) -- fewer draws, and 2 PGD steps (each one sign step
    # per level: 12 in all) instead of EM's 20.
    c.pue.sigma, c.pue.sigma_step, c.pue.draws, c.pue.train_draws = 0.05, 0.01, 4, 4
    k.pgd.steps = 2
  if "reference" in options:
    k.pgd.steps = 1  # make_pue.sh: num_steps=1
    k.pgd.step_size = 0.8 / 255  # make_pue.sh: step_size=0.8
    k.eps = 8 / 255  # make_pue.sh: epsilon=8
    k.train_steps = 20  # make_pue.sh: train_step=20
    k.stop_error = 0.1  # make_pue.sh: universal_stop_error=0.1
    if k.mode == "class":
      k.stop_on = "subset"  # make_pue.sh: universal_train_target=train_subset
    c.pue.sigma, c.pue.sigma_step = 0.25, 0.05  # make_pue.sh: robust_noise=0.25; make_pue.py: robust_noise_step
    c.pue.draws = 10  # make_pue.sh: u_p=10 (--avgtimes_perturb)
    c.pue.train_draws = 100  # make_pue.py: --avgtimes default 100
  return c
