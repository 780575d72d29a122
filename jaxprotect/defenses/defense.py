"""A defense chosen by name: the ``defense`` config section and what it does to a training run.

``Defense`` is what ``runner.fit(..., defense=...)`` and ``unlearnable.victims.evaluate``
train under. ``NAMES``:

* ``none`` -- plain training (the run is exactly the undefended one: same programs, same
  hash, same bits);
* training-time defenses, through the engine's state hook (``train.with_state``, key
  ``fold_in(fold_in(state.rng, DEFENSE_STREAM), state.step)``):
  ``at`` -- PGD-``steps`` adversarial training of radius ``eps`` (``adversarial``; step
  ``step_size``, 0 meaning ``eps / 4``); ``cutout`` -- a square of side ``cutout`` zeroed at a
  uniform centre of every image (DeVries & Taylor 2017, ``data.augment.cutout``);
  ``mixup`` and ``cutmix`` -- ``augment.mix_transform`` with Beta(``alpha``, ``alpha``),
  trained with the soft-label loss (the section's ``label_smoothing`` applied to the soft
  targets); ``ueraser`` -- ``copies`` UEraser views per image, the loss of each image the
  largest over its views (``augment.ueraser_transform`` / ``ueraser_loss``);
* host squeezes (image shortcut squeezing, ``iss``), applied once to the training images
  before training (``iss.squeeze_dataset``; with ``squeeze_test`` to the test images too):
  ``jpeg`` (``quality``), ``bits`` (bit depth ``bits``), ``grayscale`` (colour data only: a
  one-channel dataset is refused), ``blur`` (Gaussian, ``blur_kernel`` x ``blur_kernel``,
  ``blur_sigma``; the ISS reference's sigma 0.1 leaves uint8 images unchanged, so the
  default here is 1.0).

Only the fields of the chosen defense enter a run's hash (``Defense.record``, passed by
``runner.fit`` as the ``defense`` entry of its ``hash_extra`` when a defense is set), so
adding this section changed no existing hash and changing, say, ``eps`` never invalidates
a ``jpeg`` run. ``defense.clean`` says whether ``victims.evaluate`` also defends the clean
victim (default: only the poisoned one).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprotect import checks, data, train
from jaxprotect.data.augment import AugmentConfig, augment_batch
from jaxprotect.defenses import adversarial, augment, iss
from jaxprotect.models.contract import Model, as_model

__all__ = ["FIELDS", "HOST_SQUEEZES", "NAMES", "Defense", "defense_config", "from_config"]

NAMES = ("none", "at", "cutout", "cutmix", "mixup", "ueraser", "jpeg", "bits", "grayscale", "blur")
# The fields of the section each defense reads (what enters the hash of a run under it).
FIELDS: dict[str, tuple[str, ...]] = {
    "none": (), "at": ("eps", "steps", "step_size"), "cutout": ("cutout",), "cutmix": ("alpha",), "mixup": ("alpha",),
    "ueraser": ("copies",), "jpeg": ("quality", "squeeze_test"), "bits": ("bits", "squeeze_test"),
    "grayscale": ("squeeze_test",), "blur": ("blur_kernel", "blur_sigma", "squeeze_test"),
}
# Host squeezes: the defense's name -> (iss.SQUEEZES name, {its keyword: the section's field}).
HOST_SQUEEZES: dict[str, tuple[str, dict[str, str]]] = {
    "jpeg": ("jpeg", {"quality": "quality"}), "bits": ("bit_depth", {"bits": "bits"}), "grayscale": ("grayscale", {}),
    "blur": ("gaussian_blur", {"kernel_size": "blur_kernel", "sigma": "blur_sigma"}),
}


def defense_config() -> ml_collections.ConfigDict:
  """The ``defense`` section (default ``name="none"``): the defense and the settings of each."""
  return ml_collections.ConfigDict(dict(
      name="none",  # one of NAMES
      eps=8 / 255, steps=10, step_size=0.0,  # at: PGD radius (pixel units), steps, step (0: eps / 4)
      cutout=16,  # cutout: side of the zeroed square (pixels)
      alpha=1.0,  # mixup, cutmix: Beta(alpha, alpha) of the mixing weight
      copies=5,  # ueraser: augmented views per image (1: UEraser-Lite)
      quality=10,  # jpeg: JPEG quality (1..100; ISS reference 10)
      bits=2,  # bits: bit depth kept (1..8)
      blur_kernel=3, blur_sigma=1.0,  # blur: odd kernel side, Gaussian sigma
      squeeze_test=False,  # host squeezes: squeeze the test images too
      clean=False,  # victims.evaluate: defend the clean victim too (not part of any hash)
  ))


def _number(value: Any, name: str, positive: bool = True) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value) \
      or (positive and not value > 0) or (not positive and value < 0):
    raise ValueError(f"{name}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
  return float(value)


def _int_in(value: Any, name: str, lo: int, hi: int) -> int:
  value = checks.check_positive_int(value, name, minimum=lo)
  if value > hi:
    raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {value}")
  return value


def _checked(name: str, get: Callable[[str], Any], where: str) -> tuple[tuple[str, Any], ...]:
  """The settings of defense ``name`` read through ``get(field)``, checked (ValueError naming
  ``where.field``), in ``FIELDS`` order."""
  out: dict[str, Any] = {}
  for field in FIELDS[name]:
    v = get(field)
    f = f"{where}.{field}"
    if field == "eps":
      v = _number(v, f)
    elif field == "steps":
      v = checks.check_positive_int(v, f)
    elif field == "step_size":
      v = _number(v, f, positive=False)
    elif field in ("cutout", "copies"):
      v = checks.check_positive_int(v, f)
    elif field == "alpha":
      v = _number(v, f)
    elif field == "quality":
      v = _int_in(v, f, 1, 100)
    elif field == "bits":
      v = _int_in(v, f, 1, 8)
    elif field == "blur_kernel":
      v = checks.check_positive_int(v, f)
      if v % 2 == 0:
        raise ValueError(f"{f}: expected an odd kernel side, got {v}")
    elif field == "blur_sigma":
      v = _number(v, f)
    elif field == "squeeze_test":
      if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{f}: expected true or false, got {v!r}")
      v = bool(v)
    out[field] = v
  if name == "at":  # PGD's own checks (step_size 0 means eps / 4)
    try:
      adversarial.check_attack(out["eps"], out["steps"], out["step_size"] or None)
    except ValueError as e:
      raise ValueError(f"{where}.{e}") from None
  return tuple(out.items())


@dataclasses.dataclass(frozen=True)
class Defense:
  """A checked defense: ``name`` (one of ``NAMES``), its ``settings`` (``(field, value)``
  pairs of ``FIELDS[name]``) and ``clean`` (whether ``victims.evaluate`` defends the clean
  victim too). Build it with ``from_config``."""

  name: str = "none"
  settings: tuple[tuple[str, Any], ...] = ()
  clean: bool = False

  @property
  def enabled(self) -> bool:
    return self.name != "none"

  @property
  def host(self) -> bool:
    """A host squeeze of the training images (else a training-time defense, or none)."""
    return self.name in HOST_SQUEEZES

  def record(self) -> dict[str, Any]:
    """``{"name": ..., <its settings>}``: what enters a defended run's hash and results."""
    return {"name": self.name, **dict(self.settings)}

  def describe(self) -> str:
    """``"jpeg (quality 10)"``: the defense and its settings, for reports."""
    if not self.settings:
      return self.name
    parts = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.settings)
    return f"{self.name} ({', '.join(parts)})"

  def check_data(self, ds: data.DeviceDataset) -> None:
    """Refuses a dataset the defense does not apply to (before anything trains): grayscale
    on images without 3 colour channels, JPEG on other than 1 or 3 channels, a blur kernel
    or a cutout square as large as the images."""
    h, w, c = ds.train.image_shape
    if self.name == "grayscale" and c != 3:
      raise ValueError(f"defense.name: the grayscale defense needs colour (3-channel) images; {ds.name!r} has "
                       f"{c} channel{'s' if c != 1 else ''} (one-channel images are already grayscale)")
    if self.name == "jpeg" and c not in (1, 3):
      raise ValueError(f"defense.name: JPEG compression needs 1 or 3 channels; {ds.name!r} has {c}")
    s = dict(self.settings)
    if self.name == "blur" and s["blur_kernel"] // 2 >= min(h, w):
      raise ValueError(f"defense.blur_kernel: {s['blur_kernel']} is too large for {h} x {w} images")
    if self.name == "cutout" and s["cutout"] > max(h, w):
      raise ValueError(f"defense.cutout: a {s['cutout']}-pixel square is larger than the {h} x {w} images")

  def prepare(self, ds: data.DeviceDataset) -> data.DeviceDataset:
    """``ds`` as the defended model trains on it: a host squeeze applied to its training
    images (with their perturbation; ``iss.squeeze_dataset``, which records it in the
    fingerprint), ``ds`` itself for the other defenses."""
    if not self.host:
      return ds
    self.check_data(ds)
    method, keywords = HOST_SQUEEZES[self.name]
    s = dict(self.settings)
    return iss.squeeze_dataset(ds, method, test=s["squeeze_test"], **{k: s[f] for k, f in keywords.items()})

  def batch_fn(self, model: Any, num_classes: int) -> Callable | None:
    """The engine's state hook of a training-time defense (None otherwise), the same
    function for equal settings, model and class count (so programs are reused)."""
    if self.host or not self.enabled:
      return None
    m = as_model(model)
    return _hook(self.name, self.settings, m.module, m.train_kwarg, m.negate_train, int(num_classes))

  def loss_fn(self, loss_fn: Callable | None, label_smoothing: float = 0.0) -> Callable:
    """The training loss under the defense: ``loss_fn`` (default ``train.ce_loss(
    label_smoothing)``), wrapped by UEraser's max-loss selection or replaced by MixUp /
    CutMix's soft-label cross-entropy (which refuses a custom ``loss_fn``)."""
    if self.name in ("mixup", "cutmix"):
      if loss_fn is not None:
        raise ValueError(f"loss_fn: {self.name} trains with the soft-label cross-entropy; it cannot be combined "
                         "with a custom loss")
      return _soft_loss(float(label_smoothing))
    base = loss_fn or train.ce_loss(label_smoothing)
    if self.name == "ueraser":
      return _ueraser_loss(dict(self.settings)["copies"], base)
    return base


