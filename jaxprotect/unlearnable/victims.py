"""Victim evaluation: train a fresh model on the poisoned training set (and, beside it,
on clean data with the same recipe) and report clean-test accuracy.

The victim is the ``victim`` section of an ``unlearnable_config()`` trained on its
``data`` (``runner.fit(..., section="victim")``); the ``evaluate`` section says which
poison, how much of the training set carries it and where the clean victim trains.
``workdir/poisoned`` and ``workdir/clean`` (or ``evaluate.clean_workdir``) are ordinary
resumable training runs whose checkpoints record the hash of ``data`` and ``victim``
only; ``workdir/results.json`` and ``workdir/report.md`` compare them, and
``workdir/curves.png`` plots both training curves. A clean victim that has finished is
restored, not trained again, so evaluations of several poisons under one victim recipe
can share it through ``evaluate.clean_workdir``; its config hash and dataset fingerprint
must match, or the run is refused.

Defense (the ``defense`` section, ``defenses.Defense``): the poisoned victim trains under
``defense.name`` (``none``, ``at``, ``cutout``, ``cutmix``, ``mixup``, ``ueraser``, ``jpeg``,
``bits``, ``grayscale``, ``blur``; ``runner.fit(..., defense=...)``): a host squeeze of its
(poisoned) training images before training, or a training-time defense in every step. The
clean victim stays undefended unless ``defense.clean``. A defended run's checkpoints hash
the defense's own settings besides ``data`` and ``victim``, so an undefended victim keeps its
hash and a shared clean victim is only reused under the same defense. ``results.json``
and ``report.md`` record the defense and which runs it applied to.

``evaluate.quantize`` stores the poisoned images as uint8 before the victim sees them
(and ``evaluate.drop_negative`` keeps only the perturbation's positive part), as the
reference implementations do (``poison_io.apply``).

Feature MI diagnostic (``evaluate.feature_mi_examples`` = n > 0): for each trained victim
(poisoned and clean), the mutual information between its penultimate features
(``models.contract``) of the first n clean training images and of the same images as the
poisoned victim saw them -- ``stats.gaussian_mi`` (joint-Gaussian, ridge 1e-3) and
``stats.ksg_mi`` (k = 3) -- in ``results.json`` as ``feature_mi: {run: {"gaussian": nats,
"ksg": nats, "examples": n}}`` and in ``report.md``. Identical inputs give the MI of the
features with themselves: ``psi(n) - psi(3)`` for KSG, the ridge-limited ceiling for the
Gaussian estimate.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprotect import checkpoint, checks, config as config_lib, data, defenses, models, parallel, runner, stats, train
from jaxprotect.unlearnable import crafting, poison_io

__all__ = [
    "KSG_K", "VICTIM_SECTIONS", "evaluate", "feature_mi", "penultimate_features", "report_markdown",
]

KSG_K = 3  # neighbours of the KSG estimate of the feature MI diagnostic

# The sections a victim trains from (hashed into its checkpoints).
VICTIM_SECTIONS = ("data", "victim")


def _check_reusable(run_dir: pathlib.Path, config: ml_collections.ConfigDict, defense: Any = None) -> None:
  """Refuses, before any training, a clean-victim directory checkpointed under another recipe
  (or another defense)."""
  if not (run_dir / "checkpoints").is_dir():
    return
  ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", runner.fit_hash(config, "victim", defense=defense),
                                 async_save=False)
  try:
    if ckpt.latest_step() is not None:
      ckpt.check_config()
  except ValueError as e:
    raise ValueError(f"clean victim directory {run_dir}: {e} (or point evaluate.clean_workdir elsewhere)") from e
  finally:
    ckpt.close()


def _curve(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [r for r in map(json.loads, path.read_text().splitlines()) if "test_accuracy" in r]


def _plot_curves(path: pathlib.Path, curves: dict[str, list[dict[str, Any]]]) -> None:
  """Writes ``path``; without matplotlib (the ``plot`` extra), logs a warning instead."""
  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the victims' training curves {path}")
  if plt is None:
    return

  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, recs in curves.items():
    if recs:
      ax.plot([r["epoch"] for r in recs], [100 * r["test_accuracy"] for r in recs], marker=".", label=f"{name} (test)")
      ax.plot([r["epoch"] for r in recs], [100 * r["train_accuracy"] for r in recs], ls="--", alpha=0.6,
              label=f"{name} (train)")
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy (%)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def penultimate_features(model: Any, variables: Any, split: data.DeviceSplit, num_examples: int, mesh,
                         batch_size: int) -> np.ndarray:
  """float32 ``num_examples x D``: the features ``model`` (evaluation mode) returns for the
  first ``num_examples`` images of ``split`` as ``split.gather`` gives them (with the
  split's perturbation, if any), in batches of ``batch_size`` (a multiple of the mesh's
  devices; the last batch padded with the last example)."""
  model = models.as_model(model)
  checks.check_positive_int(num_examples, "num_examples")
  if num_examples > split.size:
    raise ValueError(f"num_examples={num_examples} exceeds the {split.size} examples of the split")
  checks.check_batch_size(batch_size)
  parallel.check_divisible(batch_size, mesh, "eval batch_size")
  batch_features = train.cached(_features_program, model, mesh)
  out = []
  for start in range(0, num_examples, batch_size):
    pos = np.minimum(np.arange(start, start + batch_size), num_examples - 1).astype(np.int32)
    out.append(np.asarray(jax.device_get(batch_features(variables, split, pos))))  # positions from the host
  return np.concatenate(out)[:num_examples]


def _features_program(model: models.Model, mesh) -> Any:
  """``batch_features(variables, split, pos_B) -> feats_BxD`` (float32, replicated), one
  jitted function per model and mesh (``train.cached``)."""
  rows = NamedSharding(mesh, P(parallel.DATA_AXIS))

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_features(variables, split, pos_B):
    x, _ = split.gather(jax.lax.with_sharding_constraint(pos_B, rows))
    feats = models.features_of(model.apply(variables, x, train=False), "the feature MI diagnostic")
    return jnp.asarray(feats, jnp.float32).reshape(pos_B.shape[0], -1)

  return batch_features


def feature_mi(model: Any, variables: Any, clean: data.DeviceSplit, poisoned: data.DeviceSplit, num_examples: int,
               mesh, batch_size: int, ksg: bool = True) -> dict[str, Any]:
  """``{"gaussian": nats, "ksg": nats or None, "examples": n}``: the mutual information between
  ``model``'s penultimate features of the first ``n = num_examples`` images of ``clean`` and
  of ``poisoned`` (paired by position; ``stats.gaussian_mi`` and, with ``ksg``,
  ``stats.ksg_mi`` with ``k = KSG_K``)."""
  if clean.size != poisoned.size:
    raise ValueError(f"clean, poisoned: expected the same examples, got {clean.size} and {poisoned.size}")
  fc = penultimate_features(model, variables, clean, num_examples, mesh, batch_size)
  fp = penultimate_features(model, variables, poisoned, num_examples, mesh, batch_size)
  return {"gaussian": stats.gaussian_mi(fc, fp), "ksg": stats.ksg_mi(fc, fp, KSG_K) if ksg else None,
          "examples": int(num_examples)}


def evaluate(config: ml_collections.ConfigDict, workdir: os.PathLike | str, mesh=None) -> dict[str, Any]:
  """Trains ``config.victim`` on ``config.evaluate.poison`` (a fraction
  ``evaluate.poison_fraction`` of the training set poisoned, chosen by ``evaluate.seed``)
  and, if ``evaluate.clean``, on clean data; resumable, and a finished victim is not
  trained again. Returns (and writes) the results."""
  config_lib.check_fields(config, crafting.unlearnable_config())
  e = config.evaluate
  if not e.get("poison"):
    raise ValueError("evaluate.poison: set it to a poison directory or a crafting workdir "
                     "(CLI: --config.evaluate.poison=DIR)")
  if not 0.0 <= e.poison_fraction <= 1.0:
    raise ValueError(f"evaluate.poison_fraction must be in [0, 1], got {e.poison_fraction}")
  if e.quantize not in poison_io.QUANTIZE:
    raise ValueError(f"evaluate.quantize: unknown value {e.quantize!r}; use one of {poison_io.QUANTIZE}")
  if e.feature_mi_examples < 0:
    raise ValueError(f"evaluate.feature_mi_examples must be >= 0 (0: off), got {e.feature_mi_examples}")
  defense = defenses.from_config(config.get("defense"))
  workdir = pathlib.Path(workdir)
  mesh = parallel.mesh_from_config(config, mesh)
  clean = data.from_config(config, mesh)
  defense.check_data(clean)  # before anything trains
  poison = poison_io.load_poison(e.poison)
  poisoned = poison_io.apply(clean, poison, e.poison_fraction, seed=e.seed, quantize=e.quantize,
                             drop_negative=e.drop_negative)  # checks the dataset
  dirs = {"poisoned": workdir / "poisoned"}
  defended = {"poisoned": defense}
  if e.clean:
    dirs["clean"] = pathlib.Path(e.get("clean_workdir") or workdir / "clean")
    defended["clean"] = defense if defense.clean else None
    _check_reusable(dirs["clean"], config, defended["clean"])
  fits = {name: runner.fit(config, d, mesh, dataset=poisoned if name == "poisoned" else clean, section="victim",
                           return_state=True, defense=defended[name])
          for name, d in dirs.items()}
  runs = {name: r for name, (r, _) in fits.items()}
  curves = {name: _curve(d) for name, d in dirs.items()}
  v = config.victim
  mi = {}
  n_mi = min(e.feature_mi_examples, clean.train.size)
  if n_mi:
    if n_mi <= KSG_K:
      raise ValueError(f"evaluate.feature_mi_examples: the feature MI needs more than {KSG_K} examples, got {n_mi}")
    model = models.from_config(v, clean.num_classes)
    mi = {name: feature_mi(model, train.variables_of(state), clean.train, poisoned.train, n_mi, mesh,
                           v.eval_batch_size)
          for name, (_, state) in fits.items()}
  results: dict[str, Any] = {
      "poison": str(poison_io.resolve(e.poison)),
      "method": poison.manifest.get("method"),
      "mode": poison.mode,
      "eps": poison.manifest.get("eps"),
      "norm": (poison.manifest.get("config", {}).get("craft") or {}).get("norm", "linf"),
      "poison_fraction": e.poison_fraction,
      "quantize": e.quantize,
      "drop_negative": bool(e.drop_negative),
      "runs": {name: str(d) for name, d in dirs.items()},
      "victim": {"model": v.model, "epochs": v.epochs, "augment": v.augment},
      "defense": {**defense.record(), "runs": [name for name, d in defended.items() if d is not None and d.enabled]},
      "dataset_fingerprint": {name: r["dataset"]["fingerprint"] for name, r in runs.items()},
      "test_accuracy": {name: r["test_accuracy"] for name, r in runs.items()},
      "class_accuracy": {name: r["class_accuracy"] for name, r in runs.items()},
      "seconds": {name: r.get("seconds") for name, r in runs.items()},  # each training, over its processes
      "curves": curves,
  }
  if mi:
    results["feature_mi"] = mi
  if "clean" in runs:
    results["accuracy_drop"] = runs["clean"]["test_accuracy"] - runs["poisoned"]["test_accuracy"]
  if parallel.is_main_process():
    config_lib.write_json_atomic(workdir / "results.json", results)
    (workdir / "report.md").write_text(report_markdown(results))
    _plot_curves(workdir / "curves.png", curves)
  return results


def report_markdown(results: dict[str, Any]) -> str:
  acc = results["test_accuracy"]
  budget = poison_io.budget(results["eps"], results.get("norm"))
  lines = [
      f"# Victim evaluation: {results['method']} ({results['mode']}-wise), {budget}, "
      f"{100 * results['poison_fraction']:.0f}% poisoned",
      "",
      f"Victim: {results['victim']['model']}, {results['victim']['epochs']} epochs, augment "
      f"`{results['victim']['augment'] or 'none'}`.",
      "",
  ]
  d = results.get("defense") or {"name": "none"}
  if d["name"] != "none":
    settings = defenses.Defense(d["name"], tuple((k, v) for k, v in d.items() if k not in ("name", "runs")))
    lines += [f"Defense: {settings.describe()}, applied to the {' and '.join(d.get('runs', []))} "
              f"victim{'s' if len(d.get('runs', [])) > 1 else ''}.", ""]
  lines += [
      "| training data | clean-test accuracy | per class |",
      "|---|---|---|",
  ]
  for name in acc:
    per = " ".join(f"{100 * a:.0f}" for a in results["class_accuracy"][name])
    lines.append(f"| {name} | {100 * acc[name]:.2f}% | {per} |")
  if "accuracy_drop" in results:
    lines += ["", f"Drop caused by the poison: {100 * results['accuracy_drop']:.2f} points."]
  if results.get("quantize") or results.get("drop_negative"):
    lines += ["", f"Poisoned images stored as uint8 (`{results.get('quantize') or 'float'}`), "
              f"negative part of the perturbation {'dropped' if results.get('drop_negative') else 'kept'}."]
  if results.get("feature_mi"):
    n = next(iter(results["feature_mi"].values()))["examples"]
    lines += ["", f"Feature MI between each victim's penultimate features of the first {n} clean training images "
              "and of their poisoned versions (nats):", "", "| victim | Gaussian | KSG (k=3) |", "|---|---|---|"]
    for name, m in results["feature_mi"].items():
      ksg = "-" if m.get("ksg") is None else f"{m['ksg']:.3f}"
      lines.append(f"| {name} | {m['gaussian']:.3f} | {ksg} |")
  return "\n".join(lines) + "\n"
