"""Model FLOPs and model-FLOPs utilisation (MFU) of the benchmark's step workloads.

Model FLOPs follow the usual convention of MFU reports: only the dense operations count
(convolutions and matrix products, 2 FLOPs per multiply-add), each at its full kernel
size, padding included -- the convention behind the familiar "0.56 GMACs" of the CIFAR
ResNet-18. They are counted from the model's jaxpr, so any registered model works.
A training step costs 3 forward passes per image (forward, activation gradients, weight
gradients) and a PGD step 2 (forward and the input gradient, no weight gradients).

XLA's own cost analysis is not used for this: it counts only the taps that fall inside
the image (966.5 against 1,110.8 MFLOPs for the ResNet-18 forward) and every elementwise
operation, and it differs between platforms.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

# bf16 dense (no sparsity) peak FLOP/s per device, by a substring of jax's device_kind;
# the first match wins, so specific names come before general ones.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),  # SXM
    ("H200", 989.4e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
)

# forward passes per image (or per image-step) of each workload
FORWARD_PASSES = {"train_step": 3, "em_pgd": 2, "mi_ue_pgd": 2}


def _shape(v) -> tuple[int, ...]:
  return tuple(v.aval.shape)


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    rhs = _shape(eqn.invars[1])
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    taps = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    return 2 * math.prod(_shape(eqn.outvars[0])) * taps
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = _shape(eqn.invars[0])
    return 2 * math.prod(_shape(eqn.outvars[0])) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def _sub_jaxprs(value) -> list:
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax.extend.core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_flops(jaxpr) -> int:
  """Dense-operation FLOPs of a (closed) jaxpr, sub-jaxprs included: a ``scan`` body
  counts ``length`` times, a ``cond`` its most expensive branch. A ``while`` loop has no
  static trip count and is refused."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "while":
      raise ValueError("cannot count the FLOPs of a while loop (no static trip count)")
    subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
    if name == "cond":
      total += max((jaxpr_flops(j) for j in subs), default=0)
    elif subs:
      total += sum(jaxpr_flops(j) for j in subs) * (eqn.params.get("length", 1) if name == "scan" else 1)
    else:
      total += _eqn_flops(eqn)
  return total


def function_flops(fn: Callable, *args: Any) -> int:
  """Dense-operation FLOPs of ``fn(*args)``; ``args`` may be ``jax.ShapeDtypeStruct``s
  (nothing is computed or compiled)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))


def forward_flops(model, image_shape_HWC: tuple[int, ...], dtype: Any = jnp.float32) -> int:
  """FLOPs of one image's forward pass through a flax model in eval mode (``model.apply(
  variables, x, train=False)``)."""
  x = jax.ShapeDtypeStruct((1, *image_shape_HWC), dtype)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))
  return function_flops(lambda v, xs: model.apply(v, xs, train=False), variables, x)


def peak_flops(device_kind: str) -> float | None:
  """The bf16 dense peak FLOP/s of a device (``jax.devices()[0].device_kind``), or None
  when unknown (CPUs among them)."""
  for key, peak in BF16_PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peak
  return None


def mfu(units_per_s: float, flops_per_unit: float, peak: float, num_devices: int = 1) -> float:
  """Model-FLOPs utilisation: achieved model FLOP/s over the devices' summed peak."""
  if peak <= 0 or num_devices < 1:
    raise ValueError(f"peak FLOP/s and device count must be positive, got {peak} and {num_devices}")
  return units_per_s * flops_per_unit / (peak * num_devices)
