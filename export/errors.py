"""The one error type of the export pipeline: its message names the file, field or value at fault."""


class ExportError(Exception):
    """Bad input or a failed stage. The CLI prints the message and exits non-zero."""
