"""Command line: ``jaxprotect <command> [--config file.py[:variant]] [--config.field=value] ...``.

Configs are ``ml_collections`` Python files with ``get_config(arg=None)``, selected and
overridden on the command line as in big_vision.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable, Sequence

USAGE = """usage: jaxprotect <command> [flags]

commands:
  train     train a model: --config experiments/train.py[:variant] --config.<field>=<value> --workdir DIR
  demo      a short offline run on the embedded Fashion-MNIST slice: --workdir DIR [--epochs N]
  devices   print the devices JAX sees and the mesh jaxprotect would use
  poison    craft unlearnable examples: --config experiments/em.py[:variant] --workdir DIR
  evaluate  train victims on a poison and on clean data: --config experiments/em.py[:variant]
            --config.poison=POISON_DIR --workdir DIR
  distill   undistillable teachers and knock-off students: distill {teacher,attack,report} ...

Every command takes --help. A run directory holds config.json, metrics.jsonl,
checkpoints/ and results.json; re-running the same command resumes it. Compiled programs
are kept in ~/.cache/jaxprotect/xla (JAXPROTECT_COMPILATION_CACHE=DIR moves it, =0 turns
it off), so a rerun compiles little.
"""


# ``--config.<path>model_kwargs.<key>=<value>``: keyword arguments of a model constructor,
# which a config cannot list in advance (they depend on the model chosen).
_MODEL_KWARG = re.compile(r"--config\.((?:\w+\.)*model_kwargs)\.(\w+)=(.*)", re.S)


def parse_flags(argv: Sequence[str], define: Callable) -> object:
  """Parses absl-style flags for one command; prints help and exits on --help.

  ``ml_collections.config_flags`` finds ``--config.<field>`` overrides in ``sys.argv``,
  so it is set to this command line while parsing (``main`` may be called in-process).
  ``--config.[victim.]model_kwargs.<key>=<value>`` may name a key the config does not
  have yet (e.g. ``width`` of a ResNet); its value is a Python literal or a string.
  """
  from absl import flags

  matches = [_MODEL_KWARG.fullmatch(a) for a in argv]
  kwargs = [m.groups() for m in matches if m]
  argv = [a for a, m in zip(argv, matches) if not m]
  fv = flags.FlagValues()
  saved, sys.argv = sys.argv, ["jaxprotect", *argv]
  try:
    define(fv, flags)
    fv = _parse_into(fv, argv, flags)
  finally:
    sys.argv = saved
  if kwargs and getattr(fv, "config", None) is not None:
    _set_model_kwargs(fv.config, kwargs, argv[0])
  return fv


def _set_model_kwargs(config, kwargs: list[tuple[str, str, str]], command: str) -> None:
  for path, key, text in kwargs:
    node = config
    try:
      for part in path.split("."):
        node = node[part]
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      with config.unlocked():
        node[key] = value
    except (KeyError, AttributeError, TypeError) as e:
      print(f"jaxprotect {command}: cannot set --config.{path}.{key}={text}: {e}", file=sys.stderr)
      raise SystemExit(2) from e


def _parse_into(fv, argv: Sequence[str], flags) -> object:
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):
    print(f"usage: jaxprotect {argv[0]} [flags]\n")
    print(fv.get_help())
    raise SystemExit(0)
  try:
    fv(list(argv))
  except flags.Error as e:
    print(f"jaxprotect {argv[0]}: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  return fv


def define_config_flags(fv, flags, config_help: str = "experiment config file[:variant]") -> None:
  """``--config`` (an ml_collections config file, ``--config.<field>=<value>`` overrides)
  and ``--workdir``: the flags of every config-driven command."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, config_help, flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (created; resumed if it holds checkpoints)", flag_values=fv)


def require(fv, command: str, *fields: str) -> bool:
  """False (after saying which) if any of the flags ``fields`` was not given."""
  missing = [f"--{f}" for f in fields if getattr(fv, f) is None]
  if missing:
    print(f"jaxprotect {command}: {' and '.join(missing)} required", file=sys.stderr)
    return False
  return True


def parse_config_command(argv: Sequence[str], command: str, define: Callable = define_config_flags):
  """The start of every config-driven command: parses its flags (``define``, by default
  ``--config`` and ``--workdir``), checks that ``--config`` and ``--workdir`` were given
  and joins a multi-host run. Returns the flag values, or None (after saying which flag
  is missing)."""
  fv = parse_flags(argv, define)
  if not require(fv, command, "config", "workdir"):
    return None
  from jaxprotect import parallel  # noqa: PLC0415

  parallel.maybe_initialize_distributed()
  return fv


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
  config.epochs = fv.epochs
  config.train_subset = fv.train_subset
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
    "distill": "jaxprotect.distill.cli:main",
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
