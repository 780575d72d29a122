"""Side-by-side benchmark suite: jaxprotect against PyTorch pipelines in the style of the
authors' reference code, on the same synthetic CIFAR-shaped data and the same models.

Not part of the installed package: run it from the repository root as
``python -m benchmarks [--quick]`` (``cli``), which writes ``benchmarks/results.json`` and
the generated tables of ``docs/BENCHMARKS.md``. Workloads (``suite``):
``train_step`` (victim training step), ``em_pgd`` and ``mi_ue_pgd`` (a sample-wise PGD
pass), ``e2e_em`` (EM crafting then a victim, wall time) and ``cmim_step`` (CMIM step
time over CE step time). ``jax_impl`` runs jaxprotect's own engine; ``torch_impl`` (with
``torch_models``) the PyTorch side, eager or tuned. PyTorch is a benchmark-only optional
dependency (the ``bench`` extra); nothing here imports it unless asked to. ``flops``
counts model FLOPs for the MFU column; ``studies/`` holds the single-question scripts
that docs/BENCHMARKS.md cites (``python -m benchmarks.studies.NAME``).
"""
