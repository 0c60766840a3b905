"""Catalog: turn a folder, a CSV manifest or a MedMNIST-style .npz into one table of samples.

Why a table first: every later step (splits, preprocessing, training, the report) works on sample
ids, so the question "which files, which labels, which patients" is answered once, here, and can
be checked (``fewlabel inspect``) before any training starts. Nothing is decoded here; the catalog
only looks at names, so it is fast even for thousands of files.

Sources (``load_catalog``):

* a folder with one sub-folder per class: ``DATA/<class>/**/<file>``. Files directly in ``DATA``
  (README, LICENSE, a CSV) are not samples; they are ignored and listed in ``catalog.notes``.
* the segmentation layout ``DATA/images/<class>/<file>`` + ``DATA/masks/<class>/<same name>``, found
  by itself; or any class folder plus ``masks=DIR`` mirroring its tree. A mask has the image's
  relative path; its extension may differ (``a.png`` ↔ ``a.tif``).
* a CSV manifest with columns ``path,label[,group][,mask][,split]``; paths relative to the CSV.
* a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_…``, ``test_…``): one sample per
  row, addressed ``"name.npz::train_images/<i>"``; ``split`` set from the member name.

Rules:

* ``Sample.id`` is the path relative to the data root (posix), unique; ``group`` defaults to the id.
* Class names are sorted naturally ("2" before "10"); ``labels()`` index into ``classes``.
* A sub-folder made only of DICOM files is ONE sample (a volume).
* Hidden files and folders (leading dot), ``Thumbs.db``, ``desktop.ini`` and ``__MACOSX`` are skipped.
  Documentation files (README*, LICENSE*, ``.md .txt .csv .json .yaml .rst .html .pdf .xml``) are
  ignored and listed in ``notes``. Any OTHER file whose extension no reader handles is an error that
  lists them: nothing is skipped silently.
* ``group_pattern``: a regex searched (``re.search``) in each id; its first capture group (or the whole
  match when it has none) is the group. A path it does not match is an error naming the file. With a
  manifest ``group`` column too, the pattern wins.
* Bad input raises one ``FewlabelError`` subclass naming the file. With ``strict=False`` (what
  ``inspect`` uses) problems are collected in ``catalog.issues`` instead, so all can be listed at once.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from fewlabel.data import readers
from fewlabel.errors import (
    DataError,
    FewlabelError,
    ManifestError,
    MaskError,
    UnknownFormatError,
    UnreadableFileError,
)
from fewlabel.fileio import atomic_path

__all__ = ["Sample", "Catalog", "Issue", "load_catalog", "load_pool", "natural_key", "DOC_SUFFIXES"]

#: Extensions of files that document a data set; ignored (and noted), never an error.
DOC_SUFFIXES = frozenset({".md", ".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".rst", ".html", ".htm",
                          ".pdf", ".xml", ".log", ".py", ".ipynb", ".cff"})
DOC_STEMS = ("readme", "license", "licence", "copying", "notice", "citation", "authors", "changelog")

_SPLIT_ALIASES = {"": None, "train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One row of the table. ``path``/``mask``: absolute paths (``"file.npz::key/i"`` for NPZ rows)."""

    id: str
    path: str
    label: str | None
    group: str
    mask: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Issue:
    """A problem found while cataloguing; ``error`` is the ``FewlabelError`` subclass it stands for."""

    path: str
    problem: str
    error: type[FewlabelError] = DataError
    kind: str = "data"

    def to_error(self, root: str | Path | None = None) -> FewlabelError:
        """The error to raise; a relative ``path`` is joined to ``root`` so the line names the file."""
        path = self.path
        if root is not None and not os.path.isabs(path):
            path = str(Path(root) / path)
        return self.error(self.problem, path=path)


