"""experiments/unlearnable_seeds.py: the table builder on synthetic runs (Welch intervals,
clean victims per recipe, Pearson over the runs) and a tiny end-to-end run (the random
control, 2 seeds, 256 images, MLP victims of 1 epoch) that is resumed without running
anything again."""

import json
import math
import pathlib
import shutil

import pytest

from conftest import load_script
from jaxprotect import stats


@pytest.fixture(scope="module")
def seeds_mod():
  return load_script("experiments/unlearnable_seeds.py")


def _runs():
  """Three seeds of three methods on one victim; em_sample_ref has its own clean victims."""
  acc = {"em_sample": [0.50, 0.55, 0.47], "mi_ue": [0.60, 0.58, 0.66], "em_sample_ref": [0.80, 0.82, 0.79]}
  clean = {"default": [0.88, 0.89, 0.87], "ref": [0.90, 0.91, 0.92]}
  mi = {"em_sample": [40.0, 38.0, 41.0], "mi_ue": [50.0, 52.0, 49.0], "em_sample_ref": [70.0, 71.0, 69.0]}
  runs = []
  for m in acc:
    recipe = "ref" if m == "em_sample_ref" else "default"
    for i, seed in enumerate((0, 1, 2)):
      runs.append({"method": m, "seed": seed, "victim": "small_cnn", "accuracy": acc[m][i],
                   "clean_accuracy": clean[recipe][i], "clean_dir": f"clean/{recipe}-{seed}",
                   "feature_mi": {"gaussian": mi[m][i], "ksg": mi[m][i] / 10}})
  return runs, acc, clean, mi


def test_table_matches_stats_on_synthetic_runs(seeds_mod):
  runs, acc, clean, mi = _runs()
  table = seeds_mod.build_table(runs, ["em_sample", "mi_ue", "em_sample_ref", "random"])
  v = table["victims"]["small_cnn"]
  assert list(v["methods"]) == ["em_sample", "mi_ue", "em_sample_ref"]  # a method without runs has no row
  # The clean row: one value per clean directory (both recipes here).
  assert sorted(v["clean"]["values"]) == sorted(clean["default"] + clean["ref"])
  for m, row in v["methods"].items():
    own_clean = clean["ref" if m == "em_sample_ref" else "default"]
    assert row["clean"]["values"] == own_clean
    w = stats.welch(acc[m], own_clean)
    for k in ("diff", "low", "high", "p", "df"):
      assert row["vs_clean"][k] == pytest.approx(w[k]), (m, k)
    assert row["vs_clean"]["verdict"] == stats.compare(acc[m], own_clean)
    assert row["accuracy"]["mean"] == pytest.approx(sum(acc[m]) / 3)
    assert row["accuracy"]["std"] == pytest.approx(stats.summary(acc[m])["std"])
    assert row["feature_mi"]["gaussian"]["mean"] == pytest.approx(sum(mi[m]) / 3)
    if m == "em_sample":
      assert "vs_baseline" not in row
    else:
      wb = stats.welch(acc[m], acc["em_sample"])
      assert (row["vs_baseline"]["low"], row["vs_baseline"]["high"]) == pytest.approx((wb["low"], wb["high"]))
  assert v["methods"]["em_sample"]["vs_clean"]["verdict"] == "less"
  assert v["methods"]["mi_ue"]["vs_baseline"]["verdict"] == "greater"
  xs = [r["feature_mi"]["ksg"] for r in runs]
  ys = [r["accuracy"] for r in runs]
  assert v["pearson"]["ksg"]["r"] == pytest.approx(stats.pearson(xs, ys)["r"])
  assert v["pearson"]["gaussian"]["n"] == 9
  assert v["pearson_crafted"]["ksg"]["r"] == pytest.approx(v["pearson"]["ksg"]["r"])  # no control among them
  assert v["pairs"] == {}  # no mi_ue_fixed runs
  md = seeds_mod.render_table(table)
  w = v["methods"]["em_sample"]["vs_clean"]
  assert f"{100 * w['diff']:+.1f} [{100 * w['low']:+.1f}, {100 * w['high']:+.1f}], lower" in md
  assert "| none (clean) |" in md and "Pearson r (feature MI ksg" in md
  assert "without random" not in md  # no control: the line would repeat the one over all poisoned victims


