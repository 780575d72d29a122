"""``jaxprotect poison``, ``jaxprotect evaluate`` and ``jaxprotect certify``: ``--config`` is an experiment file
whose ``get_config`` returns an ``unlearnable_config()`` (``experiments/em.py``,
``experiments/mi_ue.py``), ``--config.<section>.<field>=<value>`` overrides a field::

  jaxprotect poison   --config experiments/em.py:fashion_mnist_mini --config.craft.eps=0.1 --workdir DIR
  jaxprotect poison   --config experiments/em.py:fashion_mnist_mini --config.craft.method=ops --workdir DIR
  jaxprotect evaluate --config experiments/em.py:fashion_mnist_mini --config.evaluate.poison=DIR --workdir DIR2

``certify --config experiments/certify.py --config.certify.model=RUN_DIR --workdir DIR``
evaluates weight draws of a trained model and writes its certified learnability curve;
``recover --config experiments/recover.py --config.recover.model=RUN_DIR --workdir DIR`` runs the
recovery attacks (projected fine-tuning, random search) against it.

``matrix --config experiments/matrix.py:fashion_mnist_mini --workdir DIR`` crafts each protection once per seed
and trains a victim on it under each defense (``unlearnable.matrix``): ``results.json``, ``table.md``,
``heatmap.png``; a rerun continues where a killed one stopped.

``craft.method`` ``ar``, ``lsp`` or ``ops`` writes a surrogate-free baseline poison through the
same directory and manifest; ``evaluate --config.defense.name=jpeg`` (or ``at``, ``cutout``,
``cutmix``, ``mixup``, ``ueraser``, ``bits``, ``grayscale``, ``blur``) trains the poisoned
victim under a defense.

``poison --export=png,npz`` (or ``--config.export.png=true``, ``--config.export.npz=true``)
also writes the protected training set.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxprotect.flags import define_config_flags, parse_config_command


def _define(fv, flags, export: bool = False):
  define_config_flags(fv, flags, "config file[:variant], e.g. experiments/em.py:fashion_mnist")
  if export:
    flags.DEFINE_list("export", [], "also export the protected training set: png (a folder per class), "
                      "npz (an array dataset jaxprotect.data.load reads); or config.export.png/npz",
                      flag_values=fv)


def cmd_poison(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "poison", lambda fv, flags: _define(fv, flags, export=True))
  if fv is None:
    return 2
  bad = set(fv.export) - {"png", "npz"}
  if bad:
    print(f"jaxprotect poison: unknown --export format(s) {sorted(bad)}; use png and/or npz", file=sys.stderr)
    return 2
  from jaxprotect import data, parallel
  from jaxprotect.unlearnable import crafting, poison_io

  config = fv.config
  mesh = parallel.mesh_from_config(config)
  ds = data.from_config(config, mesh)
  results = crafting.craft(config, fv.workdir, mesh, ds)
  head = f"{results['method']} {results['mode']}-wise, {poison_io.budget(results['eps'], results.get('norm'))}"
  if results["method"] == "random":  # nothing crafted
    print(f"{head}: uniform noise, no crafting")
  elif results["perturbed_train_accuracy"] is None:  # a surrogate-free baseline (ar, lsp, ops)
    print(f"{head}: surrogate-free baseline, no crafting")
  else:
    print(f"{head}: {results['iterations']} iterations, surrogate accuracy on the perturbed set "
          f"{100 * results['perturbed_train_accuracy']:.2f}%")
  print(f"poison: {results['poison']}")
  exports = set(fv.export) | {f for f in ("png", "npz") if config.export[f]}
  if exports:  # every process: a training split sharded over processes is gathered; process 0 writes
    parallel.barrier("poison written")  # process 0 wrote the poison directory
    poison = poison_io.load_poison(results["poison"], ds)
    if "npz" in exports:
      print(f"npz: {poison_io.export_npz(f'{fv.workdir}/poisoned_train.npz', ds, poison)}")
    if "png" in exports:
      print(f"png: {poison_io.export_png(f'{fv.workdir}/png', ds, poison)}")
  return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "evaluate", _define)
  if fv is None:
    return 2
  from jaxprotect.unlearnable import victims

  results = victims.evaluate(fv.config, fv.workdir)
  print(victims.report_markdown(results))
  print(f"results: {fv.workdir}/results.json")
  return 0


def cmd_certify(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "certify", example="experiments/certify.py:reference")
  if fv is None:
    return 2
  from jaxprotect.unlearnable import certify

  results = certify.certify(fv.config, fv.workdir)
  subset = (f" ({100 * results['model_subset_accuracy']:.2f}% on the {results['test_images']} test images of the "
            f"draws)" if "model_subset_accuracy" in results else "")
  whole = results["model_test_accuracy"]
  whole = "not measured on the whole split" if whole is None else f"{100 * whole:.2f}%"
  print(f"model {results['model']}: test accuracy {whole}{subset}, "
        f"{results['num_draws']} draws with sigma {results['sigma']:g}: mean {100 * results['mean_accuracy']:.2f}%")
  print(f"certified (q={results['q']:g}, eta)-learnability at {100 * results['confidence']:g}% confidence:")
  for eta, value in zip(results["etas"], results["certified"]):
    print(f"  eta {eta:<6g} {'abstain' if value is None else f'{100 * value:.2f}%'}")
  print(f"results: {fv.workdir}/results.json  plot: {fv.workdir}/certified.png")
  return 0


def cmd_recover(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "recover", example="experiments/recover.py:reference")
  if fv is None:
    return 2
  from jaxprotect.unlearnable import recovery

  results = recovery.recover(fv.config, fv.workdir)
  print(f"model {results['model']}: {100 * results['before']:.2f}% on the {results['report_examples']} report images "
        f"before the attack ({results['attack_examples']} clean images for the attacker)")
  for attack, fields in results["attacks"].items():
    print(f"{attack}: " + ", ".join(f"eta {e:g} {100 * a:.2f}%" for e, a in zip(results["etas"], fields["accuracy"])))
  print(f"results: {fv.workdir}/results.json  plot: {fv.workdir}/recovery.png")
  return 0


def cmd_matrix(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "matrix", example="experiments/matrix.py:fashion_mnist_mini")
  if fv is None:
    return 2
  from jaxprotect.unlearnable import matrix

  results = matrix.run_matrix(fv.config, fv.workdir)
  print(matrix.render_table(results["table"], results["protections"], results["defenses"]))
  print(f"{results['cells_done']} cells ({results['computed']} computed in this run, the rest from "
        f"{fv.workdir}/cells)")
  print(f"results: {fv.workdir}/results.json  table: {fv.workdir}/table.md  heatmap: {fv.workdir}/heatmap.png")
  return 0
