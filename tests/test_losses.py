"""Losses of the distillation and unlearnable-examples methods against direct numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprotect import losses

K = 5


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_softmax(z):
  return np.exp(_np_log_softmax(z))


def _np_kl(p, q):
  """KL(p || q) per row for probability rows (0 log 0 = 0)."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
  return t.sum(-1)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  b = 12
  logits = (rng.normal(0, 3, (b, K))).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 0], np.int32)
  teacher = (rng.normal(0, 4, (b, K))).astype(np.float32)
  return logits, labels, teacher


# ------------------------------------------------------------------------------- CMI


@pytest.mark.parametrize("temperature", [0.05, 1.0, 4.0, 100.0])
def test_cmi_matches_definition(batch, temperature):
  logits, labels, _ = batch
  rng = np.random.default_rng(1)
  q = rng.dirichlet(np.ones(K), K).astype(np.float32)
  q[2, 3] = 0.0  # a zero entry: clipped at 1e-8 before the log
  q[2] /= q[2].sum()
  got = np.asarray(losses.cmi(jnp.asarray(10 * logits), jnp.asarray(labels), jnp.asarray(q), temperature))
  p = _np_softmax(10 * logits.astype(np.float64) / temperature)
  want = _np_kl(p, np.maximum(q[labels].astype(np.float64), 1e-8))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)


def test_cmi_gradient_is_finite_at_tiny_temperature_and_skips_centroids(batch):
  logits, labels, _ = batch
  q = jnp.full((K, K), 1.0 / K)

  def f(z, c):
    return jnp.mean(losses.cmi(z, jnp.asarray(labels), c, 0.05))

  gz, gq = jax.grad(f, argnums=(0, 1))(jnp.asarray(30 * logits), q)
  assert np.all(np.isfinite(np.asarray(gz)))
  assert np.all(np.asarray(gq) == 0.0)  # stop-gradient through the centroids


def test_cmi_is_zero_for_collapsed_classes_with_class_mean_centroids():
  rng = np.random.default_rng(2)
  per_class = rng.normal(0, 2, (K, K)).astype(np.float32)
  labels = np.repeat(np.arange(K), 3).astype(np.int32)
  logits = per_class[labels] + rng.normal(0, 1, (len(labels), 1)).astype(np.float32)  # per-row shift: same softmax
  temps = jnp.asarray([0.5, 1.0, 8.0])
  centroids = losses.class_mean_centroids(jnp.asarray(logits), jnp.asarray(labels), temps)
  kl = losses.cmi_spectrum(jnp.asarray(logits), jnp.asarray(labels), centroids, temps)
  np.testing.assert_allclose(np.asarray(kl), 0.0, atol=2e-6)
  # and the class means are the definition
  for i, t in enumerate([0.5, 1.0, 8.0]):
    for k in range(K):
      np.testing.assert_allclose(centroids[i, k], _np_softmax(logits[labels == k] / t).mean(0), rtol=1e-5, atol=1e-7)


def test_class_mean_centroids_of_absent_class_is_uniform():
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, K)), jnp.float32)
  labels = jnp.asarray([0, 0, 1, 1])
  c = np.asarray(losses.class_mean_centroids(logits, labels, jnp.asarray([1.0])))
  np.testing.assert_allclose(c[0, 4], np.full(K, 1.0 / K))


def test_ema_centroids_converge_to_class_means_and_absent_classes_stay():
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 2, (40, K)).astype(np.float32)
  labels = (np.arange(40) % (K - 1)).astype(np.int32)  # class K-1 never appears
  temps = jnp.asarray([1.0, 4.0])
  start = jnp.full((2, K, K), 1.0 / K).at[:, K - 1].set(jnp.eye(K)[0])
  target = np.asarray(losses.class_mean_centroids(jnp.asarray(logits), jnp.asarray(labels), temps))

  def run(c, decay, batch_size, steps):
    def body(c, step):
      idx = (jnp.arange(8) + batch_size * step) % 40 if batch_size == 8 else jnp.arange(40)
      return losses.update_centroids(jnp.asarray(logits)[idx], jnp.asarray(labels)[idx], c, temps, decay), None
    return jax.lax.scan(body, c, jnp.arange(steps))[0]

  run = jax.jit(run, static_argnums=(2, 3))
  c = run(start, 0.9, 40, 200)  # whole-data batches: geometric convergence
  np.testing.assert_allclose(np.asarray(c)[:, : K - 1], target[:, : K - 1], atol=1e-5)
  c = run(start, 0.99, 8, 2000)  # cycling mini-batches: the EMA averages the batch means
  np.testing.assert_allclose(np.asarray(c)[:, : K - 1], target[:, : K - 1], atol=0.01)
  np.testing.assert_array_equal(np.asarray(c)[:, K - 1], np.asarray(start)[:, K - 1])
  # one step, by the formula
  one = losses.update_centroids(jnp.asarray(logits[:8]), jnp.asarray(labels[:8]), start, temps, decay=0.75)
  for i, t in enumerate([1.0, 4.0]):
    for k in range(K - 1):
      m = _np_softmax(logits[:8][labels[:8] == k] / t).mean(0)
      np.testing.assert_allclose(one[i, k], 0.75 / K + 0.25 * m, rtol=1e-5)
  assert losses.DEFAULT_CENTROID_DECAY == 0.9999


