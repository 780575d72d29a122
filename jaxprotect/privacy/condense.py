"""Dataset condensation: a few synthetic images per class learned from a real training set,
by gradient matching (DC; Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient
Matching", ICLR 2021), gradient matching under Differentiable Siamese Augmentation (DSA;
Zhao & Bilen, ICML 2021) or distribution matching (DM; Zhao & Bilen, "Dataset Condensation
with Distribution Matching", WACV 2023) -- the data-synthesis side of "Privacy for Free:
How does Dataset Condensation Help Privacy?" (Dong, Zhao & Lyu, ICML 2022).

What one iteration computes (``make_step``), with ``K`` classes and ``I`` images per class:

* **DC / DSA**: a freshly initialised network (drawn from the iteration's key). ``outer``
  times: for each class ``c``, the gradient of the mean cross-entropy over a random real
  batch of class ``c`` and over the ``I`` synthetic images of ``c`` (DSA: both augmented
  with the *same* random parameters, ``dsa.dsa_params(key, None, ...)``), their distance
  ``gradient_match_distance``; one SGD step (momentum 0.5) on the synthetic images for
  the sum over classes; then, except after the last outer loop, ``inner`` epochs of plain
  SGD of the network on the synthetic set (DSA: augmented per image). ``(outer, inner)``
  follow ``I``: ``LOOPS`` (the reference's ``get_loops``).
* **DM**: a freshly initialised, frozen network; for each class the squared L2 distance
  between the mean embedding (the penultimate features) of an augmented real batch and of
  the synthetic images augmented with the same parameters; one SGD step on the sum.

Images live in the space the networks see: per-channel standardised pixels,
``z = (x - mean_C) / std_C`` (``Normalization``; by default the real set's own mean and
standard deviation, as the reference's ``transforms.Normalize`` with the dataset's
constants). The synthetic set is float32 in that space and unclipped (as the reference);
``Condensed.pixels()`` maps it back. ``init="noise"`` draws ``N(0, 1)`` in that space,
``init="real"`` copies random real images of each class, and the result says which
(``Condensed.init_ids``): those images are members whose privacy the experiment measures.

The condensation state (``CondenseState``: synthetic images, optimiser state, iteration,
run key) is a plain pytree; iteration ``t`` draws everything from ``fold_in(key, t)``, so a
run resumed from a saved state ends bitwise equal to an uninterrupted one (``condense``'s
``resume``). ``evaluate_synthetic`` trains fresh networks on a synthetic set with the
reference's recipe, several seeds at once under ``jax.vmap``, and returns their test
accuracies.

Reference settings (VICO-UoE/DatasetCondensation): image lr 0.1 (DC/DSA) and 1.0 (DM),
momentum 0.5; network lr 0.01 without momentum; 256 real images per class; DM's and the
DSA runs' real initialisation, DC's noise initialisation (``main.py``'s default); the
ConvNet (width 128, depth 3, instance norm, average pooling). Differences: ``iterations``
counts the image updates (the reference's loop runs ``Iteration + 1``); the real batch of
a class is ``min(batch_real, smallest class)`` images (static shapes); networks with
BatchNorm statistics are refused (the reference freezes statistics measured on a real
batch); flax initialises convolution biases to 0 where PyTorch draws them uniformly; the
random draws use the non-partitionable threefry (``platform.fast_init_prng``, faster to
compile on CPU). Where the reference runs class after class, the classes are vmapped on
accelerators (``vectorize``); the sums agree up to float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxprotect import checks, losses, models, platform, train
from jaxprotect.models.contract import Model, as_model
from jaxprotect.privacy.dsa import DSAConfig, default_strategy, dsa_apply, dsa_params, parse_strategy

__all__ = [
    "CondenseConfig", "CondenseState", "Condensed", "DISTANCES", "INITS", "LOOPS", "METHODS", "Normalization",
    "RealData", "condense", "condense_config", "evaluate_synthetic", "gradient_match_distance", "init_state",
    "clear_compiled", "make_step", "real_data", "synthetic_labels", "train_on_sets",
]

METHODS = ("dc", "dsa", "dm")
INITS = ("noise", "real")
DISTANCES = ("ours", "mse", "cos")
LOOP_FORMS = ("scan", "host")
# (outer_loop, inner_loop) per images per class: the reference's get_loops (utils.py).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
_LR_IMG = {"dc": 0.1, "dsa": 0.1, "dm": 1.0}
_DEFAULT_INIT = {"dc": "noise", "dsa": "real", "dm": "real"}


def _check_choice(value: Any, name: str, accepted: Sequence[str]) -> str:
  if not isinstance(value, str) or value.lower() not in accepted:
    raise ValueError(f"{name}: expected one of {', '.join(repr(a) for a in accepted)}, got {value!r}")
  return value.lower()


# ---------------------------------------------------------------------------------------
# The gradient distance
# ---------------------------------------------------------------------------------------

def _rows_last(g: jax.Array) -> jax.Array:
  """A Flax kernel as columns of output features: ``... x O -> (prod ...) x O`` (conv HWIO,
  Dense IO); the reference's PyTorch rows (``O x (I*H*W)``) transposed."""
  return g.reshape(-1, g.shape[-1]).astype(jnp.float32)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(x)`` with a zero (not NaN) gradient at 0, like PyTorch's ``norm`` of a zero vector."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _check_same_structure(grads_a: Any, grads_b: Any) -> tuple[list, list]:
  paths_a, tree_a = jax.tree_util.tree_flatten_with_path(grads_a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(grads_b)
  if tree_a != tree_b:
    raise ValueError(f"grads_b: expected the structure of grads_a ({tree_a}), got {tree_b}")
  for (path, a), b in zip(paths_a, leaves_b):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"grads_b{jax.tree_util.keystr(path)}: expected shape {np.shape(a)} (as in grads_a), "
                       f"got {np.shape(b)}")
  return [a for _, a in paths_a], leaves_b


