"""``jaxprotect condense`` and ``jaxprotect mia``: ``--config`` is an experiment file whose ``get_config`` returns a
``privacy.condensation.condensation_config()`` (``experiments/condense.py``);
``--config.<section>.<field>=<value>`` overrides a field::

  jaxprotect condense --config experiments/condense.py:fashion_mnist_mini,dm,ipc1 --workdir DIR

condenses the training set, evaluates the synthetic set over the evaluation seeds and
writes its nearest real images (``results.json``, ``synthetic/``, ``neighbours.json``,
``closest_pairs.png``); a killed run resumes from its last checkpoint.

  jaxprotect mia --config experiments/privacy.py:fashion_mnist_mini --workdir DIR

trains target models on real, random-subset and condensed sets of their halves of a
candidate pool and attacks their membership (loss attack, LiRA leave-one-out), one
resumable cell per set (``results.json``, ``table.md``, ``roc_<set>.png``).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxprotect.flags import parse_config_command


def cmd_condense(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "condense", example="experiments/condense.py:fashion_mnist_mini,dm,ipc1")
  if fv is None:
    return 2
  from jaxprotect.privacy import condensation

  results = condensation.run_condense(fv.config, fv.workdir)
  print(condensation.report_markdown(results))
  print(f"synthetic set: {results['synthetic']}")
  print(f"results: {fv.workdir}/results.json  neighbours: {fv.workdir}/neighbours.json  "
        f"pairs: {fv.workdir}/closest_pairs.png")
  return 0


def cmd_mia(argv: Sequence[str]) -> int:
  fv = parse_config_command(argv, "mia", example="experiments/privacy.py:fashion_mnist_mini")
  if fv is None:
    return 2
  from jaxprotect.privacy import experiment

  results = experiment.run_mia(fv.config, fv.workdir)
  print(experiment.report_markdown(results))
  rocs = ", ".join(str(r["roc"]) for r in results["sets"].values() if r.get("roc"))
  print(f"results: {fv.workdir}/results.json  table: {fv.workdir}/table.md  plots: {rocs or 'none'}")
  return 0
