"""The one training engine: train state, optimisers, jitted sharded steps, epochs on device.

Victims, surrogates, teachers, students and shadow models all train through
``make_train_step`` / ``make_train_chunk`` with a method-specific per-example loss
``loss_fn(outputs, batch) -> loss_B`` where ``outputs = (logits_BxK, feats)`` (``feats``
is whatever the model returns second: penultimate features, or a dict for models with
auxiliary heads) and ``batch`` is a dict with at least ``image`` (float B x H x W x C),
``label`` (int B) and ``step`` (the state's step, int32 scalar).

Three hooks cover methods that need more than the batch:

* a **stateful loss** (wrapped with ``stateful``) is called as
  ``loss_fn(outputs, batch, extra) -> (loss_B, new_extra)`` and its ``new_extra``
  (with gradients stopped) replaces ``state.extra`` after the step -- e.g. CMIM's class
  centroids. Means over the batch inside it are over the *global* batch, whatever the
  mesh, so the update equals the single-device one.
* a **batch hook** ``batch_fn(aux, batch) -> batch`` runs inside jit after gathering and
  augmentation, with ``aux`` an arbitrary pytree passed to the step or chunk at call time
  (not baked into the compiled program) -- e.g. a black-box teacher that adds its output
  vectors to the batch, so the student's loss sees outputs and never parameters.
* a **state hook**: a batch hook marked with ``with_state`` is called as
  ``batch_fn(aux, batch, state, key)`` with the current train state (before the update) and
  a per-step key ``fold_in(fold_in(state.rng, BATCH_HOOK_STREAM), state.step)`` -- e.g. a
  training-time defense (adversarial training attacks the current weights; UEraser keeps the
  largest-loss copy under them; MixUp / CutMix draw fresh mixes each step). A resumed run
  draws the same keys. ``chain_batch_fns`` runs several hooks in order. Without a hook the
  step is the program it always was.

Programs are built once per process for equal arguments (``cached``): ``make_train_step``,
``make_train_chunk``, ``make_eval_fn``, ``make_logits_fn`` and ``init_state`` return the
same jitted functions for an equal model and the same loss and optimizer objects, and
``ce_loss`` / ``make_optimizer`` return the same objects for equal settings -- so a second
run of a phase in the same process (the next seed, a resumed run, a victim after a
craft) compiles nothing it has compiled before.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxprotect import checks, losses, parallel, platform
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.data.device import DeviceSplit, batch_from
from jaxprotect.models.contract import Model, as_model, check_outputs

__all__ = [
    "BATCH_HOOK_STREAM", "LossFn", "Outputs", "TrainState", "WeightNoise", "abstract_state", "cached", "ce_loss",
    "chain_batch_fns", "default_loop", "draw_mean", "epoch_indices", "init_state", "make_eval_fn", "make_logits_fn",
    "make_optimizer", "make_schedule", "make_split_scan", "make_train_chunk", "make_train_step", "map_draws",
    "perturb_params", "stateful", "variables_of", "with_state",
]

# (logits_BxK, feats): feats are the model's features, or None for a logits-only model.
Outputs = tuple[jax.Array, Any]
LossFn = Callable[[Outputs, dict[str, jax.Array]], jax.Array]

# Streams derived from the run key: fold_in(rng, stream) then fold_in(., step or epoch).
_DATA_STREAM, _AUGMENT_STREAM, _DROPOUT_STREAM, _WEIGHT_NOISE_STREAM = 0, 1, 2, 3
# The stream of the keys given to ``with_state`` batch hooks: fold_in(fold_in(rng, it), step).
BATCH_HOOK_STREAM = 0x0DEF

# How many built programs ``cached`` keeps (least recently used first out).
_CACHED_PROGRAMS = 64


def cached(build: Callable, model: nn.Module | Model, *args: Any) -> Any:
  """``build(model, *args)``, built once per process for equal arguments: the same object
  (e.g. the same jitted functions, with their compiled programs) for every call with an
  equal model -- its module compared by value, as flax modules are -- and equal ``args``
  (functions, losses and optimizers compare by identity; ``ce_loss`` and ``make_optimizer``
  return the same object for equal settings). The ``JAXPROTECT_XLA_CPU_DEFAULTS`` switch,
  read when the model is traced, is part of the key. The last ``_CACHED_PROGRAMS`` results
  are kept; with an unhashable argument (a user's module holding arrays) ``build`` runs for
  this call only."""
  model = as_model(model)
  key = (build, model.module, model.train_kwarg, model.negate_train, platform.cpu_defaults_enabled(), *args)
  try:
    hash(key)
  except TypeError:
    return build(model, *args)
  return _cached_build(*key)


@functools.lru_cache(maxsize=_CACHED_PROGRAMS)
def _cached_build(build, module, train_kwarg, negate_train, cpu_defaults, *args):
  del cpu_defaults  # only a key: the ops read the switch when traced
  return build(Model(module, train_kwarg, negate_train), *args)


@flax.struct.dataclass
class TrainState:
  """Everything a training phase needs to continue: a plain pytree.

  step: int32 scalar, optimiser steps taken.  rng: raw uint32[2] run key (constant;
  per-step keys are folded from it).  extra: method-specific state (e.g. centroids).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  extra: Any = flax.struct.field(default_factory=dict)


def variables_of(state: TrainState, params: Any = None) -> dict[str, Any]:
  """The ``variables`` dict for ``model.apply`` (``params`` overrides the state's)."""
  v = {"params": state.params if params is None else params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def _check_example(example_x: Any) -> None:
  checks.check_shape(example_x, "example_x", ndim=4)
  checks.check_floating(example_x, "example_x")


def _init_fn(model: Model, optimizer: optax.GradientTransformation):
  """``init(key, x, extra) -> TrainState`` (``extra`` an argument, so that one program
  serves every initial ``extra`` of the same shapes)."""

  def init(key, x, extra):
    with jax.threefry_partitionable(True):  # JAX's default, for the split as always computed
      init_key, run_key = jax.random.split(key)
    variables = model.init(init_key, x, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        rng=run_key,
        extra=extra,
    )

  return init


def _build_init(model: Model, optimizer: optax.GradientTransformation, mesh: Mesh | None):
  out_shardings = None if mesh is None else parallel.replicated(mesh)
  return jax.jit(_init_fn(model, optimizer), out_shardings=out_shardings)


def init_state(
    model: nn.Module | Model,
    optimizer: optax.GradientTransformation,
    example_x: jax.Array,
    key: jax.Array,
    mesh: Mesh | None = None,
    extra: Any = None,
) -> TrainState:
  """A fresh ``TrainState``: parameters initialised on ``example_x`` (float ``1 x H x W x C``;
  only its shape and dtype matter), replicated on ``mesh`` (default: the default device).

  ``model`` is a zoo model, a user's flax module or a ``models.Model`` (see
  ``models.contract``); its outputs are checked against the contract first. The program
  is built once per model, optimizer and mesh (``cached``); ``extra`` (the initial
  ``state.extra``) is one of its arguments.
  """
  model = as_model(model)
  _check_example(example_x)
  check_outputs(model, example_x)
  init = cached(_build_init, model, optimizer, mesh)
  extra = {} if extra is None else extra
  if mesh is not None:  # the program's argument, placed on its mesh wherever its arrays are
    extra = jax.device_put(extra, parallel.replicated(mesh))
  # platform.fast_init_prng: an init compiles several times faster on XLA:CPU.
  with platform.fast_init_prng():
    return init(key, example_x, extra)


def abstract_state(
    model: nn.Module | Model,
    optimizer: optax.GradientTransformation,
    example_x: jax.Array | jax.ShapeDtypeStruct,
    mesh: Mesh,
    extra: Any = None,
) -> TrainState:
  """The ``TrainState`` that ``init_state`` would return, as ``jax.ShapeDtypeStruct`` leaves
  carrying their shardings on ``mesh``, computed without placing anything on a device.

  For ahead-of-time compilation: ``make_train_step(...).lower(abstract_state(...), batch_spec)
  .compile()`` works on any mesh, also one over a compile-only topology
  (``jax.experimental.topologies``).
  """
  model = as_model(model)
  _check_example(example_x)
  check_outputs(model, example_x)
  x = jax.ShapeDtypeStruct(np.shape(example_x), example_x.dtype)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a raw PRNGKey, as init_state's rng
  with platform.fast_init_prng():
    shapes = jax.eval_shape(_init_fn(model, optimizer), key, x, {} if extra is None else extra)
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)


def stateful(loss_fn: Callable) -> Callable:
  """Marks ``loss_fn(outputs, batch, extra) -> (loss_B, new_extra)`` as a stateful loss."""
  loss_fn.uses_extra = True
  return loss_fn


def with_state(batch_fn: Callable) -> Callable:
  """Marks ``batch_fn(aux, batch, state, key) -> batch`` as a batch hook that sees the train
  state (before the step's update) and a per-step key (``BATCH_HOOK_STREAM``); see the
  module docstring. Returns ``batch_fn``."""
  if not callable(batch_fn):
    raise ValueError(f"batch_fn: expected a function (aux, batch, state, key) -> batch, got "
                     f"{type(batch_fn).__name__}")
  batch_fn.uses_state = True
  return batch_fn


def chain_batch_fns(*batch_fns: Callable | None) -> Callable | None:
  """One batch hook running ``batch_fns`` in order (``None`` entries skipped): plain hooks
  get ``(aux, batch)``, ``with_state`` hooks ``(aux, batch, state, key)``, the first of them
  the step's hook key itself and the i-th (i >= 1) ``fold_in(key, i)``. A single hook is
  returned as it is (so its programs are shared with runs that use it alone); the same hooks
  give the same chained function (``cached``)."""
  fns = tuple(f for f in batch_fns if f is not None)
  for f in fns:
    if not callable(f):
      raise ValueError(f"batch_fns: expected functions or None, got {type(f).__name__}")
  if len(fns) <= 1:
    return fns[0] if fns else None
  return _chained(fns)


@functools.lru_cache(maxsize=_CACHED_PROGRAMS)
def _chained(fns: tuple[Callable, ...]) -> Callable:
  stateful_fns = any(getattr(f, "uses_state", False) for f in fns)

  def chained(aux, batch, state=None, key=None):
    i = 0
    for f in fns:
      if getattr(f, "uses_state", False):
        batch = f(aux, batch, state, key if i == 0 else jax.random.fold_in(key, i))
        i += 1
      else:
        batch = f(aux, batch)
    return batch

  return with_state(chained) if stateful_fns else chained


def _apply_batch_fn(batch_fn: Callable | None, aux: Any, batch: dict[str, jax.Array], state: TrainState):
  """``batch`` through the batch hook (plain, or ``with_state`` with the step's hook key)."""
  if batch_fn is None:
    return batch
  if getattr(batch_fn, "uses_state", False):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, BATCH_HOOK_STREAM), state.step)
    return batch_fn(aux, batch, state, key)
  return batch_fn(aux, batch)


