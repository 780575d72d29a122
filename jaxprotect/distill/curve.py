"""CMI(T) of a trained model on its train and test splits, over a log grid of temperatures.

For each split and temperature the centroids are the exact class means of
``softmax(z / T)`` over that split, so the value is the split's conditional mutual
information ``I(X; Y_hat^T | Y)`` (nats). ``T^2 * CMI(T)`` is recorded too: for large T it
tends to (1 / 2K) times the within-class variance of the centred logits -- the part of
the teacher's "dark knowledge" that high-temperature KD transfers.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprotect import config as config_lib, data, losses, parallel, train

__all__ = [
    "CURVE_JSON", "CURVE_PNG", "cmi_curve", "plot_cmi_curves", "temperature_grid", "write_cmi_curve",
]

CURVE_JSON = "cmi_curve.json"
CURVE_PNG = "cmi_curve.png"


def temperature_grid(t_min: float = 0.1, t_max: float = 100.0, num: int = 31) -> np.ndarray:
  """``num`` temperatures spaced evenly in log between ``t_min`` and ``t_max``."""
  if not 0 < t_min < t_max or num < 2:
    raise ValueError(f"CMI curve needs 0 < t_min < t_max and num >= 2, got {t_min}, {t_max}, {num}")
  return np.geomspace(t_min, t_max, num)


def cmi_curve(logits_NxK: jax.Array, labels_N: jax.Array, temperatures_T: np.ndarray, chunk: int = 8) -> np.ndarray:
  """``CMI(T)`` for each temperature (float64 on the host; computed in float32 on device)."""

  out = []
  temps = np.asarray(temperatures_T, np.float32)
  for i in range(0, len(temps), chunk):  # bounded memory: N x K x chunk probabilities at a time
    part = temps[i:i + chunk]
    padded = np.concatenate([part, np.full(chunk - len(part), part[-1], np.float32)])
    out.append(np.asarray(_cmi_values(logits_NxK, labels_N, jnp.asarray(padded)))[: len(part)])
  return np.concatenate(out).astype(np.float64)


@jax.jit
def _cmi_values(logits_NxK: jax.Array, labels_N: jax.Array, temperatures_T: jax.Array) -> jax.Array:
  centroids = losses.class_mean_centroids(logits_NxK, labels_N, temperatures_T)
  return jnp.mean(losses.cmi_spectrum(logits_NxK, labels_N, centroids, temperatures_T), axis=0)


def write_cmi_curve(model, variables: dict[str, Any], ds: data.DeviceDataset, workdir: os.PathLike | str,
                    curve_config: ml_collections.ConfigDict, mesh, batch_size: int) -> dict[str, Any]:
  """Computes CMI(T) on the train and test splits; writes ``cmi_curve.json`` and ``.png``."""
  workdir = pathlib.Path(workdir)
  temps = temperature_grid(curve_config.t_min, curve_config.t_max, curve_config.num)
  logits_fn = train.make_logits_fn(model, mesh, batch_size)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  result: dict[str, Any] = {"temperatures": temps.tolist()}
  for name, split in (("train", ds.train), ("test", ds.test)):
    logits = logits_fn(variables, split)
    labels = jnp.asarray(jax.device_get(split.labels))
    logits = jnp.asarray(jax.device_get(logits))
    values = cmi_curve(logits, labels, temps)
    result[name] = values.tolist()
    result[f"{name}_t2"] = (values * temps**2).tolist()
  if parallel.is_main_process():
    config_lib.write_json_atomic(workdir / CURVE_JSON, result)
    plot_cmi_curves({"model": result}, workdir / CURVE_PNG)
  return result


def plot_cmi_curves(curves: dict[str, dict[str, Any]], path: os.PathLike | str) -> None:
  """Plots CMI(T) and T^2 CMI(T) (log axes) for one or more models; train solid, test dashed.
  Without matplotlib (the ``plot`` extra) nothing is drawn and a warning is logged."""
  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the CMI curve plot {path}")
  if plt is None:
    return

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for i, (label, c) in enumerate(curves.items()):
    color = f"C{i}"
    t = np.asarray(c["temperatures"])
    for split, style in (("train", "-"), ("test", "--")):
      axes[0].plot(t, np.maximum(c[split], 1e-12), style, color=color, label=f"{label} {split}")
      axes[1].plot(t, np.maximum(c[f"{split}_t2"], 1e-12), style, color=color, label=f"{label} {split}")
  axes[0].set_ylabel("CMI(T) [nats]")
  axes[1].set_ylabel("T^2 CMI(T)")
  for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("temperature T")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  tmp = pathlib.Path(path).with_name(f".{pathlib.Path(path).name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
