"""The privacy experiment (jaxprotect.privacy.experiment): the phase writes its table, a
killed run resumes to the uninterrupted run's numbers without recomputing finished cells,
the targets of a set type trained together equal targets trained one by one, and bad
input is refused before anything is written.

Tiny throughout: a 4-class 12x12x3 set of 64 training images, 4 targets, ConvNet width 8
depth 2, 1 image per class, 2 condensation iterations, 2 epochs."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import synthetic_host

from jaxprotect import config as config_lib, models, parallel

cd = importlib.import_module("jaxprotect.privacy.condense")
ex = importlib.import_module("jaxprotect.privacy.experiment")

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  ds = synthetic_host(image_shape=(12, 12, 3), n=64, num_classes=4, test_size=32)
  path = tmp_path_factory.mktemp("privacy_data") / "tiny.npz"
  np.savez(path, x_train=ds.train.images, y_train=ds.train.labels, x_test=ds.test.images, y_test=ds.test.labels)
  return str(path)


def tiny_config(npz, **fields):
  c = ex.privacy_config()
  config_lib.apply_overrides(c, [
      f"data.name={npz}", "target.model_kwargs.width=8", "target.model_kwargs.depth=2", "target.epochs=1",
      "target.batch_size=16", "target.eval_batch_size=32", "condense.ipc=1", "condense.batch_real=4",
      "condense.dm.iterations=2", "condense.dsa.iterations=2", "condense.dsa.outer_loop=1",
      "condense.dsa.inner_loop=1", "mia.pool_size=64", "mia.num_models=4", "mia.sets=real,random,dm",
      "mia.models_per_chunk=2", "runtime.progress=false", "runtime.tensorboard=false",
      *(f"{k}={v}" for k, v in fields.items())])
  return c


_KILLED = """
import sys
sys.path.insert(0, {here!r})
from jaxprotect import parallel
parallel.enable_compilation_cache()
from test_privacy_experiment import tiny_config
from jaxprotect.privacy import experiment
experiment.run_mia(tiny_config({npz!r}), {work!r}, parallel.make_mesh(1))
"""


def _steps(path):
  return [json.loads(x)["step"] for x in path.read_text().splitlines()]


def test_mia_phase_writes_its_table_and_resumes_cell_by_cell(tiny_npz, tmp_path):
  mesh = parallel.make_mesh(1)
  whole = ex.run_mia(tiny_config(tiny_npz), tmp_path / "whole", mesh)
  assert cd._STEP._cache_size() == 0  # each half's condensation programs were dropped after it
  for f in ("results.json", "table.md", "table.json", "roc_real.png", "roc_random.png", "roc_dm.png"):
    assert (tmp_path / "whole" / f).is_file(), f
  table = (tmp_path / "whole" / "table.md").read_text()
  assert "| real | 32 |" in table and "| random | 4 |" in table and "| dm | 4 |" in table
  assert "| random: subset images | 4 |" in table and "| dm: init images | 4 |" in table
  sets = whole["sets"]
  assert sets["real"]["used"] is None and sets["random"]["used"]["kind"] == "subset"
  assert sets["dm"]["used"]["kind"] == "init"
  # 4 models: the fixed-variance attacks, the global threshold and the loss attack (per-example variances need 6)
  assert set(sets["real"]["attacks"]) == {"loss", "online_fixed", "offline_fixed", "global"}
  m = sets["real"]["attacks"]["loss"]
  assert (m["members"], m["non_members"]) == (4 * 32, 4 * 32) and 0 <= m["auc"] <= 1
  u = sets["dm"]["used"]["attacks"]["loss"]
  assert (u["members"], u["non_members"]) == (4 * 4, 4 * 32)
  assert len(sets["dm"]["test_accuracy"]["per_model"]) == 4
  rows = json.loads((tmp_path / "whole" / "table.json").read_text())
  assert [r["set"] for r in rows] == ["real", "random", "dm", "random: subset images", "dm: init images"]

  # Killed in the dm cell, after its 4 condensations and its first training chunk (position 6 > 5); the
  # real and random cells (positions 2, 4) finished before.
  env = {**os.environ, "JAXPROTECT_KILL_AT": "5", "JAX_PLATFORMS": "cpu"}
  script = _KILLED.format(here=str(HERE), npz=tiny_npz, work=str(tmp_path / "killed"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  killed = tmp_path / "killed"
  assert not (killed / "results.json").exists() and not (killed / "dm" / "results.json").exists()
  assert (killed / "real" / "results.json").exists() and (killed / "random" / "results.json").exists()
  finished = {s: (killed / s / "results.json").stat().st_mtime_ns for s in ("real", "random")}
  resumed = ex.run_mia(tiny_config(tiny_npz), killed, mesh)
  assert resumed["sets"] == whole["sets"]
  assert {s: (killed / s / "results.json").stat().st_mtime_ns for s in ("real", "random")} == finished
  assert _steps(killed / "real" / "metrics.jsonl") == [2, 4]
  assert _steps(killed / "dm" / "metrics.jsonl") == [1, 2, 3, 4, 6, 8]  # no condensation or chunk ran twice
  # a finished cell of another config is refused
  with pytest.raises(ValueError, match="config hash"):
    ex.run_mia(tiny_config(tiny_npz, **{"target.epochs": 2}), killed, mesh)


def test_targets_trained_together_equal_targets_trained_one_by_one(tiny_npz):
  ds = synthetic_host(image_shape=(12, 12, 3), n=64, num_classes=4)
  x = ds.train.images.astype(np.float32) / 255.0
  images, labels = x[:24].reshape(3, 8, 12, 12, 3), ds.train.labels[:24].reshape(3, 8)
  keys = jax.random.key_data(jax.random.split(jax.random.PRNGKey(5), 3))
  kw = dict(model=models.get("convnet", 4, width=4, depth=1), epochs=2, batch_train=5, strategy="crop",
            num_classes=4)
  together = cd.train_on_sets(images, labels, keys, **kw)
  scanned = cd.train_on_sets(images, labels, keys, loop="scan", **kw)
  for m in range(3):
    alone = cd.train_on_sets(images[m:m + 1], labels[m:m + 1], keys[m:m + 1], **kw)
    _, evaluated = cd.evaluate_synthetic(images[m], labels[m], ds.test.images, ds.test.labels, keys[m:m + 1],
                                         return_params=True, **kw)
    for a, b, c, d in zip(*(jax.tree.leaves(t) for t in (together, alone, evaluated, scanned))):
      np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a)[m], rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(np.asarray(c)[0], np.asarray(a)[m], rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(np.asarray(d)[m], np.asarray(a)[m], rtol=1e-4, atol=1e-6)
  first = np.asarray(jax.tree.leaves(together)[0])
  assert not np.allclose(first[0], first[1])  # different sets and keys, different networks
  with pytest.raises(ValueError, match="keys_M: expected one raw PRNG key per set"):
    cd.train_on_sets(images, labels, keys[:2], **kw)
  with pytest.raises(ValueError, match="labels_MxS"):
    cd.train_on_sets(images, labels[:, :4], keys, **kw)


@pytest.mark.parametrize("fields,match", [
    ({"mia.num_models": 3}, "mia.num_models: expected an even number"),
    ({"mia.num_models": 0}, "mia.num_models: expected an even number"),
    ({"mia.pool_size": 63}, "mia.pool_size: expected an even number"),
    ({"mia.pool_size": 128}, "mia.pool_size: expected at most the 64 training examples"),
    ({"condense.ipc": 9}, r"condense.ipc: expected at most \d+ \(the fewest examples of one class"),
    ({"mia.sets": "real,kip"}, "mia.sets: expected one of 'real', 'random', 'dsa', 'dm', 'dc', got 'kip'"),
    ({"mia.pool": "last"}, "mia.pool: expected one of 'first', 'random'"),
    ({"condense.init": "kmeans"}, "condense.init: expected"),
    ({"target.augment": "crop_blur"}, "target.augment: expected a DSA strategy"),
])
def test_bad_inputs_raise_before_anything_is_written(tiny_npz, tmp_path, fields, match):
  with pytest.raises(ValueError, match=match):
    ex.run_mia(tiny_config(tiny_npz, **fields), tmp_path / "bad", parallel.make_mesh(1))
  assert not (tmp_path / "bad").exists()
