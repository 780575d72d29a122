"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation blocks as in xternalz/WideResNet-pytorch.

WRN-d-k: conv3x3(16) stem, three stages of ``n = (d - 4) / 6`` blocks with 16k, 32k, 64k
channels and strides 1, 2, 2, final BN-ReLU, global average pooling, linear. A block is
BN-ReLU-conv3x3/s-BN-ReLU-(dropout)-conv3x3; where the channel count changes, the shortcut
is a 1x1/s conv applied to the pre-activated input. Convs have no bias.
WRN-28-10 has 36,479,194 parameters for 10 classes and 3-channel input.

Layers are fields, as in flax's ResNet example: ``conv`` (called as ``nn.Conv``) and
``norm`` (called as ``nn.BatchNorm``), by default the XLA:CPU ops of ``jaxprotect.ops``.
``grad_sum_dtype="float32"`` computes the convolution and head gradients in float32 under a
bfloat16 ``dtype`` (``models.common``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    batch_norm, check_num_classes, classifier, conv_layer, default_conv, default_norm, dense_layer, global_avg_pool,
    grad_sum_dtype_field, outputs, same_conv)



class WideBlock(nn.Module):
  """Pre-activation wide block: ``B x H x W x Cin -> B x H/s x W/s x features``."""
  features: int
  stride: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(same_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(batch_norm, train, self.dtype, norm=self.norm)
    equal_in_out = x.shape[-1] == self.features and self.stride == 1
    a = nn.relu(norm(name="bn1")(x))
    y = conv(self.features, 3, self.stride, name="conv1")(a)
    y = nn.relu(norm(name="bn2")(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.features, 3, 1, name="conv2")(y)
    shortcut = x if equal_in_out else conv(self.features, 1, self.stride, name="shortcut_conv")(a)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-depth-widen_factor. ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = 4 * width * k``.

  ``width`` is the stem width (16 in the paper). With ``dropout_rate > 0`` and ``train=True``
  a ``'dropout'`` rng is required. ``conv`` and ``norm`` build every convolution and BatchNorm.
  ``grad_sum_dtype``: "compute" or "float32", the dtype of the convolution and head
  parameter gradients and of their sums across devices (``models.common``).
  """
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  width: int = 16
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm
  grad_sum_dtype: str = grad_sum_dtype_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    conv = conv_layer(self.conv, self.dtype, self.grad_sum_dtype)
    x = x.astype(self.dtype)
    x = same_conv(conv, self.width, 3, 1, self.dtype, name="stem_conv")(x)
    for i in range(3):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = WideBlock(self.width * self.widen_factor * 2**i, stride, self.dropout_rate, self.dtype,
                      conv=conv, norm=self.norm, name=f"stage{i + 1}_block{j + 1}")(x, train)
    x = nn.relu(batch_norm(train, self.dtype, name="final_bn", norm=self.norm)(x))
    feats = global_avg_pool(x)
    logits = classifier(self.num_classes, self.dtype, dense=dense_layer(self.dtype, self.grad_sum_dtype))(feats)
    return outputs(logits, feats)
