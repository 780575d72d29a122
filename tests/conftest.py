"""Test set-up: 8 simulated CPU devices and the CLI's XLA:CPU flags, set before JAX is imported."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxprotect import platform  # noqa: E402

platform.apply_cpu_xla_flags()  # as the jaxprotect command does (import jaxprotect no longer does)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxprotect import data, parallel  # noqa: E402

# As the CLI does: a program compiled by one test (or one xdist worker, or an earlier
# session) is read back instead of compiled again.
parallel.enable_compilation_cache()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FMNIST_DIR = SHARED / "data" / "fashion-mnist"


def load_script(relpath: str):
  """The module of a script of the repository that is not installed (``experiments/``,
  ``scripts/``), e.g. ``load_script("experiments/certify_seeds.py")``."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  path = REPO / relpath
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def fmnist_dir() -> pathlib.Path:
  if not (FMNIST_DIR / "SHA256SUMS").exists():
    raise RuntimeError(f"real Fashion-MNIST files expected at {FMNIST_DIR} (../shared beside the clone)")
  return FMNIST_DIR


def synthetic_host(image_shape=(12, 12, 3), std=30.0, test_size=20, first_id=0, n=64, num_classes=4):
  """A small labelled dataset whose classes differ in mean brightness (so that a few
  training steps make progress); the test split is the first ``test_size`` examples."""
  rng = np.random.default_rng(0)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  images = np.clip(rng.normal(60 * labels[:, None, None, None] + 40, std, (n, *image_shape)), 0, 255).astype(np.uint8)
  split = data.ArraySplit(images=images, labels=labels, ids=np.arange(first_id, first_id + n, dtype=np.int32))
  test = data.ArraySplit(images=images[:test_size], labels=labels[:test_size], ids=np.arange(test_size, dtype=np.int32))
  return data.HostDataset(name="synthetic", train=split, test=test, num_classes=num_classes,
                          fingerprint=data.fingerprint(split, test))


def run_command(command: str, args, workdir, kill_at=None):
  """``python -m jaxprotect.cli <command> <args> --workdir <workdir>`` in a subprocess from
  the repository root; with ``kill_at``, the run SIGKILLs itself at that position
  (``JAXPROTECT_KILL_AT``)."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  env = dict(os.environ)
  env.pop("JAXPROTECT_KILL_AT", None)
  if kill_at:
    env["JAXPROTECT_KILL_AT"] = str(kill_at)
  cmd = [sys.executable, "-m", "jaxprotect.cli", command, *args, "--workdir", str(workdir)]
  return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def killed_and_whole_crafts(args, tmp_path):
  """Crafts with ``poison <args>`` killed at outer iteration 2 and resumed (in ``run``),
  and uninterrupted in this process (in ``ref``); checks the kill and the resume, and
  returns the two poisons and the two results.json."""
  import json  # noqa: PLC0415

  from jaxprotect.cli import main as cli_main  # noqa: PLC0415
  from jaxprotect.unlearnable import poison_io  # noqa: PLC0415

  killed = run_command("poison", args, tmp_path / "run", kill_at=2)
  assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
  assert not (tmp_path / "run" / "poison").exists()
  resumed = run_command("poison", args, tmp_path / "run")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "4 iterations" in resumed.stdout
  assert cli_main(["poison", *args, "--workdir", str(tmp_path / "ref")]) == 0
  poisons = [poison_io.load_poison(tmp_path / d) for d in ("ref", "run")]
  results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("ref", "run")]
  return poisons, results