def ce_loss(label_smoothing: float = 0.0) -> LossFn:
  """The standard per-example cross-entropy loss on the logits: the same function for
  equal ``label_smoothing`` values (so programs built from it are reused, ``cached``)."""
  try:
    return _ce_loss(label_smoothing)
  except TypeError:  # an unhashable value (an array)
    return _ce_loss.__wrapped__(label_smoothing)


@functools.lru_cache(maxsize=16)
def _ce_loss(label_smoothing: float) -> LossFn:

  def loss_fn(outputs: Outputs, batch: dict[str, jax.Array]) -> jax.Array:
    return losses.cross_entropy(outputs[0], batch["label"], label_smoothing)

  return loss_fn


def make_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
  """Learning rate per step: ``constant``, ``cosine`` (to 0 at the end) or ``multistep``.

  ``opt.milestones`` (epochs) and ``opt.gamma`` drive multistep; ``opt.warmup_epochs``
  prepends a linear warm-up from 0.
  """
  total = max(1, steps_per_epoch * epochs)
  warmup = int(round(opt.get("warmup_epochs", 0) * steps_per_epoch))
  name = opt.get("schedule", "cosine")
  if name == "constant":
    main = optax.constant_schedule(opt.lr)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(opt.lr, max(1, total - warmup))
  elif name == "multistep":
    boundaries = {int(m * steps_per_epoch) - warmup: opt.get("gamma", 0.1) for m in opt.get("milestones", ())}
    main = optax.piecewise_constant_schedule(opt.lr, boundaries)
  else:
    raise ValueError(f"unknown learning-rate schedule {name!r}; use constant, cosine or multistep")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])
  return main


