"""``load_catalog``: picks the source (class folders, CSV manifest, MedMNIST npz) for what it is given."""

from __future__ import annotations

from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog.folders import from_folder
from fewlabel.data.catalog.manifest import from_manifest
from fewlabel.data.catalog.medmnist import from_npz
from fewlabel.data.catalog.table import Catalog, Issue, apply_group_pattern
from fewlabel.errors import DataError


def load_catalog(source: str | Path, masks: str | Path | None = None, group_pattern: str | None = None,
                 strict: bool = True) -> Catalog:
    """Catalog a class folder, a CSV manifest or a MedMNIST-style .npz (see the module docstring).

    ``masks``: a folder mirroring the image tree. ``group_pattern``: regex whose first capture group
    is the group. ``strict=False`` collects problems in ``.issues`` instead of raising (only the input
    as a whole being unusable — missing, empty, unknown kind — still raises).
    """
    src = Path(source)
    if not src.exists():
        raise DataError(readers.dangling_reason(src) or "does not exist", path=src)
    if src.is_file():
        suffix = readers.split_suffix(src.name)[1]
        if suffix in (".csv", ".tsv"):
            cat = from_manifest(src, masks)
        elif suffix == ".npz":
            cat = from_npz(src)
        else:
            raise DataError("expected a folder (one sub-folder per class), a CSV manifest or a "
                            "MedMNIST-style .npz", path=src)
    else:
        cat = from_folder(src, masks)
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
        cat.issues.append(Issue(str(cat.root), f"one class only ({cat.classes[0]!r}): a classifier needs at "
                                "least two", DataError, "one_class"))