NONE = Defense()


def from_config(defense: Any, where: str = "defense") -> Defense:
  """A checked ``Defense`` from ``defense``: None (no defense), a name (its default
  settings), a ``defense`` section (``defense_config()``; dict or ConfigDict) or a
  ``Defense``. Unknown names and bad settings are ValueErrors naming the field."""
  if defense is None:
    return NONE
  if isinstance(defense, Defense):
    return defense
  defaults = defense_config()
  if isinstance(defense, str):
    section: Any = {"name": defense}
  elif isinstance(defense, (dict, ml_collections.ConfigDict)):
    section = defense
  else:
    raise ValueError(f"{where}: expected a defense name, a defense section or None, got {type(defense).__name__}")
  unknown = sorted(set(section.keys()) - set(defaults.keys()))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {', '.join(sorted(defaults.keys()))}")
  name = section.get("name", "none")
  if name not in NAMES:
    raise ValueError(f"{where}.name: unknown defense {name!r}; use one of {', '.join(NAMES)}")
  clean = section.get("clean", False)
  if not isinstance(clean, (bool, np.bool_)):
    raise ValueError(f"{where}.clean: expected true or false, got {clean!r}")
  get = lambda f: section.get(f, defaults[f])  # noqa: E731
  return Defense(name, _checked(name, get, where), bool(clean))


