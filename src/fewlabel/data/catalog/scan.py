"""Walking a folder for samples: images, unknown files (errors) and documentation files (notes).

Shared by the class-folder source, its mask folder and the unlabelled pool, so all three skip,
note and refuse the same files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog.table import Catalog, Issue, natural_key
from fewlabel.errors import DataError, UnknownFormatError, UnreadableFileError

#: Extensions of files that document a data set; ignored (and noted), never an error.
DOC_SUFFIXES = frozenset({".md", ".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".rst", ".html", ".htm",
                          ".pdf", ".xml", ".log", ".py", ".ipynb", ".cff"})
DOC_STEMS = ("readme", "license", "licence", "copying", "notice", "citation", "authors", "changelog")


def rel(path: Path | str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def rel_any(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def is_doc(name: str) -> bool:
    stem, suffix = readers.split_suffix(name)
    return suffix in DOC_SUFFIXES or stem.lower().startswith(DOC_STEMS)


def scan(folder: Path, include_top_files: bool) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, unknown-extension files, ignored documentation files) under ``folder``, sorted."""
    found, unknown, ignored = [], [], []
    # Folders above ``folder`` count as walked: a symlink up the tree must not pull another class's
    # images (or the whole data set) into this one.
    seen: set[tuple[int, int]] = set()
    for above in folder.resolve().parents:
        with contextlib.suppress(OSError):
            st = os.stat(above)
            seen.add((st.st_dev, st.st_ino))

    def walk(d: Path, top: bool) -> None:
        entries = readers.list_folder_once(d, seen, key=lambda e: natural_key(e.name), error=DataError)
        for e in entries or ():
            p = Path(e.path)
            if readers.is_skipped_entry(e):
                # a broken link, a loop, a FIFO or a device: named by unknown_issues, never opened
                unknown.append(p)
                continue
            if e.is_dir():
                if readers.is_dicom_series_dir(p):
                    found.append(p)
                else:
                    walk(p, False)
            elif top and not include_top_files:
                continue
            elif readers.file_format(p) is not None:
                found.append(p)
            elif is_doc(e.name):
                ignored.append(p)
            else:
                unknown.append(p)

    walk(folder, True)
    return found, unknown, ignored


def unknown_issues(unknown: Sequence[Path], root: Path) -> list[Issue]:
    issues = []
    for p in unknown:
        skipped = readers.skip_reason(p)
        if skipped:
            issues.append(Issue(rel(p, root), skipped, UnreadableFileError, "unreadable"))
        else:
            suffix = readers.split_suffix(p.name)[1] or "(none)"
            issues.append(Issue(rel(p, root), f"unknown file extension {suffix}; no reader handles it",
                                UnknownFormatError, "unknown_extension"))
    return issues


def unknown_hint(unknown: Sequence[Path]) -> str:
    if not unknown:
        return ""
    names = ", ".join(p.name for p in unknown[:5])
    return f"; {len(unknown)} file(s) with unknown extensions: {names}{', …' if len(unknown) > 5 else ''}"


def note_ignored(cat: Catalog, ignored: Sequence[Path], what: str) -> None:
    if ignored:
        names = ", ".join(rel(p, cat.root) for p in ignored[:6])
        more = f", … ({len(ignored)} in all)" if len(ignored) > 6 else ""
        cat.notes.append(f"ignored {len(ignored)} {what}: {names}{more}")
