"""experiments/certify_seeds.py (whose sweep recover_seeds.py shares): results kept in
a records directory outlive the victims' run directories, a missing victim is skipped only when
asked, and the table's intervals are stats.welch's."""

import argparse
import json
import pathlib
import shutil

import pytest

from conftest import REPO, load_script
from jaxprotect import stats


@pytest.fixture(scope="module")
def cs():
  return load_script("experiments/certify_seeds.py")


def _source(root: pathlib.Path) -> pathlib.Path:
  """A workdir of unlearnable_seeds.py with the clean and EM victims of seed 0 and the EM victim of seed 1."""
  src = root / "source"
  (src / "clean" / "small_cnn-seed0-0123456789").mkdir(parents=True)
  for seed in (0, 1):
    (src / "em_sample" / f"seed{seed}-small_cnn" / "poisoned").mkdir(parents=True)
  return src


def test_records_outlive_the_victims(cs, tmp_path, capsys):
  src = _source(tmp_path)
  calls = []

  def one(model, workdir):
    calls.append((str(model.relative_to(src)), workdir.name))
    return {"model": str(model.relative_to(src))}

  args = argparse.Namespace(source=src, workdir=tmp_path / "work", victim="small_cnn", records=tmp_path / "rec",
                            skip_missing=False)
  with pytest.raises(FileNotFoundError, match="clean victim small_cnn-seed1"):
    cs.sweep(args, ["em_sample", "clean"], [0, 1], one, {"sigma": 0.05})
  assert len(calls) == 3  # seed-major: seed 0's two victims and em_sample seed 1 ran, each result kept
  args.skip_missing = True
  calls.clear()
  got = cs.sweep(args, ["em_sample", "clean", "mi_ue"], [0, 1], one, {"sigma": 0.05})
  assert "skipped clean seed 1" in capsys.readouterr().out
  assert got == {"em_sample": [{"model": "em_sample/seed0-small_cnn/poisoned"},
                               {"model": "em_sample/seed1-small_cnn/poisoned"}],
                 "clean": [{"model": "clean/small_cnn-seed0-0123456789"}]}  # mi_ue: nothing at all
  assert calls == []  # every result that exists was kept by the failed sweep
  stored = json.loads((tmp_path / "rec" / "em_sample" / "seed1.json").read_text())
  assert stored["key"] == cs.settings_key({"sigma": 0.05}) and stored["record"] == got["em_sample"][1]
  shutil.rmtree(src)
  calls.clear()
  assert cs.sweep(args, ["em_sample", "clean", "mi_ue"], [0, 1], one, {"sigma": 0.05}) == got
  assert calls == []
  # Other settings: the records do not apply, and with the victims gone nothing is left.
  with pytest.raises(SystemExit, match=r"nothing to tabulate: no record under .*'sigma': 0.1"):
    cs.sweep(args, ["em_sample", "clean"], [0, 1], one, {"sigma": 0.1})


def test_table_intervals_are_welch(cs):
  etas = [0.01, 0.05]

  def result(cert, model):
    return {"etas": etas, "certified": cert, "model_test_accuracy": model, "mean_accuracy": model - 0.02}

  results = {"clean": [result([0.80, 0.78], 0.85), result([0.82, 0.80], 0.86), result([0.79, 0.77], 0.84)],
             "em_sample": [result([0.50, None], 0.55), result([0.60, 0.58], 0.62)]}
  table = cs.build_table(results, etas)
  w = stats.welch([0.50, 0.60], [0.80, 0.82, 0.79], cs.CONFIDENCE)
  got = table["welch"]["em_sample"]["0.01"]
  assert (got["diff"], got["low"], got["high"]) == pytest.approx((w["diff"], w["low"], w["high"]))
  assert got["verdict"] == stats.compare([0.50, 0.60], [0.80, 0.82, 0.79], cs.CONFIDENCE)
  assert table["rows"]["em_sample"]["certified"]["0.05"] is None  # an abstention (None) -> no summary
  assert table["rows"]["clean"]["certified"]["0.01"]["mean"] == pytest.approx((0.80 + 0.82 + 0.79) / 3)


def test_a_single_seed_renders_without_a_spread(cs):
  one = {"etas": [0.01], "certified": [0.75], "model_test_accuracy": 0.9, "mean_accuracy": 0.85}
  args = argparse.Namespace(test_subset=2000, q=0.9, num_draws=450, sigma=0.05, confidence=0.99, seeds="1")
  text = cs.render(cs.build_table({"clean": [one], "em_sample": [dict(one, certified=[0.5])]}, [0.01]), args)
  assert "| clean | 90.0 (1 seed) | 85.0 (1 seed) | 75.0 (1 seed) |" in text
  assert "| EM sample-wise | -25.0 (n < 2) |" in text  # one seed: no interval


def test_recover_table_gains_are_welch(cs, monkeypatch):
  monkeypatch.syspath_prepend(str(REPO / "experiments"))  # recover_seeds imports certify_seeds by name
  rs = load_script("experiments/recover_seeds.py")

  def result(before, after):
    return {"etas": [0.5], "before": before, "attacks": {"finetune": {"accuracy": [after]}}}

  results = {"em_sample": [result(0.40, 0.60), result(0.50, 0.62)], "pue": [result(0.45, 0.50)],
             "clean": [result(0.90, 0.91), result(0.92, 0.92), result(0.91, 0.93)]}
  table = rs.build_table(results, "em_sample")
  w = stats.welch([0.01, 0.00, 0.02], [0.20, 0.12], rs.CONFIDENCE)
  got = table["gain_minus_baseline"]["clean"]["finetune"][0]
  assert (got["diff"], got["low"], got["high"]) == pytest.approx((w["diff"], w["low"], w["high"]))
  args = argparse.Namespace(seeds="0,1,2", variant="quick")
  text = rs.render(table, args)
  assert "| PUE | 45.0 (1 seed) | 50.0 (1 seed) |" in text
  assert "| PUE | -11.0 (n < 2) |" in text  # one seed: no interval
  half = {"diff": -0.02, "low": None, "high": 0.01, "verdict": "inconclusive"}  # one end unbounded keeps its sign
  assert cs.interval(half) == "-2.0 [-inf, +1.0] inconclusive" and cs.interval(None) == "abstain"
