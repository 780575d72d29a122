"""``python -m benchmarks.scale``: jaxprotect's real programs compiled for TPU topologies
that are not there -- what they would need per chip, compiled, not run.

  python -m benchmarks.scale [--topologies v5e:2x2,v5e:16x16@32,...] [--quick] [--per-chip-batch 128]
      [--programs train_step,...] [--pgd-steps 2] [--search v5e:2x2] [--search-probes 10]
      [--out-json benchmarks/scale_results.json] [--out-md docs/BENCHMARKS.md] [--render]

For each topology (``jax.experimental.topologies``: compile-only TPU devices, no TPU
needed), the one-axis ``data`` mesh over its chips and these programs, lowered from
abstract state and data (``train.abstract_state``, ``data.abstract_split``) and compiled:

- ``train_step``: the ResNet-18 training step (CIFAR-10 shapes, bfloat16 compute, SGD with
  momentum; global batch = per-chip batch x chips; state replicated and donated);
- ``train_chunk``: ``make_train_chunk(loop="scan")`` over a replicated 50,000-example
  CIFAR-10 split with a sample-wise perturbation, crop4+flip inside the program;
- ``em_pass`` / ``mi_ue_pass``: the sample-wise PGD pass (``make_samplewise_pass``,
  ``loop="scan"``) over that split with ``error_minimizing_objective`` / ``mi_ue_objective``
  (MI-UE with its flip of the clean images), with few PGD steps (``--pgd-steps``, default
  2; crafting runs use more) to bound compile time; the perturbation donated, as crafting
  passes it;
- ``cmim_step``: the training step with the CMIM teacher loss (6 temperatures, 1..32);
- ``certify_draws``: one chunk of ``jaxprotect certify`` (``certify.make_draw_eval``): 16
  weight draws of the model evaluated together (vmapped) on the 10,000-image test split,
  the batch split over the chips;
- ``shadow_fit``: LiRA's shadow models trained together (``privacy.shadow``: a vmap of the
  engine's step over models, the model axis split over the chips), 2 models per chip, each
  on half of the 50,000-example split with the per-chip batch, ``--chunk-steps`` steps.

Per program x topology: argument / output / temporary memory per chip against the chip's
HBM (``memory_analysis``), whether donation aliased the state, FLOPs and bytes per chip
(``cost_analysis``), the collectives of the optimised HLO (count, bytes, dtypes), compile
seconds, and a roofline estimate of the program's time -- a model, not a measurement.
``--search`` topologies also get the largest per-chip batch of the training step that
fits the chip's HBM, found by compiling (doubling, then bisection).

Needs libtpu (``pip install -e '.[aot]'``). Writes ``--out-json`` (after every program, so
an interrupted run keeps what it compiled) and the "Scale (compiled, not run)" section of
``--out-md`` (an empty string skips a file); ``--render`` rewrites that section from the
results file without compiling. ``name@B`` gives one topology its own per-chip batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import pathlib
import platform as platform_lib
import re
import shlex
import sys
import time
from importlib import metadata as importlib_metadata
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "scale_results.json"
DEFAULT_MD = REPO / "docs" / "BENCHMARKS.md"
SECTION = "scale"  # the Markdown markers: <!-- bench:scale:start --> ... <!-- bench:scale:end -->
INSTALL_HINT = "pip install -e '.[aot]'"

DEFAULT_TOPOLOGIES = ("v5e:2x2", "v5e:8x8", "v5e:16x16", "v5p:2x2x2", "v6e:2x2")
PROGRAMS = ("train_step", "train_chunk", "em_pass", "mi_ue_pass", "cmim_step", "certify_draws", "shadow_fit")
NUM_EXAMPLES = 50_000  # the CIFAR-10 training split
NUM_TEST = 10_000  # the CIFAR-10 test split (certification evaluates the weight draws on it)
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
CMIM_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures used against the compiled programs (public spec sheets)."""

  name: str
  hbm_bytes: int
  bf16_flops: float  # dense peak FLOP/s
  hbm_bytes_per_s: float


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1228e9),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9),
    # 80 GB HBM3: the target config's device_memory_size (79.1 GiB); 989 TFLOP/s dense bf16, 3.35 TB/s.
    "h100": Chip("NVIDIA H100 SXM", 84_929_347_584, 989e12, 3352e9),
}
GPU_FAMILIES = ("h100",)  # compiled through the CUDA path: ``h100:N`` is N GPUs of one host
GPU_TARGET_CONFIGS = {"h100": REPO / "benchmarks" / "h100.txtpb"}  # GpuTargetConfigProto text (H100 SXM)
CUDA_INSTALL_HINT = ('pip install "jax-cuda12-plugin==$(python -c \'import jaxlib; print(jaxlib.__version__)\')" '
                     '(the plugin of the installed jaxlib; no GPU or CUDA driver needed to compile)')


def chip_of(topology: str) -> Chip:
  family = topology.split(":")[0].lower()
  if family not in CHIPS:
    raise ValueError(f"unknown chip family in topology {topology!r}; known: {', '.join(CHIPS)}")
  if is_gpu(topology):
    count = topology.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
      raise ValueError(f"topology {topology!r}: a GPU topology is {family}:N, N GPUs of one host (e.g. {family}:8)")
  return CHIPS[family]


def is_gpu(topology: str) -> bool:
  return topology.split(":")[0].lower() in GPU_FAMILIES


def require_cuda_plugin() -> str:
  """The CUDA plugin's version, or SystemExit with the install command."""
  version = _version("jax-cuda12-plugin")
  if version is None:
    raise SystemExit(f"benchmarks.scale compiles GPU topologies through JAX's CUDA plugin, which is not "
                     f"installed: {CUDA_INSTALL_HINT}")
  return version


