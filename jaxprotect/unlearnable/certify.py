"""Certified (q, eta)-learnability by parametric smoothing (Wang et al., "Provably
Unlearnable Data Examples", NDSS 2025).

What is certified: let ``theta`` be the weights learned from a training set. For a
weight perturbation ``delta`` with ``||delta||_2 <= eta``, consider the accuracy, on the
clean test set, of the model with weights ``theta + delta + sigma * N(0, I)``. Its
q-quantile over the Gaussian draws is at most the certificate returned here, for every
such ``delta`` at once, with probability at least ``confidence`` over the N draws that
were evaluated. The certificate is an order statistic of the N sampled accuracies:
``q_up = Phi(Phi^-1(q) + eta / sigma)`` (the quantile that a shift of the Gaussian by
``eta`` can move ``q`` to), and the value is the k-th smallest accuracy for the smallest
``k >= ceil(q_up N)`` with ``BinomCDF(k - 1; N, q_up) > confidence`` -- the search of the
authors' ``certify.py`` (NeuralSec/certified-data-learnability, ``certify()``), with its
abstention (NaN here) when no such ``k <= N`` exists, e.g. when N is too small for
``q_up`` or ``q_up`` rounds to 1. A lower curve over eta means the data teach less,
provably, within that radius.

* ``certify_learnability(accuracies_N, q, eta, sigma, confidence)`` -- the certificate for
  one eta or an array of etas, in the units of the accuracies (percent or fraction);
* ``make_draw_eval(model, mesh, batch_size, sigma)`` -- a jitted function returning the
  clean-split accuracies of ``D`` weight draws at once (``train.map_draws``, batches split
  along the mesh's ``data`` axis, BatchNorm in evaluation mode with the trained
  statistics); draw ``i`` adds ``sigma * normal(fold_in(key, i))`` to every parameter, so
  the accuracies do not depend on how the draws are chunked or on the device count;
* ``certify(config, workdir)`` -- the resumable phase behind ``jaxprotect certify``: N
  draws of a finished run's model, in chunks checkpointed as they finish, then the
  certified curve over ``certify.etas`` in ``results.json`` and ``certified.png``.
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxprotect import checks, config as config_lib, data, models, parallel, run, runner, train

__all__ = [
    "ETAS", "certify", "certify_config", "certify_learnability", "certify_index", "draws_needed", "make_draw_eval",
]

# The reference's eta sweep (certify.py).
ETAS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4,
        1.5, 1.6, 1.7, 1.8, 1.9, 2.0)


# ---------------------------------------------------------------------------------------
# The certificate
# ---------------------------------------------------------------------------------------

def _check_scalars(q, sigma, confidence) -> None:
  if not 0 < q < 1:
    raise ValueError(f"q: expected a quantile in (0, 1), got {q}")
  if not sigma > 0:
    raise ValueError(f"sigma: expected a noise scale > 0, got {sigma}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")


def _q_up(q: float, eta: float, sigma: float) -> float:
  from scipy.stats import norm  # noqa: PLC0415  (scipy comes with jax)

  return float(norm.cdf(norm.ppf(q) + eta / sigma))


def _search(n: int, q_up: float, confidence: float) -> int:
  """The reference's search: 1-based k, or 0 when it abstains."""
  from scipy.stats import binom  # noqa: PLC0415

  for k in range(math.ceil(q_up * n), n + 1):
    if binom.cdf(k - 1, n, q_up) > confidence:
      return k
  return 0


def certify_index(num_draws: int, q: float, eta: float, sigma: float, confidence: float = 0.99) -> int:
  """The 1-based rank k of the certifying order statistic among ``num_draws`` sorted
  accuracies (float64 scipy, the reference's search), or 0 where it abstains."""
  _check_scalars(q, sigma, confidence)
  if eta < 0:
    raise ValueError(f"eta: expected a radius >= 0, got {eta}")
  return _search(int(num_draws), _q_up(q, eta, sigma), confidence)


