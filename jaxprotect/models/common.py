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
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxprotect.platform import cpu_defaults_enabled
from jaxprotect.models import norm

PARAM_DTYPE = jnp.float32
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision ResNet/WRN convention: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # "normal" is untruncated
# PyTorch's default for nn.Linear / nn.Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.Module:
  """BatchNorm with the zoo's settings (running averages unless ``train``):
  ``models.norm.BatchNorm``, flax's variables and values with a faster training step on
  XLA:CPU (``flax.linen.BatchNorm`` itself with ``JAXPROTECT_XLA_CPU_DEFAULTS=0``)."""
  return (norm.BatchNorm if cpu_defaults_enabled() else nn.BatchNorm)(
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


# Convolutions with at most this many input channels (image stems) run as patches times
# a matrix on XLA:CPU; see conv_general_dilated.
PATCH_CONV_MAX_IN_CHANNELS = 4
_NHWC = ("NHWC", "HWIO", "NHWC")


def _patches(x_BxHxWxC: jax.Array, kernel: tuple[int, int], out_hw: tuple[int, int],
             two_stage: bool) -> jax.Array:
  """``B x Ho x Wo x (kh kw C)`` windows of an already padded input, ordered (i, j, c) as HWIO.

  ``two_stage`` gathers the kw column shifts first and then the kh row shifts of those (the
  faster forward on XLA:CPU); otherwise all kh kw shifts at once (whose transpose, a sum of
  padded slices, is the faster input gradient).
  """
  (kh, kw), (ho, wo) = kernel, out_hw
  if two_stage:
    cols = jnp.concatenate([x_BxHxWxC[:, :, j:j + wo] for j in range(kw)], axis=-1)
    return jnp.concatenate([cols[:, i:i + ho] for i in range(kh)], axis=-1)
  return jnp.concatenate([x_BxHxWxC[:, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)], axis=-1)


def _patch_matmul(patches, kernel_HWIO, precision):
  k = patches.shape[-1]
  out = jnp.dot(patches.reshape(-1, k), kernel_HWIO.reshape(k, -1), precision=precision)
  return out.reshape(*patches.shape[:-1], kernel_HWIO.shape[-1])


def _padded(x, kernel, padding):
  """The input padded as the convolution pads it, the kernel's (kh, kw) and the output's (Ho, Wo)."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  kernel_hw = kernel.shape[:2]
  return xp, kernel_hw, (xp.shape[1] - kernel_hw[0] + 1, xp.shape[2] - kernel_hw[1] + 1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _patch_conv(x, kernel, padding, precision):
  xp, kernel_hw, out_hw = _padded(x, kernel, padding)
  return _patch_matmul(_patches(xp, kernel_hw, out_hw, two_stage=True), kernel, precision)


def _patch_conv_jvp(padding, precision, primals, tangents):
  # The input's tangent goes through the one-stage patches (whose transpose is the fast
  # input gradient), the kernel's through XLA's own convolution (whose transpose, the
  # weight gradient, is as fast as a patch product). Symbolic zeros skip unused halves.
  x, kernel = primals
  dx, dkernel = tangents
  y = _patch_conv(x, kernel, padding, precision)
  terms = []
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    dxp, kernel_hw, out_hw = _padded(dx, kernel, padding)
    terms.append(_patch_matmul(_patches(dxp, kernel_hw, out_hw, two_stage=False), kernel, precision))
  if not isinstance(dkernel, jax.custom_derivatives.SymbolicZero):
    terms.append(lax.conv_general_dilated(x, dkernel, (1, 1), padding, dimension_numbers=_NHWC,
                                          precision=precision))
  return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)


_patch_conv.defjvp(_patch_conv_jvp, symbolic_zeros=True)


def _uses_patch_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count) -> bool:
  if not cpu_defaults_enabled() or lhs.ndim != 4 or rhs.ndim != 4:
    return False
  if isinstance(padding, str) or any(lo < 0 or hi < 0 for lo, hi in padding):
    return False
  ones = (1, 1)
  return (tuple(window_strides) == ones and tuple(lhs_dilation or ones) == ones
          and tuple(rhs_dilation or ones) == ones and feature_group_count == 1
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          and lhs.shape[-1] <= PATCH_CONV_MAX_IN_CHANNELS)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs):
  """``lax.conv_general_dilated``, except for image stems on CPU.

  A stride-1, undilated NHWC convolution with at most ``PATCH_CONV_MAX_IN_CHANNELS`` input
  channels runs on XLA:CPU as a matrix product of its input's windows with the kernel.
  XLA:CPU's own kernels are slow for so few channels: on 2 cores, batch 128, 32x32x3 -> 16
  channels, the forward took 1.8 ms against 4.3 ms and the input gradient (what a PGD
  step needs) 1.4 ms against 8.3 ms (BENCHMARKS.md). The values agree with
  ``lax.conv_general_dilated`` up to float rounding, and so do first- and higher-order
  derivatives (it is a ``custom_jvp``). Other platforms, other shapes and
  ``JAXPROTECT_XLA_CPU_DEFAULTS=0`` use ``lax.conv_general_dilated`` itself.
  """
  args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  xla = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                          lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                          dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                          precision=precision, **kwargs)
  if kwargs or not _uses_patch_conv(lhs, rhs, *args):
    return xla(lhs, rhs)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return lax.platform_dependent(lhs, rhs, cpu=lambda x, k: _patch_conv(x, k, pads, precision), default=xla)


conv = functools.partial(nn.Conv, param_dtype=PARAM_DTYPE, conv_general_dilated=conv_general_dilated)
