"""The multi-seed comparison of the unlearnable-examples methods: each method crafted with
several crafting seeds (``surrogate.seed``), a victim trained on each poison, and the
methods compared by Welch intervals over the seeds rather than by single runs.

  python experiments/unlearnable_seeds.py --variant fashion_mnist_mini --workdir runs/ue_seeds \\
      [--seeds 0,1,2] [--methods em_sample,em_class,mi_ue,mi_ue_fixed,random] [--eps 0.3] \\
      [--depth-victims mlp,resnet18:width=8] [--only-victims LABELS] [--records DIR] [--table-only]
      [--config.<section>.<field>=<value> ...]

Methods (``METHODS``): ``em_sample`` (experiments/em.py, sample-wise), ``em_sample_ref``
(em.py's ``,reference`` recipe), ``em_class`` (em.py ``,classwise``), ``mi_ue``
(experiments/mi_ue.py: PGD batches in a new order every outer iteration), ``mi_ue_fixed``
(the same with ``craft.reshuffle=never``, the fixed order of earlier runs) and ``random``
(uniform noise in [-eps, eps], the control).

Seeds: the run of crafting seed s trains its victim with ``victim.seed = s`` too, and each
victim seed has one clean victim per victim recipe (``evaluate.clean_workdir`` under
``<workdir>/clean``), shared by every method with that recipe: the clean row has one victim
per seed, and poisoned and clean victims of a seed start from the same initial weights.
``--eps`` sets ``craft.eps`` and scales every method's PGD step sizes by ``eps / (8/255)``,
keeping each method's ratio of step size to radius; ``--config.*`` overrides are applied to
every run after that (they may set the step sizes themselves) and before the seeds.
``--depth-victims``: victims of other architectures trained on the same poisons
(``model[:key=value...]``, the keys going to ``victim.model_kwargs``), each with its own
clean victims; each craft's victims train right after it (seed by seed, method by method).
``--only-victims``: the victims trained this time, by their labels in the table (``resnet18``,
``small_cnn(width=32)``); the others' rows come from their records where they exist, and nothing
of theirs runs (e.g. the cheap depth victims of every cell first, the costly ones later).

Every craft and victim is a resumable run directory under ``--workdir``; a run whose record
(``records/*.json``, keyed by the hash of its config) exists is not run again. ``--records DIR``
keeps the records elsewhere, e.g. under version control: they outlive the run directories, so a
table too long for one machine's session grows over several (``run_one``), and the full-set
table's records are in docs/results/records/ue_seeds_full. Keys leave out the run directories'
paths, so records hold under another ``--workdir``. ``--table-only`` runs nothing and
writes the table of what is recorded. ``table.md``
and ``table.json`` are rewritten after every run, so a partial table can be read while the
rest runs. Per victim architecture and method: victim accuracy mean +- std over seeds, the
Welch 95% interval of the difference of means to the clean victims and to ``em_sample``
(``stats.welch``; "lower"/"higher" only where the interval excludes 0, ``stats.compare``),
the feature MI (Gaussian and KSG, ``evaluate.feature_mi_examples``) of the poisoned victims
mean +- std, and the Pearson correlation (``stats.pearson``) between feature MI and victim
accuracy over every (poison, poisoned victim) pair of that architecture, per estimator
(and again without the random control); under each table, the Welch interval of MI-UE
reshuffled minus MI-UE in the fixed order (``PAIRS``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
# name -> (experiments/<file:variant> with {v} the variant, the method's own overrides, its label)
METHODS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "em_sample": ("em.py:{v}", (), "EM sample-wise"),
    "em_sample_ref": ("em.py:{v},reference", (), "EM sample-wise, reference recipe"),
    "em_class": ("em.py:{v},classwise", (), "EM class-wise"),
    "mi_ue": ("mi_ue.py:{v}", (), "MI-UE, reshuffled batches"),
    "mi_ue_fixed": ("mi_ue.py:{v}", ("craft.reshuffle=never",), "MI-UE, fixed batch order"),
    "random": ("em.py:{v},random", (), "uniform random (control)"),
    "pue": ("pue.py:{v}", (), "PUE sample-wise"),
    "pue_class": ("pue.py:{v},classwise", (), "PUE class-wise"),
}
DEFAULT_METHODS = ("em_sample", "em_class", "mi_ue", "mi_ue_fixed", "random")
BASELINE = "em_sample"
# Further differences of means under each table (the table has each method minus the clean victims
# and minus BASELINE): (a, b) -> the Welch interval of mean(a) - mean(b).
PAIRS = (("mi_ue", "mi_ue_fixed"),)
CONTROL = "random"  # left out of the second Pearson correlation ("crafted poisons only")
BASE_EPS = 8 / 255  # the radius the methods' step sizes are set for
ESTIMATORS = ("gaussian", "ksg")
# evaluate fields that say where a run's poison and clean victim are, not what they are
PLACE_FIELDS = ("poison", "clean", "clean_workdir")
CONFIDENCE = 0.95


def parse_victim(text: str) -> tuple[str, list[str]]:
  """``"resnet18:width=8"`` -> ``("resnet18(width=8)", ["victim.model=resnet18",
  "victim.model_kwargs.width=8"])``; ``"default"``: the variant's victim, no overrides. The
  overrides are ``matrix.parse_victim``'s; the label keeps this driver's record names."""
  from jaxprotect.unlearnable import matrix

  _, overrides = matrix.parse_victim(text, field="--depth-victims")
  model, *kwargs = text.split(":")
  label = model + (f"({','.join(kwargs)})" if kwargs else "")
  return label, overrides


def split_labels(text: str) -> list[str]:
  """``"resnet18,small_cnn(width=32,depth=3)"`` -> ``["resnet18", "small_cnn(width=32,depth=3)"]``:
  commas inside parentheses belong to a label."""
  out, depth, cur = [], 0, ""
  for ch in text:
    depth += (ch == "(") - (ch == ")")
    if ch == "," and depth == 0:
      out.append(cur)
      cur = ""
    else:
      cur += ch
  return [x.strip() for x in [*out, cur] if x.strip()]


def method_config(method: str, variant: str, overrides: Sequence[str] = (), seed: int = 0, eps: float | None = None,
                  victim: Sequence[str] = ()):
  """The config of one run: ``METHODS[method]`` at ``variant``, its step sizes scaled to
  ``eps`` (if given), the user's ``overrides``, crafting and victim seed ``seed``, then the
  ``victim`` overrides (another architecture)."""
  from jaxprotect import config as config_lib

  spec, own, _ = METHODS[method]
  c = config_lib.from_file(REPO / "experiments" / spec.format(v=variant))
  config_lib.apply_overrides(c, own)
  if eps is not None:
    scale = eps / BASE_EPS
    c.craft.eps = eps
    c.craft.pgd.step_size *= scale
    if c.craft.pgd.step_size_end is not None:
      c.craft.pgd.step_size_end *= scale
  config_lib.apply_overrides(c, overrides)
  c.surrogate.seed = seed
  c.victim.seed = seed
  return config_lib.apply_overrides(c, victim)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

def _finite(x: float) -> float | None:
  return x if math.isfinite(x) else None


def _welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  from jaxprotect import stats

  w = stats.welch(a, b, CONFIDENCE)
  return {**{k: (_finite(v) if isinstance(v, float) else v) for k, v in w.items()},
          "verdict": stats.compare(a, b, CONFIDENCE)}


def _summary(values: Sequence[float]) -> dict[str, Any]:
  from jaxprotect import stats

  s = stats.summary(values)
  return {**{k: (_finite(v) if isinstance(v, float) else v) for k, v in s.items()}, "values": list(values)}


def build_table(runs: Sequence[dict[str, Any]], methods: Sequence[str], baseline: str = BASELINE) -> dict[str, Any]:
  """The comparison of ``runs`` (one dict per (method, seed, victim): ``method``, ``seed``,
  ``victim``, ``accuracy``, ``clean_accuracy``, ``clean_dir``, ``feature_mi`` {estimator:
  nats}): per victim architecture, the clean victims (one per clean run directory, i.e.
  per victim seed and recipe), per method the accuracy and feature-MI summaries over seeds
  and the Welch intervals of its accuracy minus the clean victims' (of its own recipe) and
  minus ``baseline``'s, and the Pearson correlation of feature MI and accuracy over all
  runs of the architecture (and over those of the crafted poisons, without ``CONTROL``),
  and the Welch intervals of ``PAIRS``. Accuracies are fractions; differences too."""
  out: dict[str, Any] = {"confidence": CONFIDENCE, "baseline": baseline, "victims": {}}
  for victim in dict.fromkeys(r["victim"] for r in runs):
    vr = [r for r in runs if r["victim"] == victim]
    clean_dirs: dict[str, float] = {}
    for r in vr:
      clean_dirs.setdefault(r["clean_dir"], r["clean_accuracy"])
    rows = {}
    for m in methods:
      mr = sorted((r for r in vr if r["method"] == m), key=lambda r: r["seed"])
      if not mr:
        continue
      acc = [r["accuracy"] for r in mr]
      own_clean = [clean_dirs[d] for d in dict.fromkeys(r["clean_dir"] for r in mr)]
      row = {"seeds": [r["seed"] for r in mr], "accuracy": _summary(acc),
             "clean": _summary(own_clean), "vs_clean": _welch(acc, own_clean)}
      base = sorted((r for r in vr if r["method"] == baseline), key=lambda r: r["seed"])
      if m != baseline and base:
        row["vs_baseline"] = _welch(acc, [r["accuracy"] for r in base])
      mi_of = {e: [r["feature_mi"][e] for r in mr if r.get("feature_mi", {}).get(e) is not None] for e in ESTIMATORS}
      row["feature_mi"] = {e: _summary(v) for e, v in mi_of.items() if v}  # over the seeds that have it
      rows[m] = row
    acc_of = {m: [r["accuracy"] for r in sorted((r for r in vr if r["method"] == m), key=lambda r: r["seed"])]
              for m in methods}
    pairs = {f"{a} - {b}": _welch(acc_of[a], acc_of[b]) for a, b in PAIRS if acc_of.get(a) and acc_of.get(b)}
    out["victims"][victim] = {"clean": _summary(list(clean_dirs.values())), "methods": rows, "pairs": pairs,
                              "pearson": _pearson(vr),
                              "pearson_crafted": _pearson([r for r in vr if r["method"] != CONTROL])}
  return out


def _pearson(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Pearson's r of feature MI and victim accuracy over ``runs``, per estimator."""
  from jaxprotect import stats

  out = {}
  for e in ESTIMATORS:
    pairs = [(r["feature_mi"][e], r["accuracy"]) for r in runs if r.get("feature_mi", {}).get(e) is not None]
    try:
      out[e] = stats.pearson([p[0] for p in pairs], [p[1] for p in pairs])
    except ValueError as err:  # fewer than 3 pairs
      out[e] = {"r": None, "p": None, "n": len(pairs), "error": str(err)}
    if out[e]["r"] is not None and not math.isfinite(out[e]["r"]):  # a constant side
      out[e] = {"r": None, "p": None, "n": len(pairs), "error": "constant values"}
  return out


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.2f}"


