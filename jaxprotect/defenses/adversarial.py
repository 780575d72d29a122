"""Adversarial training against unlearnable examples, and the engine hook of every training-time defense.

Adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018) trains on the worst case within an
L_inf ball around each training image; Tao, Feng, Yi, Huang & Chen ("Better Safe Than
Sorry: Preventing Delusive Adversaries with Adversarial Training", NeurIPS 2021) showed it
suppresses unlearnable examples when its radius is at least the poison's. Defaults: PGD-10
(as in MI-UE's evaluation of adversarial training, eps 8/255 and smaller), step eps/4
(2/255 at eps 8/255, the usual CIFAR choice), a uniform random start in the ball (Madry et
al.), images kept in [0, 1]; the model's BatchNorm in evaluation mode (running statistics,
nothing updated) during the attack.

``pgd_attack`` is the inner maximisation: ``steps`` sign-ascent steps of the summed
cross-entropy, each followed by the projection onto ``[x - eps, x + eps] n [0, 1]``.

The engine hook. A training-time defense is a *transform* ``transform(key, state, batch) ->
batch`` that sees the train state and a fresh key every step: ``adversarial_transform``
here, ``mix_transform``, ``ueraser_transform`` and ``as_transform`` in ``defenses.augment``.
``as_hook(transform)`` makes it the engine's state hook (``train.with_state``), which
``train.make_train_step``, ``train.make_train_chunk`` and ``runner.fit`` call inside the
jitted step with ``key = fold_in(fold_in(state.rng, DEFENSE_STREAM), state.step)``
(``DEFENSE_STREAM`` is ``train.BATCH_HOOK_STREAM``, a stream the engine uses for nothing
else). ``make_defended_train_step`` is ``train.make_train_step`` with that hook.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from jaxprotect import checks, losses, platform, train
from jaxprotect.models.contract import Model, as_model

__all__ = ["DEFENSE_STREAM", "adversarial_transform", "as_hook", "check_attack", "make_adversarial_train_step",
           "make_defended_train_step", "pgd_attack"]

# The run-key stream of defense transforms: fold_in(fold_in(state.rng, DEFENSE_STREAM), step).
DEFENSE_STREAM = train.BATCH_HOOK_STREAM


def check_attack(eps: Any, steps: Any, step_size: Any = None) -> tuple[float, int, float]:
  """``(eps, steps, step_size)`` with ``eps > 0`` (pixel units), ``steps >= 1`` and
  ``step_size > 0`` (default ``eps / 4``); a ValueError naming the bad one otherwise."""
  if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0:
    raise ValueError(f"eps: expected a radius > 0 in pixel units (e.g. 8/255), got {eps!r}")
  steps = checks.check_positive_int(steps, "steps")
  if step_size is None:
    step_size = eps / 4
  if isinstance(step_size, bool) or not isinstance(step_size, (int, float, np.floating, np.integer)) \
      or not step_size > 0:
    raise ValueError(f"step_size: expected a value > 0 in pixel units, got {step_size!r}")
  return float(eps), steps, float(step_size)


def pgd_attack(model: nn.Module | Model, variables: dict[str, Any], images_BxHxWxC: jax.Array, labels_B: jax.Array,
               key: jax.Array, eps: float, steps: int = 10, step_size: float | None = None, random_start: bool = True,
               unroll: bool | None = None) -> jax.Array:
  """PGD-``steps`` adversarial images: ascend the summed cross-entropy of the model in
  evaluation mode (BatchNorm running statistics, ``variables`` unchanged) by
  ``step_size * sign(grad)`` (default ``eps / 4``), projecting onto
  ``|x_adv - x| <= eps`` and ``[0, 1]`` after each step, from a uniform random start in the
  ball (``random_start``; else from ``x``). The result has its gradient stopped.

  ``images_BxHxWxC``: float in [0, 1]; ``labels_B``: int. ``unroll`` writes the steps out
  (default: on CPU, where XLA runs convolution gradients inside a loop several times
  slower; see ``unlearnable.pgd.default_unroll``).
  """
  model = as_model(model)
  eps, steps, alpha = check_attack(eps, steps, step_size)
  checks.check_images_and_labels(images_BxHxWxC, labels_B, "images_BxHxWxC", "labels_B")
  unroll = platform.is_cpu() if unroll is None else bool(unroll)
  x = images_BxHxWxC
  lo, hi = jnp.maximum(x - eps, 0.0), jnp.minimum(x + eps, 1.0)
  if random_start:
    # drawn flat: XLA:CPU compiles a high-rank threefry draw for seconds
    start = jax.random.uniform(key, (int(np.prod(x.shape)),), x.dtype, -eps, eps).reshape(x.shape)
    x_adv = jnp.clip(x + start, lo, hi)
  else:
    x_adv = x

  def loss(xa):
    logits, _ = model.apply(variables, xa, train=False)
    return jnp.sum(losses.cross_entropy(logits, labels_B))

  def body(_, xa):
    return jnp.clip(xa + alpha * jnp.sign(jax.grad(loss)(xa)), lo, hi)

  x_adv = jax.lax.fori_loop(0, steps, body, x_adv, unroll=unroll)
  return jax.lax.stop_gradient(x_adv)


def adversarial_transform(model: nn.Module | Model, eps: float, steps: int = 10, step_size: float | None = None,
                          random_start: bool = True, unroll: bool | None = None) -> Callable:
  """``transform(key, state, batch) -> batch`` whose images are ``pgd_attack``'s against
  the state's current model (its parameters and BatchNorm statistics)."""
  model = as_model(model)
  check_attack(eps, steps, step_size)

  def transform(key, state, batch):
    x_adv = pgd_attack(model, train.variables_of(state), batch["image"], batch["label"], key, eps, steps, step_size,
                       random_start, unroll)
    return {**batch, "image": x_adv}

  return transform


