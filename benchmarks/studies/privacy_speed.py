"""Membership-privacy workloads per second: shadow models trained per hour and DM / DC
condensation iterations per second, jaxprotect against a reference-style PyTorch loop,
side by side in one process.

  python -m benchmarks.studies.privacy_speed [--workloads shadow,dm,dc] [--models 16] [--epochs 5]
      [--train-size 500] [--ipc 10] [--iterations 10] [--dc-iterations 1] [--dc-loops 1,1]
      [--repeats 3] [--devices 1] [--torch-threads 0] [--out FILE] [--quick]

Every workload uses the condensation ConvNet of ``experiments/privacy.py:fashion_mnist_mini``
(width 16, depth 3, instance norm, average pooling; ``--width``) on the embedded
Fashion-MNIST slice (``fashion_mnist_mini``, 28x28x1), in float32, without augmentation on
either side:

* **shadow** -- ``--models`` shadow models, each on its own random half of a pool of the
  first ``--train-size`` training images (``mia.keep_masks``), ``--epochs`` epochs of SGD
  (lr 0.01, momentum 0.9, coupled weight decay 5e-4, constant rate), batch
  ``--batch-size`` (remainders dropped: ``min |IN| // batch`` steps an epoch), pixels in
  [0, 1]. jaxprotect: ``privacy.shadow.train_shadow_models`` with an optimizer config
  section, one call per chunk of models (``start``, ``stop``), blocking after each:
  every model in one vmapped program (``models_per_chunk`` = all) and one model per call
  (``models_per_chunk`` 1), each a row (``--chunks``; ``--loop``, default
  ``train.default_loop``: one jitted step per step on CPU). PyTorch, as the LiRA reference
  trains its shadow models: one model after another, each a fresh ``ConvNet``
  (``benchmarks.torch_models``) with ``torch.optim.SGD``, an epoch a ``randperm`` of its
  IN examples cut into batches (index batches on in-memory tensors: the leanest form of
  a loader). Rate: models per hour.
* **dm** / **dc** -- ``--iterations`` (DC: ``--dc-iterations``) iterations of distribution
  matching / gradient matching with ``--ipc`` images per class condensed from the first
  ``--condense-size`` training images, standardised per channel
  (``condense.Normalization.of``); the real batch of a class is ``min(--batch-real,
  smallest class)`` images on both sides (256 at the defaults). jaxprotect:
  ``privacy.condense.condense_config`` (strategy "none"), ``init_state`` and the jitted
  iteration of ``make_step``, the loop ``condense.condense`` runs. PyTorch, following
  VICO-UoE/DatasetCondensation (``main_DM.py``, ``main.py``): DM draws a fresh ConvNet per
  iteration, freezes it and takes one SGD step (lr 1.0, momentum 0.5) on the synthetic
  images for the sum over classes of ``|mean embed(real batch) - mean embed(synthetic)|^2``;
  DC draws a fresh ConvNet per iteration and runs ``outer`` loops, each: per class the
  gradients of the cross-entropy of a real batch and of the synthetic images with respect
  to the network weights (``create_graph`` for the synthetic one), their distance summed
  over layers of ``1 - cos`` per output row (1-D parameters skipped, 1e-6 in the
  denominator), one SGD step (lr 0.1, momentum 0.5) on the images; then, except after the
  last outer loop, ``inner`` epochs of SGD (lr 0.01) of the network on the synthetic set
  (batch 256). ``--dc-loops outer,inner`` applies to both sides; the default (1, 1) is
  the gradient-matching loops of ``fashion_mnist_mini`` (its DSA), one matching step and
  no inner training; the reference's for ipc 10 (``condense.LOOPS``) is ``10,50``, about
  a minute per iteration on each side on 2 CPU cores. jaxprotect runs the loops as
  ``condense_config`` chooses for the platform (on CPU from the host: XLA:CPU runs
  convolutions inside while loops several times slower). Rate: iterations per second.

Everything is built, compiled and run once untimed (``warmup_s``: each side's first run,
compiles included); then ``--repeats`` rounds alternate the implementations (jaxprotect
first), each timing the whole workload (``jax.block_until_ready`` around the JAX work).
Each row holds the median rate of each side and the median of the per-round ratios
(jaxprotect / PyTorch; above 1: jaxprotect faster), the versions, date, ``os.cpu_count()``,
PyTorch's thread count and the load average before and after. PyTorch keeps its default
thread count unless ``--torch-threads`` sets one (on a CPU that other work keeps busy its
default threads spin and run the same loops up to 100 times slower; 1 avoids that);
jaxprotect runs on one CPU device, or for the shadow models on ``--devices`` CPU devices
(``jax_num_cpu_devices``) with the model axis split over them, so that each core trains
its own models (a chunk is then padded to a multiple of the device count). Prints one
JSON line per row (``--out``: also written there, one line each) and progress on stderr.

The defaults take about 4 minutes on 2 busy CPU cores with one PyTorch thread (shadow
models and DC about 1.5 minutes each, DM under a minute; compiles included); ``--quick``
runs tiny sizes (2 models, 1 epoch on 256 images; 2 condensation iterations with loops
(2, 1), width 8; ``--devices`` still applies) in about a minute, most of it compiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from benchmarks import common
from jaxprotect import data, models, parallel, train
from jaxprotect.config import optimizer_config
from jaxprotect.privacy import condense as cd, mia, shadow

WORKLOADS = ("shadow", "dm", "dc")
NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4  # the targets' recipe (privacy_config().target.optimizer)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """One run's sizes (see the module docstring)."""

  models: int = 16
  epochs: int = 5
  train_size: int = 500
  batch_size: int = 50
  chunks: tuple[int, ...] = (0, 1)  # models per jaxprotect call; 0: all at once
  width: int = 16
  ipc: int = 10
  iterations: int = 10
  dc_iterations: int = 1
  dc_loops: tuple[int, int] = (1, 1)  # condense.LOOPS[10] = (10, 50): the reference's
  condense_size: int = 10_000
  batch_real: int = 256
  repeats: int = 3
  loop: str = ""  # "": train.default_loop
  devices: int = 1  # CPU devices the shadow models are split over (jaxprotect side)

  @classmethod
  def quick(cls) -> Sizes:
    return cls(models=2, epochs=1, train_size=256, batch_size=32, width=8, iterations=2, dc_iterations=2,
               dc_loops=(2, 1), condense_size=256, batch_real=16, repeats=1)


