"""The min-min crafting loop (EM sample-wise / class-wise, MI-UE), resumable after a kill.

``craft`` also writes the poisons that need no loop through the same run directory, poison
directory and manifest: ``random`` (uniform noise, the papers' control) and the
surrogate-free baselines ``ar``, ``lsp`` and ``ops`` (``unlearnable.baselines``; AR and LSP
sample- or class-wise, OPS sample-wise; their settings in the ``baseline`` section, whose
L2 budgets replace ``craft.eps``; keys from ``surrogate.seed``).

An outer iteration alternates a surrogate *training* phase on the currently perturbed
training set and a *perturbation* phase descending the method's objective; the loop
stops when the surrogate's error on the perturbed set (``craft.stop_on``: the whole
training set, or class-wise the subset the noise is fitted on) falls below
``craft.stop_error`` (EM) or after ``craft.max_iterations`` (MI-UE's fixed number of
epochs; EM's safeguard). The perturbation phase visits its batches in a fixed order or in
a new order each outer iteration (``craft.reshuffle``; by default only for objectives
that couple the examples of a batch, such as MI-UE's).
Both phases run on device over the mesh; state (surrogate, perturbation, iteration) is
checkpointed at iteration ends (every ``runtime.checkpoint.every_iterations``), so a
killed run resumes to the same perturbations. The checkpoints record the hash of the
``data``, ``surrogate`` and ``craft`` sections only (``crafting_hash``).

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

from jaxprotect import config as config_lib, data, defenses, models, parallel, run, runner, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import baselines, pgd, poison_io

__all__ = [
    "CRAFTING_SECTIONS", "DELTA_INITS", "METHODS", "MODES", "RESHUFFLE", "STOP_ON", "baseline_kwargs",
    "classwise_positions", "craft",
    "crafting_hash", "crafting_sections", "objective_of", "order_key", "reshuffles", "step_size",
    "unlearnable_config", "validate",
]

# "random": uniform noise, the papers' control; "ar", "lsp", "ops": the surrogate-free baselines.
METHODS = ("em", "mi_ue", "pue", "random", *baselines.BASELINES)
MODES = ("sample", "class")
DELTA_INITS = ("uniform", "zeros")
# craft.reshuffle: a new pass order per outer iteration for batch-coupled objectives only, always, never.
RESHUFFLE = ("auto", "always", "never")
STOP_ON = ("all", "subset")  # craft.stop_on: the stop rule's examples (class-wise: "subset")
# The sections crafting computes from (hashed into its checkpoints, recorded in the poison's manifest).
CRAFTING_SECTIONS = ("data", "surrogate", "craft")  # and the method's own section, if it has one (pue, baseline)
# Stream of the clean-image augmentation of the PGD passes (fold_in of the seed's key).
_CLEAN_AUGMENT_STREAM = 0x636C65
# Stream of the pass orders (craft.reshuffle): fold_in(fold_in(seed's key, this), iteration).
_ORDER_STREAM = 0x6F7264
# Stream of PUE's weight draws in the PGD passes (fold_in of the seed's key, then the iteration).
_WEIGHT_NOISE_STREAM = 0x707565


def unlearnable_config() -> ml_collections.ConfigDict:
  """Crafting + victim-evaluation config (defaults: EM sample-wise, Huang et al., ICLR 2021). Locked.

  Sections:

  * ``data`` (``config.data_config()``): the dataset crafted on (and the victims' data);
  * ``surrogate`` (``config.model_config()``): the model crafting trains and its recipe;
    its ``seed`` seeds crafting (surrogate initialisation and data order, the initial
    perturbation, the class-wise subset, the clean-image augmentation). ``epochs`` and
    ``chunk_steps`` are not read: ``craft.train_steps`` and ``craft.max_iterations`` say
    how long it trains;
  * ``craft``: the method and its perturbation;
  * ``pue``: PUE's settings (hashed only when ``craft.method`` is "pue");
  * ``baseline``: the settings of the surrogate-free baselines ``ar`` and ``lsp`` (hashed
    only when ``craft.method`` is "ar", "lsp" or "ops");
  * ``victim`` (``config.model_config()``): the model ``evaluate`` trains on the poison
    (and on clean data);
  * ``defense`` (``defenses.defense_config()``): the defense the poisoned victim trains
    under (``name="none"`` by default; hashed into a victim run only when set);
  * ``evaluate``: which poison, how much of the training set carries it, the clean victim;
  * ``export``: what ``jaxprotect poison`` writes besides the poison;
  * ``runtime`` (``config.runtime_config()``): devices, progress, checkpoint cadence
    (``checkpoint.every_iterations``: crafting's outer iterations).

  Crafting hashes ``data``, ``surrogate`` and ``craft`` (``crafting_hash``), a victim
  ``data`` and ``victim``: changing the evaluation settings never invalidates a craft.
  """
  surrogate = config_lib.model_config()
  surrogate.model = "resnet18"
  surrogate.augment = ""  # the surrogate trains on the perturbed images as they are
  surrogate.optimizer.lr = 0.1
  surrogate.optimizer.schedule = "constant"
  surrogate.optimizer.grad_clip = 5.0

  craft_section = ml_collections.ConfigDict(dict(
      # "em", "mi_ue", "pue", "random" (uniform noise in [-eps, eps], no crafting) or a surrogate-free
      # baseline: "ar", "lsp" (L2 budgets in the baseline section, not eps) or "ops" (one pixel, sample-wise)
      method="em",
      mode="sample",  # "sample" (one delta per example id) or "class" (one per class)
      eps=8 / 255,
      delta_init="uniform",  # "uniform" in [-eps, eps] (EM's reference) or "zeros" (MI-UE's)
      # Augmentation of the clean images *under* the perturbation, in both phases (sample-wise
      # only): "flip" is MI-UE's post-augmentation crafting (the reference's --post-aug).
      clean_augment="",
      pgd=ml_collections.ConfigDict(dict(steps=20, step_size=0.8 / 255, step_size_end=config_dict.placeholder(float),
                                         batch_size=512, loop="")),  # loop: "scan", "host" or "" (host on CPU)
      # The order of the PGD batches: "auto" a new permutation (from surrogate.seed and the outer
      # iteration) each outer iteration for objectives that couple a batch (MI-UE) and the fixed
      # order for sample-separable ones (EM); "always"; "never" (the fixed order: each example
      # always meets the same batch-mates). Class-wise, the fixed subset is re-batched in a new order.
      reshuffle="auto",
      train_steps=10,  # surrogate steps per outer iteration; 0: one epoch
      max_iterations=100,  # outer iterations (EM: a safeguard; MI-UE: the number of epochs)
      stop_error=0.01,  # stop when the surrogate's error on the perturbed set is below this; 0: never
      # The examples that error is measured on: "all" (the training set) or "subset" (class-wise:
      # the class_subset the noise is fitted on, as the reference's universal_train_target).
      stop_on="all",
      class_subset=0.2,  # class-wise: fraction of the training set the noise is fitted on
      mi_ue=ml_collections.ConfigDict(dict(temperature=0.1, exclude_self=False, zeta=0.0)),
  ))

  # PUE (Wang et al., NDSS 2025), its own section (hashed only when craft.method is "pue"):
  # EM's objective; once the surrogate's accuracy on the perturbed set exceeds
  # switch_accuracy, the surrogate trains under weight noise and each PGD step averages over
  # weight draws, at the levels 0, sigma_step, ..., sigma (train_draws / draws models per
  # level). PUE stops only after a robust iteration.
  pue = ml_collections.ConfigDict(dict(sigma=0.25, sigma_step=0.05, draws=10, train_draws=100, switch_accuracy=0.5))

  # The surrogate-free baselines (unlearnable.baselines), hashed only when craft.method is one of
  # them: AR's L2 norm, crop and process search (min_response None: 8 up to 10 classes, 3
  # beyond; max_candidates None: 5000 per class); LSP's L2 norm (None: sqrt(H W C) * 6/255),
  # patch size and class separation. OPS has no settings.
  baseline = ml_collections.ConfigDict(dict(
      ar=ml_collections.ConfigDict(dict(eps=1.0, crop=4, min_response=config_dict.placeholder(float), max_rms=1.5,
                                        max_candidates=config_dict.placeholder(int))),
      lsp=ml_collections.ConfigDict(dict(eps=config_dict.placeholder(float), patch_size=8, class_sep=10.0)),
  ))

  victim = config_lib.model_config()
  victim.model = "resnet18"
  victim.epochs = 60
  victim.batch_size = 128
  victim.augment = "crop4,flip"
  victim.optimizer.lr = 0.1
  victim.optimizer.schedule = "cosine"

  evaluate = ml_collections.ConfigDict(dict(
      poison=config_dict.placeholder(str),  # a poison directory (a craft workdir or its poison/ subdirectory)
      poison_fraction=1.0,  # fraction of the training set that carries its perturbation
      seed=0,  # which examples carry it when poison_fraction < 1
      clean=True,  # also train the same victim on clean data
      # Where that clean victim trains; "" means <workdir>/clean. Point several evaluations with
      # the same victim recipe and dataset at one directory to train the clean victim once.
      clean_workdir="",
      # The poisoned images the victim trains on: "" x + delta in float (clipped to [0, 1]);
      # "round" stored as uint8, round(255 * clip(x + delta, 0, 1)); "floor" stored as the
      # reference code does, clip(255 * x + 255 * delta, 0, 255) truncated to uint8.
      quantize="",
      # Keep only the positive part of the perturbation, max(delta, 0), before it is added (the
      # EM reference's PoisonCIFAR10 clamps the noise to [0, 255]; see experiments/em.py).
      drop_negative=False,
      # Feature MI diagnostic: MI between each victim's penultimate features of the first n
      # clean training images and of their poisoned versions (Gaussian and KSG); 0: off.
      feature_mi_examples=2000,
  ))
  export = ml_collections.ConfigDict(dict(png=False, npz=False, preview=True))
  return config_lib.lock(ml_collections.ConfigDict(dict(
      data=config_lib.data_config(), surrogate=surrogate, craft=craft_section, pue=pue, baseline=baseline,
      victim=victim, defense=defenses.defense_config(), evaluate=evaluate, export=export,
      runtime=config_lib.runtime_config())))


def _module_of(model: Any) -> Any:
  return model.module if isinstance(model, models.Model) else model


def _module_key(model: Any) -> str:
  """What crafting hashes of a user's surrogate module: its ``repr`` (which lists its fields),
  plus a non-default ``input_norm``, a field the ``repr`` leaves out so that the hashes of
  modules built before it existed stay as they were."""
  module = _module_of(model)
  norm = getattr(module, "input_norm", "")
  return repr(module) if not norm else f"{module!r} input_norm={norm!r}"


def crafting_sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The sections crafting computes from: ``data``, ``surrogate``, ``craft``, and the
  method's own section when it has one (``pue``; ``baseline`` for ar, lsp and ops)."""
  if config.craft.method == "pue":
    return (*CRAFTING_SECTIONS, "pue")
  if config.craft.method in baselines.BASELINES:
    return (*CRAFTING_SECTIONS, "baseline")
  return CRAFTING_SECTIONS


def crafting_hash(config: ml_collections.ConfigDict, model: Any = None) -> str:
  """The hash of what crafting computes: ``config.phase_hash`` of ``data``, ``surrogate``
  and ``craft``, and of a user's surrogate module (its ``repr``, which lists its fields)
  when one is given."""
  extra = {} if model is None else {"user_model": _module_key(model)}
  return config_lib.phase_hash(config, crafting_sections(config), **extra)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a crafting config: its field names against ``unlearnable_config()``, then the
  values of its ``craft`` section."""
  config_lib.check_fields(config, unlearnable_config())
  c = config.craft
  if c.method not in METHODS:
    raise ValueError(f"craft.method: unknown unlearnable method {c.method!r}; use one of {METHODS}")
  if c.mode not in MODES:
    raise ValueError(f"craft.mode: unknown perturbation mode {c.mode!r}; use one of {MODES}")
  if c.method == "mi_ue" and c.mode != "sample":
    raise ValueError("craft.mode: MI-UE crafts sample-wise perturbations (craft.mode='sample')")
  if c.method == "ops" and c.mode != "sample":
    raise ValueError("craft.mode: OPS's pixel and colour are per class, but the perturbation depends on each image: "
                     "it is stored sample-wise (craft.mode='sample')")
  if c.method in baselines.BASELINES and AugmentConfig.parse(c.clean_augment).enabled:
    raise ValueError(f"craft.clean_augment: the {c.method} baseline is not crafted under augmentation; leave it empty")
  if not 0 < c.eps <= 1:
    raise ValueError(f"craft.eps must be in (0, 1] (pixel units), got {c.eps}")
  if c.max_iterations < 1:
    raise ValueError(f"craft.max_iterations must be >= 1, got {c.max_iterations}")
  if c.mode == "class" and not 0 < c.class_subset <= 1:
    raise ValueError(f"craft.class_subset must be in (0, 1], got {c.class_subset}")
  if c.reshuffle not in RESHUFFLE:
    raise ValueError(f"craft.reshuffle: unknown value {c.reshuffle!r}; use one of {RESHUFFLE}")
  if c.stop_on not in STOP_ON:
    raise ValueError(f"craft.stop_on: unknown value {c.stop_on!r}; use one of {STOP_ON}")
  if c.stop_on == "subset" and c.mode != "class":
    raise ValueError("craft.stop_on='subset' needs class-wise perturbations (craft.mode='class'), whose "
                     "craft.class_subset it refers to")
  if c.method == "pue":
    p = config.pue
    if not (p.sigma >= 0 and p.sigma_step > 0 and p.draws >= 1 and p.train_draws >= 1
            and 0 <= p.switch_accuracy <= 1):
      raise ValueError(f"pue: expected sigma >= 0, sigma_step > 0, draws >= 1, train_draws >= 1 and "
                       f"switch_accuracy in [0, 1], got {p.to_dict()}")
  if c.delta_init not in DELTA_INITS:
    raise ValueError(f"craft.delta_init: unknown delta_init {c.delta_init!r}; use one of {DELTA_INITS}")
  if AugmentConfig.parse(c.clean_augment).enabled and c.mode != "sample":
    raise ValueError("craft.clean_augment needs sample-wise perturbations (craft.mode='sample')")


def objective_of(config: ml_collections.ConfigDict) -> pgd.Objective:
  """The PGD objective of ``config.craft.method`` (``em`` and ``pue``: error-minimizing;
  ``mi_ue``)."""
  c = config.craft
  if c.method in ("em", "pue"):
    return pgd.error_minimizing_objective()
  return pgd.mi_ue_objective(c.mi_ue.temperature, c.mi_ue.exclude_self, c.mi_ue.zeta)


def reshuffles(config: ml_collections.ConfigDict, objective: pgd.Objective | None = None) -> bool:
  """Whether the perturbation passes of ``config`` visit their batches in a new order each
  outer iteration: ``craft.reshuffle`` "always", "never", or "auto" (when ``objective``,
  default ``objective_of(config)``, couples the examples of a batch; ``pgd.per_example``)."""
  mode = config.craft.reshuffle
  if mode == "auto":
    return not pgd.per_example(objective_of(config) if objective is None else objective)
  return mode == "always"


def order_key(seed: int, iteration: int) -> jax.Array:
  """The key of the pass order of outer iteration ``iteration`` (0-based) of a craft seeded
  ``seed`` (``surrogate.seed``), when it reshuffles (``reshuffles``)."""
  return _fold_in(_fold_in(jax.random.PRNGKey(seed), np.uint32(_ORDER_STREAM)), np.uint32(iteration))


def step_size(config: ml_collections.ConfigDict, iteration: int) -> float:
  """PGD step size of outer iteration ``iteration`` (0-based): constant, or linear from
  ``craft.pgd.step_size`` to ``craft.pgd.step_size_end`` over ``craft.max_iterations`` (MI-UE)."""
  c = config.craft
  start, end = c.pgd.step_size, c.pgd.get("step_size_end")
  if end is None or c.max_iterations == 1:
    return float(start)
  return float(start + (end - start) * iteration / (c.max_iterations - 1))


def classwise_positions(key: jax.Array, num_examples: int, fraction: float, batch_size: int) -> jax.Array:
  """A fixed random subset of ``fraction`` of the training positions, R x B (whole batches)."""
  n = int(round(fraction * num_examples)) // batch_size * batch_size
  if n < batch_size:
    raise ValueError(f"craft.class_subset={fraction} of {num_examples} examples is less than one PGD batch of "
                     f"{batch_size}")
  return jax.random.permutation(key, num_examples)[:n].reshape(-1, batch_size).astype(jnp.int32)


def craft(
    config: ml_collections.ConfigDict,
    workdir: os.PathLike | str,
    mesh=None,
    dataset: data.DeviceDataset | None = None,
    model: Any = None,
) -> dict[str, Any]:
  """Crafts the perturbations of ``config`` (an ``unlearnable_config()``) into ``workdir``
  (resuming if it holds a checkpoint of the same ``data``, ``surrogate`` and ``craft``
  sections); returns (and writes) the results summary.

  ``model``: the surrogate, a user's flax module (or ``models.Model``) instead of the zoo's
  ``config.surrogate.model``; it must output ``num_classes`` logits, and MI-UE needs its
  features too (see ``models.contract``). Its ``repr`` enters the crafting hash.
  """
  validate(config)
  s, c = config.surrogate, config.craft
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)
  n, k = ds.train.size, ds.num_classes
  if c.method in baselines.BASELINES:
    if model is not None:
      raise ValueError(f"model: the {c.method} baseline has no surrogate; pass no model")
    return _craft_baseline(config, workdir, ds)

  steps_per_epoch = n // s.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"surrogate.batch_size={s.batch_size} exceeds the {n} training examples")
  train_steps = c.train_steps or steps_per_epoch
  user_model = model
  model = models.as_model(models.from_config(s, k) if model is None else model)
  logits_spec, feats_spec = models.check_outputs(model, ds.example)
  if logits_spec.shape[-1] != k:
    raise ValueError(f"model: outputs {logits_spec.shape[-1]} logits, but {ds.name!r} has {k} classes")
  if c.method == "mi_ue" and feats_spec is None:
    raise ValueError("model: MI-UE needs the surrogate's features; the model returns logits only "
                     "(return (logits_BxK, features_BxD) from its __call__)")
  # The surrogate's schedule spans all outer iterations (MI-UE: cosine over its epochs).
  optimizer = train.make_optimizer(s.optimizer, train_steps, c.max_iterations)
  k_model, k_delta, k_subset, k_clean_aug = _seed_keys(jax.random.PRNGKey(s.seed))
  shape = (n if c.mode == "sample" else k, *ds.train.image_shape)
  sharding = ds.train.images.sharding if c.mode == "sample" else parallel.replicated(mesh)
  if c.delta_init == "zeros" and c.method != "random":  # the control is always uniform noise
    delta = jax.jit(_zeros, static_argnums=(0,), out_shardings=sharding)(shape)
  elif c.mode == "sample":
    init = jax.jit(pgd.init_delta, static_argnums=(1, 2), out_shardings=sharding)
    delta = init(k_delta, shape, c.eps, ds.train.images)
  else:
    delta = jax.jit(pgd.init_delta, static_argnums=(1, 2), out_shardings=sharding)(k_delta, shape, c.eps)
  user = None if user_model is None else {"user_model": _module_key(model)}
  phase = run.Phase(workdir, "craft", config, dataset=ds, total=c.max_iterations, unit="iter",
                    sections=crafting_sections(config), hash_extra=user, record=user)
  if c.method == "random":  # the papers' control: the initial uniform noise, uncrafted, no surrogate
    return _finish(config, phase, ds, delta, iteration=0, done=False,
                   record={"perturbed_train_accuracy": None, "clean_train_accuracy": None}, surrogate_digest=None)

  noise_train = noise_pgd = None
  if c.method == "pue":
    noise_train = train.WeightNoise.ramp(config.pue.sigma, config.pue.sigma_step, config.pue.train_draws)
    noise_pgd = train.WeightNoise.ramp(config.pue.sigma, config.pue.sigma_step, config.pue.draws)
  chunks = {robust: train.make_train_chunk(model, train.ce_loss(s.label_smoothing), optimizer, mesh, s.batch_size,
                                           AugmentConfig.parse(s.augment), loop=s.loop or None,
                                           weight_noise=noise_train if robust else None)
            for robust in ((False, True) if noise_train else (False,))}
  eval_fn = train.make_eval_fn(model, mesh, s.eval_batch_size, k)
  objective = objective_of(config)
  clean_augment = AugmentConfig.parse(c.clean_augment)
  shuffle = reshuffles(config, objective)
  stop_split = None  # the split the stop rule measures (None: the perturbed training set)
  def noise_key(iteration):
    return _fold_in(_fold_in(jax.random.PRNGKey(s.seed), np.uint32(_WEIGHT_NOISE_STREAM)), np.uint32(iteration))

  if c.mode == "sample":
    sample_passes = {robust: pgd.make_samplewise_pass(model, objective, mesh, c.pgd.batch_size, c.pgd.steps,
                                                      loop=c.pgd.loop or None,
                                                      weight_noise=noise_pgd if robust else None, donate=True)
                     for robust in chunks}

    def perturb(variables, split, eps, alpha, key, iteration, robust):
      order = order_key(s.seed, iteration) if shuffle else None
      return sample_passes[robust](variables, split, eps, alpha, key, order_key=order,
                                   noise_key=noise_key(iteration) if robust else None)
  else:
    positions = classwise_positions(k_subset, n, c.class_subset, c.pgd.batch_size)
    class_passes = {robust: pgd.make_classwise_pass(model, objective, mesh, c.pgd.batch_size, c.pgd.steps, k,
                                                    loop=c.pgd.loop or None,
                                                    weight_noise=noise_pgd if robust else None)
                    for robust in chunks}
    if c.stop_on == "subset":
      stop_split = _subset_split(ds.train, positions.reshape(-1))

    def perturb(variables, split, eps, alpha, key, iteration, robust):
      rows = positions
      if shuffle:  # the same subset, re-batched in a new order
        flat = positions.reshape(-1)
        rows = flat[jax.random.permutation(order_key(s.seed, iteration), flat.shape[0])].reshape(positions.shape)
      return class_passes[robust](variables, split, rows, eps, alpha,
                                  noise_key=noise_key(iteration) if robust else None)
  every = max(1, config.runtime.checkpoint.get("every_iterations", 1))

  surrogate = train.init_state(model, optimizer, ds.example, k_model, mesh)
  record: dict[str, Any] = {}
  with phase:
    # Scalars as global (replicated) arrays: a multi-process checkpoint saves nothing host-local.
    rep = parallel.replicated(mesh)
    state = phase.restore({"surrogate": surrogate, "delta": delta, "iteration": parallel.put(np.int32(0), rep),
                           "done": parallel.put(np.bool_(False), rep), "robust": parallel.put(np.bool_(False), rep)})
    surrogate, delta, done = state["surrogate"], state["delta"], bool(state["done"])
    robust = bool(state["robust"])  # PUE: weight noise switched on
    iteration = phase.start(int(state["iteration"]), desc=f"{c.method}-{c.mode}")
    while not done and iteration < c.max_iterations:
      split = ds.train.replace(delta=delta, delta_mode=c.mode, clean_augment=clean_augment)
      # Surrogate phase: train_steps steps continuing the epoch (chunks never cross an epoch).
      remaining, ms = train_steps, []
      while remaining:
        m = min(remaining, steps_per_epoch - int(surrogate.step) % steps_per_epoch)
        surrogate, metrics = chunks[robust](surrogate, split, m)
        ms.append(jax.device_get(metrics))
        remaining -= m
      # Perturbation phase.
      alpha = step_size(config, iteration)
      eps_alpha = jax.device_put((np.float32(c.eps), np.float32(alpha)))  # from the host: no program to make them
      delta = perturb(train.variables_of(surrogate), split, *eps_alpha, _fold_in(k_clean_aug, np.uint32(iteration)),
                      iteration, robust)
      iteration += 1
      was_robust = robust
      acc = float(eval_fn(surrogate, ds.train.replace(delta=delta, delta_mode=c.mode))["accuracy"])
      record = {"surrogate_loss": float(np.mean(np.concatenate([m["loss"] for m in ms]))),
                "surrogate_accuracy": float(np.mean(np.concatenate([m["accuracy"] for m in ms]))),
                "perturbed_train_accuracy": acc, "step_size": alpha,
                "delta_linf": float(_linf(delta)) * 255.0}
      if stop_split is not None:  # stop_on="subset": the surrogate's accuracy on the perturbed subset
        acc = float(eval_fn(surrogate, stop_split.replace(delta=delta, delta_mode=c.mode))["accuracy"])
        record["subset_accuracy"] = acc
      done = bool(c.stop_error) and (1.0 - acc) < c.stop_error and (c.method != "pue" or was_robust)
      if c.method == "pue":
        robust = robust or acc > config.pue.switch_accuracy
        record["robust"] = int(was_robust)
      phase.log(iteration, advance=1, postfix={"acc": f"{acc:.4f}"}, **record)
      phase.checkpoint(iteration, {"surrogate": surrogate, "delta": delta,
                                   "iteration": parallel.put(np.int32(iteration), rep),
                                   "done": parallel.put(np.bool_(done), rep),
                                   "robust": parallel.put(np.bool_(robust), rep)},
                       save=done or iteration % every == 0 or iteration == c.max_iterations)

  if not record:  # resumed after the end: report the stored state
    acc = float(eval_fn(surrogate, ds.train.replace(delta=delta, delta_mode=c.mode))["accuracy"])
    record = {"perturbed_train_accuracy": acc}
  # What the noise carries for the surrogate: its accuracy on the same images without it.
  record["clean_train_accuracy"] = float(eval_fn(surrogate, ds.train)["accuracy"])
  return _finish(config, phase, ds, delta, iteration, done, record, runner.params_digest(surrogate.params))


def baseline_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The generator's keywords of the baseline ``config.craft.method`` (``baselines.generate``)
  from the ``baseline`` section (unset fields left to the generator's defaults)."""
  method = config.craft.method
  if method == "ops":
    return {}
  section = config.baseline[method].to_dict()
  return {key: value for key, value in section.items() if value is not None}


def _craft_baseline(config: ml_collections.ConfigDict, workdir: os.PathLike | str,
                    ds: data.DeviceDataset) -> dict[str, Any]:
  """A surrogate-free baseline written as a craft's poison: no loop, no checkpoint (it is
  made again, identically, by a second run), the same poison directory, manifest and
  results as ``random``'s."""
  c = config.craft
  phase = run.Phase(workdir, "craft", config, dataset=ds, total=1, unit="iter", sections=crafting_sections(config))
  try:
    delta, record, stats = baselines.generate(c.method, ds, seed=config.surrogate.seed, mode=c.mode,
                                              **baseline_kwargs(config))
  except ValueError as e:  # a setting of the baseline section: name it as the config does
    field = str(e).split(":", 1)[0]
    if c.method != "ops" and field in config.baseline[c.method]:
      raise ValueError(f"baseline.{c.method}.{e}") from None
    raise
  phase.write_config()
  poison_dir = phase.workdir / "poison"
  manifest = None
  if phase.main:
    recorded = {name: config[name].to_dict() for name in crafting_sections(config) if name != "craft"}
    manifest = poison_io.save_poison(poison_dir, delta, c.mode, ds, config={**recorded, "craft": record},
                                     stats={"iterations": 0, "stopped_early": False, **stats})
    if config.export.preview and stats["max_abs"] > 0:
      poison_io.save_preview(poison_dir / "preview.png", ds, delta, c.mode, stats["max_abs"])
  return phase.finish({
      "dataset": data.describe(ds),
      "method": c.method,
      "mode": c.mode,
      "eps": record["eps"],
      "norm": record["norm"],
      "iterations": 0,
      "stopped_early": False,
      "perturbed_train_accuracy": None,
      "clean_train_accuracy": None,
      "delta_sha256": manifest["files"]["delta.npy"] if manifest else None,
      "surrogate_params_sha256": None,
      "poison": str(poison_dir),
  })


def _subset_split(split: data.DeviceSplit, positions: jax.Array) -> data.DeviceSplit:
  """The examples of ``split`` at ``positions`` (its images, labels and ids; no perturbation),
  laid out as ``split``'s images are."""
  take = jax.jit(_take, out_shardings=(split.images.sharding, split.labels.sharding, split.ids.sharding))
  images, labels, ids = take(split.images, split.labels, split.ids, positions)
  return data.DeviceSplit(images=images, labels=labels, ids=ids)


# Module-level functions, jitted where used: one program per shape however many crafts run
# in the process (a lambda jitted inside ``craft`` would be traced and compiled anew each time).


def _take(images, labels, ids, positions):
  return images[positions], labels[positions], ids[positions]


def _zeros(shape):
  return jnp.zeros(shape, jnp.float32)


@jax.jit
def _seed_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The model, initial-perturbation and class-subset keys (a 3-way split of the seed's key)
  and the clean-augmentation stream's key, in one program."""
  k_model, k_delta, k_subset = jax.random.split(key, 3)
  return k_model, k_delta, k_subset, jax.random.fold_in(key, _CLEAN_AUGMENT_STREAM)


@jax.jit
def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  """``jax.random.fold_in`` with ``data`` an argument (uint32): one program for every value."""
  return jax.random.fold_in(key, data)


@jax.jit
def _linf(delta: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(delta))


def _finish(config, phase: run.Phase, ds, delta, iteration, done, record, surrogate_digest) -> dict[str, Any]:
  """Saves the poison (and its preview) and writes ``results.json``."""
  c = config.craft
  poison_dir = phase.workdir / "poison"
  manifest = None
  phase.write_config()
  delta_host = parallel.to_host(delta)  # a collective when delta is split over processes: every process
  if phase.main:
    crafted_from = {name: config[name].to_dict() for name in crafting_sections(config)}
    manifest = poison_io.save_poison(poison_dir, delta_host, c.mode, ds, config=crafted_from,
                                     stats={"iterations": iteration, "stopped_early": done, **record})
    if config.export.preview:
      poison_io.save_preview(poison_dir / "preview.png", ds, delta_host, c.mode, c.eps)
  return phase.finish({
      "dataset": data.describe(ds),
      "method": c.method,
      "mode": c.mode,
      "eps": c.eps,
      "iterations": iteration,
      "stopped_early": done,
      "perturbed_train_accuracy": record["perturbed_train_accuracy"],
      "clean_train_accuracy": record["clean_train_accuracy"],
      "delta_sha256": manifest["files"]["delta.npy"] if manifest else None,
      "surrogate_params_sha256": surrogate_digest,
      "poison": str(poison_dir),
  })
