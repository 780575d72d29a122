"""``jaxprotect.stats``: Welch intervals against scipy, three-way comparisons, and the MI
estimators against the closed form for correlated Gaussians."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxprotect import stats


def test_welch_matches_scipy_and_its_interval():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 0.5, 5), rng.normal(0.2, 1.5, 4)
  w = stats.welch(a, b, 0.95)
  ref = sps.ttest_ind(a, b, equal_var=False)
  assert w["t"] == pytest.approx(ref.statistic) and w["p"] == pytest.approx(ref.pvalue)
  ci = ref.confidence_interval(0.95)
  assert (w["low"], w["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
  assert w["diff"] == pytest.approx(a.mean() - b.mean())


def test_three_way_comparison():
  # the case: a knock-off 0.02 points above the LS student, seed std 0.6, n = 3
  ls = np.array([78.0, 78.6, 79.2])
  knock = ls + 0.02 + np.array([0.3, -0.5, 0.2])
  assert abs(np.std(knock, ddof=1) - 0.6) < 0.3
  assert stats.compare(knock, ls) == "inconclusive"
  assert stats.compare(ls + 5.0 + np.array([0.1, -0.1, 0.0]), ls) == "greater"
  assert stats.compare(ls - 5.0, ls + np.array([0.2, 0.0, -0.2])) == "less"
  assert stats.compare([80.0], ls) == "inconclusive"  # one value: no interval
  s = stats.summary([1.0, 2.0, 3.0])
  assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3) and s["sem"] == pytest.approx(1 / math.sqrt(3))
  with pytest.raises(ValueError, match="confidence"):
    stats.welch([1, 2], [1, 2], 1.5)
  with pytest.raises(ValueError, match="a: expected at least one value"):
    stats.welch([], [1, 2])


def _correlated(n, d, rho, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
  return x.astype(np.float32), y.astype(np.float32), -0.5 * d * math.log(1 - rho**2)


def test_table_cells_say_mean_std_and_interval_and_mark_one_seed():
  a, b = [0.40, 0.44, 0.48], [0.90, 0.91, 0.92]
  s, w = stats.summary(a), stats.welch(a, b)
  w["verdict"] = stats.compare(a, b)
  assert stats.format_summary(s, 100, 1) == "44.0 +- 4.0"
  assert stats.format_summary(stats.summary([0.4]), 100) == "40.00 (1 seed)"  # std NaN
  assert stats.format_summary({"mean": 0.4, "std": None}, 100, 1, "") == "40.0"  # a record: NaN stored as None
  low, high = 100 * w["low"], 100 * w["high"]
  assert high < 0 and stats.format_welch(w) == f"{100 * w['diff']:+.1f} [{low:+.1f}, {high:+.1f}] less"
  assert stats.format_welch(w, words={"less": ", lower"}).endswith(f"{high:+.1f}], lower")
  assert stats.format_welch({**w, "verdict": "inconclusive"}, words={"less": ", lower"}).endswith("]")
  one = {**stats.welch([0.4], b), "verdict": "inconclusive"}  # a side with one value: no interval
  assert stats.format_welch(one) == f"{100 * one['diff']:+.1f} (n < 2)"
  assert stats.format_welch({**one, "low": None, "high": None}) == f"{100 * one['diff']:+.1f} (n < 2)"
  half = {"diff": -0.02, "low": None, "high": 0.01, "verdict": "inconclusive"}  # one unbounded end
  assert stats.format_welch(half) == "-2.0 [-inf, +1.0] inconclusive"
  assert stats.format_welch({**half, "low": -0.05, "high": math.inf}, 1.0, 2) == "-0.02 [-0.05, inf] inconclusive"


def test_gaussian_mi_matches_the_closed_form():
  x, y, truth = _correlated(20000, 4, 0.8)
  assert stats.gaussian_mi(x, y, ridge=0.0) == pytest.approx(truth, rel=0.03)
  x, y, _ = _correlated(20000, 4, 0.0)
  assert abs(stats.gaussian_mi(x, y, ridge=0.0)) < 0.01
  # more features than examples: finite with a ridge
  x, y, _ = _correlated(50, 80, 0.9)
  assert math.isfinite(stats.gaussian_mi(x, y))
  # independent sets of very different scales (a per-covariance ridge gave -27 nats here)
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(100, 5)) * 1e-2, rng.normal(size=(100, 5)) * 1e2
  assert 0 <= stats.gaussian_mi(a.astype(np.float32), b.astype(np.float32), ridge=1e-3) < 0.5
  with pytest.raises(ValueError, match="paired features"):
    stats.gaussian_mi(x, y[:10])


def test_ksg_mi_matches_the_closed_form():
  x, y, truth = _correlated(2000, 1, 0.9)
  assert stats.ksg_mi(x, y, k=3, block=700) == pytest.approx(truth, abs=0.05)
  x, y, _ = _correlated(2000, 1, 0.0, seed=1)
  assert abs(stats.ksg_mi(x, y, k=3)) < 0.05


def test_pearson():
  r = stats.pearson([1, 2, 3, 4], [2, 4, 6, 9])
  assert r["r"] > 0.98 and r["n"] == 4
  with pytest.raises(ValueError, match=">= 3"):
    stats.pearson([1, 2], [1, 2])
