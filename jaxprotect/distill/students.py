"""Knock-off students: the attack losses (KD, DKD, Skeptical, hard-label, logit matching), Skeptical heads.

Every attack loss is a per-example ``loss_fn(outputs, batch) -> loss_B`` for the
training engine; the teacher enters only as ``batch["teacher_logits"]`` (added by
``blackbox.teacher_hook`` from a ``BlackBoxTeacher`` queried on the same augmented
batch the student sees).

Skeptical student (Kundu et al., NeurIPS 2021) -- the choices made here, since the
released code gives no head position or delay:

* The student's feature layers are the direct children of the base model, in call
  order, without the stem and the final classifier; ResNet blocks are grouped by stage.
  With G groups, the **shallow head** taps group ``max(G // 2 - 1, 0)`` and the
  **layer-3 head** taps group ``max(G - 2, 0)``: ResNet-18 -> after stage 2 and after
  stage 3 (torchvision's layer2 / layer3); small CNN -> after conv0 and after conv1; an
  MLP with hidden layers fc0..fc{n-1} -> fc{n//2 - 1} and fc{n-2}.
* The two heads must tap different layers, which needs at least ``MIN_FEATURE_GROUPS`` = 3
  feature groups: ``SkepticalStudent`` refuses a base model with fewer (ValueError at
  init, before any training step; ``check_skeptical_base`` checks up front), e.g. an MLP
  with one or two hidden layers, where both heads would sit on fc0. The paper uses
  CNN/ResNet students; an MLP student needs at least 3 hidden layers.
* A head on a feature map is ReLU, conv3x3 (2x channels, stride 2), ReLU, global average
  pooling, Dense(K); on a vector it is ReLU, Dense(max(D, 2K)), ReLU, Dense(K).
* Loss: ``CE(final) + [shallow: CE before the KD delay, (1 - alpha) CE + alpha T^2 KL(t || s)
  after it] + [layer-3: 0.7 CE + 0.3 T^2 KL(final || layer-3) with the final head
  stop-gradient]``. The **KD delay** defaults to 10% of the student's epochs (rounded, at
  least one epoch when training lasts more than one): early layers first learn from
  labels, so the teacher's signal refines rather than shapes them.
* The reported accuracy is the final head's.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxprotect import losses
from jaxprotect.models.common import PARAM_DTYPE, global_avg_pool, outputs as cast_outputs

__all__ = [
    "MIN_FEATURE_GROUPS", "AuxHead", "SkepticalStudent", "check_skeptical_base", "feature_groups", "head_positions",
    "make_attack_loss", "tapped_layers",
]

_STAGE = re.compile(r"^(stage\d+)_")
# the fewest feature groups for which head_positions gives two different groups
MIN_FEATURE_GROUPS = 3


def feature_groups(tap_names: list[str]) -> list[str]:
  """Group keys of the tapped children (ResNet blocks by stage), in order, stem/head excluded."""
  keys: list[str] = []
  for name in tap_names:
    if name == "head" or name.startswith("stem"):
      continue
    m = _STAGE.match(name)
    key = m.group(1) if m else name
    if key not in keys:
      keys.append(key)
  return keys


def head_positions(num_groups: int) -> tuple[int, int]:
  """``(shallow, layer3)`` group indices for ``num_groups`` feature groups."""
  return max(num_groups // 2 - 1, 0), max(num_groups - 2, 0)


def _pick_taps(names: list[str], model: nn.Module) -> tuple[str, str]:
  """The children the shallow and layer-3 heads tap, from the base's children ``names`` in
  call order; a ValueError when there are no feature layers or both heads would share one."""
  groups = feature_groups(names)
  if not groups:
    raise ValueError(f"Skeptical student: no feature layers found in {_model_name(model)}")
  last = lambda g: [n for n in names if n == g or n.startswith(g + "_")][-1]  # noqa: E731
  i_shallow, i_l3 = head_positions(len(groups))
  shallow, layer3 = last(groups[i_shallow]), last(groups[i_l3])
  if i_shallow == i_l3:
    raise ValueError(
        f"Skeptical student: base model {_model_name(model)} has {len(groups)} feature layer(s) "
        f"({', '.join(groups)}), so the shallow head and the layer-3 head would both tap {shallow!r} "
        f"(shallow={shallow!r}, layer3={layer3!r}); the two heads need different layers, i.e. at least "
        f"{MIN_FEATURE_GROUPS} feature layers. The paper (Kundu et al., NeurIPS 2021) uses CNN/ResNet students "
        f"(e.g. small_cnn, resnet18); an MLP student needs at least {MIN_FEATURE_GROUPS} hidden layers "
        "(e.g. model_kwargs.hidden=(256, 256, 256)).")
  return shallow, layer3


def _base_children(model: nn.Module, example_x: jax.Array) -> list[str]:
  """Names of ``model``'s direct children in call order (shapes only, no compute)."""
  names: list[str] = []

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    scope = context.module.scope
    if context.method_name == "__call__" and scope is not None and len(scope.path) == 1:
      names.append(scope.path[0])
    return out

  with nn.intercept_methods(capture):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), example_x, train=False))
  return list(dict.fromkeys(names))


