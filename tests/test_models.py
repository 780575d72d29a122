"""Model zoo: registry, output contract, parameter counts, bfloat16 compute."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprotect import models

# Tiny configurations (name -> (kwargs, expected feats dim)) so that each case compiles quickly.
TINY = {
    "resnet18": (dict(width=4), 32),
    "resnet34": (dict(width=4), 32),
    "resnet50": (dict(width=4), 128),
    "resnet18_imagenet": (dict(width=4), 32),
    "resnet34_imagenet": (dict(width=4), 32),
    "resnet50_imagenet": (dict(width=4), 128),
    "convnet": (dict(width=8), None),  # 8 * 4 * 4 = 128 for both input shapes
    "vgg11": (dict(width=4), 32),
    "vgg16": (dict(width=4), 32),
    "wrn16_4": (dict(width=2), 32),
    "wrn28_10": (dict(width=1), 40),
    "small_cnn": (dict(width=4, hidden=16), 16),
    "mlp": (dict(width=16), 16),
}
NO_BN = {"convnet", "small_cnn", "mlp"}
SHAPES = {"fmnist": (2, 28, 28, 1), "cifar": (2, 32, 32, 3)}


def _x(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _n(tree) -> int:
  return models.count_params(tree)


def test_registry_covers_all_names():
  assert set(models.names()) == set(TINY)


def _abstract(shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


@pytest.mark.parametrize("name", list(TINY))
def test_contract_shapes_every_name(name):
  """Every name on 28x28x1 and 32x32x3 (abstract evaluation: no compile, all code paths traced)."""
  kwargs, feat_dim = TINY[name]
  k = 7
  model = models.get(name, k, **kwargs)
  for shape in SHAPES.values():
    x = _abstract(shape)
    (logits, feats), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), x)
    assert logits.shape == (2, k) and logits.dtype == jnp.float32
    assert feats.shape == (2, 128 if feat_dim is None else feat_dim) and feats.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    has_bn = name not in NO_BN
    assert ("batch_stats" in variables) == has_bn == models.has_batch_stats(model, x)
    mutable = ["batch_stats"] if has_bn else False
    out = jax.eval_shape(functools.partial(model.apply, train=True, mutable=mutable), variables, x)
    (logits_t, feats_t), state = out if has_bn else (out, None)
    assert logits_t.shape == logits.shape and feats_t.shape == feats.shape
    if has_bn:
      assert jax.tree_util.tree_structure(state["batch_stats"]) == jax.tree_util.tree_structure(
          variables["batch_stats"])


# One compiled representative per family (both ResNet blocks and stems, both input shapes).
COMPUTE = [("resnet18", "cifar"), ("resnet50_imagenet", "fmnist"), ("vgg11", "fmnist"), ("wrn16_4", "cifar"),
           ("convnet", "fmnist"), ("small_cnn", "fmnist"), ("mlp", "cifar")]


@pytest.mark.parametrize("name,shape_name", COMPUTE)
def test_contract_compute(name, shape_name):
  kwargs, _ = TINY[name]
  model = models.get(name, 7, **kwargs)
  x = _x(SHAPES[shape_name])
  variables = models.init_variables(model, jax.random.key(1), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  has_bn = "batch_stats" in variables
  mutable = ["batch_stats"] if has_bn else False
  both = jax.jit(lambda v, x: (model.apply(v, x, train=False), model.apply(v, x, train=True, mutable=mutable)))
  (logits, feats), out_t = both(variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32 and feats.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(feats)).all()
  assert float(jnp.std(logits)) > 0
  if has_bn:
    (logits_t, _), state = out_t
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(state["batch_stats"])
    assert len(old) == len(new) > 0 and all(not np.allclose(a, b) for a, b in zip(old, new))
    assert not np.allclose(logits_t, logits)  # batch statistics vs running averages
  else:
    np.testing.assert_allclose(out_t[0], logits, rtol=1e-5, atol=1e-5)


# ---- parameter counts, derived independently from the architectures -------------------------

def _conv(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def _bn(c):
  return 2 * c  # scale + bias (running stats are not parameters)


def _resnet_count(stages, bottleneck, k=10, cin=3, width=64):
  exp = 4 if bottleneck else 1
  n = _conv(3, cin, width) + _bn(width)
  inp = width
  for i, blocks in enumerate(stages):
    planes = width * 2**i
    for j in range(blocks):
      stride = 2 if (i > 0 and j == 0) else 1
      if bottleneck:
        n += _conv(1, inp, planes) + _bn(planes) + _conv(3, planes, planes) + _bn(planes)
        n += _conv(1, planes, exp * planes) + _bn(exp * planes)
      else:
        n += _conv(3, inp, planes) + _bn(planes) + _conv(3, planes, planes) + _bn(planes)
      if stride != 1 or inp != exp * planes:
        n += _conv(1, inp, exp * planes) + _bn(exp * planes)
      inp = exp * planes
  return n + inp * k + k


def _wrn_count(depth, widen, k=10, cin=3):
  n_blocks = (depth - 4) // 6
  n = _conv(3, cin, 16)
  inp = 16
  for i in range(3):
    out = 16 * widen * 2**i
    for _ in range(n_blocks):
      n += _bn(inp) + _conv(3, inp, out) + _bn(out) + _conv(3, out, out)
      if inp != out:
        n += _conv(1, inp, out)
      inp = out
  return n + _bn(inp) + inp * k + k


def _param_count(name, shape=(2, 32, 32, 3), k=10, **kwargs):
  model = models.get(name, k, **kwargs)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct(shape, jnp.float32))
  return _n(shapes["params"])


def test_param_counts_resnet():
  assert _resnet_count((2, 2, 2, 2), False) == 11_173_962  # kuangliu/pytorch-cifar ResNet18
  assert _resnet_count((3, 4, 6, 3), True) == 23_520_842  # kuangliu/pytorch-cifar ResNet50
  assert _param_count("resnet18") == 11_173_962
  assert _param_count("resnet34") == _resnet_count((3, 4, 6, 3), False) == 21_282_122
  assert _param_count("resnet50") == 23_520_842
  # ImageNet stem: 7x7 instead of 3x3 first conv, nothing else changes.
  assert _param_count("resnet18_imagenet") == 11_173_962 + (49 - 9) * 3 * 64


def test_param_counts_convnet_wrn_vgg():
  convnet = (_conv(3, 3, 128, True) + 2 * _conv(3, 128, 128, True)) + 3 * 2 * 128 + (2048 * 10 + 10)
  assert convnet == 320_010
  assert _param_count("convnet") == convnet
  assert _param_count("convnet", shape=(2, 28, 28, 1)) == convnet - 2 * 9 * 128
  assert _wrn_count(28, 10) == 36_479_194
  assert _param_count("wrn28_10") == 36_479_194
  assert _param_count("wrn16_4") == _wrn_count(16, 4)
  vgg16_convs = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  vgg16 = sum(_conv(3, a, b) + _bn(b) for a, b in zip([3] + vgg16_convs[:-1], vgg16_convs)) + 5130
  assert _param_count("vgg16") == vgg16  # kuangliu's 14,728,266 minus the (BN-redundant) conv biases
  assert _param_count("small_cnn", shape=(2, 28, 28, 1)) == (
      _conv(3, 1, 32, True) + _conv(3, 32, 64, True) + (7 * 7 * 64 * 128 + 128) + (128 * 10 + 10))
  assert _param_count("mlp", shape=(2, 28, 28, 1)) == (784 * 256 + 256) + (256 * 256 + 256) + 2570


def test_convnet_feats_2048_for_fmnist_and_cifar():
  model = models.get("convnet", 10)
  for shape in [(2, 28, 28, 1), (2, 32, 32, 3)]:
    out = jax.eval_shape(lambda k, x: model.init_with_output(k, x, train=False)[0], jax.random.key(0),
                         jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out[0].shape == (2, 10) and out[1].shape == (2, 2048), shape


def test_convnet_norm_options():
  x = _x((2, 16, 16, 3))
  for norm, has_bn in [("batchnorm", True), ("none", False)]:
    model = models.get("convnet", 5, width=4, depth=2, norm=norm)
    assert models.has_batch_stats(model, x) == has_bn
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    norm_params = 2 * 2 * 4 if has_bn else 0  # scale + bias, 4 channels, 2 layers
    assert _n(shapes["params"]) == _conv(3, 3, 4, True) + _conv(3, 4, 4, True) + norm_params + 4 * 4 * 4 * 5 + 5
  with pytest.raises(ValueError, match="norm"):
    models.get("convnet", 5, norm="layernorm").init(jax.random.key(0), x)


def test_bfloat16_resnet18():
  x = _x((2, 16, 16, 3))
  m32 = models.get("resnet18", 10, width=8)
  m16 = models.get("resnet18", 10, dtype="bfloat16", width=8)
  assert m16.dtype == jnp.bfloat16
  v16 = models.init_variables(m16, jax.random.key(3), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v16))
  # Same parameter tree, so the float32 model can run the bfloat16 model's variables.
  assert jax.tree_util.tree_structure(v16) == jax.tree_util.tree_structure(
      jax.eval_shape(functools.partial(m32.init, train=False), jax.random.key(3), x))
  (l16, f16), (l32, f32) = jax.jit(lambda v, x: (m16.apply(v, x), m32.apply(v, x)))(v16, x)
  assert l16.dtype == jnp.float32 and f16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(l32)))
  assert scale > 0 and not np.array_equal(l16, l32)  # really computed in bfloat16
  np.testing.assert_allclose(l16, l32, rtol=0.1, atol=0.1 * scale)
  np.testing.assert_allclose(f16, f32, rtol=0.1, atol=0.1 * float(jnp.max(jnp.abs(f32))))


def test_wrn_dropout_needs_rng_and_changes_output():
  x = _x((2, 8, 8, 3))
  model = models.get("wrn16_4", 3, width=1, dropout_rate=0.5)
  v = models.init_variables(model, jax.random.key(0), x)

  @jax.jit
  def run(v, x):
    ev = model.apply(v, x, train=False)[0]
    tr = [model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(i)})[0][0]
          for i in (1, 2)]
    return ev, tr

  with jax.threefry_partitionable(False):  # ~3x faster XLA:CPU compile of the dropout masks
    ev, (a, b) = run(v, x)
  assert np.isfinite(np.asarray(ev)).all() and not np.allclose(a, b)
  with pytest.raises(Exception, match="dropout"):  # flax: "... needs PRNG for \"dropout\""
    jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]), v, x)


def test_errors():
  with pytest.raises(ValueError, match="resnet99") as e:
    models.get("resnet99", 10)
  assert "resnet18" in str(e.value) and "mlp" in str(e.value)
  for bad in (1, 0, -3):
    with pytest.raises(ValueError, match="small_cnn"):
      models.get("small_cnn", bad)
  with pytest.raises(ValueError, match="dtype"):
    models.get("mlp", 10, dtype="float77")
  with pytest.raises(ValueError, match="num_classes"):  # direct construction checks too
    models.MLP(num_classes=1).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


def test_get_accepts_kwargs_and_aliases():
  m = models.get("ResNet18", 10, stem="imagenet", width=4)
  assert isinstance(m, models.ResNet) and m.stem == "imagenet" and m.width == 4
  assert models.get("WRN28_10", 10).depth == 28
  assert models.get("mlp", 10, dtype="bfloat16").dtype == jnp.bfloat16


def test_resnet_input_norm_is_normalising_the_input_first():
  """``input_norm="imagenet"`` (MI-UE's reference surrogate) equals the plain ResNet applied to
  (x - mean) / std with the same variables; bad presets and channel counts are refused, and
  crafting's hash of a user module tells the two apart although the ``repr`` does not."""
  from jaxprotect.unlearnable import crafting

  plain = models.get("resnet18", 10, width=4)
  normed = models.get("resnet18", 10, width=4, input_norm="imagenet")
  x = _x(SHAPES["cifar"], seed=3)
  v = plain.init(jax.random.key(0), x, train=False)
  assert jax.tree.map(jnp.shape, normed.init(jax.random.key(0), x, train=False)) == jax.tree.map(jnp.shape, v)
  mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
  want = plain.apply(v, (x - mean) / std, train=False)
  got = normed.apply(v, x, train=False)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(plain.apply(v, x, train=False)[0], got[0], atol=1e-3)
  with pytest.raises(ValueError, match="input_norm.*'cifar'"):
    models.get("resnet18", 10, input_norm="cifar")
  with pytest.raises(ValueError, match="ResNets only"):
    models.get("vgg11", 10, input_norm="imagenet")
  with pytest.raises(ValueError, match="3 input channels"):
    normed.init(jax.random.key(0), _x(SHAPES["fmnist"]), train=False)
  assert repr(plain) == repr(models.get("resnet18", 10, width=4, input_norm=""))  # hashes of old modules stay
  assert crafting._module_key(plain) == repr(plain)
  assert crafting._module_key(normed) != crafting._module_key(plain)


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 9, 3)])
def test_max_pool_2x2_equals_flax_max_pool_with_ties(shape):
  """Value, VJP (ties go to the first maximum in row-major order) and JVP of the fast
  pooling equal flax's ``reduce_window`` max pool, odd sizes included."""
  import flax.linen as nn  # noqa: PLC0415

  from jaxprotect.ops import max_pool_2x2  # noqa: PLC0415

  rng = np.random.default_rng(0)
  x = jnp.asarray(np.round(np.maximum(rng.normal(size=shape), 0) * 2) / 2, jnp.float32)  # many ties
  ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
  out, vjp = jax.vjp(max_pool_2x2, x)
  out_ref, vjp_ref = jax.vjp(ref, x)
  assert out.shape == out_ref.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  np.testing.assert_array_equal(out, out_ref)
  ct = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  np.testing.assert_array_equal(vjp(ct)[0], vjp_ref(ct)[0])
  tangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
  np.testing.assert_array_equal(jax.jvp(max_pool_2x2, (x,), (tangent,))[1], jax.jvp(ref, (x,), (tangent,))[1])


