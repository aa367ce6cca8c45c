"""User-facing errors of the command-line tools: one line naming the file/key/value, exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong" (shown as one line) rather than a bug (shown with a trace)."""
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.datasets import DataError

    types: list[type[BaseException]] = [ConfigError, CheckpointError, DataError, FileNotFoundError]
    try:
        from training.data.coco import DatasetError

        types.append(DatasetError)
    except ImportError:  # the data package is optional for checkpoint-only tools
        pass
    return tuple(types)


def run_cli(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a user error becomes ``prog: error: message`` on stderr and exit status 2."""
    try:
        return int(fn() or 0)
    except user_error_types() as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:  # the run itself failed (e.g. non-finite loss): say why, exit 1
        print(f"{prog}: training failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
