"""Shared pieces of the model zoo: initialisers, normalisation factory, pooling.

Conventions (every model in :mod:`jaxprotect.models`):

* input ``x_BxHxWxC`` float in [0, 1], any H, W, C; no normalisation inside the model;
* ``__call__(x, train=False) -> (logits_BxK, feats_BxD)``, both float32, where ``feats``
  are the penultimate features (the input of the final Dense);
* ``dtype`` is the compute dtype (float32 or bfloat16); parameters are always float32;
* BatchNorm (momentum 0.9, epsilon 1e-5) keeps running statistics in ``'batch_stats'``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PARAM_DTYPE = jnp.float32
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision ResNet/WRN convention: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # "normal" is untruncated
# PyTorch's default for nn.Linear / nn.Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with the zoo's settings (running averages unless ``train``)."""
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=PARAM_DTYPE,
      name=name,
  )


def global_avg_pool(x_BxHxWxC: jax.Array) -> jax.Array:
  """Mean over the spatial axes, accumulated in float32: ``B x H x W x C -> B x C``."""
  return jnp.mean(x_BxHxWxC.astype(jnp.float32), axis=(1, 2)).astype(x_BxHxWxC.dtype)


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding (an odd last row or column is dropped).

  Equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))`` in value and in gradient, ties
  included: the gradient goes to the first maximum of each window in row-major order, as
  in XLA's ``select_and_scatter`` and PyTorch's ``max_pool2d``. It is written as selects
  over the four strided views because XLA:CPU runs the ``select_and_scatter`` backward of
  ``reduce_window`` 20-60x slower than these elementwise ops (BENCHMARKS.md).
  """
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  top_left, top_right, bottom_left, bottom_right = (x[:, :, i, :, j] for i in (0, 1) for j in (0, 1))
  top = jnp.where(top_left >= top_right, top_left, top_right)
  bottom = jnp.where(bottom_left >= bottom_right, bottom_left, bottom_right)
  return jnp.where(top >= bottom, top, bottom)


def classifier(num_classes: int, dtype: Any, name: str = "head") -> nn.Dense:
  """Final linear layer (with bias), PyTorch-default weight init."""
  return nn.Dense(num_classes, dtype=dtype, param_dtype=PARAM_DTYPE, kernel_init=torch_default_init, name=name)


def check_num_classes(num_classes: int) -> None:
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def outputs(logits_BxK: jax.Array, feats_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cast ``(logits, feats)`` to float32, the zoo's output dtype."""
  return logits_BxK.astype(jnp.float32), feats_BxD.astype(jnp.float32)


conv = functools.partial(nn.Conv, param_dtype=PARAM_DTYPE)
