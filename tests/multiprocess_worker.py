"""One process of a multi-process run on localhost (tests/test_multiprocess.py).

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [TASK [ARG]]

Joins a ``jax.distributed`` job on 127.0.0.1:PORT with gloo CPU collectives and the
simulated devices that XLA_FLAGS gives this process, then runs TASK in WORKDIR:

* ``train`` (default): ``runner.fit`` of ``tiny_config()``, process 0 writing the final
  parameters to WORKDIR/params.npz;
* ``craft``: ``jaxprotect poison`` of ``tiny_craft_config()`` with the training split sharded
  over the processes (``data.layout=sharded``) and ``--export npz``;
* ``certify MODEL_DIR``: ``unlearnable.certify`` of ``tiny_certify_config(MODEL_DIR)``;
* ``evaluate POISON_DIR``: ``victims.evaluate`` of ``tiny_victim_config(POISON_DIR)`` (the
  sharded layout), process 0 writing the poisoned victim's final variables to
  WORKDIR/victim.npz (leaves in tree order), the poisoned training set exported by every
  process to WORKDIR/poisoned_train.npz and, alone, the poison's preview to WORKDIR/preview.png.
"""

import os
import pathlib
import sys


def tiny_config():
  from jaxprotect import config as config_lib
  c = config_lib.train_config()
  return config_lib.apply_overrides(c, [
      "train.epochs=2", "data.train_subset=1024", "train.batch_size=128", "train.eval_batch_size=512",
      "train.model_kwargs.width=8", "runtime.progress=false", "runtime.tensorboard=false",
      "train.chunk_steps=2", "runtime.checkpoint.every_steps=2"])  # a record and a checkpoint every 2 steps


CRAFT_OVERRIDES = (
    "data.train_subset=512", "surrogate.batch_size=64", "surrogate.eval_batch_size=512", "surrogate.model=small_cnn",
    "surrogate.model_kwargs.width=8", "craft.pgd.batch_size=128", "craft.pgd.steps=2", "craft.train_steps=2",
    "craft.max_iterations=2", "craft.stop_error=0.0", "runtime.progress=false", "runtime.tensorboard=false",
    "export.preview=true")  # process 0 alone draws it from its own copy of the images
CRAFT_CONFIG = f"{pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'em.py'}:fashion_mnist_mini"


def tiny_craft_config(*extra):
  from jaxprotect import config as config_lib
  return config_lib.apply_overrides(config_lib.from_file(CRAFT_CONFIG), [*CRAFT_OVERRIDES, *extra])


def tiny_certify_config(model_dir):
  from jaxprotect import config as config_lib
  from jaxprotect.unlearnable import certify
  return config_lib.apply_overrides(certify.certify_config(), [
      f"certify.model={model_dir}", "certify.num_draws=8", "certify.chunk=2", "certify.sigma=0.02",
      "certify.batch_size=400", "runtime.progress=false", "runtime.tensorboard=false"])


def tiny_victim_config(poison_dir):
  """A victim trained for one epoch on ``tiny_craft_config``'s data laid out sharded, half of
  it carrying the poison, stored as uint8 (every host read of poison_io on that layout), under
  the JPEG squeeze (a host pass over the images of both processes)."""
  from jaxprotect import config as config_lib
  return config_lib.apply_overrides(tiny_craft_config(), [
      "data.layout=sharded", "victim.model_kwargs.width=8", "victim.epochs=1", "victim.batch_size=64",
      "victim.eval_batch_size=400", f"evaluate.poison={poison_dir}", "evaluate.clean=false",
      "evaluate.poison_fraction=0.5", "evaluate.quantize=round", "defense.name=jpeg"])


def main(argv):
  process_id, num_processes, port, workdir = int(argv[0]), int(argv[1]), argv[2], argv[3]
  task = argv[4] if len(argv) > 4 else "train"
  arg = argv[5] if len(argv) > 5 else None
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from jaxprotect import platform
  platform.apply_cpu_xla_flags()  # the flags of the test process (conftest.py): the same compiled programs
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                             process_id=process_id, initialization_timeout=120)
  import numpy as np
  from jaxprotect import parallel, runner
  parallel.enable_compilation_cache()  # as the test process (conftest.py) and the CLI do
  if task == "certify":
    from jaxprotect.unlearnable import certify
    results = certify.certify(tiny_certify_config(arg), workdir)
    print("devices", jax.device_count(), "processes", jax.process_count(), "mean", results["mean_accuracy"],
          flush=True)
    jax.distributed.shutdown()
    return
  if task == "evaluate":
    from jaxprotect import data
    from jaxprotect.unlearnable import poison_io, victims
    config = tiny_victim_config(arg)
    results = victims.evaluate(config, workdir)
    _, variables, _ = runner.load_trained(os.path.join(workdir, "poisoned"))  # every process: Orbax syncs them
    ds = data.from_config(config)
    # checking a poison against a split sharded over both processes reads this host's copies only
    poison = poison_io.load_poison(arg, ds)
    # every process: the training split, sharded over both, is gathered; process 0 writes
    poison_io.export_npz(os.path.join(workdir, "poisoned_train.npz"), ds, poison)
    if jax.process_index() == 0:
      np.savez(os.path.join(workdir, "victim.npz"), *jax.tree.leaves(variables))
      # process 0 alone: drawing the preview reads this host's shards only
      poison_io.save_preview(os.path.join(workdir, "preview.png"), ds, poison.delta, poison.mode, 8 / 255)
    print("devices", jax.device_count(), "processes", jax.process_count(), "accuracy",
          results["test_accuracy"]["poisoned"], flush=True)
    jax.distributed.shutdown()
    return
  if task == "craft":  # through the command line, the training split sharded over both processes
    from jaxprotect import cli
    rc = cli.main(["poison", "--config", CRAFT_CONFIG, *(f"--config.{o}" for o in CRAFT_OVERRIDES),
                   "--config.data.layout=sharded", "--workdir", workdir, "--export", "npz"])
    print("devices", jax.device_count(), "processes", jax.process_count(), "rc", rc, flush=True)
    jax.distributed.shutdown()
    sys.exit(rc)
  results, state = runner.fit(tiny_config(), workdir, return_state=True)
  if jax.process_index() == 0:
    leaves = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(state.params)]
    np.savez(os.path.join(workdir, "params.npz"), *leaves)
  print("devices", jax.device_count(), "processes", jax.process_count(), "sha", results["params_sha256"], flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
