"""``fit``: a whole supervised training run in a run directory, resumable after a kill.

The run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (Orbax) and,
at the end, ``results.json``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxprotect import checkpoint, config as config_lib, data, models, parallel, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.metrics import MetricsWriter

__all__ = [
    "fit", "load_dataset", "params_digest",
]

# Fault injection for tests of resumption: the process SIGKILLs itself after the chunk
# that reaches this step (its checkpoint save may still be in flight).
_KILL_AT_STEP_ENV = "JAXPROTECT_KILL_AT_STEP"


def params_digest(params: Any) -> str:
  """SHA-256 over the bytes of every parameter (leaves in tree order)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()


def load_dataset(config: ml_collections.ConfigDict, mesh) -> data.DeviceDataset:
  host = data.load_arrays(config.dataset, config.data_dir)
  if config.train_subset:
    host = data.subset(host, config.train_subset)
  return data.to_device(host, mesh, config.layout)


def fit(
    config: ml_collections.ConfigDict,
    workdir: os.PathLike | str,
    mesh=None,
    dataset: data.DeviceDataset | None = None,
    *,
    model=None,
    loss_fn: train.LossFn | None = None,
    extra: Any = None,
    batch_fn=None,
    aux: Any = None,
    eval_model=None,
    return_state: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], train.TrainState]:
  """Trains ``config.model`` on ``config.dataset``, resuming from ``workdir`` if it holds
  checkpoints of the same config; returns (and writes) the results summary.

  Methods plug in through the keywords: ``model`` (default: ``config.model`` from the
  registry), ``loss_fn`` (default: cross-entropy with ``config.label_smoothing``; may be
  ``train.stateful``), ``extra`` (initial ``state.extra``, checkpointed with the state; or
  a function ``extra(state) -> extra`` of the freshly initialised state, e.g. statistics
  of the initial model),
  ``batch_fn`` and ``aux`` (the batch hook of ``train.make_train_chunk``) and
  ``eval_model`` (a module evaluated with the same variables, default ``model``).
  Everything they depend on must be reflected in ``config`` for the config-hash check
  on resume to mean anything. With ``return_state``, returns ``(results, final state)``.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = mesh or parallel.make_mesh(config.num_devices or None)
  ds = dataset or load_dataset(config, mesh)
  main = parallel.is_main_process()

  steps_per_epoch = ds.train.size // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {ds.train.size} training examples")
  total_steps = steps_per_epoch * config.epochs
  if model is None:
    model = models.get(config.model, ds.num_classes, dtype=config.dtype, **config.model_kwargs.to_dict())
  optimizer = train.make_optimizer(config.optimizer, steps_per_epoch, config.epochs)
  state = train.init_state(model, optimizer, ds.example, jax.random.PRNGKey(config.seed), mesh,
                           extra=None if callable(extra) else extra)
  if callable(extra):
    state = state.replace(extra=extra(state))

  chash = config_lib.config_hash(config)
  ckpt = checkpoint.Checkpointer(
      workdir / "checkpoints", chash, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
  )
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    if meta.get("dataset_fingerprint") != ds.fingerprint:
      raise ValueError(
          f"checkpoint in {ckpt.directory} was trained on dataset fingerprint {meta.get('dataset_fingerprint')}, "
          f"but {config.dataset!r} now has {ds.fingerprint}"
      )
  step = int(state.step)
  if main:
    config_lib.write_json_atomic(workdir / "config.json", {"config": config.to_dict(), "config_hash": chash,
                                                           "dataset": data.describe(ds)})
  writer = MetricsWriter(workdir, resume_step=step, tensorboard=config.tensorboard)
  meta = {"dataset_fingerprint": ds.fingerprint, "phase": "train"}

  chunk_fn = train.make_train_chunk(
      model, loss_fn or train.ce_loss(config.label_smoothing), optimizer, mesh, config.batch_size,
      AugmentConfig.parse(config.augment), loop=config.loop or None, batch_fn=batch_fn,
  )
  eval_fn = train.make_eval_fn(eval_model or model, mesh, config.eval_batch_size, ds.num_classes)
  chunk_steps = config.chunk_steps or steps_per_epoch
  save_every = config.checkpoint.every_steps or steps_per_epoch
  kill_at = int(os.environ.get(_KILL_AT_STEP_ENV, "0"))

  t0 = time.time()
  bar = tqdm(total=total_steps, initial=step, disable=not (main and config.progress), unit="step", dynamic_ncols=True)
  test_metrics = None
  while step < total_steps:
    offset = step % steps_per_epoch
    n = min(chunk_steps, steps_per_epoch - offset)
    prev = step
    state, m = chunk_fn(state, ds.train, n, aux)
    step += n
    m = jax.device_get(m)
    record = {"epoch": step / steps_per_epoch, "train_loss": float(np.mean(m["loss"])),
              "train_accuracy": float(np.mean(m["accuracy"]))}
    if step % steps_per_epoch == 0:
      test_metrics = jax.device_get(eval_fn(state, ds.test))
      record.update(test_loss=test_metrics["loss"], test_accuracy=test_metrics["accuracy"])
      bar.set_postfix(loss=f"{record['train_loss']:.3f}", test_acc=f"{float(test_metrics['accuracy']):.4f}")
    writer.write(step, **record)
    bar.update(n)
    if step // save_every > prev // save_every or step == total_steps:
      ckpt.save(step, state, meta)
    if kill_at and step >= kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
  bar.close()
  ckpt.close()
  writer.close()

  if test_metrics is None:  # resumed after the last step: evaluate once more
    test_metrics = jax.device_get(eval_fn(state, ds.test))
  results = {
      "dataset": data.describe(ds),
      "model": config.model,
      "epochs": config.epochs,
      "steps": step,
      "test_accuracy": float(test_metrics["accuracy"]),
      "test_loss": float(test_metrics["loss"]),
      "class_accuracy": [float(a) for a in test_metrics["class_accuracy"]],
      "params_sha256": params_digest(state.params),
      "num_devices": int(mesh.devices.size),
      "seconds_this_process": round(time.time() - t0, 2),
      "config_hash": chash,
  }
  if main:
    config_lib.write_json_atomic(workdir / "results.json", results)
  return (results, state) if return_state else results
