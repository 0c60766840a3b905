"""Region input: each image cropped to what the segmentation U-Net finds in it, then resized.

The ``segmentation+region`` strategy (``strategies.Strategy.input == "region"``) classifies the
region the preparation's U-Net segments (a tumour) instead of the whole image: the U-Net was trained
on the masks of the pool's training patients only (``PreparedData.pretrain_inputs("masks")``) and
is saved whole beside its encoder (``pretrain.segmentation.UNET_FILE``).

Per image, training, validation and test alike, and from the image alone (no mask is ever read):
  1. the U-Net predicts a mask on the preprocessed image (the working size);
  2. the box around the largest connected foreground region is made square (a cube in 3D), widened
     by ``MARGIN`` of its side on each side for context, at least ``MIN_SIDE`` of the image, and
     shifted inside it;
     fewer than ``MIN_PIXELS`` foreground pixels = nothing found: the whole image is kept;
  3. that box, as fractions of the image, cuts the ORIGINAL file's pixels (more detail than the
     working-size array), and the crop goes through the data's own preprocessing (resize, z-score).

A model folder of this strategy carries its U-Net (``models.io.UNET_FILE``), and ``predict`` and
``explain`` crop new images through the same ``crop_images``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data import readers, tensors
from fewlabel.data.tensors import Preprocess
from fewlabel.errors import ModelFileError
from fewlabel.pipeline.data import PreparedData
from fewlabel.pipeline.encoders import StrategySpec

MARGIN = 0.25  # context around the found region, as a share of its side, on each side
MIN_SIDE = 0.25  # the crop is never smaller than this share of the image side
MIN_PIXELS = 4  # fewer predicted foreground pixels count as "nothing found"

Box = tuple[tuple[float, float], ...]  # per spatial axis (start, stop) as fractions of the side

# (U-Net file, preprocessing, sample id) -> whether a region was found. The crops themselves live
# in the image cache (``tensors.cache_store``), under its memory budget: a curve crops each image
# once while it fits.
_FOUND: dict[tuple[str, str, str], bool] = {}


def unet_path(encoder_path: str | Path) -> Path:
    """The U-Net saved beside a segmentation encoder file."""
    from fewlabel.pretrain.common import artefact_dir
    from fewlabel.pretrain.segmentation import UNET_FILE

    return artefact_dir(encoder_path) / UNET_FILE


def region_unet_source(spec: StrategySpec) -> Path | None:
    """The U-Net a model of ``spec`` crops with (to be copied into its model folder); None when the
    strategy classifies whole images."""
    from fewlabel import strategies

    if strategies.get(spec.name).input != "region" or not spec.encoder_weights:
        return None
    return unet_path(spec.encoder_weights)


def crops_region(config: dict[str, Any]) -> bool:
    """Whether a model folder's config (``pipeline.model_config``) is of a region strategy."""
    from fewlabel import strategies

    name = str((config.get("strategy") or {}).get("name", ""))
    return name in strategies.REGISTRY and strategies.REGISTRY[name].input == "region"


def folder_unet(model_dir: str | Path, config: dict[str, Any]) -> Any:
    """The U-Net a region model folder crops with (checked against its config), loaded; None for a
    model of whole images. A region model without one is refused in one line."""
    from fewlabel.models.io import model_unet_file

    if not crops_region(config):
        return None
    path = model_unet_file(model_dir, config)
    if path is None:
        # Its classifier learnt on U-Net crops: whole images would be scored on the wrong input.
        raise ModelFileError("this region model carries no U-Net to crop with (saved by an older "
                             "fewlabel?); train it again", path=model_dir)
    return load_region_unet(path)


def region_box(found: np.ndarray) -> Box | None:
    """The square box (fractions) around the foreground of one predicted mask ``(*spatial)``, or None
    when too little was found."""
    from scipy import ndimage

    # The largest connected region only: a few stray pixels elsewhere would stretch the box to the
    # whole image (on LGG slices a third of the U-Net's masks hold more than one region).
    labels, n = ndimage.label(found)
    if n > 1:
        found = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    if int(found.sum()) < MIN_PIXELS:
        return None
    shape = found.shape
    where = np.nonzero(found)
    lo = np.array([w.min() for w in where], float)
    hi = np.array([w.max() + 1 for w in where], float)
    side = max(float((hi - lo).max()) * (1 + 2 * MARGIN), MIN_SIDE * max(shape))
    box = []
    for a, n in enumerate(shape):
        s = min(side, float(n))
        start = min(max((lo[a] + hi[a]) / 2 - s / 2, 0.0), n - s)
        box.append((float(start / n), float((start + s) / n)))
    return tuple(box)


