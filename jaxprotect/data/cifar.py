"""CIFAR-10 / CIFAR-100 in the official *python* format (pickled batches).

Leaf module: returns plain numpy arrays (`jaxprotect.data.sources.load_cifar`
assembles the `HostDataset`). Accepts the archive (`cifar-10-python.tar.gz`,
`cifar-100-python.tar.gz`) or its extracted directory (`cifar-10-batches-py`,
`cifar-100-python`). Every user-facing error is a `ValueError` naming the file.

Batches are unpickled with `encoding="bytes"` by a restricted unpickler that only
resolves the numpy globals an ndarray needs, so a hostile archive cannot run code.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import tarfile
import zlib

import numpy as np

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
CIFAR100_TRAIN = ("train",)
CIFAR100_TEST = ("test",)

# (archive filename, extracted directory name) per dataset name.
CIFAR_LAYOUTS: dict[str, tuple[str, str]] = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python"),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
  try:
    obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # pickle raises many types on corrupt input
    raise ValueError(f"{where}: corrupt CIFAR pickle ({type(e).__name__}: {e})") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: CIFAR batch is a {type(obj).__name__}, expected a dict")
  return obj


def _read_members(path: pathlib.Path) -> dict[str, tuple[bytes, str]]:
  """{basename: (raw bytes, description)} of the batch files in an archive or dir."""
  wanted = set(CIFAR10_TRAIN + CIFAR10_TEST + CIFAR100_TRAIN + CIFAR100_TEST)
  found = {}
  if path.is_dir():
    for name in wanted:
      member = path / name
      if member.is_file():
        found[name] = (member.read_bytes(), str(member))
    return found
  try:
    with tarfile.open(path, "r:*") as tar:
      for info in tar.getmembers():
        base = info.name.rsplit("/", 1)[-1]
        if info.isfile() and base in wanted:
          f = tar.extractfile(info)
          found[base] = (f.read(), f"{path}:{info.name}")
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise ValueError(f"{path}: unreadable or corrupt CIFAR archive ({type(e).__name__}: {e})") from e
  return found


def _batch_arrays(batch: dict, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 N x 32 x 32 x 3, labels int64 N) from one batch dict (CHW-planar rows)."""
  if b"data" not in batch or label_key not in batch:
    raise ValueError(f"{where}: CIFAR batch lacks {b'data'!r} or {label_key!r} (keys {sorted(batch)})")
  data = np.asarray(batch[b"data"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise ValueError(f"{where}: {b'data'!r} is {data.dtype} {data.shape}, expected uint8 N x 3072")
  labels = np.asarray(batch[label_key])
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: {label_key!r} is {labels.dtype} {labels.shape}, expected N integers")
  if labels.shape[0] != data.shape[0]:
    raise ValueError(f"{where}: {labels.shape[0]} labels for {data.shape[0]} images")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int64)


def read_cifar(path: str | os.PathLike) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, int]:
  """Reads a CIFAR-10 or CIFAR-100 python archive / extracted directory.

  Args:
    path: the `.tar.gz` archive, its extracted directory, or a directory holding either
      (named as in `CIFAR_LAYOUTS`).

  Returns:
    ({"train": (images, labels), "test": (images, labels)}, layout, num_classes) with
    images uint8 N x 32 x 32 x 3 (NHWC), labels int64 N, layout "cifar10" or "cifar100"
    (CIFAR-100 uses the 100 `fine_labels`). Train batches are concatenated in order.

  Raises:
    ValueError naming the file: corrupt archive / pickle, missing batches or keys.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f"{path}: no such CIFAR archive or directory")
  if path.is_dir() and not any((path / n).is_file() for n in CIFAR10_TEST + CIFAR100_TEST):
    for archive, extracted in CIFAR_LAYOUTS.values():  # a parent directory was given
      for candidate in (path / extracted, path / archive):
        if candidate.exists():
          return read_cifar(candidate)
  members = _read_members(path)
  if "test_batch" in members:
    layout, train_names, test_names, label_key, num_classes = (
        "cifar10", CIFAR10_TRAIN, CIFAR10_TEST, b"labels", 10)
  elif "test" in members:
    layout, train_names, test_names, label_key, num_classes = (
        "cifar100", CIFAR100_TRAIN, CIFAR100_TEST, b"fine_labels", 100)
  else:
    raise ValueError(f"{path}: no CIFAR 'test_batch' (CIFAR-10) or 'test' (CIFAR-100) file found")
  splits = {}
  for split, names in (("train", train_names), ("test", test_names)):
    parts = []
    for name in names:
      if name not in members:
        raise ValueError(f"{path}: missing CIFAR batch {name!r}")
      raw, where = members[name]
      parts.append(_batch_arrays(_unpickle(raw, where), label_key, where))
    splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return splits, layout, num_classes
