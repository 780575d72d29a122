"""Losses as pure per-example functions (``loss_B``); callers reduce them.

Conventions (as optax's): predictions first (``logits_BxK``, then the teacher's or the
reference's logits, then ``labels_B``), per-example results, float32 whatever the
inputs' dtype. Shapes: ``logits_BxK`` float logits with ``B >= 1`` and ``K >= 2``,
``labels_B`` integer class indices in ``[0, K)``, ``centroids_TxKxK`` one ``K x K``
centroid matrix per temperature of ``temperatures_T``.

Every public function checks its inputs (``jaxprotect.checks``) when called or traced:
shapes, dtypes and static arguments always (``ValueError`` naming the argument); values
(label ranges, temperatures > 0) at once when they are concrete, and inside ``jit`` under
``checks.checked`` / ``checks.value_checks()``. Scalar weights (``label_smoothing``,
``lam``, ``ce_weight``, ``zeta``, ``exclude_self``) may be traced; a Python ``0`` /
``False`` skips the term it weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprotect import checks

__all__ = [
    "AGGREGATIONS", "CENTROID_FLOOR", "DEFAULT_CENTROID_DECAY", "DEFAULT_TEMPERATURES", "MI_UE_EPS", "WEIGHTINGS",
    "accuracy", "centroid_sums", "centroids_from_sums", "class_mean_centroids", "cmi", "cmi_aggregate", "cmi_spectrum",
    "cmim_loss", "cross_entropy", "dkd_loss", "hard_label_kd_loss", "kd_loss", "logit_mse_kd_loss", "mi_ue_loss",
    "nasty_teacher_loss", "temperature_weights", "update_centroids", "vanilla_kd_loss",
]


# ---------------------------------------------------------------------------------------
# Input checks (structure always; values eagerly, or by checkify under checks.checked)
# ---------------------------------------------------------------------------------------

def _static_zero(x: Any) -> bool:
  """Whether the scalar ``x`` is a concrete 0 / False (not a tracer): the term it weights is skipped."""
  return checks.is_concrete(x) and not bool(np.asarray(x))


def _check_scalar(x: Any, name: str) -> None:
  checks.check_shape(x, name, ndim=0)


def _check_temperature(t: Any, name: str = "temperature") -> None:
  """A scalar ``> 0``."""
  _check_scalar(t, name)
  checks.check_positive(t, name)


def _check_temperatures(temps: Any, name: str = "temperatures_T", length: int | None = None) -> int:
  """A non-empty 1-D grid of temperatures ``> 0`` (of ``length`` entries if given); returns ``T``."""
  checks.check_shape(temps, name, shape=(length,))
  t = np.shape(temps)[0]
  if t < 1:
    raise ValueError(f"{name}: expected at least one temperature, got shape {np.shape(temps)}")
  checks.check_positive(temps, name)
  return t


def _check_logits_labels(logits: Any, labels: Any, logits_name: str = "logits_BxK",
                         labels_name: str = "labels_B") -> tuple[int, int]:
  """``logits`` B x K (float, B >= 1, K >= 2) and ``labels`` (B,) integers in [0, K); returns ``(B, K)``."""
  b, k = checks.check_logits(logits, logits_name)
  checks.check_labels(labels, k, labels_name, batch=b)
  return b, k


def _check_logit_pair(logits: Any, other: Any, logits_name: str, other_name: str) -> tuple[int, int]:
  """Two logit arrays of the same ``B x K`` shape; returns ``(B, K)``."""
  b, k = checks.check_logits(logits, logits_name)
  checks.check_logits(other, other_name)
  checks.check_shape(other, other_name, shape=(b, k))
  return b, k


def _check_centroids(centroids: Any, name: str, num_classes: int, num_temperatures: int | None = None) -> None:
  """Float centroids ``K x K`` (``num_temperatures`` None) or ``T x K x K``."""
  want = (num_classes, num_classes) if num_temperatures is None else (num_temperatures, num_classes, num_classes)
  checks.check_shape(centroids, name, shape=want)
  checks.check_floating(centroids, name)


def _check_integer_labels(labels: Any, name: str, batch: int) -> None:
  """Integer labels of shape ``(batch,)`` (any values: only compared with each other)."""
  checks.check_shape(labels, name, shape=(batch,))
  dtype = np.dtype(getattr(labels, "dtype", None) or np.asarray(labels).dtype)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name}: expected integer class indices, got dtype {dtype}")


# ---------------------------------------------------------------------------------------
# Cross-entropy and accuracy
# ---------------------------------------------------------------------------------------

def _cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: Any = 0.0) -> jax.Array:
  logits_BxK = jnp.asarray(logits_BxK, jnp.float32)
  if _static_zero(label_smoothing):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  num_classes = logits_BxK.shape[-1]
  targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxK, targets_BxK)


def _check_label_smoothing(label_smoothing: Any) -> None:
  _check_scalar(label_smoothing, "label_smoothing")
  checks.check_range(label_smoothing, 0.0, 1.0, "label_smoothing")


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, optionally against smoothed labels.

  With ``label_smoothing = eps`` the target is ``(1 - eps) * onehot(y) + eps / K``
  (Szegedy et al. 2016; the LS-student baseline of the distillation literature).
  Computed in float32 whatever the logits' dtype.

  Args:
    logits_BxK: float logits, ``B >= 1``, ``K >= 2``.
    labels_B: int labels in ``[0, K)``.
    label_smoothing: scalar ``eps`` in ``[0, 1]``; may be traced (a Python 0 takes the
      integer-label path).

  Returns:
    ``loss_B`` in float32.
  """
  _check_logits_labels(logits_BxK, labels_B)
  _check_label_smoothing(label_smoothing)
  return _cross_entropy(logits_BxK, labels_B, label_smoothing)


