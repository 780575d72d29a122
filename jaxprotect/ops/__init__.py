"""Layers rewritten for XLA:CPU, each equal to the plain JAX/flax layer it replaces.

XLA:CPU runs a few patterns of a small model's training or PGD step far slower than the
same arithmetic written another way. Each op here computes what the plain layer computes
(values, gradients, JVPs; tested in tests/test_models.py), takes the faster form only on
XLA:CPU (``lax.platform_dependent``: the platform the program is lowered for) and is the
plain layer itself on other platforms or with ``JAXPROTECT_XLA_CPU_DEFAULTS=0``
(``jaxprotect.platform.cpu_defaults_enabled()``):

* ``conv_general_dilated`` (``ops.conv``): ``lax.conv_general_dilated``; few-channel stems
  (at most ``PATCH_CONV_MAX_IN_CHANNELS`` input channels) as patch products, since XLA:CPU's
  kernels are slow for so few channels. For ``flax.linen.Conv(conv_general_dilated=...)``.
* ``BatchNorm`` (``ops.norm``): ``flax.linen.BatchNorm`` with the same variables; the
  training-mode sums and broadcasts as ones-vector products, which XLA:CPU runs faster than
  the reductions (rewritten into ``reduce-window``) of flax's gradient.
* ``max_pool_2x2`` (``ops.pool``): ``nn.max_pool(x, (2, 2), strides=(2, 2))`` as selects,
  since XLA:CPU's ``select_and_scatter`` (the gradient of ``reduce_window``) is slow.

The model zoo takes them as its defaults for the ``conv``, ``norm`` and ``pool`` fields
(``jaxprotect.models.common``); pass ``nn.Conv``, ``nn.BatchNorm`` or another pooling to a
zoo model to use the plain layers. Measurements: docs/BENCHMARKS.md.

One more pair changes where the gradients of mixed-precision layers are summed, on every
platform (``ops.mixed``):

* ``Float32GradConv`` / ``Float32GradDense`` (functions ``conv_float32_grad`` /
  ``dense_float32_grad``): ``nn.Conv`` / ``nn.Dense`` with the same variables and forward
  values whose kernel and bias gradients are computed in float32 under a bfloat16 compute
  dtype, so that their sums across devices are float32 all-reduces. The zoo uses them for
  ``grad_sum_dtype="float32"``.
"""

from jaxprotect.ops.conv import PATCH_CONV_MAX_IN_CHANNELS, conv_general_dilated
from jaxprotect.ops.mixed import (
    Float32GradConv, Float32GradDense, conv_float32_grad, dense_float32_grad, splits_precision)
from jaxprotect.ops.norm import BatchNorm
from jaxprotect.ops.pool import max_pool_2x2

__all__ = [
    "PATCH_CONV_MAX_IN_CHANNELS", "BatchNorm", "Float32GradConv", "Float32GradDense", "conv_float32_grad",
    "conv_general_dilated", "dense_float32_grad", "max_pool_2x2", "splits_precision",
]
