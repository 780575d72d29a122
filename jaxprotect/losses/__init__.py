"""Losses as pure per-example functions (``loss_B``); callers reduce them.

One module per family, every public name re-exported here (as ``optax.losses`` does), so
``jaxprotect.losses.<name>`` is the way to reach any of them:

* ``classification`` -- ``cross_entropy`` (optionally label-smoothed) and ``accuracy``; the
  cross-entropy is also the objective of error-minimising (EM) noise (Huang et al.,
  "Unlearnable Examples: Making Personal Data Unexploitable", ICLR 2021);
* ``cmim`` -- the conditional mutual information of temperature-scaled output clusters
  (``cmi``, ``cmi_spectrum``), its class centroids (``centroid_sums``,
  ``centroids_from_sums``, ``class_mean_centroids``, ``update_centroids``), its
  aggregation over temperatures and the CMIM teacher objective ``cmim_loss`` (Ye, Hamidi &
  Yang, "Towards Undistillable Models by Minimizing Conditional Mutual Information", 2025);
* ``distillation`` -- the students' KD losses (Hinton et al. 2015; DKD, Zhao et al., CVPR
  2022; label-only; logit matching) and the Nasty Teacher objective (Ma et al., ICLR 2021);
* ``unlearnable`` -- MI-UE's intra-class feature-collapse loss ``mi_ue_loss`` (Zhu et al.,
  "Why Do Unlearnable Examples Work: A Novel Perspective of Mutual Information", ICLR 2026).

Privacy losses will join them as ``privacy``. ``_common`` holds the private input checks
and kernels the families share.

Conventions (as optax's): predictions first (``logits_BxK``, then the teacher's or the
reference's logits, then ``labels_B``), per-example results, float32 whatever the
inputs' dtype. Shapes: ``logits_BxK`` float logits with ``B >= 1`` and ``K >= 2``,
``labels_B`` integer class indices in ``[0, K)``, ``centroids_TxKxK`` one ``K x K``
centroid matrix per temperature of ``temperatures_T``.

Every public function checks its inputs (``jaxprotect.checks``) when called or traced:
shapes, dtypes and static arguments always (``ValueError`` naming the argument); values
(label ranges, temperatures > 0) at once when they are concrete, and inside ``jit`` under
``checks.checked`` / ``checks.value_checks()``. Scalar weights (``label_smoothing``,
``lam``, ``ce_weight``, ``zeta``, ``exclude_self``) may be traced; a Python ``0`` /
``False`` skips the term it weights.
"""

from jaxprotect.losses.classification import accuracy, cross_entropy
from jaxprotect.losses.cmim import (AGGREGATIONS, CENTROID_FLOOR, DEFAULT_CENTROID_DECAY, DEFAULT_TEMPERATURES,
                                    WEIGHTINGS, centroid_sums, centroids_from_sums, class_mean_centroids, cmi,
                                    cmi_aggregate, cmi_spectrum, cmim_loss, temperature_weights, update_centroids)
from jaxprotect.losses.distillation import (dkd_loss, hard_label_kd_loss, kd_loss, logit_mse_kd_loss,
                                            nasty_teacher_loss, vanilla_kd_loss)
from jaxprotect.losses.unlearnable import MI_UE_EPS, mi_ue_loss

__all__ = [
    "AGGREGATIONS", "CENTROID_FLOOR", "DEFAULT_CENTROID_DECAY", "DEFAULT_TEMPERATURES", "MI_UE_EPS", "WEIGHTINGS",
    "accuracy", "centroid_sums", "centroids_from_sums", "class_mean_centroids", "cmi", "cmi_aggregate", "cmi_spectrum",
    "cmim_loss", "cross_entropy", "dkd_loss", "hard_label_kd_loss", "kd_loss", "logit_mse_kd_loss", "mi_ue_loss",
    "nasty_teacher_loss", "temperature_weights", "update_centroids", "vanilla_kd_loss",
]
