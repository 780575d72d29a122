"""Losses as pure per-example functions (``loss_B``); callers reduce them.

Shapes: ``logits_BxK`` float logits, ``labels_B`` int class indices in [0, K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, optionally against smoothed labels.

  With ``label_smoothing = eps`` the target is ``(1 - eps) * onehot(y) + eps / K``
  (Szegedy et al. 2016; the LS-student baseline of the distillation literature).
  Computed in float32 whatever the logits' dtype.
  """
  logits_BxK = logits_BxK.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
  num_classes = logits_BxK.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxK, targets)


def accuracy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example 0/1 correctness of the arg-max prediction (float32)."""
  return (jnp.argmax(logits_BxK, axis=-1) == labels_B).astype(jnp.float32)


# ---------------------------------------------------------------------------------------
# Conditional mutual information of temperature-scaled output clusters (CMIM, METHODS §4)
# ---------------------------------------------------------------------------------------

CENTROID_FLOOR = 1e-8  # centroids are clipped here before the log
DEFAULT_CENTROID_DECAY = 0.9999  # the MCMI reference code's EMA decay (per step)
DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
AGGREGATIONS = ("mean", "random", "max")
WEIGHTINGS = ("t2", "one")


def cmi(logits_BxK: jax.Array, labels_B: jax.Array, centroids_KxK: jax.Array,
        temperature: float | jax.Array) -> jax.Array:
  """Per-example ``KL(softmax(z / T) || Q_y)``; its batch mean is the (upper bound on the) CMI.

  Args:
    logits_BxK: logits ``z``.
    labels_B: int labels ``y``.
    centroids_KxK: row ``k`` is the centroid ``Q_k`` of class ``k`` (a distribution over
      the K outputs). Clipped at ``CENTROID_FLOOR`` before the log; no gradient flows
      through it.
    temperature: ``T`` > 0 (scalar).

  Returns:
    ``kl_B`` in float32, computed in log space (``log_softmax(z / T)``), finite for tiny T.
  """
  logp_BxK = jax.nn.log_softmax(logits_BxK.astype(jnp.float32) / temperature, axis=-1)
  logq_KxK = jnp.log(jnp.maximum(jax.lax.stop_gradient(centroids_KxK).astype(jnp.float32), CENTROID_FLOOR))
  logq_BxK = logq_KxK[labels_B]
  return jnp.sum(jnp.exp(logp_BxK) * (logp_BxK - logq_BxK), axis=-1)


def cmi_spectrum(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array,
                 temperatures_T: jax.Array) -> jax.Array:
  """``cmi`` at every temperature of a grid, one centroid set per temperature: ``kl_BxT``."""
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  fn = jax.vmap(lambda q_KxK, t: cmi(logits_BxK, labels_B, q_KxK, t), in_axes=(0, 0), out_axes=1)
  return fn(centroids_TxKxK, temperatures_T)


def centroid_sums(logits_BxK: jax.Array, labels_B: jax.Array, temperatures_T: jax.Array,
                  mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class sums of ``softmax(z / T)`` and class counts, for accumulating class means.

  Args:
    logits_BxK, labels_B: a batch.
    temperatures_T: the temperature grid.
    mask_B: optional 0/1 weights (padding rows of a last batch get 0).

  Returns:
    ``(sums_TxKxK, counts_K)``: ``sums[t, k]`` is the sum of ``softmax(z / T_t)`` over the
    examples of class ``k``.
  """
  logits_BxK = jax.lax.stop_gradient(logits_BxK).astype(jnp.float32)
  num_classes = logits_BxK.shape[-1]
  onehot_BxK = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
  if mask_B is not None:
    onehot_BxK = onehot_BxK * mask_B.astype(jnp.float32)[:, None]
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  probs_TxBxK = jax.nn.softmax(logits_BxK[None] / temperatures_T[:, None, None], axis=-1)
  sums_TxKxK = jnp.einsum("bk,tbj->tkj", onehot_BxK, probs_TxBxK)
  return sums_TxKxK, onehot_BxK.sum(0)