def _model_name(model: nn.Module) -> str:
  """The class name, with an MLP's hidden sizes (``MLP(hidden=(256, 256))``)."""
  hidden = getattr(model, "hidden", None)
  return type(model).__name__ + (f"(hidden={tuple(hidden)})" if isinstance(hidden, (tuple, list)) else "")


def check_skeptical_base(model: nn.Module, example_x: jax.Array) -> tuple[str, str]:
  """The ``(shallow, layer3)`` children a ``SkepticalStudent`` on ``model`` would tap, or the
  ValueError its init raises (both heads on one layer); traces shapes only, so a caller can
  refuse a bad student before training anything."""
  return _pick_taps(_base_children(model, example_x), model)


class AuxHead(nn.Module):
  """An auxiliary classifier on a feature map ``B x H x W x C`` or a vector ``B x D``."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = nn.relu(h.astype(self.dtype))
    if h.ndim == 4:
      h = nn.Conv(2 * h.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  param_dtype=PARAM_DTYPE)(h)
      h = global_avg_pool(nn.relu(h))
    else:
      h = h.reshape((h.shape[0], -1))
      h = nn.relu(nn.Dense(max(h.shape[-1], 2 * self.num_classes), dtype=self.dtype, param_dtype=PARAM_DTYPE)(h))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=PARAM_DTYPE)(h).astype(jnp.float32)


class SkepticalStudent(nn.Module):
  """A registry model with two auxiliary heads (see the module docstring).

  ``__call__(x, train) -> (logits_BxK, {"feats": feats_BxD, "shallow_logits": BxK,
  "layer3_logits": BxK})``: the first output is the base model's final head, so the
  engine's evaluation measures it. Parameters: ``base`` (the registry model's tree),
  ``aux_shallow``, ``aux_layer3``. Its init (or any trace) raises a ValueError naming the
  base model and the layer when both heads would tap the same layer (fewer than
  ``MIN_FEATURE_GROUPS`` feature groups, e.g. an MLP with one or two hidden layers).
  """

  base: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    base_path = (*self.scope.path, "base")
    taps: dict[str, jax.Array] = {}

    def capture(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      scope = context.module.scope
      if context.method_name == "__call__" and scope is not None:
        path = tuple(scope.path)
        if len(path) == len(base_path) + 1 and path[:-1] == base_path and isinstance(out, jax.Array):
          taps.setdefault(path[-1], out)  # first call of each child
      return out

    with nn.intercept_methods(capture):
      logits, feats = self.base(x, train)
    tap_shallow, tap_l3 = _pick_taps(list(taps), self.base)  # refuses both heads on one layer
    dtype = getattr(self.base, "dtype", jnp.float32)
    shallow = AuxHead(self.num_classes, dtype, name="aux_shallow")(taps[tap_shallow])
    layer3 = AuxHead(self.num_classes, dtype, name="aux_layer3")(taps[tap_l3])
    logits, feats = cast_outputs(logits, feats)
    return logits, {"feats": feats, "shallow_logits": shallow, "layer3_logits": layer3}


def tapped_layers(model: nn.Module, example_x: jax.Array) -> tuple[str, str]:
  """Names of the base children the shallow and layer-3 heads tap by ``head_positions``
  (for documentation/tests): also for a base the ``SkepticalStudent`` refuses, where the
  two coincide (``check_skeptical_base`` raises there)."""
  names = _base_children(model, example_x)
  groups = feature_groups(names)
  i_s, i_l = head_positions(len(groups))
  last = lambda g: [n for n in names if n == g or n.startswith(g + "_")][-1]  # noqa: E731
  return last(groups[i_s]), last(groups[i_l])


# ---------------------------------------------------------------------------------------
# Attack losses: loss_fn(outputs, batch) -> loss_B
# ---------------------------------------------------------------------------------------

def _epoch_one_based(step: jax.Array, steps_per_epoch: int) -> jax.Array:
  return (step // steps_per_epoch + 1).astype(jnp.float32)


def make_attack_loss(kind: str, params: ml_collections.ConfigDict | dict, steps_per_epoch: int) -> Callable:
  """The per-example loss of one attack.

  kinds: ``kd`` (alpha, temperature), ``dkd`` (alpha, beta, temperature, warmup_epochs;
  CE + ``min(epoch / warmup, 1)`` (alpha TCKD + beta NCKD), epochs counted from 1 as in the
  DKD code), ``skeptical`` (alpha, temperature, delay_epochs, sd_kl_weight, sd_ce_weight),
  ``hard`` (alpha), ``mse`` (ce_weight).
  """
  p = dict(params)

  if kind == "kd":
    def loss_fn(outputs, batch):
      return losses.vanilla_kd_loss(outputs[0], batch["teacher_logits"], batch["label"], p["alpha"], p["temperature"])
  elif kind == "dkd":
    warmup = float(p["warmup_epochs"])

    def loss_fn(outputs, batch):
      s, y = outputs[0], batch["label"]
      factor = jnp.minimum(_epoch_one_based(batch["step"], steps_per_epoch) / warmup, 1.0) if warmup > 0 else 1.0
      return losses.cross_entropy(s, y) + factor * losses.dkd_loss(
          s, batch["teacher_logits"], y, p["alpha"], p["beta"], p["temperature"])
  elif kind == "skeptical":
    delay_steps = int(round(p["delay_epochs"] * steps_per_epoch))

    def loss_fn(outputs, batch):
      final, heads = outputs
      y, t, temp = batch["label"], batch["teacher_logits"], p["temperature"]
      shallow, layer3 = heads["shallow_logits"], heads["layer3_logits"]
      ce_shallow = losses.cross_entropy(shallow, y)
      kd_shallow = (1 - p["alpha"]) * ce_shallow + p["alpha"] * losses.kd_loss(shallow, t, temp)
      shallow_term = jnp.where(batch["step"] >= delay_steps, kd_shallow, ce_shallow)
      self_distil = (p["sd_ce_weight"] * losses.cross_entropy(layer3, y)
                     + p["sd_kl_weight"] * losses.kd_loss(layer3, jax.lax.stop_gradient(final), temp))
      return losses.cross_entropy(final, y) + shallow_term + self_distil
  elif kind == "hard":
    def loss_fn(outputs, batch):
      return losses.hard_label_kd_loss(outputs[0], batch["teacher_logits"], batch["label"], p["alpha"])
  elif kind == "mse":
    def loss_fn(outputs, batch):
      return losses.logit_mse_kd_loss(outputs[0], batch["teacher_logits"], batch["label"], p["ce_weight"])
  else:
    raise ValueError(f"unknown attack loss {kind!r}")
  return loss_fn
