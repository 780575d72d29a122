"""Multi-host runs on localhost: 2 processes x 4 simulated CPU devices joined by
``jax.distributed`` (gloo collectives, a free port on 127.0.0.1) compute what 1 process x 8
devices computes -- training, crafting, certification's weight draws, and a victim trained
and evaluated on a poison with the dataset sharded over both processes -- and a run killed
in every process (training, certification) resumes from its last complete checkpoint."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax.sharding import PartitionSpec as P

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
           env: dict | None = None, timeout: float = 420, task: str = "train",
           arg: str | os.PathLike | None = None) -> list[subprocess.CompletedProcess]:
  """Runs the worker's ``task`` (with its argument ``arg``) in ``num_processes`` processes on
  this machine; waits for all (bounded)."""
  port = free_port()
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAXPROTECT_KILL")}
  base.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
               "JAX_PLATFORMS": "cpu", **(env or {})})
  extra = [str(arg)] if arg else []
  procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(i), str(num_processes),
                             str(port), str(workdir), task, *extra], env=base, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(num_processes)]
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
  """``jaxprotect poison --export npz`` in two processes, the training split sharded over
  both: the poison is one process's of eight devices (to float noise), process 0 alone wrote
  it, its preview and the export, and the export is the one-process export of that poison."""
  from multiprocess_worker import tiny_craft_config

  from jaxprotect import data
  from jaxprotect.unlearnable import crafting, poison_io
  runs = launch(tmp_path / "two", env={}, task="craft")
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "devices 8 processes 2 rc 0" in r.stdout
  config = tiny_craft_config("data.layout=sharded")
  mesh = parallel.make_mesh()
  ds = data.from_config(config, mesh)
  one = crafting.craft(config, tmp_path / "one", mesh, ds)
  d1 = poison_io.load_poison(one["poison"]).delta
  two = poison_io.load_poison(tmp_path / "two" / "poison", ds)
  assert d1.shape == two.delta.shape == (512, 28, 28, 1)
  # Sign steps amplify float noise only where a gradient is ~0 (as between 1 and 8 devices).
  close = np.isclose(d1, two.delta, rtol=0, atol=1e-6)
  assert close.mean() > 0.999, close.mean()
  np.testing.assert_array_equal(two.ids, poison_io.load_poison(one["poison"]).ids)
  assert (tmp_path / "two" / "poison" / "preview.png").exists()
  want = poison_io.export_npz(tmp_path / "one.npz", ds, two)
  with np.load(want) as a, np.load(tmp_path / "two" / "poisoned_train.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])


def metric_steps(workdir: pathlib.Path) -> list[int]:
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_certification_in_two_processes_matches_one_process_and_resumes_after_a_kill(two_process_run, tmp_path):
  from multiprocess_worker import tiny_certify_config

  from jaxprotect.unlearnable import certify
  # The model trained by two processes, certified by one process of eight devices ...
  one = certify.certify(tiny_certify_config(two_process_run), tmp_path / "one", parallel.make_mesh())
  assert len(set(one["accuracies"])) > 1  # the draws differ
  # ... and by two processes, killed in both after the second of four chunks of draws
  workdir = tmp_path / "two"
  killed = launch(workdir, env={"JAXPROTECT_KILL_AT": "4"}, task="certify", arg=two_process_run)
  assert all(r.returncode == -9 for r in killed), [r.stderr[-2000:] for r in killed]
  assert not (workdir / "results.json").exists()
  assert metric_steps(workdir) == [2, 4]
  assert any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())  # a finished chunk to resume from
  resumed = launch(workdir, task="certify", arg=two_process_run)
  for r in resumed:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "devices 8 processes 2" in r.stdout
  two = json.loads((workdir / "results.json").read_text())
  # A draw's accuracy is a count of correct images (an integer, exact in float32 in any
  # summation order) over the test size, and each device evaluates the same images with the
  # same weights in both layouts: equal bitwise.
  assert two["accuracies"] == one["accuracies"]
  assert two["certified"] == one["certified"]
  assert metric_steps(workdir) == [2, 4, 6, 8]  # process 0 alone wrote it, as one run
  assert (workdir / "certified.png").exists() == (tmp_path / "one" / "certified.png").exists()


def test_a_victim_on_a_sharded_layout_in_two_processes_matches_one_process(tmp_path):
  from multiprocess_worker import tiny_victim_config

  from jaxprotect import data, models, train
  from jaxprotect.unlearnable import poison_io, victims
  mesh = parallel.make_mesh()
  poison_dir = tmp_path / "poison"
  config = tiny_victim_config(poison_dir)
  ds = data.from_config(config, mesh)
  assert ds.layout == "sharded" and ds.train.images.sharding.spec == ds.test.images.sharding.spec == P("data")
  eps = 8 / 255
  delta = np.random.default_rng(0).uniform(-eps, eps, (ds.train.size, *ds.train.image_shape)).astype(np.float32)
  poison_io.save_poison(poison_dir, delta, "sample", ds, config={"craft": {"method": "random", "eps": eps}})
  runs = launch(tmp_path / "two", task="evaluate", arg=poison_dir)
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "devices 8 processes 2" in r.stdout
  # The uint8 poisoned images of a sharded layout, quantised block by block where they lie,
  # are those of one pass over the host arrays.
  poison = poison_io.load_poison(poison_dir, ds)
  poisoned = poison_io.apply(ds, poison, 0.5, quantize="round")
  assert poisoned.train.images.sharding == ds.train.images.sharding
  host = data.host_from_config(config)
  chosen = np.zeros(ds.train.size, bool)
  chosen[np.random.default_rng(0).permutation(ds.train.size)[:ds.train.size // 2]] = True
  want = poison_io.quantized_images(host.train.images, np.where(chosen[:, None, None, None], delta, 0), "round")
  np.testing.assert_array_equal(np.asarray(poisoned.train.images), want)

  assert (tmp_path / "two" / "preview.png").exists()  # drawn by process 0 alone from its half of the images
  # the export of both processes (process 0 writing) is the one-process export, byte for byte
  one_npz = poison_io.export_npz(tmp_path / "one.npz", ds, poison)
  with np.load(one_npz) as a, np.load(tmp_path / "two" / "poisoned_train.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])

  one = victims.evaluate(config, tmp_path / "one", mesh)
  two = json.loads((tmp_path / "two" / "results.json").read_text())
  assert two["dataset_fingerprint"] == one["dataset_fingerprint"]  # the same poisoned half, stored as uint8
  assert two["defense"]["name"] == "jpeg" and two["defense"]["runs"] == ["poisoned"]  # squeezed in both processes
  _, v1, _ = runner.load_trained(tmp_path / "one" / "poisoned")
  leaves, treedef = jax.tree.flatten(v1)
  with np.load(tmp_path / "two" / "victim.npz") as z:
    v2 = jax.tree.unflatten(treedef, [z[f"arr_{i}"] for i in range(len(z.files))])
  # Training: the cross-process all-reduce sums in another order, so to float tolerance.
  for a, b in zip(leaves, jax.tree.leaves(v2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert abs(two["test_accuracy"]["poisoned"] - one["test_accuracy"]["poisoned"]) <= 0.01
  # Evaluation: the two-process victim's own test metrics (its sharded test split read across
  # both processes) are what one process of eight devices measures for the same weights,
  # exactly (counts of correct images).
  model = models.from_config(config.victim, ds.num_classes)
  state = parallel.place(train.TrainState(step=np.int32(0), params=v2["params"], batch_stats=v2.get("batch_stats", {}),
                                          opt_state={}, rng=np.zeros(2, np.uint32)), parallel.replicated(mesh))
  m = jax.device_get(train.make_eval_fn(model, mesh, config.victim.eval_batch_size, ds.num_classes)(state, ds.test))
  assert float(m["accuracy"]) == two["test_accuracy"]["poisoned"]
  assert [float(a) for a in m["class_accuracy"]] == two["class_accuracy"]["poisoned"]


def test_host_reads_and_placements_need_no_communication():
  """The pieces the multi-process paths stand on, in one process: what they return equals
  the plain reads, and bad arguments are refused by name."""
  import gc

  from conftest import synthetic_host

  from jaxprotect import data
  mesh = parallel.make_mesh()
  host = synthetic_host(n=64, test_size=16)
  ds = data.to_device(host, mesh, layout="sharded")
  ids = data.host_value(ds.train.ids)  # the host copy split_to_device placed: no device read
  np.testing.assert_array_equal(ids, host.train.ids)
  assert not ids.flags.writeable
  rows = np.array([63, 0, 17, 17])
  np.testing.assert_array_equal(data.host_value(ds.train.images, rows), host.train.images[rows])
  np.testing.assert_array_equal(data.host_value(ds.train.labels, rows), host.train.labels[rows])
  np.testing.assert_array_equal(parallel.local_rows(ds.train.images, rows), host.train.images[rows])
  doubled = parallel.map_local_blocks(lambda block, index: block // 2, ds.train.images)
  assert doubled.sharding == ds.train.images.sharding
  np.testing.assert_array_equal(np.asarray(doubled), host.train.images // 2)
  placed = parallel.place({"a": host.train.labels, "b": np.arange(64.0)}, parallel.data_sharded(mesh))
  assert placed["a"].sharding == parallel.data_sharded(mesh) and placed["b"].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(placed["a"]), host.train.labels)
  assert parallel.place(np.float64(0.5), parallel.replicated(mesh)).dtype == np.float32
  derived = ds.train.ids + 0  # not placed from the host: read from its shards
  np.testing.assert_array_equal(data.host_value(derived), host.train.ids)
  keys = {id(a) for split in (ds.train, ds.test) for a in (split.labels, split.ids)}
  assert keys <= set(data.device._HOST_COPIES)
  del ds, placed
  gc.collect()
  assert not keys & set(data.device._HOST_COPIES)  # the host copies go with their device arrays
  for call, match in ((lambda: parallel.place(np.zeros(2), None), "sharding: expected"),
                      (lambda: parallel.local_rows(doubled, np.array([64])), r"rows: positions"),
                      (lambda: parallel.local_rows(doubled, np.array([0.5])), "rows: expected"),
                      (lambda: parallel.map_local_blocks(lambda b, i: b[:1], doubled), "fn: must keep"),
                      (lambda: parallel.map_local_blocks(None, doubled), "fn: expected"),
                      (lambda: data.host_value(host.train.ids, np.zeros((1, 1), int)), "rows: expected")):
    with pytest.raises(ValueError, match=match):
      call()