def accuracy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness of the arg-max prediction: ``correct_B`` in float32.

  Args:
    logits_BxK: float logits.
    labels_B: int labels in ``[0, K)``.
  """
  _check_logits_labels(logits_BxK, labels_B)
  return (jnp.argmax(logits_BxK, axis=-1) == labels_B).astype(jnp.float32)


# ---------------------------------------------------------------------------------------
# Conditional mutual information of temperature-scaled output clusters (CMIM, METHODS §4)
# ---------------------------------------------------------------------------------------

CENTROID_FLOOR = 1e-8  # centroids are clipped here before the log
DEFAULT_CENTROID_DECAY = 0.9999  # the MCMI reference code's EMA decay (per step)
DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
AGGREGATIONS = ("mean", "random", "max")
WEIGHTINGS = ("t2", "one")


def _cmi(logits_BxK: jax.Array, labels_B: jax.Array, centroids_KxK: jax.Array, temperature: Any) -> jax.Array:
  logp_BxK = jax.nn.log_softmax(jnp.asarray(logits_BxK, jnp.float32) / temperature, axis=-1)
  centroids_KxK = jax.lax.stop_gradient(jnp.asarray(centroids_KxK)).astype(jnp.float32)
  logq_KxK = jnp.log(jnp.maximum(centroids_KxK, CENTROID_FLOOR))
  logq_BxK = logq_KxK[labels_B]
  return jnp.sum(jnp.exp(logp_BxK) * (logp_BxK - logq_BxK), axis=-1)


def cmi(logits_BxK: jax.Array, labels_B: jax.Array, centroids_KxK: jax.Array,
        temperature: float | jax.Array) -> jax.Array:
  """Per-example ``KL(softmax(z / T) || Q_y)``; its batch mean is the (upper bound on the) CMI.

  Args:
    logits_BxK: logits ``z``.
    labels_B: int labels ``y`` in ``[0, K)``.
    centroids_KxK: row ``k`` is the centroid ``Q_k`` of class ``k`` (a distribution over
      the K outputs). Clipped at ``CENTROID_FLOOR`` before the log; no gradient flows
      through it.
    temperature: ``T`` > 0 (scalar).

  Returns:
    ``kl_B`` in float32, computed in log space (``log_softmax(z / T)``), finite for tiny T.
  """
  _, k = _check_logits_labels(logits_BxK, labels_B)
  _check_centroids(centroids_KxK, "centroids_KxK", k)
  _check_temperature(temperature)
  return _cmi(logits_BxK, labels_B, centroids_KxK, temperature)


def _cmi_spectrum(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array,
                  temperatures_T: Any) -> jax.Array:
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  fn = jax.vmap(lambda q_KxK, t: _cmi(logits_BxK, labels_B, q_KxK, t), in_axes=(0, 0), out_axes=1)
  return fn(jnp.asarray(centroids_TxKxK), temperatures_T)


def _check_spectrum_inputs(logits_BxK: Any, labels_B: Any, centroids_TxKxK: Any, temperatures_T: Any) -> None:
  _, k = _check_logits_labels(logits_BxK, labels_B)
  checks.check_shape(centroids_TxKxK, "centroids_TxKxK", ndim=3)
  _check_centroids(centroids_TxKxK, "centroids_TxKxK", k, np.shape(centroids_TxKxK)[0])
  _check_temperatures(temperatures_T, length=np.shape(centroids_TxKxK)[0])


def cmi_spectrum(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array,
                 temperatures_T: jax.Array) -> jax.Array:
  """``cmi`` at every temperature of a grid, one centroid set per temperature.

  Args:
    logits_BxK, labels_B: the batch (labels in ``[0, K)``).
    centroids_TxKxK: ``centroids_TxKxK[t]`` are the centroids at ``temperatures_T[t]``.
    temperatures_T: the grid, every entry > 0.

  Returns:
    ``kl_BxT`` in float32.
  """
  _check_spectrum_inputs(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)
  return _cmi_spectrum(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)


def _centroid_sums(logits_BxK: jax.Array, labels_B: jax.Array, temperatures_T: Any,
                   mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  logits_BxK = jax.lax.stop_gradient(jnp.asarray(logits_BxK)).astype(jnp.float32)
  num_classes = logits_BxK.shape[-1]
  onehot_BxK = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
  if mask_B is not None:
    onehot_BxK = onehot_BxK * jnp.asarray(mask_B).astype(jnp.float32)[:, None]
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  probs_TxBxK = jax.nn.softmax(logits_BxK[None] / temperatures_T[:, None, None], axis=-1)
  sums_TxKxK = jnp.einsum("bk,tbj->tkj", onehot_BxK, probs_TxBxK)
  return sums_TxKxK, onehot_BxK.sum(0)


def centroid_sums(logits_BxK: jax.Array, labels_B: jax.Array, temperatures_T: jax.Array,
                  mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class sums of ``softmax(z / T)`` and class counts, for accumulating class means.

  Args:
    logits_BxK, labels_B: a batch (labels in ``[0, K)``).
    temperatures_T: the temperature grid, every entry > 0.
    mask_B: optional 0/1 weights (padding rows of a last batch get 0).

  Returns:
    ``(sums_TxKxK, counts_K)`` in float32: ``sums[t, k]`` is the sum of
    ``softmax(z / T_t)`` over the examples of class ``k``; ``counts_K`` the (masked) class counts.
  """
  b, _ = _check_logits_labels(logits_BxK, labels_B)
  _check_temperatures(temperatures_T)
  if mask_B is not None:
    checks.check_shape(mask_B, "mask_B", shape=(b,))
  return _centroid_sums(logits_BxK, labels_B, temperatures_T, mask_B)


