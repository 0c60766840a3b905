"""PNG grids a user can open to see a preparation learn: GAN samples, predicted vs true masks.

Float images are shown per image, scaled between their 1st and 99th percentile: z-scored phase maps
have no fixed display range, and one bright sample must not wash out the others. One channel gets
a colour map (viridis: perceptually even, readable in grey); three channels are shown as RGB;
other channel counts show channel 0. 3D volumes show their middle slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fewlabel.fileio import atomic_path

_PALETTE = np.array([  # background black, then tab10-like colours for classes 1..9
    [0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34]], dtype=np.uint8)


def middle_slice(x: np.ndarray) -> np.ndarray:
    """(C, H, W) stays; (C, D, H, W) -> its middle slice along D."""
    return x[:, x.shape[1] // 2] if x.ndim == 4 else x


def to_rgb(image: np.ndarray) -> np.ndarray:
    """One float image (C, H, W) -> uint8 (H, W, 3), per-image percentile scaling."""
    import matplotlib

    lo, hi = np.percentile(image, [1, 99])
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if image.shape[0] == 3:
        return (np.moveaxis(scaled, 0, -1) * 255).astype(np.uint8)
    rgba = matplotlib.colormaps["viridis"](scaled[0])
    return (rgba[..., :3] * 255).astype(np.uint8)


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Integer mask (H, W) -> uint8 (H, W, 3) with a fixed colour per class."""
    m = np.asarray(mask, dtype=np.int64)
    # Class 0 is black; classes 1.. cycle through the nine colours.
    return _PALETTE[np.where(m == 0, 0, (m - 1) % (len(_PALETTE) - 1) + 1)]


def _tile(tiles: list[list[np.ndarray]], min_side: int = 96, gap: int = 2) -> np.ndarray:
    """Rows of equally sized (H, W, 3) tiles -> one image, small tiles enlarged (nearest)."""
    h, w = tiles[0][0].shape[:2]
    k = max(1, int(np.ceil(min_side / max(h, w))))
    h, w = h * k, w * k
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    canvas = np.full((n_rows * (h + gap) + gap, n_cols * (w + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            big = np.kron(t, np.ones((k, k, 1), np.uint8)) if k > 1 else t
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            canvas[y:y + h, x:x + w] = big
    return canvas


def _save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:  # PIL picks the format from the extension
        Image.fromarray(array).save(tmp)
    return path


def save_image_grid(images: torch.Tensor | np.ndarray, path: str | Path, ncol: int = 8) -> Path:
    """Save (N, C, *spatial) float images as a grid PNG."""
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    tiles = [to_rgb(middle_slice(im)) for im in x]
    rows = [tiles[i:i + ncol] for i in range(0, len(tiles), ncol)]
    return _save_png(_tile(rows), path)


def save_mask_comparison(images: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray,
                         pred: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """One row per image: image | true mask | predicted mask (3D: middle slices)."""
    def arr(t: torch.Tensor | np.ndarray) -> np.ndarray:
        return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    x, t, p = arr(images), arr(true), arr(pred)
    rows = []
    for im, tm, pm in zip(x, t, p, strict=True):
        rows.append([to_rgb(middle_slice(im)), mask_to_rgb(middle_slice(tm)[0]),
                     mask_to_rgb(middle_slice(pm)[0])])
    return _save_png(_tile(rows), path)
