"""Explanations of a learning-curve run, per strategy × size: attribution grids on a fixed set of test
images per class and a t-SNE of the test features, from the repeat-0 models the curve kept.

Writes ``RUN_DIR/explanations/<strategy>/n<size>_grid.png`` and ``..._tsne.png`` and an
``index.json`` the report reads. A cell whose model weights (sha256), images and methods are unchanged
is not recomputed, so ``fewlabel report`` can call this every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel import strategies as strategy_registry
from fewlabel.errors import one_line
from fewlabel.experiments.arms import arm_parts
from fewlabel.experiments.run_view import EXPLAIN_INDEX, RunView, TestSet
from fewlabel.explain.attributions import METHODS, attribute, lrp_notes, unsupported
from fewlabel.explain.embedding import extract_features, tsne_embedding
from fewlabel.explain.figures import attribution_grid, save_png, tsne_scatter
from fewlabel.fileio import atomic_path, atomic_write_json

INDEX_VERSION = 1
CHECKS_VERSION = 2  # bump when the checks change, so cached cells are recomputed
# Test images per class the checks run on (the grid shows fewer): their intervals are over images,
# and below 6 images no verdict is given (explain.intervals.MIN_IMAGES).
CHECK_PER_CLASS = 8
REGION_CAPTION = "maps over the U-Net region crop the classifier saw"
MAX_TSNE_POINTS = 2000  # t-SNE cost grows ~ n log n; a stratified subsample keeps a report quick


def choose_examples(y: np.ndarray, n_per_class: int, seed: int = 0) -> list[int]:
    """Indices of ``n_per_class`` test images per class, the same for every strategy and size."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        picked.extend(int(i) for i in sorted(rng.permutation(idx)[:n_per_class]))
    return picked


def _subsample(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == k))[: max(1, int(limit * np.mean(y == k)))]
            for k in np.unique(y)]
    return np.sort(np.concatenate(keep))


