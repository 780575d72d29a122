"""Unlearnable examples: MI-UE's intra-class feature-collapse loss.

MI-UE (Zhu, Miao, Dong & Gao, "Why Do Unlearnable Examples Work: A Novel Perspective of Mutual
Information", ICLR 2026) crafts perturbations that minimise a supervised-contrastive loss on
cosine similarities of a surrogate's features, collapsing each class's features together
(lower intra-class covariance, lower mutual information between clean and poisoned
features). Error-minimising (EM) noise uses the plain cross-entropy
(``classification.cross_entropy``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks
from jaxprotect.losses._common import _MASKED, _check_scalar, _check_temperature, _static_zero

__all__ = ["MI_UE_EPS", "mi_ue_loss"]

MI_UE_EPS = 1e-8  # added to every term of both sums (reference convention)


def _check_integer_labels(labels: Any, name: str, batch: int) -> None:
  """Integer labels of shape ``(batch,)`` (any values: only compared with each other)."""
  checks.check_shape(labels, name, shape=(batch,))
  dtype = np.dtype(getattr(labels, "dtype", None) or np.asarray(labels).dtype)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name}: expected integer class indices, got dtype {dtype}")


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
