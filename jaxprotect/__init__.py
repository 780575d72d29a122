"""jaxprotect: data- and model-protection experiments in JAX.

Submodules are imported lazily (``jaxprotect.train``, ``jaxprotect.data``, ...), so
``import jaxprotect`` is cheap and does not initialise a JAX backend.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("checkpoint", "cli", "config", "data", "losses", "models", "parallel", "train")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxprotect.{name}")
  raise AttributeError(f"module 'jaxprotect' has no attribute {name!r}")
