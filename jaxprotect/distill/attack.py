"""Knock-off students against a black-box teacher, plus the CE and LS baselines.

``run_attacks(config, workdir)`` trains, for every seed in ``config.attacks.seeds``, one
student per entry of ``attack_runs(config)`` -- each through ``runner.fit`` on the
config's ``student`` section in its own run directory ``<workdir>/runs/<name>/seed<k>``
(resumable; a finished run of the same hash, ``student_hash``, is skipped). A run's
config is a copy of the config with ``student.seed`` and ``student.label_smoothing`` set
(``student_run_config``); its hash covers ``data``, ``student`` and the attack
(``attack_settings``: name, kind, parameters, the teacher's digest, the black box's
output), never the teacher's recipe or ``runtime``. The teacher is loaded by this module
only to build a ``BlackBoxTeacher`` (``attacks.teacher``); student losses see its output
vectors through the batch hook.

With the ``skeptical`` attack among ``attacks.names``, a student model on which the two
Skeptical heads would tap the same layer (``students.check_skeptical_base``, e.g. an MLP
with fewer than three hidden layers) is refused with a ValueError before the teacher is
loaded and before any student run (or run directory) is made.

``<workdir>/attack.json`` records the teacher (directory, method, accuracy, digest), the
student setting and, per run and seed, the final test accuracy.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import ml_collections

from jaxprotect import config as config_lib, data, models, parallel, runner
from jaxprotect.distill import blackbox, config as distill_config_lib, students, teacher as teacher_lib

__all__ = [
    "ATTACK_JSON", "ATTACK_NAMES", "BASELINES", "attack_runs", "attack_settings", "run_attacks", "student_hash",
    "student_key", "student_run_config",
]

ATTACK_JSON = "attack.json"
# attack names understood in config.attacks.names
ATTACK_NAMES = ("ce", "ls", "kd", "dkd", "skeptical", "hard", "mse")
BASELINES = ("ce", "ls")


def attack_runs(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The runs of one attack command: ``[{"name", "kind", "params", "label_smoothing"}]``.

  ``ls`` expands to one run per ``attacks.ls_eps`` value and ``kd`` to one per
  ``attacks.kd.temperatures`` value.
  """
  a = config.attacks
  unknown = [n for n in a.names if n not in ATTACK_NAMES]
  if unknown:
    raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACK_NAMES)}")
  if not a.seeds:
    raise ValueError("attacks.seeds is empty")
  runs: list[dict[str, Any]] = []
  for name in a.names:
    if name == "ce":
      runs.append(dict(name="ce", kind="ce", params={}, label_smoothing=0.0))
    elif name == "ls":
      for eps in a.ls_eps:
        if not 0.0 < eps < 1.0:
          raise ValueError(f"attacks.ls_eps values must be in (0, 1), got {eps}")
        runs.append(dict(name=f"ls_eps{eps:g}", kind="ls", params={"eps": float(eps)}, label_smoothing=float(eps)))
    elif name == "kd":
      for t in a.kd.temperatures:
        runs.append(dict(name=f"kd_T{t:g}", kind="kd", params={"alpha": a.kd.alpha, "temperature": float(t)},
                         label_smoothing=0.0))
    elif name == "skeptical":
      p = a.skeptical.to_dict()
      if p["delay_epochs"] < 0:  # default: 10% of the student's epochs, >= 1 when there is more than one
        p["delay_epochs"] = max(round(0.1 * config.student.epochs), 1 if config.student.epochs > 1 else 0)
      runs.append(dict(name="skeptical", kind="skeptical", params=p, label_smoothing=0.0))
    else:
      runs.append(dict(name={"hard": "hard_label", "mse": "logit_mse"}.get(name, name), kind=name,
                       params=a[name].to_dict(), label_smoothing=0.0))
  return runs


def student_key(config: ml_collections.ConfigDict) -> str:
  """A hash of what makes two students comparable: ``data`` and ``student`` (without the
  per-run ``seed`` and ``label_smoothing``). The report pairs knock-offs with the CE/LS
  baselines of the same key."""
  student = config.student.to_dict()
  for per_run in ("seed", "label_smoothing"):
    student.pop(per_run, None)
  return config_lib.phase_hash(ml_collections.ConfigDict({"data": config.data, "student": student}),
                               ("data", "student"))


def student_run_config(config: ml_collections.ConfigDict, run: dict[str, Any], seed: int) -> ml_collections.ConfigDict:
  """The config of one student run: a copy of ``config`` with ``student.seed`` and
  ``student.label_smoothing`` (the ``ls`` baselines') set."""
  c = copy.deepcopy(config)
  c.student.seed = int(seed)
  c.student.label_smoothing = float(run["label_smoothing"])
  return c


def attack_settings(config: ml_collections.ConfigDict, run: dict[str, Any], teacher_sha: str | None) -> dict[str, Any]:
  """What a student run computes from besides ``data`` and ``student``: the attack
  (``name``, ``kind``, ``params``), the teacher's parameter digest (empty for the CE/LS
  baselines, which never query it) and what the black box returns."""
  return {"name": run["name"], "kind": run["kind"], "params": run["params"], "teacher_sha256": teacher_sha or "",
          "teacher_output": config.attacks.teacher_output}


