"""Undistillable models: CMIM teacher steps on 1 and 8 devices, the black box, students, CLI."""

import copy
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import synthetic_host
from jaxprotect import cli, config as config_lib, data, distill, losses, models, parallel, train
from jaxprotect.distill import attack, blackbox, report, students, teacher

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "cmim.py")
K = 4


@pytest.fixture(scope="module")
def host():
  return synthetic_host(num_classes=K)


def _sgd():
  opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
  return train.make_optimizer(opt, steps_per_epoch=4, epochs=2)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_cmim_step_on_8_devices_equals_1_device_centroids_included(host, aggregation):
  """The CMI term, its aggregation and the EMA centroid update use the global batch."""
  model = models.get("mlp", K, hidden=(16,))
  tx = _sgd()
  temps = (1.0, 4.0, 16.0)
  loss_fn = teacher.cmim_stateful_loss(temps, lam=0.5, aggregation=aggregation, weighting="t2", decay=0.9)
  x = jnp.asarray(host.train.images[:16], jnp.float32) / 255.0
  batch = {"image": x, "label": jnp.asarray(host.train.labels[:16])}
  finals = []
  for n in (1, 8):
    mesh = parallel.make_mesh(n)
    ds = data.to_device(host, mesh)
    init = train.init_state(model, optax.identity(), ds.example, jax.random.PRNGKey(0), mesh)
    cents = teacher.initial_centroids(model, train.variables_of(init), ds.train, temps, mesh, batch_size=16)
    state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(0), mesh, extra={"centroids": cents})
    chex.assert_trees_all_equal(state.params, init.params)  # the full pass saw fit's initial parameters
    step = train.make_train_step(model, loss_fn, tx, mesh)
    for _ in range(2):
      state, metrics = step(state, batch)
    finals.append((jax.device_get(cents), jax.device_get(state), jax.device_get(metrics)))
  (c1, s1, m1), (c8, s8, m8) = finals
  # the initial centroids are the class means over the whole training split
  logits, _ = model.apply({"params": s1.params}, x, train=False)  # (shape check only)
  init_logits, _ = model.apply(train.variables_of(init), jnp.asarray(host.train.images, jnp.float32) / 255.0)
  want = losses.class_mean_centroids(init_logits, jnp.asarray(host.train.labels), jnp.asarray(temps))
  np.testing.assert_allclose(c1, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c8, want, rtol=1e-5, atol=1e-6)
  assert logits.shape == (16, K)
  chex.assert_trees_all_close(s1.extra, s8.extra, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.params, s8.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m1, m8, rtol=1e-5, atol=1e-6)
  assert not np.allclose(s1.extra["centroids"], c1)  # the EMA moved them
  np.testing.assert_allclose(np.asarray(s1.extra["centroids"]).sum(-1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def bn_teacher():
  model = models.get("resnet18", K, width=4, stage_sizes=(1, 1))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(6, 12, 12, 3)), jnp.float32)
  variables = models.init_variables(model, jax.random.PRNGKey(3), x)
  # non-trivial running statistics, so that they must reach the black box too
  variables["batch_stats"] = jax.tree.map(lambda a: a + 0.1, variables["batch_stats"])
  return model, variables, x


