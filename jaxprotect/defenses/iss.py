"""Image shortcut squeezing: compressions of the training images that remove perturbative shortcuts.

Liu, Zhao & Larson, "Image Shortcut Squeezing: Countering Perturbative Availability
Poisons with Compression", ICML 2023. The squeezing runs once, before training, on the
protected training images: JPEG compression against low-norm high-frequency poisons
(L_inf EM, REM, TAP, ...), grayscale against colour-channel shortcuts (L2 AR, LSP), and,
as studied there, bit-depth reduction and Gaussian blur. Reference settings (the authors'
code): JPEG quality 10 (Pillow, its default 4:2:0 chroma subsampling), grayscale as
torchvision's ``Grayscale(3)`` (PIL's "L" luma, replicated to 3 channels), bit-depth
reduction as ``RandomPosterize(bits, p=1)`` (keep the ``bits`` high bits; 2 in this module,
so at most 4 levels), Gaussian blur as ``GaussianBlur(3, sigma=0.1)`` (reflect padding,
rounded back to uint8; at sigma 0.1 the kernel's side weights are ``exp(-50)``, so it leaves
uint8 images unchanged -- pass a larger sigma to blur).

These are **host** passes over a uint8 dataset array (numpy and Pillow, not inside jit):
every function takes uint8 ``N x H x W x C`` images and returns uint8 images of the same
shape. ``squeeze_dataset`` applies one to the training split of a ``DeviceDataset`` (with
its perturbation, rounded to uint8 first, as a poison is stored as image files) and puts the
result back on the dataset's devices. JPEG needs Pillow (the ``plot`` extra).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks, data, parallel, platform

__all__ = ["SQUEEZES", "bit_depth", "gaussian_blur", "grayscale", "jpeg", "squeeze", "squeeze_dataset"]


def _check_u8(images: Any, name: str = "images_u8", channels: tuple[int, ...] | None = None) -> np.ndarray:
  images = np.asarray(images)
  checks.check_shape(images, name, ndim=4)
  if images.dtype != np.uint8:
    raise ValueError(f"{name}: expected uint8 pixels (N x H x W x C), got dtype {images.dtype}")
  if channels is not None and images.shape[-1] not in channels:
    raise ValueError(f"{name}: expected {' or '.join(map(str, channels))} channels (N x H x W x C), "
                     f"got shape {images.shape}")
  return images


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
    raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {value!r}")
  return int(value)


def jpeg(images_u8: np.ndarray, quality: int = 10) -> np.ndarray:
  """Each image JPEG-encoded at ``quality`` (1..100; reference 10) with Pillow and decoded
  back; 1 or 3 channels. A host pass (Pillow), not jit-able."""
  images = _check_u8(images_u8, channels=(1, 3))
  quality = _check_int(quality, "quality", 1, 100)
  Image = platform.require("PIL.Image", "plot", "JPEG compression (image shortcut squeezing)")
  out = np.empty_like(images)
  for i, img in enumerate(images):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert("L" if img.shape[-1] == 1 else "RGB"))
    out[i] = decoded.reshape(img.shape)
  return out


def grayscale(images_u8: np.ndarray) -> np.ndarray:
  """PIL's "L" luma, ``(299 R + 587 G + 114 B) / 1000`` in its fixed-point form
  (``(19595 R + 38470 G + 7471 B + 2^15) >> 16``), replicated to 3 equal channels.

  Colour data only: one-channel images are refused (the defense does not apply to them).
  A host pass (numpy)."""
  images = _check_u8(images_u8)
  if images.shape[-1] == 1:
    raise ValueError(f"images_u8: the grayscale defense does not apply to one-channel images (they are already "
                     f"grayscale); expected colour images N x H x W x 3, got shape {images.shape}")
  if images.shape[-1] != 3:
    raise ValueError(f"images_u8: expected RGB images N x H x W x 3, got shape {images.shape}")
  rgb = images.astype(np.uint32)
  luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + (1 << 15)) >> 16
  return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=-1)


def bit_depth(images_u8: np.ndarray, bits: int = 2) -> np.ndarray:
  """Bit-depth reduction: the ``bits`` (1..8; 2 here) most significant bits of every value
  kept, the others zeroed (``RandomPosterize(bits, p=1)``): at most ``2 ** bits`` levels.
  A host pass (numpy)."""
  images = _check_u8(images_u8)
  bits = _check_int(bits, "bits", 1, 8)
  mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
  return images & mask


def _gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
  x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2.0
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / k.sum()


def gaussian_blur(images_u8: np.ndarray, kernel_size: int = 3, sigma: float = 0.1) -> np.ndarray:
  """A separable Gaussian blur (odd ``kernel_size``, ``sigma`` > 0; reference 3 and 0.1) with
  reflect padding, rounded back to uint8, as torchvision's ``GaussianBlur``. A host pass
  (numpy)."""
  images = _check_u8(images_u8)
  if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 \
      or kernel_size % 2 == 0:
    raise ValueError(f"kernel_size: expected an odd integer >= 1, got {kernel_size!r}")
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) or not sigma > 0:
    raise ValueError(f"sigma: expected a value > 0, got {sigma!r}")
  _, h, w, _ = images.shape
  r = kernel_size // 2
  if r >= h or r >= w:
    raise ValueError(f"kernel_size: expected a kernel narrower than the images (reflect padding), got "
                     f"{kernel_size} for {h} x {w} images")
  k = _gaussian_kernel(int(kernel_size), float(sigma)).astype(np.float32)
  out = np.empty_like(images)
  for start in range(0, len(images), 1024):
    x = images[start:start + 1024].astype(np.float32)
    x = np.pad(x, ((0, 0), (r, r), (0, 0), (0, 0)), mode="reflect")
    x = sum(k[i] * x[:, i:i + h] for i in range(kernel_size))
    x = np.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
    x = sum(k[i] * x[:, :, i:i + w] for i in range(kernel_size))
    out[start:start + 1024] = np.clip(np.round(x), 0, 255).astype(np.uint8)
  return out


SQUEEZES: dict[str, Callable[..., np.ndarray]] = {
    "jpeg": jpeg, "grayscale": grayscale, "bit_depth": bit_depth, "gaussian_blur": gaussian_blur,
}


def squeeze(images_u8: np.ndarray, method: str, **kwargs: Any) -> np.ndarray:
  """``SQUEEZES[method](images_u8, **kwargs)``: ``"jpeg"`` (quality), ``"grayscale"``,
  ``"bit_depth"`` (bits), ``"gaussian_blur"`` (kernel_size, sigma)."""
  if method not in SQUEEZES:
    raise ValueError(f"method: expected one of {sorted(SQUEEZES)}, got {method!r}")
  return SQUEEZES[method](images_u8, **kwargs)


def _materialised(split: data.DeviceSplit) -> np.ndarray:
  """The split's training images with their perturbation, rounded to uint8, on the host."""
  if split.delta is None:
    return parallel.to_host(split.images)
  x = jax.jit(lambda s: jnp.round(s.gather(jnp.arange(s.size))[0] * 255.0).astype(jnp.uint8))(split)
  return parallel.to_host(x)