def draws_needed(q: float, eta: float, sigma: float, confidence: float = 0.99, limit: int = 10**7) -> int | None:
  """The fewest draws N for which the search does not abstain at ``eta`` (None when
  ``q_up`` rounds to 1 or more than ``limit`` would be needed)."""
  from scipy.stats import binom  # noqa: PLC0415

  q_up = _q_up(q, eta, sigma)
  if q_up >= 1.0:
    return None
  # With N draws the search succeeds iff BinomCDF(N - 1; N, q_up) = 1 - q_up^N > confidence
  # (the CDF grows with k, so the last candidate decides).
  n = max(1, math.ceil(math.log1p(-confidence) / math.log(q_up)) - 1)
  while n <= limit and not binom.cdf(n - 1, n, q_up) > confidence:
    n += 1
  return n if n <= limit else None


def certify_learnability(accuracies_N, q: float, eta, sigma: float, confidence: float = 0.99):
  """The certified (q, eta)-learnability from the clean-test accuracies of N weight draws.

  Args:
    accuracies_N: one accuracy per draw of ``theta + sigma * N(0, I)`` (percent or
      fraction; the result has the same unit). A numpy or JAX array; under ``jax.jit``
      N must be static (it is the array's shape).
    q: the quantile certified, in (0, 1) (reference: 0.9).
    eta: the L2 radius of the weight perturbation, >= 0: a scalar or an array (e.g.
      ``ETAS``).
    sigma: the smoothing noise of the draws, > 0 (reference: 0.25).
    confidence: the probability over the draws with which the bound holds (reference:
      0.99).

  Returns:
    The certificate with the shape of ``eta``: the accuracy that the q-quantile of the
    smoothed model's accuracy does not exceed, for every weight perturbation within
    ``eta``, with probability >= ``confidence``; NaN where the search abstains (a
    ``RuntimeWarning`` says how many draws would be needed).

  The order-statistic rank is found on the host in float64 (``certify_index``) from
  ``q``, ``eta``, ``sigma``, ``confidence`` and N, exactly as the reference; these must
  therefore be concrete values, while the accuracies may be traced.
  """
  _check_scalars(q, sigma, confidence)
  acc = accuracies_N if isinstance(accuracies_N, jax.Array) else np.asarray(accuracies_N, np.float64)
  if acc.ndim != 1 or acc.shape[0] == 0:
    raise ValueError(f"accuracies_N: expected a non-empty vector (one accuracy per draw), got shape {acc.shape}")
  if not isinstance(acc, jax.core.Tracer) and not bool(np.all(np.isfinite(np.asarray(acc)))):
    raise ValueError("accuracies_N: expected finite accuracies")
  try:
    etas = np.asarray(eta, np.float64)
  except jax.errors.TracerArrayConversionError as e:
    raise ValueError("eta: must be concrete (the order statistic is chosen on the host)") from e
  if np.any(~np.isfinite(etas)) or np.any(etas < 0):
    raise ValueError(f"eta: expected radii >= 0, got {etas.tolist()}")
  n = acc.shape[0]
  ks = np.array([_search(n, _q_up(q, float(e), sigma), confidence) for e in etas.reshape(-1)], np.int64)
  abstain = ks == 0
  if abstain.any():
    needed = [draws_needed(q, float(e), sigma, confidence) for e in etas.reshape(-1)[abstain]]
    worst = None if any(x is None for x in needed) else max(needed)
    what = ("no number of draws suffices (q_up rounds to 1) for the largest" if worst is None
            else f"N >= {worst} draws would be needed for all")
    warnings.warn(f"certify_learnability abstains at {int(abstain.sum())} of {abstain.size} eta value(s) with "
                  f"N={n}, q={q}, sigma={sigma}, confidence={confidence}: {what} of them", RuntimeWarning,
                  stacklevel=2)
  idx = np.maximum(ks - 1, 0).reshape(etas.shape)
  if isinstance(acc, jax.Array):
    out = jnp.sort(acc)[idx].astype(jnp.result_type(acc.dtype, jnp.float32))
    return jnp.where(jnp.asarray(abstain.reshape(etas.shape)), jnp.nan, out)
  out = np.sort(acc)[idx]
  return np.where(abstain.reshape(etas.shape), np.nan, out)[()]


