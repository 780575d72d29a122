"""Process set-up that jaxprotect's entry points apply, and imports of optional extras.

``import jaxprotect`` (or any of its modules) changes nothing in the process: no
environment variable, no JAX option. The set-up below is applied only by the entry points
-- the ``jaxprotect`` command (``jaxprotect.cli.main``), ``python -m benchmarks``
and the test suite (``tests/conftest.py``) -- and by your own code if you ask for it.

XLA:CPU flags
-------------

``apply_cpu_xla_flags()`` adds to ``XLA_FLAGS`` the XLA:CPU flags that jaxprotect's CPU
measurements favour, for the jaxlib versions they were measured on (``CPU_XLA_FLAGS``),
unless ``XLA_FLAGS`` already sets them or ``JAXPROTECT_XLA_CPU_DEFAULTS=0``. XLA reads
``XLA_FLAGS`` when JAX initialises its first backend, so call it before anything touches
a device (``jax.devices()``, the first computation)::

    from jaxprotect import platform
    platform.apply_cpu_xla_flags()      # returns the flags it added, e.g. ('--xla_cpu_...=',)

They affect only the CPU backend, and child processes inherit them with the environment:

* jaxlib 0.10: ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions). With its
  default, XLA:CPU sends convolutions to YNNPACK behind layout transposes; without,
  a ResNet-18 training step ran 1.17x and a PGD step 1.32x faster on 2 cores
  (docs/BENCHMARKS.md, "XLA:CPU: what the time goes to", YNNPACK fusions).

The same switch, ``JAXPROTECT_XLA_CPU_DEFAULTS=0`` (``cpu_defaults_enabled()``), also
turns off the XLA:CPU forms of the ops in ``jaxprotect.ops``, the model zoo's default
layers: the patch product of ``ops.conv_general_dilated`` for convolutions with at most 4
input channels (image stems), the CPU rule of ``ops.BatchNorm`` (the zoo then uses
``flax.linen.BatchNorm``) and the selects of ``ops.max_pool_2x2``. Those are read when a
model is built or traced, not on import.

CPU or accelerator
------------------

This module is where jaxprotect decides between XLA:CPU and accelerator behaviour:

* ``is_cpu(mesh=None)``: whether a computation runs on XLA:CPU (the platform of ``mesh``'s
  devices, else JAX's default backend), for choices made in Python (loop forms, say).
  The ops of ``jaxprotect.ops`` choose when the program is lowered instead
  (``lax.platform_dependent``), so one traced model serves every platform.
* ``fast_init_prng()``: the context in which jaxprotect initialises parameters, the
  non-partitionable threefry (see there).

Optional extras
---------------

The core install is JAX, Flax, Optax, Orbax, chex, ml_collections, numpy and tqdm.
Features that need more name their extra when the package is missing (``require``):
``tfds`` (``tensorflow-datasets``: datasets read through TFDS), ``plot`` (``matplotlib``
and ``pillow``: poison previews, victim and CMI curves, PNG export) and ``bench``
(``torch``: the PyTorch rows of ``python -m benchmarks``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from jax.sharding import Mesh

# jaxlib major.minor -> XLA:CPU flags measured to help there.
CPU_XLA_FLAGS: dict[str, tuple[str, ...]] = {"0.10": ("--xla_cpu_experimental_ynn_fusion_type=",)}
CPU_DEFAULTS_ENV = "JAXPROTECT_XLA_CPU_DEFAULTS"

# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"tensorflow_datasets": "tensorflow-datasets", "PIL": "pillow"}

log = logging.getLogger("jaxprotect")


def cpu_defaults_enabled() -> bool:
  """False when ``JAXPROTECT_XLA_CPU_DEFAULTS=0``: ``apply_cpu_xla_flags`` adds nothing and
  the ops of ``jaxprotect.ops`` are the plain layers (no patch-product stems in
  ``ops.conv_general_dilated``, flax's own BatchNorm from ``models.common.default_norm``,
  ``nn.max_pool`` in ``ops.max_pool_2x2``)."""
  return os.environ.get(CPU_DEFAULTS_ENV, "1") != "0"


def is_cpu(mesh: Mesh | None = None) -> bool:
  """Whether computations run on XLA:CPU: the platform of ``mesh``'s devices (a mesh over a
  compile-only topology gives its platform without a local backend), else JAX's default
  backend (which this initialises)."""
  if mesh is not None:
    return mesh.devices.flat[0].platform == "cpu"
  import jax  # noqa: PLC0415

  return jax.default_backend() == "cpu"


def fast_init_prng() -> contextlib.AbstractContextManager:
  """Context manager for parameter initialisation: the non-partitionable threefry.

  ``with platform.fast_init_prng(): variables = jax.jit(model.init)(key, x)``. Under JAX's
  default, the partitionable threefry, XLA:CPU compiles an init about 5x slower (ResNet-18;
  docs/BENCHMARKS.md, "CPU gap investigation"). Partitionable random bits matter only for
  arrays created sharded; parameters are created replicated, so nothing is lost. The values
  differ from those under the default, but are a deterministic function of the key either way.
  """
  import jax  # noqa: PLC0415

  return jax.threefry_partitionable(False)


def cpu_xla_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
  """The flags of ``CPU_XLA_FLAGS`` for ``jaxlib_version`` (None: the installed jaxlib;
  none when jaxlib is not installed or its version was not measured)."""
  if jaxlib_version is None:
    try:
      jaxlib_version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
      return ()
  return CPU_XLA_FLAGS.get(".".join(jaxlib_version.split(".")[:2]), ())


def apply_cpu_xla_flags() -> tuple[str, ...]:
  """Appends the measured XLA:CPU flags (``cpu_xla_flags()``) to ``os.environ["XLA_FLAGS"]``.

  A flag whose name ``XLA_FLAGS`` already mentions is left as the user set it; nothing is
  added when ``JAXPROTECT_XLA_CPU_DEFAULTS=0``. Takes effect only if no JAX backend has
  been initialised yet. Idempotent. Returns the flags it added (empty: none).
  """
  if not cpu_defaults_enabled():
    return ()
  current = os.environ.get("XLA_FLAGS", "")
  names = {f.split("=")[0] for f in current.split()}
  missing = tuple(f for f in cpu_xla_flags() if f.split("=")[0] not in names)
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
  return missing


class MissingExtraError(ModuleNotFoundError):
  """An optional package is not installed; the message names the extra that installs it."""


def require(module_name: str, extra: str, what: str = "this feature", hint: str = "") -> ModuleType:
  """Imports ``module_name``, or raises ``MissingExtraError`` (a ``ModuleNotFoundError``)
  that says what needs it and which extra installs it, e.g. "plotting needs matplotlib:
  pip install 'jaxprotect[plot]'". ``hint`` is appended to that message.

  Only a missing ``module_name`` (or a parent package of it) is reported that way; an
  import error raised inside an installed package propagates unchanged.
  """
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is not None and module_name != e.name and not module_name.startswith(e.name + "."):
      raise
    top = module_name.split(".")[0]
    dist = _DISTRIBUTIONS.get(top, top)
    msg = f"{what} needs {dist}: pip install 'jaxprotect[{extra}]'" + (f" ({hint})" if hint else "")
    raise MissingExtraError(msg, name=module_name) from e


def pyplot(what: str) -> ModuleType | None:
  """``matplotlib.pyplot`` on the non-interactive Agg backend, for writing PNG files; or
  None, after a logged warning naming the ``plot`` extra, when matplotlib is not
  installed: a missing plot never fails the run that would have drawn it."""
  try:
    matplotlib = require("matplotlib", "plot", what)
  except MissingExtraError as e:
    log.warning("skipped: %s", e)
    return None
  matplotlib.use("Agg")
  return importlib.import_module("matplotlib.pyplot")
