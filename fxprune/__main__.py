"""``python -m fxprune``: the same command line as the ``fxprune`` console script."""
from .cli import main

raise SystemExit(main())