def centroids_from_sums(sums_TxKxK: jax.Array, counts_K: jax.Array) -> jax.Array:
  """Class means from ``centroid_sums``; a class with no examples gets the uniform distribution."""
  num_classes = sums_TxKxK.shape[-1]
  present = (counts_K > 0)[None, :, None]
  means = sums_TxKxK / jnp.maximum(counts_K, 1.0)[None, :, None]
  return jnp.where(present, means, 1.0 / num_classes)


def class_mean_centroids(logits_NxK: jax.Array, labels_N: jax.Array, temperatures_T: jax.Array) -> jax.Array:
  """Full-pass centroids: the class means of ``softmax(z / T)`` over a whole split, ``T x K x K``.

  This is the exact minimiser of ``mean KL(P || Q_y)`` over ``Q``, so ``cmi`` with these
  centroids is the CMI of the split. (``jaxprotect.distill`` accumulates the same sums
  batch by batch with ``centroid_sums`` when the split's logits are not held at once.)
  """
  return centroids_from_sums(*centroid_sums(logits_NxK, labels_N, temperatures_T))


def update_centroids(centroids_TxKxK: jax.Array, logits_BxK: jax.Array, labels_B: jax.Array,
                     temperatures_T: jax.Array, decay: float = DEFAULT_CENTROID_DECAY) -> jax.Array:
  """One exponential-moving-average step of the centroids from a batch.

  ``Q_k <- decay * Q_k + (1 - decay) * mean_{i: y_i = k} softmax(z_i / T)`` for each class
  present in the batch; absent classes are unchanged. Under a data-sharded ``jit`` the
  batch is the *global* batch (the means are all-reduced), so the update does not depend
  on the number of devices. No gradient flows into the result.

  Args:
    centroids_TxKxK: current centroids, one set per temperature.
    logits_BxK, labels_B: the batch.
    temperatures_T: the temperature grid (same order as the centroids).
    decay: EMA decay per step; default 0.9999 (the MCMI reference value, meant for a
      pretrained model; from scratch a shorter memory such as 0.99 tracks the model).

  Returns:
    ``T x K x K`` updated centroids.
  """
  sums_TxKxK, counts_K = centroid_sums(logits_BxK, labels_B, temperatures_T)
  means = sums_TxKxK / jnp.maximum(counts_K, 1.0)[None, :, None]
  present = (counts_K > 0)[None, :, None]
  old = jax.lax.stop_gradient(centroids_TxKxK).astype(jnp.float32)
  return jnp.where(present, decay * old + (1.0 - decay) * means, old)


def temperature_weights(temperatures_T: jax.Array, weighting: str = "t2") -> jax.Array:
  """Weights of the CMI terms: ``T^2`` (keeps the high-temperature terms from vanishing) or 1."""
  temperatures_T = jnp.asarray(temperatures_T, jnp.float32)
  if weighting == "t2":
    return temperatures_T**2
  if weighting == "one":
    return jnp.ones_like(temperatures_T)
  raise ValueError(f"unknown CMI weighting {weighting!r}; use one of {WEIGHTINGS}")


def cmi_aggregate(kl_BxT: jax.Array, temperatures_T: jax.Array, aggregation: str = "mean", weighting: str = "t2",
                  key: jax.Array | None = None) -> jax.Array:
  """Aggregates per-temperature CMI terms over the spectrum, per example: ``agg_B``.

  Args:
    kl_BxT: ``cmi`` at each temperature (``cmi_spectrum``).
    temperatures_T: the grid.
    aggregation: ``"mean"`` (mean over the grid of ``w_T * kl_T``), ``"random"`` (one grid
      temperature per call, drawn uniformly over the log-spaced grid, i.e. log-uniformly;
      needs ``key``) or ``"max"`` (the grid temperature with the largest weighted batch CMI;
      the batch means are over the global batch).
    weighting: ``"t2"`` or ``"one"`` (see ``temperature_weights``).
    key: PRNG key for ``"random"``.

  Returns:
    ``agg_B``; its batch mean is the aggregated CMI.
  """
  weighted_BxT = kl_BxT * temperature_weights(temperatures_T, weighting)[None, :]
  if aggregation == "mean":
    return jnp.mean(weighted_BxT, axis=1)
  if aggregation == "random":
    if key is None:
      raise ValueError("aggregation='random' needs a PRNG key")
    idx = jax.random.randint(key, (), 0, weighted_BxT.shape[1])
    return jnp.take(weighted_BxT, idx, axis=1)
  if aggregation == "max":
    idx = jnp.argmax(jnp.mean(jax.lax.stop_gradient(weighted_BxT), axis=0))
    return jnp.take(weighted_BxT, idx, axis=1)
  raise ValueError(f"unknown CMI aggregation {aggregation!r}; use one of {AGGREGATIONS}")


