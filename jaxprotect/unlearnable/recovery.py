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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprotect import checks, config as config_lib, data, models, parallel, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import certify as certify_lib

__all__ = ["PROJECTIONS", "finetune_recovery", "project_weights", "random_search_recovery", "recovery_split"]

PROJECTIONS = ("ball", "sphere")


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
  evaluate = train.make_eval_fn(model, mesh, _eval_batch(len(split.test), mesh), split.num_classes)
  start = train.init_state(model, base, ds.example, jax.random.PRNGKey(seed), mesh)
  start = start.replace(params=jax.device_put(variables["params"], parallel.replicated(mesh)),
                        batch_stats=jax.device_put(variables.get("batch_stats", {}), parallel.replicated(mesh)))
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
