"""Surrogate-free availability poisons: autoregressive (AR), linearly separable (LSP) and one-pixel shortcut (OPS).

None of them trains a model; each writes class-dependent shortcuts into the training
images. Every generator returns a perturbation in the representation of crafted poisons
(``crafting._finish`` and ``poison_io.save_poison``): float32 in pixel units, ``N x H x W
x C`` for mode ``"sample"`` (row i perturbs training example i) or ``K x H x W x C`` for
``"class"`` (row k perturbs every example of class k); sample-wise perturbations are
clipped to the [0, 1] box of their uint8 images exactly (``pgd.box_bounds_u8``), so no later
clipping changes them. ``generate`` makes one for a dataset, ``save_baseline`` writes it to
a poison directory with its manifest, which ``poison_io.load_poison`` and
``poison_io.apply`` read like any crafted poison; ``jaxprotect poison`` writes them too
(``craft.method`` ``ar``, ``lsp`` or ``ops``, settings in the ``baseline`` section; see
``unlearnable.crafting``).

* **AR** (Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein & Jacobs, "Autoregressive
  Perturbations for Data Poisoning", NeurIPS 2022). Each class has an AR process: per
  channel, 8 coefficients over a 3 x 3 window (the bottom-right entry, the pixel being
  generated, is 0) summing to 1. A perturbation starts from a Gaussian
  ``(H + crop) x (W + crop) x C`` signal, fills every pixel from row 2 and column 2 on (raster
  order) with the window's weighted sum, drops the first ``crop`` rows and columns (4) and is
  scaled to L2 norm ``eps`` (1.0). Every image draws its own start (mode ``"sample"``,
  the paper's); ``"class"`` draws one per class. The coefficients come from the authors'
  random search (``ar_coefficients``): Gaussian draws normalised per channel, kept when
  generated signals stay bounded and when every filter already kept responds strongly to the
  new process (the matching filter -- the coefficients with -1 at the generated pixel --
  gives 0 on its own process). The reference's thresholds on the lowest response of a
  non-matching filter are 10 for its 10 CIFAR-10 processes and 3 for its 100 CIFAR-100
  ones (32 x 32 images; scaled by ``sqrt(H W / 1024)`` here). Defaults here: 3 for more
  than 10 classes (100 processes found within 2 x 10^4 candidates) and 8, not 10, for up to
  10 classes -- at 10 the search needed ~10^5 candidates for one seed and did not finish
  within 1.5 x 10^5 for another (pass ``min_response=10`` to insist). The reference's bound
  on the generated norm (5) rejects its own published processes (norms 20-80 on 32 x 32 x
  3); this module bounds the root-mean-square value of the generated crop instead
  (``max_rms``, 1.5, which keeps them). ``coefficients=`` takes given processes (e.g. the
  published ones) instead of a search.
* **LSP** (Yu, Zhang, Chen, Yin & Liu, "Availability Attacks Create Shortcuts", KDD 2022;
  the authors' "synthetic perturbations"): points in ``D = ceil(H/p) ceil(W/p) C``
  dimensions (patch size ``p = 8``), one Gaussian cluster per class as scikit-learn's
  ``make_classification`` draws them in the reference (centre at a random vertex of the
  hypercube ``{-s, s}^D``, ``s = class_sep = 10``; the cluster's points ``centre + z A_k``
  with ``z ~ N(0, I)`` and ``A_k`` uniform in [-1, 1]), each coordinate repeated over a
  ``p x p`` patch of one channel (patch-wise constant noise), every perturbation scaled to L2
  norm ``eps = sqrt(H W C) * 6 / 255`` (1.30 on CIFAR). Mode ``"sample"`` is the reference
  (one point per example, drawn from its class's cluster); ``"class"`` uses the class
  centres themselves (one pattern of constant blocks per class).
* **OPS** (Wu, Chen, Xie & Huang, "One-Pixel Shortcut: on the Learning Preference of
  Deep Neural Networks", ICLR 2023): per class one pixel position and one colour out of
  the ``2^C`` corners of the colour cube, chosen on the clean training set to maximise
  ``mean / std`` of the change ``|colour - x|`` over the class's images and channels
  (a large and consistent change), classes in order, a (position, colour) pair taken by
  an earlier class being excluded; every image then has that pixel set to its class's
  colour (L0 = 1: one pixel per image). The statistics are exact integer sums over the
  uint8 images (a host pass); a zero standard deviation with a non-zero mean scores
  ``inf`` (a perfect shortcut), a zero change scores 0, ties go to the first (position,
  colour) in raster order. Position and colour are class-wise; the perturbation depends on
  the image, so it is stored sample-wise.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks, data, parallel
from jaxprotect.unlearnable import pgd, poison_io

__all__ = [
    "BASELINES", "LSP_LINF", "ar_coefficients", "ar_filter_response", "ar_noise", "ar_perturbation", "generate",
    "lsp_perturbation", "ops_perturbation", "ops_search", "save_baseline",
]

BASELINES = ("ar", "lsp", "ops")
LSP_LINF = 6 / 255  # the LSP reference's budget: L2 norm sqrt(H W C) * LSP_LINF


# ---------------------------------------------------------------- checks


def _check_images_labels(images_u8: Any, labels_N: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images_u8)
  checks.check_shape(images, "images_u8", ndim=4)
  if images.dtype != np.uint8:
    raise ValueError(f"images_u8: expected uint8 training images N x H x W x C, got dtype {images.dtype}")
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  labels = np.asarray(labels_N)
  checks.check_labels(labels, num_classes, "labels_N", batch=images.shape[0])
  return images, labels


def _check_eps(eps: Any) -> float:
  if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0 \
      or not math.isfinite(eps):
    raise ValueError(f"eps: expected an L2 radius > 0 in pixel units, got {eps!r}")
  return float(eps)


def _check_mode(mode: Any, allowed: tuple[str, ...] = ("sample", "class")) -> str:
  if mode not in allowed:
    raise ValueError(f"mode: expected one of {allowed}, got {mode!r}")
  return mode


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``N(0, 1)`` draws made flat and reshaped (XLA:CPU compiles a high-rank threefry draw for
  seconds)."""
  return jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape)