def test_black_box_exposes_no_parameters_and_returns_only_outputs(bn_teacher):
  model, variables, x = bn_teacher
  bb = blackbox.BlackBoxTeacher(model, variables, "logits", seed=0)
  want, _ = model.apply(variables, x, train=False)
  out = bb(x)
  assert isinstance(out, jax.Array) and out.shape == (6, K)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda b, im: b(im))(bb, x)), np.asarray(want))

  secret = [np.asarray(a, np.float32) for a in jax.tree.leaves(variables)]
  secret_bytes = [a.tobytes() for a in secret if a.size >= 4]

  def assert_not_parameters(value, where):
    for leaf in jax.tree.leaves(value):
      arr = np.asarray(leaf)
      assert not np.issubdtype(arr.dtype, np.floating), f"{where}: a float array is reachable"
      blob = arr.tobytes()
      assert not any(s in blob for s in secret_bytes), f"{where}: parameter bytes are reachable"

  # every pytree path
  for path, leaf in jax.tree_util.tree_leaves_with_path(bb):
    assert_not_parameters(leaf, f"pytree path {jax.tree_util.keystr(path)}")
  # every public attribute (methods are called when they take no arguments)
  for name in dir(bb):
    if name.startswith("_"):
      continue
    value = getattr(bb, name)
    if callable(value):
      if name == "tree_flatten":
        assert_not_parameters(value()[0], "tree_flatten()")
      continue
    assert isinstance(value, (str, int)), f"public attribute {name} is a {type(value)}"
  assert not hasattr(bb, "__dict__")  # no ad-hoc attributes either
  assert "params" not in repr(bb)

  probs = blackbox.BlackBoxTeacher(model, variables, "probs", seed=1)
  np.testing.assert_allclose(np.asarray(probs(x)), np.asarray(jax.nn.softmax(want)), rtol=1e-5, atol=1e-7)
  hook = blackbox.teacher_hook("probs")
  b = hook(probs, {"image": x, "label": jnp.zeros(6, jnp.int32)})
  np.testing.assert_allclose(np.asarray(b["teacher_logits"]), np.asarray(jax.nn.log_softmax(want)), atol=1e-5)
  with pytest.raises(ValueError, match="output"):
    blackbox.BlackBoxTeacher(model, variables, "features")


def test_skeptical_heads_positions_and_outputs():
  x = jnp.zeros((2, 12, 12, 1))
  assert students.tapped_layers(models.get("small_cnn", 10, width=4), x) == ("conv0", "conv1")
  assert students.tapped_layers(models.get("resnet18", 10, width=4), x) == ("stage2_block2", "stage3_block2")
  assert students.tapped_layers(models.get("mlp", 10, hidden=(16,)), x) == ("fc0", "fc0")
  assert students.tapped_layers(models.get("mlp", 10, hidden=(8, 8, 8)), x) == ("fc0", "fc1")
  base = models.get("small_cnn", 10, width=4)
  sk = students.SkepticalStudent(base, 10)
  v = jax.jit(sk.init)(jax.random.PRNGKey(0), x)
  assert set(v["params"]) == {"base", "aux_shallow", "aux_layer3"}
  xr = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 12, 12, 1)), jnp.float32)
  logits, heads = jax.jit(sk.apply)(v, xr)
  want, feats = jax.jit(base.apply)({"params": v["params"]["base"]}, xr)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(heads["feats"]), np.asarray(feats), rtol=1e-6)
  assert heads["shallow_logits"].shape == heads["layer3_logits"].shape == (2, 10)


def test_attack_losses_schedules():
  rng = np.random.default_rng(2)
  s, t = (jnp.asarray(rng.normal(0, 2, (5, K)), jnp.float32) for _ in range(2))
  y = jnp.asarray([0, 1, 2, 3, 0])
  ce = losses.cross_entropy(s, y)
  dkd = students.make_attack_loss("dkd", dict(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=2.0), 10)
  part = losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0)
  for step, factor in ((0, 0.5), (9, 0.5), (10, 1.0), (35, 1.0)):  # epochs counted from 1
    got = dkd((s, None), {"label": y, "teacher_logits": t, "step": jnp.int32(step)})
    np.testing.assert_allclose(got, ce + factor * part, rtol=1e-5)
  sk = students.make_attack_loss("skeptical", dict(alpha=0.9, temperature=4.0, delay_epochs=1.0, sd_kl_weight=0.3,
                                                   sd_ce_weight=0.7), 10)
  a, b = (jnp.asarray(rng.normal(0, 2, (5, K)), jnp.float32) for _ in range(2))
  heads = {"shallow_logits": a, "layer3_logits": b}
  sd = 0.7 * losses.cross_entropy(b, y) + 0.3 * losses.kd_loss(b, s, 4.0)
  before = sk((s, heads), {"label": y, "teacher_logits": t, "step": jnp.int32(9)})
  np.testing.assert_allclose(before, ce + losses.cross_entropy(a, y) + sd, rtol=1e-5)
  after = sk((s, heads), {"label": y, "teacher_logits": t, "step": jnp.int32(10)})
  np.testing.assert_allclose(after, ce + 0.1 * losses.cross_entropy(a, y) + 0.9 * losses.kd_loss(a, t, 4.0) + sd,
                             rtol=1e-5)


