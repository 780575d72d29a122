"""Sign-PGD that *minimises* an objective over an L-inf ball, and the perturbation passes
over a whole on-device training set (sample-wise and class-wise).

Pixel values are in [0, 1]; ``eps`` and step sizes are in pixel units. A stored
sample-wise perturbation of uint8 images ``u`` satisfies ``|delta| <= eps`` and
``0 <= u / 255 + delta <= 1`` exactly -- so also in float32 or float64 arithmetic, on the
host or on device, whichever way ``u / 255`` is rounded (``box_bounds_u8``) -- and no later
clipping changes it.
"""

from __future__ import annotations

import fractions
import functools
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxprotect import checks, losses, parallel, platform, train
from jaxprotect.data.augment import AugmentConfig, augment_batch
from jaxprotect.data.device import DeviceSplit
from jaxprotect.models.contract import Model, as_model, features_of


class Objective(Protocol):
  """What PGD descends: ``objective(outputs, batch) -> scalar``.

  ``outputs = (logits_BxK, feats)`` as the model returns them (``feats`` None for a
  logits-only model, see ``models.contract``); ``batch = {"image": x_BxHxWxC + delta,
  "label": labels_B}``.

  ``per_example``: True for a sample-separable objective (a sum of per-example terms, e.g.
  ``error_minimizing_objective``), whose gradient for an example does not depend on its
  batch-mates; False for a batch-level one (``mi_ue_objective``), which couples the
  examples of a batch -- its passes are then best visited in a new order every time
  (``pass_rows`` with a key; crafting's ``craft.reshuffle="auto"``). An objective without
  the attribute counts as batch-coupled (``per_example``).
  """

  per_example: bool

  def __call__(self, outputs: tuple[jax.Array, Any], batch: dict[str, jax.Array]) -> jax.Array:
    ...


def per_example(objective: Any) -> bool:
  """Whether ``objective`` is sample-separable (its ``per_example`` attribute; False,
  batch-coupled, when it has none)."""
  return bool(getattr(objective, "per_example", False))


def _float32_toward(value: fractions.Fraction, up: bool) -> np.float32:
  """The float32 nearest to ``value`` on the side ``up`` (>=) or down (<=)."""
  f = np.float32(float(value))
  if up and fractions.Fraction(float(f)) < value:
    f = np.nextafter(f, np.float32(np.inf))
  if not up and fractions.Fraction(float(f)) > value:
    f = np.nextafter(f, np.float32(-np.inf))
  return np.float32(f)


# For each uint8 value u: the float32 bounds of delta with 0 <= u / 255 + delta <= 1 exactly.
_LOWER_U8 = np.array([_float32_toward(fractions.Fraction(-u, 255), up=True) for u in range(256)], np.float32)
_UPPER_U8 = np.array([_float32_toward(1 - fractions.Fraction(u, 255), up=False) for u in range(256)], np.float32)