def _centroids_from_sums(sums_TxKxK: jax.Array, counts_K: jax.Array) -> jax.Array:
  num_classes = sums_TxKxK.shape[-1]
  present = (counts_K > 0)[None, :, None]
  means = sums_TxKxK / jnp.maximum(counts_K, 1.0)[None, :, None]
  return jnp.where(present, means, 1.0 / num_classes)


def centroids_from_sums(sums_TxKxK: jax.Array, counts_K: jax.Array) -> jax.Array:
  """Class means from ``centroid_sums``; a class with no examples gets the uniform distribution.

  Args:
    sums_TxKxK: per-class sums of ``softmax(z / T)`` (float, ``K >= 2``).
    counts_K: the class counts.

  Returns:
    ``centroids_TxKxK``.
  """
  checks.check_shape(sums_TxKxK, "sums_TxKxK", ndim=3)
  t, k, _ = np.shape(sums_TxKxK)
  checks.check_shape(sums_TxKxK, "sums_TxKxK", shape=(t, k, k))
  checks.check_floating(sums_TxKxK, "sums_TxKxK")
  if k < 2:
    raise ValueError(f"sums_TxKxK: expected at least 2 classes (T x K x K, K >= 2), got shape {np.shape(sums_TxKxK)}")
  checks.check_shape(counts_K, "counts_K", shape=(k,))
  return _centroids_from_sums(jnp.asarray(sums_TxKxK), jnp.asarray(counts_K))


