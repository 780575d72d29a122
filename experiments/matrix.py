"""Protections x defenses x victims (``jaxprotect.unlearnable.matrix``):

  jaxprotect matrix --config experiments/matrix.py:<variant> --workdir DIR \\
      [--config.matrix.seeds=0,1,2] [--config.matrix.protections=clean,random,ops] \\
      [--config.matrix.defenses=none,jpeg] [--config.matrix.victims=default,fast,mlp:width=64]

Each protection is crafted once per seed (``workdir/poisons/<protection>/seed<k>``), then a
victim is trained on it under each defense, for each victim recipe and seed; the clean victim
of a recipe and seed is trained once, undefended, and shared. ``table.md`` (rows protection,
columns defense, one table per victim, mean +- std over seeds), ``results.json`` and
``heatmap.png``; a rerun continues a killed matrix and recomputes no finished cell.

Protections (``matrix.specs``, filled here): ``random`` (em.py ``,random``), ``em_sample``
(em.py), ``em_class`` (em.py ``,classwise``), ``mi_ue`` (mi_ue.py), ``pue`` (pue.py), ``ar``,
``lsp``, ``ops`` (em.py's crafting sections with ``craft.method`` set; their budgets in the
``baseline`` section), and ``clean`` (no poison). Each takes its crafting sections
(surrogate, craft, pue, baseline) from its file at this variant; the data, the victim, the
defense settings and the evaluation are this file's, shared by every cell.

Variants:

* ``fashion_mnist_mini`` (CPU): the embedded 10k/2k slice; every protection at eps 0.3 with
  its step sizes scaled by 0.3 / (8/255), as ``experiments/unlearnable_seeds.py --eps 0.3``
  does (``matrix.eps``); surrogates small CNNs of width 16, at most 5 outer iterations;
  small-CNN victims of 5 epochs. Protections clean, random, em_sample, em_class, ar, lsp, ops
  (mi_ue and pue are available: ``--config.matrix.protections=...,mi_ue,pue``, but each crafts
  for tens of minutes on CPU); defenses none, at, cutout, mixup, jpeg, bits, blur (ueraser
  available; grayscale does not apply to one-channel images and is refused). Adversarial
  training sized for eps 0.3 poisons: radius 0.3, 5 steps. Cost, estimated from the
  per-victim times of docs/results/unlearnable.md on 2 CPU cores (about 30 s per 5-epoch
  small-CNN victim, 2 minutes per EM craft at eps 0.3), not measured for this matrix: one
  seed is 49 cells, about 40 victims of 30 s and 7 adversarially trained ones of about
  3 minutes, plus the crafts, so roughly 45 minutes per seed; ``--config.matrix.seeds=0,1,2``
  roughly 2 hours 15 minutes.
* ``fashion_mnist``: full Fashion-MNIST (``--config.data.dir``), each protection as its file's
  ``fashion_mnist`` variant (ResNet-18 surrogates, eps 8/255), ResNet-18 width-16 victims of
  the reference recipe (60 epochs); every protection and every defense but grayscale. A GPU run.
* ``cifar10``: the reference setup (ResNet-18 surrogates and victims), every protection and
  every defense. A GPU run.

``--config.craft.*`` and ``--config.surrogate.*`` do not reach these protections (their crafting
sections come from their files): ``--config.matrix.overrides=craft.max_iterations=2`` changes
every protection (and replaces the variant's own ``matrix.overrides``).

Victims: ``default`` (the variant's victim section), ``model[:key=value...]``, or the named
recipe ``fast`` (``matrix.VICTIM_RECIPES``: a small CNN in 6 epochs at batch 256, for
screening many cells; docs/results/unlearnable.md).

Evaluation leaves out the feature MI diagnostic (``evaluate.feature_mi_examples=0``); set it
to record each poisoned victim's feature MI in ``results.json``.
"""

import pathlib

import ml_collections

from jaxprotect.config import from_file, parse_variant
from jaxprotect.unlearnable.matrix import matrix_config

HERE = pathlib.Path(__file__).parent
EM, MI_UE, PUE = HERE / "em.py", HERE / "mi_ue.py", HERE / "pue.py"
VARIANTS = ("fashion_mnist_mini", "fashion_mnist", "cifar10")
ALL_DEFENSES = ("none", "at", "cutout", "cutmix", "mixup", "ueraser", "jpeg", "bits", "grayscale", "blur")
ALL_PROTECTIONS = ("clean", "random", "em_sample", "em_class", "mi_ue", "pue", "ar", "lsp", "ops")


def specs(variant: str) -> dict[str, str]:
  """Protection -> "file:variant|override|...": the files and variants that make each one."""
  return {
      "random": f"{EM}:{variant},random",
      "em_sample": f"{EM}:{variant}",
      "em_class": f"{EM}:{variant},classwise",
      "mi_ue": f"{MI_UE}:{variant}",
      "pue": f"{PUE}:{variant}",
      "ar": f"{EM}:{variant}|craft.method=ar",
      "lsp": f"{EM}:{variant}|craft.method=lsp",
      "ops": f"{EM}:{variant}|craft.method=ops",
  }


def get_config(arg: str | None = None):
  variant, _ = parse_variant(arg, VARIANTS, where="experiments/matrix.py")
  c = matrix_config()
  base = from_file(f"{EM}:{variant}")  # the data, victim and evaluation of the variant
  for section in base.keys():
    c[section] = base[section]
  m = c.matrix
  m.variant = variant
  m.specs = ml_collections.ConfigDict(specs(variant))
  c.evaluate.feature_mi_examples = 0
  if variant == "fashion_mnist_mini":
    m.protections = ("clean", "random", "em_sample", "em_class", "ar", "lsp", "ops")
    m.defenses = ("none", "at", "cutout", "mixup", "jpeg", "bits", "blur")
    m.eps = 0.3
    m.overrides = ("surrogate.model_kwargs.width=16", "craft.max_iterations=5")
    c.victim.epochs = 5
    c.defense.eps, c.defense.steps = 0.3, 5  # AT sized for eps 0.3 poisons
    c.defense.cutout = 14  # half the 28-pixel side
  elif variant == "fashion_mnist":
    m.protections = ALL_PROTECTIONS
    m.defenses = tuple(d for d in ALL_DEFENSES if d != "grayscale")  # one-channel images
    c.victim.model = "resnet18"
    c.victim.model_kwargs.width = 16
    c.defense.cutout = 14
  else:
    m.protections = ALL_PROTECTIONS
    m.defenses = ALL_DEFENSES
  return c
