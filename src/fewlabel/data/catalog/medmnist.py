"""Source: a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_…``, ``test_…``).

One sample per row, addressed ``"name.npz::train_images/<i>"``; ``split`` set from the member name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewlabel.data import readers
from fewlabel.data.catalog.table import Catalog, Sample, natural_key
from fewlabel.errors import DataError


def is_npz(path: Path) -> bool:
    return path.is_file() and readers.split_suffix(path.name)[1] == ".npz"


def from_npz(path: Path, masks: str | Path | None = None) -> Catalog:
    """``masks`` is accepted for a uniform source signature; an .npz carries no mask files."""
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
        for i, label in enumerate(_label_names(labels, lab_key, path)):
            rid = f"{path.name}{readers.NPZ_SEP}{img_key}/{i}"
            cat.samples.append(Sample(id=rid, path=f"{path}{readers.NPZ_SEP}{img_key}/{i}", label=label,
                                      group=rid, split=split))
    cat.classes = sorted({s.label for s in cat.samples if s.label}, key=natural_key)
    return cat


def _label_names(labels: np.ndarray, key: str, path: Path) -> list[str]:
    """Each row's class name: numbers as their shortest text ("3", "0.5"), strings (``<U``, or
    UTF-8 bytes ``|S``) as they are. Classes are then sorted like folder names, so string labels
    ("eosinophil", "neutrophil") and numeric ones map to class indices the same way."""
    if labels.dtype.kind in "biuf":
        return [str(int(y)) if float(y).is_integer() else str(y) for y in labels.tolist()]
    if labels.dtype.kind not in "SU":
        raise DataError(f"{key} holds {labels.dtype} values; labels must be numbers or strings", path=path)
    names = []
    for i, y in enumerate(labels.tolist()):
        if isinstance(y, bytes):
            try:
                y = y.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{key} row {i}: label bytes {y[:40]!r} are not UTF-8 text",
                                path=path) from None
        if not y.strip():
            raise DataError(f"{key} row {i} has an empty label", path=path)
        names.append(y)
    return names
