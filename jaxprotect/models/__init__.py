"""Model zoo: ``get(name, num_classes, **kwargs)`` returns a ``flax.linen`` Module.

Every engine function takes a zoo model or a user's own flax module: ``as_model`` (see
``models.contract``) adapts a module that returns logits only, or that takes no ``train``
argument. Contract of every zoo model (used functionally)::

  variables = model.init(key, x_BxHxWxC, train=False)   # {'params'[, 'batch_stats']}
  logits_BxK, feats_BxD = model.apply(variables, x, train=False)
  (logits, feats), new_state = model.apply(variables, x, train=True, mutable=['batch_stats'])  # BN models

``x`` is float in [0, 1] with any H, W, C (no normalisation inside, unless a ResNet's
``input_norm`` names a per-channel preset, e.g. ``"imagenet"``); ``logits`` and ``feats``
(penultimate features, input of the final Dense) are float32 whatever the compute ``dtype``;
parameters are always float32. ``width`` shrinks/grows every model (base channels or hidden size).
``grad_sum_dtype`` ("compute", the default, or "float32") is the dtype in which the
gradients of the convolution and dense parameters are computed and summed across devices:
under ``dtype="bfloat16"``, "compute" all-reduces them in bfloat16 and "float32" in float32,
at twice the bytes, with the same forward values (``models.common``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect import platform
from jaxprotect.models.common import GRAD_SUM_DTYPES, INPUT_NORMS, check_grad_sum_dtype, check_input_norm
from jaxprotect.models.contract import Model, as_model, check_outputs, features_of
from jaxprotect.models.convnet import ConvNet
from jaxprotect.models.resnet import BasicBlock, Bottleneck, ResNet
from jaxprotect.models.small import MLP, SmallCNN
from jaxprotect.models.vgg import CFGS as VGG_CFGS
from jaxprotect.models.vgg import VGG
from jaxprotect.models.wide_resnet import WideBlock, WideResNet

__all__ = [
    "GRAD_SUM_DTYPES", "INPUT_NORMS", "BasicBlock", "Bottleneck", "ConvNet", "MLP", "Model", "ResNet", "SmallCNN",
    "VGG", "WideBlock", "WideResNet",
    "as_model", "check_outputs", "count_params", "features_of", "from_config", "get", "has_batch_stats",
    "init_variables", "names",
]

_RESNETS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
for _name, _cfg in _RESNETS.items():
  _REGISTRY[_name] = functools.partial(ResNet, **_cfg, stem="cifar")
  _REGISTRY[f"{_name}_imagenet"] = functools.partial(ResNet, **_cfg, stem="imagenet")
_REGISTRY["convnet"] = ConvNet
_REGISTRY["vgg11"] = functools.partial(VGG, cfg=VGG_CFGS["vgg11"])
_REGISTRY["vgg16"] = functools.partial(VGG, cfg=VGG_CFGS["vgg16"])
_REGISTRY["wrn16_4"] = functools.partial(WideResNet, depth=16, widen_factor=4)
_REGISTRY["wrn28_10"] = functools.partial(WideResNet, depth=28, widen_factor=10)
_REGISTRY["small_cnn"] = SmallCNN
_REGISTRY["mlp"] = MLP


def names() -> list[str]:
  """Registered model names, in registration order."""
  return list(_REGISTRY)


def _as_dtype(dtype: Any) -> Any:
  if isinstance(dtype, str):
    try:
      return jnp.dtype(dtype).type
    except TypeError as e:
      raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'bfloat16'") from e
  return dtype


def get(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Build model ``name`` with ``num_classes`` outputs; ``kwargs`` go to the Module (dtype, width, stem,
  grad_sum_dtype, ...).

  Names are case-insensitive. ``dtype`` may be a string ("float32", "bfloat16"). Raises
  ``ValueError`` for an unknown name (the message lists the known ones), ``num_classes < 2``,
  a ``grad_sum_dtype`` other than "compute" and "float32", or an ``input_norm`` that is not a
  preset of ``INPUT_NORMS``.
  """
  key = name.lower()
  if key not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
  if int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"model {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
  if "dtype" in kwargs:
    kwargs["dtype"] = _as_dtype(kwargs["dtype"])
  if "grad_sum_dtype" in kwargs:
    check_grad_sum_dtype(kwargs["grad_sum_dtype"])
  if "input_norm" in kwargs:
    check_input_norm(kwargs["input_norm"])
    cls = getattr(_REGISTRY[key], "func", _REGISTRY[key])
    if not (isinstance(cls, type) and issubclass(cls, ResNet)):
      raise ValueError(f"model {name!r}: input_norm is a field of the ResNets only, got input_norm="
                       f"{kwargs['input_norm']!r}")
  return _REGISTRY[key](num_classes=int(num_classes), **kwargs)


def from_config(config: Any, num_classes: int) -> nn.Module:
  """The zoo model of a model section (``config.model_config()``; or any mapping with
  ``model``, ``model_kwargs``, ``dtype`` and ``grad_sum_dtype``, the last three optional):
  ``get(model, num_classes, dtype=dtype, grad_sum_dtype=grad_sum_dtype, **model_kwargs)``.
  A ``grad_sum_dtype`` in ``model_kwargs`` too must agree with the section's unless that is
  the default, "compute"."""
  kwargs = config.get("model_kwargs") or {}
  kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
  grad_sum_dtype = config.get("grad_sum_dtype", "compute")
  if grad_sum_dtype != "compute":
    if kwargs.get("grad_sum_dtype", grad_sum_dtype) != grad_sum_dtype:
      raise ValueError(f"grad_sum_dtype: the section says {grad_sum_dtype!r} and model_kwargs "
                       f"{kwargs['grad_sum_dtype']!r}; set one of them")
    kwargs["grad_sum_dtype"] = grad_sum_dtype
  return get(config["model"], num_classes, dtype=config.get("dtype", "float32"), **kwargs)


def init_variables(model: nn.Module, key: jax.Array, x_BxHxWxC: jax.Array) -> dict[str, Any]:
  """``model.init(key, x, train=False)`` under ``jax.jit`` and ``platform.fast_init_prng()``.

  That is the non-partitionable threefry, under which XLA:CPU compiles an init several
  times faster; the values therefore differ from a plain ``model.init(key, x)`` but are a
  deterministic function of ``key``.
  Only the shape and dtype of ``x_BxHxWxC`` matter. Returns a plain dict with ``'params'``
  and, for BatchNorm models, ``'batch_stats'``.
  """
  model = as_model(model)
  with platform.fast_init_prng():
    variables = jax.jit(functools.partial(model.init, train=False))(key, x_BxHxWxC)
  return dict(variables)


def has_batch_stats(model: nn.Module, example_x: jax.Array) -> bool:
  """Whether ``model`` keeps a ``'batch_stats'`` collection (shape-only trace, no compute)."""
  model = as_model(model)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), key, example_x)
  return "batch_stats" in shapes and bool(jax.tree_util.tree_leaves(shapes["batch_stats"]))


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(params):
    size = 1
    for d in leaf.shape:
      size *= int(d)
    total += size
  return total