# ---------------------------------------------------------------- built once per setting


@functools.lru_cache(maxsize=64)
def _hook(name: str, settings: tuple, module: Any, train_kwarg: str | None, negate_train: bool,
          num_classes: int) -> Callable:
  s = dict(settings)
  if name == "at":
    model = Model(module, train_kwarg, negate_train)
    transform = adversarial.adversarial_transform(model, s["eps"], s["steps"], s["step_size"] or None)
  elif name == "cutout":
    config = AugmentConfig(cutout=s["cutout"])
    transform = augment.as_transform(lambda key, x: augment_batch(key, x, config))
  elif name in ("mixup", "cutmix"):
    transform = augment.mix_transform(name, num_classes, s["alpha"])
  elif name == "ueraser":
    transform = augment.ueraser_transform(s["copies"])
  else:
    raise ValueError(f"name: {name!r} is not a training-time defense")
  return adversarial.as_hook(transform)


@functools.lru_cache(maxsize=16)
def _soft_loss(label_smoothing: float) -> Callable:
  """Soft-label cross-entropy, the soft targets smoothed as ``losses.cross_entropy`` smooths
  one-hot ones: ``(1 - s) t + s / K``."""

  def loss_fn(outputs, batch):
    if "soft_label" not in batch:
      raise ValueError("batch: the soft-label loss needs batch['soft_label'] (B x K); train with mix_transform")
    t = batch["soft_label"]
    if label_smoothing:
      t = (1.0 - label_smoothing) * t + label_smoothing / t.shape[-1]
    return augment.soft_cross_entropy(outputs[0], jnp.asarray(t, jnp.float32))

  return loss_fn


@functools.lru_cache(maxsize=16)
def _ueraser_loss(copies: int, base: Callable) -> Callable:
  return augment.ueraser_loss(copies, base)

