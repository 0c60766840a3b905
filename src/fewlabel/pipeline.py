"""What ``train`` and ``curve`` share: data in, one group-aware test hold-out, a strategy's encoder
prepared on the pool only, one fine-tuning and its test metrics.

Rigour lives here: the test ids are chosen first and never reach preprocessing statistics,
pretraining, training or model selection; validation is drawn from the labelled ids only; the
unlabelled pool loses every image whose group (patient, smear) is in the test set.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data import catalog as catalog_mod
from fewlabel.data import splits, tensors
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.metrics import classification_metrics
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.heads import Classifier
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba
from fewlabel.training.loop import FitResult

STRATEGIES = ("scratch", "imagenet", "gan", "segmentation", "ssl", "semi")
PRETRAINED = ("gan", "segmentation", "ssl")
# With fewer labelled images per class than this, no validation split is drawn and training runs a
# fixed number of epochs (the protocol of ../shared/anchors.md, section 6).
MIN_PER_CLASS_FOR_VALIDATION = 5


def _real(address: str) -> str:
    """A sample's file address with its file part resolved (symlinks, ``..``); NPZ members kept."""
    from fewlabel.data.readers import NPZ_SEP

    file_part, sep, member = address.partition(NPZ_SEP)
    return os.path.realpath(file_part) + sep + member


@dataclass
class PreparedData:
    """A labelled catalog split once into a test set and a pool, with its preprocessing fitted."""

    catalog: catalog_mod.Catalog
    preprocess: tensors.Preprocess
    pool_ids: list[str]
    test_ids: list[str]
    seed: int
    test_size: float | int | str  # "given": the data's own test split
    unlabelled: catalog_mod.Catalog | None = None

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
        """Content keys of the test images (``data.identity``): what no pretraining may have seen."""
        from fewlabel.data.identity import file_keys

        return set(file_keys(self.catalog.by_id[i].path for i in self.test_ids))

    @cached_property
    def test_groups(self) -> set[str]:
        return set(self.catalog.groups(self.test_ids))

    def pool_without_test_groups(self) -> list[str]:
        """Ids of the unlabelled pool whose group is not among the test set's groups.

        A pool file that IS a labelled image or mask (the pool folder holds the labelled data, e.g.
        ``--unlabelled`` = the manifest's folder or ``DATA/images``) takes that sample's group: pool
        ids are relative to another root, so their own groups would not match the test groups."""
        return list(self._kept_pool)

    @cached_property
    def _kept_pool(self) -> tuple[str, ...]:
        if self.unlabelled is None:
            return ()
        owner: dict[str, str] = {}
        for s in self.catalog.samples:
            owner[_real(s.path)] = s.group
            if s.mask is not None:
                owner[_real(s.mask)] = s.group
        test_groups = self.test_groups
        return tuple(s.id for s in self.unlabelled.samples
                     if s.group not in test_groups and owner.get(_real(s.path)) not in test_groups)

    def unlabelled_arrays(self) -> np.ndarray | None:
        """The unlabelled pool, preprocessed like the labelled images, test groups removed."""
        if self.unlabelled is None:
            return None
        ids = self.pool_without_test_groups()
        if not ids:
            return None
        return tensors.load_images(self.unlabelled, ids, self.preprocess)

    def pretrain_images(self) -> np.ndarray:
        """What GAN and SSL pretraining see: the unlabelled pool when there is one, else the
        labelled pool with its labels ignored. Never a test image."""
        pool = self.unlabelled_arrays()
        if pool is not None:
            return pool
        return tensors.load_images(self.catalog, self.pool_ids, self.preprocess)

    def pretrain_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Images and masks of the pool (never the test set's masks) for segmentation pretraining."""
        ids = [i for i in self.pool_ids if self.catalog.by_id[i].mask is not None]
        if not ids:
            raise FewlabelError("no masks found for the training pool: segmentation pretraining needs "
                                "images with masks (images/ + masks/ layout or --masks DIR)",
                                path=self.catalog.root)
        return (tensors.load_images(self.catalog, ids, self.preprocess),
                tensors.load_masks(self.catalog, ids, self.preprocess))

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.catalog.fingerprint().encode())
        h.update(repr((sorted(self.test_ids), self.seed, self.test_size)).encode())
        h.update(repr(sorted(self.preprocess.to_dict().items())).encode())
        if self.unlabelled is not None:
            h.update(self.unlabelled.fingerprint().encode())
            by_group = tuple(s.id for s in self.unlabelled.samples if s.group not in self.test_groups)
            if self._kept_pool != by_group:
                # The pool holds labelled files (see pool_without_test_groups): pretraining sees a
                # different pool than group matching alone gave, so encoders cached before must not match.
                h.update(repr(self._kept_pool).encode())
        return h.hexdigest()[:16]


