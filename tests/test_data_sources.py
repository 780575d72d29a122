"""Host-side dataset sources: IDX, SHA256SUMS, CIFAR, npz, TFDS, embedded default."""

import gzip
import io
import pathlib
import pickle
import re
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import load_script
from jaxprotect.data import idx as idx_lib
from jaxprotect.data import sources

REAL_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _match(path) -> str:
  return re.escape(pathlib.Path(path).name)


def _check_split(split: sources.ArraySplit, n: int, hwc: tuple, num_classes: int, ids=None) -> None:
  assert split.images.shape == (n, *hwc) and split.images.dtype == np.uint8
  assert split.images.flags.c_contiguous and not split.images.flags.writeable
  assert split.labels.shape == (n,) and split.labels.dtype == np.int32
  assert split.ids.shape == (n,) and split.ids.dtype == np.int32
  assert split.labels.min() >= 0 and split.labels.max() < num_classes
  np.testing.assert_array_equal(split.ids, np.arange(n) if ids is None else ids)


@pytest.fixture(scope="module")
def real_fmnist(fmnist_dir) -> sources.HostDataset:
  return sources.load_arrays("fashion_mnist", fmnist_dir)


# ---------------------------------------------------------------- real IDX + checksums

def test_real_fashion_mnist_idx(real_fmnist, fmnist_dir):
  ds = real_fmnist
  assert ds.name == "fashion_mnist" and ds.num_classes == 10
  _check_split(ds.train, 60000, (28, 28, 1), 10)
  _check_split(ds.test, 10000, (28, 28, 1), 10)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [1000] * 10)
  assert 0 < ds.train.images.mean() < 255 and ds.train.images.max() == 255
  assert re.fullmatch(r"[0-9a-f]{64}", ds.fingerprint)
  assert ds.fingerprint == sources.fingerprint(ds.train, ds.test)
  sources.verify_sha256sums(fmnist_dir)  # no exception
  # Parent directory + dashed name also found (data/fashion-mnist layout).
  assert sources.load_arrays("fashion_mnist", fmnist_dir.parent).fingerprint == ds.fingerprint


def test_tampered_copy_fails_checksum(fmnist_dir, tmp_path):
  for name in REAL_FILES + ("SHA256SUMS",):
    shutil.copy(fmnist_dir / name, tmp_path / name)
  target = tmp_path / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  target.chmod(0o644)
  target.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=_match(target)):
    sources.verify_sha256sums(tmp_path)
  with pytest.raises(ValueError, match=_match(target)):
    sources.load_arrays("fashion_mnist", tmp_path)
  # A file listed in SHA256SUMS but absent is an error too.
  target.unlink()
  with pytest.raises(ValueError, match=_match(target) + ".*missing"):
    sources.verify_sha256sums(tmp_path)


def test_sha256sums_malformed(tmp_path):
  (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
  with pytest.raises(ValueError, match="SHA256SUMS"):
    sources.verify_sha256sums(tmp_path)


# ---------------------------------------------------------------- synthetic IDX sets

def _write_idx_set(directory, compression="", n_train=12, n_test=5, shape=(6, 7), label_max=10):
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
      "train_labels": (np.arange(n_train) % label_max).astype(np.uint8),
      "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
      "test_labels": (np.arange(n_test) % label_max).astype(np.uint8),
  }
  suffix = {"": "", "gz": ".gz", "xz": ".xz"}[compression]
  paths = {}
  for key, arr in arrays.items():
    paths[key] = idx_lib.write_idx(pathlib.Path(directory) / (STEMS[key] + suffix), arr, compression)
  return arrays, paths


@pytest.mark.parametrize("compression", ["", "gz", "xz"])
def test_idx_set_loads_with_each_compression(tmp_path, compression):
  arrays, _ = _write_idx_set(tmp_path, compression)
  ds = sources.load_arrays("mnist", tmp_path)
  _check_split(ds.train, 12, (6, 7, 1), 10)
  _check_split(ds.test, 5, (6, 7, 1), 10)
  np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train_images"])
  np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])