_WORDS = {"less": ", lower", "greater": ", higher"}  # "lower"/"higher" only where the interval excludes 0


def _interval(w: dict[str, Any] | None) -> str:
  from jaxprotect import stats

  return "" if w is None else stats.format_welch(w, words=_WORDS)


def _mean_std(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 2, single: str = " (1 seed)") -> str:
  from jaxprotect import stats

  return stats.format_summary(s, scale, digits, single) if s else "-"


def _mi(s: dict[str, Any] | None, acc: dict[str, Any], digits: int) -> str:
  """Feature MI mean +- std, with the number of seeds where not every seed has it."""
  if s is None:
    return ""
  n, total = len(s["values"]), len(acc["values"])
  if n < total:  # "n of total seeds" instead of "(1 seed)", which would hide that the row has more
    return _mean_std(s, digits=digits, single="") + f" ({n} of {total} seeds)"
  return _mean_std(s, digits=digits)


def render_table(table: dict[str, Any], labels: dict[str, str] | None = None) -> str:
  """Markdown of ``build_table``'s result: one table per victim architecture."""
  labels = labels or {m: spec[2] for m, spec in METHODS.items()}
  base = labels.get(table["baseline"], table["baseline"])
  conf = f"{100 * table['confidence']:.0f}%"
  lines = []
  for victim, v in table["victims"].items():
    lines += [f"Victim `{victim}`. Accuracies in %, differences in points with the Welch {conf} interval "
              "(\"lower\"/\"higher\" only where it excludes 0); feature MI in nats, mean +- std over seeds.", "",
              f"| poison | victim acc. mean +- std | per seed | minus clean | minus {base} | "
              "feature MI Gaussian | feature MI KSG |",
              "|---|---|---|---|---|---|---|"]
    c = v["clean"]
    lines.append(f"| none (clean) | {_mean_std(c, 100)} | {' / '.join(_pct(x) for x in c['values'])} | | | | |")
    for m, row in v["methods"].items():
      a = row["accuracy"]
      mi = row["feature_mi"]
      lines.append(f"| {labels.get(m, m)} | {_mean_std(a, 100)} | {' / '.join(_pct(x) for x in a['values'])} | "
                   f"{_interval(row['vs_clean'])} | {_interval(row.get('vs_baseline'))} | "
                   f"{_mi(mi.get('gaussian'), a, 1)} | {_mi(mi.get('ksg'), a, 2)} |")
    lines.append("")
    for name, w in v.get("pairs", {}).items():
      a, b = name.split(" - ")
      lines.append(f"- {labels.get(a, a)} minus {labels.get(b, b)}: {_interval(w)} points.")
    for key, what in (("pearson", "poisoned victims"), ("pearson_crafted", f"poisoned victims without {CONTROL}")):
      if key == "pearson_crafted" and CONTROL not in v["methods"]:  # the same victims as the line above
        continue
      for e in ESTIMATORS:
        p = v.get(key, {}).get(e, {})
        if p.get("r") is None:
          lines.append(f"- Pearson r (feature MI {e}, victim accuracy), {what}: not available "
                       f"({p.get('error', 'no values')}).")
        else:
          lines.append(f"- Pearson r (feature MI {e}, victim accuracy) over {p['n']} {what}: "
                       f"{p['r']:+.3f} (p = {p['p']:.2g}).")
    lines.append("")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------

