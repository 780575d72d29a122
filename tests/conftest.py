"""Test set-up: 8 simulated CPU devices, set before JAX is imported."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from jaxprotect import parallel  # noqa: E402

# As the CLI does: a program compiled by one test (or one xdist worker, or an earlier
# session) is read back instead of compiled again.
parallel.enable_compilation_cache()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FMNIST_DIR = SHARED / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def fmnist_dir() -> pathlib.Path:
  if not (FMNIST_DIR / "SHA256SUMS").exists():
    raise RuntimeError(f"real Fashion-MNIST files expected at {FMNIST_DIR} (../shared beside the clone)")
  return FMNIST_DIR