def gradient_match_distance(grads_a: Any, grads_b: Any, eps: float = 1e-6) -> jax.Array:
  """The reference's layer-wise gradient distance (``distance_wb`` summed by ``match_loss``
  with ``dis_metric='ours'``) between two pytrees of Flax parameter gradients.

  Each parameter with two or more axes is split into rows, one per output feature -- the
  last axis in Flax's layouts (conv ``H x W x I x O``, Dense ``I x O``), the first in
  PyTorch's -- and contributes ``sum_rows 1 - <a, b> / (|a| |b| + eps)``; parameters with
  fewer axes (biases, norm scales) contribute 0, as in the reference. The sum over all
  parameters is returned (float32 scalar). With the reference's ``eps = 1e-6`` identical
  small gradients give a small positive distance; with ``eps = 0`` exactly 0 (``|a| |b|`` is
  computed as ``sqrt(|a|^2 |b|^2)``). A row that is zero in either pytree has a zero
  gradient (not NaN). ValueError when the two pytrees differ in structure or shapes.
  """
  checks.check_nonnegative(eps, "eps")
  leaves_a, leaves_b = _check_same_structure(grads_a, grads_b)
  total = jnp.zeros((), jnp.float32)
  for a, b in zip(leaves_a, leaves_b):
    if jnp.ndim(a) < 2:
      continue
    a, b = _rows_last(a), _rows_last(b)
    dot = jnp.sum(a * b, axis=0)
    norms = _safe_sqrt(jnp.sum(a * a, axis=0) * jnp.sum(b * b, axis=0))
    total = total + jnp.sum(1.0 - dot / (norms + eps))
  return total


def _flat(tree: Any) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def _distance(metric: str, gw_syn: Any, gw_real: Any, eps: float) -> jax.Array:
  """``match_loss``: ``ours`` (``gradient_match_distance``), ``mse`` (squared L2 of all
  flattened gradients) or ``cos`` (one cosine distance over all flattened gradients, the
  1-D parameters included, as the reference)."""
  if metric == "ours":
    return gradient_match_distance(gw_syn, gw_real, eps)
  _check_same_structure(gw_syn, gw_real)
  s, r = _flat(gw_syn), _flat(gw_real)
  if metric == "mse":
    return jnp.sum(jnp.square(s - r))
  return 1.0 - jnp.sum(s * r) / (_safe_sqrt(jnp.sum(s * s) * jnp.sum(r * r)) + eps)


# ---------------------------------------------------------------------------------------
# Data: normalisation, real images by class, synthetic labels
# ---------------------------------------------------------------------------------------

@flax.struct.dataclass
class Normalization:
  """Per-channel standardisation ``z = (x - mean_C) / std_C`` of pixels ``x`` in [0, 1]."""

  mean_C: jax.Array
  std_C: jax.Array

  @classmethod
  def of(cls, images_NxHxWxC: Any) -> "Normalization":
    """The per-channel mean and (population) standard deviation of a set of images
    (float in [0, 1], or uint8 read as ``u / 255``)."""
    x = _as_float(images_NxHxWxC, "images_NxHxWxC")
    mean = jnp.mean(x, axis=(0, 1, 2))
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=(0, 1, 2)))
    if not bool(jnp.all(std > 0)):
      raise ValueError(f"images_NxHxWxC: expected every channel to vary, got standard deviations {np.asarray(std)}")
    return cls(mean, std)

  @classmethod
  def identity(cls, channels: int) -> "Normalization":
    """No normalisation: the networks see the pixels in [0, 1]."""
    return cls(jnp.zeros((channels,), jnp.float32), jnp.ones((channels,), jnp.float32))

  def apply(self, x_NxHxWxC: jax.Array) -> jax.Array:
    return (x_NxHxWxC - self.mean_C) / self.std_C

  def invert(self, z_NxHxWxC: jax.Array) -> jax.Array:
    return z_NxHxWxC * self.std_C + self.mean_C


def _as_float(images: Any, name: str) -> jax.Array:
  checks.check_shape(images, name, ndim=4)
  dtype = np.dtype(getattr(images, "dtype", np.asarray(images).dtype))
  if dtype == np.uint8:
    return jnp.asarray(images, jnp.float32) / 255.0
  checks.check_floating(images, name)
  return jnp.asarray(images, jnp.float32)


@flax.struct.dataclass
class RealData:
  """The real training set on device, in the networks' space, with a table of each
  class's positions (``index_KxM``, row ``k`` holding the ``count_K[k]`` positions of class
  ``k``, padded). ``min_count``: the smallest class (static)."""

  images: jax.Array
  index_KxM: jax.Array
  count_K: jax.Array
  min_count: int = flax.struct.field(pytree_node=False)


def real_data(images_NxHxWxC: Any, labels_N: Any, num_classes: int, normalization: Normalization) -> RealData:
  """``RealData`` from pixels (float in [0, 1] or uint8) and integer labels; every class
  must have at least one image."""
  x = _as_float(images_NxHxWxC, "real_images")
  n = x.shape[0]
  labels = np.asarray(labels_N)
  checks.check_labels(labels, num_classes, "real_labels", batch=n)
  if checks.is_concrete(images_NxHxWxC):
    checks.check_range(x, 0.0, 1.0, "real_images")
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < 1:
    raise ValueError(f"real_labels: expected every class in [0, {num_classes}) to have an image; class "
                     f"{int(np.argmin(counts))} has none")
  m = int(counts.max())
  index = np.zeros((num_classes, m), np.int32)
  for k in range(num_classes):
    pos = np.flatnonzero(labels == k)
    index[k, :pos.size] = pos
    index[k, pos.size:] = pos[0]
  return RealData(normalization.apply(x), jnp.asarray(index), jnp.asarray(counts, jnp.int32), int(counts.min()))


def synthetic_labels(num_classes: int, ipc: int) -> jax.Array:
  """``[0] * ipc + [1] * ipc + ...``: the labels of a class-major synthetic set."""
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


def _sample_class(real: RealData, k: Any, key: jax.Array, n: int) -> jax.Array:
  """``n`` distinct random positions of class ``k`` (``n <= count_K[k]``; the reference's
  ``np.random.permutation(indices_class[c])[:n]``)."""
  m = real.index_KxM.shape[1]
  u = jax.random.uniform(key, (m,))
  u = jnp.where(jnp.arange(m) < real.count_K[k], u, 2.0)
  _, order = jax.lax.top_k(-u, n)
  return real.index_KxM[k, order]


