"""The run context: a toy phase written against ``run.Phase`` (no checkpoint, metrics or
fault-injection code of its own) resumes bitwise after a SIGKILL, refuses another config
or dataset, and leaves the directory as it was when it refuses."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def toy_config(scale: float = 1.0, keep: int = 2) -> ml_collections.ConfigDict:
  """The toy phase's own section and the runtime section (which is not hashed)."""
  return ml_collections.ConfigDict(dict(toy=dict(steps=6, scale=scale), runtime=dict(
      progress=False, tensorboard=False, checkpoint=dict(keep=keep, async_save=True))))


def toy_dataset(shift: int = 0):
  from conftest import synthetic_host
  from jaxprotect import data, parallel
  host = synthetic_host(image_shape=(4, 4, 1), n=16, test_size=8)
  if shift:
    split = data.ArraySplit(host.train.images, (host.train.labels + shift) % 4, host.train.ids)
    host = data.HostDataset("synthetic", split, host.test, 4, data.fingerprint(split, host.test))
  return data.to_device(host, parallel.make_mesh(1))


def toy_phase(config, workdir, ds):
  """A phase's loop and nothing else: a running sum of noisy terms, one per position."""
  from jaxprotect import run
  state = {"total": jnp.zeros((), jnp.float32), "position": jnp.zeros((), jnp.int32)}
  steps = config.toy.steps
  with run.Phase(workdir, "toy", config, dataset=ds, total=steps, unit="term", sections=("toy",)) as phase:
    state = phase.restore(state)
    position = phase.start(int(state["position"]))
    while position < steps:
      term = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), position)) * config.toy.scale
      state = {"total": state["total"] + term, "position": jnp.int32(position + 1)}
      position += 1
      phase.log(position, advance=1, term=float(term))
      phase.checkpoint(position, state, save=True)
  return phase.finish({"total": float(state["total"])}), state


def run_killed(workdir, kill_at):
  env = {**os.environ, "JAXPROTECT_KILL_AT": str(kill_at), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, __file__, str(workdir)], env=env, capture_output=True, text=True,
                        timeout=300)


def test_a_toy_phase_resumes_bitwise_after_a_kill(tmp_path):
  ds = toy_dataset()
  want, state = toy_phase(toy_config(), tmp_path / "whole", ds)
  proc = run_killed(tmp_path / "killed", 3)
  assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL, by the phase's fault injection
  assert not (tmp_path / "killed" / "results.json").exists()
  from jaxprotect import checkpoint
  ck = checkpoint.Checkpointer(tmp_path / "killed" / "checkpoints", want["config_hash"])
  killed_seconds = ck.read_meta(ck.latest_step())["seconds"]  # the killed process's time up to its checkpoint
  ck.close()
  assert killed_seconds > 0
  got, resumed = toy_phase(toy_config(keep=3), tmp_path / "killed", ds)  # runtime may change on resume
  assert got["total"] == want["total"]
  np.testing.assert_array_equal(np.asarray(resumed["total"]), np.asarray(state["total"]))
  steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 7))  # reads as one uninterrupted run
  assert got["config_hash"] == want["config_hash"] and got["num_devices"] == 1
  # the phase's seconds count the killed process up to the checkpoint resumed from, then this one
  assert got["seconds"] == pytest.approx(killed_seconds + got["seconds_this_process"], abs=0.05)
  assert want["seconds"] == pytest.approx(want["seconds_this_process"], abs=0.02)


def test_a_toy_phase_refuses_another_config_or_dataset_and_changes_nothing(tmp_path):
  ds = toy_dataset()
  toy_phase(toy_config(), tmp_path, ds)
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  with pytest.raises(ValueError, match="config hash"):
    toy_phase(toy_config(scale=2.0), tmp_path, ds)
  with pytest.raises(ValueError, match="dataset fingerprint"):
    toy_phase(toy_config(), tmp_path, toy_dataset(shift=1))
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
  # a change that does not alter results (progress) resumes
  c = toy_config()
  c.runtime.progress = True
  assert toy_phase(c, tmp_path, ds)[0]["total"] == json.loads((tmp_path / "results.json").read_text())["total"]


if __name__ == "__main__":  # the killed run of test_a_toy_phase_resumes_bitwise_after_a_kill
  toy_phase(toy_config(), pathlib.Path(sys.argv[1]), toy_dataset())
