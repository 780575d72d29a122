"""Sign-PGD that *minimises* an objective over an L-inf ball, and the perturbation passes
over a whole on-device training set (sample-wise and class-wise).

Pixel values are in [0, 1]; ``eps`` and step sizes are in pixel units. A stored
perturbation always satisfies ``|delta| <= eps`` and ``0 <= x + delta <= 1`` (the
intersection of the two boxes, so no later clipping changes it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxprotect import losses, parallel, train
from jaxprotect.data.augment import augment_batch
from jaxprotect.data.device import DeviceSplit

# objective(outputs, batch) -> scalar to *descend*; outputs = (logits_BxK, feats_BxD),
# batch = {"image", "label"}. Sample-separable objectives (a sum of per-example terms)
# give per-example gradients; batch-level ones (MI-UE) couple the examples of a batch.
Objective = Callable[[tuple[jax.Array, jax.Array], dict[str, jax.Array]], jax.Array]


def project(delta: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
  """The perturbation nearest to ``delta`` with ``|delta| <= eps`` and ``x + delta`` in [0, 1]."""
  return jnp.clip(delta, jnp.maximum(-eps, -x), jnp.minimum(eps, 1.0 - x))


def sign_descent(delta: jax.Array, grad: jax.Array, x: jax.Array, eps, alpha) -> jax.Array:
  """One error-minimising sign step: ``project(delta - alpha * sign(grad))``."""
  return project(delta - alpha * jnp.sign(grad), x, eps)


def error_minimizing_objective() -> Objective:
  """Sum of the per-example cross-entropies (EM noise, Huang et al. 2021)."""

  def objective(outputs, batch):
    return jnp.sum(losses.cross_entropy(outputs[0], batch["label"]))

  return objective


def mi_ue_objective(temperature: float = 0.1, exclude_self: bool = False, zeta: float = 0.0) -> Objective:
  """``losses.mi_ue_loss`` on the penultimate features (MI-UE): intra-class feature collapse."""

  def objective(outputs, batch):
    return losses.mi_ue_loss(outputs[1], batch["label"], temperature=temperature, exclude_self=exclude_self, zeta=zeta)

  return objective


def default_unroll() -> bool:
  """Unroll the PGD steps on CPU: XLA:CPU runs a ResNet's convolution gradients inside a
  while loop about 5x slower than unrolled (measured: ResNet-18 width 16, batch 64, 4
  steps, 2 cores, jax 0.10.2); on accelerators a loop keeps compiles short."""
  return jax.default_backend() == "cpu"


def make_batch_pgd(model: nn.Module, objective: Objective, num_steps: int, unroll: bool | None = None) -> Callable:
  """``pgd(variables, x_B, y_B, delta_B, eps, alpha, x_also=None) -> delta_B``: ``num_steps``
  sign steps descending ``objective`` with the model in eval mode (BatchNorm running
  statistics). ``x_also`` (optional): other images the perturbation must stay valid for
  (``x_also + delta`` in [0, 1] too), e.g. the unaugmented images when ``x`` is an
  augmented view of them. ``unroll`` (default ``default_unroll()``) writes the steps out
  instead of a ``fori_loop``."""
  unroll = default_unroll() if unroll is None else unroll

  def grad_fn(variables, x, y, d):
    return jax.grad(lambda d: objective(model.apply(variables, x + d, train=False), {"image": x + d, "label": y}))(d)

  def pgd(variables, x, y, d, eps, alpha, x_also=None):
    def body(_, d):
      d = sign_descent(d, grad_fn(variables, x, y, d), x, eps, alpha)
      # Both boxes contain 0, so clipping to one and then the other is clipping to their intersection.
      return d if x_also is None else project(d, x_also, eps)

    return jax.lax.fori_loop(0, num_steps, body, d, unroll=bool(unroll))

  return pgd


def pass_rows(num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Positions R x B visiting every example once, in order, and the mask of rows' first
  visits. A last partial batch is filled with the examples just before it (they give
  context to batch-level objectives but are not updated a second time)."""
  full = num_examples // batch_size
  pos = jnp.arange(full * batch_size, dtype=jnp.int32).reshape(full, batch_size)
  mask = jnp.ones_like(pos, dtype=bool)
  if num_examples % batch_size:
    last = jnp.arange(num_examples - batch_size, num_examples, dtype=jnp.int32)
    pos = jnp.concatenate([pos, last[None]])
    mask = jnp.concatenate([mask, (last >= full * batch_size)[None]])
  return pos, mask


