"""TFDS datasets read through `tfds.data_source` (array_record random access, no TensorFlow).

Leaf module: returns plain numpy arrays (`jaxprotect.data.sources.load_tfds` assembles
the `HostDataset`). `tensorflow_datasets` (the `tfds` extra) is imported lazily, on first use;
without it, `read_tfds` raises `jaxprotect.platform.MissingExtraError` naming the extra.

Notes on `tfds.testing.mock_data` (checked against tensorflow-datasets 4.9.10, with
TensorFlow absent):
  * `tfds.data_source` works under `mock_data` without TensorFlow, with both
    `MockPolicy.AUTO` and `MockPolicy.USE_CODE`: the array_record reader is patched and
    examples come from TFDS's random generator (numpy arrays: 'image' uint8 HxWxC,
    'label' int64 scalar).
  * The split names are NOT known under the mock (`builder.info.splits` is empty, and
    `tfds.data_source(name)` with `split=None` returns an empty dict), so splits must be
    requested by name; any name is accepted. We therefore ask for 'test' whenever the
    split table is empty, and 'validation' only when the table lists it but not 'test'.
  * `builder.is_prepared()` is False under the mock, so readiness is decided by trying
    to open the data source, not by `is_prepared()`.
  * The mocked source's `__getitems__` is broken (the mock stores an unbound
    `functools.partial`, so calling it raises TypeError); we fall back to `__getitem__`
    per record when the batched call raises TypeError.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxprotect import platform

_CHUNK = 4096


def _read_all(source: Any, num: int, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads every record of a TFDS data source -> (images uint8 N x H x W x C, labels int64 N)."""
  batched = True
  images, labels = [], []
  for start in range(0, num, _CHUNK):
    keys = list(range(start, min(start + _CHUNK, num)))
    records = None
    if batched:
      try:
        records = source.__getitems__(keys)
      except TypeError:  # tfds.testing.mock_data's __getitems__ (see module docstring)
        batched = False
    if records is None:
      records = [source[k] for k in keys]
    for record in records:
      images.append(np.asarray(record["image"]))
      labels.append(np.asarray(record["label"]))
  if not images:
    raise ValueError(f"{where}: split is empty")
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(f"{where}: images have varying shapes {sorted(shapes)[:4]}...; resize them first")
  out_images = np.stack(images)
  if out_images.dtype != np.uint8:
    raise ValueError(f"{where}: images are {out_images.dtype}, expected uint8")
  if out_images.ndim == 3:
    out_images = out_images[..., None]
  return out_images, np.stack(labels).astype(np.int64).reshape(-1)


def _accepted_files_hint(name: str, data_dir: str | None) -> str:
  return (
      "Accepted inputs: 'fashion_mnist_mini' (embedded, offline); a .npz file with "
      "x_train/y_train/x_test/y_test; 'mnist'/'fashion_mnist' with IDX files "
      "(train-images-idx3-ubyte[.gz|.xz], train-labels-idx1-ubyte..., t10k-...) in data_dir; "
      "'cifar10'/'cifar100' with cifar-10-python.tar.gz / cifar-10-batches-py (or "
      "cifar-100-python.tar.gz / cifar-100-python) in data_dir; or a TFDS dataset already "
      f"prepared in array_record format under data_dir (got data_dir={data_dir!r}), e.g. "
      f"prepared elsewhere with `tfds build {name} --file_format=array_record`.")


def read_tfds(name: str, data_dir: str | os.PathLike | None = None
              ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
  """Reads the 'train' and 'test' (else 'validation') splits of a prepared TFDS dataset.

  Args:
    name: TFDS name, optionally with config/version ("mnist", "imagenette/320px-v2").
    data_dir: TFDS data directory (None: TFDS default, ~/tensorflow_datasets).

  Returns:
    ({"train": (images, labels), "test": (images, labels)}, num_classes), images uint8
    N x H x W x C in the source's record order, labels int64 N.

  Raises:
    ValueError naming the dataset and data_dir: unknown name, not prepared (or prepared
      in a format without random access), variable image size, no 'image'/'label'
      (ClassLabel) features, or neither a 'test' nor a 'validation' split.
    jaxprotect.platform.MissingExtraError (a ModuleNotFoundError) when tensorflow-datasets
      (the `tfds` extra) is not installed.
  """
  data_dir = None if data_dir is None else os.fspath(data_dir)
  hint = _accepted_files_hint(name, data_dir)
  tfds = platform.require("tensorflow_datasets", "tfds", f"reading dataset {name!r} through TFDS", hint)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"unknown dataset {name!r} (TFDS: {first_line}). {hint}") from None
  except Exception as e:  # bad config/version strings, unreadable data_dir, ...
    raise ValueError(
        f"cannot open TFDS dataset {name!r} in data_dir={data_dir!r} ({type(e).__name__}: {e}). {hint}") from e

  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' and 'label' features (has {sorted(features.keys())})")
  image_shape = tuple(features["image"].shape)
  if any(d is None for d in image_shape):
    raise ValueError(
        f"TFDS dataset {name!r} has variable image size {image_shape}; it must be resized to a "
        "fixed size first (not supported by this loader yet)")
  if not isinstance(features["label"], tfds.features.ClassLabel):
    raise ValueError(f"TFDS dataset {name!r}: 'label' is {type(features['label']).__name__}, expected ClassLabel")
  num_classes = int(features["label"].num_classes)

  known = set(builder.info.splits.keys())
  if not known or "test" in known:
    test_split = "test"
  elif "validation" in known:
    test_split = "validation"
  else:
    raise ValueError(f"TFDS dataset {name!r} has neither a 'test' nor a 'validation' split (has {sorted(known)})")
  if known and "train" not in known:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split (has {sorted(known)})")

  split_names = {"train": "train", "test": test_split}
  try:
    sources = tfds.data_source(name, split=split_names, data_dir=data_dir, download=False)
  except Exception as e:  # not prepared / prepared as tfrecord / missing files
    # Only consulted on failure: under tfds.testing.mock_data is_prepared() is False.
    try:
      prepared = builder.is_prepared()
    except Exception:  # pylint: disable=broad-except
      prepared = False
    if prepared:
      why = ("is prepared but cannot be opened for random access (it must be prepared with "
             "file_format=array_record)")
    else:
      why = f"is not prepared (nothing at {builder.data_dir})"
    detail = str(e).splitlines()[0] if str(e) else ""
    raise ValueError(
        f"TFDS dataset {name!r} {why} in data_dir={data_dir!r} ({type(e).__name__}: {detail}). {hint}") from e

  out = {}
  for split, source in sources.items():
    where = f"TFDS {name!r} split {split_names[split]!r}"
    try:
      out[split] = _read_all(source, len(source), where)
    except ValueError:
      raise
    except Exception as e:  # missing/corrupt array_record shards
      raise ValueError(f"{where} in data_dir={data_dir!r}: read failed ({type(e).__name__}: {e})") from e
  return out, num_classes
