"""Membership privacy of condensed data (Dong, Zhao, Lyu, "Privacy for Free: How does
Dataset Condensation Help Privacy?", ICML 2022).

``mia`` holds the membership-inference attacks and their metrics: the loss attack, the
global-threshold baseline and LiRA online / offline (Carlini et al., "Membership
Inference Attacks From First Principles", IEEE S&P 2022), every score higher = more
likely a member; ``shadow`` trains LiRA's shadow models together (a ``vmap`` of the
engine's step over the models, split across devices) and reads their logits on the
candidate pool. ``condense`` condenses a training set into a few synthetic images per
class (DC, DSA, DM; Zhao et al. ICLR 2021, ICML 2021, WACV 2023) and evaluates them;
``dsa`` is the differentiable siamese augmentation. The function ``condense.condense``
stays under its module (``jaxprotect.privacy.condense`` is the module).
"""

from jaxprotect.privacy import condense, dsa, mia, shadow
from jaxprotect.privacy.condense import (
    CondenseConfig, CondenseState, Condensed, Normalization, condense_config, evaluate_synthetic,
    gradient_match_distance, synthetic_labels)
from jaxprotect.privacy.mia import (
    auc, balanced_accuracy, global_threshold_scores, keep_masks, lira_leave_one_out, lira_offline, lira_online,
    lira_statistic, loss_attack_scores, mia_metrics, plot_roc, roc_curve, tpr_at_fpr)
from jaxprotect.privacy.shadow import (
    ShadowChunk, in_indices, shadow_chunks, shadow_logits, shadow_statistics, train_shadow_models)

__all__ = [
    "auc", "balanced_accuracy", "condense", "condense_config", "CondenseConfig", "Condensed", "CondenseState", "dsa",
    "evaluate_synthetic", "global_threshold_scores", "gradient_match_distance", "in_indices", "keep_masks",
    "lira_leave_one_out", "lira_offline", "lira_online", "lira_statistic", "loss_attack_scores", "mia", "mia_metrics",
    "Normalization", "plot_roc", "roc_curve", "shadow", "shadow_chunks", "shadow_logits", "shadow_statistics",
    "ShadowChunk", "synthetic_labels", "tpr_at_fpr", "train_shadow_models",
]
