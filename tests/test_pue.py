"""PUE: training and PGD under random weight perturbations (``train.WeightNoise``), the
robust switch of the crafting loop, 8 devices = 1 device, and exact kill-and-resume."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprotect import config as config_lib, data, models, parallel, train
from jaxprotect.unlearnable import crafting, pgd, poison_io

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import synthetic_host  # noqa: E402


@pytest.fixture(scope="module")
def host():
  return synthetic_host((8, 8, 1), std=40.0, test_size=16, first_id=100)


def test_weight_noise_levels_and_the_noise_free_step():
  assert train.WeightNoise.ramp(0.25, 0.05, 3).sigmas == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
  with pytest.raises(ValueError, match="sigmas"):
    train.WeightNoise((-0.1,))
  with pytest.raises(ValueError, match="draws"):
    train.WeightNoise((0.1,), 0)
  mesh = parallel.make_mesh(1)
  model = models.get("mlp", 4, hidden=(8,))
  opt = train.make_optimizer(config_lib.optimizer_config(), 10, 1)
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1))
  batch = {"image": x, "label": jnp.arange(16) % 4}
  state = train.init_state(model, opt, x[:1], jax.random.PRNGKey(1), mesh)
  copy = lambda s: jax.tree.map(lambda a: a.copy(), s)  # noqa: E731  (the steps donate their state)
  plain, _ = train.make_train_step(model, train.ce_loss(), opt, mesh)(copy(state), batch)
  zero, _ = train.make_train_step(model, train.ce_loss(), opt, mesh, weight_noise=train.WeightNoise((0.0,)))(
      copy(state), batch)
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(zero.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # sigma 0, one level: the plain step
  noisy, m = train.make_train_step(model, train.ce_loss(), opt, mesh, weight_noise=train.WeightNoise.ramp(
      0.2, 0.1, 4))(copy(state), batch)
  assert int(noisy.step) == 1 and np.isfinite(float(m["loss"]))
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(plain.params),
                                                            jax.tree.leaves(noisy.params)))
  assert diff > 0  # three updates at three noise levels moved the weights elsewhere


def test_pgd_under_weight_noise_averages_the_draws():
  """One PGD step under one noise level equals a sign step on the mean of the draws'
  gradients, computed here one draw at a time."""
  model = models.get("mlp", 4, hidden=(8,))
  variables = models.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1), minval=0.2, maxval=0.8)
  y = jnp.arange(16) % 4
  objective = pgd.error_minimizing_objective()
  noise = train.WeightNoise((0.1,), draws=3)
  got = pgd.make_batch_pgd(model, objective, 1, weight_noise=noise)(variables, x, y, jnp.zeros_like(x), 0.1, 0.01,
                                                                  noise_key=jax.random.PRNGKey(7))
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(7), 0), 0)
  grads = []
  for k in range(3):
    v = {**variables, "params": train.perturb_params(variables["params"], jax.random.fold_in(key, k), 0.1)}
    grads.append(jax.grad(lambda d, v=v: objective(model.apply(v, x + d, train=False), {"label": y}))(
        jnp.zeros_like(x)))
  want = pgd.sign_descent(jnp.zeros_like(x), sum(grads) / 3, x, 0.1, 0.01)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-7)
  with pytest.raises(ValueError, match="noise_key"):
    pgd.make_batch_pgd(model, objective, 1, weight_noise=noise)(variables, x, y, jnp.zeros_like(x), 0.1, 0.01)


def _pue_config(mode="sample"):
  c = crafting.unlearnable_config()
  s, k = c.surrogate, c.craft
  k.method, k.mode = "pue", mode
  s.model, s.model_kwargs.hidden = "mlp", (16,)
  s.batch_size, s.eval_batch_size, s.loop = 16, 16, "host"
  k.pgd.batch_size, k.pgd.steps = 16, 1
  k.train_steps, k.max_iterations, k.stop_error, k.class_subset = 3, 3, 0.0, 0.5
  c.pue.sigma, c.pue.sigma_step, c.pue.draws, c.pue.train_draws = 0.1, 0.05, 2, 2
  c.pue.switch_accuracy = 0.0  # robust from the second iteration on
  c.runtime.progress, c.runtime.tensorboard, c.export.preview = False, False, False
  c.runtime.checkpoint.async_save = False
  return c


@pytest.mark.parametrize("mode,loop", [("sample", "host"), ("class", "scan")])
def test_pue_crafting_on_8_devices_equals_1_device(host, tmp_path, mode, loop):
  c = _pue_config(mode)
  c.craft.pgd.loop = loop
  deltas = []
  for n in (1, 8):
    mesh = parallel.make_mesh(n)
    r = crafting.craft(c, tmp_path / f"d{n}", mesh, data.to_device(host, mesh))
    deltas.append(poison_io.load_poison(r["poison"]).delta)
    logged = [json.loads(x) for x in (tmp_path / f"d{n}" / "metrics.jsonl").read_text().splitlines()]
    assert [x["robust"] for x in logged] == [0, 1, 1]  # switched on after the first iteration
  assert np.abs(deltas[0]).max() > 0.5 * c.craft.eps
  close = np.isclose(deltas[0], deltas[1], rtol=0, atol=1e-6)
  assert close.mean() > 0.999, close.mean()
  # the robust iterations changed the noise: EM with the same seed ends elsewhere
  em = _pue_config(mode)
  em.craft.method = "em"
  mesh = parallel.make_mesh(1)
  d_em = poison_io.load_poison(crafting.craft(em, tmp_path / "em", mesh, data.to_device(host, mesh))["poison"]).delta
  assert float(np.mean(np.abs(d_em - deltas[0]) > 1e-4)) > 0.05


def test_bad_pue_config(host, tmp_path):
  c = _pue_config()
  c.pue.draws = 0
  mesh = parallel.make_mesh(1)
  with pytest.raises(ValueError, match="pue: expected"):
    crafting.craft(c, tmp_path / "x", mesh, data.to_device(host, mesh))
  assert not (tmp_path / "x").exists()


_KILLED = """
import sys
sys.path.insert(0, {here!r})
from conftest import synthetic_host
from test_pue import _pue_config
from jaxprotect import data, parallel
from jaxprotect.unlearnable import crafting
host = synthetic_host((8, 8, 1), std=40.0, test_size=16, first_id=100)
mesh = parallel.make_mesh(1)
crafting.craft(_pue_config(), {work!r}, mesh, data.to_device(host, mesh))
"""


@pytest.mark.slow
def test_killed_pue_craft_resumes_exactly(host, tmp_path):
  env = {**os.environ, "JAXPROTECT_KILL_AT": "2", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  script = _KILLED.format(here=str(HERE), work=str(tmp_path / "run"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  mesh = parallel.make_mesh(1)
  resumed = crafting.craft(_pue_config(), tmp_path / "run", mesh, data.to_device(host, mesh))
  whole = crafting.craft(_pue_config(), tmp_path / "whole", mesh, data.to_device(host, mesh))
  np.testing.assert_array_equal(poison_io.load_poison(resumed["poison"]).delta,
                                poison_io.load_poison(whole["poison"]).delta)
  assert resumed["surrogate_params_sha256"] == whole["surrogate_params_sha256"]


def test_pue_reference_variant_has_the_reference_values():
  c = config_lib.from_file(f"{HERE.parent / 'experiments' / 'pue.py'}:cifar10,classwise,reference")
  k = c.craft
  assert (k.method, k.mode, k.pgd.steps, k.train_steps, k.stop_error, k.stop_on) == ("pue", "class", 1, 20, 0.1,
                                                                                       "subset")
  assert k.pgd.step_size == pytest.approx(0.8 / 255) and k.eps == pytest.approx(8 / 255)
  assert (c.pue.sigma, c.pue.sigma_step, c.pue.draws, c.pue.train_draws) == (0.25, 0.05, 10, 100)
  assert c.surrogate.model == "resnet18"


def test_the_crafting_surrogate_is_certified_as_the_reference_certifies_it(host, tmp_path):
  """``certify.model`` may be a finished craft: its surrogate at the end of crafting (the
  PUE reference certifies that model), with the digest that crafting recorded."""
  from jaxprotect import runner  # noqa: PLC0415
  from jaxprotect.unlearnable import certify as cert  # noqa: PLC0415

  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  crafted = crafting.craft(_pue_config(), tmp_path / "pue", mesh, ds)
  model, variables, info = runner.load_trained(tmp_path / "pue")
  assert info["section"] == "surrogate" and info["results"]["test_accuracy"] is None
  assert runner.params_digest(variables["params"]) == crafted["surrogate_params_sha256"]
  c = cert.certify_config()
  config_lib.apply_overrides(c, [f"certify.model={tmp_path / 'pue'}", "certify.num_draws=4", "certify.sigma=0.02",
                                 "certify.batch_size=8", "runtime.progress=false", "runtime.tensorboard=false"])
  out = cert.certify(c, tmp_path / "cert", mesh, dataset=ds)
  logits = model.apply(variables, jnp.asarray(host.test.images, jnp.float32) / 255.0, train=False)[0]
  own = float(np.mean(np.asarray(logits).argmax(-1) == host.test.labels))
  assert abs(out["model_test_accuracy"] - own) < 1e-6  # measured by certify: crafting never tests it
  assert len(out["accuracies"]) == 4 and all(0.0 <= a <= 1.0 for a in out["accuracies"])
  random = _pue_config()
  random.craft.method = "random"
  crafting.craft(random, tmp_path / "random", mesh, ds)
  with pytest.raises(ValueError, match="which trains no surrogate"):
    runner.load_trained(tmp_path / "random")
