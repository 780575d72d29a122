"""ConvNet of the dataset-condensation literature (Zhao et al. 2021, DC / DSA / DM).

``depth`` blocks of conv3x3(width, bias)-norm-ReLU-avgpool2x2/2, then a Dense on the
flattened features. A 28x28 input is treated as 32x32 by padding the first convolution
by 3 instead of 1 (as the reference code does for MNIST-like data), so the feature vector
is ``width * 4 * 4 = 2048``-d at width 128, depth 3 for both 28x28x1 and 32x32x3.

Layers are fields: ``conv`` (called as ``nn.Conv``) and ``batch_norm`` (called as
``nn.BatchNorm``, used with ``norm="batchnorm"``), by default the XLA:CPU ops of ``jaxprotect.ops``.
``grad_sum_dtype="float32"`` computes the convolution and dense gradients in float32 under a
bfloat16 ``dtype`` (``models.common``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models import common
from jaxprotect.models.common import (
    PARAM_DTYPE, check_num_classes, classifier, conv_layer, default_conv, default_norm, dense_layer,
    grad_sum_dtype_field, outputs, torch_default_init)


class ConvNet(nn.Module):
  """Condensation ConvNet.

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)`` with
  ``D = width * (H' / 2**depth) * (W' / 2**depth)``, ``H' = 32`` for ``H = 28``
  (pooling stops once a spatial side is below 2).
  ``norm``: "instancenorm" (GroupNorm with one channel per group, affine; default),
  "batchnorm" (adds ``'batch_stats'``; built by the ``batch_norm`` factory) or "none".
  ``grad_sum_dtype``: "compute" or "float32", the dtype of the convolution and head
  parameter gradients and of their sums across devices (``models.common``).
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instancenorm"
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  batch_norm: Callable[..., nn.Module] = default_norm
  grad_sum_dtype: str = grad_sum_dtype_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    if self.norm not in ("instancenorm", "batchnorm", "none"):
      raise ValueError(f"unknown norm {self.norm!r}; expected 'instancenorm', 'batchnorm' or 'none'")
    conv = conv_layer(self.conv, self.dtype, self.grad_sum_dtype)
    x = x.astype(self.dtype)
    for d in range(self.depth):
      pad = 3 if (d == 0 and x.shape[1] == 28 and x.shape[2] == 28) else 1
      x = conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)), use_bias=True, dtype=self.dtype,
               param_dtype=PARAM_DTYPE, kernel_init=torch_default_init, name=f"conv{d}")(x)
      if self.norm == "instancenorm":
        x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype, param_dtype=PARAM_DTYPE,
                         name=f"norm{d}")(x)
      elif self.norm == "batchnorm":
        x = common.batch_norm(train, self.dtype, name=f"norm{d}", norm=self.batch_norm)(x)
      x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    feats = x.reshape((x.shape[0], -1))
    logits = classifier(self.num_classes, self.dtype, dense=dense_layer(self.dtype, self.grad_sum_dtype))(feats)
    return outputs(logits, feats)
