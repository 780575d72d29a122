"""Dataset condensation (jaxprotect.privacy.condense) and Differentiable Siamese
Augmentation (jaxprotect.privacy.dsa): the reference's gradient distance, the siamese and
differentiable augmentation, DC and DM lowering their matching loss, bitwise resume, and
seeds trained together under vmap equal to seeds trained alone.

Tiny shapes throughout: every condensation test shares one compiled step per method."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_host

from jaxprotect import models

# The modules themselves, whatever the package re-exports under their names.
cd = importlib.import_module("jaxprotect.privacy.condense")
dsa = importlib.import_module("jaxprotect.privacy.dsa")

K, IPC = 4, 2


@functools.lru_cache(maxsize=None)
def tiny_data():
  ds = synthetic_host(image_shape=(12, 12, 3), n=64, num_classes=K)
  return ds, ds.train.images.astype(np.float32) / 255.0, ds.train.labels


def tiny_model():
  return models.get("convnet", K, width=8, depth=2)


# ---------------------------------------------------------------------------------------
# The gradient distance
# ---------------------------------------------------------------------------------------

def reference_distance(a, b, eps=1e-6):
  """The reference's distance_wb + match_loss('ours') on PyTorch layouts, in numpy."""
  total = 0.0
  for ga, gb in zip(a, b):
    if ga.ndim == 1:
      continue
    ga, gb = ga.reshape(ga.shape[0], -1).astype(np.float64), gb.reshape(gb.shape[0], -1).astype(np.float64)
    total += np.sum(1 - np.sum(ga * gb, -1) / (np.linalg.norm(ga, axis=-1) * np.linalg.norm(gb, axis=-1) + eps))
  return total


def to_torch_layout(tree):
  """Flax HWIO conv / IO dense kernels as PyTorch OIHW / OI weights, biases as they are."""
  out = []
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    out.append(leaf.transpose(3, 2, 0, 1) if leaf.ndim == 4 else leaf.T if leaf.ndim == 2 else leaf)
  return out


def random_grads(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"conv": {"kernel": scale * rng.normal(size=(3, 3, 2, 5)).astype(np.float32),
                   "bias": scale * rng.normal(size=(5,)).astype(np.float32)},
          "dense": {"kernel": scale * rng.normal(size=(7, 3)).astype(np.float32),
                    "bias": scale * rng.normal(size=(3,)).astype(np.float32)},
          "norm": {"scale": scale * rng.normal(size=(5,)).astype(np.float32)}}


def test_gradient_match_distance_is_the_reference_distance_on_flax_layouts():
  a, b = random_grads(0), random_grads(1)
  got = float(cd.gradient_match_distance(a, b))
  np.testing.assert_allclose(got, reference_distance(to_torch_layout(a), to_torch_layout(b)), rtol=1e-5)
  # 1-D parameters are skipped: changing them changes nothing
  b2 = jax.tree.map(lambda x: x, b)
  b2["conv"]["bias"] = -b["conv"]["bias"]
  b2["norm"]["scale"] = np.zeros(5, np.float32)
  assert float(cd.gradient_match_distance(a, b2)) == got
  # one row per output feature: scaling one output column of a kernel changes nothing
  b3 = jax.tree.map(lambda x: x, b)
  b3["dense"]["kernel"] = b["dense"]["kernel"] * np.array([1.0, 3.0, 0.5], np.float32)
  np.testing.assert_allclose(float(cd.gradient_match_distance(a, b3)), got, rtol=1e-5)


def test_identical_small_gradients_give_the_reference_small_positive_value_and_zero_without_eps():
  g = random_grads(2, scale=1e-3)
  with_eps = float(cd.gradient_match_distance(g, g))
  ref = reference_distance(to_torch_layout(g), to_torch_layout(g))
  assert with_eps > 0.01
  np.testing.assert_allclose(with_eps, ref, rtol=1e-4)
  assert float(cd.gradient_match_distance(g, g, eps=0.0)) == 0.0
  # a zero row has a finite (zero) gradient, not NaN
  z = jax.tree.map(jnp.zeros_like, g)
  grad = jax.grad(lambda t: cd.gradient_match_distance(t, g))(z)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grad))