def _stored(path: pathlib.Path, key: str) -> dict[str, Any] | None:
  """The record stored at ``path`` under ``key``, or None."""
  if path.exists():
    stored = json.loads(path.read_text())
    if stored.get("key") == key:
      return stored["record"]
  return None


def _store(path: pathlib.Path, key: str, record: dict[str, Any]) -> dict[str, Any]:
  from jaxprotect import config as config_lib, parallel

  if parallel.is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)
    config_lib.write_json_atomic(path, {"key": key, "record": record})
  return record


def record_keys(work: pathlib.Path, method: str, seed: int, victim: str, c,
                records: pathlib.Path | None = None) -> dict[str, Any]:
  """Points ``c`` at the run's poison and clean victim (``evaluate.poison``, ``evaluate.clean``,
  ``evaluate.clean_workdir``) and returns the run's directories and its record (path, key)
  pairs: ``craft``, ``eval`` and ``clean`` (whose key is ``recipe``)."""
  from jaxprotect import config as config_lib
  from jaxprotect.unlearnable import crafting, victims

  craft_dir = work / method / f"seed{seed}"
  c.evaluate.poison = str(craft_dir)
  c.evaluate.clean = True
  recipe = config_lib.phase_hash(c, victims.VICTIM_SECTIONS)
  clean_dir = work / "clean" / f"{victim}-seed{seed}-{recipe[:10]}"
  c.evaluate.clean_workdir = str(clean_dir)
  rec = records if records is not None else work / "records"
  craft_key = crafting.crafting_hash(c)
  # The victim's key leaves out where the runs are (the craft is in craft_key), so records stay
  # valid under another --workdir.
  evaluate = {k: v for k, v in c.evaluate.to_dict().items() if k not in PLACE_FIELDS}
  return {"craft_dir": craft_dir, "clean_dir": clean_dir, "recipe": recipe,
          "craft": (rec / f"{method}-seed{seed}-craft.json", craft_key),
          "eval": (rec / f"{method}-seed{seed}-{victim}.json",
                   config_lib.phase_hash(c, ("data", "victim"), crafting=craft_key, evaluate=evaluate)),
          "clean": rec / f"clean-{victim}-seed{seed}-{recipe[:10]}.json"}