def box_bounds_u8(images_u8: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(lower, upper)``, float32 of the images' shape: the widest float32 perturbation range
  with ``0 <= u / 255 + delta <= 1`` in exact arithmetic for the uint8 images ``u``. Rounded
  inwards, so the box also holds for ``u / 255`` rounded either way in float32 or float64."""
  if jnp.dtype(images_u8.dtype) != jnp.uint8:
    raise ValueError(f"images_u8: expected uint8 images, got dtype {images_u8.dtype}")
  idx = images_u8.astype(jnp.int32)
  return jnp.asarray(_LOWER_U8)[idx], jnp.asarray(_UPPER_U8)[idx]


def project(delta: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
  """The perturbation nearest to ``delta`` with ``|delta| <= eps`` and ``x + delta`` in [0, 1].

  ``delta`` and ``x``: float, same shape (or broadcastable); ``eps >= 0`` (checked at once
  when concrete, under ``checks.value_checks`` when traced).
  """
  checks.check_nonnegative(eps, "eps")
  return jnp.clip(delta, jnp.maximum(-eps, -x), jnp.minimum(eps, 1.0 - x))


def project_u8(delta: jax.Array, images_u8: jax.Array, eps: float | jax.Array) -> jax.Array:
  """``project`` for uint8 images: ``|delta| <= eps`` and ``0 <= u / 255 + delta <= 1``
  exactly (``box_bounds_u8``)."""
  checks.check_nonnegative(eps, "eps")
  lower, upper = box_bounds_u8(images_u8)
  return jnp.clip(delta, jnp.maximum(-eps, lower), jnp.minimum(eps, upper))


def sign_descent(delta: jax.Array, grad: jax.Array, x: jax.Array, eps, alpha) -> jax.Array:
  """One error-minimising sign step: ``project(delta - alpha * sign(grad))``."""
  return project(delta - alpha * jnp.sign(grad), x, eps)


@functools.lru_cache(maxsize=None)
def error_minimizing_objective() -> Objective:
  """Sum of the per-example cross-entropies (EM noise, Huang et al. 2021); always the same
  function (so the passes built from it are reused, ``train.cached``)."""

  def objective(outputs, batch):
    return jnp.sum(losses.cross_entropy(outputs[0], batch["label"]))

  objective.per_example = True
  return objective


def mi_ue_objective(temperature: float = 0.1, exclude_self: bool = False, zeta: float = 0.0) -> Objective:
  """The batch mean of ``losses.mi_ue_loss`` on the model's features (MI-UE): intra-class
  feature collapse. Needs a model that returns ``(logits, features)``. Equal arguments give
  the same function (so the passes built from it are reused, ``train.cached``)."""
  try:
    return _mi_ue_objective(temperature, exclude_self, zeta)
  except TypeError:  # an unhashable value (an array)
    return _mi_ue_objective.__wrapped__(temperature, exclude_self, zeta)


@functools.lru_cache(maxsize=16)
def _mi_ue_objective(temperature, exclude_self, zeta) -> Objective:

  def objective(outputs, batch):
    feats = features_of(outputs, "mi_ue_objective")
    return jnp.mean(losses.mi_ue_loss(feats, batch["label"], temperature=temperature, exclude_self=exclude_self,
                                      zeta=zeta))

  objective.per_example = False  # the contrastive sums run over the batch
  return objective


def default_unroll(mesh: Mesh | None = None) -> bool:
  """Unroll the PGD steps on CPU (``mesh``'s platform, else the default backend): XLA:CPU
  runs a ResNet's convolution gradients inside a while loop about 5x slower than unrolled
  (docs/BENCHMARKS.md); on accelerators a loop keeps compiles short."""
  return platform.is_cpu(mesh)


def make_batch_pgd(model: nn.Module | Model, objective: Objective, num_steps: int, unroll: bool | None = None,
                   mesh: Mesh | None = None, weight_noise: train.WeightNoise | None = None) -> Callable:
  """``pgd(variables, x_BxHxWxC, y_B, delta_BxHxWxC, eps, alpha, x_also=None, noise_key=None)
  -> delta``: ``num_steps`` (>= 1) sign steps descending ``objective`` with the model in
  eval mode (BatchNorm running statistics).

  ``weight_noise`` (PUE, Wang et al. 2025): each step becomes one sign step per noise
  level of ``weight_noise.sigmas``, each descending the objective averaged over
  ``weight_noise.draws`` models ``params + sigma * N(0, I)`` (vmapped), with keys from
  ``noise_key`` (required then), the step and the level.

  ``x``: float images in [0, 1]; ``y``: int labels; ``delta``: float, ``x``'s shape;
  ``eps``, ``alpha`` >= 0 (pixel units). ``x_also`` (optional): other images the
  perturbation must stay valid for (``x_also + delta`` in [0, 1] too), e.g. the
  unaugmented images when ``x`` is an augmented view of them. ``unroll`` (default
  ``default_unroll(mesh)``) writes the steps out instead of a ``fori_loop``. Shapes and
  dtypes are checked when traced; pixel ranges and signs when concrete, or under
  ``checks.value_checks``.
  """
  model = as_model(model)
  checks.check_positive_int(num_steps, "num_steps")
  unroll = default_unroll(mesh) if unroll is None else unroll

  def grad_fn(variables, x, y, d):
    return jax.grad(lambda d: objective(model.apply(variables, x + d, train=False), {"image": x + d, "label": y}))(d)

  def noisy_grad(variables, x, y, d, key, sigma):
    def one(k):
      return grad_fn({**variables, "params": train.perturb_params(variables["params"], k, sigma)}, x, y, d)

    return train.draw_mean(one, key, sigma, weight_noise.draws)

  def check(x, y, d, eps, alpha, noise_key):
    checks.check_images_and_labels(x, y, "x", "y")
    checks.check_shape(d, "delta", shape=np.shape(x))
    checks.check_nonnegative(eps, "eps")
    checks.check_nonnegative(alpha, "alpha")
    if weight_noise is not None and noise_key is None:
      raise ValueError("noise_key: PGD under weight noise needs a key")

  def pgd(variables, x, y, d, eps, alpha, x_also=None, noise_key=None):
    check(x, y, d, eps, alpha, noise_key)

    def descend(d, g):
      d = sign_descent(d, g, x, eps, alpha)
      # Both boxes contain 0, so clipping to one and then the other is clipping to their intersection.
      return d if x_also is None else project(d, x_also, eps)

    def body(i, d):
      if weight_noise is None:
        return descend(d, grad_fn(variables, x, y, d))
      for j, sigma in enumerate(weight_noise.sigmas):
        d = descend(d, noisy_grad(variables, x, y, d, jax.random.fold_in(jax.random.fold_in(noise_key, i), j), sigma))
      return d

    return jax.lax.fori_loop(0, num_steps, body, d, unroll=bool(unroll))

  return pgd


def _grid(num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """``pass_rows`` without a key: the positions in the fixed order and the first-visit mask."""
  full = num_examples // batch_size
  pos = jnp.arange(full * batch_size, dtype=jnp.int32).reshape(full, batch_size)
  mask = jnp.ones_like(pos, dtype=bool)
  if num_examples % batch_size:
    last = jnp.arange(num_examples - batch_size, num_examples, dtype=jnp.int32)
    pos = jnp.concatenate([pos, last[None]])
    mask = jnp.concatenate([mask, (last >= full * batch_size)[None]])
  return pos, mask


def _order(key: jax.Array, num_examples: int) -> jax.Array:
  """The visiting order of a pass with an order key: ``jax.random.permutation``, int32."""
  return jax.random.permutation(key, num_examples).astype(jnp.int32)


def pass_rows(num_examples: int, batch_size: int, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Positions R x B visiting every example once, and the mask of the rows' first visits.

  Without ``key`` the order is fixed (0, 1, ..., N - 1); with ``key`` it is
  ``jax.random.permutation(key, N)``, a new order for each key (e.g. one per outer
  iteration) that still visits every example exactly once. A last partial batch is filled
  with the examples just before it in that order (they give context to batch-level
  objectives but are not updated a second time: their mask entries are False).
  """
  pos, mask = _grid(num_examples, batch_size)
  if key is not None:  # row r, column b visits order[pos[r, b]]: a relabelling of the positions
    pos = _order(key, num_examples)[pos]
  return pos, mask


def _check_pass_args(split: DeviceSplit, eps: Any, alpha: Any) -> None:
  if jnp.dtype(split.images.dtype) != jnp.uint8:
    raise ValueError(f"split.images: expected uint8 images, got dtype {split.images.dtype}")
  checks.check_nonnegative(eps, "eps")
  checks.check_nonnegative(alpha, "alpha")


# -- The sample-wise pass in pass order ----------------------------------------------------
#
# The pass holds the training set as R x B "slots": slot (r, b) is the example that row r of
# ``pass_rows`` visits in column b, each example flattened to one row of H * W * C values,
# and the slots are split along the mesh's ``data`` axis over b. Each device then holds,
# for every batch, exactly the examples it computes on: a batch reads and writes its
# perturbation without communication, whatever the number of devices (but for a last,
# partial batch, whose context rows come from the devices that just updated them). The perturbation
# enters and leaves the slots once per pass (a gather, then its inverse); it moves as
# unsigned integers of its width, so that no collective can alter a bit (-0.0 stays -0.0).


def _bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * jnp.dtype(x.dtype).itemsize}"))


def _to_slots(rows: jax.Array, order: jax.Array | None, batch_size: int, sharding: NamedSharding,
              source: NamedSharding | None = None) -> jax.Array:
  """``rows`` (N x ...) as R x B x ...: slot (r, b) holds the row of ``pass_rows(N, B)``'s
  position (r, b) in ``order`` (the fixed order when None). ``source``: the layout of
  ``rows`` as it comes (kept, so that replicated rows are sliced where they are)."""
  n = rows.shape[0]
  if source is not None:
    rows = jax.lax.with_sharding_constraint(rows, source)
  full = n // batch_size
  if order is None:  # contiguous rows, and the last batch's context just before it
    slots = rows[:full * batch_size].reshape(full, batch_size, *rows.shape[1:])
    if n % batch_size:
      slots = jnp.concatenate([slots, rows[n - batch_size:][None]])
  else:
    slots = rows[order[_grid(n, batch_size)[0]]]
  return jax.lax.with_sharding_constraint(slots, sharding)


def _from_slots(slots: jax.Array, order: jax.Array | None, num_examples: int) -> jax.Array:
  """The inverse of ``_to_slots``: N x ... with the row of each example's first visit."""
  batch_size = slots.shape[1]
  full, rem = divmod(num_examples, batch_size)
  flat = slots.reshape(-1, *slots.shape[2:])
  # Visiting order: the full rows, then the first visits of the last row (its last rem slots).
  visited = flat if not rem else jnp.concatenate([flat[:full * batch_size], flat[(full + 1) * batch_size - rem:]])
  if order is None:
    return visited
  inverse = jnp.zeros(num_examples, jnp.int32).at[order].set(jnp.arange(num_examples, dtype=jnp.int32))
  return visited[inverse]


def _spec_of(x: Any, mesh: Mesh) -> P | None:
  """The ``PartitionSpec`` of a concrete or abstract array placed on ``mesh``'s axes (fully
  replicated: ``P()``); None for a tracer or another placement."""
  if isinstance(x, jax.core.Tracer):
    return None
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, NamedSharding):
    names = set()
    for part in sharding.spec:
      names |= set(part) if isinstance(part, tuple) else ({part} if part is not None else set())
    return sharding.spec if names <= set(mesh.axis_names) else None
  if sharding is not None and sharding.is_fully_replicated:
    return P()
  return None


