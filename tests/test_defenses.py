"""Defenses against unlearnable examples: image shortcut squeezing, MixUp / CutMix, UEraser's
augmentations and max-loss selection, and adversarial training's inner attack and step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_host
from jaxprotect import data, defenses, losses, parallel, train
from jaxprotect.defenses import augment, iss


@pytest.fixture(scope="module")
def u8():
  return np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)


# ---------------------------------------------------------------- image shortcut squeezing


def test_jpeg_decodes_to_the_same_shape_differs_and_matches_pillow(u8):
  out = iss.jpeg(u8, quality=10)
  assert out.shape == u8.shape and out.dtype == np.uint8
  assert np.abs(out.astype(int) - u8).mean() > 5  # quality 10 on noise loses a lot
  buf = __import__("io").BytesIO()
  Image.fromarray(u8[0]).save(buf, format="JPEG", quality=10)
  np.testing.assert_array_equal(out[0], np.asarray(Image.open(buf)))
  gray = iss.jpeg(u8[..., :1], quality=50)
  assert gray.shape == u8[..., :1].shape and not np.array_equal(gray, u8[..., :1])
  assert np.array_equal(iss.jpeg(u8, 95), iss.jpeg(u8, 95))  # deterministic


def test_grayscale_has_equal_channels_matches_pillow_and_refuses_one_channel(u8):
  out = iss.grayscale(u8)
  assert out.shape == u8.shape and out.dtype == np.uint8
  assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
  for i in range(len(u8)):
    np.testing.assert_array_equal(out[i, ..., 0], np.asarray(Image.fromarray(u8[i]).convert("L")))
  with pytest.raises(ValueError, match="does not apply to one-channel images"):
    iss.grayscale(u8[..., :1])


def test_bit_depth_leaves_at_most_four_levels_at_two_bits(u8):
  out = iss.bit_depth(u8, bits=2)
  assert out.shape == u8.shape and out.dtype == np.uint8
  assert set(np.unique(out).tolist()) <= {0, 64, 128, 192}
  assert len(np.unique(out)) <= 4
  np.testing.assert_array_equal(iss.bit_depth(u8, 8), u8)
  assert len(np.unique(iss.bit_depth(u8, 1))) <= 2


def _high_frequency_energy(images):
  spec = np.abs(np.fft.fft2(images.astype(np.float64) - images.mean(axis=(1, 2), keepdims=True), axes=(1, 2))) ** 2
  f = np.abs(np.fft.fftfreq(images.shape[1]))
  high = (f[:, None] >= 0.25) | (f[None, :] >= 0.25)
  return spec[:, high].sum()


def test_gaussian_blur_lowers_high_frequency_energy_and_reference_sigma_is_identity(u8):
  out = iss.gaussian_blur(u8, kernel_size=5, sigma=1.0)
  assert out.shape == u8.shape and out.dtype == np.uint8
  assert _high_frequency_energy(out) < 0.3 * _high_frequency_energy(u8)
  # the reference's (3, 0.1) kernel has side weights exp(-50): uint8 images come back unchanged
  np.testing.assert_array_equal(iss.gaussian_blur(u8), u8)


def test_squeeze_dataset_rounds_the_perturbed_images_and_squeezes_them():
  ds = data.to_device(synthetic_host(image_shape=(8, 8, 3), n=16, num_classes=4, test_size=8),
                      parallel.make_mesh(1))
  delta = np.full((4, 8, 8, 3), 3 / 255, np.float32)
  poisoned = ds.with_perturbation(jnp.asarray(delta), "class")
  out = iss.squeeze_dataset(poisoned, "bit_depth", bits=2)
  want = iss.bit_depth(np.clip(np.asarray(ds.train.images).astype(int) + 3, 0, 255).astype(np.uint8), 2)
  np.testing.assert_array_equal(np.asarray(out.train.images), want)
  assert out.train.delta is None and out.fingerprint != poisoned.fingerprint
  np.testing.assert_array_equal(np.asarray(out.test.images), np.asarray(ds.test.images))


def test_squeezing_refuses_bad_settings(u8):
  for fn, kwargs, name in [(iss.jpeg, dict(quality=0), "quality"), (iss.jpeg, dict(quality=101), "quality"),
                           (iss.bit_depth, dict(bits=0), "bits"), (iss.bit_depth, dict(bits=9), "bits"),
                           (iss.gaussian_blur, dict(kernel_size=4), "kernel_size"),
                           (iss.gaussian_blur, dict(sigma=0.0), "sigma"), (iss.squeeze, dict(method="png"), "method")]:
    with pytest.raises(ValueError, match=name):
      fn(u8, **kwargs)
  with pytest.raises(ValueError, match="uint8"):
    iss.jpeg(u8.astype(np.float32))


# ---------------------------------------------------------------- MixUp and CutMix


def _constant_batch(b=4, h=8, w=8):
  """Image i is the constant (i + 1) / 10: a pixel tells which image it came from."""
  values = (np.arange(b) + 1) / 10
  return jnp.asarray(np.broadcast_to(values[:, None, None, None], (b, h, w, 3)), jnp.float32), jnp.arange(b)


def test_mixup_soft_labels_sum_to_one_and_mix_with_the_images_weights():
  x, y = _constant_batch()
  values = (np.arange(4) + 1) / 10
  for seed in range(10):
    xm, soft = augment.mixup(jax.random.PRNGKey(seed), x, y, 4)
    xm, soft = np.asarray(xm), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    assert np.all(soft >= 0)
    # each mixed image is the label-weighted mean of the constants
    np.testing.assert_allclose(xm[:, 0, 0, 0], soft @ values, rtol=1e-5, atol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area_fraction():
  x, y = _constant_batch(h=10, w=12)
  values = (np.arange(4) + 1) / 10
  seen_partial = False
  for seed in range(20):
    xm, soft = augment.cutmix(jax.random.PRNGKey(seed), x, y, 4)
    xm, soft = np.asarray(xm), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    for i in range(4):
      src = np.argmin(np.abs(xm[i, ..., 0][..., None] - values), axis=-1)  # which image each pixel came from
      frac = np.bincount(src.ravel(), minlength=4) / src.size
      np.testing.assert_allclose(soft[i], frac, atol=1e-6)
      seen_partial |= 0 < frac[i] < 1
  assert seen_partial


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets():
  logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  y = jnp.array([0, 1, 2, 3, 1])
  np.testing.assert_allclose(augment.soft_cross_entropy(logits, jax.nn.one_hot(y, 4)),
                             losses.cross_entropy(logits, y), rtol=1e-6)


def test_random_resized_crop_stays_in_range_and_full_scale_is_identity():
  img = jax.random.uniform(jax.random.PRNGKey(1), (4, 9, 9, 3))
  out = augment.random_resized_crop_batch(jax.random.PRNGKey(2), img)
  assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
  assert not np.allclose(out, img)
  same = augment.random_resized_crop_batch(jax.random.PRNGKey(3), img, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(same, img, atol=1e-6)


# ---------------------------------------------------------------- UEraser


def test_max_loss_select_picks_each_examples_largest_loss_copy():
  losses_KxB = jax.random.normal(jax.random.PRNGKey(0), (5, 7))
  images = jnp.arange(5 * 7 * 2 * 2 * 1, dtype=jnp.float32).reshape(5, 7, 2, 2, 1)
  picked, top = augment.max_loss_select(losses_KxB, images)
  k = np.argmax(np.asarray(losses_KxB), axis=0)
  np.testing.assert_array_equal(picked, np.asarray(images)[k, np.arange(7)])
  np.testing.assert_array_equal(top, np.asarray(losses_KxB).max(0))
  with pytest.raises(ValueError, match="images_KxB"):
    augment.max_loss_select(losses_KxB, images[:, :3])


def test_ueraser_copies_are_distinct_in_range_and_deterministic():
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 12, 12, 3))
  run = jax.jit(lambda k, im: augment.ueraser_copies(k, im, 4, augment.UEraserConfig(erase=0.5)))
  views = run(jax.random.PRNGKey(1), x)
  assert views.shape == (4, 3, 12, 12, 3)
  assert float(views.min()) >= 0 and float(views.max()) <= 1
  flat = np.asarray(views).reshape(12, -1)
  assert len({row.tobytes() for row in flat}) == 12  # every view differs
  np.testing.assert_array_equal(views, run(jax.random.PRNGKey(1), x))


def test_every_trivial_augment_operation_stays_in_range_and_is_the_identity_at_magnitude_0():
  x = jax.random.uniform(jax.random.PRNGKey(0), (10, 10, 3))
  n = len(augment.TA_OPS)
  ops = jnp.repeat(jnp.arange(n), 4)
  mags = jnp.tile(jnp.array([0.0, 0.3, 0.7, 1.0]), n)
  signs = jnp.tile(jnp.array([1.0, -1.0, 1.0, -1.0]), n)
  run = jax.jit(jax.vmap(lambda o, m, s: augment._trivial_augment(o, m, s, x, augment.UEraserConfig())))
  out = np.asarray(run(ops, mags, signs)).reshape(n, 4, 10, 10, 3)
  assert out.min() >= 0 and out.max() <= 1
  for i, name in enumerate(augment.TA_OPS):
    if name not in ("posterize", "autocontrast", "equalize"):
      np.testing.assert_allclose(out[i, 0], x, atol=1e-6, err_msg=name)
    if name != "identity":
      assert not np.allclose(out[i, 3], x), name
  assert np.all(out[augment.TA_OPS.index("posterize"), 0] == 0)  # 0 bits kept at magnitude 0
  assert len(np.unique(np.round(out[augment.TA_OPS.index("posterize"), 3] * 255))) <= 8  # 3 bits at magnitude 1


def test_ueraser_loss_is_the_mean_of_per_example_maxima_with_gradients_through_them():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3 * 4, 5))
  batch = {"label": jnp.tile(jnp.array([0, 1, 2, 3]), 3)}
  loss_fn = augment.ueraser_loss(copies=3)
  per = losses.cross_entropy(logits, batch["label"]).reshape(3, 4)
  np.testing.assert_allclose(jnp.mean(loss_fn((logits, None), batch)), per.max(0).mean(), rtol=1e-6)
  grad = jax.grad(lambda z: jnp.mean(loss_fn((z, None), batch)))(logits).reshape(3, 4, 5)
  chosen = np.argmax(np.asarray(per), axis=0)
  for b in range(4):
    for k in range(3):
      assert (np.abs(grad[k, b]).sum() > 0) == (k == chosen[b])


# ---------------------------------------------------------------- adversarial training


class TinyBN(nn.Module):
  """conv - BatchNorm - ReLU - mean pool - dense: a BatchNorm model whose train flag matters."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(4)(x), x


