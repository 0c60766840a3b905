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
import csv
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fewlabel.errors import DiskFullError, FewlabelError, is_disk_full

CHUNK_SIZE = 1 << 20  # bytes read at a time by file_sha256
# A JSON record (plan, run, config, metrics) of a run over a million images stays far below this.
MAX_JSON_BYTES = 1 << 30


def temp_path(path: str | Path, suffix: str | None = None) -> Path:
    """A fresh temporary name beside ``path`` (see the module docstring); nothing is created."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}{suffix or ''}")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to create; on a clean exit rename it onto
    ``path``, on an exception remove it (the target keeps its old content). Creates missing parents.
    A device, FIFO or socket at ``path`` is refused (``refuse_special_file``) before anything is written.

    ``suffix`` is appended to the temporary name, for writers that look at the extension:
    ``np.save`` appends ``.npy`` unless the name ends with it, PIL and ``savefig`` pick the format
    from it. ``torch.save``, ``safetensors`` and plain ``open`` need none.

        with atomic_path(out / "scores.npy", suffix=".npy") as tmp:
            np.save(tmp, scores)
    """
    path = Path(path)
    refuse_special_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(exc):  # a failed write names no file (torch, safetensors: not even an errno)
            raise DiskFullError(path=path) from exc
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
    kind = special_kind(path)
    if kind is not None:  # a FIFO would block the read forever, a device never end it
        raise FewlabelError(f"is {kind}, not a regular file (never opened)", path=path)
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
    kind = special_kind(path)
    if kind is not None:
        raise FewlabelError(f"{what} is {kind}, not a regular file (never opened){hint}", path=path)
    with contextlib.suppress(OSError):  # a missing file is said below
        size = os.stat(path).st_size
        if size > MAX_JSON_BYTES:  # a sparse or runaway file: refused by its size, not read into memory
            raise FewlabelError(f"{what} is {size:,} bytes, over the {MAX_JSON_BYTES:,} a record of fewlabel "
                                f"can hold{hint}", path=path)
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


# -- output checks ---------------------------------------------------------------------------------
# Every command's ``--out`` goes through check_output_dir / check_output_file before any work, so the
# rules of docs/guarantees.md ("Outputs") live here once: no link or special file at the output, no
# output inside an input, no existing file replaced without consent.

#: How ``data.catalog.manifest`` recognises a manifest and the columns that name files, repeated here
#: so that this module still imports nothing from fewlabel but ``errors``.
_MANIFEST_SUFFIXES = (".csv", ".tsv")
_MANIFEST_FILE_COLUMNS = ("path", "mask")
_NPZ_MEMBER_SEP = "::"

_SPECIAL_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                  stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}

InputPaths = Iterable[str | Path | None]


def _lstat(path: Path, what: str) -> os.stat_result | None:
    """The entry at ``path`` itself (a link is not followed), or None when nothing is there yet."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise FewlabelError(f"{what} cannot be checked ({exc.strerror or exc}); choose another path",
                            path=path) from None


def _special_kind(mode: int) -> str | None:
    """"a FIFO (named pipe)" and the like for anything that is not a regular file, folder or link."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return _SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _refuse_link_or_special(path: Path, st: os.stat_result, what: str, expected: str) -> None:
    # A rename onto a link replaces the link, not the file it points at; a device or pipe would be
    # replaced by a regular file (or, written through, swallow the output): neither is what was asked.
    if stat.S_ISLNK(st.st_mode):
        raise FewlabelError(f"{what} is a symbolic link; fewlabel writes real paths only: give the path "
                            "the link points to, or another one", path=path)
    kind = _special_kind(st.st_mode)
    if kind is not None:
        raise FewlabelError(f"{what} is {kind}, not a {expected}; choose another path", path=path)


