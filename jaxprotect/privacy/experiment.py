"""The privacy experiment behind ``jaxprotect mia``: membership inference against networks
trained on condensed data (Dong, Zhao, Lyu, "Privacy for Free: How does Dataset
Condensation Help Privacy?", ICML 2022), with the baselines of the critique (Carlini,
Feldman, Nasr, "No Free Lunch in Privacy for Free", arXiv 2209.14987): a random real
subset of the synthetic set's size, and the membership of the real images that
initialise condensation.

The design (``run_mia``):

* **Pool and masks.** The candidate pool is the first (or a random) ``mia.pool_size``
  training examples; ``mia.keep_masks`` gives each of the ``M = mia.num_models`` targets
  a random half of it (its IN half), every example IN for exactly ``M / 2`` targets.
* **One training set per target and set type** (``mia.sets``), built from its IN half
  only: ``real`` = the IN half itself; ``random`` = ``ipc`` random IN examples of each
  class (stratified; the synthetic sets' size ``ipc x K``); ``dsa`` / ``dm`` / ``dc`` =
  ``condense.condense`` run on the IN half (real initialisation records the real images
  it started from, ``init_ids``). All images live in one input space: per-channel
  standardisation by the training split's own mean and standard deviation
  (``condense.Normalization.of``; the reference's dataset constants), in which the pool
  and test images are queried as well.
* **The targets of a set type train together**: the M sets have equal sizes, so they are
  stacked (``M x S x H x W x C``) and trained by one vmapped program
  (``condense.train_on_sets``), ``mia.models_per_chunk`` at a time. Every set type uses
  the same recipe (the condensation literature's evaluation, ``evaluate_synthetic``'s):
  ``target.epochs`` (+1) passes of SGD (``target.optimizer``: lr, momentum, weight
  decay; lr x0.1 after half), batch ``target.batch_size``, the DSA augmentation
  ``target.augment``, fresh networks from ``fold_in(PRNGKey(target.seed), m)`` -- the same
  keys for every set type, so rows differ only by their data. The real set has more
  images, hence more steps per epoch.
* **Attacks, each target in turn** (leave-one-out over the M models of the same set
  type): the loss attack, the global threshold, LiRA online / offline with per-example or
  one fixed variance (``mia.lira_leave_one_out``) on the logits of every model on the
  whole pool and its mirror images (``mia.flip``); ``mia.mia_metrics`` over all targets'
  scores together (AUC, balanced accuracy, TPR at 1% / 0.1% FPR). Every score: higher =
  more likely a member.
* **Used images.** For ``random``, a target's chosen subset; for condensed sets with real
  initialisation, its ``init_ids``: these images (members) against the target's OUT
  examples (non-members), with the same scores (the offline, global and loss scores need
  no IN models; the online ones take IN models over the half, most of which did not use
  the image).

Resumable cell by cell: each set type is a ``run.Phase`` in ``workdir/<set>``. Positions
``1..M`` are the condensations (condensed sets; each model's synthetic set checkpointed as
it finishes), then one position per trained model (checkpointed chunk by chunk). A
finished cell (``<set>/results.json`` + ``<set>/cell.npz`` of the same config hash) is
read back, not recomputed; its hash covers ``data``, ``target``, the hashed ``mia``
fields and only its own method's condensation settings, so adding a set type or
changing another method's settings keeps it. At the end: ``results.json``, ``table.md``,
``table.json`` and ``roc_<set>.png`` in ``workdir``.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprotect import checks, config as config_lib, data, models, parallel, run
from jaxprotect.privacy import condense as condense_lib, dsa, mia, shadow

__all__ = ["CONDENSED", "SETS", "privacy_config", "report_markdown", "run_mia"]

SETS = ("real", "random", "dsa", "dm", "dc")
CONDENSED = ("dsa", "dm", "dc")
POOLS = ("first", "random")
# attack name -> (lira_leave_one_out attack, fixed variance, the fewest models it needs:
# leave-one-out leaves M - 1 models with M/2 - 1 IN (or OUT) models for some examples)
_LIRA = {"online": ("online", False, 6), "online_fixed": ("online", True, 4), "offline": ("offline", False, 6),
         "offline_fixed": ("offline", True, 4), "global": ("global", False, 2)}
ATTACKS = ("loss", *_LIRA)


# ---------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------

def privacy_config() -> ml_collections.ConfigDict:
  """``jaxprotect mia``: ``data``, ``target`` (the attacked networks and their recipe),
  ``condense``, ``mia`` and ``runtime``, with reference-like defaults (ConvNet width 128,
  ipc 10, the reference's iterations; ``experiments/privacy.py`` holds the variants).
  Locked."""
  c = ml_collections.ConfigDict()
  c.data = config_lib.data_config()
  t = config_lib.model_config()
  t.model = "convnet"
  t.model_kwargs = ml_collections.ConfigDict(dict(width=128))
  t.epochs = 300  # passes (+1) over each target's training set, whatever its size
  t.batch_size = 256
  t.eval_batch_size = 500  # pool and test images per query batch
  # The DSA augmentation of training (dsa.parse_strategy): "auto" = dsa.default_strategy(channels), "none"
  t.augment = "auto"
  # The evaluation recipe of the condensation literature: SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1
  # after half of the epochs (built in; only lr, momentum and weight_decay of this section are read).
  t.optimizer.lr = 0.01
  t.optimizer.momentum = 0.9
  t.optimizer.weight_decay = 5e-4
  t.optimizer.schedule = "constant"  # (not read: the drop after half is part of the recipe)
  t.loop = ""  # "scan" or "host" (one jitted epoch per call); "": host on CPU, scan elsewhere
  c.target = t
  c.condense = ml_collections.ConfigDict(dict(
      ipc=10,  # synthetic images per class (also the random subset's per-class count)
      init="",  # "": each method's default (dc: noise; dsa, dm: real images), or "real" / "noise" for all
      batch_real=256,  # real images per class per matching step (at most the smallest class of a half pool)
      strategy="auto",  # DSA strategy of dsa/dm (dsa.default_strategy for the channels)
      lr_net=0.01,  # dc/dsa inner network training
      seed=0,
      dc=ml_collections.ConfigDict(dict(iterations=1000, lr_img=0.1, outer_loop=0, inner_loop=0)),  # 0: LOOPS[ipc]
      dsa=ml_collections.ConfigDict(dict(iterations=1000, lr_img=0.1, outer_loop=0, inner_loop=0)),
      dm=ml_collections.ConfigDict(dict(iterations=20000, lr_img=1.0)),
  ))
  c.mia = ml_collections.ConfigDict(dict(
      pool_size=10000,  # candidate pool: even, at most the training split
      pool="first",  # "first": the first pool_size training examples; "random": a random draw (seed)
      num_models=16,  # M targets, even; each in turn is attacked with the others as shadow models
      sets=("real", "random", "dsa", "dm"),  # among SETS
      flip=True,  # query the mirror image too
      seed=0,  # pool draw, IN halves, random subsets
      models_per_chunk=0,  # targets trained together (a checkpoint after each chunk); 0: all M
  ))
  c.runtime = config_lib.runtime_config()
  return config_lib.lock(c)


def _choice(value: Any, name: str, accepted) -> str:
  if not isinstance(value, str) or value not in accepted:
    raise ValueError(f"{name}: expected one of {', '.join(repr(a) for a in accepted)}, got {value!r}")
  return value


def _validate(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Structure checks of every field the experiment reads (ValueError naming the field);
  returns the parsed values."""
  config_lib.check_fields(config, privacy_config())
  m, c, t = config.mia, config.condense, config.target
  sets = tuple(m.sets) if isinstance(m.sets, (tuple, list)) else (m.sets,)
  if not sets:
    raise ValueError(f"mia.sets: expected at least one of {', '.join(repr(s) for s in SETS)}, got ()")
  for s in sets:
    _choice(s, "mia.sets", SETS)
  if len(set(sets)) != len(sets):
    raise ValueError(f"mia.sets: expected distinct set types, got {sets}")
  num_models = m.num_models
  if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models <= 0 or num_models % 2:
    raise ValueError(f"mia.num_models: expected an even number > 0 (each pool example IN for exactly half of the "
                     f"targets), got {num_models!r}")
  pool_size = checks.check_positive_int(m.pool_size, "mia.pool_size", minimum=2)
  if pool_size % 2:
    raise ValueError(f"mia.pool_size: expected an even number (every target trains on exactly half of the pool), "
                     f"got {pool_size}")
  _choice(m.pool, "mia.pool", POOLS)
  checks.check_positive_int(m.models_per_chunk, "mia.models_per_chunk", minimum=0)
  ipc = checks.check_positive_int(c.ipc, "condense.ipc")
  if c.init not in ("", *condense_lib.INITS):
    raise ValueError(f"condense.init: expected '' (each method's default) or one of "
                     f"{', '.join(repr(i) for i in condense_lib.INITS)}, got {c.init!r}")
  checks.check_positive_int(c.batch_real, "condense.batch_real")
  for method in CONDENSED:
    checks.check_positive_int(c[method].iterations, f"condense.{method}.iterations", minimum=0)
    if not c[method].lr_img > 0:
      raise ValueError(f"condense.{method}.lr_img: expected a value > 0, got {c[method].lr_img}")
    if method != "dm":
      checks.check_positive_int(c[method].outer_loop, f"condense.{method}.outer_loop", minimum=0)
      checks.check_positive_int(c[method].inner_loop, f"condense.{method}.inner_loop", minimum=0)
      if c[method].outer_loop == 0 and c[method].inner_loop:
        raise ValueError(f"condense.{method}.outer_loop: expected > 0 when inner_loop is set, got 0")
      if c[method].outer_loop == 0 and method in sets and ipc not in condense_lib.LOOPS:
        raise ValueError(f"condense.{method}.outer_loop: the reference defines loops for ipc in "
                         f"{sorted(condense_lib.LOOPS)}; set outer_loop and inner_loop for ipc {ipc}")
  if c.strategy != "auto":
    try:
      dsa.parse_strategy(c.strategy)
    except ValueError as e:
      raise ValueError(f"condense.strategy: {e}") from None
  checks.check_positive_int(t.epochs, "target.epochs", minimum=0)
  checks.check_positive_int(t.batch_size, "target.batch_size")
  checks.check_positive_int(t.eval_batch_size, "target.eval_batch_size")
  if t.augment != "auto":
    try:
      dsa.parse_strategy(t.augment)
    except ValueError as e:
      raise ValueError(f"target.augment: expected a DSA strategy (e.g. 'crop_cutout_flip_scale_rotate'), 'auto' "
                       f"or 'none': {e}") from None
  if t.optimizer.name != "sgd" or t.optimizer.nesterov or t.optimizer.grad_clip or t.label_smoothing:
    raise ValueError("target.optimizer: this experiment trains by the condensation literature's recipe (SGD without "
                     "nesterov, gradient clipping or label smoothing; lr, momentum, weight_decay are read), got "
                     f"name={t.optimizer.name!r}, nesterov={t.optimizer.nesterov}, grad_clip={t.optimizer.grad_clip}, "
                     f"label_smoothing={t.label_smoothing}")
  if t.loop not in ("", "scan", "host"):
    raise ValueError(f"target.loop: expected '', 'scan' or 'host', got {t.loop!r}")
  return {"sets": sets, "num_models": int(num_models), "pool_size": pool_size, "ipc": ipc}


# ---------------------------------------------------------------------------------------
# The pool, the masks and each target's training set
# ---------------------------------------------------------------------------------------

def _pool(host: data.HostDataset, pool_size: int, pool: str, seed: int) -> np.ndarray:
  n = len(host.train)
  if pool_size > n:
    raise ValueError(f"mia.pool_size: expected at most the {n} training examples of {host.name!r}, got {pool_size}")
  if pool == "first":
    return np.arange(pool_size)
  return np.sort(np.random.default_rng([seed, 0]).choice(n, pool_size, replace=False))


def _check_halves(keep_MxN: np.ndarray, labels_N: np.ndarray, num_classes: int, ipc: int, sets) -> None:
  """Every target's IN half must hold ``ipc`` examples of every class (random subsets and
  condensation)."""
  if not any(s != "real" for s in sets):
    return
  counts_MxK = np.stack([np.bincount(labels_N[row], minlength=num_classes) for row in keep_MxN])
  m, k = np.unravel_index(np.argmin(counts_MxK), counts_MxK.shape)
  if counts_MxK[m, k] < ipc:
    raise ValueError(f"condense.ipc: expected at most {int(counts_MxK[m, k])} (the fewest examples of one class in "
                     f"a target's half pool: class {int(k)} of target {int(m)}), got {ipc}; use a larger "
                     f"mia.pool_size or a smaller ipc")


def _random_subset(keep_N: np.ndarray, labels_N: np.ndarray, num_classes: int, ipc: int, seed: int,
                   model: int) -> np.ndarray:
  """``ipc`` random IN examples of each class, class-major (pool positions)."""
  rng = np.random.default_rng([seed, 1, model])
  return np.concatenate([np.sort(rng.choice(np.flatnonzero(keep_N & (labels_N == k)), ipc, replace=False))
                         for k in range(num_classes)])


def _condense_options(c: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  opts: dict[str, Any] = dict(batch_real=c.batch_real, lr_img=c[method].lr_img, strategy=c.strategy)
  if method != "dm":
    opts["lr_net"] = c.lr_net
    if c[method].outer_loop:
      opts["loops"] = (c[method].outer_loop, c[method].inner_loop)
  if c.init:
    opts["init"] = c.init
  return opts


def _cell_hash_extra(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  m = config.mia.to_dict()
  for unhashed in ("sets", "models_per_chunk"):
    m.pop(unhashed)
  extra: dict[str, Any] = {"set": name, "mia": m}
  c = config.condense
  if name == "random":
    extra["condense"] = {"ipc": c.ipc}
  elif name in CONDENSED:
    extra["condense"] = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
                         for k, v in c.items() if k not in set(CONDENSED) - {name}}
  return extra


# ---------------------------------------------------------------------------------------
# Queries: every model's logits on a set of images (host loop over batches)
# ---------------------------------------------------------------------------------------

def _batch_logits(model, params_P, x_BxHxWxC, flip: bool):
  xq = jnp.concatenate([x_BxHxWxC, x_BxHxWxC[:, :, ::-1, :]]) if flip else x_BxHxWxC
  out = jax.vmap(lambda p: models.as_model(model).apply({"params": p}, xq, train=False)[0])(params_P)
  return out.astype(jnp.float32).reshape(out.shape[0], 2 if flip else 1, x_BxHxWxC.shape[0], out.shape[-1])


_BATCH_LOGITS = jax.jit(_batch_logits, static_argnums=(0, 3))


def _logits(model, params_P, images_NxHxWxC: jax.Array, batch: int, flip: bool) -> np.ndarray:
  """float32 ``P x Q x N x K`` on the host; the last batch is padded."""
  n = images_NxHxWxC.shape[0]
  batch = min(batch, n)
  out = []
  for lo in range(0, n, batch):
    x = images_NxHxWxC[lo:lo + batch]
    if x.shape[0] < batch:
      x = jnp.concatenate([x, jnp.zeros((batch - x.shape[0], *x.shape[1:]), x.dtype)])
    out.append(np.asarray(_BATCH_LOGITS(model, params_P, x, flip)))
  return np.concatenate(out, axis=2)[:, :, :n]


# ---------------------------------------------------------------------------------------
# One cell: the M targets of one set type
# ---------------------------------------------------------------------------------------

def _cell(config, name: str, ctx: dict[str, Any], workdir: pathlib.Path) -> dict[str, Any]:
  """Trains (after condensing, for a condensed set) the M targets of set type ``name`` and
  returns their pool logits, test accuracies and used images; resumes from the cell's
  checkpoints, or reads a finished cell back."""
  cell_dir = workdir / name
  c, t = config.condense, config.target
  m_total, k = ctx["num_models"], ctx["num_classes"]
  keep, pool_x, pool_y, norm = ctx["keep"], ctx["pool_x"], ctx["pool_y"], ctx["norm"]
  ipc = ctx["ipc"]
  extra = _cell_hash_extra(config, name)
  phase_hash = config_lib.phase_hash(config, ("data", "target"), **extra)
  finished = _read_cell(cell_dir, phase_hash)
  if finished is not None:
    return finished
  condensed = name in CONDENSED
  offset = m_total if condensed else 0
  size = {"real": ctx["pool_size"] // 2}.get(name, ipc * k)
  q = 2 if config.mia.flip else 1
  n = pool_y.shape[0]
  rep = parallel.replicated(ctx["mesh"])
  host_state: dict[str, np.ndarray] = {
      "done_condense": np.int32(0), "done_train": np.int32(0),
      "logits": np.zeros((m_total, q, n, k), np.float32), "test_correct": np.zeros((m_total,), np.int32)}
  if condensed:
    host_state["images"] = np.zeros((m_total, size, *pool_x.shape[1:]), np.float32)
    host_state["init_ids"] = np.full((m_total, size), -1, np.int32)
    host_state["losses"] = np.zeros((m_total,), np.float32)
  phase = run.Phase(cell_dir, f"mia-{name}", config, dataset=ctx["dataset"], total=offset + m_total, unit="model",
                    sections=("data", "target"), hash_extra=extra)
  assert phase.config_hash == phase_hash
  model = ctx["model"]
  with phase:
    restored = phase.restore(jax.tree.map(lambda a: parallel.put(a, rep), host_state))
    st = {key: np.array(parallel.to_host(v)) for key, v in restored.items()}
    done_c, done_t = int(st["done_condense"]), int(st["done_train"])
    phase.start((done_c if condensed else 0) + done_t, desc=f"mia {name}")

    def save(position):
      phase.checkpoint(position, jax.tree.map(lambda a: parallel.put(a, rep), st))

    if condensed:
      options = _condense_options(c, name)
      base = jax.random.fold_in(jax.random.PRNGKey(c.seed), SETS.index(name))
      for m in range(done_c, m_total):
        idx = np.flatnonzero(keep[m])
        r = condense_lib.condense(name, pool_x[idx], pool_y[idx], ipc, c[name].iterations,
                                  jax.random.fold_in(base, m), num_classes=k, real_ids=idx, normalization=norm,
                                  model=model, **options)
        st["images"][m] = np.asarray(r.images)
        if r.init_ids is not None:
          st["init_ids"][m] = r.init_ids
        st["losses"][m] = float(r.losses[-1]) if r.losses.size else math.nan
        st["done_condense"] = np.int32(m + 1)
        phase.log(m + 1, advance=1, condense_loss=float(st["losses"][m]))
        save(m + 1)
        condense_lib.clear_compiled()  # each half's class sizes compile their own programs
    per = config.mia.models_per_chunk or m_total
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(t.seed), i) for i in range(m_total)])
    keys = jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys
    for lo in range(done_t, m_total, per):
      hi = min(lo + per, m_total)
      images, labels = _training_sets(name, st, ctx, lo, hi)
      params = condense_lib.train_on_sets(
          images, labels, keys[lo:hi], model=model, epochs=t.epochs, batch_train=t.batch_size, lr=t.optimizer.lr,
          momentum=t.optimizer.momentum, weight_decay=t.optimizer.weight_decay, strategy=ctx["augment"],
          num_classes=k, loop=t.loop or None)
      st["logits"][lo:hi] = _logits(model, params, ctx["pool_z"], t.eval_batch_size, config.mia.flip)
      test_logits = _logits(model, params, ctx["test_z"], t.eval_batch_size, False)[:, 0]
      st["test_correct"][lo:hi] = (test_logits.argmax(-1) == ctx["test_y"][None]).sum(-1)
      st["done_train"] = np.int32(hi)
      phase.log(offset + hi, advance=hi - lo,
                test_accuracy=float(st["test_correct"][lo:hi].mean() / ctx["test_y"].shape[0]))
      save(offset + hi)
  used = _used(name, st, ctx)
  cell = {"logits": st["logits"], "test_accuracy": st["test_correct"] / ctx["test_y"].shape[0], "used": used,
          "images_per_model": size}
  if condensed:
    cell["condense_loss"] = st["losses"]
  np.savez(cell_dir / "cell.tmp.npz", **{key: v for key, v in cell.items() if v is not None})
  os.replace(cell_dir / "cell.tmp.npz", cell_dir / "cell.npz")
  phase.finish({"set": name, "images_per_model": size, "num_models": m_total,
                "test_accuracy": [float(a) for a in cell["test_accuracy"]]})  # with the phase's seconds
  return cell


