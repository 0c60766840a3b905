"""The table every source produces: ``Sample`` rows in a ``Catalog``, and the ``Issue``s found on the way.

Why a module of its own: splits, tensors, pipeline and inspect work on this table and never need to
know which source (folder, manifest, npz, pool) filled it.
"""

from __future__ import annotations

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
from fewlabel.data.identity import file_key
from fewlabel.errors import DataError, FewlabelError, UnknownFormatError
from fewlabel.fileio import atomic_path

# Marks a fingerprint of contents; one without it is the older kind (sizes + modification times).
CONTENT_FINGERPRINT = "c-"


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
        """Stable hash of ids, labels, groups and the contents of every image and mask.

        Why contents: results and prepared encoders are keyed by it, so a replaced file must change
        it, while the same files copied elsewhere (new modification times) must not: a run folder
        then resumes on a copy of its data. Content keys are remembered by file stat within a
        process, so the bytes are read once (the split's duplicate check reads them anyway).
        """
        h = hashlib.sha256()
        h.update(repr(list(self.classes)).encode())
        for s in sorted(self.samples, key=lambda s: s.id):
            h.update(repr((s.id, s.label, s.group, file_key(s.path),
                           file_key(s.mask) if s.mask else None)).encode())
        return CONTENT_FINGERPRINT + h.hexdigest()[:16]

    def stat_fingerprint(self) -> str:
        """The fingerprint fewlabel wrote before it hashed contents (file sizes + modification
        times, 16 hex digits): plans and runs made then are still checked against it."""
        h = hashlib.sha256()
        h.update(repr(list(self.classes)).encode())
        for s in sorted(self.samples, key=lambda s: s.id):
            h.update(repr((s.id, s.label, s.group, s.mask is not None, _stat_key(s.path),
                           _stat_key(s.mask) if s.mask else None)).encode())
        return h.hexdigest()[:16]

    def fingerprint_like(self, stored: str) -> str:
        """This catalog's fingerprint in the kind ``stored`` is (content, or the older stat kind)."""
        return self.fingerprint() if stored.startswith(CONTENT_FINGERPRINT) else self.stat_fingerprint()

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


def apply_group_pattern(cat: Catalog, pattern: str) -> None:
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


def without_classes(catalog: Catalog, drop: list[str] | tuple[str, ...]) -> Catalog:
    """The catalog minus every sample of the ``drop`` classes (and those classes themselves)."""
    if unknown := sorted(set(drop) - set(catalog.classes)):
        raise FewlabelError(f"--drop-class names no class here: {', '.join(unknown)} "
                            f"(classes: {', '.join(catalog.classes)})", path=catalog.root)
    if len(left := [c for c in catalog.classes if c not in drop]) < 2:  # nothing left to tell apart
        raise FewlabelError(f"--drop-class leaves {len(left)} class(es); classifying needs two", catalog.root)
    keep = [s.id for s in catalog.samples if s.label not in drop]
    # subset() keeps the class list (label indices stay put); a dropped class must leave it too.
    return replace(catalog.subset(keep), classes=left)
