"""``python -m vigil.collector`` runs the collector CLI."""

from vigil.collector.cli import main

raise SystemExit(main())
