"""jaxprotect matrix (unlearnable.matrix): a tiny protections x defenses matrix (clean, random
and OPS poisons, no defense and bit-depth reduction, width-4 victims of 1 epoch on 256
embedded images) written as results, table and heatmap; a run stopped mid-way resumes
without recomputing its finished cells, and a rerun (the command) recomputes nothing; bad
names and a defense that does not apply to the data are refused before anything is written."""

import json
import pathlib

import pytest

from jaxprotect import config as config_lib, runner
from jaxprotect.cli import main as cli_main
from jaxprotect.unlearnable import crafting, matrix, victims

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = f"{REPO / 'experiments' / 'matrix.py'}:fashion_mnist_mini"
OVERRIDES = ["data.train_subset=256", "matrix.protections=clean,random,ops", "matrix.defenses=none,bits",
             "matrix.seeds=0", "victim.model_kwargs.width=4", "victim.epochs=1", "victim.batch_size=64",
             "victim.eval_batch_size=500", "runtime.num_devices=1", "runtime.progress=false",
             "runtime.tensorboard=false", "export.preview=false"]
CELLS = [(p, d) for p in ("clean", "random", "ops") for d in ("none", "bits")]


def _config(*extra):
  return config_lib.lock(config_lib.apply_overrides(config_lib.from_file(SPEC), [*OVERRIDES, *extra]))


class Counter:
  """Counts the calls of crafting.craft, victims.evaluate and runner.fit (patched in place);
  ``fail_at``: the evaluate call (1-based) that raises instead of running, as a kill would."""

  def __init__(self, monkeypatch, fail_at=None):
    self.calls = {"craft": 0, "evaluate": 0, "fit": 0}
    for module, name, key in ((crafting, "craft", "craft"), (victims, "evaluate", "evaluate"), (runner, "fit", "fit")):
      monkeypatch.setattr(module, name, self._wrap(getattr(module, name), key, fail_at if key == "evaluate" else None))

  def _wrap(self, fn, key, fail_at):
    def wrapper(*args, **kwargs):
      self.calls[key] += 1
      if fail_at is not None and self.calls[key] == fail_at:
        raise RuntimeError("stopped mid-way")
      return fn(*args, **kwargs)
    return wrapper


def _cell_files(work):
  return {p.name: p.stat().st_mtime_ns for p in (work / "cells").glob("*.json")}


def test_matrix_resumes_and_reruns_without_recomputing(tmp_path, monkeypatch, capsys):
  work = tmp_path / "m"
  config = _config()
  # Stopped at the second poisoned victim (random under bits): clean x {none, bits} and random x none are done.
  with monkeypatch.context() as mp:
    first = Counter(mp, fail_at=2)
    with pytest.raises(RuntimeError, match="stopped mid-way"):
      matrix.run_matrix(config, work)
  assert first.calls["craft"] == 1  # random only
  done = _cell_files(work)
  assert sorted(done) == ["clean--bits--default--seed0.json", "clean--none--default--seed0.json",
                          "random--none--default--seed0.json"]
  partial = json.loads((work / "results.json").read_text())
  assert not partial["complete"] and partial["cells_done"] == 3 and (work / "table.md").exists()

  # Resumed: only the three missing cells are computed, the random poison is not crafted again.
  with monkeypatch.context() as mp:
    second = Counter(mp)
    results = matrix.run_matrix(config, work)
  assert second.calls["craft"] == 1 and second.calls["evaluate"] == 3  # ops crafted; random x bits, ops x 2
  assert {k: v for k, v in _cell_files(work).items() if k in done} == done
  assert results["complete"] and results["computed"] == 3 and len(results["cells"]) == 6
  cells = {(c["protection"], c["defense"]): c for c in results["cells"]}
  assert sorted(cells) == sorted(CELLS)
  clean_acc = {c["clean_accuracy"] for c in cells.values()}
  assert len(clean_acc) == 1  # one shared clean victim
  assert cells[("clean", "none")]["accuracy"] == cells[("clean", "none")]["clean_accuracy"]
  for c in cells.values():
    assert 0.0 <= c["accuracy"] <= 1.0 and c["seconds"] >= 0
  assert len(list((work / "clean").iterdir())) == 1
  assert (work / "poisons" / "random" / "seed0").is_dir() and (work / "poisons" / "ops" / "seed0").is_dir()
  table = (work / "table.md").read_text()
  assert "| protection | none | bits |" in table
  for p in ("clean", "random", "ops"):
    assert f"| {p} | " in table
  assert f"Marked {matrix.SINGLE_SEED_MARK}: one seed" in table and "(n=1)" in table
  assert (work / "heatmap.png").stat().st_size > 0
  stored = json.loads((work / "results.json").read_text())
  assert stored["complete"] and stored["table"]["default"]["cells"]["ops"]["bits"]["n"] == 1

  # The command, rerun: nothing crafted or trained, no cell record rewritten.
  before = _cell_files(work)
  with monkeypatch.context() as mp:
    third = Counter(mp)
    capsys.readouterr()
    assert cli_main(["matrix", "--config", SPEC, *[f"--config.{o}" for o in OVERRIDES], "--workdir", str(work)]) == 0
  assert third.calls == {"craft": 0, "evaluate": 0, "fit": 0}
  assert _cell_files(work) == before
  out = capsys.readouterr().out
  assert "6 cells (0 computed" in out and "heatmap.png" in out


