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


def one_line(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line: how a failed cell, explanation or command is recorded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
