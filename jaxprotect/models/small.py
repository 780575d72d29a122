"""Cheap models for Fashion-MNIST-scale experiments: a two-conv CNN and an MLP (no BatchNorm).

The CNN's layers are fields: ``conv`` (called as ``nn.Conv``) and ``pool`` (2x2/2 max
pooling, ``x -> x``), by default the XLA:CPU ops of ``jaxprotect.ops``.
``grad_sum_dtype="float32"`` computes the convolution and dense gradients in float32 under a
bfloat16 ``dtype`` (``models.common``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    PARAM_DTYPE, check_num_classes, classifier, conv_layer, default_conv, default_pool, dense_layer,
    grad_sum_dtype_field, outputs)


class SmallCNN(nn.Module):
  """conv3x3(width)-ReLU-maxpool2, conv3x3(2 width)-ReLU-maxpool2, flatten, Dense(hidden)-ReLU, Dense(K).

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)`` with ``D = hidden`` (128).
  The first Dense's input size (``2 width * H/4 * W/4``) is inferred at init.
  ``grad_sum_dtype``: "compute" or "float32", the dtype of the convolution and dense
  parameter gradients and of their sums across devices (``models.common``).
  """
  num_classes: int
  width: int = 32
  hidden: int = 128
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  pool: Callable[[jax.Array], jax.Array] = default_pool
  grad_sum_dtype: str = grad_sum_dtype_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    conv, dense = conv_layer(self.conv, self.dtype, self.grad_sum_dtype), dense_layer(self.dtype, self.grad_sum_dtype)
    x = x.astype(self.dtype)
    for i, ch in enumerate((self.width, 2 * self.width)):
      x = nn.relu(conv(ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=PARAM_DTYPE,
                       name=f"conv{i}")(x))
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = self.pool(x)
    x = x.reshape((x.shape[0], -1))
    feats = nn.relu(dense(self.hidden, dtype=self.dtype, param_dtype=PARAM_DTYPE, name="fc")(x))
    logits = classifier(self.num_classes, self.dtype, dense=dense)(feats)
    return outputs(logits, feats)


class MLP(nn.Module):
  """Flatten, Dense-ReLU per ``hidden`` entry, Dense(K).

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = hidden[-1]``. If ``width``
  is given it replaces every hidden size (``(width,) * len(hidden)``). ``grad_sum_dtype``:
  "compute" or "float32", the dtype of the parameter gradients and of their sums across
  devices (``models.common``).
  """
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  width: int | None = None
  dtype: Any = jnp.float32
  grad_sum_dtype: str = grad_sum_dtype_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    sizes = tuple(self.hidden) if self.width is None else (self.width,) * len(self.hidden)
    if not sizes:
      raise ValueError("MLP needs at least one hidden layer (feats are the last hidden activations)")
    dense = dense_layer(self.dtype, self.grad_sum_dtype)
    x = x.astype(self.dtype).reshape((x.shape[0], -1))
    for i, h in enumerate(sizes):
      x = nn.relu(dense(h, dtype=self.dtype, param_dtype=PARAM_DTYPE, name=f"fc{i}")(x))
    feats = x
    logits = classifier(self.num_classes, self.dtype, dense=dense)(feats)
    return outputs(logits, feats)
