"""The frozen-feature strategies: ``probe`` (a linear head on an encoder that is never trained) and
``knn`` (cosine nearest neighbours among the labelled images), both on features from the feature
cache (``pipeline.feature_cache``), so a curve pays for the encoder once and a cell costs seconds.

One cell: the encoder is built as ``build_encoder`` builds the strategy's (the ImageNet MobileNetV2
by default; with another ``--encoder``, from its ``--encoder-weights`` file: ``frozen_encoder``), its
features of every drawn label and of the test images are read from the cache (computed
once, on the fine-tuning device, in bounded batches), and

* ``probe`` fits ``training.probe.fit_logistic`` on the labelled images' views (all drawn labels:
  nothing is held out, there is no epoch to choose), puts the head on the encoder as an ordinary
  ``Classifier`` (a model folder that ``predict`` and ``explain`` use as any other), and scores the
  test images' cached views with it, averaged over the views (what ``predict_proba`` computes with
  test-time augmentation, without running the encoder again);
* ``knn`` scores the test images by ``training.probe.knn_proba`` among the labelled images. Its
  "model" is the labelled images' features, which a model folder does not hold: it is a curve-only
  strategy, and ``train`` refuses it in one line.

Leaks: the draw never holds a test image (checked). The test images' features sit in the cache beside
the labelled ones' (keyed by content); they are only read to score: the head's weights, its centring
and scale, kNN's bank and centring come from the labelled images alone.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewlabel import strategies as strategy_registry
from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import PRETRAINED_WEIGHTS, Encoder
from fewlabel.models.heads import Classifier
from fewlabel.pipeline.data import PreparedData, check_draw
from fewlabel.pipeline.encoders import StrategySpec, build_encoder
from fewlabel.pipeline.feature_cache import FeatureCache, FeatureStats
from fewlabel.settings import select_device
from fewlabel.training.loop import FitResult
from fewlabel.training.probe import KNN_K, KNN_T, descriptors, fit_logistic, head_proba, knn_proba, set_linear
from fewlabel.training.recipe import FinetuneConfig, class_weights

# strategy -> its head on the cached features
FROZEN_STRATEGIES: dict[str, str] = {"probe": "logistic", "knn": "knn"}
CURVE_ONLY = ("knn",)
# Encoders ``build_encoder`` starts from a checkpoint the user names, as it starts MobileNetV2 from
# ImageNet's (a strategy with published weights and ``--encoder-weights``).
CHECKPOINT_ENCODERS = ("vit",)


def curve_only_reason(name: str) -> str:
    """The one line that says why ``train`` makes no model of ``name``, and what to run instead."""
    return (f"{name} is a curve-only strategy: its predictions come from the labelled images' features, "
            f"which a model folder does not hold; run it in `fewlabel curve --strategies {name}`, or "
            "train --strategy probe for a model on the same frozen features")


def frozen_recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """What makes a frozen-feature cell, over any user setting: the encoder frozen, one head, every
    drawn label fitting it. FixMatch and pseudo-labels train an encoder: refused, not ignored."""
    if settings.get("semi") or float(settings.get("pseudo_per_label") or 0) > 0:
        raise FewlabelError("probe and knn fit a head on frozen features: semi (FixMatch) and "
                            "pseudo_per_label do not apply to them")
    return {**settings, "freeze_encoder": True, "ensemble": 1, "hold_out": False}


def frozen_encoder(spec: StrategySpec, data: PreparedData,
                   notes: list[str]) -> tuple[Encoder, list[str]]:
    """The encoder whose features the head sees, and the content keys its weights saw.

    ``build_encoder`` builds it as for ``imagenet``: the registry's MobileNetV2 from the ImageNet
    weights, a ``vit`` from its ``--encoder-weights`` checkpoint (DINOv2, timm, Hugging Face). An
    architecture with no published weights (convnet, schouten) is built as ``scratch`` builds one:
    from its ``--encoder-weights`` fewlabel encoder file (checked for what it saw) or its initial
    weights. Those come from seed 0, not the cell's: the frozen encoder is one encoder for every cell
    of a curve (only the draw changes), so the cells share its cached features."""
    entry = strategy_registry.get(spec.name)
    published = (spec.encoder == entry.encoder or spec.encoder in CHECKPOINT_ENCODERS
                 or (spec.encoder, entry.init) in PRETRAINED_WEIGHTS)
    if not published:
        if not spec.encoder_weights:
            notes.append(f"{spec.encoder} without --encoder-weights: features of its initial weights")
        spec = dataclasses.replace(spec, name="scratch")
    return build_encoder(spec, data, seed=0, notes=notes)


def labelled_ids_of(data: PreparedData, labelled_ids: list[str], train_ids: list[str] | None,
                    val_ids: list[str] | None) -> list[str]:
    """Every drawn label, in the plan's order (its training part, then its validation part)."""
    check_draw(data, labelled_ids)
    if train_ids is None or val_ids is None:
        return list(labelled_ids)
    ids = list(train_ids) + list(val_ids)
    if set(ids) != set(labelled_ids):
        raise AssertionError("the plan's split of the draw is not the draw")
    return ids


