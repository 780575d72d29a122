"""The feature MI diagnostic of ``victims.evaluate``: the mutual information between a
victim's penultimate features of clean training images and of their poisoned versions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma

from conftest import synthetic_host
from jaxprotect import data, models, parallel
from jaxprotect.unlearnable import crafting, pgd, poison_io, victims


def _self_mi_gaussian(f, ridge=1e-3):
  """``stats.gaussian_mi(f, f)`` in closed form: with covariance eigenvalues ``l`` and ridge
  ``r = ridge * mean(l)``, the joint covariance [[S + rI, S], [S, S + rI]] has determinant
  prod r (2 l + r), so the MI is ``0.5 * sum log((l + r)^2 / (r (2 l + r)))``."""
  f = np.asarray(f, np.float64)
  f = f - f.mean(0)
  lam = np.clip(np.linalg.eigvalsh(f.T @ f / (len(f) - 1)), 0, None)
  r = ridge * lam.mean()
  return 0.5 * float(np.sum(np.log((lam + r) ** 2 / (r * (2 * lam + r)))))


@pytest.fixture(scope="module")
def host():
  return synthetic_host((8, 8, 1), std=40.0, test_size=16, first_id=100, n=64)


def test_feature_mi_of_identical_inputs_is_the_mi_of_the_features_with_themselves(host):
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  model = models.get("mlp", ds.num_classes, hidden=(32,))
  variables = models.init_variables(model, jax.random.PRNGKey(0), ds.example)
  n = 60
  f = victims.penultimate_features(model, variables, ds.train, n, mesh, 16)  # 4 batches, the last one padded
  assert f.shape == (n, 32) and f.dtype == np.float32
  _, direct = model.apply(variables, ds.train.images[:n].astype(jnp.float32) / 255.0)
  np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
  same = victims.feature_mi(model, variables, ds.train, ds.train, n, mesh, 16)
  assert same["examples"] == n
  assert same["gaussian"] == pytest.approx(_self_mi_gaussian(f), rel=2e-3)
  assert same["ksg"] == pytest.approx(digamma(n) - digamma(victims.KSG_K), abs=1e-4)  # psi(N) - psi(k): no ties
  # a perturbation lowers both estimates
  noise = pgd.init_delta(jax.random.PRNGKey(1), (ds.train.size, *ds.train.image_shape), 0.3, ds.train.images)
  noisy = ds.train.replace(delta=noise, delta_mode="sample")
  other = victims.feature_mi(model, variables, ds.train, noisy, n, mesh, 16)
  assert np.isfinite(other["gaussian"]) and np.isfinite(other["ksg"])
  assert other["gaussian"] < same["gaussian"] - 1 and other["ksg"] < same["ksg"] - 1, (other, same)
  assert victims.feature_mi(model, variables, ds.train, noisy, n, mesh, 16, ksg=False)["ksg"] is None
  with pytest.raises(ValueError, match="exceeds the 64 examples"):
    victims.penultimate_features(model, variables, ds.train, 65, mesh, 16)


def _victim_config(npz, poison, quantize=""):
  c = crafting.unlearnable_config()
  c.data.name = str(npz)
  v = c.victim
  v.model, v.model_kwargs.hidden, v.epochs, v.batch_size, v.eval_batch_size, v.augment = "mlp", (16,), 1, 16, 16, ""
  c.evaluate.poison, c.evaluate.quantize = str(poison), quantize
  c.runtime.progress, c.runtime.tensorboard, c.runtime.checkpoint.async_save = False, False, False
  return c


def test_evaluate_records_the_feature_mi_of_both_victims(host, tmp_path):
  """A uint8-stored random poison: ``results.json`` and ``report.md`` hold finite Gaussian
  and KSG estimates for both victims over the 64 examples (fewer than the 2000 asked for).
  A zero poison evaluated beside it (the same clean victim, restored): the clean images
  and their "poisoned" versions are identical, so the KSG estimate is psi(64) - psi(3) for
  both victims, and the clean victim's MI is higher than under the random poison."""
  npz = tmp_path / "synthetic.npz"
  np.savez(npz, x_train=host.train.images, y_train=host.train.labels, ids_train=host.train.ids,
           x_test=host.test.images, y_test=host.test.labels, ids_test=host.test.ids, num_classes=host.num_classes)
  mesh = parallel.make_mesh(1)
  ds = data.from_config(_victim_config(npz, ""), mesh)
  shape = (ds.train.size, *ds.train.image_shape)
  noise = np.asarray(pgd.init_delta(jax.random.PRNGKey(1), shape, 0.3, ds.train.images))
  poison_io.save_poison(tmp_path / "noise", noise, "sample", ds, config=crafting.unlearnable_config())
  poison_io.save_poison(tmp_path / "zero", np.zeros(shape, np.float32), "sample", ds,
                        config=crafting.unlearnable_config())

  res = victims.evaluate(_victim_config(npz, tmp_path / "noise", "round"), tmp_path / "ev_noise", mesh)
  saved = json.loads((tmp_path / "ev_noise" / "results.json").read_text())
  assert saved["feature_mi"] == res["feature_mi"] and saved["quantize"] == "round"
  assert set(res["feature_mi"]) == {"poisoned", "clean"}
  for m in res["feature_mi"].values():
    assert m["examples"] == 64 and np.isfinite(m["gaussian"]) and np.isfinite(m["ksg"])
  report = (tmp_path / "ev_noise" / "report.md").read_text()
  assert "Feature MI" in report and "| poisoned |" in report and "stored as uint8 (`round`)" in report

  c = _victim_config(npz, tmp_path / "zero")
  c.evaluate.clean_workdir = str(tmp_path / "ev_noise" / "clean")
  zero = victims.evaluate(c, tmp_path / "ev_zero", mesh)["feature_mi"]
  self_ksg = digamma(64) - digamma(victims.KSG_K)
  for name in ("poisoned", "clean"):
    assert zero[name]["ksg"] == pytest.approx(self_ksg, abs=1e-4), (name, zero)
  assert zero["clean"]["gaussian"] > res["feature_mi"]["clean"]["gaussian"] + 1
  assert zero["clean"]["ksg"] > res["feature_mi"]["clean"]["ksg"] + 0.5

  c = _victim_config(npz, tmp_path / "zero")
  c.evaluate.feature_mi_examples, c.evaluate.clean = 0, False
  assert "feature_mi" not in victims.evaluate(c, tmp_path / "ev_off", mesh)