def cmim_loss(logits_BxK: jax.Array, labels_B: jax.Array, centroids_TxKxK: jax.Array, temperatures_T: jax.Array,
              lam: float | jax.Array, aggregation: str = "mean", weighting: str = "t2", key: jax.Array | None = None,
              label_smoothing: float = 0.0) -> jax.Array:
  """The CMIM teacher objective per example: ``CE(z, y) + lam * aggregate_T CMI_T``.

  Args:
    logits_BxK, labels_B: the batch.
    centroids_TxKxK: current (stop-gradient) centroids, one set per temperature.
    temperatures_T: the temperature grid (default in configs: 1, 2, 4, ..., 32).
    lam: weight of the CMI term.
    aggregation, weighting, key: see ``cmi_aggregate``.
    label_smoothing: of the CE term (0: plain CE).

  Returns:
    ``loss_B`` in float32.
  """
  kl_BxT = cmi_spectrum(logits_BxK, labels_B, centroids_TxKxK, temperatures_T)
  agg_B = cmi_aggregate(kl_BxT, temperatures_T, aggregation, weighting, key)
  return cross_entropy(logits_BxK, labels_B, label_smoothing) + lam * agg_B


# ---------------------------------------------------------------------------------------
# Knowledge distillation (METHODS §5) and the Nasty Teacher (METHODS §4)
# ---------------------------------------------------------------------------------------

_MASKED = -1e9  # a masked logit: finite (no inf - inf), but exp() of it is exactly 0


def _kl_logits(p_logits_BxK: jax.Array, q_logits_BxK: jax.Array) -> jax.Array:
  """``KL(softmax(p) || softmax(q))`` per example, in log space (float32)."""
  logp = jax.nn.log_softmax(p_logits_BxK.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(q_logits_BxK.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, temperature: float) -> jax.Array:
  """Hinton's distillation term per example: ``T^2 KL(softmax(t / T) || softmax(s / T))``.

  The teacher side carries no gradient. Callers mix it with CE:
  ``(1 - alpha) CE(s, y) + alpha * kd_loss`` (``vanilla_kd_loss``).
  """
  t = jax.lax.stop_gradient(teacher_logits_BxK)
  return temperature**2 * _kl_logits(t / temperature, student_logits_BxK / temperature)


def vanilla_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                    alpha: float = 0.9, temperature: float = 4.0) -> jax.Array:
  """``(1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))`` per example."""
  return ((1.0 - alpha) * cross_entropy(student_logits_BxK, labels_B)
          + alpha * kd_loss(student_logits_BxK, teacher_logits_BxK, temperature))