def run_one(work: pathlib.Path, method: str, seed: int, victim: str, c,
            records: pathlib.Path | None = None, recorded_only: bool = False) -> dict[str, Any] | None:
  """Crafts (or restores) the poison of ``method`` at crafting seed ``seed`` and evaluates
  victim ``victim`` (a label) on it, with config ``c``; returns the run's row.

  Records (``records``, default ``work/records``) outlive the run directories: a victim whose
  record exists is not trained again, and its poison is not needed; a victim without one
  crafts its poison first (again, where the craft's directory is gone: deterministic on one
  machine, but another CPU or JAX version may craft another poison). The craft's record and
  each victim's keep the poison's digest (``delta_sha256``; a victim's: the poison it trained
  on); a craft made again with another digest than its record's is refused (ValueError), since
  its victims would sit in one row with the victims of the recorded poison.
  The clean victim of a seed and recipe has its own record: where it exists and the clean
  run directory does not, the poisoned victim trains alone, taking the clean accuracy from
  the record (its row then has no ``clean_feature_mi``). With ``recorded_only``, nothing runs:
  a run without records gives None."""
  from jaxprotect.unlearnable import craft, victims

  k = record_keys(work, method, seed, victim, c, records)
  craft_dir, clean_dir, recipe = k["craft_dir"], k["clean_dir"], k["recipe"]
  (craft_path, craft_key), (eval_path, eval_key), clean_path = k["craft"], k["eval"], k["clean"]
  crafted, evaluated = _stored(craft_path, craft_key), _stored(eval_path, eval_key)
  clean_known = _stored(clean_path, recipe)
  if recorded_only and (crafted is None or evaluated is None):
    return None
  if crafted is None or evaluated is None:
    t = time.time()
    r = craft(c, craft_dir)  # a finished craft is restored, not crafted again
    fresh = {"iterations": r["iterations"], "stopped_early": r["stopped_early"],
             "surrogate_perturbed_acc": r["perturbed_train_accuracy"],
             "surrogate_clean_acc": r["clean_train_accuracy"],
             "seconds": round(r.get("seconds", time.time() - t)),  # over every process that crafted it
             "delta_sha256": r.get("delta_sha256")}
    known = (crafted or {}).get("delta_sha256")  # records from before digests were kept have none
    if known is not None and fresh["delta_sha256"] != known:
      raise ValueError(f"{method} seed {seed}: the poison crafted in {craft_dir} (delta sha256 "
                       f"{fresh['delta_sha256']}) is not the recorded one ({known}, {craft_path}); another "
                       f"machine or JAX version crafted another poison. Move {method}-seed{seed}-*.json out of "
                       f"{craft_path.parent} to record this craft and train all its victims again")
    crafted = crafted or _store(craft_path, craft_key, fresh)
  if evaluated is None:
    if clean_known is not None and not (clean_dir / "results.json").exists():
      c.evaluate.clean = False
    t = time.time()
    ev = victims.evaluate(c, work / method / f"seed{seed}-{victim}")
    mi = ev.get("feature_mi", {})
    acc, took = ev["test_accuracy"], ev.get("seconds", {})
    if clean_known is None:  # the clean victim trained (or was restored) beside the poisoned one
      clean_known = _store(clean_path, recipe, {"accuracy": acc["clean"], "seconds": took.get("clean")})
    evaluated = _store(eval_path, eval_key, {
        "accuracy": acc["poisoned"], "clean_accuracy": clean_known["accuracy"],
        "feature_mi": {e: mi.get("poisoned", {}).get(e) for e in ESTIMATORS},
        "clean_feature_mi": {e: mi.get("clean", {}).get(e) for e in ESTIMATORS},
        "victim_config": ev["victim"],
        "seconds": round(took.get("poisoned") or time.time() - t),  # over its processes
        "delta_sha256": r.get("delta_sha256")})  # the poison it trained on (a restored craft may have none)
  return {"method": method, "seed": seed, "victim": victim, "clean_dir": str(clean_dir), "craft": crafted,
          "clean_seconds": (clean_known or {}).get("seconds"), **evaluated}  # older clean records lack it


