"""Checkpoints: exact resume after SIGKILL, config mismatch, half-written directories."""

import json
import pathlib
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_command
from jaxprotect import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_ARGS = [
    "--config", str(REPO / "experiments" / "train.py") + ":fashion_mnist_mini",
    "--config.data.train_subset=512", "--config.train.batch_size=64", "--config.train.epochs=3",
    "--config.train.chunk_steps=2", "--config.runtime.checkpoint.every_steps=2", "--config.runtime.progress=False",
    "--config.train.eval_batch_size=400",
]


def _train(workdir, kill_at=None, extra=()):
  return run_command("train", [*TRAIN_ARGS, *extra], workdir, kill_at)


@pytest.mark.slow
def test_killed_run_resumes_to_bitwise_identical_parameters(tmp_path):
  ref = _train(tmp_path / "ref")
  assert ref.returncode == 0, ref.stderr[-3000:]

  killed = _train(tmp_path / "run", kill_at=10)
  assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])  # SIGKILL, mid-run
  assert not (tmp_path / "run" / "results.json").exists()
  ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints", config_hash="")
  steps = ckpt.all_steps()
  assert steps and max(steps) <= 10 and max(steps) < 24, steps

  resumed = _train(tmp_path / "run")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  r_ref = json.loads((tmp_path / "ref" / "results.json").read_text())
  r_res = json.loads((tmp_path / "run" / "results.json").read_text())
  assert r_res["steps"] == r_ref["steps"] == 24
  assert r_res["params_sha256"] == r_ref["params_sha256"]
  a = checkpoint.Checkpointer(tmp_path / "ref" / "checkpoints", "").restore_raw()
  b = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints", "").restore_raw()
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # the metrics log reads as one uninterrupted run: one record per chunk, steps increasing
  steps_logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert steps_logged == list(range(2, 25, 2))

  # resuming under a changed config is refused, and nothing is overwritten
  before = (tmp_path / "run" / "results.json").read_bytes()
  bad = _train(tmp_path / "run", extra=["--config.train.optimizer.lr=0.01"])
  assert bad.returncode == 1 and "config hash" in bad.stderr
  assert (tmp_path / "run" / "results.json").read_bytes() == before


def test_half_written_checkpoint_is_never_loaded(tmp_path):
  state = {"w": jnp.arange(4.0), "step": jnp.int32(3)}
  ck = checkpoint.Checkpointer(tmp_path, config_hash="abc", async_save=False)
  ck.save(3, state, {"note": "ok"})
  ck.wait()
  # what a kill during an async save leaves: a temporary directory for a later step,
  # holding partial data
  partial = tmp_path / "7.orbax-checkpoint-tmp-1234567"
  shutil.copytree(tmp_path / "3", partial)
  for f in partial.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  ck2 = checkpoint.Checkpointer(tmp_path, config_hash="abc", async_save=False)
  assert ck2.latest_step() == 3
  restored, meta = ck2.restore(state)
  chex.assert_trees_all_equal(restored, state)
  assert meta["note"] == "ok" and meta["step"] == 3


def test_restore_under_other_config_is_a_clear_error(tmp_path):
  state = {"w": jnp.ones(3)}
  ck = checkpoint.Checkpointer(tmp_path, config_hash="first", async_save=False)
  ck.save(1, state, {})
  ck.close()
  with pytest.raises(ValueError, match="config hash first"):
    checkpoint.Checkpointer(tmp_path, config_hash="second").restore(state)
  with pytest.raises(ValueError, match="no checkpoint"):
    checkpoint.Checkpointer(tmp_path / "empty", config_hash="x").restore(state)


def test_restore_raw_reads_the_state_without_orbax_warnings(tmp_path, caplog):
  state = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "n": jnp.asarray(3, jnp.int32)}
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", "h")
  ckpt.save(5, state, {"epoch": 1})
  ckpt.close()
  with caplog.at_level("WARNING"):
    raw = checkpoint.Checkpointer(tmp_path / "checkpoints", "h").restore_raw()
  assert isinstance(raw["w"], np.ndarray) and raw["w"].dtype == np.float32
  np.testing.assert_array_equal(raw["w"], np.asarray(state["w"]))
  assert int(raw["n"]) == 3
  assert not [r for r in caplog.records if "could not be restored" in r.getMessage()], caplog.text