def parse_topologies(spec: str, default_batch: int) -> list[tuple[str, int]]:
  """``"v5e:2x2,v5e:16x16@32"`` -> ``[("v5e:2x2", default_batch), ("v5e:16x16", 32)]``."""
  out = []
  for part in spec.split(","):
    part = part.strip()
    if not part:
      continue
    name, _, batch = part.partition("@")
    chip_of(name)
    out.append((name, int(batch) if batch else default_batch))
  return out


def require_libtpu() -> str:
  """libtpu's version, or SystemExit with the install command."""
  try:
    import libtpu  # noqa: F401, PLC0415
  except ImportError:
    raise SystemExit(f"benchmarks.scale compiles for TPU topologies and needs libtpu, which is not installed: "
                     f"{INSTALL_HINT}  (or pip install 'jax[tpu]')") from None
  return _version("libtpu") or "unknown"


def _version(dist: str) -> str | None:
  try:
    return importlib_metadata.version(dist)
  except importlib_metadata.PackageNotFoundError:
    return None


def get_topology(name: str):
  """Compile-only devices of a TPU topology (``v4`` as megacore chips) or of ``h100:N``
  (the CUDA path: N GPUs of one host)."""
  # libtpu otherwise probes for TPU hosts; a single local "worker" silences it.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  from jax.experimental import topologies  # noqa: PLC0415

  if is_gpu(name):  # one host of N GPUs, from the chip's GpuTargetConfigProto (no GPU needed)
    family, _, count = name.partition(":")
    config = GPU_TARGET_CONFIGS[family.lower()].read_text()
    return topologies.get_topology_desc(platform="cuda", target_config=config, topology=f"1x1x{int(count)}")
  kw = {"chip_config_name": "megacore"} if name.lower().startswith("v4") else {}
  return topologies.get_topology_desc(topology_name=name, platform="tpu", **kw)


# ---------------------------------------------------------------------------------------
# What a compiled program says
# ---------------------------------------------------------------------------------------

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COLLECTIVE_RE = re.compile(r"=\s*(?P<shape>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_ARRAY_RE = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def _arrays(shape_text: str) -> list[tuple[str, int]]:
  """``(dtype, bytes)`` of each array in an HLO shape (a tuple's elements), layouts ignored."""
  out = []
  for dtype, dims in _ARRAY_RE.findall(shape_text):
    if dtype in DTYPE_BYTES:
      out.append((dtype, DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)))
  return out