def test_idx_plain_gzip_xz_identical(real_fmnist, fmnist_dir, tmp_path):
  images = np.ascontiguousarray(real_fmnist.test.images[:300, :, :, 0])
  read = {}
  for compression in ("", "gz", "xz"):
    path = idx_lib.write_idx(tmp_path / f"x-{compression or 'plain'}", images, compression)
    read[compression] = idx_lib.read_idx(path)
  assert (tmp_path / "x-gz").read_bytes()[:2] == b"\x1f\x8b"
  assert (tmp_path / "x-xz").read_bytes()[:6] == b"\xfd7zXZ\x00"
  for arr in read.values():
    assert arr.dtype == np.uint8 and arr.shape == (300, 28, 28)
    np.testing.assert_array_equal(arr, images)
  # The real .gz file and a plain decompressed copy read the same.
  plain = tmp_path / "t10k-labels-idx1-ubyte"
  plain.write_bytes(gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
  np.testing.assert_array_equal(idx_lib.read_idx(plain), idx_lib.read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz"))
  # Same content through different compressions -> same fingerprint.
  fps = set()
  for compression in ("", "gz", "xz"):
    d = tmp_path / f"set-{compression or 'plain'}"
    d.mkdir()
    _write_idx_set(d, compression)
    fps.add(sources.load_idx_dir(d, "mnist").fingerprint)
  assert len(fps) == 1


def test_idx_wrong_magic(tmp_path):
  _, paths = _write_idx_set(tmp_path)
  for key, bad in (("train_images", b"\x01\x02\x08\x03"), ("test_labels", b"\x00\x00\x07\x01")):
    path = paths[key]
    path.write_bytes(bad + path.read_bytes()[4:])
    with pytest.raises(ValueError, match=_match(path) + ".*magic"):
      idx_lib.read_idx(path)
    with pytest.raises(ValueError, match=_match(path)):
      sources.load_arrays("mnist", tmp_path)
    _write_idx_set(tmp_path)


@pytest.mark.parametrize("compression", ["gz", "xz"])
def test_idx_truncated_compressed_stream(tmp_path, compression):
  _, paths = _write_idx_set(tmp_path, compression)
  path = paths["train_images"]
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(ValueError, match=_match(path) + ".*(truncated|corrupt)"):
    sources.load_arrays("fashion_mnist", tmp_path)


@pytest.mark.parametrize("delta", [-10, +3])
def test_idx_payload_size_mismatch(tmp_path, delta):
  _, paths = _write_idx_set(tmp_path)
  path = paths["test_images"]
  raw = path.read_bytes()
  path.write_bytes(raw[:delta] if delta < 0 else raw + b"\x00" * delta)
  with pytest.raises(ValueError, match=_match(path) + ".*payload"):
    sources.load_arrays("mnist", tmp_path)


def test_idx_count_mismatch_and_label_range(tmp_path):
  _, paths = _write_idx_set(tmp_path)
  idx_lib.write_idx(paths["train_labels"], np.zeros(11, np.uint8))  # 11 labels, 12 images
  with pytest.raises(ValueError, match=_match(paths["train_labels"]) + ".*mismatch"):
    sources.load_arrays("mnist", tmp_path)
  _, paths = _write_idx_set(tmp_path)
  idx_lib.write_idx(paths["test_labels"], np.array([0, 1, 10, 2, 3], np.uint8))
  with pytest.raises(ValueError, match=_match(paths["test_labels"]) + ".*out of range"):
    sources.load_arrays("fashion_mnist", tmp_path)


def test_idx_missing_file_is_not_a_partial_load(tmp_path):
  _, paths = _write_idx_set(tmp_path, "gz")
  paths["test_labels"].unlink()
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
    sources.load_arrays("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR

def _cifar_batch(n, offset, label_key, num_classes, rng):
  data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  labels = [int((offset + i) * 37 % num_classes) for i in range(n)]
  return {b"batch_label": b"x", label_key: labels, b"data": data, b"filenames": [b"f"] * n}


def _write_cifar(root: pathlib.Path, variant: str, archive: bool):
  """Writes a tiny fake CIFAR python archive/dir; returns (path, {file: batch dict})."""
  rng = np.random.default_rng(1)
  if variant == "cifar10":
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    dirname, label_key, k = "cifar-10-batches-py", b"labels", 10
    sizes = [2, 3, 1, 2, 2, 4]
  else:
    names = ["train", "test"]
    dirname, label_key, k = "cifar-100-python", b"fine_labels", 100
    sizes = [7, 3]
  batches, offset = {}, 0
  for name, n in zip(names, sizes):
    batches[name] = _cifar_batch(n, offset, label_key, k, rng)
    if variant == "cifar100":
      batches[name][b"coarse_labels"] = [0] * n
    offset += n
  blobs = {name: pickle.dumps(b, protocol=2) for name, b in batches.items()}
  blobs["batches.meta" if variant == "cifar10" else "meta"] = pickle.dumps({b"label_names": []}, protocol=2)
  if archive:
    path = root / ("cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
      for name, blob in blobs.items():
        info = tarfile.TarInfo(f"{dirname}/{name}")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
  else:
    path = root / dirname
    path.mkdir()
    for name, blob in blobs.items():
      (path / name).write_bytes(blob)
  return path, batches


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_nhwc_conversion(tmp_path, archive):
  path, batches = _write_cifar(tmp_path, "cifar10", archive)
  # Plant a known pixel: image 1 of data_batch_2 (global index 3), channel 2, row 5, col 17.
  n, c, r, k = 3, 2, 5, 17
  if archive:
    ds = sources.load_arrays("cifar10", tmp_path)
  else:
    batch = batches["data_batch_2"]
    batch[b"data"][:] = 0
    batch[b"data"][1, c * 1024 + r * 32 + k] = 255
    (path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    ds = sources.load_arrays("cifar10", tmp_path)
    assert np.argwhere(ds.train.images[2:5] == 255).tolist() == [[n - 2, r, k, c]]
  assert ds.num_classes == 10
  _check_split(ds.train, 10, (32, 32, 3), 10)
  _check_split(ds.test, 4, (32, 32, 3), 10)
  train_data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
  for (i, ch, row, col) in [(0, 0, 0, 0), (3, 2, 5, 17), (9, 1, 31, 30), (7, 2, 31, 31)]:
    assert ds.train.images[i, row, col, ch] == train_data[i, ch * 1024 + row * 32 + col]
  np.testing.assert_array_equal(ds.train.images, train_data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(
      ds.train.labels, sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), []))
  np.testing.assert_array_equal(ds.test.labels, batches["test_batch"][b"labels"])
  direct = sources.load_cifar(path, "cifar10")
  assert direct.fingerprint == ds.fingerprint


@pytest.mark.parametrize("archive", [True, False])
def test_cifar100_fine_labels(tmp_path, archive):
  path, batches = _write_cifar(tmp_path, "cifar100", archive)
  ds = sources.load_arrays("cifar100", tmp_path)
  assert ds.num_classes == 100
  _check_split(ds.train, 7, (32, 32, 3), 100)
  _check_split(ds.test, 3, (32, 32, 3), 100)
  np.testing.assert_array_equal(ds.train.labels, batches["train"][b"fine_labels"])
  assert ds.train.labels.max() > 20  # fine (not coarse) labels
  with pytest.raises(ValueError, match="cifar10"):
    sources.load_cifar(path, "cifar10")


def test_cifar_corrupt_inputs(tmp_path):
  (tmp_path / "a").mkdir()
  path, _ = _write_cifar(tmp_path / "a", "cifar10", archive=True)
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  with pytest.raises(ValueError, match=_match(path)):
    sources.load_arrays("cifar10", tmp_path / "a")
  path.write_bytes(b"this is not an archive at all" * 10)
  with pytest.raises(ValueError, match=_match(path)):
    sources.load_cifar(path, "cifar10")
  (tmp_path / "b").mkdir()
  path, _ = _write_cifar(tmp_path / "b", "cifar10", archive=False)
  (path / "data_batch_3").write_bytes(b"\x80\x02garbage")
  with pytest.raises(ValueError, match="data_batch_3"):
    sources.load_arrays("cifar10", tmp_path / "b")
  (path / "data_batch_3").write_bytes(pickle.dumps({b"data": print, b"labels": []}))  # code, not data
  with pytest.raises(ValueError, match="data_batch_3.*not allowed"):
    sources.load_cifar(path, "cifar10")
  (path / "data_batch_3").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
  with pytest.raises(ValueError, match="data_batch_3"):
    sources.load_cifar(path, "cifar10")
  (path / "data_batch_3").unlink()
  with pytest.raises(ValueError, match="data_batch_3"):
    sources.load_cifar(path, "cifar10")


# ---------------------------------------------------------------- npz

def test_npz_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  x_train = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
  x_test = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  y_train, y_test = rng.integers(0, 5, 9), rng.integers(0, 5, 4)
  np.savez(tmp_path / "toy.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  ds = sources.load_arrays(str(tmp_path / "toy.npz"))
  assert ds.name == "toy" and ds.num_classes == int(max(y_train.max(), y_test.max())) + 1
  _check_split(ds.train, 9, (8, 8, 3), ds.num_classes)
  np.testing.assert_array_equal(ds.train.images, x_train)
  np.testing.assert_array_equal(ds.test.labels, y_test)
  # Relative name resolved against data_dir; same content, same fingerprint.
  assert sources.load_arrays("toy.npz", tmp_path).fingerprint == ds.fingerprint
  # Explicit num_classes and ids are honoured.
  np.savez(tmp_path / "ids.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
           num_classes=7, ids_train=np.arange(9) * 3, ids_test=np.arange(4) + 100)
  ds = sources.load_npz(tmp_path / "ids.npz", "ids")
  assert ds.num_classes == 7
  np.testing.assert_array_equal(ds.train.ids, np.arange(9) * 3)


def test_npz_float_and_nhw(tmp_path):
  x = np.linspace(0.0, 1.0, 6 * 5 * 5, dtype=np.float32).reshape(6, 5, 5)
  np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.array([[0], [1]]))
  ds = sources.load_npz(tmp_path / "f.npz", "f")
  _check_split(ds.train, 6, (5, 5, 1), 2)
  np.testing.assert_array_equal(ds.train.images[..., 0], np.round(x * 255).astype(np.uint8))
  assert ds.train.images.max() == 255 and ds.train.images.min() == 0
  np.testing.assert_array_equal(ds.test.labels, [0, 1])


def test_npz_errors(tmp_path):
  x = np.zeros((2, 4, 4), np.uint8)
  np.savez(tmp_path / "missing.npz", x_train=x, y_train=np.zeros(2, int), x_test=x)
  with pytest.raises(ValueError, match="missing.npz.*y_test"):
    sources.load_arrays(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "range.npz", x_train=x + 2.0, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(2, int))
  with pytest.raises(ValueError, match="range.npz"):
    sources.load_arrays(str(tmp_path / "range.npz"))
  np.savez(tmp_path / "count.npz", x_train=x, y_train=np.zeros(3, int), x_test=x, y_test=np.zeros(2, int))
  with pytest.raises(ValueError, match="count.npz.*mismatch"):
    sources.load_arrays(str(tmp_path / "count.npz"))
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="junk.npz"):
    sources.load_arrays(str(tmp_path / "junk.npz"))
  with pytest.raises(ValueError, match="nothere.npz"):
    sources.load_arrays("nothere.npz", tmp_path)


# ---------------------------------------------------------------- TFDS

@pytest.mark.parametrize("policy", [tfds.testing.MockPolicy.AUTO, tfds.testing.MockPolicy.USE_CODE])
@pytest.mark.parametrize("name,hwc,k", [("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
                                        ("cifar10", (32, 32, 3), 10)])
def test_tfds_mock_data(name, hwc, k, policy):
  with tfds.testing.mock_data(num_examples=13, policy=policy):
    ds = sources.load_arrays(name)
  assert ds.name == name and ds.num_classes == k
  _check_split(ds.train, 13, hwc, k)
  _check_split(ds.test, 13, hwc, k)


def test_tfds_user_errors(tmp_path):
  with pytest.raises(ValueError, match="no_such_dataset_xyz.*Accepted inputs"):
    sources.load_arrays("no_such_dataset_xyz", tmp_path)
  # Known to TFDS but not prepared here (no IDX files either): names dataset and data_dir.
  with pytest.raises(ValueError, match=f"'mnist' is not prepared.*{re.escape(str(tmp_path))}.*IDX"):
    sources.load_arrays("mnist", tmp_path)
  with pytest.raises(ValueError, match="imagenette.*variable image size.*resized"):
    sources.load_tfds("imagenette", tmp_path)


def _png(img: np.ndarray) -> bytes:
  import PIL.Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  PIL.Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


class JaxprotectTinyTest(tfds.core.GeneratorBasedBuilder):
  """A 4x5x3 dataset prepared as array_record without TensorFlow (PNG bytes in)."""
  VERSION = tfds.core.Version("1.0.0")
  EVAL_SPLIT = "test"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 5, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(7, 0), self.EVAL_SPLIT: self._generate_examples(4, 100)}

  def _generate_examples(self, n, offset):
    for i in range(n):
      img = np.full((4, 5, 3), offset + i, np.uint8)
      img[0, 0, 2] = 200
      yield i, {"image": _png(img), "label": (offset + i) % 3}


class JaxprotectTinyValTest(JaxprotectTinyTest):
  EVAL_SPLIT = "validation"


@pytest.mark.parametrize("builder_cls", [JaxprotectTinyTest, JaxprotectTinyValTest])
def test_tfds_real_array_record(tmp_path, builder_cls):
  builder_cls(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  ds = sources.load_arrays(builder_cls.name, tmp_path)
  assert ds.num_classes == 3
  _check_split(ds.train, 7, (4, 5, 3), 3)
  _check_split(ds.test, 4, (4, 5, 3), 3)
  for split, offset in ((ds.train, 0), (ds.test, 100)):
    values = split.images[:, 1, 1, 0].astype(int)
    assert sorted(values) == list(range(offset, offset + len(split)))
    np.testing.assert_array_equal(split.labels, values % 3)  # pairs survive TFDS's shuffling
    assert (split.images[:, 0, 0, 2] == 200).all()


# ---------------------------------------------------------------- embedded default

def test_embedded_default(real_fmnist):
  ds = sources.load_arrays("fashion_mnist_mini", data_dir="/ignored")
  assert ds.name == "fashion_mnist_mini" and ds.num_classes == 10
  for split, full, per_class in ((ds.train, real_fmnist.train, 1000), (ds.test, real_fmnist.test, 200)):
    n = 10 * per_class
    assert split.images.shape == (n, 28, 28, 1) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), [per_class] * 10)
    assert np.unique(split.ids).size == n and (np.diff(split.ids) > 0).all()
    expected = np.sort(np.concatenate([np.flatnonzero(full.labels == c)[:per_class] for c in range(10)]))
    np.testing.assert_array_equal(split.ids, expected)
    np.testing.assert_array_equal(split.images, full.images[split.ids])
    np.testing.assert_array_equal(split.labels, full.labels[split.ids])
  total = sum(p.stat().st_size for p in sources.EMBEDDED_DIR.iterdir() if p.is_file())
  assert total <= 5.5e6
  listed = idx_lib.parse_sha256sums(sources.EMBEDDED_DIR / "SHA256SUMS")
  assert set(listed) == set(sources.EMBEDDED_FILES.values()) | {"LICENSE"}
  assert "Zalando" in (sources.EMBEDDED_DIR / "LICENSE").read_text()


def test_embedded_checksum_enforced(tmp_path):
  shutil.copytree(sources.EMBEDDED_DIR, tmp_path / "e")
  target = tmp_path / "e" / "t10k-labels-idx1-ubyte.xz"
  target.write_bytes(target.read_bytes()[:-1] + b"\x00")
  with pytest.raises(ValueError, match=_match(target) + ".*sha256"):
    sources.load_embedded(tmp_path / "e")


@pytest.mark.slow
def test_embedded_script_is_deterministic(fmnist_dir, tmp_path):
  module = load_script("scripts/make_embedded_fmnist.py")
  assert module.main(["--src", str(fmnist_dir), "--out", str(tmp_path)]) == 0
  committed = sorted(p.name for p in sources.EMBEDDED_DIR.iterdir() if p.is_file())
  assert sorted(p.name for p in tmp_path.iterdir()) == committed
  for name in committed:
    assert (tmp_path / name).read_bytes() == (sources.EMBEDDED_DIR / name).read_bytes(), name
