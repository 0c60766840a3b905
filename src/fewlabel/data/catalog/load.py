"""``load_catalog``: picks the source (class folders, CSV manifest, MedMNIST npz) for what it is given.

``SOURCES`` is the registry: source name → ``Source(detect, load)``; the first whose ``detect(path)``
holds catalogs the input. A new source is one module (a ``detect`` and a ``from_<kind>``) plus one line
here, like ``readers.dispatch.READERS`` for image formats.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from fewlabel.data import readers
from fewlabel.data.catalog import folders, manifest, medmnist
from fewlabel.data.catalog.table import Catalog, Issue, apply_group_pattern
from fewlabel.errors import DataError, UnreadableFileError


class Source(NamedTuple):
    """One kind of labelled input: ``detect(path)`` says whether ``path`` is one; ``load(path, masks)``
    catalogs it."""

    detect: Callable[[Path], bool]
    load: Callable[[Path, str | Path | None], Catalog]


SOURCES: dict[str, Source] = {
    "manifest": Source(manifest.is_manifest, manifest.from_manifest),
    "medmnist": Source(medmnist.is_npz, medmnist.from_npz),
    "folder": Source(folders.is_folder, folders.from_folder),
}


def load_catalog(source: str | Path, masks: str | Path | None = None, group_pattern: str | None = None,
                 strict: bool = True) -> Catalog:
    """Catalog a class folder, a CSV manifest or a MedMNIST-style .npz (see the package docstring).

    ``masks``: a folder mirroring the image tree. ``group_pattern``: regex whose first capture group
    is the group. ``strict=False`` collects problems in ``.issues`` instead of raising (only the input
    as a whole being unusable — missing, empty, unknown kind — still raises).
    """
    src = Path(source)
    if not src.exists():
        raise DataError(readers.dangling_reason(src) or "does not exist", path=src)
    special = readers.special_file_reason(src)  # a FIFO or a device given as the data: never opened
    if special:
        raise DataError(special, path=src)
    kind = next((s for s in SOURCES.values() if s.detect(src)), None)
    if kind is None:
        raise DataError("expected a folder (one sub-folder per class), a CSV manifest or a "
                        "MedMNIST-style .npz", path=src)
    cat = kind.load(src, masks)
    if group_pattern:
        apply_group_pattern(cat, group_pattern)
    _check_classes(cat)
    if strict:
        cat.raise_issues()
    return cat


def _check_classes(cat: Catalog) -> None:
    if not cat.samples and not cat.issues:
        raise DataError("no images found", path=cat.root)
    if len(cat.classes) == 1:
        cat.issues.append(Issue(".", f"one class only ({cat.classes[0]!r}): a classifier needs at "
                                "least two", DataError, "one_class"))
    for name in cat.classes:
        if readers.undecodable_name(name):
            cat.issues.append(Issue(_class_path(cat, name), f"class {readers.NOT_UTF8}", UnreadableFileError,
                                    "unreadable"))
    for a, b in _lookalike_classes(cat.classes):
        cat.issues.append(Issue(".", f"classes {ascii(a)} and {ascii(b)} print alike (they differ "
                                "only in spaces, invisible characters or how Unicode spells a letter), so no "
                                "reader of the results can tell them apart; rename one or merge them",
                                DataError, "lookalike_classes"))


def _class_path(cat: Catalog, name: str) -> str:
    """Where a class lives, relative to the root: its folder for folder layouts, else the root."""
    if cat.layout.startswith("class-folders"):
        return name
    return f"images/{name}" if cat.layout == "images+masks" else "."  # joined to the root when raised


def _print_key(name: str) -> str:
    """What a class name looks like printed: Unicode compatibility form (NFKC: "é" one code point or
    "e" + accent), invisible format characters (zero-width space, BOM) dropped, runs of white space
    one space, none at the ends."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


def _lookalike_classes(classes: list[str]) -> list[tuple[str, str]]:
    """Pairs of distinct class names that print alike (``_print_key``): almost always one class
    spelled twice (a trailing space, a name typed on two systems), which would split its images."""
    first: dict[str, str] = {}
    pairs = []
    for name in classes:
        key = _print_key(name)
        if key in first:
            pairs.append((first[key], name))
        else:
            first[key] = name
    return pairs
