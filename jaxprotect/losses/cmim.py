"""Conditional mutual information of temperature-scaled output clusters, and the CMIM teacher.

CMIM (Ye, Hamidi & Yang, "Towards Undistillable Models by Minimizing Conditional Mutual
Information", 2025) trains a teacher on ``CE + lam * CMI``, the CMI of each temperature
``T`` measuring how far the outputs ``softmax(z / T)`` of each class spread around their
class centroid ``Q_y``; collapsed clusters leave a knock-off student little to distil.
The centroids are class means over a split (``class_mean_centroids``, ``centroid_sums``)
or an EMA over batches (``update_centroids``); the CMI terms of a temperature grid are
weighted and aggregated by ``cmi_aggregate``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks
from jaxprotect.losses._common import (_check_label_smoothing, _check_logits_labels, _check_scalar, _check_temperature,
                                       _check_temperatures, _cross_entropy)

__all__ = [
    "AGGREGATIONS", "CENTROID_FLOOR", "DEFAULT_CENTROID_DECAY", "DEFAULT_TEMPERATURES", "WEIGHTINGS", "centroid_sums",
    "centroids_from_sums", "class_mean_centroids", "cmi", "cmi_aggregate", "cmi_spectrum", "cmim_loss",
    "temperature_weights", "update_centroids",
]

CENTROID_FLOOR = 1e-8  # centroids are clipped here before the log
DEFAULT_CENTROID_DECAY = 0.9999  # the MCMI reference code's EMA decay (per step)
DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
AGGREGATIONS = ("mean", "random", "max")
WEIGHTINGS = ("t2", "one")


def _check_centroids(centroids: Any, name: str, num_classes: int, num_temperatures: int | None = None) -> None:
  """Float centroids ``K x K`` (``num_temperatures`` None) or ``T x K x K``."""
  want = (num_classes, num_classes) if num_temperatures is None else (num_temperatures, num_classes, num_classes)
  checks.check_shape(centroids, name, shape=want)
  checks.check_floating(centroids, name)


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
