"""ResNets: the CIFAR ResNet of the unlearnable-examples literature and the ImageNet stem.

``stem="cifar"`` is kuangliu/pytorch-cifar: conv3x3(64)-BN-ReLU, four stages of
64/128/256/512 (x expansion) channels with strides 1, 2, 2, 2, 1x1 conv + BN projection
shortcuts where the shape changes, global average pooling, linear. ResNet-18 has
11,173,962 parameters and ResNet-50 23,520,842 for 10 classes and 3-channel input.
``stem="imagenet"`` replaces the first conv with conv7x7/2-BN-ReLU-maxpool3x3/2.

Padding is explicit and symmetric (``k // 2`` each side) as in PyTorch, so strided
convs see the same pixels as the 1x1 strided shortcut.

Layers are fields, as in flax's ResNet example: ``conv`` (called as ``nn.Conv``) and
``norm`` (called as ``nn.BatchNorm``), by default the XLA:CPU ops of ``jaxprotect.ops``
(``models.common``); e.g. ``ResNet(10, conv=nn.Conv, norm=nn.BatchNorm)`` for the plain
flax layers, with the same parameter tree. ``grad_sum_dtype="float32"`` computes the
convolution and head gradients in float32 under a bfloat16 ``dtype`` (``models.common``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprotect.models.common import (
    batch_norm, check_num_classes, classifier, conv_layer, default_conv, default_norm, dense_layer, global_avg_pool,
    grad_sum_dtype_field, input_norm_field, normalize_input, outputs, same_conv)



class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. ``B x H x W x Cin -> B x H/s x W/s x planes``."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(same_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(batch_norm, train, self.dtype, norm=self.norm)
    out_ch = self.planes * self.expansion
    y = conv(self.planes, 3, self.stride)(x)
    y = nn.relu(norm()(y))
    y = conv(self.planes, 3, 1)(y)
    y = norm()(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = conv(out_ch, 1, self.stride, name="shortcut_conv")(x)
      x = norm(name="shortcut_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1-BN-ReLU, 3x3/s-BN-ReLU, 1x1(4x)-BN + shortcut, ReLU. Output has ``4 * planes`` channels."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(same_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(batch_norm, train, self.dtype, norm=self.norm)
    out_ch = self.planes * self.expansion
    y = conv(self.planes, 1, 1)(x)
    y = nn.relu(norm()(y))
    y = conv(self.planes, 3, self.stride)(y)
    y = nn.relu(norm()(y))
    y = conv(out_ch, 1, 1)(y)
    y = norm()(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = conv(out_ch, 1, self.stride, name="shortcut_conv")(x)
      x = norm(name="shortcut_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet classifier.

  ``__call__(x_BxHxWxC, train) -> (logits_BxK, feats_BxD)`` with ``D = 8 * width * expansion``
  (512 for ResNet-18/34, 2048 for ResNet-50 at ``width=64``); size-agnostic through global
  average pooling. ``conv`` and ``norm`` build every convolution and BatchNorm (blocks included).
  ``grad_sum_dtype``: "compute" or "float32", the dtype of the convolution and head
  parameter gradients and of their sums across devices (``models.common``).
  ``input_norm``: ``""`` (the zoo's convention: no normalisation inside) or a per-channel preset
  of ``models.common.INPUT_NORMS`` applied to ``x`` first (``"imagenet"``: 3 channels).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"  # "basic" | "bottleneck"
  width: int = 64
  stem: str = "cifar"  # "cifar" | "imagenet"
  dtype: Any = jnp.float32
  conv: Callable[..., nn.Module] = default_conv
  norm: Callable[..., nn.Module] = default_norm
  grad_sum_dtype: str = grad_sum_dtype_field()
  input_norm: str = input_norm_field()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_num_classes(self.num_classes)
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(self.block)
    if block_cls is None:
      raise ValueError(f"unknown block {self.block!r}; expected 'basic' or 'bottleneck'")
    conv_factory = conv_layer(self.conv, self.dtype, self.grad_sum_dtype)
    conv = functools.partial(same_conv, conv_factory, dtype=self.dtype)
    norm = functools.partial(batch_norm, train, self.dtype, norm=self.norm)
    x = normalize_input(x.astype(self.dtype), self.input_norm)
    if self.stem == "cifar":
      x = conv(self.width, 3, 1, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    elif self.stem == "imagenet":
      x = conv(self.width, 7, 2, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"unknown stem {self.stem!r}; expected 'cifar' or 'imagenet'")
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = block_cls(self.width * 2**i, stride, self.dtype, conv=conv_factory, norm=self.norm,
                      name=f"stage{i + 1}_block{j + 1}")(x, train)
    feats = global_avg_pool(x)
    logits = classifier(self.num_classes, self.dtype, dense=dense_layer(self.dtype, self.grad_sum_dtype))(feats)
    return outputs(logits, feats)
