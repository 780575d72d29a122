"""Surrogate-free poisons (AR, LSP, OPS): their norm constraints and class structure, and
poison directories that poison_io reads back like crafted ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_host
from jaxprotect import data, parallel
from jaxprotect.unlearnable import baselines, poison_io

K = 4


@pytest.fixture(scope="module")
def grey():
  """Mid-grey images (values 100..155): no box clipping binds, so norms are exact."""
  rng = np.random.default_rng(0)
  images = rng.integers(100, 156, (16, 12, 12, 3), dtype=np.uint8)
  return images, (np.arange(16) % K).astype(np.int32)


@pytest.fixture(scope="module")
def coefficients():
  return baselines.ar_coefficients(jax.random.PRNGKey(0), K, 3, (12, 12), min_response=2.0, max_candidates=4096)


@pytest.fixture(scope="module")
def ds():
  return data.to_device(synthetic_host(image_shape=(12, 12, 3), n=32, num_classes=K))


def _l2(delta):
  return np.sqrt(np.sum(np.square(delta.astype(np.float64)), axis=(1, 2, 3)))


# ---------------------------------------------------------------- AR


def test_ar_coefficients_are_normalised_processes_whose_own_filter_is_blind_to_them(coefficients):
  assert coefficients.shape == (K, 3, 3, 3) and coefficients.dtype == np.float32
  np.testing.assert_array_equal(coefficients[:, 2, 2, :], 0.0)
  np.testing.assert_allclose(coefficients.sum(axis=(1, 2)), 1.0, rtol=1e-5)
  noise = np.asarray(baselines.ar_noise(jax.random.PRNGKey(1), coefficients, np.arange(K), (12, 12)), np.float64)
  for k in range(K):
    unit = noise[k] / np.sqrt(np.sum(noise[k] ** 2))
    resp = baselines.ar_filter_response(coefficients, unit)
    assert resp[k] < 1e-4 * resp.max()  # the matching filter gives (numerically) zero
    assert np.delete(resp, k).min() > 0.1


def test_ar_noise_follows_the_recursion_and_does_not_depend_on_the_chunk(coefficients):
  labels = np.array([0, 1, 2, 3, 0, 1, 2])
  a = np.asarray(baselines.ar_noise(jax.random.PRNGKey(2), coefficients, labels, (9, 10), crop=0, chunk=3))
  b = np.asarray(baselines.ar_noise(jax.random.PRNGKey(2), coefficients, labels, (9, 10), crop=0, chunk=7))
  np.testing.assert_array_equal(a, b)
  x, co = a[4].astype(np.float64), coefficients[0].astype(np.float64)
  for r, c in [(2, 2), (5, 7), (8, 9)]:
    want = np.sum(co * x[r - 2:r + 1, c - 2:c + 1], axis=(0, 1))
    np.testing.assert_allclose(x[r, c], want, rtol=1e-4, atol=1e-5)


def test_ar_perturbations_have_the_l2_budget_and_class_rows(grey, coefficients):
  images, labels = grey
  d = baselines.ar_perturbation(jax.random.PRNGKey(3), images, labels, K, eps=1.0, coefficients=coefficients)
  assert d.shape == images.shape and d.dtype == np.float32
  np.testing.assert_allclose(_l2(d), 1.0, rtol=1e-5)  # mid-grey images: no clipping
  assert len({row.tobytes() for row in d}) == len(d)  # sample-wise: a fresh signal per image
  dc = baselines.ar_perturbation(jax.random.PRNGKey(3), images, labels, K, eps=0.5, mode="class",
                                 coefficients=coefficients)
  assert dc.shape == (K, 12, 12, 3)
  np.testing.assert_allclose(_l2(dc), 0.5, rtol=1e-5)
  # on saturated images the box clip only shrinks the norm
  white = np.full_like(images, 255)
  dw = baselines.ar_perturbation(jax.random.PRNGKey(3), white, labels, K, eps=1.0, coefficients=coefficients)
  assert np.all(_l2(dw) <= 1.0 + 1e-6) and np.all(white / 255.0 + dw <= 1.0)


# ---------------------------------------------------------------- LSP


def test_lsp_perturbations_have_the_l2_budget_and_constant_patches(grey):
  images, labels = grey
  eps = float(np.sqrt(12 * 12 * 3) * 6 / 255)
  d = baselines.lsp_perturbation(jax.random.PRNGKey(0), images, labels, K, patch_size=4)
  assert d.shape == images.shape and d.dtype == np.float32
  np.testing.assert_allclose(_l2(d), eps, rtol=1e-5)
  blocks = d.reshape(16, 3, 4, 3, 4, 3)  # rows of 4 x 4 patches per channel
  np.testing.assert_allclose(blocks, blocks[:, :, :1, :, :1, :].repeat(4, 2).repeat(4, 4), atol=1e-7)
  dc = baselines.lsp_perturbation(jax.random.PRNGKey(0), images, labels, K, eps=0.7, patch_size=4, mode="class")
  assert dc.shape == (K, 12, 12, 3)
  np.testing.assert_allclose(_l2(dc), 0.7, rtol=1e-5)
  # class patterns: constant blocks of +-1 (hypercube vertices), distinct between classes
  signs = np.sign(dc[:, ::4, ::4, :]).reshape(K, -1)
  assert len({row.tobytes() for row in signs}) == K
  assert np.allclose(np.abs(dc), np.abs(dc).max(axis=(1, 2, 3), keepdims=True))
  # sample-wise points cluster around their class's pattern
  corr = np.einsum("nd,kd->nk", d.reshape(16, -1), dc.reshape(K, -1))
  assert np.mean(np.argmax(corr, axis=1) == labels) >= 0.75


def test_lsp_with_an_image_sized_patch_needs_enough_patterns(grey):
  images, labels = grey
  with pytest.raises(ValueError, match="patch_size"):
    baselines.lsp_perturbation(jax.random.PRNGKey(0), images[..., :1], labels, K, patch_size=12)


# ---------------------------------------------------------------- OPS


def _brute_force_scores(images, labels, k):
  """The OPS objective written out: mean / std of |colour - x| over the class's images and channels."""
  x = images[labels == k].astype(np.float64) / 255
  c = images.shape[-1]
  out = np.zeros(images.shape[1:3] + (2 ** c,))
  for v in range(2 ** c):
    colour = np.array([(v >> (c - 1 - i)) & 1 for i in range(c)], np.float64)
    d = np.abs(colour - x)
    out[..., v] = d.mean(axis=(0, 3)) / d.std(axis=(0, 3))
  return out.reshape(-1, 2 ** c)


