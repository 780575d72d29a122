"""Host-side dataset sources: whole datasets as uint8 NHWC numpy arrays.

`load_arrays(name, data_dir)` is the entry point; it dispatches to the embedded
offline default (`fashion_mnist_mini`), `.npz` files, IDX directories (MNIST /
Fashion-MNIST), CIFAR python archives, or TFDS (array_record, no TensorFlow).

Every user error (bad file, unknown name, unprepared dataset) is a `ValueError`
naming the file or dataset; nothing is ever loaded partially. Arrays in the
returned dataclasses are C-contiguous and read-only (the fingerprint is computed
at load time, so in-place edits would silently invalidate it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

import numpy as np

from jaxprotect.data import cifar as cifar_lib
from jaxprotect.data import idx as idx_lib
from jaxprotect.data import tfds_source
from jaxprotect.data.idx import read_idx, verify_sha256sums  # noqa: F401  (public re-exports)

EMBEDDED_NAME = "fashion_mnist_mini"
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"
# Embedded files: IDX, xz-compressed; ids are IDX int32 (original Fashion-MNIST indices).
EMBEDDED_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.xz",
    ("train", "labels"): "train-labels-idx1-ubyte.xz",
    ("train", "ids"): "train-ids-idx1-int.xz",
    ("test", "images"): "t10k-images-idx3-ubyte.xz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.xz",
    ("test", "ids"): "t10k-ids-idx1-int.xz",
}

IDX_NAMES = frozenset({"mnist", "fashion_mnist"})
CIFAR_NAMES = frozenset(cifar_lib.CIFAR_LAYOUTS)
_KNOWN_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, EMBEDDED_NAME: 10, "kmnist": 10}


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
  """One split held in host memory.

  Attributes:
    images: uint8, N x H x W x C (C=1 for grayscale), C-contiguous, read-only.
    labels: int32, N, values in [0, num_classes).
    ids: int32, N, stable example ids: the index in the source split's original order
      (0..N-1 for whole splits; the original indices for slices such as the embedded set).
  """
  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class HostDataset:
  """A dataset's train and test splits, with a content fingerprint for manifests.

  Attributes:
    name: dataset name as given to `load_arrays` (file stem for .npz).
    train, test: the splits; both have the same H x W x C.
    num_classes: labels are in [0, num_classes).
    fingerprint: `fingerprint(train, test)`, sha256 hex.
  """
  name: str
  train: ArraySplit
  test: ArraySplit
  num_classes: int
  fingerprint: str


def fingerprint(train: ArraySplit, test: ArraySplit) -> str:
  """sha256 hex over train+test images and labels (ids are not included).

  Hashed in order, per split (train then test): the ASCII header
  "<split>:<N>x<H>x<W>x<C>;" then the images' uint8 bytes (C order) then the labels
  as little-endian int32 bytes. The header keeps e.g. 2x28x28 from colliding with 1x56x28.
  """
  digest = hashlib.sha256()
  for split_name, split in (("train", train), ("test", test)):
    digest.update(f"{split_name}:{'x'.join(map(str, split.images.shape))};".encode())
    digest.update(np.ascontiguousarray(split.images, dtype=np.uint8).data)
    digest.update(np.ascontiguousarray(split.labels, dtype="<i4").data)
  return digest.hexdigest()


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
  out = np.array(array, dtype=dtype, order="C", copy=True)
  out.setflags(write=False)
  return out


def make_split(images: np.ndarray, labels: np.ndarray, num_classes: int, where: str,
               ids: np.ndarray | None = None, labels_where: str | None = None) -> ArraySplit:
  """Validates and packs one split.

  Args:
    images: uint8 N x H x W x C, or N x H x W (a channel axis is added).
    labels: integer N (N x 1 accepted).
    num_classes: labels must lie in [0, num_classes).
    where: file or source named in errors about the images / counts.
    ids: int N (default 0..N-1); must be unique and non-negative.
    labels_where: file named in errors about the labels (default `where`).

  Raises:
    ValueError naming `where` / `labels_where`.
  """
  labels_where = labels_where or where
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: images are {images.dtype}, expected uint8")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or min(images.shape[1:], default=0) < 1:
    raise ValueError(f"{where}: images have shape {images.shape}, expected N x H x W [x C]")
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
    raise ValueError(f"{labels_where}: labels are {labels.dtype} {labels.shape}, expected N integers")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"{labels_where}: label/image count mismatch: {labels.shape[0]} labels for "
        f"{images.shape[0]} images ({where})")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"{labels_where}: labels out of range [0, {num_classes}): min {labels.min()}, max {labels.max()}")
  if ids is None:
    ids = np.arange(images.shape[0])
  ids = np.asarray(ids)
  if ids.shape != labels.shape or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{where}: ids are {ids.dtype} {ids.shape}, expected {labels.shape[0]} integers")
  if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max or np.unique(ids).size != ids.size):
    raise ValueError(f"{where}: ids must be unique non-negative int32 values")
  return ArraySplit(images=_frozen(images, np.uint8), labels=_frozen(labels, np.int32), ids=_frozen(ids, np.int32))


def make_dataset(name: str, train: ArraySplit, test: ArraySplit, num_classes: int, where: str) -> HostDataset:
  """Packs validated splits into a `HostDataset` (checks train/test image shapes agree)."""
  if train.images.shape[1:] != test.images.shape[1:]:
    raise ValueError(
        f"{where}: train images are {train.images.shape[1:]} but test images are {test.images.shape[1:]}")
  return HostDataset(name=name, train=train, test=test, num_classes=int(num_classes),
                     fingerprint=fingerprint(train, test))


def load_idx_dir(directory: str | os.PathLike, name: str, num_classes: int | None = None) -> HostDataset:
  """Loads the four standard IDX files (any of plain/.gz/.xz) of `directory`.

  Does not check SHA256SUMS (`load_arrays` does when the file is present; see
  `verify_sha256sums`). `num_classes` defaults to 10 for mnist / fashion_mnist,
  else max label + 1 over both splits. Ids are 0..N-1.

  Raises:
    ValueError naming the file: missing or malformed IDX file, count mismatch,
      labels out of range.
  """
  arrays = idx_lib.read_idx_dir(directory)
  if num_classes is None:
    num_classes = _KNOWN_NUM_CLASSES.get(name)
  if num_classes is None:
    num_classes = 1 + max(int(arrays[(s, "labels")][0].max(initial=0)) for s in ("train", "test"))
  splits = {}
  for split in ("train", "test"):
    images, images_path = arrays[(split, "images")]
    labels, labels_path = arrays[(split, "labels")]
    splits[split] = make_split(images, labels, num_classes, str(images_path), labels_where=str(labels_path))
  return make_dataset(name, splits["train"], splits["test"], num_classes, str(directory))


def load_cifar(path: str | os.PathLike, name: str) -> HostDataset:
  """Loads CIFAR-10/100 from the python-format archive or its extracted directory.

  Images become uint8 N x 32 x 32 x 3 (NHWC: pixel (channel c, row r, col k) of image n
  is at [n, r, k, c]); CIFAR-100 uses the 100 fine labels. Ids are 0..N-1, train in
  data_batch_1..5 order.

  Raises:
    ValueError naming the file: corrupt archive/pickle, missing batch or key, or a
      `name` ("cifar10"/"cifar100") that contradicts the files found.
  """
  splits, layout, num_classes = cifar_lib.read_cifar(path)
  if name in CIFAR_NAMES and name != layout:
    raise ValueError(f"{path}: holds {layout} batches but dataset {name!r} was requested")
  train, test = (make_split(*splits[s], num_classes, f"{path} ({s})") for s in ("train", "test"))
  return make_dataset(name, train, test, num_classes, str(path))


def _to_uint8(x: np.ndarray, where: str) -> np.ndarray:
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
      raise ValueError(f"{where}: float images must lie in [0, 1]")
    return np.round(x * 255.0).astype(np.uint8)
  if np.issubdtype(x.dtype, np.integer) and (not x.size or (x.min() >= 0 and x.max() <= 255)):
    return x.astype(np.uint8)
  raise ValueError(f"{where}: images are {x.dtype}; expected uint8, ints in [0, 255] or floats in [0, 1]")


def load_npz(path: str | os.PathLike, name: str) -> HostDataset:
  """Loads an .npz with x_train, y_train, x_test, y_test (optional: num_classes, ids_train, ids_test).

  Images: NHWC or NHW; uint8 as is, floats in [0, 1] -> round(x * 255), ints in
  [0, 255] cast. Labels: N or N x 1 integers. num_classes defaults to max label + 1.
  Ids default to 0..N-1. Pickled objects are refused.

  Raises:
    ValueError naming the file: unreadable, missing keys, bad dtypes/shapes/ranges.
  """
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      contents = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile.BadZipFile, OSError, ValueError (pickled object arrays), ...
    raise ValueError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from e
  missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in contents]
  if missing:
    raise ValueError(f"{path}: missing keys {missing} (has {sorted(contents)})")
  if "num_classes" in contents:
    num_classes = int(contents["num_classes"])
  else:
    ys = [contents[k] for k in ("y_train", "y_test")]
    if not all(np.issubdtype(y.dtype, np.integer) for y in ys):
      raise ValueError(f"{path}: labels must be integers (got {[y.dtype for y in ys]})")
    num_classes = 1 + max(int(y.max(initial=0)) for y in ys)
  splits = {}
  for split in ("train", "test"):
    where = f"{path} (x_{split})"
    splits[split] = make_split(_to_uint8(contents[f"x_{split}"], where), contents[f"y_{split}"],
                               num_classes, where, ids=contents.get(f"ids_{split}"),
                               labels_where=f"{path} (y_{split})")
  return make_dataset(name, splits["train"], splits["test"], num_classes, str(path))


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> HostDataset:
  """Loads 'train' and 'test' (or 'validation') of a TFDS dataset prepared as array_record.

  Uses `tfds.data_source(..., download=False)`: random access, no TensorFlow needed.
  Images must have a fixed size (uint8 NHWC); ids are 0..N-1 in record order.

  Raises:
    ValueError naming the dataset and data_dir: unknown, unprepared, variable image size.
  """
  splits, num_classes = tfds_source.read_tfds(name, data_dir)
  train, test = (make_split(*splits[s], num_classes, f"TFDS {name!r} ({s})") for s in ("train", "test"))
  return make_dataset(name, train, test, num_classes, f"TFDS {name!r}")


def load_embedded(directory: str | os.PathLike = EMBEDDED_DIR) -> HostDataset:
  """The offline default: a stratified slice of real Fashion-MNIST (10 classes, 28x28x1).

  10,000 train (first 1,000 per class in original order) + 2,000 test (first 200 per
  class); ids are the original Fashion-MNIST indices. SHA256SUMS is verified first.
  """
  directory = pathlib.Path(directory)
  verify_sha256sums(directory)
  arrays = {key: read_idx(directory / filename) for key, filename in EMBEDDED_FILES.items()}
  train, test = (
      make_split(arrays[(s, "images")], arrays[(s, "labels")], 10, str(directory / EMBEDDED_FILES[(s, "images")]),
                 ids=arrays[(s, "ids")], labels_where=str(directory / EMBEDDED_FILES[(s, "labels")]))
      for s in ("train", "test"))
  return make_dataset(EMBEDDED_NAME, train, test, 10, str(directory))


def _is_npz_file(path: pathlib.Path) -> bool:
  try:
    with open(path, "rb") as f:
      return f.read(4) == b"PK\x03\x04"
  except OSError:
    return False


def _candidate_dirs(data_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
  """data_dir itself, then data_dir/<name> and data_dir/<name with '-' for '_'>."""
  return [d for d in dict.fromkeys([data_dir, data_dir / name, data_dir / name.replace("_", "-")]) if d.is_dir()]


def load_arrays(name: str, data_dir: str | os.PathLike | None = None) -> HostDataset:
  """Loads a whole dataset into host memory.

  Dispatch:
    * "fashion_mnist_mini": the embedded offline slice (data_dir ignored).
    * a name ending in ".npz" (relative names are looked up in data_dir first) or a path
      to an .npz file: `load_npz`, named after the file stem.
    * "mnist"/"fashion_mnist" with IDX files in data_dir (or data_dir/<name>,
      data_dir/<name-with-dashes>): `load_idx_dir`, after `verify_sha256sums` when a
      SHA256SUMS file is there.
    * "cifar10"/"cifar100" with the python archive or extracted dir in data_dir: `load_cifar`.
    * anything else: `load_tfds(name, data_dir)`.

  Raises:
    ValueError naming the dataset / data_dir / file for every user error.
  """
  if name == EMBEDDED_NAME:
    return load_embedded()
  base = pathlib.Path(data_dir) if data_dir is not None else None

  if name.endswith(".npz") or (pathlib.Path(name).is_file() and _is_npz_file(pathlib.Path(name))):
    path = pathlib.Path(name).expanduser()
    if base is not None and not path.is_absolute() and (base / path).is_file():
      path = base / path
    if not path.is_file():
      raise ValueError(f"{path}: .npz file not found (dataset {name!r}, data_dir={data_dir!r})")
    return load_npz(path, path.stem)

  if base is not None and name in IDX_NAMES:
    for directory in _candidate_dirs(base, name):
      if idx_lib.has_idx_files(directory):
        if (directory / idx_lib.SHA256SUMS).is_file():
          verify_sha256sums(directory)
        return load_idx_dir(directory, name)

  if base is not None and name in CIFAR_NAMES:
    archive, extracted = cifar_lib.CIFAR_LAYOUTS[name]
    for directory in _candidate_dirs(base, name):
      for candidate in (directory / extracted, directory / archive):
        if candidate.exists():
          return load_cifar(candidate, name)

  return load_tfds(name, data_dir)