@pytest.fixture(scope="module")
def tiny():
  host = synthetic_host(image_shape=(8, 8, 3), n=16, num_classes=4)
  x = jnp.asarray(host.train.images, jnp.float32) / 255.0
  y = jnp.asarray(host.train.labels)
  model = TinyBN()
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  # non-trivial running statistics, so that evaluation and training modes differ
  variables = {**variables, "batch_stats": jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])}
  return model, variables, x, y


def test_pgd_attack_raises_the_loss_within_eps_and_the_box_in_eval_mode(tiny):
  model, variables, x, y = tiny
  eps, steps = 8 / 255, 5
  # the loop form (accelerators' default; the train-step test below runs the unrolled CPU form)
  attack = jax.jit(lambda v, x, y, k: defenses.pgd_attack(model, v, x, y, k, eps, steps, unroll=False))
  adv = attack(variables, x, y, jax.random.PRNGKey(1))
  assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
  assert float(adv.min()) >= 0 and float(adv.max()) <= 1

  def ce(images):
    return float(jnp.mean(losses.cross_entropy(model.apply(variables, images, train=False)[0], y)))

  assert ce(adv) > ce(x) + 1e-3
  # the same PGD written out with the model in evaluation mode
  alpha = eps / 4
  xa = jnp.clip(x + jax.random.uniform(jax.random.PRNGKey(1), x.shape, x.dtype, -eps, eps), 0, 1)
  for _ in range(steps):
    g = jax.grad(lambda z: jnp.sum(losses.cross_entropy(model.apply(variables, z, train=False)[0], y)))(xa)
    xa = jnp.clip(jnp.clip(xa + alpha * jnp.sign(g), x - eps, x + eps), 0, 1)
  np.testing.assert_allclose(adv, xa, atol=1e-6)


