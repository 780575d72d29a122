"""The run context: one resumable phase in one run directory.

Every phase that runs long -- training (``runner.fit``), crafting (``unlearnable.craft``)
and the phases to come (certification, condensation, shadow models, matrix cells) --
writes its directory through ``Phase``, so its own code is its loop and nothing else::

  with run.Phase(workdir, "train", config, dataset=ds, total=total_steps, unit="step") as ph:
    state = ph.restore(state)                  # the latest checkpoint of this config, if any
    position = ph.start(int(state.step))       # metrics.jsonl cut back to it, progress bar
    while position < total_steps:
      state, metrics = ...                     # the phase's own work
      position += n
      ph.log(position, **metrics)              # metrics.jsonl (+ TensorBoard), progress
      ph.checkpoint(position, state, save=...) # Orbax save (async, atomic); fault injection
  ph.finish(results)                           # results.json

What a phase gets without code of its own:

* ``config.json`` (the config, its hash, the dataset and any ``record``), written by
  process 0;
* checkpoints that record the config hash and the dataset fingerprint: resuming under
  another config or on other data is a ``ValueError`` that names the directory;
* ``metrics.jsonl`` that reads as one uninterrupted run after a resume;
* ``seconds`` in ``results.json``: the phase's wall time summed over the processes that
  ran it, each up to the checkpoint the next one resumed from (work lost to a kill is
  not counted; work done again is, once), beside ``seconds_this_process``;
* a progress bar (process 0, ``config.progress``);
* fault injection for resume tests: with ``JAXPROTECT_KILL_AT=N`` the process SIGKILLs
  itself at the first ``checkpoint`` call whose position reaches ``N`` (after starting
  that checkpoint's save).

The config hash covers the phase's own ``sections`` of the config (``config.phase_hash``;
default: every section but ``runtime``) and any ``hash_extra`` values the phase computes
from (a user's model, a teacher's digest); ``runtime`` is read for the checkpoint
cadence, the progress bar and TensorBoard.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import Any

import ml_collections
from tqdm import tqdm

from jaxprotect import checkpoint, config as config_lib, data, parallel
from jaxprotect.metrics import MetricsWriter

__all__ = ["KILL_AT_ENV", "Phase"]

KILL_AT_ENV = "JAXPROTECT_KILL_AT"


class Phase:
  """A resumable phase writing into ``workdir`` (see the module docstring).

  Args:
    workdir: the run directory (created).
    name: the phase's name, recorded in each checkpoint (``"train"``, ``"craft"``, ...).
    config: the run's config; ``runtime.checkpoint.keep``, ``runtime.checkpoint.async_save``,
      ``runtime.progress`` and ``runtime.tensorboard`` are read from it when present.
    dataset: the on-device dataset; its fingerprint is checked on resume.
    total: the position at which the phase ends (steps, iterations, ...), for progress.
    unit: the progress bar's unit.
    sections: the sections of ``config`` the phase computes from (hashed); default: all
      but ``runtime``.
    hash_extra: more JSON-able values that enter the hash.
    record: more JSON for ``config.json`` (e.g. a user's model).
  """

  def __init__(self, workdir: os.PathLike | str, name: str, config: ml_collections.ConfigDict, *,
               dataset: data.DeviceDataset, total: int, unit: str = "step", sections: tuple[str, ...] | None = None,
               hash_extra: dict[str, Any] | None = None, record: dict[str, Any] | None = None):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.name = name
    self.config = config
    self.dataset = dataset
    self.total = int(total)
    self.unit = unit
    self.sections = tuple(sections or (k for k in config.keys() if k != config_lib.RUNTIME))
    self.config_hash = config_lib.phase_hash(config, self.sections, **(hash_extra or {}))
    self.runtime = config.get(config_lib.RUNTIME) or {}
    self.main = parallel.is_main_process()
    self.meta = {"dataset_fingerprint": dataset.fingerprint, "phase": name}
    self.t0 = time.time()
    self._seconds_before = 0.0  # the wall time of earlier processes, up to the checkpoint resumed from
    self._ckpt: checkpoint.Checkpointer | None = None
    self._writer: MetricsWriter | None = None
    self._bar = None
    self._kill_at = int(os.environ.get(KILL_AT_ENV, "0") or 0)
    self._record = record or {}
    self._config_written = False

  def write_config(self) -> None:
    """Writes ``config.json`` (process 0), once; ``restore`` does it only after the
    checkpoint's config and data are accepted, so a refused run changes nothing."""
    if self.main and not self._config_written:
      config_lib.write_json_atomic(self.workdir / "config.json", {
          "config": self.config.to_dict(), "config_hash": self.config_hash, "hashed_sections": list(self.sections),
          "dataset": data.describe(self.dataset),
          **self._record})
    self._config_written = True

  # -- checkpoints ---------------------------------------------------------------------

  @property
  def checkpointer(self) -> checkpoint.Checkpointer:
    """The phase's Orbax checkpointer (created on first use)."""
    if self._ckpt is None:
      ck = self.runtime.get("checkpoint") or {}
      self._ckpt = checkpoint.Checkpointer(self.workdir / "checkpoints", self.config_hash,
                                           keep=ck.get("keep", 3), async_save=ck.get("async_save", True))
    return self._ckpt

  def restore(self, state: Any) -> Any:
    """``state`` from the latest checkpoint (same structure, dtypes and shardings), or
    ``state`` itself when there is none. Refuses another config or dataset."""
    if not (self.workdir / "checkpoints").exists() or self.checkpointer.latest_step() is None:
      self.write_config()
      return state
    restored, meta = self.checkpointer.restore(state)
    if meta.get("dataset_fingerprint") != self.dataset.fingerprint:
      raise ValueError(f"checkpoint in {self.checkpointer.directory} was written on dataset fingerprint "
                       f"{meta.get('dataset_fingerprint')}, but {self.dataset.name!r} now has "
                       f"{self.dataset.fingerprint}; use another run directory (workdir)")
    self._seconds_before = float(meta.get("seconds", 0.0))  # absent in checkpoints written before it was kept
    self.write_config()
    return restored

  def seconds(self) -> float:
    """The phase's wall time so far: earlier processes' (up to the checkpoint this one
    resumed from) plus this process's."""
    return self._seconds_before + time.time() - self.t0

  def checkpoint(self, position: int, state: Any, save: bool = True) -> None:
    """Saves ``state`` at ``position`` when ``save``; then the fault-injection point."""
    if save:
      self.checkpointer.save(position, state, {**self.meta, "seconds": round(self.seconds(), 2)})
    if self._kill_at and position >= self._kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  # -- metrics and progress --------------------------------------------------------------

  def start(self, position: int, desc: str | None = None) -> int:
    """Opens ``metrics.jsonl`` (dropping records past ``position``) and the progress bar;
    returns ``position``."""
    position = int(position)
    self.write_config()
    self._writer = MetricsWriter(self.workdir, resume_step=position, tensorboard=self.runtime.get("tensorboard", False))
    self._bar = tqdm(total=self.total, initial=position, disable=not (self.main and self.runtime.get("progress", True)),
                     unit=self.unit, dynamic_ncols=True, desc=desc)
    return position

  def log(self, position: int, advance: int = 0, postfix: dict[str, str] | None = None, **record: Any) -> None:
    """Writes ``record`` at ``position`` and moves the progress bar by ``advance``."""
    if self._writer is None:
      raise RuntimeError("Phase.log before Phase.start")
    self._writer.write(position, **record)
    if postfix:
      self._bar.set_postfix(**postfix)
    if advance:
      self._bar.update(advance)

  # -- the end -----------------------------------------------------------------------------

  def close(self) -> None:
    """Waits for pending checkpoint writes; closes the metrics file and the progress bar."""
    if self._bar is not None:
      self._bar.close()
    if self._ckpt is not None:
      self._ckpt.close()
    if self._writer is not None:
      self._writer.close()

  def finish(self, results: dict[str, Any]) -> dict[str, Any]:
    """Adds the common fields (devices, ``seconds``, ``seconds_this_process``, config hash) to ``results``, writes
    ``results.json`` (process 0) and returns it."""
    mesh = self.dataset.mesh
    self.write_config()
    this_process = time.time() - self.t0
    results = {**results, "num_devices": int(mesh.devices.size),
               "seconds": round(self._seconds_before + this_process, 2),
               "seconds_this_process": round(this_process, 2), "config_hash": self.config_hash}
    if self.main:
      config_lib.write_json_atomic(self.workdir / "results.json", results)
    return results

  def __enter__(self) -> "Phase":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
