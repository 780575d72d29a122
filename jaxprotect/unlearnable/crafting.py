"""The min-min crafting loop (EM sample-wise / class-wise, MI-UE), resumable after a kill.

An outer iteration alternates a surrogate *training* phase on the currently perturbed
training set and a *perturbation* phase descending the method's objective; the loop
stops when the surrogate's error on the perturbed set falls below ``stop_error`` (EM) or
after ``max_iterations`` (MI-UE's fixed number of epochs; EM's safeguard). Both phases
run on device over the mesh; state (surrogate, perturbation, iteration) is checkpointed
at iteration ends, so a killed run resumes to the same perturbations.

The run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and, at the
end, ``poison/`` (perturbation + manifest, see ``poison_io``) and ``results.json``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxprotect import config as config_lib, data, models, parallel, run, runner, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import pgd, poison_io

__all__ = [
    "DELTA_INITS", "METHODS", "MODES", "classwise_positions", "craft", "crafting_hash", "objective_of",
    "step_size", "unlearnable_config", "validate", "with_dataset",
]

METHODS = ("em", "mi_ue", "random")  # "random": uniform noise, the papers' control
MODES = ("sample", "class")
DELTA_INITS = ("uniform", "zeros")
# Fields of the unlearnable config that do not change what crafting computes.
_NOT_CRAFTING = ("victim", "poison", "poison_fraction", "evaluate_clean", "clean_workdir", "export")
# Stream of the clean-image augmentation of the PGD passes (fold_in of the seed's key).
_CLEAN_AUGMENT_STREAM = 0x636C65


def unlearnable_config() -> ml_collections.ConfigDict:
  """Crafting + victim-evaluation config (defaults: EM sample-wise, Huang et al., ICLR 2021).

  The top-level training fields (``model``, ``optimizer``, ``batch_size``, ``augment``,
  ...) describe the *surrogate*; ``victim`` is a full training config for ``evaluate``
  (its dataset fields are taken from the top level).
  """
  c = config_lib.train_config()
  c.model = "resnet18"
  c.augment = ""  # the surrogate trains on the perturbed images as they are
  # Augmentation of the clean images *under* the perturbation, in both phases (sample-wise
  # only): "flip" is MI-UE's post-augmentation crafting (the reference's --post-aug).
  c.clean_augment = ""
  c.optimizer.lr = 0.1
  c.optimizer.schedule = "constant"
  c.optimizer.grad_clip = 5.0
  c.method = "em"  # "em", "mi_ue" or "random" (uniform noise in [-eps, eps], no crafting)
  c.mode = "sample"  # "sample" (one delta per example id) or "class" (one per class)
  c.eps = 8 / 255
  c.delta_init = "uniform"  # "uniform" in [-eps, eps] (EM's reference) or "zeros" (MI-UE's)
  c.pgd = ml_collections.ConfigDict(dict(steps=20, step_size=0.8 / 255, step_size_end=config_dict.placeholder(float),
                                         batch_size=512, loop=""))  # loop: "scan", "host" or "" (host on CPU)
  c.train_steps = 10  # surrogate steps per outer iteration; 0: one epoch
  c.max_iterations = 100  # outer iterations (EM: a safeguard; MI-UE: the number of epochs)
  c.stop_error = 0.01  # stop when the surrogate's error on the perturbed set is below this; 0: never
  c.class_subset = 0.2  # class-wise: fraction of the training set the noise is fitted on
  c.mi_ue = ml_collections.ConfigDict(dict(temperature=0.1, exclude_self=False, zeta=0.0))
  c.checkpoint.every_iterations = 1
  # evaluation
  c.poison = config_dict.placeholder(str)  # a poison directory (a craft workdir or its poison/ subdirectory)
  c.poison_fraction = 1.0  # fraction of the training set that carries its perturbation
  c.evaluate_clean = True  # also train the same victim on clean data
  # Where that clean victim trains; "" means <workdir>/clean. Point several evaluations with
  # the same victim recipe and dataset at one directory to train the clean victim once.
  c.clean_workdir = ""
  c.victim = config_lib.train_config()
  c.victim.model = "resnet18"
  c.victim.epochs = 60
  c.victim.batch_size = 128
  c.victim.augment = "crop4,flip"
  c.victim.optimizer.lr = 0.1
  c.victim.optimizer.schedule = "cosine"
  c.export = ml_collections.ConfigDict(dict(png=False, npz=False, preview=True))
  return config_lib.lock(c)


def with_dataset(c: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
  """Sets the dataset of an experiment variant and sizes the models for it.

  ``fashion_mnist_mini`` (embedded, offline) and ``fashion_mnist_cpu`` (full
  Fashion-MNIST) use small CNNs for surrogate and victim -- what a CPU can run;
  ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped`` keep ResNet-18.
  """
  if dataset in ("fashion_mnist_mini", "fashion_mnist_cpu"):
    c.dataset = "fashion_mnist_mini" if dataset == "fashion_mnist_mini" else "fashion_mnist"
    c.model = "small_cnn"
    c.model_kwargs = ml_collections.ConfigDict({"width": 32})  # overridable: --config.model_kwargs.width=16
    c.optimizer.lr = 0.05
    c.pgd.batch_size = 256
    c.victim.model = "small_cnn"
    c.victim.epochs = 15
    c.victim.optimizer.lr = 0.05
    c.victim.augment = "crop2,flip"
  elif dataset in ("fashion_mnist", "cifar10", "cifar100", "svhn_cropped"):
    c.dataset = dataset
  else:
    raise ValueError(f"unknown dataset variant {dataset!r}; use fashion_mnist_mini, fashion_mnist_cpu, "
                     "fashion_mnist, cifar10, cifar100 or svhn_cropped")
  return c


def crafting_hash(config: ml_collections.ConfigDict, model: Any = None) -> str:
  """The hash of what crafting computes: ``config`` without its evaluation fields, and a
  user's surrogate module (by its ``repr``, which lists its fields) when one is given."""
  c = ml_collections.ConfigDict(config.to_dict())
  for k in _NOT_CRAFTING:
    if k in c:
      del c[k]
  if model is not None:
    c.model = f"user module: {model!r}"
  return config_lib.config_hash(c)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields of a crafting config (names against ``unlearnable_config()``, values)."""
  config_lib.check_fields(config, unlearnable_config())
  if config.method not in METHODS:
    raise ValueError(f"unknown unlearnable method {config.method!r}; use one of {METHODS}")
  if config.mode not in MODES:
    raise ValueError(f"unknown perturbation mode {config.mode!r}; use one of {MODES}")
  if config.method == "mi_ue" and config.mode != "sample":
    raise ValueError("MI-UE crafts sample-wise perturbations (mode='sample')")
  if not 0 < config.eps <= 1:
    raise ValueError(f"eps must be in (0, 1] (pixel units), got {config.eps}")
  if config.max_iterations < 1:
    raise ValueError(f"max_iterations must be >= 1, got {config.max_iterations}")
  if config.mode == "class" and not 0 < config.class_subset <= 1:
    raise ValueError(f"class_subset must be in (0, 1], got {config.class_subset}")
  if config.delta_init not in DELTA_INITS:
    raise ValueError(f"unknown delta_init {config.delta_init!r}; use one of {DELTA_INITS}")
  if AugmentConfig.parse(config.clean_augment).enabled and config.mode != "sample":
    raise ValueError("clean_augment needs sample-wise perturbations (mode='sample')")


def objective_of(config: ml_collections.ConfigDict) -> pgd.Objective:
  if config.method == "em":
    return pgd.error_minimizing_objective()
  return pgd.mi_ue_objective(config.mi_ue.temperature, config.mi_ue.exclude_self, config.mi_ue.zeta)


def step_size(config: ml_collections.ConfigDict, iteration: int) -> float:
  """PGD step size of outer iteration ``iteration`` (0-based): constant, or linear from
  ``pgd.step_size`` to ``pgd.step_size_end`` over ``max_iterations`` (MI-UE)."""
  start, end = config.pgd.step_size, config.pgd.get("step_size_end")
  if end is None or config.max_iterations == 1:
    return float(start)
  return float(start + (end - start) * iteration / (config.max_iterations - 1))


def classwise_positions(key: jax.Array, num_examples: int, fraction: float, batch_size: int) -> jax.Array:
  """A fixed random subset of ``fraction`` of the training positions, R x B (whole batches)."""
  n = int(round(fraction * num_examples)) // batch_size * batch_size
  if n < batch_size:
    raise ValueError(f"class_subset={fraction} of {num_examples} examples is less than one PGD batch of {batch_size}")
  return jax.random.permutation(key, num_examples)[:n].reshape(-1, batch_size).astype(jnp.int32)


def craft(
    config: ml_collections.ConfigDict,
    workdir: os.PathLike | str,
    mesh=None,
    dataset: data.DeviceDataset | None = None,
    model: Any = None,
) -> dict[str, Any]:
  """Crafts the perturbations of ``config`` into ``workdir`` (resuming if it holds a
  checkpoint of the same crafting config); returns (and writes) the results summary.

  ``model``: the surrogate, a user's flax module (or ``models.Model``) instead of the zoo's
  ``config.model``; it must output ``num_classes`` logits, and MI-UE needs its features
  too (see ``models.contract``). Its ``repr`` enters the crafting hash.
  """
  validate(config)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)
  n, k = ds.train.size, ds.num_classes

  steps_per_epoch = n // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {n} training examples")
  train_steps = config.train_steps or steps_per_epoch
  user_model = model
  model = models.as_model(models.from_config(config, k) if model is None else model)
  logits_spec, feats_spec = models.check_outputs(model, ds.example)
  if logits_spec.shape[-1] != k:
    raise ValueError(f"model: outputs {logits_spec.shape[-1]} logits, but {ds.name!r} has {k} classes")
  if config.method == "mi_ue" and feats_spec is None:
    raise ValueError("model: MI-UE needs the surrogate's features; the model returns logits only "
                     "(return (logits_BxK, features_BxD) from its __call__)")
  # The surrogate's schedule spans all outer iterations (MI-UE: cosine over its epochs).
  optimizer = train.make_optimizer(config.optimizer, train_steps, config.max_iterations)
  k_model, k_delta, k_subset = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  k_clean_aug = jax.random.fold_in(jax.random.PRNGKey(config.seed), _CLEAN_AUGMENT_STREAM)
  shape = (n if config.mode == "sample" else k, *ds.train.image_shape)
  sharding = ds.train.images.sharding if config.mode == "sample" else parallel.replicated(mesh)
  if config.delta_init == "zeros" and config.method != "random":  # the control is always uniform noise
    delta = jax.jit(lambda: jnp.zeros(shape, jnp.float32), out_shardings=sharding)()
  elif config.mode == "sample":
    init = jax.jit(pgd.init_delta, static_argnums=(1, 2), out_shardings=sharding)
    delta = init(k_delta, shape, config.eps, ds.train.images)
  else:
    delta = jax.jit(pgd.init_delta, static_argnums=(1, 2), out_shardings=sharding)(k_delta, shape, config.eps)
  phase = run.Phase(workdir, "craft", config, dataset=ds, total=config.max_iterations, unit="iter",
                    config_hash=crafting_hash(config, None if user_model is None else model.module),
                    record={} if user_model is None else {"user_model": repr(model.module)})
  if config.method == "random":  # the papers' control: the initial uniform noise, uncrafted, no surrogate
    return _finish(config, phase, ds, delta, iteration=0, done=False,
                   record={"perturbed_train_accuracy": None, "clean_train_accuracy": None}, surrogate_digest=None)

  chunk = train.make_train_chunk(model, train.ce_loss(config.label_smoothing), optimizer, mesh, config.batch_size,
                                 AugmentConfig.parse(config.augment), loop=config.loop or None)
  eval_fn = train.make_eval_fn(model, mesh, config.eval_batch_size, k)
  objective = objective_of(config)
  clean_augment = AugmentConfig.parse(config.clean_augment)
  if config.mode == "sample":
    perturb = pgd.make_samplewise_pass(model, objective, mesh, config.pgd.batch_size, config.pgd.steps,
                                       loop=config.pgd.loop or None)
  else:
    positions = classwise_positions(k_subset, n, config.class_subset, config.pgd.batch_size)
    class_pass = pgd.make_classwise_pass(model, objective, mesh, config.pgd.batch_size, config.pgd.steps, k,
                                         loop=config.pgd.loop or None)
    perturb = lambda variables, split, eps, alpha, key: class_pass(variables, split, positions, eps, alpha)  # noqa: E731
  every = max(1, config.checkpoint.get("every_iterations", 1))

  surrogate = train.init_state(model, optimizer, ds.example, k_model, mesh)
  record: dict[str, Any] = {}
  with phase:
    # Scalars as global (replicated) arrays: a multi-process checkpoint saves nothing host-local.
    rep = parallel.replicated(mesh)
    state = phase.restore({"surrogate": surrogate, "delta": delta, "iteration": parallel.put(np.int32(0), rep),
                           "done": parallel.put(np.bool_(False), rep)})
    surrogate, delta, done = state["surrogate"], state["delta"], bool(state["done"])
    iteration = phase.start(int(state["iteration"]), desc=f"{config.method}-{config.mode}")
    while not done and iteration < config.max_iterations:
      split = ds.train.replace(delta=delta, delta_mode=config.mode, clean_augment=clean_augment)
      # Surrogate phase: train_steps steps continuing the epoch (chunks never cross an epoch).
      remaining, ms = train_steps, []
      while remaining:
        m = min(remaining, steps_per_epoch - int(surrogate.step) % steps_per_epoch)
        surrogate, metrics = chunk(surrogate, split, m)
        ms.append(jax.device_get(metrics))
        remaining -= m
      # Perturbation phase.
      alpha = step_size(config, iteration)
      delta = perturb(train.variables_of(surrogate), split, jnp.float32(config.eps), jnp.float32(alpha),
                      jax.random.fold_in(k_clean_aug, iteration))
      iteration += 1
      acc = float(eval_fn(surrogate, ds.train.replace(delta=delta, delta_mode=config.mode))["accuracy"])
      done = bool(config.stop_error) and (1.0 - acc) < config.stop_error
      record = {"surrogate_loss": float(np.mean(np.concatenate([m["loss"] for m in ms]))),
                "surrogate_accuracy": float(np.mean(np.concatenate([m["accuracy"] for m in ms]))),
                "perturbed_train_accuracy": acc, "step_size": alpha,
                "delta_linf": float(jnp.max(jnp.abs(delta))) * 255.0}
      phase.log(iteration, advance=1, postfix={"acc": f"{acc:.4f}"}, **record)
      phase.checkpoint(iteration, {"surrogate": surrogate, "delta": delta,
                                   "iteration": parallel.put(np.int32(iteration), rep),
                                   "done": parallel.put(np.bool_(done), rep)},
                       save=done or iteration % every == 0 or iteration == config.max_iterations)

  if not record:  # resumed after the end: report the stored state
    acc = float(eval_fn(surrogate, ds.train.replace(delta=delta, delta_mode=config.mode))["accuracy"])
    record = {"perturbed_train_accuracy": acc}
  # What the noise carries for the surrogate: its accuracy on the same images without it.
  record["clean_train_accuracy"] = float(eval_fn(surrogate, ds.train)["accuracy"])
  return _finish(config, phase, ds, delta, iteration, done, record, runner.params_digest(surrogate.params))


def _finish(config, phase: run.Phase, ds, delta, iteration, done, record, surrogate_digest) -> dict[str, Any]:
  """Saves the poison (and its preview) and writes ``results.json``."""
  poison_dir = phase.workdir / "poison"
  manifest = None
  phase.write_config()
  delta_host = parallel.to_host(delta)  # a collective when delta is split over processes: every process
  if phase.main:
    manifest = poison_io.save_poison(poison_dir, delta_host, config.mode, ds, config=config,
                                     stats={"iterations": iteration, "stopped_early": done, **record})
    if config.export.preview:
      poison_io.save_preview(poison_dir / "preview.png", ds, delta_host, config.mode, config.eps)
  return phase.finish({
      "dataset": data.describe(ds),
      "method": config.method,
      "mode": config.mode,
      "eps": config.eps,
      "iterations": iteration,
      "stopped_early": done,
      "perturbed_train_accuracy": record["perturbed_train_accuracy"],
      "clean_train_accuracy": record["clean_train_accuracy"],
      "delta_sha256": manifest["files"]["delta.npy"] if manifest else None,
      "surrogate_params_sha256": surrogate_digest,
      "poison": str(poison_dir),
  })
