"""Shadow models for likelihood-ratio membership inference, trained together.

LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference Attacks From
First Principles", IEEE S&P 2022) trains M shadow models of the target's architecture,
each on a random half of a candidate pool (``mia.keep_masks``), and reads their
confidence on every candidate. The models are many small identical networks, so they
train here in lockstep: one program runs a ``jax.vmap`` of the engine's train step
(``jaxprotect.train``) over the models' parameters, optimiser states and batches.

* ``train_shadow_models(model, split, keep_MxN, key, optimizer, mesh, ...)`` -- trains
  models ``start .. stop - 1`` together. Model m starts from ``fold_in(key, m)``
  (``train.init_state``) and trains only on its IN examples: each epoch, a permutation
  of its own IN list drawn from its run key, cut into batches. When every model has the
  same number of IN examples (``keep_masks`` levels them), model m trains exactly as the
  engine would on the split of its IN examples (``train.make_train_chunk``, same
  batches, same augmentation keys); otherwise every model takes ``min_m |IN_m| //
  batch_size`` batches per epoch from a fresh random order of its own IN examples. The
  dataset stays on device, replicated; the model axis is split over the mesh's ``data``
  axis (``shard_map``: each device trains its own models, no communication), a number
  of models that does not divide evenly being padded with repeats of the last one
  (computed, then dropped). Nothing depends on which other models share a program, so
  any chunking and any device count give the same models (to float rounding of the
  batched convolutions).
* ``shadow_logits(model, states, queries, mesh)`` -- every model's logits on a query set
  (e.g. the candidate pool), optionally with the horizontal flip: ``M x Q x N x K``.
* ``shadow_chunks(...)`` -- trains and queries ``models_per_chunk`` models at a time,
  yielding each chunk's logits (the unit a resumable phase checkpoints; pass ``start``
  to continue after the last finished chunk).
* ``shadow_statistics(logits_MxQxNxK, labels_N)`` -- LiRA statistics ``M x N x Q`` for
  ``mia.lira_online`` / ``mia.lira_offline`` / ``mia.lira_leave_one_out``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxprotect import checks, models, parallel, platform, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.data.device import DeviceSplit, batch_from
from jaxprotect.privacy import mia

__all__ = ["ShadowChunk", "in_indices", "shadow_chunks", "shadow_logits", "shadow_statistics", "train_shadow_models"]


@dataclasses.dataclass(frozen=True)
class ShadowChunk:
  """Models ``start .. stop - 1``: their logits on the queries (float32 ``P x Q x N x K``,
  host) and their mean training loss and accuracy over the last epoch (``P``)."""

  start: int
  stop: int
  logits: np.ndarray
  loss: np.ndarray
  accuracy: np.ndarray


# ---------------------------------------------------------------------------------------
# Index sets
# ---------------------------------------------------------------------------------------

def _keep(keep_MxN: Any, num_examples: int | None = None) -> np.ndarray:
  keep = np.asarray(keep_MxN)
  checks.check_shape(keep, "keep_MxN", ndim=2)
  if keep.dtype != bool:
    if not np.issubdtype(keep.dtype, np.integer) or not np.all((keep == 0) | (keep == 1)):
      raise ValueError(f"keep_MxN: expected booleans (or 0/1), got dtype {keep.dtype}")
    keep = keep.astype(bool)
  if keep.shape[0] < 1:
    raise ValueError(f"keep_MxN: expected at least one model, got shape {keep.shape}")
  if num_examples is not None and keep.shape[1] != num_examples:
    raise ValueError(f"keep_MxN: expected one column per example of the split ({num_examples}), "
                     f"got shape {keep.shape}")
  return keep


def in_indices(keep_MxN: Any) -> tuple[np.ndarray, np.ndarray]:
  """Each model's IN examples: ``(idx_MxI, counts_M)``, int32; row m lists the ``counts[m]``
  examples of model m in increasing order, padded to ``I = max(counts)`` with its first
  one (padding is never trained on). Raises ``ValueError`` for a model without any."""
  keep = _keep(keep_MxN)
  counts = keep.sum(1)
  if counts.min() < 1:
    raise ValueError(f"keep_MxN: model {int(np.argmin(counts))} has no IN example")
  idx = np.empty((keep.shape[0], int(counts.max())), np.int32)
  for m, row in enumerate(keep):
    own = np.flatnonzero(row)
    idx[m, : own.size], idx[m, own.size:] = own, own[0]
  return idx, counts.astype(np.int32)


def _positions(rng: jax.Array, epoch: jax.Array, count: jax.Array, width: int, steps: int,
               batch_size: int) -> jax.Array:
  """Batches of epoch ``epoch`` of a model with ``count`` IN examples, as positions in its
  IN list, ``steps x batch_size``: the engine's epoch permutation of ``width`` positions
  (``train.epoch_indices``), keeping, in order, those below ``count`` -- the engine's own
  batches when ``count == width``, a uniformly random order of the model's examples
  otherwise."""
  perm = train.epoch_indices(rng, epoch, width, width)[0]  # one batch of all: the permutation
  perm = perm[jnp.argsort(perm >= count, stable=True)]
  return perm[: steps * batch_size].reshape(steps, batch_size)


# ---------------------------------------------------------------------------------------
# The programs: one vmap over the models of each device
# ---------------------------------------------------------------------------------------

def _model_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(parallel.DATA_AXIS))


def _padded(num: int, mesh: Mesh) -> int:
  d = parallel.num_shards(mesh)
  return -(-num // d) * d


def _pad_models(tree: Any, num: int) -> Any:
  """Repeats the last model (leading axis) up to ``num`` models."""
  def pad(a):
    extra = num - a.shape[0]
    return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)])
  return jax.tree.map(pad, tree)


class _Programs:
  """The jitted programs for one model, optimiser, mesh and recipe, shared by every
  chunk (so each compiles once)."""

  def __init__(self, model: models.Model, optimizer: optax.GradientTransformation, mesh: Mesh, loss_fn: Callable,
               augment: AugmentConfig, batch_size: int, epochs: int, steps: int, width: int, loop: str):
    self.model, self.optimizer, self.mesh = model, optimizer, mesh
    self.epochs, self.steps, self.loop = epochs, steps, loop
    step = train._step_fn(model, loss_fn, optimizer)
    spec, rep = P(parallel.DATA_AXIS), P()

    def one_step(st: train.TrainState, split: DeviceSplit, idx_I: jax.Array, rows_SxB: jax.Array):
      idx_B = idx_I[rows_SxB[st.step % steps]]
      aug_key = jax.random.fold_in(jax.random.fold_in(st.rng, train._AUGMENT_STREAM), st.step)
      return step(st, batch_from(split, aug_key, idx_B, augment))

    def rows_local(states, counts_L):
      return jax.vmap(lambda st, c: _positions(st.rng, st.step // steps, c, width, steps, batch_size))(states, counts_L)

    def step_local(states, split, idx_LxI, rows_LxSxB):
      return jax.vmap(one_step, in_axes=(0, None, 0, 0))(states, split, idx_LxI, rows_LxSxB)

    def smap(f, in_specs, out_specs):
      return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

    if loop == "scan":
      def train_local(states, split, idx_LxI, counts_L):
        def epoch(sts, _):
          rows = rows_local(sts, counts_L)
          return jax.lax.scan(lambda s, _: step_local(s, split, idx_LxI, rows), sts, None, length=steps)

        states, metrics_ExSxL = jax.lax.scan(epoch, states, None, length=epochs)
        return states, jax.tree.map(lambda a: a.reshape(epochs * steps, -1), metrics_ExSxL)

      self.train_all = jax.jit(smap(train_local, (spec, rep, spec, spec), (spec, P(None, parallel.DATA_AXIS))),
                               donate_argnums=(0,))
    else:
      self.rows = jax.jit(smap(rows_local, (spec, spec), spec))
      self.step = jax.jit(smap(step_local, (spec, rep, spec, spec), (spec, spec)), donate_argnums=(0,))

    self._inits: dict[tuple[int, ...], Callable] = {}

  def init(self, key: jax.Array, ids_P: jax.Array, image_shape: tuple[int, ...]) -> train.TrainState:
    """Fresh states of models ``ids_P``, split along the model axis; model m's equals
    ``train.init_state(model, optimizer, zeros(1 x image_shape), fold_in(key, m))``."""
    if image_shape not in self._inits:
      example = np.zeros((1, *image_shape), np.float32)
      init_one = lambda k, i: train.init_state(self.model, self.optimizer, example, jax.random.fold_in(k, i))
      self._inits[image_shape] = jax.jit(jax.vmap(init_one, in_axes=(None, 0)),
                                         out_shardings=_model_sharding(self.mesh))
    with platform.fast_init_prng():  # the engine's initialisation PRNG, for the whole program
      return self._inits[image_shape](key, ids_P)

  def fit(self, states, split, idx_PxI, counts_P):
    """All epochs; returns the states and ``{"loss", "accuracy"}`` of shape steps x P."""
    if self.loop == "scan":
      return self.train_all(states, split, idx_PxI, counts_P)
    sync = parallel.sync_each_step(self.mesh)
    metrics = []
    for _ in range(self.epochs):
      rows = self.rows(states, counts_P)
      for _ in range(self.steps):
        states, m = self.step(states, split, idx_PxI, rows)
        if sync:
          jax.block_until_ready(m)
        metrics.append(m)
    return states, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


@dataclasses.dataclass
class _Setup:
  programs: _Programs
  idx: np.ndarray
  counts: np.ndarray
  num_models: int


def _setup(model, split, keep_MxN, optimizer, mesh, epochs, batch_size, augment, loss_fn, loop) -> _Setup:
  if not isinstance(split, DeviceSplit):
    raise ValueError(f"split: expected a data.DeviceSplit (e.g. dataset.train), got {type(split).__name__}")
  keep = _keep(keep_MxN, split.size)
  epochs = checks.check_positive_int(epochs, "epochs")
  batch_size = checks.check_batch_size(batch_size)
  idx, counts = in_indices(keep)
  if counts.min() < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the {int(counts.min())} IN examples of model "
                     f"{int(np.argmin(counts))}")
  steps = int(counts.min()) // batch_size
  if isinstance(optimizer, ml_collections.ConfigDict):
    optimizer = _OptimizerSection(json.dumps(optimizer.to_dict(), sort_keys=True, default=str))
  elif not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError("optimizer: expected an optax GradientTransformation or an optimizer config section "
                     f"(config.optimizer_config()), got {type(optimizer).__name__}")
  if augment is None or isinstance(augment, str):
    augment = AugmentConfig.parse(augment)
  loop = loop or train.default_loop(mesh)
  if loop not in ("scan", "host"):
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  model = models.as_model(model)
  args = (optimizer, mesh, loss_fn, augment, batch_size, epochs, steps, int(idx.shape[1]), loop)
  try:  # the same programs for every call with the same model, optimizer, loss and recipe
    programs = _cached_programs(model.module, model.train_kwarg, model.negate_train, *args)
  except TypeError:  # something unhashable (a user's module): programs for this call only
    programs = _programs(model, *args)
  return _Setup(programs, idx, counts, keep.shape[0])


@dataclasses.dataclass(frozen=True)
class _OptimizerSection:
  """An optimizer config section as a hashable value (its JSON)."""
  json: str


def _programs(model, optimizer, mesh, loss_fn, augment, batch_size, epochs, steps, width, loop) -> _Programs:
  if isinstance(optimizer, _OptimizerSection):
    optimizer = train.make_optimizer(ml_collections.ConfigDict(json.loads(optimizer.json)), steps, epochs)
  return _Programs(model, optimizer, mesh, loss_fn or train.ce_loss(), augment, batch_size, epochs, steps, width,
                   loop)


@functools.lru_cache(maxsize=8)
def _cached_programs(module, train_kwarg, negate_train, *args) -> _Programs:
  return _programs(models.Model(module, train_kwarg, negate_train), *args)


def _range(start: int, stop: int | None, num_models: int) -> tuple[int, int]:
  stop = num_models if stop is None else stop
  if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer)) and 0 <= start < stop
          <= num_models):
    raise ValueError(f"start, stop: expected 0 <= start < stop <= {num_models} (the models of keep_MxN), "
                     f"got {start}, {stop}")
  return int(start), int(stop)


def _train_range(setup: _Setup, split: DeviceSplit, key: jax.Array, start: int, stop: int):
  """Models start..stop-1, padded to a multiple of the device count: (states, metrics)."""
  mesh = setup.programs.mesh
  num = _padded(stop - start, mesh)
  ids = np.minimum(np.arange(start, start + num), stop - 1)
  ids_P, idx, counts = parallel.put((ids.astype(np.uint32), setup.idx[ids], setup.counts[ids]),
                                    _model_sharding(mesh))
  states = setup.programs.init(key, ids_P, tuple(split.image_shape))
  return setup.programs.fit(states, split, idx, counts)


def train_shadow_models(
    model: nn.Module | models.Model,
    split: DeviceSplit,
    keep_MxN: Any,
    key: jax.Array,
    optimizer: optax.GradientTransformation | ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    epochs: int,
    batch_size: int,
    start: int = 0,
    stop: int | None = None,
    augment: AugmentConfig | str | None = None,
    loss_fn: Callable | None = None,
    loop: str | None = None,
) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """Trains shadow models ``start .. stop - 1`` (default: all M) of ``keep_MxN`` together.

  Args:
    model: a zoo model or a user's flax module (``models.as_model``).
    split: the candidate pool on device (``dataset.train``); row n of ``keep_MxN`` says
      which models train on its example n. Replicated on every device inside.
    keep_MxN: bool ``M x N`` (``mia.keep_masks``); the whole matrix, also when training a
      range of its models (the epoch length is that of the model with fewest examples).
    key: model m starts from ``train.init_state(model, optimizer, x, fold_in(key, m))``.
    optimizer: an optax transformation, or an optimizer config section
      (``config.optimizer_config()``, built with ``train.make_optimizer`` for this epoch
      length).
    mesh: the ``data`` mesh; the models are split along it.
    epochs, batch_size: the recipe; ``steps = min_m |IN_m| // batch_size`` per epoch.
    augment: ``AugmentConfig`` or its string form (``"crop2,flip"``); default none.
    loss_fn: the per-example loss (``train.LossFn``); default cross-entropy. A batch's
      ``index`` is the examples' positions in ``split``.
    loop: ``"scan"`` (all epochs as one program) or ``"host"`` (one program per step);
      default ``train.default_loop(mesh)``.

  Returns:
    ``(states, metrics)``: a ``train.TrainState`` whose leaves carry a leading model axis
    of ``stop - start``, and ``{"loss", "accuracy"}`` per step and model (``steps x P``).
  """
  setup = _setup(model, split, keep_MxN, optimizer, mesh, epochs, batch_size, augment, loss_fn, loop)
  start, stop = _range(start, stop, setup.num_models)
  states, metrics = _train_range(setup, split, key, start, stop)
  p = stop - start
  return jax.tree.map(lambda a: a[:p], states), jax.tree.map(lambda a: a[:, :p], metrics)


# ---------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _cached_logits_program(module: Any, train_kwarg: str | None, negate_train: bool, mesh: Mesh, batch_size: int,
                           flip: bool) -> Callable:
  return _logits_program(models.Model(module, train_kwarg, negate_train), mesh, batch_size, flip)


def _logits_fn(model: models.Model, mesh: Mesh, batch_size: int, flip: bool) -> Callable:
  """The jitted query program, compiled once per model, mesh, batch size and flip (a model
  whose module cannot be hashed gets a fresh program per call)."""
  try:
    return _cached_logits_program(model.module, model.train_kwarg, model.negate_train, mesh, batch_size, flip)
  except TypeError:
    return _logits_program(model, mesh, batch_size, flip)


def _logits_program(model: models.Model, mesh: Mesh, batch_size: int, flip: bool) -> Callable:
  q = 2 if flip else 1

  def local(states, split: DeviceSplit):
    n = split.size
    steps = -(-n // batch_size)

    def body(_, pos_B):
      x, _ = split.gather(jnp.minimum(pos_B, n - 1))
      xq = jnp.concatenate([x, x[:, :, ::-1, :]]) if flip else x  # the image, then its mirror

      def one(st):
        logits = model.apply(train.variables_of(st), xq, train=False)[0]
        return logits.astype(jnp.float32).reshape(q, batch_size, -1)

      return None, jax.vmap(one)(states)  # L x Q x B x K

    _, out = jax.lax.scan(body, None, jnp.arange(steps * batch_size).reshape(steps, batch_size))
    out = jnp.moveaxis(out, 0, 2)  # L x Q x S x B x K
    return out.reshape(*out.shape[:2], steps * batch_size, out.shape[-1])[:, :, :n]

  spec = P(parallel.DATA_AXIS)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, P()), out_specs=spec))


def shadow_logits(model: nn.Module | models.Model, states: train.TrainState, queries: DeviceSplit, mesh: Mesh, *,
                  batch_size: int = 256, flip: bool = True) -> jax.Array:
  """The logits of every model of ``states`` (a leading model axis, as
  ``train_shadow_models`` returns) on every example of ``queries``, in evaluation mode:
  float32 ``M x Q x N x K`` with ``Q = 2`` (the image, then its horizontal mirror) when
  ``flip``, else 1. The queries are read ``batch_size`` at a time (the last batch padded);
  the models are split along the mesh's ``data`` axis, as in training."""
  if not isinstance(queries, DeviceSplit):
    raise ValueError(f"queries: expected a data.DeviceSplit, got {type(queries).__name__}")
  batch_size = checks.check_batch_size(batch_size)
  m = int(jax.tree.leaves(states.params)[0].shape[0])
  states = jax.device_put(_pad_models(states, _padded(m, mesh)), _model_sharding(mesh))
  return _logits_fn(models.as_model(model), mesh, batch_size, flip)(states, queries)[:m]


