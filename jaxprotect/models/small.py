"""Cheap models for Fashion-MNIST-scale experiments: a two-conv CNN and an MLP (no BatchNorm).

The CNN's layers are fields: ``conv`` (called as ``nn.Conv``) and ``pool`` (2x2/2 max
pooling, ``x -> x``), by default the XLA:CPU ops of ``jaxprotect.ops``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import PARAM_DTYPE, check_num_classes, classifier, default_conv, default_pool, outputs


class SmallCNN(nn.Module):
  """conv3x3(width)-ReLU-maxpool2, conv3x3(2 width)-ReLU-maxpool2, flatten, Dense(hidden)-ReLU, Dense(K).

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)`` with ``D = hidden`` (128).
  The first Dense's input size (``2 width * H/4 * W/4``) is inferred at init.
  """
  num_classes: int
  width: int = 32
  hidden: int = 128
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  pool: Callable[[jax.Array], jax.Array] = default_pool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    x = x.astype(self.dtype)
    for i, ch in enumerate((self.width, 2 * self.width)):
      x = nn.relu(self.conv(ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=PARAM_DTYPE,
                            name=f"conv{i}")(x))
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = self.pool(x)
    x = x.reshape((x.shape[0], -1))
    feats = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=PARAM_DTYPE, name="fc")(x))
    logits = classifier(self.num_classes, self.dtype)(feats)
    return outputs(logits, feats)


class MLP(nn.Module):
  """Flatten, Dense-ReLU per ``hidden`` entry, Dense(K).

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = hidden[-1]``. If ``width``
  is given it replaces every hidden size (``(width,) * len(hidden)``).
  """
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  width: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    sizes = tuple(self.hidden) if self.width is None else (self.width,) * len(self.hidden)
    if not sizes:
      raise ValueError("MLP needs at least one hidden layer (feats are the last hidden activations)")
    x = x.astype(self.dtype).reshape((x.shape[0], -1))
    for i, h in enumerate(sizes):
      x = nn.relu(nn.Dense(h, dtype=self.dtype, param_dtype=PARAM_DTYPE, name=f"fc{i}")(x))
    feats = x
    logits = classifier(self.num_classes, self.dtype)(feats)
    return outputs(logits, feats)