def dkd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> jax.Array:
  """Decoupled KD (Zhao et al., CVPR 2022) per example: ``alpha * TCKD + beta * NCKD``.

  TCKD is ``T^2 KL`` between the binary distributions ``[p_y, 1 - p_y]`` of teacher and
  student (``p = softmax(z / T)``); NCKD is ``T^2 KL`` between the distributions over the
  non-target classes, i.e. softmax with the target logit masked out (probability exactly 0) before
  normalising. Both in log space. The CE term and the warm-up factor
  ``min(epoch / warmup, 1)`` are the caller's. The teacher carries no gradient.
  """
  num_classes = student_logits_BxK.shape[-1]
  t = jax.lax.stop_gradient(teacher_logits_BxK).astype(jnp.float32) / temperature
  s = student_logits_BxK.astype(jnp.float32) / temperature
  target_BxK = jax.nn.one_hot(labels_B, num_classes, dtype=bool)

  def binary_log_probs(z_BxK):  # [log p_y, log(1 - p_y)], stable for confident outputs
    lse_all = jax.nn.logsumexp(z_BxK, axis=-1)
    lse_other = jax.nn.logsumexp(jnp.where(target_BxK, _MASKED, z_BxK), axis=-1)
    log_target = jnp.sum(jnp.where(target_BxK, z_BxK, 0.0), axis=-1) - lse_all
    return jnp.stack([log_target, lse_other - lse_all], axis=-1)

  lb_t, lb_s = binary_log_probs(t), binary_log_probs(s)
  tckd = jnp.sum(jnp.exp(lb_t) * (lb_t - lb_s), axis=-1)
  # the masked logit's probability is exactly 0 (exp underflows), so its KL term is 0
  ln_t = jax.nn.log_softmax(jnp.where(target_BxK, _MASKED, t), axis=-1)
  ln_s = jax.nn.log_softmax(jnp.where(target_BxK, _MASKED, s), axis=-1)
  nckd = jnp.sum(jnp.where(target_BxK, 0.0, jnp.exp(ln_t) * (ln_t - ln_s)), axis=-1)
  return temperature**2 * (alpha * tckd + beta * nckd)


def nasty_teacher_loss(logits_BxK: jax.Array, ref_logits_BxK: jax.Array, labels_B: jax.Array,
                       tau: float = 4.0, omega: float = 0.04) -> jax.Array:
  """The Nasty Teacher objective (Ma et al., ICLR 2021) per example:
  ``CE(f, y) - omega * tau^2 * KL(softmax(f / tau) || softmax(f_ref / tau))``.

  ``ref_logits_BxK`` come from a frozen, normally trained copy (no gradient). The
  argument order of the KL follows the authors' code (``KLDivLoss(log_softmax(ref),
  softmax(f))``, batch mean); defaults are their CIFAR-10 values (CIFAR-100: tau 20,
  omega 0.005). The code's constant offset (+100) does not change the gradient and is omitted.
  """
  ref = jax.lax.stop_gradient(ref_logits_BxK)
  return cross_entropy(logits_BxK, labels_B) - omega * tau**2 * _kl_logits(logits_BxK / tau, ref / tau)


def hard_label_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                       alpha: float = 0.5) -> jax.Array:
  """Label-only KD per example: ``(1 - alpha) CE(s, y) + alpha CE(s, argmax t)``."""
  teacher_labels_B = jnp.argmax(teacher_logits_BxK, axis=-1)
  return (1.0 - alpha) * cross_entropy(student_logits_BxK, labels_B) + alpha * cross_entropy(
      student_logits_BxK, teacher_labels_B)


def logit_mse_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array | None = None,
                      ce_weight: float = 0.0) -> jax.Array:
  """Logit matching (Kim et al., IJCAI 2021) per example:
  ``mean_k (s_k - (t_k - mean_j t_j))^2 + ce_weight * CE(s, y)``.

  The teacher logits are centred (a black box's logits or log-probabilities are known
  only up to a per-example shift); the mean over classes matches PyTorch's ``mse_loss``
  reduction. ``labels_B`` is needed only when ``ce_weight`` > 0.
  """
  t = jax.lax.stop_gradient(teacher_logits_BxK).astype(jnp.float32)
  t = t - jnp.mean(t, axis=-1, keepdims=True)
  loss = jnp.mean((student_logits_BxK.astype(jnp.float32) - t) ** 2, axis=-1)
  if ce_weight:
    if labels_B is None:
      raise ValueError("logit_mse_kd_loss with ce_weight > 0 needs labels")
    loss = loss + ce_weight * cross_entropy(student_logits_BxK, labels_B)
  return loss