def test_ops_search_maximises_the_papers_objective_with_distinct_pairs(grey):
  images, labels = grey
  positions, colours, scores = baselines.ops_search(images, labels, K)
  taken = set()
  for k in range(K):
    ref = _brute_force_scores(images, labels, k)
    for p, v in taken:
      ref[p, v] = -np.inf
    best = np.unravel_index(np.argmax(ref), ref.shape)
    pos = int(positions[k, 0]) * 12 + int(positions[k, 1])
    v = int("".join(str(int(b)) for b in colours[k]), 2)
    np.testing.assert_allclose(scores[k], ref[best], rtol=1e-9)
    np.testing.assert_allclose(ref[pos, v], ref[best], rtol=1e-9)
    taken.add((pos, v))
  assert len(taken) == K


def test_ops_changes_exactly_one_pixel_per_image_to_its_class_colour(grey):
  images, labels = grey  # values 100..155: every channel of the chosen pixel changes
  positions, colours, _ = baselines.ops_search(images, labels, K)
  d = baselines.ops_perturbation(images, labels, K, positions, colours)
  assert d.shape == images.shape and d.dtype == np.float32
  changed = np.any(d != 0, axis=-1)
  assert np.all(changed.sum(axis=(1, 2)) == 1)  # L0 = 1 pixel
  poisoned = np.clip(images / 255.0 + d, 0, 1)
  for i in range(len(images)):
    r, c = positions[labels[i]]
    assert changed[i, r, c]
    np.testing.assert_allclose(poisoned[i, r, c], colours[labels[i]], atol=1e-6)
  # class-wise: every image of a class has the same pixel set to the same colour
  for k in range(K):
    r, c = positions[k]
    assert np.allclose(poisoned[labels == k][:, r, c], colours[k], atol=1e-6)


