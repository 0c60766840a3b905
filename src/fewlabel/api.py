"""The Python API in a few lines::

    import fewlabel
    model = fewlabel.train("cells/", strategy="imagenet", labels_per_class=20, out="m")
    print(model.metrics["roc_auc"])
    preds = fewlabel.load_model("m").predict(["new/"])

Everything the CLI does goes through these functions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel import strategies as strategy_registry
from fewlabel.errors import FewlabelError
from fewlabel.fileio import atomic_write_text, check_output_dir, missing_file_reason, read_json
from fewlabel.jsonable import jsonable
from fewlabel.pipeline import (
    add_draw,
    default_spec,
    dropped_note,
    finetune_config_for,
    fit_cell,
    model_config,
    prepare_data,
    prepare_strategy,
)
from fewlabel.pipeline import region as region_input
from fewlabel.pipeline.encoders import StrategySpec, encoder_for_file, settled_by_file, with_input_size
from fewlabel.pipeline.fit import check_given_encoder
from fewlabel.training.finetune import FinetuneConfig, predict_proba


def default_cache_dir() -> Path:
    """Where pretrained encoders are cached: ``$FEWLABEL_CACHE`` or ``~/.cache/fewlabel``."""
    return Path(os.environ.get("FEWLABEL_CACHE", Path.home() / ".cache" / "fewlabel"))


@dataclass
class Predictions:
    """Per-image predictions, plus the files that could not be scored (never silently dropped)."""

    paths: list[str]
    proba: np.ndarray  # (N, K)
    class_names: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line problem)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # scored, but unlike the training images

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[i] for i in self.proba.argmax(1)] if len(self.paths) else []

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "predicted", *[f"p_{c}" for c in self.class_names]])
        for path, label, row in zip(self.paths, self.predicted, self.proba, strict=True):
            writer.writerow([path, label, *[f"{p:.6f}" for p in row]])
        return buf.getvalue()

    def save_csv(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_csv())


class Model:
    """A trained classifier with the preprocessing it was trained with."""

    def __init__(self, classifier: Any, config: dict[str, Any], metrics: dict[str, Any] | None = None,
                 device: str = "auto", unet_file: str | Path | None = None) -> None:
        from fewlabel.data.tensors import Preprocess

        self.classifier = classifier.eval()
        self.config = config
        self.class_names: list[str] = list(config["class_names"])
        self.preprocess = Preprocess.from_dict(config["preprocess"])
        self.metrics = metrics if metrics is not None else config.get("metrics", {})
        self.device = device
        # A region model's U-Net (``pipeline.region``): it crops every image before the classifier sees it.
        self.unet_file = Path(unet_file) if unet_file is not None else None
        self._unet: Any = None

    @property
    def crops_region(self) -> bool:
        """Whether the classifier was trained on U-Net region crops (``segmentation+region``)."""
        return region_input.crops_region(self.config)

    def region_inputs(self, x: np.ndarray, paths: list[str]) -> np.ndarray:
        """What the classifier sees for preprocessed images ``x`` of the files ``paths``: ``x`` itself,
        or for a region model each original file cropped as in training (``region.crop_images``)."""
        if not self.crops_region:
            return x
        from fewlabel.pipeline.region import crop_images

        crops, _ = crop_images(self._region_unet(), [str(p) for p in paths], x, self.preprocess)
        return np.stack(crops) if crops else x

    def _region_unet(self) -> Any:
        from fewlabel.pipeline.region import load_region_unet

        if self.unet_file is None:
            # Its classifier learnt on U-Net crops: whole images would be scored on the wrong input.
            raise FewlabelError("this region model carries no U-Net to crop with (saved by an older "
                                "fewlabel?); train it again")
        if self._unet is None:
            self._unet = load_region_unet(self.unet_file)
        return self._unet

    def predict_arrays(self, x: np.ndarray, paths: list[str] | None = None) -> np.ndarray:
        """Probabilities for already-preprocessed arrays (N, C, ...), with the test-time augmentation
        the model was trained to use (``finetune.tta``). A region model also needs the arrays' image
        files (``paths``): it crops the original pixels, as in training."""
        if self.crops_region:
            if paths is None or len(paths) != len(x):
                raise FewlabelError("a region model crops each image's original file: pass the arrays' "
                                    "paths (one per array)")
            x = self.region_inputs(x, paths)
        trained = self.config.get("finetune") or {}
        # bf16 where this device computes it natively, as in training; else fp32 (``usable_precision``)
        precision = str(trained.get("precision") or "fp32")
        self.classifier.channels_last = trained.get("channels_last")
        return predict_proba(self.classifier, x, device=self.device, tta=bool(trained.get("tta", False)),
                             precision=precision)

    def predict(self, inputs: list[str | Path] | str | Path, batch_size: int = 64,
                allow_mismatch: bool = False) -> Predictions:
        """Score image files; folders are searched recursively. Unreadable files end up in
        ``errors`` with their problem; the others are still scored. An image unlike the training
        images (channels, value type, size: ``data.mismatch``) is an error too, or with
        ``allow_mismatch`` a warning beside its scores. A region model scores each image's U-Net crop."""
        from fewlabel.data.mismatch import screen_image
        from fewlabel.data.readers import collect_image_paths, read_image

        if self.crops_region:
            self._region_unet()  # a model without its U-Net is refused before any file is read
        paths, errors = collect_image_paths([inputs] if isinstance(inputs, (str, Path)) else inputs)
        warnings: list[tuple[str, str]] = []
        ok_paths: list[str] = []
        arrays: list[np.ndarray] = []
        scored: list[np.ndarray] = []
        for p in paths:
            try:
                array, meta = read_image(p)
                warning = screen_image(meta, self.preprocess, allow_mismatch,  # raises when refused
                                       self.config.get("trained_sizes"))
                if warning:
                    warnings.append((str(p), warning))
                arrays.append(self.preprocess.apply(array, meta))
                ok_paths.append(str(p))
            except FewlabelError as exc:
                errors.append((str(p), exc.problem))
            # Streamed: a batch is scored as soon as it is full, so a large folder never sits in memory.
            if len(arrays) == batch_size:
                scored.append(self.predict_arrays(np.stack(arrays), ok_paths[-len(arrays):]))
                arrays = []
        if arrays:
            scored.append(self.predict_arrays(np.stack(arrays), ok_paths[-len(arrays):]))
        proba = np.concatenate(scored) if scored else np.zeros((0, len(self.class_names)), np.float32)
        return Predictions(paths=ok_paths, proba=proba, class_names=self.class_names, errors=errors,
                           warnings=warnings)

    def save(self, out: str | Path) -> Path:
        from fewlabel.models.io import save_model_dir

        out = Path(out)
        save_model_dir(out, self.classifier, self.config, unet=self.unet_file)
        return out


