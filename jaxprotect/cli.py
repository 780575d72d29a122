"""Command line: ``jaxprotect <command> [--config file.py[:variant]] [--config.field=value] ...``.

Configs are ``ml_collections`` Python files with ``get_config(arg=None)``, selected and
overridden on the command line as in big_vision. This module is the entry point (``main``)
and the ``train``, ``demo`` and ``devices`` commands; the flag parsing that every command
shares, also those of ``jaxprotect.unlearnable.cli`` and ``jaxprotect.distill.cli``, is in
``jaxprotect.flags``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from jaxprotect.flags import parse_config_command, parse_flags

USAGE = """usage: jaxprotect <command> [flags]

commands:
  train     train a model: --config experiments/train.py[:variant] --config.<section>.<field>=<value>
            --workdir DIR
  demo      a short offline run on the embedded Fashion-MNIST slice: --workdir DIR [--epochs N]
  devices   print the devices JAX sees and the mesh jaxprotect would use
  poison    craft unlearnable examples: --config experiments/em.py[:variant] --workdir DIR
  evaluate  train victims on a poison and on clean data: --config experiments/em.py[:variant]
            --config.evaluate.poison=POISON_DIR --workdir DIR
  certify   certified (q, eta)-learnability of a trained model: --config experiments/certify.py[:variant]
            --config.certify.model=RUN_DIR --workdir DIR
  recover   recovery attacks (projected fine-tuning, random search within radius eta) on a trained
            model: --config experiments/recover.py[:variant] --config.recover.model=RUN_DIR --workdir DIR
  matrix    protections x defenses x victims: craft each protection, train victims under each defense;
            --config experiments/matrix.py[:variant] --workdir DIR (a rerun continues a killed one)
  distill   undistillable teachers and knock-off students: distill {teacher,attack,report} ...
  condense  dataset condensation (DC, DSA, DM), its evaluation and nearest real images:
            --config experiments/condense.py[:variant] --workdir DIR
  mia       membership inference on models trained on real, random-subset and condensed data:
            --config experiments/privacy.py[:variant] --workdir DIR

Every command takes --help. A run directory holds config.json, metrics.jsonl,
checkpoints/ and results.json; re-running the same command resumes it. Compiled programs
are kept in ~/.cache/jaxprotect/xla (JAXPROTECT_COMPILATION_CACHE=DIR moves it, =0 turns
it off), so a rerun compiles little.
"""


def summary(results: dict) -> str:
  lines = [
      f"dataset       {results['dataset']['name']} ({results['dataset']['train_size']} train / "
      f"{results['dataset']['test_size']} test)",
      f"model         {results['model']}, {results['epochs']} epochs, {results['steps']} steps, "
      f"{results['num_devices']} device(s)",
      f"test accuracy {100 * results['test_accuracy']:.2f}%",
      "per class     " + " ".join(f"{100 * a:.0f}" for a in results["class_accuracy"]),
  ]
  return "\n".join(lines)


def cmd_train(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "train")
  if fv is None:
    return 2
  from jaxprotect import runner

  results = runner.fit(fv.config, fv.workdir)
  print(summary(results))
  print(f"results: {fv.workdir}/results.json")
  return 0


def cmd_demo(argv: Sequence[str]) -> int:
  def define(fv, flags):
    flags.DEFINE_string("workdir", "runs/demo", "run directory", flag_values=fv)
    flags.DEFINE_integer("epochs", 3, "training epochs", flag_values=fv)
    flags.DEFINE_integer("train_subset", 0, "train on the first n examples only (0: all 10,000)", flag_values=fv)

  fv = parse_flags(argv, define)
  from jaxprotect import config as config_lib, parallel, runner

  parallel.maybe_initialize_distributed()
  config = config_lib.train_config()
  config.train.epochs = fv.epochs
  config.data.train_subset = fv.train_subset
  print(f"jaxprotect demo: small CNN on the embedded Fashion-MNIST slice, {fv.epochs} epochs -> {fv.workdir}")
  results = runner.fit(config, fv.workdir)
  print(summary(results))
  print(f"results: {fv.workdir}/results.json  metrics: {fv.workdir}/metrics.jsonl")
  return 0


def cmd_devices(argv: Sequence[str]) -> int:
  parse_flags(argv, lambda fv, flags: None)
  import jax

  from jaxprotect import parallel

  parallel.maybe_initialize_distributed()
  mesh = parallel.make_mesh()
  print(json.dumps({"backend": jax.default_backend(), "process": jax.process_index(), "processes": jax.process_count(),
                    "local_devices": [str(d) for d in jax.local_devices()], "mesh": dict(mesh.shape)}, indent=2))
  return 0


# Commands of the method packages, imported only when used: "module:function".
LAZY_COMMANDS = {
    "poison": "jaxprotect.unlearnable.cli:cmd_poison",
    "evaluate": "jaxprotect.unlearnable.cli:cmd_evaluate",
    "certify": "jaxprotect.unlearnable.cli:cmd_certify",
    "recover": "jaxprotect.unlearnable.cli:cmd_recover",
    "matrix": "jaxprotect.unlearnable.cli:cmd_matrix",
    "distill": "jaxprotect.distill.cli:main",
    "condense": "jaxprotect.privacy.cli:cmd_condense",
    "mia": "jaxprotect.privacy.cli:cmd_mia",
}


def _lazy(target: str) -> Callable[[Sequence[str]], int]:
  def run(argv: Sequence[str]) -> int:
    import importlib

    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(argv)

  return run


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "devices": cmd_devices,
            **{name: _lazy(target) for name, target in LAZY_COMMANDS.items()}}


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  if argv[0] not in COMMANDS:
    print(f"jaxprotect: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
    return 2
  from jaxprotect import platform  # noqa: PLC0415

  platform.apply_cpu_xla_flags()  # before JAX initialises a backend (jaxprotect.platform)
  from jaxprotect import parallel  # noqa: PLC0415  (imports jax; kept out of `jaxprotect --help`)

  parallel.enable_compilation_cache()
  try:
    return COMMANDS[argv[0]](argv)
  except (ValueError, platform.MissingExtraError) as e:  # user errors: bad data or config, a missing extra
    print(f"jaxprotect {argv[0]}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