def as_hook(transform: Callable) -> Callable:
  """The engine's state hook (``train.with_state``) ``hook(aux, batch, state, key)`` that
  returns ``transform(key, state, batch)``; the same function for the same transform (so
  programs built with it are reused, ``train.cached``)."""
  if not callable(transform):
    raise ValueError(f"transform: expected a function (key, state, batch) -> batch, got {type(transform).__name__}")
  return _hook(transform)


@functools.lru_cache(maxsize=64)
def _hook(transform: Callable) -> Callable:
  def hook(aux, batch, state, key):
    del aux
    return transform(key, state, batch)

  return train.with_state(hook)


def make_defended_train_step(
    model: nn.Module | Model,
    loss_fn: train.LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    transform: Callable,
    donate: bool = True,
    batch_fn: Callable | None = None,
    weight_noise: train.WeightNoise | None = None,
) -> Callable[..., tuple[train.TrainState, dict[str, jax.Array]]]:
  """The jitted step ``step(state, batch, aux=None) -> (state, metrics)`` of
  ``train.make_train_step`` on ``transform(key, state, batch)`` instead of ``batch``: the
  engine's step with the hooks ``batch_fn`` (optional, first) and ``as_hook(transform)``
  chained (``train.chain_batch_fns``), so ``key = fold_in(fold_in(state.rng,
  DEFENSE_STREAM), state.step)`` (a resumed run draws the same keys). ``loss_fn``,
  ``weight_noise``, ``donate`` and the shardings as in ``make_train_step``. ``metrics`` are
  those of the transformed batch (e.g. the robust training accuracy under
  ``adversarial_transform``).
  """
  hook = train.chain_batch_fns(batch_fn, as_hook(transform))
  return train.make_train_step(model, loss_fn, optimizer, mesh, donate=donate, batch_fn=hook,
                               weight_noise=weight_noise)


def make_adversarial_train_step(
    model: nn.Module | Model,
    loss_fn: train.LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    donate: bool = True,
    batch_fn: Callable | None = None,
    unroll: bool | None = None,
) -> Callable[..., tuple[train.TrainState, dict[str, jax.Array]]]:
  """Adversarial training's step: ``make_defended_train_step`` with
  ``adversarial_transform(model, eps, steps, step_size, random_start)`` -- PGD-``steps``
  (default 10, step ``eps / 4``) against the current model in evaluation mode, then the
  engine's update on the adversarial batch. ``eps <= 0`` or ``steps < 1`` is a ValueError."""
  transform = adversarial_transform(model, eps, steps, step_size, random_start, unroll)
  return make_defended_train_step(model, loss_fn, optimizer, mesh, transform, donate=donate, batch_fn=batch_fn)
