"""Membership-inference statistics, attacks and metrics: LiRA's statistic against a float64
numpy reference (also where probabilities round to 1), LiRA online / offline against a
direct per-example computation and on synthetic Gaussian statistics (members shifted:
AUC well above 0.5; identically distributed: 0.5), the metrics against the Mann-Whitney
formula and a hand-made ROC, the keep masks, and the input checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxprotect import losses
from jaxprotect.privacy import mia


def softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------- statistic


def test_lira_statistic_is_the_logit_of_the_true_class_probability():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 50, 5)).astype(np.float32)  # Q x B x K
  labels = rng.integers(0, 5, 50).astype(np.int32)
  p = np.take_along_axis(softmax64(logits), np.broadcast_to(labels[None, :, None], (3, 50, 1)), -1)[..., 0]
  want = np.log(p) - np.log1p(-p)
  got = mia.lira_statistic(logits, labels)
  assert got.shape == (3, 50) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(mia.lira_statistic(logits[1], labels)), want[1], rtol=1e-5, atol=1e-5)
  with jax.enable_x64(True):
    got64 = mia.lira_statistic(logits, labels)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got64), want, rtol=1e-12, atol=1e-12)
  # the loss attack: -cross-entropy, the engine's loss
  np.testing.assert_allclose(np.asarray(mia.loss_attack_scores(logits[0], labels)),
                             -np.asarray(losses.cross_entropy(jnp.asarray(logits[0]), jnp.asarray(labels))),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x64", [False, True])
def test_lira_statistic_stays_finite_and_ordered_where_p_rounds_to_one(x64):
  gaps = 10.0 ** -np.arange(6, 13)  # 1 - p = 1e-6 .. 1e-12
  p = 1 - gaps
  # 3 classes: the other two share 1 - p; logits from float64 log-probabilities, stored as float32
  logits = np.stack([np.log(p), np.log(gaps / 3), np.log(2 * gaps / 3)], -1).astype(np.float32)
  labels = np.zeros(len(p), np.int32)
  assert np.all(softmax64(logits.astype(np.float32))[:, 0].astype(np.float32)[-3:] == 1.0)  # p_y rounds to 1
  with jax.enable_x64(x64):
    phi = np.asarray(mia.lira_statistic(logits, labels), np.float64)
  assert np.all(np.isfinite(phi))
  assert np.all(np.diff(phi) > 0), phi
  np.testing.assert_allclose(phi, np.log(p / gaps), rtol=1e-5)  # log(p / (1 - p)) = 13.8 .. 27.6


def test_lira_statistic_with_huge_logits():
  logits = np.array([[3e4, 0.0, 0.0], [0.0, 1e30, -1e30], [1e30, 1e30, 0.0], [-2e4, 5.0, 4.0]], np.float32)
  labels = np.array([0, 0, 0, 2], np.int32)
  phi = np.asarray(mia.lira_statistic(logits, labels), np.float64)
  assert np.all(np.isfinite(phi))
  np.testing.assert_allclose(phi, [3e4 - math.log(2), -1e30, 0.0, 4.0 - np.logaddexp(-2e4, 5.0)], rtol=1e-6)
  loss = np.asarray(mia.loss_attack_scores(logits, labels))
  assert np.all(np.isfinite(loss)) and loss[0] == 0.0 and loss[1] == -1e30


def test_statistic_input_checks():
  with pytest.raises(ValueError, match="logits_BxK: expected at least 2 classes"):
    mia.lira_statistic(np.zeros((4, 1), np.float32), np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="labels_B"):
    mia.lira_statistic(np.zeros((4, 3), np.float32), np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="labels_B: expected class indices in"):
    mia.lira_statistic(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 3], np.int32))
  with pytest.raises(ValueError, match="logits_BxK: expected a floating-point array"):
    mia.loss_attack_scores(np.zeros((4, 3), np.int32), np.zeros(4, np.int32))


# ---------------------------------------------------------------------------------------- attacks


def reference_lira(target, shadow, keep, online, fixed):
  """Per example and query, in loops: medians and standard deviations of the IN / OUT
  shadow statistics; the pooled within-example deviation for a fixed variance."""
  m, b, q = shadow.shape
  groups = [("in", keep), ("out", ~keep)] if online else [("out", ~keep)]
  fit, sq, count = {}, 0.0, 0
  for name, mask in groups:
    for j in range(b):
      for k in range(q):
        v = shadow[mask[:, j], j, k]
        fit[name, j, k] = (np.median(v), np.std(v))
        sq, count = sq + np.sum((v - v.mean()) ** 2), count + v.size
  pooled = math.sqrt(sq / count)
  scores = np.zeros(b)
  for j in range(b):
    for k in range(q):
      sd = lambda name: pooled if fixed else fit[name, j, k][1]  # noqa: E731
      if online:
        s = norm.logpdf(target[j, k], fit["in", j, k][0], sd("in")) - norm.logpdf(target[j, k], fit["out", j, k][0],
                                                                                 sd("out"))
      else:
        s = -norm.logsf(target[j, k], fit["out", j, k][0], sd("out"))
      scores[j] += s / q
  return scores


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
def test_lira_equals_a_direct_per_example_computation(online, fixed):
  rng = np.random.default_rng(1)
  keep = mia.keep_masks(8, 6, 3)
  shadow = rng.normal(0, 1, (8, 6, 2)) + 2.0 * keep[..., None] + rng.normal(0, 3, (1, 6, 1))
  target = rng.normal(0, 2, (6, 2))
  attack = mia.lira_online if online else mia.lira_offline
  got = attack(target, shadow, keep, fixed_variance=fixed)
  np.testing.assert_allclose(got, reference_lira(target, shadow, keep, online, fixed), rtol=1e-10, atol=1e-10)
  # one query: B-shaped statistics give the Q = 1 answer
  np.testing.assert_allclose(attack(target[:, 0], shadow[..., 0], keep, fixed_variance=fixed),
                             reference_lira(target[:, :1], shadow[..., :1], keep, online, fixed), rtol=1e-10)


def gaussian_population(shift, m=16, b=2000, q=2, seed=0):
  """Shadow and target statistics: a per-example difficulty, plus ``shift`` where the
  model trained on the example, plus unit noise per model and query."""
  rng = np.random.default_rng(seed)
  difficulty = rng.normal(0, 3, (1, b, 1))
  keep = mia.keep_masks(m, b, seed)
  target_in = rng.random(b) < 0.5
  shadow = difficulty + shift * keep[..., None] + rng.normal(0, 1, (m, b, q))
  target = difficulty[0] + shift * target_in[:, None] + rng.normal(0, 1, (b, q))
  return target, shadow, keep, target_in


ATTACKS = [(mia.lira_online, False), (mia.lira_online, True), (mia.lira_offline, False), (mia.lira_offline, True)]


@pytest.mark.parametrize("attack,fixed", ATTACKS)
def test_lira_separates_shifted_members_and_not_identical_ones(attack, fixed):
  target, shadow, keep, target_in = gaussian_population(shift=1.5)
  auc = mia.auc(attack(target, shadow, keep, fixed_variance=fixed), target_in)
  assert auc > 0.8
  # calibrated per example, LiRA beats the one global threshold, whose scores mix difficulties
  assert auc > mia.auc(mia.global_threshold_scores(target), target_in) + 0.1
  target, shadow, keep, target_in = gaussian_population(shift=0.0, seed=1)
  assert abs(mia.auc(attack(target, shadow, keep, fixed_variance=fixed), target_in) - 0.5) < 0.05


def test_loss_attack_separates_confident_members():
  rng = np.random.default_rng(2)
  members = rng.random(2000) < 0.5
  for shift, low, high in ((2.0, 0.75, 1.0), (0.0, 0.45, 0.55)):
    margin = rng.normal(1.0, 1.0, 2000) + shift * members  # members' true-class logit is higher
    logits = np.stack([margin, np.zeros(2000), np.zeros(2000)], -1).astype(np.float32)
    scores = mia.loss_attack_scores(logits, np.zeros(2000, np.int32))
    assert low < mia.auc(scores, members) < high


def test_leave_one_out_makes_each_model_the_target():
  _, shadow, keep, _ = gaussian_population(shift=1.5, m=8, b=300)
  scores, members = mia.lira_leave_one_out(shadow, keep, "online", fixed_variance=True, targets=[0, 3])
  assert scores.shape == members.shape == (2, 300)
  np.testing.assert_array_equal(members, keep[[0, 3]])
  np.testing.assert_allclose(scores[1], mia.lira_online(shadow[3], np.delete(shadow, 3, 0), np.delete(keep, 3, 0),
                                                        fixed_variance=True))
  assert mia.mia_metrics(scores, members)["auc"] > 0.75
  g, _ = mia.lira_leave_one_out(shadow, keep, "global")
  np.testing.assert_allclose(g, shadow.mean(-1))


def test_lira_input_checks():
  target, shadow, keep, _ = gaussian_population(shift=1.0, m=4, b=10)
  with pytest.raises(ValueError, match=r"keep_MxB: expected shape \(4, 10\).*shadow_stats_MxB of shape \(4, 10, 2\)"
                                       r".*got shape \(4, 9\)"):
    mia.lira_online(target, shadow, keep[:, :9])
  with pytest.raises(ValueError, match=r"shadow_stats_MxB: expected shape \(M, 10, 2\).*target_stats_B of shape "
                                       r"\(10, 2\), got shape \(4, 10, 3\)"):
    mia.lira_offline(target, np.concatenate([shadow, shadow[..., :1]], -1), keep)
  # 4 models: 2 IN and 2 OUT per example, enough for per-example variances; 3 are not
  mia.lira_online(target, shadow, keep)
  with pytest.raises(ValueError, match=r"online LiRA \(per-example variance\) needs at least 2 IN shadow model\(s\) "
                                       r"for every example; example \d+ has 1 IN model\(s\) of 3"):
    mia.lira_online(target, shadow[:3], keep[:3])
  mia.lira_online(target, shadow[:3], keep[:3], fixed_variance=True)  # one of each suffices there
  only_in = np.ones_like(keep)
  with pytest.raises(ValueError, match=r"offline LiRA \(fixed variance\) needs at least 1 OUT .* has 0 OUT model"):
    mia.lira_offline(target, shadow, only_in, fixed_variance=True)
  with pytest.raises(ValueError, match="finite"):
    mia.lira_online(np.full_like(target, np.nan), shadow, keep)


# ---------------------------------------------------------------------------------------- metrics


def test_auc_is_the_mann_whitney_statistic():
  rng = np.random.default_rng(3)
  scores = np.round(rng.normal(0, 1, 400), 1)  # with ties
  members = rng.random(400) < 0.3
  pos, neg = scores[members], scores[~members]
  u = np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
  assert mia.auc(scores, members) == pytest.approx(u / (pos.size * neg.size), abs=1e-12)
  fpr, tpr, thr = mia.roc_curve(scores, members)
  assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.isinf(thr[0])
  assert np.all(np.diff(thr) < 0) and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  for t, f, r in zip(thr[1:], fpr[1:], tpr[1:]):  # each point: the rule "member when score >= threshold"
    assert f == np.mean(neg >= t) and r == np.mean(pos >= t)
  assert mia.auc(-scores, members) == pytest.approx(1 - u / (pos.size * neg.size), abs=1e-12)


def test_tpr_at_fpr_and_balanced_accuracy_on_a_hand_made_case():
  members_scores = [10.0, 9.0, 8.0, 3.0, 2.0]
  non_members = [9.5, 2.5] + list(np.linspace(0.0, 0.9, 98))  # 100 non-members
  scores = np.array(members_scores + non_members)
  members = np.array([True] * 5 + [False] * 100)
  # FPR <= 1%: one false positive (9.5); the lowest threshold keeping it there is 3 -> 4 of 5 members
  assert mia.tpr_at_fpr(scores, members, 0.01) == 0.8
  assert mia.tpr_at_fpr(scores, members, 0.02) == 1.0  # threshold 2: two false positives
  assert mia.tpr_at_fpr(scores, members, 0.015) == 0.8
  assert mia.tpr_at_fpr(scores, members, 0.001) is None  # 100 non-members cannot resolve 0.1%
  assert mia.balanced_accuracy(scores, members) == pytest.approx((1.0 + 0.98) / 2)
  metrics = mia.mia_metrics(scores, members)
  assert set(metrics) == {"auc", "balanced_accuracy", "tpr_at_fpr_0.01", "members", "non_members"}
  assert metrics["tpr_at_fpr_0.01"] == 0.8 and metrics["members"] == 5 and metrics["non_members"] == 100
  big = mia.mia_metrics(np.r_[scores, np.full(9900, -1.0)], np.r_[members, np.zeros(9900, bool)])
  assert {"tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "tpr_at_fpr_0.0001"} <= set(big)
  assert big["tpr_at_fpr_0.0001"] == 0.8  # one false positive among 10^4


def test_metric_input_checks(tmp_path):
  with pytest.raises(ValueError, match="is_member: expected members and non-members"):
    mia.auc([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match=r"scores, is_member: expected the same shape, got \(3,\) and \(2,\)"):
    mia.auc([0.1, 0.2, 0.3], [True, False])
  with pytest.raises(ValueError, match="scores: expected no NaN"):
    mia.auc([np.nan, 0.2], [True, False])
  with pytest.raises(ValueError, match="fpr: expected a rate in"):
    mia.tpr_at_fpr([0.1, 0.2], [True, False], 0.0)


def test_plot_roc_writes_a_png(tmp_path):
  target, shadow, keep, target_in = gaussian_population(shift=1.0, m=4, b=400)
  path = mia.plot_roc(tmp_path / "roc" / "roc.png", {
      "online": (mia.lira_online(target, shadow, keep, fixed_variance=True), target_in),
      "global": (mia.global_threshold_scores(target), target_in)}, title="synthetic")
  assert path is not None and path.stat().st_size > 1000
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------- keep masks


@pytest.mark.parametrize("m,n", [(2, 7), (8, 40), (16, 101), (6, 1)])
def test_keep_masks_put_every_example_in_half_of_the_models(m, n):
  keep = mia.keep_masks(m, n, 5)
  assert keep.shape == (m, n) and keep.dtype == bool
  assert np.all(keep.sum(0) == m // 2)
  rows = keep.sum(1)
  assert set(rows.tolist()) <= {n // 2, -(-n // 2)} and rows.sum() == m * n // 2
  np.testing.assert_array_equal(keep, mia.keep_masks(m, n, 5))
  raw = mia.keep_masks(m, n, 5, level_models=False)  # the reference's masks: columns balanced only
  assert np.all(raw.sum(0) == m // 2)
  if n > 1:
    assert not np.array_equal(keep, mia.keep_masks(m, n, 6))
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(mia.keep_masks(m, n, key), mia.keep_masks(m, n, jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(mia.keep_masks(m, n, jax.random.key(3)), mia.keep_masks(m, n, key))


def test_keep_masks_are_random_halves():
  keep = mia.keep_masks(64, 200, 0)
  # two models share about a quarter of the examples, as independent random halves do
  overlap = (keep[:, None, :] & keep[None, :, :]).sum(-1)[np.triu_indices(64, 1)] / 200
  assert abs(overlap.mean() - 0.25) < 0.01 and overlap.std() < 0.06


@pytest.mark.parametrize("value", [3, 0, -2, 2.0, True, "4"])
def test_keep_masks_refuse_a_bad_model_count(value):
  with pytest.raises(ValueError, match=f"num_models: expected an even number > 0 .*got {value!r}"):
    mia.keep_masks(value, 10, 0)


def test_keep_masks_refuse_bad_examples_and_seeds():
  with pytest.raises(ValueError, match="num_examples: expected an int >= 1, got 0"):
    mia.keep_masks(4, 0, 0)
  with pytest.raises(ValueError, match="key_or_seed"):
    mia.keep_masks(4, 10, 0.5)
