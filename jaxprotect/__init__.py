"""jaxprotect: data- and model-protection experiments in JAX.

Submodules are imported lazily (``jaxprotect.train``, ``jaxprotect.data``, ...), so
``import jaxprotect`` is cheap and does not initialise a JAX backend.

On import, jaxprotect adds XLA:CPU flags that its CPU measurements favour to
``XLA_FLAGS``, for the jaxlib versions they were measured on, unless ``XLA_FLAGS``
already sets them or ``JAXPROTECT_XLA_CPU_DEFAULTS=0``. They take effect only if no JAX
backend has been initialised yet, and affect only the CPU backend:

* jaxlib 0.10: ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions). With its
  default, XLA:CPU sends convolutions to YNNPACK behind layout transposes; without,
  a ResNet-18 training step ran 1.17x and a PGD step 1.32x faster on 2 cores
  (BENCHMARKS.md, "XLA:CPU flags").

The same switch, ``JAXPROTECT_XLA_CPU_DEFAULTS=0``, also turns off the CPU-only patch
product that ``models.common.conv_general_dilated`` uses for convolutions with at most 4
input channels (image stems) and the CPU rule of ``models.norm.BatchNorm`` (the zoo then
uses ``flax.linen.BatchNorm``).
"""

import importlib
import os
from importlib import metadata

__version__ = "0.1.0"

_SUBMODULES = ("checkpoint", "cli", "config", "data", "losses", "models", "parallel", "train")
# jaxlib major.minor -> XLA:CPU flags measured to help there.
CPU_XLA_FLAGS = {"0.10": ("--xla_cpu_experimental_ynn_fusion_type=",)}


def cpu_defaults_enabled() -> bool:
  """False when ``JAXPROTECT_XLA_CPU_DEFAULTS=0``: no XLA:CPU flags on import, no CPU-only
  patch-product stems (``models.common.conv_general_dilated``) and flax's own BatchNorm
  (``models.common.batch_norm``)."""
  return os.environ.get("JAXPROTECT_XLA_CPU_DEFAULTS", "1") != "0"


def _add_cpu_xla_flags() -> None:
  if not cpu_defaults_enabled():
    return
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return
  flags = CPU_XLA_FLAGS.get(".".join(version.split(".")[:2]), ())
  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in flags if f.split("=")[0] not in current]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()


_add_cpu_xla_flags()


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxprotect.{name}")
  raise AttributeError(f"module 'jaxprotect' has no attribute {name!r}")
