"""VGG-11/13/16/19 in the CIFAR style (kuangliu/pytorch-cifar).

conv3x3-BN-ReLU stacks with 2x2 max-pooling ("M" in the config), global average pooling
and a single linear layer on the 512-d features. Pooling is skipped once a spatial side
is below 2, so small inputs (28x28, 16x16, 8x8) work. Convs have no bias (BN follows).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    batch_norm, check_num_classes, classifier, conv, conv_kaiming_fan_out, global_avg_pool, max_pool_2x2, outputs)

# Channel multipliers of the base width (64): 1 -> 64, 2 -> 128, 4 -> 256, 8 -> 512; "M" = max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg13": (1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    "vgg19": (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


class VGG(nn.Module):
  """VGG classifier. ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)``, ``D = 8 * width``."""
  num_classes: int
  cfg: Sequence[int | str] = CFGS["vgg16"]
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    x = x.astype(self.dtype)
    i = 0
    for v in self.cfg:
      if v == "M":
        if x.shape[1] >= 2 and x.shape[2] >= 2:
          x = max_pool_2x2(x)
        continue
      x = conv(int(v) * self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
               kernel_init=conv_kaiming_fan_out, name=f"conv{i}")(x)
      x = nn.relu(batch_norm(train, self.dtype, name=f"bn{i}")(x))
      i += 1
    feats = global_avg_pool(x)
    logits = classifier(self.num_classes, self.dtype)(feats)
    return outputs(logits, feats)