def make_samplewise_pass(model: nn.Module | Model, objective: Objective, mesh: Mesh, batch_size: int,
                         num_steps: int, loop: str | None = None, unroll: bool | None = None,
                         weight_noise: train.WeightNoise | None = None, donate: bool = False) -> Callable:
  """``run(variables, split, eps, alpha, key=None, order_key=None, noise_key=None) ->
  delta_NxHxWxC``:
  ``num_steps`` PGD steps on every batch of the training set, starting from ``split.delta``.

  The batches are the rows of ``pass_rows(N, batch_size, order_key)``: in order without
  ``order_key`` (each example always meets the same batch-mates), in the permutation of
  ``order_key`` with one (pass a new key per pass for a batch-coupled objective such as
  MI-UE's; ``Objective.per_example``). Either way every example is updated exactly once.

  ``split``: a ``DeviceSplit`` with a sample-wise perturbation (``delta_mode="sample"``);
  ``eps``, ``alpha`` >= 0 (pixel units); the result satisfies the box guarantee of the
  module docstring for the split's uint8 images, and is laid out as ``split.delta`` is
  (replicated, or split along ``data``).

  A split with ``clean_augment`` (MI-UE's post-augmentation crafting) descends the
  objective on augmented clean images plus the unmoved perturbation; batch ``r`` draws its
  augmentation from ``fold_in(key, r)``, and the perturbation stays valid for the
  unaugmented images as well. (``r`` counts the rows in the order visited, so a reordered
  pass draws the same augmentation keys.) With ``weight_noise`` (``make_batch_pgd``), batch
  ``r`` draws its weight noise from ``fold_in(noise_key, r)``.

  A replicated ``split.delta`` (the replicated data layout) is not kept whole on every
  device during the pass: the perturbation, images and labels are held in the order the
  pass visits them, each batch split along the mesh's ``data`` axis, so that every device
  keeps the perturbation of the examples it computes on (about N / devices of them) and a
  batch moves no perturbation between devices, however many there are (but for a last,
  partial batch, whose context comes from the devices that updated it); the new
  perturbation is gathered onto every device once, when the pass ends. A ``split.delta``
  split along ``data`` (the sharded layout) stays where it is, each batch gathering and
  scattering its rows. Either way the perturbation moves between devices as the bits of
  its values: 8 devices give the bits of 1 device, the signs of zeros included.

  ``donate=True``: the pass consumes ``split.delta`` -- the scan form writes its result
  into that buffer (donated to the program), the host form frees it once the pass has
  taken its copy -- so ``split.delta`` must not be used afterwards (it is deleted).
  Crafting loops that replace the perturbation by the pass's result save one
  perturbation's memory per device this way.

  ``loop="scan"``: the whole pass is one program (``run.lower(...)`` compiles it ahead of
  time; ``run.jitted`` is its ``jax.jit`` function); ``"host"``: one jitted call per batch,
  dispatched from Python (``run.jitted`` is the per-batch program; the data never leaves
  the device either way). Default: ``train.default_loop(mesh)`` (host on CPU). Equal
  arguments give the same function (``train.cached``).
  """
  model = as_model(model)
  loop = loop or train.default_loop(mesh)
  checks.check_positive_int(num_steps, "num_steps")
  checks.check_batch_size(batch_size, "batch_size")
  parallel.check_divisible(batch_size, mesh, "PGD batch_size")
  if loop not in ("scan", "host"):
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  if not isinstance(donate, (bool, np.bool_)):
    raise ValueError(f"donate: expected True or False, got {donate!r}")
  unroll = default_unroll(mesh) if unroll is None else bool(unroll)
  return train.cached(_build_samplewise_pass, model, objective, mesh, batch_size, num_steps, loop, unroll,
                      weight_noise, bool(donate))


