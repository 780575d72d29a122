"""Training-mode BatchNorm, forward and backward: flax's ``nn.BatchNorm`` against
``jaxprotect.ops.BatchNorm`` (the zoo's; ones-vector products on XLA:CPU).

  python -m benchmarks.studies.batch_norm [--rounds 7] [--calls 10]

For each activation shape of ResNet-18 (width 16 at batch 64, and the standard width at
batch 128) it jits the gradient of ``sum(BatchNorm(x)^2)`` with respect to the parameters
and the input (running statistics updated), then times the two implementations in
alternating rounds of ``--calls`` calls. Prints a Markdown table of median milliseconds.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect.ops import norm

SHAPES = ((64, 32, 32, 16), (64, 16, 16, 32), (64, 8, 8, 64), (128, 32, 32, 64))


def compiled_grad(cls, shape):
  m = cls(use_running_average=False, momentum=0.9)
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  v = m.init(jax.random.PRNGKey(0), x)

  def loss(p, x):
    y, updates = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, mutable=["batch_stats"])
    return jnp.sum(y * y), updates

  f = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  jax.block_until_ready(f(v["params"], x))
  return lambda: f(v["params"], x)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--calls", type=int, default=10)
  a = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}\n")
  print("| activation (N, H, W, C) | flax | jaxprotect | ratio |\n| --- | --- | --- | --- |")
  for shape in SHAPES:
    fns = {"flax": compiled_grad(nn.BatchNorm, shape), "ours": compiled_grad(norm.BatchNorm, shape)}
    times = {k: [] for k in fns}
    for _ in range(a.rounds):
      for k, f in fns.items():
        t0 = time.perf_counter()
        for _ in range(a.calls):
          out = f()
        jax.block_until_ready(out)
        times[k].append((time.perf_counter() - t0) / a.calls * 1e3)
    flax_ms, ours_ms = (float(np.median(times[k])) for k in ("flax", "ours"))
    dims = ", ".join(map(str, shape))
    print(f"| {dims} | {flax_ms:.2f} ms | {ours_ms:.2f} ms | {flax_ms / ours_ms:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
