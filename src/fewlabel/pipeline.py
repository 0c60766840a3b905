"""What ``train`` and ``curve`` share: data in, one split plan (a group-aware test hold-out), a
strategy's encoder prepared on the pool only, one fine-tuning and its test metrics.

Rigour lives here: copies of one image are merged into one group before anything is split; the test
ids are chosen first and never reach preprocessing statistics, pretraining, training or model
selection; validation is drawn from the labelled ids only; the unlabelled pool loses every image
whose group (patient, smear) is in the test set and every copy of a test image; an encoder that saw
a test image, or that does not say what it saw, is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel import strategies as strategy_registry
from fewlabel.data import catalog as catalog_mod
from fewlabel.data import splits, tensors
from fewlabel.data.identity import file_key, file_keys
from fewlabel.data.plan import SplitPlan
from fewlabel.errors import ConfigMismatchError, DataError, FewlabelError
from fewlabel.evaluate.metrics import classification_metrics
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.heads import Classifier
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba
from fewlabel.training.loop import FitResult

# Kept for callers of earlier versions: the registry (``fewlabel.strategies``) is the source.
STRATEGIES = strategy_registry.NAMES
PRETRAINED = strategy_registry.PREPARED
# Groups per class below which no validation split is drawn (fixed epochs instead).
MIN_PER_CLASS_FOR_VALIDATION = splits.MIN_GROUPS_FOR_VALIDATION
# Share of the masked images' groups (patients) that validate segmentation pretraining.
SEGMENTATION_VAL_FRACTION = 0.2


def merge_duplicates(catalog: catalog_mod.Catalog, keys: dict[str, str]
                     ) -> tuple[catalog_mod.Catalog, list[list[str]]]:
    """The catalog with every set of same-content samples made one group (their groups merged).

    Why: a copy of an image under another name is the same evidence twice; split apart, one copy
    would be tested on a model trained on the other. Copies that carry different labels cannot both
    be right: that is a one-line error naming both files, before anything is split.
    """
    by_key: dict[str, list[catalog_mod.Sample]] = {}
    for s in catalog.samples:
        by_key.setdefault(keys[s.id], []).append(s)
    dup_sets = [members for members in by_key.values() if len(members) > 1]
    if not dup_sets:
        return catalog, []
    for members in dup_sets:
        labelled = [m for m in members if m.label is not None]
        if len({m.label for m in labelled}) > 1:
            a, b = next((x, y) for x in labelled for y in labelled if x.label != y.label)
            raise DataError(f"{a.id} and {b.id} hold the same image but are labelled {a.label!r} and "
                            f"{b.label!r}; fix the label or remove one copy (fewlabel inspect lists "
                            "every duplicate)", path=catalog.root)
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    for members in dup_sets:
        roots = sorted({find(m.group) for m in members}, key=catalog_mod.natural_key)
        for r in roots[1:]:
            parent[r] = roots[0]
    samples = [dataclasses.replace(s, group=find(s.group)) if find(s.group) != s.group else s
               for s in catalog.samples]
    merged = [sorted((m.id for m in members), key=catalog_mod.natural_key) for members in dup_sets]
    return dataclasses.replace(catalog, samples=samples), sorted(merged)


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
        pre = preprocess or self.preprocess
        return tensors.load_images(self.catalog, ids, pre), self.catalog.labels(ids)

    @cached_property
    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays(self.test_ids)

    @cached_property
    def test_file_keys(self) -> set[str]:
        """Content keys of the test images and their masks: what no training may have seen."""
        keys = {self.content_keys[i] for i in self.test_ids}
        masks = [self.catalog.by_id[i].mask for i in self.test_ids]
        return keys | set(file_keys(m for m in masks if m is not None))

    @cached_property
    def test_groups(self) -> set[str]:
        """Test groups, merged and as named before merging (a pool's own pattern yields the latter)."""
        return set(self.catalog.groups(self.test_ids)) | {
            self.original_groups.get(i, g) for i, g in zip(self.test_ids, self.catalog.groups(self.test_ids),
                                                           strict=True)}

    def keys_of(self, ids: list[str]) -> list[str]:
        return sorted({self.content_keys[i] for i in ids})

    def pool_without_test_groups(self) -> list[str]:
        """Ids of the unlabelled pool that pretraining may see: no image of a test group, no image
        with the content of a test image or mask (the plan's ``pretrain_pools``)."""
        entry = self.plan.pretrain_pools.get("unlabelled")
        return list(entry["ids"]) if entry else []

    def unlabelled_arrays(self) -> np.ndarray | None:
        """The unlabelled pool, preprocessed like the labelled images, test groups and copies removed."""
        if self.unlabelled is None:
            return None
        ids = self.pool_without_test_groups()
        if not ids:
            return None
        return tensors.load_images(self.unlabelled, ids, self.preprocess)

    @cached_property
    def unlabelled_keys(self) -> dict[str, str]:
        if self.unlabelled is None:
            return {}
        return {s.id: file_key(s.path) for s in self.unlabelled.samples}

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
                images = tensors.load_images(self.unlabelled, ids, self.preprocess)
                keys = sorted({self.unlabelled_keys[i] for i in ids})
            else:
                ids = list(self.pool_ids)
                images = tensors.load_images(self.catalog, ids, self.preprocess)
                keys = self.keys_of(ids)
            return PretrainInputs(images, None, None, None, _hash("pool", keys, pre), keys)
        if needs != "masks":
            raise ValueError(f"unknown pretraining input {needs!r}")
        entry = self.plan.pretrain_pools.get("masks")
        if not entry or not entry["train"]:
            raise FewlabelError("no masks found for the training pool: segmentation pretraining needs "
                                "images with masks (images/ + masks/ layout or --masks DIR)",
                                path=self.catalog.root)
        train, val = list(entry["train"]), list(entry["val"])
        mask_keys = file_keys(self.catalog.by_id[i].mask for i in train + val)
        keys = sorted(set(self.keys_of(train + val)) | set(mask_keys))
        x = tensors.load_images(self.catalog, train, self.preprocess)
        m = tensors.load_masks(self.catalog, train, self.preprocess)
        xv = tensors.load_images(self.catalog, val, self.preprocess) if val else None
        mv = tensors.load_masks(self.catalog, val, self.preprocess) if val else None
        return PretrainInputs(x, m, xv, mv, _hash("masks", keys, train, val, pre), keys)

    def pretrain_images(self) -> np.ndarray:
        """What GAN and SSL pretraining see (``pretrain_inputs("pool")``)."""
        return self.pretrain_inputs("pool").images

    def pretrain_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Training images and masks for segmentation pretraining (validation groups left out)."""
        inputs = self.pretrain_inputs("masks")
        assert inputs.masks is not None
        return inputs.images, inputs.masks

    def fingerprint(self) -> str:
        """Everything a cell's numbers depend on in the data: files, the plan, preprocessing."""
        h = hashlib.sha256(self.catalog.fingerprint().encode())
        h.update(self.plan.fingerprint.encode())
        h.update(repr(sorted(self.preprocess.to_dict().items())).encode())
        if self.unlabelled is not None:
            h.update(self.unlabelled.fingerprint().encode())
        return h.hexdigest()[:16]


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_pools(catalog: catalog_mod.Catalog, pool_ids: list[str], unlabelled: catalog_mod.Catalog | None,
                    test_keys: set[str], test_groups: set[str], seed: int) -> dict[str, dict[str, Any]]:
    """Per source of pretraining images: the ids kept (and, for the pool, how many were dropped)."""
    pools: dict[str, dict[str, Any]] = {}
    if unlabelled is not None:
        kept, by_group, by_content = [], 0, 0
        for s in unlabelled.samples:
            if s.group in test_groups:
                by_group += 1
            elif file_key(s.path) in test_keys:
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
        catalog = without_classes(catalog, drop_classes)
    if test_split not in ("auto", "given", "draw"):
        raise FewlabelError(f"test_split must be auto, given or draw, not {test_split!r}")
    keys = {s.id: file_key(s.path) for s in catalog.samples}
    original = {s.id: s.group for s in catalog.samples}
    catalog, merged = merge_duplicates(catalog, keys)
    params = {"seed": int(seed), "test_size": test_size, "count": count, "group_pattern": group_pattern,
              "test_split": test_split, "drop_classes": sorted(drop_classes)}
    if plan is not None:
        plan_path = None if isinstance(plan, SplitPlan) else plan
        plan = plan if isinstance(plan, SplitPlan) else SplitPlan.load(plan)
        if plan.data_fingerprint != catalog.fingerprint():
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
    size = (image_size,) * 2 if isinstance(image_size, int) else image_size
    pool_catalog = None
    if unlabelled is not None:
        pool_catalog = catalog_mod.load_pool(unlabelled, group_pattern=group_pattern)
    preprocess = tensors.fit_preprocess(catalog, pool_ids, image_size=size, resize=resize)
    if size is not None and isinstance(image_size, int) and preprocess.spatial_dims == 3:
        preprocess = dataclasses.replace(preprocess, size=(image_size,) * 3)
    test_masks = [catalog.by_id[i].mask for i in test_ids]
    test_keys = {keys[i] for i in test_ids} | set(file_keys(m for m in test_masks if m is not None))
    test_groups = set(catalog.groups(test_ids)) | {original[i] for i in test_ids}
    if plan is not None:
        # The pools follow from the plan's test set: an unlabelled folder the plan did not know (a
        # standalone `pretrain --plan`) gets its entry made the same way a curve makes it.
        pools = pretrain_pools(catalog, list(pool_ids), pool_catalog, test_keys, test_groups,
                               int(plan.params.get("seed", seed)))
        plan.pretrain_pools = {**pools, **{k: v for k, v in plan.pretrain_pools.items() if k == "masks"}}
    else:
        plan = SplitPlan(
            params=params, data_fingerprint=catalog.fingerprint(), classes=list(catalog.classes),
            test_ids=list(test_ids), test_labels=[int(v) for v in catalog.labels(test_ids)],
            test_groups=[str(g) for g in catalog.groups(test_ids)], pool_ids=list(pool_ids), merged=merged,
            pretrain_pools=pretrain_pools(catalog, list(pool_ids), pool_catalog, test_keys, test_groups,
                                           seed),
            source={"data": str(Path(data).resolve()) if data is not None else str(catalog.root),
                    "masks": str(Path(masks).resolve()) if masks is not None else None})
    return PreparedData(catalog=catalog, preprocess=preprocess, plan=plan, content_keys=keys,
                        unlabelled=pool_catalog, original_groups=original)


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


def without_classes(catalog: catalog_mod.Catalog, drop: list[str] | tuple[str, ...]) -> catalog_mod.Catalog:
    """The catalog minus every sample of the ``drop`` classes (and those classes themselves)."""
    unknown = sorted(set(drop) - set(catalog.classes))
    if unknown:
        raise FewlabelError(f"--drop-class names no class here: {', '.join(unknown)} "
                            f"(classes: {', '.join(catalog.classes)})", path=catalog.root)
    keep = [s.id for s in catalog.samples if s.label not in drop]
    # subset() keeps the class list (label indices stay put); a dropped class must leave it too.
    return dataclasses.replace(catalog.subset(keep), classes=[c for c in catalog.classes if c not in drop])



@dataclass
class StrategySpec:
    """One way of giving the encoder its first weights, plus how it is fine-tuned."""

    name: str = "scratch"
    encoder: str = "convnet"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None  # an encoder file, or (imagenet) a torchvision .pth
    semi: bool = False
    pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainConfig overrides
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig overrides
    # Accept an encoder file that records nothing of the images it saw (the user vouches for it).
    trust_encoder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StrategySpec:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FewlabelError(f"unknown strategy setting {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)


def default_spec(name: str, encoder: str | None = None, **overrides: Any) -> StrategySpec:
    """The registry's defaults for strategy ``name`` (``fewlabel.strategies``), with overrides."""
    entry = strategy_registry.get(name)
    spec = StrategySpec(name=name, encoder=entry.encoder, semi=entry.semi, finetune=dict(entry.finetune))
    if encoder is not None:
        spec.encoder = encoder
    known = {f.name for f in dataclasses.fields(StrategySpec)}
    for k, v in overrides.items():
        if k not in known:
            raise FewlabelError(f"strategy {name} has no setting {k!r}; it has {', '.join(sorted(known))}")
        setattr(spec, k, v)
    return spec


def encoder_record(meta: dict[str, Any]) -> list[str] | None:
    """The content keys an encoder file says it saw, or None when it records nothing."""
    seen = meta.get("seen_files")
    return None if seen is None else [str(k) for k in seen]


def check_encoder_file(path: str | Path, meta: dict[str, Any], data: PreparedData,
                       trust: bool = False) -> None:
    """Refuse an encoder that saw a test image (or a copy of one), or one that records nothing of what
    it saw unless the user trusts it. Published weights (ImageNet) never come through here."""
    seen = encoder_record(meta)
    if seen is None:
        if trust:
            return
        raise FewlabelError(
            "this encoder file records no list of the images it was trained on, so fewlabel cannot rule "
            "out that it saw test images; make it with `fewlabel pretrain --plan`, or pass "
            "--trust-encoder if you know it never saw this data", path=path)
    overlap = set(seen) & data.test_file_keys
    if overlap:
        raise FewlabelError(
            f"this encoder was trained on {len(overlap)} of the test images (or copies of them); pretrain "
            "again with --plan <the plan.json of this run> (or --holdout-from <this data> with the same "
            "--seed, --test-size, --count, --group-pattern) so the test images stay unseen", path=path)


def encoder_data_notes(meta: dict[str, Any], data: PreparedData, path: str | Path) -> list[str]:
    """Compare an encoder's saved preprocessing with the data it is about to be fine-tuned on.

    Incompatible intensity handling is refused (the encoder's first layer would read other units);
    another image size is adapted (convolutions and global pooling accept any size) and said."""
    saved = meta.get("preprocess")
    if not isinstance(saved, dict):
        return []
    now = data.preprocess.to_dict()
    for key in ("spatial_dims", "channels", "intensity"):
        if key in saved and key in now and saved[key] != now[key]:
            raise FewlabelError(f"encoder was pretrained with {key} {saved[key]!r}, but this data is "
                                f"prepared with {now[key]!r}; pretrain on data prepared the same way",
                                path=path)
    notes = []
    if "size" in saved and list(saved["size"]) != list(now.get("size") or []):
        size = "x".join(map(str, saved["size"]))
        notes.append(f"encoder pretrained at {size}, fine-tuned at {'x'.join(map(str, now['size']))}: "
                     "its convolutions are applied at the new size")
    return notes


def build_encoder(spec: StrategySpec, data: PreparedData, seed: int = 0,
                  notes: list[str] | None = None) -> tuple[Encoder, list[str]]:
    """A fresh encoder with the strategy's first weights and the content keys of the images those
    weights saw. A random start depends on ``seed`` only."""
    import torch

    torch.manual_seed(seed)
    entry = strategy_registry.get(spec.name)
    if spec.encoder_weights and not entry.pretrained_weights:
        from fewlabel.models.io import load_encoder

        encoder, meta = load_encoder(spec.encoder_weights)
        check_encoder_file(spec.encoder_weights, meta, data, trust=spec.trust_encoder)
        if encoder.in_channels != data.channels or encoder.spatial_dims != data.spatial_dims:
            raise FewlabelError(
                f"encoder has {encoder.in_channels} channel(s), {encoder.spatial_dims}D, but the data "
                f"has {data.channels} channel(s), {data.spatial_dims}D", path=spec.encoder_weights)
        if notes is not None:
            notes.extend(encoder_data_notes(meta, data, spec.encoder_weights))
        return encoder, encoder_record(meta) or []
    if entry.pretrained_weights and data.spatial_dims != 2:
        raise FewlabelError("ImageNet weights exist for 2D images only; use scratch, segmentation or "
                            "ssl for 3D volumes")
    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, **spec.encoder_kwargs)
    if entry.pretrained_weights:
        from fewlabel.models.imagenet import load_imagenet_weights

        # download=True: fetched into the torch hub cache when online; offline, a one-line error.
        load_imagenet_weights(encoder, path=spec.encoder_weights, download=True)
    return encoder, []


def prepare_strategy(spec: StrategySpec, data: PreparedData, cache_dir: str | Path, seed: int = 0,
                     progress: bool | None = None) -> StrategySpec:
    """Run (or fetch from the cache) the strategy's pretraining; returns the spec with its weights.

    The encoder file records the content keys of every image it saw and the plan it was made under,
    so it can be refused later for a test set it has seen. Its cache key depends on the pretraining
    inputs only: changing a test image leaves it (and the pool arrays) untouched."""
    entry = strategy_registry.get(spec.name)
    if entry.prepare is None or spec.encoder_weights:
        return spec
    from fewlabel.prepare import prepare_encoder
    from fewlabel.prepare.common import PretrainConfig

    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, **spec.encoder_kwargs)
    inputs = data.pretrain_inputs(entry.needs or "pool")
    config = PretrainConfig.from_dict({"seed": seed, **spec.pretrain})
    if progress is not None:
        config.progress = progress
    path = prepare_encoder(entry.prepare, inputs.images, inputs.masks, encoder_config=encoder.config,
                           config=config, cache_dir=cache_dir, data_fingerprint=inputs.fingerprint,
                           val_images=inputs.val_images, val_masks=inputs.val_masks,
                           extra_meta={"seen_files": inputs.seen_files,
                                       "plan_fingerprint": data.plan.fingerprint,
                                       "preprocess": data.preprocess.to_dict()})
    return dataclasses.replace(spec, encoder_weights=str(path))


