"""Where does a jitted Flax ResNet-18 step lose to eager PyTorch on CPU? Cheap variations.

  python -m benchmarks.studies.cpu_gap [--width 16] [--batch 64] [--steps 2] [--repeats 3]
      [--xla-flag-sets="--xla_cpu_use_onednn=true;--xla_cpu_use_xnnpack=true"] [--jax f32,bf16]
      [--torch nchw_f32,nhwc_f32,nhwc_bf16] [--pgd [--pgd-steps 4]]

For each ``;``-separated entry of ``--xla-flag-sets`` (one subprocess each, since XLA
reads its flags once; an empty entry is the defaults),
the subprocess times, interleaved on the same fixed batch, a plain jitted training step
(``train.make_train_step``: SGD momentum 0.9, wd 5e-4, CE) per ``--jax`` variant and an
eager PyTorch step per ``--torch`` variant (``nchw``/``nhwc`` memory format, ``f32`` or
``bf16`` autocast), and prints one JSON line: median ms per step per variant and each
variant's speed relative to eager PyTorch NCHW float32. With ``--pgd`` it times instead
``--pgd-steps`` sign-PGD steps on one batch (eval mode, input gradient):
jaxprotect's ``pgd.make_batch_pgd`` (a ``fori_loop``), the same steps unrolled in Python
inside one jit, and the eager PyTorch loop.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def _median_ms(fn, steps, repeats, sync):
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      fn()
    sync()
    out.append(1e3 * (time.perf_counter() - t0) / steps)
  return out


def run_one(a):
  """One process: XLA_FLAGS are already in the environment."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F

  from benchmarks import common, torch_impl, torch_models
  from jaxprotect import losses, models, parallel, train
  from jaxprotect.config import optimizer_config
  from jaxprotect.unlearnable import pgd

  x_np, y_np = common.synthetic_cifar(a.batch)
  mesh = parallel.make_mesh(1)
  opt = optimizer_config()
  opt.schedule = "constant"
  opt.lr = 0.1
  tx = train.make_optimizer(opt, 100, 1)
  kw = {} if a.width == 64 else {"width": a.width}
  x = jnp.asarray(x_np, jnp.float32) / 255.0
  y = jnp.asarray(y_np)
  timers, compile_s = {}, {}
  for v in (v for v in a.jax.split(",") if v):
    model = models.get("resnet18", 10, dtype={"f32": "float32", "bf16": "bfloat16"}[v], **kw)
    t0 = time.perf_counter()
    if a.pgd:
      variables = models.init_variables(model, jax.random.PRNGKey(0), x[:1])
      run_fori = jax.jit(pgd.make_batch_pgd(model, pgd.error_minimizing_objective(), a.pgd_steps))

      def unrolled(variables, x, y, d, eps, alpha, model=model):
        for _ in range(a.pgd_steps):
          g = jax.grad(lambda d: jnp.sum(losses.cross_entropy(model.apply(variables, x + d)[0], y)))(d)
          d = pgd.sign_descent(d, g, x, eps, alpha)
        return d

      run_unrolled = jax.jit(unrolled)
      d0 = jnp.zeros_like(x)
      for name, f in ((f"jax_{v}_fori", run_fori), (f"jax_{v}_unrolled", run_unrolled)):
        t0 = time.perf_counter()
        f(variables, x, y, d0, 8 / 255, 0.8 / 255).block_until_ready()
        compile_s[name] = time.perf_counter() - t0
        timers[name] = (lambda f=f: f(variables, x, y, d0, 8 / 255, 0.8 / 255).block_until_ready(), lambda: None)
      continue
    with jax.threefry_partitionable(False):
      state = train.init_state(model, tx, x[:1], jax.random.PRNGKey(0), mesh)
    step = train.make_train_step(model, train.ce_loss(), tx, mesh)
    batch = {"image": x, "label": y}
    box = {"state": state}

    def jstep(step=step, box=box, batch=batch):
      box["state"], m = step(box["state"], batch)
      box["m"] = m

    jstep()
    jax.block_until_ready(box["m"])
    compile_s[f"jax_{v}"] = time.perf_counter() - t0
    timers[f"jax_{v}"] = (jstep, lambda box=box: jax.block_until_ready(box["m"]))
  for v in (v for v in a.torch.split(",") if v):
    layout, dt = v.split("_")
    net = torch_models.get("resnet18", 10, width=a.width)
    xt = torch_impl.to_nchw(x_np).float() / 255.0
    yt = torch.from_numpy(y_np).long()
    if layout == "nhwc":
      net = net.to(memory_format=torch.channels_last)
      xt = xt.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dt == "bf16" else None
    if a.pgd:
      net.eval()
      for p in net.parameters():
        p.requires_grad_(False)

      def tstep(net=net, xt=xt, yt=yt, ctx=ctx):
        def obj(p):
          if ctx is None:
            return F.cross_entropy(net(p)[0], yt)
          with ctx():
            return F.cross_entropy(net(p)[0].float(), yt)

        torch_impl.min_min_attack(obj, xt, torch.zeros_like(xt), a.pgd_steps, 0.8 / 255)
    else:
      o = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

      def tstep(net=net, xt=xt, yt=yt, o=o, ctx=ctx):
        o.zero_grad()
        if ctx is None:
          loss = F.cross_entropy(net(xt)[0], yt)
        else:
          with ctx():
            loss = F.cross_entropy(net(xt)[0].float(), yt)
        loss.backward()
        o.step()

    tstep()
    timers[f"torch_{v}"] = (tstep, lambda: None)
  samples = {k: [] for k in timers}
  for _ in range(a.repeats):  # interleaved
    for k, (fn, sync) in timers.items():
      samples[k] += _median_ms(fn, a.steps, 1, sync)
  ms = {k: statistics.median(v) for k, v in samples.items()}
  ref = ms.get("torch_nchw_f32")
  return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "width": a.width, "batch": a.batch,
          "what": f"pgd x{a.pgd_steps} (ms per call)" if a.pgd else "train step (ms)",
          "ms": {k: round(v, 1) for k, v in ms.items()},
          "speed_vs_torch_nchw_f32": {k: round(ref / v, 2) for k, v in ms.items()} if ref else None,
          "compile_s": {k: round(v, 1) for k, v in compile_s.items()}, "load": [round(x, 2) for x in os.getloadavg()],
          "jax": jax.__version__, "torch": torch.__version__}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--jax", default="f32")
  p.add_argument("--torch", default="nchw_f32")
  p.add_argument("--pgd", action="store_true")
  p.add_argument("--pgd-steps", type=int, default=4)
  p.add_argument("--xla-flag-sets", default="", help="';'-separated XLA_FLAGS values, one subprocess each "
                                                      "(use the --xla-flag-sets=... form)")
  p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.one:
    print(json.dumps(run_one(a)), flush=True)
    return
  for flags in a.xla_flag_sets.split(";"):
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    args = [x for x in sys.argv[1:] if not x.startswith("--xla-flag-sets")]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.cpu_gap", *args, "--one"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not line.startswith("{"):
      print(json.dumps({"xla_flags": flags, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}),
            flush=True)
    else:
      print(line, flush=True)


if __name__ == "__main__":
  main()
