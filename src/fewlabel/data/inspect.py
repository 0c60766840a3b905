"""Inspect a data set before training on it: what is there, and what is wrong with it.

Why: with tens of labels per class, one mislabelled duplicate or one truncated file is a visible
share of the data. ``inspect_data`` reads EVERY file once and reports, as one value
(``InspectReport``): classes and counts, groups, image shapes, dtypes, channels, value ranges, masks;
and the problems, each with the file and one line: unreadable/truncated files, NaN/Inf, exact duplicates
(by a hash of the decoded pixels), above all the same image under two classes, masks missing / of
another shape / not binary-integer, unknown extensions, files the group pattern does not match, and
classes too small to split (fewer than ``min_per_class`` groups: one each for test, training and
validation), class names that print alike and names that are not UTF-8. Near-copies (a resized or
re-compressed copy, found by ``data.near_copies``' perceptual hash) are a warning, not a problem:
they are not merged before splitting, and the warning names them, first those a given split
(manifest ``split`` column) puts on both sides of the test set. What the readers did is
said as ``train`` says it (``reader_notes``): EXIF orientations applied (a note), frames left unread
and images whose scale would dominate the normalisation (warnings).

Only an input that cannot be read at all (missing, empty, not a data source) raises; everything else
is collected, so all problems are listed in one run. ``report.raise_for_problems()`` raises the first
one as its ``FewlabelError`` subclass, for code that wants to stop.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel import errors
from fewlabel.data import readers
from fewlabel.data.catalog import Catalog, load_catalog, load_pool, natural_key
from fewlabel.data.inspect_near_copies import near_copy_warnings
from fewlabel.data.near_copies import image_hashes
from fewlabel.data.reader_notes import reading_lines, scale_line, scaled_peak
from fewlabel.errors import FewlabelError

__all__ = ["Problem", "InspectReport", "inspect_data", "inspect_catalog"]

#: Problem kind → error class raised for it by ``raise_for_problems``.
ERROR_FOR_KIND = {
    "unreadable": "UnreadableFileError",
    "invalid": "InvalidImageError",
    "duplicate": "DataError",
    "duplicate_across_classes": "DataError",
    "mask_missing": "MaskError",
    "mask_orphan": "MaskError",
    "mask_ambiguous": "MaskError",
    "mask_shape": "MaskError",
    "mask_values": "MaskError",
    "mask_unreadable": "UnreadableFileError",
    "unknown_extension": "UnknownFormatError",
    "small_class": "SplitError",
    "one_class": "DataError",
    "lookalike_classes": "DataError",
    "empty_class": "DataError",
    "group_pattern": "DataError",
    "manifest": "ManifestError",
    "manifest_missing": "ManifestError",
}


#: Problems are listed in this order: the worst (a label contradicting another) first.
SEVERITY = ("duplicate_across_classes", "one_class", "lookalike_classes", "unreadable", "invalid",
            "mask_shape", "mask_values", "mask_unreadable", "mask_missing", "mask_orphan", "mask_ambiguous",
            "manifest_missing", "manifest", "unknown_extension", "group_pattern", "empty_class",
            "small_class", "duplicate")


@dataclass(frozen=True)
class Problem:
    """One problem: ``path`` relative to the report's root (or absolute), one-line ``problem``."""

    path: str
    problem: str
    kind: str
    error: str = "DataError"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class InspectReport:
    """Everything ``fewlabel inspect`` prints; ``to_dict()`` is what ``--json`` prints."""

    source: str
    root: str
    layout: str
    n_images: int = 0
    sample_kind: str = "2D images"
    spatial_dims: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    n_groups: int = 0
    groups: dict[str, Any] = field(default_factory=dict)
    n_masks: int = 0
    masks: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    spacing: dict[str, int] = field(default_factory=dict)
    value_range: list[float] | None = None
    value_range_by_dtype: dict[str, list[float]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    near_copies: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [p.to_dict() for p in self.problems]
        d["ok"] = self.ok
        return d

    def raise_for_problems(self) -> None:
        """Raise the first problem as its ``FewlabelError`` subclass (the line names the file)."""
        if not self.problems:
            return
        p = self.problems[0]
        cls = getattr(errors, p.error, errors.DataError)
        path = p.path if Path(p.path).is_absolute() else str(Path(self.root) / p.path)
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        raise cls(p.problem + more, path=path)


def inspect_data(source: str | Path, masks: str | Path | None = None, group_pattern: str | None = None,
                 pool: bool = False, min_per_class: int = 3,
                 progress: Callable[[int, int], None] | None = None) -> InspectReport:
    """Catalog ``source`` (folder, CSV manifest, .npz; ``pool=True``: unlabelled folder), read every
    file, and report. Raises only when the input cannot be read at all."""
    if pool:
        catalog = load_pool(source, group_pattern=group_pattern, strict=False)
    else:
        catalog = load_catalog(source, masks=masks, group_pattern=group_pattern, strict=False)
    return inspect_catalog(catalog, source=str(source), min_per_class=min_per_class, progress=progress)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _rel(path: str, root: Path) -> str:
    file_part, sep, member = path.partition(readers.NPZ_SEP)
    try:
        rel = Path(file_part).relative_to(root).as_posix()
    except ValueError:
        rel = file_part
    return rel + sep + member


def inspect_catalog(catalog: Catalog, source: str | None = None, min_per_class: int = 3,
                    progress: Callable[[int, int], None] | None = None) -> InspectReport:
    """The report for an already built catalog (its ``issues`` become problems)."""
    root = Path(catalog.root)
    rep = InspectReport(source=source or str(root), root=str(root), layout=catalog.layout,
                        n_images=len(catalog.samples), notes=list(catalog.notes),
                        warnings=list(catalog.warnings))
    for issue in catalog.issues:
        rep.problems.append(Problem(issue.path, issue.problem, issue.kind,
                                    ERROR_FOR_KIND.get(issue.kind, issue.error.__name__)))
    rep.classes = catalog.class_counts()
    _groups_summary(catalog, rep)

    shapes, dtypes, chans, fmts, spacing, dims = (Counter() for _ in range(6))
    lo, hi = np.inf, -np.inf
    by_dtype: dict[str, list[float]] = {}
    hashes: dict[str, list[str]] = defaultdict(list)
    image_shape: dict[str, tuple[int, ...]] = {}
    shape_examples: dict[str, str] = {}
    metas: dict[str, readers.ImageMeta] = {}
    peaks: dict[str, float] = {}
    phashes: dict[str, np.ndarray] = {}
    pixel_digest: dict[str, str] = {}
    n_volumes = 0
    n = len(catalog.samples)
    for k, s in enumerate(catalog.samples):
        if progress is not None:
            progress(k, n)
        try:
            arr, meta = readers.read_image(s.path)
        except FewlabelError as exc:
            kind = "invalid" if isinstance(exc, errors.InvalidImageError) else "unreadable"
            if isinstance(exc, errors.UnknownFormatError):
                kind = "unknown_extension"
            rep.problems.append(Problem(s.id, exc.problem, kind, type(exc).__name__))
            continue
        image_shape[s.id] = meta.spatial_shape
        shapes[_fmt_shape(meta.spatial_shape)] += 1
        shape_examples.setdefault(_fmt_shape(meta.spatial_shape), s.id)
        dtypes[meta.dtype] += 1
        chans[str(meta.channels) + (" (with alpha)" if meta.has_alpha else "")] += 1
        fmts[meta.format] += 1
        dims[f"{meta.spatial_dims}D"] += 1
        spacing[_fmt_shape(meta.spacing) if meta.spacing else "unknown"] += 1  # type: ignore[arg-type]
        a_min, a_max = float(arr.min()), float(arr.max())
        metas[s.id] = meta
        peaks[s.id] = scaled_peak(max(abs(a_min), abs(a_max)), meta)
        lo, hi = min(lo, a_min), max(hi, a_max)
        r = by_dtype.setdefault(meta.dtype, [a_min, a_max])
        r[0], r[1] = min(r[0], a_min), max(r[1], a_max)
        h = hashlib.sha1(arr.tobytes())
        h.update(repr(arr.shape).encode())
        hashes[h.hexdigest()].append(s.id)
        pixel_digest[s.id] = h.hexdigest()
        if meta.spatial_dims == 2:
            colour = arr[:-1] if meta.has_alpha and arr.shape[0] in (2, 4) else arr
            phashes[s.id] = image_hashes(colour)
        else:
            n_volumes += 1
    if progress is not None:
        progress(n, n)
    rep.shapes = dict(shapes.most_common())
    rep.dtypes = dict(dtypes.most_common())
    rep.channels = dict(chans.most_common())
    rep.formats = dict(fmts.most_common())
    rep.spacing = dict(spacing.most_common())
    rep.spatial_dims = dict(dims.most_common())
    rep.sample_kind = ("3D volumes" if set(dims) == {"3D"} else "2D images" if set(dims) <= {"2D"}
                       else "mixed 2D images and 3D volumes")
    if dims and len(dims) > 1:
        rep.problems.append(Problem(".", f"data mix 2D images ({dims['2D']}) and 3D volumes ({dims['3D']})",
                                    "invalid", "DataError"))
    _odd_sizes(shape_examples, shapes, rep)
    _reading(metas, peaks, rep)
    rep.value_range = [lo, hi] if np.isfinite(lo) else None
    rep.value_range_by_dtype = by_dtype
    _duplicates(catalog, hashes, rep)
    near_copy_warnings(catalog, phashes, pixel_digest, n_volumes, rep)
    _check_masks(catalog, image_shape, rep)
    _small_classes(catalog, rep, min_per_class)
    rank = {k: i for i, k in enumerate(SEVERITY)}
    rep.problems.sort(key=lambda p: (rank.get(p.kind, len(rank)), natural_key(p.path)))
    return rep


def _odd_sizes(examples: dict[str, str], shapes: Counter, rep: InspectReport) -> None:
    """A few images of another size than most are resized like the rest; worth a note (a crop, a
    thumbnail or a file from another source among the data)."""
    if len(shapes) < 2:
        return
    (common, n_common), *others = shapes.most_common()
    n_odd = sum(n for _, n in others)
    if n_odd * 4 > n_common:  # sizes genuinely vary: nothing odd about any one of them
        return
    shown = ", ".join(f"{examples[k]} ({k})" for k, _ in others[:3])
    rep.notes.append(f"{n_odd} image(s) differ from the common size {common} and will be resized to it: "
                     f"{shown}")


def _reading(metas: dict[str, readers.ImageMeta], peaks: dict[str, float], rep: InspectReport) -> None:
    """What the readers did (EXIF turns, frames left unread) and images whose scale would dominate
    the normalisation: the same lines ``train`` and ``curve`` print (``reader_notes``)."""
    for level, line in reading_lines(metas):
        (rep.notes if level == "note" else rep.warnings).append(line)
    scale = scale_line(peaks)
    if scale:
        rep.warnings.append(scale)


def _groups_summary(catalog: Catalog, rep: InspectReport) -> None:
    groups = catalog.groups()
    sizes = Counter(groups)
    rep.n_groups = len(sizes)
    per_class: dict[str, int] = {}
    if catalog.classes:
        majority = catalog.group_labels()
        counted = Counter(majority.values())
        per_class = {c: counted.get(c, 0) for c in catalog.classes}
    spanning = catalog.groups_spanning_classes()
    rep.groups = {
        "n_groups": rep.n_groups,
        "pattern": catalog.group_pattern,
        "per_class": per_class,
        "images_per_group": ({"min": min(sizes.values()), "max": max(sizes.values()),
                              "mean": round(len(groups) / len(sizes), 3)} if sizes else {}),
        "spanning_classes": spanning,
    }
    if spanning:
        g, labels = next(iter(sorted(spanning.items())))
        rep.warnings.append(f"{len(spanning)} group(s) hold images of more than one class (e.g. {g!r}: "
                            f"{', '.join(labels)}); each is kept whole and stratified by its majority class")


def _duplicates(catalog: Catalog, hashes: dict[str, list[str]], rep: InspectReport) -> None:
    by_id = catalog.by_id
    for ids in hashes.values():
        if len(ids) < 2:
            continue
        ids = sorted(ids, key=natural_key)
        labels = {by_id[i].label for i in ids}
        if len(labels) > 1:
            for i in ids:
                others = [j for j in ids if j != i and by_id[j].label != by_id[i].label]
                other = others[0]
                rep.problems.append(Problem(
                    i, f"same image as {other} under class {by_id[other].label!r} (this file is in class "
                    f"{by_id[i].label!r})", "duplicate_across_classes", "DataError"))
        else:
            for i in ids[1:]:
                rep.problems.append(Problem(i, f"exact duplicate of {ids[0]} (same pixels)", "duplicate",
                                            "DataError"))


def _check_masks(catalog: Catalog, image_shape: dict[str, tuple[int, ...]], rep: InspectReport) -> None:
    root = Path(catalog.root)
    values: Counter = Counter()
    n_masks = matched = empty = 0
    for s in catalog.samples:
        if s.mask is None:
            continue
        n_masks += 1
        mrel = _rel(s.mask, root)
        try:
            mask, _ = readers.read_mask(s.mask)
        except errors.MaskError as exc:
            rep.problems.append(Problem(mrel, exc.problem, "mask_values", "MaskError"))
            continue
        except FewlabelError as exc:
            rep.problems.append(Problem(mrel, exc.problem, "mask_unreadable", type(exc).__name__))
            continue
        shape = image_shape.get(s.id)
        if shape is not None and tuple(mask.shape[1:]) != tuple(shape):
            rep.problems.append(Problem(mrel, f"mask shape {_fmt_shape(mask.shape[1:])} differs from its "
                                        f"image's {_fmt_shape(shape)} ({s.id})", "mask_shape", "MaskError"))
            continue
        uniq = np.unique(mask)
        values[",".join(str(int(v)) for v in uniq)] += 1
        if uniq.max() == 0:
            empty += 1
        matched += 1
    rep.n_masks = n_masks
    missing = sum(1 for p in rep.problems if p.kind == "mask_missing")
    rep.masks = {"n_masks": n_masks, "matched": matched, "missing": missing, "empty": empty,
                 "values": dict(values.most_common())}
    if empty:
        rep.warnings.append(f"{empty} mask(s) are empty (all background)")


def _small_classes(catalog: Catalog, rep: InspectReport, min_per_class: int) -> None:
    if not catalog.classes:
        return
    groups_per = rep.groups.get("per_class", {})
    prefix = "images/" if catalog.layout == "images+masks" else ""
    for cls in catalog.classes:
        g = groups_per.get(cls, 0)
        if g < min_per_class:
            n = rep.classes.get(cls, 0)
            what = f"{n} image(s)" + (f" in {g} group(s)" if g != n else "")
            path = prefix + cls if catalog.layout.startswith(("class-folders", "images")) else cls
            rep.problems.append(Problem(
                path, f"class {cls!r} has {what}: too few to split into test, training and validation "
                f"(needs at least {min_per_class} groups); drop or merge it", "small_class", "SplitError"))
