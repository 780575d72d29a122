"""Unlearnable examples: error-minimizing noise (sample- and class-wise) and MI-UE, and
certified (q, eta)-learnability with the recovery attack.

``craft(config, workdir)`` runs the min-min loop (``unlearnable_config()`` documents the
sections: ``data``, ``surrogate``, ``craft``, ``victim``, ``evaluate``, ``export``,
``runtime``), ``evaluate(config, workdir)`` trains victims on the poison and on clean data,
``poison_io`` saves, checks, loads and exports poisons; ``pgd`` holds the sign-PGD
machinery for other methods to reuse. ``certify_learnability`` turns the accuracies of
weight draws into the certified (q, eta)-learnability; ``certify.certify(config, workdir)``
draws and evaluates them for a trained model (``certify_config()``); ``recovery`` holds
the recovery attack; ``baselines`` the surrogate-free poisons (AR, LSP, OPS) that
``craft`` also writes (``craft.method``), and ``evaluate`` trains its poisoned victim under
the ``defense`` section's defense (``jaxprotect.defenses``); ``run_matrix(config, workdir)``
(``matrix_config()``) runs protections x defenses x victims.
"""

from jaxprotect.unlearnable import baselines, certify, matrix, pgd, poison_io, recovery
from jaxprotect.unlearnable.certify import certify_config, certify_learnability
from jaxprotect.unlearnable.crafting import craft, unlearnable_config
from jaxprotect.unlearnable.matrix import matrix_config, run_matrix
from jaxprotect.unlearnable.victims import evaluate

__all__ = ["baselines", "certify", "certify_config", "certify_learnability", "craft", "evaluate", "matrix",
           "matrix_config", "pgd", "poison_io", "recovery", "run_matrix", "unlearnable_config"]