def shadow_statistics(logits_MxQxNxK: Any, labels_N: Any) -> np.ndarray:
  """LiRA statistics of query logits (``shadow_logits``): ``mia.lira_statistic`` per
  model, query and example (computed in float64 when ``jax_enable_x64`` is on, else
  float32), returned as float64 ``M x N x Q`` -- the layout of ``mia.lira_online``,
  ``lira_offline`` and ``lira_leave_one_out``. Higher = more likely a member."""
  checks.check_shape(logits_MxQxNxK, "logits_MxQxNxK", ndim=4)
  logits = parallel.to_host(logits_MxQxNxK) if isinstance(logits_MxQxNxK, jax.Array) else logits_MxQxNxK
  phi = mia.lira_statistic(np.asarray(logits), np.asarray(labels_N))
  return np.moveaxis(np.asarray(phi, np.float64), 1, 2)


# ---------------------------------------------------------------------------------------
# Chunks of models: train, then query
# ---------------------------------------------------------------------------------------

def shadow_chunks(
    model: nn.Module | models.Model,
    split: DeviceSplit,
    keep_MxN: Any,
    key: jax.Array,
    optimizer: optax.GradientTransformation | ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    epochs: int,
    batch_size: int,
    models_per_chunk: int = 0,
    start: int = 0,
    queries: DeviceSplit | None = None,
    flip: bool = True,
    eval_batch_size: int = 256,
    augment: AugmentConfig | str | None = None,
    loss_fn: Callable | None = None,
    loop: str | None = None,
) -> Iterator[ShadowChunk]:
  """Trains the models of ``keep_MxN`` from model ``start`` on, ``models_per_chunk`` at a
  time (0: all at once), and yields each chunk's logits on ``queries`` (default: the
  pool ``split`` itself) as a ``ShadowChunk``. The models are those of
  ``train_shadow_models`` with the same arguments, whatever the chunking, so a run that
  stops after a chunk continues with ``start`` at the next; every chunk reuses the same
  compiled programs (chunks of one size compile once; a smaller last chunk once more).

  ``np.concatenate([c.logits for c in shadow_chunks(...)])`` is the ``M x Q x N x K``
  logits of all models; ``shadow_statistics`` turns them into LiRA statistics.
  """
  setup = _setup(model, split, keep_MxN, optimizer, mesh, epochs, batch_size, augment, loss_fn, loop)
  start, _ = _range(start, None, setup.num_models)
  per = setup.num_models if models_per_chunk == 0 else checks.check_positive_int(models_per_chunk,
                                                                                 "models_per_chunk")
  queries = split if queries is None else queries
  if not isinstance(queries, DeviceSplit):
    raise ValueError(f"queries: expected a data.DeviceSplit, got {type(queries).__name__}")
  eval_batch_size = checks.check_batch_size(eval_batch_size, "eval_batch_size")
  for lo in range(start, setup.num_models, per):
    hi = min(lo + per, setup.num_models)
    states, metrics = _train_range(setup, split, key, lo, hi)  # padded to the devices: query them all
    logits = _logits_fn(setup.programs.model, mesh, eval_batch_size, flip)(states, queries)[: hi - lo]
    last = jax.tree.map(lambda a: np.asarray(parallel.to_host(a))[-setup.programs.steps:, : hi - lo].mean(0), metrics)
    yield ShadowChunk(lo, hi, np.asarray(parallel.to_host(logits)), last["loss"], last["accuracy"])