# ---------------------------------------------------------------------------------------
# Configuration and state
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CondenseConfig:
  """Everything an iteration depends on besides the data and the state (hashable: the
  step compiles once per config). Build it with ``condense_config``."""

  method: str
  num_classes: int
  ipc: int
  image_shape: tuple[int, int, int]
  model: Any
  strategy: tuple[str, ...]
  outer_loop: int
  inner_loop: int
  batch_real: int = 256
  batch_train: int = 256
  lr_img: float = 0.1
  momentum_img: float = 0.5
  lr_net: float = 0.01
  distance: str = "ours"
  eps: float = 1e-6
  vectorize: bool = False
  dsa_config: DSAConfig = DSAConfig()
  loop: str = "scan"


def condense_config(method: str, num_classes: int, ipc: int, image_shape: Sequence[int], *,
                    model: Any = None, strategy: Any = "auto", flip: bool = True,
                    loops: tuple[int, int] | None = None, batch_real: int = 256, batch_train: int = 256,
                    lr_img: float | None = None, momentum_img: float = 0.5, lr_net: float = 0.01,
                    distance: str = "ours", eps: float = 1e-6, vectorize: bool | None = None,
                    dsa_config: DSAConfig = DSAConfig(), loop: str | None = None) -> CondenseConfig:
  """The settings of a condensation run, with the reference's defaults.

  method: "dc", "dsa" or "dm". model: a flax module without BatchNorm statistics (default
  ``models.get("convnet", num_classes)``: width 128, depth 3, instance norm, average
  pooling -- the reference's ConvNet). strategy: the DSA strategy ("auto":
  ``dsa.default_strategy(channels, flip)`` for DSA and DM; DC has none). loops:
  ``(outer, inner)`` for DC/DSA, default ``LOOPS[ipc]``. lr_img: default 0.1 (DC/DSA),
  1.0 (DM). distance: "ours" (``gradient_match_distance``), "mse" or "cos". vectorize: vmap
  the classes (default: everywhere but on CPU). loop: how a DC/DSA iteration runs its outer
  and inner loops -- ``"scan"`` (the iteration is one program) or ``"host"`` (a Python loop
  over jitted matching steps and network epochs: XLA:CPU runs convolutions inside while
  loops several times slower); default host on CPU, scan elsewhere. The two give the same
  iteration up to float rounding; DM has no loops.
  """
  method = _check_choice(method, "method", METHODS)
  k = checks.check_positive_int(num_classes, "num_classes", minimum=2)
  ipc = checks.check_positive_int(ipc, "ipc")
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape: expected (H, W, C), got {tuple(image_shape)}")
  distance = _check_choice(distance, "distance", DISTANCES)
  checks.check_nonnegative(eps, "eps")
  model = models.get("convnet", k) if model is None else model
  if models.has_batch_stats(model, jax.ShapeDtypeStruct((1, *shape), jnp.float32)):
    raise ValueError("model: expected a network without BatchNorm statistics (e.g. the ConvNet with "
                     "norm='instancenorm'); condensing with BatchNorm is not supported")
  if isinstance(strategy, str) and strategy == "auto":
    strategy = "none" if method == "dc" else default_strategy(shape[2], flip)
  ops = parse_strategy(strategy)
  if method == "dc" and ops:
    raise ValueError(f"strategy: method 'dc' matches without augmentation; got {strategy!r} (use method 'dsa')")
  if method == "dm":
    outer, inner = 0, 0
  elif loops is not None:
    if len(tuple(loops)) != 2:
      raise ValueError(f"loops: expected (outer, inner), got {loops!r}")
    outer = checks.check_positive_int(loops[0], "loops[0] (outer)")
    inner = checks.check_positive_int(loops[1], "loops[1] (inner)", minimum=0)
  elif ipc in LOOPS:
    outer, inner = LOOPS[ipc]
  else:
    raise ValueError(f"ipc: the reference defines (outer, inner) loops for {sorted(LOOPS)} images per class, "
                     f"got {ipc}; pass loops=(outer, inner)")
  checks.check_positive_int(batch_real, "batch_real")
  checks.check_positive_int(batch_train, "batch_train")
  lr_img = _LR_IMG[method] if lr_img is None else float(lr_img)
  checks.check_positive(lr_img, "lr_img")
  checks.check_positive(lr_net, "lr_net")
  vectorize = (not platform.is_cpu()) if vectorize is None else bool(vectorize)
  loop = _loop_form(loop)
  return CondenseConfig(method, k, ipc, shape, model, ops, outer, inner, int(batch_real), int(batch_train), lr_img,
                        float(momentum_img), float(lr_net), distance, float(eps), vectorize, dsa_config, loop)


@flax.struct.dataclass
class CondenseState:
  """The condensation state, a plain pytree (checkpoint it whole).

  images: the synthetic set, ``(K * ipc) x H x W x C`` float32 in the networks' space,
  class-major (labels ``synthetic_labels``). opt_state: optax SGD state of the images.
  iteration: int32, iterations done. key: raw uint32[2] run key (iteration ``t`` uses
  ``fold_in(key, t)``). init_index: int32 ``K * ipc``, the position in the real set of the
  image each synthetic image started from (-1 for noise).
  """

  images: jax.Array
  opt_state: Any
  iteration: jax.Array
  key: jax.Array
  init_index: jax.Array


def _image_optimizer(config: CondenseConfig) -> optax.GradientTransformation:
  return optax.sgd(config.lr_img, momentum=config.momentum_img)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _init(config: CondenseConfig, real: RealData, key: jax.Array, init: str) -> CondenseState:
  k, ipc = config.num_classes, config.ipc
  with jax.threefry_partitionable(True):
    init_key, run_key = jax.random.split(key)
  if init == "real":
    index = jnp.concatenate([_sample_class(real, c, jax.random.fold_in(init_key, c), ipc) for c in range(k)])
    images = real.images[index]
  else:
    index = jnp.full((k * ipc,), -1, jnp.int32)
    images = jax.random.normal(init_key, (k * ipc, *config.image_shape), jnp.float32)
  return CondenseState(images=images, opt_state=_image_optimizer(config).init(images),
                       iteration=jnp.zeros((), jnp.int32), key=run_key, init_index=index)


