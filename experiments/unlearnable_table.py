"""The unlearnable-examples results table: clean vs EM sample-wise vs EM class-wise vs
MI-UE vs uniform random noise of the same eps (the control), each crafted with
``jaxprotect.unlearnable.craft`` and evaluated with ``victims.evaluate`` (what
``jaxprotect poison`` and ``jaxprotect evaluate`` run).

  python experiments/unlearnable_table.py --variant fashion_mnist_mini --workdir runs/ue [--config.<field>=<value> ...]
  python experiments/unlearnable_table.py --variant cifar10 --reference --workdir runs/ue_ref

``--reference``: every row with its method's ``,reference`` option (the authors' recipes,
see experiments/em.py and mi_ue.py); rows whose victim recipes differ (EM's and MI-UE's)
each get their clean victim. Extra ``--config.<section>.<field>=<value>`` arguments
override every config (e.g. ``--config.surrogate.model=mlp`` for a cheap surrogate,
``--config.victim.model=mlp``, ``--config.data.dir=DIR``). Every step is a resumable run directory under ``--workdir``;
re-running skips finished ones. Writes ``table.md`` and ``table.json`` there.
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


def method_config(spec: str, variant: str, overrides=(), reference: bool = False):
  """The config of one row: ``experiments/<spec>`` at ``variant`` (with the ``reference``
  option) with ``overrides`` (``"section.field=value"``) applied."""
  from jaxprotect import config as config_lib

  c = config_lib.from_file(REPO / "experiments" / (spec.format(v=variant) + (",reference" if reference else "")))
  return config_lib.apply_overrides(c, overrides)


def main(argv=None) -> int:
  from jaxprotect import flags, platform

  argv, spec, overrides = flags.split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="fashion_mnist_mini")
  p.add_argument("--workdir", default="runs/unlearnable_table")
  p.add_argument("--reference", action="store_true", help="the authors' recipes (the ,reference option)")
  args = p.parse_args(argv)
  if spec is not None:
    p.error("--config: the table's configs are experiments/em.py and mi_ue.py at --variant; "
            "override fields with --config.<section>.<field>=<value>")
  platform.apply_cpu_xla_flags()  # as the jaxprotect command does, before JAX starts
  from jaxprotect import config as config_lib, parallel
  from jaxprotect.unlearnable import craft, victims

  parallel.enable_compilation_cache()
  parallel.maybe_initialize_distributed()
  work = pathlib.Path(args.workdir)
  extra = [f"--config.{o}" for o in overrides]
  rows, t0, clean_of = [], time.time(), set()
  try:
    for name, cfg in METHODS:
      c = method_config(cfg, args.variant, overrides, args.reference)
      c.evaluate.poison = str(work / name)
      # One clean victim per victim recipe (one in all without --reference).
      recipe = config_lib.phase_hash(c, victims.VICTIM_SECTIONS)
      c.evaluate.clean = recipe not in clean_of
      clean_of.add(recipe)
      t = time.time()
      crafted = craft(c, work / name)
      craft_s = time.time() - t
      t = time.time()
      ev = victims.evaluate(c, work / f"{name}_victim")
      if c.evaluate.clean:
        rows.append({"poison": f"none (clean, {name}'s victim)" if args.reference else "none (clean)",
                     "victim_test_accuracy": ev["test_accuracy"]["clean"]})
      rows.append({"poison": name, "victim_test_accuracy": ev["test_accuracy"]["poisoned"],
                   "iterations": crafted["iterations"], "surrogate_perturbed_acc": crafted["perturbed_train_accuracy"],
                   "surrogate_clean_acc": crafted["clean_train_accuracy"], "craft_seconds": round(craft_s),
                   "victim_seconds": round(time.time() - t), "victim": ev["victim"],
                   "feature_mi": ev.get("feature_mi")})
  except (ValueError, platform.MissingExtraError) as e:
    print(f"unlearnable_table: error: {e}", file=sys.stderr)
    return 1
  lines = [f"variant `{args.variant}`{' (reference recipes)' if args.reference else ''}, extra arguments "
           f"`{' '.join(extra) or '-'}`", "",
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
  if parallel.is_main_process():
    (work / "table.md").write_text("\n".join(lines) + "\n")
    (work / "table.json").write_text(json.dumps({"variant": args.variant, "reference": args.reference,
                                                 "extra": extra, "rows": rows,
                                                 "seconds": round(time.time() - t0)}, indent=2))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