def _build_samplewise_pass(model: Model, objective: Objective, mesh: Mesh, batch_size: int, num_steps: int,
                           loop: str, unroll: bool, weight_noise: train.WeightNoise | None,
                           donate: bool) -> Callable:
  pgd = make_batch_pgd(model, objective, num_steps, unroll, mesh=mesh, weight_noise=weight_noise)
  rows = NamedSharding(mesh, P(parallel.DATA_AXIS))
  slot_sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS))

  def placed(spec: P | None) -> NamedSharding | None:
    return None if spec is None else NamedSharding(mesh, spec)

  def to_slots(split: DeviceSplit, delta: jax.Array, order: jax.Array | None, specs: tuple[P | None, ...]):
    """Images (uint8), labels and perturbation in pass order, R x B (x H * W * C); ``specs``:
    the layouts of the images, labels and perturbation."""
    n = split.size
    images = _to_slots(split.images.reshape(n, -1), order, batch_size, slot_sharding, placed(specs[0]))
    labels = _to_slots(split.labels, order, batch_size, slot_sharding, placed(specs[1]))
    delta_bits = _to_slots(_bits(delta).reshape(n, -1), order, batch_size, slot_sharding, placed(specs[2]))
    return images, labels, jax.lax.bitcast_convert_type(delta_bits, delta.dtype)

  def from_slots(delta_slots, order, num_examples: int, image_shape: tuple[int, ...], out_spec: P | None):
    bits = _bits(delta_slots)
    if out_spec == P():  # a replicated result: every device takes all the slots once, then rearranges its copy
      bits = jax.lax.with_sharding_constraint(bits, parallel.replicated(mesh))
    out = _from_slots(bits, order, num_examples)
    out = jax.lax.bitcast_convert_type(out, delta_slots.dtype).reshape(num_examples, *image_shape)
    return out if out_spec is None else jax.lax.with_sharding_constraint(out, NamedSharding(mesh, out_spec))

  def update(variables, images_slots, labels_slots, delta_slots, mask_B, row, key, eps, alpha, noise_key,
             clean_augment: AugmentConfig, image_shape: tuple[int, ...], num_examples: int):
    """Row ``row`` of the pass on the slots; returns the slots with that row's new perturbation."""
    shape = (batch_size, *image_shape)
    take = lambda slots: jax.lax.with_sharding_constraint(  # noqa: E731
        jax.lax.dynamic_index_in_dim(slots, row, keepdims=False), rows)
    u8 = take(images_slots).reshape(shape)
    x = u8.astype(jnp.float32) / 255.0
    d = take(delta_slots)
    rem = num_examples % batch_size
    if rem:  # the last row's context: the examples the row before it has just updated
      def with_context(d):
        before = jax.lax.dynamic_index_in_dim(delta_slots, row - 1, keepdims=False)
        return jnp.where(mask_B[:, None], d, jnp.roll(before, -rem, axis=0))

      d = jax.lax.cond(row == delta_slots.shape[0] - 1, with_context, lambda d: d, d)
    d = d.reshape(shape)
    x_seen, x_also = x, None
    if clean_augment.enabled:  # the model sees the augmented view; delta stays valid for both
      x_seen, x_also = augment_batch(jax.random.fold_in(key, row), x, clean_augment), x
    nk = None if noise_key is None else jax.random.fold_in(noise_key, row)
    new = project_u8(pgd(variables, x_seen, take(labels_slots), d, eps, alpha, x_also=x_also, noise_key=nk), u8,
                     eps)
    new = jnp.where(mask_B[:, None, None, None], new, d)
    out = jax.lax.dynamic_update_index_in_dim(delta_slots, new.reshape(batch_size, -1), row, 0)
    return jax.lax.with_sharding_constraint(out, slot_sharding)

  def by_rows(specs: tuple[P | None, ...]) -> bool:
    """Whether the perturbation is split over devices as it comes (not replicated): the pass
    then leaves it where it is, each batch gathering and scattering its rows."""
    return specs[2] is not None and specs[2] != P()

  def update_rows(variables, split, delta, pos_B, mask_B, row, key, eps, alpha, noise_key):
    """Row ``row`` (positions ``pos_B``) on the perturbation in its own layout; its rows are
    gathered as the unsigned integers of their bits (a cross-device sum of those is exact)."""
    pos_B = jax.lax.with_sharding_constraint(pos_B, rows)
    u8 = split.images[pos_B]
    x = u8.astype(jnp.float32) / 255.0
    d = jax.lax.bitcast_convert_type(_bits(delta)[pos_B], delta.dtype)
    x_seen, x_also = x, None
    if split.clean_augment.enabled:
      x_seen, x_also = augment_batch(jax.random.fold_in(key, row), x, split.clean_augment), x
    nk = None if noise_key is None else jax.random.fold_in(noise_key, row)
    new = project_u8(pgd(variables, x_seen, split.labels[pos_B], d, eps, alpha, x_also=x_also, noise_key=nk), u8, eps)
    new = jnp.where(mask_B[:, None, None, None], new, d)
    return delta.at[pos_B].set(new)

  def check(split, delta, key, eps, alpha):
    if split.delta_mode != "sample":
      raise ValueError("split: the sample-wise pass needs a split with a sample-wise perturbation "
                       f"(delta_mode='sample'), got {split.delta_mode!r}")
    if delta is None:
      raise ValueError("split.delta: the sample-wise pass needs a perturbation, got None")
    checks.check_shape(delta, "split.delta", shape=(split.size, *split.image_shape))
    checks.check_floating(delta, "split.delta")
    if split.size < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the {split.size} training examples of split")
    if key is None and split.clean_augment.enabled:
      raise ValueError("key: a split with clean_augment needs a key for the sample-wise pass")
    _check_pass_args(split, eps, alpha)

  def arguments(variables, split, eps, alpha, key=None, order_key=None, noise_key=None):
    """The pass's arguments with the perturbation apart from the split (so that it alone can
    be donated), and the layouts of the images, labels and perturbation."""
    if split.delta_mode != "sample" or split.delta is None:
      check(split, split.delta, key, eps, alpha)
    delta = split.delta
    specs = tuple(_spec_of(a, mesh) for a in (split.images, split.labels, delta))
    return (variables, split.replace(delta=None), delta, eps, alpha, key, order_key, noise_key), specs

  if loop == "scan":

    def sweep(variables, split, delta, eps, alpha, key, order_key, noise_key, specs):
      check(split, delta, key, eps, alpha)
      n = split.size
      if by_rows(specs):
        pos, mask = pass_rows(n, batch_size, order_key)

        def body_rows(delta, pmr):
          return update_rows(variables, split, delta, *pmr, key, eps, alpha, noise_key), None

        delta = jax.lax.scan(body_rows, delta, (pos, mask, jnp.arange(pos.shape[0], dtype=jnp.int32)))[0]
        return jax.lax.with_sharding_constraint(delta, NamedSharding(mesh, specs[2]))
      order = None if order_key is None else _order(order_key, n)
      images, labels, delta_slots = to_slots(split, delta, order, specs)
      mask = _grid(n, batch_size)[1]

      def body(delta_slots, r):
        return update(variables, images, labels, delta_slots, mask[r], r, key, eps, alpha, noise_key,
                      split.clean_augment, split.image_shape, n), None

      delta_slots = jax.lax.scan(body, delta_slots, jnp.arange(mask.shape[0], dtype=jnp.int32))[0]
      return from_slots(delta_slots, order, n, split.image_shape, specs[2])

    sweep_jit = jax.jit(sweep, static_argnames=("specs",), donate_argnums=(2,) if donate else ())

    def run(variables, split, eps, alpha, key=None, order_key=None, noise_key=None):
      args, specs = arguments(variables, split, eps, alpha, key, order_key, noise_key)
      return sweep_jit(*args, specs=specs)

    def lower(variables, split, eps, alpha, key=None, order_key=None, noise_key=None):
      args, specs = arguments(variables, split, eps, alpha, key, order_key, noise_key)
      return sweep_jit.lower(*args, specs=specs)

    run.lower, run.jitted = lower, sweep_jit
    return run

  sync = parallel.sync_each_step(mesh)

  def prepare(split, delta, order_key, specs):
    order = None if order_key is None else _order(order_key, split.size)
    return (*to_slots(split, delta, order, specs), _grid(split.size, batch_size)[1], order)

  def finish(delta_slots, order, num_examples, image_shape, out_spec):
    return from_slots(delta_slots, order, num_examples, image_shape, out_spec)

  # Row i is selected inside jit (a traced index): one program for every row.
  def samplewise_row(v, images, labels, delta_slots, mask, i, key, eps, alpha, nk, clean_augment, image_shape,
                     num_examples):
    return update(v, images, labels, delta_slots, mask[i], i, key, eps, alpha, nk, clean_augment, image_shape,
                  num_examples)

  def prepare_rows(delta, order_key, num_examples):
    return (*pass_rows(num_examples, batch_size, order_key), jnp.copy(delta))

  def rows_row(v, split, delta, pos, mask, i, key, eps, alpha, nk):
    return update_rows(v, split, delta, pos[i], mask[i], i, key, eps, alpha, nk)

  prepare_rows_jit = jax.jit(prepare_rows, static_argnames=("num_examples",))
  rows_jit = jax.jit(rows_row, donate_argnums=(2,))
  prepare_jit = jax.jit(prepare, static_argnames=("specs",))
  finish_jit = jax.jit(finish, static_argnames=("num_examples", "image_shape", "out_spec"))
  update_jit = jax.jit(samplewise_row, static_argnames=("clean_augment", "image_shape", "num_examples"),
                       donate_argnums=(3,))

  def run_host(variables, split, eps, alpha, key=None, order_key=None, noise_key=None):
    delta = split.delta
    check(split, delta, key, eps, alpha)
    specs = tuple(_spec_of(a, mesh) for a in (split.images, split.labels, delta))
    if by_rows(specs):
      return run_rows(variables, split, delta, eps, alpha, key, order_key, noise_key)
    images, labels, delta_slots, mask, order = prepare_jit(split.replace(delta=None), delta, order_key, specs=specs)
    if donate and isinstance(delta, jax.Array):
      jax.block_until_ready(delta_slots)  # the copy is taken
      delta.delete()
    static = {"clean_augment": split.clean_augment, "image_shape": split.image_shape, "num_examples": split.size}
    for i in range(mask.shape[0]):  # the row as a host scalar: no program to make it
      delta_slots = update_jit(variables, images, labels, delta_slots, mask, np.int32(i), key, eps, alpha, noise_key,
                               **static)
      if sync:
        jax.block_until_ready(delta_slots)
    return finish_jit(delta_slots, order, num_examples=split.size, image_shape=split.image_shape, out_spec=specs[2])

  def run_rows(variables, split, delta, eps, alpha, key, order_key, noise_key):
    pos, mask, new = prepare_rows_jit(delta, order_key, num_examples=split.size)
    if donate and isinstance(delta, jax.Array):
      jax.block_until_ready(new)  # the copy is taken
      delta.delete()
    rest = split.replace(delta=None)
    for i in range(pos.shape[0]):  # the row as a host scalar: no program to make it
      new = rows_jit(variables, rest, new, pos, mask, np.int32(i), key, eps, alpha, noise_key)
      if sync:
        jax.block_until_ready(new)
    return new

  run_host.jitted = update_jit
  return run_host


