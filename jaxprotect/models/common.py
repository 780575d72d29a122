"""Shared pieces of the model zoo: default layer factories, initialisers, head and outputs.

Every zoo model maps ``x_BxHxWxC`` (float in [0, 1], any H, W, C) to float32 ``(logits_BxK,
feats_BxD)``, computes in ``dtype`` with float32 parameters, and takes its layers as fields,
as flax's ResNet example does: ``conv`` (called as ``nn.Conv``), ``norm`` (as ``nn.BatchNorm``,
momentum 0.9, epsilon 1e-5; ConvNet's is ``batch_norm``) and, where it pools 2x2, ``pool``
(``x -> x``). The defaults below are the XLA:CPU ops of ``jaxprotect.ops``.

``grad_sum_dtype`` (a field of every zoo model) says in which dtype the gradients of the
convolution and dense parameters are computed, and therefore summed across devices when
the batch is split: ``"compute"`` (the default: flax's layers, which cast the float32
parameters to the compute dtype, so under bfloat16 the gradients are computed and
all-reduced in bfloat16) or ``"float32"`` (``conv_layer`` / ``dense_layer`` build
``ops.Float32GradConv`` / ``ops.Float32GradDense``: the same variables and forward values,
float32 parameter gradients and all-reduces, twice the bytes). With a float32 compute
dtype both are the same layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect import ops
from jaxprotect.platform import cpu_defaults_enabled

PARAM_DTYPE, BN_MOMENTUM, BN_EPSILON = jnp.float32, 0.9, 1e-5
# torchvision ResNet/WRN convention: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # "normal" is untruncated
# PyTorch's default for nn.Linear / nn.Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# ``conv``: nn.Conv with the patch-product stems; ``pool``: 2x2 max pooling without select_and_scatter.
default_conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)
default_pool = ops.max_pool_2x2


# The dtypes a zoo model's parameter gradients may be computed and summed across devices in.
GRAD_SUM_DTYPES = ("compute", "float32")


def grad_sum_dtype_field() -> Any:
  """The ``grad_sum_dtype`` field of a zoo model: ``"compute"`` by default, and left out of
  the module's ``repr`` (which crafting hashes for a user's module, so that the hashes of
  modules built before the field existed stay as they were)."""
  return dataclasses.field(default="compute", repr=False)


def check_grad_sum_dtype(grad_sum_dtype: Any) -> None:
  """ValueError unless ``grad_sum_dtype`` is one of ``GRAD_SUM_DTYPES``."""
  if not isinstance(grad_sum_dtype, str) or grad_sum_dtype not in GRAD_SUM_DTYPES:
    raise ValueError(f"grad_sum_dtype: expected one of {', '.join(map(repr, GRAD_SUM_DTYPES))}, "
                     f"got {grad_sum_dtype!r}")


def _float32_grads(dtype: Any, grad_sum_dtype: str) -> bool:
  check_grad_sum_dtype(grad_sum_dtype)
  return grad_sum_dtype == "float32" and ops.splits_precision(dtype, PARAM_DTYPE)


def conv_layer(conv: Callable[..., nn.Module], dtype: Any, grad_sum_dtype: str) -> Callable[..., nn.Module]:
  """The convolution factory of a model computing in ``dtype``: ``conv`` itself, or for
  ``grad_sum_dtype="float32"`` under a compute dtype narrower than float32 the same
  factory building ``ops.Float32GradConv``. ``conv`` must then be ``nn.Conv`` or a
  ``functools.partial`` of it with keywords only (the default ``default_conv`` is one);
  its keywords carry over (``conv_general_dilated``: the XLA:CPU stems)."""
  if not _float32_grads(dtype, grad_sum_dtype):
    return conv
  func, keywords = conv, {}
  if isinstance(conv, functools.partial) and not conv.args:
    func, keywords = conv.func, dict(conv.keywords)
  fields = {f.name for f in dataclasses.fields(ops.Float32GradConv)}
  if func is not nn.Conv or set(keywords) - fields:
    raise ValueError(f"conv: grad_sum_dtype='float32' builds the convolutions as ops.Float32GradConv in place of "
                     f"nn.Conv, so conv must be nn.Conv or a functools.partial of it setting fields of "
                     f"ops.Float32GradConv; got {conv!r}")
  return functools.partial(ops.Float32GradConv, **keywords)


def dense_layer(dtype: Any, grad_sum_dtype: str) -> Callable[..., nn.Module]:
  """The dense-layer factory of a model computing in ``dtype``: ``nn.Dense``, or
  ``ops.Float32GradDense`` for ``grad_sum_dtype="float32"`` under a narrower compute dtype."""
  return ops.Float32GradDense if _float32_grads(dtype, grad_sum_dtype) else nn.Dense


def same_conv(conv: Callable[..., nn.Module], features: int, kernel: int, stride: int, dtype: Any,
              name: str | None = None) -> nn.Module:
  """A bias-free ``kernel x kernel`` convolution with "same" zero padding, Kaiming fan-out
  initialisation (the ResNet family's convolution), built by the factory ``conv``."""
  p = kernel // 2
  return conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)), use_bias=False,
              dtype=dtype, param_dtype=PARAM_DTYPE, kernel_init=conv_kaiming_fan_out, name=name)


