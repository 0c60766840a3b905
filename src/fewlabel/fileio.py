"""Atomic file writes and file hashes: the one place that knows how fewlabel puts a file in place.

Every write goes to a temporary name beside the target and is renamed onto it with ``os.replace``
(atomic within a folder on POSIX and Windows): a reader, or a run killed half-way, sees the old file
or the new one, never a half-written one. On an exception (KeyboardInterrupt included) the temporary
file is removed and the target is left as it was.

Temporary names are ``.<name>.tmp-<pid>-<random hex><suffix>`` in the target's folder:

* hidden (leading dot), so folder scans (``data.readers`` ignores dot-names) never pick one up;
* unique per process *and* per call, so two processes or threads writing the same target cannot
  clobber each other's temporary file (the last ``os.replace`` wins, whole);
* matched by ``.*.tmp-*``, the pattern ``experiments.run_folder`` uses to sweep leftovers of killed runs.

This module imports nothing from fewlabel but ``errors``, so any module may import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fewlabel.errors import FewlabelError

CHUNK_SIZE = 1 << 20  # bytes read at a time by file_sha256


def temp_path(path: str | Path, suffix: str | None = None) -> Path:
    """A fresh temporary name beside ``path`` (see the module docstring); nothing is created."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}{suffix or ''}")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to create; on a clean exit rename it onto
    ``path``, on an exception remove it (the target keeps its old content). Creates missing parents.

    ``suffix`` is appended to the temporary name, for writers that look at the extension:
    ``np.save`` appends ``.npy`` unless the name ends with it, PIL and ``savefig`` pick the format
    from it. ``torch.save``, ``safetensors`` and plain ``open`` need none.

        with atomic_path(out / "scores.npy", suffix=".npy") as tmp:
            np.save(tmp, scores)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; with ``fsync`` the bytes reach the disk before the
    rename (a power cut then leaves the old file or the new one, not an empty one). Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return path


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` (encoded as is: no newline translation) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, *, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None, fsync: bool = False) -> Path:
    """``json.dumps(obj, indent=..., sort_keys=..., default=...)`` plus a final newline, written
    atomically (UTF-8; the JSON itself is ASCII); returns ``path``."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return atomic_write_text(path, text, fsync=fsync)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks (weight files do not have to fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, what: str, fix: str | None = None) -> Any:
    """A JSON object read from ``path``; a missing, unreadable, corrupt or non-object file raises one
    ``FewlabelError`` line naming the file, saying what it is (``what``, e.g. "run record") and what
    to do (``fix``, e.g. "delete the folder and run again").

    Why one helper: run folders and model folders are edited, truncated and copied half-way by users;
    each of those must read as a sentence about the file, not a JSONDecodeError.
    """
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FewlabelError(f"{what} is missing{hint}", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise FewlabelError(f"cannot read the {what} ({reason}){hint}", path=path) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ValueError for absurd number literals
        where = f"line {exc.lineno}" if hasattr(exc, "lineno") else "its content"
        state = "empty" if not text.strip() else f"not valid JSON ({where})"
        raise FewlabelError(f"{what} is corrupt: {state}{hint}", path=path) from None
    if not isinstance(obj, dict):
        raise FewlabelError(f"{what} is corrupt: expected a JSON object, found {type(obj).__name__}{hint}",
                            path=path)
    return obj


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a hidden file in ``folder``: the only test that also catches read-only mounts,
    immutable folders and root-squashed shares, which permission bits do not show."""
    probe = temp_path(folder / ".write-probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise FewlabelError(f"{what} is not writable ({exc.strerror or exc}); choose another place",
                            path=folder) from None


def check_output_dir(path: str | Path, what: str = "output folder", *, markers: tuple[str, ...] = (),
                     overwrite: bool = True) -> Path:
    """Make sure ``path`` can become (or already is) a writable output folder, BEFORE any work is done.

    Refused in one line naming the path: an existing file, a path under a file, a folder that cannot be
    written (or, when missing, whose nearest existing parent cannot). With ``overwrite=False`` an
    existing folder holding any of ``markers`` (e.g. a model's ``config.json``) is refused too, so
    nothing is replaced without consent. Creates nothing: a refused command leaves no trace.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FewlabelError(f"{what} exists and is a file, not a folder; choose another path", path=path)
    if path.is_dir():
        if not overwrite:
            present = [m for m in markers if (path / m).exists()]
            if present:
                raise FewlabelError(f"{what} already holds {', '.join(present)}; pass --overwrite to replace "
                                    "it, or choose a new path", path=path)
        _probe_writable(path, what)
        return path
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FewlabelError(f"{what} cannot be created: {parent} is a file, not a folder", path=path)
            _probe_writable(parent, f"folder {parent} (where {what} would be created)")
            return path
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Make sure a file can be written at ``path`` (its folder is created) BEFORE any work is done."""
    path = Path(path)
    if path.is_dir():
        raise FewlabelError(f"{what} is a folder; give a file name", path=path)
    check_output_dir(path.parent, what=f"folder of the {what}")
    return path
