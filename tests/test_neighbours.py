"""Vision privacy (jaxprotect.privacy.neighbours): SSIM against a direct numpy computation of
Wang et al.'s formula, nearest neighbours under L2 and SSIM against brute force, a copied
image found at distance 0 with its id, the baselines' self-exclusion, and the PNG."""

import importlib

import numpy as np
import pytest

nb = importlib.import_module("jaxprotect.privacy.neighbours")


def numpy_ssim(x, y, data_range=1.0, size=11, sigma=1.5, k1=0.01, k2=0.03):
  """Wang et al. 2004 written out: for every valid window position and channel, the
  Gaussian-weighted means, variances and covariance of the two patches (centred form),
  the SSIM formula, then the mean (float64)."""
  c = np.arange(size) - (size - 1) / 2
  w = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma ** 2))
  w /= w.sum()
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  h, wd, ch = x.shape
  vals = []
  for k in range(ch):
    for i in range(h - size + 1):
      for j in range(wd - size + 1):
        px, py = x[i:i + size, j:j + size, k].astype(np.float64), y[i:i + size, j:j + size, k].astype(np.float64)
        mx, my = np.sum(w * px), np.sum(w * py)
        vx, vy = np.sum(w * (px - mx) ** 2), np.sum(w * (py - my) ** 2)
        cxy = np.sum(w * (px - mx) * (py - my))
        vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return float(np.mean(vals))


def test_gaussian_window_is_normalised_and_symmetric():
  g = nb.gaussian_window()
  assert g.shape == (11,) and abs(g.sum() - 1) < 1e-12 and np.allclose(g, g[::-1]) and g.argmax() == 5


def test_ssim_equals_the_formula_and_is_one_for_identical_images():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 14, 13, 2)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
  y[1] = rng.uniform(size=y[1].shape)  # an unrelated image
  got = np.asarray(nb.ssim(x, y))
  want = np.array([numpy_ssim(a, b) for a, b in zip(x, y)])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  assert got[1] < got[0] and got[1] < got[2]
  np.testing.assert_allclose(np.asarray(nb.ssim(x, x)), 1.0, atol=1e-6)
  u8 = (x * 255).astype(np.uint8)
  np.testing.assert_allclose(np.asarray(nb.ssim(u8, u8)), 1.0, atol=1e-6)
  mat = np.asarray(nb.ssim_matrix(x, y))
  assert mat.shape == (3, 3)
  np.testing.assert_allclose(np.diag(mat), got, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mat[0, 2], numpy_ssim(x[0], y[2]), rtol=2e-5, atol=2e-6)
  with pytest.raises(ValueError, match="at least 11 x 11"):
    nb.ssim(x[:, :8, :8], y[:, :8, :8])
  with pytest.raises(ValueError, match="y_BxHxWxC: expected the shape"):
    nb.ssim(x, y[:2])


def brute_force_l2(q, r, exclude=None):
  d = np.sqrt(((q.reshape(len(q), 1, -1).astype(np.float64) - r.reshape(1, len(r), -1)) ** 2).sum(-1))
  if exclude is not None:
    d[np.arange(len(q)), exclude] = np.inf
  return d


@pytest.mark.parametrize("chunk,query_chunk", [(0, 0), (7, 3)])
def test_l2_nearest_equals_brute_force(chunk, query_chunk):
  rng = np.random.default_rng(1)
  real = rng.integers(0, 256, size=(53, 12, 12, 1), dtype=np.uint8)
  queries = rng.normal(0.5, 0.4, size=(10, 12, 12, 1)).astype(np.float32)  # unclipped, as synthetic pixels
  queries[4] = real[17].astype(np.float32) / np.float32(255)  # a copy of a real image
  ids = np.arange(1000, 1053)
  got = nb.nearest(queries, real, metric="l2", k=3, reference_ids=ids, chunk=chunk, query_chunk=query_chunk)
  d = brute_force_l2(queries, real.astype(np.float64) / 255.0)
  want_pos = np.argsort(d, axis=1, kind="stable")[:, :3]
  np.testing.assert_array_equal(got.positions_QxK, want_pos)
  np.testing.assert_array_equal(got.ids_QxK, ids[want_pos])
  np.testing.assert_allclose(got.values_QxK, np.take_along_axis(d, want_pos, 1), rtol=1e-5, atol=1e-6)
  assert got.values_QxK[4, 0] == 0.0 and got.ids_QxK[4, 0] == 1017  # the copy: distance exactly 0, its source's id
  # excluding itself, a real image finds its nearest other one
  sub = np.array([3, 17, 40])
  ex = nb.nearest(real[sub], real, metric="l2", exclude_Q=sub, chunk=chunk)
  d_real = brute_force_l2(real[sub] / 255.0, real / 255.0, exclude=sub)
  np.testing.assert_array_equal(ex.positions_QxK[:, 0], d_real.argmin(1))
  assert np.all(ex.positions_QxK[:, 0] != sub) and np.all(ex.values_QxK > 0)