def _scale_l2(x_NxHxWxC: jax.Array, eps: float) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(x_NxHxWxC), axis=(1, 2, 3), keepdims=True))
  return x_NxHxWxC * (eps / jnp.maximum(norm, 1e-30))


def _box_clip(delta: jax.Array, images_u8: np.ndarray) -> np.ndarray:
  """``delta`` clipped so that ``u / 255 + delta`` is in [0, 1] exactly (float32, host)."""
  lower, upper = pgd.box_bounds_u8(jnp.asarray(images_u8))
  return np.asarray(jnp.clip(delta, lower, upper), np.float32)


# ---------------------------------------------------------------- AR


def _ar_signal(coef_3x3xC: jax.Array, start_SxTxC: jax.Array) -> jax.Array:
  """The AR recursion on one start signal: every pixel from row 2 and column 2 on, in raster
  order, becomes the coefficient-weighted sum of its 3 x 3 window (rows r-2..r, columns
  c-2..c; the pixel itself has coefficient 0). The two rows above enter as one vectorised
  sum per row; only the two pixels to the left run sequentially."""
  co = coef_3x3xC

  def row_step(rows, start_row):
    r0, r1 = rows
    above = (co[0, 0] * r0[:-2] + co[0, 1] * r0[1:-1] + co[0, 2] * r0[2:]
             + co[1, 0] * r1[:-2] + co[1, 1] * r1[1:-1] + co[1, 2] * r1[2:])  # (T - 2) x C

    def col_step(left, above_j):
      a, b = left  # the current row's two pixels left of the one generated
      val = above_j + co[2, 0] * a + co[2, 1] * b
      return (b, val), val

    _, vals = jax.lax.scan(col_step, (start_row[0], start_row[1]), above)
    row = jnp.concatenate([start_row[:2], vals], 0)
    return (r1, row), row

  _, rows = jax.lax.scan(row_step, (start_SxTxC[0], start_SxTxC[1]), start_SxTxC[2:])
  return jnp.concatenate([start_SxTxC[:2], rows], 0)


_ar_signals = jax.jit(jax.vmap(_ar_signal))  # (N x 3 x 3 x C, N x S x T x C) -> N x S x T x C


def _ar_filters(coefficients_Ax3x3xC: np.ndarray) -> np.ndarray:
  f = np.array(coefficients_Ax3x3xC, np.float64)
  f[:, 2, 2, :] = -1.0
  return f