def explain_model(classifier: Any, x: np.ndarray, methods: Sequence[str] = METHODS,
                  target: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """``{method: maps (N, *spatial)}`` for the images ``x``; ``target`` None = predicted class."""
    return {m: attribute(classifier, x, target=target, method=m) for m in methods}


def _model_dirs(view: RunView) -> dict[tuple[str, int], tuple[int, Path]]:
    """(strategy, size) → (repeat, model dir): repeat 0 when it has a kept model, else the lowest."""
    found: dict[tuple[str, int], tuple[int, Path]] = {}
    for row in sorted(view.rows(), key=lambda r: (r["strategy"], int(r["n_per_class"]), int(r["repeat"]))):
        path = view.model_dir(row)
        key = (str(row["strategy"]), int(row["n_per_class"]))
        if path is not None and key not in found:
            found[key] = (int(row["repeat"]), path)
    return found


def _training_data(model_dir: str | Path) -> list[str]:
    """The data folder (and masks) the model was trained on, as its plan (or its run's plan) records
    them; none when no plan says."""
    from fewlabel.data.plan import PLAN_FILE, SplitPlan
    from fewlabel.errors import FewlabelError

    try:
        own = Path(model_dir) / PLAN_FILE
        run = None if own.is_file() else RunView.containing(model_dir)
        plan = SplitPlan.load(own) if run is None else run.plan
    except (FewlabelError, OSError, ValueError):  # an unreadable plan is said where it is needed
        return []
    return [str(p) for p in (plan.source.get("data"), plan.source.get("masks")) if p]


def _weights_id(model_dir: Path) -> str:
    from fewlabel.errors import FewlabelError
    from fewlabel.fileio import read_json

    try:  # never opens a FIFO, never reads a runaway file
        return str(read_json(model_dir / "config.json", "model config").get("weights_sha256") or "")
    except FewlabelError:
        return ""


def _write_index(path: Path, index: dict[str, Any]) -> None:
    atomic_write_json(path, index, indent=1)


def explain_run(run_dir: str | Path, n_per_class: int = 2, methods: Sequence[str] = METHODS,
                test_set: TestSet | None = None, seed: int = 0, tsne: bool = True, checks: bool = True,
                log: Callable[[str], None] | None = None, check_per_class: int = CHECK_PER_CLASS
                ) -> dict[str, Any]:
    """Compute (or reuse) the explanation figures of every strategy × size of a run; returns the index.

    ``test_set`` defaults to ``RunView(run_dir).open_test_set()``. With ``checks`` each method's maps are
    checked (deletion, insertion, region perturbation, cascading model randomisation, share inside
    masks; ``fewlabel.explain.checks``) on up to ``check_per_class`` test images per class (at least
    the grid's, which are among them) and the figures stored under the cell's ``checks``. A cell
    that fails (e.g. a model file that no longer loads) is recorded under ``errors`` and the others go on.
    """
    from fewlabel.models.io import load_model_dir

    view = RunView(run_dir)
    run_dir = view.root
    models = _model_dirs(view)
    out_dir = view.explanations_dir
    old = view.explanations() or {}
    old_cells = {(c["strategy"], c["n_per_class"]): c for c in old.get("cells", [])}
    index: dict[str, Any] = {"version": INDEX_VERSION, "n_per_class": n_per_class, "methods": list(methods),
                             "seed": seed, "examples": [], "check_images": 0, "cells": [], "errors": []}
    if not models:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_index(out_dir / EXPLAIN_INDEX, index)
        return index
    ts = test_set if test_set is not None else view.open_test_set()
    examples = choose_examples(ts.y, n_per_class, seed=seed)
    # Same seed, more per class: each class's first picks are the grid's, so the grid is a subset.
    shown = choose_examples(ts.y, max(n_per_class, check_per_class), seed=seed) if checks else examples
    grid_rows = [shown.index(i) for i in examples]
    index["examples"] = [{"id": ts.ids[i], "label": ts.class_names[int(ts.y[i])]} for i in examples]
    index["check_images"] = len(shown) if checks else 0
    index["class_names"] = list(ts.class_names)
    y_ex = ts.y[examples]
    tsne_idx = _subsample(ts.y, MAX_TSNE_POINTS, seed)
    signature = {"methods": list(methods), "examples": [ts.ids[i] for i in examples], "tsne": tsne,
                 "n_test": len(ts.ids), "checks": CHECKS_VERSION if checks else None,
                 "check_examples": [ts.ids[i] for i in shown] if checks else []}
    for (strategy, size), (repeat, model_dir) in sorted(models.items()):
        rel = Path(strategy) / f"n{size}"
        grid_path, tsne_path = out_dir / f"{rel}_grid.png", out_dir / f"{rel}_tsne.png"
        weights = _weights_id(model_dir)
        prev = old_cells.get((strategy, size))
        if (prev and weights and prev.get("weights") == weights and prev.get("signature") == signature
                and grid_path.exists() and (not tsne or tsne_path.exists())):
            index["cells"].append(prev)
            continue
        t0 = time.perf_counter()
        try:
            # an arm (imagenet@typiclust) is its strategy's model on other labelled images
            entry_of = strategy_registry.REGISTRY.get(arm_parts(strategy)[0])
            region = entry_of is not None and entry_of.input == "region"
            if region:
                # Its classifier sees U-Net crops: the maps are computed over the crop of each image.
                classifier, unet, pre = _region_model(model_dir)
                x_all = _crops(unet, pre, ts, shown)
            else:
                classifier, _ = load_model_dir(model_dir)
                x_all = ts.x[shown]
            classifier.eval()
            # A method with no rules for this model's layers (LRP on attention) is left out, said once.
            skipped = {m: why for m in methods if (why := unsupported(classifier, m)) is not None}
            usable = [m for m in methods if m not in skipped]
            all_maps = explain_model(classifier, x_all, usable, target=None)
            all_proba = _softmax(_logits(classifier, x_all))
            x_in, proba = x_all[grid_rows], all_proba[grid_rows]
            maps = {m: v[grid_rows] for m, v in all_maps.items()}
            labels = [f"{ts.class_names[int(t)]} → {ts.class_names[int(p.argmax())]} {p.max():.2f}"
                      for t, p in zip(y_ex, proba, strict=True)]
            title = f"{strategy}, {size} labelled per class (repeat {repeat}); row: true → predicted p"
            if region:
                title += f"; {REGION_CAPTION}"
            save_png(attribution_grid(x_in, maps, labels, title=title), grid_path)
            entry: dict[str, Any] = {
                "strategy": strategy, "n_per_class": size, "repeat": repeat,
                "model_dir": model_dir.relative_to(run_dir).as_posix(), "weights": weights,
                "signature": signature, "grid": grid_path.relative_to(run_dir).as_posix(),
                "predicted": [ts.class_names[int(p.argmax())] for p in proba],
                "lrp_notes": lrp_notes(classifier) if any(m.startswith("lrp") for m in usable) else [],
            }
            if skipped:
                entry["skipped_methods"] = skipped
            if region:
                entry["input"] = REGION_CAPTION
            if checks:
                from fewlabel.explain.checks import check_methods

                # Masks outline the whole image, not the crop: no inside-mask share for a region model.
                ex_masks = ts.masks[shown] if ts.masks is not None and not region else None
                entry["checks"] = check_methods(classifier, x_all, all_maps, all_proba.argmax(1), attribute,
                                                masks=ex_masks, seed=seed)
            if tsne:
                x_tsne = _crops(unet, pre, ts, tsne_idx) if region else ts.x[tsne_idx]
                feats = extract_features(classifier, x_tsne)
                emb = tsne_embedding(feats, seed=seed)
                save_png(tsne_scatter(emb, ts.y[tsne_idx], ts.class_names,
                                      title=f"{strategy}, n={size}: test features"), tsne_path)
                entry["tsne"] = tsne_path.relative_to(run_dir).as_posix()
                entry["tsne_points"] = int(len(tsne_idx))
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            index["cells"].append(entry)
            if log:
                log(f"explained {strategy} n={size} in {entry['seconds']:.1f} s")
        except Exception as exc:  # one broken model must not cost the whole report its figures
            msg = one_line(exc)
            index["errors"].append({"strategy": strategy, "n_per_class": size, "error": msg})
            if log:
                log(f"explanations of {strategy} n={size} failed: {msg}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_index(out_dir / EXPLAIN_INDEX, index)
    return index


def _region_model(model_dir: Path) -> tuple[Any, Any, Any]:
    """(classifier, U-Net, Preprocess) of a region model folder."""
    from fewlabel.models.io import read_model_config
    from fewlabel.pipeline.region import folder_unet

    classifier, pre, _ = load_for_explain(model_dir)
    return classifier, folder_unet(model_dir, read_model_config(model_dir)), pre


def _crops(unet: Any, pre: Any, ts: TestSet, idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """Test images ``idx`` cropped by ``unet`` from their files, as the region model was trained."""
    from fewlabel.errors import FewlabelError
    from fewlabel.pipeline.region import crop_images

    if ts.paths is None:
        raise FewlabelError("the test set records no image files, which a region model crops")
    idx = [int(i) for i in idx]
    crops, _ = crop_images(unet, [ts.paths[i] for i in idx], ts.x[idx], pre)
    return np.stack(crops).astype(np.float32)


def _logits(classifier: Any, x: np.ndarray) -> np.ndarray:
    import torch

    from fewlabel.training.batches import bounded_batch_size

    p = next(classifier.parameters())
    step = bounded_batch_size(x.shape[1:], len(x))
    with torch.no_grad():
        return np.concatenate([
            classifier(torch.as_tensor(x[i:i + step], dtype=torch.float32, device=p.device)).float().cpu()
            .numpy() for i in range(0, len(x), step)])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def load_for_explain(model_dir: str | Path) -> tuple[Any, Any, list[str]]:
    """(classifier, Preprocess, class names) of a model folder.

    Models written by ``train`` carry their preprocessing; a model kept by a curve borrows it from its
    run's ``run.json`` (``RUN_DIR/cells/<strategy>/n<size>_r<repeat>``), which is what it trained on.
    """
    from fewlabel.data.tensors import Preprocess
    from fewlabel.errors import ModelFileError
    from fewlabel.models.io import load_model_dir

    model_dir = Path(model_dir)
    classifier, config = load_model_dir(model_dir)
    pre = config.get("preprocess")
    names = list(config.get("class_names") or [])
    run = RunView.containing(model_dir) if pre is None or not names else None
    if run is not None:
        from fewlabel.experiments.store import RUN_FILE
        from fewlabel.models.io import check_config_fits_weights

        dataset = run.dataset
        pre = pre or dataset.get("preprocess")
        names = names or list(dataset.get("classes") or [])
        # Borrowed from the run: held to the weights as the model's own config.json is.
        check_config_fits_weights(classifier, names or None, pre or None, run.root / RUN_FILE)
    if not pre:
        raise ModelFileError("the model records no preprocessing (config.json has no 'preprocess', and no "
                             "run.json was found above it)", path=model_dir)
    if not names:
        names = [f"class {k}" for k in range(int(getattr(classifier, "num_classes", 2)))]
    return classifier.eval(), Preprocess.from_dict(pre), names


def explain_files(model_dir: str | Path, images: Sequence[str | Path], method: str = "saliency",
                  out: str | Path = "explanations", target: str | int | None = None,
                  allow_mismatch: bool = False) -> list[dict[str, Any]]:
    """Attribution maps for image files: per image ``<name>_<method>.png`` (image + overlay) and
    ``<name>_<method>.npy`` (the raw map, input size) in ``out``. Returns one record per image
    (path, predicted class and probability, explained class, written files). ``target``: a class
    name or index; None explains each image's predicted class. ``out`` inside the model folder or the
    images (or on one of them) is refused before any work (``fileio.check_output_dir``).
    An image unlike the training images is refused as ``predict`` refuses it (``data.mismatch``),
    before anything is written; with ``allow_mismatch`` its record carries the ``warning``. No image
    at all raises ``NoImagesError``."""
    from fewlabel.data.mismatch import screen_image
    from fewlabel.data.readers import collect_image_paths, read_image, read_meta
    from fewlabel.errors import FewlabelError, NoImagesError
    from fewlabel.fileio import check_output_dir
    from fewlabel.models.io import read_model_config
    from fewlabel.pipeline.region import crop_images, folder_unet

    config = read_model_config(model_dir)  # a model folder that is none is said first, in one line
    # The overlays are images: in the model's training data they would become training images.
    trained_on = _training_data(model_dir)
    check_output_dir(out, "explanation folder (--out)", inputs=(model_dir, *images, *trained_on))
    beside = [i for i in images if Path(i).is_file() and Path(out).resolve() == Path(i).resolve().parent]
    if beside:  # nor beside the images explained, where the next folder-wide command would read them
        raise FewlabelError(f"explanation folder (--out) holds the image {beside[0]}; the overlays would mix "
                            "with the images: choose another folder", path=out)
    classifier, pre, names = load_for_explain(model_dir)
    why = unsupported(classifier, method)
    if why is not None:
        raise FewlabelError(f"--method {method}: {why}", path=model_dir)
    unet = folder_unet(model_dir, config)  # None: the model sees whole images
    trained_sizes = config.get("trained_sizes")
    if target is not None and not isinstance(target, int):
        if str(target) in names:
            target = names.index(str(target))
        elif str(target).isdigit():
            target = int(target)
        else:
            raise FewlabelError(f"unknown class {target!r}; the model's classes: {', '.join(names)}")
    if isinstance(target, int) and not 0 <= target < len(names):
        raise FewlabelError(f"class index {target} out of range (the model has {len(names)} classes)")
    paths, errors = collect_image_paths(list(images))
    if errors:
        path, problem = errors[0]
        raise FewlabelError(problem, path=path)
    if not paths:
        raise NoImagesError("no image files found; nothing written", path=", ".join(map(str, images)))
    for path in paths:  # from the headers, so a refused image leaves no file of the others behind
        screen_image(read_meta(path), pre, allow_mismatch, trained_sizes, verb="explain")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    for path in paths:
        array, meta = read_image(path)
        warning = screen_image(meta, pre, allow_mismatch, trained_sizes, verb="explain")  # the decoded image
        x = pre.apply(array, meta)[None].astype(np.float32)
        if unet is not None:  # a region model: explained on the crop it classifies
            x = np.stack(crop_images(unet, [str(path)], x, pre)[0]).astype(np.float32)
        proba = _softmax(_logits(classifier, x))[0]
        explained = int(proba.argmax()) if target is None else int(target)
        amap = attribute(classifier, x, target=explained, method=method)
        stem = Path(path).name.split(".")[0]
        while stem in used:  # the same file name in two folders must not overwrite
            stem += "_"
        used.add(stem)
        png, npy = out / f"{stem}_{method}.png", out / f"{stem}_{method}.npy"
        label = f"{names[explained]} (p={proba[explained]:.2f})"
        title = Path(path).name + (f" ({REGION_CAPTION})" if unet is not None else "")
        save_png(attribution_grid(x, {method: amap}, [label], title=title), png)
        with atomic_path(npy, suffix=".npy") as tmp:  # np.save would append .npy to any other name
            np.save(tmp, amap[0])
        records.append({"path": str(path), "predicted": names[int(proba.argmax())],
                        "probability": float(proba.max()), "explained": names[explained],
                        "png": str(png), "npy": str(npy),
                        **({"input": REGION_CAPTION} if unet is not None else {}),
                        **({"warning": warning} if warning else {})})
    return records