def class_mean_centroids(logits_NxK: jax.Array, labels_N: jax.Array, temperatures_T: jax.Array) -> jax.Array:
  """Full-pass centroids: the class means of ``softmax(z / T)`` over a whole split.

  This is the exact minimiser of ``mean KL(P || Q_y)`` over ``Q``, so ``cmi`` with these
  centroids is the CMI of the split. (``jaxprotect.distill`` accumulates the same sums
  batch by batch with ``centroid_sums`` when the split's logits are not held at once.)

  Args:
    logits_NxK: the logits of the whole split (``N >= 1``).
    labels_N: its int labels in ``[0, K)``.
    temperatures_T: the grid, every entry > 0.

  Returns:
    ``centroids_TxKxK`` in float32; a class absent from the split gets the uniform distribution.
  """
  _check_logits_labels(logits_NxK, labels_N, "logits_NxK", "labels_N")
  _check_temperatures(temperatures_T)
  return _centroids_from_sums(*_centroid_sums(logits_NxK, labels_N, temperatures_T))


def update_centroids(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array,
                     temperatures_T: jax.Array | tuple[float, ...] = DEFAULT_TEMPERATURES,
                     decay: float | jax.Array = DEFAULT_CENTROID_DECAY) -> jax.Array:
  """One exponential-moving-average step of the centroids from a batch.

  ``Q_k <- decay * Q_k + (1 - decay) * mean_{i: y_i = k} softmax(z_i / T)`` for each class
  present in the batch; absent classes are unchanged. Under a data-sharded ``jit`` the
  batch is the *global* batch (the means are all-reduced), so the update does not depend
  on the number of devices. No gradient flows into the result.

  Args:
    logits_BxK, labels_B: the batch (labels in ``[0, K)``).
    centroids_TxKxK: current centroids, one set per temperature.
    temperatures_T: the temperature grid (same order as the centroids), every entry > 0.
    decay: EMA decay per step in ``[0, 1]``; default 0.9999 (the MCMI reference value, meant
      for a pretrained model; from scratch a shorter memory such as 0.99 tracks the model).

  Returns:
    ``T x K x K`` updated centroids in the dtype of ``centroids_TxKxK`` (computed in float32),
    so that they can be a ``lax.scan`` carry.
  """
  _check_spectrum_inputs(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)
  _check_scalar(decay, "decay")
  checks.check_range(decay, 0.0, 1.0, "decay")
  centroids_TxKxK = jnp.asarray(centroids_TxKxK)
  sums_TxKxK, counts_K = _centroid_sums(logits_BxK, labels_B, temperatures_T)
  means = sums_TxKxK / jnp.maximum(counts_K, 1.0)[None, :, None]
  present = (counts_K > 0)[None, :, None]
  old = jax.lax.stop_gradient(centroids_TxKxK).astype(jnp.float32)
  return jnp.where(present, decay * old + (1.0 - decay) * means, old).astype(centroids_TxKxK.dtype)


def _temperature_weights(temperatures_T: Any, weighting: str = "t2") -> jax.Array:
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  if weighting == "t2":
    return temperatures_T**2
  if weighting == "one":
    return jnp.ones_like(temperatures_T)
  raise ValueError(f"unknown CMI weighting {weighting!r}; use one of {WEIGHTINGS}")


def temperature_weights(temperatures_T: jax.Array, weighting: str = "t2") -> jax.Array:
  """Weights of the CMI terms: ``T^2`` (keeps the high-temperature terms from vanishing) or 1.

  Args:
    temperatures_T: the grid, every entry > 0.
    weighting: ``"t2"`` or ``"one"``.

  Returns:
    ``weights_T`` in float32.
  """
  _check_temperatures(temperatures_T)
  return _temperature_weights(temperatures_T, weighting)


def _check_aggregation(aggregation: str, weighting: str, key: Any) -> None:
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown CMI weighting {weighting!r}; use one of {WEIGHTINGS}")
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown CMI aggregation {aggregation!r}; use one of {AGGREGATIONS}")
  if aggregation == "random" and key is None:
    raise ValueError("aggregation='random' needs a PRNG key")


