"""In which dtype a bfloat16 model's gradients are summed across devices, and ``grad_sum_dtype``.

The compiled HLO of the real training step (``train.make_train_step``) on the 8 simulated
CPU devices, batch split along ``data``: with ``dtype="bfloat16"`` the partitioner
all-reduces the convolution and dense parameter gradients in bfloat16 by default
("compute") and in float32 with ``grad_sum_dtype="float32"``. The option keeps the
variables, the forward values and the input gradients bitwise, changes the parameter
gradients by bfloat16 rounding only (they are float32 sums of the same bfloat16 products),
and changes nothing at all under float32 compute; the config field leaves existing hashes
as they were.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from jaxprotect import config as config_lib
from jaxprotect import models, ops, parallel, train

NUM_CLASSES, IMAGE, BATCH = 10, (16, 16, 3), 64
BF16, F32 = jnp.bfloat16, jnp.float32
SMALL = dict(width=4, hidden=16)
RESNET = dict(width=4, stage_sizes=(1, 1))  # stem, a block, a strided block with a projection shortcut, head

# ``benchmarks.scale.collectives``' reading of an HLO instruction, for all-reduces: the
# result shape (a tuple when XLA combined several), an async ``-start`` counted once.
_ALL_REDUCE = re.compile(r"=\s*(?P<shape>.*?)\sall-reduce(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "f64": 8}


def all_reduce_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes all-reduced per element type in an HLO module's text (static counts)."""
  out: dict[str, int] = {}
  for line in hlo_text.splitlines():
    m = _ALL_REDUCE.search(line)
    if not m or line.lstrip().startswith("//"):
      continue
    for dtype, dims in _ARRAY.findall(m.group("shape")):
      out[dtype] = out.get(dtype, 0) + _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return out


def _optimizer():
  return train.make_optimizer(config_lib.optimizer_config(), 10, 1)


# Compiles the training step of a bfloat16 model for the 8 simulated devices, with and
# without grad_sum_dtype="float32", and writes each program's HLO right after XLA's SPMD
# partitioner (where the all-reduces of the partial gradient sums are made, in the dtype
# the gradients are computed in) and its optimised HLO. On TPU the optimised HLO keeps the
# partitioner's dtypes (benchmarks/scale.py reads them there); XLA:CPU then promotes every
# bfloat16 all-reduce to float32 (bfloat16-rounded values summed in float32), so on CPU the
# dtype shows only after partitioning. In a process of its own: a program from the
# persistent compilation cache is not compiled, so its passes are not dumped.
_COMPILE = """
import json, pathlib, sys
out, name, kwargs = pathlib.Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
from jaxprotect import platform
platform.apply_cpu_xla_flags()
import jax, jax.numpy as jnp
from jaxprotect import config as config_lib, models, parallel, train
mesh = parallel.make_mesh()
assert parallel.num_shards(mesh) == 8
opt = train.make_optimizer(config_lib.optimizer_config(), 10, 1)
dat = parallel.data_sharded(mesh)
image, batch = tuple(kwargs.pop("image")), kwargs.pop("batch")
spec = {"image": jax.ShapeDtypeStruct((batch, *image), jnp.float32, sharding=dat),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=dat)}
params = {}
for gsd in ("compute", "float32"):
  model = models.get(name, 10, dtype="bfloat16", grad_sum_dtype=gsd, **kwargs)
  state = train.abstract_state(model, opt, jax.ShapeDtypeStruct((1, *image), jnp.float32), mesh)
  params[gsd] = models.count_params(state.params)
  dump = out / f"dump_{gsd}"
  compiled = train.make_train_step(model, train.ce_loss(), opt, mesh).lower(state, spec).compile(
      compiler_options={"xla_dump_to": str(dump), "xla_dump_hlo_pass_re": "spmd-partitioning",
                        "xla_dump_hlo_as_text": True})
  (out / f"{gsd}.optimized.txt").write_text(compiled.as_text())
  (dump_file,) = dump.glob("*after_spmd-partitioning*.txt")
  (out / f"{gsd}.partitioned.txt").write_text(dump_file.read_text())
print(json.dumps(params))
"""


