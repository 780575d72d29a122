"""Configuration: the config schema, per-phase hashes, config files and atomic JSON files.

Configs are ``ml_collections.ConfigDict``s made of **sections**:

* ``data`` (``data_config()``): which dataset, where it is, how it is laid out;
* one section per trained model, every one of the same schema (``model_config()``):
  ``train`` for a plain training run, ``surrogate`` and ``victim`` for unlearnable
  examples, ``teacher`` and ``student`` for distillation;
* the method's own sections (``craft``, ``evaluate``, ``attacks``, ...);
* ``runtime`` (``runtime_config()``): devices, progress, checkpoint cadence -- what may
  change when a run is resumed.

A phase hashes only its own sections (``phase_hash``): a victim's checkpoints record the
hash of ``data`` and ``victim``, so changing the attack settings of the same file never
invalidates them. ``runtime`` and ``data.dir`` are never hashed (the data are identified
by their fingerprint instead).

Experiment files (``experiments/*.py``) define ``get_config(arg=None)`` and read ``arg``
with ``parse_variant`` (``"<variant>[,<option>...]"``); ``from_file`` loads one (a file
may extend another through it) and ``apply_overrides`` applies ``--config.<a.b>=<value>``
overrides, as big_vision's and ml_collections' config flags do.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = [
    "HASH_NEUTRAL_DEFAULTS", "OPEN_FIELDS", "RUNTIME", "apply_overrides", "check_fields", "config_hash", "data_config",
    "from_file", "lock", "model_config", "optimizer_config", "parse_variant", "phase_hash", "runtime_config",
    "train_config", "write_bytes_atomic", "write_json_atomic",
]

# The section that never enters a hash: a resumed run may change it.
RUNTIME = "runtime"
# Sub-configs whose keys are free (keyword arguments of a model): never locked, never checked.
OPEN_FIELDS = ("model_kwargs",)


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks ``c`` (a typo such as ``c.craft.pgd.step = 5`` raises instead of adding a
  field), leaving the ``OPEN_FIELDS`` sub-configs open. Returns ``c``."""
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
      raise ValueError(f"unknown config field {where}.{key}{_hint(key, reference, where)}")
    ref = reference[key]
    if key not in OPEN_FIELDS and isinstance(ref, (dict, ml_collections.ConfigDict)) and isinstance(
        value, (dict, ml_collections.ConfigDict)):
      check_fields(value, ref, f"{where}.{key}")


def _hint(key: str, known, where: str) -> str:
  near = difflib.get_close_matches(key, list(known), n=1)
  return f"; did you mean {where}.{near[0]}?" if near else f"; known fields: {', '.join(sorted(known))}"


# ---------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------

def data_config() -> ml_collections.ConfigDict:
  """The ``data`` section."""
  return ml_collections.ConfigDict(dict(
      name="fashion_mnist_mini",  # a TFDS name, mnist/fashion_mnist/cifar10/cifar100 with dir, or an .npz path
      dir=config_dict.placeholder(str),  # where the files are (not hashed: the data's fingerprint is checked)
      layout="replicated",  # or "sharded": examples split across devices
      train_subset=0,  # >0: the first n training examples only (quick runs)
  ))


def optimizer_config() -> ml_collections.ConfigDict:
  """The ``optimizer`` sub-section of a model section (``train.make_optimizer``)."""
  return ml_collections.ConfigDict(dict(
      name="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="cosine", warmup_epochs=0.0,
      milestones=(), gamma=0.1, grad_clip=0.0))


def model_config() -> ml_collections.ConfigDict:
  """The schema of every trained model's section (``train``, ``surrogate``, ``victim``,
  ``teacher``, ``student``): the model and its training recipe."""
  return ml_collections.ConfigDict(dict(
      model="small_cnn",
      model_kwargs=ml_collections.ConfigDict(),  # constructor keywords of the zoo model (e.g. width)
      dtype="float32",  # compute dtype; parameters are always float32
      # dtype of the conv/dense parameter gradients and their all-reduces: "compute" or "float32"
      grad_sum_dtype="compute",
      epochs=5,
      batch_size=128,
      eval_batch_size=512,
      augment="crop2,flip",
      label_smoothing=0.0,
      optimizer=optimizer_config(),
      seed=0,  # initial parameters and data order
      chunk_steps=0,  # steps per chunk (metrics record, checkpoint granularity); 0: a whole epoch
      loop="",  # "scan" (one lax.scan per chunk), "host" (a jitted step per step) or "" (scan, host on CPU)
  ))


def runtime_config() -> ml_collections.ConfigDict:
  """The ``runtime`` section: what does not change results, so a resumed run may change it."""
  return ml_collections.ConfigDict(dict(
      num_devices=0,  # 0: all devices
      progress=True,
      tensorboard=True,  # write TensorBoard events too when tensorboardX is installed
      # every_steps 0: each epoch; every_iterations: crafting's outer iterations
      checkpoint=ml_collections.ConfigDict(dict(every_steps=0, every_iterations=1, keep=3, async_save=True)),
  ))


def train_config() -> ml_collections.ConfigDict:
  """A supervised training run (``jaxprotect train``, ``runner.fit``): ``data``, ``train``
  (a small CNN on the embedded Fashion-MNIST slice) and ``runtime``. Locked."""
  return lock(ml_collections.ConfigDict(dict(data=data_config(), train=model_config(), runtime=runtime_config())))