def load_region_unet(path: str | Path, encoder_path: str | Path | None = None) -> Any:
    """The U-Net at ``path`` (eval mode). ``encoder_path``: the encoder it was saved beside, named
    in the error when the U-Net is missing (an encoder prepared by an older fewlabel)."""
    from fewlabel.models.io import load_unet

    if not Path(path).is_file():
        raise ModelFileError("no U-Net beside this segmentation encoder (made by an older fewlabel?); "
                             "delete the encoder file to have it prepared again", path=encoder_path or path)
    return load_unet(path)


def predict_found(unet: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Boolean ``(N, *spatial)`` foreground of ``unet``'s prediction on preprocessed images ``x``."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = unet(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])))
            out.append((logits.argmax(1) > 0).numpy())
    return np.concatenate(out) if out else np.zeros((0, *x.shape[2:]), bool)


def crop_file(path: str, box: Box | None, preprocess: Preprocess) -> np.ndarray:
    """The original image at ``path`` cut to ``box`` (None: whole), preprocessed like every image."""
    array, meta = readers.read_image(path)
    if box is not None:
        spatial = array.shape[-len(box):]
        cut = tuple(slice(int(math.floor(a * n)), max(int(math.ceil(b * n)), int(math.floor(a * n)) + 1))
                    for (a, b), n in zip(box, spatial, strict=True))
        array = array[(Ellipsis, *cut)]
    return preprocess.apply(array, meta)


def crop_images(unet: Any, paths: list[str], x: np.ndarray,
                preprocess: Preprocess) -> tuple[list[np.ndarray], list[bool]]:
    """Each image ``paths[n]`` (preprocessed: ``x[n]``) cropped to the region ``unet`` finds in it,
    and whether one was found. The one crop of training, evaluation, ``predict`` and ``explain``."""
    crops, found = [], []
    for path, mask in zip(paths, predict_found(unet, x), strict=True):
        box = region_box(mask)
        crops.append(crop_file(path, box, preprocess))
        found.append(box is not None)
    return crops, found


def region_arrays(data: PreparedData, ids: list[str], encoder_path: str | Path) -> np.ndarray:
    """float32 ``(N, C, *size)``: each image of ``ids`` cropped to its U-Net region (module docstring).
    Reads the images only; masks are never opened, for any image."""
    pre_key = repr(sorted(data.preprocess.to_dict().items()))
    keys = [("region", str(encoder_path), pre_key, i) for i in ids]
    crops: dict[int, np.ndarray] = {}
    for n, key in enumerate(keys):
        hit = tensors.cache_lookup(key) if key[1:] in _FOUND else None
        if hit is not None:
            crops[n] = hit
    todo = [n for n in range(len(keys)) if n not in crops]
    if todo:
        x, _ = data.arrays([ids[n] for n in todo])
        unet = load_region_unet(unet_path(encoder_path), encoder_path)
        made, found = crop_images(unet, [data.catalog.by_id[ids[n]].path for n in todo], x, data.preprocess)
        for n, crop, hit in zip(todo, made, found, strict=True):
            crops[n] = crop
            tensors.cache_store(keys[n], crop)
            _FOUND[keys[n][1:]] = hit
    return np.stack([crops[n] for n in range(len(keys))]) if keys else np.zeros(
        (0, data.channels, *data.image_size), np.float32)


def region_note(data: PreparedData, ids: list[str], encoder_path: str | Path) -> str:
    """How many of ``ids`` (after ``region_arrays``) fell back to the whole image."""
    pre_key = repr(sorted(data.preprocess.to_dict().items()))
    missed = sum(not _FOUND.get((str(encoder_path), pre_key, i), True) for i in ids)
    return f"region input: the U-Net found no region in {missed} of {len(ids)} image(s); those stay whole"
