"""Datasets held on the accelerator as uint8 arrays, gathered and augmented inside jit.

A ``DeviceSplit`` is a pytree (it can be passed into jitted functions); its images stay
uint8 on device and are converted to float [0, 1] per batch, with an optional
perturbation added (sample-wise, indexed by position; or class-wise, indexed by label).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxprotect import checks, parallel
from jaxprotect.data.augment import AugmentConfig, augment_batch
from jaxprotect.data.sources import ArraySplit, HostDataset

LAYOUTS = ("replicated", "sharded")


@flax.struct.dataclass
class DeviceSplit:
  """One split on device.

  images: uint8 N x H x W x C.  labels: int32 N.  ids: int32 N (stable example ids).
  delta: optional float32 perturbation in pixel units: N x H x W x C when
    ``delta_mode == "sample"`` (row i perturbs example i), K x H x W x C when
    ``"class"`` (row k perturbs every example of class k).
  clean_augment: augmentation of the *clean* image before the perturbation is added
    (used when ``gather`` is given a key): the perturbation stays where it is while the
    image under it moves, as in MI-UE's post-augmentation crafting.
  """

  images: jax.Array
  labels: jax.Array
  ids: jax.Array
  delta: jax.Array | None = None
  delta_mode: str = flax.struct.field(pytree_node=False, default="none")
  clean_augment: AugmentConfig = flax.struct.field(pytree_node=False, default=AugmentConfig())

  @property
  def size(self) -> int:
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def gather(self, idx_B: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Float images in [0, 1] (with the perturbation, clipped) and labels at positions
    ``idx_B``; with ``key``, the clean images are first augmented by ``clean_augment``."""
    x = self.images[idx_B].astype(jnp.float32) / 255.0
    y = self.labels[idx_B]
    if key is not None and self.clean_augment.enabled:
      x = augment_batch(key, x, self.clean_augment)
    if self.delta_mode == "sample":
      x = jnp.clip(x + self.delta[idx_B], 0.0, 1.0)
    elif self.delta_mode == "class":
      x = jnp.clip(x + self.delta[y], 0.0, 1.0)
    return x, y


def batch_from(split: DeviceSplit, key: jax.Array, idx_B: jax.Array, augment: AugmentConfig) -> dict[str, jax.Array]:
  """The batch dict used by training steps: ``image`` (augmented), ``label``, ``id``, ``index``.
  A split with ``clean_augment`` augments its clean images with a key split off ``key``."""
  k_clean = None
  if split.clean_augment.enabled:
    key, k_clean = jax.random.split(key)
  x, y = split.gather(idx_B, k_clean)
  return {"image": augment_batch(key, x, augment), "label": y, "id": split.ids[idx_B], "index": idx_B}


@dataclasses.dataclass(frozen=True)
class DeviceDataset:
  """Train and test splits on a mesh, with the metadata needed to describe them."""

  name: str
  train: DeviceSplit
  test: DeviceSplit
  num_classes: int
  fingerprint: str
  mesh: Mesh
  layout: str = "replicated"

  @property
  def example(self) -> jax.Array:
    """A float32 batch of one training image (zeros, unsharded), for model initialisation
    (placed from the host: no program is compiled to make it)."""
    return jax.device_put(np.zeros((1, *self.train.image_shape), np.float32))

  def batch(self, key: jax.Array, batch_size: int, split: str = "train",
            augment: AugmentConfig | str | None = None) -> dict[str, jax.Array]:
    """A random batch (with replacement across calls, without within one), gathered on
    device and split along the mesh's ``data`` axis -- ready for ``train.make_train_step``.

    Returns ``{"image": float B x H x W x C in [0, 1], "label": int32 B, "id": int32 B,
    "index": int32 B}``; ``batch_size`` must divide evenly over the mesh's devices.
    """
    if isinstance(augment, str) or augment is None:
      augment = AugmentConfig.parse(augment)
    if split not in ("train", "test"):
      raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    s = getattr(self, split)
    checks.check_batch_size(batch_size)
    if batch_size > s.size:
      raise ValueError(f"batch_size={batch_size} exceeds the {s.size} examples of the {split} split")
    parallel.check_divisible(batch_size, self.mesh, "batch_size")
    k_idx, k_aug = jax.random.split(key)
    return _batch_fn(self.mesh, batch_size, augment)(s, k_idx, k_aug)

  def with_perturbation(self, delta: jax.Array, mode: str = "sample") -> "DeviceDataset":
    """A copy whose training images carry ``delta`` (pixel units; see ``DeviceSplit``)."""
    if mode not in ("sample", "class"):
      raise ValueError(f"perturbation mode must be 'sample' or 'class', got {mode!r}")
    want = (self.train.size if mode == "sample" else self.num_classes, *self.train.image_shape)
    if tuple(delta.shape) != want:
      raise ValueError(f"{mode}-wise perturbation must have shape {want}, got {tuple(delta.shape)}")
    checks.check_floating(delta, "delta")
    sharding = self.train.images.sharding if mode == "sample" else parallel.replicated(self.mesh)
    # A host array (or one on this process's devices) is cut into each process's own shards.
    delta = jnp.asarray(delta, jnp.float32) if isinstance(delta, jax.Array) else np.asarray(delta, np.float32)
    delta = parallel.place(delta, sharding)
    return dataclasses.replace(self, train=self.train.replace(delta=delta, delta_mode=mode))


