"""Near-copies: images that are the same picture after a resize, a re-compression or a small edit.

Why: ``data.identity`` merges copies whose bytes or decoded pixels are the same, so such a copy never
sits on both sides of a split. A JPEG saved again at another quality, a thumbnail, a copy with its
brightness shifted or two border pixels cut off has other pixels and counts as another image; split
apart, the model is tested on an image it has seen. ``fewlabel inspect`` uses this module to WARN
about such pairs; nothing here merges, drops or moves data, and training never calls it.

The hash (a DCT "pHash", 64 bits): the image as grey (channels averaged), resampled to 32×32 by area
averaging, its 2-D DCT; the 63 lowest frequencies (the 8×8 corner without the constant term) are
compared with their median, one bit each (bit 63 is always 0). Only coarse structure survives: a
brightness offset moves the constant term alone and a contrast change scales every coefficient
alike, so neither moves a bit (until values clip); a re-compression or a resize moves a few. With 31
of 63 bits set in every hash (a flat image's are all 0), distances between images are even.

Flips and quarter turns: each image also gets the hashes of its 7 flipped / turned versions, taken
from the same DCT (a flip negates the odd frequencies along its axis, a transpose swaps the axes), so
a flipped or turned copy (an augmentation saved to disk) is found too. Two images' distance is the
smallest Hamming distance between either one's 8 hashes and the other as it is.

Only 2-D images are hashed. 3-D volumes are skipped, not reduced to a middle slice: a slice stands
for a volume only if both were cut alike, and the threshold was measured on 2-D images.

``DEFAULT_MAX_DISTANCE = 8`` bits, measured on PBC-8 and BCCD blood-cell sets (96×96 RGB PNG crops:
PBC-8 1,600 images in 8 classes of 200; BCCD 342 labelled white-cell crops in 5 classes):

* found at 8 bits, in both sets: every JPEG re-save at quality 75 (largest distance 4; quality 30:
  8), every 0.5× (Lanczos) and 2× (bicubic) resize (largest 2), every 0.5× resize re-saved as JPEG
  75 and every +20 brightness shift (largest 6), every horizontal flip and 90° turn (0), 96-98% of
  copies with 2 pixels cut from each side; only 17-33% with 5% cut from each side and under 1% with
  10% cut, or turned by 10°.
* distinct images of one class within 8 bits: PBC-8 4 of 159,200 pairs (0.0025%); BCCD 0 of
  24,706 (two more BCCD pairs within 8 bits, BloodImage_00204/00277 and 00237/00252, are the same
  cell in two overlapping smear photos: true near-copies). Of distinct images of different classes:
  PBC-8 12 of 1,120,000, BCCD 1 of 33,603.
* the choice: at 10 bits the same-class rate grows elevenfold on PBC-8 (44 pairs, 0.028%; BCCD 2
  distinct pairs) and a third true BCCD pair (00243/00250, 10 bits apart) would be found; at 6 bits
  no distinct pair is within reach, but neither are the two true BCCD pairs. Distinct cells were
  never closer than 8 bits in either set.

Measured with the seven flips and turns compared; without them (the images as they are) PBC-8 has 2
same-class pairs within 8 bits instead of 4.

Where every image shares one layout the hash says little: on 434 brain MRI slices (LGG, 128×128,
up to 4 per patient) 359 of 93,313 pairs of slices from different patients (0.38%) are within 8 bits,
as the head's outline on black dominates the lowest frequencies. Removing the set's mean pattern
before thresholding cut that to 72 (and PBC-8's 16 pairs of distinct cells to 4), but it makes a
hash depend on the other images and loses copies that are a large share of a set, so it is not done.

Search: the hashes are packed ``uint64``; pairs within the distance are found by XOR and popcount on
blocks of rows in numpy (every pair compared, no Python loop over pairs): about 1 s for 5,000 images
and 4 s for 10,000 on one core; the time grows with the square of the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["DEFAULT_MAX_DISTANCE", "HASH_BITS", "NearCopy", "image_hashes", "perceptual_hash",
           "hamming", "near_pairs", "find_near_copies"]

HASH_BITS = 64
DEFAULT_MAX_DISTANCE = 8  # bits; measured (module docstring)
_SIDE = 32  # resampled side: the DCT's 8×8 lowest frequencies then span a quarter of the band
_LOW = 8

# Sign of DCT coefficient (u, v) under a flip: a flip along an axis negates its odd frequencies.
_ODD = (np.arange(_LOW) % 2 == 1)
_FLIP_ROWS = np.where(_ODD[:, None], -1.0, 1.0) * np.ones((1, _LOW))
_FLIP_COLS = _FLIP_ROWS.T
# The 4 flip sign patterns; with and without a transpose they give all 8 flips and quarter turns.
_SIGNS = (np.ones((_LOW, _LOW)), _FLIP_ROWS, _FLIP_COLS, _FLIP_ROWS * _FLIP_COLS)
# Every low frequency but the constant term, whose bit would only say "the mean is positive".
_AC = np.ones((_LOW, _LOW), dtype=bool)
_AC[0, 0] = False
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(_LOW * _LOW - 1, dtype=np.uint64))


@dataclass(frozen=True)
class NearCopy:
    """Two samples whose perceptual hashes lie ``distance`` bits apart (``a`` comes first in the list
    the hashes were given in)."""

    a: str
    b: str
    distance: int


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float: the channels' mean. float32 input stays float32 and one channel stays a view, so a
    very large image costs at most one extra grey plane."""
    arr = np.asarray(image)
    if arr.ndim == 3:  # (C, H, W), as the readers return it
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
        arr = arr[0] if arr.shape[0] == 1 else arr.mean(axis=0, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image (H, W) or (C, H, W), got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise ValueError(f"empty image of shape {arr.shape}")
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def _dct_rows() -> np.ndarray:
    """(8, 32): the 8 lowest orthonormal DCT-II basis rows on 32 samples."""
    x = (np.arange(_SIDE) + 0.5) / _SIDE
    dct = np.cos(np.pi * np.arange(_LOW)[:, None] * x[None, :]) * np.sqrt(2.0 / _SIDE)
    dct[0] /= np.sqrt(2.0)
    return dct


_DCT = _dct_rows()
_CHUNK = 4096  # input samples per projection block: bounds memory for images of any side


def _projection_block(n: int, lo: int, hi: int) -> np.ndarray:
    """Columns ``lo:hi`` of the (8, n) map from n samples to the 8 low DCT coefficients of their
    area-average resampling to 32 (each output sample the mean of the input span it covers).

    Area averaging does not alias on downscaling, so a resized copy lands on nearly the same 32-sample
    grid."""
    edges = np.linspace(0.0, n, _SIDE + 1)
    k = np.arange(lo, hi)
    overlap = np.minimum(edges[1:, None], k[None, :] + 1) - np.maximum(edges[:-1, None], k[None, :])
    return _DCT @ (np.clip(overlap, 0.0, None) / (n / _SIDE))


@lru_cache(maxsize=64)
def _projection(n: int) -> np.ndarray:
    out = _projection_block(n, 0, n)
    out.flags.writeable = False
    return out


def _low_frequencies(grey: np.ndarray) -> np.ndarray:
    """(8, 8) low DCT coefficients of the 32×32 area-average resampling: two matrix products, in
    blocks of ``_CHUNK`` rows / columns so a long side needs no (8, side) matrix at once."""
    h, w = grey.shape
    if h <= _CHUNK:
        rows = _projection(h).astype(grey.dtype) @ grey
    else:
        rows = sum(_projection_block(h, lo, min(lo + _CHUNK, h)).astype(grey.dtype) @ grey[lo:lo + _CHUNK]
                   for lo in range(0, h, _CHUNK))
    rows = np.asarray(rows, dtype=np.float64)  # (8, W)
    if w <= _CHUNK:
        return rows @ _projection(w).T
    return sum(rows[:, lo:lo + _CHUNK] @ _projection_block(w, lo, min(lo + _CHUNK, w)).T
               for lo in range(0, w, _CHUNK))


def image_hashes(image: np.ndarray) -> np.ndarray:
    """The 8 hashes (``uint64``) of a 2-D image ``(H, W)`` or ``(C, H, W)`` under the flips and quarter
    turns; ``[0]`` is the image as it is. Values may be on any scale (uint8, uint16, float) but must be
    finite; pass colour channels only (an alpha channel would count as one)."""
    grey = _grey(image)
    low = _low_frequencies(grey)
    variants = np.stack([c * sign for c in (low, low.T) for sign in _SIGNS])  # (8, 8, 8)
    ac = variants[:, _AC]  # (8, 63)
    bits = ac > np.median(ac, axis=1, keepdims=True)
    hashes = (bits * _WEIGHTS).sum(axis=1, dtype=np.uint64)
    # a flat image has no structure: its coefficients are rounding noise (larger in float32 sums),
    # so all bits 0
    tol = 1e-4 if grey.dtype == np.float32 else 1e-9
    if np.abs(ac).max() <= tol * max(1.0, abs(float(low[0, 0]))):
        hashes[:] = 0
    return hashes


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit perceptual hash of a 2-D image as it is (no flip or turn)."""
    return int(image_hashes(image)[0])


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    # numpy < 2.0 has no popcount: the classic SWAR bit count on uint64 (wrapping multiply intended)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bits that differ between packed hashes (broadcast as numpy does)."""
    return _popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def _as_table(hashes: np.ndarray) -> np.ndarray:
    h = np.asarray(hashes, dtype=np.uint64)
    if h.ndim == 1:  # one hash per image: no flips or turns compared
        h = h[:, None]
    if h.ndim != 2:
        raise ValueError(f"expected hashes of shape (N,) or (N, 8), got {h.shape}")
    return h


def near_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
               block: int = 64) -> list[tuple[int, int, int]]:
    """Every pair ``(i, j, distance)``, ``i < j``, within ``max_distance`` bits, sorted by (i, j).

    ``hashes``: ``(N, 8)`` from ``image_hashes`` (distance = the smallest over either image's flips and
    turns against the other as it is) or ``(N,)`` (the images as they are). Each block of ``block``
    rows is compared with every later row at once, so memory stays near ``block × N × 8 × 8`` bytes.
    """
    h = _as_table(hashes)
    n = h.shape[0]
    plain = h[:, 0]
    found: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows, cols = h[start:stop], h[start:]
        # (rows, turns, cols) → (rows, cols): each row's turns against each later image as it is, and
        # each later image's turns against the row; the distance is the smaller of the two
        d = hamming(rows[:, :, None], plain[None, None, start:]).min(axis=1)
        d = np.minimum(d, hamming(plain[start:stop, None, None], cols.T[None, :, :]).min(axis=1))
        upper = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        ii, jj = np.nonzero((d <= max_distance) & upper)
        found.extend(zip((ii + start).tolist(), (jj + start).tolist(), d[ii, jj].tolist(), strict=True))
    return found


def find_near_copies(ids: Sequence[str], hashes: np.ndarray,
                     max_distance: int = DEFAULT_MAX_DISTANCE) -> list[NearCopy]:
    """``near_pairs`` with the samples named (``ids[k]`` for row ``k``): one ``NearCopy`` per pair,
    closest first, then in the order of ``ids``."""
    if len(ids) != len(hashes):
        raise ValueError(f"{len(ids)} ids for {len(hashes)} hashes")
    pairs = sorted(near_pairs(hashes, max_distance), key=lambda p: (p[2], p[0], p[1]))
    return [NearCopy(ids[i], ids[j], d) for i, j, d in pairs]
