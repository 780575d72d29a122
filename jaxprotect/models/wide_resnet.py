"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation blocks as in xternalz/WideResNet-pytorch.

WRN-d-k: conv3x3(16) stem, three stages of ``n = (d - 4) / 6`` blocks with 16k, 32k, 64k
channels and strides 1, 2, 2, final BN-ReLU, global average pooling, linear. A block is
BN-ReLU-conv3x3/s-BN-ReLU-(dropout)-conv3x3; where the channel count changes, the shortcut
is a 1x1/s conv applied to the pre-activated input. Convs have no bias.
WRN-28-10 has 36,479,194 parameters for 10 classes and 3-channel input.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    batch_norm, check_num_classes, classifier, conv, conv_kaiming_fan_out, global_avg_pool, outputs)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str | None = None) -> nn.Conv:
  p = kernel // 2
  return conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)), use_bias=False,
              dtype=dtype, kernel_init=conv_kaiming_fan_out, name=name)


class WideBlock(nn.Module):
  """Pre-activation wide block: ``B x H x W x Cin -> B x H/s x W/s x features``."""
  features: int
  stride: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    equal_in_out = x.shape[-1] == self.features and self.stride == 1
    a = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
    y = _conv(self.features, 3, self.stride, self.dtype, name="conv1")(a)
    y = nn.relu(batch_norm(train, self.dtype, name="bn2")(y))
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _conv(self.features, 3, 1, self.dtype, name="conv2")(y)
    shortcut = x if equal_in_out else _conv(self.features, 1, self.stride, self.dtype, name="shortcut_conv")(a)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-depth-widen_factor. ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = 4 * width * k``.

  ``width`` is the stem width (16 in the paper). With ``dropout_rate > 0`` and ``train=True``
  a ``'dropout'`` rng is required.
  """
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  width: int = 16
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    x = x.astype(self.dtype)
    x = _conv(self.width, 3, 1, self.dtype, name="stem_conv")(x)
    for i in range(3):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = WideBlock(self.width * self.widen_factor * 2**i, stride, self.dropout_rate, self.dtype,
                      name=f"stage{i + 1}_block{j + 1}")(x, train)
    x = nn.relu(batch_norm(train, self.dtype, name="final_bn")(x))
    feats = global_avg_pool(x)
    logits = classifier(self.num_classes, self.dtype)(feats)
    return outputs(logits, feats)
