"""``fit``: a whole supervised training run in a run directory, resumable after a kill.

The run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (Orbax) and,
at the end, ``results.json``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxprotect import config as config_lib, data, defenses, models, parallel, run, train
from jaxprotect.data.augment import AugmentConfig

__all__ = [
    "fit", "fit_hash", "load_trained", "params_digest",
]

FIT_SECTIONS = ("data",)  # with the model's own section: what a training run computes from

def params_digest(params: Any) -> str:
  """SHA-256 over the bytes of every parameter (leaves in tree order)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()


def fit_hash(config: ml_collections.ConfigDict, section: str = "train",
             hash_extra: dict[str, Any] | None = None, defense: Any = None) -> str:
  """The config hash ``fit(config, ..., section=section, hash_extra=hash_extra,
  defense=defense)`` records in its checkpoints and ``results.json``: ``data`` and
  ``section`` plus the extra values, and the defense's settings when one is set."""
  extra = _hash_extra(hash_extra, defenses.from_config(defense))
  return config_lib.phase_hash(config, (*FIT_SECTIONS, section), **extra)


def _hash_extra(hash_extra: dict[str, Any] | None, defense: defenses.Defense) -> dict[str, Any]:
  """``hash_extra`` with the ``defense`` entry of a set defense (none adds nothing: the hash
  of an undefended run is what it always was)."""
  extra = dict(hash_extra or {})
  if defense.enabled:
    if "defense" in extra:
      raise ValueError("hash_extra: 'defense' is the entry of fit's defense argument; use another key")
    extra["defense"] = defense.record()
  return extra


