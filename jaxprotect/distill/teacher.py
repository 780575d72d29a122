"""Teachers: CE, Nasty Teacher and CMIM, trained through ``runner.fit``; export and loading.

A teacher run directory is an ordinary ``fit`` run directory (resumable after a kill)
plus, once training has finished:

* ``teacher.msgpack`` -- the trained variables (params and BatchNorm statistics);
* ``teacher.json`` -- what the attack needs to rebuild the model, and the teacher's
  test accuracy, method and parameter digest;
* ``cmi_curve.json`` / ``cmi_curve.png`` -- CMI(T) on the train and test splits.

The model and its recipe are the config's ``teacher`` section; the teacher's checkpoints
record the hash of ``data``, ``teacher`` and the method's settings (``teacher_hash``), so
the student and attack settings of the same config can change freely.

A Nasty teacher needs a frozen, normally trained reference: ``nasty.reference`` names a
finished teacher directory, or (empty) a CE reference -- the same config with method
``"ce"`` -- is trained first in ``<workdir>/reference``.

CMIM keeps one K x K centroid matrix per temperature in ``state.extra["centroids"]``
(checkpointed with the state): initialised by a full pass of the initial model over the
training split (evaluation mode), then updated every step by an EMA from the global
batch (``losses.update_centroids``); the loss uses the centroids from before the step's
update (stop-gradient).
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxprotect import config as config_lib, data, losses, models, parallel, runner, train
from jaxprotect.distill import blackbox, config as distill_config_lib, curve
from jaxprotect.distill.config import METHODS

__all__ = [
    "METHODS", "TEACHER_JSON", "TEACHER_VARIABLES", "cmim_stateful_loss", "initial_centroids", "load_teacher",
    "method_settings", "nasty_loss", "teacher_hash", "teacher_hash_extra", "train_teacher",
]

TEACHER_JSON = "teacher.json"
TEACHER_VARIABLES = "teacher.msgpack"
_CMIM_KEY_SALT = 0x434D494D  # "CMIM": separates the temperature-draw stream from the run's


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------

def cmim_stateful_loss(temperatures: tuple[float, ...], lam: float, aggregation: str = "mean", weighting: str = "t2",
                       decay: float = losses.DEFAULT_CENTROID_DECAY, seed: int = 0, lam_warmup_steps: int = 0,
                       label_smoothing: float = 0.0):
  """The CMIM teacher loss as a ``train.stateful`` loss over ``extra = {"centroids": T x K x K}``.

  Per example: ``CE + lam_t * aggregate_T KL(softmax(z / T) || Q_y^T)`` with the current
  centroids (``losses.cmim_loss``); ``lam_t`` ramps linearly from 0 to ``lam`` over
  ``lam_warmup_steps`` (0: constant). The new extra holds the EMA-updated centroids
  (``losses.update_centroids``, global batch). ``aggregation="random"`` draws the
  temperature from ``fold_in(key(seed), step)``.
  """
  temps_T = jnp.asarray(temperatures, jnp.float32)
  if aggregation not in losses.AGGREGATIONS:
    raise ValueError(f"unknown CMI aggregation {aggregation!r}; use one of {losses.AGGREGATIONS}")
  if weighting not in losses.WEIGHTINGS:
    raise ValueError(f"unknown CMI weighting {weighting!r}; use one of {losses.WEIGHTINGS}")

  @train.stateful
  def loss_fn(outputs, batch, extra):
    logits_BxK, _ = outputs
    labels_B, step = batch["label"], batch["step"]
    key = jax.random.fold_in(jax.random.PRNGKey(seed ^ _CMIM_KEY_SALT), step) if aggregation == "random" else None
    lam_t = lam * (jnp.minimum((step + 1) / lam_warmup_steps, 1.0) if lam_warmup_steps else 1.0)
    loss_B = losses.cmim_loss(logits_BxK, labels_B, extra["centroids"], temps_T, lam_t, aggregation, weighting, key,
                              label_smoothing)
    new = {"centroids": losses.update_centroids(logits_BxK, labels_B, extra["centroids"], temps_T, decay)}
    return loss_B, new

  return loss_fn


def nasty_loss(temperature: float, omega: float):
  """The Nasty Teacher loss on ``batch["ref_logits"]`` (added by ``blackbox.teacher_hook``);
  ``temperature`` is the paper's ``tau`` (``config.nasty.tau``)."""

  def loss_fn(outputs, batch):
    return losses.nasty_teacher_loss(outputs[0], batch["ref_logits"], batch["label"], temperature=temperature,
                                     omega=omega)

  return loss_fn


