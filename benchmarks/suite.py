"""Runs the workloads on every implementation and turns measurements into rows.

Protocol of a runner (``jax_impl`` and ``torch_impl``): ``mode`` (a description),
``setup()`` (build, compile, warm up; untimed), ``run()`` (one timed repeat, returning a
dict of measurements) and ``details()`` (what the row records besides the value).
Within a workload the implementations are set up first, then their timed repeats are
interleaved (jax, torch eager, torch tuned, jax, ...), so that load from other processes
on a shared machine falls on all of them alike; the median repeat is reported.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import pathlib
from typing import Any

import jax

from benchmarks import common, flops, jax_impl, profile
from benchmarks.common import Size

# workload -> (unit, higher is better, description)
WORKLOADS: dict[str, tuple[str, bool | None, str]] = {
    "train_step": ("images/s", True, "victim training step: SGD momentum 0.9, wd 5e-4, CE"),
    "em_pgd": ("image-steps/s", True, "EM PGD pass over a training set (CE, surrogate in eval mode)"),
    "mi_ue_pgd": ("image-steps/s", True, "MI-UE PGD pass (feature contrastive loss, t = 0.1)"),
    "e2e_em": ("s", False, "EM sample-wise craft (10 train + 20 PGD steps per iteration, stop rule, capped) "
                           "+ victim training"),
    "cmim_step": ("x", None, "CMIM step time / CE step time (6 temperatures, EMA centroids)"),
}
JAX_IMPLS = {"jax": "float32", "jax_bf16": "bfloat16"}
TORCH_IMPLS = ("torch_eager", "torch_tuned")
IMPLS = (*JAX_IMPLS, *TORCH_IMPLS)
REFERENCES = TORCH_IMPLS  # ratios are taken against these


@dataclasses.dataclass
class Options:
  """How to run: workloads, implementations, size and the torch.compile policy.

  ``torch_compile``: ``"all"``, ``"none"`` or a comma-separated list of workloads whose
  tuned PyTorch runner compiles its model. ``profile_dir``: where the jaxprotect rows of
  the step workloads keep a profile of one extra, untimed repeat (None: no profiles).
  ``peak_flops``: the bf16 dense peak FLOP/s per device for the model-FLOPs utilisation
  (None: looked up by device name; devices not in ``flops.BF16_PEAK_FLOPS`` get none).
  """

  size: Size
  workloads: tuple[str, ...] = tuple(WORKLOADS)
  impls: tuple[str, ...] = ("jax", "torch_eager", "torch_tuned")
  torch_compile: str = "all"
  profile_dir: str | None = None
  peak_flops: float | None = None

  def compiles(self, workload: str) -> bool:
    if self.torch_compile == "all":
      return True
    if self.torch_compile == "none":
      return False
    return workload in self.torch_compile.split(",")


def torch_status() -> tuple[bool, str]:
  """(importable, reason when not)."""
  if importlib.util.find_spec("torch") is None:
    return False, "torch is not installed (install the bench extra: pip install -e '.[bench]')"
  try:
    import torch  # noqa: F401, PLC0415
  except Exception as e:  # noqa: BLE001 -- a broken install is reported, not raised
    return False, f"torch does not import: {common.short_reason(e)}"
  return True, ""


def jax_device() -> str:
  d = jax.devices()[0]
  if d.platform == "cpu":
    return f"cpu ({common.cpu_name()})"
  return f"{d.device_kind} x{len(jax.devices())}" if len(jax.devices()) > 1 else d.device_kind


def make_runner(impl: str, workload: str, opts: Options):
  if impl in JAX_IMPLS:
    return jax_impl.make_runner(workload, opts.size, JAX_IMPLS[impl])
  from benchmarks import torch_impl  # noqa: PLC0415 -- optional dependency

  compiles = opts.compiles(workload)
  return torch_impl.make_runner(workload, opts.size, tuned=impl == "torch_tuned", compile_model=compiles,
                                compile_skip_reason="" if compiles else f"--torch-compile={opts.torch_compile}")


def _device_of(impl: str) -> str:
  if impl in JAX_IMPLS:
    return jax_device()
  from benchmarks import torch_impl  # noqa: PLC0415

  return torch_impl.device_name()


def summarize(workload: str, samples: list[dict[str, float]]) -> tuple[float, dict[str, Any]]:
  """The row's value from the timed repeats, and the per-repeat figures."""
  if workload == "e2e_em":  # per-repeat phase times and compiles; the row's details are those of the median repeat
    order = sorted(range(len(samples)), key=lambda i: samples[i]["seconds"])
    median = samples[order[(len(order) - 1) // 2]]
    per = {k: [s[k] for s in samples] for k in samples[0] if k != "details"}
    return common.median([s["seconds"] for s in samples]), {
        "repeats": len(samples), "per_repeat": per, **median.get("details", {})}
  if workload == "cmim_step":
    ce, cmim = common.median([s["ce_s"] for s in samples]), common.median([s["cmim_s"] for s in samples])
    return cmim / ce, {"ce_ms": 1e3 * ce, "cmim_ms": 1e3 * cmim, "repeats": len(samples)}
  rates = [s["units"] / s["seconds"] for s in samples]
  return common.median(rates), {"repeats": len(samples), "per_repeat": rates}


def speed_ratio(value: float | None, other: float | None, workload: str) -> float | None:
  """How many times faster ``value``'s implementation is than ``other``'s (> 1: faster):
  a throughput over a throughput, or the other's time over this one's."""
  higher = WORKLOADS[workload][1]
  if value is None or other is None or higher is None or value <= 0 or other <= 0:
    return None
  return value / other if higher else other / value


def add_mfu(workload: str, rows: list[dict[str, Any]], opts: Options) -> None:
  """Adds the model FLOPs per unit of a step workload to its rows' details and, where the
  device's peak is known (or given), the model-FLOPs utilisation."""
  passes = flops.FORWARD_PASSES.get(workload)
  if passes is None:
    return
  model = jax_impl.build_model(opts.size.model, opts.size.width, "float32")
  forward = flops.forward_flops(model, common.IMAGE_SHAPE_HWC)
  per_unit = passes * forward
  for row in rows:
    if row["value"] is None:
      continue
    d = row["details"]
    d.update(forward_flops=forward, forward_passes=passes, model_flops_per_unit=per_unit)
    peak = opts.peak_flops or flops.peak_flops(row["device"])
    if peak:
      devices = len(jax.devices()) if row["implementation"] in JAX_IMPLS else 1
      d.update(peak_flops=peak, peak_devices=devices, mfu=flops.mfu(row["value"], per_unit, peak, devices))


def run_workload(workload: str, opts: Options, log=print) -> list[dict[str, Any]]:
  """Rows of one workload for every implementation of ``opts`` (failures become n/a rows)."""
  unit = WORKLOADS[workload][0]
  runners, failed = {}, {}
  for impl in opts.impls:
    try:
      runner = make_runner(impl, workload, opts)
      log(f"  {workload} / {impl}: set-up and warm-up ...")
      runner.setup()
      runners[impl] = runner
    except Exception as e:  # noqa: BLE001 -- one failing implementation must not stop the others
      failed[impl] = common.short_reason(e)
      log(f"  {workload} / {impl}: FAILED in set-up: {failed[impl]}")
  samples: dict[str, list[dict[str, float]]] = {impl: [] for impl in runners}
  repeats = opts.size.e2e_repeats if workload == "e2e_em" else opts.size.repeats
  for _ in range(repeats):
    for impl in list(runners):
      try:
        samples[impl].append(runners[impl].run())
      except Exception as e:  # noqa: BLE001
        failed[impl] = common.short_reason(e)
        log(f"  {workload} / {impl}: FAILED: {failed[impl]}")
        del runners[impl]
  profiles = {}
  if opts.profile_dir and workload != "e2e_em":  # e2e_em's trace would hold its whole pipeline
    for impl in [i for i in runners if i in JAX_IMPLS]:
      out = pathlib.Path(opts.profile_dir) / f"{workload}-{impl}"
      try:
        trace_file = profile.trace(runners[impl].run, out)
        profiles[impl] = {"profile_dir": str(out), "top_ops": profile.top_ops(trace_file)}
      except Exception as e:  # noqa: BLE001 -- a profile is extra; its failure is recorded
        profiles[impl] = {"profile_error": common.short_reason(e)}
      log(f"  {workload} / {impl}: profile in {out}")
  rows = []
  for impl in opts.impls:
    row = {"workload": workload, "implementation": impl, "mode": "", "device": "", "value": None, "unit": unit,
           "ratio_vs": None, "details": {}}
    try:
      row["device"] = _device_of(impl)
    except Exception:  # noqa: BLE001
      row["device"] = "?"
    if impl in runners:
      value, extra = summarize(workload, samples[impl])
      row.update(mode=runners[impl].mode, value=value,
                 details={**runners[impl].details(), **extra, **profiles.get(impl, {})})
    else:
      row.update(mode=f"n/a: {failed.get(impl, 'not run')}", details={"error": failed.get(impl, "not run")})
    rows.append(row)
    shown = "n/a" if row["value"] is None else f"{row['value']:.4g}"
    log(f"  {workload} / {impl}: {shown} {unit}")
  add_mfu(workload, rows, opts)
  load = common.load_average()
  for row in rows:
    row["details"]["load_average_after"] = load
  by_impl = {r["implementation"]: r["value"] for r in rows}
  for row in rows:
    ratios = {ref: speed_ratio(row["value"], by_impl.get(ref), workload)
              for ref in REFERENCES if ref in by_impl and ref != row["implementation"]}
    ratios = {k: v for k, v in ratios.items() if v is not None}
    row["ratio_vs"] = ratios or None
  del runners
  gc.collect()
  return rows
