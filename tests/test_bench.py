"""The side-by-side benchmark (``benchmarks/`` at the repository root, not installed): the
command end to end at the tiny size, its outputs, the Markdown section replacement, the
no-PyTorch path, and no recompilation of the step."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # ``benchmarks`` is not installed: it imports from the repository root
  sys.path.insert(0, REPO)

from benchmarks import cli, common, flops, jax_impl, report, suite  # noqa: E402
from jaxprotect import models  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
ROW_FIELDS = {"workload", "implementation", "mode", "device", "value", "unit", "ratio_vs"}


def _single_device_env() -> dict[str, str]:
  """The environment without conftest's 8 simulated devices (the bench runs as a user would)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONUNBUFFERED"] = "1"
  return env


@pytest.mark.slow
def test_bench_command_tiny_end_to_end(tmp_path):
  """``python -m benchmarks --tiny``, run from the repository root, runs every workload on
  jax and both PyTorch modes, writes the JSON rows and the Markdown section, keeps the rest
  of the Markdown file, and says what it skipped: without torch (no bench extra) the
  PyTorch rows it was asked for."""
  md = tmp_path / "BENCHMARKS.md"
  md.write_text("# Benchmarks\n\nHand-written intro.\n\n<!-- bench:cpu:start -->\nold table\n<!-- bench:cpu:end -->\n\n"
                "## Notes\n\nHand-written notes.\n")
  out_json = tmp_path / "results.json"
  impls = "jax,torch_eager,torch_tuned"  # also without torch: its rows are then skipped, and the skip recorded
  cmd = [sys.executable, "-m", "benchmarks", "--tiny", "--impl", impls, "--out-json", str(out_json),
         "--out-md", str(md), "--profile", str(tmp_path / "profiles"), "--peak-tflops", "0.001"]
  # cwd: the repository root, where ``python -m benchmarks`` finds the (uninstalled) package
  proc = subprocess.run(cmd, cwd=REPO, env=_single_device_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "| workload | unit |" in proc.stdout

  results = json.loads(out_json.read_text())
  assert set(results) == {"cpu"}
  meta, rows = results["cpu"]["metadata"], results["cpu"]["rows"]
  for key in ("date", "device", "versions", "command", "load_average_before", "load_average_after"):
    assert key in meta, key
  assert meta["versions"]["jax"] == jax.__version__
  assert "--tiny" in meta["command"] and "-m benchmarks" in meta["command"]
  workloads = set(suite.WORKLOADS) if jax_impl.cmim_available() else set(suite.WORKLOADS) - {"cmim_step"}
  assert {r["workload"] for r in rows} == workloads
  for r in rows:
    assert ROW_FIELDS <= set(r), r
  by = {(r["workload"], r["implementation"]): r for r in rows}
  for w in workloads:
    jr = by[(w, "jax")]
    assert jr["value"] is not None and jr["value"] > 0, jr
    assert jr["unit"] == suite.WORKLOADS[w][0]
    if HAVE_TORCH:
      for impl in ("torch_eager", "torch_tuned"):
        assert by[(w, impl)]["value"] is not None, by[(w, impl)]
      if w != "cmim_step":
        assert set(jr["ratio_vs"]) == {"torch_eager", "torch_tuned"}
        assert jr["ratio_vs"]["torch_eager"] == pytest.approx(
            suite.speed_ratio(jr["value"], by[(w, "torch_eager")]["value"], w), rel=1e-4)
  assert by[("train_step", "jax")]["details"]["compiled_variants"] == 1
  for w in workloads - {"e2e_em"}:  # a kept trace and its most expensive XLA operations
    d = by[(w, "jax")]["details"]
    assert os.path.isdir(d["profile_dir"]) and d["profile_dir"].startswith(str(tmp_path)), d
    shares = [o["share"] for o in d["top_ops"]]
    assert shares and all(o["ms"] > 0 and o["count"] > 0 for o in d["top_ops"]), d["top_ops"]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-6
  assert "profile_dir" not in by[("e2e_em", "jax")]["details"]
  tiny = common.SIZES["tiny"]
  forward = flops.forward_flops(models.get(tiny.model, 10, width=tiny.width), common.IMAGE_SHAPE_HWC)
  for w, passes in flops.FORWARD_PASSES.items():  # MFU against the given 1 GFLOP/s peak
    for r in rows:
      if r["workload"] == w and r["value"] is not None:
        d = r["details"]
        assert d["model_flops_per_unit"] == passes * forward, (w, d)
        assert d["mfu"] == pytest.approx(r["value"] * passes * forward / 1e9, rel=1e-5), (w, d)  # JSON keeps 6 decimals
  assert "mfu" not in by[("e2e_em", "jax")]["details"] and meta["peak_flops_override"] == 1e9
  if HAVE_TORCH:
    assert not any("PyTorch rows" in s for s in meta["skipped"]), meta["skipped"]
  else:
    assert meta["implementations"] == ["jax"] and {r["implementation"] for r in rows} == {"jax"}
    assert any(s.startswith("PyTorch rows (torch_eager, torch_tuned): torch is not installed") and "[bench]" in s
               for s in meta["skipped"]), meta["skipped"]
    assert "skipped: PyTorch rows" in proc.stdout

  text = md.read_text()
  assert text.startswith("# Benchmarks\n\nHand-written intro.\n")
  assert text.rstrip().endswith("## Notes\n\nHand-written notes.")
  assert "old table" not in text
  assert text.count("<!-- bench:cpu:start -->") == 1 and text.count("<!-- bench:cpu:end -->") == 1
  section = text[text.index("<!-- bench:cpu:start -->"):text.index("<!-- bench:cpu:end -->")]
  assert "| workload | unit | jaxprotect (f32) |" in section
  assert "`" + meta["command"] + "`" in section
  assert meta["date"] in section and f"jax {jax.__version__}" in section
  if HAVE_TORCH:
    assert "| jaxprotect / eager | jaxprotect / tuned |" in section
  else:
    assert "Skipped: PyTorch rows" in section
  mfu = by[("train_step", "jax")]["details"]["mfu"]
  assert f"({100 * mfu:.1f}% MFU)" in section and "- train_step: MFU counts 3 x " in section


def _resnet18_cifar_macs(width: int) -> int:
  """Multiply-adds of the CIFAR ResNet-18 on one 32x32x3 image, layer by layer."""
  hw = 32 * 32
  macs = hw * width * 3 * 9 + 4 * hw * width * width * 9  # stem, stage 1 (4 convs)
  for i in (1, 2, 3):  # stages 2-4: strided 3x3, three 3x3, 1x1 strided shortcut
    c_in, c, s = width * 2 ** (i - 1), width * 2**i, hw // 4**i
    macs += s * c * c_in * 9 + 3 * s * c * c * 9 + s * c * c_in
  return macs + 8 * width * 10  # linear head


def test_model_flops_match_the_resnet18_formula_and_count_loops():
  assert _resnet18_cifar_macs(64) == 555_422_720  # the CIFAR ResNet-18's familiar 0.56 GMACs
  for width in (64, 16):
    model = models.get("resnet18", 10, width=width)
    assert flops.forward_flops(model, (32, 32, 3)) == 2 * _resnet18_cifar_macs(width)

  def f(x, w):  # five products in a scan, then a cond whose dearer branch has one more
    y, _ = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)
    return jax.lax.cond(y.sum() > 0, lambda: y @ w, lambda: y)

  x, w = jax.ShapeDtypeStruct((4, 8), "float32"), jax.ShapeDtypeStruct((8, 8), "float32")
  assert flops.function_flops(f, x, w) == 6 * 2 * 4 * 8 * 8
  with pytest.raises(ValueError, match="while loop"):
    flops.function_flops(lambda x, w: jax.lax.while_loop(lambda c: c.sum() < 1, lambda c: c @ w, x), x, w)


