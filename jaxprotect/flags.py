"""Flag parsing shared by every ``jaxprotect`` command (``jaxprotect.cli`` and the method
packages' ``unlearnable.cli`` and ``distill.cli``).

* ``parse_flags(argv, define)`` -- absl-style flags of one command (``argv[0]`` its name):
  ``define(fv, flags)`` declares them on a fresh ``FlagValues``; ``--help`` prints them and
  exits 0, a bad flag exits 2. ``--config.[victim.]model_kwargs.<key>=<value>`` may add a
  model-constructor keyword that the config does not list yet.
* ``define_config_flags`` -- ``--config`` (an ``ml_collections`` config file
  ``file.py[:variant]`` with ``--config.<field>=<value>`` overrides, as in big_vision) and
  ``--workdir``;
* ``parse_config_command`` -- the start of every config-driven command: parse, require
  ``--config`` and ``--workdir``, join a multi-host run;
* ``require`` -- says which required flags are missing.

absl and ml_collections are imported when a command parses its flags, so importing this
module (and ``jaxprotect --help``) stays cheap.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Sequence

__all__ = ["define_config_flags", "parse_config_command", "parse_flags", "require"]

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