def collectives(hlo_text: str) -> dict[str, Any]:
  """The collectives of an optimised HLO module, by kind: how many instructions, their
  bytes (result shapes; an async ``-start`` counted once, its ``-done`` not) and dtypes, and
  the largest one. Counts are static: a collective inside a loop body is counted once."""
  out: dict[str, Any] = {}
  for line in hlo_text.splitlines():
    m = _COLLECTIVE_RE.search(line)
    if not m or line.lstrip().startswith("//"):
      continue
    arrays = _arrays(m.group("shape"))
    if m.group("start") and m.group("op") in ("all-gather", "collective-permute") and len(arrays) >= 2:
      arrays = arrays[len(arrays) // 2:]  # (operands, results[, contexts]): keep the results
    size = sum(b for _, b in arrays)
    dtypes = sorted({d for d, _ in arrays})
    entry = out.setdefault(m.group("op"), {"count": 0, "bytes": 0, "dtypes": [], "largest": None})
    entry["count"] += 1
    entry["bytes"] += size
    entry["dtypes"] = sorted(set(entry["dtypes"]) | set(dtypes))
    if entry["largest"] is None or size > entry["largest"]["bytes"]:
      entry["largest"] = {"bytes": size, "dtypes": dtypes, "operands": len(arrays)}
  return out


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(cost or {})


def analyse(compiled, chip: Chip, loop_trips: int = 1) -> dict[str, Any]:
  """Memory, cost, collectives and the roofline estimate of a compiled program, per chip.

  XLA's cost analysis counts a loop body once; ``loop_trips`` (the iterations of the
  program's loops, e.g. scan steps x PGD steps) scales its FLOPs and bytes for the
  roofline -- for nested loops an upper bound on the bytes (an outer body's bytes are
  multiplied by the inner trip count as well)."""
  mem = compiled.memory_analysis()
  cost = _cost(compiled)
  arg, out, alias = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes
  temp, code = mem.temp_size_in_bytes, mem.generated_code_size_in_bytes
  total = arg + out - alias + temp + code  # donated outputs reuse their arguments' buffers
  flops, bytes_accessed = cost.get("flops"), cost.get("bytes accessed")
  compute_s = flops * loop_trips / chip.bf16_flops if flops else None
  memory_s = bytes_accessed * loop_trips / chip.hbm_bytes_per_s if bytes_accessed else None
  bound = None if compute_s is None or memory_s is None else ("compute" if compute_s >= memory_s else "memory")
  return {
      "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp, "code_bytes": code,
      "total_bytes": total, "hbm_bytes": chip.hbm_bytes, "hbm_fraction": total / chip.hbm_bytes,
      "fits": total <= chip.hbm_bytes, "donation_aliased": alias > 0,
      "flops_per_chip": flops, "bytes_accessed_per_chip": bytes_accessed,
      "transcendentals_per_chip": cost.get("transcendentals"), "loop_trips": loop_trips,
      "roofline_s": None if bound is None else max(compute_s, memory_s), "roofline_bound": bound,
      "roofline_compute_s": compute_s, "roofline_memory_s": memory_s,
      "collectives": collectives(compiled.as_text()),
  }


def hbm_error(exc: BaseException) -> bool:
  """Whether a compile error is the TPU compiler running out of HBM."""
  text = str(exc)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower()


# ---------------------------------------------------------------------------------------
# The programs
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Setting:
  per_chip_batch: int
  pgd_steps: int = 2
  chunk_steps: int = 2
  draws: int = 16  # certify_draws: weight draws evaluated together (one chunk of jaxprotect certify)
  shadow_models_per_chip: int = 2  # shadow_fit: LiRA shadow models trained together, per chip
  grad_sum_dtype: str = "compute"  # the models' grad_sum_dtype ("float32": f32 cross-chip gradient sums)


class Programs:
  """Builds jaxprotect's jitted programs and their abstract arguments on ``mesh``."""

  def __init__(self, mesh, setting: Setting):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import ml_collections  # noqa: PLC0415

    from jaxprotect import data, models, parallel, train  # noqa: PLC0415
    from jaxprotect.data.augment import AugmentConfig  # noqa: PLC0415

    self.jax, self.jnp, self.data, self.models, self.train, self.parallel = jax, jnp, data, models, train, parallel
    self.AugmentConfig = AugmentConfig
    self.mesh, self.setting = mesh, setting
    self.chips = parallel.num_shards(mesh)
    self.model = models.get("resnet18", NUM_CLASSES, dtype="bfloat16", grad_sum_dtype=setting.grad_sum_dtype)
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                                         schedule="cosine", warmup_epochs=0.0, milestones=(), gamma=0.1,
                                         grad_clip=0.0))
    self.global_batch = setting.per_chip_batch * self.chips
    self.steps_per_epoch = max(1, NUM_EXAMPLES // self.global_batch)
    self.optimizer = train.make_optimizer(opt, self.steps_per_epoch, 200)
    self.example = jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.float32)
    self.rep = parallel.replicated(mesh)
    self.state = train.abstract_state(self.model, self.optimizer, self.example, mesh)

  def spec(self, shape, dtype, sharding=None):
    return self.jax.ShapeDtypeStruct(shape, dtype, sharding=sharding or self.rep)

  def batch(self, global_batch: int) -> dict[str, Any]:
    dat = self.parallel.data_sharded(self.mesh)
    return {"image": self.spec((global_batch, *IMAGE_SHAPE), self.jnp.float32, dat),
            "label": self.spec((global_batch,), self.jnp.int32, dat)}

  def split(self, clean_augment: str = ""):
    """The CIFAR-10 training split as the default config holds it: replicated uint8
    images with a sample-wise float32 perturbation."""
    return self.data.abstract_split(NUM_EXAMPLES, IMAGE_SHAPE, self.mesh, layout="replicated", delta_mode="sample",
                                    clean_augment=self.AugmentConfig.parse(clean_augment))

  def build(self, name: str, per_chip_batch: int | None = None) -> tuple[Callable, tuple, dict[str, Any]]:
    """``(jitted, abstract_args, details)`` of program ``name``."""
    train, jnp = self.train, self.jnp
    b = (per_chip_batch or self.setting.per_chip_batch) * self.chips
    if name in ("em_pass", "mi_ue_pass", "train_chunk") and b > NUM_EXAMPLES:
      raise ValueError(f"global batch {b} exceeds the {NUM_EXAMPLES} training examples")
    if name == "train_step":
      return train.make_train_step(self.model, train.ce_loss(), self.optimizer, self.mesh), (
          self.state, self.batch(b)), {"global_batch": b}
    if name == "cmim_step":
      from jaxprotect.distill import teacher  # noqa: PLC0415

      loss = teacher.cmim_stateful_loss(CMIM_TEMPERATURES, lam=1.0, aggregation="mean", weighting="t2", decay=0.99)
      k = len(CMIM_TEMPERATURES)
      state = self.state.replace(extra={"centroids": self.spec((k, NUM_CLASSES, NUM_CLASSES), jnp.float32)})
      return train.make_train_step(self.model, loss, self.optimizer, self.mesh), (state, self.batch(b)), {
          "global_batch": b, "temperatures": len(CMIM_TEMPERATURES)}
    if name == "train_chunk":
      steps = min(self.setting.chunk_steps, NUM_EXAMPLES // b)  # a chunk stays within one epoch
      chunk = train.make_train_chunk(self.model, train.ce_loss(), self.optimizer, self.mesh, batch_size=b,
                                     augment=self.AugmentConfig.parse("crop4,flip"), loop="scan")
      return chunk, (self.state, self.split(), steps), {"global_batch": b, "scan_steps": steps, "loop_trips": steps}
    if name in ("em_pass", "mi_ue_pass"):
      from jaxprotect.unlearnable import pgd  # noqa: PLC0415

      mi_ue = name == "mi_ue_pass"
      objective = pgd.mi_ue_objective() if mi_ue else pgd.error_minimizing_objective()
      run = pgd.make_samplewise_pass(self.model, objective, self.mesh, batch_size=b,
                                     num_steps=self.setting.pgd_steps, loop="scan", unroll=False, donate=True)
      scalar = self.spec((), jnp.float32)
      args = (train.variables_of(self.state), self.split("flip" if mi_ue else ""), scalar, scalar)
      if mi_ue:
        args += (self.spec((2,), jnp.uint32),)
      rows = -(-NUM_EXAMPLES // b)
      return run, args, {"global_batch": b, "pgd_steps": self.setting.pgd_steps, "rows": rows,
                         "loop_trips": rows * self.setting.pgd_steps}
    if name == "certify_draws":
      from jaxprotect.unlearnable import certify  # noqa: PLC0415

      d = self.setting.draws
      run = certify.make_draw_eval(self.model, self.mesh, b, d).jitted
      test = self.data.abstract_split(NUM_TEST, IMAGE_SHAPE, self.mesh, layout="replicated")
      args = (train.variables_of(self.state), test, self.spec((2,), jnp.uint32), self.spec((), jnp.int32),
              self.spec((), jnp.float32))
      rows = -(-NUM_TEST // b)
      # the draws run under shard_map: the jaxpr's shapes, so its counted FLOPs, are one chip's
      return run, args, {"global_batch": b, "draws": d, "rows": rows, "loop_trips": rows, "per_chip_jaxpr": True}
    if name == "shadow_fit":
      from jaxprotect.privacy import shadow  # noqa: PLC0415

      m, per_model = self.setting.shadow_models_per_chip * self.chips, per_chip_batch or self.setting.per_chip_batch
      width, steps = NUM_EXAMPLES // 2, self.setting.chunk_steps  # each model trains on half the set (LiRA)
      progs = shadow._programs(self.models.as_model(self.model),
                               self.optimizer, self.mesh, train.ce_loss(), self.AugmentConfig.parse("crop4,flip"),
                               per_model, 1, steps, width, "scan")
      by_model = self.jax.sharding.NamedSharding(self.mesh, self.jax.sharding.PartitionSpec(self.parallel.DATA_AXIS))
      one = self.jax.eval_shape(lambda k: train.init_state(self.model, self.optimizer, self.example, k),
                                self.jax.random.PRNGKey(0))
      states = self.jax.tree.map(lambda a: self.spec((m, *a.shape), a.dtype, by_model), one)
      args = (states, self.split(), self.spec((m, width), jnp.int32, by_model), self.spec((m,), jnp.int32, by_model))
      # shard_map over the model axis: the jaxpr's shapes, so its counted FLOPs, are one chip's
      return progs.train_all, args, {"global_batch": per_model * m, "shadow_models": m, "batch_per_model": per_model,
                                     "scan_steps": steps, "loop_trips": steps, "per_chip_jaxpr": True}
    raise ValueError(f"unknown program {name!r}; use one of {PROGRAMS}")


def model_flops(jitted: Callable, args: tuple) -> float | None:
  """Dense-operation FLOPs of the whole program (all chips; ``benchmarks.flops``), or None
  when they cannot be counted (a while loop)."""
  from benchmarks import flops  # noqa: PLC0415

  static = [i for i, a in enumerate(args) if isinstance(a, int)]
  dynamic = [a for a in args if not isinstance(a, int)]

  def fn(*dyn):
    it = iter(dyn)
    return jitted(*[a if i in static else next(it) for i, a in enumerate(args)])

  try:
    return float(flops.function_flops(fn, *dynamic))
  except ValueError:
    return None


def compile_program(programs: Programs, name: str, chip: Chip, per_chip_batch: int | None = None) -> dict[str, Any]:
  jitted, args, details = programs.build(name, per_chip_batch)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  row = {"program": name, **details, "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2)}
  row.update(analyse(compiled, chip, details.get("loop_trips", 1)))
  total = model_flops(jitted, args)
  row["model_flops_per_chip"] = None if total is None else total / (1 if details.get("per_chip_jaxpr") else
                                                                      programs.chips)
  if row["flops_per_chip"] is None and row["model_flops_per_chip"]:  # no cost analysis (the CUDA path)
    row["roofline_compute_s"] = row["model_flops_per_chip"] / chip.bf16_flops
    row["roofline_source"] = "model FLOPs (no cost analysis on this platform); compute side only"
  return row


def reduction_dtypes(mesh) -> dict[str, Any]:
  """In which dtype the cross-chip gradient sum of a bf16 convolution runs, for four ways of
  writing the loss (a 3x3x64x64 kernel, a batch of 32 sharded over ``mesh``): the
  all-reduces of each compiled gradient program."""
  import functools  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  from jaxprotect import parallel  # noqa: PLC0415

  rep, dat = parallel.replicated(mesh), parallel.data_sharded(mesh)
  bf16, f32 = jnp.bfloat16, jnp.float32
  w = jax.ShapeDtypeStruct((3, 3, 64, 64), f32, sharding=rep)
  x = jax.ShapeDtypeStruct((32, 16, 16, 64), f32, sharding=dat)

  def conv(x, k, **kw):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)

  def loss(w, x):  # as flax does with dtype=bfloat16: float32 parameters cast before the convolution
    return jnp.mean(conv(x.astype(bf16), w.astype(bf16)).astype(f32) ** 2)

  def loss_preferred(w, x):
    return jnp.mean(conv(x.astype(bf16), w.astype(bf16), preferred_element_type=f32) ** 2)

  def explicit(w, x):
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)), out_specs=P())
    def per_chip(w, x):
      w = jax.lax.pcast(w, parallel.DATA_AXIS, to="varying")  # local gradients, no automatic sum
      return jax.lax.pmean(jax.grad(loss)(w, x).astype(f32), parallel.DATA_AXIS)

    return per_chip(w, x)

  variants = {
      "params cast to bf16 inside the loss (the models' way)": jax.grad(loss),
      "gradients cast to f32 after jax.grad": lambda w, x: jax.grad(loss)(w, x).astype(f32),
      "convolution with preferred_element_type=f32": jax.grad(loss_preferred),
      "shard_map: per-chip gradients cast to f32, then pmean": explicit,
  }
  out = {}
  for name, fn in variants.items():
    try:
      hlo = jax.jit(fn, out_shardings=rep).lower(w, x).compile().as_text()
    except Exception as exc:  # noqa: BLE001 -- reported as such
      out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
      continue
    ar = collectives(hlo).get("all-reduce") or {"count": 0, "bytes": 0, "dtypes": []}
    out[name] = {"count": ar["count"], "bytes": ar["bytes"], "dtypes": ar["dtypes"]}
  return out


