"""The PyTorch side of the benchmark, in the style of the authors' reference code.

Two modes:

* **eager** -- what the unlearnable-examples reference code does: eager PyTorch,
  float32, NCHW, batches from a ``DataLoader`` over a ``TensorDataset`` of uint8 images
  (converted to float [0, 1] per batch), ``loss.backward()`` everywhere, PGD as in its
  ``min_min_attack`` (model parameters frozen during the perturbation pass, as its
  sample-wise loop does).
* **tuned** -- the same loops with bfloat16 autocast, channels_last tensors and
  ``torch.compile`` of the model where enabled; a compile failure is caught, recorded
  (``torch.compile n/a: <reason>``) and the workload runs uncompiled.

Runners follow the protocol of ``benchmarks.jax_impl`` (``setup``, ``run``,
``details``). Importing this module needs ``torch``.
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import common, torch_models
from benchmarks.common import Size


def device() -> torch.device:
  """CUDA when available, else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
  dev = device()
  if dev.type == "cuda":
    return torch.cuda.get_device_name(dev)
  return f"cpu ({torch.get_num_threads()} threads)"


def _sync(dev: torch.device) -> None:
  if dev.type == "cuda":
    torch.cuda.synchronize(dev)


def to_nchw(images_nhwc: np.ndarray) -> torch.Tensor:
  """uint8 N x H x W x C (numpy) -> uint8 N x C x H x W (torch, contiguous)."""
  return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).contiguous()


def _forever(loader: DataLoader) -> Iterator:
  while True:
    yield from loader


def mi_ue_loss(feats: torch.Tensor, labels: torch.Tensor,
               temperature: float = common.MI_UE_TEMPERATURE) -> torch.Tensor:
  """MI-UE's loss as the authors' reference code writes it: with ``c_ij`` the
  cosine similarities, ``-mean_i log(sum_{y_j = y_i} (exp(c_ij/t) + 1e-8) / sum_j (exp(c_ij/t) + 1e-8))``,
  self-similarity included in both sums."""
  f = F.normalize(feats.float(), dim=1)
  e = torch.exp(f @ f.T / temperature) + 1e-8
  same = (labels[:, None] == labels[None, :]).float()
  return -torch.log((e * same).sum(1) / e.sum(1)).mean()


def cmim_loss(logits: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, temps: torch.Tensor,
              lam: float = common.CMIM_LAMBDA) -> torch.Tensor:
  """Mean over the batch of ``CE + lam * mean_T T^2 KL(softmax(z/T) || Q_{T,y})`` (the
  formula of ``jaxprotect.losses.cmim_loss`` with mean aggregation and T^2 weights)."""
  z = logits.float()
  logp = F.log_softmax(z[None] / temps[:, None, None], dim=-1)  # T x B x K
  logq = torch.log(centroids.clamp_min(1e-8))[:, labels]  # T x B x K
  kl = (logp.exp() * (logp - logq)).sum(-1)  # T x B
  return (F.cross_entropy(z, labels, reduction="none") + lam * (kl * temps[:, None] ** 2).mean(0)).mean()


@torch.no_grad()
def update_centroids(centroids: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, temps: torch.Tensor,
                     decay: float = common.CMIM_DECAY) -> torch.Tensor:
  """EMA of the class means of ``softmax(z/T)`` (classes absent from the batch unchanged)."""
  k = logits.shape[-1]
  onehot = F.one_hot(labels, k).float()
  probs = F.softmax(logits.detach().float()[None] / temps[:, None, None], dim=-1)
  counts = onehot.sum(0)
  means = torch.einsum("bk,tbj->tkj", onehot, probs) / counts.clamp_min(1.0)[None, :, None]
  present = (counts > 0)[None, :, None]
  return torch.where(present, decay * centroids + (1 - decay) * means, centroids)


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
  """Random crop with zero padding ``pad`` and random horizontal flip, per example, on a
  B x C x H x W batch (a batched stand-in for torchvision's per-image transforms)."""
  b, c, h, w = x.shape
  dev = x.device
  xp = F.pad(x, (pad, pad, pad, pad))
  dy = torch.randint(0, 2 * pad + 1, (b,), device=dev)
  dx = torch.randint(0, 2 * pad + 1, (b,), device=dev)
  rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
  cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
  batch_idx = torch.arange(b, device=dev)[:, None, None, None]
  channel_idx = torch.arange(c, device=dev)[None, :, None, None]
  out = xp[batch_idx, channel_idx, rows, cols]
  flip = torch.rand(b, device=dev) < 0.5
  return torch.where(flip[:, None, None, None], out.flip(3), out)