@functools.lru_cache(maxsize=64)
def _batch_fn(mesh: Mesh, batch_size: int, augment: AugmentConfig):
  """One jitted draw-gather-augment program per (mesh, batch size, augmentation); its
  outputs are sharded along ``data``."""

  def draw(split: DeviceSplit, k_idx: jax.Array, k_aug: jax.Array):
    idx = jax.random.choice(k_idx, split.size, (batch_size,), replace=False)
    return batch_from(split, k_aug, idx, augment)

  return jax.jit(draw, out_shardings=parallel.data_sharded(mesh))


def split_to_device(split: ArraySplit, mesh: Mesh, layout: str = "replicated", name: str = "split") -> DeviceSplit:
  """Places one host split on ``mesh``: whole on every device, or sharded along examples
  (which needs the number of examples to be a multiple of the number of devices)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  check_split(split, name)
  if layout == "sharded":
    parallel.check_divisible(len(split.labels), mesh, f"number of examples of {name!r}")
    sharding = parallel.data_sharded(mesh)
  else:
    sharding = parallel.replicated(mesh)
  host = {"images": np.ascontiguousarray(split.images), "labels": split.labels.astype(np.int32),
          "ids": split.ids.astype(np.int32)}
  arrays = parallel.put(host, sharding)
  for field in ("labels", "ids"):
    _remember(arrays[field], host[field])
  return DeviceSplit(**arrays)


def first_rows(split: DeviceSplit, n: int, mesh: Mesh) -> DeviceSplit:
  """The first ``n`` examples of ``split`` (with their perturbation rows where the
  perturbation is sample-wise), replicated on ``mesh``; computed on device, so every
  process of a multi-process run may call it (all of them must)."""
  size = split.size
  if not 0 < n <= size:
    raise ValueError(f"n: expected an int in [1, {size}] (the split's examples), got {n!r}")

  def head(s: DeviceSplit) -> DeviceSplit:
    delta = s.delta[:n] if s.delta is not None and s.delta_mode == "sample" else s.delta
    return s.replace(images=s.images[:n], labels=s.labels[:n], ids=s.ids[:n], delta=delta)

  return jax.jit(head, out_shardings=parallel.replicated(mesh))(split)


# Host copies of the labels and ids that split_to_device placed, keyed by the device array
# (an entry goes when its array is collected): host_value reads them with no communication
# even where a split is sharded over processes, e.g. on process 0 alone. Images are not
# kept (memory); a split's labels and ids are never replaced by a perturbation or a defense.
_HOST_COPIES: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _remember(device: jax.Array, host: np.ndarray) -> None:
  try:
    ref = weakref.ref(device)
  except TypeError:  # an array type without weak references: no host copy, read its shards
    return
  key = id(device)
  host.setflags(write=False)  # handed out as it is: callers must not change the registered copy
  _HOST_COPIES[key] = (ref, host)
  weakref.finalize(device, _HOST_COPIES.pop, key, None)


def host_value(x: Any, rows: Any = None) -> np.ndarray:
  """A dataset array (``split.labels``, ``split.ids``, ``split.images``, ...) or its
  ``rows`` (positions along the example axis) as numpy on this host, with no
  communication -- so any process may call it alone: the host copy of labels and ids that
  ``split_to_device`` placed (while that device array lives), else the array itself where
  this process holds all of it (one process, or the replicated layout), else this
  process's shards. Raises ValueError for rows held only by other processes (a sharded
  layout over several processes); ``parallel.to_host``, called by every process, gathers
  those."""
  entry = _HOST_COPIES.get(id(x)) if isinstance(x, jax.Array) else None
  if entry is not None and entry[0]() is x:
    value = entry[1]
  elif not isinstance(x, jax.Array):
    value = np.asarray(x)
  elif rows is None and (x.is_fully_addressable or x.is_fully_replicated):
    return np.asarray(jax.device_get(x))
  else:
    return parallel.local_rows(x, np.arange(x.shape[0]) if rows is None else rows)
  if rows is None:
    return value
  rows = np.asarray(rows)
  if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
    raise ValueError(f"rows: expected a vector of integer positions, got shape {rows.shape} dtype {rows.dtype}")
  return value[rows]


def check_split(split: ArraySplit, name: str = "split", num_classes: int | None = None) -> None:
  """A host split as the device expects it: uint8 ``N x H x W x C`` images (not floats:
  convert with ``np.round(x * 255).astype(np.uint8)``), integer labels and ids of length N,
  labels in ``[0, num_classes)`` when given."""
  images, labels, ids = np.asarray(split.images), np.asarray(split.labels), np.asarray(split.ids)
  if images.dtype != np.uint8:
    raise ValueError(f"{name} images: expected uint8 pixels in [0, 255], got dtype {images.dtype} "
                     "(float images in [0, 1]: np.round(x * 255).astype(np.uint8))")
  checks.check_shape(images, f"{name} images", ndim=4)
  n = images.shape[0]
  if n < 1:
    raise ValueError(f"{name} images: expected at least one example, got 0")
  for what, arr in (("labels", labels), ("ids", ids)):
    checks.check_shape(arr, f"{name} {what}", shape=(n,))
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{name} {what}: expected integers, got dtype {arr.dtype}")
  if num_classes is not None:
    checks.check_labels(labels, num_classes, f"{name} labels")


def to_device(host: HostDataset, mesh: Mesh | None = None, layout: str = "replicated") -> DeviceDataset:
  """Moves a ``HostDataset`` onto the mesh (all local devices by default).

  ``layout="replicated"`` keeps a full copy on every device, so batches are gathered
  without communication (the right choice for datasets up to a few GB: MNIST, CIFAR,
  SVHN, Tiny-ImageNet); ``"sharded"`` splits the example axis across devices to save
  memory, at the price of cross-device gathers; the training split must then divide
  evenly over the devices (the test split stays replicated if it does not).
  """
  mesh = mesh or parallel.make_mesh()
  checks.check_positive_int(host.num_classes, "num_classes", minimum=2)
  check_split(host.train, f"{host.name} train", host.num_classes)
  check_split(host.test, f"{host.name} test", host.num_classes)
  # The test split is only read in order, batch by batch: shard it when it divides evenly.
  test_layout = layout if len(host.test.labels) % parallel.num_shards(mesh) == 0 else "replicated"
  return DeviceDataset(
      name=host.name,
      train=split_to_device(host.train, mesh, layout, f"{host.name} train"),
      test=split_to_device(host.test, mesh, test_layout, f"{host.name} test"),
      num_classes=host.num_classes,
      fingerprint=host.fingerprint,
      mesh=mesh,
      layout=layout,
  )


def describe(ds: DeviceDataset) -> dict[str, Any]:
  """A JSON-able summary (for run directories and manifests)."""
  return {
      "name": ds.name,
      "num_classes": ds.num_classes,
      "train_size": ds.train.size,
      "test_size": ds.test.size,
      "image_shape": list(ds.train.image_shape),
      "fingerprint": ds.fingerprint,
      "layout": ds.layout,
  }


def abstract_split(num_examples: int, image_shape: tuple[int, int, int], mesh: Mesh, layout: str = "replicated",
                   delta_mode: str = "none", num_classes: int | None = None,
                   clean_augment: AugmentConfig = AugmentConfig()) -> DeviceSplit:
  """A ``DeviceSplit`` of ``jax.ShapeDtypeStruct`` leaves with the shardings that
  ``split_to_device`` would give on ``mesh``, touching no device: for ahead-of-time
  compilation (e.g. for a mesh over a compile-only TPU topology). ``delta_mode`` "sample"
  adds an ``N x H x W x C`` perturbation, "class" a ``num_classes x H x W x C`` one."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  n = checks.check_positive_int(num_examples, "num_examples")
  if layout == "sharded":
    parallel.check_divisible(n, mesh, "num_examples")
  sharding = parallel.data_sharded(mesh) if layout == "sharded" else parallel.replicated(mesh)
  shape = tuple(int(d) for d in image_shape)
  spec = lambda s, dt, sh=sharding: jax.ShapeDtypeStruct(s, dt, sharding=sh)  # noqa: E731
  delta = None
  if delta_mode == "sample":
    delta = spec((n, *shape), jnp.float32)
  elif delta_mode == "class":
    k = checks.check_positive_int(num_classes, "num_classes", minimum=2)
    delta = spec((k, *shape), jnp.float32, parallel.replicated(mesh))
  elif delta_mode != "none":
    raise ValueError(f"delta_mode: expected 'none', 'sample' or 'class', got {delta_mode!r}")
  return DeviceSplit(images=spec((n, *shape), jnp.uint8), labels=spec((n,), jnp.int32), ids=spec((n,), jnp.int32),
                     delta=delta, delta_mode=delta_mode, clean_augment=clean_augment)