def ar_filter_response(coefficients_Ax3x3xC: np.ndarray, signal_HxWxC: np.ndarray) -> np.ndarray:
  """The response of each AR process's matching filter (its coefficients with -1 at the
  generated pixel) to a signal: ``sum relu(conv)`` over the valid positions of the 3 x 3
  convolution summed over channels. 0 (up to rounding) for a signal of the process itself
  (past its start rows and columns); large for other processes. Shape ``A``."""
  f = _ar_filters(np.asarray(coefficients_Ax3x3xC))
  s = np.asarray(signal_HxWxC, np.float64)
  h, w, _ = s.shape
  out = sum(np.einsum("ac,hwc->ahw", f[:, a, b], s[a:h - 2 + a, b:w - 2 + b]) for a in range(3) for b in range(3))
  return np.maximum(out, 0.0).sum(axis=(1, 2))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _ar_candidates(key: jax.Array, batch: int, trials: int, h: int, w: int, c: int, crop: int):
  """``batch`` candidate coefficient sets (normalised ``N(0, 1)`` draws) and ``trials``
  cropped signals of each: ``(batch x 3 x 3 x C, batch x trials x H x W x C)``."""
  k_coef, k_start = jax.random.split(key)
  coef = _normal(k_coef, (batch, 3, 3, c)).at[:, 2, 2, :].set(0.0)
  coef = coef / jnp.sum(coef, axis=(1, 2), keepdims=True)
  starts = _normal(k_start, (batch * trials, h + crop, w + crop, c))
  sig = _ar_signals(jnp.repeat(coef, trials, axis=0), starts)[:, crop:, crop:]
  return coef, sig.reshape(batch, trials, h, w, c)


def ar_coefficients(key: jax.Array, num_classes: int, channels: int = 3, image_hw: tuple[int, int] = (32, 32),
                    crop: int = 4, min_response: float | None = None, max_rms: float = 1.5, trials: int = 3,
                    max_candidates: int | None = None, batch: int = 256) -> np.ndarray:
  """One AR process per class found by the reference's random search: ``K x 3 x 3 x C``
  float32 coefficients, entry ``[2, 2]`` zero, each channel's 8 others summing to 1.

  Candidates are ``N(0, 1)`` draws normalised per channel. A candidate is kept when its
  ``trials`` generated signals (``image_hw`` after dropping ``crop`` rows and columns) are
  finite with root-mean-square value at most ``max_rms``, and the lowest response of the
  processes kept so far (``ar_filter_response``) to its last signal, scaled to unit L2
  norm, is at least ``min_response`` (default: 8 for up to 10 classes, 3 for more; see the
  module docstring) times ``sqrt(H W / 1024)``. At most ``max_candidates`` (default
  ``5000 K``) are tried, ``batch`` at a time; a ValueError says when too few qualify.
  """
  k = checks.check_positive_int(num_classes, "num_classes", minimum=2)
  c = checks.check_positive_int(channels, "channels")
  h, w = (checks.check_positive_int(v, "image_hw") for v in image_hw)
  crop = checks.check_positive_int(crop, "crop", minimum=0)
  trials = checks.check_positive_int(trials, "trials")
  batch = checks.check_positive_int(batch, "batch")
  if min_response is None:
    min_response = 8.0 if k <= 10 else 3.0
  if not min_response >= 0:
    raise ValueError(f"min_response: expected a value >= 0, got {min_response!r}")
  if not max_rms > 0:
    raise ValueError(f"max_rms: expected a value > 0, got {max_rms!r}")
  max_candidates = checks.check_positive_int(5000 * k if max_candidates is None else max_candidates, "max_candidates")
  threshold = float(min_response) * math.sqrt(h * w / 1024.0)
  if h + crop < 3 or w + crop < 3:
    raise ValueError(f"image_hw: expected images of at least 3 x 3 pixels with the crop, got {image_hw} + {crop}")

  kept: list[np.ndarray] = []
  tried = 0
  for b in range(math.ceil(max_candidates / batch)):
    coef, sig = (np.asarray(a, np.float64) for a in _ar_candidates(jax.random.fold_in(key, b), batch, trials, h, w, c,
                                                                    crop))
    with np.errstate(over="ignore", invalid="ignore"):
      rms = np.sqrt(np.mean(np.square(sig), axis=(2, 3, 4)))  # batch x trials
    for i in range(batch):
      tried += 1
      if tried > max_candidates:
        break
      if not np.all(np.isfinite(coef[i])) or not np.all(np.isfinite(rms[i])) or rms[i].max() > max_rms:
        continue
      last = sig[i, -1]
      unit = last / max(np.sqrt(np.sum(last ** 2)), 1e-30)
      if kept and ar_filter_response(np.stack(kept), unit).min() < threshold:
        continue
      kept.append(coef[i])
      if len(kept) == k:
        return np.stack(kept).astype(np.float32)
  raise ValueError(f"min_response: found {len(kept)} of {k} AR processes in {max_candidates} candidates with "
                   f"min_response={min_response} (threshold {threshold:.3g}) and max_rms={max_rms}; lower "
                   "min_response, raise max_rms or max_candidates")


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _ar_chunk(key: jax.Array, coef: jax.Array, idx: jax.Array, y: jax.Array, h: int, w: int, crop: int) -> jax.Array:
  c = coef.shape[-1]
  starts = jax.vmap(lambda i: _normal(jax.random.fold_in(key, i), (h + crop, w + crop, c)))(idx)
  return _ar_signals(coef[y], starts)[:, crop:, crop:]


