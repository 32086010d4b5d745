"""``python -m lmeval_ffnskip``: see ``cli/__init__.py``."""

from .cli import main

raise SystemExit(main())
