"""Labelled sets that a selection rule picks for a learning curve, blind to labels and to the test set.

A curve with selection arms (``fewlabel curve --selection typiclust,probcover,random``) trains each
strategy, beside its class-stratified random draw, on the images a rule of ``pipeline.selection``
picks from the training pool. For a size of ``n`` per class the budget is ``n × classes`` images in
total (what the stratified draw labels), chosen cold at each size: the set a user of
``fewlabel suggest --budget`` would label first. The rule sees:

* the embedding of the pool (``pool_embedding``; ``typiclust`` and ``probcover``): the pooled features of
  the ImageNet MobileNetV2 (the ``probe`` strategy's encoder, its 160-px input), or of the encoder the
  user names (``--selection-encoder-weights``: a ``fewlabel pretrain`` file, a ViT checkpoint; refused
  if it saw a test image), averaged over the flips / quarter turns (8 views of a square image, 4
  otherwise) and read from the feature cache, as ``suggest`` embeds. Always in fp32: bf16 where a CPU
  or GPU offers it would make the picks depend on the machine. Only pool images are embedded: no test
  image (nor a copy, which the split merged into its group) can be picked or shape the clusters.
  ``random`` needs no embedding;
* the budget and the repeat's selection seed. Never a label: the labels of the picks are read only
  afterwards, to split them into training and validation (as an expert's labels would be) and to count
  the classes they reach, recorded with the draw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data import splits
from fewlabel.errors import FewlabelError
from fewlabel.pipeline.data import PreparedData
from fewlabel.pipeline.encoders import default_spec
from fewlabel.pipeline.feature_cache import FeatureCache
from fewlabel.pipeline.frozen import frozen_encoder
from fewlabel.pipeline.selection import select

Embedding = tuple[np.ndarray, str]


def check_embeddable(data: PreparedData, source: dict[str, Any] | None = None) -> None:
    """Refuse, in one line, data the embedding cannot read: with the default ImageNet encoder, 3D
    volumes (its weights are 2D) or no ImageNet weights file to load; with an encoder the user named
    (``source``), what its own checks refuse (another dimensionality, a test image it saw)."""
    from fewlabel.models.imagenet import find_imagenet_weights

    if source:
        frozen_encoder(embedding_spec(source), data, [])  # built once here, refused before run.json
        return
    if data.spatial_dims != 2:
        raise FewlabelError("selection rules typiclust and probcover embed images with the 2D ImageNet "
                            "encoder; these are 3D volumes: use --selection random or name an encoder "
                            "with --selection-encoder-weights", path=data.catalog.root)
    find_imagenet_weights()


def embedding_spec(source: dict[str, Any] | None) -> Any:
    """The frozen encoder the pool is embedded with: the probe's (ImageNet MobileNetV2), or the
    encoder / checkpoint of ``source`` ({"encoder": name or None, "weights": path}) as the probe
    strategy would load it, checked for what it saw as any encoder a curve is given."""
    if not source:
        return default_spec("probe")
    return default_spec("probe", source.get("encoder") or None, encoder_weights=str(source["weights"]))


def pool_embedding(data: PreparedData, device: str = "auto",
                   source: dict[str, Any] | None = None) -> Embedding:
    """(rows in ``data.pool_ids`` order, the embedding in words) of the pool (module docstring)."""
    from fewlabel.settings import select_device
    from fewlabel.training.compute import channels_last_on

    if not source:
        check_embeddable(data)  # a named encoder is checked as it is built, just below
    notes: list[str] = []
    net, _ = frozen_encoder(embedding_spec(source), data, notes)
    net.eval()
    dev = select_device(device)
    cache = FeatureCache(net, data.preprocess.to_dict(), data.image_size, views=True, device=dev,
                         precision="fp32", channels_last=channels_last_on(dev))
    feats, stats = cache.features(data, list(data.pool_ids))
    name = ("ImageNet MobileNetV2" if not source else
            f"{getattr(net, 'config', {}).get('name', source.get('encoder') or 'encoder')} from "
            f"{Path(source['weights']).name}")
    line = (f"{name} pooled features of the {len(data.pool_ids)} pool images "
            f"({feats.shape[-1]}-d, mean of {cache.n_views} flips/turns, {cache.precision}; "
            f"{stats.computed} computed, {stats.cached} from the feature cache)")
    return feats.mean(1), line


def add_selection_draw(data: PreparedData, rule: str, n_per_class: int, repeat: int, seed: int,
                       embedding: Callable[[], Embedding]) -> dict[str, Any]:
    """The picks of ``rule`` for a budget of ``n_per_class × classes`` images, recorded in the plan
    (labelled ids in the order the rule ranks them, their training / validation split, how they were
    chosen, classes covered); returns the plan's entry. A budget larger than the pool is recorded as
    skipped. ``embedding`` is called only when a draw is made (the pool is embedded once a run)."""
    pool = list(data.pool_ids)
    classes = data.num_classes
    budget = int(n_per_class) * classes
    if budget > len(pool):
        data.plan.add_draw(n_per_class, repeat, seed, labelled=[], train=[], val=[], selection=rule,
                           chosen={"rule": rule, "budget": budget},
                           skipped=f"a budget of {budget} images ({n_per_class} x {classes} classes) is more "
                                   f"than the {len(pool)} images of the training pool")
        return data.plan.draw(n_per_class, repeat, rule)
    # random draws by row alone: it needs no embedding (nor the weights one is made with)
    x, line = (np.zeros((len(pool), 1)), "none: uniform over the pool") if rule == "random" else embedding()
    picked = select(rule, x, labelled=(), budget=budget, seed=seed)
    labelled = [pool[r] for r in picked.rows]
    # The picks are labelled now (by the data's labels, as an expert would): split them as any draw.
    train, val = splits.nested_validation(data.catalog, pool, labelled, seed=seed)
    labels = np.asarray(data.catalog.labels(labelled))
    counts = np.bincount(labels, minlength=classes)
    chosen = {"rule": rule, "budget": budget, "seed": int(seed), "embedding": line,
              "params": {k: v for k, v in picked.params.items() if k != "cluster_sizes"},
              "classes_covered": int((counts > 0).sum()), "classes": classes,
              "per_class": {name: int(c) for name, c in zip(data.class_names, counts, strict=True)}}
    data.plan.add_draw(n_per_class, repeat, seed, labelled=labelled, train=train, val=val, selection=rule,
                       chosen=chosen)
    return data.plan.draw(n_per_class, repeat, rule)

