"""16-bit colour PNG decoding: the former pure-numpy decoder (before) vs ``read_image`` (libpng through
imagecodecs, after), on a 1024² RGB uint16 PNG whose rows cycle through all five PNG filters.

    python benchmarks/png_decode.py [--side 1024] [--repeats 3]

Prints a table: decoder, seconds (best of N), exact (same uint16 values as written).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the hand-written 16-bit PNG writer of the test suite


def old_decoder(path: Path) -> np.ndarray:
    """The decoder fewlabel used before: zlib + a Python loop over rows (and pixels for Avg/Paeth)."""
    data = path.read_bytes()
    pos, idat, ihdr = 8, [], b""
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    channels = {2: 3, 4: 2, 6: 4}[ihdr[9]]
    bpp, stride = 2 * channels, width * 2 * channels
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    zeros = np.zeros(bpp, np.int32)
    for y in range(height):
        ftype, line = int(rows[y, 0]), rows[y, 1:].astype(np.int32)
        if ftype == 0:
            rec = line
        elif ftype == 1:
            rec = (line.reshape(width, bpp).cumsum(0) % 256).ravel()
        elif ftype == 2:
            rec = (line + prev) % 256
        else:
            rec = np.zeros(stride, np.int32)
            for x in range(width):
                s = slice(x * bpp, (x + 1) * bpp)
                a = rec[(x - 1) * bpp:x * bpp] if x else zeros
                b = prev[s]
                if ftype == 3:
                    pred = (a + b) // 2
                else:
                    c = prev[(x - 1) * bpp:x * bpp] if x else zeros
                    p = a + b - c
                    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
                    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
                rec[s] = (line[s] + pred) % 256
        out[y] = rec
        prev = rec
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from fewlabel.data.readers import read_image

    from factory import write_png16

    rng = np.random.default_rng(0)
    img = (rng.random((3, args.side, args.side)) * 65535).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_png16(Path(tmp) / "rgb16.png", img)
        t_old, old = best_of(lambda: old_decoder(path), 1)
        t_new, new = best_of(lambda: read_image(path)[0], args.repeats)
    exact_old = bool(np.array_equal(np.moveaxis(old, -1, 0), img))
    exact_new = bool(np.array_equal(new, img.astype(np.float32)))
    print(f"16-bit RGB PNG {args.side}x{args.side}, rows cycling filters 0-4")
    print(f"{'decoder':<34}{'seconds':>10}{'exact':>8}")
    print(f"{'before: numpy row loop (1 run)':<34}{t_old:>10.3f}{exact_old!s:>8}")
    print(f"{'after: read_image (libpng)':<34}{t_new:>10.3f}{exact_new!s:>8}")
    print(f"speed-up: {t_old / t_new:.0f}x")


if __name__ == "__main__":
    main()