def student_hash(run_config: ml_collections.ConfigDict, settings: dict[str, Any]) -> str:
  """The config hash a student's run directory records (``runner.fit`` with
  ``section="student"`` and ``hash_extra={"attack": settings}``)."""
  return runner.fit_hash(run_config, "student", {"attack": settings})


def _finished(run_dir: pathlib.Path, expected_hash: str) -> dict[str, Any] | None:
  path = run_dir / "results.json"
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  return results if results.get("config_hash") == expected_hash else None


def _check_student(config: ml_collections.ConfigDict) -> None:
  if config.student.seed != 0:
    raise ValueError(f"student.seed={config.student.seed}: the students' seeds are attacks.seeds")
  if config.student.label_smoothing != 0.0:
    raise ValueError(f"student.label_smoothing={config.student.label_smoothing}: the LS students' label smoothing "
                     "is attacks.ls_eps (attack 'ls'); the other students use none")


def run_attacks(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, mesh=None,
                dataset: data.DeviceDataset | None = None) -> dict[str, Any]:
  """Trains every (attack, seed) student against the teacher in ``config.attacks.teacher``;
  returns the record written to ``attack.json``."""
  config_lib.check_fields(config, distill_config_lib.distill_config())
  workdir = pathlib.Path(workdir)
  a = config.attacks
  if not a.teacher:
    raise ValueError("attacks.teacher: set it to the teacher run directory (CLI: --config.attacks.teacher=DIR)")
  if a.teacher_output not in blackbox.OUTPUTS:
    raise ValueError(f"attacks.teacher_output must be one of {blackbox.OUTPUTS}, got {a.teacher_output!r}")
  _check_student(config)
  runs = attack_runs(config)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)
  if "skeptical" in a.names:  # refuse a student whose two Skeptical heads would share a layer, before any training
    students.check_skeptical_base(models.from_config(config.student, ds.num_classes), ds.example)
  t_model, t_vars, t_manifest = teacher_lib.load_teacher(a.teacher)
  t_ds = t_manifest["dataset"]
  if t_manifest["num_classes"] != ds.num_classes or list(t_ds["image_shape"]) != list(ds.train.image_shape):
    raise ValueError(f"teacher in {a.teacher} was trained on {t_ds.get('name')} ({t_manifest['num_classes']} "
                     f"classes, images {t_ds.get('image_shape')}); the students' dataset {ds.name!r} has "
                     f"{ds.num_classes} classes, images {list(ds.train.image_shape)}")
  black_box = blackbox.BlackBoxTeacher(t_model, t_vars, a.teacher_output, mesh)
  del t_model, t_vars  # from here on only the black box
  hook = blackbox.teacher_hook(a.teacher_output)
  steps_per_epoch = ds.train.size // config.student.batch_size

  record: dict[str, Any] = {
      "teacher": {"dir": str(pathlib.Path(a.teacher).resolve()), "method": t_manifest["method"],
                  "model": t_manifest["model"], "test_accuracy": t_manifest["test_accuracy"],
                  "params_sha256": t_manifest["params_sha256"], "settings": t_manifest.get("settings", {})},
      "student": config.student.to_dict(),
      "student_key": student_key(config),
      "dataset": data.describe(ds),
      "run_order": [r["name"] for r in runs],  # JSON files are written with sorted keys
      "runs": {},
  }
  main = parallel.is_main_process()
  for run in runs:
    entry = {"kind": run["kind"], "params": run["params"], "accuracy": {}, "seconds": {}}
    record["runs"][run["name"]] = entry
    is_baseline = run["kind"] in BASELINES
    settings = attack_settings(config, run, None if is_baseline else t_manifest["params_sha256"])
    for seed in a.seeds:
      rc = student_run_config(config, run, seed)
      run_dir = workdir / "runs" / run["name"] / f"seed{seed}"
      results = _finished(run_dir, student_hash(rc, settings))
      if results is None:
        model = models.from_config(rc.student, ds.num_classes)
        kw: dict[str, Any] = {"model": model}
        if run["kind"] == "skeptical":
          kw["model"] = students.SkepticalStudent(model, ds.num_classes)
        if not is_baseline:
          kw.update(loss_fn=students.make_attack_loss(run["kind"], run["params"], steps_per_epoch),
                    batch_fn=hook, aux=black_box)
        results = runner.fit(rc, run_dir, mesh, ds, section="student", hash_extra={"attack": settings}, **kw)
      entry["accuracy"][str(seed)] = results["test_accuracy"]
      # over every process that ran it (results.json from before that was kept: the last one's)
      entry["seconds"][str(seed)] = results.get("seconds", results["seconds_this_process"])
      if main:
        config_lib.write_json_atomic(workdir / ATTACK_JSON, record)
  if main:
    config_lib.write_json_atomic(workdir / ATTACK_JSON, record)
  return record
