"""Datasets: host-side sources (TFDS, IDX, CIFAR archives, arrays, the embedded slice)
and the on-device dataset with in-jit gathering and augmentation.

``load(name, data_dir, mesh)`` is the usual entry point.
"""

from __future__ import annotations

import dataclasses

from jaxprotect.data.augment import AugmentConfig, augment_batch
from jaxprotect.data.device import (DeviceDataset, DeviceSplit, abstract_split, batch_from, check_split, describe,
                                   first_rows, host_value, split_to_device, to_device)
from jaxprotect.data.sources import ArraySplit, HostDataset, fingerprint, load_arrays

DEFAULT_DATASET = "fashion_mnist_mini"


def subset(host: HostDataset, n: int) -> HostDataset:
  """The first ``n`` training examples (ids kept); the test split is unchanged."""
  if not 0 < n <= len(host.train.labels):
    raise ValueError(f"train_subset={n} must be in [1, {len(host.train.labels)}] for {host.name!r}")
  t = host.train
  train = ArraySplit(images=t.images[:n], labels=t.labels[:n], ids=t.ids[:n])
  return dataclasses.replace(host, train=train, fingerprint=fingerprint(train, host.test))


def from_config(config, mesh=None) -> DeviceDataset:
  """The dataset of a run config's ``data`` section (or of that section itself): ``name``
  from ``dir``, the first ``train_subset`` training examples when > 0, on ``mesh`` with
  ``layout``. A ConfigDict or a plain dict (a run's ``config.json``)."""
  d = config["data"] if "data" in config else config
  return to_device(host_from_config(d), mesh, d.get("layout", "replicated"))


def host_from_config(config) -> HostDataset:
  """The host arrays of ``from_config``: dataset ``name`` from ``dir``, the first
  ``train_subset`` training examples when > 0."""
  d = config["data"] if "data" in config else config
  host = load_arrays(d["name"], d.get("dir"))
  if d.get("train_subset"):
    host = subset(host, d["train_subset"])
  return host


def load(name: str = DEFAULT_DATASET, data_dir: str | None = None, mesh=None,
         layout: str = "replicated") -> DeviceDataset:
  """Loads a dataset by name (see ``load_arrays``) onto ``mesh`` (default: all devices)."""
  return to_device(load_arrays(name, data_dir), mesh, layout)


__all__ = [
    "ArraySplit", "AugmentConfig", "DEFAULT_DATASET", "DeviceDataset", "DeviceSplit", "HostDataset",
    "abstract_split", "augment_batch", "batch_from", "check_split", "describe", "fingerprint", "first_rows",
    "from_config",
    "host_from_config", "host_value", "load", "load_arrays", "split_to_device", "subset", "to_device",
]
