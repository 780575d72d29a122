"""The scale report's bookkeeping, without compiling (CI: no libtpu, no CUDA plugin needed)."""

import pytest

from benchmarks import scale


def test_gpu_topologies_are_parsed_and_checked():
  assert scale.parse_topologies("h100:8,v5e:2x2@32", 128) == [("h100:8", 128), ("v5e:2x2", 32)]
  assert scale.is_gpu("h100:8") and not scale.is_gpu("v5e:2x2")
  assert scale.chip_of("h100:8").hbm_bytes == 84_929_347_584
  with pytest.raises(ValueError, match="h100:N"):
    scale.chip_of("h100:1x1x8")
  with pytest.raises(ValueError, match="unknown chip family"):
    scale.chip_of("a100:8")
  assert scale.GPU_TARGET_CONFIGS["h100"].read_text().count("H100") >= 1


def test_gpu_and_tpu_topologies_are_compiled_in_separate_runs():
  with pytest.raises(SystemExit, match="run of their own"):
    scale.main(["--topologies", "h100:8,v5e:2x2", "--out-json", "", "--out-md", ""])


def test_merge_keeps_what_this_run_does_not_compile_again():
  saved = {"metadata": {"command": "python -m benchmarks.scale", "date": "2026-11-30 04:12 UTC", "libtpu": "0.0.42.1"},
           "rows": [{"topology": "v5e:2x2", "program": "train_step"}, {"topology": "v5e:2x2", "program": "em_pass"},
                    {"topology": "h100:8", "program": "train_step"}],
           "max_batch_search": [{"topology": "v5e:2x2"}], "gradient_sum_dtype": {"topology": "v5e:2x2"}}
  kept = scale.kept_results(saved, ["h100:8", "v5e:2x2"], ["train_step"], searched=[])
  assert kept["rows"] == [{"topology": "v5e:2x2", "program": "em_pass"}]
  assert kept["searches"] == [{"topology": "v5e:2x2"}] and kept["gradient_sum_dtype"] == {"topology": "v5e:2x2"}
  assert kept["merged_from"][0]["date"] == "2026-11-30 04:12 UTC"
  again = scale.kept_results({**saved, "metadata": {"command": "x", "merged_from": kept["merged_from"]}},
                             ["v5e:2x2"], ["em_pass"], searched=["v5e:2x2"])
  assert [m["date"] for m in again["merged_from"]] == ["2026-11-30 04:12 UTC", None] and again["searches"] == []


def test_a_gpu_row_gets_the_compute_side_of_its_model_flops():
  row = {"topology": "h100:8", "flops_per_chip": None, "bytes_accessed_per_chip": None,
         "model_flops_per_chip": 989e9}
  assert scale._roofline_cell(row) == "compute 1.0 ms (model FLOPs; memory side unknown)"
