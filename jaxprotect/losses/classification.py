"""Classification: per-example cross-entropy (optionally label-smoothed) and 0/1 accuracy.

The per-example cross-entropy is also the objective that error-minimising (EM) noise
minimises over the perturbation (Huang et al., "Unlearnable Examples: Making Personal Data
Unexploitable", ICLR 2021), and the CE term of the CMIM, Nasty Teacher and KD objectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprotect.losses._common import _check_label_smoothing, _check_logits_labels, _cross_entropy

__all__ = ["accuracy", "cross_entropy"]


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
