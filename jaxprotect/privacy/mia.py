"""Membership inference: the statistics, the attacks and their metrics.

Every attack score in this module follows one convention: **higher = more likely a
member** (an example of the target model's training set).

* ``lira_statistic(logits, labels)`` -- the logit-scaled confidence of the likelihood-ratio
  attack, ``phi = log p_y - log sum_{j != y} p_j``, computed as
  ``z_y - logsumexp_{j != y} z_j`` from the logits, never through probabilities (which
  round to 1 for a confident model);
* ``loss_attack_scores(logits, labels)`` -- the loss attack, ``-cross_entropy`` (Yeom et
  al., "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting",
  CSF 2018), the membership test of Dong et al. ("Privacy for Free: How does Dataset
  Condensation Help Privacy?", ICML 2022);
* ``global_threshold_scores(stats)`` -- the global-threshold baseline: the target's own
  ``phi`` (averaged over queries), one threshold for all examples;
* ``lira_online`` / ``lira_offline`` -- LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer,
  "Membership Inference Attacks From First Principles", IEEE S&P 2022): per example,
  Gaussians fitted to the statistics of shadow models trained with it (IN) and without
  it (OUT); online scores the log-likelihood ratio of IN versus OUT, offline the
  one-sided test against OUT alone; per-example or one global variance;
  ``lira_leave_one_out`` makes each shadow model in turn the target;
* ``keep_masks(num_models, num_examples, seed)`` -- which examples each shadow model
  trains on: every example IN for exactly half of the models;
* ``roc_curve``, ``auc``, ``balanced_accuracy``, ``tpr_at_fpr``, ``mia_metrics`` and
  ``plot_roc`` (log-log ROC curves, as the paper argues attacks should be compared at low
  false-positive rates).

The statistics are JAX functions (float64 when ``jax_enable_x64`` is on, else float32);
the attacks and metrics are numpy float64 on host values.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprotect import checks

__all__ = [
    "FPR_LEVELS", "auc", "balanced_accuracy", "global_threshold_scores", "keep_masks", "lira_leave_one_out",
    "lira_offline", "lira_online", "lira_statistic", "loss_attack_scores", "mia_metrics", "plot_roc", "roc_curve",
    "tpr_at_fpr",
]

# The false-positive rates at which mia_metrics reports the true-positive rate.
FPR_LEVELS = (0.01, 0.001, 0.0001)

# A standard deviation of exactly 0 (identical shadow statistics) is raised to this.
_MIN_STD = 1e-30


# ---------------------------------------------------------------------------------------
# Statistics of one model's outputs
# ---------------------------------------------------------------------------------------

def _logits_and_labels(logits: Any, labels: Any, logits_name: str, labels_name: str) -> tuple[jax.Array, jax.Array]:
  """``... x B x K`` float logits (K >= 2) and ``B`` int labels, as the compute dtype:
  float64 when x64 is enabled, float32 otherwise."""
  shape = tuple(np.shape(logits))
  if len(shape) < 2:
    raise ValueError(f"{logits_name}: expected logits ... x B x K (at least 2-D), got shape {shape}")
  checks.check_floating(logits, logits_name)
  b, k = shape[-2:]
  if k < 2:
    raise ValueError(f"{logits_name}: expected at least 2 classes (... x B x K, K >= 2), got shape {shape}")
  checks.check_labels(labels, k, labels_name, batch=b)
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
  return jnp.asarray(logits).astype(dtype), jnp.asarray(labels)


def lira_statistic(logits_BxK: Any, labels_B: Any) -> jax.Array:
  """LiRA's per-example statistic ``phi = log p_y - log sum_{j != y} p_j`` (the logit of
  the true class's probability, ``log(p_y / (1 - p_y))``); higher = more confident in the
  true label = more likely a member.

  Computed from the logits as ``z_y - logsumexp_{j != y} z_j``, so no probability is
  formed: ``phi`` stays finite and strictly increasing in ``p_y`` where ``1 - p_y`` is far
  below the float resolution (``p_y = 1 - 1e-12`` gives ``phi = 27.6`` in float32 as in
  float64). Float64 when ``jax_enable_x64`` is on (Carlini et al. compute it in float64),
  float32 otherwise.

  Args:
    logits_BxK: float logits ``B x K`` (``K >= 2``), or with leading axes ``... x B x K``
      (e.g. ``Q x B x K`` for the image and its flip, ``M x Q x B x K`` for M models).
    labels_B: int labels in ``[0, K)``, shared by the leading axes.

  Returns:
    ``phi`` of shape ``... x B``.
  """
  return _phi(*_logits_and_labels(logits_BxK, labels_B, "logits_BxK", "labels_B"))


@jax.jit
def _phi(z: jax.Array, y: jax.Array) -> jax.Array:
  is_y = jnp.arange(z.shape[-1]) == y[:, None]  # B x K, broadcast over the leading axes
  z_y = jnp.sum(jnp.where(is_y, z, 0.0), axis=-1)
  return z_y - jax.nn.logsumexp(jnp.where(is_y, -jnp.inf, z), axis=-1)


def loss_attack_scores(logits_BxK: Any, labels_B: Any) -> jax.Array:
  """The loss attack's scores, ``-cross_entropy = log p_y = z_y - logsumexp_j z_j`` per
  example; higher (a smaller loss) = more likely a member.

  ``logits_BxK`` may have leading axes (``... x B x K``); the result is ``... x B``, in
  float64 when ``jax_enable_x64`` is on, else float32. Average over a query axis yourself
  if there is one.
  """
  return _log_p(*_logits_and_labels(logits_BxK, labels_B, "logits_BxK", "labels_B"))


@jax.jit
def _log_p(z: jax.Array, y: jax.Array) -> jax.Array:
  is_y = jnp.arange(z.shape[-1]) == y[:, None]
  return jnp.sum(jnp.where(is_y, z, 0.0), axis=-1) - jax.nn.logsumexp(z, axis=-1)


# ---------------------------------------------------------------------------------------
# Attacks on shadow-model statistics
# ---------------------------------------------------------------------------------------

def _stats(x: Any, name: str) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: expected finite statistics, got {int(np.sum(~np.isfinite(a)))} non-finite value(s)")
  return a


def global_threshold_scores(target_stats_B: Any) -> np.ndarray:
  """The global-threshold baseline: the target model's own statistic, averaged over the
  queries; higher = more likely a member. One threshold serves every example, unlike
  LiRA's per-example calibration.

  Args:
    target_stats_B: ``B`` or ``B x Q`` statistics of the target model (``lira_statistic``;
      Q queries per example, e.g. the image and its flip).

  Returns:
    float64 scores ``B``.
  """
  t = _stats(target_stats_B, "target_stats_B")
  if t.ndim not in (1, 2) or t.shape[0] == 0:
    raise ValueError(f"target_stats_B: expected shape (B,) or (B, Q) with B >= 1, got shape {t.shape}")
  return t if t.ndim == 1 else t.mean(axis=1)


def _lira_inputs(target_stats_B, shadow_stats_MxB, keep_MxB):
  """float64 ``B x Q``, ``M x B x Q`` and bool ``M x B``, with the shapes checked."""
  t = _stats(target_stats_B, "target_stats_B")
  s = _stats(shadow_stats_MxB, "shadow_stats_MxB")
  if t.ndim not in (1, 2) or t.shape[0] == 0:
    raise ValueError(f"target_stats_B: expected shape (B,) or (B, Q) with B >= 1, got shape {t.shape}")
  if s.shape[1:] != t.shape or s.shape[0] < 1:
    raise ValueError(f"shadow_stats_MxB: expected shape (M, {', '.join(map(str, t.shape))}) to match "
                     f"target_stats_B of shape {t.shape}, got shape {s.shape}")
  keep = np.asarray(keep_MxB)
  if keep.shape != s.shape[:2]:
    raise ValueError(f"keep_MxB: expected shape {s.shape[:2]} (models x examples) to match shadow_stats_MxB of "
                     f"shape {s.shape}, got shape {keep.shape}")
  if keep.dtype != bool:
    if not np.issubdtype(keep.dtype, np.integer) or not np.all((keep == 0) | (keep == 1)):
      raise ValueError(f"keep_MxB: expected booleans (or 0/1), got dtype {keep.dtype}")
    keep = keep.astype(bool)
  if t.ndim == 1:
    t, s = t[:, None], s[..., None]
  return t, s, keep


def _check_counts(keep: np.ndarray, side: str, need: int, mode: str) -> None:
  """Every example needs ``need`` shadow models on ``side`` (IN: keep true, OUT: false)."""
  counts = keep.sum(0) if side == "IN" else (~keep).sum(0)
  j = int(np.argmin(counts))
  if counts[j] < need:
    raise ValueError(f"keep_MxB: {mode} needs at least {need} {side} shadow model(s) for every example; example {j} "
                     f"has {int(counts[j])} {side} model(s) of {keep.shape[0]} (train more shadow models)")


def _fit(s: np.ndarray, mask: np.ndarray, fixed_variance: bool):
  """Per example and query: the median of the selected models' statistics and their
  standard deviation (per example, or one pooled within-example value)."""
  sel = np.where(mask[..., None], s, np.nan)  # M x B x Q
  center = np.nanmedian(sel, axis=0)
  mean = np.nanmean(sel, axis=0)
  if fixed_variance:
    std = np.sqrt(np.nanmean(np.square(sel - mean)))  # pooled over examples and queries
    std = np.full_like(center, std)
  else:
    std = np.nanstd(sel, axis=0)
  return center, np.maximum(std, _MIN_STD), sel - mean


def _log_normal_pdf(x, mu, std):
  return -0.5 * np.square((x - mu) / std) - np.log(std) - 0.5 * math.log(2 * math.pi)


def lira_online(target_stats_B: Any, shadow_stats_MxB: Any, keep_MxB: Any, fixed_variance: bool = False) -> np.ndarray:
  """Online LiRA: per example (and query), Gaussians fitted to the statistics of the
  shadow models that trained on it (IN) and of those that did not (OUT); the score is the
  log-likelihood ratio ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)`` of the
  target's statistic, averaged over the queries. Higher = more likely a member.

  As in the reference implementation of Carlini et al., the centres are medians and the
  spreads standard deviations (ddof 0), per example and query. With ``fixed_variance``
  one standard deviation serves every example, query and both sides (the paper's global
  variance, for few shadow models): the root mean square deviation of every shadow
  statistic from its own example's IN or OUT mean.

  Args:
    target_stats_B: ``B`` or ``B x Q`` statistics of the target model
      (``lira_statistic``; Q queries, e.g. the image and its flip).
    shadow_stats_MxB: the same statistics of M shadow models, ``M x B`` or ``M x B x Q``.
    keep_MxB: bool ``M x B``, true where shadow model m trained on example b.
    fixed_variance: one global standard deviation instead of one per example.

  Returns:
    float64 scores ``B``.

  Raises ``ValueError`` for shapes that do not match (naming both) and when an example
  has too few IN or OUT shadow models: 2 of each with per-example variances, 1 with
  ``fixed_variance``.
  """
  t, s, keep = _lira_inputs(target_stats_B, shadow_stats_MxB, keep_MxB)
  need = 1 if fixed_variance else 2
  mode = f"online LiRA ({'fixed' if fixed_variance else 'per-example'} variance)"
  _check_counts(keep, "IN", need, mode)
  _check_counts(keep, "OUT", need, mode)
  mu_in, std_in, dev_in = _fit(s, keep, False)
  mu_out, std_out, dev_out = _fit(s, ~keep, False)
  if fixed_variance:
    dev = np.concatenate([dev_in, dev_out])
    std_in = std_out = np.full_like(mu_in, max(math.sqrt(float(np.nanmean(np.square(dev)))), _MIN_STD))
  llr = _log_normal_pdf(t, mu_in, std_in) - _log_normal_pdf(t, mu_out, std_out)
  return llr.mean(axis=1)


def lira_offline(target_stats_B: Any, shadow_stats_MxB: Any, keep_MxB: Any, fixed_variance: bool = False) -> np.ndarray:
  """Offline LiRA: only the OUT shadow models (which never trained on the example) are
  needed. Per example and query, a Gaussian ``N(mu_out, s_out)`` is fitted to their
  statistics and the target's statistic is tested one-sided, as in the paper's
  ``1 - Pr[Z > phi]``: the score is ``-log Pr[Z > phi]``, averaged over the queries.
  Higher = more likely a member (the target is more confident than models without the
  example).

  For one query the ranking is the paper's; over several queries the mean of the log
  one-sided p-values combines them (the reference code averages log densities over
  queries, and uses the two-sided density itself). Centres are medians, spreads
  standard deviations (ddof 0) per example and query, or with ``fixed_variance`` one
  value for all: the root mean square deviation of every OUT statistic from its
  example's OUT mean.

  Args and shapes as ``lira_online`` (IN entries of ``keep_MxB`` are ignored). Raises
  ``ValueError`` for shapes that do not match and when an example has fewer than 2 OUT
  shadow models (1 with ``fixed_variance``).

  Returns:
    float64 scores ``B``.
  """
  from scipy.special import log_ndtr  # noqa: PLC0415  (scipy comes with jax)

  t, s, keep = _lira_inputs(target_stats_B, shadow_stats_MxB, keep_MxB)
  need = 1 if fixed_variance else 2
  _check_counts(keep, "OUT", need, f"offline LiRA ({'fixed' if fixed_variance else 'per-example'} variance)")
  mu_out, std_out, _ = _fit(s, ~keep, fixed_variance)
  z = (t - mu_out) / std_out
  return -log_ndtr(-z).mean(axis=1)  # -log Pr[Z > phi] = -log Phi(-z)


_ATTACKS = {"online": lira_online, "offline": lira_offline}


def lira_leave_one_out(stats_MxB: Any, keep_MxB: Any, attack: str = "online", fixed_variance: bool = False,
                       targets: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """Each shadow model in turn is the target, the others its shadow models.

  Args:
    stats_MxB: ``M x B`` or ``M x B x Q`` statistics of M models.
    keep_MxB: bool ``M x B`` (each model's training examples).
    attack: ``"online"``, ``"offline"`` or ``"global"`` (``global_threshold_scores``).
    fixed_variance: as in ``lira_online``.
    targets: indices of the models to attack (default: all).

  Returns:
    ``(scores_TxB, is_member_TxB)``: float64 scores (higher = more likely a member) and
    the truth, one row per target; pass both to ``mia_metrics`` (they are flattened).
  """
  s = _stats(stats_MxB, "stats_MxB")
  keep = np.asarray(keep_MxB).astype(bool)
  if s.ndim not in (2, 3) or keep.shape != s.shape[:2]:
    raise ValueError(f"stats_MxB, keep_MxB: expected shapes (M, B[, Q]) and (M, B), got {s.shape} and {keep.shape}")
  if attack not in (*_ATTACKS, "global"):
    raise ValueError(f"attack: expected 'online', 'offline' or 'global', got {attack!r}")
  m = s.shape[0]
  targets = np.arange(m) if targets is None else np.asarray(targets, np.int64).reshape(-1)
  if targets.size == 0 or np.any((targets < 0) | (targets >= m)):
    raise ValueError(f"targets: expected model indices in [0, {m}), got {targets.tolist()}")
  scores = []
  for i in targets:
    if attack == "global":
      scores.append(global_threshold_scores(s[i]))
    else:
      rest = np.arange(m) != i
      scores.append(_ATTACKS[attack](s[i], s[rest], keep[rest], fixed_variance))
  return np.stack(scores), keep[targets]


# ---------------------------------------------------------------------------------------
# Which examples each shadow model trains on
# ---------------------------------------------------------------------------------------

def _rng(key_or_seed: Any) -> np.random.Generator:
  if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
    return np.random.default_rng(int(key_or_seed))
  key = key_or_seed
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  data = np.asarray(key)
  if not np.issubdtype(data.dtype, np.integer) or data.size == 0:
    raise ValueError(f"key_or_seed: expected an int seed or a JAX PRNG key, got {key_or_seed!r}")
  return np.random.default_rng(data.astype(np.uint32).ravel().tolist())


def keep_masks(num_models: int, num_examples: int, key_or_seed: Any, level_models: bool = True) -> np.ndarray:
  """Which examples each of ``num_models`` shadow models trains on: bool ``M x N``,
  ``keep[m, n]`` true when model m trains on example n.

  Every example is IN for exactly ``M / 2`` models: per example, a random permutation of
  the models, the first half IN (as in the reference code of Carlini et al.). With
  ``level_models`` (default) the models' training-set sizes are then evened out by
  exchanging memberships between a model with too many and one with too few on random
  examples, which leaves every example's count at ``M / 2``: every model trains on
  exactly ``N / 2`` examples (``floor`` or ``ceil`` of it when N is odd), a random half
  as the paper describes, so the models can train together in lockstep
  (``privacy.shadow``). ``level_models=False`` gives the reference's masks, whose
  per-model sizes vary by about ``sqrt(N) / 2``.

  Args:
    num_models: M, even and > 0.
    num_examples: N >= 1.
    key_or_seed: an int seed or a JAX PRNG key; the same value gives the same masks.
  """
  if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models <= 0 \
      or num_models % 2:
    raise ValueError(f"num_models: expected an even number > 0 (each example IN for exactly half of the models), "
                     f"got {num_models!r}")
  n = checks.check_positive_int(num_examples, "num_examples")
  m = int(num_models)
  rng = _rng(key_or_seed)
  ranks = np.argsort(np.argsort(rng.random((m, n)), axis=0), axis=0)
  keep = ranks < m // 2
  if level_models:
    _level(keep, rng)
  return keep


def _level(keep: np.ndarray, rng: np.random.Generator) -> None:
  """Evens out the row sums of ``keep`` in place (to N/2, or floor/ceil), column sums
  unchanged: for a model h above its target and one l below, flip random examples that
  are IN for h and OUT for l."""
  m, n = keep.shape
  counts = keep.sum(1)
  target = np.full(m, n // 2)
  if n % 2:  # half of the models take the extra example: those that already have most
    target[np.argsort(-counts, kind="stable")[: m // 2]] += 1
  while True:
    heavy, light = np.flatnonzero(counts > target), np.flatnonzero(counts < target)
    if heavy.size == 0:
      return
    h, lo = heavy[0], light[0]
    k = int(min(counts[h] - target[h], target[lo] - counts[lo]))
    candidates = np.flatnonzero(keep[h] & ~keep[lo])  # never fewer than k (counts differ by >= k)
    pick = rng.choice(candidates, size=k, replace=False)
    keep[h, pick], keep[lo, pick] = False, True
    counts[h] -= k
    counts[lo] += k


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

def _scores_and_truth(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(is_member)
  if y.size != s.size or np.shape(scores) != np.shape(is_member):
    raise ValueError(f"scores, is_member: expected the same shape, got {np.shape(scores)} and {np.shape(is_member)}")
  y = y.reshape(-1)
  if y.dtype != bool:
    if not np.all((y == 0) | (y == 1)):
      raise ValueError("is_member: expected booleans (or 0/1)")
    y = y.astype(bool)
  if np.any(np.isnan(s)):
    raise ValueError(f"scores: expected no NaN, got {int(np.isnan(s).sum())}")
  if y.all() or not y.any():
    raise ValueError(f"is_member: expected members and non-members, got {int(y.sum())} members of {y.size}")
  return s, y


def roc_curve(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ROC curve of the rule "member when score >= threshold" (higher = member).

  Returns ``(fpr, tpr, thresholds)``: one point per distinct score, thresholds
  decreasing, starting at ``(0, 0)`` with threshold ``+inf`` and ending at ``(1, 1)``.
  ``scores`` and ``is_member`` (bool or 0/1) may have any common shape; they are
  flattened.
  """
  s, y = _scores_and_truth(scores, is_member)
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # the last position of each distinct score
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  tpr = np.r_[0.0, tp / y.sum()]
  fpr = np.r_[0.0, fp / (~y).sum()]
  return fpr, tpr, np.r_[np.inf, s[last]]


def auc(scores: Any, is_member: Any) -> float:
  """The area under the ROC curve: the probability that a random member scores above a
  random non-member, ties counting one half (the Mann-Whitney U statistic / (n1 n0))."""
  fpr, tpr, _ = roc_curve(scores, is_member)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def balanced_accuracy(scores: Any, is_member: Any) -> float:
  """The best balanced accuracy ``(TPR + TNR) / 2`` over all thresholds (the paper's
  "accuracy" column; it takes the threshold from the answers, so it is optimistic)."""
  fpr, tpr, _ = roc_curve(scores, is_member)
  return float(np.max((1.0 + tpr - fpr) / 2))


def tpr_at_fpr(scores: Any, is_member: Any, fpr: float) -> float | None:
  """The highest true-positive rate among thresholds whose false-positive rate is at
  most ``fpr``; None when there are fewer than ``1 / fpr`` non-members (such a rate
  cannot be resolved: no threshold has a false-positive rate strictly between 0 and
  ``1 / non-members``). The reference code of Carlini et al. takes rates strictly below
  ``fpr``; at most is the usual definition and differs only when ``fpr`` times the
  number of non-members is a whole number."""
  if not 0 < fpr < 1:
    raise ValueError(f"fpr: expected a rate in (0, 1), got {fpr}")
  f, t, _ = roc_curve(scores, is_member)
  negatives = int(np.sum(~np.asarray(is_member).astype(bool)))
  if negatives * fpr < 1 - 1e-9:
    return None
  return float(np.max(t[f * negatives <= fpr * negatives + 1e-9]))


def mia_metrics(scores: Any, is_member: Any, fpr_levels: tuple[float, ...] = FPR_LEVELS) -> dict[str, Any]:
  """``{"auc", "balanced_accuracy", "tpr_at_fpr_<rate>" ..., "members", "non_members"}``
  for scores where higher = more likely a member. A ``tpr_at_fpr_<rate>`` entry (rates
  ``FPR_LEVELS``: 0.01, 0.001, 0.0001) is left out when there are fewer than
  ``1 / rate`` non-members (see ``tpr_at_fpr``)."""
  s, y = _scores_and_truth(scores, is_member)
  out: dict[str, Any] = {"auc": auc(s, y), "balanced_accuracy": balanced_accuracy(s, y)}
  for rate in fpr_levels:
    value = tpr_at_fpr(s, y, rate)
    if value is not None:
      out[f"tpr_at_fpr_{rate:g}"] = value
  out["members"], out["non_members"] = int(y.sum()), int((~y).sum())
  return out


def plot_roc(path: os.PathLike | str, curves: Mapping[str, tuple[Any, Any]], title: str = "") -> pathlib.Path | None:
  """Writes a log-log ROC plot (PNG) of several attacks: ``curves`` maps a label to
  ``(scores, is_member)``; each legend entry gives the AUC and the TPR at 0.1% FPR when
  resolvable. Returns the path, or None when matplotlib is not installed (the ``plot``
  extra; a warning is logged)."""
  from jaxprotect import platform  # noqa: PLC0415

  if not curves:
    raise ValueError("curves: expected at least one (scores, is_member) pair")
  prepared = {label: roc_curve(*pair)[:2] + (mia_metrics(*pair),) for label, pair in curves.items()}
  path = pathlib.Path(path)
  plt = platform.pyplot(f"the ROC plot {path}")
  if plt is None:
    return None
  fig, ax = plt.subplots(figsize=(4.2, 4.0))
  low = 1.0
  for label, (fpr, tpr, m) in prepared.items():
    low = min(low, 1.0 / max(m["non_members"], 1))
    tpr_low = m.get("tpr_at_fpr_0.001")
    extra = "" if tpr_low is None else f", TPR@0.1%={100 * tpr_low:.2f}%"
    ax.plot(fpr[1:], tpr[1:], lw=1.2, label=f"{label} (AUC={m['auc']:.3f}{extra})")
  ax.plot([low, 1], [low, 1], ls="--", color="gray", lw=0.8, label="chance")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(low, 1)
  ax.set_ylim(low, 1)
  ax.set_xlabel("false-positive rate")
  ax.set_ylabel("true-positive rate")
  if title:
    ax.set_title(title, fontsize=8)
  ax.legend(fontsize=6, loc="lower right")
  ax.grid(alpha=0.3, which="both", lw=0.4)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
