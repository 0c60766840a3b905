"""What ``suggest`` reads: the unlabelled pool, the images already labelled, and who is who by content.

* The pool is a folder (every image under it, recursive; a class-folder tree too, its folder names
  ignored) or a CSV with a ``path`` column (paths relative to the CSV; any other column ignored).
* The labelled images are anything ``data.catalog.load_catalog`` reads (a class-folder tree, a CSV
  manifest, an .npz). A manifest row with ``split`` = test is a labelled TEST image: never proposed,
  and it covers nothing (a test image never trains). A row without a label is not labelled yet.
* Identity is content (``data.identity``): a pool image whose bytes or decoded pixels equal a labelled
  image's is that image, whatever its name; pool images with the same pixels are one image (the first
  in the pool's order stands for them), so no image is proposed twice or proposed and sampled for
  testing under two names.
* A file that cannot be read (damaged, unknown extension, missing from a CSV) is listed with its
  problem and skipped, never dropped silently; the caller counts and prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fewlabel.data import readers
from fewlabel.data.catalog import Catalog, Sample, load_catalog, load_pool
from fewlabel.data.catalog.manifest import read_table
from fewlabel.data.identity import file_key, pixel_key
from fewlabel.errors import DataError, FewlabelError, ManifestError

# Catalog issues that make a file unusable here but leave the rest usable: listed and skipped.
SKIPPED_KINDS = ("unreadable", "unknown_extension", "manifest_missing")
# Issues about labels that do not matter to a selection, which never reads a label.
LABEL_ONLY_KINDS = ("one_class", "lookalike_classes")
CSV_SUFFIXES = (".csv", ".tsv")


@dataclass
class Inputs:
    """The pool as rows of the embedding, and the roles the labelled set gives them."""

    pool: Catalog  # readable pool images, one per content, in the pool's order
    labelled_extra: Catalog | None  # labelled training images with no copy in the pool (they cover)
    covering: list[int]  # pool rows that are labelled training images (or copies of one)
    excluded: list[int]  # pool rows that are labelled test images (never proposed, cover nothing)
    labelled: list[Sample]  # every labelled row read, for the manifest template
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, problem)
    notes: list[str] = field(default_factory=list)
    copies: int = 0  # pool files whose pixels another pool file already has

    @property
    def candidates(self) -> list[int]:
        taken = set(self.covering) | set(self.excluded)
        return [r for r in range(len(self.pool.samples)) if r not in taken]

    @property
    def test_given(self) -> list[Sample]:
        return [s for s in self.labelled if s.split == "test"]


def _skip(catalog: Catalog, skipped: list[tuple[str, str]], what: str) -> None:
    """Unusable files of a catalog into ``skipped``; any other problem is one line, raised."""
    fatal = []
    for issue in catalog.issues:
        if issue.kind in SKIPPED_KINDS:
            where = issue.path if Path(issue.path).is_absolute() else str(catalog.root / issue.path)
            skipped.append((where, f"{issue.problem} ({what})"))
        elif issue.kind not in LABEL_ONLY_KINDS:
            fatal.append(issue)
    if fatal:
        raise fatal[0].to_error(catalog.root)


def _pool_csv(path: Path, skipped: list[tuple[str, str]], notes: list[str]) -> Catalog:
    """A pool listed in a CSV (``path`` column, relative to the CSV)."""
    reader, columns = read_table(path, "the pool CSV")
    if "path" not in columns:
        raise ManifestError(f"a pool CSV needs a 'path' column (it has: {', '.join(columns) or 'none'})",
                            path=path)
    base, samples, seen, twice = path.parent, [], set(), 0
    for lineno, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        value = row.get("path", "")
        if not value:
            skipped.append((f"{path}, line {lineno}", "empty path"))
            continue
        file_part, sep, member = value.partition(readers.NPZ_SEP)
        full = Path(file_part) if Path(file_part).is_absolute() else base / file_part
        address = str(full) + sep + member
        if not full.exists():
            skipped.append((address, readers.dangling_reason(full)
                            or "does not exist (paths in the pool CSV are relative to it)"))
        elif readers.special_file_reason(full):
            skipped.append((address, str(readers.special_file_reason(full))))
        elif readers.file_format(address) is None:
            skipped.append((address, "unknown file extension; no reader handles it"))
        elif address in seen:
            twice += 1
        else:
            seen.add(address)
            sid = value.replace("\\", "/")
            samples.append(Sample(id=sid, path=address, label=None, group=sid))
    if twice:
        notes.append(f"{twice} row(s) of {path.name} list a path already listed: counted once")
    if not samples and not skipped:
        raise ManifestError("the pool CSV lists no images", path=path)
    return Catalog(samples=samples, classes=[], root=base, layout="pool")


def read_pool(pool: str | Path, skipped: list[tuple[str, str]], notes: list[str]) -> Catalog:
    """Every image the pool names (unreadable ones not yet found: ``content_keys`` finds those)."""
    path = Path(pool)
    if path.is_file() and readers.split_suffix(path.name)[1] in CSV_SUFFIXES:
        return _pool_csv(path, skipped, notes)
    if path.exists() and not path.is_dir():
        raise DataError("the pool must be a folder of images or a CSV with a 'path' column", path=path)
    catalog = load_pool(path, strict=False)  # a missing folder or one without images: one line
    _skip(catalog, skipped, "pool")
    notes.extend(catalog.notes)
    return catalog


def content_keys(catalog: Catalog, skipped: list[tuple[str, str]], what: str
                 ) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(id -> (file key, pixel key) of every readable sample, id -> file key of unreadable ones whose
    bytes could still be hashed). Reading the pixels is what finds a damaged file: it is skipped."""
    keys: dict[str, tuple[str, str]] = {}
    bytes_only: dict[str, str] = {}
    for s in catalog.samples:
        fkey = None
        try:
            fkey = file_key(s.path)
            keys[s.id] = (fkey, pixel_key(s.path))
        except FewlabelError as exc:
            skipped.append((s.path, f"{exc.problem} ({what})"))
            if fkey is not None:
                bytes_only[s.id] = fkey
        except OSError as exc:
            skipped.append((s.path, f"{exc.strerror or type(exc).__name__} ({what})"))
    return keys, bytes_only