@pytest.mark.parametrize("x_shape,k_shape,padding", [
    ((4, 9, 8, 3), (3, 3, 3, 5), ((1, 1), (1, 1))),   # CIFAR-like stem
    ((2, 7, 6, 1), (5, 3, 1, 4), ((2, 2), (0, 1))),   # uneven kernel and padding, one channel
    ((2, 6, 6, 2), (1, 1, 2, 3), ((0, 0), (0, 0))),   # 1x1
])
def test_stem_conv_equals_lax_conv_in_value_and_derivatives(x_shape, k_shape, padding):
  """The patch-product convolution used for few-channel stems on CPU agrees with
  ``lax.conv_general_dilated`` in value, VJP (input and kernel), JVP and second order,
  and really replaces the convolution in the compiled program."""
  from jax import lax  # noqa: PLC0415

  from jaxprotect.ops import conv_general_dilated  # noqa: PLC0415

  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (x_shape, k_shape))
  dn = ("NHWC", "HWIO", "NHWC")
  ours = lambda x, w: conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)  # noqa: E731
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn,  # noqa: E731
                                              precision=lax.Precision.HIGHEST)
  assert "convolution" not in jax.jit(ours).lower(x, w).as_text()
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4)
  out, vjp = jax.vjp(ours, x, w)
  out_ref, vjp_ref = jax.vjp(ref, x, w)
  close(out, out_ref)
  ct = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  for got, want in zip(vjp(ct), vjp_ref(ct)):
    close(got, want)
  tangents = tuple(jnp.asarray(rng.normal(size=v.shape), jnp.float32) for v in (x, w))
  close(jax.jvp(ours, (x, w), tangents)[1], jax.jvp(ref, (x, w), tangents)[1])
  hvp = lambda f: jax.jvp(jax.grad(lambda v: jnp.sum(f(v, w) ** 2)), (x,), (tangents[0],))[1]  # noqa: E731
  close(hvp(ours), hvp(ref))


