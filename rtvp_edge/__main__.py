"""``python -m rtvp_edge`` is ``rtvp-edge``."""

import sys

from rtvp_edge.cli import main

sys.exit(main())