# ---------------------------------------------------------------------------------------
# Weight draws, evaluated on device
# ---------------------------------------------------------------------------------------

def _noisy(params: Any, key: jax.Array, sigma: jax.Array, radius: bool = False) -> Any:
  """``train.perturb_params``; with ``radius``, the change is rescaled to L2 norm ``sigma``
  over all leaves (a uniformly random direction at that distance)."""
  if not radius:
    return train.perturb_params(params, key, sigma)
  unit = train.perturb_params(jax.tree.map(jnp.zeros_like, params), key, 1.0)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(z)) for z in jax.tree.leaves(unit)))
  return jax.tree.map(lambda p, z: p + sigma / jnp.maximum(norm, 1e-12) * z, params, unit)


def make_draw_eval(model, mesh, batch_size: int, num_draws: int, radius: bool = False,
                   vectorize: bool | None = None):
  """``accuracies(variables, split, key, start, sigma) -> acc_D``: the accuracy on
  ``split`` of the ``D = num_draws`` models whose parameters are
  ``params + sigma * normal(fold_in(key, start + d))`` (every parameter leaf; BatchNorm
  statistics unchanged, evaluation mode), all in one jitted scan over the split, the draws
  mapped inside it (``train.map_draws``: a vmap on accelerators). With ``radius``, each
  draw's change is rescaled to L2 norm ``sigma`` (a random direction at that distance).
  ``vectorize`` forces a vmap (True) or a map (False). Fractions in [0, 1], replicated."""
  model = models.as_model(model)
  d = checks.check_positive_int(num_draws, "num_draws")

  def local_draws(variables, x):
    def one(index):
      noisy = {**variables["clean"], "params": _noisy(variables["clean"]["params"], jax.random.fold_in(
          variables["key"], index), variables["sigma"], radius)}
      return model.apply(noisy, x, train=False)[0]

    return train.map_draws(one, variables["start"] + jnp.arange(d), mesh, vectorize)  # D x B_local x K

  # Each device draws every perturbation itself (from the key: no traffic) and evaluates its
  # own rows of the batch. Left to the partitioner, the vmapped draws become one grouped
  # convolution whose groups it splits over the devices, all-gathering the whole batch's
  # activations at every layer (1.1 GB per layer for ResNet-18 on 8 GPUs).
  apply_fn = jax.shard_map(local_draws, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)),
                           out_specs=P(None, parallel.DATA_AXIS))

  scan = train.make_split_scan(model, mesh, batch_size, apply_fn=apply_fn)

  @jax.jit
  def run_draws(variables, split, key, start, sigma):
    def body(correct_D, logits_DxBxK, y_B, mask_B):
      hit = (jnp.argmax(logits_DxBxK, -1) == y_B[None, :]).astype(jnp.float32) * mask_B[None, :]
      return correct_D + hit.sum(-1), None

    ctx = {"clean": variables, "key": key, "start": jnp.asarray(start, jnp.int32),
           "sigma": jnp.asarray(sigma, jnp.float32)}
    correct_D, _ = scan(ctx, split, body, jnp.zeros((d,), jnp.float32))
    return jax.lax.with_sharding_constraint(correct_D / split.size, parallel.replicated(mesh))

  def accuracies(variables, split, key, start, sigma):
    return run_draws(parallel.place(variables, parallel.replicated(mesh)), split, key, start, sigma)

  accuracies.jitted = run_draws  # for ahead-of-time compiles
  return accuracies


