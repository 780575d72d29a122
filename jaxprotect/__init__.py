"""jaxprotect: data- and model-protection experiments in JAX.

Submodules are imported lazily on first attribute access (``jaxprotect.train``,
``jaxprotect.data``, ...; ``__all__`` lists them), so ``import jaxprotect`` is cheap, does
not initialise a JAX backend and changes nothing in the process: no environment variable,
no JAX option. The XLA:CPU flags that jaxprotect's command-line entry points set are in
``jaxprotect.platform`` (``platform.apply_cpu_xla_flags()``), as are the optional extras.
"""

import importlib

__version__ = "0.1.0"

# Every public subpackage and module, imported on first use.
__all__ = ["checkpoint", "checks", "cli", "config", "data", "defenses", "distill", "flags", "losses", "metrics",
           "models", "ops", "parallel", "platform", "privacy", "run", "runner", "stats", "train", "unlearnable"]
_SUBMODULES = frozenset(__all__)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxprotect.{name}")
  raise AttributeError(f"module 'jaxprotect' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *__all__})
