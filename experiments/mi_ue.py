"""MI-UE (intra-class feature collapse; Zhu et al., ICLR 2026):

  jaxprotect poison   --config experiments/mi_ue.py:<dataset> --workdir DIR
  jaxprotect evaluate --config experiments/mi_ue.py:<same> --config.poison=DIR --workdir DIR2

Reference bi-level loop: 100 outer iterations, each one CE epoch of the surrogate (SGD 0.1,
weight decay 1e-4, cosine over the run) then 10 sign-PGD steps on every batch descending
the MI-UE loss (temperature 0.1, self term included), step size 0.2/255 -> 0.4/255,
eps 8/255; no early stop. As in the reference generation command (--post-aug), the clean
images under the perturbation are randomly flipped in both phases (the perturbation does
not move with them), and the perturbation starts at zero. Datasets as in
experiments/em.py. The CPU variants use 20 outer iterations.
"""

from jaxprotect.unlearnable.crafting import unlearnable_config, with_dataset


def get_config(arg: str | None = None):
  dataset = arg or "fashion_mnist_mini"
  c = with_dataset(unlearnable_config(), dataset)
  c.method = "mi_ue"
  c.train_steps = 0  # one epoch
  c.stop_error = 0.0
  c.max_iterations = 20 if dataset.startswith("fashion_mnist_") else 100
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip = 0.0
  c.optimizer.schedule = "cosine"
  c.pgd.steps = 10
  c.pgd.step_size = 0.2 / 255
  c.pgd.step_size_end = 0.4 / 255
  c.clean_augment = "flip"
  c.delta_init = "zeros"
  return c