def ar_noise(key: jax.Array, coefficients_Kx3x3xC: Any, labels_N: Any, image_hw: tuple[int, int], crop: int = 4,
             chunk: int = 2048) -> jax.Array:
  """Unscaled AR signals, ``N x H x W x C`` float32: example ``i`` runs its class's process
  (``coefficients_Kx3x3xC[labels_N[i]]``) from the start ``N(0, I)`` drawn from
  ``fold_in(key, i)`` (so the result does not depend on ``chunk``), cropped by ``crop``."""
  coef = jnp.asarray(coefficients_Kx3x3xC, jnp.float32)
  checks.check_shape(coef, "coefficients_Kx3x3xC", ndim=4)
  if coef.shape[1:3] != (3, 3):
    raise ValueError(f"coefficients_Kx3x3xC: expected shape (K, 3, 3, C), got {tuple(coef.shape)}")
  labels = np.asarray(labels_N)
  checks.check_labels(labels, coef.shape[0], "labels_N")
  h, w = (checks.check_positive_int(v, "image_hw") for v in image_hw)
  crop = checks.check_positive_int(crop, "crop", minimum=0)
  n = labels.shape[0]
  chunk = min(checks.check_positive_int(chunk, "chunk"), max(n, 1))

  parts = []
  for start in range(0, n, chunk):
    idx = np.arange(start, start + chunk)
    y = labels[np.minimum(idx, n - 1)]
    rows = _ar_chunk(key, coef, jnp.asarray(idx, jnp.int32), jnp.asarray(y, jnp.int32), h, w, crop)
    parts.append(rows[: min(chunk, n - start)])
  return jnp.concatenate(parts, 0)


def ar_perturbation(key: jax.Array, images_u8: Any, labels_N: Any, num_classes: int, eps: float = 1.0,
                    mode: str = "sample", crop: int = 4, coefficients: Any = None, **search: Any) -> np.ndarray:
  """AR perturbations of L2 norm ``eps`` (1.0): ``N x H x W x C`` (``"sample"``: a fresh
  signal per image, clipped to the images' [0, 1] box, so the norm is at most ``eps``) or
  ``K x H x W x C`` (``"class"``: one signal per class, norm exactly ``eps``).
  ``coefficients`` (``K x 3 x 3 x C``) default to ``ar_coefficients(fold_in(key, 0), ...,
  **search)``."""
  images, labels = _check_images_labels(images_u8, labels_N, num_classes)
  eps, mode = _check_eps(eps), _check_mode(mode)
  _, h, w, c = images.shape
  if coefficients is None:
    coefficients = ar_coefficients(jax.random.fold_in(key, 0), num_classes, c, (h, w), crop, **search)
  coefficients = np.asarray(coefficients, np.float32)
  if coefficients.shape != (num_classes, 3, 3, c):
    raise ValueError(f"coefficients: expected shape {(num_classes, 3, 3, c)}, got {coefficients.shape}")
  rows = labels if mode == "sample" else np.arange(num_classes)
  delta = _scale_l2(ar_noise(jax.random.fold_in(key, 1), coefficients, rows, (h, w), crop), eps)
  return _box_clip(delta, images) if mode == "sample" else np.asarray(delta, np.float32)


