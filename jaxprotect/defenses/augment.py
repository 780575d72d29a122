"""Training-time augmentations that defend against unlearnable examples, inside jit from explicit keys.

Images are float ``B x H x W x C`` in [0, 1] (NHWC), as in ``jaxprotect.data.augment``;
labels are int ``B``; soft labels are float ``B x K`` whose rows sum to 1. Every example
gets its own random parameters, all drawn from the one key given (a few draws per batch),
so the same key gives the same output.

* **MixUp** (Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk
  Minimization", ICLR 2018): ``lam ~ Beta(alpha, alpha)`` (reference ``alpha = 1.0``), one
  ``lam`` per batch and the partner of each example from a random permutation of the
  batch, as the authors' CIFAR code; images and one-hot labels are mixed with the same
  ``lam``.
* **CutMix** (Yun, Han, Oh, Chun, Choe & Yoo, "CutMix: Regularization Strategy to Train
  Strong Classifiers with Localizable Features", ICCV 2019): ``lam ~ Beta(alpha, alpha)``
  (``alpha = 1.0``), a box of sides ``floor(H sqrt(1 - lam))`` x ``floor(W sqrt(1 - lam))``
  centred at a uniform pixel and clipped at the border is pasted from the partner; the
  partner's label weight is the pasted area fraction (the reference recomputes ``lam`` from
  the clipped box in the same way). Both mix every batch they are given; the CutMix
  reference mixes a batch with probability ``cutmix_prob`` (0.5 in its CIFAR scripts), a
  choice for the caller.
* **Random resized crop** (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015; the
  torchvision recipe): area fraction in ``scale = (0.08, 1)``, aspect ratio log-uniform in
  ``(3/4, 4/3)``, up to 10 draws then a centre crop, resized back bilinearly.
* **UEraser** (Qin, Gao, Zhao, Ye & Xu, "Learning the Unlearnable: Adversarial
  Augmentations Suppress Unlearnable Example Attacks", ICCV 2023 Workshop AROW,
  arXiv:2303.15127): each image gets ``K`` (reference 5) independently augmented copies and
  the training loss of an image is the *largest* loss over its copies
  (``max_loss_select``, ``ueraser_loss``). The reference policy (kornia layers), which
  ``UEraserConfig()`` follows: plasma brightness (p 0.5; adds ``intensity * (2 P - 1)``,
  intensity 0.5..1), plasma contrast (p 0.5; maps ``x`` to ``0.5 + 4 P (x - 0.5)``), with
  ``P`` a fractal map in [0, 1] per channel of roughness 0.3..0.7, channel shuffle (p 0.5),
  then one TrivialAugment operation (Mueller & Hutter, ICCV 2021) out of kornia's default
  list: autocontrast, equalize, rotate (30 degrees), posterize (0..3 bits kept), solarize
  (threshold 0..1), contrast, brightness and sharpness (factors 0.1..1.9), shear x/y (0.3),
  translate x/y (half the side); the magnitude is uniform up to these limits with a random
  sign. Everything is clipped to [0, 1]. ``TA_OPS`` also offers identity and colour (the
  wide space's other two). Random erasing (Zhong et al., AAAI 2020) is an option (p 0 by
  default, as in the reference). The reference trains with K = 5 for the first 60 of 200
  epochs and K = 1 ("UEraser-Lite") afterwards; that schedule belongs to the training
  recipe.

Documented deviations: the plasma maps are octaves of bilinearly upsampled uniform grids
(amplitude ``roughness ** octave``, rescaled to [0, 1]) rather than the diamond-square
algorithm; every view draws its own TrivialAugment operation (kornia draws one per call,
i.e. per batch of copies); brightness, contrast, colour and sharpness are PIL's
enhancements (blends with black, the mean grey, the luma and a smoothed image; kornia's
brightness adds ``factor - 1`` instead); geometric operations turn about the image centre,
sample the nearest pixel and fill with 0; equalize follows PIL's lookup table per channel.

The engine hook: a *transform* ``transform(key, state, batch) -> batch`` (``mix_transform``,
``ueraser_transform``, ``as_transform``) is run inside the jitted step through the engine's
state hook (``defenses.as_hook``, ``train.with_state``) with a key folded from the run key
and step; ``defenses.Defense`` picks one by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks, losses

__all__ = [
    "REFERENCE_TA_OPS", "TA_OPS", "UEraserConfig", "as_transform", "cutmix", "max_loss_select", "max_loss_weights",
    "mix_transform", "mixup", "random_erase", "random_resized_crop", "random_resized_crop_batch", "soft_cross_entropy",
    "soft_label_loss", "ueraser_augment", "ueraser_copies", "ueraser_loss", "ueraser_transform",
]

# The operations of TrivialAugment's wide space, in the order ``_trivial_augment`` indexes them.
TA_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
          "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_GEOMETRIC = 6  # TA_OPS[1:6] move pixels; the rest change values
# The reference's list (kornia's TrivialAugment default): the wide space without identity and colour.
REFERENCE_TA_OPS = ("autocontrast", "equalize", "rotate", "posterize", "solarize", "contrast", "brightness",
                    "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


def _uniform(key: jax.Array, shape: tuple[int, ...], minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
  """``jax.random.uniform`` drawn flat and reshaped: XLA:CPU compiles the threefry of a
  high-rank shape for seconds (a 5-D draw ~10x longer than the same numbers flat)."""
  return jax.random.uniform(key, (int(np.prod(shape)),), minval=minval, maxval=maxval).reshape(shape)


def _beta(key: jax.Array, alpha: float) -> jax.Array:
  """``Beta(alpha, alpha)``; for ``alpha = 1`` (the references') the uniform distribution it
  equals, without the gamma sampler's rejection loop."""
  if alpha == 1.0:
    return jax.random.uniform(key)
  return jax.random.beta(key, alpha, alpha)


def _check_images(images: Any, name: str = "images_BxHxWxC") -> tuple[int, int, int, int]:
  checks.check_shape(images, name, ndim=4)
  checks.check_floating(images, name)
  return tuple(int(s) for s in np.shape(images))


def _check_alpha(alpha: Any) -> float:
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) or not alpha > 0:
    raise ValueError(f"alpha: expected a Beta concentration > 0 (reference 1.0), got {alpha!r}")
  return float(alpha)


