"""MI-UE (intra-class feature collapse; Zhu et al., ICLR 2026):

  jaxprotect poison   --config experiments/mi_ue.py:<dataset> --workdir DIR
  jaxprotect evaluate --config experiments/mi_ue.py:<same> --config.evaluate.poison=DIR --workdir DIR2

Reference bi-level loop: 100 outer iterations, each one CE epoch of the surrogate (SGD 0.1,
weight decay 1e-4, cosine over the run) then 10 sign-PGD steps on every batch descending
the MI-UE loss (temperature 0.1, self term included), step size 0.2/255 -> 0.4/255,
eps 8/255; no early stop. As in the reference generation command (--post-aug), the clean
images under the perturbation are randomly flipped in both phases (the perturbation does
not move with them), and the perturbation starts at zero. Datasets (and models) as in
experiments/em.py, whose config this file starts from; no options (MI-UE is crafted and
sample-wise). The CPU variants use 20 outer iterations. Fields are overridden as in
experiments/em.py (e.g. ``--config.craft.mi_ue.temperature=0.5``).
"""

import pathlib

from jaxprotect import config

EM = pathlib.Path(__file__).with_name("em.py")
CPU_VARIANTS = ("fashion_mnist_mini", "fashion_mnist_cpu")  # 20 outer iterations


def get_config(arg: str | None = None):
  arg = arg or "fashion_mnist_mini"
  if "," in arg:
    raise ValueError(f"unknown option(s) {arg.split(',')[1:]} of experiments/mi_ue.py; use none "
                     "(MI-UE crafts sample-wise)")
  c = config.from_file(f"{EM}:{arg}")  # checks the dataset variant
  c.craft.method = "mi_ue"
  c.craft.train_steps = 0  # one epoch
  c.craft.stop_error = 0.0
  c.craft.max_iterations = 20 if arg in CPU_VARIANTS else 100
  c.surrogate.optimizer.weight_decay = 1e-4
  c.surrogate.optimizer.grad_clip = 0.0
  c.surrogate.optimizer.schedule = "cosine"
  c.craft.pgd.steps = 10
  c.craft.pgd.step_size = 0.2 / 255
  c.craft.pgd.step_size_end = 0.4 / 255
  c.craft.clean_augment = "flip"
  c.craft.delta_init = "zeros"
  return c
