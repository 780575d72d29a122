"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021), in JAX.

One call of the augmentation picks one operation of the strategy at random and applies it
with random parameters; every operation is differentiable with respect to the images
(the parameters are constants). *Siamese*: the parameters are drawn once, from one key,
and applied to two batches -- the real and the synthetic images of a class -- so that
gradient or distribution matching compares like with like::

  params = dsa_params(key, None, (h, w), strategy)     # one draw shared by every image
  real_aug, syn_aug = dsa_apply(real, params), dsa_apply(syn, params)

``dsa_params(key, batch, ...)`` with an integer ``batch`` draws one set per image instead
(still one operation for the whole call), the form the reference uses when a network is
trained on the synthetic set; ``augment(key, images, strategy, siamese)`` does both steps
for one batch.

Operations (the reference's ``color_crop_cutout_flip_scale_rotate``, ``ParamDiffAug``
ranges), on images ``B x H x W x C`` in the space the networks see (the reference's
normalised space, where padding and cut-out fill with 0):

* ``color``: brightness ``x + (u - 0.5) * 1.0``, then saturation
  ``(x - mean_c) * (2.0 u') + mean_c`` (mean over channels), then contrast
  ``(x - mean) * (u'' + 0.5) + mean`` (mean over the image), three draws;
* ``crop``: a shift by integers in ``[-s, s]`` on each axis, ``s = int(0.125 * side + 0.5)``,
  filling with 0;
* ``cutout``: a ``int(0.5 * side + 0.5)`` square set to 0 around a uniform centre (clipped
  at the border);
* ``flip``: left-right with probability 0.5;
* ``scale``: the affine map ``diag(sx, sy)``, ``sx, sy`` uniform in ``[1 / 1.2, 1.2]``;
* ``rotate``: a rotation by a uniform angle in ``[-15, 15]`` degrees;

``scale`` and ``rotate`` sample with PyTorch's ``affine_grid``/``grid_sample`` conventions
(normalised coordinates, ``align_corners=False``, bilinear, zeros outside), written here
as a bilinear gather in centred pixel coordinates, so the identity map returns the image
exactly. With equal parameters every operation agrees with the reference's ``rand_*``
function (PyTorch 2.13 CPU, 12 x 10 images): ``scale`` and ``rotate`` to 4e-6, ``color``
to 5e-7, ``crop``, ``cutout`` and ``flip`` exactly.

Strategies are ``_``-joined operation names; ``default_strategy(channels, flip)`` drops
``color`` for 1-channel images and ``flip`` on request (digits). The reference's README
runs Fashion-MNIST with the full strategy (colour and flip included) and drops only
``flip`` for MNIST and SVHN; pass a strategy explicitly to reproduce those runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxprotect import checks

__all__ = ["DSAConfig", "DSAParams", "OPERATIONS", "STRATEGY", "augment", "default_strategy", "dsa_apply", "dsa_params",
           "identity_params", "parse_strategy"]

OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")
STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the reference's full strategy


@dataclasses.dataclass(frozen=True)
class DSAConfig:
  """The ranges of the operations (the reference's ``ParamDiffAug``)."""

  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0  # degrees
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5


def parse_strategy(strategy: str | tuple[str, ...] | None) -> tuple[str, ...]:
  """The operations of ``strategy`` (``"crop_scale"``, a tuple of names, or ``None`` /
  ``""`` / ``"none"`` for no augmentation); ValueError naming an unknown one."""
  if strategy is None:
    return ()
  if isinstance(strategy, str):
    if strategy.lower() in ("", "none"):
      return ()
    names = tuple(strategy.split("_"))
  else:
    names = tuple(strategy)
  for name in names:
    if name not in OPERATIONS:
      raise ValueError(f"strategy: unknown operation {name!r} in {strategy!r}; known operations: "
                       f"{', '.join(OPERATIONS)} (joined with '_')")
  if len(set(names)) != len(names):
    raise ValueError(f"strategy: expected each operation once, got {strategy!r}")
  return names


def default_strategy(channels: int, flip: bool = True) -> str:
  """The reference's full strategy, without ``color`` for 1-channel images and without
  ``flip`` when ``flip`` is False (digits)."""
  checks.check_positive_int(channels, "channels")
  return "_".join(op for op in OPERATIONS if not (op == "color" and channels == 1) and not (op == "flip" and not flip))


@flax.struct.dataclass
class DSAParams:
  """The random parameters of one augmentation call. Every field but ``op`` is a scalar
  (shared by every image: Siamese) or a vector of one value per image.

  op: index of the operation in ``strategy`` (int32 scalar: one operation per call).
  brightness: added offset. saturation, contrast: factors. shift_y, shift_x: integer
  shifts of ``crop`` (output pixel ``(i, j)`` reads ``(i + shift_y, j + shift_x)``; shifts
  beyond the drawn range ``[-s, s]`` act as the nearest end of it). cutout_y, cutout_x:
  integer centres of the cut-out square (far outside: no cut). flip: 1.0 to mirror.
  scale_y, scale_x: factors of ``scale``. angle: radians of ``rotate``.
  """

  op: jax.Array
  brightness: jax.Array
  saturation: jax.Array
  contrast: jax.Array
  shift_y: jax.Array
  shift_x: jax.Array
  cutout_y: jax.Array
  cutout_x: jax.Array
  flip: jax.Array
  scale_y: jax.Array
  scale_x: jax.Array
  angle: jax.Array
  strategy: tuple[str, ...] = flax.struct.field(pytree_node=False, default=tuple(STRATEGY.split("_")))
  config: DSAConfig = flax.struct.field(pytree_node=False, default=DSAConfig())


def _crop_shift(side: int, config: DSAConfig) -> int:
  return int(side * config.ratio_crop_pad + 0.5)


def _cutout_size(side: int, config: DSAConfig) -> int:
  return int(side * config.ratio_cutout + 0.5)


def dsa_params(key: jax.Array, batch: int | None, image_hw: tuple[int, int], strategy: Any = STRATEGY,
               config: DSAConfig = DSAConfig()) -> DSAParams:
  """Random parameters of one augmentation call, drawn from ``key``.

  ``batch``: None for one set shared by every image (Siamese: apply the result to the real
  and the synthetic batch), an int B for one set per image. ``image_hw``: the images'
  (H, W), which fix the integer ranges of ``crop`` and ``cutout``. Ranges as the
  reference (see the module docstring); the uniform draws of ``rand_crop`` and
  ``rand_cutout`` (``torch.randint``) are integers in ``[-s, s]`` and ``[0, side + 1 - size % 2)``.
  """
  ops = parse_strategy(strategy)
  if batch is not None:
    checks.check_positive_int(batch, "batch")
  h, w = (int(s) for s in image_hw)
  shape = () if batch is None else (batch,)
  keys = jax.random.split(key, 12)
  u = lambda i: jax.random.uniform(keys[i], shape, jnp.float32)  # noqa: E731
  randint = lambda i, lo, hi: jax.random.randint(keys[i], shape, lo, hi, jnp.int32)  # noqa: E731
  sy, sx = _crop_shift(h, config), _crop_shift(w, config)
  cy, cx = _cutout_size(h, config), _cutout_size(w, config)
  r = config.ratio_scale
  return DSAParams(
      op=jax.random.randint(keys[0], (), 0, max(len(ops), 1), jnp.int32),
      brightness=(u(1) - 0.5) * config.brightness,
      saturation=u(2) * config.saturation,
      contrast=u(3) + config.contrast,
      shift_y=randint(4, -sy, sy + 1),
      shift_x=randint(5, -sx, sx + 1),
      cutout_y=randint(6, 0, h + 1 - cy % 2),
      cutout_x=randint(7, 0, w + 1 - cx % 2),
      flip=(u(8) < config.prob_flip).astype(jnp.float32),
      scale_y=u(9) * (r - 1.0 / r) + 1.0 / r,
      scale_x=u(10) * (r - 1.0 / r) + 1.0 / r,
      angle=(u(11) - 0.5) * 2.0 * config.ratio_rotate / 180.0 * math.pi,
      strategy=ops,
      config=config,
  )


def identity_params(op: int | str = 0, batch: int | None = None, strategy: Any = STRATEGY,
                    config: DSAConfig = DSAConfig()) -> DSAParams:
  """Parameters under which every operation is the identity (no shift, a cut-out centre
  far outside the image, no flip, unit scales, zero angle); ``op`` selects the operation
  (an index into the strategy or a name)."""
  ops = parse_strategy(strategy)
  index = ops.index(op) if isinstance(op, str) else int(op)
  shape = () if batch is None else (batch,)
  zeros, ones = jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32)
  izeros, far = jnp.zeros(shape, jnp.int32), jnp.full(shape, -(1 << 20), jnp.int32)
  return DSAParams(op=jnp.asarray(index, jnp.int32), brightness=zeros, saturation=ones, contrast=ones, shift_y=izeros,
                   shift_x=izeros, cutout_y=far, cutout_x=far, flip=zeros, scale_y=ones, scale_x=ones, angle=zeros,
                   strategy=ops, config=config)


