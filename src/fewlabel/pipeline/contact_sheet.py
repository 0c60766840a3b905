"""A contact sheet: one self-contained HTML page of thumbnails, in the order the images are listed.

Thumbnails are inline base64 PNGs and the page forbids every external load (the report's
Content-Security-Policy), so it can be mailed or archived as is. 8-bit images are shown with their
own values (stain colours are what an expert reads); other value types are stretched between their
1st and 99th percentiles; a volume shows its middle slice; an alpha channel is left out. Names and
reasons are escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewlabel.data.readers import read_image
from fewlabel.errors import FewlabelError
from fewlabel.fileio import atomic_write_text

THUMB = 128  # px, the longer side of a thumbnail


@dataclass(frozen=True)
class Tile:
    label: str  # e.g. "1" (the rank)
    source: str  # the image read for the thumbnail
    shown: str  # the path shown under it (relative to the page, as the CSVs list it)
    note: str  # the reason, in small print


def thumbnail_png(path: str, side: int = THUMB) -> bytes:
    """PNG bytes of the image at ``path`` with its longer side ``side`` px (see the module docstring)."""
    from PIL import Image

    arr, meta = read_image(path)
    if arr.ndim == 4:
        arr = arr[:, arr.shape[1] // 2]
    channels = arr.shape[0] - (1 if meta.has_alpha else 0)
    img = arr[:3] if channels >= 3 else arr[:1]
    if meta.dtype == "uint8" and not meta.rescaled:
        scaled = img / 255.0
    else:
        lo, hi = np.percentile(img, (1, 99))
        scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    u8 = (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(u8[0] if len(u8) == 1 else np.ascontiguousarray(u8.transpose(1, 2, 0)))
    h, w = u8.shape[1:]
    scale = side / max(h, w)
    pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                     Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


_STYLE = f"""body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
.grid{{display:flex;flex-wrap:wrap;gap:14px}}
figure{{margin:0;width:{THUMB + 40}px;font-size:12px;word-break:break-all}}
img{{display:block;border:1px solid #bbb}}
.rank{{font-size:16px;font-weight:bold}}.why{{color:#555}}
.missing{{width:{THUMB}px;height:{THUMB}px;background:#eee}}
"""


def contact_sheet(tiles: Sequence[Tile], title: str, lines: Sequence[str]) -> str:
    """The page: ``title``, ``lines`` (paragraphs), then one figure per tile, in order."""
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
           'style-src \'unsafe-inline\'">',
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    out += [f"<p>{html.escape(line)}</p>" for line in lines]
    out.append('<div class="grid">')
    for tile in tiles:
        try:
            src = "data:image/png;base64," + base64.b64encode(thumbnail_png(tile.source)).decode("ascii")
            img = f'<img src="{src}" alt="{html.escape(tile.label)}">'
        except (FewlabelError, OSError, ValueError) as exc:  # read before; gone or changed since
            img = f'<div class="missing">{html.escape(str(exc))}</div>'
        out.append(f'<figure>{img}<figcaption><span class="rank">{html.escape(tile.label)}</span> '
                   f'{html.escape(tile.shown)}<br><span class="why">{html.escape(tile.note)}</span>'
                   "</figcaption></figure>")
    out += ["</div>", "</body></html>", ""]
    return "\n".join(out)


def write_contact_sheet(path: str | Path, tiles: Sequence[Tile], title: str, lines: Sequence[str]) -> Path:
    return atomic_write_text(path, contact_sheet(tiles, title, lines))
