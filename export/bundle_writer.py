"""Atomic bundle writing: everything goes into a hidden temp folder next to ``out`` (same filesystem),
the manifest is written last, the finished bundle is verified, then renamed into place. A failed export
leaves no half-written bundle: the temp folder is removed and an existing ``out`` is untouched."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from export.errors import ExportError


class BundleStaging:
    """``with BundleStaging(out) as tmp: ...; staging.commit()``.

    Args:
        out: final bundle folder.
        overwrite: replace an existing bundle at ``out`` (only after the new one is complete).
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}"
        self.committed = False

    def __enter__(self) -> Path:
        if self.out.exists() and not self.overwrite:
            raise ExportError(f"output {self.out} already exists; choose another --out or pass --overwrite")
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"output {self.out} exists and is not a folder")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except OSError as e:
            raise ExportError(f"cannot create the bundle folder next to {self.out}: {e}") from None
        return self.tmp

    def commit(self) -> Path:
        """Move the finished bundle into place (``os.replace`` of folders; an old bundle is removed after)."""
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
