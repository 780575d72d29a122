"""Flag parsing shared by every ``jaxprotect`` command (``jaxprotect.cli`` and the method
packages' ``unlearnable.cli`` and ``distill.cli``).

* ``parse_flags(argv, define)`` -- the flags of one command (``argv[0]`` its name):
  ``define(fv, flags)`` declares them on a fresh absl ``FlagValues``; ``--help`` prints them
  and exits 0, a bad flag exits 2. A command that calls ``define_config_flags`` also takes
  ``--config file.py[:variant]`` and ``--config.<section>.<field>=<value>`` overrides,
  read by ``jaxprotect.config.from_file`` and ``apply_overrides`` (as in big_vision);
* ``define_config_flags`` -- ``--config`` and ``--workdir``;
* ``parse_config_command`` -- the start of every config-driven command: parse, require
  ``--config`` and ``--workdir``, join a multi-host run;
* ``require`` -- says which required flags are missing.

absl and ml_collections are imported when a command parses its flags, so importing this
module (and ``jaxprotect --help``) stays cheap.
"""

from __future__ import annotations

import functools

import sys
import types
from collections.abc import Callable, Sequence

__all__ = ["define_config_flags", "parse_config_command", "parse_flags", "require", "split_config_args"]


def split_config_args(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
  """``(other arguments, the --config file spec or None, the --config.<field>=<value>
  overrides as "field=value")``; ``--config X`` and ``--config.<field> X`` take the next
  argument as their value."""
  rest, spec, overrides = [], None, []
  args = list(argv)
  i = 0
  while i < len(args):
    a = args[i]
    name, eq, value = a.partition("=")
    if name == "--config" or name.startswith("--config."):
      if not eq:
        if i + 1 >= len(args):
          raise ValueError(f"{a} needs a value")
        value, i = args[i + 1], i + 1
      if name == "--config":
        spec = value
      else:
        overrides.append(f"{name[len('--config.'):]}={value}")
    else:
      rest.append(a)
    i += 1
  return rest, spec, overrides


def parse_flags(argv: Sequence[str], define: Callable) -> types.SimpleNamespace:
  """Parses the flags of one command; prints help and exits on --help; exits 2 on a bad
  flag or config. Returns the flag values as attributes (``config``: the loaded, locked
  config, when the command takes one and ``--config`` was given)."""
  from absl import flags

  from jaxprotect import config as config_lib  # noqa: PLC0415

  command = argv[0]
  try:
    argv, spec, overrides = split_config_args(argv)
  except ValueError as e:
    _fail(command, e)
  fv = flags.FlagValues()
  define(fv, flags)
  fv = _parse_into(fv, argv, flags)
  values = types.SimpleNamespace(**{name: fv[name].value for name in fv})
  if (spec or overrides) and "config" not in fv:
    _fail(command, "this command takes no --config")
  if overrides and not spec:
    _fail(command, "--config.<field> overrides need --config FILE")
  if spec:
    try:
      values.config = config_lib.lock(config_lib.apply_overrides(config_lib.from_file(spec), overrides))
    except ValueError as e:
      _fail(command, e)
  return values


def _fail(command: str, error) -> None:
  print(f"jaxprotect {command}: {error}", file=sys.stderr)
  raise SystemExit(2)


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
  """``--config`` (an experiment file, with ``--config.<field>=<value>`` overrides) and
  ``--workdir``: the flags of every config-driven command."""
  flags.DEFINE_string("config", None, f"{config_help}; --config.<section>.<field>=<value> overrides a field",
                      flag_values=fv)
  flags.DEFINE_string("workdir", None, "run directory (created; resumed if it holds checkpoints)", flag_values=fv)


def require(fv, command: str, *fields: str) -> bool:
  """False (after saying which) if any of the flags ``fields`` was not given."""
  missing = [f"--{f}" for f in fields if getattr(fv, f) is None]
  if missing:
    print(f"jaxprotect {command}: {' and '.join(missing)} required", file=sys.stderr)
    return False
  return True


def parse_config_command(argv: Sequence[str], command: str, define: Callable = define_config_flags,
                         example: str | None = None):
  """The start of every config-driven command: parses its flags (``define``, by default
  ``--config`` and ``--workdir``; with ``example``, those two with ``--config``'s help
  naming that config file, e.g. ``"experiments/recover.py:reference"``), checks that
  ``--config`` and ``--workdir`` were given and joins a multi-host run. Returns the flag
  values, or None (after saying which flag is missing)."""
  if example is not None:
    define = functools.partial(define_config_flags, config_help=f"config file[:variant], e.g. {example}")
  fv = parse_flags(argv, define)
  if not require(fv, command, "config", "workdir"):
    return None
  from jaxprotect import parallel  # noqa: PLC0415

  parallel.maybe_initialize_distributed()
  return fv
