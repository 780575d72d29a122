"""Vision privacy of a synthetic set: how close is each synthetic image to a real training
image?

Dataset condensation is claimed to protect the membership of the training images (Dong,
Zhao & Lyu, "Privacy for Free: How does Dataset Condensation Help Privacy?", ICML 2022,
whose section on visual privacy compares synthetic images with their nearest real
images); Carlini, Feldman & Nasr ("No Free Lunch in 'Privacy for Free'", arXiv
2209.14987) argue that the comparison needs baselines. This module measures, on device
and in chunks:

* ``nearest(queries, references, metric=...)`` -- for every query image its ``k`` nearest
  reference images under the L2 distance in pixel space (``metric="l2"``) or the highest
  structural similarity (``metric="ssim"``), optionally excluding one reference per query
  (the query itself when it is a real image);
* ``ssim`` / ``ssim_matrix`` -- SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004): local
  statistics under an 11 x 11 Gaussian window of standard deviation 1.5 (normalised to sum
  1), ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` with ``K1 = 0.01``, ``K2 = 0.03`` and data range
  ``L = 1``, the map over the *valid* window positions (the authors' ``filter2(..., 'valid')``)
  averaged over positions and channels::

    SSIM(x, y) = mean [(2 mu_x mu_y + C1)(2 s_xy + C2)] / [(mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)]

  with ``mu = G * x``, ``s_x^2 = G * x^2 - mu_x^2``, ``s_xy = G * (x y) - mu_x mu_y``
  (Gaussian-weighted, biased); the window is separable, so ``G * x`` is two small matrix
  products (``M_H x M_W^T``);
* ``nearest_distance_summary(values)`` -- the distribution (mean, quantiles) of
  nearest-neighbour values;
* ``neighbour_analysis(...)`` -- the report behind ``neighbours.json``: the synthetic set
  against the real training set, and two baselines: a random real subset of the same size
  against the *other* real images (each excluding itself), and the real images that
  initialised condensation against the other real images; with real initialisation also
  the distance of every synthetic image to its own initial image;
* ``closest_pairs_png(path, ...)`` -- the ``k`` closest synthetic / real pairs side by side.

L2 search: ``|q|^2 + |r|^2 - 2 <q, r>`` by chunked matrix products (full float32
precision) selects a few candidates per query; their distances are then recomputed
directly as ``sqrt(sum (q - r)^2)``, so an image copied from the reference set has
distance exactly 0 to its source. Ties go to the lower reference position.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks, platform

__all__ = [
    "METRICS", "Neighbours", "QUANTILES", "closest_pairs_png", "gaussian_window", "nearest",
    "nearest_distance_summary", "neighbour_analysis", "ssim", "ssim_matrix",
]

METRICS = ("l2", "ssim")
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
_HIGHEST = jax.lax.Precision.HIGHEST
# Extra L2 candidates per query, re-ranked by the direct distance (guards against the
# rounding of the expanded form reordering near ties).
_L2_MARGIN = 4


class Neighbours(NamedTuple):
  """The ``k`` nearest references of each query, best first.

  values_QxK: L2 distances (ascending) or SSIM values (descending), float32 numpy.
  positions_QxK: positions in the reference set (int64). ids_QxK: the references' ids
  (``reference_ids[positions]``; the positions when no ids were given). metric: "l2" or
  "ssim".
  """

  values_QxK: np.ndarray
  positions_QxK: np.ndarray
  ids_QxK: np.ndarray
  metric: str


# ---------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------

def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """The 1-D Gaussian ``exp(-(i - c)^2 / (2 sigma^2))`` normalised to sum 1 (float64); the
  2-D window of Wang et al. (``fspecial('gaussian', 11, 1.5)``) is its outer product."""
  size = checks.check_positive_int(size, "size")
  checks.check_positive(sigma, "sigma")
  i = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-i * i / (2.0 * sigma * sigma))
  return g / g.sum()


def _valid_filter_matrix(n: int, g: np.ndarray) -> np.ndarray:
  """``(n - len(g) + 1) x n``: row ``i`` holds ``g`` at columns ``i .. i + len(g) - 1`` (a
  'valid' correlation with ``g`` as a matrix product)."""
  m = np.zeros((n - g.size + 1, n), np.float64)
  for i in range(m.shape[0]):
    m[i, i:i + g.size] = g
  return m


@functools.lru_cache(maxsize=32)
def _filters(h: int, w: int, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
  if h < size or w < size:
    raise ValueError(f"images: SSIM needs images of at least {size} x {size} pixels (the window), got {h} x {w}")
  g = gaussian_window(size, sigma)
  return _valid_filter_matrix(h, g).astype(np.float32), _valid_filter_matrix(w, g).astype(np.float32)


def _blur(x_XxHxWxC: jax.Array, mh_IxH: jax.Array, mw_JxW: jax.Array) -> jax.Array:
  """The Gaussian-weighted local means over the valid window positions: ``... x I x J x C``."""
  t = jnp.einsum("ih,...hwc->...iwc", mh_IxH, x_XxHxWxC, precision=_HIGHEST)
  return jnp.einsum("jw,...iwc->...ijc", mw_JxW, t, precision=_HIGHEST)


def _ssim_from_stats(mu_x, mu_y, exx, eyy, exy, c1: float, c2: float) -> jax.Array:
  sxx, syy, sxy = exx - mu_x * mu_x, eyy - mu_y * mu_y, exy - mu_x * mu_y
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * sxy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
  return jnp.mean(num / den, axis=(-3, -2, -1))


def _constants(data_range: float, k1: float, k2: float) -> tuple[float, float]:
  checks.check_positive(data_range, "data_range")
  checks.check_positive(k1, "k1")
  checks.check_positive(k2, "k2")
  return float((k1 * data_range) ** 2), float((k2 * data_range) ** 2)


def _check_images(x: Any, name: str) -> tuple[int, ...]:
  checks.check_shape(x, name, ndim=4)
  return tuple(np.shape(x))


# u / 255 for every uint8 value, correctly rounded to float32 (numpy's division): a table,
# so that device and host conversions of the same image agree to the bit.
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _as_float(x: Any) -> jax.Array:
  """Pixels as float32: uint8 read as ``u / 255`` (``_UINT8_TO_FLOAT``), floats as they are."""
  x = jnp.asarray(x)
  return jnp.asarray(_UINT8_TO_FLOAT)[x] if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def _host_float(x: Any) -> np.ndarray:
  x = np.asarray(x)
  return _UINT8_TO_FLOAT[x] if x.dtype == np.uint8 else x.astype(np.float32)


def ssim(x_BxHxWxC: Any, y_BxHxWxC: Any, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """The mean SSIM of each pair ``(x[b], y[b])`` (Wang et al. 2004; see the module
  docstring), float32 ``B``. Images: float pixels (data range ``data_range``) or uint8
  (read as ``u / 255``), at least ``window`` pixels on each side; the channels are
  averaged. 1 for identical images."""
  sx, sy = _check_images(x_BxHxWxC, "x_BxHxWxC"), _check_images(y_BxHxWxC, "y_BxHxWxC")
  if sx != sy:
    raise ValueError(f"y_BxHxWxC: expected the shape of x_BxHxWxC {sx}, got {sy}")
  c1, c2 = _constants(data_range, k1, k2)
  mh, mw = _filters(sx[1], sx[2], checks.check_positive_int(window, "window"), float(sigma))
  return _ssim_pairs(_as_float(x_BxHxWxC), _as_float(y_BxHxWxC), jnp.asarray(mh), jnp.asarray(mw), c1, c2)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _ssim_pairs(x, y, mh, mw, c1, c2):
  return _ssim_from_stats(_blur(x, mh, mw), _blur(y, mh, mw), _blur(x * x, mh, mw), _blur(y * y, mh, mw),
                          _blur(x * y, mh, mw), c1, c2)


def _ssim_block(q_QxHxWxC, mu_q, eqq, r_RxHxWxC, mh, mw, c1, c2) -> jax.Array:
  """SSIM of every query against every reference of a chunk: ``Q x R``."""
  mu_r, err = _blur(r_RxHxWxC, mh, mw), _blur(r_RxHxWxC * r_RxHxWxC, mh, mw)
  eqr = _blur(q_QxHxWxC[:, None] * r_RxHxWxC[None], mh, mw)
  return _ssim_from_stats(mu_q[:, None], mu_r[None], eqq[:, None], err[None], eqr, c1, c2)


def ssim_matrix(x_QxHxWxC: Any, y_RxHxWxC: Any, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
                k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """SSIM of every ``x[q]`` against every ``y[r]``: float32 ``Q x R`` (``ssim`` for all pairs,
  in one program; for large sets use ``nearest(..., metric="ssim")``, which works in chunks)."""
  sx, sy = _check_images(x_QxHxWxC, "x_QxHxWxC"), _check_images(y_RxHxWxC, "y_RxHxWxC")
  if sx[1:] != sy[1:]:
    raise ValueError(f"y_RxHxWxC: expected images of shape {sx[1:]} (as x_QxHxWxC), got {sy[1:]}")
  c1, c2 = _constants(data_range, k1, k2)
  mh, mw = _filters(sx[1], sx[2], checks.check_positive_int(window, "window"), float(sigma))
  return _ssim_all(_as_float(x_QxHxWxC), _as_float(y_RxHxWxC), jnp.asarray(mh), jnp.asarray(mw), c1, c2)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _ssim_all(x, y, mh, mw, c1, c2):
  return _ssim_block(x, _blur(x, mh, mw), _blur(x * x, mh, mw), y, mh, mw, c1, c2)


# ---------------------------------------------------------------------------------------
# Nearest neighbours, in chunks
# ---------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("metric", "kk", "c1", "c2"))
def _search(q_QxHxWxC, refs_SxRxHxWxC, exclude_Q, n, mh, mw, *, metric: str, kk: int, c1: float, c2: float):
  """Scans the reference chunks keeping, per query, the ``kk`` best scores (higher is
  better: ``-|q - r|^2`` expanded, or SSIM) and their positions."""
  qn = q_QxHxWxC.shape[0]
  chunk = refs_SxRxHxWxC.shape[1]
  q_flat = q_QxHxWxC.reshape(qn, -1)
  q_sq = jnp.sum(q_flat * q_flat, axis=1)
  if metric == "ssim":
    mu_q, eqq = _blur(q_QxHxWxC, mh, mw), _blur(q_QxHxWxC * q_QxHxWxC, mh, mw)

  def body(carry, xs):
    best, best_pos = carry
    r_raw, start = xs
    r = _as_float(r_raw)
    pos = start + jnp.arange(chunk, dtype=jnp.int32)
    if metric == "l2":
      r_flat = r.reshape(chunk, -1)
      dot = jnp.einsum("qd,rd->qr", q_flat, r_flat, precision=_HIGHEST)
      score = -(q_sq[:, None] + jnp.sum(r_flat * r_flat, axis=1)[None, :] - 2.0 * dot)
    else:
      score = _ssim_block(q_QxHxWxC, mu_q, eqq, r, mh, mw, c1, c2)
    bad = (pos[None, :] >= n) | (pos[None, :] == exclude_Q[:, None])
    score = jnp.where(bad, -jnp.inf, score)
    top, idx = jax.lax.top_k(score, kk)
    merged = jnp.concatenate([best, top], axis=1)
    merged_pos = jnp.concatenate([best_pos, pos[idx]], axis=1)
    keep, order = jax.lax.top_k(merged, kk)  # ties: the earlier entry, i.e. the lower position
    return (keep, jnp.take_along_axis(merged_pos, order, axis=1)), None

  init = (jnp.full((qn, kk), -jnp.inf, jnp.float32), jnp.full((qn, kk), -1, jnp.int32))
  starts = jnp.arange(refs_SxRxHxWxC.shape[0], dtype=jnp.int32) * chunk
  (best, best_pos), _ = jax.lax.scan(body, init, (refs_SxRxHxWxC, starts))
  if metric == "ssim":
    return best, best_pos
  # The L2 candidates re-ranked by their directly computed distance (exact 0 for a copy).
  flat = refs_SxRxHxWxC.reshape(-1, q_flat.shape[1])
  cand = _as_float(flat[jnp.maximum(best_pos, 0)])  # Q x kk x D
  dist = jnp.sqrt(jnp.sum(jnp.square(q_flat[:, None, :] - cand), axis=-1))
  dist = jnp.where(jnp.isfinite(best), dist, jnp.inf)
  order = jnp.argsort(dist, axis=1, stable=True)
  return jnp.take_along_axis(dist, order, axis=1), jnp.take_along_axis(best_pos, order, axis=1)


def nearest(queries_QxHxWxC: Any, references_NxHxWxC: Any, *, metric: str = "l2", k: int = 1,
            exclude_Q: Any = None, reference_ids: Any = None, chunk: int = 0, query_chunk: int = 0,
            data_range: float = 1.0) -> Neighbours:
  """The ``k`` nearest references of every query, computed on device in chunks.

  queries_QxHxWxC, references_NxHxWxC: pixels (float, e.g. in [0, 1]; or uint8, read as
  ``u / 255``; the references stay in their dtype on device and are converted chunk by
  chunk). metric: "l2" (Euclidean distance of the pixel vectors, ascending) or "ssim"
  (``ssim`` with data range ``data_range``, descending). exclude_Q: per query a reference
  position never to return (-1: none), e.g. the query's own position when the queries are
  real images. reference_ids: the references' ids, reported in ``ids_QxK``.
  chunk / query_chunk: references / queries per block (0: 4096 / 1024 for L2, 256 / 32
  for SSIM, whose blocks hold ``query_chunk x chunk`` images).

  ValueError for another image shape, ``k`` above the number of references that can be
  returned, or an unknown metric.
  """
  if metric not in METRICS:
    raise ValueError(f"metric: expected one of {', '.join(repr(m) for m in METRICS)}, got {metric!r}")
  sq, sr = _check_images(queries_QxHxWxC, "queries_QxHxWxC"), _check_images(references_NxHxWxC, "references_NxHxWxC")
  if sq[1:] != sr[1:]:
    raise ValueError(f"references_NxHxWxC: expected images of shape {sq[1:]} (the queries'), got {sr[1:]}")
  qn, n = sq[0], sr[0]
  k = checks.check_positive_int(k, "k")
  exclude = np.full((qn,), -1, np.int32) if exclude_Q is None else np.asarray(exclude_Q).astype(np.int32)
  checks.check_shape(exclude, "exclude_Q", shape=(qn,))
  available = n - (1 if exclude_Q is not None and np.any(exclude >= 0) else 0)
  if k > available:
    raise ValueError(f"k: expected at most {available} (the references that can be returned), got {k}")
  if reference_ids is not None:
    checks.check_shape(reference_ids, "reference_ids", shape=(n,))
  if qn == 0:
    empty = np.zeros((0, k), np.int64)
    return Neighbours(np.zeros((0, k), np.float32), empty, empty, metric)
  c1, c2 = _constants(data_range, 0.01, 0.03)
  big = metric == "l2"
  chunk = min(max(checks.check_positive_int(chunk, "chunk", minimum=0) or (4096 if big else 256), k), n)
  query_chunk = min(checks.check_positive_int(query_chunk, "query_chunk", minimum=0) or (1024 if big else 32), qn)
  kk = min(k + (_L2_MARGIN if big else 0), chunk)
  if metric == "ssim":
    mh, mw = (jnp.asarray(m) for m in _filters(sq[1], sq[2], 11, 1.5))
  else:
    mh = mw = jnp.zeros((0,), jnp.float32)
  refs = np.asarray(references_NxHxWxC)
  steps = -(-n // chunk)
  pad = steps * chunk - n
  if pad:
    refs = np.concatenate([refs, np.zeros((pad, *sr[1:]), refs.dtype)])
  refs = jnp.asarray(refs.reshape(steps, chunk, *sr[1:]))
  queries = _host_float(queries_QxHxWxC)
  qpad = -(-qn // query_chunk) * query_chunk - qn
  if qpad:
    queries = np.concatenate([queries, np.zeros((qpad, *sq[1:]), np.float32)])
    exclude = np.concatenate([exclude, np.full((qpad,), -1, np.int32)])
  values, positions = [], []
  for s in range(0, qn + qpad, query_chunk):
    v, p = _search(jnp.asarray(queries[s:s + query_chunk]), refs, jnp.asarray(exclude[s:s + query_chunk]),
                   jnp.int32(n), mh, mw, metric=metric, kk=kk, c1=c1, c2=c2)
    values.append(np.asarray(v)[:, :k])
    positions.append(np.asarray(p)[:, :k])
  values_QxK = np.concatenate(values)[:qn].astype(np.float32)
  positions_QxK = np.concatenate(positions)[:qn].astype(np.int64)
  ids = positions_QxK if reference_ids is None else np.asarray(reference_ids).astype(np.int64)[positions_QxK]
  return Neighbours(values_QxK, positions_QxK, ids, metric)


# ---------------------------------------------------------------------------------------
# Summaries and the report
# ---------------------------------------------------------------------------------------

def nearest_distance_summary(values: Any, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
  """The distribution of nearest-neighbour values (a vector, or the first column of a
  ``Neighbours.values_QxK``): count, mean, std and the ``quantiles`` (JSON-able floats)."""
  v = np.asarray(values, np.float64)
  if v.ndim == 2:
    v = v[:, 0]
  checks.check_shape(v, "values", ndim=1)
  if v.size == 0:
    return {"count": 0}
  return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
          "quantiles": {f"{q:g}": float(np.quantile(v, q)) for q in quantiles}}


def neighbour_analysis(synthetic_QxHxWxC: Any, real_NxHxWxC: Any, real_ids_N: Any, *, init_ids: Any = None,
                       seed: int = 0, metrics: Sequence[str] = METRICS, chunk: int = 0,
                       ) -> tuple[dict[str, Any], dict[str, Neighbours]]:
  """The nearest real training images of a synthetic set, with the baselines of Carlini et
  al. (see the module docstring).

  synthetic_QxHxWxC: the synthetic images in pixel space (float; as condensation left
  them, not clipped). real_NxHxWxC: the real training images (uint8 or float in [0, 1])
  with their ids ``real_ids_N``. init_ids: the ids of the real images each synthetic image
  started from (None, or -1 entries, for noise). seed: draws the random real subset (as
  many images as the synthetic set, without replacement).

  Returns ``(report, synthetic_neighbours)``: a JSON-able report -- for each metric the
  summary (``nearest_distance_summary``) of the synthetic set's nearest real images, of the
  random real subset's nearest *other* real images and of the initial images' nearest other
  real images, per synthetic image its nearest id and value, and, with real
  initialisation, the value between each synthetic image and its initial image and how
  often that initial image is the nearest one -- and the synthetic set's ``Neighbours``
  per metric (for ``closest_pairs_png``).
  """
  qs, rs = _check_images(synthetic_QxHxWxC, "synthetic_QxHxWxC"), _check_images(real_NxHxWxC, "real_NxHxWxC")
  ids = np.asarray(real_ids_N).astype(np.int64)
  checks.check_shape(ids, "real_ids_N", shape=(rs[0],))
  q, n = qs[0], rs[0]
  if q > n - 1:
    raise ValueError(f"synthetic_QxHxWxC: expected fewer images than the {n} real ones, got {q}")
  for m in metrics:
    if m not in METRICS:
      raise ValueError(f"metrics: expected names among {', '.join(METRICS)}, got {m!r}")
  position = {int(i): p for p, i in enumerate(ids)}
  init = None
  if init_ids is not None:
    init_ids = np.asarray(init_ids).astype(np.int64)
    checks.check_shape(init_ids, "init_ids", shape=(q,))
    if np.all(init_ids >= 0):
      missing = [int(i) for i in init_ids if int(i) not in position]
      if missing:
        raise ValueError(f"init_ids: ids {missing[:5]} are not among the real images' ids")
      init = np.array([position[int(i)] for i in init_ids], np.int64)
  subset = np.sort(np.random.default_rng(seed).choice(n, size=q, replace=False))
  syn = np.asarray(synthetic_QxHxWxC, np.float32)
  real = np.asarray(real_NxHxWxC)
  real_float = _host_float(real)
  report: dict[str, Any] = {"num_synthetic": q, "num_real": n, "random_subset_seed": int(seed),
                            "space": "pixels (synthetic images unclipped)", "metrics": {}}
  found: dict[str, Neighbours] = {}
  for m in metrics:
    nb = nearest(syn, real, metric=m, reference_ids=ids, chunk=chunk)
    found[m] = nb
    entry = {
        "synthetic": nearest_distance_summary(nb.values_QxK),
        "random_real_subset": nearest_distance_summary(
            nearest(real_float[subset], real, metric=m, exclude_Q=subset, chunk=chunk).values_QxK),
        "synthetic_nearest_ids": nb.ids_QxK[:, 0].tolist(),
        "synthetic_nearest_values": [float(v) for v in nb.values_QxK[:, 0]],
    }
    if init is not None:
      entry["init_real"] = nearest_distance_summary(
          nearest(real_float[init], real, metric=m, exclude_Q=init, chunk=chunk).values_QxK)
      to_init = (np.sqrt(np.sum(np.square(syn - real_float[init]).reshape(q, -1), axis=1)) if m == "l2"
                 else np.asarray(ssim(syn, real_float[init])))
      entry["synthetic_to_init"] = nearest_distance_summary(to_init)
      entry["synthetic_to_init_values"] = [float(v) for v in to_init]
      entry["nearest_is_init_fraction"] = float(np.mean(nb.positions_QxK[:, 0] == init))
    report["metrics"][m] = entry
  report["random_subset_ids"] = ids[subset].tolist()
  return report, found


def closest_pairs_png(path: os.PathLike | str, synthetic_QxHxWxC: Any, real_NxHxWxC: Any,
                      neighbours: Mapping[str, Neighbours] | Neighbours, k: int = 8,
                      labels_Q: Any = None) -> bool:
  """The ``k`` closest synthetic / real pairs side by side: per metric two rows, the
  synthetic images over their nearest real images, best pair first, titled with the value
  (and the real id). Pixels are clipped to [0, 1] for display only. Without matplotlib
  (the ``plot`` extra) nothing is drawn and a warning is logged; returns whether it wrote
  ``path``."""
  if isinstance(neighbours, Neighbours):
    neighbours = {neighbours.metric: neighbours}
  syn = np.asarray(synthetic_QxHxWxC, np.float32)
  real = _host_float(real_NxHxWxC)
  k = min(checks.check_positive_int(k, "k"), syn.shape[0])
  plt = platform.pyplot(f"the closest synthetic/real pairs {path}")
  if plt is None:
    return False
  rows = 2 * len(neighbours)
  fig, axes = plt.subplots(rows, k, figsize=(1.25 * k, 1.45 * rows), squeeze=False)
  gray = syn.shape[-1] == 1
  for b, (metric, nb) in enumerate(neighbours.items()):
    first = nb.values_QxK[:, 0]
    order = np.argsort(first if metric == "l2" else -first, kind="stable")[:k]
    for c, qi in enumerate(order):
      pair = (syn[qi], real[nb.positions_QxK[qi, 0]])
      for r, img in enumerate(pair):
        ax = axes[2 * b + r][c]
        img = np.clip(img, 0.0, 1.0)
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
          lab = "" if labels_Q is None else f" c{int(np.asarray(labels_Q)[qi])}"
          ax.set_title(f"{metric} {first[qi]:.3g}{lab}", fontsize=6)
        else:
          ax.set_title(f"id {int(nb.ids_QxK[qi, 0])}", fontsize=6)
      if c == 0:
        axes[2 * b][0].set_ylabel("synthetic", fontsize=7)
        axes[2 * b + 1][0].set_ylabel(f"nearest ({metric})", fontsize=7)
    for c in range(len(order), k):
      axes[2 * b][c].axis("off")
      axes[2 * b + 1][c].axis("off")
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True