def compile_both(tmp_path: pathlib.Path, name: str, image=IMAGE, batch=BATCH, **kwargs) -> tuple[dict, int]:
  """``{(grad_sum_dtype, "partitioned" | "optimized"): all_reduce_bytes}`` of the bfloat16
  training step of zoo model ``name`` on 8 simulated CPU devices, and its parameter count."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "JAX_ENABLE_COMPILATION_CACHE": "false"}
  proc = subprocess.run([sys.executable, "-c", _COMPILE, str(tmp_path), name,
                         json.dumps({**kwargs, "image": list(image), "batch": batch})],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  params = json.loads(proc.stdout.strip().splitlines()[-1])
  assert params["compute"] == params["float32"]
  out = {(gsd, stage): all_reduce_bytes((tmp_path / f"{gsd}.{stage}.txt").read_text())
         for gsd in ("compute", "float32") for stage in ("partitioned", "optimized")}
  return out, params["compute"]


def test_bf16_gradients_are_all_reduced_in_bf16_by_default_and_in_f32_with_the_option(tmp_path):
  """Small CNN (two convolutions and two dense layers, all with biases: every parameter is
  a conv or dense one), bfloat16 compute, global batch 64 over 8 devices: by default every
  parameter gradient is summed across devices in bfloat16 (2 bytes per parameter); with
  ``grad_sum_dtype="float32"`` no all-reduce is bfloat16 and the parameter gradients take 4
  bytes each. The loss and accuracy are float32 sums either way."""
  ar, n = compile_both(tmp_path, "small_cnn", **SMALL)
  default, option = ar["compute", "partitioned"], ar["float32", "partitioned"]
  assert default.get("bf16") == 2 * n, default
  assert "bf16" not in option, option
  assert option.get("f32", 0) == default.get("f32", 0) + 4 * n, (default, option)
  assert ar["float32", "optimized"] == option  # XLA:CPU's optimised program keeps them


# ------------------------------------------------------------------ values, on one device


def _data(seed: int = 0, batch: int = 16):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(size=(batch, *IMAGE)), F32)
  y = jnp.asarray(np.arange(batch) % NUM_CLASSES, jnp.int32)
  return x, y


def _loss(model, variables, x, y):
  (logits, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _close_to_bf16(got, want, rtol=2e-2):
  """Two gradients (or updates) agree to bfloat16 rounding: the relative L2 distance of all
  leaves together and of every kernel. (Not leaf by leaf: a bias followed by a norm layer has
  a zero gradient up to rounding, and a bias gradient sums a whole batch of bfloat16 values,
  which the option sums in float32.)"""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  flat = lambda t: np.concatenate([np.ravel(np.asarray(a, np.float32)) for a in jax.tree.leaves(t)])  # noqa: E731
  a, b = flat(got), flat(want)
  assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b), (np.linalg.norm(a - b), np.linalg.norm(b))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    if path[-1].key == "kernel":
      x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
      assert np.linalg.norm(x - y) <= rtol * np.linalg.norm(y), jax.tree_util.keystr(path)


def _count_eqns(jaxpr, name: str) -> int:
  """Equations named ``name`` in a closed jaxpr, nested jaxprs included."""
  n = sum(eqn.primitive.name == name for eqn in jaxpr.eqns)
  return n + sum(_count_eqns(sub, name) for sub in jax.extend.core.subjaxprs(jaxpr))


# One of each architecture of the zoo (ResNet basic / bottleneck / ImageNet stem, ConvNet,
# VGG, Wide ResNet, small CNN, MLP), small.
ARCHITECTURES = {"resnet18": dict(width=4), "resnet18_imagenet": dict(width=4), "resnet50": dict(width=4),
                 "convnet": dict(width=8), "vgg11": dict(width=4), "wrn16_4": dict(width=2), "small_cnn": SMALL,
                 "mlp": dict(width=16)}


def test_the_architectures_cover_the_zoo():
  kinds = lambda names: {type(models.get(n, NUM_CLASSES)) for n in names}  # noqa: E731
  assert kinds(models.names()) == kinds(ARCHITECTURES)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_kernel_of_every_architecture_is_covered(name):
  """Shapes only (no compile): under bfloat16 the option gives the default's variable tree
  (names, shapes, dtypes) and routes every convolution and dense layer -- one per
  ``kernel`` -- through the float32-gradient op; under float32 it routes none."""
  kwargs = ARCHITECTURES[name]
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), F32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  for dtype in ("bfloat16", "float32"):
    default = models.get(name, NUM_CLASSES, dtype=dtype, **kwargs)
    option = models.get(name, NUM_CLASSES, dtype=dtype, grad_sum_dtype="float32", **kwargs)
    init = lambda m: jax.eval_shape(functools.partial(m.init, train=False), key, x)  # noqa: E731
    variables = init(default)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), init(option)) == jax.tree.map(
        lambda a: (a.shape, a.dtype), variables)
    kernels = sum(jax.tree_util.keystr(p).endswith("['kernel']")
                  for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"]))
    jaxpr = jax.make_jaxpr(functools.partial(option.apply, train=False))(variables, x)
    assert _count_eqns(jaxpr.jaxpr, "custom_vjp_call") == (kernels if dtype == "bfloat16" else 0)


@pytest.mark.parametrize("name,kwargs", [("small_cnn", SMALL), ("resnet18", RESNET)])
def test_option_keeps_variables_and_forward_and_rounds_gradients_only(name, kwargs):
  """bfloat16 compute: the same variables from the same key and bitwise the same outputs;
  the parameter gradients agree to bfloat16 rounding. float32 compute: the same gradients,
  bitwise."""
  x, y = _data()
  for dtype in ("bfloat16", "float32"):
    default = models.get(name, NUM_CLASSES, dtype=dtype, **kwargs)
    option = models.get(name, NUM_CLASSES, dtype=dtype, grad_sum_dtype="float32", **kwargs)
    v_default = models.init_variables(default, jax.random.key(0), x[:1])
    v_option = models.init_variables(option, jax.random.key(0), x[:1])
    jax.tree.map(np.testing.assert_array_equal, v_option, v_default)
    out_default = jax.jit(functools.partial(default.apply, train=False))(v_default, x)
    out_option = jax.jit(functools.partial(option.apply, train=False))(v_default, x)
    jax.tree.map(np.testing.assert_array_equal, out_option, out_default)

    def grads(model):
      return jax.jit(jax.grad(lambda p: _loss(model, {**v_default, "params": p}, x, y)))(v_default["params"])

    g_default, g_option = grads(default), grads(option)
    assert jax.tree.map(lambda a: a.dtype, g_option) == jax.tree.map(lambda a: a.dtype, g_default)
    if dtype == "float32":
      jax.tree.map(np.testing.assert_array_equal, g_option, g_default)
    else:
      _close_to_bf16(g_option, g_default)


def test_train_step_on_one_device_agrees_to_bf16_rounding():
  """``train.make_train_step`` on a 1-device mesh, one bfloat16 step from the same state:
  the parameter updates agree to bfloat16 rounding, the BatchNorm statistics (the
  forward) and the loss bitwise. (Under float32 compute the option builds the very same
  layers: the gradients above are bitwise equal.)"""
  mesh = parallel.make_mesh(1)
  x, y = _data()
  opt = _optimizer()
  new, update, loss = {}, {}, {}
  for gsd in ("compute", "float32"):
    model = models.get("resnet18", NUM_CLASSES, dtype="bfloat16", grad_sum_dtype=gsd, **RESNET)
    state = train.init_state(model, opt, x[:1], jax.random.PRNGKey(0), mesh)
    step = train.make_train_step(model, train.ce_loss(), opt, mesh, donate=False)
    new[gsd], metrics = step(state, {"image": x, "label": y})
    update[gsd] = jax.tree.map(jnp.subtract, new[gsd].params, state.params)
    loss[gsd] = float(metrics["loss"])
  _close_to_bf16(update["float32"], update["compute"])
  jax.tree.map(np.testing.assert_array_equal, new["float32"].batch_stats, new["compute"].batch_stats)
  assert loss["float32"] == loss["compute"] and np.isfinite(loss["compute"])


def test_gradient_of_a_gradient_works_with_the_option():
  """Reverse over reverse (gradient matching, as dataset condensation differentiates a
  parameter gradient with respect to the images): it runs with the option and agrees with
  the default to bfloat16 rounding."""
  x, y = _data(batch=8)

  def image_grad(model):
    v = models.init_variables(model, jax.random.key(0), x[:1])

    def match(images):
      g = jax.grad(lambda p: _loss(model, {**v, "params": p}, images, y))(v["params"])
      return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g))

    return np.asarray(jax.jit(jax.grad(match))(x))

  default = image_grad(models.get("small_cnn", NUM_CLASSES, dtype="bfloat16", **SMALL))
  option = image_grad(models.get("small_cnn", NUM_CLASSES, dtype="bfloat16", grad_sum_dtype="float32", **SMALL))
  assert np.all(np.isfinite(option))
  assert np.linalg.norm(option - default) <= 0.05 * np.linalg.norm(default)


# ------------------------------------------------------------------ the ops


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,lhs_dil,rhs_dil,groups", [
    ((4, 9, 8, 6), (3, 3, 6, 5), (1, 1), ((1, 1), (1, 1)), None, None, 1),
    ((4, 9, 8, 6), (3, 3, 6, 5), (2, 2), ((1, 1), (1, 1)), None, None, 1),  # strided (a block's first conv)
    ((2, 7, 6, 3), (5, 3, 3, 4), (2, 1), ((2, 1), (0, 1)), None, None, 1),  # uneven kernel, padding, strides
    ((2, 8, 8, 4), (3, 3, 4, 4), (1, 1), "SAME", None, (2, 2), 1),           # dilated kernel, string padding
    ((2, 5, 5, 2), (3, 3, 2, 3), (1, 1), ((1, 1), (1, 1)), (2, 2), None, 1),  # dilated input
    ((2, 6, 6, 4), (3, 3, 2, 6), (1, 1), "VALID", None, None, 2),           # feature groups
    ((4, 9, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1)), None, None, 1),  # a stem (patch products on CPU)
])
def test_conv_float32_grad_is_the_float32_gradient_of_the_bf16_convolution(
    x_shape, k_shape, strides, padding, lhs_dil, rhs_dil, groups):
  """Forward and input gradient bitwise as flax computes them (kernel cast to bfloat16);
  kernel and bias gradients float32 and equal, up to float32 summation order, to the
  float32 convolution of the same bfloat16 values, where the plain bfloat16 gradient is
  rounded."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), BF16)
  k = jnp.asarray(rng.normal(size=k_shape), F32)
  b = jnp.asarray(rng.normal(size=k_shape[-1]), F32)
  dn = ("NHWC", "HWIO", "NHWC")
  kw = dict(lhs_dilation=lhs_dil, rhs_dilation=rhs_dil, dimension_numbers=dn, feature_group_count=groups)

  def plain(x, k, b, cast=BF16, conv=ops.conv_general_dilated):  # flax's Conv: everything cast to ``cast``
    y = conv(x.astype(cast), k.astype(cast), strides, padding, **kw)
    return y + b.astype(cast)

  ours = functools.partial(ops.conv_float32_grad, window_strides=strides, padding=padding,
                           conv_general_dilated=ops.conv_general_dilated, **kw)
  y, vjp = jax.vjp(lambda x, k, b: ours(x, k, bias=b), x, k, b)
  y_plain, vjp_plain = jax.vjp(plain, x, k, b)
  assert y.dtype == BF16
  np.testing.assert_array_equal(y, y_plain)
  g = jnp.asarray(rng.normal(size=y.shape), BF16)
  (dx, dk, db), (dx_plain, dk_plain, db_plain) = vjp(g), vjp_plain(g)
  assert (dx.dtype, dk.dtype, db.dtype) == (BF16, F32, F32)
  np.testing.assert_array_equal(dx, dx_plain)
  f32 = functools.partial(plain, cast=F32, conv=functools.partial(lax.conv_general_dilated,
                                                                  precision=lax.Precision.HIGHEST))
  _, vjp_f32 = jax.vjp(f32, x.astype(F32), k.astype(BF16).astype(F32), b.astype(BF16).astype(F32))
  _, dk_ref, db_ref = vjp_f32(g.astype(F32))
  for got, rounded, ref in ((dk, dk_plain, dk_ref), (db, db_plain, db_ref)):
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(got - ref).max()) <= 1e-5 * scale
    assert float(jnp.abs(rounded - ref).max()) > 1e-4 * scale  # the plain gradient is bfloat16


