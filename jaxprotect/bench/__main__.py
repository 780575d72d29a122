"""``python -m jaxprotect.bench``: see ``jaxprotect.bench.cli``."""

from jaxprotect.bench.cli import main

raise SystemExit(main())