# ---------------------------------------------------------------------------------------
# Full passes: centroids
# ---------------------------------------------------------------------------------------

def initial_centroids(model, variables, split: data.DeviceSplit, temperatures, mesh: Mesh,
                      batch_size: int) -> jax.Array:
  """Full-pass centroids ``T x K x K`` of ``model`` with ``variables`` over ``split``."""
  logits_NxK = train.make_logits_fn(model, mesh, batch_size)(variables, split)
  centroids = losses.class_mean_centroids(logits_NxK, split.labels, jnp.asarray(temperatures, jnp.float32))
  return jax.device_put(centroids, parallel.replicated(mesh))


# ---------------------------------------------------------------------------------------
# Configs and hashes
# ---------------------------------------------------------------------------------------

def method_settings(config: ml_collections.ConfigDict, method: str | None = None,
                    reference_sha: str | None = None) -> dict[str, Any]:
  """What a teacher of ``method`` (default ``config.method``) computes from besides ``data``
  and ``teacher``: ``{"cmim": {...}}``, ``{"nasty": {tau, omega, reference_sha256}}`` (the
  reference teacher's parameter digest) or ``{}`` for CE; the other methods' settings do
  not enter."""
  method = method or config.method
  if method not in METHODS:
    raise ValueError(f"unknown teacher method {method!r}; use one of {METHODS}")
  if method == "cmim":
    return {"cmim": config.cmim.to_dict()}
  if method == "nasty":
    return {"nasty": {"tau": config.nasty.tau, "omega": config.nasty.omega, "reference_sha256": reference_sha or ""}}
  return {}


def teacher_hash_extra(config: ml_collections.ConfigDict, method: str | None = None,
                       reference_sha: str | None = None) -> dict[str, Any]:
  """The ``hash_extra`` of the teacher's ``runner.fit`` (``section="teacher"``):
  ``{"method", "settings": method_settings(...)}``."""
  method = method or config.method
  return {"method": method, "settings": method_settings(config, method, reference_sha)}


def teacher_hash(config: ml_collections.ConfigDict, method: str | None = None,
                 reference_sha: str | None = None) -> str:
  """The config hash a teacher's run directory records: ``data``, ``teacher`` and the
  method's settings (``method_settings``); never ``student``, ``attacks`` or ``runtime``."""
  return runner.fit_hash(config, "teacher", teacher_hash_extra(config, method, reference_sha))


def _check_cmim(cfg: ml_collections.ConfigDict) -> None:
  temps = tuple(cfg.temperatures)
  if not temps or any(t <= 0 for t in temps):
    raise ValueError(f"cmim.temperatures must be positive, got {temps}")
  if not 0.0 <= cfg.decay < 1.0:
    raise ValueError(f"cmim.decay must be in [0, 1), got {cfg.decay}")
  if cfg.lam < 0:
    raise ValueError(f"cmim.lam must be >= 0, got {cfg.lam}")


# ---------------------------------------------------------------------------------------
# Training, export, loading
# ---------------------------------------------------------------------------------------