def test_pairs_and_the_control(seeds_mod):
  runs, acc, *_ = _runs()
  extra = [{**r, "method": "mi_ue_fixed", "accuracy": r["accuracy"] - 0.1} for r in runs if r["method"] == "mi_ue"]
  extra += [{**r, "method": "random", "accuracy": 0.85, "feature_mi": {"gaussian": 90.0 + r["seed"], "ksg": 9.0}}
            for r in runs if r["method"] == "mi_ue"]
  v = seeds_mod.build_table(runs + extra, ["em_sample", "mi_ue", "mi_ue_fixed", "random"])["victims"]["small_cnn"]
  w = stats.welch(acc["mi_ue"], [a - 0.1 for a in acc["mi_ue"]])
  assert v["pairs"]["mi_ue - mi_ue_fixed"]["diff"] == pytest.approx(0.1)
  assert v["pairs"]["mi_ue - mi_ue_fixed"]["low"] == pytest.approx(w["low"])
  assert v["pearson"]["gaussian"]["n"] == 15 and v["pearson_crafted"]["gaussian"]["n"] == 12
  crafted = [r for r in runs + extra if r["method"] != "random"]
  r = stats.pearson([r["feature_mi"]["gaussian"] for r in crafted], [r["accuracy"] for r in crafted])["r"]
  assert v["pearson_crafted"]["gaussian"]["r"] == pytest.approx(r)
  md = seeds_mod.render_table({"confidence": 0.95, "baseline": "em_sample", "victims": {"small_cnn": v}})
  assert "MI-UE, reshuffled batches minus MI-UE, fixed batch order: +10.0" in md
  assert f"over 12 poisoned victims without random: {r:+.3f}" in md


def test_one_seed_has_no_interval(seeds_mod):
  runs, *_ = _runs()
  one = [r for r in runs if r["seed"] == 0]
  v = seeds_mod.build_table(one, ["em_sample", "mi_ue"])["victims"]["small_cnn"]
  w = v["methods"]["mi_ue"]["vs_clean"]
  assert w["low"] is None and w["high"] is None and w["verdict"] == "inconclusive"
  assert v["pearson"]["gaussian"]["r"] is not None  # 3 pairs (em_sample_ref's run counts too)
  md = seeds_mod.render_table({"confidence": 0.95, "baseline": "em_sample", "victims": {"x": v}})
  assert "(n < 2)" in md
  row = next(line for line in md.splitlines() if line.startswith("| MI-UE, reshuffled"))
  acc = v["methods"]["mi_ue"]["accuracy"]["mean"]
  assert row.split(" | ")[1] == f"{100 * acc:.2f} (1 seed)", row  # a single seed is marked, not shown bare


def test_configs(seeds_mod):
  c = seeds_mod.method_config("mi_ue_fixed", "fashion_mnist_mini", ["victim.epochs=2"], seed=2, eps=0.3,
                              victim=seeds_mod.parse_victim("resnet18:width=8")[1])
  assert c.craft.reshuffle == "never" and c.craft.method == "mi_ue"
  assert c.craft.eps == 0.3
  assert c.craft.pgd.step_size == pytest.approx(0.0075) and c.craft.pgd.step_size_end == pytest.approx(0.015)
  assert (c.surrogate.seed, c.victim.seed, c.victim.epochs) == (2, 2, 2)
  assert c.victim.model == "resnet18" and c.victim.model_kwargs.width == 8
  assert seeds_mod.method_config("em_sample", "fashion_mnist_mini", eps=0.3).craft.pgd.step_size == pytest.approx(0.03)
  assert seeds_mod.parse_victim("mlp") == ("mlp", ["victim.model=mlp"])
  for method, mode in (("pue", "sample"), ("pue_class", "class")):
    k = seeds_mod.method_config(method, "fashion_mnist_mini", eps=0.3).craft
    assert (k.method, k.mode, k.eps) == ("pue", mode, 0.3)


