"""CMIM train-step time over CE train-step time, measured side by side in one process.

  python -m benchmarks.studies.cmim_step [--steps 20] [--repeats 3] [--quick]

For each workload, a CE step (``train.ce_loss``) and a CMIM step (the stateful loss of
``jaxprotect.distill.teacher``: 6 temperatures, T^2 weights, mean aggregation, EMA
centroids in ``state.extra``) are compiled, warmed up, then timed in alternation
(``repeats`` rounds of ``steps`` steps each, median per step; also the median of the
per-round ratios), on the same fixed batch.
Workloads: the small CNN on 28x28x1 (batch 128) and ResNet-18 (CIFAR stem) on 32x32x3 at
a small batch (32). Prints one JSON line per workload with both times and their ratio.
"""

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import models, parallel, train
from jaxprotect.config import optimizer_config
from jaxprotect.distill import teacher

TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def _time_steps(step, state, batch, steps):
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return state, (time.perf_counter() - t0) / steps


def bench(name, shape, batch_size, steps, repeats, num_classes=10, **model_kwargs):
  mesh = parallel.make_mesh()
  model = models.get(name, num_classes, **model_kwargs)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(batch_size, *shape)), jnp.float32),
           "label": jnp.asarray(np.arange(batch_size) % num_classes, jnp.int32)}
  tx = train.make_optimizer(optimizer_config(), 100, 1)
  example = batch["image"][:1]
  ce_state = train.init_state(model, tx, example, jax.random.PRNGKey(0), mesh)
  cents = jnp.full((len(TEMPERATURES), num_classes, num_classes), 1.0 / num_classes)
  cmim_state = train.init_state(model, tx, example, jax.random.PRNGKey(0), mesh, extra={"centroids": cents})
  ce_step = train.make_train_step(model, train.ce_loss(), tx, mesh)
  cmim_step = train.make_train_step(model, teacher.cmim_stateful_loss(TEMPERATURES, lam=1.0, decay=0.99), tx, mesh)
  t0 = time.perf_counter()
  ce_state, _ = _time_steps(ce_step, ce_state, batch, 2)  # compile + warm-up
  ce_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  cmim_state, _ = _time_steps(cmim_step, cmim_state, batch, 2)
  cmim_compile = time.perf_counter() - t0
  ce_times, cmim_times = [], []
  for _ in range(repeats):  # alternate, so that load from other processes hits both alike
    ce_state, t = _time_steps(ce_step, ce_state, batch, steps)
    ce_times.append(t)
    cmim_state, t = _time_steps(cmim_step, cmim_state, batch, steps)
    cmim_times.append(t)
  ce_t, cmim_t = float(np.median(ce_times)), float(np.median(cmim_times))
  kw = "".join(f"_{k}{v}" for k, v in model_kwargs.items())
  return {"workload": f"train_step/{name}{kw}", "input": list(shape), "batch": batch_size,
          "ce_ms": round(1e3 * ce_t, 2), "cmim_ms": round(1e3 * cmim_t, 2), "ratio": round(cmim_t / ce_t, 3),
          # per-round ratios (each CMIM round right after a CE round): robust to load drifting over time
          "ratio_paired_median": round(float(np.median(np.asarray(cmim_times) / np.asarray(ce_times))), 3),
          "ce_ms_all": [round(1e3 * t, 2) for t in ce_times], "cmim_ms_all": [round(1e3 * t, 2) for t in cmim_times],
          "compile_s": {"ce": round(ce_compile, 1), "cmim": round(cmim_compile, 1)},
          "temperatures": len(TEMPERATURES), "device": str(jax.devices()[0].device_kind),
          "num_devices": len(jax.devices()), "date": datetime.date.today().isoformat(), "jax": jax.__version__}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="5 steps x 3 repeats")
  p.add_argument("--no_resnet", action="store_true", help="small CNN only")
  a = p.parse_args()
  steps = 5 if a.quick else a.steps
  workloads = [("small_cnn", (28, 28, 1), 128, {})]
  if not a.no_resnet:
    workloads.append(("resnet18", (32, 32, 3), 32, {}))
  for name, shape, b, kw in workloads:
    print(json.dumps(bench(name, shape, b, steps, a.repeats, **kw)), flush=True)


if __name__ == "__main__":
  main()
