"""Convolution and dense layers whose parameter gradients stay float32 under a bfloat16 compute dtype.

What: ``Float32GradConv`` and ``Float32GradDense`` are ``flax.linen.Conv`` and
``flax.linen.Dense`` (the same variables, initialisation and forward values: the input,
kernel and bias cast to the compute ``dtype``, the product computed there) except in how
the gradients of their parameters are computed when the compute dtype is narrower than
float32 (bfloat16, float16) and the parameters are wider. The kernel gradient is then a
convolution (or dot) of the input and the output gradient, both in the compute dtype,
with float32 results (``preferred_element_type``); the bias gradient a float32 sum of the
output gradient. Neither is rounded to the compute dtype: they are the cotangents of the
parameters, cast to the parameters' dtype (a no-op for the zoo's float32 parameters). The
input gradient is computed as flax computes it, in the compute dtype.

Why: flax casts the float32 kernel to the compute dtype before the product, so reverse
mode computes the kernel gradient in bfloat16 and casts it to float32 only afterwards (the
transpose of that cast). With the batch split across devices, the gradient is a sum over
the batch, and XLA's SPMD partitioner all-reduces each device's partial sum in the dtype
the gradient is computed in: bfloat16. Here the partial sums, and so the cross-device
all-reduces, are float32, at twice the bytes (measurements: tests/test_grad_sum_dtype.py).
The zoo's models use these layers for ``grad_sum_dtype="float32"``.

How: ``conv_float32_grad`` and ``dense_float32_grad`` are ``jax.custom_vjp`` functions of
the input and the parameters. Reverse mode works at any order (the backward is written in
differentiable JAX operations, so gradient matching can differentiate a gradient); forward
mode (``jax.jvp``, ``jax.linearize``) does not, as for every ``custom_vjp``. With a compute
dtype of float32 or wider, or parameters no wider than it, both are the plain computation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import canonicalize_dtype
from jax import lax

from jaxprotect import checks

__all__ = ["Float32GradConv", "Float32GradDense", "conv_float32_grad", "dense_float32_grad", "splits_precision"]

_PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID")


def splits_precision(compute_dtype: Any, param_dtype: Any) -> bool:
  """Whether parameters of ``param_dtype`` used in ``compute_dtype`` get float32 gradients
  from these layers: a floating compute dtype narrower than float32, wider parameters."""
  compute, param = np.dtype(compute_dtype), np.dtype(param_dtype)
  if not (jnp.issubdtype(compute, jnp.floating) and jnp.issubdtype(param, jnp.floating)):
    return False
  return jnp.finfo(compute).bits < 32 and jnp.finfo(param).bits > jnp.finfo(compute).bits


# ---------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------

class _ConvSpec(NamedTuple):
  """The static arguments of a convolution (hashable: ``custom_vjp``'s non-differentiable argument)."""
  window_strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]  # as given (the forward's)
  pads: tuple[tuple[int, int], ...]  # explicit (the kernel gradient's)
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  dimension_numbers: lax.ConvDimensionNumbers
  feature_group_count: int
  precision: Any
  conv: Callable[..., jax.Array]
  param_dtype: np.dtype
  has_bias: bool


def _dilate(n: int, d: int) -> int:
  return 0 if n == 0 else 1 + d * (n - 1)


