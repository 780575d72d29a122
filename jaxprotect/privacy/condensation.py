"""The ``jaxprotect condense`` phase: condense a training set into a few synthetic images
per class (DC, Zhao, Mopuri & Bilen, ICLR 2021; DSA, Zhao & Bilen, ICML 2021; DM, Zhao &
Bilen, WACV 2023 -- ``condense.condense``), evaluate them, and measure how close they are
to the real images (``neighbours``), as in "Privacy for Free: How does Dataset
Condensation Help Privacy?" (Dong, Zhao & Lyu, ICML 2022) with the baselines asked for by
Carlini, Feldman & Nasr ("No Free Lunch in 'Privacy for Free'", arXiv 2209.14987).

``run_condense(config, workdir)`` runs three resumable steps in ``workdir``:

1. **condensation** (a ``run.Phase`` hashing ``data`` and ``condense``): the
   ``CondenseState`` is checkpointed every ``runtime.checkpoint.every_iterations``
   iterations; a killed run resumes from its last checkpoint and ends bitwise equal to an
   uninterrupted one (iteration ``t`` draws from ``fold_in(key, t)``). The synthetic set is
   then written, atomically, to ``synthetic/``::

     synthetic.npz   images_pixels (pixel space, ``Condensed.pixels()``, unclipped),
                     images (the networks' standardised space), labels, init_ids (the real
                     ids the images started from; -1 for noise), mean, std (the
                     normalisation)
     class_KK.png    a grid of class KK's synthetic images (clipped to [0, 1] for display)
     manifest.json   format, method, ipc, iterations, init, the dataset (name, sizes,
                     fingerprint), the data + condense config and its hash, the jaxprotect
                     version, the SHA-256 of every array (``array_sha256``) and file

   A finished ``synthetic/`` of the same config is never condensed again; one of another
   config is refused (use another workdir).
2. **evaluation**: fresh ConvNets trained on the synthetic set, the ``evaluate.seeds``
   together under ``jax.vmap`` (``condense.evaluate_synthetic``, the reference's recipe),
   tested on the real test split; kept in ``evaluation.json`` with the hash of ``data``,
   ``condense`` and ``evaluate`` and the synthetic set's SHA-256, so a rerun after a kill
   during evaluation evaluates again without condensing, and a changed ``evaluate``
   section re-evaluates the same synthetic set.
3. **neighbours** (``neighbours.enabled``): ``neighbours.neighbour_analysis`` in pixel
   space under L2 and SSIM -- the synthetic set against the real training set, a random
   real subset of the same size and the initial real images against the other real
   images -- in ``neighbours.json``, and ``closest_pairs.png``.

``results.json`` gathers the test accuracy per seed, mean and standard deviation, the
published ConvNet accuracies of DC (``PAPER_DC_ACCURACY``, Zhao et al. 2021 Table 1, the
figures "Privacy for Free" builds on) when the dataset and ``ipc`` have one, and a
summary of the neighbours.

Config (``condensation_config()``): ``data``, ``condense`` (method, ipc, iterations, init,
the ConvNet, real batch, image lr, DSA strategy, seed), ``evaluate`` (seeds, epochs,
batch, lr, momentum, weight decay, augmentation), ``neighbours`` and ``runtime``. ``None``
fields take the reference's value for the method: iterations 1000 (DC/DSA) or 20000 (DM);
init noise (DC) or real (DSA, DM); image lr 0.1 (DC/DSA) or 1.0 (DM); evaluation 300
epochs without augmentation (DC) or 1000 with the condensation's DSA strategy (DSA, DM).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxprotect import checks, config as config_lib, data, models, parallel, platform, run
from jaxprotect.data.idx import sha256_file
from jaxprotect.privacy import condense as cd
from jaxprotect.privacy import neighbours as nb
from jaxprotect.privacy.dsa import parse_strategy

__all__ = [
    "FORMAT", "PAPER_DC_ACCURACY", "array_sha256", "condensation_config", "load_synthetic", "paper_accuracy",
    "report_markdown", "run_condense",
]

FORMAT = "jaxprotect-synthetic-1"
MANIFEST = "manifest.json"
SYNTHETIC_DIR = "synthetic"
# ConvNet test accuracy (%) of DC at 1 / 10 / 50 images per class (Zhao, Mopuri & Bilen,
# ICLR 2021, Table 1), the figures Dong et al. (ICML 2022) compare with.
PAPER_DC_ACCURACY = {
    "fashion_mnist": {1: 70.5, 10: 82.3, 50: 83.6},
    "mnist": {1: 91.7, 10: 97.4, 50: 98.8},
    "cifar10": {1: 28.3, 10: 44.9, 50: 53.9},
}
_REFERENCE_ITERATIONS = {"dc": 1000, "dsa": 1000, "dm": 20000}
_REFERENCE_EPOCHS = {"dc": 300, "dsa": 1000, "dm": 1000}


def condensation_config() -> ml_collections.ConfigDict:
  """``jaxprotect condense``: ``data`` (default the embedded Fashion-MNIST slice),
  ``condense``, ``evaluate``, ``neighbours`` and ``runtime`` (checkpoint every 100
  iterations). Locked; ``None`` fields take the method's reference value (module
  docstring)."""
  c = ml_collections.ConfigDict()
  c.data = config_lib.data_config()
  c.condense = ml_collections.ConfigDict(dict(
      method="dm",  # dc | dsa | dm
      ipc=10,  # synthetic images per class
      iterations=config_dict.placeholder(int),  # None: 1000 (DC/DSA), 20000 (DM)
      init=config_dict.placeholder(str),  # noise | real; None: noise (DC), real (DSA/DM)
      model="convnet",
      # The reference's ConvNet; a smaller width (e.g. 32) is what a CPU can run.
      model_kwargs=ml_collections.ConfigDict(dict(width=128, depth=3, norm="instancenorm")),
      batch_real=256,  # real images per class per matching step
      lr_img=config_dict.placeholder(float),  # None: 0.1 (DC/DSA), 1.0 (DM)
      lr_net=0.01,  # DC/DSA inner training of the network
      strategy="auto",  # DSA strategy: "auto" (none for DC; dsa.default_strategy for DSA/DM), "none", "crop_scale"...
      distance="ours",  # DC/DSA gradient distance: ours | mse | cos
      seed=0,
  ))
  c.evaluate = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),  # networks trained together under vmap
      epochs=config_dict.placeholder(int),  # None: 300 (DC), 1000 (DSA/DM)
      batch=256,
      lr=0.01,
      momentum=0.9,
      weight_decay=5e-4,
      strategy="auto",  # "auto": the condensation's DSA strategy (none for DC); or "none", a strategy
      eval_batch=500,
      vectorize=True,  # False: the seeds one after another in one program
  ))
  c.neighbours = ml_collections.ConfigDict(dict(
      enabled=True,
      ssim=True,  # also the SSIM neighbours (costlier than L2: a few filtered maps per pair)
      seed=0,  # the random real subset of the baseline
      pairs=8,  # closest pairs drawn per metric in closest_pairs.png
      chunk=0,  # real images per block (0: the metric's default)
  ))
  c.runtime = config_lib.runtime_config()
  c.runtime.checkpoint.every_iterations = 100
  return config_lib.lock(c)


# ---------------------------------------------------------------------------------------
# Checks and resolved settings
# ---------------------------------------------------------------------------------------

def _resolved(config: ml_collections.ConfigDict, host: data.HostDataset) -> dict[str, Any]:
  """The condensation's settings with the reference's defaults filled in; ValueError
  naming the field for a bad one (nothing is written before)."""
  c = config.condense
  method = c.method.lower() if isinstance(c.method, str) else c.method
  if method not in cd.METHODS:
    raise ValueError(f"condense.method: expected one of {', '.join(repr(m) for m in cd.METHODS)}, got {c.method!r}")
  init = c.init if c.init is not None else ("noise" if method == "dc" else "real")
  if not isinstance(init, str) or init.lower() not in cd.INITS:
    raise ValueError(f"condense.init: expected one of {', '.join(repr(i) for i in cd.INITS)} or None, got {c.init!r}")
  iterations = checks.check_positive_int(_REFERENCE_ITERATIONS[method] if c.iterations is None else c.iterations,
                                         "condense.iterations")
  ipc = checks.check_positive_int(c.ipc, "condense.ipc")
  counts = np.bincount(np.asarray(host.train.labels), minlength=host.num_classes)
  if ipc > counts.min():
    raise ValueError(f"condense.ipc: expected at most {int(counts.min())} images per class (class "
                     f"{int(np.argmin(counts))} of {host.name!r} has {int(counts.min())} training images), got {ipc}")
  e = config.evaluate
  epochs = checks.check_positive_int(_REFERENCE_EPOCHS[method] if e.epochs is None else e.epochs, "evaluate.epochs",
                                     minimum=0)
  seeds = tuple(e.seeds)
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise ValueError(f"evaluate.seeds: expected a non-empty tuple of ints, got {e.seeds!r}")
  kwargs = c.model_kwargs.to_dict() if hasattr(c.model_kwargs, "to_dict") else dict(c.model_kwargs or {})
  try:
    model = models.get(c.model, host.num_classes, **kwargs)
  except (TypeError, ValueError) as err:
    raise ValueError(f"condense.model: {err}") from None
  options = dict(model=model, strategy=c.strategy, batch_real=c.batch_real, lr_img=c.lr_img, lr_net=c.lr_net,
                 distance=c.distance)
  try:
    ccfg = cd.condense_config(method, host.num_classes, ipc, host.train.images.shape[1:], **options)
  except ValueError as err:
    raise ValueError(f"condense.{err}") from None
  if e.strategy == "auto":
    eval_strategy = ccfg.strategy
  else:
    try:
      eval_strategy = parse_strategy(e.strategy)
    except ValueError as err:
      raise ValueError(f"evaluate.strategy: {err}") from None
  return dict(method=method, init=init.lower(), iterations=iterations, ipc=ipc, epochs=epochs, seeds=seeds,
              model=model, options=options, condense_config=ccfg, eval_strategy=eval_strategy)


def paper_accuracy(dataset: str, method: str, ipc: int) -> dict[str, Any] | None:
  """The published DC ConvNet accuracy for ``dataset`` (``fashion_mnist``, ``mnist``,
  ``cifar10``; the embedded ``fashion_mnist_mini`` slice is compared with Fashion-MNIST's)
  at ``ipc``, with whether the setting is the paper's (full dataset and method DC), or
  None when the paper has no figure."""
  name = "fashion_mnist" if dataset == data.DEFAULT_DATASET else dataset
  figure = PAPER_DC_ACCURACY.get(name, {}).get(ipc)
  if figure is None:
    return None
  return {"dataset": name, "method": "dc", "ipc": ipc, "test_accuracy_percent": figure,
          "same_setting": dataset == name and method == "dc",
          "source": "Zhao, Mopuri & Bilen, ICLR 2021, Table 1 (ConvNet), as compared in Dong et al., ICML 2022"}


# ---------------------------------------------------------------------------------------
# The synthetic set on disk
# ---------------------------------------------------------------------------------------

def array_sha256(a: np.ndarray) -> str:
  """SHA-256 of ``"<dtype>:<d0>x<d1>...;"`` followed by the array's C-order bytes."""
  a = np.ascontiguousarray(a)
  h = hashlib.sha256(f"{a.dtype.str}:{'x'.join(map(str, a.shape))};".encode())
  h.update(a.data)
  return h.hexdigest()


def _code_version() -> str:
  import jaxprotect  # noqa: PLC0415

  return jaxprotect.__version__


def _class_grids(directory: pathlib.Path, pixels: np.ndarray, labels: np.ndarray, num_classes: int) -> list[str]:
  """``class_KK.png``: each class's synthetic images in a grid of at most 10 columns
  (pixels clipped to [0, 1], scaled up twice). Without Pillow nothing is drawn."""
  try:
    image_mod = platform.require("PIL.Image", "plot", "the synthetic images' PNG grids")
  except platform.MissingExtraError as err:
    platform.log.warning("skipped: %s", err)
    return []
  names = []
  u8 = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
  h, w, ch = u8.shape[1:]
  for k in range(num_classes):
    imgs = u8[labels == k]
    cols = min(10, len(imgs))
    rows = -(-len(imgs) // cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, ch), 255, np.uint8)
    for i, img in enumerate(imgs):
      r, c = divmod(i, cols)
      grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = img
    grid = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1)
    name = f"class_{k:02d}.png"
    image_mod.fromarray(grid[..., 0] if ch == 1 else grid).save(directory / name)
    names.append(name)
  return names


def _save_synthetic(directory: pathlib.Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any],
                    num_classes: int) -> dict[str, Any]:
  """Writes ``synthetic.npz``, the class grids and the manifest into a temporary directory
  and renames it into place (a reader never sees a partial set); returns the manifest."""
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
  try:
    with open(tmp / "synthetic.npz", "wb") as f:
      np.savez(f, **arrays)
    files = ["synthetic.npz", *_class_grids(tmp, arrays["images_pixels"], arrays["labels"], num_classes)]
    manifest = {**manifest, "format": FORMAT, "jaxprotect_version": _code_version(),
                "arrays": {k: array_sha256(v) for k, v in arrays.items()},
                "files": {f: sha256_file(tmp / f) for f in files}}
    config_lib.write_json_atomic(tmp / MANIFEST, manifest)
    if directory.exists():
      old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
      os.replace(directory, old)
      shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def load_synthetic(directory: os.PathLike | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The arrays of a synthetic set (``synthetic.npz``) and its manifest, after checking
  every file and array against the manifest's SHA-256; ``directory`` is the set or the
  condense workdir holding ``synthetic/``. ValueError for a missing, modified or foreign
  directory."""
  p = pathlib.Path(directory)
  if not (p / MANIFEST).exists() and (p / SYNTHETIC_DIR / MANIFEST).exists():
    p = p / SYNTHETIC_DIR
  if not (p / MANIFEST).exists():
    raise ValueError(f"{directory}: no synthetic set here ({MANIFEST} missing); run `jaxprotect condense` first")
  manifest = json.loads((p / MANIFEST).read_text())
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{p / MANIFEST}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
  for name, want in manifest["files"].items():
    if not (p / name).exists() or sha256_file(p / name) != want:
      raise ValueError(f"{p / name}: missing or its SHA-256 does not match the manifest")
  with np.load(p / "synthetic.npz") as z:
    arrays = {k: z[k] for k in z.files}
  for name, want in manifest["arrays"].items():
    if name not in arrays or array_sha256(arrays[name]) != want:
      raise ValueError(f"{p / 'synthetic.npz'}: array {name!r} missing or its SHA-256 does not match the manifest")
  return arrays, manifest


def _existing_synthetic(directory: pathlib.Path, condense_hash: str, fingerprint: str):
  """The finished synthetic set of this config, None when there is none; ValueError for one
  of another config or dataset."""
  if not (directory / MANIFEST).exists():
    return None
  arrays, manifest = load_synthetic(directory)
  if manifest.get("config_hash") != condense_hash:
    raise ValueError(f"{directory} holds a synthetic set of another config (hash {manifest.get('config_hash')}, this "
                     f"run's data + condense sections hash to {condense_hash}); use another workdir")
  if manifest["dataset"]["fingerprint"] != fingerprint:
    raise ValueError(f"{directory} was condensed from dataset fingerprint {manifest['dataset']['fingerprint']}, "
                     f"not {fingerprint}; use another workdir")
  return arrays, manifest


# ---------------------------------------------------------------------------------------
# The phase
# ---------------------------------------------------------------------------------------

def _state_template(ccfg: cd.CondenseConfig, host: data.HostDataset, init: str, key: jax.Array) -> cd.CondenseState:
  """The ``CondenseState`` shapes of this run (no device work), on the default device --
  where ``condense`` runs -- for restoring a checkpoint."""
  counts = np.bincount(np.asarray(host.train.labels), minlength=host.num_classes)
  real = cd.RealData(images=jax.ShapeDtypeStruct((len(host.train), *ccfg.image_shape), jnp.float32),
                     index_KxM=jax.ShapeDtypeStruct((host.num_classes, int(counts.max())), jnp.int32),
                     count_K=jax.ShapeDtypeStruct((host.num_classes,), jnp.int32), min_count=int(counts.min()))
  abstract = jax.eval_shape(lambda r: cd.init_state(ccfg, r, key, init), real)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)


def _condense_step(config, workdir: pathlib.Path, host: data.HostDataset, ds: data.DeviceDataset, r: dict[str, Any],
                   normalization: cd.Normalization, phase: run.Phase) -> tuple[dict, dict, dict]:
  """Condenses (resuming from the latest checkpoint) and writes ``synthetic/``."""
  key = jax.random.PRNGKey(config.condense.seed)
  every = max(1, int((config.runtime.get("checkpoint") or {}).get("every_iterations", 100) or 1))
  t0 = time.time()
  with phase:
    template = _state_template(r["condense_config"], host, r["init"], key)
    restored = phase.restore(template)
    resume = None if restored is template else restored
    start = 0 if resume is None else int(resume.iteration)
    last = [phase.start(start, desc=f"condense {r['method']}")]

    def callback(state: cd.CondenseState) -> None:
      t = int(state.iteration)
      phase.log(t, advance=t - last[0], seconds=round(time.time() - t0, 3))
      last[0] = t
      phase.checkpoint(t, state)

    result = cd.condense(r["method"], host.train.images, host.train.labels, r["ipc"], r["iterations"], key,
                         num_classes=host.num_classes, init=r["init"], real_ids=host.train.ids,
                         normalization=normalization, resume=resume, callback=callback, every=every, **r["options"])
    if last[0] < r["iterations"]:
      phase.log(r["iterations"], advance=r["iterations"] - last[0], seconds=round(time.time() - t0, 3))
  n = len(result.labels)
  arrays = {
      "images_pixels": np.asarray(result.pixels(), np.float32),
      "images": np.asarray(result.images, np.float32),
      "labels": np.asarray(result.labels, np.int32),
      "init_ids": (np.full((n,), -1, np.int64) if result.init_ids is None else np.asarray(result.init_ids, np.int64)),
      "mean": np.asarray(normalization.mean_C, np.float32),
      "std": np.asarray(normalization.std_C, np.float32),
  }
  losses = np.asarray(result.losses, np.float64)
  stats = {"iterations_this_process": int(losses.size), "seconds_this_process": round(time.time() - t0, 2),
           "resumed_from": start,
           "final_loss": None if losses.size == 0 else float(losses[-min(every, losses.size):].mean())}
  manifest = {"method": r["method"], "ipc": r["ipc"], "iterations": r["iterations"], "init": r["init"],
              "num_classes": host.num_classes, "strategy": "_".join(r["condense_config"].strategy) or "none",
              "config": {"data": config.data.to_dict(), "condense": config.condense.to_dict()},
              "config_hash": phase.config_hash, "dataset": data.describe(ds), "stats": stats}
  if parallel.is_main_process():
    manifest = _save_synthetic(workdir / SYNTHETIC_DIR, arrays, manifest, host.num_classes)
  return arrays, manifest, stats


def _evaluate_step(config, workdir: pathlib.Path, host: data.HostDataset, r: dict[str, Any], arrays, manifest):
  """Trains the evaluation networks unless ``evaluation.json`` holds this config's result."""
  path = workdir / "evaluation.json"
  eval_hash = config_lib.phase_hash(config, ("data", "condense", "evaluate"))
  digest = manifest["files"]["synthetic.npz"]
  if path.exists():
    done = json.loads(path.read_text())
    if done.get("evaluate_hash") == eval_hash and done.get("synthetic_sha256") == digest:
      return done
  e = config.evaluate
  t0 = time.time()
  acc = cd.evaluate_synthetic(
      jnp.asarray(arrays["images"]), jnp.asarray(arrays["labels"]), host.test.images, host.test.labels,
      list(r["seeds"]), model=r["model"], normalization=cd.Normalization(jnp.asarray(arrays["mean"]),
                                                                        jnp.asarray(arrays["std"])),
      epochs=r["epochs"], batch_train=e.batch, lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay,
      strategy=r["eval_strategy"] or None, eval_batch=e.eval_batch, vectorize=bool(e.vectorize),
      num_classes=host.num_classes)
  acc = [float(a) for a in np.asarray(acc)]
  done = {"evaluate_hash": eval_hash, "synthetic_sha256": digest, "seeds": list(r["seeds"]), "epochs": r["epochs"],
          "strategy": "_".join(r["eval_strategy"]) or "none", "test_accuracy": acc,
          "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc)),
          "test_size": len(host.test), "seconds": round(time.time() - t0, 2)}
  if parallel.is_main_process():
    config_lib.write_json_atomic(path, done)
  return done


def _neighbours_step(config, workdir: pathlib.Path, host: data.HostDataset, arrays, manifest) -> dict[str, Any] | None:
  """``neighbours.json`` and ``closest_pairs.png`` unless they hold this config's result."""
  cfg = config.neighbours
  if not cfg.enabled:
    return None
  path = workdir / "neighbours.json"
  n_hash = config_lib.phase_hash(config, ("data", "condense", "neighbours"))
  digest = manifest["files"]["synthetic.npz"]
  if path.exists() and (workdir / "closest_pairs.png").exists():
    done = json.loads(path.read_text())
    if done.get("neighbours_hash") == n_hash and done.get("synthetic_sha256") == digest:
      return done
  t0 = time.time()
  init_ids = arrays["init_ids"] if np.all(arrays["init_ids"] >= 0) else None
  metrics = nb.METRICS if cfg.ssim else ("l2",)
  report, found = nb.neighbour_analysis(arrays["images_pixels"], host.train.images, host.train.ids,
                                        init_ids=init_ids, seed=cfg.seed, metrics=metrics, chunk=cfg.chunk)
  report = {"neighbours_hash": n_hash, "synthetic_sha256": digest, "seconds": round(time.time() - t0, 2), **report}
  if parallel.is_main_process():
    nb.closest_pairs_png(workdir / "closest_pairs.png", arrays["images_pixels"], host.train.images, found,
                         k=cfg.pairs, labels_Q=arrays["labels"])
    config_lib.write_json_atomic(path, report)
  return report


def _neighbour_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
  if report is None:
    return None
  out = {}
  for metric, entry in report["metrics"].items():
    closest = "0" if metric == "l2" else "1"  # the smallest distance, the largest similarity
    out[metric] = {name: {"mean": entry[name]["mean"], "median": entry[name]["quantiles"]["0.5"],
                          "closest": entry[name]["quantiles"][closest]}
                   for name in ("synthetic", "random_real_subset", "init_real", "synthetic_to_init") if name in entry}
    if "nearest_is_init_fraction" in entry:
      out[metric]["nearest_is_init_fraction"] = entry["nearest_is_init_fraction"]
  return out


def run_condense(config: ml_collections.ConfigDict, workdir: os.PathLike | str, mesh=None) -> dict[str, Any]:
  """Condenses ``config.data``'s training set, evaluates the synthetic set and measures its
  nearest real images, resumably (module docstring); writes ``workdir/results.json`` and
  returns it. Bad settings (unknown method or init, ``ipc`` above the smallest class,
  ``iterations < 1``, ...) raise ValueError naming the field before anything is written."""
  config_lib.check_fields(config, condensation_config())
  host = data.host_from_config(config)
  r = _resolved(config, host)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = data.to_device(host, mesh, config.data.layout)
  workdir = pathlib.Path(workdir)
  phase = run.Phase(workdir, "condense", config, dataset=ds, total=r["iterations"], unit="iteration",
                    sections=("data", "condense"))
  found = _existing_synthetic(workdir / SYNTHETIC_DIR, phase.config_hash, ds.fingerprint)
  if found is None:
    normalization = cd.Normalization.of(host.train.images)
    arrays, manifest, stats = _condense_step(config, workdir, host, ds, r, normalization, phase)
  else:
    (arrays, manifest), stats = found, {"iterations_this_process": 0, "reused": True}
  evaluation = _evaluate_step(config, workdir, host, r, arrays, manifest)
  neighbours = _neighbours_step(config, workdir, host, arrays, manifest)
  acc = evaluation["test_accuracy"]
  results = {
      "method": r["method"], "ipc": r["ipc"], "iterations": r["iterations"], "init": r["init"],
      "dataset": data.describe(ds), "num_synthetic": int(len(arrays["labels"])),
      "model": {"name": config.condense.model, **config.condense.model_kwargs.to_dict()},
      "synthetic": str((workdir / SYNTHETIC_DIR).resolve()), "synthetic_sha256": manifest["files"]["synthetic.npz"],
      "condense": stats,
      "evaluation": {k: evaluation[k] for k in ("seeds", "epochs", "strategy", "test_accuracy", "test_accuracy_mean",
                                                "test_accuracy_std", "test_size")},
      "test_accuracy": acc, "test_accuracy_mean": evaluation["test_accuracy_mean"],
      "test_accuracy_std": evaluation["test_accuracy_std"],
      "paper": paper_accuracy(config.data.name, r["method"], r["ipc"]),
      "neighbours": _neighbour_summary(neighbours),
  }
  return phase.finish(results)


def report_markdown(results: dict[str, Any]) -> str:
  """A short Markdown report of ``run_condense``'s results."""
  ds = results["dataset"]
  acc = results["test_accuracy"]
  pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
  lines = [
      f"## Dataset condensation: {results['method'].upper()}, {results['ipc']} image(s) per class",
      "",
      f"{ds['name']} ({ds['train_size']} training images, fingerprint {ds['fingerprint'][:12]}), "
      f"{results['iterations']} iterations, init {results['init']}, model {results['model']}.",
      "",
      "| evaluation | test accuracy (%) |",
      "|---|---|",
      f"| {len(acc)} seeds, {results['evaluation']['epochs']} epochs "
      f"(augmentation {results['evaluation']['strategy']}) | {pct(results['test_accuracy_mean'])} +- "
      f"{pct(results['test_accuracy_std'])} ({', '.join(pct(a) for a in acc)}) |",
  ]
  paper = results.get("paper")
  if paper:
    note = "" if paper["same_setting"] else " (not the same setting: compare with care)"
    lines.append(f"| paper, DC on {paper['dataset']}{note} | {paper['test_accuracy_percent']} |")
  nbs = results.get("neighbours")
  if nbs:
    lines += ["", "Nearest real training image (pixel space; L2: lower is closer, SSIM: higher is closer):", "",
              "| metric | query set | mean | median | closest |", "|---|---|---|---|---|"]
    names = {"synthetic": "synthetic set", "random_real_subset": "random real subset (vs other real)",
             "init_real": "initial real images (vs other real)", "synthetic_to_init": "synthetic vs its initial image"}
    for metric, entry in nbs.items():
      for name, label in names.items():
        if name in entry:
          s = entry[name]
          lines.append(f"| {metric} | {label} | {s['mean']:.4g} | {s['median']:.4g} | {s['closest']:.4g} |")
      if "nearest_is_init_fraction" in entry:
        lines.append(f"| {metric} | nearest real image is the initial one | "
                     f"{100 * entry['nearest_is_init_fraction']:.1f}% | | |")
  if math.isfinite(results.get("seconds_this_process", math.nan)):
    lines += ["", f"{results['seconds_this_process']:.0f} s in this process, {results['num_devices']} device(s)."]
  return "\n".join(lines)
