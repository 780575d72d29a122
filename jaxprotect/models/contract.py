"""The model contract of every engine function, and the adapter that makes a user's model meet it.

jaxprotect calls a model only through two functions (as flax's ``TrainState`` holds an
``apply_fn``)::

  variables = model.init(key, x_BxHxWxC, train=False)        # {'params'[, 'batch_stats', ...]}
  (logits_BxK, feats), new_vars = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs=...)
  logits_BxK, feats = model.apply(variables, x, train=False)

``x`` is float32 in [0, 1]. ``feats`` is whatever the model exposes besides its logits
(penultimate features ``B x D`` for the zoo, a dict for models with auxiliary heads) or
``None`` when the model returns logits only.

``as_model(module)`` wraps any flax ``nn.Module`` (or any object with flax-style ``init``
and ``apply``) so that it follows this contract:

* **outputs**: the module may return ``logits_BxK``, a pair ``(logits_BxK, feats)``, or a
  dict ``{"logits": logits_BxK, "features": feats}`` (``"features"`` optional). Anything
  else is refused with an error that states this rule. Logits must be a 2-D float array
  with one row per image.
* **train flag**: passed as ``train=`` when ``__call__`` takes ``train``, as
  ``deterministic=not train`` when it takes ``deterministic``, as ``training=`` for
  ``training``, and not at all otherwise (a model without dropout or BatchNorm). Name
  another keyword with ``as_model(module, train_kwarg="is_training")``, or ``None`` to
  never pass one.

The zoo's models (``jaxprotect.models.get``) already follow the contract; every engine
function accepts a zoo model, a user's module or a ``Model`` and wraps it itself.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import numpy as np

__all__ = ["Model", "as_model", "check_outputs", "features_of"]

_AUTO = "auto"
# keyword -> whether it is the negation of "train"
_TRAIN_KWARGS = (("train", False), ("deterministic", True), ("training", False), ("is_training", False))

RULE = ("a model must return logits_BxK, a pair (logits_BxK, features), or a dict "
        "{'logits': logits_BxK, 'features': features}")


def _call_parameters(module: Any) -> tuple[set[str], bool]:
  """Names of ``module.__call__``'s parameters, and whether it takes ``**kwargs``."""
  fn = getattr(type(module), "__call__", None)
  if fn is None:
    return set(), False
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return set(), True
  return set(params), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _resolve_train_kwarg(module: Any, train_kwarg: str | None) -> tuple[str | None, bool]:
  if train_kwarg != _AUTO:
    if train_kwarg is not None and not isinstance(train_kwarg, str):
      raise ValueError(f"train_kwarg: expected a keyword name, None or 'auto', got {train_kwarg!r}")
    return train_kwarg, train_kwarg == "deterministic"
  names, _ = _call_parameters(module)
  for name, negated in _TRAIN_KWARGS:
    if name in names:
      return name, negated
  return None, False


def _normalise(out: Any, where: str) -> tuple[jax.Array, Any]:
  """``(logits, feats or None)`` from a module's raw output, or a ValueError stating the rule."""
  if isinstance(out, dict):
    if "logits" not in out or set(out) - {"logits", "features"}:
      raise ValueError(f"{where}: {RULE}; got a dict with keys {sorted(out)}")
    logits, feats = out["logits"], out.get("features")
  elif isinstance(out, (tuple, list)):
    if len(out) != 2:
      raise ValueError(f"{where}: {RULE}; got a {type(out).__name__} of {len(out)} elements")
    logits, feats = out
  else:
    logits, feats = out, None
  shape, dtype = np.shape(logits), getattr(logits, "dtype", None)
  if len(shape) != 2 or dtype is None or not np.issubdtype(np.dtype(dtype), np.floating):
    raise ValueError(f"{where}: {RULE}, the logits being a float array of shape (batch, num_classes); "
                     f"got logits of shape {shape} and dtype {dtype}")
  return logits, feats


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A model that follows the engine's contract (see the module docstring).

  module: the wrapped flax module (or object with flax-style ``init``/``apply``).
  train_kwarg: the keyword that receives the train flag (None: never passed).
  negate_train: pass ``not train`` (for ``deterministic``).
  """

  module: Any
  train_kwarg: str | None = "train"
  negate_train: bool = False

  def _flag(self, train: bool) -> dict[str, Any]:
    if self.train_kwarg is None:
      return {}
    return {self.train_kwarg: (not train) if self.negate_train else train}

  @property
  def name(self) -> str:
    return type(self.module).__name__

  def init(self, key: jax.Array, x: jax.Array, train: bool = False, **kwargs) -> Any:
    """``module.init(key, x, <train flag>)``: the variables dict."""
    return self.module.init(key, x, **self._flag(train), **kwargs)

  def apply(self, variables: Any, x: jax.Array, train: bool = False, **kwargs) -> Any:
    """``(logits_BxK, feats)``; with ``mutable=...`` ``((logits_BxK, feats), new_variables)``.
    ``rngs`` are dropped for a module that takes no train flag (it has no dropout)."""
    if self.train_kwarg is None:
      kwargs.pop("rngs", None)
    out = self.module.apply(variables, x, **self._flag(train), **kwargs)
    if kwargs.get("mutable", False) is not False:
      raw, new_vars = out
      return _normalise(raw, f"{self.name}.apply"), new_vars
    return _normalise(out, f"{self.name}.apply")

  def __call__(self, *args, **kwargs):  # a Model is not a module: make the mistake explicit
    raise TypeError("call model.apply(variables, x, train=...) (a jaxprotect Model wraps a flax module)")

  def __repr__(self) -> str:
    return f"Model({self.module!r}, train_kwarg={self.train_kwarg!r})"


def as_model(module: Any, train_kwarg: str | None = _AUTO) -> Model:
  """Wraps ``module`` (a flax module, an object with ``init``/``apply``, or a ``Model``,
  returned as it is) to follow the engine's contract; see the module docstring."""
  if isinstance(module, Model):
    return module
  if not (callable(getattr(module, "init", None)) and callable(getattr(module, "apply", None))):
    raise TypeError(f"model: expected a flax nn.Module (or an object with init/apply), got {type(module).__name__}")
  name, negated = _resolve_train_kwarg(module, train_kwarg)
  return Model(module, name, negated)


def check_outputs(model: Any, example_x: jax.Array) -> tuple[jax.ShapeDtypeStruct, Any]:
  """Traces ``model`` once on ``example_x`` (shapes only, no compute) and checks its
  outputs against the contract; returns the abstract ``(logits, feats)``."""
  m = as_model(model)
  x = jax.ShapeDtypeStruct(np.shape(example_x), getattr(example_x, "dtype", np.float32))

  def run(key, x):
    variables = m.init(key, x, train=False)
    return m.apply(variables, x, train=False)

  key = jax.ShapeDtypeStruct((2,), np.uint32)  # a raw PRNGKey; nothing is placed on a device
  logits, feats = jax.eval_shape(run, key, x)
  if logits.shape[0] != x.shape[0]:
    raise ValueError(f"{m.name}: {RULE}; logits have {logits.shape[0]} rows for a batch of {x.shape[0]} images")
  return logits, feats


def features_of(outputs: tuple[jax.Array, Any], who: str) -> Any:
  """The ``feats`` of ``outputs``, or a ValueError saying that ``who`` needs them."""
  feats = outputs[1]
  if feats is None:
    raise ValueError(f"{who} needs the model's features: the model returns logits only; "
                     "return (logits_BxK, features_BxD) from its __call__")
  return feats