def _conv_apply(spec: _ConvSpec, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  """The forward, with ``kernel`` already in ``x``'s dtype: as flax's Conv computes it."""
  y = spec.conv(x, kernel, spec.window_strides, spec.padding, lhs_dilation=spec.lhs_dilation,
                rhs_dilation=spec.rhs_dilation, dimension_numbers=spec.dimension_numbers,
                feature_group_count=spec.feature_group_count, precision=spec.precision)
  if bias is not None:
    shape = [1] * y.ndim
    shape[spec.dimension_numbers.out_spec[1]] = -1
    y = y + bias.astype(y.dtype).reshape(shape)
  return y


def _conv_kernel_grad(spec: _ConvSpec, x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """The kernel's cotangent of ``conv(x, kernel)`` at output cotangent ``g``, accumulated and
  returned in float32: ``lax.conv_general_dilated``'s own transpose rule with float32 results."""
  lhs_spec, rhs_spec, out_spec = spec.dimension_numbers
  pads = []
  for i, (lo, _) in enumerate(spec.pads):
    n, k, o = x.shape[lhs_spec[2 + i]], kernel_shape[rhs_spec[2 + i]], g.shape[out_spec[2 + i]]
    from_lhs = _dilate(o, spec.window_strides[i]) - _dilate(n, spec.lhs_dilation[i])
    from_rhs = _dilate(k, spec.rhs_dilation[i]) - lo - 1
    pads.append((lo, from_lhs + from_rhs))
  swap = lambda s: (s[1], s[0], *s[2:])  # noqa: E731
  return lax.conv_general_dilated(
      x, g, window_strides=spec.rhs_dilation, padding=pads, lhs_dilation=spec.lhs_dilation,
      rhs_dilation=spec.window_strides,
      dimension_numbers=lax.ConvDimensionNumbers(swap(lhs_spec), swap(out_spec), swap(rhs_spec)),
      feature_group_count=1, batch_group_count=spec.feature_group_count, precision=spec.precision,
      preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(spec: _ConvSpec, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  return _conv_apply(spec, x, kernel.astype(x.dtype), bias)


def _conv_fwd(spec, x, kernel, bias):
  k = kernel.astype(x.dtype)
  return _conv_apply(spec, x, k, bias), (x, k)


def _conv_bwd(spec, res, g):
  x, k = res
  _, vjp_x = jax.vjp(lambda v: _conv_apply(spec, v, k, None), x)
  (dx,) = vjp_x(g)
  dk = _conv_kernel_grad(spec, x, g, k.shape).astype(spec.param_dtype)
  db = None
  if spec.has_bias:
    axes = tuple(i for i in range(g.ndim) if i != spec.dimension_numbers.out_spec[1])
    db = jnp.sum(g, axis=axes, dtype=jnp.float32).astype(spec.param_dtype)
  return dx, dk, db


_conv.defvjp(_conv_fwd, _conv_bwd)


def _tuple(value: Any, n: int, name: str) -> tuple[int, ...]:
  out = (1,) * n if value is None else tuple(value)
  if len(out) != n or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in out):
    raise ValueError(f"{name}: expected {n} positive integers (one per spatial dimension), got {value!r}")
  return tuple(int(v) for v in out)


def conv_float32_grad(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                      lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                      dimension_numbers: Any = None, feature_group_count: int = 1, precision: Any = None, *,
                      bias: jax.Array | None = None,
                      conv_general_dilated: Callable[..., jax.Array] = lax.conv_general_dilated) -> jax.Array:
  """``conv_general_dilated(lhs, rhs.astype(lhs.dtype), ...) + bias.astype(lhs.dtype)``, with
  float32 gradients for ``rhs`` (the kernel) and ``bias`` (see the module docstring).

  ``lhs`` is the input in the compute dtype, ``rhs`` the kernel and ``bias`` (optional, one
  value per output feature) the parameters, in their own dtype; the other arguments are
  ``lax.conv_general_dilated``'s (``padding`` a string or (low, high) pairs), and
  ``conv_general_dilated`` computes the forward and the input gradient (e.g.
  ``jaxprotect.ops.conv_general_dilated``). The result is in ``lhs``'s dtype. When
  ``splits_precision(lhs.dtype, rhs.dtype)`` is false this is the plain computation.
  """
  checks.check_floating(lhs, "lhs")
  checks.check_floating(rhs, "rhs")
  if np.ndim(lhs) != np.ndim(rhs) or np.ndim(lhs) < 3:
    raise ValueError(f"lhs, rhs: expected arrays of the same rank >= 3, got shapes {np.shape(lhs)} and "
                     f"{np.shape(rhs)}")
  if not isinstance(feature_group_count, (int, np.integer)) or feature_group_count < 1:
    raise ValueError(f"feature_group_count: expected a positive integer, got {feature_group_count!r}")
  n = np.ndim(lhs) - 2
  dn = lax.conv_dimension_numbers(np.shape(lhs), np.shape(rhs), dimension_numbers)
  out_features = np.shape(rhs)[dn.rhs_spec[0]]
  if bias is not None:
    checks.check_floating(bias, "bias")
    checks.check_shape(bias, "bias", shape=(out_features,))
  strides = _tuple(window_strides, n, "window_strides")
  lhs_dil, rhs_dil = _tuple(lhs_dilation, n, "lhs_dilation"), _tuple(rhs_dilation, n, "rhs_dilation")
  if not splits_precision(lhs.dtype, rhs.dtype):
    y = conv_general_dilated(lhs, rhs.astype(lhs.dtype), window_strides, padding, lhs_dilation=lhs_dilation,
                             rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count, precision=precision)
    if bias is not None:
      shape = [1] * y.ndim
      shape[dn.out_spec[1]] = -1
      y = y + bias.astype(y.dtype).reshape(shape)
    return y
  if isinstance(padding, str):
    if padding.upper() not in _PADDING_STRINGS:
      raise ValueError(f"padding: expected one of {_PADDING_STRINGS} or (low, high) pairs, got {padding!r}")
    window = [_dilate(np.shape(rhs)[d], r) for d, r in zip(dn.rhs_spec[2:], rhs_dil)]
    pads = tuple(lax.padtype_to_pads([np.shape(lhs)[d] for d in dn.lhs_spec[2:]], window, strides, padding))
    given: Any = padding
  else:
    try:
      pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
      raise ValueError(f"padding: expected a string or {n} (low, high) pairs, got {padding!r}") from None
    if len(pads) != n:
      raise ValueError(f"padding: expected {n} (low, high) pairs, got {padding!r}")
    given = pads
  if isinstance(precision, list):
    precision = tuple(precision)
  spec = _ConvSpec(strides, given, tuple((int(lo), int(hi)) for lo, hi in pads), lhs_dil, rhs_dil, dn,
                   int(feature_group_count), precision, conv_general_dilated, np.dtype(rhs.dtype), bias is not None)
  return _conv(spec, lhs, rhs, bias)


class Conv(nn.Module):
  """``flax.linen.Conv`` (same fields, variables and forward values) with float32 kernel and
  bias gradients under a narrower compute ``dtype`` (``conv_float32_grad``). Public as
  ``Float32GradConv``; the class bears flax's name because flax names a layer built without
  a name after its class (``Conv_0``), so the parameter tree is the one ``nn.Conv`` gives.

  Padding: a string ("SAME", "SAME_LOWER", "VALID"), an int or one int or (low, high) pair
  per spatial dimension, as flax's (not flax's "CIRCULAR", "REFLECT" or "CAUSAL").
  ``conv_general_dilated`` computes the forward and the input gradient, as flax's field does.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: None | int | Sequence[int] = 1
  padding: Any = "SAME"
  input_dilation: None | int | Sequence[int] = 1
  kernel_dilation: None | int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
  conv_general_dilated: Callable[..., jax.Array] = lax.conv_general_dilated

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    n = len(kernel_size)

    def broadcast(v: None | int | Sequence[int]) -> tuple[int, ...]:
      v = 1 if v is None else v
      return (v,) * n if isinstance(v, int) else tuple(v)

    # Every batch dimension into one leading axis, as flax's Conv does.
    num_batch_dimensions = inputs.ndim - (n + 1)
    batch_shape = inputs.shape[:num_batch_dimensions]
    if num_batch_dimensions != 1:
      inputs = jnp.reshape(inputs, (-1,) + inputs.shape[num_batch_dimensions:])
    padding = nn.linear.canonicalize_padding(self.padding, n)
    if isinstance(padding, str) and padding.upper() not in _PADDING_STRINGS:
      raise ValueError(f"padding: Float32GradConv takes {', '.join(_PADDING_STRINGS)} or explicit padding, "
                       f"got {self.padding!r}")
    in_features = jnp.shape(inputs)[-1]
    if in_features % self.feature_group_count:
      raise ValueError(f"feature_group_count: {self.feature_group_count} does not divide the {in_features} "
                       "input features")
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (in_features // self.feature_group_count, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    dtype = canonicalize_dtype(inputs, kernel, bias, dtype=self.dtype)
    ndim = inputs.ndim
    lhs_spec = (0, ndim - 1) + tuple(range(1, ndim - 1))
    dn = lax.ConvDimensionNumbers(lhs_spec, (ndim - 1, ndim - 2) + tuple(range(0, ndim - 2)), lhs_spec)
    y = conv_float32_grad(
        jnp.asarray(inputs, dtype), kernel, broadcast(self.strides), padding,
        lhs_dilation=broadcast(self.input_dilation), rhs_dilation=broadcast(self.kernel_dilation),
        dimension_numbers=dn, feature_group_count=self.feature_group_count, precision=self.precision,
        bias=bias, conv_general_dilated=self.conv_general_dilated)
    if num_batch_dimensions != 1:
      y = jnp.reshape(y, batch_shape + y.shape[1:])
    return y


# ---------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------

def _dense_apply(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, precision: Any) -> jax.Array:
  """The forward, with ``kernel`` already in ``x``'s dtype: as flax's Dense computes it."""
  y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
  if bias is not None:
    y = y + jnp.reshape(bias.astype(y.dtype), (1,) * (y.ndim - 1) + (-1,))
  return y


class _DenseSpec(NamedTuple):
  precision: Any
  param_dtype: np.dtype
  has_bias: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _dense(spec: _DenseSpec, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  return _dense_apply(x, kernel.astype(x.dtype), bias, spec.precision)


def _dense_fwd(spec, x, kernel, bias):
  k = kernel.astype(x.dtype)
  return _dense_apply(x, k, bias, spec.precision), (x, k)


def _dense_bwd(spec, res, g):
  x, k = res
  _, vjp_x = jax.vjp(lambda v: _dense_apply(v, k, None, spec.precision), x)
  (dx,) = vjp_x(g)
  lead = tuple(range(x.ndim - 1))
  dk = lax.dot_general(x, g, ((lead, lead), ((), ())), precision=spec.precision,
                       preferred_element_type=jnp.float32)
  db = jnp.sum(g, axis=lead, dtype=jnp.float32).astype(spec.param_dtype) if spec.has_bias else None
  return dx, dk.astype(spec.param_dtype), db


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_float32_grad(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
                       precision: Any = None) -> jax.Array:
  """``x @ kernel.astype(x.dtype) + bias.astype(x.dtype)`` (contracting ``x``'s last axis), with
  float32 gradients for ``kernel`` (``D x F``) and ``bias`` (``F``, optional) when
  ``splits_precision(x.dtype, kernel.dtype)``; otherwise the plain computation. The
  result is in ``x``'s dtype."""
  checks.check_floating(x, "x")
  checks.check_floating(kernel, "kernel")
  checks.check_shape(kernel, "kernel", ndim=2)
  if np.ndim(x) < 1 or np.shape(x)[-1] != np.shape(kernel)[0]:
    raise ValueError(f"x: expected a last axis of {np.shape(kernel)[0]} (kernel's first), got shape {np.shape(x)}")
  if bias is not None:
    checks.check_floating(bias, "bias")
    checks.check_shape(bias, "bias", shape=(np.shape(kernel)[1],))
  if isinstance(precision, list):
    precision = tuple(precision)
  if not splits_precision(x.dtype, kernel.dtype):
    return _dense_apply(x, kernel.astype(x.dtype), bias, precision)
  return _dense(_DenseSpec(precision, np.dtype(kernel.dtype), bias is not None), x, kernel, bias)


class Dense(nn.Module):
  """``flax.linen.Dense`` (same fields, variables and forward values) with float32 kernel and
  bias gradients under a narrower compute ``dtype`` (``dense_float32_grad``). Public as
  ``Float32GradDense``; named as flax's class, as ``Conv`` is, for the same parameter tree."""
  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    dtype = canonicalize_dtype(inputs, kernel, bias, dtype=self.dtype)
    return dense_float32_grad(jnp.asarray(inputs, dtype), kernel, bias, precision=self.precision)


Float32GradConv = Conv
Float32GradDense = Dense