def fit(
    config: ml_collections.ConfigDict,
    workdir: os.PathLike | str,
    mesh=None,
    dataset: data.DeviceDataset | None = None,
    *,
    section: str = "train",
    hash_extra: dict[str, Any] | None = None,
    model=None,
    loss_fn: train.LossFn | None = None,
    extra: Any = None,
    batch_fn=None,
    aux: Any = None,
    eval_model=None,
    return_state: bool = False,
    defense: Any = None,
) -> dict[str, Any] | tuple[dict[str, Any], train.TrainState]:
  """Trains the model of ``config[section]`` (a ``config.model_config()`` section: ``train``,
  ``victim``, ``teacher``, ``student``, ...) on ``config.data``, resuming from ``workdir``
  if it holds checkpoints of the same ``data`` and ``section`` (and ``hash_extra``);
  returns (and writes) the results summary.

  Methods plug in through the keywords: ``model`` (default: the section's zoo model; a
  user's module is wrapped by ``models.as_model``), ``loss_fn`` (default: cross-entropy
  with the section's ``label_smoothing``; may be ``train.stateful``), ``extra``
  (initial ``state.extra``, checkpointed with the state; or a function
  ``extra(state) -> extra`` of the freshly initialised state, e.g. statistics of the
  initial model), ``batch_fn`` and ``aux`` (the batch hook of ``train.make_train_chunk``)
  and ``eval_model`` (a module evaluated with the same variables, default ``model``).
  Everything they depend on must be reflected in the section or in ``hash_extra`` for
  the config-hash check on resume to mean anything.

  ``defense`` (``defenses.from_config``: None, a name, a ``defense`` section or a
  ``defenses.Defense``) trains under a defense against unlearnable examples: a host squeeze
  of the training images before training, or a training-time one through the engine's
  state hook (chained after ``batch_fn``) with its loss (MixUp / CutMix: the soft-label
  loss, UEraser: the max-loss selection over ``loss_fn``). Its settings enter the hash
  (``hash_extra["defense"]``), ``config.json`` and the results (``"defense"``); with no
  defense the run is exactly the undefended one. With ``return_state``, returns
  ``(results, final state)``. The run directory is written through ``run.Phase``.
  """
  if section not in config or not isinstance(config[section], ml_collections.ConfigDict):
    raise ValueError(f"section: config has no model section {section!r} (sections: {', '.join(config.keys())})")
  defense = defenses.from_config(defense)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)
  c = config[section]
  if defense.enabled:
    defense.check_data(ds)
    ds = defense.prepare(ds)  # a host squeeze: the training images as the defended model sees them
  steps_per_epoch = ds.train.size // c.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"{section}.batch_size={c.batch_size} exceeds the {ds.train.size} training examples")
  total_steps = steps_per_epoch * c.epochs
  if model is None:
    model = models.from_config(c, ds.num_classes)
  if defense.enabled:
    loss_fn = defense.loss_fn(loss_fn, c.label_smoothing)
    batch_fn = train.chain_batch_fns(batch_fn, defense.batch_fn(model, ds.num_classes))
  optimizer = train.make_optimizer(c.optimizer, steps_per_epoch, c.epochs)
  state = train.init_state(model, optimizer, ds.example, jax.random.PRNGKey(c.seed), mesh,
                           extra=None if callable(extra) else extra)
  if callable(extra):
    state = state.replace(extra=extra(state))

  chunk_fn = train.make_train_chunk(
      model, loss_fn or train.ce_loss(c.label_smoothing), optimizer, mesh, c.batch_size,
      AugmentConfig.parse(c.augment), loop=c.loop or None, batch_fn=batch_fn,
  )
  eval_fn = train.make_eval_fn(eval_model or model, mesh, c.eval_batch_size, ds.num_classes)
  chunk_steps = c.chunk_steps or steps_per_epoch
  save_every = config.get("runtime", {}).get("checkpoint", {}).get("every_steps") or steps_per_epoch

  test_metrics = None
  with run.Phase(workdir, section, config, dataset=ds, total=total_steps, unit="step",
                 sections=(*FIT_SECTIONS, section), hash_extra=_hash_extra(hash_extra, defense),
                 record={"defense": defense.record()} if defense.enabled else None) as phase:
    state = phase.restore(state)
    step = phase.start(int(state.step))
    while step < total_steps:
      n = min(chunk_steps, steps_per_epoch - step % steps_per_epoch)
      prev = step
      state, m = chunk_fn(state, ds.train, n, aux)
      step += n
      m = jax.device_get(m)
      record = {"epoch": step / steps_per_epoch, "train_loss": float(np.mean(m["loss"])),
                "train_accuracy": float(np.mean(m["accuracy"]))}
      postfix = None
      if step % steps_per_epoch == 0:
        test_metrics = jax.device_get(eval_fn(state, ds.test))
        record.update(test_loss=test_metrics["loss"], test_accuracy=test_metrics["accuracy"])
        postfix = {"loss": f"{record['train_loss']:.3f}", "test_acc": f"{float(test_metrics['accuracy']):.4f}"}
      phase.log(step, advance=n, postfix=postfix, **record)
      phase.checkpoint(step, state, save=step // save_every > prev // save_every or step == total_steps)

  if test_metrics is None:  # resumed after the last step: evaluate once more
    test_metrics = jax.device_get(eval_fn(state, ds.test))
  summary = {"defense": defense.record()} if defense.enabled else {}
  results = phase.finish({
      "dataset": data.describe(ds),
      **summary,
      "model": c.model,
      "epochs": c.epochs,
      "steps": step,
      "test_accuracy": float(test_metrics["accuracy"]),
      "test_loss": float(test_metrics["loss"]),
      "class_accuracy": [float(a) for a in test_metrics["class_accuracy"]],
      "params_sha256": params_digest(state.params),
  })
  return (results, state) if return_state else results


def load_trained(run_dir: os.PathLike | str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """``(model, variables, info)`` of a finished ``fit`` run directory (any model section:
  ``train``, ``victim``, ``teacher``, ``student``, ...) or of a finished craft
  (``jaxprotect poison``: its surrogate at the end of crafting, the model the PUE
  reference certifies): the zoo model of its config, its final parameters and BatchNorm
  statistics (host arrays, checked against the run's parameter digest), and ``info`` =
  ``{"section", "config", "results"}``; ``results`` carries ``params_sha256`` and
  ``test_accuracy`` (None for a crafting surrogate, which is never evaluated on the test
  split).

  Raises ValueError for a directory without a finished run (no ``results.json``), a craft
  without a surrogate (the surrogate-free baselines) or a model not from the zoo."""
  import json  # noqa: PLC0415
  import pathlib  # noqa: PLC0415

  from jaxprotect import checkpoint  # noqa: PLC0415

  run_dir = pathlib.Path(run_dir)
  results_path, config_path = run_dir / "results.json", run_dir / "config.json"
  missing = ValueError(f"model: {run_dir} holds no finished training run (config.json, checkpoints/ and "
                       "results.json of jaxprotect train / evaluate / distill / poison)")
  if not results_path.exists() or not config_path.exists():
    raise missing
  results, saved = json.loads(results_path.read_text()), json.loads(config_path.read_text())
  if results.get("surrogate_params_sha256", "") is None:
    raise ValueError(f"model: {run_dir} is a craft of {results.get('method')!r}, which trains no surrogate")
  if not (run_dir / "checkpoints").is_dir():
    raise missing
  if "user_model" in saved:
    raise ValueError(f"model: cannot rebuild the model of {run_dir}: it is a user's model, not from the zoo")
  if "surrogate_params_sha256" in results:  # a craft: its surrogate
    section, item = "surrogate", "surrogate"
    results = {**results, "params_sha256": results["surrogate_params_sha256"], "test_accuracy": None}
  elif "params_sha256" not in results:
    raise ValueError(f"model: {run_dir} is not a training run (its results.json has no params_sha256)")
  else:
    sections = [s for s in saved.get("hashed_sections", []) if s not in FIT_SECTIONS]
    if len(sections) != 1:
      raise ValueError(f"model: cannot rebuild the model of {run_dir} (hashed sections {sections}); "
                       "only zoo models of runner.fit runs load this way")
    section, item = sections[0], None
  model = models.from_config(saved["config"][section], saved["dataset"]["num_classes"])
  ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", results["config_hash"], async_save=False)
  try:
    raw = ckpt.restore_raw()
  finally:
    ckpt.close()
  if item is not None:
    raw = raw[item]
  variables = {"params": jax.device_get(raw["params"])}
  if raw.get("batch_stats"):
    variables["batch_stats"] = jax.device_get(raw["batch_stats"])
  if params_digest(variables["params"]) != results["params_sha256"]:
    raise ValueError(f"model: the last checkpoint of {run_dir} is not the run's final parameters "
                     "(the parameter digest differs from results.json)")
  return model, variables, {"section": section, "config": saved["config"], "results": results}

