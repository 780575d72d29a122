"""Certified (q, eta)-learnability of the multi-seed unlearnable-examples victims: every
victim of an ``experiments/unlearnable_seeds.py`` workdir (clean and poisoned, one victim
architecture) certified by ``jaxprotect certify``, then compared over the seeds.

  python experiments/certify_seeds.py --source runs/ue_seeds --workdir runs/certify_seeds \\
      [--methods clean,em_sample,em_class,mi_ue,random] [--seeds 0,1,2] [--victim small_cnn] \\
      [--num-draws 450] [--sigma 0.05] [--q 0.9] [--confidence 0.99] [--etas 0.001,0.005,0.01,0.05] \\
      [--test-subset 0] [--records DIR] [--skip-missing]

Victims: ``<source>/clean/<victim>-seed<k>-*`` (the clean row) and
``<source>/<method>/seed<k>-<victim>/poisoned``; with ``--victim surrogate``, the crafts
``<source>/<method>/seed<k>`` instead (each craft's surrogate at the end of crafting, the
model the PUE reference's certify.sh certifies; no clean or random row). Each is certified into
``<workdir>/<method>/seed<k>`` by

  jaxprotect certify --config experiments/certify.py:quick --config.certify.model=VICTIM
      --config.certify.num_draws=N --config.certify.sigma=SIGMA --config.certify.q=Q
      --config.certify.confidence=C --config.certify.test_subset=T --workdir <workdir>/<method>/seed<k>

(the reference eta list, ``certify.ETAS``); a directory whose ``results.json`` exists is not
run again. ``--records DIR`` keeps every result in DIR as well, and reads it from there first, so
the results outlive the victims' run directories; ``--skip-missing`` leaves out a seed and method
that has neither (``sweep``). ``table.md`` and ``table.json`` in ``--workdir`` then give, per method, the
victim's test accuracy, the mean accuracy of its weight draws and the certified value at
each of ``--etas`` (mean +- std over seeds; "abstain" where the certificate abstains), and
the Welch 95% interval (``stats.welch``) of each poison's certified value minus the clean
victims' at those etas.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("clean", "em_sample", "em_class", "mi_ue", "random")
LABELS = {"clean": "clean", "em_sample": "EM sample-wise", "em_class": "EM class-wise", "mi_ue": "MI-UE",
          "random": "uniform random (control)", "pue": "PUE", "pue_class": "PUE class-wise",
          "mi_ue_fixed": "MI-UE, fixed batch order"}
CONFIDENCE = 0.95


def victim_dir(source: pathlib.Path, method: str, seed: int, victim: str) -> pathlib.Path:
  """The run directory certified for ``method`` and ``seed``: the victim trained on the
  poison, or, with ``victim="surrogate"``, the craft itself (its surrogate at the end of
  crafting, the model the PUE reference certifies)."""
  if victim == "surrogate":
    if method in ("clean", "random"):
      raise ValueError(f"--methods: {method!r} has no crafting surrogate; with --victim surrogate choose among "
                       "the crafted poisons")
    return source / method / f"seed{seed}"
  if method == "clean":
    found = sorted((source / "clean").glob(f"{victim}-seed{seed}-*"))
    if len(found) != 1:
      raise FileNotFoundError(f"expected one clean victim {victim}-seed{seed}-* under {source / 'clean'}, "
                              f"found {len(found)}")
    return found[0]
  return source / method / f"seed{seed}-{victim}" / "poisoned"


def settings_key(settings: dict[str, Any]) -> str:
  """The key under which ``sweep`` keeps a result made with ``settings`` (JSON-able)."""
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def sweep(args: argparse.Namespace, methods: Sequence[str], seeds: Sequence[int],
          one: Callable[[pathlib.Path, pathlib.Path], dict[str, Any]],
          settings: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
  """``one(victim run dir, workdir)`` for every seed and method of ``args.source`` (seed-major:
  an interrupted sweep leaves whole seeds); the results per method, in seed order, methods
  without any result left out.

  With ``args.records`` (a directory), every result is also kept as
  ``<records>/<method>/seed<k>.json`` under the key of ``settings`` (what the result depends
  on besides the victim) and read from there before anything runs, so results outlive the
  victims' run directories (e.g. kept under version control while the runs are not). With
  ``args.skip_missing``, a seed and method that has neither a record nor a victim is left out
  with a line saying so, instead of failing."""
  from jaxprotect import config as config_lib

  records, skip = getattr(args, "records", None), getattr(args, "skip_missing", False)
  key = settings_key(settings or {})
  results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
  for seed in seeds:
    for method in methods:
      rec = pathlib.Path(records) / method / f"seed{seed}.json" if records else None
      if rec is not None and rec.exists():
        stored = json.loads(rec.read_text())
        if stored.get("key") == key:
          results[method].append(stored["record"])
          continue
      try:
        model = victim_dir(args.source, method, seed, args.victim)
        if not model.is_dir():
          raise FileNotFoundError(f"no run directory {model}")
      except FileNotFoundError as e:
        if not skip:
          raise
        print(f"skipped {method} seed {seed}: {e}", flush=True)
        continue
      result = one(model, args.workdir / method / f"seed{seed}")
      if rec is not None:
        rec.parent.mkdir(parents=True, exist_ok=True)
        config_lib.write_json_atomic(rec, {"key": key, "settings": settings, "record": result})
      results[method].append(result)
  if not any(results.values()):  # every seed and method skipped: say why, not a traceback from the table
    where = f"no record under {records} with the key of {settings} and " if records else ""
    raise SystemExit(f"error: nothing to tabulate: {where}no victim run under {args.source} "
                     f"for methods {list(methods)}, seeds {list(seeds)}")
  return {m: r for m, r in results.items() if r}


def add_record_args(p: argparse.ArgumentParser) -> None:
  """``--records`` and ``--skip-missing`` of ``sweep``."""
  p.add_argument("--records", type=pathlib.Path, default=None,
                 help="keep every result here too, and read it from here first (outlives the run directories)")
  p.add_argument("--skip-missing", action="store_true",
                 help="leave out a seed and method with neither a record nor a victim directory")


def write_table(workdir: pathlib.Path, table: dict[str, Any], render_fn: Callable[[dict[str, Any]], str]) -> None:
  """``table.json`` and ``table.md`` (``render_fn(table)``) in ``workdir``; prints the Markdown."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "table.json").write_text(json.dumps(table, indent=1))
  text = render_fn(table)
  (workdir / "table.md").write_text(text)
  print(text)


