"""Orbax checkpoints of a phase: its state pytree plus a JSON record of what made it.

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames
it when complete), so a directory left by a kill mid-save is never listed or loaded.
The record holds the config hash; restoring under another config is a ``ValueError``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "Checkpointer",
]


class Checkpointer:
  """Keep-last-N, async checkpoints of ``(state, meta)`` under ``directory``."""

  def __init__(self, directory: os.PathLike | str, config_hash: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.fspath(directory))
    self.config_hash = config_hash
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest completely written step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving ``state`` at ``step`` (returns before the write finishes when async)."""
    meta = {**meta, "config_hash": self.config_hash, "step": int(step)}
    self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
    )

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {self.directory}")
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_config(self, step: int | None = None) -> dict[str, Any]:
    """The record of ``step`` (default: latest); raises ValueError if it was written under
    another config."""
    step = self.latest_step() if step is None else step
    meta = self.read_meta(step)
    if meta.get("config_hash") != self.config_hash:
      raise ValueError(
          f"checkpoint {self.directory} step {step} was written with config hash {meta.get('config_hash')}, "
          f"but this run's config hashes to {self.config_hash}; use another run directory (workdir) or the "
          "original config"
      )
    return meta

  def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores the state at ``step`` (default: latest) with the structure, dtypes and
    shardings of ``like``; raises ValueError if it was written under another config."""
    step = self.latest_step() if step is None else step
    meta = self.check_config(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored["state"], meta

  def restore_raw(self, step: int | None = None) -> Any:
    """The saved state as a tree of host (numpy) arrays, without a template: the shapes and
    dtypes come from the checkpoint's metadata, so it reads a checkpoint written on any
    devices (another process layout included; without a target Orbax would put each array
    back on the device ids that saved it)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {self.directory}")
    # both items registered: with "meta" unknown Orbax warns that it "could not be restored"
    reader = ocp.CheckpointManager(self.directory, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                                  "meta": ocp.JsonCheckpointHandler()})
    try:
      tree = reader.item_metadata(step)["state"]
      host = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), getattr(tree, "tree", tree))
      return reader.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(host)))["state"]
    finally:
      reader.close()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