def natural_key(text: str) -> tuple:
    """Sort key where digit runs compare as numbers: "grade_2" < "grade_10"."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t != "")


@dataclass(eq=False)
class Catalog:
    """The samples of one data source, and what ``inspect`` / splits / tensors need to know of them."""

    samples: list[Sample]
    classes: list[str]
    root: Path
    layout: str = "class-folders"
    group_pattern: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @cached_property
    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @cached_property
    def _class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def _pick(self, ids: Iterable[str] | None) -> list[Sample]:
        if ids is None:
            return self.samples
        by_id = self.by_id
        out = []
        for i in ids:
            s = by_id.get(i)
            if s is None:
                raise DataError(f"no sample with id {i!r} in this catalog", path=self.root)
            out.append(s)
        return out

    def labels(self, ids: Iterable[str] | None = None) -> np.ndarray:
        """Class indices (into ``classes``) of ``ids`` (all samples when None), int64."""
        index = self._class_index
        out = []
        for s in self._pick(ids):
            if s.label is None:
                raise DataError("sample has no label (an unlabelled pool has no labels)", path=s.path)
            out.append(index[s.label])
        return np.asarray(out, dtype=np.int64)

    def groups(self, ids: Iterable[str] | None = None) -> list[str]:
        """Group (patient / source image) of each id; the id itself when no group was given."""
        return [s.group for s in self._pick(ids)]

    def subset(self, ids: Iterable[str]) -> Catalog:
        """A catalog of these ids (in this order), with the SAME class list so label indices agree."""
        return replace(self, samples=self._pick(list(ids)), notes=list(self.notes), issues=[])

    @property
    def has_masks(self) -> bool:
        return any(s.mask is not None for s in self.samples)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples if s.label is not None)
        return {c: counts.get(c, 0) for c in self.classes}

    def group_labels(self) -> dict[str, str]:
        """Each group's class: the majority label of its samples (ties: first class in ``classes``).

        Why majority: a group (patient) must stay whole in one split; when its samples disagree (which
        ``inspect`` reports) it is stratified by the label most of its samples carry.
        """
        per: dict[str, Counter] = {}
        for s in self.samples:
            if s.label is not None:
                per.setdefault(s.group, Counter())[s.label] += 1
        index = self._class_index
        return {g: max(c.items(), key=lambda kv: (kv[1], -index[kv[0]]))[0] for g, c in per.items()}

    def groups_spanning_classes(self) -> dict[str, list[str]]:
        per: dict[str, set[str]] = {}
        for s in self.samples:
            if s.label is not None:
                per.setdefault(s.group, set()).add(s.label)
        return {g: sorted(v, key=natural_key) for g, v in per.items() if len(v) > 1}

    def fingerprint(self) -> str:
        """Stable hash of ids, labels, groups, masks and file sizes + mtimes (16 hex characters).

        Why sizes and mtimes: a cache keyed by it (prepared encoders, results) must notice a file that
        was replaced, without hashing every byte.
        """
        h = hashlib.sha256()
        h.update(repr(list(self.classes)).encode())
        for s in sorted(self.samples, key=lambda s: s.id):
            h.update(repr((s.id, s.label, s.group, s.mask is not None, _stat_key(s.path),
                           _stat_key(s.mask) if s.mask else None)).encode())
        return h.hexdigest()[:16]

    def save_manifest(self, path: str | Path) -> Path:
        """Write this catalog as a CSV manifest (paths relative to the CSV when possible); atomic."""
        path = Path(path)
        base = path.parent.resolve()
        rows = []
        for s in self.samples:
            row = {"path": _rel_or_abs(s.path, base), "label": s.label or "", "group": s.group,
                   "mask": _rel_or_abs(s.mask, base) if s.mask else "", "split": s.split or ""}
            rows.append(row)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "group", "mask", "split"])
            writer.writeheader()
            writer.writerows(rows)
        return path

    def raise_issues(self) -> None:
        """Raise the first problem found (unknown extensions: all of them in one line)."""
        _raise_issues(self.issues, self.root)


def _stat_key(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    p = Path(path.split(readers.NPZ_SEP, 1)[0])
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _rel_or_abs(path: str, base: Path) -> str:
    file_part, sep, member = path.partition(readers.NPZ_SEP)
    try:
        rel = Path(file_part).resolve().relative_to(base).as_posix()
    except ValueError:
        rel = Path(file_part).as_posix()
    return rel + sep + member


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


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
            cat = _from_manifest(src, masks)
        elif suffix == ".npz":
            cat = _from_npz(src)
        else:
            raise DataError("expected a folder (one sub-folder per class), a CSV manifest or a "
                            "MedMNIST-style .npz", path=src)
    else:
        cat = _from_folder(src, masks)
    if group_pattern:
        _apply_group_pattern(cat, group_pattern)
    _check_classes(cat)
    if strict:
        cat.raise_issues()
    return cat


def load_pool(folder: str | Path, group_pattern: str | None = None, strict: bool = True) -> Catalog:
    """An unlabelled pool: every image under ``folder`` (recursive), labels None, no classes.

    Unknown extensions are an error (listed); documentation files are noted and skipped.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(readers.dangling_reason(root) or "does not exist", path=root)
    if not root.is_dir():
        raise DataError("an unlabelled pool must be a folder of images", path=root)
    found, unknown, ignored = _scan(root, include_top_files=True)
    if not found:
        raise DataError(f"no images found (searched recursively){_unknown_hint(unknown)}", path=root)
    samples = [Sample(id=_rel(p, root), path=str(p), label=None, group=_rel(p, root)) for p in found]
    cat = Catalog(samples=samples, classes=[], root=root, layout="pool")
    _note_ignored(cat, ignored, "documentation files")
    cat.issues.extend(_unknown_issues(unknown, root))
    if group_pattern:
        _apply_group_pattern(cat, group_pattern)
    if strict:
        cat.raise_issues()
    return cat


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------


