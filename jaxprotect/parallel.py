"""Device mesh, shardings and multi-host set-up.

All of jaxprotect runs data parallel over a one-axis mesh named ``data``: batches and
per-example arrays are split along it, parameters are replicated. ``jax.jit`` with
these shardings runs the same program on one device, eight GPUs or a TPU pod slice.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxprotect import platform

__all__ = [
    "COMPILATION_CACHE_ENV", "DATA_AXIS", "barrier", "check_divisible", "data_sharded", "enable_compilation_cache",
    "is_main_process", "local_rows", "make_mesh", "map_local_blocks", "mesh_from_config",
    "maybe_initialize_distributed", "num_shards", "place", "process_slice", "put", "put_process_local", "to_host",
    "replicated", "sync_each_step",
]

DATA_AXIS = "data"

_DISTRIBUTED_ENV = (
    "JAX_COORDINATOR_ADDRESS",  # explicit jax.distributed set-up
    "SLURM_NTASKS",  # SLURM launcher (jax auto-detects the rest)
    "OMPI_COMM_WORLD_SIZE",  # Open MPI launcher
    "TPU_WORKER_HOSTNAMES",  # Cloud TPU VM pod slice
)


COMPILATION_CACHE_ENV = "JAXPROTECT_COMPILATION_CACHE"


def enable_compilation_cache(path: os.PathLike | str | None = None) -> pathlib.Path | None:
  """Keeps compiled XLA programs on disk, so that a rerun -- a resumed run, the next
  command of an experiment, the test suite -- skips most compilation.

  The directory is ``path``, else ``$JAXPROTECT_COMPILATION_CACHE`` (empty or ``0``: no
  cache), else ``$XDG_CACHE_HOME/jaxprotect/xla`` (``~/.cache/jaxprotect/xla``). A
  directory already set in JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is. Programs
  that compile in under 0.2 s are not stored. The ``jaxprotect`` command calls this; the
  library alone does not. Returns the directory in use, or None.
  """
  if jax.config.jax_compilation_cache_dir:
    return pathlib.Path(jax.config.jax_compilation_cache_dir)
  if path is None:
    env = os.environ.get(COMPILATION_CACHE_ENV)
    if env is not None and env.strip() in ("", "0"):
      return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = env or os.path.join(base, "jaxprotect", "xla")
  path = pathlib.Path(path)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path


def maybe_initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when a multi-host launcher is detected.

  Detection is by environment: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``
  and ``JAX_PROCESS_ID``), SLURM, Open MPI or a TPU pod slice with more than one
  worker. Returns True when this process is part of a multi-process run. Must be
  called before any other JAX call; calling it twice is harmless.
  """
  if os.environ.get("JAXPROTECT_NO_DISTRIBUTED"):
    return False
  env = {k: os.environ.get(k) for k in _DISTRIBUTED_ENV}
  tpu_hosts = (env["TPU_WORKER_HOSTNAMES"] or "").split(",")
  multi = (
      env["JAX_COORDINATOR_ADDRESS"]
      or int(env["SLURM_NTASKS"] or 1) > 1
      or int(env["OMPI_COMM_WORLD_SIZE"] or 1) > 1
      or len([h for h in tpu_hosts if h]) > 1
  )
  if not multi:
    return False
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize()
  return True


