"""``suggest``: which images of an unlabelled pool an expert should label next, and a random test sample.

    import fewlabel
    s = fewlabel.suggest("pool/", budget=16, out="to_label")          # a cold start: no label needed
    s = fewlabel.suggest("pool/", budget=16, labelled="to_label/manifest_template.csv", out="round2")

1. The pool (a folder, or a CSV with a ``path`` column) and the labelled set (``--labelled``: a class
   folder or a manifest) are read and matched by content (``pipeline.suggest_inputs``): a labelled
   image, or a byte or pixel copy of one, is never proposed; labelled training images count as
   chosen, so the picks cover what they do not; labelled test images (manifest ``split`` = test)
   are never proposed and cover nothing. Unreadable files are listed and skipped.
2. Every image is embedded by a frozen encoder: by default the ``probe`` strategy's (the ImageNet
   MobileNetV2, its 160-px input), or ``encoder`` / ``encoder_weights`` as for the probe (e.g. a ViT
   checkpoint); the pooled features of the 8 flips / quarter turns are averaged (steadier than the
   identity view alone). Features come from the feature cache (``pipeline.feature_cache``): a second
   round on the same pool computes none. Preprocessing is fitted on the pool alone, so it, and the
   cached features, stay the same from one round to the next.
3. A rule of ``pipeline.selection`` picks ``budget`` images: ``typiclust`` (default), ``probcover`` or
   ``random``. Which rule yields the better classifier is for a benchmark to measure on learning
   curves, not assumed here.
4. A TEST SAMPLE is drawn uniformly at random (its own stream of ``seed``) from the images not
   proposed, never by the selector: an accuracy estimate needs test images chosen at random, and
   images chosen for being typical or covering would make it optimistic or pessimistic. Its size is
   ``test_size``, by default max(20, 10 % of the images that could be proposed), capped by what the
   budget leaves. Label it once: when the labelled set already holds test images (``split`` = test),
   those stay the test set and none is drawn.

Written to ``out`` (paths in the CSVs relative to ``out``, as a manifest's are to the manifest):
``suggestions.csv`` (rank, path, rule, cluster or ball, score, why), ``test_sample.csv`` and
``manifest_template.csv`` (``path,label,split``: the labelled rows carried over, the suggestions as
train, the test sample as test, labels to fill in; then ``fewlabel train`` / ``curve`` read it, its
test rows as the test set), ``contact_sheet.html`` (the suggestions' thumbnails in order) and
``selection.json`` (the rule's parameters, δ included, the embedding, counts, skipped files).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.catalog import Catalog
from fewlabel.data.tensors import Preprocess, fit_preprocess, load_images
from fewlabel.errors import DataError, FewlabelError
from fewlabel.fileio import atomic_write_json, atomic_write_text, check_output_dir
from fewlabel.pipeline.contact_sheet import Tile, write_contact_sheet
from fewlabel.pipeline.encoders import default_spec, encoder_for_file
from fewlabel.pipeline.feature_cache import FeatureCache
from fewlabel.pipeline.frozen import frozen_encoder
from fewlabel.pipeline.selection import RULES, Selection, select
from fewlabel.pipeline.suggest_inputs import Inputs, gather, keys_of

OUTPUT_FILES = ("suggestions.csv", "test_sample.csv", "manifest_template.csv", "contact_sheet.html",
                "selection.json")
TEST_MIN, TEST_FRACTION = 20, 0.10
TEST_STREAM = 1  # the test sample's random stream, apart from the rules' own use of the seed
WHY_RANDOM_TEST = ("an accuracy estimate needs test images chosen at random, not by the selector")


@dataclass(frozen=True)
class Suggestion:
    rank: int
    path: str  # as found: the pool folder (or CSV's folder) joined with the image's name
    rule: str
    group: int  # cluster (typiclust), ball (probcover), -1 (random)
    score: float
    why: str


@dataclass
class Suggestions:
    """What ``suggest`` proposes and how; ``files`` names what it wrote (empty without ``out``)."""

    rule: str
    picks: list[Suggestion]
    test_sample: list[str]  # paths, in the pool's order
    test_drawn: bool  # False: the labelled set's own test images
    params: dict[str, Any]
    embedding: str
    counts: dict[str, int]
    seed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.picks]

    def chosen_line(self) -> str:
        p, k = self.params, len(self.picks)
        if self.rule == "typiclust":
            how = (f"k-means into {p['clusters']} clusters ({self.counts['covering']} labelled + {k} to "
                   "choose), then the most typical image (inverse mean distance to its 20 nearest "
                   "neighbours) of each largest cluster holding no labelled image")
        elif self.rule == "probcover":
            how = (f"greedy cover by balls of radius δ={p['delta']:.3f}, the distance quantile "
                   f"{p['delta_quantile']:.4f} at which a ball holds {p['target_degree']:.0f} other images "
                   f"on average; picks and labelled images cover {p['coverage']:.0%} of the images")
        else:
            how = f"uniformly at random, seed {self.seed}"
        return (f"chose {k} of {self.counts['candidates']} images by {self.rule} ({how}) on {self.embedding}")

    def test_line(self) -> str:
        n = len(self.test_sample)
        if not self.test_drawn:
            return (f"test sample: the {n} labelled test images (split=test) stay the test set; no new "
                    "sample drawn")
        if n == 0:
            return "test sample: none drawn (--test-size 0, or no image left once the budget is taken)"
        return (f"test sample: {n} images drawn uniformly at random (seed {self.seed}) from the "
                f"{self.counts['candidates'] - len(self.picks)} not proposed: label them once and keep "
                f"them for testing only; {WHY_RANDOM_TEST} (manifest_template.csv marks them split=test, "
                "the test set of `fewlabel train` and `fewlabel curve`)")


@dataclass
class _Images:
    """A catalog as ``FeatureCache`` and ``frozen_encoder`` read data: arrays, content keys, shape.
    No test set exists here, so no encoder can have seen one (``test_file_keys`` is empty)."""

    catalog: Catalog
    preprocess: Preprocess
    test_file_keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.content_keys = keys_of(self.catalog)

    @property
    def channels(self) -> int:
        return int(self.preprocess.channels)

    @property
    def spatial_dims(self) -> int:
        return int(self.preprocess.spatial_dims)

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(self.preprocess.size)

    def arrays(self, ids: list[str]) -> tuple[np.ndarray, None]:
        return load_images(self.catalog, ids, self.preprocess), None


def check_request(budget: int, rule: str, seed: int, test_size: int | None) -> None:
    """The request's values, before anything is read."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise FewlabelError(f"--budget must be a whole number of at least 1, got {budget!r}")
    if rule not in RULES:
        raise FewlabelError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FewlabelError(f"--seed must be a whole number of at least 0, got {seed!r}")
    if test_size is not None and (isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer))
                                  or test_size < 0):
        raise FewlabelError(f"--test-size must be a whole number of at least 0, got {test_size!r}")