def test_gradient_match_distance_refuses_mismatched_pytrees():
  a = random_grads(0)
  with pytest.raises(ValueError, match="grads_b: expected the structure"):
    cd.gradient_match_distance(a, {"conv": a["conv"]})
  b = random_grads(1)
  b["dense"]["kernel"] = b["dense"]["kernel"][:, :2]
  with pytest.raises(ValueError, match=r"grads_b\['dense'\]\['kernel'\]: expected shape \(7, 3\)"):
    cd.gradient_match_distance(a, b)


# ---------------------------------------------------------------------------------------
# DSA
# ---------------------------------------------------------------------------------------

apply_jit = jax.jit(dsa.dsa_apply)


def test_dsa_is_siamese_and_identity_params_are_the_identity():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 10, 10, 3)), jnp.float32)
  for i, op in enumerate(dsa.OPERATIONS):
    ident = dsa.identity_params(op)
    if op == "color":  # (x - mean) * 1 + mean: the identity up to rounding
      np.testing.assert_allclose(np.asarray(apply_jit(x, ident)), np.asarray(x), rtol=0, atol=1e-6)
    else:  # the geometric operations sample exactly at the pixels
      np.testing.assert_array_equal(np.asarray(apply_jit(x, ident)), np.asarray(x), err_msg=op)
    p = dsa.dsa_params(jax.random.PRNGKey(i), None, (10, 10)).replace(op=jnp.asarray(i, jnp.int32))
    both = np.asarray(apply_jit(jnp.concatenate([x, x]), p))
    np.testing.assert_array_equal(both[:3], both[3:], err_msg=op)  # the same transform on the two copies
    one = np.asarray(apply_jit(x[:1], p))
    np.testing.assert_allclose(both[:1], one, rtol=1e-6, atol=1e-6, err_msg=op)  # independent of the batch
    if op != "flip":
      assert not np.allclose(both[:3], np.asarray(x)), op
  # a shared draw changes every image alike; per-image draws differ between images of one batch
  same = np.asarray(apply_jit(jnp.broadcast_to(x[:1], (3, 10, 10, 3)), dsa.dsa_params(
      jax.random.PRNGKey(7), 3, (10, 10), "rotate")))
  assert not np.allclose(same[0], same[1])


def test_dsa_matches_hand_computed_operations():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 1)), jnp.float32)
  p = dsa.identity_params("crop", batch=2, strategy="crop_flip_rotate")
  shifted = np.asarray(apply_jit(x, p.replace(shift_y=jnp.array([1, 0]), shift_x=jnp.array([0, -1]))))
  np.testing.assert_array_equal(shifted[0, :7], np.asarray(x)[0, 1:])
  np.testing.assert_array_equal(shifted[0, 7], 0.0)
  np.testing.assert_array_equal(shifted[1, :, 1:], np.asarray(x)[1, :, :7])  # shifts are within [-1, 1] here
  flipped = np.asarray(apply_jit(x, p.replace(op=jnp.asarray(1), flip=jnp.array([1.0, 0.0]))))
  np.testing.assert_array_equal(flipped[0], np.asarray(x)[0, :, ::-1])
  np.testing.assert_array_equal(flipped[1], np.asarray(x)[1])
  # a quarter turn with PyTorch's affine_grid theta [[cos, -sin], [sin, cos]]: output (i, j) reads (j, W - 1 - i)
  turned = np.asarray(apply_jit(x, p.replace(op=jnp.asarray(2), angle=jnp.full((2,), np.pi / 2))))
  np.testing.assert_allclose(turned[0], np.rot90(np.asarray(x)[0]), atol=1e-5)


def test_dsa_is_differentiable_and_drops_colour_for_grayscale():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 10, 10, 3)), jnp.float32)
  p = dsa.dsa_params(jax.random.PRNGKey(3), 4, (10, 10))
  w = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
  grads = jax.jit(jax.vmap(lambda op: jax.grad(lambda x: jnp.sum(dsa.dsa_apply(x, p.replace(op=op)) * w))(x)))(
      jnp.arange(len(dsa.OPERATIONS)))
  assert bool(jnp.all(jnp.isfinite(grads)))
  assert all(float(jnp.abs(g).sum()) > 0 for g in grads)
  assert dsa.default_strategy(3) == dsa.STRATEGY
  assert dsa.default_strategy(1) == "crop_cutout_flip_scale_rotate"
  assert dsa.default_strategy(1, flip=False) == "crop_cutout_scale_rotate"
  with pytest.raises(ValueError, match="unknown operation 'blur'"):
    dsa.parse_strategy("crop_blur")


