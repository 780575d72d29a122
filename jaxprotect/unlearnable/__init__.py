"""Unlearnable examples: error-minimizing noise (sample- and class-wise) and MI-UE.

``craft(config, workdir)`` runs the min-min loop (``unlearnable_config()`` documents the
sections: ``data``, ``surrogate``, ``craft``, ``victim``, ``evaluate``, ``export``,
``runtime``), ``evaluate(config, workdir)`` trains victims on the poison and on clean data,
``poison_io`` saves, checks, loads and exports poisons; ``pgd`` holds the sign-PGD
machinery for other methods to reuse.
"""

from jaxprotect.unlearnable import pgd, poison_io
from jaxprotect.unlearnable.crafting import craft, unlearnable_config
from jaxprotect.unlearnable.victims import evaluate

__all__ = ["craft", "evaluate", "pgd", "poison_io", "unlearnable_config"]