def _read_cell(cell_dir: pathlib.Path, phase_hash: str) -> dict[str, Any] | None:
  import json  # noqa: PLC0415

  results, arrays = cell_dir / "results.json", cell_dir / "cell.npz"
  if not (results.is_file() and arrays.is_file()):
    return None
  if json.loads(results.read_text()).get("config_hash") != phase_hash:
    raise ValueError(f"{cell_dir} holds a finished cell of another config (config hash); use another workdir")
  with np.load(arrays) as z:
    cell = {key: z[key] for key in z.files}
  cell.setdefault("used", None)
  cell["images_per_model"] = int(cell["images_per_model"])
  return cell


def _training_sets(name: str, st: dict[str, np.ndarray], ctx: dict[str, Any], lo: int, hi: int):
  """Models lo..hi-1: images ``P x S x H x W x C`` in the networks' space and labels."""
  keep, pool_z, pool_y = ctx["keep"], ctx["pool_z"], ctx["pool_y"]
  if name in CONDENSED:
    labels = np.asarray(condense_lib.synthetic_labels(ctx["num_classes"], ctx["ipc"]))
    return jnp.asarray(st["images"][lo:hi]), jnp.asarray(np.broadcast_to(labels, (hi - lo, labels.size)))
  rows = [np.flatnonzero(keep[m]) if name == "real" else ctx["subsets"][m] for m in range(lo, hi)]
  idx = jnp.asarray(np.stack(rows))
  return pool_z[idx], jnp.asarray(pool_y[np.stack(rows)])


