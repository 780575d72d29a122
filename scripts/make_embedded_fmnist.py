"""Builds jaxprotect/data/embedded/: a stratified slice of real Fashion-MNIST.

Usage (from the repository root):
  python scripts/make_embedded_fmnist.py --src ../shared/data/fashion-mnist --out jaxprotect/data/embedded

Selection: the first `--train-per-class` (1,000) examples of each class of the train
split and the first `--test-per-class` (200) of the test split, kept in original order;
the original indices are stored as ids. Output (byte-for-byte deterministic):
  train-images-idx3-ubyte.xz, train-labels-idx1-ubyte.xz, train-ids-idx1-int.xz,
  t10k-images-idx3-ubyte.xz,  t10k-labels-idx1-ubyte.xz,  t10k-ids-idx1-int.xz,
  LICENSE (copied from --src), SHA256SUMS (over all of the above).
IDX files are xz (lzma preset 9): for this slice xz gives ~4.5 MB vs ~5.2 MB for gzip -9
(run with --measure to print both).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from jaxprotect.data import idx as idx_lib  # noqa: E402
from jaxprotect.data import sources  # noqa: E402


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
  """Sorted indices of the first `per_class` examples of every class (int64 K*per_class)."""
  picks = []
  for c in range(num_classes):
    where = np.flatnonzero(labels == c)[:per_class]
    if where.size != per_class:
      raise ValueError(f"class {c} has only {where.size} examples, {per_class} requested")
    picks.append(where)
  return np.sort(np.concatenate(picks))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, type=pathlib.Path, help="dir with the real Fashion-MNIST IDX .gz files")
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--train-per-class", type=int, default=1000)
  parser.add_argument("--test-per-class", type=int, default=200)
  parser.add_argument("--measure", action="store_true", help="also print gzip -9 vs xz -9 sizes")
  args = parser.parse_args(argv)

  idx_lib.verify_sha256sums(args.src)
  full = sources.load_idx_dir(args.src, "fashion_mnist")
  args.out.mkdir(parents=True, exist_ok=True)
  payloads = {}
  for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
    data = getattr(full, split)
    keep = first_per_class(data.labels, per_class)
    payloads[("images", prefix)] = idx_lib.encode_idx(data.images[keep, :, :, 0])  # N x 28 x 28 uint8
    payloads[("labels", prefix)] = idx_lib.encode_idx(data.labels[keep].astype(np.uint8))
    payloads[("ids", prefix)] = idx_lib.encode_idx(data.ids[keep].astype(np.int32))

  if args.measure:
    for compression in ("gz", "xz"):
      total = sum(len(idx_lib.compress(p, compression)) for p in payloads.values())
      print(f"{compression}: {total} bytes")

  names = {"images": "{}-images-idx3-ubyte.xz", "labels": "{}-labels-idx1-ubyte.xz", "ids": "{}-ids-idx1-int.xz"}
  written = []
  for (kind, prefix), payload in payloads.items():
    path = args.out / names[kind].format(prefix)
    path.write_bytes(idx_lib.compress(payload, "xz"))
    written.append(path)
  license_path = args.out / "LICENSE"
  license_path.write_bytes((args.src / "LICENSE").read_bytes())
  written.append(license_path)
  lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(written)]
  (args.out / idx_lib.SHA256SUMS).write_text("\n".join(lines) + "\n")

  check = sources.load_embedded(args.out)
  total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
  print(f"wrote {args.out}: train {len(check.train)}, test {len(check.test)}, {total} bytes, "
        f"fingerprint {check.fingerprint}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
