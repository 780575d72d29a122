"""Augmentation inside jit: crop, flip and cutout against direct numpy definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprotect.data import augment


@pytest.fixture(scope="module")
def img():
  return jnp.asarray(np.random.default_rng(0).uniform(size=(8, 10, 3)), jnp.float32)


def test_crop_is_a_window_of_the_zero_padded_image(img):
  padded = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)))
  seen = set()
  for i in range(30):
    out = np.asarray(augment.random_crop(jax.random.PRNGKey(i), img, 2))
    hits = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(out, padded[dy:dy + 8, dx:dx + 10])]
    assert hits, "crop is not a window of the padded image"
    seen.add(hits[0])
  assert len(seen) > 5  # offsets actually vary


def test_flip_is_identity_or_mirror_and_both_occur(img):
  outs = [np.asarray(augment.random_flip(jax.random.PRNGKey(i), img)) for i in range(20)]
  mirrored = [np.array_equal(o, np.asarray(img)[:, ::-1]) for o in outs]
  same = [np.array_equal(o, np.asarray(img)) for o in outs]
  assert all(m or s for m, s in zip(mirrored, same))
  assert any(mirrored) and any(same)


def test_cutout_zeroes_a_clipped_square(img):
  size = 4
  for i in range(20):
    out = np.asarray(augment.cutout(jax.random.PRNGKey(i), img + 1.0, size))
    zero = np.all(out == 0, axis=-1)
    ys, xs = np.nonzero(zero)
    assert 0 < zero.sum() <= size * size
    # a full (clipped) rectangle, at most size x size, and everything else untouched
    assert zero.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert ys.max() - ys.min() < size and xs.max() - xs.min() < size
    np.testing.assert_array_equal(out[~zero], np.asarray(img + 1.0)[~zero])


def test_batch_augmentation_is_per_example_and_reproducible():
  x = jnp.tile(jnp.arange(6 * 6, dtype=jnp.float32).reshape(1, 6, 6, 1), (16, 1, 1, 1))
  cfg = augment.AugmentConfig.parse("crop2,flip,cutout2")
  a = augment.augment_batch(jax.random.PRNGKey(1), x, cfg)
  b = augment.augment_batch(jax.random.PRNGKey(1), x, cfg)
  np.testing.assert_array_equal(a, b)
  assert len({np.asarray(a[i]).tobytes() for i in range(16)}) > 8  # examples differ


def test_parse_rejects_unknown_augmentation():
  assert augment.AugmentConfig.parse("none") == augment.AugmentConfig()
  with pytest.raises(ValueError, match="blur"):
    augment.AugmentConfig.parse("crop4,blur")