def _real(path: str | Path) -> Path:
    """``path`` absolute with its links resolved; a link loop keeps the plain absolute path (the
    reader of that input names the loop)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _real_output(path: Path) -> Path:
    """Where ``path`` would be written: its folder resolved, its own name kept (a link at the output
    itself is refused before this is asked)."""
    if path.name in ("", ".", ".."):
        return _real(path)
    return _real(path.absolute().parent) / path.name


def _manifest_folders(csv_path: Path) -> set[Path]:
    """The folders holding the files (and masks) a CSV/TSV manifest lists: that is where its data
    live. An unreadable or malformed manifest gives what was read; its loader names the problem."""
    folders: set[Path] = set()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
        delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
        for row in csv.DictReader(text.splitlines(), delimiter=delimiter):
            for key, value in row.items():
                if (isinstance(key, str) and key.strip().lower() in _MANIFEST_FILE_COLUMNS
                        and isinstance(value, str) and value.strip()):
                    listed = Path(value.strip().partition(_NPZ_MEMBER_SEP)[0])
                    folders.add((listed if listed.is_absolute() else csv_path.parent / listed).parent)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return {_real(folder) for folder in folders}


def _protected(inputs: InputPaths) -> list[tuple[Path, bool, str]]:
    """(real path, is a folder, its name for the user) of everything the inputs are made of: a
    folder, a file (an .npz, an image, a plan), and for a manifest also the folders of its files."""
    areas: list[tuple[Path, bool, str]] = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        shown = Path(item)
        real = _real(shown)
        if real.is_dir():
            areas.append((real, True, f"the input folder {shown}"))
            continue
        areas.append((real, False, f"the input file {shown}"))
        if shown.suffix.lower() in _MANIFEST_SUFFIXES and real.is_file():
            areas.extend((folder, True, f"{folder}, where the files listed in {shown} are")
                         for folder in sorted(_manifest_folders(real)))
    return areas


def _refuse_inside_inputs(path: Path, what: str, inputs: InputPaths) -> None:
    """An output on or inside an input would overwrite it or become part of it (a run folder read as
    a class, saliency maps read as training images)."""
    target = _real_output(path)
    for real, is_folder, name in _protected(inputs):
        if target == real:
            raise FewlabelError(f"{what} is {name}; outputs never replace inputs: choose another path",
                                path=path)
        if is_folder and target.is_relative_to(real):
            raise FewlabelError(f"{what} lies inside {name}; what is written there would mix with the "
                                "data: choose a path outside it", path=path)


def _check_location(path: Path, what: str) -> None:
    """An existing folder at ``path`` is writable, or the nearest existing parent is a writable folder."""
    if path.exists() and not path.is_dir():
        raise FewlabelError(f"{what} exists and is a file, not a folder; choose another path", path=path)
    if path.is_dir():
        _probe_writable(path, what)
        return
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FewlabelError(f"{what} cannot be created: {parent} is a file, not a folder", path=path)
            _probe_writable(parent, f"folder {parent} (where {what} would be created)")
            return


def check_output_dir(path: str | Path, what: str = "output folder", *, markers: tuple[str, ...] = (),
                     overwrite: bool = True, inputs: InputPaths = (), foreign: tuple[str, ...] = ()) -> Path:
    """Make sure ``path`` can become (or already is) a writable output folder, BEFORE any work is done.

    Refused in one line naming the path: a symbolic link, a device, FIFO or socket, an existing file,
    a path under a file, the path of one of ``inputs`` or a path inside one (see ``_protected``), a
    folder that cannot be written (or, when missing, whose nearest existing parent cannot). With
    ``overwrite=False`` an existing folder holding any of ``markers`` (e.g. a model's ``config.json``)
    is refused too, so nothing is replaced without consent. A folder holding any of ``foreign`` (the
    files of another command's output, e.g. a curve's ``run.json``) is refused even with ``overwrite``.
    Creates nothing: a refused command leaves no trace.
    """
    path = Path(path)
    st = _lstat(path, what)
    if st is not None:
        _refuse_link_or_special(path, st, what, "folder")
    _refuse_inside_inputs(path, what, inputs)
    if st is not None and stat.S_ISDIR(st.st_mode):
        # an input that is one of the files the command writes here would be replaced by it
        written = {_real(path / m) for m in markers}
        clash = [name for real, _, name in _protected(inputs) if real in written]
        if clash:
            raise FewlabelError(f"{what} would replace {clash[0]}; choose a new path", path=path)
        other = [m for m in foreign if (path / m).exists()]
        if other:
            raise FewlabelError(f"{what} holds {', '.join(other)}, the output of another command; choose a "
                                "new path", path=path)
    if st is not None and stat.S_ISDIR(st.st_mode) and not overwrite:
        present = [m for m in markers if (path / m).exists()]
        if present:
            raise FewlabelError(f"{what} already holds {', '.join(present)}; pass --overwrite to replace "
                                "it, or choose a new path", path=path)
    _check_location(path, what)
    return path


def check_output_file(path: str | Path, what: str = "output file", *, overwrite: bool = False,
                      inputs: InputPaths = ()) -> Path:
    """Make sure a file can be written at ``path`` (its folder is created) BEFORE any work is done.

    Refused in one line naming the path: a folder, a symbolic link, a device, FIFO or socket, one of
    ``inputs`` or a path inside one, an unwritable folder, and, unless ``overwrite``, an existing
    regular file (``overwrite`` never lets anything but a regular file be replaced).
    """
    path = Path(path)
    st = _lstat(path, what)
    if st is not None:
        _refuse_link_or_special(path, st, what, "regular file")
        if stat.S_ISDIR(st.st_mode):
            raise FewlabelError(f"{what} is a folder; give a file name", path=path)
    _refuse_inside_inputs(path, what, inputs)
    if st is not None and not overwrite:
        raise FewlabelError(f"{what} already exists; pass --overwrite to replace it, or choose a new path",
                            path=path)
    _check_location(path.parent, f"folder of the {what}")
    return path


def refuse_special_file(path: str | Path) -> None:
    """Refuse a write onto a device, FIFO or socket: writers replace regular files (or links) only,
    so even an API caller cannot turn ``/dev/null`` into a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    kind = _special_kind(mode)
    if kind is not None:
        raise FewlabelError(f"is {kind}, not a regular file; fewlabel writes regular files only", path=path)


def special_kind(path: str | Path) -> str | None:
    """"a FIFO (named pipe)", "a character device", … for a path (links followed) that is neither a
    regular file nor a folder; None otherwise, or when it cannot be stat'ed. Readers ask before they
    open: an open of a FIFO for reading blocks until a writer comes, and ``/dev/zero`` never ends."""
    try:
        return _special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def dangling_link_reason(path: str | Path) -> str | None:
    """Why a symlink cannot be followed ("symlink loop", "broken symlink"), or None. Why: a reader
    raises ELOOP/ENOENT from deep inside, and ``is_file`` calls both "missing"."""
    try:
        os.stat(path)
    except OSError as exc:
        if os.path.islink(path) and exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        if os.path.islink(path):
            return "broken symlink (its target does not exist)"
    return None


def missing_file_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file to read (a special file is named as one, never opened; a
    symlink loop or broken link as such), or None when it is one."""
    kind = special_kind(Path(path))
    if kind is not None:
        return f"is {kind}, not a file (never opened)"
    if Path(path).is_file():
        return None
    if Path(path).is_dir():
        return "is a folder, not a file: name the file inside it"
    return dangling_link_reason(path) or "file does not exist"