def make_samplewise_pass(model: nn.Module, objective: Objective, mesh: Mesh, batch_size: int, num_steps: int,
                         loop: str | None = None, unroll: bool | None = None) -> Callable:
  """``run(variables, split, eps, alpha, key=None) -> delta_NxHxWxC``: ``num_steps`` PGD
  steps on every batch of the training set (in order), starting from ``split.delta``.

  A split with ``clean_augment`` (MI-UE's post-augmentation crafting) descends the
  objective on augmented clean images plus the unmoved perturbation; batch ``r`` draws its
  augmentation from ``fold_in(key, r)``, and the perturbation stays valid for the
  unaugmented images as well.

  ``loop="scan"``: the whole pass is one jitted program; ``"host"``: one jitted call per
  batch, dispatched from Python (the data never leaves the device either way). Default:
  ``train.default_loop()`` (host on CPU, where XLA runs the scan's body slowly).
  """
  loop = loop or train.default_loop()
  if num_steps < 1:
    raise ValueError(f"PGD steps must be >= 1, got {num_steps}")
  parallel.check_divisible(batch_size, mesh, "PGD batch_size")
  pgd = make_batch_pgd(model, objective, num_steps, unroll)
  rows = NamedSharding(mesh, P(parallel.DATA_AXIS))

  def update(variables, split: DeviceSplit, delta, pos_B, mask_B, row, key, eps, alpha):
    pos_B = jax.lax.with_sharding_constraint(pos_B, rows)
    x = split.images[pos_B].astype(jnp.float32) / 255.0
    d = delta[pos_B]
    x_seen, x_also = x, None
    if split.clean_augment.enabled:  # the model sees the augmented view; delta stays valid for both
      x_seen, x_also = augment_batch(jax.random.fold_in(key, row), x, split.clean_augment), x
    new = pgd(variables, x_seen, split.labels[pos_B], d, eps, alpha, x_also=x_also)
    new = jnp.where(mask_B[:, None, None, None], new, d)
    return delta.at[pos_B].set(new)

  def check(split, key):
    if split.delta_mode != "sample":
      raise ValueError("the sample-wise pass needs a split with a sample-wise perturbation")
    if split.size < batch_size:
      raise ValueError(f"PGD batch_size={batch_size} exceeds the {split.size} training examples")
    if key is None and split.clean_augment.enabled:
      raise ValueError("a split with clean_augment needs a key for the sample-wise pass")
    return pass_rows(split.size, batch_size)

  if loop == "scan":

    @jax.jit
    def run_jit(variables, split, pos, mask, key, eps, alpha):
      def body(delta, pmr):
        return update(variables, split, delta, *pmr, key, eps, alpha), None

      return jax.lax.scan(body, split.delta, (pos, mask, jnp.arange(pos.shape[0], dtype=jnp.int32)))[0]

    def run(variables, split, eps, alpha, key=None):
      pos, mask = check(split, key)
      return run_jit(variables, split, pos, mask, key, eps, alpha)

    run.jitted = run_jit
    return run
  if loop != "host":
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  # Row i is selected inside jit (a traced index): one program for every row.
  update_jit = jax.jit(lambda v, s, d, pos, mask, i, key, eps, alpha: update(v, s, d, pos[i], mask[i], i, key, eps,
                                                                               alpha),
                       donate_argnums=(2,))

  def run_host(variables, split, eps, alpha, key=None):
    pos, mask = check(split, key)
    delta = jnp.copy(split.delta)
    for i in range(pos.shape[0]):
      delta = update_jit(variables, split, delta, pos, mask, jnp.int32(i), key, eps, alpha)
    return delta

  run_host.jitted = update_jit
  return run_host


def make_classwise_pass(model: nn.Module, objective: Objective, mesh: Mesh, batch_size: int, num_steps: int,
                        num_classes: int, loop: str | None = None, unroll: bool | None = None) -> Callable:
  """``run(variables, split, positions, eps, alpha) -> delta_KxHxWxC`` for class-wise noise.

  For each batch of ``positions`` (R x B, e.g. a fixed 20% subset): ``num_steps`` PGD steps
  per example starting from its class's noise; then each class present in the batch
  takes the mean of its examples' perturbations, clipped to ``eps`` (Huang et al.'s
  class-wise rule). Classes absent from a batch keep their noise. ``loop`` as in
  ``make_samplewise_pass``.
  """
  loop = loop or train.default_loop()
  parallel.check_divisible(batch_size, mesh, "PGD batch_size")
  pgd = make_batch_pgd(model, objective, num_steps, unroll)
  rows = NamedSharding(mesh, P(parallel.DATA_AXIS))

  def update(variables, split: DeviceSplit, delta_K, pos_B, eps, alpha):
    pos_B = jax.lax.with_sharding_constraint(pos_B, rows)
    x = split.images[pos_B].astype(jnp.float32) / 255.0
    y = split.labels[pos_B]
    d = project(delta_K[y], x, eps)
    new = pgd(variables, x, y, d, eps, alpha)
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    count = onehot.sum(0)
    mean = jnp.einsum("bk,bhwc->khwc", onehot, new) / jnp.maximum(count, 1.0)[:, None, None, None]
    return jnp.where((count > 0)[:, None, None, None], jnp.clip(mean, -eps, eps), delta_K)

  if loop == "scan":

    @jax.jit
    def run(variables, split, positions, eps, alpha):
      return jax.lax.scan(lambda d, p: (update(variables, split, d, p, eps, alpha), None), split.delta, positions)[0]

    run.jitted = run
    return run
  if loop != "host":
    raise ValueError(f"loop must be 'scan' or 'host', got {loop!r}")
  update_jit = jax.jit(lambda v, s, d, positions, i, eps, alpha: update(v, s, d, positions[i], eps, alpha))

  def run_host(variables, split, positions, eps, alpha):
    delta = split.delta
    for i in range(positions.shape[0]):
      delta = update_jit(variables, split, delta, positions, jnp.int32(i), eps, alpha)
    return delta

  run_host.jitted = update_jit
  return run_host


def init_delta(key: jax.Array, shape: tuple[int, ...], eps: float, images_u8: jax.Array | None = None) -> jax.Array:
  """Uniform noise in [-eps, eps] (the reference initialisation), projected so that
  ``x + delta`` is in [0, 1] when the images (sample-wise) are given."""
  delta = jax.random.uniform(key, shape, jnp.float32, -eps, eps)
  if images_u8 is not None:
    delta = project(delta, images_u8.astype(jnp.float32) / 255.0, eps)
  return delta


__all__ = [
    "Objective", "default_unroll", "error_minimizing_objective", "init_delta", "make_batch_pgd", "make_classwise_pass",
    "make_samplewise_pass", "mi_ue_objective", "pass_rows", "project", "sign_descent",
]
