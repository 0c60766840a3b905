"""Source: a CSV (or TSV) manifest with columns ``path,label[,group][,mask][,split]``.

Paths are relative to the CSV; NPZ members may be listed as ``"file.npz::key/index"``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog.scan import rel_any
from fewlabel.data.catalog.table import Catalog, Issue, Sample, natural_key
from fewlabel.errors import ManifestError, MaskError, UnknownFormatError, UnreadableFileError

SUFFIXES = (".csv", ".tsv")


def is_manifest(path: Path) -> bool:
    return path.is_file() and readers.split_suffix(path.name)[1] in SUFFIXES


_SPLIT_ALIASES = {"": None, "train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


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


def read_table(csv_path: Path, what: str = "manifest") -> tuple[csv.DictReader, list[str]]:
    """The rows of a CSV (a ``.tsv`` by tabs) and its column names, lower-cased; one line naming
    ``what`` when it cannot be read."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {what}: {exc}", path=csv_path) from exc
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    return reader, [(c or "").strip().lower() for c in (reader.fieldnames or [])]


def from_manifest(csv_path: Path, masks: str | Path | None) -> Catalog:
    base = csv_path.parent
    reader, columns = read_table(csv_path)
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
        rid = rel_any(Path(address.split(readers.NPZ_SEP)[0]), base) + (
            readers.NPZ_SEP + address.split(readers.NPZ_SEP, 1)[1] if readers.NPZ_SEP in address else "")
        if not full.exists():
            why = readers.dangling_reason(full)
            why = f": {why}" if why else " does not exist (paths are relative to the CSV)"
            cat.issues.append(Issue(where, f"path {value!r}{why}", ManifestError, "manifest_missing"))
            continue
        special = readers.special_file_reason(full)  # a FIFO or a device: named, never opened
        if special:
            cat.issues.append(Issue(rid, special, UnreadableFileError, "unreadable"))
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