# ---------------------------------------------------------------------------------------
# The largest per-chip batch of the training step
# ---------------------------------------------------------------------------------------

def search_max_batch(programs: Programs, chip: Chip, start: int, max_probes: int, granule: int = 256,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
  """The largest per-chip batch (a multiple of ``granule``) whose training step compiles
  within the chip's HBM: doubling from ``start`` until a batch does not fit (halving if
  ``start`` does not), then bisection; at most ``max_probes`` compiles. Returns the bracket
  ``[largest_fitting, smallest_failing]`` and every probe."""
  probes: list[dict[str, Any]] = []

  def fits(b: int) -> bool:
    t0 = time.perf_counter()
    try:
      row = compile_program(programs, "train_step", chip, b)
      probe = {"per_chip_batch": b, "fits": row["fits"], "total_bytes": row["total_bytes"], "error": None}
    except Exception as exc:  # noqa: BLE001 -- only an HBM overflow is an answer
      if not hbm_error(exc):
        raise
      probe = {"per_chip_batch": b, "fits": False, "total_bytes": None, "error": str(exc).splitlines()[0][:300]}
    probe["compile_s"] = round(time.perf_counter() - t0, 1)
    probes.append(probe)
    used = "compile error (HBM)" if probe["error"] else f"{probe['total_bytes'] / GiB:.2f} GiB"
    log(f"  search: per-chip batch {b}: {'fits' if probe['fits'] else 'does not fit'} ({used}, "
        f"{probe['compile_s']:.0f} s)")
    return probe["fits"]

  lo, hi = None, None
  b = max(granule, start // granule * granule)
  while len(probes) < max_probes and (lo is None or hi is None):
    if fits(b):
      lo = b
      b *= 2
    else:
      hi = b
      if b <= granule:
        break
      b = max(granule, b // 2 // granule * granule)
  while len(probes) < max_probes and lo is not None and hi is not None and hi - lo > granule:
    mid = (lo + hi) // 2 // granule * granule
    if fits(mid):
      lo = mid
    else:
      hi = mid
  return {"largest_fitting": lo, "smallest_failing": hi, "resolved": lo is not None and hi is not None
          and hi - lo <= granule, "granule": granule, "probes": probes}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def _gib(b: float | None) -> str:
  return "-" if b is None else f"{b / GiB:.2f}"


def _mb(b: float | None) -> str:
  return "-" if b is None else (f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB")


def _collective_cell(coll: dict[str, Any]) -> str:
  if not coll:
    return "none"
  short = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS", "collective-permute": "CP",
           "all-to-all": "A2A"}
  parts = []
  for op in COLLECTIVES:
    if op in coll:
      c = coll[op]
      parts.append(f"{short[op]} x{c['count']} {_mb(c['bytes'])} {'/'.join(c['dtypes'])}")
  return "; ".join(parts)


def _largest_all_reduce(coll: dict[str, Any]) -> str:
  big = (coll.get("all-reduce") or {}).get("largest")
  if not big:
    return "-"
  return f"{_mb(big['bytes'])} {'/'.join(big['dtypes'])} ({big['operands']} arrays)"


def _gflop(f: float | None, trips: int = 1) -> str:
  return "-" if f is None else f"{f / 1e9:.1f}" + (f" (x{trips})" if trips > 1 else "")


def _seconds(s: float | None) -> str:
  if s is None:
    return "-"
  return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _roofline_cell(r: dict[str, Any]) -> str:
  """``max`` and its two sides, recomputed from the row (older result files lack the sides)."""
  chip, trips = chip_of(r["topology"]), r.get("loop_trips", 1)
  if not r.get("flops_per_chip") and r.get("model_flops_per_chip"):  # the CUDA path: no cost analysis
    return f"compute {_seconds(r['model_flops_per_chip'] / chip.bf16_flops)} (model FLOPs; memory side unknown)"
  if not r.get("flops_per_chip") or not r.get("bytes_accessed_per_chip"):
    return "-"
  compute = r["flops_per_chip"] * trips / chip.bf16_flops
  memory = r["bytes_accessed_per_chip"] * trips / chip.hbm_bytes_per_s
  return f"{_seconds(max(compute, memory))} (compute {_seconds(compute)}, memory {_seconds(memory)})"


def table(rows: list[dict[str, Any]]) -> str:
  head = ("| topology | program | batch / chip | args GiB | out GiB | temp GiB | total GiB (HBM) | donated | "
          "XLA GFLOP / chip | collectives (static count, bytes, dtypes) | largest all-reduce | compile s | "
          "roofline (model, not a measurement) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    if r.get("error"):
      lines.append(f"| {r['topology']} | {r['program']} | {r.get('per_chip_batch', '-')} | failed: "
                   f"{r['error'][:120]} |" + " |" * 9)
      continue
    pct = 100 * r["hbm_fraction"]
    lines.append(
        f"| {r['topology']} | {r['program']} | {r['per_chip_batch']} | {_gib(r['argument_bytes'])} | "
        f"{_gib(r['output_bytes'])} | {_gib(r['temp_bytes'])} | {_gib(r['total_bytes'])} "
        f"({pct:.1f}% of {r['hbm_bytes'] // GiB}) | {'yes' if r['donation_aliased'] else 'no'} | "
        f"{_gflop(r['flops_per_chip'], r.get('loop_trips', 1))} | "
        f"{_collective_cell(r['collectives'])} | {_largest_all_reduce(r['collectives'])} | {r['compile_s']:.0f} | "
        f"{_roofline_cell(r)} |")
  return "\n".join(lines)


def _probe_cell(probe: dict[str, Any]) -> str:
  if not probe["error"]:
    return f"{_gib(probe['total_bytes'])} GiB"
  need = re.search(r"\(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)", probe["error"])
  return f"OOM ({need.group(1)} of temporaries > {need.group(2)})" if need else "OOM"


def search_table(searches: list[dict[str, Any]]) -> str:
  lines = ["| topology | largest per-chip batch that fits | smallest that does not | resolution | compiles | "
           "probes (batch: need) |",
           "|---|---|---|---|---|---|"]
  for s in searches:
    probes = ", ".join(f"{p['per_chip_batch']}: {_probe_cell(p)}" for p in s["probes"])
    lines.append(f"| {s['topology']} | {s['largest_fitting'] or '-'} | {s['smallest_failing'] or '-'} | "
                 f"{s.get('granule', '-')} | {len(s['probes'])} | {probes} |")
  return "\n".join(lines)


def markdown_section(meta: dict[str, Any], rows: list[dict[str, Any]], searches: list[dict[str, Any]],
                     findings: list[str]) -> str:
  from benchmarks import report  # noqa: PLC0415

  start, end = report.markers(SECTION)
  lines = [
      start,
      "## Scale (compiled, not run)",
      "",
      f"Generated by `{meta['command']}` on {meta['date']}; rerunning it replaces this section. "
      f"jax {meta['jax']}, jaxlib {meta['jaxlib']}, libtpu {meta['libtpu']}"
      + (f", jax-cuda12-plugin {meta['jax_cuda12_plugin']}" if meta.get("jax_cuda12_plugin") else "")
      + f"; {meta['machine']}."
      + ("" if meta.get("complete", True) else " That run stopped before its end (an error or a kill); the section "
         "holds what it had compiled."),
      *[f"Rows of an earlier run kept (`--merge`): `{m['command']}` on {m['date']}"
        + (f" (jax-cuda12-plugin {m['jax_cuda12_plugin']})" if m.get("jax_cuda12_plugin") else "") + "."
        for m in meta.get("merged_from", [])],
      "",
      "Every figure comes from compiling jaxprotect's real programs for a TPU topology that is not "
      "there (`jax.experimental.topologies`, compile-only devices, a one-axis `data` mesh over all "
      "chips): memory from `memory_analysis()`, FLOPs and bytes per chip from `cost_analysis()`, "
      "collectives from the optimised HLO (`as_text()`). Nothing ran on a TPU. `h100:N` is N H100 "
      "GPUs of one host compiled through JAX's CUDA plugin (`get_topology_desc(platform=\"cuda\")` with "
      "the GpuTargetConfigProto `benchmarks/h100.txtpb`; no GPU or driver present); XLA:GPU gives no cost "
      "analysis, so those rows' roofline is the compute side of the model FLOPs only.",
      "",
      f"- Model: ResNet-18, CIFAR-10 shapes ({'x'.join(map(str, IMAGE_SHAPE))}, {NUM_CLASSES} classes), bfloat16 "
      "compute, float32 parameters, SGD with momentum; state replicated and donated.",
      "- Global batch = per-chip batch x chips. `train_chunk` scans "
      f"{meta['setting']['chunk_steps']} steps (fewer when an epoch has fewer) over the replicated "
      f"{NUM_EXAMPLES:,}-example split with a sample-wise perturbation and crop4+flip; `em_pass` / "
      f"`mi_ue_pass` are whole sample-wise PGD passes over that split with only "
      f"{meta['setting']['pgd_steps']} PGD steps per batch (to bound compile time; crafting runs use 10-20), "
      "MI-UE with its flip of the clean images; `cmim_step` is the training step with the CMIM loss "
      f"({len(CMIM_TEMPERATURES)} temperatures); `certify_draws` is one certification chunk: "
      f"{meta['setting'].get('draws', 16)} weight draws evaluated together on the {NUM_TEST:,}-image test split; "
      "`shadow_fit` trains LiRA's shadow models together, 2 per chip, each on half the split, for "
      f"{meta['setting']['chunk_steps']} steps.",
      "- total = arguments + outputs - aliased (donated) + temporaries + program code, per chip. "
      "\"donated\": `memory_analysis().alias_size_in_bytes > 0`.",
      "- XLA GFLOP / chip: `cost_analysis()['flops']`, which counts only the kernel taps inside the image and "
      "a loop body once; (xN): the program's loops run N times (scan steps, or batches x PGD steps). "
      "Collectives are counted statically too: one inside a loop body runs once per iteration.",
      "- Roofline: max(FLOPs / bf16 peak, bytes accessed / HBM bandwidth) per chip for the whole program, "
      "from the cost analysis times N (" + ", ".join(
          f"{c.name} {c.bf16_flops / 1e12:.0f} TFLOP/s & {c.hbm_bytes_per_s / 1e9:.0f} GB/s" for c in CHIPS.values()) +
      "); interconnect time is left out. It is a model, not a measurement. For the PGD passes (a loop in "
      "a loop) the memory side is not credible: XLA reports 160-210 GB accessed per loop iteration there, far "
      "more than an iteration touches, and multiplying by the outer trips overcounts as well; read their "
      "compute side.",
  ]
  if meta.get("batch_notes"):
    lines += [f"- {n}" for n in meta["batch_notes"]]
  lines += ["", table(rows), ""]
  if searches or meta["searched"]:
    lines += ["### Largest per-chip batch of the training step (by compiling)", "",
              "Doubling from the first probe of a row (halving if it does not fit), then bisection to a "
              "multiple of the row's resolution (`--search-start`, `--search-granule`); a batch fits "
              "when it compiles and its total stays within the chip's HBM. Done for: "
              f"{', '.join(s['topology'] for s in searches) or 'none'} (not for the other topologies: "
              "each probe is a compile of minutes on the build machine; with the state replicated, a "
              "chip's memory does not depend on how many chips the slice has, as the rows above at 128 "
              "per chip show).", ""]
    if searches:
      lines += [search_table(searches), ""]
  if findings:
    lines += ["### Findings", ""] + [f"- {f}" for f in findings] + [""]
  if meta.get("skipped"):
    lines += [f"- Skipped: {s}" for s in meta["skipped"]] + [""]
  lines.append(end)
  return "\n".join(lines) + "\n"


def gradient_all_reduce_findings(rows: list[dict[str, Any]]) -> list[str]:
  """What the HLO of the bf16 training step says about the dtype of the gradient sum (one
  line per distinct answer, naming its topologies)."""
  by_text: dict[str, list[str]] = {}
  for r in rows:
    if r["program"] != "train_step" or r.get("error"):
      continue
    ar = r["collectives"].get("all-reduce") or {}
    big = ar.get("largest")
    if big:
      text = (f"the bf16 training step sums its gradients across chips in {ar['count']} all-reduces; the largest "
              f"carries {_mb(big['bytes'])} in {'/'.join(big['dtypes'])} ({big['operands']} arrays), the others "
              f"{_mb(ar['bytes'] - big['bytes'])} together")
      by_text.setdefault(text, []).append(r["topology"])
  return [f"{', '.join(tops)}: {text}." for text, tops in by_text.items()]


REDUCTION_ORDER = ("params cast to bf16 inside the loss (the models' way)", "gradients cast to f32 after jax.grad",
                   "convolution with preferred_element_type=f32",
                   "shard_map: per-chip gradients cast to f32, then pmean")


def reduction_findings(reductions: dict[str, Any]) -> list[str]:
  if not reductions:
    return []
  variants = reductions["variants"]
  names = [n for n in REDUCTION_ORDER if n in variants] + sorted(set(variants) - set(REDUCTION_ORDER))
  parts = []
  for name in names:
    r = variants[name]
    parts.append(f"{name}: failed ({r['error']})" if "error" in r else
                 f"{name}: {r['count']} all-reduce of {_mb(r['bytes'])} in {'/'.join(r['dtypes']) or '-'}")
  return [f"Which dtype the cross-chip gradient sum takes (the gradient of a bf16 3x3x64x64 convolution, "
          f"compiled for {reductions['topology']}): " + "; ".join(parts) + "."]


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def kept_results(saved: dict[str, Any], topologies: list[str], programs: list[str],
                 searched: list[str]) -> dict[str, Any]:
  """What ``--merge`` keeps of a saved results file: the rows of (topology, program) pairs
  this run does not compile, the batch searches of topologies it does not search, the
  gradient-sum study, and the commands and dates the kept rows came from."""
  redo = {(t, p) for t in topologies for p in programs}
  previous = saved.get("metadata", {})
  return {
      "rows": [r for r in saved.get("rows", []) if (r["topology"], r["program"]) not in redo],
      "searches": [s for s in saved.get("max_batch_search", []) if s["topology"] not in searched],
      "gradient_sum_dtype": saved.get("gradient_sum_dtype") or {},
      "merged_from": [*previous.get("merged_from", []),
                      {k: previous.get(k) for k in ("command", "date", "jax", "libtpu", "jax_cuda12_plugin")}],
  }


def machine() -> str:
  from benchmarks import common  # noqa: PLC0415

  return (f"compiled on {os.cpu_count()} CPU cores ({common.cpu_model()}), {platform_lib.system()}, "
          "no accelerator used")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
  p.add_argument("--topologies", default=None,
                 help="comma-separated TPU topologies, each optionally with @per-chip-batch (default: "
                      f"{','.join(DEFAULT_TOPOLOGIES)}; --quick: v5e:2x2)")
  p.add_argument("--programs", default=",".join(PROGRAMS), help=f"subset of {','.join(PROGRAMS)}")
  p.add_argument("--per-chip-batch", type=int, default=None, help="default 128 (--quick: 8)")
  p.add_argument("--pgd-steps", type=int, default=2, help="PGD steps per batch in the passes (default 2)")
  p.add_argument("--chunk-steps", type=int, default=2, help="steps scanned by train_chunk (default 2)")
  p.add_argument("--search", default=None,
                 help="topologies for the largest-batch search (default v5e:2x2; --quick: none; '' for none)")
  p.add_argument("--search-start", type=int, default=1024, help="per-chip batch the doubling starts from")
  p.add_argument("--search-granule", type=int, default=256, help="the search's resolution (per-chip batch)")
  p.add_argument("--search-probes", type=int, default=10, help="at most this many compiles per search")
  p.add_argument("--quick", action="store_true", help="v5e:2x2 only, per-chip batch 8, no search")
  p.add_argument("--out-json", default=str(DEFAULT_JSON))
  p.add_argument("--out-md", default=str(DEFAULT_MD))
  p.add_argument("--render", action="store_true",
                 help="compile nothing: rewrite the Markdown section (and the derived findings) from --out-json")
  p.add_argument("--merge", action="store_true",
                 help="keep the rows (and searches) of --out-json that this run does not compile again")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.render:
    import json  # noqa: PLC0415

    from benchmarks import report  # noqa: PLC0415

    from jaxprotect import config as config_lib  # noqa: PLC0415

    saved = json.loads(pathlib.Path(args.out_json).read_text())
    saved["findings"] = gradient_all_reduce_findings(saved["rows"])  # derived: as this version words them
    config_lib.write_json_atomic(args.out_json, saved)
    findings = saved["findings"] + reduction_findings(saved.get("gradient_sum_dtype") or {})
    section = markdown_section(saved["metadata"], saved["rows"], saved.get("max_batch_search", []), findings)
    report.write_markdown(args.out_md, section, SECTION)
    print(section)
    return 0
  requested = args.topologies or ("v5e:2x2" if args.quick else ",".join(DEFAULT_TOPOLOGIES))
  names = [t.partition("@")[0].strip() for t in requested.split(",") if t.strip()]
  gpu = [t for t in names if is_gpu(t)]
  if gpu and len(gpu) < len(names):
    raise SystemExit(f"--topologies: compile the GPU topologies ({', '.join(gpu)}) in a run of their own "
                     "(add --merge to keep the TPU rows of --out-json)")
  libtpu_version = _version("libtpu") if gpu else require_libtpu()
  cuda_version = require_cuda_plugin() if gpu else _version("jax-cuda12-plugin")
  import jax  # noqa: PLC0415

  if gpu:  # the CUDA plugin's compile-only topology needs JAX itself on the CPU backend (no GPU here)
    jax.config.update("jax_platforms", "cpu")

  # Compile-only executables cannot be read back from the persistent cache, and compile seconds are measured.
  jax.config.update("jax_enable_compilation_cache", False)

  from benchmarks import report  # noqa: PLC0415
  from jaxprotect import config as config_lib, parallel  # noqa: PLC0415

  per_chip = args.per_chip_batch or (8 if args.quick else 128)
  topologies = parse_topologies(requested, per_chip)
  programs = [p.strip() for p in args.programs.split(",") if p.strip()]
  for p in programs:
    if p not in PROGRAMS:
      raise SystemExit(f"unknown program {p!r}; use one of {', '.join(PROGRAMS)}")
  searched = [s.strip() for s in (args.search if args.search is not None else ("" if args.quick else "v5e:2x2"))
              .split(",") if s.strip()]
  command = "python -m benchmarks.scale" + ("" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(
      sys.argv[1:] if argv is None else argv))
  meta = {
      "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "jax": jax.__version__, "jaxlib": _version("jaxlib"), "libtpu": libtpu_version,
      "jax_cuda12_plugin": cuda_version, "machine": machine(),
      "setting": {"per_chip_batch": per_chip, "pgd_steps": args.pgd_steps, "chunk_steps": args.chunk_steps,
                  "draws": Setting(per_chip).draws},
      "topologies": [f"{t}@{b}" for t, b in topologies], "programs": programs, "searched": searched,
      "search_probes": args.search_probes, "search_start": args.search_start, "search_granule": args.search_granule,
      "quick": args.quick, "skipped": [], "batch_notes": [],
      "chips": {k: dataclasses.asdict(c) for k, c in CHIPS.items()},
  }
  for t, b in topologies:
    if b != per_chip:
      meta["batch_notes"].append(f"{t}: per-chip batch {b} instead of {per_chip} (compile time on the build machine).")
  rows: list[dict[str, Any]] = []
  searches: list[dict[str, Any]] = []
  reductions: dict[str, Any] = {}
  kept: dict[str, Any] = {"rows": [], "searches": []}
  if args.merge and args.out_json and pathlib.Path(args.out_json).exists():
    import json  # noqa: PLC0415

    kept = kept_results(json.loads(pathlib.Path(args.out_json).read_text()), [t for t, _ in topologies], programs,
                        searched)
    reductions.update(kept["gradient_sum_dtype"])
    meta["merged_from"] = kept["merged_from"]
  t_all = time.perf_counter()

  def all_rows() -> list[dict[str, Any]]:
    return kept["rows"] + rows

  def save(complete: bool) -> None:
    if args.out_json:
      meta["complete"] = complete
      meta["total_s"] = round(time.perf_counter() - t_all, 1)
      meta["load_average"] = [round(x, 2) for x in os.getloadavg()]
      config_lib.write_json_atomic(args.out_json, {
          "metadata": meta, "rows": all_rows(), "max_batch_search": kept["searches"] + searches,
          "findings": gradient_all_reduce_findings(all_rows()), "gradient_sum_dtype": reductions})

  for name, batch in topologies:
    chip = chip_of(name)
    t0 = time.perf_counter()
    topo = get_topology(name)
    mesh = parallel.make_mesh(devices=topo.devices)
    print(f"{name}: {len(topo.devices)} x {topo.devices[0].device_kind}, per-chip batch {batch}", flush=True)
    if not reductions and not is_gpu(name):
      reductions.update({"topology": name, "variants": reduction_dtypes(mesh)})
      for variant, r in reductions["variants"].items():
        print(f"  gradient sum, {variant}: {r}", flush=True)
    progs = Programs(mesh, Setting(per_chip_batch=batch, pgd_steps=args.pgd_steps, chunk_steps=args.chunk_steps))
    for prog in programs:
      base = {"topology": name, "chips": len(topo.devices), "device_kind": topo.devices[0].device_kind,
              "per_chip_batch": batch}
      try:
        row = {**base, **compile_program(progs, prog, chip)}
      except Exception as exc:  # noqa: BLE001 -- recorded in the table, the other programs go on
        row = {**base, "program": prog, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(f"  {prog}: FAILED {row['error']}", flush=True)
      else:
        big = _largest_all_reduce(row["collectives"])
        print(f"  {prog}: compile {row['compile_s']:.1f} s, total {_gib(row['total_bytes'])} GiB of "
              f"{chip.hbm_bytes // GiB}, aliased {row['donation_aliased']}, "
              f"{(row['flops_per_chip'] or row['model_flops_per_chip'] or 0) / 1e9:.1f} GFLOP/chip, "
              f"largest all-reduce {big}", flush=True)
      rows.append(row)
      save(False)
    print(f"  {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
  for name in searched:  # after the table, the longest part
    chip = chip_of(name)
    print(f"{name}: searching the largest per-chip batch of train_step", flush=True)
    mesh = parallel.make_mesh(devices=get_topology(name).devices)
    progs = Programs(mesh, Setting(per_chip_batch=per_chip, pgd_steps=args.pgd_steps, chunk_steps=args.chunk_steps))
    searches.append({"topology": name, **search_max_batch(progs, chip, start=args.search_start,
                                                          max_probes=args.search_probes, granule=args.search_granule)})
    save(False)
  save(True)
  rows, searches = all_rows(), kept["searches"] + searches
  findings = gradient_all_reduce_findings(rows) + reduction_findings(reductions)
  print()
  print(table(rows))
  if searches:
    print()
    print(search_table(searches))
  if args.out_md:
    report.write_markdown(args.out_md, markdown_section(meta, rows, searches, findings), SECTION)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
