"""``conv_general_dilated``: ``lax.conv_general_dilated``, with few-channel stems as patch products on XLA:CPU.

What: a stride-1, undilated NHWC convolution with at most ``PATCH_CONV_MAX_IN_CHANNELS``
input channels (a 3x3 stem on RGB or grayscale images) runs on XLA:CPU as the matrix
product of its input's windows ("patches") with the kernel. The windows are gathered in
two stages (columns, then rows) for the forward and in one for the input gradient, whose
transpose is then a sum of padded slices; the weight gradient stays XLA's convolution.

Why: XLA:CPU's own convolution kernels are slow for so few input channels, in the forward
and even more in the input gradient, which is what every PGD step of unlearnable-example
crafting computes (measurements: docs/BENCHMARKS.md, "XLA:CPU: what the time goes to",
"Stem convolutions as patch products"). At 16 input channels and more XLA's kernels are
faster, so only stems are rewritten.

Equality with the plain layer: the values agree with ``lax.conv_general_dilated`` up to
float rounding, and so do first- and higher-order derivatives (a ``custom_jvp``, so both
forward and reverse mode and their compositions work; tested in tests/test_models.py).
Other platforms (chosen when the program is lowered, ``lax.platform_dependent``), other
shapes and ``JAXPROTECT_XLA_CPU_DEFAULTS=0`` (``platform.cpu_defaults_enabled()``, read
when traced) use ``lax.conv_general_dilated`` itself. Pass it to ``flax.linen.Conv`` as
``conv_general_dilated=``; the zoo's default ``conv`` factory does.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxprotect.platform import cpu_defaults_enabled

__all__ = ["PATCH_CONV_MAX_IN_CHANNELS", "conv_general_dilated"]

# Convolutions with at most this many input channels (image stems) run as patches times a matrix on XLA:CPU.
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
  """``lax.conv_general_dilated``, except for image stems on XLA:CPU (same arguments).

  A stride-1, undilated NHWC convolution with explicit padding and at most
  ``PATCH_CONV_MAX_IN_CHANNELS`` input channels runs on XLA:CPU as a matrix product of its
  input's windows with the kernel (see the module docstring). The values agree with
  ``lax.conv_general_dilated`` up to float rounding, and so do first- and higher-order
  derivatives (a ``custom_jvp``). Other platforms, other shapes and
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