def test_ssim_nearest_equals_brute_force():
  rng = np.random.default_rng(2)
  real = rng.uniform(size=(21, 12, 11, 2)).astype(np.float32)
  queries = np.clip(real[[5, 9, 0, 20]] + rng.normal(0, 0.15, (4, 12, 11, 2)), 0, 1).astype(np.float32)
  queries[2] = real[13]
  got = nb.nearest(queries, real, metric="ssim", k=2, chunk=5, query_chunk=3)
  full = np.array([[numpy_ssim(q, r) for r in real] for q in queries])
  want = np.argsort(-full, axis=1, kind="stable")[:, :2]
  np.testing.assert_array_equal(got.positions_QxK, want)
  np.testing.assert_allclose(got.values_QxK, np.take_along_axis(full, want, 1), rtol=2e-5, atol=2e-6)
  assert got.positions_QxK[2, 0] == 13 and abs(got.values_QxK[2, 0] - 1.0) < 1e-6


def test_bad_inputs():
  x = np.zeros((2, 12, 12, 1), np.float32)
  with pytest.raises(ValueError, match="metric: expected one of"):
    nb.nearest(x, x, metric="l1")
  with pytest.raises(ValueError, match="k: expected at most 1"):
    nb.nearest(x, x, k=2, exclude_Q=[0, 1])
  with pytest.raises(ValueError, match="references_NxHxWxC: expected images of shape"):
    nb.nearest(x, np.zeros((3, 12, 10, 1), np.float32))


def test_analysis_summaries_and_pairs_png(tmp_path):
  rng = np.random.default_rng(3)
  real = rng.integers(0, 256, size=(40, 12, 12, 1), dtype=np.uint8)
  ids = np.arange(100, 140)
  init_ids = np.array([105, 120, 133])
  syn = real[init_ids - 100].astype(np.float32) / np.float32(255)
  syn[1] += rng.normal(0, 0.05, syn[1].shape).astype(np.float32)  # moved a little from its initial image
  report, found = nb.neighbour_analysis(syn, real, ids, init_ids=init_ids, seed=0)
  l2, ss = report["metrics"]["l2"], report["metrics"]["ssim"]
  assert l2["synthetic_nearest_ids"] == [105, 120, 133] and ss["synthetic_nearest_ids"] == [105, 120, 133]
  assert l2["synthetic_nearest_values"][0] == 0.0 and l2["synthetic_nearest_values"][1] > 0
  assert l2["nearest_is_init_fraction"] == 1.0 and l2["synthetic_to_init"]["quantiles"]["0"] == 0.0
  for entry in (l2["random_real_subset"], l2["init_real"]):  # each excluding itself: never 0 here
    assert entry["count"] == 3 and entry["quantiles"]["0"] > 0
  assert len(report["random_subset_ids"]) == 3 and set(report["random_subset_ids"]) <= set(ids.tolist())
  summary = nb.nearest_distance_summary(np.array([1.0, 2.0, 3.0, 4.0]))
  assert summary["mean"] == 2.5 and summary["quantiles"]["0.5"] == 2.5 and summary["count"] == 4
  assert nb.closest_pairs_png(tmp_path / "pairs.png", syn, real, found, k=2)
  assert (tmp_path / "pairs.png").stat().st_size > 1000