def test_tiny_run_and_resume(seeds_mod, tmp_path, capsys):
  args = ["--workdir", str(tmp_path), "--seeds", "0,1", "--methods", "random", "--eps", "0.3",
          "--config.data.train_subset=256", "--config.surrogate.model=mlp", "--config.surrogate.model_kwargs.width=16",
          "--config.surrogate.batch_size=64", "--config.craft.train_steps=1", "--config.craft.max_iterations=1",
          "--config.craft.pgd.steps=1", "--config.craft.pgd.batch_size=128", "--config.victim.model=mlp",
          "--config.victim.model_kwargs.width=16", "--config.victim.epochs=1", "--config.victim.batch_size=64",
          "--config.evaluate.feature_mi_examples=64", "--config.runtime.progress=false",
          "--config.export.preview=false"]
  assert seeds_mod.main(args) == 0
  out = json.loads((tmp_path / "table.json").read_text())
  assert len(out["runs"]) == 2 and out["seeds"] == [0, 1]
  runs = {(r["method"], r["seed"]): r for r in out["runs"]}
  assert runs[("random", 0)]["clean_dir"] != runs[("random", 1)]["clean_dir"]  # one clean victim per victim seed
  v = out["table"]["victims"]["mlp"]
  clean = [runs[("random", s)]["clean_accuracy"] for s in (0, 1)]
  assert v["clean"]["values"] == clean
  acc = [runs[("random", s)]["accuracy"] for s in (0, 1)]
  w = stats.welch(acc, clean)
  got = v["methods"]["random"]["vs_clean"]
  for k in ("diff", "low", "high"):
    assert (got[k] if got[k] is not None else math.copysign(math.inf, w[k])) == pytest.approx(w[k])
  assert v["pearson"]["ksg"]["r"] is None  # 2 pairs: too few for Pearson
  assert all(r["feature_mi"]["gaussian"] is not None for r in out["runs"])
  # Resumed: every record is reused, nothing is crafted or trained again.
  records = {p.name: p.read_text() for p in (tmp_path / "records").iterdir()}
  capsys.readouterr()
  assert seeds_mod.main(args) == 0
  assert {p.name: p.read_text() for p in (tmp_path / "records").iterdir()} == records
  assert json.loads((tmp_path / "table.json").read_text())["table"] == out["table"]