# ---------------------------------------------------------------------------------------
# The operations, on one image H x W x C with scalar parameters (vmapped over the batch)
# ---------------------------------------------------------------------------------------

def _color(x, p: DSAParams):
  x = x + p.brightness
  mean_c = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - mean_c) * p.saturation + mean_c
  mean = jnp.mean(x)
  return (x - mean) * p.contrast + mean


def _crop(x, p: DSAParams):
  h, w, _ = x.shape
  sy, sx = _crop_shift(h, p.config), _crop_shift(w, p.config)
  padded = jnp.pad(x, ((sy, sy), (sx, sx), (0, 0)))
  # Identity params hold 0; drawn shifts are within [-s, s], so the window stays inside the padding.
  return jax.lax.dynamic_slice(padded, (sy + p.shift_y, sx + p.shift_x, 0), x.shape)


def _cutout(x, p: DSAParams):
  h, w, _ = x.shape
  ch, cw = _cutout_size(h, p.config), _cutout_size(w, p.config)
  top, left = p.cutout_y - ch // 2, p.cutout_x - cw // 2
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
  return x * jnp.where(inside, 0.0, 1.0).astype(x.dtype)[:, :, None]


def _flip(x, p: DSAParams):
  return jnp.where(p.flip > 0.5, x[:, ::-1, :], x)


