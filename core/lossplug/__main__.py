"""``python -m lossplug`` runs the ``lossplug`` command."""

from .cli import main

raise SystemExit(main())
