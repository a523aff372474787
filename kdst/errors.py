"""Errors that the command line reports as one line and a non-zero exit."""

from __future__ import annotations

import os


class KdstError(Exception):
    """A problem the user can fix; `kdst` prints it as one line, no traceback."""


class DataError(KdstError):
    """Bad input, located in a file (and a line when there is one): ``FILE:LINE: what``."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")
