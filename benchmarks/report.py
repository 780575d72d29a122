"""Output of the benchmark: the table, ``results.json`` and the generated section of
``docs/BENCHMARKS.md``.

``results.json`` maps a platform (``cpu``, ``gpu``, ``tpu``) to ``{"metadata": ...,
"rows": [...]}``; a run replaces its own platform's entry and keeps the others. In the
Markdown file a run replaces the text between ``<!-- bench:<platform>:start -->`` and
``<!-- bench:<platform>:end -->`` (appending the section when the markers are absent)
and leaves everything else as it was.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from jaxprotect import config as config_lib
from benchmarks import common
from benchmarks.suite import JAX_IMPLS, REFERENCES, WORKLOADS

LABELS = {"jax": "jaxprotect (f32)", "jax_bf16": "jaxprotect (bf16)", "torch_eager": "PyTorch eager",
          "torch_tuned": "PyTorch tuned"}


def markers(platform: str) -> tuple[str, str]:
  return f"<!-- bench:{platform}:start -->", f"<!-- bench:{platform}:end -->"


def fmt(value: float | None, unit: str) -> str:
  if value is None:
    return "n/a"
  if unit == "x":
    return f"{value:.2f}x"
  if unit == "s":
    return f"{value:.1f}"
  return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _e2e_repeats(d: dict[str, Any]) -> str:
  """`` Repeats (s): ...`` of an end-to-end row timed more than once (the phase times above are
  those of the median repeat)."""
  per = d.get("per_repeat")
  if not isinstance(per, dict) or len(per.get("seconds", [])) < 2:
    return ""
  cells = [f"{t:.1f} (craft {c:.1f} + victim {v:.1f})"
           for t, c, v in zip(per["seconds"], per.get("craft_s", []), per.get("victim_s", []), strict=False)]
  compiles = per.get("compiles")
  return (f" Repeats, s: {'; '.join(cells)}; the phase times above are the median repeat's"
          + (f"; compiles per repeat: {', '.join(str(n) for n in compiles)}" if compiles else "") + ".")


def _workload_cell(workload: str, rows: list[dict[str, Any]]) -> str:
  det = next((r["details"] for r in rows if r["value"] is not None), {})
  parts = [workload]
  if det.get("model"):
    parts.append(det["model"])
  if workload == "e2e_em":
    parts.append(f"{det.get('train_examples', '?')} images")
  elif det.get("batch"):
    parts.append(f"batch {det['batch']}")
  if workload.endswith("_pgd") and det.get("pgd_steps"):
    parts.append(f"{det['pgd_steps']} steps")
  return ", ".join(str(p) for p in parts)


def _value_cell(row: dict[str, Any], unit: str) -> str:
  mfu = row["details"].get("mfu")
  return fmt(row["value"], unit) + ("" if mfu is None else f" ({100 * mfu:.1f}% MFU)")


def table(rows: list[dict[str, Any]]) -> str:
  """One Markdown row per workload: values per implementation and jaxprotect's speed
  ratios over PyTorch eager and tuned."""
  impls = [i for i in (*JAX_IMPLS, *REFERENCES) if any(r["implementation"] == i for r in rows)]
  jax_impls = [i for i in impls if i in JAX_IMPLS]
  refs = [i for i in impls if i in REFERENCES]
  head = ["workload", "unit", *(LABELS[i] for i in impls)]
  head += [f"{LABELS[j].split(' ')[0] if len(jax_impls) == 1 else LABELS[j]} / {LABELS[r].replace('PyTorch ', '')}"
           for j in jax_impls for r in refs]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for workload in WORKLOADS:
    wrows = [r for r in rows if r["workload"] == workload]
    if not wrows:
      continue
    unit = wrows[0]["unit"]
    by = {r["implementation"]: r for r in wrows}
    cells = [_workload_cell(workload, wrows), unit if unit != "x" else "CMIM / CE time"]
    cells += [_value_cell(by[i], unit) if i in by else "" for i in impls]
    for j in jax_impls:
      for r in refs:
        ratio = ((by.get(j) or {}).get("ratio_vs") or {}).get(r)
        cells.append("-" if unit == "x" else ("n/a" if ratio is None else f"{ratio:.2f}"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
  """Per-row remarks: modes, compile notes, failures, end-to-end and CMIM details."""
  out = []
  modes = {}
  for r in rows:
    modes.setdefault(r["implementation"], set()).add(r["mode"])
  for impl, ms in modes.items():
    for m in sorted(ms):
      if not m.startswith("n/a"):
        out.append(f"{LABELS[impl]}: {m}.")
  mfu_noted: set[str] = set()
  for r in rows:
    d, who = r["details"], f"{r['workload']} / {LABELS[r['implementation']]}"
    if r["value"] is None:
      out.append(f"{who}: n/a ({d.get('error', 'not run')}).")
      continue
    if r["workload"] == "e2e_em":
      out.append(f"{who}: craft {d.get('craft_s', 0):.1f} s ({d.get('iterations')} iterations, "
                 f"{'stopped by the rule' if d.get('stopped_early') else 'capped'}, perturbed-train accuracy "
                 f"{100 * d.get('perturbed_train_accuracy', 0):.1f}%), victim {d.get('victim_s', 0):.1f} s "
                 f"({d.get('victim_epochs')} epochs, test accuracy {100 * d.get('victim_test_accuracy', 0):.1f}%)"
                 + (f"; {d['compiles']} XLA compiles ({d['craft_compiles']} craft, {d['victim_compiles']} victim) "
                    f"took {d['compile_s']:.1f} s of it" if "craft_compiles" in d else
                    f"; {d['compiles']} XLA compiles took {d['compile_s']:.1f} s of it" if "compiles" in d else "")
                 + "." + _e2e_repeats(d))
    if r["workload"] == "cmim_step":
      out.append(f"{who}: CE step {d.get('ce_ms', 0):.1f} ms, CMIM step {d.get('cmim_ms', 0):.1f} ms.")
    if "mfu" in d and r["workload"] not in mfu_noted:
      mfu_noted.add(r["workload"])
      per = "image" if r["unit"] == "images/s" else "image-step"
      out.append(f"{r['workload']}: MFU counts {d['forward_passes']} x {d['forward_flops'] / 1e9:.4g} GFLOP "
                 f"(the forward pass) per {per} against a bf16 dense peak of {d['peak_flops'] / 1e12:.4g} TFLOP/s "
                 "per device.")
    if d.get("top_ops"):
      ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in d["top_ops"][:6])
      out.append(f"{who}: time by kind of XLA operation in one profiled repeat ({d['profile_dir']}): {ops}.")
    if r["workload"] == "train_step" and "compiled_variants" in d:
      out.append(f"{who}: {d['compiled_variants']} compiled program(s) after warm-up and "
                 f"{d.get('repeats', 0)} timed repeats (no recompilation).")
  return out


def markdown_section(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
  """The generated section (markers included)."""
  start, end = markers(meta["platform"])
  load = meta.get("load_average_before"), meta.get("load_average_after")
  lines = [
      start,
      f"## jaxprotect vs PyTorch: {meta['platform'].upper()} ({meta['size']} size)",
      "",
      "Generated by `python -m benchmarks`; rerunning the command below replaces this section.",
      "",
      f"Command: `{meta['command']}`",
      f"Date: {meta['date']}. Device: {meta['device']}; PyTorch on {meta.get('torch_device') or 'n/a'}.",
      f"Versions: jax {meta['versions'].get('jax')}, jaxlib {meta['versions'].get('jaxlib')}, "
      f"flax {meta['versions'].get('flax')}, optax {meta['versions'].get('optax')}, "
      f"torch {meta['versions'].get('torch') or 'not installed'}, Python {meta['versions'].get('python')}.",
  ]
  if load[0] is not None:
    lines.append(f"Load average (1/5/15 min) before: {load[0]}, after: {load[1]} "
                 f"({meta.get('cpu_count')} cores; the machine is shared).")
  lines += ["", meta["size_description"], "", table(rows), "",
            "Ratios are jaxprotect's speed over PyTorch's (> 1: jaxprotect is faster): throughput over "
            "throughput, or PyTorch's wall time over jaxprotect's for `e2e_em`. `cmim_step` is itself a "
            "ratio (the cost of CMIM over CE within one implementation), so it has no cross ratio. "
            "Each value is the median of the timed repeats, which are interleaved across implementations; "
            "compile and warm-up are excluded except in `e2e_em` (wall time of the whole pipeline; every "
            "jaxprotect repeat starts from empty compilation caches, as a fresh process would)."
            + (" MFU: model FLOPs (convolutions and matrix products at full kernel size; forward passes per "
               "unit as noted below) per second over the device's bf16 dense peak."
               if any("mfu" in r["details"] for r in rows) else ""), ""]
  lines += [f"- {n}" for n in notes(rows)]
  if meta.get("skipped"):
    lines += [f"- Skipped: {s}" for s in meta["skipped"]]
  lines.append(end)
  return "\n".join(lines) + "\n"


def write_markdown(path: os.PathLike | str, section: str, platform: str) -> None:
  """Replaces (or appends) the platform's generated section of ``path``."""
  path = pathlib.Path(path)
  start, end = markers(platform)
  text = path.read_text() if path.exists() else "# Benchmarks\n"
  i, j = text.find(start), text.find(end)
  if i >= 0 and j > i:
    text = text[:i] + section.rstrip("\n") + text[j + len(end):]
  else:
    text = text.rstrip("\n") + "\n\n" + section
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_json(path: os.PathLike | str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
  """Stores this platform's metadata and rows in ``path``, keeping other platforms' entries."""
  path = pathlib.Path(path)
  everything: dict[str, Any] = {}
  if path.exists():
    try:
      everything = json.loads(path.read_text())
    except json.JSONDecodeError:
      everything = {}
    if not isinstance(everything, dict):
      everything = {}
  everything[meta["platform"]] = common.jsonable({"metadata": meta, "rows": rows})
  config_lib.write_json_atomic(path, everything)