# ---------------------------------------------------------------------------------------
# The certification phase
# ---------------------------------------------------------------------------------------

def certify_config() -> ml_collections.ConfigDict:
  """``jaxprotect certify``: ``certify`` (what to certify) and ``runtime``. The data are
  those the model was trained on (its run's ``data`` section); the draws are evaluated
  on its clean test split. Locked."""
  c = ml_collections.ConfigDict()
  c.certify = ml_collections.ConfigDict(dict(
      model="",  # a finished training run directory (jaxprotect train, evaluate's victims, ...)
      num_draws=1000,  # N (reference: 1000)
      sigma=0.25,  # smoothing noise on every parameter (reference: 0.25)
      q=0.9,  # the certified quantile (reference: 0.9)
      confidence=0.99,  # (reference: 0.99)
      etas=ETAS,
      chunk=0,  # draws evaluated at once; 0: as many as about 1 GiB of parameter copies allows
      batch_size=500,  # test images per batch
      test_subset=0,  # >0: evaluate the draws on the first n test images only (0: the whole test split)
      seed=0,
  ))
  c.runtime = config_lib.runtime_config()
  return config_lib.lock(c)


def _chunk_size(requested: int, params: Any, num_draws: int) -> int:
  if requested:
    return min(int(requested), num_draws)
  size = sum(int(np.prod(np.shape(p))) * 4 for p in jax.tree.leaves(params))
  return max(1, min(num_draws, (1 << 30) // max(size, 1), 256))


def certify(config: ml_collections.ConfigDict, workdir: os.PathLike | str, mesh=None,
            dataset: data.DeviceDataset | None = None) -> dict[str, Any]:
  """Evaluates ``certify.num_draws`` weight draws of the model in ``certify.model`` on its
  clean test split (resuming after a kill at the last finished chunk) and writes the
  certified curve over ``certify.etas`` to ``results.json`` and ``certified.png``.

  In a multi-process run every process calls it with the same config: the model's weights
  are placed from each host's copy, the accuracies are replicated arrays (checkpointed by
  every process through Orbax), and process 0 alone writes the run directory's files. The
  accuracies equal those of one process over the same number of devices, bitwise."""
  config_lib.check_fields(config, certify_config())
  c = config.certify
  _check_scalars(c.q, c.sigma, c.confidence)
  if any(e < 0 for e in c.etas) or not c.etas:
    raise ValueError(f"certify.etas: expected radii >= 0, got {tuple(c.etas)}")
  n = checks.check_positive_int(c.num_draws, "certify.num_draws")
  if not c.model:
    raise ValueError("certify.model: set it to a finished training run directory (CLI: --config.certify.model=DIR)")
  n_test = checks.check_positive_int(c.test_subset, "certify.test_subset", minimum=0)
  model, variables, info = runner.load_trained(c.model)
  mesh = parallel.mesh_from_config(config, mesh)
  ds = dataset or data.from_config(info["config"]["data"], mesh)
  test = ds.test
  if n_test:
    if n_test > ds.test.size:
      raise ValueError(f"certify.test_subset: expected at most the {ds.test.size} test images of "
                       f"{ds.name!r}, got {n_test}")
    test = data.first_rows(ds.test, n_test, mesh)
  chunk = _chunk_size(c.chunk, variables["params"], n)
  evaluate = make_draw_eval(model, mesh, c.batch_size, chunk)
  rep = parallel.replicated(mesh)
  variables = parallel.place(variables, rep)  # host arrays: each process places its own copies
  key = jax.random.PRNGKey(c.seed)
  chunks = -(-n // chunk)
  phase = run.Phase(workdir, "certify", config, dataset=ds, total=n, unit="draw", sections=("certify",),
                    hash_extra={"model_params_sha256": info["results"]["params_sha256"]},
                    record={"model": {"dir": str(pathlib.Path(c.model).resolve()), "section": info["section"],
                                      "test_accuracy": info["results"]["test_accuracy"]},
                            "test_images": test.size})
  with phase:
    state = phase.restore({"accuracies": parallel.put(np.full((chunks * chunk,), np.nan, np.float32), rep),
                           "done": parallel.put(np.int32(0), rep)})
    acc, done = state["accuracies"], int(state["done"])
    phase.start(done * chunk, desc="certify")
    while done < chunks:
      part = evaluate(variables, test, key, done * chunk, c.sigma)
      acc = jax.lax.dynamic_update_slice(acc, part, (done * chunk,))
      done += 1
      phase.log(done * chunk, advance=chunk, mean_accuracy=float(jnp.mean(part)))
      phase.checkpoint(done * chunk, {"accuracies": acc, "done": parallel.put(np.int32(done), rep)})
  accs = np.asarray(parallel.to_host(acc))[:n].astype(np.float64)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    curve = certify_learnability(accs, c.q, np.asarray(c.etas), c.sigma, c.confidence)
  notes = [str(w.message) for w in caught]
  results = {
      "model": str(pathlib.Path(c.model).resolve()),
      "model_test_accuracy": info["results"]["test_accuracy"],
      "test_images": test.size,
      "num_draws": n, "sigma": c.sigma, "q": c.q, "confidence": c.confidence,
      "etas": [float(e) for e in c.etas],
      "certified": [None if math.isnan(v) else float(v) for v in np.atleast_1d(curve)],
      "empirical_quantiles": {str(p): float(np.quantile(accs, p)) for p in (0.1, 0.5, c.q)},
      "mean_accuracy": float(accs.mean()),
      "accuracies": accs.tolist(),
  }
  if n_test or results["model_test_accuracy"] is None:  # the model itself on the images the draws saw
    own = float(make_draw_eval(model, mesh, c.batch_size, 1)(variables, test, key, 0, 0.0)[0])
    results["model_subset_accuracy" if n_test else "model_test_accuracy"] = own
  own = results.get("model_subset_accuracy", results["model_test_accuracy"])
  chance = 1.0 / ds.num_classes
  if own > 2 * chance and results["mean_accuracy"] < 1.5 * chance:
    notes.append(f"the weight draws are at chance level (mean accuracy {100 * results['mean_accuracy']:.2f}% "
                 f"against the model's {100 * own:.2f}%, chance {100 * chance:.2f}%): sigma {c.sigma:g} is too large "
                 "for this model, so the certificate measures the noise, not the training set; probe smaller "
                 "values first (a few draws each: --config.certify.num_draws=20 --config.certify.sigma=S)")
  results["warnings"] = notes
  for note in notes:
    print(f"jaxprotect certify: {note}")
  if phase.main:
    _plot(phase.workdir / "certified.png", results)
  return phase.finish(results)


def _plot(path: pathlib.Path, results: dict[str, Any]) -> None:
  from jaxprotect import platform  # noqa: PLC0415

  plt = platform.pyplot(f"the certified learnability curve {path}")
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(5, 3.2))
  etas = results["etas"]
  cert = [np.nan if v is None else 100 * v for v in results["certified"]]
  ax.plot(etas, cert, marker=".", label=f"certified (q={results['q']:g}, {100 * results['confidence']:g}% conf.)")
  for p, v in results["empirical_quantiles"].items():
    ax.axhline(100 * v, ls="--", lw=0.8, alpha=0.6, label=f"empirical {float(p):g}-quantile of the draws")
  own = results.get("model_subset_accuracy", results["model_test_accuracy"])
  ax.axhline(100 * own, color="k", lw=0.8, label="model without noise")
  ax.set_xlabel("eta (L2 radius of the weight perturbation)")
  ax.set_ylabel("clean test accuracy (%)")
  ax.set_title(f"N={results['num_draws']}, sigma={results['sigma']:g}, {results['test_images']} test images",
               fontsize=8)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
