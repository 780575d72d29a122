"""Test set-up: 8 simulated CPU devices, set before JAX is imported."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FMNIST_DIR = SHARED / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def fmnist_dir() -> pathlib.Path:
  if not (FMNIST_DIR / "SHA256SUMS").exists():
    raise RuntimeError(f"real Fashion-MNIST files expected at {FMNIST_DIR} (../shared beside the clone)")
  return FMNIST_DIR