@dataclass
class CellResult:
    classifier: Classifier
    fit: FitResult
    metrics: dict[str, Any]
    proba_test: np.ndarray
    train_ids: list[str]
    val_ids: list[str]
    train_seconds: float
    finetune_config: FinetuneConfig
    seen_files: list[str] = field(default_factory=list)  # content keys the classifier's weights saw
    notes: list[str] = field(default_factory=list)


def finetune_config_for(spec: StrategySpec, base: FinetuneConfig | None = None) -> FinetuneConfig:
    base_dict = (base or FinetuneConfig()).to_dict()
    base_dict.update(spec.finetune)
    if spec.semi:
        base_dict["semi"] = True
    return FinetuneConfig.from_dict(base_dict)


def split_labelled(data: PreparedData, labelled_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Training and validation ids of a labelled draw (``splits.nested_validation``; ``seed`` is the
    seed the draw was made with), both from the labelled draw, never from test.

    The threshold counts groups (patients), not images: 2 patients of 4 slices each are 2
    independent samples, and a validation split would take half the training patients away.
    """
    return splits.nested_validation(data.catalog, data.pool_ids, labelled_ids, seed=seed)


def fit_cell(data: PreparedData, labelled_ids: list[str], spec: StrategySpec, seed: int,
             finetune_config: FinetuneConfig | None = None, *, train_ids: list[str] | None = None,
             val_ids: list[str] | None = None) -> CellResult:
    """Fine-tune one strategy on one labelled draw and evaluate it on the fixed test set.

    ``train_ids``/``val_ids``: the plan's split of this draw; without them it is computed from the
    draw with ``seed`` (``split_labelled``)."""
    leaked = set(labelled_ids) & set(data.test_ids)
    if leaked:  # a guard, not a user error: it means a bug upstream
        raise AssertionError(f"{len(leaked)} test images in the labelled draw")
    if not labelled_ids:
        raise FewlabelError("no labelled images to fine-tune on (labels per class must be at least 1)",
                            path=data.catalog.root)
    config = finetune_config_for(spec, finetune_config)
    if train_ids is None or val_ids is None:
        train_ids, val_ids = split_labelled(data, labelled_ids, seed)
    x_train, y_train = data.arrays(train_ids)
    x_val, y_val = data.arrays(val_ids) if val_ids else (None, None)
    notes: list[str] = []
    encoder, seen = build_encoder(spec, data, seed=seed, notes=notes)
    seen_keys = set(seen) | set(data.keys_of(list(train_ids) + list(val_ids)))
    x_pool = data.unlabelled_arrays() if spec.semi else None
    if spec.semi and x_pool is not None:
        seen_keys |= {data.unlabelled_keys[i] for i in data.pool_without_test_groups()}
    if spec.semi and x_pool is None:
        # No separate pool: the labelled pool minus this draw plays the unlabelled part.
        drawn = set(labelled_ids)
        rest = [i for i in data.pool_ids if i not in drawn]
        x_pool = tensors.load_images(data.catalog, rest, data.preprocess) if rest else None
        seen_keys |= set(data.keys_of(rest))
    t0 = time.perf_counter()
    classifier, fit_result = finetune(x_train, y_train, x_val, y_val, data.num_classes, encoder, config,
                                      seed=seed, x_unlabelled=x_pool)
    train_seconds = time.perf_counter() - t0
    x_test, y_test = data.test_arrays
    proba = predict_proba(classifier, x_test, device=config.device)
    metrics = classification_metrics(y_test, proba, class_names=data.class_names, seed=seed,
                                     groups=data.catalog.groups(data.test_ids))
    return CellResult(classifier=classifier, fit=fit_result, metrics=metrics, proba_test=proba,
                      train_ids=list(train_ids), val_ids=list(val_ids), train_seconds=train_seconds,
                      finetune_config=config, seen_files=sorted(seen_keys), notes=notes)


def model_config(data: PreparedData, spec: StrategySpec, cell: CellResult, seed: int) -> dict[str, Any]:
    """What a model folder records so ``predict`` can repeat the preprocessing, a reader can trust it,
    and a later run can refuse it as an encoder for a test set it has seen (``provenance``)."""
    from fewlabel import __version__

    return {
        "format": "fewlabel-model", "fewlabel_version": __version__,
        "class_names": data.class_names, "preprocess": data.preprocess.to_dict(),
        "strategy": spec.to_dict(), "finetune": cell.finetune_config.to_dict(), "seed": seed,
        "data_fingerprint": data.fingerprint(), "data_root": str(data.catalog.root),
        "n_train": len(cell.train_ids), "n_val": len(cell.val_ids),
        "best_epoch": cell.fit.best_epoch, "epochs": cell.fit.epochs,
        "metrics": {k: v for k, v in cell.metrics.items() if k != "confusion_matrix"},
        "provenance": {"seen_files": cell.seen_files, "plan_fingerprint": data.plan.fingerprint,
                       "preprocess": data.preprocess.to_dict()},
    }


