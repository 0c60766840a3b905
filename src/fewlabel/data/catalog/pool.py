"""Source: an unlabelled pool, every image under a folder (recursive), labels None, no classes."""

from __future__ import annotations

from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog.scan import note_ignored, rel, scan, unknown_hint, unknown_issues
from fewlabel.data.catalog.table import Catalog, Sample, apply_group_pattern
from fewlabel.errors import DataError


def load_pool(folder: str | Path, group_pattern: str | None = None, strict: bool = True) -> Catalog:
    """An unlabelled pool: every image under ``folder`` (recursive), labels None, no classes.

    Unknown extensions are an error (listed); documentation files are noted and skipped.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(readers.dangling_reason(root) or "does not exist", path=root)
    if not root.is_dir():
        raise DataError("an unlabelled pool must be a folder of images", path=root)
    found, unknown, ignored = scan(root, include_top_files=True)
    if not found:
        raise DataError(f"no images found (searched recursively){unknown_hint(unknown)}", path=root)
    samples = [Sample(id=rel(p, root), path=str(p), label=None, group=rel(p, root)) for p in found]
    cat = Catalog(samples=samples, classes=[], root=root, layout="pool")
    note_ignored(cat, ignored, "documentation files")
    cat.issues.extend(unknown_issues(unknown, root))
    if group_pattern:
        apply_group_pattern(cat, group_pattern)
    if strict:
        cat.raise_issues()
    return cat