def _torch() -> Any:
  import torch  # noqa: PLC0415

  return torch


def _meta() -> dict[str, Any]:
  torch = _torch()
  return {"jax_version": jax.__version__, "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
          "cpu_count": os.cpu_count(), "device": jax.devices()[0].platform, "date": datetime.date.today().isoformat()}


def _alternate(workload: str, sides: dict[str, Callable[[], float]],
               repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Each side's rate per round, the sides run in turn ``repeats`` times after one untimed
  warm-up run each (compiles included); returns the rates and each warm-up's seconds.
  Progress goes to stderr."""
  warmup = {}
  for name, run in sides.items():
    t0 = time.perf_counter()
    run()
    warmup[name] = time.perf_counter() - t0
    print(f"# {workload} {name}: warm-up {warmup[name]:.1f} s", file=sys.stderr, flush=True)
  rates: dict[str, list[float]] = {name: [] for name in sides}
  for r in range(repeats):
    for name, run in sides.items():
      rates[name].append(run())
      print(f"# {workload} {name}: round {r + 1}, {rates[name][-1]:.4g}", file=sys.stderr, flush=True)
  return rates, warmup


def _row(workload: str, variant: str, unit: str, jax_rates: list[float], torch_rates: list[float],
         warmup_s: dict[str, float], settings: dict[str, Any], load_before: Any) -> dict[str, Any]:
  ratios = [j / t for j, t in zip(jax_rates, torch_rates)]
  return {"workload": workload, "variant": variant, "unit": unit, "jax_rate": common.median(jax_rates),
          "torch_rate": common.median(torch_rates), "ratio_median": common.median(ratios),
          "jax_rates": jax_rates, "torch_rates": torch_rates, "repeats": len(ratios), "warmup_s": warmup_s,
          **settings, **_meta(), "load_average_before": load_before, "load_average_after": common.load_average()}


def _convnet(width: int) -> Any:
  return models.get("convnet", NUM_CLASSES, width=width)


def _torch_convnet(width: int) -> Any:
  from benchmarks import torch_models  # noqa: PLC0415

  return torch_models.ConvNet(NUM_CLASSES, width, in_channels=1, image_size=28)


def _nchw(x_NxHxWxC: np.ndarray) -> Any:
  return _torch().from_numpy(np.array(x_NxHxWxC.transpose(0, 3, 1, 2), np.float32, order="C"))  # a writable copy


# ---------------------------------------------------------------------------------------
# Shadow models
# ---------------------------------------------------------------------------------------

def _shadow_jax(model: Any, split: data.DeviceSplit, keep: np.ndarray, optimizer: Any, mesh: Any, s: Sizes,
                per: int, loop: str) -> float:
  """Models per hour of training every model of ``keep``, ``per`` a call."""
  num = keep.shape[0]
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  for lo in range(0, num, per):
    out = shadow.train_shadow_models(model, split, keep, key, optimizer, mesh, epochs=s.epochs,
                                     batch_size=s.batch_size, start=lo, stop=min(lo + per, num), loop=loop)
    jax.block_until_ready(out)
  return 3600.0 * num / (time.perf_counter() - t0)


def _shadow_torch(x: Any, y: Any, keep: np.ndarray, s: Sizes) -> float:
  """Models per hour of training every model of ``keep``, one after another."""
  torch = _torch()
  import torch.nn.functional as F  # noqa: PLC0415, N812

  num = keep.shape[0]
  steps = int(keep.sum(1).min()) // s.batch_size
  t0 = time.perf_counter()
  for m in range(num):
    torch.manual_seed(m)
    net = _torch_convnet(s.width)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    own = torch.from_numpy(np.flatnonzero(keep[m]))
    x_in, y_in = x[own], y[own]
    for _ in range(s.epochs):
      perm = torch.randperm(own.numel())
      for i in range(steps):
        idx = perm[i * s.batch_size:(i + 1) * s.batch_size]
        loss = F.cross_entropy(net(x_in[idx])[0], y_in[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
  return 3600.0 * num / (time.perf_counter() - t0)


def bench_shadow(s: Sizes, host: data.HostDataset) -> list[dict[str, Any]]:
  torch = _torch()
  load_before = common.load_average()
  mesh = parallel.make_mesh(s.devices)
  pool = data.subset(host, s.train_size)
  split = data.to_device(pool, mesh).train
  keep = mia.keep_masks(s.models, s.train_size, 0)
  optimizer = optimizer_config()
  optimizer.lr, optimizer.momentum, optimizer.weight_decay, optimizer.schedule = LR, MOMENTUM, WEIGHT_DECAY, "constant"
  loop = s.loop or train.default_loop(mesh)
  model = _convnet(s.width)
  x = _nchw(pool.train.images.astype(np.float32) / 255.0)
  y = torch.from_numpy(pool.train.labels.astype(np.int64))
  sides: dict[str, Callable[[], float]] = {}
  for c in s.chunks:
    per = s.models if c == 0 else min(c, s.models)
    sides[f"jax_{c}"] = lambda per=per: _shadow_jax(model, split, keep, optimizer, mesh, s, per, loop)
  sides["torch"] = lambda: _shadow_torch(x, y, keep, s)
  rates, warmup = _alternate("shadow", sides, s.repeats)
  settings = {"models": s.models, "epochs": s.epochs, "pool": s.train_size, "in_per_model": int(keep.sum(1).min()),
              "batch_size": s.batch_size, "steps_per_epoch": int(keep.sum(1).min()) // s.batch_size,
              "model": f"convnet_w{s.width}", "optimizer": f"sgd lr {LR} momentum {MOMENTUM} wd {WEIGHT_DECAY}",
              "augment": "none", "loop": loop, "devices": len(mesh.devices.flat)}
  rows = []
  for c in s.chunks:
    per = s.models if c == 0 else min(c, s.models)
    variant = "all_models_vmapped" if per == s.models else f"{per}_per_chunk"
    rows.append(_row("shadow", variant, "models/hour", rates[f"jax_{c}"], rates["torch"],
                     {"jax": warmup[f"jax_{c}"], "torch": warmup["torch"]}, {**settings, "models_per_chunk": per},
                     load_before))
  return rows


# ---------------------------------------------------------------------------------------
# Condensation: DM and DC
# ---------------------------------------------------------------------------------------

def _dm_torch_iteration(s: Sizes, real: Any, by_class: list[np.ndarray], b: int, syn: Any, opt: Any,
                        rng: np.random.Generator) -> None:
  """One iteration of ``main_DM.py``: a fresh frozen ConvNet, the per-class mean-embedding
  distances summed, one step on the synthetic images."""
  torch = _torch()
  net = _torch_convnet(s.width)
  net.train()
  for p in net.parameters():
    p.requires_grad_(False)
  loss = torch.tensor(0.0)
  for c in range(NUM_CLASSES):
    img_real = real[rng.permutation(by_class[c])[:b]]
    img_syn = syn[c * s.ipc:(c + 1) * s.ipc]
    out_real = net.embed(img_real).detach()
    out_syn = net.embed(img_syn)
    loss = loss + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
  opt.zero_grad()
  loss.backward()
  opt.step()


def _match_loss(gw_syn: list[Any], gw_real: list[Any]) -> Any:
  """The reference's ``match_loss`` with ``dis_metric='ours'`` (``distance_wb`` per layer)."""
  dis = 0.0
  for gs, gr in zip(gw_syn, gw_real):
    if gr.dim() == 1:  # biases and norm parameters: 0
      continue
    gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    dis = dis + (1 - (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()
  return dis


def _dc_torch_iteration(s: Sizes, real: Any, by_class: list[np.ndarray], b: int, syn: Any, opt: Any,
                        rng: np.random.Generator, loops: tuple[int, int]) -> None:
  """One iteration of ``main.py`` (DC, no augmentation): a fresh ConvNet, ``outer`` image
  steps on the summed gradient distances, ``inner`` epochs of the network between them."""
  torch = _torch()
  import torch.nn.functional as F  # noqa: PLC0415, N812

  outer, inner = loops
  net = _torch_convnet(s.width)
  net.train()
  params = list(net.parameters())
  opt_net = torch.optim.SGD(net.parameters(), lr=0.01)
  labels = torch.arange(NUM_CLASSES).repeat_interleave(s.ipc)
  for ol in range(outer):
    loss = torch.tensor(0.0)
    for c in range(NUM_CLASSES):
      img_real = real[rng.permutation(by_class[c])[:b]]
      lab_real = torch.full((b,), c, dtype=torch.long)
      img_syn = syn[c * s.ipc:(c + 1) * s.ipc]
      lab_syn = torch.full((s.ipc,), c, dtype=torch.long)
      gw_real = torch.autograd.grad(F.cross_entropy(net(img_real)[0], lab_real), params)
      gw_real = [g.detach().clone() for g in gw_real]
      gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn)[0], lab_syn), params, create_graph=True)
      loss = loss + _match_loss(gw_syn, gw_real)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if ol == outer - 1:
      break
    syn_train, n = syn.detach().clone(), syn.shape[0]
    for _ in range(inner):  # the reference's epoch('train', ...) over a shuffled loader, batch 256
      perm = torch.randperm(n)
      for lo in range(0, n, 256):
        idx = perm[lo:lo + 256]
        net_loss = F.cross_entropy(net(syn_train[idx])[0], labels[idx])
        opt_net.zero_grad()
        net_loss.backward()
        opt_net.step()


