"""Knowledge distillation: the students' losses, and the Nasty Teacher's.

* ``kd_loss`` / ``vanilla_kd_loss`` -- Hinton, Vinyals & Dean, "Distilling the Knowledge in a
  Neural Network", 2015;
* ``dkd_loss`` -- Decoupled KD (Zhao et al., CVPR 2022);
* ``hard_label_kd_loss`` -- label-only KD on the teacher's arg-max;
* ``logit_mse_kd_loss`` -- logit matching (Kim et al., IJCAI 2021);
* ``nasty_teacher_loss`` -- the Nasty Teacher (Ma et al., "Undistillable: Making A Nasty Teacher
  That CANNOT teach students", ICLR 2021): CE minus a KL that pushes away from a normal teacher.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxprotect import checks
from jaxprotect.losses._common import (_MASKED, _check_logit_pair, _check_scalar, _check_temperature, _cross_entropy,
                                       _static_zero)

__all__ = [
    "dkd_loss", "hard_label_kd_loss", "kd_loss", "logit_mse_kd_loss", "nasty_teacher_loss", "vanilla_kd_loss",
]


def _kl_logits(p_logits_BxK: jax.Array, q_logits_BxK: jax.Array) -> jax.Array:
  """``KL(softmax(p) || softmax(q))`` per example, in log space (float32)."""
  logp = jax.nn.log_softmax(jnp.asarray(p_logits_BxK).astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(jnp.asarray(q_logits_BxK).astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def _kd(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, temperature: Any) -> jax.Array:
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK))
  return temperature**2 * _kl_logits(t / temperature, jnp.asarray(student_logits_BxK) / temperature)


def kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array,
            temperature: float | jax.Array = 4.0) -> jax.Array:
  """Hinton's distillation term per example: ``T^2 KL(softmax(t / T) || softmax(s / T))``.

  The teacher side carries no gradient. Callers mix it with CE:
  ``(1 - alpha) CE(s, y) + alpha * kd_loss`` (``vanilla_kd_loss``).

  Args:
    student_logits_BxK: the student's logits ``s``.
    teacher_logits_BxK: the teacher's logits ``t``, same shape.
    temperature: ``T`` > 0 (scalar).

  Returns:
    ``loss_B`` in float32.
  """
  _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  _check_temperature(temperature)
  return _kd(student_logits_BxK, teacher_logits_BxK, temperature)


def vanilla_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                    alpha: float = 0.9, temperature: float = 4.0) -> jax.Array:
  """``(1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))`` per example.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha: weight of the KD term.
    temperature: ``T`` > 0.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  _check_temperature(temperature)
  return ((1.0 - alpha) * _cross_entropy(student_logits_BxK, labels_B)
          + alpha * _kd(student_logits_BxK, teacher_logits_BxK, temperature))


def dkd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> jax.Array:
  """Decoupled KD (Zhao et al., CVPR 2022) per example: ``alpha * TCKD + beta * NCKD``.

  TCKD is ``T^2 KL`` between the binary distributions ``[p_y, 1 - p_y]`` of teacher and
  student (``p = softmax(z / T)``); NCKD is ``T^2 KL`` between the distributions over the
  non-target classes, i.e. softmax with the target logit masked out (probability exactly 0) before
  normalising. Both in log space. The CE term and the warm-up factor
  ``min(epoch / warmup, 1)`` are the caller's. The teacher carries no gradient.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha, beta: weights of TCKD and NCKD.
    temperature: ``T`` > 0.

  Returns:
    ``loss_B`` in float32.
  """
  b, num_classes = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK",
                                     "teacher_logits_BxK")
  checks.check_labels(labels_B, num_classes, "labels_B", batch=b)
  _check_temperature(temperature)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK)).astype(jnp.float32) / temperature
  s = jnp.asarray(student_logits_BxK).astype(jnp.float32) / temperature
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
                       temperature: float = 4.0, omega: float = 0.04) -> jax.Array:
  """The Nasty Teacher objective (Ma et al., ICLR 2021) per example:
  ``CE(f, y) - omega * T^2 * KL(softmax(f / T) || softmax(f_ref / T))``.

  ``ref_logits_BxK`` come from a frozen, normally trained copy (no gradient). The
  argument order of the KL follows the authors' code (``KLDivLoss(log_softmax(ref),
  softmax(f))``, batch mean); defaults are their CIFAR-10 values (the paper's ``tau``; CIFAR-100:
  temperature 20, omega 0.005). The code's constant offset (+100) does not change the gradient and
  is omitted.

  Args:
    logits_BxK: the teacher being trained, ``f``.
    ref_logits_BxK: the reference's logits, same shape.
    labels_B: int labels in ``[0, K)``.
    temperature: ``T`` > 0 (the paper's ``tau``).
    omega: weight of the adversarial KL term.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(logits_BxK, ref_logits_BxK, "logits_BxK", "ref_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  _check_temperature(temperature)
  ref = jax.lax.stop_gradient(jnp.asarray(ref_logits_BxK))
  return (_cross_entropy(logits_BxK, labels_B)
          - omega * temperature**2 * _kl_logits(jnp.asarray(logits_BxK) / temperature, ref / temperature))


def hard_label_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array,
                       alpha: float = 0.5) -> jax.Array:
  """Label-only KD per example: ``(1 - alpha) CE(s, y) + alpha CE(s, argmax t)``.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``.
    alpha: weight of the teacher-label term.

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  checks.check_labels(labels_B, k, "labels_B", batch=b)
  teacher_labels_B = jnp.argmax(teacher_logits_BxK, axis=-1)
  return (1.0 - alpha) * _cross_entropy(student_logits_BxK, labels_B) + alpha * _cross_entropy(
      student_logits_BxK, teacher_labels_B)


def logit_mse_kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, labels_B: jax.Array | None = None,
                      ce_weight: float | jax.Array = 0.0) -> jax.Array:
  """Logit matching (Kim et al., IJCAI 2021) per example:
  ``mean_k (s_k - (t_k - mean_j t_j))^2 + ce_weight * CE(s, y)``.

  The teacher logits are centred (a black box's logits or log-probabilities are known
  only up to a per-example shift); the mean over classes matches PyTorch's ``mse_loss``
  reduction.

  Args:
    student_logits_BxK, teacher_logits_BxK: logits of the same shape.
    labels_B: int labels in ``[0, K)``; needed unless ``ce_weight`` is a Python 0 (checked when given).
    ce_weight: scalar >= 0; may be traced (a Python 0 skips the CE term).

  Returns:
    ``loss_B`` in float32.
  """
  b, k = _check_logit_pair(student_logits_BxK, teacher_logits_BxK, "student_logits_BxK", "teacher_logits_BxK")
  _check_scalar(ce_weight, "ce_weight")
  checks.check_nonnegative(ce_weight, "ce_weight")
  if labels_B is not None:
    checks.check_labels(labels_B, k, "labels_B", batch=b)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits_BxK)).astype(jnp.float32)
  t = t - jnp.mean(t, axis=-1, keepdims=True)
  loss = jnp.mean((jnp.asarray(student_logits_BxK).astype(jnp.float32) - t) ** 2, axis=-1)
  if not _static_zero(ce_weight):
    if labels_B is None:
      raise ValueError("labels_B: logit_mse_kd_loss with ce_weight > 0 (or traced) needs labels")
    loss = loss + ce_weight * _cross_entropy(student_logits_BxK, labels_B)
  return loss
