"""The jaxprotect side of the benchmark: each workload through the library's own engine.

Every runner follows the same protocol (see ``benchmarks.suite``): ``setup()``
builds, compiles and warms up (untimed), ``run()`` executes one timed repeat and
returns its measurements, ``details()`` reports what the rows should record (compile
time, loop form, number of compiled variants). Data stay on device; batches are gathered
(and perturbed) inside jit, as in ``jaxprotect.train`` / ``jaxprotect.unlearnable``.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import data, losses, models, parallel, train
from benchmarks import common
from benchmarks.common import E2ESize, Size
from jaxprotect.config import optimizer_config
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import crafting, pgd, victims


# JAX records this event around every executable it compiles (or reads back from a
# persistent compilation cache, which the benchmark does not turn on).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = {"n": 0, "s": 0.0, "names": [], "listening": False}


def _count_compiles() -> None:
  """Accumulates XLA compile count, seconds and program names into ``_compiles`` (once per
  process)."""
  if _compiles["listening"]:
    return

  def on_duration(event: str, duration: float, fun_name: str | None = None, **_) -> None:
    if event == COMPILE_EVENT:
      _compiles["n"] += 1
      _compiles["s"] += duration
      _compiles["names"].append(str(fun_name))

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  _compiles["listening"] = True


def build_model(name: str, width: int | None, dtype: str):
  return models.get(name, common.NUM_CLASSES, dtype=dtype, **({} if width is None else {"width": width}))


def _device_dataset(n: int, mesh) -> data.DeviceDataset:
  images, labels = common.synthetic_cifar(n)
  split = data.ArraySplit(images=images, labels=labels, ids=np.arange(n, dtype=np.int32))
  host = data.HostDataset("synthetic_cifar", split, split, common.NUM_CLASSES, data.fingerprint(split, split))
  return data.to_device(host, mesh)


def _sgd(steps_per_epoch: int):
  opt = optimizer_config()
  opt.lr, opt.momentum, opt.weight_decay = common.SGD["lr"], common.SGD["momentum"], common.SGD["weight_decay"]
  opt.schedule = "constant"
  return train.make_optimizer(opt, steps_per_epoch, 1)


def cmim_available() -> bool:
  """Whether ``jaxprotect.losses`` has what the CMIM workload needs."""
  return all(hasattr(losses, f) for f in ("cmim_loss", "update_centroids"))


def cmim_stateful_loss(temperatures=common.CMIM_TEMPERATURES, lam: float = common.CMIM_LAMBDA,
                       decay: float = common.CMIM_DECAY) -> train.LossFn:
  """CE + ``lam`` x mean over T of T^2 CMI_T against EMA class centroids kept in
  ``state.extra["centroids"]`` (``losses.cmim_loss`` and ``losses.update_centroids``)."""
  temps = jnp.asarray(temperatures, jnp.float32)

  def loss_fn(outputs, batch, extra):
    logits, labels = outputs[0], batch["label"]
    loss_B = losses.cmim_loss(logits, labels, extra["centroids"], temps, lam)
    return loss_B, {"centroids": losses.update_centroids(logits, labels, extra["centroids"], temps, decay)}

  return train.stateful(loss_fn)


class TrainStepRunner:
  """Victim training steps (SGD momentum 0.9, wd 5e-4, CE or CMIM) through
  ``train.make_train_chunk``: one repeat is one epoch of ``size.steps`` steps over
  ``size.batch * size.steps`` on-device examples (no augmentation)."""

  def __init__(self, size: Size, dtype: str = "float32", loss: str = "ce"):
    self.size, self.dtype, self.loss = size, dtype, loss
    self.mode = f"jit, {dtype}, {train.default_loop()} loop, data on device"
    self._compile_s = None

  def setup(self) -> None:
    s = self.size
    self.mesh = parallel.make_mesh()
    self.ds = _device_dataset(s.batch * s.steps, self.mesh)
    model = build_model(s.model, s.width, self.dtype)
    tx = _sgd(s.steps)
    extra, loss_fn = None, train.ce_loss()
    if self.loss == "cmim":
      k = common.NUM_CLASSES
      extra = {"centroids": jnp.full((len(common.CMIM_TEMPERATURES), k, k), 1.0 / k, jnp.float32)}
      loss_fn = cmim_stateful_loss()
    t0 = time.perf_counter()
    # the non-partitionable threefry compiles an init several times faster on XLA:CPU
    with jax.threefry_partitionable(False):
      self.state = train.init_state(model, tx, self.ds.example, jax.random.PRNGKey(0), self.mesh, extra=extra)
    self.chunk = train.make_train_chunk(model, loss_fn, tx, self.mesh, s.batch, AugmentConfig())
    self.run()  # warm-up: the same programs the timed repeats run (compiles them)
    self._compile_s = time.perf_counter() - t0

  def run(self) -> dict[str, float]:
    t0 = time.perf_counter()
    self.state, metrics = self.chunk(self.state, self.ds.train, self.size.steps)
    jax.block_until_ready((self.state, metrics))
    return {"seconds": time.perf_counter() - t0, "units": self.size.batch * self.size.steps}

  def compiled_variants(self) -> int:
    """Compiled programs of the step (1 when no call recompiled)."""
    return int(self.chunk._cache_size())

  def details(self) -> dict[str, Any]:
    return {"compile_and_warmup_s": self._compile_s, "compiled_variants": self.compiled_variants(),
            "loop": train.default_loop(), "batch": self.size.batch, "model": self.size.model_label}


class PGDPassRunner:
  """One sample-wise PGD pass over an on-device training set (``pgd.make_samplewise_pass``):
  ``size.pgd_steps`` sign steps per batch of ``size.batch``, surrogate in eval mode."""

  def __init__(self, size: Size, objective: str, dtype: str = "float32"):
    self.size, self.objective, self.dtype = size, objective, dtype
    self.loop = train.default_loop()
    steps = "unrolled PGD steps" if pgd.default_unroll() else "fori_loop over PGD steps"
    self.mode = f"jit, {dtype}, {self.loop} loop over batches, {steps}"
    self._compile_s = None

  def setup(self) -> None:
    s = self.size
    mesh = parallel.make_mesh()
    ds = _device_dataset(s.pgd_examples, mesh)
    model = build_model(s.model, s.width, self.dtype)
    self.variables = models.init_variables(model, jax.random.PRNGKey(0), ds.example)
    if self.objective == "em":
      objective, alpha = pgd.error_minimizing_objective(), common.EM_STEP_SIZE
    else:
      objective, alpha = pgd.mi_ue_objective(common.MI_UE_TEMPERATURE), common.MI_UE_STEP_SIZE
    self.eps, self.alpha = jnp.float32(common.EPS), jnp.float32(alpha)
    delta = pgd.init_delta(jax.random.PRNGKey(1), (s.pgd_examples, *ds.train.image_shape), common.EPS, ds.train.images)
    self.split = ds.train.replace(delta=delta, delta_mode="sample")
    t0 = time.perf_counter()
    self.pass_fn = pgd.make_samplewise_pass(model, objective, mesh, s.batch, s.pgd_steps, loop=self.loop)
    self.run()
    self._compile_s = time.perf_counter() - t0

  def run(self) -> dict[str, float]:
    t0 = time.perf_counter()
    delta = self.pass_fn(self.variables, self.split, self.eps, self.alpha)
    jax.block_until_ready(delta)
    self.split = self.split.replace(delta=delta)
    return {"seconds": time.perf_counter() - t0, "units": self.size.pgd_examples * self.size.pgd_steps}

  def details(self) -> dict[str, Any]:
    variants = int(getattr(self.pass_fn, "jitted", self.pass_fn)._cache_size())
    return {"compile_and_warmup_s": self._compile_s, "compiled_variants": variants,
            "loop": self.loop, "batch": self.size.batch, "pgd_steps": self.size.pgd_steps,
            "examples": self.size.pgd_examples, "model": self.size.model_label}


class CMIMRunner:
  """CE and CMIM training steps timed in alternation; the value is their time ratio."""

  def __init__(self, size: Size, dtype: str = "float32"):
    self.ce, self.cmim = TrainStepRunner(size, dtype, "ce"), TrainStepRunner(size, dtype, "cmim")
    self.mode = self.ce.mode + f", CMIM over {len(common.CMIM_TEMPERATURES)} temperatures"

  def setup(self) -> None:
    self.ce.setup()
    self.cmim.setup()

  def run(self) -> dict[str, float]:
    ce, cmim = self.ce.run(), self.cmim.run()
    steps = self.ce.size.steps
    return {"ce_s": ce["seconds"] / steps, "cmim_s": cmim["seconds"] / steps}

  def details(self) -> dict[str, Any]:
    return {"compiled_variants": max(self.ce.compiled_variants(), self.cmim.compiled_variants()),
            "batch": self.ce.size.batch, "model": self.ce.size.model_label}


def e2e_config(e: E2ESize, dataset: str, dtype: str = "float32"):
  """The crafting + victim config of the end-to-end workload (EM sample-wise defaults of
  ``crafting.unlearnable_config`` at the sizes of ``e``)."""
  c = crafting.unlearnable_config()
  c.data.name = dataset
  s = c.surrogate
  s.model, s.dtype, s.batch_size, s.eval_batch_size = e.model, dtype, e.batch, e.pgd_batch
  if e.width is not None:
    s.model_kwargs.width = e.width
  k = c.craft
  k.pgd.batch_size, k.pgd.steps, k.train_steps = e.pgd_batch, e.pgd_steps, e.train_steps
  k.max_iterations, k.stop_error = e.max_iterations, e.stop_error
  c.runtime.progress, c.runtime.tensorboard, c.evaluate.clean = False, False, False
  # The feature-MI diagnostic of the victim (not part of the reference pipeline) is off:
  # the same work on both sides. It costs about 2 s of the victim phase at the quick size.
  c.evaluate.feature_mi_examples = 0
  v = c.victim
  v.model, v.dtype, v.epochs, v.batch_size, v.eval_batch_size = e.model, dtype, e.victim_epochs, e.victim_batch, 512
  if e.width is not None:
    v.model_kwargs.width = e.width
  v.augment = "crop4,flip"
  v.optimizer.lr, v.optimizer.momentum, v.optimizer.weight_decay = (
      common.SGD["lr"], common.SGD["momentum"], common.SGD["weight_decay"])
  v.optimizer.schedule = "cosine"
  return c


def clear_compiled() -> None:
  """Empties JAX's compilation caches and jaxprotect's program caches (``train.cached``
  and the other ``functools`` caches of its modules): the next run compiles every program
  again, as a fresh process would (the persistent compilation cache is not used here)."""
  jax.clear_caches()
  for name, module in list(sys.modules.items()):
    if name == "jaxprotect" or name.startswith("jaxprotect."):
      for value in list(vars(module).values()):
        if callable(getattr(value, "cache_clear", None)):
          value.cache_clear()


class E2ERunner:
  """EM sample-wise crafting (``crafting.craft``) then the victim (``victims.evaluate``),
  from a synthetic ``.npz`` on disk to the victim's test accuracy: wall time, compile
  included. Every repeat starts from empty program caches (``clear_compiled``), so each
  pays the compiles of a fresh run. Run directories (checkpoints, poison, metrics) go to a
  temporary directory."""

  def __init__(self, size: Size, dtype: str = "float32"):
    self.e, self.dtype = size.e2e, dtype
    self.mode = f"jit, {dtype}, crafting.craft + victims.evaluate (checkpoints, poison files, metrics included)"
    self._details: dict[str, Any] = {}

  def setup(self) -> None:
    pass

  def run(self) -> dict[str, float]:
    e = self.e
    with tempfile.TemporaryDirectory(prefix="jaxprotect-bench-") as tmp:
      tmp = pathlib.Path(tmp)
      npz = common.write_synthetic_npz(tmp / "synthetic_cifar.npz", e.train_examples, e.test_examples)
      config = e2e_config(e, str(npz), self.dtype)
      clear_compiled()
      _count_compiles()
      n0, s0 = _compiles["n"], _compiles["s"]
      t0 = time.perf_counter()
      mesh = parallel.make_mesh()
      craft = crafting.craft(config, tmp / "craft", mesh)
      t1 = time.perf_counter()
      config.evaluate.poison = str(tmp / "craft")
      n1 = _compiles["n"]
      victim = victims.evaluate(config, tmp / "victim", mesh)
      t2 = time.perf_counter()
    self._details = {"craft_s": t1 - t0, "victim_s": t2 - t1, "iterations": craft["iterations"],
                     "craft_compiles": n1 - n0, "victim_compiles": _compiles["n"] - n1,
                     "stopped_early": craft["stopped_early"],
                     "perturbed_train_accuracy": craft["perturbed_train_accuracy"],
                     "victim_test_accuracy": victim["test_accuracy"]["poisoned"],
                     "compiles": _compiles["n"] - n0, "compile_s": round(_compiles["s"] - s0, 2),
                     "compiled_programs": dict(sorted(collections.Counter(_compiles["names"][n0:]).items()))}
    return {"seconds": t2 - t0, "craft_s": t1 - t0, "victim_s": t2 - t1, "compiles": _compiles["n"] - n0,
            "compile_s": _compiles["s"] - s0, "details": dict(self._details)}

  def details(self) -> dict[str, Any]:
    e = self.e
    return {**self._details, "model": e.model if e.width is None else f"{e.model}_w{e.width}",
            "train_examples": e.train_examples, "max_iterations": e.max_iterations,
            "victim_epochs": e.victim_epochs, "pgd_loop": train.default_loop()}


def make_runner(workload: str, size: Size, dtype: str = "float32"):
  """The jaxprotect runner of ``workload`` (names as in ``suite.WORKLOADS``)."""
  if workload == "train_step":
    return TrainStepRunner(size, dtype)
  if workload == "em_pgd":
    return PGDPassRunner(size, "em", dtype)
  if workload == "mi_ue_pgd":
    return PGDPassRunner(size, "mi_ue", dtype)
  if workload == "cmim_step":
    return CMIMRunner(size, dtype)
  if workload == "e2e_em":
    return E2ERunner(size, dtype)
  raise ValueError(f"unknown workload {workload!r}")
