"""Atomic bundle writing: everything goes into a hidden temp folder next to ``out`` (same filesystem),
the manifest is written last, the finished bundle is verified, then renamed into place. A failed export
leaves no half-written bundle: the temp folder is removed and an existing ``out`` is untouched.

The staging itself is the runtime's (``rtvp_edge.bundle_vocabulary.BundleStaging``, which also rewrites
vocabularies on the edge box); here its errors become ``ExportError``.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from rtvp_edge.bundle import BundleError
from rtvp_edge.bundle_vocabulary import BundleStaging as _RuntimeStaging


class BundleStaging(_RuntimeStaging):
    """``with BundleStaging(out) as tmp: ...; staging.commit()`` (see ``rtvp_edge.bundle_vocabulary``)."""

    def __enter__(self) -> Path:
        try:
            return super().__enter__()
        except BundleError as e:
            raise ExportError(str(e)) from None