def test_cmim_loss_aggregations(batch):
  logits, labels, _ = batch
  temps = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
  rng = np.random.default_rng(5)
  cents = rng.dirichlet(np.ones(K), (len(temps), K)).astype(np.float32)
  z, y = jnp.asarray(logits), jnp.asarray(labels)
  kl = np.stack([_np_kl(_np_softmax(logits / t), cents[i][labels]) for i, t in enumerate(temps)], 1)
  ce = -_np_log_softmax(logits)[np.arange(len(labels)), labels]
  lam = 0.7
  got = losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "mean", "t2")
  np.testing.assert_allclose(got, ce + lam * (kl * temps**2).mean(1), rtol=2e-4)
  got = losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "mean", "one")
  np.testing.assert_allclose(got, ce + lam * kl.mean(1), rtol=2e-4)
  got = losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "max", "t2")
  j = np.argmax((kl * temps**2).mean(0))
  np.testing.assert_allclose(got, ce + lam * kl[:, j] * temps[j] ** 2, rtol=2e-4)
  drawn = set()
  for s in range(30):
    got = np.asarray(losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "random", "t2",
                                      key=jax.random.PRNGKey(s)))
    matches = [i for i in range(len(temps)) if np.allclose(got, ce + lam * kl[:, i] * temps[i] ** 2, rtol=2e-4)]
    assert len(matches) == 1
    drawn.add(matches[0])
  assert len(drawn) >= 4  # draws spread over the (log-spaced) grid
  with pytest.raises(ValueError, match="key"):
    losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "random")
  with pytest.raises(ValueError, match="aggregation"):
    losses.cmim_loss(z, y, jnp.asarray(cents), jnp.asarray(temps), lam, "median")


# ------------------------------------------------------------------------------- KD losses


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_loss_matches_formula(batch, temperature):
  s, y, t = batch
  got = losses.kd_loss(jnp.asarray(s), jnp.asarray(t), temperature)
  want = temperature**2 * _np_kl(_np_softmax(t / temperature), _np_softmax(s / temperature))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  ce = -_np_log_softmax(s)[np.arange(len(y)), y]
  got = losses.vanilla_kd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 0.9, temperature)
  np.testing.assert_allclose(got, 0.1 * ce + 0.9 * want, rtol=1e-4, atol=1e-6)
  g = jax.grad(lambda tt: jnp.sum(losses.kd_loss(jnp.asarray(s), tt, temperature)))(jnp.asarray(t))
  assert np.all(np.asarray(g) == 0.0)  # the teacher gets no gradient


def _np_dkd(s, t, y, alpha, beta, temp):
  out = []
  for si, ti, yi in zip(s, t, y):
    ps, pt = _np_softmax(si / temp), _np_softmax(ti / temp)
    bs, bt = np.array([ps[yi], 1 - ps[yi]]), np.array([pt[yi], 1 - pt[yi]])
    tckd = _np_kl(bt, bs)
    keep = np.arange(len(si)) != yi  # non-target classes only: the target logit is removed
    nckd = _np_kl(_np_softmax(ti[keep] / temp), _np_softmax(si[keep] / temp))
    out.append(temp**2 * (alpha * tckd + beta * nckd))
  return np.array(out)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_loss_matches_formula(batch, temperature):
  s, y, t = batch
  got = losses.dkd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 1.0, 8.0, temperature)
  np.testing.assert_allclose(got, _np_dkd(s, t, y, 1.0, 8.0, temperature), rtol=2e-4, atol=1e-6)
  got = losses.dkd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 0.5, 0.0, temperature)
  np.testing.assert_allclose(got, _np_dkd(s, t, y, 0.5, 0.0, temperature), rtol=2e-4, atol=1e-6)


