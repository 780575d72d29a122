"""Sizes, synthetic data and small helpers shared by both sides of the benchmark.

Nothing here imports PyTorch: the JAX rows run without it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import statistics
from typing import Any

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE_HWC = (32, 32, 3)  # CIFAR-shaped; PyTorch sees the same pixels as C x H x W
EPS = 8 / 255  # EM / MI-UE L-inf budget (Huang et al. 2021; Zhu et al. 2026)
EM_STEP_SIZE = 0.8 / 255
MI_UE_STEP_SIZE = 0.2 / 255
MI_UE_TEMPERATURE = 0.1
CMIM_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
CMIM_LAMBDA = 1.0
CMIM_DECAY = 0.99
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # victim / surrogate optimiser
GRAD_CLIP = 5.0  # EM surrogate (Huang et al. 2021)


@dataclasses.dataclass(frozen=True)
class E2ESize:
  """The end-to-end workload: EM sample-wise crafting, then one victim training.

  Attributes:
    model: ``"resnet18"`` or ``"small_cnn"`` (surrogate and victim).
    width: model width (None: the model's standard width).
    train_examples, test_examples: synthetic dataset size.
    batch: surrogate training batch; pgd_batch: perturbation batch.
    train_steps, pgd_steps: per outer iteration (reference: 10 and 20).
    max_iterations: cap on outer iterations.
    stop_error: the stop rule (the surrogate's error on the perturbed set below this);
      0, the default, turns it off, so that both sides run ``max_iterations`` iterations
      and do the same work (on random synthetic data, when the rule fires depends on the
      random streams, which differ between the implementations).
    victim_epochs, victim_batch: the victim's training (crop4+flip augmentation).
  """

  model: str
  width: int | None
  train_examples: int
  test_examples: int
  batch: int
  pgd_batch: int
  train_steps: int
  pgd_steps: int
  max_iterations: int
  victim_epochs: int
  victim_batch: int
  stop_error: float = 0.0


@dataclasses.dataclass(frozen=True)
class Size:
  """One benchmark size.

  Attributes:
    name: ``full``, ``quick`` or ``tiny``.
    model, width: the model of the step workloads (``width`` None: standard width).
    batch: batch of the training-step, PGD and CMIM workloads.
    steps: training steps per timed repeat (the workload's data set is ``batch * steps``
      examples, so one repeat is one epoch).
    pgd_examples: training-set size of the PGD-pass workloads (a multiple of ``batch``).
    pgd_steps: PGD steps per batch in one pass.
    warmup: untimed steps before timing (PyTorch; JAX warms up with one whole repeat,
      which compiles every program the timed repeats run).
    repeats: timed repeats, interleaved across implementations; the median is reported.
    e2e: the end-to-end workload's size.
    e2e_repeats: timed repeats of the end-to-end workload (each a whole pipeline, compiles
      included: jaxprotect starts every repeat from empty compilation caches).
  """

  name: str
  model: str
  width: int | None
  batch: int
  steps: int
  pgd_examples: int
  pgd_steps: int
  warmup: int
  repeats: int
  e2e: E2ESize
  e2e_repeats: int = 1

  @property
  def model_label(self) -> str:
    """E.g. ``resnet18`` or ``resnet18_w16`` (a reduced width is always named)."""
    return self.model if self.width is None else f"{self.model}_w{self.width}"


SIZES = {
    "full": Size("full", "resnet18", None, batch=512, steps=20, pgd_examples=5120, pgd_steps=20, warmup=5, repeats=3,
                 e2e=E2ESize("resnet18", None, train_examples=50_000, test_examples=10_000, batch=512, pgd_batch=512,
                             train_steps=10, pgd_steps=20, max_iterations=10, victim_epochs=60, victim_batch=128)),
    "quick": Size("quick", "resnet18", 16, batch=64, steps=4, pgd_examples=64, pgd_steps=4, warmup=2, repeats=3,
                  e2e=E2ESize("small_cnn", 16, train_examples=2048, test_examples=512, batch=128, pgd_batch=128,
                              train_steps=10, pgd_steps=20, max_iterations=5, victim_epochs=60, victim_batch=128),
                  e2e_repeats=3),
    "tiny": Size("tiny", "small_cnn", 8, batch=16, steps=2, pgd_examples=32, pgd_steps=2, warmup=1, repeats=1,
                 e2e=E2ESize("small_cnn", 8, train_examples=128, test_examples=64, batch=32, pgd_batch=32,
                             train_steps=2, pgd_steps=2, max_iterations=1, victim_epochs=1, victim_batch=32)),
}


def synthetic_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``n`` CIFAR-shaped examples: uint8 ``N x 32 x 32 x 3`` uniform pixels and int32
  labels in [0, 10), a deterministic function of ``seed`` (both sides get these arrays)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *IMAGE_SHAPE_HWC), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  return images, labels


def write_synthetic_npz(path: os.PathLike | str, train_examples: int, test_examples: int,
                        seed: int = 0) -> pathlib.Path:
  """Writes a synthetic dataset in the ``.npz`` layout ``jaxprotect.data.load_arrays`` reads."""
  path = pathlib.Path(path)
  x_train, y_train = synthetic_cifar(train_examples, seed)
  x_test, y_test = synthetic_cifar(test_examples, seed + 1)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=np.int64(NUM_CLASSES))
  return path


def median(xs: list[float]) -> float:
  return float(statistics.median(xs))


def cpu_model() -> str:
  """The CPU model, from /proc/cpuinfo where readable."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_name() -> str:
  """The CPU model and the number of usable cores."""
  return f"{cpu_model()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages (None where the OS has none)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except (AttributeError, OSError):
    return None


def short_reason(e: BaseException, limit: int = 160) -> str:
  """``Type: first line of the message``, shortened: a reason fit for a table cell."""
  msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."


def jsonable(x: Any) -> Any:
  """Floats rounded for the JSON file; containers recursed."""
  if isinstance(x, float):
    return round(x, 6)
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  return x
