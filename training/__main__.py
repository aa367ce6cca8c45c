"""``python -m training`` = ``rtvp-train`` (so ``torchrun -m training`` works too)."""

import sys

from training.train import main

sys.exit(main())
