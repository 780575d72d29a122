"""The code's style (pyproject.toml, [tool.ruff]): pyflakes, pycodestyle, 120-character lines."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "jaxprotect", "tests", "benchmarks",
                         "experiments", "scripts"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
