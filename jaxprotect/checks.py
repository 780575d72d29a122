"""Input checks of the public functions.

Two kinds of check:

* **Structure** (shapes, dtypes, static arguments) is always checked, in Python, when a
  function is called or traced; a violation is a ``ValueError`` that names the argument
  and what was expected. These checks cost nothing at run time.
* **Values** (label ranges, pixel ranges, signs of traced scalars) are checked

  - at once, when the value is concrete (a numpy array, a Python number, or a JAX array
    outside ``jit``): again a ``ValueError``;
  - inside ``jit`` only when asked for: trace the function under ``value_checks()``
    and functionalise it with ``jax.experimental.checkify`` -- ``checked(fn)`` does both
    and raises ``checkify.JaxRuntimeError`` naming the argument. Without it, traced
    values are not checked and nothing is added to the compiled program.

The flag is part of ``jax.jit``'s cache key (``jax.make_user_context``): a jitted function
traced without checks is traced again under ``value_checks()``, and the other way round,
so a library step gets its value checks by being called through ``checked``::

    step = jp.train.make_train_step(model, loss_fn, opt, mesh)
    state, metrics = jp.checks.checked(step)(state, batch)   # JaxRuntimeError on bad labels
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [
    "checked", "check_batch_size", "check_floating", "check_images_and_labels", "check_labels", "check_logits",
    "check_nonnegative", "check_positive", "check_positive_int", "check_range", "check_shape", "is_concrete",
    "value_checks", "value_checks_enabled",
]

# A jit-cache-sensitive flag: tracing under another value misses the cache.
_VALUE_CHECKS = jax.make_user_context(default_value=False)


def value_checks_enabled() -> bool:
  """Whether traced values are checked (inside ``value_checks()``)."""
  return bool(_VALUE_CHECKS.value)


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
  """Within this context, functions traced by jaxprotect add ``checkify`` checks of their
  values (label and pixel ranges). The traced function must then be functionalised with
  ``checkify.checkify`` (see ``checked``)."""
  with _VALUE_CHECKS(bool(enabled)):
    yield


def checked(fn: Callable) -> Callable:
  """``fn`` with jaxprotect's value checks, also inside ``jit``: traces ``fn`` under
  ``value_checks()``, functionalised by ``checkify``, and raises
  ``checkify.JaxRuntimeError`` when a check fails; otherwise returns ``fn``'s result."""
  cfn = checkify.checkify(fn, errors=checkify.user_checks)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with value_checks():
      err, out = cfn(*args, **kwargs)
    err.throw()
    return out

  return wrapper


def is_concrete(x: Any) -> bool:
  """True for numpy arrays, Python scalars and JAX arrays that are not tracers."""
  return not isinstance(x, jax.core.Tracer)


def _fail(name: str, expected: str, got: Any) -> None:
  raise ValueError(f"{name}: expected {expected}, got {got}")


def check_shape(x: Any, name: str, ndim: int | None = None, shape: tuple[int | None, ...] | None = None) -> None:
  """``x.ndim == ndim`` and ``x.shape`` matching ``shape`` (None: any size)."""
  s = tuple(np.shape(x))
  if ndim is not None and len(s) != ndim:
    _fail(name, f"a {ndim}-D array", f"shape {s}")
  if shape is not None:
    if len(s) != len(shape) or any(w is not None and w != g for w, g in zip(shape, s)):
      want = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
      _fail(name, f"shape {want}", f"shape {s}")


def _dtype(x: Any) -> np.dtype:
  return np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)


def check_floating(x: Any, name: str) -> None:
  if not jnp.issubdtype(_dtype(x), jnp.floating):
    _fail(name, "a floating-point array", f"dtype {_dtype(x)}")


def check_logits(logits: Any, name: str = "logits_BxK", allow_empty: bool = False) -> tuple[int, int]:
  """A 2-D float ``B x K`` array with ``K >= 2`` (and ``B >= 1``); returns ``(B, K)``."""
  check_shape(logits, name, ndim=2)
  check_floating(logits, name)
  b, k = np.shape(logits)
  if k < 2:
    _fail(name, "at least 2 classes (B x K, K >= 2)", f"shape {(b, k)}")
  if b < 1 and not allow_empty:
    _fail(name, "a non-empty batch (B >= 1)", f"shape {(b, k)}")
  return b, k


def _value_check(ok_fn: Callable[[Any], Any], x: Any, name: str, expected: str) -> None:
  """``ok_fn(x)`` must hold: at once for a concrete ``x``, by checkify when traced under
  ``value_checks()``."""
  if is_concrete(x):
    ok = np.asarray(ok_fn(np.asarray(x)))
    if not bool(np.all(ok)):
      arr = np.asarray(x)
      bad = arr[~np.broadcast_to(ok, arr.shape)] if arr.ndim else arr
      _fail(name, expected, f"{np.ravel(bad)[:5].tolist()} (first bad values)")
  elif value_checks_enabled():
    checkify.check(jnp.all(ok_fn(x)), f"{name}: expected {expected}")


def check_labels(labels: Any, num_classes: int, name: str = "labels_B", batch: int | None = None) -> None:
  """Integer labels of shape ``(batch,)`` with values in ``[0, num_classes)``."""
  check_shape(labels, name, shape=(batch,))
  if not jnp.issubdtype(_dtype(labels), jnp.integer):
    _fail(name, "integer class indices", f"dtype {_dtype(labels)}")
  _value_check(lambda y: (y >= 0) & (y < num_classes), labels, name, f"class indices in [0, {num_classes})")


def check_images_and_labels(images: Any, labels: Any, images_name: str = "images",
                            labels_name: str = "labels") -> int:
  """A batch of float images ``B x H x W x C`` in [0, 1] (B >= 1) with ``B`` labels;
  returns B. The range is a value check (eager when concrete, else under ``checked``)."""
  check_shape(images, images_name, ndim=4)
  check_floating(images, images_name)
  b = np.shape(images)[0]
  if b < 1:
    raise ValueError(f"{images_name}: expected a non-empty batch, got 0 images")
  check_shape(labels, labels_name, shape=(b,))
  check_range(images, 0.0, 1.0, images_name)
  return b


def check_range(x: Any, lo: float, hi: float, name: str) -> None:
  """Every value of ``x`` in ``[lo, hi]``."""
  _value_check(lambda v: (v >= lo) & (v <= hi), x, name, f"values in [{lo}, {hi}]")


def check_nonnegative(x: Any, name: str) -> None:
  """``x >= 0`` (a scalar such as ``eps`` or a step size)."""
  _value_check(lambda v: v >= 0, x, name, "a value >= 0")


def check_positive(x: Any, name: str) -> None:
  """``x > 0`` (a temperature)."""
  _value_check(lambda v: v > 0, x, name, "a value > 0")


def check_positive_int(n: Any, name: str, minimum: int = 1) -> int:
  """A static Python integer ``>= minimum``."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
    _fail(name, f"a Python int >= {minimum}", repr(n))
  if n < minimum:
    _fail(name, f"an int >= {minimum}", n)
  return int(n)


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
  return check_positive_int(batch_size, name)
