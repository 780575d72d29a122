"""The unlearnable-examples results table: clean vs EM sample-wise vs EM class-wise vs
MI-UE vs uniform random noise of the same eps (the control), each made with ``jaxprotect
poison`` and evaluated with ``jaxprotect evaluate``.

  python experiments/unlearnable_table.py --variant fashion_mnist_mini --workdir runs/ue [--config.<field>=<value> ...]

Extra ``--config.*`` arguments go to every poison/evaluate command (e.g.
``--config.model=mlp`` for a cheap surrogate, ``--config.data_dir=DIR``). Every step is
a resumable run directory under ``--workdir``; re-running skips finished ones. Writes
``table.md`` and ``table.json`` there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = (("em_sample", "em.py:{v}"), ("em_class", "em.py:{v},classwise"), ("mi_ue", "mi_ue.py:{v}"),
           ("random", "em.py:{v},random"))  # the control: uniform noise in [-eps, eps]


def main(argv=None) -> int:
  from jaxprotect.cli import main as cli

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="fashion_mnist_mini")
  p.add_argument("--workdir", default="runs/unlearnable_table")
  args, extra = p.parse_known_args(argv)
  work = pathlib.Path(args.workdir)
  rows, t0 = [], time.time()
  for i, (name, cfg) in enumerate(METHODS):
    config = ["--config", str(REPO / "experiments" / cfg.format(v=args.variant)), *extra]
    t = time.time()
    if cli(["poison", *config, "--workdir", str(work / name)]) != 0:
      return 1
    craft_s = time.time() - t
    t = time.time()
    if cli(["evaluate", *config, f"--config.poison={work / name}", f"--config.evaluate_clean={i == 0}",
            "--workdir", str(work / f"{name}_victim")]) != 0:
      return 1
    craft = json.loads((work / name / "results.json").read_text())
    ev = json.loads((work / f"{name}_victim" / "results.json").read_text())
    if i == 0:
      rows.append({"poison": "none (clean)", "victim_test_accuracy": ev["test_accuracy"]["clean"]})
    rows.append({"poison": name, "victim_test_accuracy": ev["test_accuracy"]["poisoned"],
                 "iterations": craft["iterations"], "surrogate_perturbed_acc": craft["perturbed_train_accuracy"],
                 "surrogate_clean_acc": craft["clean_train_accuracy"], "craft_seconds": round(craft_s),
                 "victim_seconds": round(time.time() - t), "victim": ev["victim"]})
  lines = [f"variant `{args.variant}`, extra arguments `{' '.join(extra) or '-'}`", "",
           "| poison | victim clean-test acc. | outer iterations | surrogate acc. perturbed / clean train | craft s |",
           "|---|---|---|---|---|"]
  for r in rows:
    if r.get("surrogate_perturbed_acc") is None and "iterations" in r:  # the random control
      lines.append(f"| {r['poison']} | {100 * r['victim_test_accuracy']:.2f}% | - | - | {r['craft_seconds']} |")
    elif "iterations" in r:
      lines.append(f"| {r['poison']} | {100 * r['victim_test_accuracy']:.2f}% | {r['iterations']} | "
                   f"{100 * r['surrogate_perturbed_acc']:.1f}% / {100 * r['surrogate_clean_acc']:.1f}% | "
                   f"{r['craft_seconds']} |")
    else:
      lines.append(f"| {r['poison']} | {100 * r['victim_test_accuracy']:.2f}% | | | |")
  (work / "table.md").write_text("\n".join(lines) + "\n")
  (work / "table.json").write_text(json.dumps({"variant": args.variant, "extra": extra, "rows": rows,
                                               "seconds": round(time.time() - t0)}, indent=2))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