def init_state(config: CondenseConfig, real: RealData, key: jax.Array, init: str = "real") -> CondenseState:
  """The state before the first iteration: ``init="noise"`` (``N(0, 1)`` in the networks'
  space) or ``"real"`` (``ipc`` distinct random real images of each class); ValueError
  when a class has fewer than ``ipc`` images."""
  init = _check_choice(init, "init", INITS)
  if config.ipc > real.min_count:
    small = int(np.argmin(np.asarray(real.count_K)))
    raise ValueError(f"ipc: expected at most {real.min_count} images per class (class {small} has "
                     f"{real.min_count} real images), got {config.ipc}")
  if real.images.shape[1:] != config.image_shape:
    raise ValueError(f"real images: expected images of shape {config.image_shape} (the config's), got "
                     f"{real.images.shape[1:]}")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)  # the state keeps a raw key (uint32[2]), as TrainState
  with platform.fast_init_prng():
    return _init(config, real, key, init)


# ---------------------------------------------------------------------------------------
# One iteration
# ---------------------------------------------------------------------------------------

def _ce_grads(model: Model, params: Any, x: jax.Array, y: jax.Array) -> Any:
  def loss(p):
    logits = model.apply({"params": p}, x, train=False)[0]
    return jnp.mean(losses.cross_entropy(logits, y))

  return jax.grad(loss)(params)


def _class_loss(config: CondenseConfig, model: Model, params: Any, real: RealData, k: Any, syn_IxHxWxC: jax.Array,
                key: jax.Array) -> jax.Array:
  """The matching loss of class ``k``: gradient distance (DC/DSA) or squared distance of
  mean embeddings (DM); real and synthetic images augmented with the same parameters."""
  b = min(config.batch_real, real.min_count)
  x_real = real.images[_sample_class(real, k, jax.random.fold_in(key, 0), b)]
  x_syn = syn_IxHxWxC
  if config.strategy:
    p = dsa_params(jax.random.fold_in(key, 1), None, config.image_shape[:2], config.strategy,
                           config.dsa_config)
    x_real, x_syn = dsa_apply(x_real, p), dsa_apply(x_syn, p)
  if config.method == "dm":
    f_real = jax.lax.stop_gradient(models.features_of(model.apply({"params": params}, x_real, train=False), "DM"))
    f_syn = models.features_of(model.apply({"params": params}, x_syn, train=False), "DM")
    return jnp.sum(jnp.square(jnp.mean(f_real, axis=0) - jnp.mean(f_syn, axis=0)))
  label = jnp.asarray(k, jnp.int32)
  gw_real = jax.lax.stop_gradient(_ce_grads(model, params, x_real, jnp.full((b,), label)))
  gw_syn = _ce_grads(model, params, x_syn, jnp.full((config.ipc,), label))
  return _distance(config.distance, gw_syn, gw_real, config.eps)


def _total_loss(config: CondenseConfig, model: Model, params: Any, real: RealData, images: jax.Array,
                key: jax.Array) -> jax.Array:
  """The sum over classes of ``_class_loss``; class ``k`` draws from ``fold_in(key, k)``."""
  k = config.num_classes
  syn = images.reshape(k, config.ipc, *config.image_shape)
  if config.vectorize:
    keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(k))
    per_class = jax.vmap(lambda c, s, kk: _class_loss(config, model, params, real, c, s, kk))(jnp.arange(k), syn, keys)
    return jnp.sum(per_class)
  return sum(_class_loss(config, model, params, real, c, syn[c], jax.random.fold_in(key, c)) for c in range(k))


def _train_epochs(model: Model, params: Any, opt: optax.GradientTransformation, opt_state: Any, images: jax.Array,
                  labels: jax.Array, key: jax.Array, epochs: int, batch: int, strategy: tuple[str, ...],
                  dsa_config: DSAConfig, decay_at: int | None = None, decay: float = 0.1) -> tuple[Any, Any]:
  """``epochs`` epochs of mini-batch training on ``images`` (a fresh permutation from
  ``fold_in(key, epoch)``; batches of ``batch``, the last one smaller, as a PyTorch loader
  with ``shuffle=True``); per-image DSA with one operation per batch. From epoch
  ``decay_at`` on, the updates are scaled by ``decay`` and the optimiser starts afresh (the
  reference builds a new SGD, momentum buffer empty, with the decayed rate)."""
  epoch = _epoch_fn(model, opt, images, labels, key, batch, strategy, dsa_config, decay_at, decay)
  if epochs < 1:
    return params, opt_state
  return jax.lax.fori_loop(0, epochs, epoch, (params, opt_state))


def _epoch_fn(model: Model, opt: optax.GradientTransformation, images: jax.Array, labels: jax.Array, key: jax.Array,
              batch: int, strategy: tuple[str, ...], dsa_config: DSAConfig, decay_at: int | None = None,
              decay: float = 0.1) -> Callable[[Any, tuple[Any, Any]], tuple[Any, Any]]:
  """``epoch(e, (params, opt_state))``: epoch ``e`` of ``_train_epochs`` (the loop body)."""
  n = images.shape[0]
  starts = list(range(0, n, batch))
  h, w = images.shape[1:3]

  def epoch(e, carry):
    params, opt_state = carry
    scale = 1.0
    if decay_at is not None:
      fresh = opt.init(params)
      opt_state = jax.tree.map(lambda f, s: jnp.where(e == decay_at, f, s), fresh, opt_state)
      scale = jnp.where(e >= decay_at, decay, 1.0)
    ke = jax.random.fold_in(key, e)
    perm = jax.random.permutation(jax.random.fold_in(ke, 0), n)
    for i, s in enumerate(starts):
      idx = perm[s:s + batch]
      x, y = images[idx], labels[idx]
      if strategy:
        p = dsa_params(jax.random.fold_in(jax.random.fold_in(ke, 1), i), x.shape[0], (h, w), strategy,
                               dsa_config)
        x = dsa_apply(x, p)
      grads = _ce_grads(model, params, x, y)
      updates, opt_state = opt.update(grads, opt_state, params)
      if decay_at is not None:
        updates = jax.tree.map(lambda u: u * scale, updates)
      params = optax.apply_updates(params, updates)
    return params, opt_state

  return epoch


def _init_params(model: Model, key: jax.Array, image_shape: tuple[int, ...]) -> Any:
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)["params"]


def _start(config: CondenseConfig, state: CondenseState) -> tuple[Model, Any, jax.Array]:
  """The iteration's model, its freshly initialised network and the key of its loops."""
  model = as_model(config.model)
  key = jax.random.fold_in(state.key, state.iteration)
  return model, _init_params(model, jax.random.fold_in(key, 0), config.image_shape), jax.random.fold_in(key, 1)