def squeeze_dataset(ds: data.DeviceDataset, method: str, test: bool = False, **kwargs: Any) -> data.DeviceDataset:
  """``ds`` with its training images squeezed by ``method`` (``squeeze``): the perturbed
  training images (``x + delta`` rounded to the nearest grey level) are squeezed on the host
  and placed back with the images' sharding; the result carries no perturbation. With
  ``test=True`` the clean test images are squeezed too (train and test in the same domain).
  The fingerprint records the squeezing, its settings and ``test``."""
  if method not in SQUEEZES:
    raise ValueError(f"method: expected one of {sorted(SQUEEZES)}, got {method!r}")
  train_u8 = squeeze(_materialised(ds.train), method, **kwargs)
  train = ds.train.replace(images=parallel.put(train_u8, ds.train.images.sharding), delta=None, delta_mode="none")
  out = dataclasses.replace(ds, train=train)
  if test:
    test_u8 = squeeze(parallel.to_host(ds.test.images), method, **kwargs)
    out = dataclasses.replace(out, test=ds.test.replace(images=parallel.put(test_u8, ds.test.images.sharding)))
  key = f"{ds.fingerprint}|iss={method}|{sorted(kwargs.items())}|test={bool(test)}"
  return dataclasses.replace(out, fingerprint=hashlib.sha256(key.encode()).hexdigest())
