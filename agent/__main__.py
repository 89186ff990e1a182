"""``python -m agent`` is ``vigil-agent``."""

import sys

from agent.cli import main

sys.exit(main())
