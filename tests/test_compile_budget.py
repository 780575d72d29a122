"""Compile budget of the end-to-end pipeline: EM sample-wise crafting (``crafting.craft``),
then a victim on the poison (``victims.evaluate``), with the benchmark's end-to-end config
(``benchmarks.jax_impl.e2e_config``) at a tiny size on one device, as the benchmark runs on
a CPU.

What is counted: every XLA executable a run obtains, i.e. every backend-compile event of
JAX (``jax.monitoring``; JAX records it around ``compile_or_get_cached``, so an executable
read back from the persistent compilation cache that the test session enables counts
as one too). A program traced and lowered again -- a jitted closure built anew per call,
a shape or static argument that changes per epoch, iteration or chunk -- shows up here
whether or not the cache then spares XLA the work. Programs already compiled in this
process by an earlier test are not compiled again, so the first run's count is an upper
bound reached when this test runs alone (``BUDGET``).

The first run stays within ``BUDGET``; a second identical run in the same process
compiles nothing.
"""

import collections
import dataclasses
import hashlib
import pathlib
import traceback

import jax
import numpy as np

from benchmarks import jax_impl
from benchmarks.common import E2ESize
from jaxprotect import parallel
from jaxprotect.unlearnable import crafting, victims

REPO = pathlib.Path(__file__).resolve().parents[1]
# JAX's event around each executable it compiles or reads back (jax._src.dispatch.BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# Programs of the first run, counted alone in a fresh process (jax 0.10.2, one CPU device):
# 19 of the engine and the crafting / victim code -- initial state x2 (surrogate, victim),
# training step x2, epoch order, PGD row, pass slots, pass result, initial
# perturbation, evaluation x3 (perturbed and clean training set, test set), feature
# batches x2 (clean and poisoned split), seed keys, per-iteration key, L-inf norm, the
# seed's PRNGKey (2) -- and 13 op-by-op programs of the poison's upload and preview
# (unlearnable/poison_io.py, 7) and of the feature-MI statistics (stats.py, 6). Before
# this test the same run compiled 46, and 13 again on a second run.
BUDGET = 32

TINY = E2ESize("small_cnn", 4, train_examples=64, test_examples=32, batch=16, pgd_batch=16, train_steps=3,
               pgd_steps=1, max_iterations=3, victim_epochs=2, victim_batch=16)


@dataclasses.dataclass(frozen=True)
class Compile:
  program: str
  site: str  # the innermost frame in the repository that asked for it

  def __str__(self) -> str:
    return f"{self.program} at {self.site}"


class Compiles:
  """Records the compile events of JAX while active (``with Compiles() as c``)."""

  def __init__(self):
    self.records: list[Compile] = []

  def _on_duration(self, event: str, duration: float, fun_name: str | None = None, **_) -> None:
    del duration
    if event == COMPILE_EVENT:
      self.records.append(Compile(str(fun_name), _site()))

  def __enter__(self) -> "Compiles":
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_duration)

  def table(self) -> str:
    counts = collections.Counter(map(str, self.records))
    return "\n".join(f"  {n} x {what}" for what, n in sorted(counts.items()))


def _site() -> str:
  for frame in reversed(traceback.extract_stack()[:-3]):
    path = pathlib.Path(frame.filename)
    if REPO in path.parents and ".venv" not in path.parts and path.name != pathlib.Path(__file__).name:
      return f"{path.relative_to(REPO)}:{frame.lineno}"
  return "?"


def _write_npz(path: pathlib.Path, n: int, t: int, hw: int = 12, k: int = 4) -> str:
  rng = np.random.default_rng(0)
  y, yt = (np.arange(n) % k).astype(np.int32), (np.arange(t) % k).astype(np.int32)
  x = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
  xt = rng.integers(0, 256, (t, hw, hw, 3), dtype=np.uint8)
  np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, num_classes=np.int64(k))
  return str(path)


def _pipeline(workdir: pathlib.Path, npz: str, mesh) -> dict:
  """The benchmark's end-to-end run (``E2ERunner.run``) on ``npz``: craft, then the victim."""
  config = jax_impl.e2e_config(TINY, npz)
  # the user's default victim evaluation, feature MI included (the benchmark turns it off)
  config.evaluate.feature_mi_examples = crafting.unlearnable_config().evaluate.feature_mi_examples
  craft = crafting.craft(config, workdir / "craft", mesh)
  config.evaluate.poison = str(workdir / "craft")
  victim = victims.evaluate(config, workdir / "victim", mesh)
  delta = np.load(workdir / "craft" / "poison" / "delta.npy")
  return {"delta": hashlib.sha256(delta.tobytes()).hexdigest(), "iterations": craft["iterations"],
          "victim": victim["test_accuracy"]["poisoned"], "feature_mi": victim["feature_mi"]}


def test_counter_sees_a_new_program():
  x = np.arange(5.0, dtype=np.float32)  # from the host: no program to make it
  with Compiles() as c:
    jax.jit(lambda x: x * 3 + 1)(x).block_until_ready()
  assert [r.program for r in c.records] == ["jit(<lambda>)"]


def test_end_to_end_compile_budget_and_no_recompile_on_a_second_run(tmp_path):
  mesh = parallel.make_mesh(1)
  npz = _write_npz(tmp_path / "tiny.npz", TINY.train_examples, TINY.test_examples)
  with Compiles() as first:
    r1 = _pipeline(tmp_path / "run1", npz, mesh)
  with Compiles() as second:
    r2 = _pipeline(tmp_path / "run2", npz, mesh)
  assert r1 == r2 and r1["iterations"] == TINY.max_iterations  # the same work, the same results
  assert 0 < len(first.records) <= BUDGET, (
      f"the pipeline compiled {len(first.records)} programs (budget {BUDGET}):\n{first.table()}")
  again = second.records
  assert not again, f"a second identical run compiled {len(again)} programs again:\n" + "\n".join(map(str, again))