def min_min_attack(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, delta: torch.Tensor,
                   steps: int, alpha: float, eps: float = common.EPS, use_backward: bool = True) -> torch.Tensor:
  """``steps`` error-minimising sign steps from ``delta`` (the reference's ``min_min_attack``):
  ``x' <- clip(x + clip(x' - alpha sign(grad) - x, -eps, eps), 0, 1)``. Returns the new
  delta ``x' - x`` (``|delta| <= eps`` and ``x + delta`` in [0, 1]). ``use_backward``: read
  the gradient from ``.grad`` after ``loss.backward()`` as the reference does (else
  ``torch.autograd.grad``)."""
  perturbed = (x + delta).clamp(0, 1).requires_grad_(True)
  for _ in range(steps):
    loss = objective(perturbed)
    if use_backward:
      loss.backward()
      grad = perturbed.grad
    else:
      (grad,) = torch.autograd.grad(loss, perturbed)
    perturbed = perturbed.detach() - alpha * grad.sign()
    eta = (perturbed - x).clamp(-eps, eps)
    perturbed = (x + eta).clamp(0, 1).requires_grad_(True)
  return (perturbed - x).detach()


class _TorchRunner:
  """Shared set-up: device, eager/tuned switches, compile with a fallback."""

  def __init__(self, tuned: bool, compile_model: bool, compile_skip_reason: str = ""):
    self.dev = device()
    self.tuned = tuned
    self.compile = tuned and compile_model
    self.compile_note = ""
    if tuned and not compile_model:
      self.compile_note = f"no torch.compile ({compile_skip_reason or 'disabled'})"
    self._compile_s: float | None = None
    if self.dev.type == "cuda":
      torch.backends.cudnn.benchmark = True  # as the reference code sets it

  @property
  def mode(self) -> str:
    if not self.tuned:
      return f"eager, float32, NCHW, DataLoader(TensorDataset), {device_name()}"
    parts = ["bf16 autocast", "channels_last", "torch.compile" if self.compile else self.compile_note]
    return ", ".join(p for p in parts if p)

  def model(self, name: str, width: int | None) -> torch.nn.Module:
    m = torch_models.get(name, common.NUM_CLASSES, width=width).to(self.dev)
    if self.tuned:
      m = m.to(memory_format=torch.channels_last)
    return m

  def wrap(self, module: torch.nn.Module) -> Callable:
    return torch.compile(module) if self.compile else module

  def to_input(self, images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.to(self.dev, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if self.tuned else x

  def autocast(self):
    if not self.tuned:
      return contextlib.nullcontext()
    return torch.autocast(self.dev.type, dtype=torch.bfloat16)

  def warm_up(self, build: Callable[[], None], step: Callable[[], Any], n: int) -> None:
    """``build()`` then ``n`` untimed ``step()`` calls; if compiling fails, records why and
    rebuilds without ``torch.compile``."""
    t0 = time.perf_counter()
    build()
    try:
      for _ in range(n):
        step()
      _sync(self.dev)
    except Exception as e:  # noqa: BLE001 -- any compile failure: fall back to eager
      if not self.compile:
        raise
      import torch._dynamo  # noqa: PLC0415

      torch._dynamo.reset()
      self.compile = False
      self.compile_note = f"torch.compile n/a: {common.short_reason(e)}"
      build()
      for _ in range(n):
        step()
      _sync(self.dev)
    self._compile_s = time.perf_counter() - t0

  def base_details(self) -> dict[str, Any]:
    return {"compile_and_warmup_s": self._compile_s, "torch_compile": self.compile,
            **({"torch_compile_note": self.compile_note} if self.compile_note else {})}


class TrainStepRunner(_TorchRunner):
  """Victim training steps, reference style: DataLoader over a TensorDataset (shuffled),
  uint8 -> float per batch, SGD momentum 0.9 wd 5e-4, cross-entropy (or CMIM)."""

  def __init__(self, size: Size, tuned: bool, compile_model: bool, compile_skip_reason: str = "", loss: str = "ce"):
    super().__init__(tuned, compile_model, compile_skip_reason)
    self.size, self.loss = size, loss

  def _build(self) -> None:
    s = self.size
    images, labels = common.synthetic_cifar(s.batch * s.steps)
    ds = TensorDataset(to_nchw(images), torch.from_numpy(labels).long())
    loader = DataLoader(ds, batch_size=s.batch, shuffle=True, drop_last=True, pin_memory=self.dev.type == "cuda")
    self.batches = _forever(loader)
    self.net = self.model(s.model, s.width)
    self.fwd = self.wrap(self.net)
    self.opt = torch.optim.SGD(self.net.parameters(), **common.SGD)
    k = common.NUM_CLASSES
    self.temps = torch.tensor(common.CMIM_TEMPERATURES, device=self.dev)
    self.centroids = torch.full((len(common.CMIM_TEMPERATURES), k, k), 1.0 / k, device=self.dev)

  def step(self, loss: str | None = None) -> torch.Tensor:
    images, labels = next(self.batches)
    x, y = self.to_input(images), labels.to(self.dev, non_blocking=True)
    self.net.train()
    self.opt.zero_grad()
    with self.autocast():
      logits, _ = self.fwd(x)
    if (loss or self.loss) == "cmim":
      out = cmim_loss(logits, y, self.centroids, self.temps)
      self.centroids = update_centroids(self.centroids, logits, y, self.temps)
    else:
      out = F.cross_entropy(logits.float(), y)
    out.backward()
    self.opt.step()
    return out

  def setup(self) -> None:
    self.warm_up(self._build, self.step, self.size.warmup)

  def run(self) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in range(self.size.steps):
      self.step()
    _sync(self.dev)
    return {"seconds": time.perf_counter() - t0, "units": self.size.batch * self.size.steps}

  def details(self) -> dict[str, Any]:
    return {**self.base_details(), "batch": self.size.batch, "model": self.size.model_label}


class PGDPassRunner(_TorchRunner):
  """One sample-wise PGD pass over the training set, as the reference's perturbation
  pass: an unshuffled DataLoader, surrogate in eval mode with frozen parameters,
  ``min_min_attack``-style sign steps descending CE (EM) or the MI-UE loss."""

  def __init__(self, size: Size, objective: str, tuned: bool, compile_model: bool, compile_skip_reason: str = ""):
    super().__init__(tuned, compile_model, compile_skip_reason)
    self.size, self.objective = size, objective
    self.alpha = common.EM_STEP_SIZE if objective == "em" else common.MI_UE_STEP_SIZE

  def _build(self) -> None:
    s = self.size
    images, labels = common.synthetic_cifar(s.pgd_examples)
    x = to_nchw(images)
    self.loader = DataLoader(TensorDataset(x, torch.from_numpy(labels).long(), torch.arange(s.pgd_examples)),
                             batch_size=s.batch, shuffle=False, pin_memory=self.dev.type == "cuda")
    self.net = self.model(s.model, s.width).eval()
    for p in self.net.parameters():
      p.requires_grad_(False)
    self.fwd = self.wrap(self.net)
    gen = torch.Generator().manual_seed(1)
    noise = torch.empty(x.shape).uniform_(-common.EPS, common.EPS, generator=gen)
    xf = x.float() / 255.0
    self.noise = ((xf + noise).clamp(0, 1) - xf).to(self.dev)

  def objective_value(self, perturbed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with self.autocast():
      logits, feats = self.fwd(perturbed)
    if self.objective == "em":
      return F.cross_entropy(logits.float(), y)
    return mi_ue_loss(feats, y)

  def attack(self, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return min_min_attack(lambda p: self.objective_value(p, y), x, delta, self.size.pgd_steps, self.alpha,
                          use_backward=not self.tuned)

  def one_pass(self) -> None:
    for images, labels, idx in self.loader:
      x, y = self.to_input(images), labels.to(self.dev, non_blocking=True)
      idx = idx.to(self.dev)
      self.noise[idx] = self.attack(x, y, self.noise[idx]).float().contiguous()

  def setup(self) -> None:
    self.warm_up(self._build, self.one_pass, 1)

  def run(self) -> dict[str, float]:
    t0 = time.perf_counter()
    self.one_pass()
    _sync(self.dev)
    return {"seconds": time.perf_counter() - t0, "units": self.size.pgd_examples * self.size.pgd_steps}

  def details(self) -> dict[str, Any]:
    s = self.size
    return {**self.base_details(), "batch": s.batch, "pgd_steps": s.pgd_steps, "examples": s.pgd_examples,
            "model": s.model_label}


class CMIMRunner:
  """CE and CMIM steps on one model, timed in alternation (the value is their ratio)."""

  def __init__(self, size: Size, tuned: bool, compile_model: bool, compile_skip_reason: str = ""):
    self.inner = TrainStepRunner(size, tuned, compile_model, compile_skip_reason)

  @property
  def mode(self) -> str:
    return self.inner.mode + f", CMIM over {len(common.CMIM_TEMPERATURES)} temperatures"

  def setup(self) -> None:
    r = self.inner

    def both():
      r.step("ce")
      r.step("cmim")

    r.warm_up(r._build, both, r.size.warmup)

  def run(self) -> dict[str, float]:
    r, out = self.inner, {}
    for loss in ("ce", "cmim"):
      t0 = time.perf_counter()
      for _ in range(r.size.steps):
        r.step(loss)
      _sync(r.dev)
      out[f"{loss}_s"] = (time.perf_counter() - t0) / r.size.steps
    return out

  def details(self) -> dict[str, Any]:
    return self.inner.details()


class E2ERunner(_TorchRunner):
  """EM sample-wise crafting then a victim, in the reference's loop structure, from the
  same synthetic ``.npz`` as the JAX side: outer iterations of ``train_steps`` surrogate
  steps walking an unshuffled loader (noise added by index, gradient-norm clip 5), a PGD
  pass over the whole set, and the stop rule (error on the perturbed set < 0.01) up to
  ``max_iterations``; then a fresh victim on the poisoned uint8 images for
  ``victim_epochs`` (SGD, cosine, batched crop4+flip, test accuracy every epoch).
  Wall time, compile included; everything stays in memory (no checkpoints)."""

  def __init__(self, size: Size, tuned: bool, compile_model: bool, compile_skip_reason: str = ""):
    super().__init__(tuned, compile_model, compile_skip_reason)
    self.e = size.e2e
    self._details: dict[str, Any] = {}

  def setup(self) -> None:
    pass

  def _train_step(self, net, fwd, opt, x, y, clip: float | None = None) -> None:
    net.train()
    opt.zero_grad()
    with self.autocast():
      logits, _ = fwd(x)
    F.cross_entropy(logits.float(), y).backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()

  def _em_objective(self, fwd, perturbed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with self.autocast():
      logits, _ = fwd(perturbed)
    return F.cross_entropy(logits.float(), y)

  @torch.no_grad()
  def _accuracy(self, net, fwd, loader, noise: torch.Tensor | None = None) -> float:
    net.eval()
    correct = total = 0
    for images, labels, idx in loader:
      x, y = self.to_input(images), labels.to(self.dev)
      if noise is not None:
        x = x + noise[idx.to(self.dev)]
      with self.autocast():
        logits, _ = fwd(x)
      correct += int((logits.argmax(1) == y).sum())
      total += len(y)
    return correct / max(total, 1)

  def _craft(self, x_u8: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    e, n = self.e, len(y)
    ds = TensorDataset(x_u8, y, torch.arange(n))
    pin = self.dev.type == "cuda"
    train_loader = DataLoader(ds, batch_size=e.batch, shuffle=False, pin_memory=pin)
    pass_loader = DataLoader(ds, batch_size=e.pgd_batch, shuffle=False, pin_memory=pin)
    net = self.model(e.model, e.width)
    fwd = self.wrap(net)
    opt = torch.optim.SGD(net.parameters(), **common.SGD)
    gen = torch.Generator().manual_seed(1)
    xf = x_u8.float() / 255.0
    uniform = torch.empty(xf.shape).uniform_(-common.EPS, common.EPS, generator=gen)
    noise = ((xf + uniform).clamp(0, 1) - xf).to(self.dev)
    it, iterations, done, acc = None, 0, False, 0.0
    while not done and iterations < e.max_iterations:
      for p in net.parameters():
        p.requires_grad_(True)
      for _ in range(e.train_steps):
        try:
          images, labels, idx = next(it)
        except (StopIteration, TypeError):
          it = iter(train_loader)
          images, labels, idx = next(it)
        x = self.to_input(images) + noise[idx.to(self.dev)]
        self._train_step(net, fwd, opt, x, labels.to(self.dev), clip=common.GRAD_CLIP)
      net.eval()
      for p in net.parameters():
        p.requires_grad_(False)
      for images, labels, idx in pass_loader:
        xb, yb, idx = self.to_input(images), labels.to(self.dev), idx.to(self.dev)
        noise[idx] = min_min_attack(lambda p: self._em_objective(fwd, p, yb), xb, noise[idx], e.pgd_steps,
                                    common.EM_STEP_SIZE, use_backward=not self.tuned).float().contiguous()
      acc = self._accuracy(net, fwd, pass_loader, noise)
      iterations += 1
      done = bool(e.stop_error) and (1.0 - acc) < e.stop_error
    return noise, {"iterations": iterations, "stopped_early": done, "perturbed_train_accuracy": acc}

  def _victim(self, poisoned_u8: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    e = self.e
    pin = self.dev.type == "cuda"
    loader = DataLoader(TensorDataset(poisoned_u8, y), batch_size=e.victim_batch, shuffle=True, drop_last=True,
                        pin_memory=pin)
    test_loader = DataLoader(TensorDataset(x_test, y_test, torch.arange(len(y_test))), batch_size=512, shuffle=False,
                             pin_memory=pin)
    net = self.model(e.model, e.width)
    fwd = self.wrap(net)
    opt = torch.optim.SGD(net.parameters(), **common.SGD)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, e.victim_epochs * len(loader)))
    acc = 0.0
    for _ in range(e.victim_epochs):
      for images, labels in loader:
        x = crop_flip(self.to_input(images))
        if self.tuned:
          x = x.contiguous(memory_format=torch.channels_last)
        self._train_step(net, fwd, opt, x, labels.to(self.dev))
        sched.step()
      acc = self._accuracy(net, fwd, test_loader)
    return acc

  def run(self) -> dict[str, float]:
    e = self.e
    with tempfile.TemporaryDirectory(prefix="jaxprotect-bench-") as tmp:
      npz = common.write_synthetic_npz(pathlib.Path(tmp) / "synthetic_cifar.npz", e.train_examples, e.test_examples)
      t0 = time.perf_counter()
      with np.load(npz) as z:
        x_train, y_train = to_nchw(z["x_train"]), torch.from_numpy(z["y_train"]).long()
        x_test, y_test = to_nchw(z["x_test"]), torch.from_numpy(z["y_test"]).long()
      noise, craft = self._craft(x_train, y_train)
      _sync(self.dev)
      t1 = time.perf_counter()
      # the poisoned training set as uint8 images, as the reference stores it
      poisoned = ((x_train.float() / 255.0 + noise.cpu()).clamp(0, 1) * 255.0).round().to(torch.uint8)
      victim_acc = self._victim(poisoned, y_train, x_test, y_test)
      _sync(self.dev)
      t2 = time.perf_counter()
    self._details = {"craft_s": t1 - t0, "victim_s": t2 - t1, **craft, "victim_test_accuracy": victim_acc}
    return {"seconds": t2 - t0, "craft_s": t1 - t0, "victim_s": t2 - t1, "details": dict(self._details)}

  def details(self) -> dict[str, Any]:
    e = self.e
    return {**self._details, "torch_compile": self.compile,
            **({"torch_compile_note": self.compile_note} if self.compile_note else {}),
            "model": e.model if e.width is None else f"{e.model}_w{e.width}", "train_examples": e.train_examples,
            "max_iterations": e.max_iterations, "victim_epochs": e.victim_epochs}


def make_runner(workload: str, size: Size, tuned: bool, compile_model: bool, compile_skip_reason: str = ""):
  """The PyTorch runner of ``workload`` (eager when not ``tuned``)."""
  if workload == "train_step":
    return TrainStepRunner(size, tuned, compile_model, compile_skip_reason)
  if workload in ("em_pgd", "mi_ue_pgd"):
    return PGDPassRunner(size, "em" if workload == "em_pgd" else "mi_ue", tuned, compile_model, compile_skip_reason)
  if workload == "cmim_step":
    return CMIMRunner(size, tuned, compile_model, compile_skip_reason)
  if workload == "e2e_em":
    return E2ERunner(size, tuned, compile_model, compile_skip_reason)
  raise ValueError(f"unknown workload {workload!r}")