def _cmi_aggregate(kl_BxT: jax.Array, temperatures_T: Any, aggregation: str = "mean", weighting: str = "t2",
                   key: jax.Array | None = None) -> jax.Array:
  weighted_BxT = kl_BxT * _temperature_weights(temperatures_T, weighting)[None, :]
  if aggregation == "mean":
    return jnp.mean(weighted_BxT, axis=1)
  if aggregation == "random":
    idx = jax.random.randint(key, (), 0, weighted_BxT.shape[1])
    return jnp.take(weighted_BxT, idx, axis=1)
  # "max"
  idx = jnp.argmax(jnp.mean(jax.lax.stop_gradient(weighted_BxT), axis=0))
  return jnp.take(weighted_BxT, idx, axis=1)


def cmi_aggregate(kl_BxT: jax.Array, temperatures_T: jax.Array, aggregation: str = "mean", weighting: str = "t2",
                  key: jax.Array | None = None) -> jax.Array:
  """Aggregates per-temperature CMI terms over the spectrum, per example.

  Args:
    kl_BxT: ``cmi`` at each temperature (``cmi_spectrum``), float, ``B >= 1``.
    temperatures_T: the grid (``T`` entries > 0).
    aggregation: ``"mean"`` (mean over the grid of ``w_T * kl_T``), ``"random"`` (one grid
      temperature per call, drawn uniformly over the log-spaced grid, i.e. log-uniformly;
      needs ``key``) or ``"max"`` (the grid temperature with the largest weighted batch CMI;
      the batch means are over the global batch).
    weighting: ``"t2"`` or ``"one"`` (see ``temperature_weights``).
    key: PRNG key for ``"random"``.

  Returns:
    ``agg_B``; its batch mean is the aggregated CMI.
  """
  checks.check_shape(kl_BxT, "kl_BxT", ndim=2)
  checks.check_floating(kl_BxT, "kl_BxT")
  b, t = np.shape(kl_BxT)
  if b < 1:
    raise ValueError(f"kl_BxT: expected a non-empty batch (B >= 1), got shape {(b, t)}")
  _check_temperatures(temperatures_T, length=t)
  _check_aggregation(aggregation, weighting, key)
  return _cmi_aggregate(jnp.asarray(kl_BxT), temperatures_T, aggregation, weighting, key)


def cmim_loss(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array,
              temperatures_T: jax.Array | tuple[float, ...] = DEFAULT_TEMPERATURES, lam: float | jax.Array = 1.0,
              aggregation: str = "mean", weighting: str = "t2", key: jax.Array | None = None,
              label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  """The CMIM teacher objective per example: ``CE(z, y) + lam * aggregate_T CMI_T``.

  Args:
    logits_BxK, labels_B: the batch (labels in ``[0, K)``).
    centroids_TxKxK: current (stop-gradient) centroids, one set per temperature.
    temperatures_T: the temperature grid (default 1, 2, 4, ..., 32), every entry > 0.
    lam: scalar weight of the CMI term (may be traced, e.g. a warm-up ramp).
    aggregation, weighting, key: see ``cmi_aggregate``.
    label_smoothing: of the CE term (0: plain CE); may be traced.

  Returns:
    ``loss_B`` in float32.
  """
  _check_spectrum_inputs(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)
  _check_scalar(lam, "lam")
  _check_label_smoothing(label_smoothing)
  _check_aggregation(aggregation, weighting, key)
  kl_BxT = _cmi_spectrum(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)
  agg_B = _cmi_aggregate(kl_BxT, temperatures_T, aggregation, weighting, key)
  return _cross_entropy(logits_BxK, labels_B, label_smoothing) + lam * agg_B


# ---------------------------------------------------------------------------------------
# Knowledge distillation (METHODS §5) and the Nasty Teacher (METHODS §4)
# ---------------------------------------------------------------------------------------

_MASKED = -1e9  # a masked logit: finite (no inf - inf), but exp() of it is exactly 0


def _kl_logits(p_logits_BxK: jax.Array, q_logits_BxK: jax.Array) -> jax.Array:
  """``KL(softmax(p) || softmax(q))`` per example, in log space (float32)."""
  logp = jax.nn.log_softmax(jnp.asarray(p_logits_BxK).astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(jnp.asarray(q_logits_BxK).astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def _kd(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, temperature: Any) -> jax.Array:
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK))
  return temperature**2 * _kl_logits(t / temperature, jnp.asarray(student_logits_BxK) / temperature)


def kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array,
            temperature: float | jax.Array = 4.0) -> jax.Array:
  """Hinton's distillation term per example: ``T^2 KL(softmax(t / T) || softmax(s / T))``.

  The teacher side carries no gradient. Callers mix it with CE:
  ``(1 - alpha) CE(s, y) + alpha * kd_loss`` (``vanilla_kd_loss``).

  Args:
    student_logits_BxK: the student's logits ``s``.
    teacher_logits_BxK: the teacher's logits ``t``, same shape.
    temperature: ``T`` > 0 (scalar).

  Returns:
    ``loss_B`` in float32.
  """
  _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  _check_temperature(temperature)
  return _kd(student_logits_BxK, teacher_logits_BxK, temperature)