def _rel(path: Path | str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _is_doc(name: str) -> bool:
    stem, suffix = readers.split_suffix(name)
    return suffix in DOC_SUFFIXES or stem.lower().startswith(DOC_STEMS)


def _scan(folder: Path, include_top_files: bool) -> tuple[list[Path], list[Path], list[Path]]:
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
        try:
            st = os.stat(d)
            entries = sorted(os.scandir(d), key=lambda e: natural_key(e.name))
        except OSError as exc:
            raise DataError(f"cannot list folder: {exc.strerror or exc}", path=d) from exc
        if (st.st_dev, st.st_ino) in seen:  # a folder symlink back up the tree: walked once already
            return
        seen.add((st.st_dev, st.st_ino))
        for e in entries:
            if readers.is_ignored_name(e.name):
                continue
            p = Path(e.path)
            if e.is_symlink() and readers.dangling_reason(p):
                unknown.append(p)  # named as a problem by _unknown_issues, never followed
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
            elif _is_doc(e.name):
                ignored.append(p)
            else:
                unknown.append(p)

    walk(folder, True)
    return found, unknown, ignored


def _unknown_issues(unknown: Sequence[Path], root: Path) -> list[Issue]:
    issues = []
    for p in unknown:
        dangling = readers.dangling_reason(p)
        if dangling:
            issues.append(Issue(_rel(p, root), dangling, UnreadableFileError, "unreadable"))
        else:
            suffix = readers.split_suffix(p.name)[1] or "(none)"
            issues.append(Issue(_rel(p, root), f"unknown file extension {suffix}; no reader handles it",
                                UnknownFormatError, "unknown_extension"))
    return issues


def _unknown_hint(unknown: Sequence[Path]) -> str:
    if not unknown:
        return ""
    names = ", ".join(p.name for p in unknown[:5])
    return f"; {len(unknown)} file(s) with unknown extensions: {names}{', …' if len(unknown) > 5 else ''}"


def _note_ignored(cat: Catalog, ignored: Sequence[Path], what: str) -> None:
    if ignored:
        names = ", ".join(_rel(p, cat.root) for p in ignored[:6])
        more = f", … ({len(ignored)} in all)" if len(ignored) > 6 else ""
        cat.notes.append(f"ignored {len(ignored)} {what}: {names}{more}")


def _from_folder(root: Path, masks: str | Path | None) -> Catalog:
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
        found, unknown, ignored = _scan(cdir, include_top_files=True)
        unknown_all += unknown
        ignored_all += ignored
        if not found:
            cat.issues.append(Issue(_rel(cdir, root), "class folder has no images", DataError, "empty_class"))
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
            rid = _rel(p, root)
            samples.append(Sample(id=rid, path=str(p), label=cdir.name, group=rid))
    cat.samples = samples
    cat.classes = sorted({s.label for s in samples if s.label}, key=natural_key)
    cat.issues.extend(_unknown_issues(unknown_all, root))
    _note_ignored(cat, ignored_all, "documentation files inside class folders")
    if mask_root is not None:
        _attach_masks(cat, image_root, mask_root)
    return cat


def _mask_key(rel: Path) -> tuple[str, str]:
    return rel.parent.as_posix(), readers.split_suffix(rel.name)[0]


def _attach_masks(cat: Catalog, image_root: Path, mask_root: Path) -> None:
    """Pair each image with the mask at the same relative path (any supported extension)."""
    found, unknown, _ = _scan(mask_root, include_top_files=False)
    index: dict[tuple[str, str], Path] = {}
    for p in found:
        key = _mask_key(p.relative_to(mask_root))
        if key in index:
            cat.issues.append(Issue(_rel_any(p, cat.root), f"two masks for one image: {index[key].name} and "
                                    f"{p.name}", MaskError, "mask_ambiguous"))
            continue
        index[key] = p
    for p in unknown:
        cat.issues.append(Issue(_rel_any(p, cat.root), f"unknown file extension in the mask folder "
                                f"{readers.split_suffix(p.name)[1] or '(none)'}", UnknownFormatError,
                                "unknown_extension"))
    used: set[tuple[str, str]] = set()
    samples = []
    for s in cat.samples:
        key = _mask_key(Path(s.path).relative_to(image_root))
        mp = index.get(key)
        if mp is None:
            rel = Path(s.path).relative_to(image_root)
            expected = _rel_any(mask_root / rel.parent / readers.split_suffix(rel.name)[0], cat.root)
            cat.issues.append(Issue(s.id, f"mask missing: no {expected}.* for this image", MaskError,
                                    "mask_missing"))
            samples.append(s)
            continue
        used.add(key)
        samples.append(replace(s, mask=str(mp)))
    for key, p in sorted(index.items()):
        if key not in used:
            cat.issues.append(Issue(_rel_any(p, cat.root), "mask has no image (no image at the same relative "
                                    "path)", MaskError, "mask_orphan"))
    cat.samples = samples


def _rel_any(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------


def _resolve(value: str, base: Path) -> tuple[Path, str]:
    """(file on disk, full address) of a manifest path; NPZ addresses keep their ``::member``."""
    file_part, sep, member = value.partition(readers.NPZ_SEP)
    p = Path(file_part)
    full = p if p.is_absolute() else base / p
    return full, str(full) + sep + member


def _leaves_folder(value: str, base: Path) -> bool:
    """True for a manifest path that is absolute or climbs out of the manifest's folder with '..'."""
    p = Path(value.partition(readers.NPZ_SEP)[0])
    if p.is_absolute():
        return True
    return os.path.normpath(p).split(os.sep)[0] == ".."


def _from_manifest(csv_path: Path, masks: str | Path | None) -> Catalog:
    base = csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest: {exc}", path=csv_path) from exc
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "path" not in columns or "label" not in columns:
        raise ManifestError("manifest needs columns 'path' and 'label' "
                            f"(it has: {', '.join(columns) or 'none'})", path=csv_path)
    extra = [c for c in columns if c not in ("path", "label", "group", "mask", "split")]
    cat = Catalog(samples=[], classes=[], root=base, layout="manifest")
    if extra:
        cat.notes.append(f"manifest columns ignored: {', '.join(extra)}")
    seen: set[str] = set()
    outside: list[str] = []
    mask_root = Path(masks) if masks is not None else None
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{csv_path.name}, line {lineno}"  # relative to the root, which is the CSV's folder
        value, label = row.get("path", ""), row.get("label", "")
        if not value:
            cat.issues.append(Issue(where, "empty path", ManifestError, "manifest"))
            continue
        full, address = _resolve(value, base)
        rid = _rel_any(Path(address.split(readers.NPZ_SEP)[0]), base) + (
            readers.NPZ_SEP + address.split(readers.NPZ_SEP, 1)[1] if readers.NPZ_SEP in address else "")
        if not full.exists():
            why = readers.dangling_reason(full)
            why = f": {why}" if why else " does not exist (paths are relative to the CSV)"
            cat.issues.append(Issue(where, f"path {value!r}{why}", ManifestError, "manifest_missing"))
            continue
        if _leaves_folder(value, base):
            outside.append(value)
        if readers.file_format(address) is None:
            cat.issues.append(Issue(rid, f"unknown file extension (manifest line {lineno}); no reader "
                                    "handles it", UnknownFormatError, "unknown_extension"))
            continue
        if not label:
            cat.issues.append(Issue(where, f"empty label for {value!r}", ManifestError, "manifest"))
            continue
        if rid in seen:
            cat.issues.append(Issue(where, f"path {value!r} is listed twice", ManifestError, "manifest"))
            continue
        seen.add(rid)
        mask = None
        if row.get("mask"):
            mfull, maddress = _resolve(row["mask"], base)
            if not mfull.exists():
                cat.issues.append(Issue(where, f"mask {row['mask']!r} does not exist", ManifestError,
                                        "mask_missing"))
            else:
                mask = maddress
        elif mask_root is not None:
            mask = _mirror_mask(mask_root, Path(rid))
            if mask is None:
                cat.issues.append(Issue(rid, "mask missing in the mask folder", MaskError, "mask_missing"))
        split_raw = row.get("split", "").lower()
        if split_raw not in _SPLIT_ALIASES:
            cat.issues.append(Issue(where, f"unknown split {row.get('split')!r} (use train, val or test)",
                                    ManifestError, "manifest"))
            continue
        cat.samples.append(Sample(id=rid, path=address, label=label, group=row.get("group") or rid, mask=mask,
                                  split=_SPLIT_ALIASES[split_raw]))
    if outside:
        # Allowed (data often lives beside the manifest's folder), but a copied or shared manifest then
        # reads files the reader of the CSV may not expect: said, not hidden.
        cat.notes.append(f"{len(outside)} manifest path(s) lead outside the manifest's folder (absolute or "
                         f"'..'), e.g. {outside[0]!r}")
    if not cat.samples and not cat.issues:
        raise ManifestError("manifest lists no samples", path=csv_path)
    cat.classes = sorted({s.label for s in cat.samples if s.label}, key=natural_key)
    return cat


def _mirror_mask(mask_root: Path, rel: Path) -> str | None:
    stem = readers.split_suffix(rel.name)[0]
    folder = mask_root / rel.parent
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        if readers.split_suffix(p.name)[0] == stem and readers.file_format(p):
            return str(p)
    return None


# ------------------------------------------------------------------------------------------------
# NPZ (MedMNIST style)
# ------------------------------------------------------------------------------------------------


def _from_npz(path: Path) -> Catalog:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
    except Exception as exc:
        from fewlabel.errors import UnreadableFileError

        raise UnreadableFileError(f"cannot read as npz: {exc}", path=path) from exc
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in keys]
    pairs = [(f"{s}_images", f"{s}_labels", s) for s in splits]
    if not pairs and "images" in keys:
        pairs = [("images", "labels", None)]
    if not pairs:
        raise DataError(f"NPZ has no '<split>_images' arrays (it has: {', '.join(keys[:8])}); expected "
                        "MedMNIST keys train_images, train_labels, val_…, test_…", path=path)
    cat = Catalog(samples=[], classes=[], root=path.parent, layout="npz")
    for img_key, lab_key, split in pairs:
        if lab_key not in keys:
            raise DataError(f"NPZ has {img_key} but no {lab_key}", path=path)
        images = readers.npz_member(path, img_key)
        labels = np.asarray(readers.npz_member(path, lab_key))
        if labels.ndim == 2 and labels.shape[1] > 1:
            raise DataError(f"{lab_key} has {labels.shape[1]} columns: multi-label data is not supported",
                            path=path)
        labels = labels.reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{img_key} has {len(images)} rows but {lab_key} has {len(labels)}", path=path)
        for i, y in enumerate(labels.tolist()):
            rid = f"{path.name}{readers.NPZ_SEP}{img_key}/{i}"
            label = str(int(y)) if float(y).is_integer() else str(y)
            cat.samples.append(Sample(id=rid, path=f"{path}{readers.NPZ_SEP}{img_key}/{i}", label=label,
                                      group=rid, split=split))
    cat.classes = sorted({s.label for s in cat.samples if s.label}, key=natural_key)
    return cat


# ------------------------------------------------------------------------------------------------
# Groups, classes, issues
# ------------------------------------------------------------------------------------------------


def _apply_group_pattern(cat: Catalog, pattern: str) -> None:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"invalid --group-pattern {pattern!r}: {exc}") from exc
    cat.group_pattern = pattern
    out = []
    for s in cat.samples:
        m = rx.search(s.id)
        g = (m.group(1) if rx.groups else m.group(0)) if m else None
        if not g:
            cat.issues.append(Issue(s.id, f"does not match --group-pattern {pattern!r}", DataError,
                                    "group_pattern"))
            out.append(s)
        else:
            out.append(replace(s, group=g))
    cat.samples = out
    cat.__dict__.pop("by_id", None)


def _check_classes(cat: Catalog) -> None:
    if not cat.samples and not cat.issues:
        raise DataError("no images found", path=cat.root)
    if len(cat.classes) == 1:
        cat.issues.append(Issue(str(cat.root), f"one class only ({cat.classes[0]!r}): a classifier needs at "
                                "least two", DataError, "one_class"))


def _raise_issues(issues: Sequence[Issue], root: Path) -> None:
    if not issues:
        return
    unknown = [i for i in issues if i.kind == "unknown_extension"]
    if unknown:
        names = ", ".join(i.path for i in unknown[:5])
        more = ", …" if len(unknown) > 5 else ""
        raise UnknownFormatError(f"{len(unknown)} file(s) with unknown extensions: {names}{more} "
                                 "(remove them, or convert to a supported format)", path=root)
    first = issues[0]
    if len(issues) > 1:
        first = replace(first, problem=f"{first.problem} (and {len(issues) - 1} more problem(s); "
                        "`fewlabel inspect` lists them all)")
    raise first.to_error(root)