def read_labelled(labelled: str | Path, skipped: list[tuple[str, str]], notes: list[str]) -> Catalog:
    """The labelled set as ``load_catalog`` reads it; rows without a label are said, not counted."""
    catalog = load_catalog(labelled, strict=False)
    unlabelled = [i for i in catalog.issues if i.kind == "manifest" and i.problem.startswith("empty label")]
    if unlabelled:
        notes.append(f"{len(unlabelled)} row(s) of {labelled} have no label yet: not counted as labelled "
                     "(a test row without a label included), so they may be proposed or sampled again; "
                     "the new manifest_template.csv leaves them out")
    catalog.issues = [i for i in catalog.issues if i not in unlabelled]
    _skip(catalog, skipped, "labelled")
    if not catalog.samples:
        raise DataError("no labelled image could be read here", path=labelled)
    return catalog


def gather(pool: str | Path, labelled: str | Path | None) -> Inputs:
    """The pool's rows and the labelled set's roles (module docstring)."""
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    catalog = read_pool(pool, skipped, notes)
    keys, _ = content_keys(catalog, skipped, "pool")
    first: dict[str, str] = {}  # pixel key -> the pool id that stands for it
    for s in catalog.samples:
        if s.id in keys:
            first.setdefault(keys[s.id][1], s.id)
    unique = [s for s in catalog.samples if s.id in keys and first[keys[s.id][1]] == s.id]
    copies = len(keys) - len(unique)
    if not unique:
        raise DataError(f"no readable image in the pool ({len(skipped)} file(s) could not be read)",
                        path=pool)
    pool_catalog = Catalog(samples=unique, classes=[], root=catalog.root, layout=catalog.layout)
    if copies:
        notes.append(f"{copies} pool image(s) have the same pixels as another pool image: each image is "
                     "proposed (or sampled for testing) under one name only")
    if labelled is None:
        return Inputs(pool_catalog, None, [], [], [], skipped, notes, copies)
    lab = read_labelled(labelled, skipped, notes)
    lab_keys, lab_bytes = content_keys(lab, skipped, "labelled")
    train_keys: set[str] = set()
    test_keys: set[str] = set()
    for s in lab.samples:
        found = set(lab_keys.get(s.id, ())) | ({lab_bytes[s.id]} if s.id in lab_bytes else set())
        (test_keys if s.split == "test" else train_keys).update(found)
    covering, excluded = [], []
    for row, s in enumerate(unique):
        if set(keys[s.id]) & train_keys:
            covering.append(row)
        elif set(keys[s.id]) & test_keys:
            excluded.append(row)
    in_pool = {k for s in unique for k in keys[s.id]}
    extra, seen = [], set()
    for s in lab.samples:
        k = lab_keys.get(s.id)
        if s.split == "test" or k is None or set(k) & in_pool or k[1] in seen:
            continue
        seen.add(k[1])
        extra.append(s)
    extra_catalog = (Catalog(samples=extra, classes=list(lab.classes), root=lab.root, layout=lab.layout)
                     if extra else None)
    return Inputs(pool_catalog, extra_catalog, covering, excluded, list(lab.samples), skipped, notes, copies)


def keys_of(catalog: Catalog) -> dict[str, str]:
    """id -> file key: the name of an image's features in the feature cache."""
    return {s.id: file_key(s.path) for s in catalog.samples}