def certify_one(model: pathlib.Path, workdir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
  results = workdir / "results.json"
  if not results.exists():
    workdir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(REPO / ".venv" / "bin" / "jaxprotect"), "certify", "--config", "experiments/certify.py:quick",
           f"--config.certify.model={model}", f"--config.certify.num_draws={args.num_draws}",
           f"--config.certify.sigma={args.sigma}", f"--config.certify.q={args.q}",
           f"--config.certify.confidence={args.confidence}", f"--config.certify.test_subset={args.test_subset}",
           "--workdir", str(workdir)]
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"certify_seeds: {workdir} in {time.time() - start:.0f} s", flush=True)
  return json.loads(results.read_text())


def _finite(x: float) -> float | None:
  return x if math.isfinite(x) else None


def _at(result: dict[str, Any], eta: float) -> float | None:
  for e, v in zip(result["etas"], result["certified"], strict=True):
    if math.isclose(e, eta):
      return v
  raise ValueError(f"eta {eta} is not among the certified etas {result['etas']}")


def build_table(results: dict[str, list[dict[str, Any]]], etas: Sequence[float]) -> dict[str, Any]:
  from jaxprotect import stats

  def summary(values):
    if any(v is None for v in values):
      return None
    s = stats.summary(values)
    return {**{k: (_finite(v) if isinstance(v, float) else v) for k, v in s.items()}, "values": list(values)}

  rows = {}
  for method, runs in results.items():
    rows[method] = {
        # the model on the images its draws were evaluated on
        "model_accuracy": summary([r.get("model_subset_accuracy", r["model_test_accuracy"]) for r in runs]),
        "mean_draw_accuracy": summary([r["mean_accuracy"] for r in runs]),
        "certified": {str(e): summary([_at(r, e) for r in runs]) for e in etas},
    }
  welch = {}
  clean = results.get("clean")
  for method, runs in results.items():
    if method == "clean" or clean is None:
      continue
    welch[method] = {}
    for e in etas:
      a, b = [_at(r, e) for r in runs], [_at(r, e) for r in clean]
      if None in a or None in b:
        welch[method][str(e)] = None
        continue
      w = stats.welch(a, b, CONFIDENCE)
      welch[method][str(e)] = {**{k: (_finite(v) if isinstance(v, float) else v) for k, v in w.items()},
                               "verdict": stats.compare(a, b, CONFIDENCE)}
  return {"rows": rows, "welch": welch, "etas": list(etas)}