def test_adversarial_train_step_trains_on_the_attack_of_the_current_model(tiny):
  model, _, x, y = tiny
  mesh = parallel.make_mesh(8)
  opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant"))
  tx = train.make_optimizer(opt, steps_per_epoch=2, epochs=1)
  state = train.init_state(model, tx, x[:1], jax.random.PRNGKey(0), mesh)
  batch = {"image": x, "label": y}
  adv_step = defenses.make_adversarial_train_step(model, train.ce_loss(), tx, mesh, eps=8 / 255, steps=2, donate=False)
  plain_step = train.make_train_step(model, train.ce_loss(), tx, mesh, donate=False)
  new, metrics = adv_step(state, batch)
  assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
  # = the engine's step on the adversarial batch drawn with the defense stream's key
  key = jax.random.fold_in(jax.random.fold_in(state.rng, defenses.DEFENSE_STREAM), state.step)
  adv = defenses.pgd_attack(model, train.variables_of(state), x, y, key, 8 / 255, steps=2)
  ref, ref_metrics = plain_step(state, {"image": adv, "label": y})
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), new.params, ref.params)


def test_ueraser_transform_and_loss_train_through_the_hook(tiny):
  model, _, x, y = tiny
  mesh = parallel.make_mesh(8)
  tx = train.make_optimizer(ml_collections.ConfigDict(dict(name="sgd", lr=0.05, momentum=0.0, weight_decay=0.0,
                                                           schedule="constant")), 1, 1)
  state = train.init_state(model, tx, x[:1], jax.random.PRNGKey(0), mesh)
  light = augment.UEraserConfig(plasma_brightness=0.0, plasma_contrast=0.0)  # the full policy: tested above
  step = defenses.make_defended_train_step(model, augment.ueraser_loss(2), tx, mesh,
                                           augment.ueraser_transform(2, light), donate=False)
  new, metrics = step(state, {"image": x, "label": y})
  assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))
  # the MixUp / CutMix transforms: mixed images and soft labels for soft_label_loss
  batch = {"image": x, "label": y, "id": jnp.arange(16)}
  mixed = augment.mix_transform("cutmix", 4)(jax.random.PRNGKey(0), None, batch)
  assert mixed["soft_label"].shape == (16, 4) and np.array_equal(mixed["label"], y)
  loss = augment.soft_label_loss()((jnp.zeros((16, 4)), None), mixed)
  np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-6)


def test_attack_settings_are_checked():
  model = TinyBN()
  tx = train.make_optimizer(ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                                                           schedule="constant")), 1, 1)
  mesh = parallel.make_mesh(1)
  for kwargs, name in [(dict(eps=0.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=8 / 255, steps=0), "steps"),
                       (dict(eps=8 / 255, step_size=0.0), "step_size")]:
    with pytest.raises(ValueError, match=name):
      defenses.make_adversarial_train_step(model, train.ce_loss(), tx, mesh, **kwargs)
  x = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match="alpha"):
    augment.mixup(jax.random.PRNGKey(0), x, jnp.zeros(2, jnp.int32), 4, alpha=0.0)
  with pytest.raises(ValueError, match="method"):
    augment.mix_transform("cutout", 4)
  with pytest.raises(ValueError, match="copies"):
    augment.ueraser_transform(0)
  with pytest.raises(ValueError, match="plasma_brightness"):
    augment.UEraserConfig(plasma_brightness=1.5)
  with pytest.raises(ValueError, match="ta_ops"):
    augment.UEraserConfig(ta_ops=("rotate", "cutout"))
