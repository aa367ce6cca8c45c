"""Console-script entry point of ``rtvp-export``: on an install without the export extra it answers in one
line which extra to install (exit status 2) instead of a ``ModuleNotFoundError`` traceback (see
``training.entrypoints``)."""

from __future__ import annotations

import sys

from training.entrypoints import run_tool


def rtvp_export() -> None:
    sys.exit(run_tool("rtvp-export", "export.cli", "export"))