def _check_range(pair: Any, name: str, lo: float, hi: float) -> tuple[float, float]:
  try:
    a, b = (float(v) for v in pair)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected a pair (low, high), got {pair!r}") from None
  if not lo <= a <= b <= hi:
    raise ValueError(f"{name}: expected {lo} <= low <= high <= {hi}, got {pair!r}")
  return a, b


def _check_prob(p: Any, name: str) -> float:
  if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p <= 1.0:
    raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
  return float(p)


# ---------------------------------------------------------------- soft labels


def soft_cross_entropy(logits_BxK: jax.Array, targets_BxK: jax.Array) -> jax.Array:
  """Per-example cross-entropy against soft targets, ``-sum_k t_k log softmax(z)_k``
  (float32). ``targets_BxK``: rows of non-negative weights summing to 1."""
  b, k = checks.check_logits(logits_BxK, "logits_BxK")
  checks.check_shape(targets_BxK, "targets_BxK", shape=(b, k))
  checks.check_floating(targets_BxK, "targets_BxK")
  logp = jax.nn.log_softmax(logits_BxK.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets_BxK.astype(jnp.float32) * logp, axis=-1)


def soft_label_loss() -> Callable:
  """A ``train`` loss ``loss_fn(outputs, batch) -> loss_B``: ``soft_cross_entropy`` against
  ``batch["soft_label"]`` (written by ``mix_transform``)."""

  def loss_fn(outputs, batch):
    if "soft_label" not in batch:
      raise ValueError("batch: soft_label_loss needs batch['soft_label'] (B x K); train with mix_transform")
    return soft_cross_entropy(outputs[0], batch["soft_label"])

  return loss_fn


# ---------------------------------------------------------------- MixUp and CutMix


