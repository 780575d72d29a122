"""The public API as a new user meets it: the README's code, a user's own logits-only flax
model through the engine, bad inputs refused with errors that name the argument, the
[0, 1] box guarantee for every uint8 value, and ahead-of-time compilation for an abstract
8-device mesh."""

import fractions
import json
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental import checkify

import jaxprotect as jp
from jaxprotect import checks, data, losses, models, parallel, train
from jaxprotect.config import optimizer_config
from jaxprotect.unlearnable import crafting, pgd
from conftest import synthetic_host

REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


# Runs every ```python block of README.md in order, in one namespace (as a reader pasting
# them into one session), and prints what the checks below look at.
_RUN_README = """
import json, re, sys
import numpy as np
blocks = re.findall(r"```python\\n(.*?)```", open(sys.argv[1]).read(), re.S)
ns = {}
for i, block in enumerate(blocks):
  exec(compile(block, f"README.md python block {i}", "exec"), ns)
print(json.dumps({"devices": len(ns["mesh"].devices.flat), "blocks": len(blocks),
                  "delta_max": float(np.abs(np.asarray(ns["delta"])).max()),
                  "iterations": ns["result"]["iterations"], "compiled": ns["compiled"] is not None}))
"""


def _check_readme_run(out: dict) -> None:
  assert out["blocks"] == len(readme_blocks()) >= 3
  assert 0 < out["delta_max"] <= 8 / 255 + 1e-7
  assert out["iterations"] == 1 and out["compiled"]


def _repo_like(tmp_path):
  """``tmp_path`` as the README's reader sees the repository root: ``experiments/`` there,
  run directories written into ``tmp_path``."""
  (tmp_path / "experiments").symlink_to(REPO / "experiments")


def test_readme_examples_run_on_8_devices(tmp_path, monkeypatch, capsys):
  _repo_like(tmp_path)
  monkeypatch.chdir(tmp_path)
  ns = {}
  for i, block in enumerate(readme_blocks()):
    exec(compile(block, f"README.md python block {i}", "exec"), ns)
  assert len(ns["mesh"].devices.flat) == 8
  # the multi-device batch goes straight into the step: it comes back split along "data"
  assert ns["batch"]["image"].sharding.spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  assert "test accuracy" in capsys.readouterr().out
  _check_readme_run({"blocks": len(readme_blocks()), "delta_max": float(jnp.abs(ns["delta"]).max()),
                     "iterations": ns["result"]["iterations"], "compiled": ns["compiled"] is not None})
  assert (tmp_path / "runs" / "em-mynet" / "poison" / "delta.npy").exists()


@pytest.mark.slow
def test_readme_examples_run_on_1_device(tmp_path):
  _repo_like(tmp_path)
  script = tmp_path / "run_readme.py"
  script.write_text(_RUN_README)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(script), str(REPO / "README.md")], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 1
  _check_readme_run(out)


# ----------------------------------------------------------------------- the model contract


class LogitsOnly(nn.Module):
  """A user's model: logits only, no ``train`` argument."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(16)(x.reshape((x.shape[0], -1)))))


class Deterministic(nn.Module):
  """Dropout driven by ``deterministic`` and a dict output."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h = nn.relu(nn.Dense(16)(x.reshape((x.shape[0], -1))))
    h = nn.Dropout(0.5)(h, deterministic=deterministic)
    return {"logits": nn.Dense(self.num_classes)(h), "features": h}