def test_mfu_uses_the_bf16_dense_peak_of_the_device():
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
  assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert flops.peak_flops("NVIDIA H200") == 989.4e12
  assert flops.peak_flops("TPU v5 lite") == 197e12
  assert flops.peak_flops("cpu (AMD EPYC, 2 cores)") is None
  assert flops.mfu(10_000.0, 3 * 1.11e9, 989.4e12) == pytest.approx(3.33e13 / 989.4e12)
  assert flops.mfu(10_000.0, 1e9, 1e12, num_devices=4) == pytest.approx(1e13 / 4e12)
  with pytest.raises(ValueError):
    flops.mfu(1.0, 1.0, 0.0)


def test_train_step_does_not_recompile():
  """The jitted step compiles once: warm-up and repeated timed calls reuse the program."""
  runner = jax_impl.TrainStepRunner(common.SIZES["tiny"])
  runner.setup()
  for _ in range(3):
    m = runner.run()
    assert m["seconds"] > 0 and m["units"] == common.SIZES["tiny"].batch * common.SIZES["tiny"].steps
  assert runner.compiled_variants() == 1
  assert int(runner.state.step) == 4 * common.SIZES["tiny"].steps


def test_without_torch_the_jax_rows_still_run(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(suite, "torch_status", lambda: (False, "torch is not installed (test)"))
  out_json, md = tmp_path / "r.json", tmp_path / "B.md"
  assert cli.main(["--tiny", "--workloads", "train_step", "--out-json", str(out_json), "--out-md", str(md)]) == 0
  rows = json.loads(out_json.read_text())["cpu"]["rows"]
  assert [(r["workload"], r["implementation"]) for r in rows] == [("train_step", "jax")]
  assert rows[0]["value"] > 0 and rows[0]["ratio_vs"] is None
  assert "PyTorch rows (torch_eager, torch_tuned): torch is not installed (test)" in capsys.readouterr().out
  assert "Skipped: PyTorch rows" in md.read_text()


def _fake_rows(platform_value: float):
  return [{"workload": "train_step", "implementation": i, "mode": "m", "device": "d", "value": v, "unit": "images/s",
           "ratio_vs": None, "details": {"model": "resnet18", "batch": 8}}
          for i, v in (("jax", platform_value), ("torch_eager", 50.0))]


def test_markdown_sections_per_platform(tmp_path):
  md = tmp_path / "B.md"
  md.write_text("# Benchmarks\n\nIntro.\n")
  meta = {"platform": "cpu", "size": "quick", "command": "python -m benchmarks --quick", "date": "2026-11-24",
          "device": "cpu", "versions": {"jax": "x"}, "size_description": "Size."}
  report.write_markdown(md, report.markdown_section(meta, _fake_rows(100.0)), "cpu")
  report.write_markdown(md, report.markdown_section({**meta, "platform": "gpu"}, _fake_rows(900.0)), "gpu")
  report.write_markdown(md, report.markdown_section(meta, _fake_rows(120.0)), "cpu")  # replaces the cpu section
  text = md.read_text()
  assert text.startswith("# Benchmarks\n\nIntro.\n")
  assert text.count("<!-- bench:cpu:start -->") == 1 and text.count("<!-- bench:gpu:start -->") == 1
  assert "| 120.0 |" in text and "| 100.0 |" not in text and "| 900.0 |" in text
  assert text.index("bench:cpu:start") < text.index("bench:gpu:start")


def test_json_keeps_other_platforms(tmp_path):
  path = tmp_path / "r.json"
  report.write_json(path, {"platform": "gpu"}, _fake_rows(900.0))
  report.write_json(path, {"platform": "cpu"}, _fake_rows(100.0))
  data = json.loads(path.read_text())
  assert set(data) == {"cpu", "gpu"} and data["gpu"]["rows"][0]["value"] == 900.0


def test_speed_ratio_direction():
  assert suite.speed_ratio(200.0, 100.0, "train_step") == 2.0  # throughput: jax twice as fast
  assert suite.speed_ratio(10.0, 30.0, "e2e_em") == 3.0  # wall time: jax three times as fast
  assert suite.speed_ratio(1.2, 1.1, "cmim_step") is None
  assert suite.speed_ratio(None, 1.0, "train_step") is None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (the bench extra)")
@pytest.mark.parametrize("name,width", [("resnet18", None), ("resnet18", 16), ("small_cnn", None)])
def test_torch_twins_have_the_same_parameter_count(name, width):
  from benchmarks import torch_models  # noqa: PLC0415

  flax_model = models.get(name, 10, **({} if width is None else {"width": width}))
  shapes = jax.eval_shape(lambda x: flax_model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), "float32"))
  assert torch_models.count_params(torch_models.get(name, 10, width=width)) == models.count_params(shapes["params"])


