"""Per-op times of the small CNN's and ResNet-18's layers, XLA:CPU against PyTorch (oneDNN).

  python -m benchmarks.studies.cpu_ops [--batch 128] [--repeats 20]

For each convolution shape (3x3, stride 1, padding 1) it times the forward pass, the
input gradient (what a PGD step needs) and the weight gradient, each as its own jitted
function on fixed NHWC arrays, against ``F.conv2d`` and ``torch.nn.grad.conv2d_input`` /
``conv2d_weight`` on the same values in NCHW float32 (for stems of at most
``PATCH_CONV_MAX_IN_CHANNELS`` input channels also jaxprotect's own
``ops.conv_general_dilated``, the patch product); and the backward of 2x2 max
pooling: flax's ``nn.max_pool`` (``reduce_window``, whose gradient is
``select_and_scatter``), ``ops.max_pool_2x2`` and PyTorch's. Prints a Markdown
table of milliseconds (median of ``--repeats`` calls) and XLA/PyTorch time ratios.
"""

import argparse
import statistics
import time

CONV_SHAPES = (  # (H, C_in, C_out): small CNN width 16 and 32 on 32x32x3, ResNet-18 width 16 and 64
    (32, 3, 16), (16, 16, 32), (32, 3, 32), (16, 32, 64), (32, 16, 16), (32, 64, 64), (16, 128, 128))
POOL_SHAPES = ((32, 16), (16, 32), (28, 32), (14, 64))  # (H, C) of the small CNN's two pools


def _jsync(r=None):
  import jax

  return jax.block_until_ready(r)


def _tsync(r=None):  # CPU PyTorch ops return when done
  return None


def _ms(fn, repeats, sync):
  fn()
  sync()
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    out.append(1e3 * (time.perf_counter() - t0))
  return statistics.median(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=20)
  a = p.parse_args(argv)

  import jax
  import numpy as np
  import torch

  from jaxprotect.ops import PATCH_CONV_MAX_IN_CHANNELS, conv_general_dilated

  rng = np.random.default_rng(0)
  b = a.batch
  print(f"batch {b}, jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), median of {a.repeats} calls, ms")
  print("\n| op | shape (H, C_in, C_out) | XLA | PyTorch | XLA / PyTorch |\n|---|---|---|---|---|")
  for h, ci, co in CONV_SHAPES:
    x = rng.random((b, h, h, ci), np.float32)
    w = rng.random((3, 3, ci, co), np.float32)
    dy = rng.random((b, h, h, co), np.float32)
    impls = [("", jax.lax.conv_general_dilated)]
    if ci <= PATCH_CONV_MAX_IN_CHANNELS:
      impls.append((" (patch product)", conv_general_dilated))
    for suffix, impl in impls:
      _conv_rows(impl, suffix, x, w, dy, a.repeats)
  _pool_rows(rng, b, a.repeats)


def _conv_rows(impl, suffix, x, w, dy, repeats):
  """Forward, input-gradient and weight-gradient rows of one 3x3 convolution ``impl``."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F

  _, h, _, ci = x.shape
  co = w.shape[-1]
  jx, jw, jdy = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)
  conv = lambda x, w: impl(  # noqa: E731
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(v, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, w, dy: jax.vjp(lambda v: conv(x, v), w)[1](dy)[0])
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
  rows = (("conv forward", lambda: fwd(jx, jw), lambda: F.conv2d(tx, tw, padding=1)),
          ("conv input grad", lambda: dx(jx, jw, jdy),
           lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, padding=1)),
          ("conv weight grad", lambda: dw(jx, jw, jdy),
           lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, padding=1)))
  for name, jf, tf in rows:
    tj, tt = _ms(jf, repeats, _jsync), _ms(tf, repeats, _tsync)
    print(f"| {name}{suffix} | {h}, {ci}, {co} | {tj:.2f} | {tt:.2f} | {tj / tt:.2f} |")


def _pool_rows(rng, b, repeats):
  """Forward+backward rows of 2x2 max pooling: ``nn.max_pool``, ``max_pool_2x2``, PyTorch."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torch.nn.functional as F

  from jaxprotect.ops import max_pool_2x2

  for h, c in POOL_SHAPES:
    x = np.maximum(rng.normal(size=(b, h, h, c)), 0).astype(np.float32)
    ct = rng.normal(size=(b, h // 2, h // 2, c)).astype(np.float32)
    jx, jct = jnp.asarray(x), jnp.asarray(ct)
    grads = {k: jax.jit(lambda x, ct, f=f: jax.vjp(f, x)[1](ct)[0]) for k, f in (
        ("reduce_window", lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))), ("max_pool_2x2", max_pool_2x2))}
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    tct = torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous()
    t_ms = _ms(lambda: torch.autograd.grad(F.max_pool2d(tx, 2), tx, tct), repeats, _tsync)
    for k, g in grads.items():
      tj = _ms(lambda g=g: g(jx, jct), repeats, _jsync)
      print(f"| max-pool 2x2 forward+backward ({k}) | {h}, {c}, {c} | {tj:.2f} | {t_ms:.2f} | {tj / t_ms:.2f} |")


if __name__ == "__main__":
  main()
