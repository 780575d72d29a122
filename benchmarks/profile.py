"""Profiles of the jaxprotect rows: one extra repeat under ``jax.profiler.trace``, kept on
disk (open it in Perfetto or TensorBoard), and its most expensive XLA operations.

The summary reads the Perfetto trace (Chrome trace-event JSON) that the profiler writes
next to the XPlane file. XLA operations are the complete events of a device's
``XLA Ops`` line (``/device:...`` processes; without such a line, its other lines except
``XLA Modules`` and ``Steps``) or, on CPU, of XLA's worker threads (``tf_XLAEigen...``);
executor bookkeeping (``ThunkExecutor...``) and Python frames are left out.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax

_NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$")


def trace(fn: Callable[[], Any], out_dir: os.PathLike | str) -> pathlib.Path:
  """Runs ``fn()`` under the profiler, writing to ``out_dir``; returns the Perfetto trace file."""
  out_dir = pathlib.Path(out_dir)
  with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
    jax.block_until_ready(fn())
  files = sorted(out_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    raise RuntimeError(f"the profiler wrote no perfetto_trace.json.gz under {out_dir}")
  return files[-1]


def op_kind(name: str) -> str:
  """An HLO instruction's name without its number: ``convolution.41`` -> ``convolution``."""
  base, _, suffix = name.rpartition(".")
  return base if base and suffix.isdigit() else name


def top_ops(trace_file: os.PathLike | str, n: int = 8) -> list[dict[str, Any]]:
  """The ``n`` kinds of XLA operation (names without their instruction number, see
  ``op_kind``) with the most total time in ``trace_file``: kind, total milliseconds,
  number of executions and share of all operation time.

  On XLA:CPU the shares are of the traced operations only: convolutions run in Eigen's
  thread pool inside untraced ``ThunkExecutor::Execute`` spans and are mostly missing.
  """
  with gzip.open(trace_file, "rt") as f:
    t = json.load(f)
  events = t["traceEvents"] if isinstance(t, dict) else t
  procs = {e["pid"]: e["args"].get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  with_ops_line = {pid for (pid, _), name in threads.items() if name == "XLA Ops"}

  def is_op_line(pid, tid) -> bool:
    thread = threads.get((pid, tid), "")
    if procs.get(pid, "").startswith("/device:"):
      return thread == "XLA Ops" if pid in with_ops_line else thread not in ("XLA Modules", "Steps")
    return thread.startswith("tf_XLAEigen")

  total_us, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e.get("name", "").startswith(_NOT_OPS):
      continue
    if is_op_line(e["pid"], e.get("tid")):
      total_us[op_kind(e["name"])] += e.get("dur", 0)
      count[op_kind(e["name"])] += 1
  all_us = sum(total_us.values()) or 1
  return [{"op": name, "ms": round(us / 1e3, 3), "count": count[name], "share": round(us / all_us, 4)}
          for name, us in total_us.most_common(n)]
