"""What the readers did that the user should hear of, as one line per kind of event.

Why one module: ``inspect`` (every file) and the pipeline behind ``train`` / ``curve`` (the files it
trains on) must say the same thing in the same words. Each line names a few files and counts the
rest, so a data set of thousands of such files still gets one line.

* ``note``: an EXIF orientation was applied (the pixels are turned as a viewer shows them).
* ``warning``: frames, pages or series beyond the first were not read (an animated PNG, a
  multi-picture JPEG, a TIFF whose pages differ; a TIFF of same-sized pages is a volume, read whole).
* ``warning``: images whose values dwarf the others' (``SCALE_FACTOR`` × the median of the per-image
  largest magnitudes, after integer data are divided by their type's maximum, as preprocessing does):
  one such image sets the normalisation's mean and spread and flattens every other image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fewlabel.data.readers import ImageMeta, dtype_max

#: An image whose largest magnitude exceeds this many times the median image's is a scale outlier.
SCALE_FACTOR = 100.0
#: Files named in one line; the rest are counted.
SHOWN = 3


def few(names: Sequence[str], shown: int = SHOWN) -> str:
    """``"a, b, c and 4 more"``."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def scaled_peak(abs_max: float, meta: ImageMeta) -> float:
    """The largest magnitude as normalisation sees it: integer data divided by their type's maximum
    (unless the reader already applied a physical rescale), floats as they are."""
    top = None if meta.rescaled else dtype_max(meta.dtype)
    return abs_max / top if top else abs_max


def reading_lines(metas: Mapping[str, ImageMeta]) -> list[tuple[str, str]]:
    """(level, line): the EXIF note and the unread-frames warning for these files (id → metadata)."""
    lines = []
    turned = [i for i, m in metas.items() if m.orientation != 1]
    if turned:
        lines.append(("note", f"EXIF orientation applied to {len(turned)} file(s) (their pixels are turned "
                      f"as a viewer shows them): {few(turned)}"))
    partial = [(i, m.unread_frames) for i, m in metas.items() if m.unread_frames > 0]
    if partial:
        named = [f"{i} ({k} unread)" for i, k in partial]
        lines.append(("warning", f"{len(partial)} file(s) hold frames or pages beyond the first, which are "
                      f"not read (an animation, or a TIFF whose pages differ): {few(named)}"))
    return lines


def scale_outliers(peaks: Mapping[str, float]) -> list[str]:
    """Ids whose largest magnitude is over ``SCALE_FACTOR`` × the median of all images' (``scaled_peak``
    values). A median is robust to the outliers themselves; with fewer than 3 images none is typical."""
    if len(peaks) < 3:
        return []
    typical = float(np.median(list(peaks.values())))
    if typical <= 0:
        return []
    return [i for i, v in peaks.items() if v > SCALE_FACTOR * typical]


def scale_line(peaks: Mapping[str, float], what: str = "the normalisation") -> str | None:
    """One warning (its text) naming the scale outliers among ``peaks``, or None."""
    outliers = scale_outliers(peaks)
    if not outliers:
        return None
    typical = float(np.median(list(peaks.values())))
    largest = max(peaks[i] for i in outliers)
    return (f"{len(outliers)} image(s) hold values over {SCALE_FACTOR:g}x the typical image's "
            f"(largest {largest:.3g} vs a median of {typical:.3g}, integers scaled by their type's maximum) "
            f"and dominate {what}: {few(outliers)}; rescale or remove them")
