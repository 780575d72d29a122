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
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from jaxprotect import checkpoint, config as config_lib, data, parallel, runner
from jaxprotect.unlearnable import crafting, poison_io

__all__ = [
    "VICTIM_SECTIONS", "evaluate", "report_markdown",
]

# The sections a victim trains from (hashed into its checkpoints).
VICTIM_SECTIONS = ("data", "victim")


def _check_reusable(run_dir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses, before any training, a clean-victim directory checkpointed under another recipe."""
  if not (run_dir / "checkpoints").is_dir():
    return
  ckpt = checkpoint.Checkpointer(run_dir / "checkpoints", config_lib.phase_hash(config, VICTIM_SECTIONS),
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
  workdir = pathlib.Path(workdir)
  mesh = parallel.mesh_from_config(config, mesh)
  clean = data.from_config(config, mesh)
  poison = poison_io.load_poison(e.poison)
  poisoned = poison_io.apply(clean, poison, e.poison_fraction, seed=e.seed)  # checks the dataset
  dirs = {"poisoned": workdir / "poisoned"}
  if e.clean:
    dirs["clean"] = pathlib.Path(e.get("clean_workdir") or workdir / "clean")
    _check_reusable(dirs["clean"], config)
  runs = {name: runner.fit(config, d, mesh, dataset=poisoned if name == "poisoned" else clean, section="victim")
          for name, d in dirs.items()}
  curves = {name: _curve(d) for name, d in dirs.items()}
  v = config.victim
  results: dict[str, Any] = {
      "poison": str(poison_io.resolve(e.poison)),
      "method": poison.manifest.get("method"),
      "mode": poison.mode,
      "eps": poison.manifest.get("eps"),
      "poison_fraction": e.poison_fraction,
      "runs": {name: str(d) for name, d in dirs.items()},
      "victim": {"model": v.model, "epochs": v.epochs, "augment": v.augment},
      "test_accuracy": {name: r["test_accuracy"] for name, r in runs.items()},
      "class_accuracy": {name: r["class_accuracy"] for name, r in runs.items()},
      "curves": curves,
  }
  if "clean" in runs:
    results["accuracy_drop"] = runs["clean"]["test_accuracy"] - runs["poisoned"]["test_accuracy"]
  if parallel.is_main_process():
    config_lib.write_json_atomic(workdir / "results.json", results)
    (workdir / "report.md").write_text(report_markdown(results))
    _plot_curves(workdir / "curves.png", curves)
  return results


def report_markdown(results: dict[str, Any]) -> str:
  acc = results["test_accuracy"]
  lines = [
      f"# Victim evaluation: {results['method']} ({results['mode']}-wise), eps {255 * results['eps']:.1f}/255, "
      f"{100 * results['poison_fraction']:.0f}% poisoned",
      "",
      f"Victim: {results['victim']['model']}, {results['victim']['epochs']} epochs, augment "
      f"`{results['victim']['augment'] or 'none'}`.",
      "",
      "| training data | clean-test accuracy | per class |",
      "|---|---|---|",
  ]
  for name in acc:
    per = " ".join(f"{100 * a:.0f}" for a in results["class_accuracy"][name])
    lines.append(f"| {name} | {100 * acc[name]:.2f}% | {per} |")
  if "accuracy_drop" in results:
    lines += ["", f"Drop caused by the poison: {100 * results['accuracy_drop']:.2f} points."]
  return "\n".join(lines) + "\n"