def test_dense_float32_grad_is_the_float32_gradient_of_the_bf16_product():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 5, 64)), BF16)  # two leading axes: both are summed over
  k, b = jnp.asarray(rng.normal(size=(64, 7)), F32), jnp.asarray(rng.normal(size=7), F32)
  dense = nn.Dense(7, dtype=BF16)
  plain = lambda x, k, b: dense.apply({"params": {"kernel": k, "bias": b}}, x)  # noqa: E731
  y, vjp = jax.vjp(lambda x, k, b: ops.dense_float32_grad(x, k, b), x, k, b)
  y_plain, vjp_plain = jax.vjp(plain, x, k, b)
  np.testing.assert_array_equal(y, y_plain)
  g = jnp.asarray(rng.normal(size=y.shape), BF16)
  (dx, dk, db), (dx_plain, dk_plain, db_plain) = vjp(g), vjp_plain(g)
  assert (dx.dtype, dk.dtype, db.dtype) == (BF16, F32, F32)
  np.testing.assert_array_equal(dx, dx_plain)
  xf, gf = x.astype(F32).reshape(-1, 64), g.astype(F32).reshape(-1, 7)
  dk_ref = jnp.dot(xf.T, gf, precision=lax.Precision.HIGHEST)
  for got, rounded, ref in ((dk, dk_plain, dk_ref), (db, db_plain, gf.sum(0))):
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(got - ref).max()) <= 1e-5 * scale
    assert float(jnp.abs(rounded - ref).max()) > 1e-4 * scale