class ZooLogits(nn.Module):
  """The zoo's small CNN, returning its logits only."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return models.get("small_cnn", 4, width=4)(x, train=train)[0]


class ThreeOutputs(nn.Module):
  @nn.compact
  def __call__(self, x):
    z = nn.Dense(4)(x.reshape((x.shape[0], -1)))
    return z, z, z


class FlatLogits(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(x.reshape((x.shape[0], -1))).reshape(-1)


@pytest.fixture(scope="module")
def tiny():
  mesh = parallel.make_mesh()
  ds = data.to_device(synthetic_host(image_shape=(8, 8, 1)), mesh)
  opt = train.make_optimizer(optimizer_config(), 8, 1)
  return mesh, ds, opt


def test_a_logits_only_model_trains_like_the_zoo_model_it_wraps(tiny):
  """The adapter is transparent: the zoo model and a logits-only module around it take the
  same steps (same losses, same accuracy) from the same initial parameters."""
  mesh, ds, opt = tiny
  zoo = models.get("small_cnn", 4, width=4)
  key = jax.random.PRNGKey(0)
  s_zoo = train.init_state(zoo, opt, ds.example, key, mesh)
  s_user = train.init_state(ZooLogits(), opt, ds.example, key, mesh)
  # same parameters, nested one level deeper in the user's module
  s_user = s_user.replace(params={"SmallCNN_0": s_zoo.params}, opt_state=opt.init({"SmallCNN_0": s_zoo.params}))
  step_zoo = train.make_train_step(zoo, train.ce_loss(), opt, mesh, donate=False)
  step_user = train.make_train_step(ZooLogits(), train.ce_loss(), opt, mesh, donate=False)
  for i in range(3):
    batch = ds.batch(jax.random.PRNGKey(i), 16)
    s_zoo, m_zoo = step_zoo(s_zoo, batch)
    s_user, m_user = step_user(s_user, batch)
    np.testing.assert_allclose(float(m_user["loss"]), float(m_zoo["loss"]), rtol=1e-6)
  assert float(m_zoo["loss"]) > 0
  np.testing.assert_allclose(np.asarray(s_user.params["SmallCNN_0"]["fc"]["kernel"]),
                             np.asarray(s_zoo.params["fc"]["kernel"]), rtol=1e-5, atol=1e-6)


def test_user_models_through_step_pgd_and_craft(tiny, tmp_path):
  mesh, ds, opt = tiny
  for module in (LogitsOnly(), Deterministic()):
    state = train.init_state(module, opt, ds.example, jax.random.PRNGKey(0), mesh)
    step = train.make_train_step(module, train.ce_loss(), opt, mesh)
    first = None
    for i in range(6):
      state, m = step(state, ds.batch(jax.random.PRNGKey(i), 32))
      first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < first  # it learns
    # EM noise for it lowers its loss on the batch
    run = pgd.make_batch_pgd(module, pgd.error_minimizing_objective(), num_steps=5)
    b = ds.batch(jax.random.PRNGKey(9), 32)
    delta = run(train.variables_of(state), b["image"], b["label"], jnp.zeros_like(b["image"]), 0.1, 0.03)
    model = models.as_model(module)

    def loss(d):
      return float(jnp.mean(losses.cross_entropy(model.apply(train.variables_of(state), b["image"] + d)[0],
                                                 b["label"])))

    assert loss(delta) < loss(jnp.zeros_like(delta))
    assert float(jnp.abs(delta).max()) <= 0.1 + 1e-7
  c = crafting.unlearnable_config()
  c.data.name, c.surrogate.model, c.surrogate.batch_size, c.surrogate.eval_batch_size = "synthetic", "mlp", 16, 64
  c.craft.pgd.batch_size, c.craft.pgd.steps, c.craft.train_steps, c.craft.max_iterations = 16, 2, 2, 1
  c.runtime.progress, c.export.preview = False, False
  r = crafting.craft(c, tmp_path / "em", mesh, ds, model=LogitsOnly())
  assert r["iterations"] == 1
  assert "LogitsOnly" in (tmp_path / "em" / "config.json").read_text()
  # the user's module is part of the crafting hash: another module is another craft
  assert crafting.crafting_hash(c, LogitsOnly()) != crafting.crafting_hash(c, LogitsOnly(num_classes=5))
  c.craft.method = "mi_ue"
  with pytest.raises(ValueError, match="MI-UE needs the surrogate's features"):
    crafting.craft(c, tmp_path / "mi", mesh, ds, model=LogitsOnly())


def test_outputs_that_break_the_contract_are_refused_with_the_rule(tiny):
  mesh, ds, opt = tiny
  for module in (ThreeOutputs(), FlatLogits()):
    with pytest.raises(ValueError, match="a model must return logits_BxK"):
      train.init_state(module, opt, ds.example, jax.random.PRNGKey(0), mesh)
  with pytest.raises(ValueError, match="needs the model's features"):
    objective = pgd.mi_ue_objective()
    run = pgd.make_batch_pgd(LogitsOnly(), objective, num_steps=1)
    v = models.init_variables(LogitsOnly(), jax.random.PRNGKey(0), ds.example)
    b = ds.batch(jax.random.PRNGKey(0), 16)
    run(v, b["image"], b["label"], jnp.zeros_like(b["image"]), 0.1, 0.01)
  with pytest.raises(TypeError, match="flax nn.Module"):
    models.as_model(lambda x: x)
  # a per-batch (scalar) loss is refused: the engine's losses are per example
  step = train.make_train_step(LogitsOnly(), lambda out, b: jnp.mean(losses.cross_entropy(out[0], b["label"])), opt,
                               mesh)
  state = train.init_state(LogitsOnly(), opt, ds.example, jax.random.PRNGKey(0), mesh)
  with pytest.raises(ValueError, match="per-example losses"):
    step(state, ds.batch(jax.random.PRNGKey(0), 16))


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_errors_that_name_the_argument(tiny):
  mesh, ds, opt = tiny
  z = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="labels_B"):
    losses.cross_entropy(z, jnp.array([0, 1, 2, 3]))  # label K
  with pytest.raises(ValueError, match="labels_B"):
    losses.cross_entropy(z, jnp.array([0, 1, 2, -1]))  # label -1
  with pytest.raises(ValueError, match="labels_B"):
    losses.mi_ue_loss(jnp.ones((4, 5)), jnp.zeros((4, 1), jnp.int32))  # (B, 1) labels
  with pytest.raises(ValueError, match="logits_BxK"):
    losses.cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))  # empty batch
  x = jnp.full((2, 4, 4, 1), 0.5)
  with pytest.raises(ValueError, match="eps"):
    pgd.project(jnp.zeros_like(x), x, -0.1)
  with pytest.raises(ValueError, match="num_steps"):
    pgd.make_batch_pgd(LogitsOnly(), pgd.error_minimizing_objective(), num_steps=0)
  run = pgd.make_batch_pgd(LogitsOnly(), pgd.error_minimizing_objective(), num_steps=1)
  v = models.init_variables(LogitsOnly(), jax.random.PRNGKey(0), ds.example)
  y = jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="x: expected values in"):
    run(v, x * 255.0, y, jnp.zeros_like(x), 0.1, 0.01)  # images in [0, 255]
  with pytest.raises(ValueError, match="eps"):
    run(v, x, y, jnp.zeros_like(x), -0.1, 0.01)
  with pytest.raises(ValueError, match="delta"):
    run(v, x, y, jnp.zeros((2, 4, 4, 3)), 0.1, 0.01)
  with pytest.raises(ValueError, match="x: expected a non-empty batch"):
    run(v, x[:0], y[:0], x[:0], 0.1, 0.01)
  # float images never become uint8 0/1 on the way to the device
  host = synthetic_host(image_shape=(4, 4, 1))
  floats = data.HostDataset(name="floats", train=data.ArraySplit(host.train.images / 255.0, host.train.labels,
                                                                 host.train.ids),
                            test=host.test, num_classes=4, fingerprint="x")
  with pytest.raises(ValueError, match="expected uint8 pixels"):
    data.to_device(floats, mesh)
  bad_labels = data.HostDataset(name="bad", train=data.ArraySplit(host.train.images, host.train.labels + 1,
                                                                  host.train.ids),
                                test=host.test, num_classes=4, fingerprint="x")
  with pytest.raises(ValueError, match="labels: expected class indices in"):
    data.to_device(bad_labels, mesh)
  with pytest.raises(ValueError, match="batch_size"):
    ds.batch(jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match="divisible"):
    ds.batch(jax.random.PRNGKey(0), 12)  # 8 devices
  state = train.init_state(LogitsOnly(), opt, ds.example, jax.random.PRNGKey(0), mesh)
  step = train.make_train_step(LogitsOnly(), train.ce_loss(), opt, mesh, donate=False)
  with pytest.raises(ValueError, match="batch\\['label'\\]"):
    step(state, {"image": jnp.zeros((8, 8, 8, 1)), "label": jnp.zeros((8, 1), jnp.int32)})
  with pytest.raises(ValueError, match="non-empty batch"):
    step(state, {"image": jnp.zeros((0, 8, 8, 1)), "label": jnp.zeros((0,), jnp.int32)})
  with pytest.raises(ValueError, match="example_x"):
    train.init_state(LogitsOnly(), opt, jnp.zeros((1, 8, 8, 1), jnp.uint8), jax.random.PRNGKey(0), mesh)


def test_value_checks_inside_jit_are_opt_in(tiny):
  mesh, ds, opt = tiny
  state = train.init_state(LogitsOnly(), opt, ds.example, jax.random.PRNGKey(0), mesh)
  step = train.make_train_step(LogitsOnly(), train.ce_loss(), opt, mesh, donate=False)
  good = ds.batch(jax.random.PRNGKey(0), 16)
  bad = {**good, "label": good["label"].at[0].set(4)}  # label K
  step(state, bad)  # unchecked: the program has no checks in it
  with pytest.raises(checkify.JaxRuntimeError, match="batch\\['label'\\]|labels_B"):
    checks.checked(step)(state, bad)
  over = {**good, "image": good["image"] * 255.0}
  with pytest.raises(checkify.JaxRuntimeError, match="batch\\['image'\\]"):
    checks.checked(step)(state, over)
  _, m = checks.checked(step)(state, good)
  assert np.isfinite(float(m["loss"]))
  # the same jitted step still runs unchecked afterwards (the flag is in jit's cache key)
  step(state, bad)


def test_crafting_configs_are_locked_and_checked(tmp_path, tiny):
  c = crafting.unlearnable_config()
  with pytest.raises(AttributeError):
    c.craft.pgd.step = 5  # a typo of pgd.steps
  c.surrogate.model_kwargs.width = 8  # model keyword arguments stay open
  loose = ml_collections.ConfigDict(c.to_dict())
  loose.craft.pgd.step = 5
  mesh, ds, _ = tiny
  with pytest.raises(ValueError, match="config.craft.pgd.step; did you mean config.craft.pgd.steps"):
    crafting.craft(loose, tmp_path / "x", mesh, ds)
  assert not (tmp_path / "x").exists()  # nothing half-written


def test_lazy_submodules_resolve():
  assert jp.unlearnable.craft is crafting.craft
  assert jp.distill.teacher.__name__ == "jaxprotect.distill.teacher"
  assert {"unlearnable", "distill", "checks", "train"} <= set(dir(jp))


# ---------------------------------------------------------------------- the [0, 1] box


def test_box_guarantee_holds_for_every_uint8_value_in_numpy_arithmetic():
  u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  x32 = u.astype(np.float32) / np.float32(255)
  x64 = u / 255  # float64
  for eps in (8 / 255, 0.5, 1.0):
    for start in (-2.0, 2.0):
      d = np.asarray(pgd.project_u8(jnp.full(u.shape, start, jnp.float32), jnp.asarray(u), eps))
      assert np.abs(d).max() <= np.float32(eps)
      for x in (x32, x64, np.asarray(jnp.asarray(u, jnp.float32) / 255.0)):
        s = x + d
        assert s.min() >= 0.0 and s.max() <= 1.0, (eps, start, s.min(), s.max())
      # the widest such box: one float32 ulp further out would leave it
      if eps == 1.0:
        beyond = np.nextafter(d, np.float32(start)).ravel()
        for v, b in zip(u.ravel(), beyond):  # in exact arithmetic
          total = fractions.Fraction(int(v), 255) + fractions.Fraction(float(b))
          assert total < 0 or total > 1


def test_a_crafted_sample_wise_perturbation_keeps_the_box_for_all_256_values(tiny):
  """A sample-wise pass on images holding every uint8 value, with steps far larger than
  eps: the stored perturbation leaves ``u / 255 + delta`` in [0, 1] in float32 and float64."""
  mesh, _, _ = tiny
  rng = np.random.default_rng(0)
  images = np.tile(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), (16, 1, 1, 1))
  images = np.stack([rng.permutation(i.ravel()).reshape(16, 16, 1) for i in images])
  labels = (np.arange(16) % 4).astype(np.int32)
  split = data.ArraySplit(images=images, labels=labels, ids=np.arange(16, dtype=np.int32))
  host = data.HostDataset("all256", split, split, 4, data.fingerprint(split, split))
  ds = data.to_device(host, mesh)
  model = LogitsOnly()
  v = models.init_variables(model, jax.random.PRNGKey(0), ds.example)
  for eps in (8 / 255, 1.0):
    init = pgd.init_delta(jax.random.PRNGKey(1), images.shape, eps, ds.train.images)
    run = pgd.make_samplewise_pass(model, pgd.error_minimizing_objective(), mesh, 8, 3, loop="scan")
    delta = np.asarray(run(v, ds.train.replace(delta=init, delta_mode="sample"), jnp.float32(eps),
                           jnp.float32(2.0)))
    for x in (images.astype(np.float32) / np.float32(255), images / 255):
      s = x + delta
      assert s.min() >= 0.0 and s.max() <= 1.0
    assert np.abs(delta).max() <= np.float32(eps)


# ----------------------------------------------------------------- ahead-of-time compiles


def test_resnet18_step_and_pgd_pass_compile_ahead_of_time_without_device_arrays():
  """For an 8-device mesh, the ResNet-18 training step and a sample-wise PGD pass lower
  and compile from abstract state and data alone: no array is placed on a device."""
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  model = models.get("resnet18", 10)
  opt = train.make_optimizer(optimizer_config(), 100, 1)
  spec = jax.ShapeDtypeStruct
  dat = parallel.data_sharded(mesh)
  live = {id(a) for a in jax.live_arrays()}
  abstract = train.abstract_state(model, opt, spec((1, 32, 32, 3), jnp.float32), mesh)
  assert all(isinstance(leaf, spec) for leaf in jax.tree.leaves(abstract))
  assert models.count_params(abstract.params) > 11_000_000
  batch = {"image": spec((128, 32, 32, 3), jnp.float32, sharding=dat), "label": spec((128,), jnp.int32, sharding=dat)}
  step = train.make_train_step(model, train.ce_loss(), opt, mesh)
  compiled_step = step.lower(abstract, batch).compile()
  split = data.abstract_split(1024, (32, 32, 3), mesh, layout="sharded", delta_mode="sample")
  run = pgd.make_samplewise_pass(model, pgd.error_minimizing_objective(), mesh, batch_size=128, num_steps=2,
                                 loop="scan", unroll=False)
  scalar = spec((), jnp.float32)
  compiled_pass = run.lower(train.variables_of(abstract), split, scalar, scalar).compile()
  new = [a for a in jax.live_arrays() if id(a) not in live]
  assert not new, [a.shape for a in new]
  # what the compiled programs report, per device
  assert compiled_step.memory_analysis().argument_size_in_bytes > 11_000_000 * 4
  assert "all-reduce" in compiled_step.as_text()  # gradients over the global batch
  assert compiled_pass.memory_analysis() is not None