def test_ops_on_constant_pixels_takes_the_perfect_shortcut():
  images = np.full((8, 4, 4, 1), 30, np.uint8)
  images[:, 1:, :, :] = np.random.default_rng(0).integers(0, 256, (8, 3, 4, 1), dtype=np.uint8)
  labels = np.arange(8) % 2
  positions, colours, scores = baselines.ops_search(images, labels, 2)
  assert np.all(np.isinf(scores))  # a constant first row: std 0 and mean > 0 for either colour
  assert np.all(positions[:, 0] == 0)
  assert (tuple(positions[0]), int(colours[0, 0])) != (tuple(positions[1]), int(colours[1, 0]))


# ---------------------------------------------------------------- poison directories


@pytest.mark.parametrize("name,mode,kwargs", [
    ("ar", "sample", {}), ("ar", "class", {}), ("lsp", "sample", {"patch_size": 4}),
    ("lsp", "class", {"patch_size": 4}), ("ops", "sample", {}),
])
def test_save_baseline_is_read_back_by_poison_io(tmp_path, ds, coefficients, name, mode, kwargs):
  if name == "ar":
    kwargs = {"coefficients": coefficients}
  manifest = baselines.save_baseline(tmp_path / name, name, ds, seed=1, mode=mode, **kwargs)
  assert manifest["method"] == name and manifest["mode"] == mode
  assert manifest["config"]["craft"]["seed"] == 1
  poison = poison_io.load_poison(tmp_path / name, ds)
  assert poison.mode == mode
  rows = ds.train.size if mode == "sample" else K
  assert poison.delta.shape == (rows, 12, 12, 3) and poison.delta.dtype == np.float32
  out = poison_io.apply(ds, poison)
  assert out.train.delta_mode == mode and out.fingerprint != ds.fingerprint
  x, y = jax.jit(lambda s: s.gather(jnp.arange(s.size)))(out.train)
  clean = np.asarray(parallel.to_host(ds.train.images)) / 255.0
  delta = poison.delta if mode == "sample" else poison.delta[np.asarray(y)]
  np.testing.assert_allclose(np.asarray(x), np.clip(clean + delta, 0, 1), atol=1e-6)
  if name == "ops":
    assert manifest["eps"] is None and manifest["config"]["craft"]["norm"] == "l0"
    assert np.all(np.any(poison.delta != 0, axis=-1).sum(axis=(1, 2)) <= 1)
  else:
    eps = manifest["eps"]
    assert np.all(_l2(poison.delta) <= eps * (1 + 1e-5))


def test_bad_inputs_name_the_argument(grey, ds, tmp_path):
  images, labels = grey
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="name"):
    baselines.save_baseline(tmp_path / "x", "tap", ds)
  with pytest.raises(ValueError, match="mode"):
    baselines.save_baseline(tmp_path / "x", "ops", ds, mode="class")
  with pytest.raises(ValueError, match="eps"):
    baselines.lsp_perturbation(key, images, labels, K, eps=0.0)
  with pytest.raises(ValueError, match="mode"):
    baselines.lsp_perturbation(key, images, labels, K, mode="pixel")
  with pytest.raises(ValueError, match="patch_size"):
    baselines.lsp_perturbation(key, images, labels, K, patch_size=0)
  with pytest.raises(ValueError, match="images_u8"):
    baselines.ops_search(images.astype(np.float32), labels, K)
  with pytest.raises(ValueError, match="labels_N"):
    baselines.ops_search(images, labels + K, K)
  with pytest.raises(ValueError, match="coefficients"):
    baselines.ar_perturbation(key, images, labels, K, coefficients=np.zeros((K, 2, 2, 3)))
  with pytest.raises(ValueError, match="min_response"):
    baselines.ar_coefficients(key, K, 3, (12, 12), min_response=1e9, max_candidates=256)
  assert not (tmp_path / "x").exists()