def _match_step(config: CondenseConfig, model: Model, real: RealData, images, opt_state, params, key):
  """One update of the synthetic images by the matching loss of every class."""
  loss, g = jax.value_and_grad(lambda im: _total_loss(config, model, params, real, im, key))(images)
  updates, opt_state = _image_optimizer(config).update(g, opt_state, images)
  return optax.apply_updates(images, updates), opt_state, loss


def _inner_epoch_fn(config: CondenseConfig, model: Model, images: jax.Array, outer_key: jax.Array):
  """Epoch ``e`` of the network's training on the synthetic set after an outer loop whose
  key is ``outer_key`` (the loop body of ``_train_epochs``)."""
  return _epoch_fn(model, optax.sgd(config.lr_net), jax.lax.stop_gradient(images),
                   synthetic_labels(config.num_classes, config.ipc), jax.random.fold_in(outer_key, 1),
                   config.batch_train, config.strategy, config.dsa_config)


def _finish(config: CondenseConfig, state: CondenseState, images, opt_state, loss_sum):
  outer = 1 if config.method == "dm" else config.outer_loop
  new = state.replace(images=images, opt_state=opt_state, iteration=state.iteration + 1)
  return new, {"loss": loss_sum / (config.num_classes * outer)}


def _iteration(config: CondenseConfig, state: CondenseState, real: RealData) -> tuple[CondenseState, dict]:
  model, params, loop_key = _start(config, state)
  if config.method == "dm":
    images, opt_state, loss = _match_step(config, model, real, state.images, state.opt_state, params, loop_key)
    return _finish(config, state, images, opt_state, loss)
  net_opt = optax.sgd(config.lr_net)

  def outer(carry, ol):
    images, opt_state, params, net_state = carry
    k = jax.random.fold_in(loop_key, ol)
    images, opt_state, loss = _match_step(config, model, real, images, opt_state, params, jax.random.fold_in(k, 0))

    def inner(net):  # not after the last outer loop (the reference's break)
      return jax.lax.fori_loop(0, config.inner_loop, _inner_epoch_fn(config, model, images, k), net)

    params, net_state = jax.lax.cond(ol < config.outer_loop - 1, inner, lambda ps: ps, (params, net_state))
    return (images, opt_state, params, net_state), loss

  carry = (state.images, state.opt_state, params, net_opt.init(params))
  (images, opt_state, _, _), losses_L = jax.lax.scan(outer, carry, jnp.arange(config.outer_loop))
  return _finish(config, state, images, opt_state, jnp.sum(losses_L))


_STEP = jax.jit(_iteration, static_argnums=(0,))


# The host form of a DC/DSA iteration: the same computation, its loops run from Python.
@functools.partial(jax.jit, static_argnums=(0,))
def _host_start(config: CondenseConfig, state: CondenseState):
  _, params, loop_key = _start(config, state)
  return params, optax.sgd(config.lr_net).init(params), loop_key


@functools.partial(jax.jit, static_argnums=(0,))
def _host_match(config: CondenseConfig, real: RealData, images, opt_state, params, loop_key, ol):
  k = jax.random.fold_in(loop_key, ol)
  return _match_step(config, as_model(config.model), real, images, opt_state, params, jax.random.fold_in(k, 0))


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
def _host_inner_epoch(config: CondenseConfig, net, images, loop_key, ol, e):
  return _inner_epoch_fn(config, as_model(config.model), images, jax.random.fold_in(loop_key, ol))(e, net)


@functools.partial(jax.jit, static_argnums=(0,))
def _host_finish(config: CondenseConfig, state: CondenseState, images, opt_state, losses_L):
  return _finish(config, state, images, opt_state, jnp.sum(losses_L))


def _host_iteration(config: CondenseConfig, state: CondenseState, real: RealData) -> tuple[CondenseState, dict]:
  params, net_state, loop_key = _host_start(config, state)
  images, opt_state = state.images, state.opt_state
  losses_L = []
  for ol in range(config.outer_loop):
    ol_ = jnp.asarray(ol, jnp.int32)
    images, opt_state, loss = _host_match(config, real, images, opt_state, params, loop_key, ol_)
    losses_L.append(loss)
    if ol < config.outer_loop - 1:
      net = (params, net_state)
      for e in range(config.inner_loop):
        net = _host_inner_epoch(config, net, images, loop_key, ol_, jnp.asarray(e, jnp.int32))
      params, net_state = net
  return _host_finish(config, state, images, opt_state, jnp.stack(losses_L))


def make_step(config: CondenseConfig) -> Callable[[CondenseState, RealData], tuple[CondenseState, dict]]:
  """The iteration ``step(state, real) -> (state, {"loss": ...})`` of ``config.method``
  (see the module docstring). The loss is the reference's ``loss_avg``: the matching loss
  summed over classes, averaged over classes and outer loops, before the iteration's image
  updates. Steps of equal configs share their compiled programs. With ``config.loop ==
  "scan"`` (or DM) the step is one jitted program and ``step.lower(state, real)`` lowers it
  ahead of time; with ``"host"`` a DC/DSA step runs its loops from Python over jitted pieces
  and has no ``lower``."""
  host = config.loop == "host" and config.method != "dm"

  def step(state: CondenseState, real: RealData):
    with platform.fast_init_prng():
      return _host_iteration(config, state, real) if host else _STEP(config, state, real)

  if not host:
    def lower(state: CondenseState, real: RealData):
      with platform.fast_init_prng():
        return _STEP.lower(config, state, real)

    step.lower = lower
  return step


def clear_compiled() -> None:
  """Drops the compiled programs of condensation (``condense``, ``make_step``,
  ``init_state``). Their shapes follow the real data (its largest and smallest class), so
  each new class composition compiles its own programs, and JAX keeps them all: a loop
  that condenses many subsets (e.g. LiRA's halves of a pool) calls this between subsets to
  keep the process's memory bounded. Results do not change; the next call compiles again."""
  for fn in (_init, _STEP, _host_start, _host_match, _host_inner_epoch, _host_finish):
    fn.clear_cache()


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Condensed:
  """The result of ``condense``.

  images: the synthetic set in the networks' space (``(K * ipc) x H x W x C`` float32).
  labels: their labels (``synthetic_labels``). init_ids: for ``init="real"``, the id (or,
  without ``real_ids``, the position) of the real image each synthetic image started
  from, a numpy int64 array; None for noise. normalization: the space of ``images``.
  state: the final ``CondenseState`` (resume from it). config: the ``CondenseConfig``.
  losses: the loss of each iteration run by this call (numpy float32).
  """

  images: jax.Array
  labels: jax.Array
  init_ids: np.ndarray | None
  normalization: Normalization
  state: CondenseState
  config: CondenseConfig
  losses: np.ndarray

  def pixels(self) -> jax.Array:
    """The synthetic images as pixels (``normalization.invert``; unclipped)."""
    return self.normalization.invert(self.images)