def default_norm(*args: Any, **kwargs: Any) -> nn.Module:
  """``norm``: ``ops.BatchNorm`` (flax's variables, values), ``nn.BatchNorm`` if ``JAXPROTECT_XLA_CPU_DEFAULTS=0``."""
  return (ops.BatchNorm if cpu_defaults_enabled() else nn.BatchNorm)(*args, **kwargs)


def batch_norm(train: bool, dtype: Any, name: str | None = None, norm: Callable[..., nn.Module] = default_norm):
  """``norm`` with the zoo's settings: batch statistics if ``train``, else the running averages."""
  return norm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
              param_dtype=PARAM_DTYPE, name=name)


def global_avg_pool(x_BxHxWxC: jax.Array) -> jax.Array:
  """Mean over the spatial axes, accumulated in float32: ``B x H x W x C -> B x C``."""
  return jnp.mean(x_BxHxWxC.astype(jnp.float32), axis=(1, 2)).astype(x_BxHxWxC.dtype)


def classifier(num_classes: int, dtype: Any, name: str = "head",
               dense: Callable[..., nn.Module] = nn.Dense) -> nn.Module:
  """Final linear layer (with bias), PyTorch-default weight init, built by ``dense``."""
  return dense(num_classes, dtype=dtype, param_dtype=PARAM_DTYPE, kernel_init=torch_default_init, name=name)


# Per-channel (mean, std) presets of ``input_norm``: the model computes (x - mean) / std first.
# "imagenet" is torchvision's, which MI-UE's reference surrogate applies inside its ResNet-18
# (hala64/mi-ue, models/resnet.py: NormalizeByChannelMeanStd).
INPUT_NORMS = {"": None, "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def input_norm_field() -> Any:
  """The ``input_norm`` field: ``""`` (none) by default, left out of the module's ``repr`` for
  the reason ``grad_sum_dtype_field`` gives."""
  return dataclasses.field(default="", repr=False)


def check_input_norm(input_norm: Any) -> None:
  """ValueError unless ``input_norm`` names a preset of ``INPUT_NORMS``."""
  if not isinstance(input_norm, str) or input_norm not in INPUT_NORMS:
    raise ValueError(f"input_norm: expected one of {', '.join(map(repr, INPUT_NORMS))}, got {input_norm!r}")


def normalize_input(x_BxHxWxC: jax.Array, input_norm: str) -> jax.Array:
  """``(x - mean) / std`` per channel for the preset ``input_norm`` (``x`` unchanged for ``""``);
  ValueError for an unknown preset or a channel count other than the preset's."""
  check_input_norm(input_norm)
  if not input_norm:
    return x_BxHxWxC
  mean, std = INPUT_NORMS[input_norm]
  if x_BxHxWxC.shape[-1] != len(mean):
    raise ValueError(f"input_norm={input_norm!r} expects {len(mean)} input channels, got x of shape "
                     f"{tuple(x_BxHxWxC.shape)}")
  return (x_BxHxWxC - jnp.asarray(mean, x_BxHxWxC.dtype)) / jnp.asarray(std, x_BxHxWxC.dtype)


def check_num_classes(num_classes: int) -> None:
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def outputs(logits_BxK: jax.Array, feats_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cast ``(logits, feats)`` to float32, the zoo's output dtype."""
  return logits_BxK.astype(jnp.float32), feats_BxD.astype(jnp.float32)
