"""VGG-11/13/16/19 in the CIFAR style (kuangliu/pytorch-cifar).

conv3x3-BN-ReLU stacks with 2x2 max-pooling ("M" in the config), global average pooling
and a single linear layer on the 512-d features. Pooling is skipped once a spatial side
is below 2, so small inputs (28x28, 16x16, 8x8) work. Convs have no bias (BN follows).

Layers are fields: ``conv`` (called as ``nn.Conv``), ``norm`` (called as ``nn.BatchNorm``)
and ``pool`` (2x2/2 max pooling, ``x -> x``), by default the XLA:CPU ops of ``jaxprotect.ops``.
``grad_sum_dtype="float32"`` computes the convolution and dense gradients in float32 under a
bfloat16 ``dtype`` (``models.common``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    PARAM_DTYPE, batch_norm, check_num_classes, classifier, conv_kaiming_fan_out, conv_layer, default_conv,
    default_norm, default_pool, dense_layer, global_avg_pool, grad_sum_dtype_field, outputs)

# Channel multipliers of the base width (64): 1 -> 64, 2 -> 128, 4 -> 256, 8 -> 512; "M" = max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg13": (1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    "vgg19": (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


class VGG(nn.Module):
  """VGG classifier. ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = 8 * width``.

  ``grad_sum_dtype``: "compute" or "float32", the dtype of the convolution and head
  parameter gradients and of their sums across devices (``models.common``).
  """
  num_classes: int
  cfg: Sequence[int | str] = CFGS["vgg16"]
  width: int = 64
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm
  pool: Callable[[jax.Array], jax.Array] = default_pool
  grad_sum_dtype: str = grad_sum_dtype_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    conv = conv_layer(self.conv, self.dtype, self.grad_sum_dtype)
    x = x.astype(self.dtype)
    i = 0
    for v in self.cfg:
      if v == "M":
        if x.shape[1] >= 2 and x.shape[2] >= 2:
          x = self.pool(x)
        continue
      x = conv(int(v) * self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
               param_dtype=PARAM_DTYPE, kernel_init=conv_kaiming_fan_out, name=f"conv{i}")(x)
      x = nn.relu(batch_norm(train, self.dtype, name=f"bn{i}", norm=self.norm)(x))
      i += 1
    feats = global_avg_pool(x)
    logits = classifier(self.num_classes, self.dtype, dense=dense_layer(self.dtype, self.grad_sum_dtype))(feats)
    return outputs(logits, feats)