def condense(method: str, real_images: Any, real_labels: Any, ipc: int, iterations: int, key: jax.Array, *,
             num_classes: int | None = None, init: str | None = None, real_ids: Any = None,
             normalization: Normalization | None = None, resume: CondenseState | None = None,
             callback: Callable[[CondenseState], None] | None = None, every: int = 0,
             **options: Any) -> Condensed:
  """Condenses ``real_images`` (``N x H x W x C``, float in [0, 1] or uint8) with labels
  ``real_labels`` into ``ipc`` synthetic images per class by ``iterations`` iterations of
  ``method`` ("dc", "dsa", "dm").

  init: "noise" or "real" (default: "noise" for DC, "real" for DSA and DM, as the
  reference runs). real_ids: the real images' ids, reported in ``init_ids``.
  normalization: the networks' input space (default ``Normalization.of(real_images)``).
  resume: a saved ``CondenseState`` (e.g. ``result.state``, or its leaves restored from a
  checkpoint) to continue from; ``key`` and ``init`` are then unused, and the run ends
  bitwise equal to an uninterrupted one. callback: called with the state after every
  ``every`` iterations (e.g. to checkpoint it). ``options`` go to ``condense_config``
  (model, strategy, flip, loops, batch_real, lr_img, ...). Calls on real sets of the same
  class sizes share their compiled programs; a loop over many subsets calls
  ``clear_compiled`` between them.

  ValueError for an unknown method or init (listing the accepted ones), ``ipc`` above the
  smallest class, or a ``resume`` state of another shape.
  """
  method = _check_choice(method, "method", METHODS)
  init = _DEFAULT_INIT[method] if init is None else _check_choice(init, "init", INITS)
  ipc = checks.check_positive_int(ipc, "ipc")
  iterations = checks.check_positive_int(iterations, "iterations", minimum=0)
  labels = np.asarray(real_labels)
  checks.check_shape(real_images, "real_images", ndim=4)
  checks.check_shape(labels, "real_labels", shape=(np.shape(real_images)[0],))
  if num_classes is None:
    num_classes = int(labels.max()) + 1 if labels.size else 0
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  checks.check_labels(labels, num_classes, "real_labels")
  counts = np.bincount(labels, minlength=num_classes)
  if ipc > counts.min():
    raise ValueError(f"ipc: expected at most {int(counts.min())} images per class (class {int(np.argmin(counts))} "
                     f"has {int(counts.min())} real images), got {ipc}")
  config = condense_config(method, num_classes, ipc, np.shape(real_images)[1:], **options)
  if normalization is None:
    normalization = Normalization.of(real_images)
  real = real_data(real_images, labels, num_classes, normalization)
  if resume is not None:
    expected = jax.eval_shape(lambda: _init(config, real, jax.random.key_data(jax.random.key(0)), "real"))
    if jax.tree.structure(resume) != jax.tree.structure(expected) or any(
        np.shape(a) != b.shape for a, b in zip(jax.tree.leaves(resume), jax.tree.leaves(expected))):
      raise ValueError("resume: expected a CondenseState of this run's shapes "
                       f"({jax.tree.map(lambda a: a.shape, expected)}), got {jax.tree.map(np.shape, resume)}")
    state = jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), resume, expected)
    start = int(state.iteration)
    if start > iterations:
      raise ValueError(f"iterations: expected at least the resumed state's iteration {start}, got {iterations}")
  else:
    state = init_state(config, real, key, init)
    start = 0
  step = make_step(config)
  every = checks.check_positive_int(every, "every", minimum=0)
  run_losses = []
  for t in range(start, iterations):
    state, metrics = step(state, real)
    run_losses.append(metrics["loss"])
    if callback is not None and every and (t + 1) % every == 0:
      callback(state)
  index = np.asarray(state.init_index).astype(np.int64)
  init_ids = None
  if bool(np.all(index >= 0)):
    init_ids = index if real_ids is None else np.asarray(real_ids)[index].astype(np.int64)
  return Condensed(images=state.images, labels=synthetic_labels(num_classes, ipc), init_ids=init_ids,
                   normalization=normalization, state=state, config=config,
                   losses=np.asarray(jnp.stack(run_losses)) if run_losses else np.zeros((0,), np.float32))


# ---------------------------------------------------------------------------------------
# Evaluation: fresh networks trained on the synthetic set, seeds vmapped
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _EvalSpec:
  model: Any
  epochs: int
  batch_train: int
  lr: float
  momentum: float
  weight_decay: float
  strategy: tuple[str, ...]
  dsa_config: DSAConfig
  eval_batch: int
  vectorize: bool


def _eval_optimizer(spec: _EvalSpec) -> optax.GradientTransformation:
  return train.make_optimizer(ml_collections.ConfigDict(dict(
      name="sgd", lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, schedule="constant")),
      steps_per_epoch=1, epochs=1)


def _decay_at(spec: _EvalSpec) -> int:
  # range(e + 1) passes; after pass e // 2 + 1, lr x0.1 with a fresh optimiser (the reference's lr_schedule)
  return spec.epochs // 2 + 2


def _train_fresh(spec: _EvalSpec, model: Model, opt: optax.GradientTransformation, images, labels, key):
  """The parameters of a fresh network (``fold_in(key, 0)``) trained by the recipe of ``spec``
  on ``images`` (batches and augmentations from ``fold_in(key, 1)``)."""
  params = _init_params(model, jax.random.fold_in(key, 0), images.shape[1:])
  params, _ = _train_epochs(model, params, opt, opt.init(params), images, labels, jax.random.fold_in(key, 1),
                            spec.epochs + 1, spec.batch_train, spec.strategy, spec.dsa_config, decay_at=_decay_at(spec))
  return params


