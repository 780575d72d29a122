"""Poisons on disk: perturbations + manifest, checked loading, exports and a preview.

A poison directory holds::

  manifest.json  format version, method, mode, eps, seed (craft.method, craft.mode,
                 craft.eps, surrogate.seed), the crafting config (its data, surrogate
                 and craft sections), the source dataset (name, sizes, fingerprint),
                 jaxprotect version and the SHA-256 of every file below
  delta.npy      float32 perturbations in pixel units: N x H x W x C (sample-wise, row i
                 belongs to example ids[i]) or K x H x W x C (class-wise, row k to class k)
  ids.npy        int32 example ids of the rows (sample-wise)
  preview.png    clean / perturbation (amplified) / poisoned, one column per class

The directory is written under a temporary name and renamed into place, so a reader
never sees a partial poison. ``load_poison`` refuses a directory whose files do not match
their hashes or a dataset whose fingerprint or ids differ from the one crafted on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from jaxprotect import data, parallel
from jaxprotect.data.idx import sha256_file

__all__ = [
    "FORMAT", "MANIFEST", "Poison", "QUANTIZE", "apply", "budget", "check_matches", "export_npz", "export_png",
    "load_poison", "poisoned_images", "quantized_images", "resolve", "save_poison", "save_preview",
]

FORMAT = "jaxprotect-poison-1"
MANIFEST = "manifest.json"


def _code_version() -> str:
  import jaxprotect

  return jaxprotect.__version__


@dataclasses.dataclass(frozen=True)
class Poison:
  """A loaded poison: ``delta`` (host float32), ``mode``, ``ids`` (sample-wise), the
  manifest and the directory it was read from (named in errors)."""

  delta: np.ndarray
  mode: str
  ids: np.ndarray | None
  manifest: dict[str, Any]
  path: pathlib.Path | None = None

  @property
  def digest(self) -> str:
    return self.manifest["files"]["delta.npy"]


def _replace_dir(tmp: pathlib.Path, final: pathlib.Path) -> None:
  """Moves ``tmp`` to ``final``, replacing an older directory there."""
  old = None
  if final.exists():
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
  os.replace(tmp, final)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def save_poison(directory: os.PathLike | str, delta: np.ndarray, mode: str, ds: data.DeviceDataset, *,
                config: Any = None, stats: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes ``delta`` (mode ``"sample"`` or ``"class"``) for dataset ``ds`` atomically;
  returns the manifest. ``config``: the crafting config (an ``unlearnable_config()`` or
  its ``data``, ``surrogate`` and ``craft`` sections), recorded whole; the manifest's
  ``method`` and ``eps`` come from its ``craft`` section, ``seed`` from ``surrogate``."""
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
  try:
    np.save(tmp / "delta.npy", np.asarray(delta, np.float32))
    files = ["delta.npy"]
    if mode == "sample":
      np.save(tmp / "ids.npy", np.asarray(data.host_value(ds.train.ids), np.int32))
      files.append("ids.npy")
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    craft, surrogate = cfg.get("craft") or {}, cfg.get("surrogate") or {}
    manifest = {
        "format": FORMAT,
        "method": craft.get("method"),
        "mode": mode,
        "eps": craft.get("eps"),
        "seed": surrogate.get("seed", craft.get("seed")),  # a baseline records its seed in its craft section
        "config": cfg,
        "dataset": data.describe(ds),
        "jaxprotect_version": _code_version(),
        "stats": stats or {},
        "files": {f: sha256_file(tmp / f) for f in files},
    }
    with open(tmp / MANIFEST, "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True, default=str)
    _replace_dir(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def budget(eps: float | None, norm: str | None = None) -> str:
  """A poison's budget in words: ``"eps 8.0/255"`` (L_inf, the crafted poisons'),
  ``"L2 eps 1"`` or ``"one pixel"`` (L0, OPS)."""
  if norm == "l0":
    return "one pixel"
  if eps is None:
    return "eps unknown"
  if norm == "l2":
    return f"L2 eps {eps:.3g}"
  return f"eps {255 * eps:.1f}/255"


def resolve(directory: os.PathLike | str) -> pathlib.Path:
  """A poison directory, given it or the crafting workdir that holds ``poison/``."""
  p = pathlib.Path(directory)
  if not (p / MANIFEST).exists() and (p / "poison" / MANIFEST).exists():
    p = p / "poison"
  return p


def load_poison(directory: os.PathLike | str, ds: data.DeviceDataset | None = None) -> Poison:
  """Loads and checks a poison; with ``ds``, also checks it was crafted on that dataset."""
  p = resolve(directory)
  if not (p / MANIFEST).exists():
    raise ValueError(f"{directory}: no poison here ({MANIFEST} missing); run `jaxprotect poison` first")
  try:
    manifest = json.loads((p / MANIFEST).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{p / MANIFEST}: not valid JSON ({e})") from e
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{p / MANIFEST}: unknown poison format {manifest.get('format')!r}, expected {FORMAT!r}")
  for name, want in manifest["files"].items():
    if not (p / name).exists():
      raise ValueError(f"{p / name}: missing (listed in the manifest)")
    if sha256_file(p / name) != want:
      raise ValueError(f"{p / name}: SHA-256 does not match the manifest; the poison was modified or truncated")
  delta = np.load(p / "delta.npy")
  mode = manifest["mode"]
  ids = np.load(p / "ids.npy") if mode == "sample" else None
  poison = Poison(delta=delta, mode=mode, ids=ids, manifest=manifest, path=p)
  if ds is not None:
    check_matches(poison, ds)
  return poison


def check_matches(poison: Poison, ds: data.DeviceDataset) -> None:
  """Raises ValueError unless ``poison`` was crafted on ``ds`` (fingerprint, shapes, ids)."""
  where = poison.path or "poison"
  src = poison.manifest["dataset"]
  if src["fingerprint"] != ds.fingerprint:
    raise ValueError(
        f"{where}: crafted on {src['name']!r} ({src['train_size']} train, fingerprint {src['fingerprint'][:12]}...), "
        f"but the dataset given is {ds.name!r} ({ds.train.size} train, fingerprint {ds.fingerprint[:12]}...); "
        "use the data.name, data.dir and data.train_subset the poison was crafted with")
  if tuple(poison.delta.shape[1:]) != tuple(ds.train.image_shape):
    raise ValueError(f"{where}: perturbation shape {poison.delta.shape[1:]} != image shape {ds.train.image_shape}")
  if poison.mode == "sample" and not np.array_equal(poison.ids, data.host_value(ds.train.ids)):
    raise ValueError(f"{where}: example ids differ from the dataset's")
  if poison.mode == "class" and poison.delta.shape[0] != ds.num_classes:
    raise ValueError(f"{where}: {poison.delta.shape[0]} class perturbations for {ds.num_classes} classes")


QUANTIZE = ("", "round", "floor")


def quantized_images(images_u8: np.ndarray, delta: np.ndarray, quantize: str, chunk: int = 4096) -> np.ndarray:
  """The uint8 images ``images_u8`` + ``delta`` (pixel units, one row per image) as stored
  for a victim, computed in float32 on the host:

  * ``"round"``: ``round(255 * clip(u / 255 + delta, 0, 1))``, the nearest grey level;
  * ``"floor"``: ``clip(u + 255 * delta, 0, 255)`` truncated to uint8, what the reference
    implementations do (``np.clip(data.astype(np.float32) + delta * 255, 0, 255).astype(np.uint8)``;
    Unlearnable-Examples' dataset.py, mi-ue's datasets/cifar.py): up to one grey level
    below the nearest.
  """
  if quantize not in ("round", "floor"):
    raise ValueError(f"quantize: expected 'round' or 'floor', got {quantize!r}")
  images_u8 = np.asarray(images_u8)
  if images_u8.dtype != np.uint8 or np.shape(delta) != images_u8.shape:
    raise ValueError(f"images_u8, delta: expected uint8 images and a perturbation of their shape, got "
                     f"{images_u8.dtype} {images_u8.shape} and {np.shape(delta)}")
  out = np.empty_like(images_u8)
  for start in range(0, len(images_u8), chunk):
    u = images_u8[start:start + chunk].astype(np.float32)
    d = np.asarray(delta[start:start + chunk], np.float32)
    if quantize == "round":
      x = np.clip(u / np.float32(255) + d, np.float32(0), np.float32(1))
      out[start:start + chunk] = np.round(x * np.float32(255)).astype(np.uint8)
    else:
      out[start:start + chunk] = np.clip(u + d * np.float32(255), np.float32(0), np.float32(255)).astype(np.uint8)
  return out


def apply(ds: data.DeviceDataset, poison: Poison, fraction: float = 1.0, seed: int = 0, *, quantize: str = "",
          drop_negative: bool = False) -> data.DeviceDataset:
  """``ds`` with the poison on its training images; with ``fraction`` < 1, only a random
  ``fraction`` of the examples (fixed by ``seed``) carry their perturbation, the rest are
  clean. Raises ValueError if the poison was crafted on another dataset.

  ``drop_negative``: only the positive part of the perturbation, ``max(delta, 0)``, is
  added (what the EM reference's ``PoisonCIFAR10`` does). ``quantize`` (``"round"`` or
  ``"floor"``, see ``quantized_images``): the poisoned training images are stored as uint8,
  as image files or the reference code store them, instead of carrying a float
  perturbation; the result's training split then has no ``delta``, and its images are
  exactly ``k / 255``. The result's fingerprint identifies the poison, the fraction and
  these two settings.
  """
  check_matches(poison, ds)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"poison_fraction must be in [0, 1], got {fraction}")
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize: unknown value {quantize!r}; use one of {QUANTIZE}")
  delta, mode = poison.delta, poison.mode
  if drop_negative:
    delta = np.maximum(delta, np.float32(0))
  if fraction < 1.0 or quantize:
    if mode == "class":  # expand to per-example rows (clean examples get zeros, stored images need one each)
      delta = delta[data.host_value(ds.train.labels)]
      mode = "sample"
  if fraction < 1.0:
    n = ds.train.size
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(seed).permutation(n)[: int(round(fraction * n))]] = True
    delta = np.where(chosen[:, None, None, None], delta, 0.0).astype(np.float32)
  if quantize:
    # Each process quantises the images it holds (elementwise, so the same bytes as one
    # pass over the whole set): no gather of a split that is sharded over processes.
    images = parallel.map_local_blocks(lambda block, index: quantized_images(block, delta[index], quantize),
                                       ds.train.images)
    out = dataclasses.replace(ds, train=ds.train.replace(images=images, delta=None, delta_mode="none"))
  else:
    out = ds.with_perturbation(np.asarray(delta, np.float32), mode)
  key = f"{ds.fingerprint}|{poison.digest}|{fraction}|{seed}"
  if quantize or drop_negative:  # (the key of a plain float poison is unchanged)
    key += f"|quantize={quantize}|drop_negative={bool(drop_negative)}"
  return dataclasses.replace(out, fingerprint=hashlib.sha256(key.encode()).hexdigest())


def poisoned_images(ds: data.DeviceDataset, poison: Poison) -> np.ndarray:
  """The protected training images as uint8 (``quantized_images(..., "round")``: the nearest
  level, up to half a grey level away from ``x + delta``), computed on the host: no program
  is compiled. With the training split sharded over several processes (``data.layout=
  "sharded"``) its images are gathered, so every process must call it, as any collective;
  otherwise each process reads its own copy and may call it alone."""
  check_matches(poison, ds)
  labels = data.host_value(ds.train.labels)
  delta = poison.delta if poison.mode == "sample" else poison.delta[labels]
  return quantized_images(parallel.to_host(ds.train.images), delta, "round")


def export_npz(path: os.PathLike | str, ds: data.DeviceDataset, poison: Poison) -> pathlib.Path:
  """The protected training set and the clean test set as an ``.npz`` that
  ``jaxprotect.data.load(path)`` (or numpy) reads: ``x_train`` (uint8 NHWC), ``y_train``,
  ``ids_train``, ``x_test``, ``y_test``, ``ids_test``, ``num_classes``. In a multi-process
  run every process calls it (the images may have to be gathered) and process 0 writes."""
  path = pathlib.Path(path)
  get = data.host_value
  arrays = {"x_train": poisoned_images(ds, poison), "y_train": get(ds.train.labels), "ids_train": get(ds.train.ids),
            "x_test": parallel.to_host(ds.test.images), "y_test": get(ds.test.labels), "ids_test": get(ds.test.ids),
            "num_classes": np.int64(ds.num_classes)}
  if parallel.is_main_process():
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
  return path


def export_png(directory: os.PathLike | str, ds: data.DeviceDataset, poison: Poison) -> pathlib.Path:
  """One PNG per protected training image: ``<directory>/<label>/<id>.png`` (the
  ImageFolder layout other tools read). In a multi-process run every process calls it and
  process 0 writes."""
  from jaxprotect import platform  # noqa: PLC0415

  Image = platform.require("PIL.Image", "plot", "PNG export")

  directory = pathlib.Path(directory)
  images = poisoned_images(ds, poison)
  if not parallel.is_main_process():
    return directory
  labels = data.host_value(ds.train.labels)
  ids = data.host_value(ds.train.ids)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
  try:
    for img, y, i in zip(images, labels, ids):
      (tmp / str(int(y))).mkdir(exist_ok=True)
      Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp / str(int(y)) / f"{int(i)}.png")
    _replace_dir(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _held_rows(x: jax.Array) -> np.ndarray:
  """A mask of the rows of ``x`` (along its leading axis) that this process holds."""
  n = x.shape[0]
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.ones(n, bool)
  held = np.zeros(n, bool)
  for shard in x.addressable_shards:
    held[shard.index[0]] = True
  return held


def save_preview(path: os.PathLike | str, ds: data.DeviceDataset, delta: np.ndarray, mode: str, eps: float) -> bool:
  """A 3-row grid, one column per class (its first training example; in a multi-process run
  with the training split sharded, the first this process holds): clean, the perturbation
  mapped from [-eps, eps] to [0, 1], and the poisoned image. Reads the dataset with no
  communication, so process 0 may call it alone. Without matplotlib (the ``plot`` extra)
  nothing is drawn and a warning is logged. Returns whether it wrote ``path``."""
  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the poison preview {path}")
  if plt is None:
    return False

  labels = data.host_value(ds.train.labels)
  # The first example of each class among the images this process holds (all of them unless
  # the training split is sharded over processes): process 0 draws it alone.
  held = _held_rows(ds.train.images)
  cols = [int(np.flatnonzero((labels == c) & held)[0]) for c in range(ds.num_classes) if np.any((labels == c) & held)]
  clean = data.host_value(ds.train.images, np.asarray(cols)).astype(np.float32) / 255.0
  d = delta[np.asarray(cols)] if mode == "sample" else delta[labels[cols]]
  rows = [clean, np.clip(d / (2 * eps) + 0.5, 0, 1), np.clip(clean + d, 0, 1)]
  fig, axes = plt.subplots(3, len(cols), figsize=(1.2 * len(cols), 3.8), squeeze=False)
  for r, (name, imgs) in enumerate(zip(("clean", "delta (amplified)", "poisoned"), rows)):
    for c, img in enumerate(imgs):
      ax = axes[r][c]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(name, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