def make_classwise_pass(model: nn.Module | Model, objective: Objective, mesh: Mesh, batch_size: int,
                        num_steps: int, num_classes: int, loop: str | None = None,
                        unroll: bool | None = None, weight_noise: train.WeightNoise | None = None) -> Callable:
  """``run(variables, split, positions, eps, alpha, noise_key=None) -> delta_KxHxWxC`` for
  class-wise noise (``weight_noise`` as in ``make_samplewise_pass``).

  For each batch of ``positions`` (R x B, e.g. a fixed 20% subset): ``num_steps`` PGD steps
  per example starting from its class's noise; then each class present in the batch
  takes the mean of its examples' perturbations, clipped to ``eps`` (Huang et al.'s
  class-wise rule). Classes absent from a batch keep their noise. ``loop`` as in
  ``make_samplewise_pass`` (the scan form is itself a ``jax.jit`` function). Equal
  arguments give the same function (``train.cached``).
  """
  model = as_model(model)
  loop = loop or train.default_loop(mesh)
  checks.check_positive_int(num_steps, "num_steps")
  checks.check_batch_size(batch_size, "batch_size")
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  parallel.check_divisible(batch_size, mesh, "PGD batch_size")
  if loop not in ("scan", "host"):
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  unroll = default_unroll(mesh) if unroll is None else bool(unroll)
  return train.cached(_build_classwise_pass, model, objective, mesh, batch_size, num_steps, num_classes, loop,
                      unroll, weight_noise)