# ---------------------------------------------------------------- LSP


def _distinct_signs(key: jax.Array, k: int, d: int) -> jax.Array:
  if d < 64 and 2 ** d < k:
    raise ValueError(f"patch_size: {k} classes need distinct patterns of {d} patch values, but only 2^{d} exist; "
                     "use a smaller patch_size")
  for attempt in range(100):
    signs = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, attempt), 0.5, (k * d,)), 1.0, -1.0).reshape(k, d)
    if len({row.tobytes() for row in np.asarray(signs)}) == k:
      return signs
  raise ValueError(f"patch_size: could not draw {k} distinct hypercube vertices in {d} dimensions")


@jax.jit
def _cluster_points(centres: jax.Array, mix: jax.Array, z: jax.Array, y: jax.Array) -> jax.Array:
  """``centres[y] + z mix[y]`` chunk by chunk (``z``: chunks x n x D, ``y``: chunks x n)."""
  return jax.lax.map(lambda zy: centres[zy[1]] + jnp.einsum("nd,nde->ne", zy[0], mix[zy[1]]), (z, y))


def lsp_perturbation(key: jax.Array, images_u8: Any, labels_N: Any, num_classes: int, eps: float | None = None,
                     patch_size: int = 8, mode: str = "sample", class_sep: float = 10.0) -> np.ndarray:
  """LSP perturbations of L2 norm ``eps`` (default ``sqrt(H W C) * 6 / 255``): patch-wise
  constant noise from one Gaussian cluster per class (``"sample"``, the reference: clipped
  to the images' [0, 1] box, so the norm is at most ``eps``) or the clusters' centres
  (``"class"``: ``K`` patterns of constant ``patch_size`` blocks, norm exactly ``eps``)."""
  images, labels = _check_images_labels(images_u8, labels_N, num_classes)
  mode = _check_mode(mode)
  _, h, w, c = images.shape
  eps = _check_eps(math.sqrt(h * w * c) * LSP_LINF if eps is None else eps)
  p = checks.check_positive_int(patch_size, "patch_size")
  if not class_sep > 0:
    raise ValueError(f"class_sep: expected a value > 0, got {class_sep!r}")
  nh, nw = -(-h // p), -(-w // p)
  d = nh * nw * c
  k_centre, k_z, k_a = jax.random.split(key, 3)
  centres = float(class_sep) * _distinct_signs(k_centre, num_classes, d)
  if mode == "class":
    points = centres
  else:
    n = labels.shape[0]
    mix = jax.random.uniform(k_a, (num_classes * d * d,), minval=-1.0, maxval=1.0).reshape(num_classes, d, d)
    chunk = max(1, min(n, (1 << 22) // (d * d)))
    pad = -n % chunk
    y = jnp.asarray(np.concatenate([labels, np.zeros(pad, labels.dtype)]), jnp.int32).reshape(-1, chunk)
    z = _normal(k_z, (n + pad, d)).reshape(-1, chunk, d)

    points = _cluster_points(centres, mix, z, y).reshape(n + pad, d)[:n]
  blocks = points.reshape(-1, nh, nw, c)
  noise = jnp.repeat(jnp.repeat(blocks, p, axis=1), p, axis=2)[:, :h, :w, :]
  delta = _scale_l2(noise, eps)
  return _box_clip(delta, images) if mode == "sample" else np.asarray(delta, np.float32)


# ---------------------------------------------------------------- OPS


def _colour_bits(c: int) -> np.ndarray:
  """``2^C x C`` corners of the colour cube; channel 0 is the most significant bit."""
  v = np.arange(2 ** c)
  return ((v[:, None] >> (c - 1 - np.arange(c))[None, :]) & 1).astype(np.int64)


def ops_search(images_u8: Any, labels_N: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OPS's search on the clean training set: ``(positions_Kx2, colours_KxC, scores_K)``,
  per class the pixel (row, column) and the colour (0/1 per channel) maximising
  ``mean / std`` of ``|colour - x|`` over the class's images and channels, a pair taken by
  an earlier class excluded. Exact integer statistics on the host (see the module
  docstring for zeros and ties)."""
  images, labels = _check_images_labels(images_u8, labels_N, num_classes)
  _, h, w, c = images.shape
  bits = _colour_bits(c)  # V x C
  positions = np.zeros((num_classes, 2), np.int32)
  colours = np.zeros((num_classes, c), np.uint8)
  scores = np.zeros(num_classes, np.float64)
  taken: set[tuple[int, int]] = set()
  for k in range(num_classes):
    x = images[labels == k]
    n = x.shape[0]
    if n == 0:
      raise ValueError(f"labels_N: class {k} has no training examples; OPS chooses its pixel from them")
    xi = x.astype(np.int64)
    u1 = xi.sum(axis=0).reshape(h * w, c)         # sum of u
    u2 = (xi * xi).sum(axis=0).reshape(h * w, c)  # sum of u^2
    # |colour - u / 255| in units of 1/255: u (colour 0) or 255 - u (colour 1).
    a_c = np.where(bits[None, :, :] == 1, 255 * n - u1[:, None, :], u1[:, None, :])                 # HW x V x C
    b_c = np.where(bits[None, :, :] == 1, 255 * 255 * n - 2 * 255 * u1[:, None, :] + u2[:, None, :],
                   u2[:, None, :])
    a, b, m = a_c.sum(-1), b_c.sum(-1), n * c
    var_num = b * m - a * a  # (m^2 255^2) x variance, an exact integer >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
      score = np.where(var_num > 0, a / np.sqrt(var_num.astype(np.float64)), np.where(a > 0, np.inf, 0.0))
    for pos, col in taken:
      score[pos, col] = -np.inf
    best = int(np.argmax(score))  # first maximum in (position, colour) order
    pos, col = divmod(best, bits.shape[0])
    taken.add((pos, col))
    positions[k] = divmod(pos, w)
    colours[k] = bits[col]
    scores[k] = score[pos, col]
  return positions, colours, scores


def ops_perturbation(images_u8: Any, labels_N: Any, num_classes: int, positions: Any = None,
                     colours: Any = None) -> np.ndarray:
  """OPS perturbations, ``N x H x W x C`` float32: zero except at the pixel of each image's
  class, where ``u / 255 + delta`` is the class's colour (0 or 1 per channel; the exact box
  bounds). ``positions`` (``K x 2``) and ``colours`` (``K x C``) default to ``ops_search``'s."""
  images, labels = _check_images_labels(images_u8, labels_N, num_classes)
  n, h, w, c = images.shape
  if positions is None or colours is None:
    positions, colours, _ = ops_search(images, labels, num_classes)
  positions, colours = np.asarray(positions), np.asarray(colours)
  checks.check_shape(positions, "positions", shape=(num_classes, 2))
  checks.check_shape(colours, "colours", shape=(num_classes, c))
  if np.any(positions < 0) or np.any(positions[:, 0] >= h) or np.any(positions[:, 1] >= w):
    raise ValueError(f"positions: expected (row, column) pairs inside {h} x {w} images, got {positions.tolist()}")
  if not np.all(np.isin(colours, (0, 1))):
    raise ValueError(f"colours: expected 0 or 1 per channel (corners of the colour cube), got {colours.tolist()}")
  rows, cols = positions[labels, 0], positions[labels, 1]
  pixels = images[np.arange(n), rows, cols]  # N x C
  lower, upper = (np.asarray(v) for v in pgd.box_bounds_u8(jnp.asarray(pixels)))
  delta = np.zeros(images.shape, np.float32)
  delta[np.arange(n), rows, cols] = np.where(colours[labels] == 1, upper, lower)
  return delta


# ---------------------------------------------------------------- poison directories


def generate(name: str, ds: data.DeviceDataset, *, seed: int = 0, mode: str | None = None,
             **kwargs: Any) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
  """Baseline ``name`` (``"ar"``, ``"lsp"``, ``"ops"``) for the training split of ``ds``:
  ``(delta, craft, stats)`` -- the perturbation (host float32), the record of how it was
  made (method, mode, budget ``eps`` and ``norm``, seed and settings: the ``craft`` section
  of its manifest) and its statistics (the AR coefficients or the OPS pixels and colours,
  the largest absolute value). Arguments as ``save_baseline``; every process calls it when
  the split spans processes (its images are gathered to the host)."""
  if name not in BASELINES:
    raise ValueError(f"name: expected one of {BASELINES}, got {name!r}")
  mode = _check_mode("sample" if mode is None else mode, ("sample",) if name == "ops" else ("sample", "class"))
  seed = int(checks.check_positive_int(seed, "seed", minimum=0))
  images = parallel.to_host(ds.train.images)  # collectives when the split spans processes: every process calls
  labels = parallel.to_host(ds.train.labels)
  key = jax.random.PRNGKey(seed)
  k = ds.num_classes
  stats: dict[str, Any] = {}
  if name == "ar":
    eps = kwargs.pop("eps", 1.0)
    crop = kwargs.pop("crop", 4)
    coefficients = kwargs.pop("coefficients", None)
    if coefficients is None:
      coefficients = ar_coefficients(jax.random.fold_in(key, 0), k, images.shape[-1], images.shape[1:3], crop,
                                     **kwargs)
    delta = ar_perturbation(key, images, labels, k, eps, mode, crop, coefficients)
    settings = {"crop": crop, **kwargs}
    stats["coefficients"] = np.asarray(coefficients).round(6).tolist()
    norm = "l2"
  elif name == "lsp":
    eps = kwargs.pop("eps", None)
    _, h, w, c = images.shape
    eps = math.sqrt(h * w * c) * LSP_LINF if eps is None else eps
    delta = lsp_perturbation(key, images, labels, k, eps, mode=mode, **kwargs)
    settings, norm = dict(kwargs), "l2"
  else:
    positions, colours = kwargs.pop("positions", None), kwargs.pop("colours", None)
    if kwargs:
      raise ValueError(f"kwargs: OPS takes positions and colours only, got {sorted(kwargs)}")
    if positions is None or colours is None:
      positions, colours, scores = ops_search(images, labels, k)
      stats["scores"] = [float(s) if np.isfinite(s) else str(s) for s in scores]
    delta = ops_perturbation(images, labels, k, positions, colours)
    stats.update(positions=np.asarray(positions).tolist(), colours=np.asarray(colours).tolist())
    eps, settings, norm = None, {"pixels": 1}, "l0"
  stats["max_abs"] = float(np.abs(delta).max())
  craft = {"method": name, "mode": mode, "eps": None if eps is None else float(eps), "norm": norm, "seed": seed,
           **settings}
  return np.asarray(delta, np.float32), craft, stats


def save_baseline(directory: os.PathLike | str, name: str, ds: data.DeviceDataset, *, seed: int = 0,
                  mode: str | None = None, preview: bool = False, config: dict[str, Any] | None = None,
                  **kwargs: Any) -> dict[str, Any] | None:
  """Generates baseline ``name`` (``"ar"``, ``"lsp"``, ``"ops"``) for the training split of
  ``ds`` and writes it as a poison directory (``poison_io.save_poison``); returns the
  manifest (None on processes other than the first). ``mode``: ``"sample"`` (default) or
  ``"class"`` (AR, LSP). ``kwargs`` go to the generator (``eps``, ``crop``,
  ``coefficients``, ``min_response``, ... for AR; ``eps``, ``patch_size``, ``class_sep``
  for LSP; ``positions``, ``colours`` for OPS). Keys come from ``seed``. The manifest's
  ``craft`` section records the method, mode, budget (``eps`` and ``norm``), seed and
  settings (``generate``); ``config`` adds more sections to the recorded config (e.g. the
  ``data`` section); its stats the AR coefficients or the OPS pixels and colours.
  ``preview``: also ``preview.png`` (``poison_io.save_preview``, the perturbation scaled by
  its largest value).
  """
  if config is not None and (not isinstance(config, dict) or "craft" in config):
    raise ValueError("config: expected a dict of config sections other than 'craft' (the baseline's own record)")
  delta, craft, stats = generate(name, ds, seed=seed, mode=mode, **kwargs)
  if not parallel.is_main_process():
    return None
  manifest = poison_io.save_poison(directory, delta, craft["mode"], ds, config={**(config or {}), "craft": craft},
                                   stats=stats)
  if preview and stats["max_abs"] > 0:
    poison_io.save_preview(os.path.join(directory, "preview.png"), ds, delta, craft["mode"], stats["max_abs"])
  return manifest
