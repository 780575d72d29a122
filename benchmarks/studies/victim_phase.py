"""Where the end-to-end workload's victim phase spends its time, jaxprotect against the
reference-style PyTorch loop, on the benchmark's synthetic data at the quick size.

  python -m benchmarks.studies.victim_phase [--epochs 60] [--rounds 2] [--variants no-augment,scan]

jaxprotect: ``victims.evaluate`` (poison upload, the victim's ``runner.fit`` with a
checkpoint and a test evaluation every epoch, results and plots) on a random sample-wise
poison, timed by wrappers around the engine's pieces: the training chunks (one per epoch;
the host loop dispatches one jitted step per batch and stacks the step metrics on the
host), the per-epoch evaluation, the checkpoints, the metric records, the state's
initialisation; XLA compiles are counted from JAX's compile events (their time lies
inside the pieces that first call a program). The wrappers add no synchronisation: each
piece already returns host values. Every round starts from empty program caches.

PyTorch eager (``benchmarks.torch_impl.E2ERunner._victim``, NCHW float32): the training
steps (forward, backward, SGD), the per-epoch evaluation, and the rest of the loop (the
DataLoader's batches and the batched crop+flip).

``--variants`` also times the jaxprotect victim without augmentation (``no-augment``) and
with each epoch as one ``lax.scan`` instead of the host loop (``scan``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import pathlib
import tempfile
import time
from typing import Any

import jax
import numpy as np

from benchmarks import common, jax_impl
from jaxprotect import data, parallel, platform, run, train
from jaxprotect.unlearnable import poison_io, victims


class Timers:
  """Accumulated seconds and calls per label."""

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)
    self.calls: dict[str, int] = collections.defaultdict(int)

  def wrap(self, label: str, fn):
    def timed(*args, **kwargs):
      t0 = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.seconds[label] += time.perf_counter() - t0
        self.calls[label] += 1

    return timed


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def _instrumented(timers: Timers):
  """Context patching the engine's pieces with timers (module attributes, so ``runner.fit``
  picks the wrappers up)."""
  make_chunk, make_eval = train.make_train_chunk, train.make_eval_fn
  stack = contextlib.ExitStack()
  stack.enter_context(_patched(train, "make_train_chunk",
                               lambda *a, **k: timers.wrap("training chunks", _blocking(make_chunk(*a, **k)))))
  stack.enter_context(_patched(train, "make_eval_fn",
                               lambda *a, **k: timers.wrap("test evaluation", _blocking(make_eval(*a, **k)))))
  stack.enter_context(_patched(train, "init_state", timers.wrap("state initialisation", train.init_state)))
  stack.enter_context(_patched(run.Phase, "checkpoint", timers.wrap("checkpoints", run.Phase.checkpoint)))
  stack.enter_context(_patched(run.Phase, "log", timers.wrap("metric records", run.Phase.log)))
  return stack


def _blocking(fn):
  return lambda *a, **k: jax.block_until_ready(fn(*a, **k))


def jax_victim(npz: str, poison_dir: pathlib.Path, workdir: pathlib.Path, epochs: int, augment: str = "crop4,flip",
               loop: str = "") -> dict[str, Any]:
  config = jax_impl.e2e_config(common.SIZES["quick"].e2e, npz)
  config.victim.epochs, config.victim.augment, config.victim.loop = epochs, augment, loop
  config.evaluate.poison = str(poison_dir)
  jax_impl.clear_compiled()
  timers, compiles = Timers(), []
  listener = lambda event, duration, **_: compiles.append(duration) if event == jax_impl.COMPILE_EVENT else None  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with _instrumented(timers):
      t0 = time.perf_counter()
      victims.evaluate(config, workdir, parallel.make_mesh())
      total = time.perf_counter() - t0
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  parts = dict(timers.seconds)
  parts["rest (poison upload, results, plots)"] = total - sum(timers.seconds.values())
  return {"total": total, "parts": parts, "calls": dict(timers.calls), "compiles": len(compiles),
          "compile_s": float(sum(compiles))}


def torch_victim(npz: str, epochs: int) -> dict[str, Any]:
  import torch  # noqa: PLC0415

  from benchmarks import torch_impl  # noqa: PLC0415

  size = common.SIZES["quick"]
  size = dataclasses.replace(size, e2e=dataclasses.replace(size.e2e, victim_epochs=epochs))
  runner = torch_impl.E2ERunner(size, tuned=False, compile_model=False)
  timers = Timers()
  with np.load(npz) as z:
    x_train, y_train = torch_impl.to_nchw(z["x_train"]), torch.from_numpy(z["y_train"]).long()
    x_test, y_test = torch_impl.to_nchw(z["x_test"]), torch.from_numpy(z["y_test"]).long()
  runner._train_step = timers.wrap("training steps", runner._train_step)
  runner._accuracy = timers.wrap("test evaluation", runner._accuracy)
  t0 = time.perf_counter()
  runner._victim(x_train, y_train, x_test, y_test)
  total = time.perf_counter() - t0
  parts = dict(timers.seconds)
  parts["rest (DataLoader batches, crop+flip)"] = total - sum(timers.seconds.values())
  return {"total": total, "parts": parts, "calls": dict(timers.calls)}


def _random_poison(npz: str, directory: pathlib.Path) -> None:
  config = jax_impl.e2e_config(common.SIZES["quick"].e2e, npz)
  ds = data.from_config(config, parallel.make_mesh())
  delta = np.random.default_rng(0).uniform(-common.EPS, common.EPS, (ds.train.size, *ds.example.shape[1:]))
  poison_io.save_poison(directory, delta.astype(np.float32), "sample", ds, config=config)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=common.SIZES["quick"].e2e.victim_epochs)
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds of jaxprotect and PyTorch; medians")
  p.add_argument("--variants", default="", help="jaxprotect variants to time too: no-augment, scan (comma-separated)")
  a = p.parse_args(argv)
  platform.apply_cpu_xla_flags()  # as the jaxprotect command and the benchmark do, before JAX's backend starts
  e = common.SIZES["quick"].e2e
  with tempfile.TemporaryDirectory(prefix="jaxprotect-victim-") as tmp:
    tmp = pathlib.Path(tmp)
    npz = str(common.write_synthetic_npz(tmp / "synthetic_cifar.npz", e.train_examples, e.test_examples))
    _random_poison(npz, tmp / "poison")
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    known = {"no-augment": ("jaxprotect, no augmentation", {"augment": ""}),
             "scan": ("jaxprotect, scan chunks", {"loop": "scan"})}
    chosen = [v for v in a.variants.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown:
      p.error(f"--variants: unknown {unknown}; use any of {sorted(known)}")
    variants = {"jaxprotect": {}, **dict(known[v] for v in chosen)}
    for r in range(a.rounds):
      for name, kw in variants.items():
        workdir = tmp / f"victim-{r}-{list(variants).index(name)}"
        runs[name].append(jax_victim(npz, tmp / "poison", workdir, a.epochs, **kw))
        print(f"round {r}: {name}: {runs[name][-1]['total']:.1f} s", flush=True)
      try:
        runs["PyTorch eager"].append(torch_victim(npz, a.epochs))
        print(f"round {r}: PyTorch eager: {runs['PyTorch eager'][-1]['total']:.1f} s", flush=True)
      except ImportError as exc:
        print(f"PyTorch eager: not run ({exc})")
  print(f"\nvictim phase, {a.epochs} epochs of {e.train_examples // e.victim_batch} steps at batch "
        f"{e.victim_batch} (small CNN width {e.width}, crop4+flip), median of {a.rounds} rounds, seconds; "
        f"load average after: {common.load_average()}\n")
  for name, rs in runs.items():
    med = lambda xs: float(np.median(xs))  # noqa: E731
    labels = list(dict.fromkeys(k for r in rs for k in r["parts"]))
    cells = [f"{k} {med([r['parts'].get(k, 0.0) for r in rs]):.2f}" for k in labels]
    extra = (f"; {med([r['compiles'] for r in rs]):.0f} compiles, {med([r['compile_s'] for r in rs]):.2f} s"
             if "compiles" in rs[0] else "")
    print(f"- {name}: total {med([r['total'] for r in rs]):.2f} ({', '.join(cells)}{extra})")


if __name__ == "__main__":
  main()