@dataclass
class FrozenFit:
    """What a frozen-feature cell made: ``fit_cell`` scores and records it like any other cell."""

    classifier: Classifier | None  # None for knn: nothing a model folder can hold
    proba_test: np.ndarray  # (n_test, K), rows in ``data.test_ids`` order
    fit: FitResult
    train_ids: list[str]
    seen_files: list[str]
    notes: list[str]
    seconds: float


def fit_frozen(data: PreparedData, labelled_ids: list[str], spec: StrategySpec, config: FinetuneConfig, *,
               train_ids: list[str] | None = None, val_ids: list[str] | None = None,
               model_needed: bool = True) -> FrozenFit:
    """One probe or knn cell on the labelled draw (``config``: ``finetune_config_for``'s, concrete).

    ``config.augment`` other than ``none``: the head learns from the views; ``config.tta``: the test
    images are scored over their views; ``config.balance`` ``loss_weights``: classes weigh equally."""
    head = FROZEN_STRATEGIES[spec.name]
    if model_needed and spec.name in CURVE_ONLY:
        raise FewlabelError(curve_only_reason(spec.name))
    ids = labelled_ids_of(data, labelled_ids, train_ids, val_ids)
    notes: list[str] = []
    encoder, seen = frozen_encoder(spec, data, notes)  # refuses a file that saw a test image
    encoder.eval()
    device = select_device(config.device)
    train_views, test_views = config.augment != "none", bool(config.tta)
    cache = FeatureCache(encoder, data.preprocess.to_dict(), data.image_size,
                         views=train_views or test_views, device=device, precision=config.precision,
                         channels_last=bool(config.channels_last))
    t0 = time.perf_counter()
    f_train, stats = cache.features(data, ids)
    f_test, test_stats = cache.features(data, list(data.test_ids))
    stats.add(test_stats)
    if not train_views:
        f_train = f_train[:, :1]
    if not test_views:
        f_test = f_test[:, :1]
    y = np.asarray(data.catalog.labels(ids), dtype=np.int64)
    t1 = time.perf_counter()
    classifier: Classifier | None = None
    if head == "logistic":
        weights = (class_weights(y, data.num_classes) if config.balance == "loss_weights"
                   else torch.ones(data.num_classes))
        weight, bias = fit_logistic(f_train, y, weights, data.num_classes)
        classifier = probe_classifier(encoder, weight, bias, data.num_classes, config)
        proba = head_proba(weight, bias, f_test)
    else:
        # the centre is the labelled images' mean: nothing of the test set shapes the bank
        centre = f_train.reshape(-1, f_train.shape[-1]).astype(np.float64).mean(0)
        proba = knn_proba(descriptors(f_train, centre), y, descriptors(f_test, centre), data.num_classes)
    t2 = time.perf_counter()
    notes.append(feature_note(stats, cache, head, len(ids)))
    record = {"features_computed": float(stats.computed), "features_cached": float(stats.cached),
              "feature_seconds": round(stats.seconds, 3), "head_seconds": round(t2 - t1, 3)}
    fit = FitResult(history=[record],
                    seconds=t2 - t0, samples_seen=len(ids), stopped_because=f"frozen_{head}")
    seen_keys = sorted(set(seen) | data.seen_keys_of(ids))
    return FrozenFit(classifier, proba, fit, ids, seen_keys, notes, t2 - t0)


def probe_classifier(encoder: Encoder, weight: torch.Tensor, bias: torch.Tensor, num_classes: int,
                     config: FinetuneConfig) -> Classifier:
    """The probe as a ``Classifier``: the frozen encoder, the fitted head, and how it is to be scored
    (test-time views, precision, layout) so ``predict_proba`` repeats the cell's numbers."""
    classifier = Classifier(encoder, num_classes, dropout=0.0)
    linear = classifier.head[-1]
    assert isinstance(linear, torch.nn.Linear)
    set_linear(linear.to(next(encoder.parameters()).device), weight, bias)
    classifier.tta = bool(config.tta)
    classifier.precision = config.precision
    classifier.channels_last = config.channels_last
    return classifier.eval()


def feature_note(stats: FeatureStats, cache: FeatureCache, head: str, n_labels: int) -> str:
    """One line on the cell's features and head."""
    rule = (f"logistic regression on {n_labels} labelled images' features (L2, C=1 on standardised features)"
            if head == "logistic" else f"cosine kNN, k={min(KNN_K, n_labels)}, T={KNN_T}")
    return (f"frozen features ({cache.n_views} view{'s' if cache.n_views > 1 else ''} an image): "
            f"{stats.computed} computed, {stats.cached} from the cache ({cache.dir}), {stats.seconds:.1f} s; "
            f"{rule}")