def bench_condense(method: str, s: Sizes, host: data.HostDataset) -> list[dict[str, Any]]:
  torch = _torch()
  load_before = common.load_average()
  images = host.train.images[: s.condense_size]
  labels = host.train.labels[: s.condense_size].astype(np.int32)
  norm = cd.Normalization.of(images)
  real = cd.real_data(images, labels, NUM_CLASSES, norm)
  b = min(s.batch_real, real.min_count)
  iterations = s.iterations if method == "dm" else s.dc_iterations
  loops = s.dc_loops if method == "dc" else None
  config = cd.condense_config(method, NUM_CLASSES, s.ipc, images.shape[1:], model=_convnet(s.width), strategy="none",
                              batch_real=s.batch_real, **({"loops": loops} if loops else {}))
  init = "real" if method == "dm" else "noise"  # each method's default (the reference's runs)
  step = cd.make_step(config)
  state = [cd.init_state(config, real, jax.random.PRNGKey(0), init)]

  def run_jax() -> float:
    t0 = time.perf_counter()
    st = state[0]
    for _ in range(iterations):
      st, metrics = step(st, real)
    jax.block_until_ready((st, metrics))
    state[0] = st
    return iterations / (time.perf_counter() - t0)

  real_t = _nchw(np.asarray(real.images))
  by_class = [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]
  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  if init == "real":
    syn0 = torch.cat([real_t[rng.permutation(by_class[c])[: s.ipc]] for c in range(NUM_CLASSES)])
  else:
    syn0 = torch.randn(NUM_CLASSES * s.ipc, *real_t.shape[1:])
  syn = syn0.clone().requires_grad_(True)
  opt = torch.optim.SGD([syn], lr=config.lr_img, momentum=config.momentum_img)

  def run_torch() -> float:
    t0 = time.perf_counter()
    for _ in range(iterations):
      if method == "dm":
        _dm_torch_iteration(s, real_t, by_class, b, syn, opt, rng)
      else:
        _dc_torch_iteration(s, real_t, by_class, b, syn, opt, rng, loops)
    return iterations / (time.perf_counter() - t0)

  rates, warmup = _alternate(method, {"jax": run_jax, "torch": run_torch}, s.repeats)
  settings = {"iterations": iterations, "ipc": s.ipc, "real_images": int(images.shape[0]), "batch_real": b,
              "model": f"convnet_w{s.width}", "init": init, "augment": "none", "lr_img": config.lr_img,
              "devices": 1}
  if loops:
    settings.update(outer_loop=config.outer_loop, inner_loop=config.inner_loop, lr_net=config.lr_net,
                    batch_train=config.batch_train)
  return [_row(method, "jitted_iteration", "iterations/s", rates["jax"], rates["torch"], warmup, settings,
               load_before)]


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

