"""Source: a folder with one sub-folder per class, optionally with a mirrored mask folder.

``DATA/<class>/**/<file>``; or the segmentation layout ``DATA/images/<class>/<file>`` +
``DATA/masks/<class>/<same name>``; or any class folder plus ``masks=DIR`` mirroring its tree.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog.scan import note_ignored, rel, rel_any, scan, unknown_issues
from fewlabel.data.catalog.table import Catalog, Issue, Sample, natural_key
from fewlabel.errors import DataError, MaskError, UnknownFormatError, UnreadableFileError


def is_folder(path: Path) -> bool:
    return path.is_dir()


def from_folder(root: Path, masks: str | Path | None) -> Catalog:
    layout = "class-folders"
    image_root = root
    mask_root = Path(masks) if masks is not None else None
    if mask_root is None and (root / "images").is_dir() and (root / "masks").is_dir():
        image_root, mask_root, layout = root / "images", root / "masks", "images+masks"
    elif mask_root is not None:
        layout = "class-folders+masks"
        if not mask_root.is_dir():
            raise MaskError("mask folder does not exist", path=mask_root)
    try:
        entries = sorted(os.scandir(image_root), key=lambda e: natural_key(e.name))
    except OSError as exc:
        raise DataError(f"cannot list folder: {exc.strerror or exc}", path=image_root) from exc
    entries = [e for e in entries if not readers.is_ignored_name(e.name)]
    # Every sub-folder is a class, also one holding only DICOM files (2D DICOM images of that class);
    # DICOM slice folders are volumes one level further down: DATA/<class>/<series folder>/.
    class_dirs = [Path(e.path) for e in entries if e.is_dir()]
    top_files = [Path(e.path) for e in entries if not e.is_dir()]
    top_images = [p for p in top_files if readers.file_format(p) is not None]
    if not class_dirs:
        if top_images:
            raise DataError(
                f"no class sub-folders, but {len(top_images)} image(s) at the top level: a labelled folder "
                "needs one sub-folder per class (for unlabelled images use a pool: load_pool / --pool)",
                path=image_root)
        raise DataError("empty folder: no class sub-folders with images", path=image_root)
    cat = Catalog(samples=[], classes=[], root=root, layout=layout)
    if image_root != root:
        beside = sorted((e for e in os.scandir(root) if e.name not in ("images", "masks")
                         and not readers.is_ignored_name(e.name)), key=lambda e: e.name)
        if beside:
            cat.notes.append(f"ignored {len(beside)} file(s)/folder(s) beside images/ and masks/: "
                             f"{', '.join(e.name for e in beside[:6])}{', …' if len(beside) > 6 else ''}")
    if top_files:
        shown = ", ".join(p.name for p in top_files[:6])
        cat.notes.append(f"ignored {len(top_files)} file(s) at the top level (samples live in class "
                         f"folders): {shown}{', …' if len(top_files) > 6 else ''}")
    samples: list[Sample] = []
    unknown_all: list[Path] = []
    ignored_all: list[Path] = []
    for cdir in class_dirs:
        found, unknown, ignored = scan(cdir, include_top_files=True)
        unknown_all += unknown
        ignored_all += ignored
        if not found:
            cat.issues.append(Issue(rel(cdir, root), "class folder has no images", DataError, "empty_class"))
            continue
        sub_only = all(p.is_dir() and not readers.is_dicom_series_dir(p) for p in cdir.iterdir()
                       if not readers.is_ignored_name(p.name))
        subs = sorted({p.relative_to(cdir).parts[0] for p in found}, key=natural_key)
        if sub_only and len(subs) > 1:
            cat.warnings.append(
                f"class folder '{cdir.name}' holds only sub-folders ({', '.join(subs[:5])}"
                f"{', …' if len(subs) > 5 else ''}); all their images are class '{cdir.name}'. "
                f"If the sub-folders are the classes, point at {cdir}")
        for p in found:
            rid = rel(p, root)
            samples.append(Sample(id=rid, path=str(p), label=cdir.name, group=rid))
    cat.samples = samples
    cat.classes = sorted({s.label for s in samples if s.label}, key=natural_key)
    cat.issues.extend(unknown_issues(unknown_all, root))
    note_ignored(cat, ignored_all, "documentation files inside class folders")
    if mask_root is not None:
        _attach_masks(cat, image_root, mask_root)
    return cat


def _mask_key(rel: Path) -> tuple[str, str]:
    return rel.parent.as_posix(), readers.split_suffix(rel.name)[0]


def _attach_masks(cat: Catalog, image_root: Path, mask_root: Path) -> None:
    """Pair each image with the mask at the same relative path (any supported extension)."""
    found, unknown, _ = scan(mask_root, include_top_files=False)
    index: dict[tuple[str, str], Path] = {}
    for p in found:
        key = _mask_key(p.relative_to(mask_root))
        if key in index:
            cat.issues.append(Issue(rel_any(p, cat.root), f"two masks for one image: {index[key].name} and "
                                    f"{p.name}", MaskError, "mask_ambiguous"))
            continue
        index[key] = p
    for p in unknown:
        skipped = readers.skip_reason(p)  # a broken link, a loop, a FIFO or a device: named, not opened
        if skipped:
            cat.issues.append(Issue(rel_any(p, cat.root), skipped, UnreadableFileError, "mask_unreadable"))
            continue
        cat.issues.append(Issue(rel_any(p, cat.root), f"unknown file extension in the mask folder "
                                f"{readers.split_suffix(p.name)[1] or '(none)'}", UnknownFormatError,
                                "unknown_extension"))
    used: set[tuple[str, str]] = set()
    samples = []
    for s in cat.samples:
        key = _mask_key(Path(s.path).relative_to(image_root))
        mp = index.get(key)
        if mp is None:
            rel = Path(s.path).relative_to(image_root)
            expected = rel_any(mask_root / rel.parent / readers.split_suffix(rel.name)[0], cat.root)
            cat.issues.append(Issue(s.id, f"mask missing: no {expected}.* for this image", MaskError,
                                    "mask_missing"))
            samples.append(s)
            continue
        used.add(key)
        samples.append(replace(s, mask=str(mp)))
    for key, p in sorted(index.items()):
        if key not in used:
            cat.issues.append(Issue(rel_any(p, cat.root), "mask has no image (no image at the same relative "
                                    "path)", MaskError, "mask_orphan"))
    cat.samples = samples