def _build_classwise_pass(model: Model, objective: Objective, mesh: Mesh, batch_size: int, num_steps: int,
                          num_classes: int, loop: str, unroll: bool,
                          weight_noise: train.WeightNoise | None) -> Callable:
  pgd = make_batch_pgd(model, objective, num_steps, unroll, mesh=mesh, weight_noise=weight_noise)
  rows = NamedSharding(mesh, P(parallel.DATA_AXIS))

  def update(variables, split: DeviceSplit, delta_K, pos_B, row, eps, alpha, noise_key=None):
    pos_B = jax.lax.with_sharding_constraint(pos_B, rows)
    x = split.images[pos_B].astype(jnp.float32) / 255.0
    y = split.labels[pos_B]
    d = project(delta_K[y], x, eps)
    nk = None if noise_key is None else jax.random.fold_in(noise_key, row)
    new = pgd(variables, x, y, d, eps, alpha, noise_key=nk)
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    count = onehot.sum(0)
    mean = jnp.einsum("bk,bhwc->khwc", onehot, new) / jnp.maximum(count, 1.0)[:, None, None, None]
    return jnp.where((count > 0)[:, None, None, None], jnp.clip(mean, -eps, eps), delta_K)

  def check(split, positions, eps, alpha):
    if split.delta_mode != "class":
      raise ValueError("split: the class-wise pass needs a split with a class-wise perturbation "
                       f"(delta_mode='class'), got {split.delta_mode!r}")
    checks.check_shape(positions, "positions", shape=(None, batch_size))
    _check_pass_args(split, eps, alpha)

  if loop == "scan":

    @jax.jit
    def run(variables, split, positions, eps, alpha, noise_key=None):
      check(split, positions, eps, alpha)
      rows_r = jnp.arange(positions.shape[0], dtype=jnp.int32)
      return jax.lax.scan(lambda d, pr: (update(variables, split, d, *pr, eps, alpha, noise_key), None), split.delta,
                          (positions, rows_r))[0]

    return run
  sync = parallel.sync_each_step(mesh)

  def classwise_row(v, s, d, positions, i, eps, alpha, nk):
    return update(v, s, d, positions[i], i, eps, alpha, nk)

  update_jit = jax.jit(classwise_row)

  def run_host(variables, split, positions, eps, alpha, noise_key=None):
    check(split, positions, eps, alpha)
    delta = split.delta
    for i in range(positions.shape[0]):  # the row as a host scalar: no program to make it
      delta = update_jit(variables, split, delta, positions, np.int32(i), eps, alpha, noise_key)
      if sync:
        jax.block_until_ready(delta)
    return delta

  run_host.jitted = update_jit
  return run_host


def init_delta(key: jax.Array, shape: tuple[int, ...], eps: float, images_u8: jax.Array | None = None) -> jax.Array:
  """Uniform noise in [-eps, eps] (the reference initialisation), float32 of ``shape``;
  with the uint8 images (sample-wise, ``shape`` = their shape) projected so that
  ``u / 255 + delta`` is in [0, 1] (``project_u8``)."""
  checks.check_nonnegative(eps, "eps")
  delta = jax.random.uniform(key, shape, jnp.float32, -eps, eps)
  if images_u8 is not None:
    checks.check_shape(images_u8, "images_u8", shape=tuple(shape))
    delta = project_u8(delta, images_u8, eps)
  return delta


__all__ = [
    "Objective", "box_bounds_u8", "default_unroll", "error_minimizing_objective", "init_delta",
    "make_batch_pgd", "make_classwise_pass", "make_samplewise_pass", "mi_ue_objective", "pass_rows", "per_example",
    "project", "project_u8", "sign_descent",
]