def test_end_to_end_row_is_the_median_repeat_with_its_phase_times():
  samples = [{"seconds": s, "craft_s": s / 2, "victim_s": s / 2, "details": {"craft_s": s / 2, "tag": s}}
             for s in (60.0, 50.0, 70.0)]
  value, extra = suite.summarize("e2e_em", samples)
  assert value == 60.0 and extra["repeats"] == 3
  assert extra["tag"] == 60.0 and extra["craft_s"] == 30.0  # the details of the median repeat
  assert extra["per_repeat"]["seconds"] == [60.0, 50.0, 70.0]
  assert "Repeats, s: 60.0 (craft 30.0 + victim 30.0); 50.0" in report._e2e_repeats(extra)


def test_clear_compiled_makes_the_next_run_compile_again():
  seen = []

  def on_duration(event, duration, **_):
    del duration
    if event == jax_impl.COMPILE_EVENT:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  try:
    from jaxprotect import train  # noqa: PLC0415

    def run():  # a module-level program (jax.jit) of the engine
      train._epoch_rows(jax.random.PRNGKey(0), np.int32(0), 16, 4).block_until_ready()

    run()
    before = len(seen)
    run()
    assert len(seen) == before  # compiled once: nothing new
    jax_impl.clear_compiled()
    run()
    assert len(seen) > before
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)


