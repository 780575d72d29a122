"""Side-by-side benchmark suite: jaxprotect against PyTorch pipelines in the style of the
authors' reference code, on the same synthetic CIFAR-shaped data and the same models.

Run it as ``python -m jaxprotect.bench [--quick]`` (``cli``). Workloads (``suite``):
``train_step`` (victim training step), ``em_pgd`` and ``mi_ue_pgd`` (a sample-wise PGD
pass), ``e2e_em`` (EM crafting then a victim, wall time) and ``cmim_step`` (CMIM step
time over CE step time). ``jax_impl`` runs jaxprotect's own engine; ``torch_impl`` (with
``torch_models``) the PyTorch side, eager or tuned. PyTorch is a benchmark-only optional
dependency (the ``bench`` extra); nothing in this package imports it unless asked to.
"""
