"""Weight draws evaluated per second (the inner loop of certified learnability): jaxprotect's
vmapped evaluation against the reference's PyTorch loop, side by side in one process.

  python -m benchmarks.studies.weight_draws [--draws 64] [--chunk 16] [--repeats 3] [--quick]

Both evaluate draws ``theta + sigma * N(0, I)`` (sigma 0.25, every parameter) of the same
architecture on the same 2,000 test images (the embedded Fashion-MNIST test split, 28x28x1),
counting correct predictions:

* jaxprotect: ``unlearnable.certify.make_draw_eval`` -- ``chunk`` draws per jitted call,
  mapped inside one scan over the test batches (batch 500): one draw after another
  (``lax.map``, the CPU default) and, as a third row, all at once (``vmap``, the
  accelerator default; on CPU XLA turns it into grouped convolutions);
* PyTorch, as the authors' ``certify.py`` does it: per draw, add noise to every parameter
  in place, evaluate the test set through a ``DataLoader`` (batch 500, ``torch.no_grad``),
  subtract the noise.

Models: the small CNN (width 32) and ResNet-18 (width 16, CIFAR stem, BatchNorm in eval
mode), initialised at random (accuracy does not change the cost). Compile and warm-up are
excluded; the two run alternately ``repeats`` times (median draws per second each, and
the median of the per-round ratios). Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import numpy as np

from jaxprotect import data, models, parallel
from jaxprotect.unlearnable import certify

SIGMA = 0.25
BATCH = 500


def _jax_rate(model, variables, ds, mesh, draws, chunk, vectorize):
  fn = certify.make_draw_eval(model, mesh, BATCH, chunk, vectorize=vectorize)
  key = jax.random.PRNGKey(0)
  jax.block_until_ready(fn(variables, ds.test, key, 0, SIGMA))  # compile + warm-up
  t0 = time.perf_counter()
  out = [fn(variables, ds.test, key, start, SIGMA) for start in range(0, draws, chunk)]
  jax.block_until_ready(out)
  return draws / (time.perf_counter() - t0)


def _torch_rate(net, loader, draws):
  import torch  # noqa: PLC0415

  net.eval()
  t0 = time.perf_counter()
  with torch.no_grad():
    for _ in range(draws):
      noise = {}
      for name, p in net.named_parameters():
        noise[name] = SIGMA * torch.randn_like(p)
        p.add_(noise[name])
      correct = 0
      for x, y in loader:
        correct += int((net(x)[0].argmax(1) == y).sum())
      for name, p in net.named_parameters():
        p.sub_(noise[name])
  return draws / (time.perf_counter() - t0)


def bench(name, width, draws, chunk, repeats):
  import torch  # noqa: PLC0415
  from torch.utils.data import DataLoader, TensorDataset  # noqa: PLC0415

  from benchmarks import torch_models  # noqa: PLC0415

  mesh = parallel.make_mesh()
  host = data.load_arrays("fashion_mnist_mini")
  ds = data.to_device(host, mesh)
  model = models.get(name, 10, width=width)
  variables = models.init_variables(model, jax.random.PRNGKey(0), ds.example)
  net = torch_models.get(name, 10, width=width, in_channels=1, image_size=28)
  x = torch.from_numpy(host.test.images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
  loader = DataLoader(TensorDataset(x, torch.from_numpy(host.test.labels.astype(np.int64))), batch_size=BATCH)
  torch_draws = max(2, draws // 8)  # the loop is slower: fewer draws keep the rounds comparable in time
  _torch_rate(net, loader, 1)  # warm-up
  j, v, t, ratios = [], [], [], []
  for _ in range(repeats):
    j.append(_jax_rate(model, variables, ds, mesh, draws, chunk, False))
    v.append(_jax_rate(model, variables, ds, mesh, draws, chunk, True))
    t.append(_torch_rate(net, loader, torch_draws))
    ratios.append(j[-1] / t[-1])
  return {"model": name, "width": width, "params": models.count_params(variables["params"]),
          "test_images": len(host.test), "sigma": SIGMA, "jax_draws": draws, "jax_chunk": chunk,
          "torch_draws": torch_draws, "jax_draws_per_s": float(np.median(j)),
          "jax_vmap_draws_per_s": float(np.median(v)),
          "torch_draws_per_s": float(np.median(t)), "ratio_median": float(np.median(ratios)),
          "devices": len(mesh.devices.flat), "torch_threads": torch.get_num_threads(),
          "date": datetime.date.today().isoformat()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--draws", type=int, default=64)
  p.add_argument("--chunk", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="small CNN only, 16 draws, 1 repeat")
  a = p.parse_args(argv)
  work = [("small_cnn", 32)] if a.quick else [("small_cnn", 32), ("resnet18", 16)]
  for name, width in work:
    r = bench(name, width, 16 if a.quick else a.draws, min(a.chunk, 16 if a.quick else a.draws),
              1 if a.quick else a.repeats)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  from jaxprotect import platform

  platform.apply_cpu_xla_flags()
  main()
