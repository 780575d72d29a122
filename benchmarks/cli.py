"""``python -m benchmarks``: the side-by-side benchmark, jaxprotect vs PyTorch.

  python -m benchmarks [--quick | --tiny] [--workloads a,b] [--impl jax,torch_eager,torch_tuned]
      [--torch-compile all|none|w1,w2] [--out-json benchmarks/results.json] [--out-md docs/BENCHMARKS.md]

Run from the repository root (``benchmarks`` is not part of the installed package).
Prints the table, writes the rows to ``--out-json`` and the platform's generated section
of ``--out-md`` (an empty string skips a file; the defaults are the repository's files
wherever the command runs). Without PyTorch the JAX rows still run and the output says
that the PyTorch rows were skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform as platform_lib
import shlex
import sys
import time
from importlib import metadata as importlib_metadata
from typing import Any

import jax

from benchmarks import common, jax_impl, report, suite
from benchmarks.common import SIZES, Size

DEFAULT_COMPILE = {"full": "all", "quick": "train_step", "tiny": "none"}
REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results.json"
DEFAULT_MD = REPO / "docs" / "BENCHMARKS.md"


def _version(dist: str) -> str | None:
  try:
    return importlib_metadata.version(dist)
  except importlib_metadata.PackageNotFoundError:
    return None


def _command(argv: list[str]) -> str:
  exe = sys.executable
  try:
    rel = os.path.relpath(exe)
    exe = rel if not rel.startswith("..") else exe
  except ValueError:
    pass
  return shlex.join([exe, "-m", "benchmarks", *argv])


def _display(path: pathlib.Path) -> str:
  """``path`` relative to the working directory when below it (``benchmarks/results.json``)."""
  try:
    return str(path.relative_to(pathlib.Path.cwd()))
  except ValueError:
    return str(path)


def describe_size(size: Size, torch_compile: str) -> str:
  s, e = size, size.e2e
  width = "standard width 64" if s.width is None else f"width {s.width}, {s.width / 64:g} of the standard 64"
  model = "ResNet-18, CIFAR stem" if s.model == "resnet18" else "small CNN"
  e_model = ("ResNet-18, CIFAR stem" if e.model == "resnet18" else "small CNN") + (
      "" if e.width is None else f" at width {e.width}")
  return (f"Size `{s.name}`: synthetic CIFAR-shaped data (uint8 3x32x32, 10 classes, the same arrays on both sides); "
          f"step workloads on {model} ({width}), batch {s.batch}; a training repeat is one epoch of {s.steps} "
          f"steps, a PGD repeat one pass over {s.pgd_examples} images with {s.pgd_steps} PGD steps per batch; "
          f"{s.repeats} timed repeats after the warm-up. End to end: {e_model}, {e.train_examples} training / "
          f"{e.test_examples} test images, surrogate batch {e.batch}, PGD batch {e.pgd_batch}, {e.train_steps} "
          f"train + {e.pgd_steps} PGD steps per iteration, "
          + (f"stop at error < {e.stop_error} or {e.max_iterations} iterations" if e.stop_error else
             f"{e.max_iterations} iterations (stop rule off: the same work on both sides)")
          + f", then a victim for {e.victim_epochs} epochs at batch {e.victim_batch} "
          f"(crop4+flip), the median of {s.e2e_repeats} whole-pipeline repeat{'s' if s.e2e_repeats > 1 else ''}. "
          f"torch.compile policy: `--torch-compile={torch_compile}`.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", action="store_const", const="quick", dest="size",
                 help="CPU-friendly sizes (ResNet-18 at width 16, batch 64; end to end on 2,048 images with a "
                      "60-epoch victim)")
  g.add_argument("--tiny", action="store_const", const="tiny", dest="size", help="seconds-long sizes for tests")
  g.add_argument("--size", choices=sorted(SIZES), dest="size")
  p.add_argument("--workloads", default=",".join(suite.WORKLOADS), help=f"of {','.join(suite.WORKLOADS)}")
  p.add_argument("--impl", default="jax,torch_eager,torch_tuned", help=f"of {','.join(suite.IMPLS)}")
  p.add_argument("--torch-compile", default=None,
                 help="workloads whose tuned PyTorch model is torch.compile'd: all, none or a list "
                      "(default: all at full size, train_step with --quick, none with --tiny)")
  p.add_argument("--batch", type=int, help="override the batch of the step workloads")
  p.add_argument("--steps", type=int, help="override the training steps per timed repeat")
  p.add_argument("--repeats", type=int, help="override the number of timed repeats (of every workload)")
  p.add_argument("--e2e-iterations", type=int, help="override the cap on outer crafting iterations")
  p.add_argument("--e2e-victim-epochs", type=int, help="override the victim's epochs")
  p.add_argument("--profile", metavar="DIR",
                 help="keep a jax.profiler trace of one extra repeat of each jaxprotect step workload under DIR "
                      "and list its most expensive XLA operations")
  p.add_argument("--peak-tflops", type=float,
                 help="bf16 dense peak per device in TFLOP/s, for the model-FLOPs utilisation (default: looked up "
                      "by device name; unknown devices, CPUs among them, get no MFU)")
  p.add_argument("--out-json", default=_display(DEFAULT_JSON), help="the rows, per platform (default: %(default)s)")
  p.add_argument("--out-md", default=_display(DEFAULT_MD),
                 help="the Markdown file whose generated section for this platform is replaced (default: %(default)s)")
  p.set_defaults(size="full")
  return p.parse_args(argv)


def build_options(a: argparse.Namespace) -> suite.Options:
  size = SIZES[a.size]
  over = {k: v for k, v in (("batch", a.batch), ("steps", a.steps), ("repeats", a.repeats),
                            ("e2e_repeats", a.repeats)) if v is not None}
  e_over = {k: v for k, v in (("max_iterations", a.e2e_iterations), ("victim_epochs", a.e2e_victim_epochs))
            if v is not None}
  if e_over:
    over["e2e"] = dataclasses.replace(size.e2e, **e_over)
  if "batch" in over:  # keep the PGD set a whole number of batches
    over["pgd_examples"] = max(size.pgd_examples // size.batch, 1) * over["batch"]
  size = dataclasses.replace(size, **over)
  workloads = tuple(w for w in a.workloads.split(",") if w)
  impls = tuple(i for i in a.impl.split(",") if i)
  for w in workloads:
    if w not in suite.WORKLOADS:
      raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(suite.WORKLOADS)}")
  for i in impls:
    if i not in suite.IMPLS:
      raise SystemExit(f"unknown implementation {i!r}; choose from {', '.join(suite.IMPLS)}")
  if a.peak_tflops is not None and not a.peak_tflops > 0:
    raise SystemExit(f"--peak-tflops must be positive, got {a.peak_tflops}")
  return suite.Options(size=size, workloads=workloads, impls=impls,
                       torch_compile=a.torch_compile or DEFAULT_COMPILE[size.name], profile_dir=a.profile,
                       peak_flops=None if a.peak_tflops is None else a.peak_tflops * 1e12)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  a = parse_args(argv)
  opts = build_options(a)
  t_start = time.perf_counter()
  load_before = common.load_average()
  skipped: list[str] = []

  have_torch, why = suite.torch_status()
  if not have_torch and any(i in suite.TORCH_IMPLS for i in opts.impls):
    skipped.append(f"PyTorch rows ({', '.join(i for i in opts.impls if i in suite.TORCH_IMPLS)}): {why}")
    opts.impls = tuple(i for i in opts.impls if i not in suite.TORCH_IMPLS)
  if "cmim_step" in opts.workloads and not jax_impl.cmim_available():
    skipped.append("cmim_step: jaxprotect.losses has no cmim_loss / update_centroids yet")
    opts.workloads = tuple(w for w in opts.workloads if w != "cmim_step")

  torch_device, torch_threads = None, None
  if have_torch:
    from benchmarks import torch_impl  # noqa: PLC0415

    torch_device, torch_threads = torch_impl.device_name(), torch_impl.torch.get_num_threads()
  print(f"benchmarks: size {opts.size.name}, workloads {','.join(opts.workloads)}, "
        f"implementations {','.join(opts.impls)}, jax on {suite.jax_device()}"
        + (f", torch on {torch_device}" if torch_device else "") + f"; load average {load_before}", flush=True)
  for s in skipped:
    print(f"  skipped: {s}", flush=True)

  rows: list[dict[str, Any]] = []
  workload_s = {}
  for workload in opts.workloads:
    print(f"[{workload}] {suite.WORKLOADS[workload][2]}", flush=True)
    t0 = time.perf_counter()
    rows += suite.run_workload(workload, opts, log=lambda m: print(m, flush=True))
    workload_s[workload] = time.perf_counter() - t0
    print(f"[{workload}] {workload_s[workload]:.0f} s, load average {common.load_average()}", flush=True)

  meta = {
      "date": datetime.date.today().isoformat(),
      "platform": jax.default_backend(),
      "device": suite.jax_device(),
      "num_devices": len(jax.devices()),
      "cpu": common.cpu_name(),
      "cpu_count": os.cpu_count(),
      "torch_device": torch_device,
      "torch_threads": torch_threads,
      "versions": {"jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
                   "optax": _version("optax"), "torch": _version("torch"),
                   "python": platform_lib.python_version()},
      "command": _command(argv),
      "size": opts.size.name,
      "size_description": describe_size(opts.size, opts.torch_compile),
      "workloads": list(opts.workloads),
      "implementations": list(opts.impls),
      "torch_compile": opts.torch_compile,
      "peak_flops_override": opts.peak_flops,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # A persistent compilation cache would hide compile time from e2e_em; the bench
      # does not turn one on, but JAX_COMPILATION_CACHE_DIR would.
      "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
      "thread_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "GOMP_"))},
      "load_average_before": load_before,
      "load_average_after": common.load_average(),
      "elapsed_s": time.perf_counter() - t_start,
      "workload_s": workload_s,
      "skipped": skipped,
  }
  print()
  print(report.table(rows))
  for n in report.notes(rows):
    print(f"- {n}")
  for s in skipped:
    print(f"- Skipped: {s}")
  print(f"load average before {meta['load_average_before']}, after {meta['load_average_after']}; "
        f"{meta['elapsed_s']:.0f} s in all", flush=True)
  if a.out_json:
    report.write_json(a.out_json, meta, rows)
    print(f"wrote {a.out_json}")
  if a.out_md:
    report.write_markdown(a.out_md, report.markdown_section(meta, rows), meta["platform"])
    print(f"wrote the {meta['platform']} section of {a.out_md}")
  return 0