def load_model(model_dir: str | Path, device: str = "auto") -> Model:
    """Load a model folder written by ``train``/``Model.save``. Reads safetensors + JSON only."""
    from fewlabel.errors import ModelFileError
    from fewlabel.models.io import load_model_dir, model_unet_file

    classifier, config = load_model_dir(model_dir)
    metrics_path = Path(model_dir) / "metrics.json"
    metrics = (read_json(metrics_path, "model metrics", fix="train the model again")
               if metrics_path.exists() else None)
    try:
        return Model(classifier, config, metrics=metrics, device=device,
                     unet_file=model_unet_file(model_dir, config))
    except (KeyError, TypeError, ValueError) as exc:  # FewlabelErrors name their file themselves
        raise ModelFileError(f"cannot be used as a model: {type(exc).__name__} {exc}",
                             Path(model_dir) / "config.json") from None
    except FewlabelError as exc:
        if exc.path is not None:
            raise
        raise ModelFileError(exc.problem, Path(model_dir) / "config.json") from None


def train(
    data: str | Path, out: str | Path | None = None, *, strategy: str | None = None,
    encoder: str | None = None,
    labels_per_class: int | None = None, count: str = "images", test_size: float | int = 0.2, seed: int = 0,
    max_epochs: int | None = None, group_pattern: str | None = None, masks: str | Path | None = None,
    encoder_weights: str | Path | None = None, semi: bool = False, unlabelled: str | Path | None = None,
    image_size: int | tuple[int, ...] | None = None, device: str = "auto", progress: bool | None = None,
    finetune: FinetuneConfig | None = None, cache_dir: str | Path | None = None,
    drop_classes: list[str] | tuple[str, ...] = (), test_split: str = "auto",
    plan: str | Path | None = None, trust_encoder: bool = False, pretrain: dict[str, Any] | None = None,
    input_size: int | None = None,
) -> Model:
    """Hold out a group-aware test set, draw ``labels_per_class`` labelled images per class from
    the rest, prepare the encoder by ``strategy``, fine-tune, evaluate on the test set.

    ``strategy`` None: chosen by the data (``strategies.default_strategy``: 2D imagenet, 3D
    segmentation with masks, else scratch); the choice and its reason are printed (stderr) and kept
    in ``metrics["strategy_choice"]``.

    ``plan``: a saved split plan (a ``plan.json`` of a model or run folder) to follow instead of
    drawing a new test set, so this model is tested on exactly that run's test images.
    ``trust_encoder``: accept an ``encoder_weights`` file that records nothing of the images it saw.
    ``pretrain``: settings of the strategy's preparation (``PretrainConfig`` fields, e.g. ``{"steps": 300}``).
    ``input_size``: the side an encoder that resizes its input (MobileNetV2, ViT) computes at, e.g.
    224 instead of the imagenet strategy's 160 (a one-line error for an encoder that does not resize).
    With ``out``: writes the model folder, ``metrics.json`` and ``plan.json`` there.
    """
    from fewlabel.data.plan import PLAN_FILE
    from fewlabel.errors import ModelFileError, SplitError
    from fewlabel.pretrain.common import PretrainConfig
    from fewlabel.settings import check_options, select_device, validated
    from fewlabel.training.compute import compute_line

    # Settings with no meaning fail before anything is read or written (a seed past 2**32 would
    # otherwise fail deep in torch, a pretraining typo only after the data are open).
    check_options({"seed": seed, "labels_per_class": labels_per_class, "input_size": input_size})
    pretrain = validated(PretrainConfig, dict(pretrain), "pretraining") if pretrain else None
    if out is not None:  # never inside the data: a model folder there would be read as a class
        check_output_dir(out, "model folder (out)", inputs=(data, masks, unlabelled, plan, encoder_weights),
                         foreign=("run.json", "store.sqlite"))
    why = None if encoder_weights is None else missing_file_reason(encoder_weights)
    if why is not None:  # said before minutes of loading images, not after
        raise ModelFileError(f"encoder weights {why}", encoder_weights)

    architecture = encoder_for_file(encoder, encoder_weights)  # a fewlabel file names its own
    if input_size is not None and strategy is None and architecture is not None:
        # the strategy is chosen by the data later; a named encoder that does not resize is refused now
        named = {f"--encoder {architecture}": {"encoder": architecture}}
        strategy_registry.with_input_size(named, input_size)

    def make_spec(strategy: str) -> StrategySpec:
        spec = default_spec(strategy, architecture)
        if semi:
            spec.semi = True
        if encoder_weights is not None:
            spec.encoder_weights = str(encoder_weights)
        spec.trust_encoder = trust_encoder
        if pretrain:
            spec.pretrain = dict(pretrain)
        spec = settled_by_file(spec)
        if input_size is not None:
            spec = StrategySpec.from_dict(with_input_size({strategy: spec.to_dict()}, input_size)[strategy])
        return spec

    if strategy is None and encoder == "vit":  # a checkpoint of the user's: fine-tune it, say so
        strategy = "foundation"
        print("strategy: foundation (--encoder vit: your checkpoint is fine-tuned; choose another with "
              "--strategy, e.g. probe)", file=sys.stderr, flush=True)
    # A named strategy is checked before any image is read; the default needs the data first.
    spec = make_spec(strategy) if strategy is not None else None
    # A copy: the caller's config object is theirs, not ours to change.
    config = FinetuneConfig.from_dict(finetune.to_dict()) if finetune else FinetuneConfig()
    config.device, config.progress = device, progress
    if max_epochs is not None:
        config.max_epochs = max_epochs
    validated(FinetuneConfig, config.to_dict(), "fine-tuning")  # bad values fail before any work
    prepared = prepare_data(data, masks=masks, group_pattern=group_pattern, test_size=test_size, seed=seed,
                            image_size=image_size, unlabelled=unlabelled, count=count,
                            drop_classes=drop_classes, test_split=test_split, plan=plan)
    for line in prepared.reading_notes:  # what the readers did (EXIF, unread frames, scale): said once
        print(line, file=sys.stderr, flush=True)
    prepared.plan.draws = {}  # a curve's plan may hold its draws: this model records its own only
    draw = add_draw(prepared, labels_per_class, 0, seed, count=count)
    if "skipped" in draw:
        raise SplitError(draw["skipped"], path=prepared.catalog.root)
    labelled = list(draw["labelled"])
    chosen_note = None
    if strategy is None:
        strategy, reason = strategy_registry.default_strategy(prepared.spatial_dims,
                                                              prepared.catalog.has_masks)
        chosen_note = strategy_registry.default_note(strategy, reason)
        print(chosen_note, file=sys.stderr, flush=True)
        spec = make_spec(strategy)
    assert spec is not None
    if strategy_registry.get(strategy).prepare and not spec.encoder_weights:
        spec = prepare_strategy(spec, prepared, cache_dir or default_cache_dir() / "pretrained", seed=seed,
                                progress=progress)
    check_given_encoder(spec, prepared)  # a refused file is the one line said, before "compute: ..."
    concrete = finetune_config_for(spec, config)
    members = concrete.ensemble or 1
    print(compute_line(concrete, members), file=sys.stderr, flush=True)
    if members > 1 and select_device(config.device).type == "cpu" and concrete.ensemble_mode != "snapshot":
        print(strategy_registry.ensemble_note(strategy, members), file=sys.stderr, flush=True)
    cell = fit_cell(prepared, labelled, spec, seed=seed, finetune_config=config, train_ids=draw["train"],
                    val_ids=draw["val"])
    cfg = model_config(prepared, spec, cell, seed)
    metrics = {**cell.metrics, "n_test": len(prepared.test_ids), "n_train": len(cell.train_ids),
               "n_val": len(cell.val_ids), "strategy": strategy, "labels_per_class": labels_per_class,
               "seed": seed, "notes": [*cell.notes, *filter(None, [dropped_note(prepared.plan)])],
               "reading_notes": list(prepared.reading_notes)}
    if chosen_note is not None:
        metrics["strategy_choice"] = chosen_note
    model = Model(cell.classifier, cfg, metrics=metrics, device=device,
                  unet_file=region_input.region_unet_source(spec))
    if out is not None:
        out = Path(out)
        model.save(out)
        prepared.plan.save(out / PLAN_FILE)
        atomic_write_text(out / "metrics.json", json.dumps(jsonable(metrics), indent=2))
    return model