def test_records_outlive_the_run_directories(seeds_mod, tmp_path, capsys):
  """Records kept apart (--records) with every run directory gone: a recorded victim is not
  trained again; an unrecorded one re-crafts its poison and trains alone, taking the clean
  accuracy from the clean victim's record, and gets the accuracy it got the first time."""
  work, records = tmp_path / "work", tmp_path / "records"
  args = ["--workdir", str(work), "--records", str(records), "--seeds", "0,1", "--methods", "random",
          "--eps", "0.3", "--config.data.train_subset=256", "--config.victim.model=mlp",
          "--config.victim.model_kwargs.width=16", "--config.victim.epochs=1", "--config.victim.batch_size=64",
          "--config.evaluate.feature_mi_examples=64", "--config.runtime.progress=false",
          "--config.export.preview=false"]
  assert seeds_mod.main(args) == 0
  first = json.loads((work / "table.json").read_text())
  stored = {p.name: p.read_text() for p in records.iterdir()}
  clean_names = [f"clean-{pathlib.Path(r['clean_dir']).name}.json" for r in first["runs"]]  # clean-mlp-seed<s>-<recipe>
  assert sorted(stored) == sorted([*clean_names, "random-seed0-craft.json", "random-seed0-mlp.json",
                                   "random-seed1-craft.json", "random-seed1-mlp.json"])
  for r, name in zip(first["runs"], clean_names):  # each clean victim's record keeps its training time
    trained = json.loads((pathlib.Path(r["clean_dir"]) / "results.json").read_text())
    assert json.loads(stored[name])["record"]["seconds"] == r["clean_seconds"] == trained["seconds"]
  shutil.rmtree(work)
  assert seeds_mod.main(args) == 0  # nothing to train: no run directory comes back
  assert not (work / "random").exists() and not (work / "clean").exists()
  assert json.loads((work / "table.json").read_text())["table"] == first["table"]
  moved = [a if a != str(work) else str(tmp_path / "elsewhere") for a in args]
  assert seeds_mod.main([*moved, "--table-only"]) == 0  # the records hold under another workdir
  assert json.loads((tmp_path / "elsewhere" / "table.json").read_text())["table"]["victims"]["mlp"]["methods"] == \
      first["table"]["victims"]["mlp"]["methods"]
  (records / "random-seed1-mlp.json").unlink()
  shutil.rmtree(work)
  assert seeds_mod.main([*args, "--table-only"]) == 0  # seed 1 left out, nothing run
  only = json.loads((work / "table.json").read_text())
  assert [r["seed"] for r in only["runs"]] == [0] and not (work / "random").exists()
  shutil.rmtree(work)
  assert seeds_mod.main(args) == 0
  assert (work / "random" / "seed1-mlp" / "poisoned").is_dir() and not (work / "clean").exists()
  again = json.loads((records / "random-seed1-mlp.json").read_text())["record"]
  before = json.loads(stored["random-seed1-mlp.json"])["record"]
  assert again["accuracy"] == before["accuracy"] and again["clean_accuracy"] == before["clean_accuracy"]
  assert again["feature_mi"] == before["feature_mi"] and again["clean_feature_mi"]["gaussian"] is None
  assert json.loads((work / "table.json").read_text())["table"] == first["table"]
  trained = json.loads((work / "random" / "seed1-mlp" / "poisoned" / "results.json").read_text())
  assert again["seconds"] == round(trained["seconds"])  # the victim's own time, over its processes
  # The craft's record keeps its poison's digest: a poison crafted again differently is refused.
  # So does each victim's record: the poison it trained on.
  craft_rec = records / "random-seed1-craft.json"
  digest = json.loads((work / "random" / "seed1" / "results.json").read_text())["delta_sha256"]
  assert json.loads(craft_rec.read_text())["record"]["delta_sha256"] == digest == again["delta_sha256"]
  tampered = json.loads(craft_rec.read_text())
  tampered["record"]["delta_sha256"] = "0" * 64
  craft_rec.write_text(json.dumps(tampered))
  (records / "random-seed1-mlp.json").unlink()
  assert seeds_mod.main(args) == 1
  assert "is not the recorded one" in capsys.readouterr().err and not (records / "random-seed1-mlp.json").exists()


def test_only_victims_trains_the_listed_victims_and_reads_the_others_from_records(seeds_mod, tmp_path, capsys):
  """--only-victims: a depth victim alone first, the main victim later; the first is not trained
  again, and an unknown label is refused before anything runs."""
  assert seeds_mod.split_labels("resnet18,small_cnn(width=32,depth=3)") == ["resnet18", "small_cnn(width=32,depth=3)"]
  work, records = tmp_path / "work", tmp_path / "records"
  args = ["--workdir", str(work), "--records", str(records), "--seeds", "0", "--methods", "random",
          "--eps", "0.3", "--depth-victims", "mlp:width=8", "--config.data.train_subset=256",
          "--config.victim.model=mlp", "--config.victim.model_kwargs.width=16", "--config.victim.epochs=1",
          "--config.victim.batch_size=64", "--config.evaluate.feature_mi_examples=0",
          "--config.runtime.progress=false", "--config.export.preview=false"]
  assert seeds_mod.main([*args, "--only-victims", "nope"]) == 1
  assert "--only-victims: unknown victim(s) ['nope']" in capsys.readouterr().err and not records.exists()
  assert seeds_mod.main([*args, "--only-victims", "mlp(width=8)"]) == 0
  assert not (work / "random" / "seed0-mlp").exists() and (work / "random" / "seed0-mlp(width=8)").is_dir()
  assert (records / "random-seed0-mlp(width=8).json").exists() and not (records / "random-seed0-mlp.json").exists()
  assert [r["victim"] for r in json.loads((work / "table.json").read_text())["runs"]] == ["mlp(width=8)"]
  depth_record = (records / "random-seed0-mlp(width=8).json").read_text()
  assert seeds_mod.main(args) == 0  # every victim: the main one trains, the depth one is read back
  assert (records / "random-seed0-mlp.json").exists()
  assert (records / "random-seed0-mlp(width=8).json").read_text() == depth_record
  assert sorted(r["victim"] for r in json.loads((work / "table.json").read_text())["runs"]) == ["mlp", "mlp(width=8)"]
