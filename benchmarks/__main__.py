"""``python -m benchmarks``: see ``benchmarks.cli``."""

from jaxprotect import platform

platform.apply_cpu_xla_flags()  # before JAX initialises a backend (jaxprotect.platform)

from benchmarks.cli import main  # noqa: E402

raise SystemExit(main())
