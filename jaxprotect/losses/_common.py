"""Private helpers of the loss families: input checks, the unchecked cross-entropy kernel that
several families add to their terms, and shared constants. Not part of the public API."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprotect import checks

__all__: list[str] = []  # private

_MASKED = -1e9  # a masked logit: finite (no inf - inf), but exp() of it is exactly 0


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


def _check_label_smoothing(label_smoothing: Any) -> None:
  _check_scalar(label_smoothing, "label_smoothing")
  checks.check_range(label_smoothing, 0.0, 1.0, "label_smoothing")


# ---------------------------------------------------------------------------------------
# Kernels shared by several families (inputs already checked)
# ---------------------------------------------------------------------------------------

def _cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: Any = 0.0) -> jax.Array:
  logits_BxK = jnp.asarray(logits_BxK, jnp.float32)
  if _static_zero(label_smoothing):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  num_classes = logits_BxK.shape[-1]
  targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxK, targets_BxK)