def _bilinear(x, ys, xs):
  """``x`` sampled at the fractional pixel positions ``(ys, xs)`` (H' x W'), bilinear, 0
  outside (``grid_sample``'s zeros padding: each corner outside contributes 0)."""
  h, w, _ = x.shape
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = ys - y0, xs - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = jnp.zeros(ys.shape + x.shape[-1:], x.dtype)
  for dy, fy in ((0, 1.0 - wy), (1, wy)):
    for dx, fx in ((0, 1.0 - wx), (1, wx)):
      yi, xi = y0 + dy, x0 + dx
      valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      tap = x[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
      out = out + tap * jnp.where(valid, fy * fx, 0.0).astype(x.dtype)[:, :, None]
  return out


def _affine(x, a00, a01, a10, a11):
  """``grid_sample(x, affine_grid(theta))`` with ``theta = [[a00, a01, 0], [a10, a11, 0]]``
  (rows: source x, source y in normalised coordinates; ``align_corners=False``), computed in
  pixel coordinates centred on the image."""
  h, w, _ = x.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yc = jnp.arange(h, dtype=jnp.float32)[:, None] - cy
  xc = jnp.arange(w, dtype=jnp.float32)[None, :] - cx
  xs = cx + a00 * xc + a01 * (yc * (w / h))
  ys = cy + a10 * (xc * (h / w)) + a11 * yc
  return _bilinear(x, ys, xs)


def _scale(x, p: DSAParams):
  return _affine(x, p.scale_x, 0.0, 0.0, p.scale_y)


def _rotate(x, p: DSAParams):
  c, s = jnp.cos(p.angle), jnp.sin(p.angle)
  return _affine(x, c, -s, s, c)


_OPS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def dsa_apply(images_BxHxWxC: jax.Array, params: DSAParams) -> jax.Array:
  """The augmentation ``params`` describes, applied to every image (the same parameters to
  each image when they are scalars: apply one ``params`` to two batches for the Siamese
  pair). Differentiable with respect to the images; no augmentation for an empty strategy."""
  checks.check_shape(images_BxHxWxC, "images_BxHxWxC", ndim=4)
  checks.check_floating(images_BxHxWxC, "images_BxHxWxC")
  ops = params.strategy
  if not ops:
    return images_BxHxWxC
  b = images_BxHxWxC.shape[0]
  per_image = params.replace(op=jnp.zeros((b,), jnp.int32))  # the op is chosen once, below
  for name in ("brightness", "saturation", "contrast", "shift_y", "shift_x", "cutout_y", "cutout_x", "flip",
               "scale_y", "scale_x", "angle"):
    value = getattr(per_image, name)
    if jnp.ndim(value) not in (0, 1) or (jnp.ndim(value) == 1 and jnp.shape(value)[0] != b):
      raise ValueError(f"params.{name}: expected a scalar or one value per image ({b}), got shape {jnp.shape(value)}")
    per_image = per_image.replace(**{name: jnp.broadcast_to(value, (b,))})

  def branch(fn):
    return lambda x_B, p_B: jax.vmap(fn)(x_B, p_B)

  branches = [branch(_OPS[name]) for name in ops]
  x = images_BxHxWxC.astype(jnp.float32) if images_BxHxWxC.dtype != jnp.float32 else images_BxHxWxC
  if len(branches) == 1:
    return branches[0](x, per_image)
  return jax.lax.switch(jnp.clip(params.op, 0, len(branches) - 1), branches, x, per_image)


def augment(key: jax.Array, images_BxHxWxC: jax.Array, strategy: Any = STRATEGY, siamese: bool = False,
            config: DSAConfig = DSAConfig()) -> jax.Array:
  """One augmentation call on one batch: ``dsa_apply(images, dsa_params(key, ...))`` with
  one set of parameters per image (``siamese=False``) or one for the whole batch."""
  b, h, w = images_BxHxWxC.shape[:3]
  return dsa_apply(images_BxHxWxC, dsa_params(key, None if siamese else b, (h, w), strategy, config))