def prepare_data(
    data: str | Path | None = None, *, masks: str | Path | None = None, group_pattern: str | None = None,
    test_size: float | int = 0.2, seed: int = 0, image_size: int | tuple[int, ...] | None = None,
    unlabelled: str | Path | None = None, catalog: catalog_mod.Catalog | None = None,
    resize: str = "resize", count: str = "images", drop_classes: list[str] | tuple[str, ...] = (),
    test_split: str = "auto",
) -> PreparedData:
    """Catalog the data, hold out a group-aware stratified test set, fit preprocessing on the rest.

    ``count`` says what an integer ``test_size`` counts per class: ``images`` or ``groups`` (patients).
    ``drop_classes``: classes left out before anything is split (e.g. BCCD's basophil, 2 images).
    ``test_split``: ``auto`` uses the data's own test split when a manifest ``split`` column or a
    MedMNIST ``.npz`` defines one (the designated test images must never train), else draws one;
    ``given`` requires it; ``draw`` ignores it and draws by ``test_size``.
    """
    if catalog is None:
        if data is None:
            raise FewlabelError("no data given")
        catalog = catalog_mod.load_catalog(data, masks=masks, group_pattern=group_pattern)
    if drop_classes:
        catalog = without_classes(catalog, drop_classes)
    if test_split not in ("auto", "given", "draw"):
        raise FewlabelError(f"test_split must be auto, given or draw, not {test_split!r}")
    has_given = any(smp.split == "test" for smp in catalog.samples)
    if test_split == "given" or (test_split == "auto" and has_given):
        pool_ids, test_ids = splits.predefined_test(catalog)
        test_size = "given"
    else:
        pool_ids, test_ids = splits.holdout_test(catalog, test_size=test_size, seed=seed, count=count)
    size = (image_size,) * 2 if isinstance(image_size, int) else image_size
    pool_catalog = None
    if unlabelled is not None:
        pool_catalog = catalog_mod.load_pool(unlabelled, group_pattern=group_pattern)
    preprocess = tensors.fit_preprocess(catalog, pool_ids, image_size=size, resize=resize)
    if size is not None and isinstance(image_size, int) and preprocess.spatial_dims == 3:
        preprocess = dataclasses.replace(preprocess, size=(image_size,) * 3)
    return PreparedData(catalog=catalog, preprocess=preprocess, pool_ids=list(pool_ids),
                        test_ids=list(test_ids), seed=seed, test_size=test_size, unlabelled=pool_catalog)


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StrategySpec:
        return cls(**d)


def default_spec(name: str, encoder: str | None = None, **overrides: Any) -> StrategySpec:
    """The house defaults per strategy (see README: why each choice)."""
    if name not in STRATEGIES:
        raise FewlabelError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    spec = StrategySpec(name=name)
    if name == "imagenet":
        spec.encoder = "mobilenet_v2"
        # ImageNet features are made at 224 px: the encoder resizes its input, the data stay native.
        spec.encoder_kwargs = {"input_size": 224}
        # The plain fine-tune that beat the 96-px recipe on PBC-8 (benchmarks/vs_plain.py): one rate
        # for all layers, the 8 flips / quarter turns, an epoch = one pass over the labels.
        spec.finetune = {"lr": 1e-4, "encoder_lr": 1e-4, "weight_decay": 0.0, "augment": "dihedral",
                         "min_steps_per_epoch": 1}
    elif name in PRETRAINED:
        spec.finetune = {"lr": 1e-3, "encoder_lr": 3e-4}
    if name == "semi":
        spec.semi = True
    if encoder is not None:
        spec.encoder = encoder
    for k, v in overrides.items():
        setattr(spec, k, v)
    return spec


def build_encoder(spec: StrategySpec, data: PreparedData, seed: int = 0) -> Encoder:
    """A fresh encoder with the strategy's first weights; a random start depends on ``seed`` only."""
    import torch

    torch.manual_seed(seed)
    if spec.encoder_weights and spec.name != "imagenet":
        from fewlabel.models.io import load_encoder

        encoder, meta = load_encoder(spec.encoder_weights)
        seen = set(meta.get("seen_files") or ())
        overlap = seen & data.test_file_keys if seen else set()
        if overlap:
            raise FewlabelError(
                f"this encoder was pretrained on {len(overlap)} of the test images; pretrain again with "
                "--holdout-from <this data> (same --seed, --test-size, --group-pattern) so the test "
                "images stay unseen", path=spec.encoder_weights)
        if encoder.in_channels != data.channels or encoder.spatial_dims != data.spatial_dims:
            raise FewlabelError(
                f"encoder has {encoder.in_channels} channel(s), {encoder.spatial_dims}D, but the data "
                f"has {data.channels} channel(s), {data.spatial_dims}D", path=spec.encoder_weights)
        return encoder
    if spec.name == "imagenet" and data.spatial_dims != 2:
        raise FewlabelError("ImageNet weights exist for 2D images only; use scratch, segmentation or "
                            "ssl for 3D volumes")
    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, **spec.encoder_kwargs)
    if spec.name == "imagenet":
        from fewlabel.models.imagenet import load_imagenet_weights

        # download=True: fetched into the torch hub cache when online; offline, a one-line error.
        load_imagenet_weights(encoder, path=spec.encoder_weights, download=True)
    return encoder


