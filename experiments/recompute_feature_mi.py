"""Recomputes the feature MI of the victims of ``experiments/unlearnable_seeds.py`` with the
current ``stats`` estimators, from the trained victims of its workdir (no training).

  python experiments/recompute_feature_mi.py --workdir runs/ue_seeds [--check-only] [--write]

For every evaluation record (``records/<method>-seed<s>-<victim>.json``) this loads the
evaluation's poisoned and clean victims (``runner.load_trained``), rebuilds the clean and
poisoned data exactly as ``victims.evaluate`` does (the poisoned victim's saved config:
``evaluate.poison``, ``poison_fraction``, ``seed``, ``quantize``, ``drop_negative``) and
computes ``victims.feature_mi`` on the first ``evaluate.feature_mi_examples`` training
images. The KSG value must equal the stored one (``--ksg-tol``); then, with ``--write``, the
Gaussian values replace the stored ones in the evaluation's ``results.json`` and in the
record, so that rerunning the driver rebuilds ``table.md`` and ``table.json`` from them.
``--check-only``: only the first record, KSG checked, nothing written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def recompute(eval_dir: pathlib.Path) -> dict[str, dict]:
  """``{"poisoned": feature_mi, "clean": feature_mi}`` of the evaluation in ``eval_dir``."""
  import ml_collections

  from jaxprotect import data, parallel, runner
  from jaxprotect.unlearnable import poison_io, victims

  results = json.loads((eval_dir / "results.json").read_text())
  saved = json.loads((pathlib.Path(results["runs"]["poisoned"]) / "config.json").read_text())
  config = ml_collections.ConfigDict(saved["config"])
  e = config.evaluate
  mesh = parallel.mesh_from_config(config)
  clean = data.from_config(config, mesh)
  poison = poison_io.load_poison(e.poison)
  poisoned = poison_io.apply(clean, poison, e.poison_fraction, seed=e.seed, quantize=e.quantize,
                             drop_negative=e.drop_negative)
  n_mi = min(e.feature_mi_examples, clean.train.size)
  out = {}
  for name, run_dir in results["runs"].items():
    model, variables, _ = runner.load_trained(run_dir)
    out[name] = victims.feature_mi(model, variables, clean.train, poisoned.train, n_mi, mesh,
                                   config.victim.eval_batch_size)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/ue_seeds")
  p.add_argument("--write", action="store_true", help="store the new Gaussian values")
  p.add_argument("--check-only", action="store_true", help="the first record only, nothing written")
  p.add_argument("--ksg-tol", type=float, default=1e-5, help="largest allowed |KSG - stored KSG| (nats)")
  args = p.parse_args(argv)

  from jaxprotect import platform

  platform.apply_cpu_xla_flags()  # as the driver does, before JAX starts
  from jaxprotect import config as config_lib

  work = pathlib.Path(args.workdir)
  records = sorted(r for r in (work / "records").glob("*.json") if not r.name.endswith("-craft.json"))
  if args.check_only:
    records = records[:1]
  rows, bad = [], []
  for rec_path in records:
    method, seed, victim = rec_path.stem.split("-", 2)
    eval_dir = work / method / f"{seed}-{victim}"
    stored = json.loads((eval_dir / "results.json").read_text())
    mi = recompute(eval_dir)
    for name, new in mi.items():
      old = stored["feature_mi"][name]
      dk = abs(new["ksg"] - old["ksg"])
      if dk > args.ksg_tol or new["examples"] != old["examples"]:
        bad.append(f"{rec_path.stem} {name}: KSG {new['ksg']!r} vs stored {old['ksg']!r}, "
                   f"examples {new['examples']} vs {old['examples']}")
      rows.append({"run": rec_path.stem, "victim_run": name, "gaussian_old": old["gaussian"],
                   "gaussian_new": new["gaussian"], "ksg_stored": old["ksg"], "ksg_new": new["ksg"]})
      print(f"{rec_path.stem:28s} {name:8s} gaussian {old['gaussian']:9.3f} -> {new['gaussian']:9.3f}   "
            f"ksg {old['ksg']:.6f} / {new['ksg']:.6f} (|d| {dk:.1e})", flush=True)
    if args.write and not args.check_only and not bad:
      for name, new in mi.items():
        stored["feature_mi"][name]["gaussian"] = new["gaussian"]
      config_lib.write_json_atomic(eval_dir / "results.json", stored)
      rec = json.loads(rec_path.read_text())
      rec["record"]["feature_mi"]["gaussian"] = mi["poisoned"]["gaussian"]
      if "clean" in mi:
        rec["record"]["clean_feature_mi"]["gaussian"] = mi["clean"]["gaussian"]
      rec_path.write_text(json.dumps(rec, indent=2))  # as the driver's _cached writes it
  (work / "feature_mi_recomputed.json").write_text(json.dumps(rows, indent=2))
  if bad:
    print("KSG does not reproduce:\n  " + "\n  ".join(bad), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
