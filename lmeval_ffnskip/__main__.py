"""``python -m lmeval_ffnskip``: see ``cli.py``."""

from .cli import main

raise SystemExit(main())