def _accuracy(spec: _EvalSpec, model: Model, params, test_x, test_y) -> jax.Array:
  """The test accuracy of one network (a scan over test batches of ``spec.eval_batch``)."""
  n_test = test_x.shape[0]
  steps = -(-n_test // spec.eval_batch)
  pos_SxB = jnp.minimum(jnp.arange(steps * spec.eval_batch), n_test - 1).reshape(steps, spec.eval_batch)
  mask_SxB = (jnp.arange(steps * spec.eval_batch) < n_test).reshape(steps, spec.eval_batch)

  def body(correct, xs):
    pos, mask = xs
    logits = model.apply({"params": params}, test_x[pos], train=False)[0]
    return correct + jnp.sum((jnp.argmax(logits, -1) == test_y[pos]) & mask), None

  correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (pos_SxB, mask_SxB))
  return correct / n_test


def _over_seeds(spec: _EvalSpec, fn, *xs):
  """``fn`` over the leading (seed) axis of ``xs``: vmapped, or one after another."""
  return jax.vmap(fn)(*xs) if spec.vectorize else jax.lax.map(lambda a: fn(*a), xs)


@functools.partial(jax.jit, static_argnums=(0,))
def _evaluate(spec: _EvalSpec, images, labels, test_x, test_y, keys):
  model = as_model(spec.model)
  opt = _eval_optimizer(spec)

  def one(key):
    params = _train_fresh(spec, model, opt, images, labels, key)
    return _accuracy(spec, model, params, test_x, test_y), params

  return _over_seeds(spec, one, keys)


@functools.partial(jax.jit, static_argnums=(0,))
def _accuracy_sets(spec: _EvalSpec, params_S, test_x, test_y):
  model = as_model(spec.model)
  return _over_seeds(spec, lambda p: _accuracy(spec, model, p, test_x, test_y), params_S)


def evaluate_synthetic(images: jax.Array, labels: jax.Array, test_images: Any, test_labels: Any, keys: Any, *,
                       model: Any = None, normalization: Normalization | None = None, epochs: int = 1000,
                       batch_train: int = 256, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                       strategy: Any = None, dsa_config: DSAConfig = DSAConfig(),
                       eval_batch: int = 256, vectorize: bool = True, num_classes: int | None = None,
                       return_params: bool = False, loop: str | None = None):
  """Test accuracies of fresh networks trained on a synthetic set, one per seed, the
  seeds trained together under ``jax.vmap`` (``vectorize=False``: one after another).
  loop: ``"scan"`` (all of it one program) or ``"host"`` (one jitted epoch per call, as
  ``train_on_sets``; XLA:CPU runs convolutions inside while loops several times slower);
  default host on CPU, scan elsewhere. The two train the same networks up to float rounding.

  images, labels: the synthetic set, in the networks' space (``Condensed.images``,
  ``.labels``). test_images: pixels (float in [0, 1] or uint8), mapped into that space by
  ``normalization`` (``Condensed.normalization``; None: used as given). keys: one PRNG key
  per seed (``jax.random.split(key, S)``) or a sequence of int seeds; seed ``s`` draws the
  network from ``fold_in(key_s, 0)`` and its batches and augmentations from
  ``fold_in(key_s, 1)``. model: a network without BatchNorm statistics, default
  ``models.get("convnet", num_classes)`` (default: the largest label + 1).

  The reference's recipe (``evaluate_synset``): SGD lr 0.01, momentum 0.9, coupled weight
  decay 5e-4, batch 256 (the last batch smaller), ``epochs + 1`` passes (its
  ``range(Epoch + 1)``), lr x0.1 and a fresh optimiser after pass ``epochs // 2 + 1``;
  ``epochs`` 1000 with DSA augmentation (``strategy``: pass the condensation's, as the
  reference does for DSA and DM), 300 without (DC; the reference's DC-specific augmentation
  of MNIST, ``get_daparam``, is not implemented). Returns the accuracies (float32, ``S``),
  and with ``return_params`` also the trained parameters stacked over seeds.
  """
  checks.check_shape(images, "images", ndim=4)
  checks.check_floating(images, "images")
  checks.check_shape(labels, "labels", shape=(images.shape[0],))
  checks.check_shape(test_images, "test_images", ndim=4)
  if np.shape(test_images)[1:] != images.shape[1:]:
    raise ValueError(f"test_images: expected images of shape {images.shape[1:]} (the synthetic set's), "
                     f"got {np.shape(test_images)[1:]}")
  checks.check_shape(test_labels, "test_labels", shape=(np.shape(test_images)[0],))
  epochs = checks.check_positive_int(epochs, "epochs", minimum=0)
  if isinstance(keys, (list, tuple)) and all(isinstance(s, (int, np.integer)) for s in keys):
    keys = [jax.random.PRNGKey(int(s)) for s in keys]
  if len(keys) < 1:
    raise ValueError("keys: expected at least one seed")
  keys = keys if isinstance(keys, jax.Array) else jnp.stack([jnp.asarray(k) for k in keys])
  if num_classes is None:
    num_classes = max(int(np.max(np.asarray(labels))), int(np.max(np.asarray(test_labels)))) + 1
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  checks.check_labels(np.asarray(labels), num_classes, "labels", batch=images.shape[0])
  checks.check_labels(np.asarray(test_labels), num_classes, "test_labels")
  model = models.get("convnet", num_classes) if model is None else model
  if models.has_batch_stats(model, jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)):
    raise ValueError("model: expected a network without BatchNorm statistics (e.g. the ConvNet with "
                     "norm='instancenorm')")
  test_x = _as_float(test_images, "test_images")
  if normalization is not None:
    test_x = normalization.apply(test_x)
  loop = _loop_form(loop)
  spec = _EvalSpec(model, epochs, checks.check_positive_int(batch_train, "batch_train"), float(lr), float(momentum),
                   float(weight_decay), parse_strategy(strategy), dsa_config,
                   checks.check_positive_int(eval_batch, "eval_batch"), bool(vectorize))
  images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
  test_y = jnp.asarray(test_labels, jnp.int32)
  with platform.fast_init_prng():
    if loop == "scan":
      acc, params = _evaluate(spec, images, labels, test_x, test_y, keys)
    else:  # the seeds together (vectorize) or one at a time, each epoch one call
      groups = [keys] if vectorize else [keys[s:s + 1] for s in range(keys.shape[0])]
      trained = [_train_sets_host(spec, jnp.broadcast_to(images, (len(g), *images.shape)),
                                  jnp.broadcast_to(labels, (len(g), *labels.shape)), g) for g in groups]
      params = jax.tree.map(lambda *a: jnp.concatenate(a), *trained)
      acc = _accuracy_sets(spec, params, test_x, test_y)
  acc = acc.astype(jnp.float32)
  return (acc, params) if return_params else acc