def main(argv=None) -> int:
  from jaxprotect import flags, platform

  argv, spec, overrides = flags.split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="fashion_mnist_mini")
  p.add_argument("--workdir", default="runs/unlearnable_seeds")
  p.add_argument("--seeds", default="0,1,2", help="crafting seeds (each run's victim seed too)")
  p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list of {', '.join(METHODS)}")
  p.add_argument("--eps", type=float, default=None, help="radius; scales the step sizes (default: each method's)")
  p.add_argument("--depth-victims", default="", help="comma list of model[:key=value...] victims on the same poisons")
  p.add_argument("--only-victims", default="",
                 help="comma list of victim labels (as in the table) trained this time; the others' rows come "
                      "from their records only")
  p.add_argument("--records", default=None,
                 help="directory of the run records (default WORKDIR/records); records outlive the run directories")
  p.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs already recorded")
  args = p.parse_args(argv)
  if spec is not None:
    p.error("--config: the configs are experiments/em.py and mi_ue.py at --variant; "
            "override fields with --config.<section>.<field>=<value>")
  methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in methods if m not in METHODS]
  if bad:
    p.error(f"--methods: unknown {bad}; use {', '.join(METHODS)}")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  try:
    depth = [parse_victim(v) for v in args.depth_victims.split(",") if v]
  except ValueError as e:
    p.error(str(e))
  platform.apply_cpu_xla_flags()  # as the jaxprotect command does, before JAX starts
  from jaxprotect import parallel

  parallel.enable_compilation_cache()
  parallel.maybe_initialize_distributed()
  work = pathlib.Path(args.workdir)
  records = pathlib.Path(args.records) if args.records else None
  t0 = time.time()
  try:
    main_label = method_config(methods[0], args.variant, overrides, eps=args.eps).victim.model
    victim_list = [(main_label, []), *depth]
    labels = [label for label, _ in victim_list]
    only = split_labels(args.only_victims) or labels
    unknown = [v for v in only if v not in labels]
    if unknown:
      raise ValueError(f"--only-victims: unknown victim(s) {unknown}; this run's victims are {labels}")
    runs = []
    for seed in seeds:  # every victim of a craft right after it: a craft's directory is needed only then
      for m in methods:
        for label, victim_overrides in victim_list:
          c = method_config(m, args.variant, overrides, seed, args.eps, victim_overrides)
          r = run_one(work, m, seed, label, c, records, args.table_only or label not in only)
          if r is None:
            continue
          runs.append(r)
          print(f"[{time.time() - t0:6.0f}s] {m} seed {seed} victim {label}: {100 * r['accuracy']:.2f}% "
                f"(clean {100 * r['clean_accuracy']:.2f}%), craft {_seconds(r['craft']['seconds'])} "
                f"({r['craft']['iterations']} it.), victim {_seconds(r['seconds'])}", flush=True)
          write_outputs(work, args, overrides, methods, seeds, runs, time.time() - t0)
  except (ValueError, platform.MissingExtraError) as e:
    print(f"unlearnable_seeds: error: {e}", file=sys.stderr)
    return 1
  print((work / "table.md").read_text() if (work / "table.md").exists() else "")
  return 0