def make_mesh(num_devices: int | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A one-axis ``data`` mesh over all (or the first ``num_devices``) devices.

  The axis is of type Auto, so XLA propagates shardings through gathers and
  reductions (a batch mean over a sharded batch becomes an all-reduce).
  """
  if devices is None:
    devices = jax.devices()
    if num_devices is not None:
      if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available")
      devices = devices[:num_devices]
  devices = list(devices)
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def mesh_from_config(config: Any, mesh: Mesh | None = None) -> Mesh:
  """``mesh`` if given, else a ``data`` mesh over ``runtime.num_devices`` devices (0: all);
  ``config`` is a run config or its ``runtime`` section."""
  if mesh is not None:
    return mesh
  runtime = config.get("runtime", config)
  return make_mesh(runtime.get("num_devices") or None)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays held whole on every device (parameters, optimiser state)."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays split along their leading (example) axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def num_shards(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def check_divisible(n: int, mesh: Mesh, what: str) -> None:
  """Raises ValueError unless ``n`` splits evenly over the mesh's data axis."""
  k = num_shards(mesh)
  if n % k:
    raise ValueError(f"{what}={n} must be divisible by the number of devices on the data axis ({k})")


def sync_each_step(mesh: Mesh) -> bool:
  """Whether a host-dispatched loop should wait for each program on ``mesh``: True for
  several CPU devices in one process (simulated devices), whose collectives share one
  thread pool and can starve each other's rendezvous when many programs are in flight.
  Waiting costs nothing there (the host is the device); elsewhere programs run ahead."""
  return platform.is_cpu(mesh) and mesh.devices.size > 1


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Places a pytree of host (numpy) arrays, identical on every process, on ``sharding``.

  Every process passes the full global array; each keeps only its addressable
  shards (no cross-host transfer).
  """

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree)


def place(tree: Any, sharding: NamedSharding) -> Any:
  """Puts a pytree on ``sharding``, in one process or several: ``jax.device_put`` where this
  process addresses every device of ``sharding`` or where a leaf is already an array spread
  over processes (a reshard, a collective: every process calls it); otherwise each host
  value (numpy, a scalar, an array on this process's devices), identical on every process,
  is cut into this process's shards with no communication (``jax.device_put`` would check
  that the value is the same everywhere, an all-gather of the whole value)."""
  if not isinstance(sharding, NamedSharding):
    raise ValueError(f"sharding: expected a NamedSharding, got {type(sharding).__name__}")

  def one(x):
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def _block_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
  return tuple(s.indices(n) for s, n in zip(index, shape))


def map_local_blocks(fn: Any, x: jax.Array) -> jax.Array:
  """An array of ``x``'s shape, dtype and sharding whose block at every ``index`` is
  ``fn(block, index)`` of ``x``'s block there, computed on the host from this process's
  shards only (each distinct block once): no communication, so it works for arrays split
  over processes. ``fn`` must keep the block's shape and dtype (an elementwise host
  transform, e.g. quantising images)."""
  if not callable(fn):
    raise ValueError(f"fn: expected a function of (block, index), got {type(fn).__name__}")
  if not isinstance(x, jax.Array):
    raise ValueError(f"x: expected a jax.Array, got {type(x).__name__}")
  blocks: dict[Any, np.ndarray] = {}
  for shard in x.addressable_shards:
    key = _block_key(shard.index, x.shape)
    if key not in blocks:
      block = np.asarray(shard.data)
      out = np.asarray(fn(block, shard.index))
      if out.shape != block.shape or out.dtype != block.dtype:
        raise ValueError(f"fn: must keep the block's shape and dtype {block.shape} {block.dtype}, "
                         f"got {out.shape} {out.dtype}")
      blocks[key] = out
  return jax.make_array_from_callback(x.shape, x.sharding, lambda index: blocks[_block_key(index, x.shape)])


def local_rows(x: jax.Array, rows: Any) -> np.ndarray:
  """``x[rows]`` (``rows``: integer positions along the leading axis) on this host, read
  from this process's shards of ``x`` with no communication. Raises ValueError naming the
  first row that only other processes hold (an array split along its leading axis over
  processes)."""
  if not isinstance(x, jax.Array):
    raise ValueError(f"x: expected a jax.Array, got {type(x).__name__}")
  rows = np.asarray(rows)
  if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or x.ndim < 1:
    raise ValueError(f"rows: expected a vector of integer positions into a leading axis, got shape {rows.shape} "
                     f"dtype {rows.dtype} for an array of shape {x.shape}")
  n = x.shape[0]
  if rows.size and (rows.min() < -n or rows.max() >= n):
    raise ValueError(f"rows: positions must be in [-{n}, {n}), got [{rows.min()}, {rows.max()}]")
  rows = np.where(rows < 0, rows + n, rows)
  out = np.empty((rows.size, *x.shape[1:]), x.dtype)
  found = np.zeros(rows.size, bool)
  for shard in x.addressable_shards:
    key = _block_key(shard.index, x.shape)
    if any(k != (0, m, 1) for k, m in zip(key[1:], x.shape[1:])):
      raise ValueError(f"x: expected an array split along its leading axis only, got sharding {x.sharding}")
    start, stop, _ = key[0]
    hit = ~found & (rows >= start) & (rows < stop)
    if hit.any():
      out[hit] = np.asarray(shard.data)[rows[hit] - start]
      found |= hit
  if not found.all():
    raise ValueError(f"rows: row {int(rows[~found][0])} of an array of {n} is held only by other processes "
                     f"(sharding {x.sharding}); gather it with to_host on every process")
  return out


def to_host(x: Any) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as a numpy array on this host:
  gathered from the other processes when this one does not hold all of it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def put_process_local(tree: Any, mesh: Mesh) -> Any:
  """Builds example-sharded global arrays from each process's own slice of the data.

  For multi-host runs where every host loaded only its part (``process_slice``).
  """
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def process_slice(n: int) -> slice:
  """The contiguous range of ``n`` examples that this process loads in a multi-host run."""
  per = n // jax.process_count()
  start = jax.process_index() * per
  return slice(start, start + per)


def is_main_process() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name`` (a file process 0 wrote is
  then there for the others to read); nothing with one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices(name)
