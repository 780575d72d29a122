"""The recovery attack against the multi-seed unlearnable-examples victims: every victim of
an ``experiments/unlearnable_seeds.py`` workdir (clean and poisoned, one victim
architecture) attacked by ``jaxprotect recover``, then compared over the seeds.

  python experiments/recover_seeds.py --source runs/ue_seeds --workdir runs/recover_seeds \\
      [--methods clean,em_sample,em_class,mi_ue,random,pue] [--seeds 0,1,2] [--victim small_cnn] \\
      [--variant quick] [--attacks finetune] [--records DIR] [--skip-missing] [--config.recover.<field>=<value> ...]

Victims as in experiments/certify_seeds.py. Each is attacked into
``<workdir>/<method>/seed<k>`` by

  jaxprotect recover --config experiments/recover.py:<variant> --config.recover.model=VICTIM
      --config.recover.attacks=<attacks> [overrides] --workdir <workdir>/<method>/seed<k>

(a directory whose ``results.json`` exists is not run again; ``--records`` and
``--skip-missing`` as in certify_seeds.py). ``table.md`` and
``table.json`` in ``--workdir`` then give, per method and attack, the report-set accuracy
before the attack and after it at each eta (mean +- std over seeds), and the Welch 95%
interval (``stats.welch``) of each method's gain (after minus before) minus the gain on
``--baseline``'s victims, at every eta.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from certify_seeds import LABELS, REPO, add_record_args, interval, pm, sweep, write_table

METHODS = ("clean", "em_sample", "em_class", "mi_ue", "random", "pue")
CONFIDENCE = 0.95


def recover_one(model: pathlib.Path, workdir: pathlib.Path, args, overrides: Sequence[str]) -> dict[str, Any]:
  results = workdir / "results.json"
  if not results.exists():
    workdir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(REPO / ".venv" / "bin" / "jaxprotect"), "recover", "--config", f"experiments/recover.py:{args.variant}",
           f"--config.recover.model={model}", f"--config.recover.attacks=({','.join(repr(a) for a in args.attacks)},)",
           "--config.runtime.progress=false", *(f"--config.{o}" for o in overrides), "--workdir", str(workdir)]
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"recover_seeds: {workdir} in {time.time() - start:.0f} s", flush=True)
  return json.loads(results.read_text())


def build_table(results: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, Any]:
  from jaxprotect import stats

  first = next(iter(results.values()))[0]
  etas, attacks = first["etas"], list(first["attacks"])
  gains = {m: {a: [[r["attacks"][a]["accuracy"][i] - r["before"] for r in runs] for i in range(len(etas))]
               for a in attacks} for m, runs in results.items()}
  rows = {m: {"before": stats.summary([r["before"] for r in runs]),
              **{a: [stats.summary([r["attacks"][a]["accuracy"][i] for r in runs]) for i in range(len(etas))]
                 for a in attacks}} for m, runs in results.items()}
  welch = {}
  for m in results:
    if m == baseline or baseline not in results:
      continue
    welch[m] = {a: [{**stats.welch(gains[m][a][i], gains[baseline][a][i], CONFIDENCE),
                     "verdict": stats.compare(gains[m][a][i], gains[baseline][a][i], CONFIDENCE)}
                    for i in range(len(etas))] for a in attacks}
  return {"etas": etas, "attacks": attacks, "baseline": baseline, "rows": rows, "gain_minus_baseline": welch}


def render(table: dict[str, Any], args) -> str:
  etas = table["etas"]
  lines = [f"Recovered report-set accuracy in %, mean +- std over seeds {args.seeds}; "
           f"`experiments/recover.py:{args.variant}`.", ""]
  for a in table["attacks"]:
    lines += [f"Attack `{a}`:", "", "| training set | before | " + " | ".join(f"eta={e:g}" for e in etas) + " |",
              "|---|---|" + "---|" * len(etas)]
    for m, row in table["rows"].items():
      lines.append(f"| {LABELS.get(m, m)} | {pm(row['before'])} | " + " | ".join(pm(s) for s in row[a]) + " |")
    lines += ["", f"Welch {100 * CONFIDENCE:g}% interval of the gain (after minus before) minus the gain on "
              f"{LABELS.get(table['baseline'], table['baseline'])}, points:", "",
              "| training set | " + " | ".join(f"eta={e:g}" for e in etas) + " |", "|---|" + "---|" * len(etas)]
    for m, per in table["gain_minus_baseline"].items():
      cells = [interval(w) for w in per[a]]
      lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  from jaxprotect import flags

  argv, _, overrides = flags.split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--source", required=True, type=pathlib.Path, help="an experiments/unlearnable_seeds.py workdir")
  p.add_argument("--workdir", required=True, type=pathlib.Path)
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--victim", default="small_cnn")
  p.add_argument("--variant", default="quick", help="of experiments/recover.py")
  p.add_argument("--attacks", default="finetune", help="comma list of finetune, random_search")
  p.add_argument("--baseline", default="em_sample", help="the method whose gain the others are compared with")
  add_record_args(p)
  args = p.parse_args(argv)
  args.attacks = [a for a in args.attacks.split(",") if a]
  methods = [m for m in args.methods.split(",") if m]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  settings = {"source": str(args.source), "victim": args.victim, "variant": args.variant, "attacks": args.attacks,
              "overrides": list(overrides)}
  results = sweep(args, methods, seeds, lambda model, workdir: recover_one(model, workdir, args, overrides),
                  settings)
  write_table(args.workdir, build_table(results, args.baseline), lambda table: render(table, args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
