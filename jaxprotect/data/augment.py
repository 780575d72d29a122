"""Image augmentation inside jit, driven by explicit keys.

Images are float B x H x W x C in [0, 1]. Each example draws its own parameters from
``jax.random.split(key, B)``; the same key gives the same augmentation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Standard training augmentation: random crop with zero padding, flip, cutout.

  crop_pad: pixels of zero padding before a random crop back to H x W (0: no crop).
  flip: random horizontal flip with probability 1/2.
  cutout: side of a square set to 0 at a uniformly drawn centre (0: none); the square
    may extend past the border, as in DeVries & Taylor (2017).
  """

  crop_pad: int = 0
  flip: bool = False
  cutout: int = 0

  @property
  def enabled(self) -> bool:
    return bool(self.crop_pad or self.flip or self.cutout)

  @classmethod
  def parse(cls, spec: str | None) -> "AugmentConfig":
    """Parses ``"crop4,flip,cutout16"`` style strings; ``""``/``"none"`` is no augmentation."""
    kwargs = {}
    for part in (spec or "").replace(" ", "").split(","):
      if part in ("", "none"):
        continue
      if part == "flip":
        kwargs["flip"] = True
      elif part.startswith("crop") and part[4:].isdigit():
        kwargs["crop_pad"] = int(part[4:])
      elif part.startswith("cutout") and part[6:].isdigit():
        kwargs["cutout"] = int(part[6:])
      else:
        raise ValueError(f"unknown augmentation {part!r} in {spec!r}; use e.g. 'crop4,flip,cutout16'")
    return cls(**kwargs)


def random_crop(key: jax.Array, image_HxWxC: jax.Array, pad: int) -> jax.Array:
  """Zero-pads by ``pad`` on each side and crops a random H x W window."""
  h, w, _ = image_HxWxC.shape
  padded = jnp.pad(image_HxWxC, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image_HxWxC.shape[2]))


def random_flip(key: jax.Array, image_HxWxC: jax.Array) -> jax.Array:
  """Mirrors left-right with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), image_HxWxC[:, ::-1, :], image_HxWxC)


def cutout(key: jax.Array, image_HxWxC: jax.Array, size: int) -> jax.Array:
  """Zeroes rows [cy - size//2, cy - size//2 + size) x the same in columns, clipped at borders."""
  h, w, _ = image_HxWxC.shape
  cy, cx = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
  top, left = cy - size // 2, cx - size // 2
  ys = jnp.arange(h)[:, None]
  xs = jnp.arange(w)[None, :]
  inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
  return jnp.where(inside[:, :, None], 0.0, image_HxWxC).astype(image_HxWxC.dtype)


def augment_batch(key: jax.Array, images_BxHxWxC: jax.Array, config: AugmentConfig) -> jax.Array:
  """Applies ``config`` to every image of the batch with per-example keys."""
  if not config.enabled:
    return images_BxHxWxC

  def one(k, img):
    k_crop, k_flip, k_cut = jax.random.split(k, 3)
    if config.crop_pad:
      img = random_crop(k_crop, img, config.crop_pad)
    if config.flip:
      img = random_flip(k_flip, img)
    if config.cutout:
      img = cutout(k_cut, img, config.cutout)
    return img

  keys = jax.random.split(key, images_BxHxWxC.shape[0])
  return jax.vmap(one)(keys, images_BxHxWxC)