def _used(name: str, st: dict[str, np.ndarray], ctx: dict[str, Any]) -> np.ndarray | None:
  """bool ``M x N``: the pool images each target's training set was made from (random:
  its subset; condensed with real initialisation: its init images); None for the real
  set (every IN image) and noise initialisation."""
  m_total, n = ctx["keep"].shape
  if name == "random":
    used = np.zeros((m_total, n), bool)
    for m, rows in enumerate(ctx["subsets"]):
      used[m, rows] = True
    return used
  if name in CONDENSED and np.all(st["init_ids"] >= 0):
    used = np.zeros((m_total, n), bool)
    for m in range(m_total):
      used[m, st["init_ids"][m]] = True
    return used
  return None


# ---------------------------------------------------------------------------------------
# Attacks and metrics
# ---------------------------------------------------------------------------------------

def _scores(logits_MxQxNxK: np.ndarray, labels_N: np.ndarray, keep_MxN: np.ndarray) -> dict[str, np.ndarray]:
  """Every attack's leave-one-out scores ``M x N`` (higher = more likely a member); an
  attack that needs more models than M is left out."""
  m = keep_MxN.shape[0]
  stats = shadow.shadow_statistics(logits_MxQxNxK, labels_N)
  out = {"loss": np.asarray(mia.loss_attack_scores(logits_MxQxNxK, labels_N), np.float64).mean(axis=1)}
  for name, (attack, fixed, need) in _LIRA.items():
    if m >= need:
      out[name] = mia.lira_leave_one_out(stats, keep_MxN, attack, fixed)[0]
  return out


