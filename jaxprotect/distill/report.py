"""The undistillability report: one row per teacher, from one or more attack directories.

Per teacher: its test accuracy; CE-student and LS-student accuracy (mean +- std over
seeds; LS at ``ls_eps``, default 0.1, and the best LS over the eps values run); the
knock-off accuracy of every attack; ``Delta = knock-off - LS`` (means); and the verdict
-- *undistillable* when ``Delta <= 0`` for every attack. Baseline students do not depend
on the teacher: an attack directory without them borrows them from another directory
given to the same report whose student setting (``student_key``) is identical.

Accuracies are in percent in the Markdown and fractions in the JSON. When the teachers'
directories hold their CMI(T) curves, ``cmi_curves.png`` plots them side by side.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from jaxprotect import config as config_lib
from jaxprotect.distill.attack import ATTACK_JSON, BASELINES
from jaxprotect.distill.curve import CURVE_JSON, plot_cmi_curves

__all__ = [
    "CURVES_PNG", "REPORT_JSON", "REPORT_MD", "build_report", "find_attack_dirs", "to_markdown",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "cmi_curves.png"


def find_attack_dirs(root: str | pathlib.Path) -> list[pathlib.Path]:
  """``root`` itself if it is an attack directory, else every attack directory below it."""
  root = pathlib.Path(root)
  if (root / ATTACK_JSON).exists():
    return [root]
  return sorted(p.parent for p in root.rglob(ATTACK_JSON))


def _stats(acc_by_seed: dict[str, float]) -> dict[str, Any]:
  vals = np.asarray(list(acc_by_seed.values()), np.float64)
  return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
          "n": int(len(vals)), "seeds": dict(acc_by_seed)}


def _teacher_label(t: dict[str, Any]) -> str:
  s = t.get("settings", {})
  extra = ""
  if t["method"] == "cmim" and "cmim" in s:
    c = s["cmim"]
    extra = f" lam={c['lam']:g} {c['aggregation']}/{c['weighting']}"
  elif t["method"] == "nasty" and "nasty" in s:
    extra = f" tau={s['nasty']['tau']:g} omega={s['nasty']['omega']:g}"
  return f"{t['method']}{extra} [{pathlib.Path(t['dir']).name}]"


def build_report(attack_dirs: list[str | pathlib.Path], ls_eps: float = 0.1) -> dict[str, Any]:
  """The report as a dict (see the module docstring)."""
  records = []
  for d in attack_dirs:
    path = pathlib.Path(d) / ATTACK_JSON
    if not path.exists():
      raise ValueError(f"{d} is not an attack directory (no {ATTACK_JSON}); run `jaxprotect distill attack` first")
    rec = json.loads(path.read_text())
    rec["_dir"] = str(d)
    records.append(rec)
  if not records:
    raise ValueError("no attack directories to report on")

  baselines: dict[str, dict[str, dict[str, float]]] = {}  # student_key -> run name -> accuracies
  for rec in records:
    for name, run in rec["runs"].items():
      if run["kind"] in BASELINES and run["accuracy"]:
        baselines.setdefault(rec["student_key"], {}).setdefault(name, {}).update(run["accuracy"])

  ls_name = f"ls_eps{ls_eps:g}"
  rows = []
  for rec in records:
    base = baselines.get(rec["student_key"], {})
    if ls_name not in base:
      raise ValueError(f"{rec['_dir']}: no LS student with eps {ls_eps:g} for this student setting; run the "
                       f"'ls' attack (attacks.ls_eps containing {ls_eps:g}) in this or another reported directory")
    ls = _stats(base[ls_name])
    ls_all = {n: _stats(v) for n, v in base.items() if n.startswith("ls_eps")}
    best_ls_name = max(ls_all, key=lambda n: ls_all[n]["mean"])
    attacks = {}
    for name in rec.get("run_order", list(rec["runs"])):
      run = rec["runs"][name]
      if run["kind"] in BASELINES or not run["accuracy"]:
        continue
      st = _stats(run["accuracy"])
      st["delta"] = st["mean"] - ls["mean"]
      st["delta_best_ls"] = st["mean"] - ls_all[best_ls_name]["mean"]
      attacks[name] = st
    max_delta = max((a["delta"] for a in attacks.values()), default=None)
    winners = [n for n, a in attacks.items() if a["delta"] > 0]
    if not attacks:
      verdict = "no attacks run"
    elif winners:
      verdict = "distillable (Delta > 0: " + ", ".join(winners) + ")"
    else:
      verdict = "undistillable (Delta <= 0 for every attack)"
    rows.append({
        "teacher": _teacher_label(rec["teacher"]),
        "teacher_method": rec["teacher"]["method"],
        "teacher_dir": rec["teacher"]["dir"],
        "teacher_settings": rec["teacher"].get("settings", {}),
        "teacher_accuracy": rec["teacher"]["test_accuracy"],
        "attack_dir": rec["_dir"],
        "student": rec["student"]["model"],
        "ce_student": _stats(base["ce"]) if "ce" in base else None,
        "ls_student": ls,
        "ls_eps": ls_eps,
        "ls_best": {"eps_run": best_ls_name, **ls_all[best_ls_name]},
        "attacks": attacks,
        "attack_order": list(attacks),  # the JSON file has sorted keys
        "max_delta": max_delta,
        "best_attack": max(attacks, key=lambda n: attacks[n]["mean"]) if attacks else None,
        "verdict": verdict,
    })
  return {"ls_eps": ls_eps, "teachers": rows}


def _pm(st: dict[str, Any] | None) -> str:
  if st is None:
    return "-"
  return f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
  """Summary table (one row per teacher) and one detail table per teacher."""
  rows = report["teachers"]
  attack_names: list[str] = []
  for r in rows:
    for n in r.get("attack_order", r["attacks"]):
      if n not in attack_names:
        attack_names.append(n)
  eps = report["ls_eps"]
  lines = ["# Undistillability report", "",
           f"Accuracies in % (mean ± std over seeds). Delta = knock-off − LS student (eps {eps:g}); "
           "a teacher is undistillable when Delta <= 0 for every attack.", "",
           "| teacher | teacher acc | CE student | LS student | " + " | ".join(attack_names)
           + " | max Delta | verdict |",
           "|" + " --- |" * (6 + len(attack_names))]
  for r in rows:
    cells = []
    for n in attack_names:
      a = r["attacks"].get(n)
      cells.append("-" if a is None else f"{_pm(a)} ({100 * a['delta']:+.2f})")
    md = "-" if r["max_delta"] is None else f"{100 * r['max_delta']:+.2f}"
    lines.append(f"| {r['teacher']} | {100 * r['teacher_accuracy']:.2f} | {_pm(r['ce_student'])} | "
                 f"{_pm(r['ls_student'])} | " + " | ".join(cells) + f" | {md} | {r['verdict'].split(' (')[0]} |")
  for r in rows:
    lines += ["", f"## {r['teacher']}", "",
              f"teacher accuracy {100 * r['teacher_accuracy']:.2f}; student {r['student']}; "
              f"CE student {_pm(r['ce_student'])}; LS student (eps {eps:g}) {_pm(r['ls_student'])}; "
              f"best LS ({r['ls_best']['eps_run']}) {_pm(r['ls_best'])}", "",
              "| attack | knock-off | Delta | Delta vs best LS | per seed |", "| --- | --- | --- | --- | --- |"]
    for n in r.get("attack_order", r["attacks"]):
      a = r["attacks"][n]
      seeds = ", ".join(f"{k}: {100 * v:.2f}" for k, v in a["seeds"].items())
      lines.append(f"| {n} | {_pm(a)} | {100 * a['delta']:+.2f} | {100 * a['delta_best_ls']:+.2f} | {seeds} |")
    lines += ["", f"Verdict: {r['verdict']}."]
  return "\n".join(lines) + "\n"


def write_report(workdir: str | pathlib.Path, attack_dirs: list[str | pathlib.Path],
                 ls_eps: float = 0.1) -> dict[str, Any]:
  """Builds the report and writes ``report.json`` and ``report.md`` into ``workdir``."""
  workdir = pathlib.Path(workdir)
  report = build_report(attack_dirs, ls_eps)
  config_lib.write_json_atomic(workdir / REPORT_JSON, report)
  tmp = workdir / f".{REPORT_MD}.tmp"
  tmp.write_text(to_markdown(report))
  tmp.replace(workdir / REPORT_MD)
  curves = {}
  for r in report["teachers"]:
    path = pathlib.Path(r["teacher_dir"]) / CURVE_JSON
    if path.exists():
      curves[r["teacher"]] = json.loads(path.read_text())
  if curves:  # the teachers' CMI(T) side by side
    plot_cmi_curves(curves, workdir / CURVES_PNG)
  return report
