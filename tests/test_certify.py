"""Certified (q, eta)-learnability: the certificate against an independent scipy
computation, the weight-draw evaluation (chunked = unchunked, 8 devices = 1), the
resumable certification phase, and its input checks."""

import json
import math
import os
import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import binom, norm

from jaxprotect import config as config_lib, data, parallel, runner
from jaxprotect.unlearnable import certify as cert

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def reference_certificate(acc, q, eta, sigma, confidence=0.99):
  """Written from the paper's rule, vectorised: the smallest rank k >= ceil(q_up N) with
  BinomCDF(k - 1; N, q_up) > confidence gives the k-th smallest accuracy; else NaN."""
  n = len(acc)
  q_up = norm.cdf(norm.ppf(q) + eta / sigma)
  ks = np.arange(1, n + 1)
  ok = (ks >= math.ceil(q_up * n)) & (binom.cdf(ks - 1, n, q_up) > confidence)
  return np.sort(acc)[ks[ok][0] - 1] if ok.any() else math.nan


CASES = [  # (N, q, sigma, etas)
    (1000, 0.9, 0.25, cert.ETAS),
    (200, 0.7, 0.1, (0.0, 0.01, 0.05, 0.1, 0.2)),
    (10, 0.7, 0.1, (0.001, 0.01, 0.1, 1.0)),  # mostly abstains
    (50, 0.5, 1.0, (0.0, 0.3, 0.9, 2.0)),
]


@pytest.mark.parametrize("n,q,sigma,etas", CASES)
def test_certificate_matches_an_independent_computation(n, q, sigma, etas):
  rng = np.random.default_rng(n)
  acc = np.round(rng.normal(80, 3, n), 0)  # percent, with ties (rounded to whole points)
  assert len(np.unique(acc)) < n
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    got = cert.certify_learnability(acc, q, np.asarray(etas), sigma)
    got_frac = cert.certify_learnability(acc / 100, q, np.asarray(etas), sigma)
    jitted = jax.jit(lambda a: cert.certify_learnability(a, q, np.asarray(etas), sigma))(jnp.asarray(acc))
    scalar = cert.certify_learnability(acc, q, float(etas[0]), sigma)
  want = np.array([reference_certificate(acc, q, e, sigma) for e in etas])
  np.testing.assert_array_equal(got, want)  # exactly, abstentions (NaN) included
  np.testing.assert_allclose(got_frac * 100, want, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(jitted), want.astype(np.float32), rtol=1e-6)
  defined = got[~np.isnan(got)]
  assert np.all(np.diff(defined) >= 0)  # non-decreasing in eta wherever defined
  assert np.ndim(scalar) == 0 and (np.isnan(scalar) and np.isnan(want[0]) or scalar == want[0])


