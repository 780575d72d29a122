"""``jaxprotect distill {teacher,attack,report}`` (routed here from ``jaxprotect.cli``).

  jaxprotect distill teacher --config experiments/cmim.py:<variant> --workdir DIR
  jaxprotect distill attack  --config experiments/cmim.py:<variant> --config.attacks.teacher=<teacher dir> --workdir DIR
  jaxprotect distill report  --workdir DIR [--runs ATTACK_DIR,...] [--ls_eps 0.1] [--confidence 0.95]

Every run directory goes through ``runner.fit``, so re-running a killed command resumes
it. Bad input raises ``ValueError``, which the top-level CLI reports with exit code 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxprotect.flags import parse_config_command, parse_flags, require

USAGE = """usage: jaxprotect distill <command> [flags]

commands:
  teacher  train a CE, Nasty or CMIM teacher (--config.method; model and recipe
           --config.teacher.<field>) and write teacher.json, teacher.msgpack and the CMI(T) curve:
           --config experiments/cmim.py[:variant[,method]] --workdir DIR
  attack   train CE/LS baselines and knock-off students (--config.student.<field>) against a
           black-box teacher:
           --config experiments/cmim.py[:variant] --config.attacks.teacher=TEACHER_DIR --workdir DIR
  report   teacher accuracy, CE/LS students, knock-offs, Delta with its Welch interval,
           three-way verdict (report.md/.json):
           --workdir DIR [--runs ATTACK_DIR,...] [--ls_eps 0.1] [--confidence 0.95]

Each command takes --help.
"""


def cmd_teacher(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "distill teacher")
  if fv is None:
    return 2
  from jaxprotect.distill import teacher

  manifest = teacher.train_teacher(fv.config, fv.workdir)
  print(f"teacher       {manifest['method']} {manifest['model']} on {manifest['dataset']['name']} "
        f"({manifest['dataset']['train_size']} train / {manifest['dataset']['test_size']} test)")
  print(f"test accuracy {100 * manifest['test_accuracy']:.2f}%")
  curve = f"  CMI curve: {fv.workdir}/cmi_curve.png" if fv.config.curve.enabled else ""
  print(f"teacher: {fv.workdir}/teacher.json{curve}")
  return 0


def cmd_attack(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "distill attack")
  if fv is None:
    return 2
  from jaxprotect.distill import attack

  record = attack.run_attacks(fv.config, fv.workdir)
  print(f"teacher {record['teacher']['method']} ({100 * record['teacher']['test_accuracy']:.2f}%), "
        f"student {record['student']['model']}")
  for name, run in record["runs"].items():
    accs = " ".join(f"{100 * a:.2f}" for a in run["accuracy"].values())
    print(f"  {name:14s} {accs}")
  print(f"attack: {fv.workdir}/attack.json")
  return 0


def cmd_report(argv: Sequence[str]) -> int:
  def define(fv, flags):
    flags.DEFINE_string("workdir", None, "where report.md and report.json are written", flag_values=fv)
    flags.DEFINE_list("runs", [], "attack directories (default: every attack directory under --workdir)",
                      flag_values=fv)
    flags.DEFINE_float("ls_eps", 0.1, "label smoothing of the LS student that Delta refers to", flag_values=fv)
    flags.DEFINE_float("confidence", 0.95, "confidence level of the Welch intervals of Delta, in (0, 1)",
                       flag_values=fv)

  fv = parse_flags(argv, define)
  if not require(fv, "distill report", "workdir"):
    return 2
  from jaxprotect.distill import report

  dirs = list(fv.runs) or report.find_attack_dirs(fv.workdir)
  if not dirs:
    raise ValueError(f"no attack directories under {fv.workdir}; pass --runs ATTACK_DIR,...")
  rep = report.write_report(fv.workdir, dirs, fv.ls_eps, fv.confidence)
  print(report.to_markdown(rep))
  print(f"report: {fv.workdir}/report.md  {fv.workdir}/report.json")
  return 0


SUBCOMMANDS = {"teacher": cmd_teacher, "attack": cmd_attack, "report": cmd_report}


def main(argv: Sequence[str]) -> int:
  """Entry point: ``argv[0] == "distill"``, ``argv[1]`` the subcommand."""
  args = list(argv[1:])
  if not args or args[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0
  if args[0] not in SUBCOMMANDS:
    print(f"jaxprotect distill: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
    return 2
  return SUBCOMMANDS[args[0]]([f"distill {args[0]}", *args[1:]])