# ---------------------------------------------------------------------------------------
# MI-UE: intra-class feature collapse (METHODS §2)
# ---------------------------------------------------------------------------------------

MI_UE_EPS = 1e-8  # added to every term of both sums (reference convention)


def mi_ue_loss(feats_BxD: jax.Array, labels_B: jax.Array, temperature: float = 0.1, exclude_self: bool = False,
               zeta: float = 0.0) -> jax.Array:
  """The MI-UE supervised-contrastive loss on cosine similarities of features (a scalar).

  ``L = - mean_i log( sum_{j: y_j = y_i} (exp(c_ij / t) + 1e-8) / sum_j (exp(c_ij / t) + 1e-8) )``
  with ``c_ij = cos(f_i, f_j)``. By default both sums include ``j = i`` (the reference
  code's convention); ``exclude_self=True`` drops it from both (the textbook variant) and
  then anchors without another example of their class are left out of the mean (their
  numerator is empty). ``zeta > 0`` adds
  ``zeta * mean_i log(1 + sum_{j: y_j = y_i} ||f_i - f_j||_2 / D)``.

  Each sum is evaluated exactly as ``logaddexp(logsumexp_S(c / t), log(|S| * 1e-8))``,
  which is ``log(sum_S (exp(c / t) + 1e-8))`` without overflow for small ``t``, and the
  per-anchor term as ``softplus(log N - log P)`` (positives P, other-class terms N, the
  denominator being P + N), which stays accurate when the loss is tiny. Float32.

  Args:
    feats_BxD: features (e.g. penultimate); zero rows have cosine 0 with everything.
    labels_B: int labels.
    temperature: ``t``.
    exclude_self: see above.
    zeta: weight of the intra-class distance term.

  Returns:
    scalar loss.
  """
  f = feats_BxD.astype(jnp.float32)
  b, d = f.shape
  # f / max(|f|, 1e-12) (torch's F.normalize), written so that a zero row has a finite gradient
  fn = f * jax.lax.rsqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-24))
  logits_BxB = (fn @ fn.T) / temperature
  same_BxB = labels_B[:, None] == labels_B[None, :]
  allowed_BxB = jnp.ones((b, b), bool)
  if exclude_self:
    allowed_BxB = ~jnp.eye(b, dtype=bool)
  pos_BxB = same_BxB & allowed_BxB
  neg_BxB = ~same_BxB  # the denominator is positives + negatives (disjoint)
  log_eps = jnp.log(jnp.float32(MI_UE_EPS))

  def log_sum(mask_BxB):  # log sum_S (exp(c / t) + eps), and |S|
    n_B = mask_BxB.sum(-1).astype(jnp.float32)
    lse_B = jax.nn.logsumexp(jnp.where(mask_BxB, logits_BxB, _MASKED), axis=-1)  # empty set: -1e9, then eps
    return jnp.logaddexp(lse_B, log_eps + jnp.log(jnp.maximum(n_B, 1.0))), n_B

  log_pos_B, n_pos_B = log_sum(pos_BxB)
  log_neg_B, n_neg_B = log_sum(neg_BxB)
  # -log(P / (P + N)) = softplus(log N - log P): accurate when N << P (a tiny loss)
  per_anchor = jnp.where(n_neg_B > 0, jax.nn.softplus(log_neg_B - log_pos_B), 0.0)
  valid_B = n_pos_B > 0
  loss = jnp.sum(jnp.where(valid_B, per_anchor, 0.0)) / jnp.maximum(valid_B.sum(), 1)
  if zeta:
    d2_BxB = jnp.sum((f[:, None, :] - f[None, :, :]) ** 2, axis=-1)
    off = same_BxB & ~jnp.eye(b, dtype=bool) & (d2_BxB > 0)
    dist_BxB = jnp.where(off, jnp.sqrt(jnp.where(off, d2_BxB, 1.0)), 0.0)
    loss = loss + zeta * jnp.mean(jnp.log1p(jnp.sum(dist_BxB, axis=-1) / d))
  return loss
