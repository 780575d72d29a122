"""``BatchNorm``: flax's BatchNorm (same variables, same values), with a faster training step on XLA:CPU.

What: ``BatchNorm`` has exactly the variables of ``flax.linen.BatchNorm`` (params ``scale``,
``bias``; ``batch_stats`` ``mean``, ``var``, all float32), computes what it computes
(statistics in float32 with ``var = E[x^2] - E[x]^2`` clipped at 0, the running averages
updated outside of initialisation, the output in ``dtype``) and can replace it in a model
without changing checkpoints. In training mode on XLA:CPU the normalisation is a
``custom_jvp`` whose channel sums and broadcasts are products with a ones vector.

Why: differentiating flax's version gives XLA:CPU hundreds of reductions and broadcast
transposes in a ResNet-18 step, which it rewrites into ``reduce``/``reduce-window`` ops
and runs slower than these matrix-vector products (measurements: docs/BENCHMARKS.md,
"XLA:CPU: what the time goes to", the BatchNorm entry).

Equality with the plain layer: values, running statistics, eval mode, gradients, JVP and
Hessian-vector products agree with ``nn.BatchNorm`` (tested in tests/test_models.py). The
rule is written as a JVP, so forward mode, reverse mode and their compositions all work.
Other platforms (chosen when the program is lowered, ``lax.platform_dependent``), eval
mode and ``JAXPROTECT_XLA_CPU_DEFAULTS=0`` (``platform.cpu_defaults_enabled()``, read when
traced) use plain ``jnp`` reductions, the same computation as flax's; with that switch the
zoo's default ``norm`` factory (``models.common.default_norm``) builds ``nn.BatchNorm`` itself.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxprotect.platform import cpu_defaults_enabled

__all__ = ["BatchNorm", "normalize"]

SymbolicZero = jax.custom_derivatives.SymbolicZero


def _row_sum(v_MxC: jax.Array) -> jax.Array:
  """``M x C -> C``: the column sums, as a product with a ones vector."""
  return jnp.dot(jnp.ones((v_MxC.shape[0],), v_MxC.dtype), v_MxC, precision=lax.Precision.HIGHEST)


def _row_broadcast(v_C: jax.Array, m: int) -> jax.Array:
  """``C -> M x C``: ``v`` on every row, as an outer product (its transpose is ``_row_sum``)."""
  return jnp.dot(jnp.ones((m, 1), v_C.dtype), v_C[None, :], precision=lax.Precision.HIGHEST)


def _normalize_reference(x_MxC, scale_C, bias_C, epsilon):
  """Training-mode BatchNorm over the rows, as flax computes it: ``(y, mean, var)``."""
  mean = jnp.mean(x_MxC, axis=0)
  var = jnp.maximum(0.0, jnp.mean(x_MxC * x_MxC, axis=0) - mean * mean)
  return (x_MxC - mean) * (lax.rsqrt(var + epsilon) * scale_C) + bias_C, mean, var


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _normalize_cpu(x_MxC, scale_C, bias_C, epsilon):
  m = float(x_MxC.shape[0])  # a float: a Python int above 2**31 overflows int32 when traced
  mean = _row_sum(x_MxC) / m
  var = jnp.maximum(0.0, _row_sum(x_MxC * x_MxC) / m - mean * mean)
  return (x_MxC - mean) * (lax.rsqrt(var + epsilon) * scale_C) + bias_C, mean, var


def _normalize_cpu_jvp(epsilon, primals, tangents):
  # With xhat = (x - mean) * inv and inv = (var + eps)^-1/2:
  #   d mean = sum(dx) / m,   d var = 2 sum(dx * xhat) / (m inv),
  #   d xhat = inv (dx - d mean - xhat sum(dx * xhat) / m),
  #   d y    = scale d xhat + xhat d scale + d bias.
  # Every sum over rows and every broadcast to rows is a ones-vector product, so the
  # transpose (the VJP) has only such products too. Symbolic zeros skip unused terms.
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  y, mean, var = _normalize_cpu(x, scale, bias, epsilon)
  m = x.shape[0]
  mf = float(m)  # the divisor (see _normalize_cpu); m stays the broadcast's row count
  inv = lax.rsqrt(var + epsilon)
  xhat = (x - mean) * inv
  terms = []
  if isinstance(dx, SymbolicZero):
    dmean = dvar = jnp.zeros_like(mean)
  else:
    dmean = _row_sum(dx) / mf
    dxhat_sum = _row_sum(dx * xhat) / mf
    dvar = 2.0 * dxhat_sum / inv
    terms.append((scale * inv) * (dx - _row_broadcast(dmean, m) - xhat * _row_broadcast(dxhat_sum, m)))
  if not isinstance(dscale, SymbolicZero):
    terms.append(xhat * _row_broadcast(dscale, m))
  if not isinstance(dbias, SymbolicZero):
    terms.append(_row_broadcast(dbias, m))
  dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
  return (y, mean, var), (dy, dmean, dvar)


_normalize_cpu.defjvp(_normalize_cpu_jvp, symbolic_zeros=True)


def normalize(x_MxC: jax.Array, scale_C: jax.Array, bias_C: jax.Array, epsilon: float):
  """Training-mode BatchNorm of the rows of a float32 ``M x C`` array: ``(y, mean, var)``
  with the batch statistics ``mean`` and ``var`` (biased). On XLA:CPU the ones-vector
  ``custom_jvp``; elsewhere (and with ``JAXPROTECT_XLA_CPU_DEFAULTS=0``) plain reductions."""
  if not cpu_defaults_enabled():
    return _normalize_reference(x_MxC, scale_C, bias_C, epsilon)
  return lax.platform_dependent(
      x_MxC, scale_C, bias_C,
      cpu=lambda x, s, b: _normalize_cpu(x, s, b, epsilon),
      default=lambda x, s, b: _normalize_reference(x, s, b, epsilon))


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last; a drop-in for ``flax.linen.BatchNorm``
  with its defaults (``use_fast_variance``, no cross-device ``axis_name``: under ``jit``
  with sharded inputs the statistics are global) and the same variables."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    out_dtype = self.dtype or jnp.result_type(x, scale, bias)
    if self.use_running_average:
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(out_dtype)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y, mean, var = normalize(x32.reshape(-1, c), scale.astype(x32.dtype), bias.astype(x32.dtype), self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    return y.reshape(x.shape).astype(out_dtype)