def train_teacher(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, mesh: Mesh | None = None,
                  dataset: data.DeviceDataset | None = None) -> dict[str, Any]:
  """Trains (or resumes) the teacher ``config.method`` (model and recipe: ``config.teacher``)
  in ``workdir`` and exports it.

  Returns the teacher manifest (also written to ``teacher.json``). The CMI curve is
  written as well when ``config.curve.enabled``. A Nasty teacher without
  ``nasty.reference`` first trains its CE reference: the same config with method
  ``"ce"``, in ``<workdir>/reference``.
  """
  config_lib.check_fields(config, distill_config_lib.distill_config())
  workdir = pathlib.Path(workdir)
  method = config.method
  if method not in METHODS:
    raise ValueError(f"unknown teacher method {method!r}; use one of {METHODS}")
  if method == "cmim":
    _check_cmim(config.cmim)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(config, mesh)

  kw: dict[str, Any] = {}
  reference_sha = None
  if method == "nasty":
    ref_dir = pathlib.Path(config.nasty.reference) if config.nasty.reference else workdir / "reference"
    if not config.nasty.reference:
      ref_cfg = copy.deepcopy(config)
      ref_cfg.method = "ce"
      ref_cfg.curve.enabled = False
      train_teacher(ref_cfg, ref_dir, mesh, ds)
    ref_model, ref_vars, ref_manifest = load_teacher(ref_dir)
    ref_ds = ref_manifest["dataset"]
    if ref_manifest["num_classes"] != ds.num_classes or list(ref_ds["image_shape"]) != list(ds.train.image_shape):
      raise ValueError(f"Nasty teacher reference {ref_dir} was trained on {ref_ds['name']} "
                       f"({ref_manifest['num_classes']} classes, images {ref_ds['image_shape']}), not on {ds.name!r}")
    reference_sha = ref_manifest["params_sha256"]
    kw["batch_fn"] = blackbox.teacher_hook("logits", key="ref_logits")
    kw["aux"] = blackbox.BlackBoxTeacher(ref_model, ref_vars, "logits", mesh)
    kw["loss_fn"] = nasty_loss(config.nasty.tau, config.nasty.omega)

  t = config.teacher
  model = models.from_config(t, ds.num_classes)
  if method == "cmim":
    cfg = config.cmim
    steps_per_epoch = ds.train.size // t.batch_size
    kw["loss_fn"] = cmim_stateful_loss(
        tuple(cfg.temperatures), cfg.lam, cfg.aggregation, cfg.weighting, cfg.decay, t.seed,
        int(round(cfg.lam_warmup_epochs * steps_per_epoch)), t.label_smoothing)
    # full-pass centroids of the parameters fit starts from
    kw["extra"] = lambda state: {"centroids": initial_centroids(
        model, train.variables_of(state), ds.train, cfg.temperatures, mesh, t.eval_batch_size)}

  hash_extra = teacher_hash_extra(config, method, reference_sha)
  results, state = runner.fit(config, workdir, mesh, ds, section="teacher", hash_extra=hash_extra, model=model,
                              return_state=True, **kw)
  variables = jax.device_get(train.variables_of(state))
  manifest = {
      "method": method,
      "model": t.model,
      "model_kwargs": t.model_kwargs.to_dict(),
      "dtype": t.dtype,
      "num_classes": ds.num_classes,
      "dataset": data.describe(ds),
      "test_accuracy": results["test_accuracy"],
      "params_sha256": results["params_sha256"],
      "config_hash": results["config_hash"],
      "settings": {"method": method, **hash_extra["settings"]},
  }
  if parallel.is_main_process():
    config_lib.write_bytes_atomic(workdir / TEACHER_VARIABLES, flax.serialization.msgpack_serialize(_plain(variables)))
    config_lib.write_json_atomic(workdir / TEACHER_JSON, manifest)
  if config.curve.enabled:
    curve.write_cmi_curve(model, variables, ds, workdir, config.curve, mesh, t.eval_batch_size)
  return manifest


def load_teacher(workdir: str | pathlib.Path):
  """``(model, variables, manifest)`` of a finished teacher directory.

  For the owner of the teacher (the Nasty teacher's reference, the CMI curve, and
  building the black box); attack code only ever receives a ``BlackBoxTeacher``.
  """
  workdir = pathlib.Path(workdir)
  manifest_path, vars_path = workdir / TEACHER_JSON, workdir / TEACHER_VARIABLES
  if not manifest_path.exists() or not vars_path.exists():
    raise ValueError(f"{workdir} is not a finished teacher directory (no {TEACHER_JSON} / {TEACHER_VARIABLES}); "
                     "run `jaxprotect distill teacher` there first")
  manifest = json.loads(manifest_path.read_text())
  model = models.from_config(manifest, manifest["num_classes"])
  variables = flax.serialization.msgpack_restore(vars_path.read_bytes())
  variables = jax.tree.map(lambda a: np.asarray(a, np.float32), dict(variables))
  if runner.params_digest(variables["params"]) != manifest["params_sha256"]:
    raise ValueError(f"{vars_path} does not match the parameter digest in {manifest_path}")
  return model, variables, manifest


def _plain(tree: Any) -> Any:
  """Nested plain dicts of numpy arrays (msgpack-serialisable)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {str(k): _plain(v) for k, v in tree.items()}
  return np.asarray(tree)
