"""IDX files (the MNIST / Fashion-MNIST format) and SHA256SUMS checking.

Leaf module: it returns plain numpy arrays and knows nothing about `HostDataset`
(`jaxprotect.data.sources.load_idx_dir` assembles those). Every user-facing
error is a `ValueError` whose message names the offending file.

IDX layout (big-endian): two zero bytes, one dtype code byte, one byte `ndim`,
then `ndim` uint32 dimension sizes, then the C-order payload.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import pathlib
import re
import zlib

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}

# Stems of the four standard files, keyed by (split, kind). Compression suffixes are
# tried in this order; the format is decided by magic bytes, never by the suffix.
IDX_STEMS: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
IDX_SUFFIXES: tuple[str, ...] = (".gz", ".xz", "")

SHA256SUMS = "SHA256SUMS"
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def _decompress(raw: bytes, path: pathlib.Path) -> bytes:
  """Returns `raw` gunzipped / un-xz'd according to its magic bytes (else as is)."""
  try:
    if raw[:2] == GZIP_MAGIC:
      return gzip.decompress(raw)
    if raw[:6] == XZ_MAGIC:
      return lzma.decompress(raw, format=lzma.FORMAT_XZ)
  except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
    raise ValueError(f"{path}: truncated or corrupt compressed stream ({type(e).__name__}: {e})") from e
  return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file, plain, gzip (magic 1f 8b) or xz (magic fd 37 7a 58 5a 00).

  Args:
    path: the file.

  Returns:
    A freshly allocated, C-contiguous array in native byte order with the file's
    dimensions, e.g. uint8 N x 28 x 28 for `train-images-idx3-ubyte`.

  Raises:
    ValueError (naming the file): unreadable file, corrupt/truncated compression,
      bad magic number, unknown dtype code, or a payload whose size is not the
      product of the dimensions.
  """
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise ValueError(f"{path}: cannot read IDX file ({e})") from e
  data = _decompress(raw, path)
  if len(data) < 4:
    raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
  zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
  if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
    raise ValueError(
        f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000 then a dtype code in "
        f"{sorted(hex(c) for c in _IDX_DTYPES)} then ndim)")
  if ndim == 0:
    raise ValueError(f"{path}: bad IDX magic number {data[:4].hex()} (ndim is 0)")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path}: truncated IDX header (ndim={ndim}, {len(data)} bytes)")
  dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(
        f"{path}: IDX payload is {len(data) - header} bytes but dims {dims} of {dtype.name} "
        f"need {expected} (truncated or corrupt file)")
  arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
  return arr.astype(dtype.newbyteorder("="), order="C", copy=True)


def encode_idx(array: np.ndarray) -> bytes:
  """Serialises `array` (uint8/int8/int16/int32/float32/float64, ndim >= 1) as IDX bytes."""
  array = np.asarray(array)
  native = array.dtype.newbyteorder("=")
  if native not in _IDX_CODES or array.ndim < 1 or array.ndim > 255:
    raise ValueError(f"cannot encode dtype {array.dtype} / ndim {array.ndim} as IDX")
  code = _IDX_CODES[native]
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
  return header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()


def compress(data: bytes, compression: str) -> bytes:
  """Deterministic compression: "" (none), "gz" (level 9, mtime 0, no name) or "xz" (preset 9)."""
  if compression == "":
    return data
  if compression == "gz":
    return gzip.compress(data, compresslevel=9, mtime=0)  # no filename field is written
  if compression == "xz":
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)
  raise ValueError(f"unknown compression {compression!r} (expected '', 'gz' or 'xz')")


def write_idx(path: str | os.PathLike, array: np.ndarray, compression: str = "") -> pathlib.Path:
  """Writes `array` as an IDX file, optionally compressed ("gz"/"xz"); returns the path."""
  path = pathlib.Path(path)
  path.write_bytes(compress(encode_idx(array), compression))
  return path


def find_idx_file(directory: str | os.PathLike, stem: str) -> pathlib.Path | None:
  """The first of `stem.gz`, `stem.xz`, `stem` that exists in `directory`, else None."""
  directory = pathlib.Path(directory)
  for suffix in IDX_SUFFIXES:
    candidate = directory / (stem + suffix)
    if candidate.is_file():
      return candidate
  return None


def has_idx_files(directory: str | os.PathLike) -> bool:
  """True when `directory` holds at least one of the four standard IDX files."""
  return pathlib.Path(directory).is_dir() and any(
      find_idx_file(directory, stem) is not None for stem in IDX_STEMS.values())


def read_idx_dir(directory: str | os.PathLike) -> dict[tuple[str, str], tuple[np.ndarray, pathlib.Path]]:
  """Reads the four standard IDX files of `directory`.

  Returns:
    {(split, kind): (array, path)} for split in {"train", "test"} and kind in
    {"images", "labels"}; arrays as stored (images N x H x W, labels N).

  Raises:
    ValueError naming the first missing file (no partial load).
  """
  directory = pathlib.Path(directory)
  paths = {}
  for key, stem in IDX_STEMS.items():
    path = find_idx_file(directory, stem)
    if path is None:
      raise ValueError(
          f"{directory / stem}: missing IDX file (looked for {stem}{{{','.join(IDX_SUFFIXES)}}} "
          f"in {directory})")
    paths[key] = path
  return {key: (read_idx(path), path) for key, path in paths.items()}


def sha256_file(path: pathlib.Path) -> str:
  """SHA-256 hex digest of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def parse_sha256sums(sums_path: str | os.PathLike) -> dict[str, str]:
  """Parses `<64 hex>  <filename>` lines (`*` binary marker allowed) -> {filename: hex}."""
  sums_path = pathlib.Path(sums_path)
  entries = {}
  for lineno, line in enumerate(sums_path.read_text().splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    match = _SUMS_LINE.match(line)
    if match is None:
      raise ValueError(f"{sums_path}:{lineno}: malformed line {line!r} (expected '<sha256>  <filename>')")
    entries[match.group(2)] = match.group(1).lower()
  if not entries:
    raise ValueError(f"{sums_path}: no checksum entries")
  return entries


def verify_sha256sums(directory: str | os.PathLike) -> None:
  """Checks every file listed in `directory/SHA256SUMS` against its sha256.

  Raises:
    ValueError naming the file: SHA256SUMS missing or malformed, a listed file
      missing, or a checksum mismatch.
  """
  directory = pathlib.Path(directory)
  sums_path = directory / SHA256SUMS
  if not sums_path.is_file():
    raise ValueError(f"{sums_path}: no SHA256SUMS file")
  for filename, expected in parse_sha256sums(sums_path).items():
    path = directory / filename
    if not path.is_file():
      raise ValueError(f"{path}: listed in {sums_path} but missing")
    actual = sha256_file(path)
    if actual != expected:
      raise ValueError(f"{path}: sha256 mismatch (expected {expected}, got {actual}; see {sums_path})")