def test_dkd_is_finite_for_confident_outputs(batch):
  s, y, t = batch
  g = jax.grad(lambda z: jnp.sum(losses.dkd_loss(z, jnp.asarray(40 * t), jnp.asarray(y), 1.0, 8.0, 1.0)))(
      jnp.asarray(40 * s))
  assert np.all(np.isfinite(np.asarray(g)))


def test_nasty_hard_label_and_logit_mse_match_formulas(batch):
  s, y, t = batch
  tau, omega = 4.0, 0.04
  ce = -_np_log_softmax(s)[np.arange(len(y)), y]
  want = ce - omega * tau**2 * _np_kl(_np_softmax(s / tau), _np_softmax(t / tau))
  np.testing.assert_allclose(losses.nasty_teacher_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), tau, omega),
                             want, rtol=1e-4, atol=1e-6)
  ce_t = -_np_log_softmax(s)[np.arange(len(y)), t.argmax(-1)]
  np.testing.assert_allclose(losses.hard_label_kd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 0.3),
                             0.7 * ce + 0.3 * ce_t, rtol=1e-5)
  tc = t - t.mean(-1, keepdims=True)
  mse = ((s - tc) ** 2).mean(-1)
  np.testing.assert_allclose(losses.logit_mse_kd_loss(jnp.asarray(s), jnp.asarray(t)), mse, rtol=1e-5)
  np.testing.assert_allclose(losses.logit_mse_kd_loss(jnp.asarray(s), jnp.asarray(t + 3.0), jnp.asarray(y), 0.5),
                             mse + 0.5 * ce, rtol=1e-5)  # shifted teacher logits: same target


# ------------------------------------------------------------------------------- MI-UE


def _np_mi_ue(f, y, t, exclude_self=False, zeta=0.0):
  f = np.asarray(f, np.float64)
  fn = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  e = np.exp(fn @ fn.T / t) + 1e-8
  b = len(y)
  terms = []
  for i in range(b):
    others = [j for j in range(b) if not (exclude_self and j == i)]
    pos = [j for j in others if y[j] == y[i]]
    if not pos:
      continue
    terms.append(np.log(e[i, pos].sum() / e[i, others].sum()))
  loss = -np.mean(terms)
  if zeta:
    d = f.shape[1]
    extra = [np.log1p(sum(np.linalg.norm(f[i] - f[j]) for j in range(b) if y[j] == y[i]) / d) for i in range(b)]
    loss += zeta * np.mean(extra)
  return loss


@pytest.mark.parametrize("exclude_self,zeta,temperature", [(False, 0.0, 0.1), (True, 0.0, 0.1), (False, 0.5, 0.1),
                                                          (True, 0.3, 0.5), (False, 0.0, 0.02)])
def test_mi_ue_loss_matches_formula_with_a_singleton_class(exclude_self, zeta, temperature):
  rng = np.random.default_rng(6)
  f = rng.normal(0, 1, (9, 6)).astype(np.float32)
  y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3], np.int32)  # class 3 has a single member
  assert losses.mi_ue_loss(jnp.asarray(f), jnp.asarray(y), temperature, exclude_self, zeta).shape == (9,)  # loss_B
  fn = jax.jit(jax.value_and_grad(
      lambda x: jnp.mean(losses.mi_ue_loss(x, jnp.asarray(y), temperature, exclude_self, zeta))))
  got, g = fn(jnp.asarray(f))
  np.testing.assert_allclose(float(got), _np_mi_ue(f, y, temperature, exclude_self, zeta), rtol=2e-4)
  assert np.all(np.isfinite(np.asarray(g)))


def test_mi_ue_loss_with_zero_features_and_duplicates_is_finite():
  f = np.zeros((4, 3), np.float32)
  f[1] = [1.0, 2.0, 0.0]
  f[2] = f[1]  # identical same-class features: distance 0 (safe sqrt)
  y = np.array([0, 1, 1, 0], np.int32)
  got, g = jax.jit(jax.value_and_grad(lambda x: jnp.mean(losses.mi_ue_loss(x, jnp.asarray(y), 0.1, False, 1.0))))(
      jnp.asarray(f))
  np.testing.assert_allclose(float(got), _np_mi_ue(f, y, 0.1, False, 1.0), rtol=2e-4)
  assert np.all(np.isfinite(np.asarray(g)))