def prepare_strategy(spec: StrategySpec, data: PreparedData, cache_dir: str | Path, seed: int = 0,
                     progress: bool | None = None) -> StrategySpec:
    """Run (or fetch from the cache) the strategy's pretraining; returns the spec with its weights."""
    if spec.name not in PRETRAINED or spec.encoder_weights:
        return spec
    from fewlabel.prepare import PretrainConfig, prepare_encoder

    encoder = create_encoder(spec.encoder, in_channels=data.channels, spatial_dims=data.spatial_dims,
                             image_size=data.image_size, **spec.encoder_kwargs)
    masks = None
    if spec.name == "segmentation":
        images, masks = data.pretrain_masks()
    else:
        images = data.pretrain_images()
    config = PretrainConfig(**{"seed": seed, **spec.pretrain})
    if progress is not None and hasattr(config, "progress"):
        config.progress = progress
    path = prepare_encoder(spec.name, images, masks, encoder_config=encoder.config, config=config,
                           cache_dir=cache_dir, data_fingerprint=data.fingerprint())
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


def finetune_config_for(spec: StrategySpec, base: FinetuneConfig | None = None) -> FinetuneConfig:
    base_dict = (base or FinetuneConfig()).to_dict()
    base_dict.update(spec.finetune)
    if spec.semi:
        base_dict["semi"] = True
    return FinetuneConfig.from_dict(base_dict)


def split_labelled(data: PreparedData, labelled_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Training and validation ids, both from the labelled draw (never from test).

    The threshold counts groups (patients), not images: 2 patients of 4 slices each are 2
    independent samples, and a validation split would take half the training patients away.
    """
    labels = data.catalog.labels(labelled_ids)
    groups = data.catalog.groups(labelled_ids)
    per_class: dict[int, set[str]] = {}
    for label, group in zip(labels, groups, strict=True):
        per_class.setdefault(int(label), set()).add(group)
    present = np.array([len(g) for g in per_class.values()])
    if present.size == 0 or present.min() < MIN_PER_CLASS_FOR_VALIDATION:
        return list(labelled_ids), []
    train_ids, val_ids = splits.split_validation(data.catalog, labelled_ids, fraction=0.2, seed=seed)
    return list(train_ids), list(val_ids)


def fit_cell(data: PreparedData, labelled_ids: list[str], spec: StrategySpec, seed: int,
             finetune_config: FinetuneConfig | None = None) -> CellResult:
    """Fine-tune one strategy on one labelled draw and evaluate it on the fixed test set."""
    leaked = set(labelled_ids) & set(data.test_ids)
    if leaked:  # a guard, not a user error: it means a bug upstream
        raise AssertionError(f"{len(leaked)} test images in the labelled draw")
    if not labelled_ids:
        raise FewlabelError("no labelled images to fine-tune on (labels per class must be at least 1)",
                            path=data.catalog.root)
    config = finetune_config_for(spec, finetune_config)
    train_ids, val_ids = split_labelled(data, labelled_ids, seed)
    x_train, y_train = data.arrays(train_ids)
    x_val, y_val = data.arrays(val_ids) if val_ids else (None, None)
    encoder = build_encoder(spec, data, seed=seed)
    x_pool = data.unlabelled_arrays() if spec.semi else None
    if spec.semi and x_pool is None:
        # No separate pool: the labelled pool minus this draw plays the unlabelled part.
        drawn = set(labelled_ids)
        rest = [i for i in data.pool_ids if i not in drawn]
        x_pool = tensors.load_images(data.catalog, rest, data.preprocess) if rest else None
    t0 = time.perf_counter()
    classifier, fit_result = finetune(x_train, y_train, x_val, y_val, data.num_classes, encoder, config,
                                      seed=seed, x_unlabelled=x_pool)
    train_seconds = time.perf_counter() - t0
    x_test, y_test = data.test_arrays
    proba = predict_proba(classifier, x_test, device=config.device)
    metrics = classification_metrics(y_test, proba, class_names=data.class_names, seed=seed,
                                     groups=data.catalog.groups(data.test_ids))
    return CellResult(classifier=classifier, fit=fit_result, metrics=metrics, proba_test=proba,
                      train_ids=train_ids, val_ids=val_ids, train_seconds=train_seconds,
                      finetune_config=config)


def model_config(data: PreparedData, spec: StrategySpec, cell: CellResult, seed: int) -> dict[str, Any]:
    """What a model folder records so ``predict`` can repeat the preprocessing and a reader can trust it."""
    from fewlabel import __version__

    return {
        "format": "fewlabel-model", "fewlabel_version": __version__,
        "class_names": data.class_names, "preprocess": data.preprocess.to_dict(),
        "strategy": spec.to_dict(), "finetune": cell.finetune_config.to_dict(), "seed": seed,
        "data_fingerprint": data.fingerprint(), "data_root": str(data.catalog.root),
        "n_train": len(cell.train_ids), "n_val": len(cell.val_ids),
        "best_epoch": cell.fit.best_epoch, "epochs": cell.fit.epochs,
        "metrics": {k: v for k, v in cell.metrics.items() if k != "confusion_matrix"},
    }
