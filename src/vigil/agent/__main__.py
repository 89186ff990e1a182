"""``python -m vigil.agent`` is ``vigil-agent``."""

import sys

from vigil.agent.cli import main

sys.exit(main())