def make_optimizer(opt: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov, coupled L2 weight decay as in PyTorch), Adam or AdamW.

  Optional global-norm gradient clipping first (``opt.grad_clip`` > 0). Equal settings
  (the section's values, ``steps_per_epoch`` and ``epochs``) give the same object, so
  that programs built from it are reused (``cached``).
  """
  try:
    key = (json.dumps(opt.to_dict(), sort_keys=True), repr(steps_per_epoch), repr(epochs))  # repr: type and value
  except (AttributeError, TypeError, ValueError):  # not a config section of JSON values: build it for this call
    return _build_optimizer(opt, steps_per_epoch, epochs)
  optimizer = _OPTIMIZERS.get(key)
  if optimizer is None:
    optimizer = _OPTIMIZERS[key] = _build_optimizer(opt, steps_per_epoch, epochs)
    while len(_OPTIMIZERS) > _CACHED_PROGRAMS:
      _OPTIMIZERS.popitem(last=False)
  else:
    _OPTIMIZERS.move_to_end(key)
  return optimizer


# make_optimizer's built optimizers, by (the section as JSON, steps_per_epoch, epochs).
_OPTIMIZERS: collections.OrderedDict = collections.OrderedDict()


def _build_optimizer(opt: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
  lr = make_schedule(opt, steps_per_epoch, epochs)
  name = opt.get("name", "sgd")
  wd = opt.get("weight_decay", 0.0)
  parts = []
  if opt.get("grad_clip", 0.0):
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  if name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.sgd(lr, momentum=opt.get("momentum", 0.9) or None, nesterov=opt.get("nesterov", False)))
  elif name == "adam":
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.adam(lr))
  elif name == "adamw":
    parts.append(optax.adamw(lr, weight_decay=wd))
  else:
    raise ValueError(f"unknown optimizer {name!r}; use sgd, adam or adamw")
  return optax.chain(*parts)


def _check_batch(batch: dict[str, jax.Array]) -> None:
  """Structure of a training batch (at trace time): float images B x H x W x C, int labels B."""
  if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
    raise ValueError(f"batch: expected a dict with 'image' and 'label', got {type(batch).__name__} "
                     f"{sorted(batch) if isinstance(batch, dict) else ''}")
  checks.check_images_and_labels(batch["image"], batch["label"], "batch['image']", "batch['label']")


def _apply_loss(loss_fn: Callable, outputs: Outputs, batch: dict[str, jax.Array], extra: Any):
  """``(loss_B, new_extra)`` for a plain or a stateful loss."""
  if getattr(loss_fn, "uses_extra", False):
    loss_B, new_extra = loss_fn(outputs, batch, extra)
    new_extra = jax.lax.stop_gradient(new_extra)
  else:
    loss_B, new_extra = loss_fn(outputs, batch), extra
  b = np.shape(batch["image"])[0]
  if np.shape(loss_B) != (b,):
    raise ValueError(f"loss_fn: expected per-example losses of shape ({b},), got shape {np.shape(loss_B)}")
  return loss_B, new_extra


@dataclasses.dataclass(frozen=True)
class WeightNoise:
  """Random weight perturbations under which a model is trained or attacked (Provably
  Unlearnable Examples, Wang et al. 2025): for each noise level ``sigma`` in ``sigmas``,
  in order, a gradient averaged over ``draws`` models ``params + sigma * N(0, I)`` (one
  model when ``sigma`` is 0), then one update. ``ramp(0.25, 0.05, u)`` gives the paper's
  levels 0, 0.05, ..., 0.25."""

  sigmas: tuple[float, ...]
  draws: int = 1

  def __post_init__(self):
    if not self.sigmas or any(not s >= 0 for s in self.sigmas):
      raise ValueError(f"sigmas: expected noise levels >= 0, got {self.sigmas}")
    checks.check_positive_int(self.draws, "draws")

  @classmethod
  def ramp(cls, sigma_max: float, sigma_step: float, draws: int) -> "WeightNoise":
    """Levels ``j * sigma_step`` for ``j = 0 .. int(sigma_max / sigma_step)`` (the
    reference's ``times``)."""
    if not sigma_step > 0 or sigma_max < 0:
      raise ValueError(f"sigma_step must be > 0 and sigma_max >= 0, got {sigma_step}, {sigma_max}")
    return cls(tuple(round(j * sigma_step, 12) for j in range(int(sigma_max / sigma_step + 1e-9) + 1)), draws)


def perturb_params(params: Any, key: jax.Array, sigma: Any) -> Any:
  """``params + sigma * N(0, I)`` on every leaf (one key per leaf, split from ``key``)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [p + sigma * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def map_draws(fn: Callable, indices: jax.Array, mesh: Mesh | None = None, vectorize: bool | None = None) -> Any:
  """``fn`` over the weight-draw ``indices``, stacked: a ``vmap`` on accelerators, a
  ``lax.map`` (one draw after another, inside the same program) on CPU, where XLA runs a
  vmap over weights as grouped convolutions 2-3x slower than the draws one by one
  (docs/BENCHMARKS.md). ``vectorize`` forces one or the other."""
  if not (vectorize if vectorize is not None else not platform.is_cpu(mesh)):
    return jax.lax.map(fn, indices)
  return jax.vmap(fn)(indices)


def draw_mean(fn: Callable, key: jax.Array, sigma: float, draws: int) -> Any:
  """The mean over ``draws`` of ``fn(key_k)`` (``key_k = fold_in(key, k)``; ``map_draws``);
  a single call when ``sigma`` is 0 (every draw would be the same model)."""
  if sigma == 0 or draws == 1:
    return fn(jax.random.fold_in(key, 0))
  out = map_draws(lambda k: fn(jax.random.fold_in(key, k)), jnp.arange(draws))
  return jax.tree.map(lambda a: jnp.mean(a, axis=0), out)


def _step_fn(model: Model, loss_fn: LossFn, optimizer: optax.GradientTransformation,
             weight_noise: WeightNoise | None = None):
  """The un-jitted step ``(state, batch) -> (state, metrics)``."""
  if weight_noise is not None:
    return _noisy_step_fn(model, loss_fn, optimizer, weight_noise)

  def step(state: TrainState, batch: dict[str, jax.Array]):
    _check_batch(batch)
    batch = {**batch, "step": state.step}
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, _DROPOUT_STREAM), state.step)

    def objective(params):
      (logits, feats), new_vars = model.apply(
          variables_of(state, params), batch["image"], train=True, mutable=["batch_stats"],
          rngs={"dropout": dropout_key}
      )
      loss_B, new_extra = _apply_loss(loss_fn, (logits, feats), batch, state.extra)
      return jnp.mean(loss_B), (new_vars.get("batch_stats", {}), logits, new_extra)

    (loss, (batch_stats, logits, extra)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": jnp.mean(losses.accuracy(logits, batch["label"]))}
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, extra=extra)
    return new, metrics

  return step


def _noisy_step_fn(model: Model, loss_fn: LossFn, optimizer: optax.GradientTransformation, noise: WeightNoise):
  """The step under ``noise``: one update per noise level, each with the gradient of the
  mean loss over the level's draws, divided by the number of levels (the reference's loss
  scaling, ``loss / (times * draws)``, with an optimizer step per level). BatchNorm
  statistics and ``extra`` are the draws' mean after the last level; the metrics are
  those of the last level."""
  levels = len(noise.sigmas)

  def step(state: TrainState, batch: dict[str, jax.Array]):
    _check_batch(batch)
    batch = {**batch, "step": state.step}
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, _DROPOUT_STREAM), state.step)
    noise_key = jax.random.fold_in(jax.random.fold_in(state.rng, _WEIGHT_NOISE_STREAM), state.step)
    params, opt_state, batch_stats, extra = state.params, state.opt_state, state.batch_stats, state.extra
    for j, sigma in enumerate(noise.sigmas):

      def one(key, params=params, sigma=sigma):
        def objective(p):
          (logits, feats), new_vars = model.apply(
              variables_of(state, perturb_params(p, key, sigma)), batch["image"], train=True, mutable=["batch_stats"],
              rngs={"dropout": dropout_key})
          loss_B, new_extra = _apply_loss(loss_fn, (logits, feats), batch, state.extra)
          acc = jnp.mean(losses.accuracy(logits, batch["label"]))
          return jnp.mean(loss_B), (new_vars.get("batch_stats", {}), acc, new_extra)

        return jax.value_and_grad(objective, has_aux=True)(params)

      (loss, (batch_stats, acc, extra)), grads = draw_mean(one, jax.random.fold_in(noise_key, j), sigma, noise.draws)
      grads = jax.tree.map(lambda g: g / levels, grads)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, extra=extra)
    return new, {"loss": loss, "accuracy": acc}

  return step


def make_train_step(
    model: nn.Module | Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    donate: bool = True,
    batch_fn: Callable | None = None,
    weight_noise: WeightNoise | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """The jitted train step ``step(state, batch, aux=None) -> (state, metrics)``.

  ``batch``: a dict with ``image`` (float ``B x H x W x C`` in [0, 1]) and ``label`` (int
  ``B``); it is split along the mesh's ``data`` axis (a batch placed otherwise, e.g.
  replicated or a host array, is resharded inside the step). The state is replicated and
  donated; ``loss_fn(outputs, batch) -> loss_B`` gets ``outputs = (logits_BxK, feats)``
  (``feats`` None for a logits-only model). ``batch_fn(aux, batch)`` (optional; or
  ``batch_fn(aux, batch, state, key)`` when marked ``with_state``) runs first.
  ``metrics``: batch ``loss`` and ``accuracy`` (of the batch as the hook left it). ``weight_noise`` (optional): train
  under random weight perturbations (``WeightNoise``; keys from the state's run key and
  step).

  The result is a ``jax.jit`` function: ``step.lower(abstract_state(...), batch_spec)``
  compiles it ahead of time. Equal arguments give the same function (``cached``).
  """
  return cached(_build_train_step, model, loss_fn, optimizer, mesh, bool(donate), batch_fn, weight_noise)


def _build_train_step(model: Model, loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                      donate: bool, batch_fn: Callable | None, weight_noise: WeightNoise | None):
  rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
  step = _step_fn(model, loss_fn, optimizer, weight_noise)

  def train_step(state, batch, aux=None):
    state = jax.lax.with_sharding_constraint(state, rep)
    batch = jax.lax.with_sharding_constraint(batch, dat)
    return step(state, _apply_batch_fn(batch_fn, aux, batch, state))

  return jax.jit(train_step, out_shardings=(rep, rep), donate_argnums=(0,) if donate else ())


def epoch_indices(rng: jax.Array, epoch: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Positions of every batch of an epoch, S x B (a fresh permutation per epoch; the
  last partial batch is dropped)."""
  key = jax.random.fold_in(jax.random.fold_in(rng, _DATA_STREAM), epoch)
  steps = num_examples // batch_size
  return jax.random.permutation(key, num_examples)[: steps * batch_size].reshape(steps, batch_size)