def test_privacy_speed_study_quick_runs_every_workload(tmp_path):
  """``benchmarks.studies.privacy_speed --quick``: a row per workload (shadow models in both
  chunkings, DM, DC) with both sides' positive, finite rates, also written as JSON lines."""
  pytest.importorskip("torch")
  from benchmarks.studies import privacy_speed  # noqa: PLC0415

  out = tmp_path / "rows.jsonl"
  # one PyTorch thread: its default threads spin on an oversubscribed CPU (the rate is what is checked, not its value)
  rows = privacy_speed.main(["--quick", "--torch-threads", "1", "--out", str(out)])
  assert [(r["workload"], r["variant"]) for r in rows] == [
      ("shadow", "all_models_vmapped"), ("shadow", "1_per_chunk"), ("dm", "jitted_iteration"),
      ("dc", "jitted_iteration")]
  assert [json.loads(line) for line in out.read_text().splitlines()] == [common.jsonable(r) for r in rows]
  for r in rows:
    for key in ("unit", "jax_rate", "torch_rate", "ratio_median", "repeats", "warmup_s", "jax_version", "torch_version",
                "torch_threads", "cpu_count", "date", "load_average_before", "load_average_after"):
      assert key in r, (key, r)
    assert r["unit"] == ("models/hour" if r["workload"] == "shadow" else "iterations/s")
    for key in ("jax_rate", "torch_rate", "ratio_median"):
      assert np.isfinite(r[key]) and r[key] > 0, (key, r)
    assert r["ratio_median"] == pytest.approx(r["jax_rate"] / r["torch_rate"])  # one round: the rates' ratio
  assert [r["models_per_chunk"] for r in rows[:2]] == [2, 1]
  assert rows[3]["outer_loop"] == 2 and rows[3]["inner_loop"] == 1


def test_privacy_speed_study_splits_shadow_models_over_devices():
  """``--devices 2``: the jaxprotect shadow models train on a 2-device mesh (the model axis
  split over it; a chunk of 1 padded to 2) and the rows say so."""
  pytest.importorskip("torch")
  from benchmarks.studies import privacy_speed  # noqa: PLC0415

  rows = privacy_speed.main(["--quick", "--workloads", "shadow", "--devices", "2", "--torch-threads", "1"])
  assert [(r["variant"], r["models_per_chunk"], r["devices"]) for r in rows] == [
      ("all_models_vmapped", 2, 2), ("1_per_chunk", 1, 2)]
  for r in rows:
    assert np.isfinite(r["jax_rate"]) and r["jax_rate"] > 0, r