def _metrics(scores: dict[str, np.ndarray], member_MxN: np.ndarray, select_MxN: np.ndarray | None = None):
  """Per attack: ``mia.mia_metrics`` over all targets' scores pooled, and ``per_target_auc``
  (each target's own AUC over its members and non-members)."""
  select_MxN = np.ones_like(member_MxN, bool) if select_MxN is None else select_MxN
  out = {}
  for name, s in scores.items():
    out[name] = mia.mia_metrics(s[select_MxN], member_MxN[select_MxN])
    out[name]["per_target_auc"] = [mia.auc(s[m][select_MxN[m]], member_MxN[m][select_MxN[m]])
                                   for m in range(s.shape[0])]
  return out


# The pairs of set types compared target by target (first minus second), when both ran.
COMPARISONS = (("dm", "random"), ("dsa", "random"), ("dc", "random"), ("real", "random"), ("dm", "real"),
               ("dsa", "real"))
CONFIDENCE = 0.95


def paired_interval(a: Any, b: Any, confidence: float = CONFIDENCE) -> dict[str, float]:
  """Mean of ``a - b`` over paired values (the same targets) with its Student-t interval.
  The leave-one-out targets share shadow models, so their AUCs are not independent and
  the interval is a guide, not an exact test."""
  from scipy import stats as sps  # noqa: PLC0415

  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = d.size
  mean = float(d.mean())
  half = float(sps.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
  verdict = "higher" if mean - half > 0 else "lower" if mean + half < 0 else "inconclusive"
  return {"diff": mean, "low": mean - half, "high": mean + half, "n": n, "verdict": verdict}


def _comparisons(sets: dict[str, Any]) -> list[dict[str, Any]]:
  out = []
  for a, b in COMPARISONS:
    if a not in sets or b not in sets:
      continue
    for attack in ("loss", "online_fixed", "offline"):
      if attack in sets[a]["attacks"] and attack in sets[b]["attacks"]:
        out.append({"a": a, "b": b, "attack": attack, **paired_interval(
            sets[a]["attacks"][attack]["per_target_auc"], sets[b]["attacks"][attack]["per_target_auc"])})
    out.append({"a": a, "b": b, "attack": "test_accuracy", **paired_interval(
        sets[a]["test_accuracy"]["per_model"], sets[b]["test_accuracy"]["per_model"])})
  return out


def _analyse(name: str, cell: dict[str, Any], ctx: dict[str, Any], workdir: pathlib.Path) -> dict[str, Any]:
  keep, labels = ctx["keep"], ctx["pool_y"]
  scores = _scores(cell["logits"], labels, keep)
  acc = np.asarray(cell["test_accuracy"], np.float64)
  result: dict[str, Any] = {
      "images_per_model": int(cell["images_per_model"]),
      "test_accuracy": {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                        "per_model": acc.tolist()},
      "attacks": _metrics(scores, keep),
  }
  curves = {a: (scores[a], keep) for a in ("loss", "online_fixed", "offline", "global") if a in scores}
  used = cell["used"]
  if used is not None:
    select = used | ~keep  # the used images (members) and the target's OUT examples (non-members)
    result["used"] = {"kind": "subset" if name == "random" else "init",
                      "images_per_model": int(used.sum(1).max()),
                      "attacks": _metrics(scores, used, select)}
    for a in ("loss", "offline"):
      if a in scores:
        curves[f"{a}, {result['used']['kind']} images"] = (scores[a][select], used[select])
  else:
    result["used"] = None
  if "condense_loss" in cell:
    result["condense_final_loss_mean"] = float(np.mean(cell["condense_loss"]))
  if parallel.is_main_process():
    path = mia.plot_roc(workdir / f"roc_{name}.png", curves,
                        title=f"{name}: {ctx['num_models']} targets, pool {ctx['pool_size']}")
    result["roc"] = None if path is None else str(path.name)
  return result


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------

def run_mia(config: ml_collections.ConfigDict, workdir: os.PathLike | str, mesh=None) -> dict[str, Any]:
  """Runs (or resumes) the privacy experiment of ``config`` (``privacy_config()``) in
  ``workdir``: one cell per set type of ``mia.sets``, then the attacks; writes
  ``results.json``, ``table.md``, ``table.json`` and ``roc_<set>.png``, and returns the
  results. Bad input (an odd or zero number of models, an odd pool or one larger than the
  training split, ``condense.ipc`` above a class's count in a half pool, unknown set
  types) raises ValueError naming the field before anything is written."""
  v = _validate(config)
  host = data.host_from_config(config)
  k = host.num_classes
  seed = config.mia.seed
  pool = _pool(host, v["pool_size"], config.mia.pool, seed)
  pool_x, pool_y = host.train.images[pool], host.train.labels[pool].astype(np.int32)
  keep = mia.keep_masks(v["num_models"], v["pool_size"], seed)
  _check_halves(keep, pool_y, k, v["ipc"], v["sets"])
  model = models.from_config(config.target, k)
  if models.has_batch_stats(model, jax.ShapeDtypeStruct((1, *pool_x.shape[1:]), jnp.float32)):
    raise ValueError("target.model_kwargs: expected a network without BatchNorm statistics (e.g. the ConvNet with "
                     "norm='instancenorm')")
  channels = pool_x.shape[-1]
  augment = dsa.default_strategy(channels) if config.target.augment == "auto" else config.target.augment
  mesh = parallel.mesh_from_config(config, mesh)
  workdir = pathlib.Path(workdir)
  norm = condense_lib.Normalization.of(host.train.images)
  to_z = lambda x: norm.apply(jnp.asarray(x, jnp.float32) / 255.0)  # noqa: E731
  ctx = {"num_models": v["num_models"], "pool_size": v["pool_size"], "ipc": v["ipc"], "num_classes": k, "keep": keep,
         "pool_x": pool_x, "pool_y": pool_y, "pool_z": to_z(pool_x), "test_z": to_z(host.test.images),
         "test_y": host.test.labels.astype(np.int32), "norm": norm, "model": model, "augment": augment,
         "mesh": mesh, "dataset": data.to_device(host, mesh, config.data.layout)}
  ctx["subsets"] = [_random_subset(keep[m], pool_y, k, v["ipc"], seed, m) for m in range(v["num_models"])] \
      if "random" in v["sets"] else None
  t0 = time.time()
  sets: dict[str, Any] = {}
  for name in v["sets"]:
    cell = _cell(config, name, ctx, workdir)
    sets[name] = _analyse(name, cell, ctx, workdir)
  results = {
      "sets": sets, "comparisons": _comparisons(sets), "num_models": v["num_models"], "pool_size": v["pool_size"],
      "pool_ids": host.train.ids[pool].tolist(),
      "dataset": host.name, "num_classes": k, "ipc": v["ipc"], "target_augment": augment,
      "normalization": {"mean": np.asarray(norm.mean_C).tolist(), "std": np.asarray(norm.std_C).tolist()},
      "non_members_per_target": v["pool_size"] // 2, "seconds_this_process": round(time.time() - t0, 1),
      "config": config.to_dict(),
  }
  if parallel.is_main_process():
    config_lib.write_json_atomic(workdir / "results.json", results)
    config_lib.write_json_atomic(workdir / "table.json", table_rows(results))
    config_lib.write_bytes_atomic(workdir / "table.md", (report_markdown(results) + "\n").encode())
  return results


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

def _auc(attacks: dict[str, Any], name: str) -> float | None:
  return attacks[name]["auc"] if name in attacks else None


def _tpr(attacks: dict[str, Any], name: str, rate: str) -> float | None:
  return attacks.get(name, {}).get(f"tpr_at_fpr_{rate}")


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per set type, then one per set with used (subset / init) images: the numbers
  of ``report_markdown``'s table (None where not defined)."""
  rows = []
  for name, r in results["sets"].items():
    a, used = r["attacks"], r["used"]
    rows.append({"set": name, "images_per_model": r["images_per_model"],
                 "test_accuracy_mean": r["test_accuracy"]["mean"], "test_accuracy_std": r["test_accuracy"]["std"],
                 "loss_auc": _auc(a, "loss"), "online_auc": _auc(a, "online"),
                 "online_fixed_auc": _auc(a, "online_fixed"), "offline_auc": _auc(a, "offline"),
                 "global_auc": _auc(a, "global"),
                 "tpr_at_1pct": _tpr(a, "online_fixed", "0.01"), "tpr_at_0.1pct": _tpr(a, "online_fixed", "0.001"),
                 "used_loss_auc": None if used is None else _auc(used["attacks"], "loss"),
                 "used_offline_auc": None if used is None else _auc(used["attacks"], "offline")})
  for name, r in results["sets"].items():
    used = r["used"]
    if used is None:
      continue
    a = used["attacks"]
    rows.append({"set": f"{name}: {used['kind']} images", "images_per_model": used["images_per_model"],
                 "test_accuracy_mean": None, "test_accuracy_std": None,
                 "loss_auc": _auc(a, "loss"), "online_auc": _auc(a, "online"),
                 "online_fixed_auc": _auc(a, "online_fixed"), "offline_auc": _auc(a, "offline"),
                 "global_auc": _auc(a, "global"),
                 "tpr_at_1pct": _tpr(a, "offline", "0.01") if "offline" in a else _tpr(a, "offline_fixed", "0.01"),
                 "tpr_at_0.1pct": _tpr(a, "offline", "0.001") if "offline" in a else _tpr(a, "offline_fixed", "0.001"),
                 "used_loss_auc": None, "used_offline_auc": None})
  return rows


def _f(x: float | None, pct: bool = False) -> str:
  if x is None:
    return "-"
  return f"{100 * x:.2f}%" if pct else f"{x:.3f}"


def report_markdown(results: dict[str, Any]) -> str:
  """The results as a Markdown table: one row per set type (LiRA leave-one-out over the
  M targets; TPR columns of online LiRA with a fixed variance), then one row per set
  with used real images (the random subset / the condensation's init images, members,
  against the targets' OUT examples; TPR columns of offline LiRA, which needs no IN
  models)."""
  head = (f"Membership inference, {results['dataset']}: {results['num_models']} targets (each in turn, the "
          f"others its shadow models), pool {results['pool_size']} (each target trains from a random half), "
          f"ipc {results['ipc']}.\n\n")
  lines = ["| set | images per model | test acc (mean +- std) | loss AUC | LiRA online AUC | online fixed-var AUC "
           "| offline AUC | TPR@1% | TPR@0.1% | init/used images AUC (loss / offline) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in table_rows(results):
    acc = "-" if row["test_accuracy_mean"] is None else \
        f"{100 * row['test_accuracy_mean']:.2f} +- {100 * row['test_accuracy_std']:.2f}"
    used = "-" if row["used_loss_auc"] is None else f"{_f(row['used_loss_auc'])} / {_f(row['used_offline_auc'])}"
    lines.append(f"| {row['set']} | {row['images_per_model']} | {acc} | {_f(row['loss_auc'])} | "
                 f"{_f(row['online_auc'])} | {_f(row['online_fixed_auc'])} | {_f(row['offline_auc'])} | "
                 f"{_f(row['tpr_at_1pct'], True)} | {_f(row['tpr_at_0.1pct'], True)} | {used} |")
  comparisons = results.get("comparisons") or []
  if comparisons:
    lines += ["", f"Target by target ({results['num_models']} targets), first set minus second: mean difference "
              f"with its {100 * CONFIDENCE:g}% Student-t interval (AUC; test accuracy in points). The targets share "
              "shadow models, so the intervals are a guide, not an exact test.", "",
              "| sets | measure | difference | interval | verdict |", "|---|---|---|---|---|"]
    for c in comparisons:
      scale = 100 if c["attack"] == "test_accuracy" else 1
      fmt = (lambda x: f"{scale * x:+.2f}") if scale == 100 else (lambda x: f"{x:+.3f}")
      lines.append(f"| {c['a']} - {c['b']} | {c['attack']} | {fmt(c['diff'])} | [{fmt(c['low'])}, "
                   f"{fmt(c['high'])}] | {c['verdict']} |")
  return head + "\n".join(lines)