def default_loop(mesh: Mesh | None = None) -> str:
  """``"scan"`` on accelerators; ``"host"`` on CPU, where XLA runs convolutions inside a
  while loop several times slower than in a plain jitted step (docs/BENCHMARKS.md)."""
  return "host" if platform.is_cpu(mesh) else "scan"


def make_train_chunk(
    model: nn.Module | Model,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    batch_size: int,
    augment: AugmentConfig = AugmentConfig(),
    donate: bool = True,
    loop: str | None = None,
    batch_fn: Callable | None = None,
    weight_noise: WeightNoise | None = None,
):
  """``chunk(state, split, num_steps, aux=None) -> (state, metrics_S)``: ``num_steps``
  training steps continuing the epoch at ``state.step``.

  Batches are gathered from the on-device split (with its perturbation) and augmented
  inside jit; batch ``i`` of epoch ``e`` is fixed by the run key, so a resumed run sees
  the same batches. The chunk must not cross an epoch boundary (``fit`` ensures this).
  ``loop="scan"`` runs the chunk as one ``lax.scan`` on device (``num_steps`` is static:
  each distinct value compiles once); ``loop="host"`` dispatches one jitted
  gather-augment-step per step from Python (no data leaves the device either way).
  Default: ``default_loop()``. ``batch_fn(aux, batch)`` (optional) transforms each batch
  inside jit; ``aux`` is passed at call time; a ``with_state`` hook also gets the state and
  the step's hook key (see the module docstring). ``weight_noise``
  as in ``make_train_step``. The host loop returns its metrics as host (numpy) arrays,
  stacked on the host: one program per step whatever ``num_steps``. Equal arguments give
  the same function (``cached``).
  """
  model = as_model(model)
  checks.check_batch_size(batch_size)
  parallel.check_divisible(batch_size, mesh, "batch_size")
  loop = loop or default_loop(mesh)
  if loop not in ("scan", "host"):
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  return cached(_build_train_chunk, model, loss_fn, optimizer, mesh, batch_size, augment, bool(donate), loop,
                batch_fn, weight_noise)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _epoch_rows(rng: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """``epoch_indices`` of the epoch of ``step``: one program per split size and batch size,
  shared by every chunk."""
  return epoch_indices(rng, step // (num_examples // batch_size), num_examples, batch_size)


def _build_train_chunk(model: Model, loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                       batch_size: int, augment: AugmentConfig, donate: bool, loop: str, batch_fn: Callable | None,
                       weight_noise: WeightNoise | None):
  step = _step_fn(model, loss_fn, optimizer, weight_noise)
  batch_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
  rep = parallel.replicated(mesh)
  donate_args = (0,) if donate else ()

  def rows_of(state: TrainState, split: DeviceSplit, num_steps: int) -> jax.Array:
    steps_per_epoch = split.size // batch_size
    epoch, offset = state.step // steps_per_epoch, state.step % steps_per_epoch
    return jax.lax.dynamic_slice_in_dim(epoch_indices(state.rng, epoch, split.size, batch_size), offset, num_steps)

  def body(st: TrainState, split: DeviceSplit, idx_B: jax.Array, aux: Any):
    idx_B = jax.lax.with_sharding_constraint(idx_B, batch_sharding)
    aug_key = jax.random.fold_in(jax.random.fold_in(st.rng, _AUGMENT_STREAM), st.step)
    batch = batch_from(split, aug_key, idx_B, augment)
    return step(st, _apply_batch_fn(batch_fn, aux, batch, st))

  if loop == "scan":

    @functools.partial(jax.jit, static_argnums=(2,), out_shardings=(rep, rep), donate_argnums=donate_args)
    def chunk(state: TrainState, split: DeviceSplit, num_steps: int, aux: Any = None):
      return jax.lax.scan(lambda st, idx_B: body(st, split, idx_B, aux), state, rows_of(state, split, num_steps))

    return chunk

  # The whole epoch's rows (one program for every chunk length); each step picks its row
  # by the traced ``state.step``, so one step program serves every step. A chunk stays
  # within one epoch, as ``rows_of`` assumes for the scan form.
  def host_step(st, split, rows, aux):
    return body(st, split, rows[st.step % rows.shape[0]], aux)

  body_jit = jax.jit(host_step, out_shardings=(rep, rep), donate_argnums=donate_args)

  sync = parallel.sync_each_step(mesh)

  def host_chunk(state: TrainState, split: DeviceSplit, num_steps: int, aux: Any = None):
    rows = _epoch_rows(state.rng, state.step, split.size, batch_size)
    metrics = []
    for _ in range(num_steps):
      state, m = body_jit(state, split, rows, aux)
      if sync:
        jax.block_until_ready(m)
      metrics.append(m)
    # Stacked on the host: a stack on device would be one more program per chunk length.
    return state, jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(metrics))

  host_chunk._cache_size = body_jit._cache_size  # compiled variants, as for the scan form
  return host_chunk


def make_split_scan(model: nn.Module | Model, mesh: Mesh, batch_size: int,
                    apply_fn: Callable | None = None) -> Callable:
  """The padded evaluation-mode pass over a whole split that ``make_eval_fn``,
  ``make_logits_fn`` and the weight-draw evaluation of ``unlearnable.certify`` share:
  ``scan(variables, split, body, init) -> (carry, outs_S)``, to call inside jit.

  The split's ``N`` examples go through ``model`` (``train=False``) in ``S = ceil(N / B)``
  batches of ``batch_size`` positions, split along the mesh's ``data`` axis; the last batch is
  padded with copies of the last example. ``body(carry, logits, labels_B, mask_B) ->
  (carry, out)`` is the ``lax.scan`` body, with ``mask_B`` 1.0 for real examples and 0.0 for
  the padding. ``logits`` is ``apply_fn(variables, x_BxHxWxC)`` (default: the model's
  ``logits_BxK`` in evaluation mode; e.g. ``D x B x K`` for a vmap over weight draws).
  """
  model = as_model(model)
  checks.check_batch_size(batch_size)
  parallel.check_divisible(batch_size, mesh, "eval batch_size")
  batch_sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
  if apply_fn is None:
    apply_fn = lambda variables, x: model.apply(variables, x, train=False)[0]  # noqa: E731

  def scan(variables: dict[str, Any], split: DeviceSplit, body: Callable, init: Any):
    n = split.size
    steps = -(-n // batch_size)
    pos_SxB = jnp.arange(steps * batch_size).reshape(steps, batch_size)

    def step(carry, pos_B):
      pos_B = jax.lax.with_sharding_constraint(pos_B, batch_sharding)
      mask_B = (pos_B < n).astype(jnp.float32)
      x, y = split.gather(jnp.minimum(pos_B, n - 1))
      return body(carry, apply_fn(variables, x), y, mask_B)

    return jax.lax.scan(step, init, pos_SxB)

  return scan


def make_eval_fn(model: nn.Module | Model, mesh: Mesh, batch_size: int, num_classes: int):
  """``evaluate(state, split) -> metrics``: loss, accuracy and per-class counts over a
  whole split (no augmentation, no perturbation is applied unless the split has one),
  as one jitted scan; the last batch is padded and masked. Equal arguments give the same
  function (``cached``)."""
  model = as_model(model)
  checks.check_batch_size(batch_size)
  parallel.check_divisible(batch_size, mesh, "eval batch_size")
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  return cached(_build_eval_fn, model, mesh, batch_size, num_classes)


def _build_eval_fn(model: Model, mesh: Mesh, batch_size: int, num_classes: int):
  scan = make_split_scan(model, mesh, batch_size)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def evaluate(state: TrainState, split: DeviceSplit):
    n = split.size

    def body(acc, logits, y, mask):
      loss = losses.cross_entropy(logits, y) * mask
      correct = losses.accuracy(logits, y) * mask
      onehot = jax.nn.one_hot(y, num_classes) * mask[:, None]
      acc = {
          "loss": acc["loss"] + loss.sum(),
          "correct": acc["correct"] + correct.sum(),
          "class_correct": acc["class_correct"] + (onehot * correct[:, None]).sum(0),
          "class_count": acc["class_count"] + onehot.sum(0),
      }
      return acc, None

    zeros = {"loss": 0.0, "correct": 0.0, "class_correct": jnp.zeros(num_classes),
             "class_count": jnp.zeros(num_classes)}
    tot, _ = scan(variables_of(state), split, body, zeros)
    return {
        "loss": tot["loss"] / n,
        "accuracy": tot["correct"] / n,
        "class_accuracy": tot["class_correct"] / jnp.maximum(tot["class_count"], 1.0),
    }

  return evaluate


def make_logits_fn(model: nn.Module | Model, mesh: Mesh, batch_size: int):
  """``logits_fn(variables, split) -> logits_NxK`` (float32, replicated) over a whole split in
  evaluation mode, as one jitted scan; the last batch is padded and the padding dropped.

  ``variables`` are the model's (``variables_of(state)``, or a loaded teacher's); used for
  full-pass CMIM centroids and the CMI curve (``jaxprotect.distill``). Equal arguments give
  the same function (``cached``).
  """
  model = as_model(model)
  checks.check_batch_size(batch_size)
  parallel.check_divisible(batch_size, mesh, "eval batch_size")
  return cached(_build_logits_fn, model, mesh, batch_size)


def _build_logits_fn(model: Model, mesh: Mesh, batch_size: int):
  scan = make_split_scan(model, mesh, batch_size)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def logits_fn(variables: dict[str, Any], split: DeviceSplit):
    def body(carry, logits_BxK, *_):  # labels and mask unused: the padding rows are sliced off below
      return carry, logits_BxK.astype(jnp.float32)

    _, logits_SxBxK = scan(variables, split, body, None)
    return logits_SxBxK.reshape(-1, logits_SxBxK.shape[-1])[:split.size]

  return logits_fn
