"""Statistics for results: seed summaries, Welch intervals, three-way comparisons, and
mutual-information estimates between two feature sets.

* ``summary(values)`` -- mean, sample standard deviation, n, standard error;
* ``welch(a, b, confidence)`` -- the difference of means ``mean(a) - mean(b)`` with its
  Welch (unequal-variance) t interval, t statistic, degrees of freedom and two-sided p;
* ``compare(a, b, confidence)`` -- ``"greater"``, ``"less"`` or ``"inconclusive"``: only
  an interval that excludes 0 decides;
* ``gaussian_mi(x, y)`` -- mutual information (nats) of two paired feature sets under a
  joint Gaussian model, ``0.5 * (log det S_x + log det S_y - log det S_xy)`` (Cover and
  Thomas, *Elements of Information Theory*, 2nd ed., eq. 8.56 / example 8.5.1), with a
  ridge added to the joint covariance (each variable's share scaled by its block's mean
  variance; the marginals are the joint's blocks, so the estimate is never negative) so
  that it stays finite when features outnumber examples or are collinear;
* ``ksg_mi(x, y, k)`` -- the k-nearest-neighbour estimator of Kraskov, Stoegbauer and
  Grassberger (Phys. Rev. E 69, 066138, 2004; their estimator 1, max-norm in the joint
  space, Euclidean distances in each space), a non-parametric check on the Gaussian one;
* ``pearson(x, y)`` -- Pearson's r with its two-sided p value;
* ``format_summary(s)`` / ``format_welch(w)`` -- a summary as "mean +- std" and a Welch
  comparison as "diff [low, high] verdict", the table cells of the experiment scripts; one
  seed, which has no spread and no interval, is said as such ("(1 seed)", "(n < 2)").

The MI estimators run in JAX (pairwise distances in blocks for KSG); everything else is
numpy/scipy on host values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["compare", "format_summary", "format_welch", "gaussian_mi", "ksg_mi", "pearson", "summary", "welch"]


def _values(values: Sequence[float], name: str) -> np.ndarray:
  a = np.asarray(values, np.float64).reshape(-1)
  if a.size == 0:
    raise ValueError(f"{name}: expected at least one value, got none")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: expected finite values, got {a.tolist()}")
  return a


def summary(values: Sequence[float]) -> dict[str, float]:
  """``{"mean", "std", "n", "sem"}``; ``std`` is the sample standard deviation (ddof 1),
  NaN for one value."""
  a = _values(values, "values")
  std = float(a.std(ddof=1)) if a.size > 1 else math.nan
  return {"mean": float(a.mean()), "std": std, "n": int(a.size), "sem": std / math.sqrt(a.size)}


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
  """The difference ``mean(a) - mean(b)`` and its Welch t interval at ``confidence``.

  Returns ``{"diff", "low", "high", "t", "df", "p", "n_a", "n_b"}``. With fewer than two
  values on a side, or no spread on both, the interval is unbounded (``low = -inf``,
  ``high = inf``, ``p = nan``) unless the two sides are constant and differ exactly.
  """
  from scipy import stats as sps  # noqa: PLC0415  (scipy comes with jax)

  if not 0 < confidence < 1:
    raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
  a, b = _values(a, "a"), _values(b, "b")
  diff = float(a.mean() - b.mean())
  out = {"diff": diff, "n_a": int(a.size), "n_b": int(b.size)}
  if a.size < 2 or b.size < 2:
    return {**out, "low": -math.inf, "high": math.inf, "t": math.nan, "df": math.nan, "p": math.nan}
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  se2 = va + vb
  if se2 == 0:
    inf = math.inf if diff else 0.0
    return {**out, "low": diff if diff else 0.0, "high": diff if diff else 0.0, "t": math.copysign(inf, diff),
            "df": math.inf, "p": 0.0 if diff else 1.0}
  df = se2**2 / ((va**2 / (a.size - 1) if va else 0.0) + (vb**2 / (b.size - 1) if vb else 0.0))
  se = math.sqrt(se2)
  t = diff / se
  q = float(sps.t.ppf(0.5 + confidence / 2, df))
  p = float(2 * sps.t.sf(abs(t), df))
  return {**out, "low": diff - q * se, "high": diff + q * se, "t": t, "df": float(df), "p": p}


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> str:
  """``"greater"`` when the Welch interval of ``mean(a) - mean(b)`` lies above 0,
  ``"less"`` when below, else ``"inconclusive"``."""
  w = welch(a, b, confidence)
  if w["low"] > 0:
    return "greater"
  if w["high"] < 0:
    return "less"
  return "inconclusive"


def _unbounded(x: float | None) -> bool:
  return x is None or math.isinf(x)


def format_summary(s: Mapping[str, Any], scale: float = 1.0, digits: int = 2, single: str = " (1 seed)") -> str:
  """``summary``'s result (or a record of it: ``std`` None where JSON dropped the NaN) as
  "mean +- std", both times ``scale`` at ``digits`` decimals; one value, which has no standard
  deviation, as "mean" followed by ``single`` so that the cell says so."""
  std = s.get("std")
  if std is None or not math.isfinite(std):
    return f"{scale * s['mean']:.{digits}f}{single}"
  return f"{scale * s['mean']:.{digits}f} +- {scale * std:.{digits}f}"


def format_welch(w: Mapping[str, Any], scale: float = 100.0, digits: int = 1,
                 words: Mapping[str, str] | None = None) -> str:
  """``welch``'s result plus ``"verdict"`` (``compare``'s word) as "diff [low, high] word",
  values times ``scale`` with their signs at ``digits`` decimals. ``words`` maps a verdict to the
  text after the interval (default: a space and the verdict itself; a verdict it lacks gets
  nothing). Ends that are None (as records store infinities) or infinite are unbounded: both
  unbounded, as ``welch`` leaves them when a side has one value, give "diff (n < 2)"; one
  gives "-inf" or "inf" in its place, keeping the other end's sign."""
  f = f"{{:+.{digits}f}}"
  diff = f.format(scale * w["diff"])
  low, high = w["low"], w["high"]
  if _unbounded(low) and _unbounded(high):
    return f"{diff} (n < 2)"
  low = "-inf" if _unbounded(low) else f.format(scale * low)
  high = "inf" if _unbounded(high) else f.format(scale * high)
  word = f" {w['verdict']}" if words is None else words.get(w["verdict"], "")
  return f"{diff} [{low}, {high}]{word}"