def embed(inputs: Inputs, encoder: str | None, encoder_weights: str | Path | None,
          image_size: int | tuple[int, ...] | None, device: str,
          say: Callable[[str], None]) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(rows: the pool's images, then the labelled images outside it; the embedding in words; its record)."""
    from fewlabel.settings import select_device
    from fewlabel.training.compute import channels_last_on, resolve_precision

    pool = inputs.pool
    pre = fit_preprocess(pool, pool.ids, image_size=image_size)  # the pool alone: the same every round
    images = _Images(pool, pre)
    weights = str(encoder_weights) if encoder_weights else None
    spec = default_spec("probe", encoder_for_file(encoder, weights), encoder_weights=weights,
                        trust_encoder=True)  # what an encoder saw cannot bias a choice that uses no label
    notes: list[str] = []
    net, _ = frozen_encoder(spec, images, notes)  # type: ignore[arg-type]  # reads what _Images holds
    net.eval()
    dev = select_device(device)
    cache = FeatureCache(net, pre.to_dict(), pre.size, views=True, device=dev,
                         precision=resolve_precision("auto", dev), channels_last=channels_last_on(dev))
    n = len(pool.samples) + (len(inputs.labelled_extra.samples) if inputs.labelled_extra else 0)
    say(f"embedding {n} images (features already in the cache are read, not computed) ...")
    feats, stats = cache.features(images, pool.ids)
    if inputs.labelled_extra is not None:
        extra, more = cache.features(_Images(inputs.labelled_extra, pre), inputs.labelled_extra.ids)
        feats = np.concatenate([feats, extra])
        stats.add(more)
    config = dict(getattr(net, "config", {}))
    name = str(config.get("name", spec.encoder))
    if spec.encoder_weights:
        source = f"{name} from {Path(spec.encoder_weights).name}"
    elif name == "mobilenet_v2":
        source = "ImageNet MobileNetV2"
    else:
        source = f"{name} with its initial weights (seed 0, never trained)"
    size = "x".join(map(str, pre.size))
    inside = f", {config['input_size']} px inside the encoder" if config.get("input_size") else ""
    line = (f"{source} pooled features ({feats.shape[-1]}-d; images at {size}{inside}), mean of "
            f"{cache.n_views} flips/turns, centred and L2-normalised; {stats.computed} computed, "
            f"{stats.cached} read from the feature cache")
    record = {"encoder": config, "weights": spec.encoder_weights, "views": cache.n_views,
              "device": dev.type, "precision": cache.precision,
              "preprocess": pre.to_dict(), "feature_cache": str(cache.dir), "computed": stats.computed,
              "cached": stats.cached, "seconds": round(stats.seconds, 2), "notes": notes}
    return feats.mean(1), line, record


def draw_test_sample(left: list[int], n_candidates: int, test_size: int | None, seed: int) -> list[int]:
    """Rows drawn uniformly at random from ``left`` (the images not proposed), in the pool's order."""
    size = test_size if test_size is not None else max(TEST_MIN, math.ceil(TEST_FRACTION * n_candidates))
    size = min(int(size), len(left))
    rng = np.random.default_rng([int(seed), TEST_STREAM])
    return sorted(int(r) for r in rng.choice(np.asarray(left, dtype=np.int64), size, replace=False))


def suggest(pool: str | Path, budget: int, *, labelled: str | Path | None = None,
            out: str | Path | None = None, rule: str = "typiclust", seed: int = 0,
            test_size: int | None = None, encoder: str | None = None,
            encoder_weights: str | Path | None = None, image_size: int | tuple[int, ...] | None = None,
            device: str = "auto", overwrite: bool = False,
            progress: Callable[[str], None] | None = None) -> Suggestions:
    """The ``budget`` images of ``pool`` to label next, by ``rule``, and a random test sample (module
    docstring). ``rule`` defaults to ``typiclust``; whether it or ``probcover`` gives the better
    classifier on your data is for a benchmark to measure, not assumed. The test sample is drawn at
    random from the images not proposed, never by the rule: an accuracy estimate needs test images
    chosen at random. With ``out``, the files are written there (refused inside an input, or over
    earlier suggestions without ``overwrite``). Unreadable files are in ``.skipped``, never dropped
    silently."""
    check_request(budget, rule, seed, test_size)
    if out is not None:  # before any work: a refused --out must not cost an embedding
        check_output_dir(out, "suggestions folder (--out)", markers=OUTPUT_FILES, overwrite=overwrite,
                         inputs=(pool, labelled, encoder_weights))
    inputs = gather(pool, labelled)
    candidates = inputs.candidates
    if budget > len(candidates):
        taken = len(inputs.covering) + len(inputs.excluded)
        raise DataError(f"--budget {budget} is more than the {len(candidates)} image(s) that can be proposed "
                        f"here ({taken} labelled already, {len(inputs.skipped)} unreadable file(s), "
                        f"{inputs.copies} copies)", path=pool)
    say = progress or (lambda _: None)
    x, line, record = embed(inputs, encoder, encoder_weights, image_size, device, say)
    n_pool = len(inputs.pool.samples)
    covering = inputs.covering + list(range(n_pool, len(x)))
    selection = select(rule, x, covering, budget, seed, exclude=inputs.excluded)
    samples = inputs.pool.samples
    picks = [Suggestion(p.rank, samples[p.row].path, rule, p.group, p.score, p.why) for p in selection.picks]
    given = inputs.test_given
    if given:
        test = [s.path for s in given]
    else:
        chosen = set(selection.rows)
        rows = draw_test_sample([r for r in candidates if r not in chosen], len(candidates), test_size, seed)
        test = [samples[r].path for r in rows]
    counts = {"pool_images": n_pool, "copies": inputs.copies, "skipped": len(inputs.skipped),
              "covering": len(covering), "labelled_in_pool": len(inputs.covering),
              "labelled_test_in_pool": len(inputs.excluded), "labelled_outside_pool": len(x) - n_pool,
              "candidates": len(candidates)}
    result = Suggestions(rule, picks, test, not given, selection.params, line, counts, int(seed),
                         inputs.skipped, inputs.notes + record["notes"])
    if out is not None:
        request = {"pool": str(pool), "labelled": None if labelled is None else str(labelled),
                   "budget": int(budget), "test_size": test_size}
        result.files = write_outputs(Path(out), result, inputs, selection, record, request)
    return result


def _relative(address: str, folder: Path) -> str:
    """``address`` relative to ``folder`` (posix), as a manifest in ``folder`` lists it."""
    file_part, sep, member = address.partition("::")
    try:
        rel = os.path.relpath(os.path.abspath(file_part), os.path.abspath(folder))
    except ValueError:  # another drive (Windows): only an absolute path reaches it
        rel = os.path.abspath(file_part)
    return Path(rel).as_posix() + sep + member


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(out: Path, result: Suggestions, inputs: Inputs, selection: Selection,
                  embedding: dict[str, Any], request: dict[str, Any]) -> dict[str, Path]:
    """The five files of the module docstring, each written atomically; returns them by name."""
    from fewlabel.version import __version__

    rel = {p.path: _relative(p.path, out) for p in result.picks}
    files = {name: out / name for name in OUTPUT_FILES}
    atomic_write_text(files["suggestions.csv"], _csv(
        ["rank", "path", "rule", "cluster_or_ball", "score", "why"],
        [[p.rank, rel[p.path], p.rule, p.group, f"{p.score:.4g}", p.why] for p in result.picks]))
    labels = {s.path: s.label or "" for s in inputs.labelled}
    test_rows = [[_relative(p, out), labels.get(p, ""), "test"] for p in result.test_sample]
    atomic_write_text(files["test_sample.csv"], _csv(["path", "label", "split"], test_rows))
    carried = [[_relative(s.path, out), s.label or "", "test" if s.split == "test" else "train"]
               for s in inputs.labelled]
    new = [[rel[p.path], "", "train"] for p in result.picks]
    atomic_write_text(files["manifest_template.csv"], _csv(
        ["path", "label", "split"], carried + new + (test_rows if result.test_drawn else [])))
    tiles = [Tile(str(p.rank), p.path, rel[p.path], p.why) for p in result.picks]
    write_contact_sheet(files["contact_sheet.html"], tiles, "fewlabel: images to label, in this order",
                        [result.chosen_line(), result.test_line(),
                         "Paths are relative to this folder; suggestions.csv lists the same images."])
    atomic_write_json(files["selection.json"], {
        "fewlabel": __version__, **request, "rule": result.rule, "seed": result.seed,
        "params": selection.params, "chosen": result.chosen_line(), "embedding": embedding,
        "embedding_line": result.embedding, "counts": result.counts,
        "test_sample": {"size": len(result.test_sample), "drawn": result.test_drawn,
                        "rule": f"max({TEST_MIN}, {TEST_FRACTION:.0%} of the images that could be "
                                "proposed), capped by those left once the budget is taken, unless "
                                "test_size is given", "why": WHY_RANDOM_TEST},
        "skipped": [{"path": p, "problem": q} for p, q in result.skipped], "notes": result.notes},
        default=str)
    return files