def pm(s: dict[str, Any] | None) -> str:
  """A summary (fractions) as percent "mean +- std"; one value as "mean (1 seed)"; None: "abstain"."""
  from jaxprotect import stats

  return "abstain" if s is None else stats.format_summary(s, 100, 1)


def interval(w: dict[str, Any] | None) -> str:
  """A Welch comparison (``stats.welch`` plus its ``verdict``) as a table cell: "diff [low,
  high] verdict"; "diff (n < 2)" where a side has one seed (no interval); None: "abstain"."""
  from jaxprotect import stats

  return "abstain" if w is None else stats.format_welch(w)


def render(table: dict[str, Any], args: argparse.Namespace) -> str:
  etas = table["etas"]
  images = f"the first {args.test_subset} test images" if args.test_subset else "the whole test split"
  lines = [f"Certified (q={args.q}, eta)-learnability, N={args.num_draws} draws, sigma={args.sigma}, "
           f"confidence {args.confidence}, on {images}; percent, mean +- std over seeds {args.seeds}.", "",
           "| training set | model acc. | mean draw acc. | " + " | ".join(f"cert. eta={e:g}" for e in etas) + " |",
           "|---|---|---|" + "---|" * len(etas)]
  for method, row in table["rows"].items():
    cells = [pm(row["model_accuracy"]), pm(row["mean_draw_accuracy"])]
    cells += [pm(row["certified"][str(e)]) for e in etas]
    lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
  if not table["welch"]:  # no clean row to compare with (e.g. --victim surrogate)
    return "\n".join(lines) + "\n"
  lines += ["", f"Welch {100 * CONFIDENCE:g}% interval of the certified value, poison minus clean (points):", "",
            "| poison | " + " | ".join(f"eta={e:g}" for e in etas) + " |", "|---|" + "---|" * len(etas)]
  for method, per_eta in table["welch"].items():
    cells = [interval(per_eta[str(e)]) for e in etas]
    lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--source", required=True, type=pathlib.Path, help="an experiments/unlearnable_seeds.py workdir")
  p.add_argument("--workdir", required=True, type=pathlib.Path)
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--victim", default="small_cnn", help="the victims' model name, or 'surrogate'")
  p.add_argument("--num-draws", type=int, default=450)
  p.add_argument("--sigma", type=float, default=0.05)
  p.add_argument("--q", type=float, default=0.9)
  p.add_argument("--confidence", type=float, default=0.99)
  p.add_argument("--etas", default="0.001,0.005,0.01,0.05", help="the etas of the table (among certify.ETAS)")
  p.add_argument("--test-subset", type=int, default=0,
                 help="evaluate the draws on the first n test images (certify.test_subset; 0: all)")
  add_record_args(p)
  args = p.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  etas = [float(e) for e in args.etas.split(",") if e]
  settings = {"source": str(args.source), "victim": args.victim, "num_draws": args.num_draws, "sigma": args.sigma,
              "q": args.q, "confidence": args.confidence, "test_subset": args.test_subset}
  results = sweep(args, methods, seeds, lambda model, workdir: certify_one(model, workdir, args), settings)
  write_table(args.workdir, build_table(results, etas), lambda table: render(table, args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