def pearson(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
  """Pearson's ``r`` and the two-sided ``p`` of ``r = 0`` (needs >= 3 pairs)."""
  from scipy import stats as sps  # noqa: PLC0415

  x, y = _values(x, "x"), _values(y, "y")
  if x.size != y.size or x.size < 3:
    raise ValueError(f"x, y: expected the same number (>= 3) of values, got {x.size} and {y.size}")
  r, p = sps.pearsonr(x, y)
  return {"r": float(r), "p": float(p), "n": int(x.size)}


def _features(x, y) -> tuple[jax.Array, jax.Array]:
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"x, y: expected paired features N x D and N x E, got {x.shape} and {y.shape}")
  if x.shape[0] < 3:
    raise ValueError(f"x, y: expected at least 3 pairs, got {x.shape[0]}")
  return x, y


@jax.jit
def _gaussian_mi(x, y, ridge):
  z = jnp.concatenate([x, y], axis=1)
  z = z - z.mean(0)
  cov = z.T @ z / (z.shape[0] - 1)
  dx = x.shape[1]
  var = jnp.diagonal(cov)
  # One regularised joint covariance; the marginals are its diagonal blocks, so that
  # Fischer's inequality (det S_xy <= det S_x det S_y) keeps the estimate >= 0.
  scale = jnp.concatenate([jnp.full((dx,), var[:dx].mean()), jnp.full((y.shape[1],), var[dx:].mean())])
  cov = cov + ridge * jnp.diag(jnp.maximum(scale, 1e-12))
  logdet = lambda m: jnp.linalg.slogdet(m)[1]  # noqa: E731
  return 0.5 * (logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov))


def gaussian_mi(x, y, ridge: float = 1e-3) -> float:
  """MI (nats) of paired features ``x`` (N x D) and ``y`` (N x E) under a joint Gaussian
  model; the joint covariance gets ``ridge`` times each block's mean variance on its
  diagonal, and the marginal covariances are its blocks (so the result is >= 0)."""
  x, y = _features(x, y)
  if ridge < 0:
    raise ValueError(f"ridge: expected >= 0, got {ridge}")
  return float(_gaussian_mi(x, y, jnp.float32(ridge)))


def _pairwise(a, b):
  return jnp.sqrt(jnp.maximum(jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2 * a @ b.T, 0.0))


def ksg_mi(x, y, k: int = 3, block: int = 512) -> float:
  """Kraskov-Stoegbauer-Grassberger MI estimate (nats, estimator 1) of paired features.

  ``O(N^2)`` distances, computed ``block`` rows at a time; exact ties are broken as in
  the paper (strictly closer than the k-th neighbour's joint distance)."""
  from jax.scipy.special import digamma  # noqa: PLC0415

  x, y = _features(x, y)
  n = x.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"k: expected 1 <= k < N={n}, got {k}")

  x_np, y_np = np.asarray(x), np.asarray(y)
  total = 0.0
  for start in range(0, n, block):  # host slices: one program per block shape, x and y its arguments
    total += float(_ksg_counts(x_np[start:start + block], y_np[start:start + block], x, y, np.int32(start), k))
  return float(digamma(float(k)) + digamma(float(n))) - total / n


@functools.partial(jax.jit, static_argnums=(5,))
def _ksg_counts(xb, yb, x, y, start, k: int):
  """The sum over a block of rows of digamma(n_x + 1) + digamma(n_y + 1) (``ksg_mi``)."""
  from jax.scipy.special import digamma  # noqa: PLC0415

  n = x.shape[0]
  dx, dy = _pairwise(xb, x), _pairwise(yb, y)
  self_mask = jnp.arange(n)[None, :] == (start + jnp.arange(xb.shape[0]))[:, None]
  dz = jnp.where(self_mask, jnp.inf, jnp.maximum(dx, dy))
  eps = -jax.lax.top_k(-dz, k)[0][:, -1]  # distance to the k-th neighbour in the joint space
  nx = jnp.sum((dx < eps[:, None]) & ~self_mask, 1)
  ny = jnp.sum((dy < eps[:, None]) & ~self_mask, 1)
  return jnp.sum(digamma(nx + 1.0) + digamma(ny + 1.0))
