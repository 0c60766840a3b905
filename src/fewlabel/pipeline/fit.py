"""One cell: fine-tune a strategy's encoder on one labelled draw, score the fixed test set, and the
record a model folder keeps (including what its weights saw)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fewlabel import strategies as strategy_registry
from fewlabel.data import splits, tensors
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.metrics import classification_metrics, group_metrics
from fewlabel.models.heads import Classifier
from fewlabel.pipeline.data import PreparedData, check_draw
from fewlabel.pipeline.encoders import StrategySpec, build_encoder
from fewlabel.pipeline.frozen import (
    FROZEN_STRATEGIES,
    curve_only_reason,
    fit_frozen,
    frozen_encoder,
    frozen_recipe,
)
from fewlabel.pipeline.region import region_arrays, region_note
from fewlabel.training.compute import resolved
from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba
from fewlabel.training.loop import FitResult
from fewlabel.training.recipe import recipe_over
from fewlabel.version import __version__


@dataclass
class CellResult:
    classifier: Classifier | None  # None: a strategy without a model to save (knn)
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
    """The strategy's recipe (``spec.finetune``) over ``base``, except where the user set a value
    (named in ``base.explicit``, or off its default): ``--set lr=...`` is never silently replaced."""
    base_dict = recipe_over((base or FinetuneConfig()).to_dict(), spec.finetune)
    if spec.semi:
        base_dict["semi"] = True
    if spec.name in FROZEN_STRATEGIES:
        base_dict = frozen_recipe(base_dict)
    # concrete device, precision and members, so a saved model says what it was trained with
    return resolved(FinetuneConfig.from_dict(base_dict))


def split_labelled(data: PreparedData, labelled_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Training and validation ids of a labelled draw (``splits.nested_validation``; ``seed`` is the
    seed the draw was made with), both from the labelled draw, never from test.

    The threshold counts groups (patients), not images: 2 patients of 4 slices each are 2
    independent samples, and a validation split would take half the training patients away.
    """
    return splits.nested_validation(data.catalog, data.pool_ids, labelled_ids, seed=seed)


@dataclass
class CellInputs:
    """Everything one cell trains on, made before any training: arrays, the encoder, what it saw."""

    train_ids: list[str]
    val_ids: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_pool: np.ndarray | None
    encoder: Any
    seen_files: list[str]
    notes: list[str]
    # The test images as this strategy's classifier sees them (whole, or cropped to their region).
    x_test: np.ndarray | None = None


def cell_inputs(data: PreparedData, labelled_ids: list[str], spec: StrategySpec, seed: int, *,
                train_ids: list[str] | None = None, val_ids: list[str] | None = None,
                hold_out: bool = True, with_pool: bool = False) -> CellInputs:
    """A cell's training material: the plan's split of its draw (``train_ids``/``val_ids``; without
    them computed from the draw with ``seed``; with ``hold_out`` False all of the draw trains), its
    arrays, its encoder, the unlabelled pool when FixMatch (``spec.semi``) or pseudo-labelling
    (``with_pool``) trains on it, and the content keys of every image its weights will have seen (the
    encoder's record, the draw, the pool)."""
    check_draw(data, labelled_ids)
    if train_ids is None or val_ids is None:
        train_ids, val_ids = split_labelled(data, labelled_ids, seed)
    if not hold_out:
        train_ids, val_ids = list(train_ids) + list(val_ids), []
    x_train, y_train = data.arrays(train_ids)
    x_val, y_val = data.arrays(val_ids) if val_ids else (None, None)
    x_test = data.test_arrays[0]
    notes: list[str] = []
    encoder, seen = build_encoder(spec, data, seed=seed, notes=notes)  # refuses a file that saw a test image
    with_pool = with_pool or spec.semi
    if strategy_registry.get(spec.name).input == "region":
        if not spec.encoder_weights or with_pool:
            raise FewlabelError(f"{spec.name} needs its prepared segmentation encoder (and no FixMatch or "
                                "pseudo-labels: the pool is not cropped)",
                                path=data.catalog.root)
        # After the encoder file's check: every image (train, validation, test) cropped by the U-Net
        # beside it, from the image alone.
        x_train = region_arrays(data, list(train_ids), spec.encoder_weights)
        x_val = region_arrays(data, list(val_ids), spec.encoder_weights) if val_ids else None
        x_test = region_arrays(data, list(data.test_ids), spec.encoder_weights)
        notes.append(region_note(data, list(train_ids) + list(val_ids) + list(data.test_ids),
                                 spec.encoder_weights))
    seen_keys = set(seen) | data.seen_keys_of(list(train_ids) + list(val_ids))
    x_pool = data.unlabelled_arrays() if with_pool else None
    if with_pool and x_pool is not None:
        seen_keys |= data.seen_keys_of(data.pool_without_test_groups(), unlabelled=True)
    if with_pool and x_pool is None:
        # No separate pool: the labelled pool minus this draw plays the unlabelled part.
        drawn = set(labelled_ids)
        rest = [i for i in data.pool_ids if i not in drawn]
        x_pool = tensors.load_images(data.catalog, rest, data.preprocess) if rest else None
        seen_keys |= data.seen_keys_of(rest)
    return CellInputs(list(train_ids), list(val_ids), x_train, y_train, x_val, y_val, x_pool, encoder,
                      sorted(seen_keys), notes, x_test)


