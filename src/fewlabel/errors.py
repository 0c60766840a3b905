"""The errors a user can cause. Each carries ONE line that names the file (or thing) and the problem.

The CLI prints ``str(error)`` and exits non-zero; no traceback reaches the user for these.
"""

from __future__ import annotations

from pathlib import Path


class FewlabelError(Exception):
    """Base class: a problem with the user's input or request, described in one line."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.problem = " ".join(str(message).split())  # force one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class DataError(FewlabelError):
    """The data as a whole cannot be used (empty folder, one class only, ...)."""


class UnreadableFileError(DataError):
    """A file exists but cannot be decoded (truncated, garbage, wrong format)."""


class UnknownFormatError(DataError):
    """Files whose extension no reader handles."""


class InvalidImageError(DataError):
    """An image decodes but its content is unusable (NaN/Inf, zero size, non-binary mask ...)."""


class MaskError(DataError):
    """A mask is missing, of another shape than its image, or not integer-valued."""


class ManifestError(DataError):
    """A CSV manifest is malformed or names a path that does not exist."""


class SplitError(FewlabelError):
    """A split cannot be made as asked (more labels than a class has, a class too small ...)."""


class ModelFileError(FewlabelError):
    """A model or encoder file is missing, corrupt, or does not match what it is loaded into."""


class ConfigMismatchError(FewlabelError):
    """A run directory holds results of another configuration."""


class NoImagesError(DataError):
    """Nothing to score or explain: no image file among the inputs (``predict``/``explain`` exit 1)."""


def one_line(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line: how a failed cell, explanation or command is recorded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


#: What a full disk (or an exhausted quota) says in the words of the libraries that write for us: the
#: OS's own text for ENOSPC and EDQUOT (torch and safetensors keep only the text), and SQLite's.
_DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "database or disk is full")


class DiskFullError(FewlabelError):
    """The disk (or the user's quota) is full: nothing is damaged; free space and run again."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__("no space left on the device; free space and run the same command again", path=path)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full disk or an exhausted quota:
    ``OSError`` ENOSPC / EDQUOT, SQLite's "database or disk is full", or a library's wrapped text."""
    import errno
    import sqlite3

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DiskFullError):
            return True
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if any(text in str(cause).lower() for text in _DISK_FULL_TEXTS):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
