"""Losses as pure per-example functions (``loss_B``); callers reduce them.

Shapes: ``logits_BxK`` float logits, ``labels_B`` int class indices in [0, K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, optionally against smoothed labels.

  With ``label_smoothing = eps`` the target is ``(1 - eps) * onehot(y) + eps / K``
  (Szegedy et al. 2016; the LS-student baseline of the distillation literature).
  Computed in float32 whatever the logits' dtype.
  """
  logits_BxK = logits_BxK.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  num_classes = logits_BxK.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxK, targets)


def accuracy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness of the arg-max prediction (float32)."""
  return (jnp.argmax(logits_BxK, axis=-1) == labels_B).astype(jnp.float32)