def test_float32_grad_layers_are_flax_layers_in_float32():
  """With float32 compute the layers are flax's, bitwise, in value and gradient."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), F32)
  for ours, ref in ((ops.Float32GradConv(5, (3, 3), strides=2, padding=((1, 1), (1, 1))),
                     nn.Conv(5, (3, 3), strides=2, padding=((1, 1), (1, 1)))),
                    (ops.Float32GradDense(4), nn.Dense(4))):
    v = ref.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), v)
    loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
    np.testing.assert_array_equal(loss(ours)(v), loss(ref)(v))
    jax.tree.map(np.testing.assert_array_equal, jax.grad(loss(ours))(v), jax.grad(loss(ref))(v))


def test_inputs_are_checked():
  x, k = jnp.zeros((2, 4, 4, 3), BF16), jnp.zeros((3, 3, 3, 5), F32)
  with pytest.raises(ValueError, match="bias"):
    ops.conv_float32_grad(x, k, (1, 1), "SAME", bias=jnp.zeros((4,), F32))
  with pytest.raises(ValueError, match="padding"):
    ops.conv_float32_grad(x, k, (1, 1), "CIRCULAR")
  with pytest.raises(ValueError, match="window_strides"):
    ops.conv_float32_grad(x, k, (1,), "SAME")
  with pytest.raises(ValueError, match="kernel"):
    ops.dense_float32_grad(jnp.zeros((2, 3), BF16), jnp.zeros((3,), F32))
  with pytest.raises(ValueError, match="x: expected"):
    ops.dense_float32_grad(jnp.zeros((2, 4), BF16), jnp.zeros((3, 5), F32))
  with pytest.raises(ValueError, match="grad_sum_dtype"):
    models.get("small_cnn", 10, grad_sum_dtype="bfloat16")
  with pytest.raises(ValueError, match="conv"):  # a factory that is not nn.Conv cannot become Float32GradConv
    m = models.get("small_cnn", 10, dtype="bfloat16", grad_sum_dtype="float32", conv=lambda *a, **k: nn.Dense(4))
    jax.eval_shape(functools.partial(m.init, train=False), jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


# ------------------------------------------------------------------ the config


def test_config_field_reaches_the_model_and_keeps_existing_hashes():
  c = config_lib.train_config()
  assert c.train.grad_sum_dtype == "compute"
  h = config_lib.config_hash(c)
  before = c.to_dict()  # a config written before the field existed
  del before["train"]["grad_sum_dtype"]
  old = ml_collections.ConfigDict(before)
  assert config_lib.config_hash(old) == h == config_lib.phase_hash(c, ("data", "train"))
  assert models.from_config(c.train, NUM_CLASSES) == models.get("small_cnn", NUM_CLASSES)
  config_lib.apply_overrides(c, ["train.grad_sum_dtype=float32", "train.dtype=bfloat16"])
  assert config_lib.config_hash(c) != h
  assert models.from_config(c.train, NUM_CLASSES).grad_sum_dtype == "float32"
  c.train.model_kwargs.grad_sum_dtype = "compute"
  with pytest.raises(ValueError, match="grad_sum_dtype"):
    models.from_config(c.train, NUM_CLASSES)
  # crafting hashes a user's module by its repr: the field at its default leaves it as it was
  assert "grad_sum_dtype" not in repr(models.get("resnet18", NUM_CLASSES))