@pytest.mark.parametrize("override, match", [
    ("matrix.protections=clean,frobnicate", r"matrix.protections: unknown protection.*'frobnicate'.*em_sample"),
    ("matrix.defenses=none,frobnicate", r"matrix.defenses: unknown defense.*'frobnicate'.*ueraser"),
    ("matrix.victims=default,nosuchnet:width=4", r"matrix.victims: unknown model 'nosuchnet'.*fast.*small_cnn"),
    ("matrix.defenses=none,grayscale", r"matrix.defenses: 'grayscale' does not apply.*channel"),
    ("matrix.seeds=0,0", r"matrix.seeds"),
])
def test_bad_names_and_inapplicable_defenses_are_refused_before_anything_is_written(tmp_path, override, match):
  work = tmp_path / "m"
  with pytest.raises(ValueError, match=match):
    matrix.run_matrix(_config(override), work)
  assert not work.exists()


def test_specs_and_builtin_protections():
  c = _config()
  # The experiment file's specs: em.py's crafting sections, eps 0.3 with the step size scaled, width-16 surrogate.
  em_class = matrix.protection_config(c, "em_class")
  assert (em_class.craft.method, em_class.craft.mode, em_class.craft.eps) == ("em", "class", 0.3)
  assert em_class.craft.pgd.step_size == pytest.approx(0.03) and em_class.surrogate.model_kwargs.width == 16
  assert em_class.victim.model_kwargs.width == 4  # the matrix's victim
  # Built in (no spec): changes of the matrix config's own crafting sections; specs given to run_matrix win.
  mi_ue = matrix.protection_config(c, "mi_ue", specs={})
  assert mi_ue.craft.method == "mi_ue" and mi_ue.craft.pgd.step_size == pytest.approx(0.3 * 0.2 / 8)
  ops = matrix.protection_config(c, "ops", specs={"ops": "|craft.method=ops|victim.augment=crop2,flip"})
  assert ops.craft.method == "ops" and ops.victim.augment == "crop2,flip"
  with pytest.raises(ValueError, match=r"matrix.specs.ops: .*no_such_field"):
    matrix.protection_config(c, "ops", specs={"ops": "|craft.no_such_field=1"})
  assert matrix.parse_victim("resnet18:width=8") == ("resnet18-width=8",
                                                      ["victim.model=resnet18", "victim.model_kwargs.width=8"])


def test_the_fast_victim_recipe_sets_its_fields_then_the_model_keywords():
  name, overrides = matrix.parse_victim("fast:width=16")
  assert name == "fast-width=16" and overrides[-1] == "victim.model_kwargs.width=16"
  v = config_lib.apply_overrides(_config(), overrides).victim
  assert (v.model, v.epochs, v.batch_size, v.model_kwargs.width) == ("small_cnn", 6, 256, 16)
  assert (v.optimizer.nesterov, v.optimizer.warmup_epochs, v.label_smoothing) == (True, 0.5, 0.1)
  assert matrix.parse_victim("fast")[1] == list(matrix.VICTIM_RECIPES["fast"])