# ---------------------------------------------------------------------------------------
# Condensation
# ---------------------------------------------------------------------------------------

OPTIONS = {
    "dc": dict(loops=(2, 1), batch_real=8, init="noise"),
    "dm": dict(batch_real=8, init="real"),  # the default DSA strategy (siamese augmentation)
}


def run(method, iterations, key=0, **kw):
  _, x, y = tiny_data()
  return cd.condense(method, x, y, IPC, iterations, jax.random.PRNGKey(key), model=tiny_model(), **{
      **OPTIONS[method], **kw})


@pytest.mark.parametrize("method", ["dc", "dm"])
def test_condensation_lowers_its_matching_loss(method):
  _, x, y = tiny_data()
  result = run(method, 12)
  real = cd.real_data(x, y, K, result.normalization)
  step = cd.make_step(result.config)
  start = cd.init_state(result.config, real, jax.random.PRNGKey(0), OPTIONS[method]["init"])

  def loss_at(state, t):  # the loss of iteration t (the same network and batches for both states)
    return float(step(state.replace(iteration=jnp.asarray(t, jnp.int32)), real)[1]["loss"])

  before = np.mean([loss_at(start, t) for t in range(20, 26)])
  after = np.mean([loss_at(result.state, t) for t in range(20, 26)])
  assert after < 0.97 * before, (before, after)
  assert result.images.shape == (K * IPC, 12, 12, 3) and result.images.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(result.labels), np.repeat(np.arange(K), IPC))
  if method == "dm":  # real initialisation: the ids of the real images it started from, IPC per class
    assert result.init_ids.shape == (K * IPC,) and len(set(result.init_ids.tolist())) == K * IPC
    np.testing.assert_array_equal(y[result.init_ids], np.repeat(np.arange(K), IPC))
    np.testing.assert_allclose(np.asarray(start.images), np.asarray(real.images)[result.init_ids], rtol=0, atol=0)
  else:
    assert result.init_ids is None


@pytest.mark.parametrize("method", ["dc", "dm"])
def test_resumed_condensation_equals_an_uninterrupted_one_bitwise(method):
  _, x, y = tiny_data()
  saved = []
  first = run(method, 3, callback=saved.append, every=3)
  assert len(saved) == 1 and int(saved[0].iteration) == 3
  on_disk = jax.tree.map(np.asarray, first.state)  # as restored from a checkpoint
  resumed = run(method, 6, key=99, resume=on_disk)  # the key is the state's, not the argument
  whole = run(method, 6)
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.concatenate([first.losses, resumed.losses]), whole.losses)
  if method == "dm":
    np.testing.assert_array_equal(resumed.init_ids, whole.init_ids)
    ids = np.arange(1000, 1000 + len(y))
    assert set(run(method, 0, real_ids=ids).init_ids.tolist()) <= set(ids.tolist())


def test_clear_compiled_drops_each_class_compositions_programs_and_keeps_the_results():
  """The programs' shapes follow the real set's class sizes, so each class composition
  compiles its own and JAX keeps them all (LiRA's halves of a pool, condensed one after
  another, ran a long ``jaxprotect mia`` out of memory maps); ``clear_compiled`` drops them,
  and a condensation after it is bitwise the one before."""
  _, x, y = tiny_data()
  cd.clear_compiled()
  first = run("dm", 2)
  assert cd._STEP._cache_size() == 1
  sub = np.setdiff1d(np.arange(len(y)), np.flatnonzero(y == 0)[:8])  # class 0 halved
  cd.condense("dm", x[sub], y[sub], IPC, 2, jax.random.PRNGKey(0), model=tiny_model(), **OPTIONS["dm"])
  assert cd._STEP._cache_size() == 2
  cd.clear_compiled()
  assert cd._STEP._cache_size() == cd._init._cache_size() == 0
  again = run("dm", 2)
  np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
  np.testing.assert_array_equal(again.losses, first.losses)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_host_loop_iterations_equal_the_one_program_form(method):
  """A DC/DSA iteration whose outer and inner loops run from the host (the CPU default)
  computes the iteration of the one-program form (``lax.scan`` / ``fori_loop``): the same
  networks, batches and augmentations, so the same images and loss to float rounding."""
  _, x, y = tiny_data()
  opts = dict(model=tiny_model(), loops=(2, 2), batch_real=8, batch_train=4)
  if method == "dsa":
    opts["strategy"] = "crop_scale"
  scan, host = (cd.condense_config(method, K, IPC, x.shape[1:], loop=f, **opts) for f in ("scan", "host"))
  real = cd.real_data(x, y, K, cd.Normalization.of(x))
  state = cd.init_state(scan, real, jax.random.PRNGKey(3), "noise")
  step_scan, step_host = cd.make_step(scan), cd.make_step(host)
  assert hasattr(step_scan, "lower") and not hasattr(step_host, "lower")
  a, b = state, state
  for _ in range(2):
    (a, ma), (b, mb) = step_scan(a, real), step_host(b, real)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(a.images), np.asarray(b.images), rtol=1e-4, atol=1e-5)
  assert not np.allclose(np.asarray(b.images), np.asarray(state.images), atol=1e-3)  # the images moved
  assert int(b.iteration) == 2 and np.asarray(state.images).shape == np.asarray(b.images).shape  # state kept
  with pytest.raises(ValueError, match=r"loop: expected one of 'scan', 'host', got 'python'"):
    cd.condense_config(method, K, IPC, x.shape[1:], loop="python", **opts)


