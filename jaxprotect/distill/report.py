"""The undistillability report: one row per teacher, from one or more attack directories.

Per teacher: its test accuracy; CE-student and LS-student accuracy (mean +- std over
seeds; LS at ``ls_eps``, default 0.1, and the best LS over the eps values run); the
knock-off accuracy of every attack; and ``Delta = knock-off - LS student``, the
difference of the means over seeds with its Welch (unequal-variance) t interval at
``confidence`` (default 0.95; ``stats.welch``).

The rule. Per attack, the decision is *distillable* when the interval of Delta lies above
0, *undistillable* when it lies below 0, and *inconclusive* otherwise -- also when a side
has fewer than two seeds (the interval is then unbounded). Per teacher, the verdict is
*distillable* when any attack is distillable (named), *undistillable* only when every
attack is undistillable, and *inconclusive* otherwise (the inconclusive attacks named).
The same is reported for ``Delta_CE = knock-off - CE student``. Each teacher carries
``warnings``: "LS student below CE student" when the LS mean is below the CE mean (the
LS baseline is then the weaker one), and "fewer than 3 seeds" when a compared group has
fewer than three.

Baseline students do not depend on the teacher: an attack directory without them borrows
them from another directory given to the same report whose student setting
(``student_key``) is identical.

JSON (``report.json``): ``confidence``, ``ls_eps`` and ``teachers``, one row each with
``ce_student``/``ls_student``/``ls_best`` ({mean, std, n, seeds}), ``attacks[name]`` =
{mean, std, n, seeds, ``delta``, ``delta_interval`` [low, high], ``p``, ``decision``,
``delta_ce``, ``delta_ce_interval``, ``p_ce``, ``decision_ce``, ``delta_best_ls``},
``attack_order``, ``max_delta``, ``max_delta_ce``, ``best_attack``, ``decision`` and
``verdict`` (the three-way word, then the reason), ``decision_ce``/``verdict_ce``, and
``warnings``. An unbounded interval end or an undefined ``p`` is ``null``; the ``_ce``
fields are ``null`` when no CE student was run.

Accuracies are in percent in the Markdown and fractions in the JSON. When the teachers'
directories hold their CMI(T) curves, ``cmi_curves.png`` plots them side by side.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from jaxprotect import config as config_lib, stats
from jaxprotect.distill.attack import ATTACK_JSON, BASELINES
from jaxprotect.distill.curve import CURVE_JSON, plot_cmi_curves

__all__ = [
    "CURVES_PNG", "DECISIONS", "REPORT_JSON", "REPORT_MD", "build_report", "find_attack_dirs", "to_markdown",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "cmi_curves.png"
DECISIONS = ("distillable", "undistillable", "inconclusive")
MIN_SEEDS = 3  # fewer in a compared group: a warning


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


def _finite(x: float) -> float | None:
  return float(x) if math.isfinite(x) else None


def _delta(a: dict[str, Any], b: dict[str, Any], confidence: float) -> dict[str, Any]:
  """``mean(a) - mean(b)`` over seeds, its Welch interval, p and the three-way decision."""
  w = stats.welch(list(a["seeds"].values()), list(b["seeds"].values()), confidence)
  decision = "distillable" if w["low"] > 0 else "undistillable" if w["high"] < 0 else "inconclusive"
  return {"delta": w["diff"], "interval": [_finite(w["low"]), _finite(w["high"])], "p": _finite(w["p"]),
          "decision": decision}


def _verdict(decisions: dict[str, str], baseline: str, level: str) -> tuple[str, str]:
  """Teacher-level ``(decision, verdict)`` from the per-attack decisions."""
  if not decisions:
    return "inconclusive", "inconclusive (no attacks run)"
  winners = [n for n, d in decisions.items() if d == "distillable"]
  if winners:
    return "distillable", (f"distillable ({level} interval of Delta vs {baseline} above 0: "
                           + ", ".join(winners) + ")")
  if all(d == "undistillable" for d in decisions.values()):
    return "undistillable", f"undistillable ({level} interval of Delta vs {baseline} below 0 for every attack)"
  open_ = [n for n, d in decisions.items() if d == "inconclusive"]
  return "inconclusive", (f"inconclusive ({level} interval of Delta vs {baseline} contains 0: "
                          + ", ".join(open_) + ")")


def _teacher_label(t: dict[str, Any]) -> str:
  s = t.get("settings", {})
  extra = ""
  if t["method"] == "cmim" and "cmim" in s:
    c = s["cmim"]
    extra = f" lam={c['lam']:g} {c['aggregation']}/{c['weighting']}"
  elif t["method"] == "nasty" and "nasty" in s:
    extra = f" tau={s['nasty']['tau']:g} omega={s['nasty']['omega']:g}"
  return f"{t['method']}{extra} [{pathlib.Path(t['dir']).name}]"


def _level(confidence: float) -> str:
  return f"Welch {100 * confidence:g}%"


def build_report(attack_dirs: list[str | pathlib.Path], ls_eps: float = 0.1,
                 confidence: float = 0.95) -> dict[str, Any]:
  """The report as a dict (see the module docstring)."""
  if not 0 < confidence < 1:
    raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
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
  level = _level(confidence)
  rows = []
  for rec in records:
    base = baselines.get(rec["student_key"], {})
    if ls_name not in base:
      raise ValueError(f"{rec['_dir']}: no LS student with eps {ls_eps:g} for this student setting; run the "
                       f"'ls' attack (attacks.ls_eps containing {ls_eps:g}) in this or another reported directory")
    ls = _stats(base[ls_name])
    ce = _stats(base["ce"]) if "ce" in base else None
    ls_all = {n: _stats(v) for n, v in base.items() if n.startswith("ls_eps")}
    best_ls_name = max(ls_all, key=lambda n: ls_all[n]["mean"])
    attacks = {}
    for name in rec.get("run_order", list(rec["runs"])):
      run = rec["runs"][name]
      if run["kind"] in BASELINES or not run["accuracy"]:
        continue
      st = _stats(run["accuracy"])
      d = _delta(st, ls, confidence)
      st.update(delta=d["delta"], delta_interval=d["interval"], p=d["p"], decision=d["decision"])
      d = _delta(st, ce, confidence) if ce is not None else dict.fromkeys(("delta", "interval", "p", "decision"))
      st.update(delta_ce=d["delta"], delta_ce_interval=d["interval"], p_ce=d["p"], decision_ce=d["decision"])
      st["delta_best_ls"] = st["mean"] - ls_all[best_ls_name]["mean"]
      attacks[name] = st
    decision, verdict = _verdict({n: a["decision"] for n, a in attacks.items()}, f"LS eps {ls_eps:g}", level)
    decision_ce, verdict_ce = (_verdict({n: a["decision_ce"] for n, a in attacks.items()}, "CE", level)
                               if ce is not None else (None, None))
    warnings = []
    if ce is not None and ls["mean"] < ce["mean"]:
      warnings.append(f"LS student below CE student (the baseline is weak: LS eps {ls_eps:g} "
                      f"{100 * ls['mean']:.2f}% < CE {100 * ce['mean']:.2f}%; Delta vs CE is the stricter test)")
    groups = {ls_name: ls, **({"ce": ce} if ce is not None else {}), **attacks}
    few = {n: g["n"] for n, g in groups.items() if g["n"] < MIN_SEEDS}
    if few:
      warnings.append(f"fewer than {MIN_SEEDS} seeds (" + ", ".join(f"{n}: {k}" for n, k in few.items())
                      + "): the intervals are wide, or unbounded with one seed")
    rows.append({
        "teacher": _teacher_label(rec["teacher"]),
        "teacher_method": rec["teacher"]["method"],
        "teacher_dir": rec["teacher"]["dir"],
        "teacher_settings": rec["teacher"].get("settings", {}),
        "teacher_accuracy": rec["teacher"]["test_accuracy"],
        "attack_dir": rec["_dir"],
        "student": rec["student"]["model"],
        "ce_student": ce,
        "ls_student": ls,
        "ls_eps": ls_eps,
        "ls_best": {"eps_run": best_ls_name, **ls_all[best_ls_name]},
        "attacks": attacks,
        "attack_order": list(attacks),  # the JSON file has sorted keys
        "max_delta": max((a["delta"] for a in attacks.values()), default=None),
        "max_delta_ce": max((a["delta_ce"] for a in attacks.values()), default=None) if ce is not None else None,
        "best_attack": max(attacks, key=lambda n: attacks[n]["mean"]) if attacks else None,
        "decision": decision,
        "verdict": verdict,
        "decision_ce": decision_ce,
        "verdict_ce": verdict_ce,
        "warnings": warnings,
    })
  return {"ls_eps": ls_eps, "confidence": confidence, "teachers": rows}


def _pm(st: dict[str, Any] | None) -> str:
  if st is None:
    return "-"
  return f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}"


def _bound(x: float | None, sign: str) -> str:
  return f"{sign}inf" if x is None else f"{100 * x:+.2f}"


def _delta_md(delta: float | None, interval: list[float | None] | None) -> str:
  """``+0.02 [-1.43, +1.47]`` (percentage points)."""
  if delta is None:
    return "-"
  lo, hi = interval
  return f"{100 * delta:+.2f} [{_bound(lo, '-')}, {_bound(hi, '+')}]"


def _p_md(p: float | None) -> str:
  return "-" if p is None else f"{p:.3g}"


def to_markdown(report: dict[str, Any]) -> str:
  """Summary table (one row per teacher) and one detail table per teacher."""
  rows = report["teachers"]
  attack_names: list[str] = []
  for r in rows:
    for n in r.get("attack_order", r["attacks"]):
      if n not in attack_names:
        attack_names.append(n)
  eps = report["ls_eps"]
  level = _level(report.get("confidence", 0.95))
  lines = ["# Undistillability report", "",
           f"Accuracies in % (mean ± std over seeds). Delta = knock-off − LS student (eps {eps:g}): difference of "
           f"the means over seeds, in percentage points, with its {level} interval [low, high]. Per attack: "
           "distillable when the interval lies above 0, undistillable when below 0, inconclusive otherwise "
           "(also with fewer than 2 seeds on a side). A teacher is distillable when any attack is, undistillable "
           "only when every attack is, inconclusive otherwise. The same rule is applied to Delta vs the CE "
           "student.", "",
           "| teacher | teacher acc | CE student | LS student | " + " | ".join(attack_names)
           + " | max Delta | verdict | verdict vs CE | warnings |",
           "|" + " --- |" * (8 + len(attack_names))]
  for r in rows:
    cells = []
    for n in attack_names:
      a = r["attacks"].get(n)
      cells.append("-" if a is None else f"{_pm(a)} (Delta {_delta_md(a['delta'], a['delta_interval'])})")
    md = "-" if r["max_delta"] is None else f"{100 * r['max_delta']:+.2f}"
    lines.append(f"| {r['teacher']} | {100 * r['teacher_accuracy']:.2f} | {_pm(r['ce_student'])} | "
                 f"{_pm(r['ls_student'])} | " + " | ".join(cells)
                 + f" | {md} | {r['decision']} | {r['decision_ce'] or '-'} | {len(r['warnings']) or '-'} |")
  for r in rows:
    lines += ["", f"## {r['teacher']}", "",
              f"teacher accuracy {100 * r['teacher_accuracy']:.2f}; student {r['student']}; "
              f"CE student {_pm(r['ce_student'])}; LS student (eps {eps:g}) {_pm(r['ls_student'])}; "
              f"best LS ({r['ls_best']['eps_run']}) {_pm(r['ls_best'])}", "",
              f"| attack | knock-off | Delta vs LS [{level}] | p | decision | Delta vs CE [{level}] | p | "
              "decision vs CE | Delta vs best LS | per seed |",
              "|" + " --- |" * 10]
    for n in r.get("attack_order", r["attacks"]):
      a = r["attacks"][n]
      seeds = ", ".join(f"{k}: {100 * v:.2f}" for k, v in a["seeds"].items())
      lines.append(f"| {n} | {_pm(a)} | {_delta_md(a['delta'], a['delta_interval'])} | {_p_md(a['p'])} | "
                   f"{a['decision']} | {_delta_md(a['delta_ce'], a['delta_ce_interval'])} | {_p_md(a['p_ce'])} | "
                   f"{a['decision_ce'] or '-'} | {100 * a['delta_best_ls']:+.2f} | {seeds} |")
    lines += ["", f"Verdict: {r['verdict']}."]
    if r["verdict_ce"] is not None:
      lines.append(f"Verdict vs CE: {r['verdict_ce']}.")
    for w in r["warnings"]:
      lines.append(f"Warning: {w}.")
  return "\n".join(lines) + "\n"


def write_report(workdir: str | pathlib.Path, attack_dirs: list[str | pathlib.Path],
                 ls_eps: float = 0.1, confidence: float = 0.95) -> dict[str, Any]:
  """Builds the report and writes ``report.json`` and ``report.md`` into ``workdir``."""
  workdir = pathlib.Path(workdir)
  report = build_report(attack_dirs, ls_eps, confidence)
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
