"""What a training-time defense costs per step, against the plain step of the same model,
timed side by side in one process.

  python -m benchmarks.studies.defense_cost [--model small_cnn] [--width 16] [--batch 128]
      [--steps 8] [--rounds 5] [--defenses at,cutout,cutmix,mixup,ueraser] [--at-steps 10]

Each defense trains through the same engine path as ``runner.fit(..., defense=...)``:
``train.make_train_chunk`` with the defense's state hook (``Defense.batch_fn``) and loss
(``Defense.loss_fn``), on a synthetic 28x28x1 split (Fashion-MNIST's shape). Every variant is
compiled and warmed up first; then ``--rounds`` rounds alternate the variants, each timing
one chunk of ``--steps`` steps. Prints the median ms per step and the ratio to the plain
step. Host squeezes (JPEG, bits, blur) change the data once before training and cost
nothing per step, so they are not listed.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from jaxprotect import data, defenses, models, parallel, platform, train
from jaxprotect.config import optimizer_config
from jaxprotect.data import sources
from jaxprotect.data.augment import AugmentConfig

TRAINING_TIME = ("at", "cutout", "cutmix", "mixup", "ueraser")


def build(model, ds, batch: int, name: str, at_steps: int, mesh):
  """A jitted chunk ``(state, split, n) -> (state, metrics)`` under defense ``name``."""
  section = defenses.defense_config()
  section.name = name
  section.steps, section.eps, section.cutout = at_steps, 0.3, 14
  defense = defenses.from_config(section)
  loss_fn = defense.loss_fn(None, 0.0)  # as runner.fit: the defense's loss (cross-entropy for none)
  batch_fn = defense.batch_fn(model, ds.num_classes) if defense.enabled else None
  steps_per_epoch = ds.train.size // batch
  optimizer = train.make_optimizer(optimizer_config(), steps_per_epoch, 10)
  chunk = train.make_train_chunk(model, loss_fn, optimizer, mesh, batch, AugmentConfig.parse("crop2,flip"),
                                 loop="host", batch_fn=batch_fn)
  state = train.init_state(model, optimizer, ds.example, jax.random.PRNGKey(0), mesh)
  return chunk, state


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="small_cnn")
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--defenses", default=",".join(TRAINING_TIME))
  p.add_argument("--at-steps", type=int, default=10)
  a = p.parse_args(argv)
  platform.apply_cpu_xla_flags()
  names = ["none", *[d for d in a.defenses.split(",") if d]]
  unknown = [d for d in names if d not in TRAINING_TIME + ("none",)]
  if unknown:
    p.error(f"--defenses: {unknown} are not training-time defenses; use any of {', '.join(TRAINING_TIME)}")
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  n = a.batch * a.steps
  x = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  y = (np.arange(n) % 10).astype(np.int32)
  host = sources.make_dataset("synthetic", sources.make_split(x, y, 10, "train"),
                              sources.make_split(x[: a.batch], y[: a.batch], 10, "test"), 10, "defense_cost")
  ds = data.to_device(host, mesh)
  model = models.get(a.model, 10, width=a.width)
  runs = {}
  for name in names:  # compile and warm up
    chunk, state = build(model, ds, a.batch, name, a.at_steps, mesh)
    state, _ = chunk(state, ds.train, a.steps)
    jax.block_until_ready(state)
    runs[name] = [chunk, state, []]
  for _ in range(a.rounds):
    for name, run in runs.items():
      chunk, state, times = run
      t0 = time.perf_counter()
      state, _ = chunk(state, ds.train, a.steps)
      jax.block_until_ready(state)
      times.append((time.perf_counter() - t0) / a.steps)
      run[1] = state
  plain = float(np.median(runs["none"][2]))
  print(f"{a.model} width {a.width}, batch {a.batch}, 28x28x1, crop2+flip, {a.steps} steps per chunk, median of "
        f"{a.rounds} alternating rounds; AT: {a.at_steps} PGD steps; load average after {common.load_average()}\n")
  print("| defense | ms per step | / plain step |\n| --- | --- | --- |")
  for name, (_, _, times) in runs.items():
    ms = float(np.median(times))
    print(f"| {name} | {1e3 * ms:.1f} | {ms / plain:.2f}x |")


if __name__ == "__main__":
  main()
