"""``python -m collector`` runs the collector CLI."""

from collector.cli import main

raise SystemExit(main())