def vanilla_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                    alpha: float = 0.9, temperature: float = 4.0) -> jax.Array:
  """``(1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))`` per example.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha: weight of the KD term.
    temperature: ``T`` > 0.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  _check_temperature(temperature)
  return ((1.0 - alpha) * _cross_entropy(student_logits_BxK, labels_B)
          + alpha * _kd(student_logits_BxK, teacher_logits_BxK, temperature))


def dkd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> jax.Array:
  """Decoupled KD (Zhao et al., CVPR 2022) per example: ``alpha * TCKD + beta * NCKD``.

  TCKD is ``T^2 KL`` between the binary distributions ``[p_y, 1 - p_y]`` of teacher and
  student (``p = softmax(z / T)``); NCKD is ``T^2 KL`` between the distributions over the
  non-target classes, i.e. softmax with the target logit masked out (probability exactly 0) before
  normalising. Both in log space. The CE term and the warm-up factor
  ``min(epoch / warmup, 1)`` are the caller's. The teacher carries no gradient.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha, beta: weights of TCKD and NCKD.
    temperature: ``T`` > 0.

  Returns:
    ``loss_B`` in float32.
  """
  b, num_classes = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK",
                                     "teacher_logits_BxK")
  checks.check_labels(labels_B, num_classes, "labels_B", batch=b)
  _check_temperature(temperature)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK)).astype(jnp.float32) / temperature
  s = jnp.asarray(student_logits_BxK).astype(jnp.float32) / temperature
  target_BxK = jax.nn.one_hot(labels_B, num_classes, dtype=bool)

  def binary_log_probs(z_BxK):  # [log p_y, log(1 - p_y)], stable for confident outputs
    lse_all = jax.nn.logsumexp(z_BxK, axis=-1)
    lse_other = jax.nn.logsumexp(jnp.where(target_BxK, _MASKED, z_BxK), axis=-1)
    log_target = jnp.sum(jnp.where(target_BxK, z_BxK, 0.0), axis=-1) - lse_all
    return jnp.stack([log_target, lse_other - lse_all], axis=-1)

  lb_t, lb_s = binary_log_probs(t), binary_log_probs(s)
  tckd = jnp.sum(jnp.exp(lb_t) * (lb_t - lb_s), axis=-1)
  # the masked logit's probability is exactly 0 (exp underflows), so its KL term is 0
  ln_t = jax.nn.log_softmax(jnp.where(target_BxK, _MASKED, t), axis=-1)
  ln_s = jax.nn.log_softmax(jnp.where(target_BxK, _MASKED, s), axis=-1)
  nckd = jnp.sum(jnp.where(target_BxK, 0.0, jnp.exp(ln_t) * (ln_t - ln_s)), axis=-1)
  return temperature**2 * (alpha * tckd + beta * nckd)


def nasty_teacher_loss(logits_BxK: jax.Array, ref_logits_BxK: jax.Array, labels_B: jax.Array,
                       temperature: float = 4.0, omega: float = 0.04) -> jax.Array:
  """The Nasty Teacher objective (Ma et al., ICLR 2021) per example:
  ``CE(f, y) - omega * T^2 * KL(softmax(f / T) || softmax(f_ref / T))``.

  ``ref_logits_BxK`` come from a frozen, normally trained copy (no gradient). The
  argument order of the KL follows the authors' code (``KLDivLoss(log_softmax(ref),
  softmax(f))``, batch mean); defaults are their CIFAR-10 values (the paper's ``tau``; CIFAR-100:
  temperature 20, omega 0.005). The code's constant offset (+100) does not change the gradient and
  is omitted.

  Args:
    logits_BxK: the teacher being trained, ``f``.
    ref_logits_BxK: the reference's logits, same shape.
    labels_B: int labels in ``[0, K)``.
    temperature: ``T`` > 0 (the paper's ``tau``).
    omega: weight of the adversarial KL term.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(logits_BxK, ref_logits_BxK, "logits_BxK", "ref_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  _check_temperature(temperature)
  ref = jax.lax.stop_gradient(jnp.asarray(ref_logits_BxK))
  return (_cross_entropy(logits_BxK, labels_B)
          - omega * temperature**2 * _kl_logits(jnp.asarray(logits_BxK) / temperature, ref / temperature))


def hard_label_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                       alpha: float = 0.5) -> jax.Array:
  """Label-only KD per example: ``(1 - alpha) CE(s, y) + alpha CE(s, argmax t)``.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha: weight of the teacher-label term.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  teacher_labels_B = jnp.argmax(teacher_logits_BxK, axis=-1)
  return (1.0 - alpha) * _cross_entropy(student_logits_BxK, labels_B) + alpha * _cross_entropy(
      student_logits_BxK, teacher_labels_B)


def logit_mse_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array | None = None,
                      ce_weight: float | jax.Array = 0.0) -> jax.Array:
  """Logit matching (Kim et al., IJCAI 2021) per example:
  ``mean_k (s_k - (t_k - mean_j t_j))^2 + ce_weight * CE(s, y)``.

  The teacher logits are centred (a black box's logits or log-probabilities are known
  only up to a per-example shift); the mean over classes matches PyTorch's ``mse_loss``
  reduction.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``; needed unless ``ce_weight`` is a Python 0 (checked when given).
    ce_weight: scalar >= 0; may be traced (a Python 0 skips the CE term).

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  _check_scalar(ce_weight, "ce_weight")
  checks.check_nonnegative(ce_weight, "ce_weight")
  if labels_B is not None:
    checks.check_labels(labels_B, k, "labels_B", batch=b)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK)).astype(jnp.float32)
  t = t - jnp.mean(t, axis=-1, keepdims=True)
  loss = jnp.mean((jnp.asarray(student_logits_BxK).astype(jnp.float32) - t) ** 2, axis=-1)
  if not _static_zero(ce_weight):
    if labels_B is None:
      raise ValueError("labels_B: logit_mse_kd_loss with ce_weight > 0 (or traced) needs labels")
    loss = loss + ce_weight * _cross_entropy(student_logits_BxK, labels_B)
  return loss


