"""Run-directory metrics: JSONL records (process 0 only), TensorBoard when available."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxprotect import parallel

__all__ = [
    "MetricsWriter",
]


def _plain(v: Any) -> Any:
  a = np.asarray(v)
  return a.item() if a.ndim == 0 else a.tolist()


class MetricsWriter:
  """Appends ``{"step": ..., **values}`` lines to ``metrics.jsonl``.

  ``resume_step`` drops records written after that step by a run that was killed
  before its next checkpoint, so a resumed run's file reads as one uninterrupted run.
  """

  def __init__(self, workdir: os.PathLike | str, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = parallel.is_main_process()
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.enabled:
      return
    if self.path.exists():
      kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
      tmp = self.path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(ln + "\n" for ln in kept))
      os.replace(tmp, self.path)
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # optional
      except ImportError:
        pass
      else:
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, **values: Any) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)

  def read(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