def test_abstention_warns_with_the_draws_needed():
  acc = np.linspace(0.5, 0.9, 100)
  with pytest.warns(RuntimeWarning, match=r"N >= \d+ draws would be needed"):
    out = cert.certify_learnability(acc, 0.9, 0.5, 0.25)
  assert np.isnan(out)
  need = cert.draws_needed(0.9, 0.5, 0.25)
  assert cert.certify_index(need, 0.9, 0.5, 0.25) > 0 and cert.certify_index(need - 1, 0.9, 0.5, 0.25) == 0
  assert cert.draws_needed(0.9, 100.0, 0.01) is None  # q_up rounds to 1
  with pytest.warns(RuntimeWarning, match="no number of draws suffices"):
    cert.certify_learnability(acc, 0.9, 100.0, 0.01)


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=1.5), "q: expected a quantile in"), (dict(q=0.0), "q: expected"), (dict(sigma=0.0), "sigma: expected"),
    (dict(eta=-0.1), "eta: expected radii >= 0"), (dict(confidence=1.0), "confidence: expected"),
    (dict(acc=[]), "accuracies_N: expected a non-empty vector"), (dict(acc=[0.5, np.nan]), "finite"),
])
def test_bad_certificate_inputs(kwargs, match):
  args = dict(acc=[0.5, 0.6, 0.7], q=0.9, eta=0.1, sigma=0.25, confidence=0.99) | kwargs
  with pytest.raises(ValueError, match=match):
    cert.certify_learnability(args["acc"], args["q"], args["eta"], args["sigma"], args["confidence"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A small CNN trained for one epoch on 512 embedded Fashion-MNIST images (1 device)."""
  work = tmp_path_factory.mktemp("certify") / "model"
  c = config_lib.train_config()
  config_lib.apply_overrides(c, ["data.train_subset=512", "train.epochs=1", "train.model_kwargs.width=8",
                                 "runtime.progress=false", "runtime.tensorboard=false"])
  runner.fit(c, work, parallel.make_mesh(1))
  return work


def test_weight_draws_chunked_and_sharded_equal_one_pass(trained):
  model, variables, info = runner.load_trained(trained)
  key = jax.random.PRNGKey(3)
  results = {}
  for devices in (1, 8):
    mesh = parallel.make_mesh(devices)
    ds = data.to_device(data.load_arrays("fashion_mnist_mini"), mesh)
    whole = cert.make_draw_eval(model, mesh, 400, 6)(variables, ds.test, key, 0, 0.05)
    parts = cert.make_draw_eval(model, mesh, 400, 4)
    chunked = jnp.concatenate([parts(variables, ds.test, key, 0, 0.05), parts(variables, ds.test, key, 4, 0.05)])
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(chunked)[:6])
    results[devices] = np.asarray(whole)
    if devices == 1:  # sigma 0: every draw is the trained model
      still = cert.make_draw_eval(model, mesh, 400, 2)(variables, ds.test, key, 0, 0.0)
      np.testing.assert_allclose(np.asarray(still), info["results"]["test_accuracy"], atol=1e-6)
  np.testing.assert_array_equal(results[1], results[8])  # counts of correct images: exact
  assert len(set(results[1].tolist())) > 1  # the draws differ


def _certify_config(model_dir, **fields):
  c = cert.certify_config()
  config_lib.apply_overrides(c, [f"certify.model={model_dir}", "certify.num_draws=10", "certify.chunk=4",
                                 "certify.sigma=0.02", "certify.batch_size=400", "runtime.progress=false",
                                 "runtime.tensorboard=false", *(f"{k}={v}" for k, v in fields.items())])
  return c


_KILLED = """
import sys
sys.path.insert(0, {here!r})
from test_certify import _certify_config
from jaxprotect import parallel
from jaxprotect.unlearnable import certify as cert
cert.certify(_certify_config({model!r}), {work!r}, parallel.make_mesh(1))
"""


def test_certify_resumes_after_a_kill_and_refuses_bad_input(trained, tmp_path):
  mesh = parallel.make_mesh(1)
  whole = cert.certify(_certify_config(trained), tmp_path / "whole", mesh)
  assert whole["num_draws"] == 10 and len(whole["accuracies"]) == 10
  assert len(whole["certified"]) == len(cert.ETAS)
  env = {**os.environ, "JAXPROTECT_KILL_AT": "8", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  script = _KILLED.format(here=str(HERE), model=str(trained), work=str(tmp_path / "killed"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not (tmp_path / "killed" / "results.json").exists()
  resumed = cert.certify(_certify_config(trained), tmp_path / "killed", mesh)
  assert resumed["accuracies"] == whole["accuracies"] and resumed["certified"] == whole["certified"]
  steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [4, 8, 12]
  # another sigma is another certification: refused, nothing changed
  before = (tmp_path / "whole" / "results.json").read_bytes()
  with pytest.raises(ValueError, match="config hash"):
    cert.certify(_certify_config(trained, **{"certify.sigma": 0.03}), tmp_path / "whole", mesh)
  assert (tmp_path / "whole" / "results.json").read_bytes() == before
  for fields, match in (({"certify.q": 1.0}, "q: expected"), ({"certify.sigma": 0.0}, "sigma: expected"),
                        ({"certify.confidence": 0.0}, "confidence: expected"),
                        ({"certify.etas": "(0.1,-1.0)"}, "certify.etas: expected radii"),
                        ({"certify.num_draws": 0}, "certify.num_draws")):
    with pytest.raises(ValueError, match=match):
      cert.certify(_certify_config(trained, **fields), tmp_path / "bad", mesh)
  with pytest.raises(ValueError, match="holds no finished training run"):
    cert.certify(_certify_config(tmp_path / "nothing"), tmp_path / "bad", mesh)
  with pytest.raises(ValueError, match="is not a training run"):
    cert.certify(_certify_config(tmp_path / "whole"), tmp_path / "bad", mesh)
  assert not (tmp_path / "bad").exists()  # nothing half-written


def test_certify_on_the_first_test_images(trained, tmp_path):
  """``certify.test_subset``: the draws are those of the whole run, evaluated on the first n
  test images only, and equal to evaluating them on those images placed directly."""
  mesh = parallel.make_mesh(1)
  out = cert.certify(_certify_config(trained, **{"certify.test_subset": 300}), tmp_path / "sub", mesh)
  model, variables, info = runner.load_trained(trained)
  host = data.load_arrays("fashion_mnist_mini")
  first = data.split_to_device(data.ArraySplit(images=host.test.images[:300], labels=host.test.labels[:300],
                                               ids=host.test.ids[:300]), mesh)
  evaluate = cert.make_draw_eval(model, mesh, 400, 4)
  direct = np.concatenate([np.asarray(evaluate(variables, first, jax.random.PRNGKey(0), s, 0.02)) for s in (0, 4, 8)])
  np.testing.assert_array_equal(np.asarray(out["accuracies"], np.float32), direct[:10])
  assert out["test_images"] == 300 and json.loads((tmp_path / "sub" / "config.json").read_text())["test_images"] == 300
  logits = model.apply(variables, jnp.asarray(host.test.images[:300], jnp.float32) / 255.0, train=False)[0]
  own = float(np.mean(np.asarray(logits).argmax(-1) == host.test.labels[:300]))
  assert abs(out["model_subset_accuracy"] - own) < 1e-6
  assert not any("chance level" in w for w in out["warnings"])
  noisy = cert.certify(_certify_config(trained, **{"certify.test_subset": 300, "certify.sigma": 10.0}),
                       tmp_path / "noisy", mesh)
  assert out["model_subset_accuracy"] > 0.2 and noisy["mean_accuracy"] < 0.15
  assert any("at chance level" in w and "sigma 10 is too large" in w for w in noisy["warnings"])
  for n, match in ((2001, "certify.test_subset: expected at most the 2000 test images"),
                   (-1, "certify.test_subset")):
    with pytest.raises(ValueError, match=match):
      cert.certify(_certify_config(trained, **{"certify.test_subset": n}), tmp_path / "bad", mesh)
  assert not (tmp_path / "bad").exists()


def test_projection_keeps_weights_within_eta():
  from jaxprotect.unlearnable import recovery

  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
  updates = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p), params)
  dist = lambda new: float(jnp.sqrt(sum(jnp.sum((new[k] - params[k]) ** 2) for k in params)))  # noqa: E731
  for projection, eta, want in (("ball", 0.5, 0.5), ("sphere", 0.5, 0.5), ("ball", 100.0, math.sqrt(17 * 4))):
    tx = recovery.project_weights(eta, projection)
    u, _ = tx.update(updates, tx.init(params), params)
    new = jax.tree.map(lambda p, d: p + d, params, u)
    assert dist(new) == pytest.approx(want, rel=1e-5), (projection, eta)
  small = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  tx = recovery.project_weights(1.0, "sphere")  # the reference's rescaling: always to norm eta
  u, _ = tx.update(small, tx.init(params), params)
  assert dist(jax.tree.map(lambda p, d: p + d, params, u)) == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(ValueError, match="eta: expected a radius >= 0"):
    recovery.project_weights(-1.0)
  with pytest.raises(ValueError, match="projection: expected one of"):
    recovery.project_weights(1.0, "cube")


def test_recovery_attacks(trained):
  from jaxprotect.unlearnable import recovery

  model, variables, info = runner.load_trained(trained)
  host = data.load_arrays("fashion_mnist_mini")
  split = recovery.recovery_split(host, 0.2, seed=1)
  assert (len(split.train), len(split.test)) == (400, 1600)
  assert sorted(np.concatenate([split.train.ids, split.test.ids]).tolist()) == sorted(host.test.ids.tolist())
  mesh = parallel.make_mesh(1)
  ft = recovery.finetune_recovery(model, variables, split, (0.0, 0.5), epochs=2, mesh=mesh)
  zero, half = ft["runs"]
  assert zero["distance"] == 0.0 and zero["accuracy"] == ft["before"]  # no BatchNorm: nothing may change
  assert 0 < half["distance"] <= 0.5 + 1e-4 and half["accuracy"] != ft["before"]
  rs = recovery.random_search_recovery(model, variables, split, (0.0, 3.0), num_draws=6, chunk=4, mesh=mesh)
  assert rs["runs"][0]["accuracy"] == rs["runs"][0]["mean_accuracy"] == pytest.approx(ft["before"], abs=1e-6)
  assert rs["runs"][1]["mean_accuracy"] != rs["runs"][0]["mean_accuracy"]
  with pytest.raises(ValueError, match="fraction: expected"):
    recovery.recovery_split(host, 1.0)
  with pytest.raises(ValueError, match="etas: expected radii"):
    recovery.finetune_recovery(model, variables, split, (-1.0,), mesh=mesh)


def _recover_config(model_dir, **fields):
  from jaxprotect.unlearnable import recovery

  c = recovery.recover_config()
  config_lib.apply_overrides(c, [f"recover.model={model_dir}", "recover.etas=(0.0,0.5)", "recover.finetune.epochs=1",
                                 "recover.random_search.num_draws=4", "recover.random_search.chunk=4",
                                 "runtime.progress=false", "runtime.tensorboard=false",
                                 *(f"{k}={v}" for k, v in fields.items())])
  return c


_KILLED_RECOVER = """
import sys
sys.path.insert(0, {here!r})
from test_certify import _recover_config
from jaxprotect import parallel
from jaxprotect.unlearnable import recovery
recovery.recover(_recover_config({model!r}), {work!r}, parallel.make_mesh(1))
"""


def test_recover_resumes_cell_by_cell_and_refuses_bad_input(trained, tmp_path):
  from jaxprotect.unlearnable import recovery

  mesh = parallel.make_mesh(1)
  whole = recovery.recover(_recover_config(trained), tmp_path / "whole", mesh)
  ft, rs = whole["attacks"]["finetune"], whole["attacks"]["random_search"]
  assert whole["etas"] == [0.0, 0.5] and (whole["attack_examples"], whole["report_examples"]) == (400, 1600)
  assert ft["distance"][0] == 0.0 and ft["accuracy"][0] == pytest.approx(whole["before"], abs=1e-6)
  assert 0 < ft["distance"][1] <= 0.5 + 1e-4
  assert rs["accuracy"][0] == rs["mean_accuracy"][0] == pytest.approx(whole["before"], abs=1e-6)
  assert (tmp_path / "whole" / "recovery.png").exists()
  env = {**os.environ, "JAXPROTECT_KILL_AT": "2", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  script = _KILLED_RECOVER.format(here=str(HERE), model=str(trained), work=str(tmp_path / "killed"))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not (tmp_path / "killed" / "results.json").exists()
  resumed = recovery.recover(_recover_config(trained), tmp_path / "killed", mesh)
  assert resumed["attacks"] == whole["attacks"] and resumed["before"] == whole["before"]
  steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4]  # the two finished cells were not run again
  with pytest.raises(ValueError, match="config hash"):
    recovery.recover(_recover_config(trained, **{"recover.fraction": 0.3}), tmp_path / "whole", mesh)
  for fields, match in (({"recover.etas": "(0.1,-1.0)"}, "etas: expected radii"),
                        ({"recover.attacks": "('finetune','noise')"}, "recover.attacks: expected"),
                        ({"recover.fraction": 1.0}, "recover.fraction: expected"),
                        ({"recover.finetune.projection": "cube"}, "recover.finetune.projection"),
                        ({"recover.random_search.num_draws": 0}, "recover.random_search.num_draws")):
    with pytest.raises(ValueError, match=match):
      recovery.recover(_recover_config(trained, **fields), tmp_path / "bad", mesh)
  with pytest.raises(ValueError, match="holds no finished training run"):
    recovery.recover(_recover_config(tmp_path / "nothing"), tmp_path / "bad", mesh)
  assert not (tmp_path / "bad").exists()  # nothing half-written
