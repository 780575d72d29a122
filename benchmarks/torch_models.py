"""PyTorch twins of the benchmarked jaxprotect models (benchmark-only; needs ``torch``).

``ResNet`` is the CIFAR ResNet of the unlearnable-examples reference code
(kuangliu/pytorch-cifar): conv3x3(w)-BN-ReLU, four stages of w/2w/4w/8w channels with
strides 1, 2, 2, 2, 1x1 conv + BN projection shortcuts, global average pooling, linear;
ResNet-18 at ``width=64`` has 11,173,962 parameters, like ``jaxprotect.models``'
``resnet18``. ``SmallCNN`` mirrors ``jaxprotect.models.SmallCNN``, ``ConvNet`` the
condensation ConvNet (``jaxprotect.models.ConvNet``, with PyTorch's default initialisation,
as the condensation reference). All take float ``B x C x H x W`` input and return
``(logits_BxK, feats_BxD)``; BatchNorm uses PyTorch's momentum 0.1 (flax's 0.9) and
epsilon 1e-5. ``get`` initialises ResNet and SmallCNN weights with the distributions
``jaxprotect.models`` uses (``init_like_jaxprotect``), so that the end-to-end workload's
crafting dynamics (and its stop rule) behave alike on both sides; the values themselves
differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
  """CIFAR-stem ResNet with basic blocks (``stage_sizes=(2, 2, 2, 2)``: ResNet-18)."""

  def __init__(self, num_classes: int = 10, stage_sizes: Sequence[int] = (2, 2, 2, 2), width: int = 64,
               in_channels: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    layers, in_planes = [], width
    for i, n_blocks in enumerate(stage_sizes):
      planes = width * 2**i
      for j in range(n_blocks):
        layers.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
        in_planes = planes
    self.layers = nn.Sequential(*layers)
    self.linear = nn.Linear(in_planes, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layers(out)
    feats = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
    return self.linear(feats), feats


class SmallCNN(nn.Module):
  """conv3x3(w)-ReLU-maxpool2, conv3x3(2w)-ReLU-maxpool2, Linear(hidden)-ReLU, Linear(K)."""

  def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 128, in_channels: int = 3,
               image_size: int = 32):
    super().__init__()
    self.conv0 = nn.Conv2d(in_channels, width, 3, padding=1)
    self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1)
    side = image_size // 4
    self.fc = nn.Linear(2 * width * side * side, hidden)
    self.head = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.max_pool2d(F.relu(self.conv0(x)), 2)
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    feats = F.relu(self.fc(torch.flatten(x, 1)))
    return self.head(feats), feats


class ConvNet(nn.Module):
  """The condensation ConvNet (``jaxprotect.models.ConvNet``; VICO-UoE/DatasetCondensation's
  ``ConvNet``): ``depth`` blocks of conv3x3(width, bias)-norm-ReLU-avgpool2x2, a Linear on
  the flattened features; ``norm`` "instancenorm" (``GroupNorm(width, width)``, affine),
  "batchnorm" or "none". A 28x28 input pads its first convolution by 3 (as 32x32).
  PyTorch's default initialisation (the reference's)."""

  def __init__(self, num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
               in_channels: int = 3, image_size: int = 32):
    super().__init__()
    if norm not in ("instancenorm", "batchnorm", "none"):
      raise ValueError(f"unknown norm {norm!r}; expected 'instancenorm', 'batchnorm' or 'none'")
    layers: list[nn.Module] = []
    side, channels = image_size, in_channels
    for d in range(depth):
      pad = 3 if (d == 0 and image_size == 28) else 1
      layers.append(nn.Conv2d(channels, width, 3, padding=pad))
      side += 2 * pad - 2
      if norm == "instancenorm":
        layers.append(nn.GroupNorm(width, width, affine=True))
      elif norm == "batchnorm":
        layers.append(nn.BatchNorm2d(width))
      layers.append(nn.ReLU(inplace=True))
      if side >= 2:
        layers.append(nn.AvgPool2d(2, 2))
        side //= 2
      channels = width
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(width * side * side, num_classes)

  def embed(self, x: torch.Tensor) -> torch.Tensor:
    """The flattened features (DM's embedding)."""
    return torch.flatten(self.features(x), 1)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = self.embed(x)
    return self.classifier(feats), feats


_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (flax's truncated_normal)


def _lecun_truncated_normal_(w: torch.Tensor) -> None:
  """flax's default kernel init: variance 1 / fan_in, normal truncated at 2 standard deviations."""
  std = (1.0 / w[0].numel()) ** 0.5 / _TRUNC_STD
  nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


def init_like_jaxprotect(model: nn.Module) -> nn.Module:
  """Re-initialises ``model`` with ``jaxprotect.models``' distributions: ResNet convs
  Kaiming-normal (fan-out), SmallCNN convs and hidden linear layer LeCun truncated normal,
  the classifier U(+-1/sqrt(fan_in)); biases 0, BatchNorm scale 1 and offset 0."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      if isinstance(model, ResNet):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      else:
        _lecun_truncated_normal_(m.weight)
    elif isinstance(m, nn.Linear):
      if m is getattr(model, "linear", None) or m is getattr(model, "head", None):
        bound = 1.0 / m.weight.shape[1] ** 0.5
        nn.init.uniform_(m.weight, -bound, bound)
      else:
        _lecun_truncated_normal_(m.weight)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
    if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and m.bias is not None:
      nn.init.zeros_(m.bias)
  return model


def get(name: str, num_classes: int, width: int | None = None, in_channels: int = 3, image_size: int = 32) -> nn.Module:
  """``"resnet18"`` or ``"small_cnn"`` (``width`` None: the model's default width),
  initialised like its jaxprotect twin."""
  if name == "resnet18":
    return init_like_jaxprotect(ResNet(num_classes, (2, 2, 2, 2), width or 64, in_channels))
  if name == "small_cnn":
    return init_like_jaxprotect(SmallCNN(num_classes, width or 32, in_channels=in_channels, image_size=image_size))
  raise ValueError(f"no PyTorch twin for model {name!r}; use resnet18 or small_cnn")


def count_params(model: nn.Module) -> int:
  """Number of parameters (BatchNorm running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())