# ---------------------------------------------------------------------------------------
# Training on many sets at once: one network per set, the sets vmapped
# ---------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _train_sets_scan(spec: _EvalSpec, images_M, labels_M, keys_M):
  model = as_model(spec.model)
  opt = _eval_optimizer(spec)
  return _over_seeds(spec, lambda x, y, k: _train_fresh(spec, model, opt, x, y, k), images_M, labels_M, keys_M)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_sets(spec: _EvalSpec, keys_M, image_shape):
  model = as_model(spec.model)
  opt = _eval_optimizer(spec)

  def one(key):
    params = _init_params(model, jax.random.fold_in(key, 0), image_shape)
    return params, opt.init(params)

  return jax.vmap(one)(keys_M)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
def _epoch_sets(spec: _EvalSpec, carry_M, images_M, labels_M, keys_M, e):
  model = as_model(spec.model)
  opt = _eval_optimizer(spec)

  def one(carry, x, y, key):
    epoch = _epoch_fn(model, opt, x, y, jax.random.fold_in(key, 1), spec.batch_train, spec.strategy, spec.dsa_config,
                      decay_at=_decay_at(spec))
    return epoch(e, carry)

  return jax.vmap(one)(carry_M, images_M, labels_M, keys_M)


def train_on_sets(images_MxSxHxWxC: Any, labels_MxS: Any, keys_M: Any, *, model: Any = None, epochs: int = 1000,
                  batch_train: int = 256, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                  strategy: Any = None, dsa_config: DSAConfig = DSAConfig(), num_classes: int | None = None,
                  loop: str | None = None, vectorize: bool = True) -> Any:
  """Trains one fresh network on each of M training sets of equal size, all M together
  (a ``jax.vmap`` over the sets' images, labels and keys), by ``evaluate_synthetic``'s recipe.

  Network m is exactly the network ``evaluate_synthetic(images[m], labels[m], ...,
  keys=keys[m:m + 1], return_params=True)`` trains (same initialisation, batches,
  augmentations and learning-rate drop; equal up to the float rounding of batched
  convolutions): the generalisation of its seeds axis to one set per seed, e.g. the
  condensed sets (or real subsets) of M membership-inference targets.

  Args:
    images_MxSxHxWxC: float32 sets in the networks' space (``Condensed.images`` stacked;
      real images mapped by ``Normalization.apply``).
    labels_MxS: int labels.
    keys_M: one PRNG key per set (``M x 2`` raw keys, or a sequence of int seeds).
    model, epochs, batch_train, lr, momentum, weight_decay, strategy, dsa_config,
      num_classes: as ``evaluate_synthetic``.
    loop: ``"scan"`` (every epoch inside one program, as ``evaluate_synthetic``) or
      ``"host"`` (one jitted, vmapped epoch per call; XLA:CPU runs convolutions inside
      while loops several times slower); default host on CPU, scan elsewhere.
    vectorize: with ``loop="scan"``, vmap the sets (False: one after another in one
      program).

  Returns:
    The trained parameters, stacked over the M sets (a leading axis on every leaf).
  """
  checks.check_shape(images_MxSxHxWxC, "images_MxSxHxWxC", ndim=5)
  checks.check_floating(images_MxSxHxWxC, "images_MxSxHxWxC")
  m, s = np.shape(images_MxSxHxWxC)[:2]
  if m < 1 or s < 1:
    raise ValueError(f"images_MxSxHxWxC: expected at least one set of at least one image, got shape "
                     f"{np.shape(images_MxSxHxWxC)}")
  checks.check_shape(labels_MxS, "labels_MxS", shape=(m, s))
  if isinstance(keys_M, (list, tuple)) and all(isinstance(k, (int, np.integer)) for k in keys_M):
    keys_M = jnp.stack([jax.random.PRNGKey(int(k)) for k in keys_M])
  keys_M = jnp.asarray(keys_M)
  if keys_M.ndim != 2 or keys_M.shape[0] != m:
    raise ValueError(f"keys_M: expected one raw PRNG key per set ({m} x 2), got shape {keys_M.shape}")
  labels = np.asarray(labels_MxS)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  checks.check_positive_int(num_classes, "num_classes", minimum=2)
  checks.check_labels(labels.reshape(-1), num_classes, "labels_MxS")
  epochs = checks.check_positive_int(epochs, "epochs", minimum=0)
  image_shape = tuple(int(d) for d in np.shape(images_MxSxHxWxC)[2:])
  model = models.get("convnet", num_classes) if model is None else model
  if models.has_batch_stats(model, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)):
    raise ValueError("model: expected a network without BatchNorm statistics (e.g. the ConvNet with "
                     "norm='instancenorm')")
  loop = _loop_form(loop)
  spec = _EvalSpec(model, epochs, checks.check_positive_int(batch_train, "batch_train"), float(lr), float(momentum),
                   float(weight_decay), parse_strategy(strategy), dsa_config, 1, bool(vectorize))
  images = jnp.asarray(images_MxSxHxWxC, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  with platform.fast_init_prng():
    if loop == "scan":
      return _train_sets_scan(spec, images, labels, keys_M)
    return _train_sets_host(spec, images, labels, keys_M)


def _loop_form(loop: str | None) -> str:
  """``loop`` checked, or its default: host on CPU, scan elsewhere."""
  return ("host" if platform.is_cpu() else "scan") if loop is None else _check_choice(loop, "loop", LOOP_FORMS)


def _train_sets_host(spec: _EvalSpec, images_M, labels_M, keys_M):
  """``_train_sets_scan``'s networks, one jitted epoch of all M per call."""
  carry = _init_sets(spec, keys_M, tuple(images_M.shape[2:]))
  for e in range(spec.epochs + 1):
    carry = _epoch_sets(spec, carry, images_M, labels_M, keys_M, jnp.asarray(e, jnp.int32))
  return carry[0]