def test_stem_conv_is_used_only_where_it_applies(monkeypatch):
  """Only few-channel stride-1 convolutions become patch products, and
  ``JAXPROTECT_XLA_CPU_DEFAULTS=0`` keeps XLA's own convolution everywhere."""
  from jaxprotect.ops import conv_general_dilated  # noqa: PLC0415

  dn = ("NHWC", "HWIO", "NHWC")
  hlo = lambda c, stride=1: jax.jit(lambda x, w: conv_general_dilated(  # noqa: E731
      x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dn)).lower(
          jnp.zeros((1, 8, 8, c)), jnp.zeros((3, 3, c, 4))).as_text()
  assert "convolution" not in hlo(3)
  assert "convolution" in hlo(16)
  assert "convolution" in hlo(3, stride=2)
  monkeypatch.setenv("JAXPROTECT_XLA_CPU_DEFAULTS", "0")
  assert "convolution" in hlo(3)


def _bn_pair(dtype, train):
  import flax.linen as nn  # noqa: PLC0415

  from jaxprotect.ops import norm  # noqa: PLC0415

  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  return norm.BatchNorm(**kw), nn.BatchNorm(**kw)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_equals_flax_batch_norm(dtype):
  """``ops.BatchNorm`` has flax's variables and agrees with ``nn.BatchNorm`` in
  training-mode outputs, running-statistics updates, eval-mode outputs, gradients (input,
  scale, bias), JVP and a Hessian-vector product; its CPU rule really is in the program."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, size=(6, 5, 4, 7)), dtype)
  ours, ref = _bn_pair(dtype, train=True)
  variables, ours_variables = (m.init(jax.random.PRNGKey(0), x) for m in (ref, ours))
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)
  assert jax.tree.map(lambda a: a.dtype, ours_variables) == jax.tree.map(lambda a: a.dtype, variables)
  params = {"scale": jnp.asarray(rng.normal(1, 0.3, 7), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=7), jnp.float32)}
  stats = {"mean": jnp.asarray(rng.normal(size=7), jnp.float32),
           "var": jnp.asarray(rng.uniform(0.5, 2, 7), jnp.float32)}
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-2)
  close = functools.partial(np.testing.assert_allclose, **tol)

  def apply(m):
    return lambda p, x: m.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])

  (y, new), (y_ref, new_ref) = apply(ours)(params, x), apply(ref)(params, x)
  assert y.dtype == y_ref.dtype == dtype
  close(np.float32(y), np.float32(y_ref))
  for k in ("mean", "var"):  # statistics are float32 in both
    np.testing.assert_allclose(new["batch_stats"][k], new_ref["batch_stats"][k], rtol=1e-5, atol=1e-6)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(apply(m)(p, x)[0].astype(jnp.float32)))  # noqa: E731
  grad_hlo = lambda m: jax.jit(jax.grad(loss(m), argnums=(0, 1))).lower(params, x).compile().as_text()  # noqa: E731
  assert " reduce(" not in grad_hlo(ours) and " reduce(" in grad_hlo(ref)  # the CPU rule is what runs

  for got, want in zip(jax.grad(loss(ours), argnums=(0, 1))(params, x), jax.grad(loss(ref), argnums=(0, 1))(params, x)):
    jax.tree.map(lambda a, b: close(np.float32(a), np.float32(b)), got, want)
  if dtype == jnp.float32:
    tx = jnp.asarray(rng.normal(size=x.shape), dtype)
    tp = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
    jvp = lambda m: jax.jvp(apply(m), (params, x), (tp, tx))[1]  # noqa: E731
    jax.tree.map(close, jvp(ours), jvp(ref))
    hvp = lambda m: jax.jvp(jax.grad(loss(m), argnums=1), (params, x), (tp, tx))[1]  # noqa: E731
    close(hvp(ours), hvp(ref))

  ours_eval, ref_eval = _bn_pair(dtype, train=False)
  v = {"params": params, "batch_stats": stats}
  y_eval, y_eval_ref = ours_eval.apply(v, x), ref_eval.apply(v, x)
  assert y_eval.dtype == y_eval_ref.dtype
  close(np.float32(y_eval), np.float32(y_eval_ref))


def test_batch_norm_traces_more_than_2_31_rows():
  """A batch of more than 2**31 normalised rows (a large per-chip batch of a TPU compile:
  32,768 images x 32 x 32 pixels x ... ) traces on both branches of ``normalize``, forward
  and backward: the row count divides as a float, not as an int32 that would overflow."""
  from jaxprotect.ops import norm  # noqa: PLC0415

  rows = 2**31 + 8
  x = jax.ShapeDtypeStruct((rows, 2), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  y, mean, var = jax.eval_shape(lambda x, s, b: norm.normalize(x, s, b, 1e-5), x, c, c)
  assert y.shape == (rows, 2) and mean.shape == var.shape == (2,)
  dx = jax.eval_shape(jax.grad(lambda x, s, b: norm.normalize(x, s, b, 1e-5)[0].sum()), x, c, c)
  assert dx.shape == (rows, 2)


def test_batch_norm_is_flax_batch_norm_without_cpu_defaults(monkeypatch):
  """The zoo's BatchNorm is ours on CPU and flax's with ``JAXPROTECT_XLA_CPU_DEFAULTS=0``;
  a ResNet's variable tree is the same either way (checkpoints carry over)."""
  import flax.linen as nn  # noqa: PLC0415

  from jaxprotect.models import common  # noqa: PLC0415
  from jaxprotect.ops import norm  # noqa: PLC0415

  assert isinstance(common.batch_norm(True, jnp.float32), norm.BatchNorm)
  model = models.get("resnet18", 10, width=4)
  x = jnp.zeros((2, 8, 8, 3))
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=True)))
  monkeypatch.setenv("JAXPROTECT_XLA_CPU_DEFAULTS", "0")
  assert type(common.batch_norm(True, jnp.float32)) is nn.BatchNorm
  assert jax.tree.map(jnp.shape, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=True))) == shapes
