"""``python -m jaxprotect.bench``: see ``jaxprotect.bench.cli``."""

from jaxprotect import platform

platform.apply_cpu_xla_flags()  # before JAX initialises a backend (jaxprotect.platform)

from jaxprotect.bench.cli import main  # noqa: E402

raise SystemExit(main())
