"""Single-question studies behind docs/BENCHMARKS.md, run from the repository root as
``python -m benchmarks.studies.NAME`` (each module's docstring gives its flags):
``train_throughput`` and ``craft_throughput`` (jaxprotect alone), ``cmim_step`` (CMIM
over CE step time), ``batch_norm`` (flax's BatchNorm against the zoo's), ``cpu_ops`` and
``cpu_gap`` (XLA:CPU against PyTorch per op and per step; these two need PyTorch).
"""
