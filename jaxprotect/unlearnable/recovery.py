"""The recovery attack on unlearnable data (Wang et al., "Provably Unlearnable Data
Examples", NDSS 2025, section on empirical learnability): how much clean-test accuracy a
model trained on protected data regains by a weight change of L2 norm at most ``eta``.

The clean test split is divided once, from ``seed``: a fraction (default 20%) is the
attacker's small clean set, the rest reports accuracy. Two attacks:

* ``finetune_recovery`` -- SGD on the attacker's set from the trained weights, the
  weight change projected after every step onto the L2 ball of radius ``eta`` around
  them (all parameters jointly; ``projection="sphere"`` rescales the change to norm
  exactly ``eta`` after every step, as the authors' ``trainer.project`` does);
* ``random_search_recovery`` -- ``num_draws`` weight changes of norm exactly ``eta`` in
  uniformly random directions (``certify.make_draw_eval(..., radius=True)``); the draw
  that scores best on the attacker's set is reported on the report set (the authors'
  ``random_greedy`` picks it on the test set it reports).

BatchNorm statistics are the trained ones for the random search and keep updating in
the fine-tuning, as in the reference. Accuracies are fractions.

``recover(config, workdir)`` is the resumable phase behind ``jaxprotect recover``: both
attacks at every eta of ``recover.etas`` against a finished training run, one cell
(attack, eta) after another, each finished cell checkpointed, so that a killed run
continues with the next cell and ends with the same numbers.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxprotect import checks, config as config_lib, data, models, parallel, run, runner, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import certify as certify_lib

__all__ = ["ATTACKS", "ETAS", "PROJECTIONS", "finetune_recovery", "project_weights", "random_search_recovery",
           "recover", "recover_config", "recovery_split"]

PROJECTIONS = ("ball", "sphere")
ATTACKS = ("finetune", "random_search")
# The radii of the authors' recovery script (README, section 4: eta 0.2 .. 2.0 in steps of 0.2).
ETAS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


class _ProjectState(NamedTuple):
  origin: Any


def _norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def project_weights(eta: float, projection: str = "ball") -> optax.GradientTransformation:
  """An optax transformation, last in a chain, that keeps ``params + updates`` within
  L2 distance ``eta`` (over all leaves) of the parameters it was initialised with
  (``"ball"``), or at distance exactly ``eta`` (``"sphere"``)."""
  if eta < 0:
    raise ValueError(f"eta: expected a radius >= 0, got {eta}")
  if projection not in PROJECTIONS:
    raise ValueError(f"projection: expected one of {PROJECTIONS}, got {projection!r}")

  def init(params):
    return _ProjectState(origin=jax.tree.map(lambda p: jnp.array(p, copy=True), params))

  def update(updates, state, params):
    diff = jax.tree.map(lambda p, u, o: p + u - o, params, updates, state.origin)
    norm = _norm(diff)
    if projection == "ball":
      scale = jnp.where(norm > eta, eta / jnp.maximum(norm, 1e-12), 1.0)
    else:
      scale = eta / jnp.maximum(norm, 1e-12)
    new = jax.tree.map(lambda o, d: o + d * scale, state.origin, diff)
    return jax.tree.map(lambda n, p: n - p, new, params), state

  return optax.GradientTransformation(init, update)


def recovery_split(host: data.HostDataset, fraction: float = 0.2, seed: int = 0) -> data.HostDataset:
  """The clean test split divided from ``seed``: ``train`` is the attacker's ``fraction``
  of it, ``test`` the disjoint rest that accuracies are reported on."""
  if not 0 < fraction < 1:
    raise ValueError(f"fraction: expected a share of the test split in (0, 1), got {fraction}")
  n = len(host.test)
  k = int(round(fraction * n))
  if not 0 < k < n:
    raise ValueError(f"fraction={fraction} of {n} test examples leaves an empty attack or report set")
  perm = np.random.default_rng(seed).permutation(n)
  take = lambda idx: data.ArraySplit(host.test.images[idx], host.test.labels[idx], host.test.ids[idx])  # noqa: E731
  attack, report = take(np.sort(perm[:k])), take(np.sort(perm[k:]))
  return data.HostDataset(f"{host.name}:recovery", attack, report, host.num_classes,
                          data.fingerprint(attack, report))


def _check_etas(etas: Sequence[float]) -> list[float]:
  etas = [float(e) for e in np.atleast_1d(etas)]
  if not etas or any(not np.isfinite(e) or e < 0 for e in etas):
    raise ValueError(f"etas: expected radii >= 0, got {etas}")
  return etas


def finetune_recovery(model, variables: dict[str, Any], split: data.HostDataset, etas: Sequence[float], *,
                      epochs: int = 10, batch_size: int = 128, lr: float = 0.01, augment: str = "crop2,flip",
                      projection: str = "ball", seed: int = 0, mesh=None) -> dict[str, Any]:
  """Projected fine-tuning on ``split.train`` (``recovery_split``), one run per ``eta``
  from the same weights; returns the report-set accuracy per eta (and before any change).

  The recipe follows the authors' recovery config (SGD momentum 0.9, weight decay 5e-4,
  cosine schedule, gradient clip 5, lr 0.01), for ``epochs`` epochs."""
  etas = _check_etas(etas)
  checks.check_positive_int(epochs, "epochs")
  mesh = mesh or parallel.make_mesh()
  ds = data.to_device(split, mesh)
  model = models.as_model(model)
  steps = len(split.train) // batch_size
  if steps < 1:
    raise ValueError(f"batch_size={batch_size} exceeds the attacker's {len(split.train)} examples")
  opt_cfg = config_lib.optimizer_config()
  opt_cfg.lr, opt_cfg.grad_clip = lr, 5.0
  base = train.make_optimizer(opt_cfg, steps, epochs)
  start, evaluate = _trained_state(model, variables, ds, base, seed, mesh)
  before = float(evaluate(start, ds.test)["accuracy"])
  out = []
  for eta in etas:
    tx = optax.chain(base, project_weights(eta, projection))
    chunk = train.make_train_chunk(model, train.ce_loss(), tx, mesh, batch_size, AugmentConfig.parse(augment))
    state = jax.tree.map(lambda x: x.copy(), start)  # the chunk donates its state: start stays intact
    state = state.replace(opt_state=jax.device_put(tx.init(start.params), parallel.replicated(mesh)))
    for _ in range(epochs):
      state, _ = chunk(state, ds.train, steps)
    distance = float(_norm(jax.tree.map(lambda a, b: a - b, state.params, start.params)))
    out.append({"eta": eta, "accuracy": float(evaluate(state, ds.test)["accuracy"]), "distance": distance})
  return {"attack": "finetune", "projection": projection, "before": before, "epochs": epochs, "lr": lr,
          "attack_examples": len(split.train), "report_examples": len(split.test), "runs": out}


def random_search_recovery(model, variables: dict[str, Any], split: data.HostDataset, etas: Sequence[float], *,
                           num_draws: int = 100, chunk: int = 25, seed: int = 0, mesh=None) -> dict[str, Any]:
  """``num_draws`` weight changes of norm ``eta`` in random directions per eta; the draw
  best on ``split.train`` is reported on ``split.test`` (with the mean over draws)."""
  etas = _check_etas(etas)
  n = checks.check_positive_int(num_draws, "num_draws")
  chunk = min(checks.check_positive_int(chunk, "chunk"), n)
  mesh = mesh or parallel.make_mesh()
  ds = data.to_device(split, mesh)
  draws = certify_lib.make_draw_eval(model, mesh, _eval_batch(max(len(split.train), len(split.test)), mesh), chunk,
                                     radius=True)
  out = []
  for i, eta in enumerate(etas):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    attack = np.concatenate([np.asarray(draws(variables, ds.train, key, s, eta)) for s in range(0, n, chunk)])[:n]
    report = np.concatenate([np.asarray(draws(variables, ds.test, key, s, eta)) for s in range(0, n, chunk)])[:n]
    best = int(np.argmax(attack))
    out.append({"eta": eta, "accuracy": float(report[best]), "mean_accuracy": float(report.mean()),
                "best_on_test": float(report.max())})
  return {"attack": "random_search", "num_draws": n, "attack_examples": len(split.train),
          "report_examples": len(split.test), "runs": out}


def _eval_batch(n: int, mesh) -> int:
  d = parallel.num_shards(mesh)
  return max(d, min(500, -(-n // d) * d) // d * d)


# ---------------------------------------------------------------------------------------
# The recovery phase
# ---------------------------------------------------------------------------------------

def recover_config() -> ml_collections.ConfigDict:
  """``jaxprotect recover``: ``recover`` (the model, the attacks and their settings) and
  ``runtime``. The data are those the model was trained on (its run's ``data`` section);
  the attacks use its clean test split (``recovery_split``). Locked."""
  c = ml_collections.ConfigDict()
  c.recover = ml_collections.ConfigDict(dict(
      model="",  # a finished training run directory (jaxprotect train, evaluate's victims, ...)
      attacks=ATTACKS,
      etas=ETAS,
      fraction=0.2,  # the attacker's share of the clean test split (reference: recovery_rate=0.2)
      split_seed=0,
      seed=0,  # fine-tuning order and augmentation; random-search directions
      finetune=ml_collections.ConfigDict(dict(
          epochs=10,
          batch_size=128,  # reference: --train_batch_size 128
          lr=0.01,
          augment="",  # "": the model's own training augmentation (its run config)
          projection="ball",  # "sphere": the change rescaled to norm eta after every step
      )),
      random_search=ml_collections.ConfigDict(dict(
          num_draws=1000,  # reference: 1000 draws of radius eta
          chunk=25,  # draws evaluated at once
      )),
  ))
  c.runtime = config_lib.runtime_config()
  return config_lib.lock(c)


def _check_recover(c: ml_collections.ConfigDict) -> tuple[list[str], list[float]]:
  attacks = list(c.attacks)
  bad = [a for a in attacks if a not in ATTACKS]
  if not attacks or bad or len(set(attacks)) != len(attacks):
    raise ValueError(f"recover.attacks: expected distinct names among {ATTACKS}, got {tuple(attacks)}")
  etas = _check_etas(c.etas)
  if not 0 < c.fraction < 1:
    raise ValueError(f"recover.fraction: expected a share of the test split in (0, 1), got {c.fraction}")
  if c.finetune.projection not in PROJECTIONS:
    raise ValueError(f"recover.finetune.projection: expected one of {PROJECTIONS}, got {c.finetune.projection!r}")
  checks.check_positive_int(c.finetune.epochs, "recover.finetune.epochs")
  checks.check_batch_size(c.finetune.batch_size, "recover.finetune.batch_size")
  if not c.finetune.lr > 0:
    raise ValueError(f"recover.finetune.lr: expected a learning rate > 0, got {c.finetune.lr}")
  checks.check_positive_int(c.random_search.num_draws, "recover.random_search.num_draws")
  checks.check_positive_int(c.random_search.chunk, "recover.random_search.chunk")
  if not c.model:
    raise ValueError("recover.model: set it to a finished training run directory (CLI: --config.recover.model=DIR)")
  return attacks, etas


# Per cell: the reported accuracy, then the fine-tuning's distance moved or the random
# search's mean accuracy over draws, then the random search's best accuracy on the report set.
_FIELDS = {"finetune": ("accuracy", "distance"), "random_search": ("accuracy", "mean_accuracy", "best_on_test")}


def recover(config: ml_collections.ConfigDict, workdir: os.PathLike | str, mesh=None) -> dict[str, Any]:
  """Runs ``recover.attacks`` at every eta of ``recover.etas`` against the model in
  ``recover.model`` (a finished training run), one (attack, eta) cell after another, each
  checkpointed when it finishes (a killed run continues with the next cell), and writes
  ``results.json``: the report-set accuracy before any change and, per attack, the
  recovered accuracy at each eta (fractions), plus ``recovery.png``.

  Raises ValueError, naming the field, for a bad setting or a directory without a finished
  run, before anything is written."""
  config_lib.check_fields(config, recover_config())
  c = config.recover
  attacks, etas = _check_recover(c)
  model, variables, info = runner.load_trained(c.model)
  mesh = parallel.mesh_from_config(config, mesh)
  host = data.host_from_config(info["config"]["data"])
  ds = data.to_device(host, mesh, info["config"]["data"].get("layout", "replicated"))
  split = recovery_split(host, c.fraction, c.split_seed)
  augment = c.finetune.augment or info["config"][info["section"]].get("augment", "")
  cells = [(a, e) for a in attacks for e in etas]
  width = max(len(f) for f in _FIELDS.values())
  rep = parallel.replicated(mesh)
  phase = run.Phase(workdir, "recover", config, dataset=ds, total=len(cells), unit="cell", sections=("recover",),
                    hash_extra={"model_params_sha256": info["results"]["params_sha256"]},
                    record={"model": {"dir": str(pathlib.Path(c.model).resolve()), "section": info["section"],
                                      "test_accuracy": info["results"]["test_accuracy"]}})
  with phase:
    state = phase.restore({"values": parallel.put(np.full((len(cells), width), np.nan, np.float32), rep),
                           "before": parallel.put(np.float32(np.nan), rep),
                           "done": parallel.put(np.int32(0), rep)})
    values, done = np.array(parallel.to_host(state["values"])), int(state["done"])
    phase.start(done, desc="recover")
    before = float(state["before"])
    while done < len(cells):
      attack, eta = cells[done]
      key_seed = c.seed * 1000 + etas.index(eta)  # the same draws whatever cells ran before
      if attack == "finetune":
        out = finetune_recovery(model, variables, split, (eta,), epochs=c.finetune.epochs,
                                batch_size=c.finetune.batch_size, lr=c.finetune.lr, augment=augment,
                                projection=c.finetune.projection, seed=key_seed, mesh=mesh)
        before = out["before"]
      else:
        out = random_search_recovery(model, variables, split, (eta,), num_draws=c.random_search.num_draws,
                                     chunk=c.random_search.chunk, seed=key_seed, mesh=mesh)
      row = out["runs"][0]
      values[done, :len(_FIELDS[attack])] = [row[f] for f in _FIELDS[attack]]
      done += 1
      phase.log(done, advance=1, attack=attack, eta=eta, accuracy=row["accuracy"])
      phase.checkpoint(done, {"values": parallel.put(values, rep), "before": parallel.put(np.float32(before), rep),
                              "done": parallel.put(np.int32(done), rep)})
  if not np.isfinite(before):  # only random search was asked for: the unchanged model on the report set
    before = _report_accuracy(model, variables, split, mesh)
  results = {
      "model": str(pathlib.Path(c.model).resolve()),
      "model_test_accuracy": info["results"]["test_accuracy"],
      "before": before, "etas": etas, "attack_examples": len(split.train), "report_examples": len(split.test),
      "fraction": c.fraction, "augment": augment,
      "attacks": {a: {f: [float(values[cells.index((a, e)), i]) for e in etas] for i, f in enumerate(_FIELDS[a])}
                  for a in attacks},
  }
  if phase.main:
    _plot(phase.workdir / "recovery.png", results)
  return phase.finish(results)


def _trained_state(model, variables: dict[str, Any], ds: data.DeviceDataset, tx: optax.GradientTransformation,
                   seed: int, mesh):
  """A train state holding the trained ``variables`` (replicated) and the report-set
  evaluation function."""
  evaluate = train.make_eval_fn(model, mesh, _eval_batch(ds.test.size, mesh), ds.num_classes)
  state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(seed), mesh)
  state = state.replace(params=jax.device_put(variables["params"], parallel.replicated(mesh)),
                        batch_stats=jax.device_put(variables.get("batch_stats", {}), parallel.replicated(mesh)))
  return state, evaluate


def _report_accuracy(model, variables, split: data.HostDataset, mesh) -> float:
  ds = data.to_device(split, mesh)
  state, evaluate = _trained_state(models.as_model(model), variables, ds, optax.identity(), 0, mesh)
  return float(evaluate(state, ds.test)["accuracy"])


def _plot(path: pathlib.Path, results: dict[str, Any]) -> None:
  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the recovery curve {path}")
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(5, 3.2))
  labels = {"finetune": "projected fine-tuning", "random_search": "random search (best on attack set)"}
  for attack, fields in results["attacks"].items():
    ax.plot(results["etas"], [100 * v for v in fields["accuracy"]], marker=".", label=labels[attack])
  ax.axhline(100 * results["before"], color="k", lw=0.8, label="model before the attack")
  ax.set_xlabel("eta (L2 radius of the weight change)")
  ax.set_ylabel("report-set accuracy (%)")
  ax.set_title(f"{results['attack_examples']} attack / {results['report_examples']} report images", fontsize=8)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