# ---------------------------------------------------------------------------------------
# MI-UE: intra-class feature collapse (METHODS §2)
# ---------------------------------------------------------------------------------------

MI_UE_EPS = 1e-8  # added to every term of both sums (reference convention)


def mi_ue_loss(feats_BxD: jax.Array, labels_B: jax.Array, temperature: float | jax.Array = 0.1,
               exclude_self: bool | jax.Array = False, zeta: float | jax.Array = 0.0) -> jax.Array:
  """The MI-UE supervised-contrastive loss on cosine similarities of features, per anchor.

  The scalar loss (the batch mean of the result) is
  ``L = - mean_i log( sum_{j: y_j = y_i} (exp(c_ij / t) + 1e-8) / sum_j (exp(c_ij / t) + 1e-8) )``
  with ``c_ij = cos(f_i, f_j)``. By default both sums include ``j = i`` (the reference
  code's convention); ``exclude_self=True`` drops it from both (the textbook variant) and
  then anchors without another example of their class are left out of the mean (their
  numerator is empty). ``zeta > 0`` adds
  ``zeta * mean_i log(1 + sum_{j: y_j = y_i} ||f_i - f_j||_2 / D)``.

  Per anchor ``i``, ``loss_B[i] = w_i * l_i + zeta * log(1 + sum_{j: y_j = y_i} ||f_i - f_j||_2 / D)``
  with ``l_i`` the contrastive term of anchor ``i``; ``w_i = 1`` by default (every anchor has a
  positive, itself), and with ``exclude_self=True`` ``w_i = B / n_valid`` for the ``n_valid``
  anchors with a positive and ``w_i = 0`` for the others, so that ``jnp.mean(loss_B)`` is ``L``
  either way (a batch with no valid anchor gives 0).

  Each sum is evaluated exactly as ``logaddexp(logsumexp_S(c / t), log(|S| * 1e-8))``,
  which is ``log(sum_S (exp(c / t) + 1e-8))`` without overflow for small ``t``, and the
  per-anchor term as ``softplus(log N - log P)`` (positives P, other-class terms N, the
  denominator being P + N), which stays accurate when the loss is tiny. Float32.

  Args:
    feats_BxD: float features (e.g. penultimate), ``B >= 1``, ``D >= 1``; zero rows have
      cosine 0 with everything.
    labels_B: int labels (only compared with each other).
    temperature: ``t`` > 0 (scalar).
    exclude_self: see above; a scalar bool, may be traced.
    zeta: scalar >= 0 weight of the intra-class distance term; may be traced (a Python 0
      skips the ``B x B x D`` distance computation).

  Returns:
    ``loss_B`` in float32; reduce with ``jnp.mean``.
  """
  checks.check_shape(feats_BxD, "feats_BxD", ndim=2)
  checks.check_floating(feats_BxD, "feats_BxD")
  b, d = np.shape(feats_BxD)
  if b < 1 or d < 1:
    raise ValueError(f"feats_BxD: expected a non-empty batch of features (B >= 1, D >= 1), got shape {(b, d)}")
  _check_integer_labels(labels_B, "labels_B", b)
  _check_temperature(temperature)
  _check_scalar(exclude_self, "exclude_self")
  _check_scalar(zeta, "zeta")
  checks.check_nonnegative(zeta, "zeta")

  f = jnp.asarray(feats_BxD).astype(jnp.float32)
  labels_B = jnp.asarray(labels_B)
  # f / max(|f|, 1e-12) (torch's F.normalize), written so that a zero row has a finite gradient
  fn = f * jax.lax.rsqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-24))
  logits_BxB = (fn @ fn.T) / temperature
  same_BxB = labels_B[:, None] == labels_B[None, :]
  eye_BxB = jnp.eye(b, dtype=bool)
  no_self = not _static_zero(exclude_self)  # statically False: every anchor has a positive (itself)
  if no_self:
    pos_BxB = same_BxB & ~(eye_BxB & jnp.asarray(exclude_self).astype(bool))
  else:
    pos_BxB = same_BxB
  neg_BxB = ~same_BxB  # the denominator is positives + negatives (disjoint)
  log_eps = jnp.log(jnp.float32(MI_UE_EPS))

  def log_sum(mask_BxB):  # log sum_S (exp(c / t) + eps), and |S|
    n_B = mask_BxB.sum(-1).astype(jnp.float32)
    lse_B = jax.nn.logsumexp(jnp.where(mask_BxB, logits_BxB, _MASKED), axis=-1)  # empty set: -1e9, then eps
    return jnp.logaddexp(lse_B, log_eps + jnp.log(jnp.maximum(n_B, 1.0))), n_B

  log_pos_B, n_pos_B = log_sum(pos_BxB)
  log_neg_B, n_neg_B = log_sum(neg_BxB)
  # -log(P / (P + N)) = softplus(log N - log P): accurate when N << P (a tiny loss)
  loss_B = jnp.where(n_neg_B > 0, jax.nn.softplus(log_neg_B - log_pos_B), 0.0)
  if no_self:  # anchors without a positive are left out of the mean: weight 0, the others B / n_valid
    valid_B = n_pos_B > 0
    n_valid = jnp.maximum(valid_B.sum(), 1).astype(jnp.float32)
    loss_B = jnp.where(valid_B, loss_B * (b / n_valid), 0.0)
  if not _static_zero(zeta):
    d2_BxB = jnp.sum((f[:, None, :] - f[None, :, :]) ** 2, axis=-1)
    off = same_BxB & ~eye_BxB & (d2_BxB > 0)
    dist_BxB = jnp.where(off, jnp.sqrt(jnp.where(off, d2_BxB, 1.0)), 0.0)
    loss_B = loss_B + zeta * jnp.log1p(jnp.sum(dist_BxB, axis=-1) / d)
  return loss_B
