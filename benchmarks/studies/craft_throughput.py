"""EM crafting throughput of jaxprotect at the reference model size: sample-wise PGD passes
(surrogate ResNet-18, standard width, eval mode, eps 8/255) in image-steps per second, and
what that implies for one outer iteration of the reference EM craft on 50,000 images.

  python -m benchmarks.studies.craft_throughput [--batch 512] [--examples 5120] [--steps 20] [--repeats 2]

A reference outer iteration is 10 surrogate steps of 512 images plus 20 PGD steps on every
one of the 50,000 images (1,000,000 image-steps); the surrogate steps are under 1% of
that and are left out. Prints one JSON line with the device, date and versions. On a
CPU use small ``--examples`` (e.g. ``--batch 128 --examples 256``): a full pass takes hours.
"""

import argparse
import dataclasses
import datetime
import json
import statistics

import jax

from benchmarks import common, jax_impl

REFERENCE_IMAGE_STEPS_PER_ITERATION = 50_000 * 20


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--examples", type=int, default=5120)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()
  size = dataclasses.replace(common.SIZES["full"], batch=a.batch, pgd_examples=a.examples, pgd_steps=a.steps)
  runner = jax_impl.PGDPassRunner(size, "em")
  runner.setup()  # compiles and runs one pass
  runs = [runner.run() for _ in range(a.repeats)]
  rate = statistics.median(r["units"] / r["seconds"] for r in runs)
  print(json.dumps({
      "workload": "em_pgd_pass", "model": size.model_label, "batch": a.batch, "examples": a.examples,
      "pgd_steps": a.steps, "image_steps_per_s": round(rate, 1),
      "reference_iteration_s": round(REFERENCE_IMAGE_STEPS_PER_ITERATION / rate, 1),
      "compile_and_warmup_s": round(runner.details()["compile_and_warmup_s"], 1), "mode": runner.mode,
      "device": str(jax.devices()[0].device_kind), "num_devices": len(jax.devices()),
      "date": datetime.date.today().isoformat(), "jax": jax.__version__}))


if __name__ == "__main__":
  main()