# ---------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------

# Section fields added after hashes were first recorded, with their defaults: a field at its
# default is left out of the hash, so that the configs written before it existed keep their
# hashes (and their checkpoints); any other value enters the hash.
HASH_NEUTRAL_DEFAULTS = {"grad_sum_dtype": "compute"}


def phase_hash(config: ml_collections.ConfigDict, sections: Sequence[str], **extra: Any) -> str:
  """A stable short hash of ``config``'s ``sections`` (without ``data.dir``, and without the
  ``HASH_NEUTRAL_DEFAULTS`` fields at their defaults) and the JSON-able ``extra`` values:
  what a phase computes from, recorded in its checkpoints."""
  d: dict[str, Any] = {}
  for s in sections:
    if s not in config:
      raise ValueError(f"config has no section {s!r} (sections: {', '.join(config.keys())})")
    d[s] = config[s].to_dict() if isinstance(config[s], ml_collections.ConfigDict) else config[s]
    if isinstance(d[s], dict):
      d[s] = {k: v for k, v in d[s].items() if k not in HASH_NEUTRAL_DEFAULTS or v != HASH_NEUTRAL_DEFAULTS[k]}
  if isinstance(d.get("data"), dict):
    d["data"].pop("dir", None)
  d.update(extra)
  blob = json.dumps(d, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_hash(config: ml_collections.ConfigDict) -> str:
  """``phase_hash`` over every section but ``runtime``."""
  return phase_hash(config, [k for k in config.keys() if k != RUNTIME])


# ---------------------------------------------------------------------------------------
# Config files, variants, overrides
# ---------------------------------------------------------------------------------------

def from_file(spec: os.PathLike | str) -> ml_collections.ConfigDict:
  """The config of ``"path/to/file.py[:arg]"``: the file's ``get_config(arg)`` (``get_config()``
  without ``arg``). An experiment file may start from another one this way."""
  path, _, arg = str(spec).partition(":")
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_jaxprotect_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ValueError(f"config file {path} defines no get_config(arg=None)")
  if arg and not inspect.signature(get_config).parameters:
    raise ValueError(f"config file {path} takes no variant, got {arg!r}")
  config = get_config(arg) if arg else get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"get_config of {path} returned {type(config).__name__}, not an ml_collections.ConfigDict")
  return config


def parse_variant(arg: str | None, variants: Sequence[str], options: Sequence[str] = (),
                  where: str = "config") -> tuple[str, tuple[str, ...]]:
  """Reads an experiment file's ``"<variant>[,<option>...]"``: returns ``(variant, options)``.

  ``variants[0]`` is the default; an unknown name is a ValueError that lists the known
  ones."""
  variant, *opts = (arg or variants[0]).split(",")
  variant = variant or variants[0]
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r} of {where}; use one of {', '.join(variants)}")
  bad = [o for o in opts if o not in options]
  if bad:
    raise ValueError(f"unknown option(s) {bad} of {where}; use {', '.join(options) if options else 'none'}")
  return variant, tuple(opts)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies ``"a.b.c=value"`` overrides to ``config`` (in place; returns it).

  The value is read as the field's type: booleans from true/false/1/0, numbers, strings
  as written, tuples as Python literals (``(0,1)``) or comma lists (``kd,dkd``). Under an
  ``OPEN_FIELDS`` sub-config (``model_kwargs``) a new key may be added; its value is a
  Python literal or else a string. An unknown field is a ValueError naming the nearest
  known one."""
  for item in overrides:
    path, eq, text = item.partition("=")
    if not eq or not path:
      raise ValueError(f"config override {item!r}: expected <field>=<value>")
    *parents, key = path.split(".")
    node, where = config, "config"
    for part in parents:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f"unknown config field {where}.{part}{_hint(part, node.keys(), where)}")
      node, where = node[part], f"{where}.{part}"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"config field {where} is a value, not a section; cannot set {where}.{key}")
    if key not in node:
      if parents and parents[-1] in OPEN_FIELDS:
        value = _literal(text)
      else:
        raise ValueError(f"unknown config field {where}.{key}{_hint(key, node.keys(), where)}")
    else:
      value = _coerce(node, key, text, f"{where}.{key}")
    if key in node:
      node[key] = value
    else:
      with node.unlocked():
        node[key] = value
  return config


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(node: ml_collections.ConfigDict, key: str, text: str, where: str) -> Any:
  current = node[key]
  if isinstance(current, ml_collections.ConfigDict):
    raise ValueError(f"config field {where} is a section; set its fields ({where}.<field>=...)")
  kind = type(current) if current is not None else node.get_type(key)
  try:
    if text == "None" and current is None:
      return None
    if kind is bool:
      low = text.lower()
      if low not in ("true", "false", "1", "0"):
        raise ValueError
      return low in ("true", "1")
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind in (tuple, list):
      value = _literal(text)
      if isinstance(value, str):  # a bare comma list: kd,dkd or 1,2
        value = tuple(_literal(v) for v in text.split(",") if v)
      value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
      return kind(value)
    if kind is str:
      return text
  except ValueError:
    raise ValueError(f"config field {where}: cannot read {text!r} as {kind.__name__}") from None
  return _literal(text)


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