def test_condense_input_checks():
  _, x, y = tiny_data()
  with pytest.raises(ValueError, match=r"ipc: expected at most 16 .* got 17"):
    cd.condense("dm", x, y, 17, 1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"method: expected one of 'dc', 'dsa', 'dm', got 'kip'"):
    cd.condense("kip", x, y, 1, 1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"init: expected one of 'noise', 'real', got 'kmeans'"):
    cd.condense("dm", x, y, 1, 1, jax.random.PRNGKey(0), init="kmeans")
  with pytest.raises(ValueError, match=r"ipc: the reference defines .* got 3"):
    cd.condense("dc", x, y, 3, 1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="method 'dc' matches without augmentation"):
    cd.condense_config("dc", K, 1, (12, 12, 3), strategy="crop")
  with pytest.raises(ValueError, match="BatchNorm"):
    cd.condense_config("dm", K, 1, (12, 12, 3), model=models.get("convnet", K, width=8, depth=1, norm="batchnorm"))
  first = run("dm", 0)
  with pytest.raises(ValueError, match="resume: expected a CondenseState"):
    run("dm", 1, resume=first.state.replace(images=first.state.images[:1]))


def test_seeds_trained_together_equal_seeds_trained_alone():
  ds, x, y = tiny_data()
  result = run("dm", 2)
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  kw = dict(model=models.get("convnet", K, width=4, depth=1), normalization=result.normalization, epochs=3,
            batch_train=5, strategy="crop")
  acc, params = cd.evaluate_synthetic(result.images, result.labels, ds.test.images, ds.test.labels, keys,
                                      return_params=True, **kw)
  assert acc.shape == (2,) and bool(jnp.all((acc >= 0) & (acc <= 1)))
  for s in range(2):
    acc_s, params_s = cd.evaluate_synthetic(result.images, result.labels, ds.test.images, ds.test.labels,
                                            keys[s:s + 1], return_params=True, **kw)
    assert float(acc_s[0]) == float(acc[s])
    for a, b in zip(jax.tree.leaves(params_s), jax.tree.leaves(params)):
      np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[s], rtol=1e-4, atol=1e-5)
  # the two seeds are different networks
  assert not np.allclose(np.asarray(jax.tree.leaves(params)[0][0]), np.asarray(jax.tree.leaves(params)[0][1]))
  # each epoch one call from the host (the CPU default), together or one seed at a time:
  # the networks of the one-program form, to float rounding
  scan_acc, scan_params = cd.evaluate_synthetic(result.images, result.labels, ds.test.images, ds.test.labels, keys,
                                                return_params=True, loop="scan", **kw)
  for vectorize in (True, False):
    host_acc, host_params = cd.evaluate_synthetic(result.images, result.labels, ds.test.images, ds.test.labels,
                                                  keys, return_params=True, loop="host", vectorize=vectorize, **kw)
    for a, b in zip(jax.tree.leaves(host_params), jax.tree.leaves(scan_params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(host_acc), np.asarray(scan_acc), atol=1.5 / len(ds.test.labels))