def mixup(key: jax.Array, images_BxHxWxC: jax.Array, labels_B: jax.Array, num_classes: int,
          alpha: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """MixUp: ``(lam x + (1 - lam) x[perm], lam onehot(y) + (1 - lam) onehot(y[perm]))`` with one
  ``lam ~ Beta(alpha, alpha)`` per batch and ``perm`` a random permutation. Returns the
  mixed images and soft labels ``B x num_classes``."""
  b, _, _, _ = _check_images(images_BxHxWxC)
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  checks.check_labels(labels_B, num_classes, "labels_B", batch=b)
  alpha = _check_alpha(alpha)
  k_lam, k_perm = jax.random.split(key)
  lam = _beta(k_lam, alpha).astype(images_BxHxWxC.dtype)
  perm = jax.random.permutation(k_perm, b)
  onehot = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
  x = lam * images_BxHxWxC + (1 - lam) * images_BxHxWxC[perm]
  y = lam.astype(jnp.float32) * onehot + (1 - lam.astype(jnp.float32)) * onehot[perm]
  return x, y


def _cutmix_box(key: jax.Array, h: int, w: int, lam: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The reference's box: sides ``floor(side * sqrt(1 - lam))``, centre uniform, clipped."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(h * cut).astype(jnp.int32)
  cut_w = jnp.floor(w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
  return (jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h),
          jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w))


def cutmix(key: jax.Array, images_BxHxWxC: jax.Array, labels_B: jax.Array, num_classes: int,
           alpha: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """CutMix: a box drawn from ``lam ~ Beta(alpha, alpha)`` (one per batch) is pasted from a
  random permutation of the batch; the soft label is ``(1 - a) onehot(y) + a onehot(y[perm])``
  with ``a`` the pasted area fraction (after clipping at the border)."""
  b, h, w, _ = _check_images(images_BxHxWxC)
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  checks.check_labels(labels_B, num_classes, "labels_B", batch=b)
  alpha = _check_alpha(alpha)
  k_lam, k_perm, k_box = jax.random.split(key, 3)
  lam = _beta(k_lam, alpha)
  perm = jax.random.permutation(k_perm, b)
  y1, y2, x1, x2 = _cutmix_box(k_box, h, w, lam)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
  x = jnp.where(inside[None, :, :, None], images_BxHxWxC[perm], images_BxHxWxC)
  area = ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (h * w)
  onehot = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
  return x, (1 - area) * onehot + area * onehot[perm]


def mix_transform(method: str, num_classes: int, alpha: float = 1.0) -> Callable:
  """``transform(key, state, batch) -> batch`` for the engine's state hook (``as_hook``): the batch's
  images mixed by ``method`` (``"mixup"`` or ``"cutmix"``) and its soft labels as
  ``batch["soft_label"]`` (train with ``soft_label_loss()``; ``batch["label"]`` stays, for
  the accuracy metric)."""
  fns = {"mixup": mixup, "cutmix": cutmix}
  if method not in fns:
    raise ValueError(f"method: expected 'mixup' or 'cutmix', got {method!r}")
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  alpha = _check_alpha(alpha)

  def transform(key, state, batch):
    del state
    x, soft = fns[method](key, batch["image"], batch["label"], num_classes, alpha)
    return {**batch, "image": x, "soft_label": soft}

  return transform


def as_transform(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable:
  """``transform(key, state, batch) -> batch`` that replaces the images by
  ``fn(key, images_BxHxWxC)`` (e.g. ``random_resized_crop_batch``, or ``ueraser_copies``
  with one copy: UEraser-Lite)."""

  def transform(key, state, batch):
    del state
    return {**batch, "image": fn(key, batch["image"])}

  return transform


# ---------------------------------------------------------------- sampling helpers


def _bilinear(image_HxWxC: jax.Array, ys_HxW: jax.Array, xs_HxW: jax.Array) -> jax.Array:
  """Bilinear samples at fractional pixel coordinates, edges repeated."""
  h, w, _ = image_HxWxC.shape
  ys = jnp.clip(ys_HxW, 0.0, h - 1.0)
  xs = jnp.clip(xs_HxW, 0.0, w - 1.0)
  y0 = jnp.floor(ys).astype(jnp.int32)
  x0 = jnp.floor(xs).astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  top = image_HxWxC[y0, x0] * (1 - wx) + image_HxWxC[y0, x1] * wx
  bottom = image_HxWxC[y1, x0] * (1 - wx) + image_HxWxC[y1, x1] * wx
  return (top * (1 - wy) + bottom * wy).astype(image_HxWxC.dtype)


def _nearest(image_HxWxC: jax.Array, ys_HxW: jax.Array, xs_HxW: jax.Array, fill: float = 0.0) -> jax.Array:
  """Nearest-neighbour samples; positions outside the image get ``fill``."""
  h, w, _ = image_HxWxC.shape
  yi = jnp.round(ys_HxW).astype(jnp.int32)
  xi = jnp.round(xs_HxW).astype(jnp.int32)
  valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
  out = image_HxWxC[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
  return jnp.where(valid[..., None], out, jnp.asarray(fill, image_HxWxC.dtype))


def _affine(image_HxWxC: jax.Array, matrix_2x2: jax.Array, shift_2: jax.Array) -> jax.Array:
  """Output pixel ``p`` reads input ``matrix (p - c) + c - shift`` (``c`` the centre);
  nearest-neighbour, filled with 0."""
  h, w, _ = image_HxWxC.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
  src_y = matrix_2x2[0, 0] * ys + matrix_2x2[0, 1] * xs + cy - shift_2[0]
  src_x = matrix_2x2[1, 0] * ys + matrix_2x2[1, 1] * xs + cx - shift_2[1]
  return _nearest(image_HxWxC, src_y, src_x)


# ---------------------------------------------------------------- random resized crop
#
# Random draws are made for the whole batch in a few calls and the per-image work is a
# deterministic function of them: XLA:CPU compiles each (vmapped) threefry call for seconds.


def _resized_crop(image_HxWxC: jax.Array, u_23: jax.Array, scale: tuple[float, float],
                  ratio: tuple[float, float]) -> jax.Array:
  """The crop of ``random_resized_crop`` from 22 uniforms (10 areas, 10 log-ratios, 2 positions)."""
  h, w, _ = image_HxWxC.shape
  tries = 10
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u_23[:tries])
  aspect = jnp.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_23[tries:2 * tries])
  cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(ok)
  # Fallback (no draw fits): the whole image, narrowed to the ratio range, centred.
  in_ratio = w / h
  if in_ratio < ratio[0]:
    fw, fh = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    fw, fh = int(round(h * ratio[1])), h
  else:
    fw, fh = w, h
  found = ok[first]
  crop_h = jnp.where(found, ch[first], fh)
  crop_w = jnp.where(found, cw[first], fw)
  top = jnp.where(found, jnp.floor(u_23[2 * tries] * (h - crop_h + 1)), (h - fh) // 2).astype(jnp.float32)
  left = jnp.where(found, jnp.floor(u_23[2 * tries + 1] * (w - crop_w + 1)), (w - fw) // 2).astype(jnp.float32)
  ys = top + (jnp.arange(h, dtype=jnp.float32) + 0.5) * crop_h / h - 0.5
  xs = left + (jnp.arange(w, dtype=jnp.float32) + 0.5) * crop_w / w - 0.5
  ys = jnp.clip(ys, top, top + crop_h - 1)
  xs = jnp.clip(xs, left, left + crop_w - 1)
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return _bilinear(image_HxWxC, yy, xx)


def _check_crop(scale: Any, ratio: Any) -> tuple[tuple[float, float], tuple[float, float]]:
  scale = _check_range(scale, "scale", 0.0, 1.0)
  ratio = _check_range(ratio, "ratio", 1e-6, math.inf)
  if scale[1] <= 0:
    raise ValueError(f"scale: expected an upper bound > 0, got {scale!r}")
  return scale, ratio


def random_resized_crop_batch(key: jax.Array, images_BxHxWxC: jax.Array, scale: tuple[float, float] = (0.08, 1.0),
                              ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Per image: a crop of area fraction ``U(scale)`` and aspect ratio log-uniform in
  ``ratio`` (up to 10 draws; else the centre crop clamped to ``ratio``), resized back to
  H x W bilinearly."""
  b, _, _, _ = _check_images(images_BxHxWxC)
  scale, ratio = _check_crop(scale, ratio)
  u = _uniform(key, (b, 22))
  return jax.vmap(lambda im, uu: _resized_crop(im, uu, scale, ratio))(images_BxHxWxC, u)


def random_resized_crop(key: jax.Array, image_HxWxC: jax.Array, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """``random_resized_crop_batch`` of one image (H x W x C)."""
  checks.check_shape(image_HxWxC, "image_HxWxC", ndim=3)
  return random_resized_crop_batch(key, image_HxWxC[None], scale, ratio)[0]


# ---------------------------------------------------------------- UEraser


@dataclasses.dataclass(frozen=True)
class UEraserConfig:
  """The UEraser policy (defaults: the reference's, see the module docstring).

  plasma_brightness, plasma_contrast, channel_shuffle: probabilities of each step.
  brightness_intensity: range of the plasma brightness amplitude (the offset is
    ``intensity * (2 P - 1)``; contrast maps ``x`` to ``0.5 + 4 P (x - 0.5)``).
    roughness: range of the plasma roughness.
  trivial_augment: apply one TrivialAugment operation last, uniform over ``ta_ops`` (names
    of ``TA_OPS``; default the reference's list).
  shear, translate, rotate, enhance: largest magnitudes (shear factor; translation as a
    fraction of the side; degrees; enhancement factor ``1 +- enhance``).
  posterize_bits: range of kept bits (inclusive). erase: probability of random erasing afterwards,
    with area fraction ``erase_scale`` and aspect ratio ``erase_ratio``, filled with
    uniform noise.
  """

  plasma_brightness: float = 0.5
  brightness_intensity: tuple[float, float] = (0.5, 1.0)
  plasma_contrast: float = 0.5
  roughness: tuple[float, float] = (0.3, 0.7)
  channel_shuffle: float = 0.5
  trivial_augment: bool = True
  ta_ops: tuple[str, ...] = REFERENCE_TA_OPS
  shear: float = 0.3
  translate: float = 0.5
  rotate: float = 30.0
  enhance: float = 0.9
  posterize_bits: tuple[int, int] = (0, 3)
  erase: float = 0.0
  erase_scale: tuple[float, float] = (0.02, 0.33)
  erase_ratio: tuple[float, float] = (0.3, 3.3)

  def __post_init__(self):
    for name in ("plasma_brightness", "plasma_contrast", "channel_shuffle", "erase"):
      _check_prob(getattr(self, name), name)
    _check_range(self.brightness_intensity, "brightness_intensity", 0.0, 1.0)
    _check_range(self.roughness, "roughness", 0.0, 1.0)
    _check_range(self.erase_scale, "erase_scale", 0.0, 1.0)
    _check_range(self.erase_ratio, "erase_ratio", 1e-6, math.inf)
    lo, hi = self.posterize_bits
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 8):
      raise ValueError(f"posterize_bits: expected integers 0 <= low <= high <= 8, got {self.posterize_bits!r}")
    if not self.ta_ops or any(op not in TA_OPS for op in self.ta_ops):
      raise ValueError(f"ta_ops: expected a non-empty tuple of names from {TA_OPS}, got {self.ta_ops!r}")
    for name in ("shear", "translate", "rotate", "enhance"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"{name}: expected a magnitude >= 0, got {getattr(self, name)!r}")


def _gray(image_HxWxC: jax.Array) -> jax.Array:
  """Luma (ITU-R 601-2, as PIL's "L") of an RGB image, H x W x 1; the channel mean if C != 3."""
  if image_HxWxC.shape[-1] != 3:
    return jnp.mean(image_HxWxC, axis=-1, keepdims=True)
  return (image_HxWxC @ jnp.array([0.299, 0.587, 0.114], image_HxWxC.dtype))[..., None]


def _interp_matrix(size: int, points: int) -> np.ndarray:
  """``size x points`` weights of linear interpolation from ``points`` evenly spaced samples
  spanning ``[0, size - 1]`` (a constant: upsampling is two small matrix products)."""
  pos = np.arange(size) * (points - 1) / max(size - 1, 1)
  lo = np.minimum(np.floor(pos).astype(int), points - 2)
  frac = pos - lo
  m = np.zeros((size, points), np.float32)
  m[np.arange(size), lo] = 1 - frac
  m[np.arange(size), lo + 1] = frac
  return m


def _octaves(h: int, w: int) -> list[int]:
  """Grid sizes of the fractal's octaves: 2^(o+1) + 1 points, up to the image's side."""
  return [2 ** (o + 1) + 1 for o in range(max(1, math.ceil(math.log2(max(h, w)))))]


def _fractal(grids: list[jax.Array], roughness: jax.Array, h: int, w: int) -> jax.Array:
  """Fractal noise in [0, 1], H x W x C, one map per channel, from uniform [-1, 1] grids
  (``C x g x g`` per octave, see ``_octaves``): each upsampled bilinearly and weighted
  ``roughness ** octave``, every channel's map rescaled to [0, 1] (a plasma-like map)."""
  field = 0.0
  for o, grid in enumerate(grids):
    g = grid.shape[-1]
    field = field + roughness ** o * jnp.einsum("hg,cgk,wk->hwc", _interp_matrix(h, g), grid, _interp_matrix(w, g))
  lo, hi = jnp.min(field, axis=(0, 1)), jnp.max(field, axis=(0, 1))
  return (field - lo) / jnp.maximum(hi - lo, 1e-12)


def _smooth(image_HxWxC: jax.Array) -> jax.Array:
  """PIL's SMOOTH filter (3 x 3, centre 5, others 1, / 13) inside, border pixels kept."""
  h, w, _ = image_HxWxC.shape
  if h < 3 or w < 3:
    return image_HxWxC
  p = image_HxWxC
  acc = sum(p[a:h - 2 + a, b:w - 2 + b] * (5.0 if (a, b) == (1, 1) else 1.0) for a in range(3) for b in range(3))
  return p.at[1:h - 1, 1:w - 1].set(acc / 13.0)


def _equalize(image_HxWxC: jax.Array) -> jax.Array:
  """PIL's ImageOps.equalize per channel on the 256 grey levels (identity for a channel
  whose histogram has one non-empty bin)."""
  q = jnp.clip(jnp.round(image_HxWxC * 255.0), 0, 255).astype(jnp.int32)

  def channel(qc):
    hist = jnp.bincount(qc.reshape(-1), length=256)
    last = hist[255 - jnp.argmax(hist[::-1] > 0)]  # count of the highest non-empty level
    step = (jnp.sum(hist) - last) // 255
    before = jnp.cumsum(hist) - hist
    lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
    return jnp.where(step > 0, lut[qc], qc)

  out = jax.vmap(channel, in_axes=-1, out_axes=-1)(q)
  return (out.astype(jnp.float32) / 255.0).astype(image_HxWxC.dtype)


def _posterize(image_HxWxC: jax.Array, bits: jax.Array) -> jax.Array:
  q = jnp.clip(jnp.round(image_HxWxC * 255.0), 0, 255).astype(jnp.int32)
  step = jnp.left_shift(1, 8 - bits)
  return ((q // step) * step).astype(image_HxWxC.dtype) / 255.0


def _autocontrast(image_HxWxC: jax.Array) -> jax.Array:
  lo = jnp.min(image_HxWxC, axis=(0, 1), keepdims=True)
  hi = jnp.max(image_HxWxC, axis=(0, 1), keepdims=True)
  return jnp.where(hi > lo, (image_HxWxC - lo) / jnp.where(hi > lo, hi - lo, 1.0), image_HxWxC)


def _trivial_augment(op: jax.Array, magnitude: jax.Array, sign: jax.Array, x: jax.Array,
                     cfg: UEraserConfig) -> jax.Array:
  """Operation ``TA_OPS[op]`` at ``magnitude`` in [0, 1] of its largest value, signed by
  ``sign`` (+-1) where the operation has a direction."""
  h, w, _ = x.shape
  m, s = magnitude, sign
  # Geometric operations: one affine map whose parameters depend on the operation.
  shear, shift = s * m * cfg.shear, s * m * cfg.translate
  theta = jnp.deg2rad(s * m * cfg.rotate)
  eye = jnp.eye(2)
  mats = jnp.stack([eye, eye + jnp.array([[0.0, 0.0], [1.0, 0.0]]) * shear,
                    eye + jnp.array([[0.0, 1.0], [0.0, 0.0]]) * shear, eye, eye,
                    jnp.array([[jnp.cos(theta), jnp.sin(theta)], [-jnp.sin(theta), jnp.cos(theta)]])])
  shifts = jnp.stack([jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.array([0.0, shift * w]),
                      jnp.array([shift * h, 0.0]), jnp.zeros(2)])
  geo = jnp.where(op < _GEOMETRIC, op, 0)
  x = jnp.where(op < _GEOMETRIC, _affine(x, mats[geo], shifts[geo]), x)
  # Value operations.
  factor = 1.0 + s * m * cfg.enhance
  lo_bits, hi_bits = cfg.posterize_bits
  bits = jnp.minimum(lo_bits + jnp.floor(m * (hi_bits - lo_bits + 1)).astype(jnp.int32), hi_bits)
  threshold = (1.0 - m) * 256.0 / 255.0

  def enhance(img, degenerate):
    return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)

  branches = [
      lambda img: img,
      lambda img: jnp.clip(img * factor, 0.0, 1.0),                      # brightness
      lambda img: enhance(img, jnp.broadcast_to(_gray(img), img.shape)),  # color
      lambda img: enhance(img, jnp.mean(_gray(img))),                     # contrast
      lambda img: enhance(img, _smooth(img)),                             # sharpness
      lambda img: _posterize(img, bits),
      lambda img: jnp.where(img >= threshold, 1.0 - img, img),            # solarize
      _autocontrast,
      _equalize,
  ]
  idx = jnp.where(op < _GEOMETRIC, 0, op - _GEOMETRIC + 1)
  return jax.lax.switch(idx, branches, x).astype(x.dtype)


def _erase(u_4: jax.Array, noise_HxWxC: jax.Array, image_HxWxC: jax.Array, scale: tuple[float, float],
           ratio: tuple[float, float]) -> jax.Array:
  """Random erasing from 4 uniforms (area, log-ratio, top, left) and the fill."""
  h, w, _ = image_HxWxC.shape
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u_4[0])
  aspect = jnp.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_4[1])
  eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
  ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
  top = jnp.floor(u_4[2] * (h - eh + 1)).astype(jnp.int32)
  left = jnp.floor(u_4[3] * (w - ew + 1)).astype(jnp.int32)
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew)
  return jnp.where(inside[..., None], noise_HxWxC.astype(image_HxWxC.dtype), image_HxWxC)


def random_erase(key: jax.Array, image_HxWxC: jax.Array, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> jax.Array:
  """A rectangle of area fraction ``U(scale)`` and aspect ratio log-uniform in ``ratio``
  (clipped to the image), at a uniform position, replaced by uniform noise."""
  checks.check_shape(image_HxWxC, "image_HxWxC", ndim=3)
  scale = _check_range(scale, "scale", 0.0, 1.0)
  ratio = _check_range(ratio, "ratio", 1e-6, math.inf)
  u = _uniform(key, (4 + int(np.prod(image_HxWxC.shape)),))
  return _erase(u[:4], u[4:].reshape(image_HxWxC.shape), image_HxWxC, scale, ratio)


# Columns of the per-view uniforms drawn by ``_ueraser_draws``.
_U_ROUGH_B, _U_INTENSITY, _U_P_B, _U_ROUGH_C, _U_P_C, _U_P_SHUFFLE, _U_OP, _U_MAG, _U_SIGN, _U_P_ERASE = range(10)
_U_ERASE = slice(10, 14)
_U_COUNT = 14


def _ueraser_draws(key: jax.Array, lead: tuple[int, ...], h: int, w: int, c: int, cfg: UEraserConfig) -> dict:
  """Every random number of ``prod(lead)`` UEraser views, in a few calls."""
  ks = jax.random.split(key, 4)
  draws = {"u": _uniform(ks[0], lead + (_U_COUNT,)),
           "order": _uniform(ks[1], lead + (c,))}  # argsort: a uniform channel permutation
  if cfg.plasma_brightness > 0 or cfg.plasma_contrast > 0:
    grid_keys = jax.random.split(ks[2], len(_octaves(h, w)))
    draws["grids"] = [_uniform(gk, lead + (2, c, g, g), -1.0, 1.0)
                      for gk, g in zip(grid_keys, _octaves(h, w))]
  if cfg.erase > 0:
    draws["noise"] = _uniform(ks[3], lead + (h, w, c))
  return draws


def _ueraser_apply(d: dict, image_HxWxC: jax.Array, cfg: UEraserConfig) -> jax.Array:
  """One UEraser view of one image from its draws (see ``ueraser_augment``)."""
  h, w, c = image_HxWxC.shape
  u = d["u"]
  x = image_HxWxC

  def lerp(lo_hi, t):
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t

  if cfg.plasma_brightness > 0:
    plasma = _fractal([g[0] for g in d["grids"]], lerp(cfg.roughness, u[_U_ROUGH_B]), h, w)
    bright = jnp.clip(x + lerp(cfg.brightness_intensity, u[_U_INTENSITY]) * (2.0 * plasma - 1.0), 0.0, 1.0)
    x = jnp.where(u[_U_P_B] < cfg.plasma_brightness, bright, x)
  if cfg.plasma_contrast > 0:
    plasma = _fractal([g[1] for g in d["grids"]], lerp(cfg.roughness, u[_U_ROUGH_C]), h, w)
    contrast = jnp.clip(0.5 + (x - 0.5) * (4.0 * plasma), 0.0, 1.0)
    x = jnp.where(u[_U_P_C] < cfg.plasma_contrast, contrast, x)
  if cfg.channel_shuffle > 0 and c > 1:
    x = jnp.where(u[_U_P_SHUFFLE] < cfg.channel_shuffle, x[..., jnp.argsort(d["order"])], x)
  if cfg.trivial_augment:
    table = jnp.array([TA_OPS.index(name) for name in cfg.ta_ops], jnp.int32)
    op = table[jnp.minimum(jnp.floor(u[_U_OP] * len(table)).astype(jnp.int32), len(table) - 1)]
    x = _trivial_augment(op, u[_U_MAG], jnp.where(u[_U_SIGN] < 0.5, 1.0, -1.0), x, cfg)
  if cfg.erase > 0:
    erased = _erase(u[_U_ERASE], d["noise"], x, cfg.erase_scale, cfg.erase_ratio)
    x = jnp.where(u[_U_P_ERASE] < cfg.erase, erased, x)
  return x.astype(image_HxWxC.dtype)


def ueraser_augment(key: jax.Array, image_HxWxC: jax.Array, config: UEraserConfig = UEraserConfig()) -> jax.Array:
  """One UEraser view of one image (float H x W x C in [0, 1]): plasma brightness, plasma
  contrast, channel shuffle (each with its probability), one TrivialAugment operation of
  ``config.ta_ops``, optional random erasing; the result stays in [0, 1]."""
  checks.check_shape(image_HxWxC, "image_HxWxC", ndim=3)
  checks.check_floating(image_HxWxC, "image_HxWxC")
  h, w, c = image_HxWxC.shape
  return _ueraser_apply(_ueraser_draws(key, (), h, w, c, config), image_HxWxC, config)


def ueraser_copies(key: jax.Array, images_BxHxWxC: jax.Array, copies: int = 5,
                   config: UEraserConfig = UEraserConfig()) -> jax.Array:
  """``copies`` independent UEraser views of every image: ``K x B x H x W x C``."""
  b, h, w, c = _check_images(images_BxHxWxC)
  k = checks.check_positive_int(copies, "copies")
  draws = _ueraser_draws(key, (k, b), h, w, c, config)
  one = lambda d, im: _ueraser_apply(d, im, config)  # noqa: E731
  return jax.vmap(jax.vmap(one), in_axes=(0, None))(draws, images_BxHxWxC)


def max_loss_weights(losses_KxB: jax.Array) -> jax.Array:
  """One-hot ``K x B`` weights (gradients stopped) of each example's largest-loss copy
  (ties: the first)."""
  checks.check_shape(losses_KxB, "losses_KxB", ndim=2)
  k = np.shape(losses_KxB)[0]
  return jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(losses_KxB), axis=0), k, axis=0, dtype=losses_KxB.dtype)


def max_loss_select(losses_KxB: jax.Array, images_KxB: jax.Array) -> tuple[jax.Array, jax.Array]:
  """UEraser's adversarial choice: for every example ``b``, the copy ``k`` with the largest
  ``losses_KxB[k, b]`` (ties: the first). Returns ``(images_KxB[k_b, b], losses_KxB[k_b, b])``,
  i.e. ``B x ...`` images and ``B`` losses; ``images_KxB`` is ``K x B x ...`` (any trailing
  shape)."""
  checks.check_shape(losses_KxB, "losses_KxB", ndim=2)
  k, b = np.shape(losses_KxB)
  if tuple(np.shape(images_KxB)[:2]) != (k, b):
    raise ValueError(f"images_KxB: expected leading dimensions {(k, b)} (those of losses_KxB), "
                     f"got shape {tuple(np.shape(images_KxB))}")
  idx = jnp.argmax(losses_KxB, axis=0)
  cols = jnp.arange(b)
  return images_KxB[idx, cols], losses_KxB[idx, cols]


def ueraser_transform(copies: int = 5, config: UEraserConfig = UEraserConfig()) -> Callable:
  """``transform(key, state, batch) -> batch`` for the engine's state hook (``as_hook``): the batch
  repeated ``copies`` times (copy-major: row ``k B + b`` is copy ``k`` of example ``b``), each
  row an independent UEraser view. Train with ``ueraser_loss(copies)`` so that every example
  counts once, through its largest-loss copy; with ``copies=1`` it is UEraser-Lite."""
  k = checks.check_positive_int(copies, "copies")

  def transform(key, state, batch):
    del state
    b = np.shape(batch["image"])[0]
    views = ueraser_copies(key, batch["image"], k, config)
    out = {name: (jnp.tile(v, (k,) + (1,) * (np.ndim(v) - 1)) if np.ndim(v) >= 1 and np.shape(v)[0] == b else v)
           for name, v in batch.items()}
    out["image"] = views.reshape((k * b,) + views.shape[2:])
    return out

  return transform


def ueraser_loss(copies: int = 5, loss_fn: Callable | None = None) -> Callable:
  """A ``train`` loss for batches made by ``ueraser_transform(copies)``: per row, the base
  loss (``loss_fn``, default cross-entropy) times ``copies`` on each example's largest-loss
  copy and 0 on the others, so that the batch mean is ``mean_b max_k loss[k, b]`` -- the
  reference's objective -- and gradients flow through the chosen copies only."""
  k = checks.check_positive_int(copies, "copies")
  if loss_fn is not None and getattr(loss_fn, "uses_extra", False):
    raise ValueError("loss_fn: ueraser_loss wraps a plain per-example loss, not a stateful one")

  def loss(outputs, batch):
    base = loss_fn(outputs, batch) if loss_fn is not None else losses.cross_entropy(outputs[0], batch["label"])
    n = np.shape(base)[0]
    if n % k:
      raise ValueError(f"ueraser_loss: expected a batch of copies x B = {k} x B rows, got {n} rows")
    l_KxB = base.reshape(k, n // k)
    return (l_KxB * max_loss_weights(l_KxB) * k).reshape(n)

  return loss