def bench(workloads: tuple[str, ...], s: Sizes, out: str | None = None, torch_threads: int = 0) -> list[dict[str, Any]]:
  """Runs ``workloads`` at sizes ``s``; prints (and writes to ``out``, JSON lines) each row.
  ``torch_threads`` > 0 sets PyTorch's thread count for the run (restored after); 0 keeps
  its default."""
  torch = _torch()
  host = data.load_arrays("fashion_mnist_mini")
  rows: list[dict[str, Any]] = []
  default_threads = torch.get_num_threads()
  if torch_threads:
    torch.set_num_threads(torch_threads)
  sink = open(out, "w") if out else None  # noqa: SIM115
  try:
    for w in workloads:
      new = bench_shadow(s, host) if w == "shadow" else bench_condense(w, s, host)
      for r in new:
        r["torch_threads_default"] = default_threads
        line = json.dumps(common.jsonable(r))
        print(line, flush=True)
        if sink is not None:
          sink.write(line + "\n")
          sink.flush()
      rows += new
  finally:
    torch.set_num_threads(default_threads)
    if sink is not None:
      sink.close()
  return rows


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  d = Sizes()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workloads", default=",".join(WORKLOADS), help="any of shadow,dm,dc")
  p.add_argument("--models", type=int, default=d.models, help="shadow models")
  p.add_argument("--epochs", type=int, default=d.epochs, help="shadow training epochs")
  p.add_argument("--train-size", type=int, default=d.train_size, help="shadow pool (each model trains on half)")
  p.add_argument("--batch-size", type=int, default=d.batch_size, help="shadow training batch")
  p.add_argument("--chunks", default=",".join(map(str, d.chunks)),
                 help="jaxprotect models per call, one row each (0: all at once)")
  p.add_argument("--loop", default=d.loop, choices=("", "scan", "host"), help="shadow loop ('': the default)")
  p.add_argument("--width", type=int, default=d.width, help="ConvNet width")
  p.add_argument("--ipc", type=int, default=d.ipc, help="synthetic images per class")
  p.add_argument("--iterations", type=int, default=d.iterations, help="DM iterations per timed repeat")
  p.add_argument("--dc-iterations", type=int, default=d.dc_iterations, help="DC iterations per timed repeat")
  p.add_argument("--dc-loops", default=",".join(map(str, d.dc_loops)),
                 help="DC outer,inner on both sides (the reference's for ipc 10: 10,50)")
  p.add_argument("--condense-size", type=int, default=d.condense_size, help="real images condensed")
  p.add_argument("--batch-real", type=int, default=d.batch_real, help="real images per class per matching step")
  p.add_argument("--repeats", type=int, default=d.repeats)
  p.add_argument("--devices", type=int, default=d.devices,
                 help="CPU devices for jaxprotect's shadow models (the model axis split over them)")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="PyTorch threads (0: its default; 1 avoids its spinning threads on an oversubscribed CPU)")
  p.add_argument("--out", default=None, help="also write the rows here (JSON lines)")
  p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run); the size flags are ignored")
  a = p.parse_args(argv)
  workloads = tuple(w for w in a.workloads.split(",") if w)
  unknown = [w for w in workloads if w not in WORKLOADS]
  if unknown or not workloads:
    p.error(f"--workloads: expected some of {', '.join(WORKLOADS)}, got {a.workloads!r}")
  if a.quick:
    s = dataclasses.replace(Sizes.quick(), devices=a.devices)
  else:
    loops = _ints(a.dc_loops)
    if len(loops) != 2:
      p.error(f"--dc-loops: expected outer,inner, got {a.dc_loops!r}")
    s = Sizes(models=a.models, epochs=a.epochs, train_size=a.train_size, batch_size=a.batch_size,
              chunks=_ints(a.chunks), width=a.width, ipc=a.ipc, iterations=a.iterations,
              dc_iterations=a.dc_iterations, dc_loops=loops, condense_size=a.condense_size,
              batch_real=a.batch_real, repeats=a.repeats, loop=a.loop, devices=a.devices)
  if s.devices < 1:
    p.error(f"--devices: expected a positive count, got {s.devices}")
  if s.devices > 1:
    try:  # as many CPU devices, if JAX has not started its backend yet (else: those it has)
      jax.config.update("jax_num_cpu_devices", s.devices)
    except RuntimeError:
      pass
  return bench(workloads, s, a.out, a.torch_threads)


if __name__ == "__main__":
  from jaxprotect import platform

  platform.apply_cpu_xla_flags()
  main()
