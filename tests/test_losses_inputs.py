"""Input checks of ``jaxprotect.losses`` (ValueError naming the argument; checkify inside jit) and
the API conventions: traced scalar weights, per-example MI-UE losses, dtype-preserving centroids."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxprotect import checks, losses
from test_losses import _np_mi_ue

B, K = 6, 4
TEMPS = (1.0, 2.0, 4.0)
T = len(TEMPS)
_rng = np.random.default_rng(0)
Z = _rng.normal(0, 2, (B, K)).astype(np.float32)  # student / trained logits
ZT = _rng.normal(0, 2, (B, K)).astype(np.float32)  # teacher / reference logits
Y = np.array([0, 1, 2, 3, 0, 1], np.int32)
C_KK = np.full((K, K), 1.0 / K, np.float32)
C_TKK = _rng.dirichlet(np.ones(K), (T, K)).astype(np.float32)
F = _rng.normal(0, 1, (B, 5)).astype(np.float32)  # MI-UE features
FY = np.array([0, 0, 1, 1, 1, 2], np.int32)  # class 2 is a singleton


def _raises(name):
  return pytest.raises(ValueError, match=f"^{re.escape(name)}:")


# (loss(logits, labels), name of its logits argument, name of its labels argument)
LABELLED = {
    "cross_entropy": (lambda z, y: losses.cross_entropy(z, y), "logits_BxK", "labels_B"),
    "cross_entropy_smoothed": (lambda z, y: losses.cross_entropy(z, y, 0.1), "logits_BxK", "labels_B"),
    "accuracy": (lambda z, y: losses.accuracy(z, y), "logits_BxK", "labels_B"),
    "cmi": (lambda z, y: losses.cmi(z, y, C_KK, 2.0), "logits_BxK", "labels_B"),
    "cmi_spectrum": (lambda z, y: losses.cmi_spectrum(z, y, C_TKK, TEMPS), "logits_BxK", "labels_B"),
    "centroid_sums": (lambda z, y: losses.centroid_sums(z, y, TEMPS), "logits_BxK", "labels_B"),
    "class_mean_centroids": (lambda z, y: losses.class_mean_centroids(z, y, TEMPS), "logits_NxK", "labels_N"),
    "update_centroids": (lambda z, y: losses.update_centroids(z, y, C_TKK, TEMPS), "logits_BxK", "labels_B"),
    "cmim_loss": (lambda z, y: losses.cmim_loss(z, y, C_TKK, TEMPS), "logits_BxK", "labels_B"),
    "vanilla_kd_loss": (lambda z, y: losses.vanilla_kd_loss(z, ZT, y), "student_logits_BxK", "labels_B"),
    "dkd_loss": (lambda z, y: losses.dkd_loss(z, ZT, y), "student_logits_BxK", "labels_B"),
    "nasty_teacher_loss": (lambda z, y: losses.nasty_teacher_loss(z, ZT, y), "logits_BxK", "labels_B"),
    "hard_label_kd_loss": (lambda z, y: losses.hard_label_kd_loss(z, ZT, y), "student_logits_BxK", "labels_B"),
    "logit_mse_kd_loss": (lambda z, y: losses.logit_mse_kd_loss(z, ZT, y, 0.5), "student_logits_BxK", "labels_B"),
}
BAD_LOGITS = {
    "1-D": (Z[0], Y),
    "3-D": (Z[None], Y),
    "integer": (Z.astype(np.int32), Y),
    "one class": (Z[:, :1], Y),
    "empty batch": (Z[:0], Y[:0]),
}
BAD_LABELS = {
    "Bx1": Y[:, None],
    "wrong length": Y[:-1],
    "float": Y.astype(np.float32),
    "scalar": np.int32(0),
}


# ------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("loss", list(LABELLED))
def test_valid_inputs_pass(loss):
  fn, _, _ = LABELLED[loss]
  out = fn(jnp.asarray(Z), jnp.asarray(Y))
  assert all(np.all(np.isfinite(np.asarray(o))) for o in jax.tree.leaves(out))


@pytest.mark.parametrize("case", list(BAD_LOGITS))
@pytest.mark.parametrize("loss", list(LABELLED))
def test_bad_logits_raise_naming_the_argument(loss, case):
  fn, logits_name, _ = LABELLED[loss]
  z, y = BAD_LOGITS[case]
  with _raises(logits_name):
    fn(z, y)


@pytest.mark.parametrize("case", list(BAD_LABELS))
@pytest.mark.parametrize("loss", list(LABELLED))
def test_bad_label_shapes_and_dtypes_raise(loss, case):
  fn, _, labels_name = LABELLED[loss]
  with _raises(labels_name):
    fn(Z, BAD_LABELS[case])


def test_empty_batch_and_column_labels_no_longer_give_nan_or_zero():
  with _raises("logits_BxK"):
    losses.cross_entropy(jnp.zeros((0, K)), jnp.zeros((0,), jnp.int32))
  with _raises("labels_B"):  # used to return 0.0 with a zero gradient
    losses.mi_ue_loss(jnp.asarray(F), jnp.asarray(FY)[:, None])
  with _raises("feats_BxD"):
    losses.mi_ue_loss(jnp.zeros((0, 5)), jnp.zeros((0,), jnp.int32))


@pytest.mark.parametrize("fn", [losses.kd_loss, losses.vanilla_kd_loss, losses.dkd_loss, losses.hard_label_kd_loss,
                                losses.logit_mse_kd_loss, losses.nasty_teacher_loss])
def test_teacher_logits_must_match_the_student(fn):
  nasty = fn is losses.nasty_teacher_loss
  first, other = ("logits_BxK", "ref_logits_BxK") if nasty else ("student_logits_BxK", "teacher_logits_BxK")
  args = () if fn is losses.kd_loss else (Y,)
  for bad in (ZT[:-1], ZT[:, :-1], ZT[0], ZT.astype(np.int32)):
    with _raises(other):
      fn(Z, bad, *args)
  with _raises(first):
    fn(Z[:, :1], ZT, *args)


def test_centroids_and_temperature_grids_must_match():
  with _raises("centroids_KxK"):
    losses.cmi(Z, Y, np.ones((K, K + 1), np.float32), 1.0)
  with _raises("centroids_KxK"):
    losses.cmi(Z, Y, C_TKK, 1.0)
  with _raises("centroids_KxK"):
    losses.cmi(Z, Y, np.ones((K, K), np.int32), 1.0)
  for fn in (lambda c, t: losses.cmi_spectrum(Z, Y, c, t), lambda c, t: losses.cmim_loss(Z, Y, c, t),
             lambda c, t: losses.update_centroids(Z, Y, c, t)):
    with _raises("centroids_TxKxK"):
      fn(C_KK, TEMPS)
    with _raises("centroids_TxKxK"):
      fn(np.ones((T, K + 1, K + 1), np.float32), TEMPS)
    with _raises("temperatures_T"):
      fn(C_TKK, TEMPS[:-1])
    with _raises("temperatures_T"):
      fn(C_TKK, np.ones((T, 1), np.float32))
  with _raises("temperatures_T"):  # the default grid has 6 temperatures
    losses.cmim_loss(Z, Y, C_TKK)
  with _raises("temperatures_T"):
    losses.cmi_aggregate(np.ones((B, T + 1), np.float32), TEMPS)
  with _raises("kl_BxT"):
    losses.cmi_aggregate(np.ones((B,), np.float32), TEMPS)
  with _raises("mask_B"):
    losses.centroid_sums(Z, Y, TEMPS, np.ones((B + 1,), np.float32))
  sums, counts = losses.centroid_sums(Z, Y, TEMPS)
  with _raises("counts_K"):
    losses.centroids_from_sums(sums, counts[:-1])
  with _raises("sums_TxKxK"):
    losses.centroids_from_sums(sums[:, :, :-1], counts)


def test_feats_must_be_a_float_matrix():
  for bad in (F[0], F[None], F.astype(np.int32), F[:, :0]):
    with _raises("feats_BxD"):
      losses.mi_ue_loss(bad, FY)
  for bad in (FY[:, None], FY[:-1], FY.astype(np.float32)):
    with _raises("labels_B"):
      losses.mi_ue_loss(F, bad)


def test_scalar_arguments():
  with _raises("exclude_self"):
    losses.mi_ue_loss(F, FY, exclude_self=np.array([True, False]))
  with _raises("zeta"):
    losses.mi_ue_loss(F, FY, zeta=-0.5)
  with _raises("lam"):
    losses.cmim_loss(Z, Y, C_TKK, TEMPS, lam=np.ones(2))
  with _raises("decay"):
    losses.update_centroids(Z, Y, C_TKK, TEMPS, decay=1.5)
  for ls in (-0.1, 1.5, np.ones(2)):
    with _raises("label_smoothing"):
      losses.cross_entropy(Z, Y, ls)
    with _raises("label_smoothing"):
      losses.cmim_loss(Z, Y, C_TKK, TEMPS, label_smoothing=ls)
  with _raises("ce_weight"):
    losses.logit_mse_kd_loss(Z, ZT, Y, -1.0)
  with _raises("labels_B"):
    losses.logit_mse_kd_loss(Z, ZT, None, 0.5)
  with pytest.raises(ValueError, match="aggregation"):
    losses.cmim_loss(Z, Y, C_TKK, TEMPS, aggregation="median")
  with pytest.raises(ValueError, match="weighting"):
    losses.temperature_weights(TEMPS, "t3")


TEMPERATURE_FNS = {
    "cmi": lambda t: losses.cmi(Z, Y, C_KK, t),
    "kd_loss": lambda t: losses.kd_loss(Z, ZT, t),
    "vanilla_kd_loss": lambda t: losses.vanilla_kd_loss(Z, ZT, Y, 0.9, t),
    "dkd_loss": lambda t: losses.dkd_loss(Z, ZT, Y, 1.0, 8.0, t),
    "nasty_teacher_loss": lambda t: losses.nasty_teacher_loss(Z, ZT, Y, temperature=t),
    "mi_ue_loss": lambda t: losses.mi_ue_loss(F, FY, t),
}


@pytest.mark.parametrize("loss", list(TEMPERATURE_FNS))
def test_temperatures_must_be_positive_scalars(loss):
  for bad in (0.0, -1.0, jnp.float32(-2.0), np.ones(2, np.float32)):
    with _raises("temperature"):
      TEMPERATURE_FNS[loss](bad)


def test_temperature_grids_must_be_positive():
  for fn in (lambda t: losses.cmi_spectrum(Z, Y, C_TKK, t), lambda t: losses.centroid_sums(Z, Y, t),
             lambda t: losses.class_mean_centroids(Z, Y, t), lambda t: losses.update_centroids(Z, Y, C_TKK, t),
             lambda t: losses.cmim_loss(Z, Y, C_TKK, t), lambda t: losses.temperature_weights(t)):
    with _raises("temperatures_T"):
      fn((1.0, 0.0, 4.0))
    with _raises("temperatures_T"):
      fn(jnp.asarray([1.0, -2.0, 4.0]))
  with _raises("temperatures_T"):
    losses.temperature_weights(())


# ------------------------------------------------------------------------------- label values


@pytest.mark.parametrize("bad", [K, -1])
@pytest.mark.parametrize("loss", list(LABELLED))
def test_out_of_range_labels_raise_eagerly(loss, bad):
  fn, _, labels_name = LABELLED[loss]
  y = Y.copy()
  y[2] = bad
  with _raises(labels_name):
    fn(Z, y)  # numpy labels
  with _raises(labels_name):
    fn(jnp.asarray(Z), jnp.asarray(y))  # concrete JAX labels


@pytest.mark.parametrize("loss", list(LABELLED))
def test_out_of_range_labels_raise_inside_jit_under_checked(loss):
  fn, _, labels_name = LABELLED[loss]
  jitted = jax.jit(fn)
  y = Y.copy()
  y[3] = K if loss != "dkd_loss" else -1  # dkd_loss used to accept negative labels
  np.testing.assert_allclose(jax.tree.leaves(checks.checked(jitted)(Z, Y))[0], jax.tree.leaves(fn(Z, Y))[0],
                             rtol=1e-5, atol=1e-6)  # valid labels: the same values (jit vs eager rounding)
  with pytest.raises(checkify.JaxRuntimeError, match=labels_name):
    checks.checked(jitted)(jnp.asarray(Z), jnp.asarray(y))


def test_traced_values_are_unchecked_without_checked_and_the_jit_cache_is_flag_aware():
  jitted = jax.jit(lambda z, y: losses.cross_entropy(z, y))
  y = jnp.asarray(Y).at[0].set(K)
  jitted(jnp.asarray(Z), y)  # no checks compiled in: no error
  with pytest.raises(checkify.JaxRuntimeError, match="labels_B"):
    checks.checked(jitted)(jnp.asarray(Z), y)  # traced again under value_checks()
  jitted(jnp.asarray(Z), y)  # and the unchecked trace is still the cached one


def test_traced_temperature_is_checked_under_checked():
  fn = checks.checked(jax.jit(lambda s, t: losses.kd_loss(s, ZT, t)))
  np.testing.assert_allclose(fn(Z, jnp.float32(2.0)), losses.kd_loss(Z, ZT, 2.0), rtol=1e-6)
  with pytest.raises(checkify.JaxRuntimeError, match="temperature"):
    fn(Z, jnp.float32(-2.0))
  fn = checks.checked(jax.jit(lambda f, t: losses.mi_ue_loss(f, FY, t)))
  with pytest.raises(checkify.JaxRuntimeError, match="temperature"):
    fn(F, jnp.float32(0.0))


# ------------------------------------------------------------------------------- traced scalar weights


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_traced_label_smoothing_equals_static(eps):
  traced = jax.jit(losses.cross_entropy)(Z, Y, jnp.float32(eps))
  np.testing.assert_allclose(traced, losses.cross_entropy(Z, Y, eps), rtol=1e-6, atol=1e-7)
  traced = jax.jit(lambda z, y, e, lam: losses.cmim_loss(z, y, C_TKK, TEMPS, lam, label_smoothing=e))(
      Z, Y, jnp.float32(eps), jnp.float32(0.5))
  np.testing.assert_allclose(traced, losses.cmim_loss(Z, Y, C_TKK, TEMPS, 0.5, label_smoothing=eps), rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_traced_ce_weight_equals_static(w):
  traced = jax.jit(losses.logit_mse_kd_loss)(Z, ZT, Y, jnp.float32(w))
  np.testing.assert_allclose(traced, losses.logit_mse_kd_loss(Z, ZT, Y, w), rtol=1e-6)


@pytest.mark.parametrize("exclude_self,zeta", [(False, 0.0), (True, 0.0), (False, 0.5), (True, 0.3)])
def test_traced_exclude_self_and_zeta_equal_static(exclude_self, zeta):
  static = losses.mi_ue_loss(F, FY, 0.1, exclude_self, zeta)

  def mean_loss(f, e, z):
    return jnp.mean(losses.mi_ue_loss(f, FY, 0.1, e, z))

  traced = jax.jit(lambda f, e, z: losses.mi_ue_loss(f, FY, 0.1, e, z))(F, jnp.bool_(exclude_self), jnp.float32(zeta))
  np.testing.assert_allclose(traced, static, rtol=1e-6, atol=1e-7)
  g_static = jax.grad(lambda f: jnp.mean(losses.mi_ue_loss(f, FY, 0.1, exclude_self, zeta)))(F)
  g_traced = jax.jit(jax.grad(mean_loss))(F, jnp.bool_(exclude_self), jnp.float32(zeta))
  assert np.all(np.isfinite(np.asarray(g_traced)))
  np.testing.assert_allclose(g_traced, g_static, rtol=1e-5, atol=1e-7)


def test_static_zero_zeta_skips_the_distance_computation():
  def shapes(zeta):
    jaxpr = jax.make_jaxpr(lambda f: losses.mi_ue_loss(f, FY, 0.1, False, zeta))(F)
    return {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}

  assert (B, B, F.shape[1]) not in shapes(0.0)
  assert (B, B, F.shape[1]) in shapes(0.5)


# ------------------------------------------------------------------------------- MI-UE per example


@pytest.mark.parametrize("exclude_self,zeta", [(False, 0.0), (True, 0.0), (False, 0.5), (True, 0.3)])
def test_mi_ue_loss_is_per_example_and_its_mean_is_the_scalar_formula(exclude_self, zeta):
  got_B = np.asarray(losses.mi_ue_loss(F, FY, 0.1, exclude_self, zeta))
  assert got_B.shape == (B,)
  np.testing.assert_allclose(got_B.mean(), _np_mi_ue(F, FY, 0.1, exclude_self, zeta), rtol=1e-5)
  # per anchor: w_i * l_i + zeta * log(1 + sum of same-class distances / D)
  f = F.astype(np.float64)
  fn = f / np.linalg.norm(f, axis=1, keepdims=True)
  e = np.exp(fn @ fn.T / 0.1) + 1e-8
  terms, valid = np.zeros(B), np.zeros(B, bool)
  for i in range(B):
    others = [j for j in range(B) if not (exclude_self and j == i)]
    pos = [j for j in others if FY[j] == FY[i]]
    if pos:
      valid[i] = True
      terms[i] = -np.log(e[i, pos].sum() / e[i, others].sum())
  want = np.where(valid, terms * B / valid.sum(), 0.0)
  want += zeta * np.array([np.log1p(sum(np.linalg.norm(f[i] - f[j]) for j in range(B) if FY[j] == FY[i]) / 5)
                           for i in range(B)])
  np.testing.assert_allclose(got_B, want, rtol=1e-4, atol=1e-6)
  if exclude_self:
    assert got_B[FY == 2][0] == pytest.approx(zeta * 0.0)  # the singleton anchor has no positive


# ------------------------------------------------------------------------------- update_centroids, defaults


def test_update_centroids_keeps_the_dtype_and_is_a_scan_carry():
  c16 = jnp.asarray(C_TKK, jnp.bfloat16)
  one = losses.update_centroids(Z, Y, c16, TEMPS, 0.5)
  assert one.dtype == jnp.bfloat16
  want = losses.update_centroids(Z, Y, jnp.asarray(c16, jnp.float32), TEMPS, 0.5)
  assert want.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(one, np.float32), want, atol=4e-3)

  @jax.jit
  def run(c):
    return jax.lax.scan(lambda c, _: (losses.update_centroids(Z, Y, c, TEMPS, 0.9), None), c, None, length=3)[0]

  out = run(c16)
  assert out.dtype == jnp.bfloat16 and out.shape == (T, K, K)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))


def test_defaults_and_renames():
  np.testing.assert_array_equal(losses.kd_loss(Z, ZT), losses.kd_loss(Z, ZT, 4.0))
  c6 = np.full((len(losses.DEFAULT_TEMPERATURES), K, K), 1.0 / K, np.float32)
  np.testing.assert_array_equal(losses.cmim_loss(Z, Y, c6),
                                losses.cmim_loss(Z, Y, c6, losses.DEFAULT_TEMPERATURES, 1.0))
  np.testing.assert_array_equal(
      losses.update_centroids(Z, Y, c6),
      losses.update_centroids(Z, Y, c6, losses.DEFAULT_TEMPERATURES, losses.DEFAULT_CENTROID_DECAY))
  np.testing.assert_array_equal(losses.nasty_teacher_loss(Z, ZT, Y, temperature=4.0, omega=0.04),
                                losses.nasty_teacher_loss(Z, ZT, Y))
  with pytest.raises(TypeError):
    losses.nasty_teacher_loss(Z, ZT, Y, tau=4.0)
  params = list(inspect.signature(losses.update_centroids).parameters)
  assert params == ["logits_BxK", "labels_B", "centroids_TxKxK", "temperatures_T", "decay"]


def test_all_lists_the_public_api_and_docstrings_state_shapes():
  public = {n for n, v in vars(losses).items()
            if not n.startswith("_") and inspect.isfunction(v) and v.__module__.startswith(losses.__name__)}
  assert public <= set(losses.__all__)
  assert all(hasattr(losses, n) for n in losses.__all__)
  for name in public:
    doc = inspect.getdoc(getattr(losses, name))
    assert doc and re.search(r"\b\w+_[BNTK][xBKTDN]*\b", doc), name
