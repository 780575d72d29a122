"""The protection x defense x victim matrix: each protection (poison) crafted once per seed,
then a victim trained on it under each defense, for each victim recipe and seed.

``matrix_config()`` is ``unlearnable_config()`` plus a ``matrix`` section:

* ``protections``: names among ``PROTECTIONS`` -- ``clean`` (no poison: the victim trains on
  the clean images, under the defense), ``random``, ``em_sample``, ``em_class``, ``mi_ue``,
  ``pue``, ``ar``, ``lsp``, ``ops``;
* ``specs``: protection name -> ``"[file.py[:variant]]|override|override..."``: the config
  changes that make it. With a file, the crafting sections (``CRAFT_SECTIONS``: ``surrogate``,
  ``craft``, ``pue``, ``baseline``) come from that file's config; without one (a spec starting
  with ``|``), from the matrix config itself; then the overrides (``section.field=value``,
  separated by ``|`` since values such as ``victim.augment=crop2,flip`` hold commas). A
  protection without a spec takes ``BUILTIN``'s changes of the matrix config's own crafting
  sections (e.g. ``em_class``: ``craft.method=em``, ``craft.mode=class``). Experiment files
  fill ``specs`` (``experiments/matrix.py``), so this module reads no experiment file by name;
* ``eps``: > 0 sets ``craft.eps`` of every protection and scales its PGD step sizes by the
  ratio to the protection's own radius (its step-to-radius ratio is kept); 0 keeps each one's;
* ``overrides``: ``section.field=value`` changes applied to every protection after its spec
  and ``eps`` (e.g. a narrower surrogate);
* ``defenses``: names among ``defenses.NAMES``; each with the ``defense`` section's settings;
* ``victims``: ``"default"`` (the ``victim`` section), ``"model[:key=value...]"`` (the keys
  go to ``victim.model_kwargs``) or a named recipe of ``VICTIM_RECIPES`` (``"fast"``: a
  small CNN trained in 6 epochs at batch 256), each a victim recipe;
* ``seeds``: crafting seed = victim seed of a cell (``surrogate.seed``, ``victim.seed``);
* ``variant``: the experiment file's variant, recorded in the results.

The ``data``, ``victim``, ``defense`` settings, ``evaluate`` and ``runtime`` sections are shared
by every cell. ``run_matrix(config, workdir)`` checks every name, spec and defense (a defense
that does not apply to the data, such as grayscale on one-channel images, is refused) before
anything is written; then it crafts each (protection, seed) once into
``workdir/poisons/<protection>/seed<k>`` (``crafting.craft``, when a cell needs it) and trains
each (protection, defense, victim, seed) cell with ``victims.evaluate`` under
``workdir/runs/...``. The clean victim of each victim recipe and seed is undefended and
shared by every cell of it (``evaluate.clean_workdir`` under ``workdir/clean``); the clean
protection's cells under a defense train the defended victim on clean images. Each craft and
cell is recorded in ``workdir/cells/*.json``, keyed by the hash of what it computes from
(``cell_key``): a record of the same key is not computed again, so a killed matrix continues
where it stopped. ``results.json`` (every cell: accuracy, clean accuracy, seconds) and
``table.md`` (rows protection, columns defense, one table per victim: mean +- std over seeds
and n) are rewritten after every cell, ``heatmap.png`` (one panel per victim) at the end.

Overrides of the matrix config's ``surrogate`` / ``craft`` sections reach only the protections
without a spec file; ``matrix.overrides`` reaches every one. A cell's directories are named by
protection, defense, victim and seed, so changing a setting of a finished cell (say the
victim's epochs) is refused by its resumable runs: use another workdir.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from jaxprotect import checks, config as config_lib, data, defenses, models, parallel, runner
from jaxprotect.unlearnable import crafting, victims

__all__ = ["BUILTIN", "CRAFT_SECTIONS", "PROTECTIONS", "VICTIM_RECIPES", "cell_key", "matrix_config", "parse_spec",
           "parse_victim", "protection_config", "render_table", "run_matrix", "summarize"]

PROTECTIONS = ("clean", "random", "em_sample", "em_class", "mi_ue", "pue", "ar", "lsp", "ops")
# The sections a protection's config file contributes (the rest are the matrix's, shared by every cell).
CRAFT_SECTIONS = ("surrogate", "craft", "pue", "baseline")
# A protection's changes of the matrix config's own crafting sections when matrix.specs has no entry for it.
# MI-UE's step sizes are set relative to craft.eps (0.2/255 -> 0.4/255 at 8/255) by protection_config.
BUILTIN: dict[str, tuple[str, ...] | None] = {
    "clean": None,
    "random": ("craft.method=random",),
    "em_sample": ("craft.method=em", "craft.mode=sample"),
    "em_class": ("craft.method=em", "craft.mode=class"),
    "mi_ue": ("craft.method=mi_ue", "craft.mode=sample", "craft.train_steps=0", "craft.stop_error=0.0",
              "craft.pgd.steps=10", "craft.clean_augment=flip", "craft.delta_init=zeros",
              "surrogate.optimizer.weight_decay=0.0001", "surrogate.optimizer.grad_clip=0.0",
              "surrogate.optimizer.schedule=cosine"),
    "pue": ("craft.method=pue",),
    "ar": ("craft.method=ar", "craft.clean_augment="),
    "lsp": ("craft.method=lsp", "craft.clean_augment="),
    "ops": ("craft.method=ops", "craft.mode=sample", "craft.clean_augment="),
}
_MI_UE_STEPS = (0.2 / 8, 0.4 / 8)  # MI-UE's step sizes as fractions of eps (experiments/mi_ue.py)
SINGLE_SEED_MARK = "*"


def matrix_config() -> ml_collections.ConfigDict:
  """``unlearnable_config()`` plus the ``matrix`` section (see the module). Locked."""
  c = crafting.unlearnable_config()
  with c.unlocked():
    c.matrix = ml_collections.ConfigDict(dict(
        protections=("clean", "random", "em_sample", "em_class", "ar", "lsp", "ops"),
        specs=ml_collections.ConfigDict(),  # name -> "[file.py[:variant]]|override|..." (filled by experiment files)
        eps=0.0,  # > 0: every protection's craft.eps, its step sizes scaled to keep their ratio to it
        overrides=(),  # "section.field=value" applied to every protection after its spec and eps
        defenses=("none",),
        victims=("default",),  # "default" (the victim section) or "model[:key=value...]"
        seeds=(0,),
        variant="",
    ))
  return config_lib.lock(c)


# ---------------------------------------------------------------------------------------
# Names and configs
# ---------------------------------------------------------------------------------------

def _names(values: Any, field: str, known: Sequence[str], what: str) -> tuple[str, ...]:
  if isinstance(values, str):
    values = tuple(v for v in values.split(",") if v)
  values = tuple(values)
  if not values:
    raise ValueError(f"{field}: expected at least one {what}; use {', '.join(known)}")
  bad = [v for v in values if v not in known]
  if bad:
    raise ValueError(f"{field}: unknown {what}(s) {bad}; use {', '.join(known)}")
  dup = sorted({v for v in values if values.count(v) > 1})
  if dup:
    raise ValueError(f"{field}: {what}(s) {dup} listed more than once")
  return values


# Named victim recipes: the victim section's fields they set (the rest stay the victim section's).
VICTIM_RECIPES: dict[str, tuple[str, ...]] = {
    # A fast recipe in the spirit of airbench (Jordan 2024): a small network, a large batch,
    # Nesterov momentum with a short warm-up, label smoothing and few epochs, so that a matrix
    # of dozens of cells is affordable. On full Fashion-MNIST, clean: 90.2% in a fifth of the
    # steps of the 15-epoch small-CNN recipe (92.3%); docs/results/unlearnable.md.
    "fast": ("victim.model=small_cnn", "victim.epochs=6", "victim.batch_size=256", "victim.optimizer.name=sgd",
             "victim.optimizer.lr=0.1", "victim.optimizer.momentum=0.9", "victim.optimizer.nesterov=True",
             "victim.optimizer.warmup_epochs=0.5", "victim.optimizer.schedule=cosine", "victim.label_smoothing=0.1"),
}


def parse_victim(text: str, field: str = "matrix.victims") -> tuple[str, list[str]]:
  """``"resnet18:width=8"`` -> ``("resnet18-width=8", ["victim.model=resnet18",
  "victim.model_kwargs.width=8"])``; ``"default"``: the victim section as it is; a name of
  ``VICTIM_RECIPES`` (e.g. ``"fast"``, ``"fast:width=16"``): that recipe's fields, then the
  model keywords. An unknown model is a ValueError, naming ``field``, that lists the known
  ones."""
  model, *kwargs = str(text).split(":")
  if model == "default":
    if kwargs:
      raise ValueError(f"{field}: {text!r}: 'default' takes no keywords")
    return "default", []
  if model in VICTIM_RECIPES:
    overrides = list(VICTIM_RECIPES[model])
  elif model.lower() not in models.names():
    raise ValueError(f"{field}: unknown model {model!r} in {text!r}; use 'default', a recipe "
                     f"({', '.join(VICTIM_RECIPES)}) or one of {', '.join(models.names())} (model[:key=value...])")
  else:
    overrides = [f"victim.model={model}"]
  for kv in kwargs:
    key, eq, value = kv.partition("=")
    if not eq or not key:
      raise ValueError(f"{field}: {text!r}: expected model[:key=value...], got {kv!r}")
    overrides.append(f"victim.model_kwargs.{key}={value}")
  return "-".join([model, *kwargs]), overrides


def parse_spec(spec: str) -> tuple[str, list[str]]:
  """``"path/em.py:variant|craft.mode=class|..."`` -> ``("path/em.py:variant", ["craft.mode=class",
  ...])``; the file part may be empty (the matrix config's own crafting sections)."""
  if not isinstance(spec, str):
    raise ValueError(f"matrix.specs: expected a string '[file.py[:variant]]|override|...', got {spec!r}")
  file, *overrides = spec.split("|")
  return file.strip(), [o.strip() for o in overrides if o.strip()]


def _base(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A locked ``unlearnable_config()``-shaped copy of ``config`` (without ``matrix``)."""
  c = crafting.unlearnable_config()
  for section in c.keys():
    c[section] = copy.deepcopy(config[section])
  return config_lib.lock(c)


def protection_config(config: ml_collections.ConfigDict, name: str, specs: Mapping[str, str] | None = None
                      ) -> ml_collections.ConfigDict:
  """The crafting config of protection ``name`` (not ``clean``): the matrix config's sections,
  its crafting sections from ``specs[name]``'s file if it names one, the spec's overrides (or
  ``BUILTIN[name]``), then ``matrix.eps`` and ``matrix.overrides``."""
  m = config.matrix
  specs = m.specs.to_dict() if specs is None else dict(specs)
  c = _base(config)
  where = f"matrix.specs.{name}"
  if name in specs:
    file, overrides = parse_spec(specs[name])
    if file:
      try:
        other = config_lib.from_file(file)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      for section in CRAFT_SECTIONS:
        c[section] = copy.deepcopy(other[section])
      config_lib.lock(c)
  else:
    overrides = list(BUILTIN[name] or ())
  try:
    config_lib.apply_overrides(c, overrides)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if name == "mi_ue" and name not in specs:
    c.craft.pgd.step_size, c.craft.pgd.step_size_end = (f * c.craft.eps for f in _MI_UE_STEPS)
  if m.eps:
    if not 0 < m.eps <= 1:
      raise ValueError(f"matrix.eps must be in (0, 1] (pixel units) or 0 (each protection's own), got {m.eps}")
    scale = m.eps / c.craft.eps
    c.craft.eps = float(m.eps)
    c.craft.pgd.step_size *= scale
    if c.craft.pgd.step_size_end is not None:
      c.craft.pgd.step_size_end *= scale
  try:
    config_lib.apply_overrides(c, list(m.overrides))
  except ValueError as e:
    raise ValueError(f"matrix.overrides: {e}") from None
  return c


def cell_key(c: ml_collections.ConfigDict, protection: str) -> str:
  """The hash of what a cell computes from: ``data``, ``victim``, the defense's settings, the
  ``evaluate`` settings but its directories, and the poison's crafting hash (none: clean)."""
  ev = {k: v for k, v in c.evaluate.to_dict().items() if k not in ("poison", "clean_workdir")}
  poison = "clean" if protection == "clean" else crafting.crafting_hash(c)
  return config_lib.phase_hash(c, victims.VICTIM_SECTIONS, defense=defenses.from_config(c.defense).record(),
                               evaluate=ev, poison=poison)


def _plan(config: ml_collections.ConfigDict, specs: Mapping[str, str] | None):
  """Checks the matrix section and builds every protection's config (nothing written)."""
  if "matrix" not in config:
    raise ValueError("config: no matrix section; start from unlearnable.matrix.matrix_config()")
  config_lib.check_fields(_base(config), crafting.unlearnable_config())
  m = config.matrix
  protections = _names(m.protections, "matrix.protections", PROTECTIONS, "protection")
  names = _names(m.defenses, "matrix.defenses", defenses.NAMES, "defense")
  if not isinstance(m.victims, (tuple, list, str)):
    raise ValueError(f"matrix.victims: expected a tuple of 'default' or 'model[:key=value...]', got {m.victims!r}")
  victim_list = [parse_victim(v) for v in (m.victims.split(",") if isinstance(m.victims, str) else m.victims)]
  if not victim_list:
    raise ValueError("matrix.victims: expected at least one victim ('default' or 'model[:key=value...]')")
  labels = [label for label, _ in victim_list]
  if len(set(labels)) != len(labels):
    raise ValueError(f"matrix.victims: a victim is listed more than once: {list(m.victims)}")
  seeds = tuple(m.seeds) if isinstance(m.seeds, (tuple, list)) else (m.seeds,)
  if not seeds:
    raise ValueError("matrix.seeds: expected at least one seed")
  seeds = tuple(checks.check_positive_int(s, "matrix.seeds", minimum=0) for s in seeds)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"matrix.seeds: a seed is listed more than once: {list(seeds)}")
  specs = m.specs.to_dict() if specs is None else dict(specs)
  unknown = sorted(set(specs) - set(PROTECTIONS))
  if unknown:
    raise ValueError(f"matrix.specs: unknown protection(s) {unknown}; use {', '.join(PROTECTIONS)}")
  if "clean" in specs:
    raise ValueError("matrix.specs.clean: the clean protection is no poison and takes no spec")
  defense_section = config.defense.to_dict()
  if defense_section.get("clean"):
    raise ValueError("defense.clean: the matrix's clean victims are undefended; the clean protection's row holds "
                     "the defended victims trained on clean images")
  chosen = {d: defenses.from_config({**defense_section, "name": d}) for d in names}
  configs = {p: protection_config(config, p, specs) for p in protections if p != "clean"}
  for c in configs.values():
    crafting.validate(c)
  return protections, chosen, victim_list, seeds, configs, specs


def _cell_config(base: ml_collections.ConfigDict, seed: int, victim_overrides: Sequence[str],
                 defense: str) -> ml_collections.ConfigDict:
  c = copy.deepcopy(base)
  config_lib.lock(c)
  c.surrogate.seed = seed
  c.victim.seed = seed
  config_lib.apply_overrides(c, victim_overrides)
  c.defense.name = defense
  c.defense.clean = False
  return c


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------

def _cached(path: pathlib.Path, key: str, fn) -> tuple[dict[str, Any], bool]:
  """``(fn()'s record, True)`` stored at ``path`` under ``key``, or ``(the stored record,
  False)`` when ``path`` holds one of the same key."""
  if path.exists():
    stored = json.loads(path.read_text())
    if stored.get("key") == key:
      return stored["record"], False
  record = fn()
  if parallel.is_main_process():
    config_lib.write_json_atomic(path, {"key": key, "record": record})
  return record, True


def run_matrix(config: ml_collections.ConfigDict, workdir: os.PathLike | str,
               specs: Mapping[str, str] | None = None, mesh=None) -> dict[str, Any]:
  """Runs (or continues) the matrix of ``config`` (a ``matrix_config()``) in ``workdir``;
  ``specs`` replaces ``config.matrix.specs``. Returns (and writes) the results: ``cells``
  (one dict per (protection, defense, victim, seed): ``accuracy``, ``clean_accuracy``,
  ``seconds``, ``computed``, ...) and ``table`` (``summarize``)."""
  protections, chosen, victim_list, seeds, configs, specs = _plan(config, specs)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = data.from_config(config, mesh)
  for d in chosen.values():
    try:
      d.check_data(ds)  # e.g. grayscale on one-channel images: refused before anything is written
    except ValueError as e:
      raise ValueError(f"matrix.defenses: {d.name!r} does not apply to {ds.name!r}: {e}") from None
  base_clean = _base(config)
  workdir = pathlib.Path(workdir)
  t0 = time.time()
  cells: list[dict[str, Any]] = []
  crafted: dict[tuple[str, int], dict[str, Any]] = {}

  def poison_dir(p: str, seed: int) -> pathlib.Path:
    return workdir / "poisons" / p / f"seed{seed}"

  def craft_once(p: str, seed: int, c: ml_collections.ConfigDict) -> dict[str, Any]:
    if (p, seed) not in crafted:
      def do_craft():
        t = time.time()
        r = crafting.craft(c, poison_dir(p, seed), mesh, ds)
        return {"iterations": r.get("iterations"), "poison": r.get("poison"), "seconds": round(time.time() - t, 1)}
      crafted[(p, seed)], _ = _cached(workdir / "cells" / "crafts" / f"{p}-seed{seed}.json",
                                      crafting.crafting_hash(c), do_craft)
    return crafted[(p, seed)]

  for label, victim_overrides in victim_list:
    for seed in seeds:
      for p in protections:
        for d in chosen:
          c = _cell_config(configs.get(p, base_clean), seed, victim_overrides, d)
          recipe = config_lib.phase_hash(c, victims.VICTIM_SECTIONS)
          clean_dir = workdir / "clean" / f"{label}-seed{seed}-{recipe[:10]}"
          run_dir = workdir / "runs" / p / d / f"{label}-seed{seed}"
          c.evaluate.clean = True
          c.evaluate.clean_workdir = str(clean_dir)
          if p != "clean":
            c.evaluate.poison = str(poison_dir(p, seed))

          def do_cell(p=p, d=d, c=c, clean_dir=clean_dir, run_dir=run_dir, seed=seed):
            t = time.time()
            out: dict[str, Any] = {}
            if p == "clean":
              clean = runner.fit(c, clean_dir, mesh, dataset=ds, section="victim")
              run = clean if d == "none" else runner.fit(c, run_dir, mesh, dataset=ds, section="victim",
                                                         defense=chosen[d])
              acc, clean_acc = run["test_accuracy"], clean["test_accuracy"]
              out["run"] = str(clean_dir if d == "none" else run_dir)
            else:
              out["craft"] = craft_once(p, seed, configs[p])
              ev = victims.evaluate(c, run_dir, mesh)
              acc, clean_acc = ev["test_accuracy"]["poisoned"], ev["test_accuracy"]["clean"]
              out["run"] = str(run_dir)
              if ev.get("feature_mi"):
                out["feature_mi"] = ev["feature_mi"].get("poisoned")
            return {"accuracy": acc, "clean_accuracy": clean_acc, "clean_run": str(clean_dir), **out,
                    "seconds": round(time.time() - t, 1)}

          key = cell_key(c, p)
          record, computed = _cached(workdir / "cells" / f"{p}--{d}--{label}--seed{seed}.json", key, do_cell)
          cells.append({"protection": p, "defense": d, "victim": label, "seed": seed, "key": key, **record,
                        "computed": computed})
          _write(workdir, config, protections, list(chosen), victim_list, seeds, cells, time.time() - t0, specs)
  results = _write(workdir, config, protections, list(chosen), victim_list, seeds, cells, time.time() - t0, specs,
                   final=True)
  return results


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def _finite(x: float) -> float | None:
  return x if x is not None and math.isfinite(x) else None


def summarize(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """``{victim: {"clean": summary, "cells": {protection: {defense: summary}}}}``: the mean,
  sample standard deviation (None for one seed), n and values of the accuracies over seeds
  (fractions); ``clean`` summarises the undefended clean victims (one per seed)."""
  from jaxprotect import stats  # noqa: PLC0415

  def summary(values: list[float]) -> dict[str, Any]:
    s = stats.summary(values)
    return {"mean": s["mean"], "std": _finite(s["std"]), "n": s["n"], "values": values}

  out: dict[str, Any] = {}
  for victim in dict.fromkeys(c["victim"] for c in cells):
    vc = [c for c in cells if c["victim"] == victim]
    clean = {c["clean_run"]: c["clean_accuracy"] for c in vc}
    table: dict[str, dict[str, Any]] = {}
    for c in vc:
      table.setdefault(c["protection"], {}).setdefault(c["defense"], []).append(c["accuracy"])
    out[victim] = {"clean": summary(list(clean.values())),
                   "cells": {p: {d: summary(v) for d, v in row.items()} for p, row in table.items()}}
  return out


def render_table(table: Mapping[str, Any], protections: Sequence[str], defense_names: Sequence[str]) -> str:
  """Markdown of ``summarize``'s result: one table per victim, rows protection, columns
  defense; each cell ``mean +- std (n)`` in %, a single-seed cell marked ``*``."""
  lines = []
  single = False
  for victim, v in table.items():
    c = v["clean"]
    std = "" if c["std"] is None else f" +- {100 * c['std']:.2f}"
    lines += [f"## Victim `{victim}`", "",
              f"Clean-test accuracy (%), mean +- std over seeds (n). Undefended clean victims: "
              f"{100 * c['mean']:.2f}{std} (n={c['n']}).", "",
              "| protection | " + " | ".join(defense_names) + " |", "|---|" + "---|" * len(defense_names)]
    for p in protections:
      row = v["cells"].get(p, {})
      out = []
      for d in defense_names:
        s = row.get(d)
        if s is None:
          out.append("-")
        elif s["std"] is None:
          single = True
          out.append(f"{100 * s['mean']:.2f}{SINGLE_SEED_MARK} (n={s['n']})")
        else:
          out.append(f"{100 * s['mean']:.2f} +- {100 * s['std']:.2f} (n={s['n']})")
      lines.append(f"| {p} | " + " | ".join(out) + " |")
    lines.append("")
  if single:
    lines += [f"Marked {SINGLE_SEED_MARK}: one seed, no spread.", ""]
  return "\n".join(lines)


def _write(workdir: pathlib.Path, config, protections, defense_names, victim_list, seeds, cells, seconds: float,
           specs, final: bool = False) -> dict[str, Any]:
  table = summarize(cells)
  total = len(protections) * len(defense_names) * len(victim_list) * len(seeds)
  results = {
      "variant": config.matrix.variant, "protections": list(protections), "defenses": list(defense_names),
      "victims": [label for label, _ in victim_list], "seeds": list(seeds), "specs": dict(specs),
      "eps": config.matrix.eps or None, "overrides": list(config.matrix.overrides),
      "complete": len(cells) == total, "cells_done": len(cells), "cells_total": total,
      "computed": sum(1 for c in cells if c["computed"]), "seconds": round(seconds, 1),
      "cells": cells, "table": table,
  }
  if not parallel.is_main_process():
    return results
  head = (f"# Protection x defense matrix{f' ({config.matrix.variant})' if config.matrix.variant else ''}\n\n"
          f"{len(cells)} of {total} cells, seeds {list(seeds)}; this invocation {seconds / 60:.1f} min, "
          f"{results['computed']} cells computed.\n\n")
  (workdir).mkdir(parents=True, exist_ok=True)
  config_lib.write_json_atomic(workdir / "results.json", results)
  config_lib.write_bytes_atomic(workdir / "table.md", (head + render_table(table, protections, defense_names)).encode())
  if final:
    _heatmap(workdir / "heatmap.png", table, protections, defense_names)
  return results


def _heatmap(path: pathlib.Path, table: Mapping[str, Any], protections: Sequence[str],
             defense_names: Sequence[str]) -> None:
  """One panel per victim: mean accuracy (%) per protection (rows) and defense (columns)."""
  import numpy as np  # noqa: PLC0415

  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the matrix heatmap {path}")
  if plt is None:
    return
  n = len(table)
  fig, axes = plt.subplots(1, n, figsize=(1.0 + 0.9 * len(defense_names) * n, 0.9 + 0.45 * len(protections)),
                           squeeze=False)
  for ax, (victim, v) in zip(axes[0], table.items()):
    grid = np.full((len(protections), len(defense_names)), np.nan)
    for i, p in enumerate(protections):
      for j, d in enumerate(defense_names):
        s = v["cells"].get(p, {}).get(d)
        if s is not None:
          grid[i, j] = 100 * s["mean"]
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i in range(grid.shape[0]):
      for j in range(grid.shape[1]):
        if np.isfinite(grid[i, j]):
          ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                  color="white" if grid[i, j] < 60 else "black")
    ax.set_xticks(range(len(defense_names)), defense_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(protections)), protections, fontsize=7)
    ax.set_title(f"victim {victim}", fontsize=8)
  fig.colorbar(im, ax=axes[0].tolist(), label="clean-test accuracy (%)", shrink=0.8)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