def test_attack_runs_expand_and_reject_bad_names():
  c = config_lib.from_file(f"{CONFIG}:fashion_mnist_mini")
  names = [r["name"] for r in attack.attack_runs(c)]
  assert names == ["ce", "ls_eps0.05", "ls_eps0.1", "ls_eps0.2", "kd_T1", "kd_T4", "kd_T10", "kd_T20", "dkd",
                   "skeptical", "hard_label", "logit_mse"]
  sk = [r for r in attack.attack_runs(c) if r["name"] == "skeptical"][0]
  assert sk["params"]["delay_epochs"] == 1  # 10% of 10 epochs
  c.attacks.names = ("kd", "fitnets")
  with pytest.raises(ValueError, match="fitnets"):
    attack.attack_runs(c)
  with pytest.raises(ValueError, match="variant"):
    config_lib.from_file(f"{CONFIG}:mnist_huge")
  with pytest.raises(ValueError, match="option"):
    config_lib.from_file(f"{CONFIG}:fashion_mnist_mini,kd")
  with pytest.raises(ValueError, match="at most one teacher method"):
    config_lib.from_file(f"{CONFIG}:fashion_mnist_mini,ce,nasty")
  c = config_lib.from_file(f"{CONFIG}:cifar10,nasty")
  assert c.method == "nasty" and c.teacher.model == "resnet18" and c.student.optimizer.name == "adam"
  assert c.data.name == "cifar10" and c.teacher.optimizer.milestones == (80, 120)


def test_teacher_and_student_hashes_cover_only_their_own_sections():
  """A teacher's hash: data, teacher and its method's settings; a student's: data, student
  and its attack -- so attacks never invalidate teachers and teacher recipes never
  invalidate resumable students."""
  c = distill.distill_config()
  assert c.method == "cmim" and c.teacher.model_kwargs.width == 32 and c.student.optimizer.grad_clip == 5.0
  # CNN students (the Skeptical heads need two distinct layers) and three seeds (the report's intervals)
  assert c.student.model == "small_cnn" and c.student.model_kwargs.width == 16 and c.attacks.seeds == (0, 1, 2)
  for variant in ("fashion_mnist_mini", "fashion_mnist", "fashion_mnist_resnet18", "cifar10"):
    v = config_lib.from_file(f"{CONFIG}:{variant}")
    assert v.student.model == "small_cnn" and v.attacks.seeds == (0, 1, 2), variant
    model = models.from_config(v.student, 10)
    assert students.check_skeptical_base(model, jnp.zeros((1, 28, 28, 1))) == ("conv0", "conv1"), variant

  def edited(config, *edits):
    d = copy.deepcopy(config)
    for path, value in edits:
      *parents, key = path.split(".")
      node = d
      for part in parents:
        node = node[part]
      node[key] = value
    return d

  ignored_by_teacher = [("student.epochs", 3), ("student.model_kwargs.width", 8), ("student.seed", 4),
                        ("attacks.seeds", (5,)), ("attacks.teacher", "/elsewhere"), ("attacks.kd.alpha", 0.5),
                        ("attacks.teacher_output", "probs"), ("runtime.num_devices", 1), ("runtime.progress", False),
                        ("runtime.checkpoint.keep", 1), ("data.dir", "/data/elsewhere"), ("nasty.tau", 2.0),
                        ("curve.num", 5)]
  base = teacher.teacher_hash(c)
  for edit in ignored_by_teacher:
    assert teacher.teacher_hash(edited(c, edit)) == base, edit
  for edit in [("cmim.lam", 0.2), ("cmim.temperatures", (1.0, 4.0)), ("teacher.seed", 1), ("teacher.epochs", 7),
               ("teacher.model_kwargs.width", 16), ("data.train_subset", 100), ("method", "ce")]:
    assert teacher.teacher_hash(edited(c, edit)) != base, edit
  ce = edited(c, ("method", "ce"))
  assert teacher.teacher_hash(edited(ce, ("cmim.lam", 0.2))) == teacher.teacher_hash(ce)  # CE ignores cmim
  nasty = edited(c, ("method", "nasty"))
  assert teacher.teacher_hash(nasty, reference_sha="a") != teacher.teacher_hash(nasty, reference_sha="b")
  assert teacher.teacher_hash(edited(nasty, ("cmim.lam", 0.2))) == teacher.teacher_hash(nasty)
  assert teacher.teacher_hash(edited(nasty, ("nasty.omega", 0.1))) != teacher.teacher_hash(nasty)

  def student_hash(config, seed=0, name="kd_T4", teacher_sha="abc"):
    run = next(r for r in attack.attack_runs(config) if r["name"] == name)
    return attack.student_hash(attack.student_run_config(config, run, seed),
                               attack.attack_settings(config, run, teacher_sha))

  base = student_hash(c)
  for edit in [("teacher.epochs", 3), ("teacher.seed", 2), ("teacher.model", "mlp"), ("teacher.optimizer.lr", 0.3),
               ("method", "nasty"), ("cmim.lam", 0.2), ("nasty.tau", 9.0), ("curve.enabled", False),
               ("attacks.teacher", "/elsewhere"), ("attacks.seeds", (7,)), ("attacks.dkd.beta", 2.0),
               ("runtime.num_devices", 1), ("runtime.checkpoint.every_steps", 3), ("data.dir", "/data/elsewhere")]:
    assert student_hash(edited(c, edit)) == base, edit
  for changed in [student_hash(c, seed=1), student_hash(c, teacher_sha="def"), student_hash(c, name="kd_T1"),
                  student_hash(edited(c, ("attacks.kd.alpha", 0.5))), student_hash(edited(c, ("student.epochs", 3))),
                  student_hash(edited(c, ("attacks.teacher_output", "probs"))),
                  student_hash(edited(c, ("data.train_subset", 100)))]:
    assert changed != base
  # LS baselines differ in label smoothing only; student_key pairs them with every knock-off
  assert student_hash(c, name="ls_eps0.1", teacher_sha=None) != student_hash(c, name="ls_eps0.2", teacher_sha=None)
  key = attack.student_key(c)
  assert attack.student_key(edited(c, ("teacher.epochs", 3), ("attacks.seeds", (9,)), ("cmim.lam", 3.0))) == key
  assert attack.student_key(edited(c, ("student.epochs", 3))) != key


