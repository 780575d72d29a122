"""Knock-off students against a black-box teacher, plus the CE and LS baselines.

``run_attacks(config, workdir)`` trains, for every seed in ``config.attacks.seeds``, one
student per entry of ``attack_runs(config)`` -- each through ``runner.fit`` in its own
run directory ``<workdir>/runs/<name>/seed<k>`` (resumable; a finished run is skipped).
The teacher is loaded by this module only to build a ``BlackBoxTeacher``; student losses
see its output vectors through the batch hook.

``<workdir>/attack.json`` records the teacher (directory, method, accuracy, digest), the
student setting and, per run and seed, the final test accuracy.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from jaxprotect import config as config_lib, data, models, parallel, runner
from jaxprotect.config import train_config
from jaxprotect.distill import blackbox, students, teacher as teacher_lib

__all__ = [
    "ATTACK_JSON", "ATTACK_NAMES", "BASELINES", "attack_runs", "run_attacks", "student_key",
    "student_run_config",
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
  """A hash of what makes two students comparable: dataset, student model and recipe."""
  s = config.student.to_dict()
  s.pop("progress", None)
  d = {"student": s, "dataset": config.dataset, "train_subset": config.train_subset}
  return config_lib.config_hash(ml_collections.ConfigDict(d))


def student_run_config(config: ml_collections.ConfigDict, run: dict[str, Any], seed: int,
                       teacher_sha: str | None) -> ml_collections.ConfigDict:
  """The ``fit`` config of one student run (hashed into its checkpoints)."""
  c = train_config()
  for k in ("dataset", "data_dir", "layout", "train_subset", "num_devices", "chunk_steps", "loop", "checkpoint",
            "progress", "tensorboard"):
    c[k] = config[k]
  s = config.student
  c.model = s.model
  c.model_kwargs = ml_collections.ConfigDict(s.model_kwargs.to_dict())
  c.dtype = s.dtype
  c.epochs = s.epochs
  c.batch_size = s.batch_size
  c.eval_batch_size = s.eval_batch_size
  c.augment = s.augment
  c.optimizer = ml_collections.ConfigDict(s.optimizer.to_dict())
  c.label_smoothing = run["label_smoothing"]
  c.seed = int(seed)
  c.attack = ml_collections.ConfigDict({"name": run["name"], "kind": run["kind"], "params": run["params"],
                                        "teacher_sha256": teacher_sha or "", "teacher_output": config.teacher_output})
  return c


def _finished(run_dir: pathlib.Path, run_config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  path = run_dir / "results.json"
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  return results if results.get("config_hash") == config_lib.config_hash(run_config) else None


def run_attacks(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, mesh=None,
                dataset: data.DeviceDataset | None = None) -> dict[str, Any]:
  """Trains every (attack, seed) student against ``config.teacher``; returns the record
  written to ``attack.json``."""
  workdir = pathlib.Path(workdir)
  if not config.teacher:
    raise ValueError("config.teacher: set it to the teacher run directory (CLI: --config.teacher=DIR)")
  if config.teacher_output not in blackbox.OUTPUTS:
    raise ValueError(f"teacher_output must be one of {blackbox.OUTPUTS}, got {config.teacher_output!r}")
  runs = attack_runs(config)
  t_model, t_vars, t_manifest = teacher_lib.load_teacher(config.teacher)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)
  t_ds = t_manifest["dataset"]
  if t_manifest["num_classes"] != ds.num_classes or list(t_ds["image_shape"]) != list(ds.train.image_shape):
    raise ValueError(f"teacher in {config.teacher} was trained on {t_ds.get('name')} ({t_manifest['num_classes']} "
                     f"classes, images {t_ds.get('image_shape')}); the students' dataset {ds.name!r} has "
                     f"{ds.num_classes} classes, images {list(ds.train.image_shape)}")
  black_box = blackbox.BlackBoxTeacher(t_model, t_vars, config.teacher_output, mesh)
  del t_model, t_vars  # from here on only the black box
  hook = blackbox.teacher_hook(config.teacher_output)
  steps_per_epoch = ds.train.size // config.student.batch_size

  record: dict[str, Any] = {
      "teacher": {"dir": str(pathlib.Path(config.teacher).resolve()), "method": t_manifest["method"],
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
    for seed in config.attacks.seeds:
      is_baseline = run["kind"] in BASELINES
      rc = student_run_config(config, run, seed, None if is_baseline else t_manifest["params_sha256"])
      run_dir = workdir / "runs" / run["name"] / f"seed{seed}"
      results = _finished(run_dir, rc)
      if results is None:
        model = models.from_config(rc, ds.num_classes)
        kw: dict[str, Any] = {"model": model}
        if run["kind"] == "skeptical":
          kw["model"] = students.SkepticalStudent(model, ds.num_classes)
        if not is_baseline:
          kw.update(loss_fn=students.make_attack_loss(run["kind"], run["params"], steps_per_epoch),
                    batch_fn=hook, aux=black_box)
        results = runner.fit(rc, run_dir, mesh, ds, **kw)
      entry["accuracy"][str(seed)] = results["test_accuracy"]
      entry["seconds"][str(seed)] = results["seconds_this_process"]  # of the process that finished the run
      if main:
        config_lib.write_json_atomic(workdir / ATTACK_JSON, record)
  if main:
    config_lib.write_json_atomic(workdir / ATTACK_JSON, record)
  return record
