"""``python -m training.data`` = ``rtvp-data``."""

import sys

from training.data.cli import main

sys.exit(main())
