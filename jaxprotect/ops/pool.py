"""``max_pool_2x2``: 2x2 max pooling (stride 2, VALID) without ``select_and_scatter`` on XLA:CPU.

What: on XLA:CPU the pooling is written as elementwise selects over the four strided views
of each 2x2 window, so that its gradient is selects too.

Why: ``flax.linen.max_pool`` is a ``reduce_window``, whose gradient is a
``select_and_scatter``, and XLA:CPU runs that backward far slower than the elementwise
selects; it dominated the small CNN's and VGG's steps (measurements: docs/BENCHMARKS.md,
"XLA:CPU: what the time goes to", "Max pooling's gradient").

Equality with the plain layer: equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))`` in
value, gradient and JVP, ties included: the gradient goes to the first maximum of each
window in row-major order, as in XLA's ``select_and_scatter`` and PyTorch's
``max_pool2d`` (tested in tests/test_models.py). Other platforms (chosen when the program
is lowered, ``lax.platform_dependent``) and ``JAXPROTECT_XLA_CPU_DEFAULTS=0``
(``platform.cpu_defaults_enabled()``, read when traced) use ``nn.max_pool`` itself.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxprotect.platform import cpu_defaults_enabled

__all__ = ["max_pool_2x2"]


def _max_pool_selects(x_BxHxWxC: jax.Array) -> jax.Array:
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  top_left, top_right, bottom_left, bottom_right = (x[:, :, i, :, j] for i in (0, 1) for j in (0, 1))
  top = jnp.where(top_left >= top_right, top_left, top_right)
  bottom = jnp.where(bottom_left >= bottom_right, bottom_left, bottom_right)
  return jnp.where(top >= bottom, top, bottom)


def _max_pool_reduce_window(x_BxHxWxC: jax.Array) -> jax.Array:
  return nn.max_pool(x_BxHxWxC, (2, 2), strides=(2, 2))


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding (an odd last row or column is dropped):
  ``B x H x W x C -> B x H/2 x W/2 x C``, equal to ``nn.max_pool(x, (2, 2), strides=(2, 2))``
  in value and derivatives; selects on XLA:CPU (see the module docstring)."""
  if not cpu_defaults_enabled():
    return _max_pool_reduce_window(x_BxHxWxC)
  return lax.platform_dependent(x_BxHxWxC, cpu=_max_pool_selects, default=_max_pool_reduce_window)
