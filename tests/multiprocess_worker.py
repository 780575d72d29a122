"""One process of a multi-process run on localhost (tests/test_multiprocess.py).

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [train|craft]

Joins a ``jax.distributed`` job on 127.0.0.1:PORT with gloo CPU collectives and the
simulated devices that XLA_FLAGS gives this process, then runs in WORKDIR either
``runner.fit`` of ``tiny_config()`` -- process 0 writing the final parameters to
WORKDIR/params.npz -- or ``unlearnable.craft`` of ``tiny_craft_config()``.
"""

import os
import sys


def tiny_config():
  from jaxprotect import config as config_lib
  c = config_lib.train_config()
  return config_lib.apply_overrides(c, [
      "train.epochs=2", "data.train_subset=1024", "train.batch_size=128", "train.eval_batch_size=512",
      "train.model_kwargs.width=8", "runtime.progress=false", "runtime.tensorboard=false",
      "train.chunk_steps=2", "runtime.checkpoint.every_steps=2"])  # a record and a checkpoint every 2 steps


def tiny_craft_config():
  import pathlib
  from jaxprotect import config as config_lib
  em = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "em.py"
  return config_lib.apply_overrides(config_lib.from_file(f"{em}:fashion_mnist_mini"), [
      "data.train_subset=512", "surrogate.batch_size=64", "surrogate.eval_batch_size=512", "surrogate.model=small_cnn",
      "surrogate.model_kwargs.width=8", "craft.pgd.batch_size=128", "craft.pgd.steps=2", "craft.train_steps=2",
      "craft.max_iterations=2", "craft.stop_error=0.0", "runtime.progress=false", "runtime.tensorboard=false",
      "export.preview=false"])


def main(argv):
  process_id, num_processes, port, workdir = int(argv[0]), int(argv[1]), argv[2], argv[3]
  task = argv[4] if len(argv) > 4 else "train"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                             process_id=process_id, initialization_timeout=120)
  import numpy as np
  from jaxprotect import runner
  if task == "craft":
    from jaxprotect.unlearnable import crafting
    results = crafting.craft(tiny_craft_config(), workdir)
    print("devices", jax.device_count(), "processes", jax.process_count(), "delta", results["delta_sha256"],
          flush=True)
    jax.distributed.shutdown()
    return
  results, state = runner.fit(tiny_config(), workdir, return_state=True)
  if jax.process_index() == 0:
    leaves = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(state.params)]
    np.savez(os.path.join(workdir, "params.npz"), *leaves)
  print("devices", jax.device_count(), "processes", jax.process_count(), "sha", results["params_sha256"], flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
