"""``python -m omnizip.cli``: the ``omnizip`` command."""

from .app import main

raise SystemExit(main())
