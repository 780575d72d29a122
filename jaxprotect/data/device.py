"""Datasets held on the accelerator as uint8 arrays, gathered and augmented inside jit.

A ``DeviceSplit`` is a pytree (it can be passed into jitted functions); its images stay
uint8 on device and are converted to float [0, 1] per batch, with an optional
perturbation added (sample-wise, indexed by position; or class-wise, indexed by label).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxprotect import parallel
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
    """A float32 batch of one training image (unsharded), for model initialisation."""
    return jnp.zeros((1, *self.train.image_shape), jnp.float32)

  def batch(self, key: jax.Array, batch_size: int, split: str = "train", augment: AugmentConfig | str | None = None) -> dict[str, jax.Array]:
    """A random batch (with replacement across calls, without within one), gathered on device."""
    if isinstance(augment, str) or augment is None:
      augment = AugmentConfig.parse(augment)
    s = getattr(self, split)
    k_idx, k_aug = jax.random.split(key)
    idx = jax.random.choice(k_idx, s.size, (batch_size,), replace=False)
    return _jitted_batch(s, k_aug, idx, augment)

  def with_perturbation(self, delta: jax.Array, mode: str = "sample") -> "DeviceDataset":
    """A copy whose training images carry ``delta`` (pixel units; see ``DeviceSplit``)."""
    if mode not in ("sample", "class"):
      raise ValueError(f"perturbation mode must be 'sample' or 'class', got {mode!r}")
    want = (self.train.size if mode == "sample" else self.num_classes, *self.train.image_shape)
    if tuple(delta.shape) != want:
      raise ValueError(f"{mode}-wise perturbation must have shape {want}, got {tuple(delta.shape)}")
    sharding = self.train.images.sharding if mode == "sample" else parallel.replicated(self.mesh)
    delta = jax.device_put(jnp.asarray(delta, jnp.float32), sharding)
    return dataclasses.replace(self, train=self.train.replace(delta=delta, delta_mode=mode))


_jitted_batch = jax.jit(batch_from, static_argnums=(3,))


def split_to_device(split: ArraySplit, mesh: Mesh, layout: str = "replicated", name: str = "split") -> DeviceSplit:
  """Places one host split on ``mesh``: whole on every device, or sharded along examples
  (which needs the number of examples to be a multiple of the number of devices)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if layout == "sharded":
    parallel.check_divisible(len(split.labels), mesh, f"number of examples of {name!r}")
    sharding = parallel.data_sharded(mesh)
  else:
    sharding = parallel.replicated(mesh)
  arrays = parallel.put(
      {"images": np.ascontiguousarray(split.images, np.uint8), "labels": split.labels.astype(np.int32), "ids": split.ids.astype(np.int32)},
      sharding,
  )
  return DeviceSplit(**arrays)


def to_device(host: HostDataset, mesh: Mesh | None = None, layout: str = "replicated") -> DeviceDataset:
  """Moves a ``HostDataset`` onto the mesh (all local devices by default).

  ``layout="replicated"`` keeps a full copy on every device, so batches are gathered
  without communication (the right choice for datasets up to a few GB: MNIST, CIFAR,
  SVHN, Tiny-ImageNet); ``"sharded"`` splits the example axis across devices to save
  memory, at the price of cross-device gathers; the training split must then divide
  evenly over the devices (the test split stays replicated if it does not).
  """
  mesh = mesh or parallel.make_mesh()
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
