"""Training throughput (images/s) of jaxprotect's engine: ResNet-18 (CIFAR stem, 32x32x3,
10 classes) in float32 and bfloat16, and the small CNN (28x28x1).

  python -m benchmarks.studies.train_throughput [--batch 512] [--steps 20] [--quick]

Prints one JSON line per workload with the device, date and versions. Steps run through
``make_train_chunk`` (data resident on device, gather and augmentation inside jit).
"""

import argparse
import datetime
import json
import time

import jax
import numpy as np

from jaxprotect import data, models, parallel, train
from jaxprotect.config import optimizer_config
from jaxprotect.data.augment import AugmentConfig


def bench(name, shape, dtype, batch, steps, width=None):
  mesh = parallel.make_mesh()
  n = batch * steps
  rng = np.random.default_rng(0)
  split = data.ArraySplit(images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                          labels=(np.arange(n) % 10).astype(np.int32), ids=np.arange(n, dtype=np.int32))
  ds = data.to_device(data.HostDataset("synthetic", split, split, 10, data.fingerprint(split, split)), mesh)
  kw = {"dtype": dtype} | ({"width": width} if width else {})
  model = models.get(name, 10, **kw)
  tx = train.make_optimizer(optimizer_config(), steps, 1)
  state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(0), mesh)
  chunk = train.make_train_chunk(model, train.ce_loss(), tx, mesh, batch, AugmentConfig.parse("crop4,flip"))
  # warm-up epoch of the same length as the timed one: with loop="scan" the chunk length
  # is static, so a different length would compile inside the timed region
  state, m = chunk(state, ds.train, steps)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  state, m = chunk(state, ds.train, steps)
  jax.block_until_ready(m)
  dt = time.perf_counter() - t0
  return {"workload": f"train_step/{name}{'' if width is None else f'_w{width}'}", "dtype": dtype, "batch": batch,
          "images_per_s": round(batch * steps / dt, 1), "device": str(jax.devices()[0].device_kind),
          "num_devices": len(jax.devices()), "date": datetime.date.today().isoformat(), "jax": jax.__version__,
          "loop": train.default_loop()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--quick", action="store_true", help="batch 64, 4 steps, ResNet-18 at width 16")
  a = p.parse_args()
  batch, steps, width = (64, 4, 16) if a.quick else (a.batch, a.steps, None)
  for name, shape, dtype in (("resnet18", (32, 32, 3), "float32"), ("resnet18", (32, 32, 3), "bfloat16"),
                             ("small_cnn", (28, 28, 1), "float32")):
    print(json.dumps(bench(name, shape, dtype, batch, steps, width if name == "resnet18" else None)), flush=True)


if __name__ == "__main__":
  main()
