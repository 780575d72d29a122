"""Configuration: the training config schema, hashing and atomic JSON files.

Configs are ``ml_collections.ConfigDict``; experiment files (``experiments/*.py``)
define ``get_config(arg=None)`` and usually start from ``train_config()``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = [
    "NON_SEMANTIC_FIELDS", "OPEN_FIELDS", "check_fields", "config_hash", "lock", "semantic_dict",
    "train_config", "write_bytes_atomic", "write_json_atomic",
]

# Fields that do not change what a run computes: a resumed run may change them.
NON_SEMANTIC_FIELDS = ("checkpoint", "progress", "num_devices", "data_dir", "tensorboard")
# Sub-configs whose keys are free (keyword arguments of a model): never locked, never checked.
OPEN_FIELDS = ("model_kwargs",)


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks ``c`` (a typo such as ``c.pgd.step = 5`` raises instead of adding a field),
  leaving the ``OPEN_FIELDS`` sub-configs open. Returns ``c``."""
  c.lock()

  def open_fields(d: ml_collections.ConfigDict) -> None:
    for key, value in d.items():
      if isinstance(value, ml_collections.ConfigDict):
        if key in OPEN_FIELDS:
          value.unlock()
        else:
          open_fields(value)

  open_fields(c)
  return c


def check_fields(config: ml_collections.ConfigDict | dict, reference: ml_collections.ConfigDict | dict,
                 where: str = "config") -> None:
  """Raises ValueError for a field of ``config`` that ``reference`` (the schema) lacks,
  naming it and the nearest known field; ``OPEN_FIELDS`` sub-configs are not checked."""
  for key, value in config.items():
    if key not in reference:
      near = difflib.get_close_matches(key, list(reference), n=1)
      hint = f"; did you mean {where}.{near[0]}?" if near else f"; known fields: {', '.join(sorted(reference))}"
      raise ValueError(f"unknown config field {where}.{key}{hint}")
    ref = reference[key]
    if key not in OPEN_FIELDS and isinstance(ref, (dict, ml_collections.ConfigDict)) and isinstance(
        value, (dict, ml_collections.ConfigDict)):
      check_fields(value, ref, f"{where}.{key}")


def train_config() -> ml_collections.ConfigDict:
  """The default supervised-training config (a small CNN on the embedded Fashion-MNIST slice).

  Unlocked: method configs extend it with their own fields, then ``lock`` the result."""
  c = ml_collections.ConfigDict()
  c.dataset = "fashion_mnist_mini"  # a TFDS name, mnist/fashion_mnist/cifar10/cifar100 with data_dir, or an .npz path
  c.data_dir = config_dict.placeholder(str)
  c.layout = "replicated"  # or "sharded": examples split across devices
  c.train_subset = 0  # >0: train on the first n examples (quick runs)
  c.model = "small_cnn"
  c.model_kwargs = ml_collections.ConfigDict()
  c.dtype = "float32"  # compute dtype; parameters are always float32
  c.epochs = 5
  c.batch_size = 128
  c.eval_batch_size = 512
  c.augment = "crop2,flip"
  c.label_smoothing = 0.0
  c.optimizer = ml_collections.ConfigDict(
      dict(name="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="cosine",
           warmup_epochs=0.0, milestones=(), gamma=0.1, grad_clip=0.0)
  )
  c.seed = 0
  c.num_devices = 0  # 0: all devices
  c.chunk_steps = 0  # steps per chunk (metrics record, checkpoint granularity); 0: a whole epoch
  c.loop = ""  # "scan" (one lax.scan per chunk), "host" (a jitted step per step) or "" (scan, host on CPU)
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=3, async_save=True))  # every_steps 0: each epoch
  c.progress = True
  c.tensorboard = True  # write TensorBoard events too when tensorboardX is installed
  return c


def semantic_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a plain dict without the fields that do not affect results."""
  d = config.to_dict()
  for k in NON_SEMANTIC_FIELDS:
    d.pop(k, None)
  return d


def config_hash(config: ml_collections.ConfigDict) -> str:
  """A stable short hash of the semantic part of ``config`` (recorded in checkpoints)."""
  blob = json.dumps(semantic_dict(config), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_bytes_atomic(path: os.PathLike | str, blob: bytes) -> None:
  """Writes ``blob`` to a temporary file beside ``path`` and renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: os.PathLike | str, obj: Any) -> None:
  """Writes JSON to a temporary file beside ``path`` and renames it into place."""
  write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
