"""Multi-host runs on localhost: 2 processes x 4 simulated CPU devices joined by
``jax.distributed`` (gloo collectives, a free port on 127.0.0.1) train like 1 process x 8
devices (training and crafting), and a run killed in every process resumes from its last
complete checkpoint."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxprotect import parallel, runner

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from multiprocess_worker import tiny_config  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir: pathlib.Path, num_processes: int = 2, devices_per_process: int = 4,
           env: dict | None = None, timeout: float = 420, task: str = "train") -> list[subprocess.CompletedProcess]:
  """Runs the worker in ``num_processes`` processes on this machine; waits for all (bounded)."""
  port = free_port()
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAXPROTECT_KILL")}
  base.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
               "JAX_PLATFORMS": "cpu", **(env or {})})
  procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(i), str(num_processes),
                             str(port), str(workdir), task], env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(num_processes)]
  done = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return done


def params_of(workdir: pathlib.Path) -> list[np.ndarray]:
  with np.load(workdir / "params.npz") as z:
    return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mp") / "run"
  runs = launch(workdir)
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "devices 8 processes 2" in r.stdout
  return workdir


def test_two_processes_of_four_devices_train_like_one_process_of_eight(two_process_run, tmp_path):
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8 and jax.process_count() == 1
  results, state = runner.fit(tiny_config(), tmp_path / "one", mesh, return_state=True)
  one = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  two = params_of(two_process_run)
  assert [a.shape for a in one] == [b.shape for b in two]
  # The same programs; the cross-process all-reduce (gloo) sums in another order than the
  # in-process one, so equal to float tolerance, not bitwise.
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # process 0 alone wrote the run directory's files, once
  lines = (two_process_run / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == list(range(2, 17, 2))
  assert (two_process_run / "results.json").exists()


def test_a_run_killed_in_every_process_resumes_across_processes(two_process_run, tmp_path):
  workdir = tmp_path / "killed"
  killed = launch(workdir, env={"JAXPROTECT_KILL_AT": "6"})  # in the first epoch of two
  assert all(r.returncode == -9 for r in killed), [r.stderr[-2000:] for r in killed]
  assert not (workdir / "results.json").exists()
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 6
  resumed = launch(workdir)
  for r in resumed:
    assert r.returncode == 0, r.stderr[-3000:]
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(2, 17, 2))  # reads as one uninterrupted run
  # the same process layout runs the same programs on the same inputs: bitwise equal
  for a, b in zip(params_of(workdir), params_of(two_process_run)):
    np.testing.assert_array_equal(a, b)


def test_crafting_in_two_processes_matches_one_process_of_eight(tmp_path):
  from multiprocess_worker import tiny_craft_config

  from jaxprotect.unlearnable import crafting, poison_io
  runs = launch(tmp_path / "two", env={}, task="craft")
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
  one = crafting.craft(tiny_craft_config(), tmp_path / "one", parallel.make_mesh())
  d1 = poison_io.load_poison(one["poison"]).delta
  d2 = poison_io.load_poison(tmp_path / "two" / "poison").delta
  assert d1.shape == d2.shape == (512, 28, 28, 1)
  # Sign steps amplify float noise only where a gradient is ~0 (as between 1 and 8 devices).
  close = np.isclose(d1, d2, rtol=0, atol=1e-6)
  assert close.mean() > 0.999, close.mean()