def score_metrics(data: PreparedData, proba: np.ndarray, seed: int) -> dict[str, Any]:
    """The metrics of test probabilities ``proba`` (rows in ``data.test_ids`` order), with patients'."""
    y_test = data.catalog.labels(data.test_ids)
    groups = data.catalog.groups(data.test_ids)
    metrics = classification_metrics(y_test, proba, class_names=data.class_names, seed=seed, groups=groups)
    patient = group_metrics(y_test, proba, groups, class_names=data.class_names, seed=seed)
    if patient is not None:
        metrics["patient"] = patient
    return metrics


def score_cell(data: PreparedData, inputs: CellInputs, classifier: Classifier, fit_result: FitResult,
               config: FinetuneConfig, seed: int, train_seconds: float,
               proba: np.ndarray | None = None) -> CellResult:
    """Test metrics of a trained cell (``proba`` when the caller already scored the test set)."""
    if proba is None:
        x_test = inputs.x_test if inputs.x_test is not None else data.test_arrays[0]
        proba = predict_proba(classifier, x_test, device=config.device)
    metrics = score_metrics(data, proba, seed)
    return CellResult(classifier=classifier, fit=fit_result, metrics=metrics, proba_test=proba,
                      train_ids=inputs.train_ids, val_ids=inputs.val_ids, train_seconds=train_seconds,
                      finetune_config=config, seen_files=inputs.seen_files, notes=inputs.notes)


def fit_cell(data: PreparedData, labelled_ids: list[str], spec: StrategySpec, seed: int,
             finetune_config: FinetuneConfig | None = None, *, train_ids: list[str] | None = None,
             val_ids: list[str] | None = None, model_needed: bool = True) -> CellResult:
    """Fine-tune one strategy on one labelled draw and evaluate it on the fixed test set.

    ``probe`` and ``knn`` fit a head on cached frozen features instead (``pipeline.frozen``). knn
    makes no model folder: with ``model_needed`` (a caller that saves the classifier, ``train``) it
    is refused before any work; a curve cell passes False."""
    config = finetune_config_for(spec, finetune_config)
    if spec.name in FROZEN_STRATEGIES:
        done = fit_frozen(data, labelled_ids, spec, config, train_ids=train_ids, val_ids=val_ids,
                          model_needed=model_needed)
        return CellResult(classifier=done.classifier, fit=done.fit,
                          metrics=score_metrics(data, done.proba_test, seed), proba_test=done.proba_test,
                          train_ids=done.train_ids, val_ids=[],
                          train_seconds=done.seconds, finetune_config=config, seen_files=done.seen_files,
                          notes=done.notes)
    inputs = cell_inputs(data, labelled_ids, spec, seed, train_ids=train_ids, val_ids=val_ids,
                         hold_out=config.hold_out, with_pool=config.pseudo_per_label > 0)
    t0 = time.perf_counter()
    classifier, fit_result = finetune(inputs.x_train, inputs.y_train, inputs.x_val, inputs.y_val,
                                      data.num_classes, inputs.encoder, config, seed=seed,
                                      x_unlabelled=inputs.x_pool)
    return score_cell(data, inputs, classifier, fit_result, config, seed, time.perf_counter() - t0)


def check_given_encoder(spec: StrategySpec, data: PreparedData) -> None:
    """Build once, as the fit will, the encoder of a strategy given a file (``encoder_weights``): one
    that cannot load, holds another architecture, does not fit the data or saw a test image is refused
    before any work is said to start or written."""
    # a ViT starts from a checkpoint the user holds: none given is refused here too, not cell by cell
    needs_file = spec.encoder == "vit" and strategy_registry.get(spec.name).pretrained_weights
    if not spec.encoder_weights and not needs_file:
        return
    build = frozen_encoder if spec.name in FROZEN_STRATEGIES else build_encoder
    build(spec, data, notes=[])


def model_config(data: PreparedData, spec: StrategySpec, cell: CellResult, seed: int) -> dict[str, Any]:
    """What a model folder records so ``predict`` can repeat the preprocessing, a reader can trust it,
    and a later run can refuse it as an encoder for a test set it has seen (``provenance``)."""
    if cell.classifier is None:
        raise FewlabelError(curve_only_reason(spec.name))
    return {
        "format": "fewlabel-model", "fewlabel_version": __version__,
        "class_names": data.class_names, "preprocess": data.preprocess.to_dict(),
        "trained_sizes": None if data.pool_size_range is None else [list(s) for s in data.pool_size_range],
        "strategy": spec.to_dict(), "finetune": cell.finetune_config.to_dict(), "seed": seed,
        "data_fingerprint": data.fingerprint(), "data_root": str(data.catalog.root),
        "n_train": len(cell.train_ids), "n_val": len(cell.val_ids),
        "best_epoch": cell.fit.best_epoch, "epochs": cell.fit.epochs,
        "metrics": {k: v for k, v in cell.metrics.items() if k != "confusion_matrix"},
        "provenance": {"seen_files": cell.seen_files, "plan_fingerprint": data.plan.fingerprint,
                       "preprocess": data.preprocess.to_dict()},
    }