def _seconds(x: float | None) -> str:
  return "time not recorded" if x is None else f"{x}s"  # restored records lack their times


def write_outputs(work: pathlib.Path, args, overrides, methods, seeds, runs, seconds: float) -> None:
  from jaxprotect import parallel

  if not parallel.is_main_process():
    return
  table = build_table(runs, methods)
  work.mkdir(parents=True, exist_ok=True)
  extra = " ".join(f"--config.{o}" for o in overrides) or "-"
  craft_s = sum({(r["method"], r["seed"]): r["craft"]["seconds"] or 0 for r in runs}.values())
  victim_s = (sum(r["seconds"] or 0 for r in runs)  # None: a restored record without its time
              + sum({r["clean_dir"]: r.get("clean_seconds") or 0 for r in runs}.values()))  # each clean victim once
  head = (f"variant `{args.variant}`, methods {', '.join(methods)}, crafting seeds {seeds} (victim seed = crafting "
          f"seed), eps {args.eps if args.eps is not None else 'per method'}, extra arguments `{extra}`; "
          f"{len(runs)} runs: crafting {craft_s / 60:.1f} min and victims {victim_s / 60:.1f} min as recorded, "
          f"this invocation {seconds / 60:.1f} min\n\n")
  (work / "table.md").write_text(head + render_table(table))
  (work / "table.json").write_text(json.dumps(
      {"variant": args.variant, "methods": methods, "seeds": seeds, "eps": args.eps, "extra": overrides,
       "seconds": round(seconds), "table": table, "runs": runs}, indent=2))


if __name__ == "__main__":
  sys.exit(main())
