"""The ``jaxprotect condense`` phase (jaxprotect.privacy.condensation): the files it writes
and their manifest, a kill during condensation resumed to a bitwise-equal synthetic set,
evaluation rerun alone, another config refused, bad input refused before anything is
written, and the experiment file's variants.

Tiny shapes: DM on 200 embedded Fashion-MNIST images, ConvNet width 8 and depth 2, one
image per class, 4 iterations (a checkpoint after each), evaluation 2 epochs."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxprotect import config as config_lib, parallel
from jaxprotect.privacy import condensation as cz

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["data.train_subset=200", "condense.method=dm", "condense.ipc=1", "condense.iterations=4",
             "condense.model_kwargs.width=8", "condense.model_kwargs.depth=2", "condense.batch_real=16",
             "condense.strategy=none", "evaluate.epochs=2", "evaluate.eval_batch=1000", "neighbours.pairs=3",
             "runtime.checkpoint.every_iterations=1", "runtime.progress=false", "runtime.tensorboard=false"]


def make_config(*extra):
  c = cz.condensation_config()
  return config_lib.apply_overrides(c, [*OVERRIDES, *extra])


_KILLED = """
from jaxprotect import config as config_lib, parallel
from jaxprotect.privacy import condensation as cz
parallel.enable_compilation_cache()
c = config_lib.apply_overrides(cz.condensation_config(), {overrides!r})
cz.run_condense(c, {work!r}, parallel.make_mesh(1))
"""


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  work = tmp_path_factory.mktemp("condensation") / "whole"
  return work, cz.run_condense(make_config(), work, parallel.make_mesh(1))


def test_phase_writes_the_synthetic_set_its_manifest_and_reports(whole):
  work, results = whole
  arrays, manifest = cz.load_synthetic(work)
  assert manifest["format"] == cz.FORMAT and manifest["method"] == "dm" and manifest["ipc"] == 1
  assert manifest["iterations"] == 4 and manifest["init"] == "real"
  assert set(manifest["files"]) == {"synthetic.npz", *(f"class_{k:02d}.png" for k in range(10))}
  assert manifest["dataset"]["fingerprint"] == results["dataset"]["fingerprint"]
  assert manifest["arrays"]["images"] == cz.array_sha256(arrays["images"])
  np.testing.assert_array_equal(arrays["labels"], np.arange(10))
  np.testing.assert_allclose(arrays["images_pixels"], arrays["images"] * arrays["std"] + arrays["mean"], rtol=1e-6)
  assert arrays["images"].shape == (10, 28, 28, 1) and np.all((arrays["init_ids"] >= 0) & (arrays["init_ids"] < 200))
  for name in ("config.json", "results.json", "evaluation.json", "neighbours.json", "closest_pairs.png"):
    assert (work / name).exists(), name
  assert len(results["test_accuracy"]) == 3 and len(set(results["test_accuracy"])) > 1  # three seeds, vmapped
  assert results["test_accuracy_mean"] == pytest.approx(np.mean(results["test_accuracy"]))
  assert results["paper"]["test_accuracy_percent"] == 70.5 and not results["paper"]["same_setting"]
  neighbours = json.loads((work / "neighbours.json").read_text())
  l2 = neighbours["metrics"]["l2"]
  assert set(l2) >= {"synthetic", "random_real_subset", "init_real", "synthetic_to_init", "nearest_is_init_fraction"}
  assert len(l2["synthetic_nearest_ids"]) == 10 and "ssim" in neighbours["metrics"]
  text = cz.report_markdown(results)
  assert "DM, 1 image(s) per class" in text and "random real subset" in text and "70.5" in text
  # a finished run is not condensed again
  again = cz.run_condense(make_config(), work, parallel.make_mesh(1))
  assert again["condense"]["iterations_this_process"] == 0 and again["test_accuracy"] == results["test_accuracy"]


def test_kill_during_condensation_resumes_bitwise(whole, tmp_path):
  work_whole, results_whole = whole
  env = {**os.environ, "JAXPROTECT_KILL_AT": "2"}
  script = _KILLED.format(overrides=OVERRIDES, work=str(tmp_path / "killed"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not (tmp_path / "killed" / "synthetic").exists() and not (tmp_path / "killed" / "results.json").exists()
  resumed = cz.run_condense(make_config(), tmp_path / "killed", parallel.make_mesh(1))
  assert 0 < resumed["condense"]["resumed_from"] <= 2 and resumed["condense"]["iterations_this_process"] < 4
  a, _ = cz.load_synthetic(work_whole)
  b, _ = cz.load_synthetic(tmp_path / "killed")
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bitwise
  assert resumed["synthetic_sha256"] == results_whole["synthetic_sha256"]
  assert resumed["test_accuracy"] == results_whole["test_accuracy"]
  steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4]
  # evaluation results lost: only the evaluation runs again
  (tmp_path / "killed" / "evaluation.json").unlink()
  (tmp_path / "killed" / "results.json").unlink()
  again = cz.run_condense(make_config(), tmp_path / "killed", parallel.make_mesh(1))
  assert again["condense"] == {"iterations_this_process": 0, "reused": True}
  assert again["test_accuracy"] == results_whole["test_accuracy"]


def test_another_config_in_the_same_workdir_is_refused(whole):
  work, _ = whole
  before = (work / "results.json").read_bytes()
  with pytest.raises(ValueError, match="another config"):
    cz.run_condense(make_config("condense.seed=1"), work, parallel.make_mesh(1))
  assert (work / "results.json").read_bytes() == before


@pytest.mark.parametrize("field,value,match", [
    ("condense.ipc", "1000", "condense.ipc: expected at most"),
    ("condense.ipc", "0", "condense.ipc"),
    ("condense.method", "kip", "condense.method: expected one of"),
    ("condense.init", "zeros", "condense.init: expected one of"),
    ("condense.iterations", "0", "condense.iterations"),
    ("condense.strategy", "crop_warp", "condense.strategy"),
    ("evaluate.epochs", "-1", "evaluate.epochs"),
])
def test_bad_input_raises_before_anything_is_written(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    cz.run_condense(make_config(f"{field}={value}"), tmp_path / "bad", parallel.make_mesh(1))
  assert not (tmp_path / "bad").exists()


def test_unknown_field_is_refused(tmp_path):
  c = make_config()
  with c.unlocked():
    c.condense.ipcs = 3
  with pytest.raises(ValueError, match="unknown config field config.condense.ipcs"):
    cz.run_condense(c, tmp_path / "bad", parallel.make_mesh(1))
  assert not (tmp_path / "bad").exists()


def test_paper_figures_and_experiment_variants():
  assert cz.paper_accuracy("fashion_mnist", "dc", 10)["test_accuracy_percent"] == 82.3
  assert cz.paper_accuracy("fashion_mnist", "dc", 50)["same_setting"]
  assert not cz.paper_accuracy("fashion_mnist", "dm", 50)["same_setting"]
  assert cz.paper_accuracy("cifar10", "dc", 1)["test_accuracy_percent"] == 28.3
  assert cz.paper_accuracy("fashion_mnist", "dc", 20) is None and cz.paper_accuracy("svhn", "dc", 1) is None
  path = REPO / "experiments" / "condense.py"
  mini = config_lib.from_file(f"{path}:fashion_mnist_mini,dc,ipc1")
  assert (mini.condense.method, mini.condense.ipc, mini.condense.model_kwargs.width) == ("dc", 1, 32)
  assert mini.condense.iterations == 10 and mini.evaluate.epochs == 50
  ref = config_lib.from_file(f"{path}:fashion_mnist_mini,dm,reference")
  assert ref.condense.iterations is None and ref.evaluate.epochs is None and ref.condense.model_kwargs.width == 128
  full = config_lib.from_file(f"{path}:fashion_mnist,dsa,ipc50")
  assert full.data.dir == "../shared/data/fashion-mnist" and full.condense.ipc == 50 and full.condense.method == "dsa"
  assert config_lib.from_file(f"{path}:cifar10").data.name == "cifar10"
  with pytest.raises(ValueError, match="unknown variant"):
    config_lib.from_file(f"{path}:svhn")
  with pytest.raises(ValueError, match="at most one method"):
    config_lib.from_file(f"{path}:cifar10,dc,dm")
