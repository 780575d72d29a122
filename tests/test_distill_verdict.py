"""The undistillability report's verdict (Welch intervals of Delta over seeds, three-way
decisions, warnings) on synthetic attack records, and the Skeptical student's refusal of
a base model whose two auxiliary heads would share a layer."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprotect import models, stats, train
from jaxprotect.distill import report, students

LS = "ls_eps0.1"


def _acc(values) -> dict[str, float]:
  return {str(i): float(v) for i, v in enumerate(values)}


def _write(d: pathlib.Path, runs: dict[str, tuple[str, list[float]]], method: str = "cmim",
           student_key: str = "key0") -> pathlib.Path:
  """An ``attack.json`` as ``attack.run_attacks`` writes it; ``runs``: name -> (kind, accuracies)."""
  d.mkdir(parents=True)
  rec = {
      "teacher": {"dir": str(d.parent / f"teacher_{d.name}"), "method": method, "model": "small_cnn",
                  "test_accuracy": 0.9, "params_sha256": "0" * 64, "settings": {"method": method}},
      "student": {"model": "mlp", "model_kwargs": {"hidden": [16]}},
      "student_key": student_key,
      "dataset": {"name": "synthetic"},
      "run_order": list(runs),
      "runs": {name: {"kind": kind, "params": {}, "accuracy": _acc(acc), "seconds": _acc([1.0] * len(acc))}
               for name, (kind, acc) in runs.items()},
  }
  (d / "attack.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
  return d


LS_ACC = [0.844, 0.850, 0.856]  # mean 85.00%, std 0.60 points
CE_ACC = [0.836, 0.840, 0.844]  # below LS


def _row(tmp_path, runs, **kw):
  rep = report.build_report([_write(tmp_path / "a", runs)], **kw)
  return rep, rep["teachers"][0]


def test_small_positive_delta_with_wide_spread_is_inconclusive(tmp_path):
  knock = [0.8442, 0.8502, 0.8562]  # Delta +0.02 points, std 0.60 points
  runs = {"ce": ("ce", CE_ACC), LS: ("ls", LS_ACC), "kd_T4": ("kd", knock)}
  rep, row = _row(tmp_path, runs)
  a = row["attacks"]["kd_T4"]
  w = stats.welch(knock, LS_ACC, 0.95)
  assert a["delta"] == pytest.approx(0.0002)
  assert a["delta"] == pytest.approx(a["mean"] - row["ls_student"]["mean"])
  assert a["delta_interval"] == [pytest.approx(w["low"]), pytest.approx(w["high"])]
  assert a["p"] == pytest.approx(w["p"]) and a["p"] > 0.9
  assert a["delta_interval"][0] < -0.01 and a["delta_interval"][1] > 0.01  # about +-1.4 points
  assert a["decision"] == "inconclusive"
  assert row["decision"] == "inconclusive" and row["verdict"].startswith("inconclusive")
  assert "kd_T4" in row["verdict"]
  assert row["max_delta"] == pytest.approx(a["delta"]) and row["best_attack"] == "kd_T4"
  assert rep["confidence"] == 0.95 and rep["ls_eps"] == 0.1
  # the old rule (mean Delta > 0) would have called this teacher distillable
  assert a["delta"] > 0


def test_distillable_when_one_attack_is_clearly_above_ls(tmp_path):
  runs = {"ce": ("ce", CE_ACC), LS: ("ls", LS_ACC), "kd_T4": ("kd", [0.8442, 0.8502, 0.8562]),
          "dkd": ("dkd", [0.899, 0.900, 0.901])}
  _, row = _row(tmp_path, runs)
  assert row["attacks"]["dkd"]["decision"] == "distillable"
  assert row["attacks"]["dkd"]["delta_interval"][0] > 0
  assert row["attacks"]["kd_T4"]["decision"] == "inconclusive"
  assert row["decision"] == "distillable" and row["verdict"].startswith("distillable")
  assert "dkd" in row["verdict"] and "kd_T4" not in row["verdict"]
  assert row["attack_order"] == ["kd_T4", "dkd"]


def test_undistillable_only_when_every_attack_is_clearly_below(tmp_path):
  below = {"kd_T4": ("kd", [0.700, 0.702, 0.698]), "skeptical": ("skeptical", [0.750, 0.755, 0.745])}
  runs = {"ce": ("ce", CE_ACC), LS: ("ls", LS_ACC), **below}
  _, row = _row(tmp_path, runs)
  assert {a["decision"] for a in row["attacks"].values()} == {"undistillable"}
  assert all(a["delta_interval"][1] < 0 for a in row["attacks"].values())
  assert row["decision"] == "undistillable" and row["verdict"].startswith("undistillable")
  assert row["decision_ce"] == "undistillable"
  # one inconclusive attack among clearly-below ones: the teacher is not undistillable
  (tmp_path / "b").mkdir()
  runs["hard_label"] = ("hard", [0.80, 0.85, 0.90])
  _, row = _row(tmp_path / "b", runs)
  assert row["decision"] == "inconclusive" and "hard_label" in row["verdict"] and "kd_T4" not in row["verdict"]


def test_intervals_equal_stats_welch_against_ls_and_ce_and_follow_confidence(tmp_path):
  rng = np.random.default_rng(0)
  ls, ce, knock = (list(rng.uniform(0.8, 0.9, 4)) for _ in range(3))
  runs = {"ce": ("ce", ce), LS: ("ls", ls), "mse": ("mse", knock)}
  for conf in (0.95, 0.8):
    d = tmp_path / f"c{conf}"
    d.mkdir()
    _, row = _row(d, runs, confidence=conf)
    a = row["attacks"]["mse"]
    for base, suffix in ((ls, ""), (ce, "_ce")):
      w = stats.welch(knock, base, conf)
      assert a[f"delta{suffix}"] == pytest.approx(w["diff"])
      assert a[f"delta{suffix}_interval"] == [pytest.approx(w["low"]), pytest.approx(w["high"])]
      assert a[f"p{suffix}"] == pytest.approx(w["p"])
      assert a[f"decision{suffix}"] == {"greater": "distillable", "less": "undistillable",
                                        "inconclusive": "inconclusive"}[stats.compare(knock, base, conf)]
  with pytest.raises(ValueError, match="confidence"):
    report.build_report([tmp_path / "c0.95" / "a"], confidence=1.0)


def test_ls_below_ce_warning(tmp_path):
  runs = {"ce": ("ce", CE_ACC), LS: ("ls", LS_ACC), "kd_T4": ("kd", [0.80, 0.81, 0.82])}
  _, row = _row(tmp_path / "x", runs)
  assert not any(w.startswith("LS student below CE student") for w in row["warnings"])  # LS 85.0 > CE 84.0
  runs["ce"] = ("ce", [0.860, 0.865, 0.870])
  _, row = _row(tmp_path / "y", runs)
  [w] = [w for w in row["warnings"] if w.startswith("LS student below CE student")]
  assert "baseline is weak" in w and "85.00" in w and "86.50" in w
  assert row["decision_ce"] == "undistillable" and row["verdict_ce"].startswith("undistillable")


def test_fewer_than_3_seeds_warning_and_one_seed_is_unbounded(tmp_path):
  runs = {"ce": ("ce", CE_ACC), LS: ("ls", LS_ACC), "kd_T4": ("kd", [0.80, 0.81, 0.82])}
  _, row = _row(tmp_path / "three", runs)
  assert not any("fewer than 3 seeds" in w for w in row["warnings"])
  runs = {"ce": ("ce", CE_ACC[:2]), LS: ("ls", LS_ACC[:2]), "kd_T4": ("kd", [0.80, 0.81])}
  _, row = _row(tmp_path / "two", runs)
  [w] = [w for w in row["warnings"] if w.startswith("fewer than 3 seeds")]
  assert LS in w and "kd_T4" in w
  w2 = stats.welch([0.80, 0.81], LS_ACC[:2])
  assert row["attacks"]["kd_T4"]["delta_interval"] == [pytest.approx(w2["low"]), pytest.approx(w2["high"])]
  # one seed: the interval is unbounded (null in the JSON), so every decision is inconclusive
  runs = {"ce": ("ce", CE_ACC[:1]), LS: ("ls", LS_ACC[:1]), "kd_T4": ("kd", [0.99])}
  rdir = tmp_path / "rep"
  rep = report.write_report(rdir, [_write(tmp_path / "one", runs)])
  row = rep["teachers"][0]
  a = row["attacks"]["kd_T4"]
  assert a["delta"] == pytest.approx(0.99 - LS_ACC[0])
  assert a["delta_interval"] == [None, None] and a["p"] is None and a["decision"] == "inconclusive"
  assert row["decision"] == "inconclusive" and any(w.startswith("fewer than 3 seeds") for w in row["warnings"])

  def no_constants(c):
    raise AssertionError(f"non-standard JSON constant {c}")

  on_disk = json.loads((rdir / "report.json").read_text(), parse_constant=no_constants)
  assert on_disk["teachers"][0]["attacks"]["kd_T4"]["delta_interval"] == [None, None]
  assert "+14.60 [-inf, +inf]" in (rdir / "report.md").read_text()


def test_markdown_shows_interval_decisions_verdict_warnings_and_rule(tmp_path):
  knock = [0.8442, 0.8502, 0.8562]
  runs = {"ce": ("ce", [0.860, 0.865, 0.870]), LS: ("ls", LS_ACC), "kd_T4": ("kd", knock)}
  rdir = tmp_path / "rep"
  rep = report.write_report(rdir, [_write(tmp_path / "a", runs)])
  md = (rdir / "report.md").read_text()
  assert md == report.to_markdown(rep)
  w = stats.welch(knock, LS_ACC)
  interval = f"{100 * w['diff']:+.2f} [{100 * w['low']:+.2f}, {100 * w['high']:+.2f}]"
  assert interval.startswith("+0.02 [-1.") and interval in md
  assert "Welch 95% interval" in md.split("\n\n")[1]  # the rule, in the header
  assert "| inconclusive |" in md
  assert "Verdict: inconclusive" in md and "Verdict vs CE: " in md
  assert "Warning: LS student below CE student" in md
  on_disk = json.loads((rdir / "report.json").read_text())
  assert on_disk["teachers"][0]["attacks"]["kd_T4"]["decision"] == "inconclusive"
  assert on_disk["confidence"] == 0.95


def test_baselines_borrowed_and_no_ce_student(tmp_path):
  base = _write(tmp_path / "base", {LS: ("ls", LS_ACC)})
  other = _write(tmp_path / "other", {"kd_T4": ("kd", [0.70, 0.71, 0.72])}, method="nasty")
  rep = report.build_report([base, other])
  [_, row] = rep["teachers"]
  assert row["ce_student"] is None and row["decision_ce"] is None and row["verdict_ce"] is None
  assert row["attacks"]["kd_T4"]["delta_ce"] is None and row["attacks"]["kd_T4"]["decision_ce"] is None
  assert row["decision"] == "undistillable"
  assert "verdict vs CE" in report.to_markdown(rep)
  assert rep["teachers"][0]["verdict"] == "inconclusive (no attacks run)"


# ---------------------------------------------------------------------------------------
# Skeptical student: both heads on one layer is refused at init
# ---------------------------------------------------------------------------------------

def test_skeptical_student_refuses_mlp_with_two_hidden_layers_before_training():
  x = jnp.zeros((2, 12, 12, 1))
  mlp = models.get("mlp", 10, hidden=(8, 8))
  assert students.tapped_layers(mlp, x) == ("fc0", "fc0")  # what head_positions gives
  sk = students.SkepticalStudent(mlp, 10)  # construction alone traces nothing
  msg = r"MLP\(hidden=\(8, 8\)\).*'fc0'.*CNN/ResNet.*at least 3 hidden layers"
  with pytest.raises(ValueError, match=msg):
    sk.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=msg):  # the engine's init, before any step
    train.init_state(sk, optax.sgd(0.1), x[:1], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=msg):
    students.check_skeptical_base(mlp, x)
  with pytest.raises(ValueError, match="fc0"):
    students.SkepticalStudent(models.get("mlp", 10, hidden=(8,)), 10).init(jax.random.PRNGKey(0), x)
  assert students.check_skeptical_base(models.get("mlp", 10, hidden=(8, 8, 8)), x) == ("fc0", "fc1")
  assert [students.head_positions(g) for g in range(1, 5)] == [(0, 0), (0, 0), (0, 1), (1, 2)]
  assert students.MIN_FEATURE_GROUPS == 3


def test_skeptical_student_accepts_small_cnn():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 12, 12, 1)), jnp.float32)
  base = models.get("small_cnn", 10, width=4)
  assert students.check_skeptical_base(base, x) == ("conv0", "conv1")
  sk = students.SkepticalStudent(base, 10)
  v = jax.jit(sk.init)(jax.random.PRNGKey(0), x)
  assert set(v["params"]) == {"base", "aux_shallow", "aux_layer3"}
  logits, heads = jax.jit(sk.apply)(v, x)
  assert logits.shape == heads["shallow_logits"].shape == heads["layer3_logits"].shape == (2, 10)
  assert all(math.isfinite(float(jnp.abs(t).max())) for t in (logits, heads["shallow_logits"]))
