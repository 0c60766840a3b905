"""The data side of the pipeline: files in, copies merged, one split plan, preprocessing fitted.

Rigour lives here: copies of one image are merged into one group before anything is split; the test
ids are chosen first and never reach preprocessing statistics or pretraining; the unlabelled pool
loses every image whose group (patient, smear) is in the test set and every copy of a test image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data import catalog as catalog_mod
from fewlabel.data import reader_notes, readers, splits, tensors
from fewlabel.data.copies import merge_duplicates
from fewlabel.data.identity import file_key, file_keys, identity_keys, pixel_key
from fewlabel.data.mismatch import size_range_of
from fewlabel.data.plan import SplitPlan
from fewlabel.errors import ConfigMismatchError, FewlabelError

# Groups per class below which no validation split is drawn (fixed epochs instead).
MIN_PER_CLASS_FOR_VALIDATION = splits.MIN_GROUPS_FOR_VALIDATION
# Share of the masked images' groups (patients) that validate segmentation pretraining.
SEGMENTATION_VAL_FRACTION = 0.2


@dataclass
class PretrainInputs:
    """What one preparation trains on, and the record its encoder keeps of it."""

    images: np.ndarray
    masks: np.ndarray | None
    val_images: np.ndarray | None
    val_masks: np.ndarray | None
    fingerprint: str  # hash of the inputs' contents and preprocessing: the data part of the cache key
    seen_files: list[str]  # content keys of every image (and mask) used, validation included


@dataclass
class PreparedData:
    """A labelled catalog split once (by its plan) into a test set and a pool, preprocessing fitted."""

    catalog: catalog_mod.Catalog
    preprocess: tensors.Preprocess
    plan: SplitPlan
    content_keys: dict[str, str]  # sample id -> content key (``data.identity``)
    unlabelled: catalog_mod.Catalog | None = None
    original_groups: dict[str, str] = field(default_factory=dict)  # id -> group before merging
    unlabelled_keys: dict[str, str] = field(default_factory=dict)  # pool id -> content key
    # Preprocessed arrays made once by the driver for workers (``share_arrays``): (id -> row, block).
    shared: tuple[dict[str, int], np.ndarray] | None = None
    # What the readers did that the user should hear of ("note: …" / "warning: …", ``reader_notes``).
    reading_notes: list[str] = field(default_factory=list)
    # The training pool's smallest and largest native sides per axis (``data.mismatch.size_range_of``):
    # what a saved model calls "images like the training images" in size.
    pool_size_range: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def pool_ids(self) -> list[str]:
        return self.plan.pool_ids

    @property
    def test_ids(self) -> list[str]:
        return self.plan.test_ids

    @property
    def seed(self) -> int:
        return int(self.plan.params["seed"])

    @property
    def test_size(self) -> float | int | str:
        return self.plan.params["test_size"]

    @property
    def class_names(self) -> list[str]:
        return list(self.catalog.classes)

    @property
    def num_classes(self) -> int:
        return len(self.catalog.classes)

    @property
    def spatial_dims(self) -> int:
        return int(self.preprocess.spatial_dims)

    @property
    def channels(self) -> int:
        return int(self.preprocess.channels)

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.preprocess.size)

    def arrays(self, ids: list[str], preprocess: tensors.Preprocess | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        if preprocess is None and self.shared is not None and all(i in self.shared[0] for i in ids):
            index, block = self.shared
            return block[[index[i] for i in ids]], self.catalog.labels(ids)
        pre = preprocess or self.preprocess
        return tensors.load_images(self.catalog, ids, pre), self.catalog.labels(ids)

    def share_arrays(self, ids: list[str]) -> None:
        """Decode and preprocess ``ids`` once into one block that travels with this object: a Ray
        worker that receives it (through the object store) reads arrays instead of decoding files."""
        ids = list(dict.fromkeys(ids))
        block = tensors.load_images(self.catalog, ids, self.preprocess)
        self.shared = ({i: k for k, i in enumerate(ids)}, block)

    @cached_property
    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays(self.test_ids)

    @cached_property
    def test_file_keys(self) -> set[str]:
        """Keys of the test images, of their files and of their pixels: what no training may have seen.
        A mask is only ever seen with its image, so the image's keys stand for the pair; masks of their
        own would make every empty (all-zero) mask, common in medical sets, a "test image"."""
        return self.seen_keys_of(self.test_ids)

    @cached_property
    def test_groups(self) -> set[str]:
        """Test groups, merged and as named before merging (a pool's own pattern yields the latter)."""
        return set(self.catalog.groups(self.test_ids)) | {
            self.original_groups.get(i, g) for i, g in zip(self.test_ids, self.catalog.groups(self.test_ids),
                                                           strict=True)}

    def keys_of(self, ids: list[str]) -> list[str]:
        """File keys: what cache keys of preparations are made of (kept as they were, so caches hold)."""
        return sorted({self.content_keys[i] for i in ids})

    def seen_keys_of(self, ids: list[str], unlabelled: bool = False) -> set[str]:
        """File and pixel keys of labelled (or unlabelled-pool) samples: what a record of the images a
        model or encoder saw holds, so a re-encoded copy of a test image is still recognised."""
        catalog = self.unlabelled if unlabelled else self.catalog
        assert catalog is not None
        return identity_keys(catalog.by_id[i].path for i in ids)

    def pool_without_test_groups(self) -> list[str]:
        """Ids of the unlabelled pool that pretraining may see: no image of a test group, no image
        with the content of a test image or mask (the plan's ``pretrain_pools``)."""
        entry = self.plan.pretrain_pools.get("unlabelled")
        return list(entry["ids"]) if entry else []

    def unlabelled_arrays(self) -> np.ndarray | None:
        """The unlabelled pool, preprocessed like the labelled images, test groups and copies removed.
        Built once per opened data set: every FixMatch cell of a curve shares the same array."""
        return self._unlabelled_array

    @cached_property
    def _unlabelled_array(self) -> np.ndarray | None:
        if self.unlabelled is None:
            return None
        ids = self.pool_without_test_groups()
        if not ids:
            return None
        return tensors.load_images(self.unlabelled, ids, self.preprocess)


    def pretrain_inputs(self, needs: str) -> PretrainInputs:
        """The images a preparation may see: ``pool`` = the unlabelled pool when there is one, else the
        labelled pool with its labels ignored; ``masks`` = the labelled pool's images with masks,
        validated on whole groups (patients). Never a test image, a copy of one, or a test mask."""
        pre = self.preprocess.to_dict()
        if needs == "pool":
            if self.unlabelled is not None:
                ids = self.pool_without_test_groups()
                if not ids:
                    raise FewlabelError("every unlabelled image belongs to a test group or copies a test "
                                        "image; nothing is left to pretrain on", path=self.unlabelled.root)
                images = self._unlabelled_array
                keys = sorted({self.unlabelled_keys[i] for i in ids})
            else:
                ids = list(self.pool_ids)
                images = tensors.load_images(self.catalog, ids, self.preprocess)
                keys = self.keys_of(ids)
            seen = sorted(self.seen_keys_of(ids, unlabelled=self.unlabelled is not None))
            return PretrainInputs(images, None, None, None, _hash("pool", keys, pre), seen)
        if needs != "masks":
            raise ValueError(f"unknown pretraining input {needs!r}")
        entry = self.plan.pretrain_pools.get("masks")
        if not entry or not entry["train"]:
            raise FewlabelError("no masks found for the training pool: segmentation pretraining needs "
                                "images with masks (images/ + masks/ layout or --masks DIR)",
                                path=self.catalog.root)
        train, val = list(entry["train"]), list(entry["val"])
        # seen: the images (each mask only beside its image); the cache key also changes with a mask
        keys = self.keys_of(train + val)
        seen = sorted(self.seen_keys_of(train + val))
        mask_keys = file_keys(self.catalog.by_id[i].mask for i in train + val)
        x = tensors.load_images(self.catalog, train, self.preprocess)
        m = tensors.load_masks(self.catalog, train, self.preprocess)
        xv = tensors.load_images(self.catalog, val, self.preprocess) if val else None
        mv = tensors.load_masks(self.catalog, val, self.preprocess) if val else None
        cache_key = _hash("masks", sorted(set(keys) | set(mask_keys)), train, val, pre)
        return PretrainInputs(x, m, xv, mv, cache_key, seen)

    def pretrain_images(self) -> np.ndarray:
        """What GAN and SSL pretraining see (``pretrain_inputs("pool")``)."""
        return self.pretrain_inputs("pool").images

    def pretrain_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Training images and masks for segmentation pretraining (validation groups left out)."""
        inputs = self.pretrain_inputs("masks")
        assert inputs.masks is not None
        return inputs.images, inputs.masks

    def fingerprint(self) -> str:
        """Everything a cell's numbers depend on in the data: files, the plan, preprocessing.

        The files enter as the plan's data fingerprint, which ``prepare_data`` checked against them;
        a plan made before fingerprints hashed contents keeps its kind, so its run still resumes.
        """
        h = hashlib.sha256(self.plan.data_fingerprint.encode())
        h.update(self.plan.fingerprint.encode())
        h.update(repr(sorted(self.preprocess.to_dict().items())).encode())
        if self.unlabelled is not None:
            h.update(self.unlabelled_fingerprint().encode())
        return h.hexdigest()[:16]

    def unlabelled_fingerprint(self) -> str | None:
        """The unlabelled pool's files, fingerprinted in the plan's kind (None without a pool)."""
        if self.unlabelled is None:
            return None
        return self.unlabelled.fingerprint_like(self.plan.data_fingerprint)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_pools(catalog: catalog_mod.Catalog, pool_ids: list[str], unlabelled: catalog_mod.Catalog | None,
                   test_keys: set[str], test_groups: set[str], seed: int,
                   unlabelled_keys: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per source of pretraining images: the ids kept (and, for the pool, how many were dropped).
    ``unlabelled_keys``: the pool's content keys when the caller has them (each file is hashed once)."""
    pools: dict[str, dict[str, Any]] = {}
    if unlabelled is not None:
        kept, by_group, by_content = [], 0, 0
        for s in unlabelled.samples:
            if s.group in test_groups:
                by_group += 1
            elif {(unlabelled_keys or {}).get(s.id) or file_key(s.path), pixel_key(s.path)} & test_keys:
                by_content += 1
            else:
                kept.append(s.id)
        pools["unlabelled"] = {"ids": kept, "total": len(unlabelled.samples),
                               "dropped_test_group": by_group, "dropped_test_content": by_content}
    masked = [i for i in pool_ids if catalog.by_id[i].mask is not None]
    if masked:
        tr, va = splits.group_holdout(catalog.groups(masked), SEGMENTATION_VAL_FRACTION, seed)
        pools["masks"] = {"train": [masked[i] for i in tr], "val": [masked[i] for i in va]}
    return pools


def dropped_note(plan: SplitPlan) -> str | None:
    """One sentence on unlabelled images kept out of pretraining because they meet the test set."""
    entry = plan.pretrain_pools.get("unlabelled")
    if not entry:
        return None
    parts = []
    if entry["dropped_test_content"]:
        parts.append(f"{entry['dropped_test_content']} image(s) dropped: same content as a test image")
    if entry["dropped_test_group"]:
        parts.append(f"{entry['dropped_test_group']} image(s) dropped: from a test group")
    return "; ".join(parts) or None


def prepare_data(
    data: str | Path | None = None, *, masks: str | Path | None = None, group_pattern: str | None = None,
    test_size: float | int = 0.2, seed: int = 0, image_size: int | tuple[int, ...] | None = None,
    unlabelled: str | Path | None = None, catalog: catalog_mod.Catalog | None = None,
    resize: str = "resize", count: str = "images", drop_classes: list[str] | tuple[str, ...] = (),
    test_split: str = "auto", plan: SplitPlan | str | Path | None = None,
) -> PreparedData:
    """Catalog the data, merge copies, hold out a group-aware stratified test set, fit preprocessing.

    ``count`` says what an integer ``test_size`` counts per class: ``images`` or ``groups`` (patients).
    ``drop_classes``: classes left out before anything is split (e.g. BCCD's basophil, 2 images).
    ``test_split``: ``auto`` uses the data's own test split when a manifest ``split`` column or a
    MedMNIST ``.npz`` defines one (the designated test images must never train), else draws one;
    ``given`` requires it; ``draw`` ignores it and draws by ``test_size``.
    ``plan``: a saved plan (or its path) to follow instead of drawing: its test set and pool are used
    as they are, after checking it was made on these very files.

    Preprocessing statistics (per-channel mean and std) come from the labelled pool (every labelled
    image outside the test set), never from a test image; they are the same for every cell of a curve.
    """
    if catalog is None:
        if data is None:
            raise FewlabelError("no data given")
        catalog = catalog_mod.load_catalog(data, masks=masks, group_pattern=group_pattern)
    if drop_classes:
        catalog = catalog_mod.without_classes(catalog, drop_classes)
    if test_split not in ("auto", "given", "draw"):
        raise FewlabelError(f"test_split must be auto, given or draw, not {test_split!r}")
    keys = {s.id: file_key(s.path) for s in catalog.samples}
    # Copies are merged by their pixels: a byte-identical file has them too, and so has one saved again
    # with other metadata or compression.
    pixels = {s.id: pixel_key(s.path) for s in catalog.samples}
    original = {s.id: s.group for s in catalog.samples}
    catalog, merged = merge_duplicates(catalog, pixels)
    params = {"seed": int(seed), "test_size": test_size, "count": count, "group_pattern": group_pattern,
              "test_split": test_split, "drop_classes": sorted(drop_classes)}
    if plan is not None:
        plan_path = None if isinstance(plan, SplitPlan) else plan
        plan = plan if isinstance(plan, SplitPlan) else SplitPlan.load(plan)
        if plan.data_fingerprint != catalog.fingerprint_like(plan.data_fingerprint):
            raise ConfigMismatchError("this plan was made on other files (or the files changed since); "
                                      "make a new plan", path=plan_path or catalog.root)
        pool_ids, test_ids = list(plan.pool_ids), list(plan.test_ids)
    else:
        has_given = any(smp.split == "test" for smp in catalog.samples)
        if test_split == "given" or (test_split == "auto" and has_given):
            pool_ids, test_ids = splits.predefined_test(catalog)
            params["test_size"] = "given"
        else:
            pool_ids, test_ids = splits.holdout_test(catalog, test_size=test_size, seed=seed, count=count)
    pool_catalog = None
    pool_keys: dict[str, str] = {}
    if unlabelled is not None:
        pool_catalog = catalog_mod.load_pool(unlabelled, group_pattern=group_pattern)
        pool_keys = {s.id: file_key(s.path) for s in pool_catalog.samples}
    # Headers of every image, test included: what the readers did is said of all of them, once.
    metas = {s.id: readers.read_meta(s.path) for s in catalog.samples}
    peaks: dict[str, float] = {}
    # an int is every side (a cube for volumes); a tuple is one side per axis
    preprocess = tensors.fit_preprocess(catalog, pool_ids, image_size=image_size, resize=resize, known=metas,
                                        peaks=peaks)
    said = [f"{level}: {line}" for level, line in reader_notes.reading_lines(metas)]
    scale = reader_notes.scale_line(peaks, f"the normalisation fitted on the {len(pool_ids)} training-pool "
                                    "images")
    said += [f"warning: {scale}"] if scale else []
    # What the pool may not hand to pretraining: test images (file and pixel keys) and, as images of
    # their own, test masks. (An encoder's record is held to the images alone: ``test_file_keys``.)
    test_masks = [m for m in (catalog.by_id[i].mask for i in test_ids) if m is not None]
    test_keys = {keys[i] for i in test_ids} | {pixels[i] for i in test_ids} | set(file_keys(test_masks))
    test_groups = set(catalog.groups(test_ids)) | {original[i] for i in test_ids}
    if plan is not None:
        # The pools follow from the plan's test set: an unlabelled folder the plan did not know (a
        # standalone `pretrain --plan`) gets its entry made the same way a curve makes it.
        pools = pretrain_pools(catalog, list(pool_ids), pool_catalog, test_keys, test_groups,
                               int(plan.params.get("seed", seed)), pool_keys)
        plan.pretrain_pools = {**pools, **{k: v for k, v in plan.pretrain_pools.items() if k == "masks"}}
    else:
        plan = SplitPlan(
            params=params, data_fingerprint=catalog.fingerprint(), classes=list(catalog.classes),
            test_ids=list(test_ids), test_labels=[int(v) for v in catalog.labels(test_ids)],
            test_groups=[str(g) for g in catalog.groups(test_ids)], pool_ids=list(pool_ids), merged=merged,
            pretrain_pools=pretrain_pools(catalog, list(pool_ids), pool_catalog, test_keys, test_groups,
                                           seed, pool_keys),
            source={"data": str(Path(data).resolve()) if data is not None else str(catalog.root),
                    "masks": str(Path(masks).resolve()) if masks is not None else None})
    return PreparedData(catalog=catalog, preprocess=preprocess, plan=plan, content_keys=keys,
                        unlabelled=pool_catalog, original_groups=original, unlabelled_keys=pool_keys,
                        reading_notes=said, pool_size_range=size_range_of(metas[i] for i in pool_ids))


def add_draw(data: PreparedData, n_per_class: int | None, repeat: int, draw_seed: int,
             count: str = "images") -> dict[str, Any]:
    """Draw ``n_per_class`` labelled images per class (None: the whole pool) into the plan, with the
    training / validation split of that draw; returns the plan's entry. A size a class cannot
    supply is recorded as skipped (with the reason) rather than raised."""
    if n_per_class is None:
        labelled = list(data.pool_ids)
    else:
        try:
            labelled = splits.draw_labelled(data.catalog, data.pool_ids, n_per_class, seed=draw_seed,
                                            count=count)
        except splits.SplitError as exc:
            data.plan.add_draw(n_per_class, repeat, draw_seed, labelled=[], train=[], val=[],
                               skipped=exc.problem)
            return data.plan.draw(n_per_class, repeat)
    train, val = splits.nested_validation(data.catalog, data.pool_ids, labelled, seed=draw_seed)
    data.plan.add_draw(n_per_class if n_per_class is not None else 0, repeat, draw_seed, labelled=labelled,
                       train=train, val=val)
    return data.plan.draw(n_per_class if n_per_class is not None else 0, repeat)


def check_draw(data: PreparedData, labelled_ids: list[str]) -> None:
    """A labelled draw a cell may train on: never a test image (a bug upstream if so), never empty."""
    leaked = set(labelled_ids) & set(data.test_ids)
    if leaked:  # a guard, not a user error: it means a bug upstream
        raise AssertionError(f"{len(leaked)} test images in the labelled draw")
    if not labelled_ids:
        raise FewlabelError("no labelled images to train on (labels per class must be at least 1)",
                            path=data.catalog.root)