def test_cli_teacher_attack_report_end_to_end(tmp_path):
  """Tiny setting: 256 embedded Fashion-MNIST images, one epoch, an MLP teacher, small-CNN
  students (width 4), one seed; a student the Skeptical attack cannot use is refused first."""
  spec = f"{CONFIG}:fashion_mnist_mini,cmim"
  common = [f"--config={spec}", "--config.data.train_subset=256", "--config.runtime.num_devices=1",
            "--config.runtime.progress=False", "--config.runtime.tensorboard=False"]
  tdir, adir, rdir = tmp_path / "teacher", tmp_path / "attack", tmp_path / "report"
  t_args = ["--config.teacher.model=mlp", "--config.teacher.epochs=1", "--config.curve.num=5"]
  rc = cli.main(["distill", "teacher", *common, *t_args, f"--workdir={tdir}"])
  assert rc == 0
  manifest = json.loads((tdir / "teacher.json").read_text())
  assert manifest["method"] == "cmim" and manifest["dataset"]["train_size"] == 256
  assert manifest["settings"]["method"] == "cmim" and manifest["settings"]["cmim"]["lam"] == 1.0
  overrides = [a[len("--config."):] for a in common[1:] + t_args]
  t_config = config_lib.apply_overrides(config_lib.from_file(spec), overrides)
  assert manifest["config_hash"] == teacher.teacher_hash(t_config)  # what fit recorded, recomputed
  assert json.loads((tdir / "config.json").read_text())["hashed_sections"] == ["data", "teacher"]
  curve = json.loads((tdir / "cmi_curve.json").read_text())
  assert len(curve["temperatures"]) == 5 and np.all(np.isfinite(curve["train"] + curve["test"]))
  assert (tdir / "cmi_curve.png").stat().st_size > 1000
  metrics = [json.loads(ln) for ln in (tdir / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 2

  student = ["--config.student.model_kwargs.width=4", "--config.student.epochs=1", "--config.student.batch_size=64",
             "--config.attacks.seeds=(0,)", "--config.attacks.ls_eps=(0.1,)", "--config.attacks.kd.temperatures=(4.0,)"]
  rc = cli.main(["distill", "attack", *common, *student, f"--config.attacks.teacher={tdir}", f"--workdir={adir}"])
  assert rc == 0
  rec = json.loads((adir / "attack.json").read_text())
  assert rec["run_order"] == ["ce", "ls_eps0.1", "kd_T4", "dkd", "skeptical", "hard_label", "logit_mse"]
  a_config = config_lib.apply_overrides(config_lib.from_file(spec), [a[len("--config."):] for a in common[1:] + student]
                                        + [f"attacks.teacher={tdir}"])
  assert rec["student_key"] == attack.student_key(a_config)
  finished = {}
  for run in attack.attack_runs(a_config):
    name = run["name"]
    results_path = adir / "runs" / name / "seed0" / "results.json"
    results = json.loads(results_path.read_text())
    assert 0.0 <= rec["runs"][name]["accuracy"]["0"] <= 1.0
    sha = None if run["kind"] in attack.BASELINES else manifest["params_sha256"]
    want = attack.student_hash(attack.student_run_config(a_config, run, 0), attack.attack_settings(a_config, run, sha))
    assert results["config_hash"] == want, name  # _finished compares with what fit recorded
    finished[name] = results_path.stat().st_mtime_ns
  # re-running resumes: every run is found finished (none is trained again)
  rc = cli.main(["distill", "attack", *common, *student, f"--config.attacks.teacher={tdir}", f"--workdir={adir}"])
  assert rc == 0 and json.loads((adir / "attack.json").read_text())["runs"] == rec["runs"]
  assert {n: (adir / "runs" / n / "seed0" / "results.json").stat().st_mtime_ns for n in finished} == finished

  rc = cli.main(["distill", "report", f"--workdir={rdir}", f"--runs={adir}"])
  assert rc == 0
  rep = json.loads((rdir / "report.json").read_text())
  row = rep["teachers"][0]
  assert row["attack_order"] == ["kd_T4", "dkd", "skeptical", "hard_label", "logit_mse"]
  for a in row["attacks"].values():
    assert a["delta"] == pytest.approx(a["mean"] - row["ls_student"]["mean"])
  # one seed: every interval is unbounded, so every decision -- and the verdict -- is inconclusive
  assert rep["confidence"] == 0.95
  for a in row["attacks"].values():
    assert a["delta_interval"] == [None, None] and a["decision"] == "inconclusive"
  assert row["decision"] == "inconclusive" and row["verdict"].startswith("inconclusive")
  assert row["decision"] in report.DECISIONS and row["decision_ce"] in report.DECISIONS
  assert any(w.startswith("fewer than 3 seeds") for w in row["warnings"])
  md = (rdir / "report.md").read_text()
  assert "teacher acc" in md and "Delta" in md and "kd_T4" in md and "lam=1" in md and "Welch 95%" in md
  assert (rdir / "cmi_curves.png").exists()
  rc = cli.main(["distill", "report", f"--workdir={rdir}", f"--runs={adir}", "--confidence=0.8"])
  assert rc == 0 and json.loads((rdir / "report.json").read_text())["confidence"] == 0.8
  assert "Welch 80%" in (rdir / "report.md").read_text()
  assert cli.main(["distill", "report", f"--workdir={rdir}", f"--runs={adir}", "--confidence=1.5"]) == 1

  # bad input: a clear error and exit code 1
  assert cli.main(["distill", "attack", *common, f"--workdir={tmp_path / 'x'}"]) == 1  # no teacher
  assert cli.main(["distill", "attack", *common, f"--config.attacks.teacher={tmp_path}",
                   f"--workdir={tmp_path / 'x'}"]) == 1
  assert cli.main(["distill", "attack", *common, f"--config.attacks.teacher={tdir}", "--config.student.seed=3",
                   f"--workdir={tmp_path / 'x'}"]) == 1  # students' seeds are attacks.seeds
  assert not (tmp_path / "x").exists()
  # a student on which both Skeptical heads would tap one layer (an MLP with one hidden layer) is refused
  # before the teacher is loaded or any student (even a baseline) trains
  bad = config_lib.apply_overrides(copy.deepcopy(a_config), [
      "student.model=mlp", "student.model_kwargs.width=16", "student.model_kwargs.hidden=(16,)",
      f"attacks.teacher={tmp_path / 'no_teacher'}"])  # the refusal comes first: this is never read
  with pytest.raises(ValueError, match=r"Skeptical student: base model MLP\(hidden=\(16,\)\).*'fc0'"):
    attack.run_attacks(bad, tmp_path / "z")
  assert not (tmp_path / "z" / "runs").exists() and not (tmp_path / "z").exists()
  assert cli.main(["distill", "attack", *common, *student, "--config.student.model=mlp",
                   "--config.student.model_kwargs.hidden=(16,)", f"--config.attacks.teacher={tdir}",
                   f"--workdir={tmp_path / 'z'}"]) == 1
  assert not (tmp_path / "z").exists()
  assert cli.main(["distill", "teacher", *common, "--config.method=bogus", f"--workdir={tmp_path / 'y'}"]) == 1
  with pytest.raises(SystemExit) as exit_info:  # the old path of the teacher directory: a usage error
    cli.main(["distill", "attack", *common, f"--config.teacher={tdir}", f"--workdir={tmp_path / 'x'}"])
  assert exit_info.value.code == 2
  assert cli.main(["distill", "report", f"--workdir={tmp_path / 'empty'}"]) == 1
  assert cli.main(["distill", "frobnicate"]) == 2
  assert report.find_attack_dirs(tmp_path) == [adir]


@pytest.mark.slow
def test_cmim_teacher_resumes_after_a_kill_bitwise(tmp_path):
  """Killed after its first epoch (SIGKILL, checkpoint possibly in flight) and re-run, the
  CMIM teacher ends with the parameters -- and, through the centroids in ``state.extra``,
  the CMI curve -- of an uninterrupted run."""
  args = ["distill", "teacher", f"--config={CONFIG}:fashion_mnist_mini,cmim", "--config.teacher.model=mlp",
          "--config.data.train_subset=512", "--config.teacher.epochs=2", "--config.runtime.num_devices=1",
          "--config.runtime.progress=False", "--config.runtime.tensorboard=False", "--config.curve.num=5"]
  killed = tmp_path / "killed"
  cmd = [sys.executable, "-m", "jaxprotect.cli", *args, f"--workdir={killed}"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAXPROTECT_KILL_AT": "4"})
  assert out.returncode == -9, out.stderr[-2000:]
  assert not (killed / "teacher.json").exists()
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert cli.main([*args, f"--workdir={tmp_path / 'full'}"]) == 0
  a, b = (json.loads((tmp_path / d / "teacher.json").read_text()) for d in ("full", "killed"))
  assert a["params_sha256"] == b["params_sha256"]
  a, b = (json.loads((tmp_path / d / "cmi_curve.json").read_text()) for d in ("full", "killed"))
  assert a == b


def test_nasty_teacher_trains_its_ce_reference_from_the_same_config(tmp_path):
  c = config_lib.from_file(f"{CONFIG}:fashion_mnist_mini,nasty")
  config_lib.apply_overrides(c, ["data.train_subset=256", "runtime.num_devices=1", "runtime.progress=False",
                                 "runtime.tensorboard=False", "teacher.model=mlp", "teacher.model_kwargs.hidden=(16,)",
                                 "teacher.epochs=1", "curve.enabled=False"])
  manifest = teacher.train_teacher(c, tmp_path / "nasty")
  ref = json.loads((tmp_path / "nasty" / "reference" / "teacher.json").read_text())
  assert ref["method"] == "ce" and ref["settings"] == {"method": "ce"}
  assert ref["config_hash"] == teacher.teacher_hash(c, method="ce")
  assert manifest["settings"]["nasty"] == {"tau": 4.0, "omega": 0.04, "reference_sha256": ref["params_sha256"]}
  assert manifest["config_hash"] == teacher.teacher_hash(c, reference_sha=ref["params_sha256"])
  assert json.loads((tmp_path / "nasty" / "teacher.json").read_text())["model_kwargs"] == {"width": 32, "hidden": [16]}
  assert manifest["params_sha256"] != ref["params_sha256"]
