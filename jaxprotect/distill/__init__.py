"""Undistillable models: CMIM (Ye et al. 2025) and Nasty (Ma et al., ICLR 2021) teachers, knock-off students, report.

``distill_config()`` is the config schema (sections ``data``, ``teacher``, ``method``,
``cmim``, ``nasty``, ``curve``, ``student``, ``attacks``, ``runtime``; see
``jaxprotect.distill.config``). Modules (imported lazily, as in the top-level package):

* ``config``   -- ``distill_config()``, the family's config schema and defaults;
* ``teacher``  -- CE / Nasty / CMIM teachers through ``runner.fit`` (CMIM's centroids
  live in ``state.extra``), export (``teacher.json`` + ``teacher.msgpack``), loading;
* ``curve``    -- CMI(T) over a log grid of temperatures on the train and test splits
  (JSON + PNG);
* ``blackbox`` -- ``BlackBoxTeacher``: query-only access (images -> output vectors) and
  the batch hook that hands the outputs to a student's loss;
* ``students`` -- attack losses (vanilla KD, DKD, Skeptical, hard-label, logit-MSE) and
  the Skeptical student's auxiliary heads;
* ``attack``   -- knock-off and baseline (CE, LS) students for several seeds;
* ``report``   -- teacher accuracy, CE/LS students, knock-offs, Delta, verdict;
* ``cli``      -- ``jaxprotect distill {teacher,attack,report}``.
"""

import importlib

_SUBMODULES = ("attack", "blackbox", "cli", "config", "curve", "report", "students", "teacher")
__all__ = ["distill_config", *_SUBMODULES]


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxprotect.distill.{name}")
  if name == "distill_config":
    return importlib.import_module("jaxprotect.distill.config").distill_config
  raise AttributeError(f"module 'jaxprotect.distill' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *__all__})
