"""Near-copies: the perceptual hash finds re-saved, resized and turned copies and not other images; the
vectorised pair search equals a brute-force reference; ``inspect`` warns naming both files and leaves
the exit code, the problems and the data alone."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fewlabel.data.inspect import inspect_data
from fewlabel.data.near_copies import (
    DEFAULT_MAX_DISTANCE,
    find_near_copies,
    hamming,
    image_hashes,
    near_pairs,
    perceptual_hash,
)

from factory import make_class_folder, run_cli, write_jpeg, write_png

D = DEFAULT_MAX_DISTANCE


def textured_image(seed: int, size: int = 96) -> np.ndarray:
    """(3, size, size) uint8: a few random soft blobs and low-frequency waves, plus pixel noise; two
    seeds give two unrelated pictures, as two photographs would be."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    chans = []
    for _ in range(3):
        img = np.zeros((size, size))
        for _ in range(6):
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
            img += rng.uniform(-1, 1) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2))
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 2 * np.pi)
            img += 0.3 * np.sin(2 * np.pi * (fy * y + fx * x) + ph)
        img += rng.normal(0, 0.05, (size, size))
        chans.append(img)
    arr = np.stack(chans)
    arr = (arr - arr.min()) / (arr.max() - arr.min())
    return np.round(20 + 215 * arr).astype(np.uint8)


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.moveaxis(arr, 0, -1))


def _arr(im: Image.Image) -> np.ndarray:
    return np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)


def jpeg_resave(arr: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    _pil(arr).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return _arr(Image.open(buf))


def resized(arr: np.ndarray, factor: float) -> np.ndarray:
    im = _pil(arr)
    return _arr(im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS))


def distance(a: np.ndarray, b: np.ndarray) -> int:
    """The distance ``near_pairs`` uses, from two images' 8 hashes, computed pair by pair."""
    ha, hb = image_hashes(a), image_hashes(b)
    return int(min(hamming(ha, hb[0]).min(), hamming(ha[0], hb).min()))


# ------------------------------------------------------------------------------------------------
# The hash
# ------------------------------------------------------------------------------------------------


def test_resaved_and_resized_copies_are_found():
    original = textured_image(1)
    assert original[0].std() > 20  # a picture with structure, not a flat field
    copies = {"jpeg q75": jpeg_resave(original, 75), "0.5x": resized(original, 0.5),
              "2x": resized(original, 2.0), "0.5x then jpeg q75": jpeg_resave(resized(original, 0.5), 75),
              "brightness +20": np.clip(original.astype(int) + 20, 0, 255).astype(np.uint8)}
    assert all(not np.array_equal(c, original) for c in copies.values())  # not pixel-identical
    hashes = np.stack([image_hashes(original)] + [image_hashes(c) for c in copies.values()])
    pairs = {(i, j) for i, j, _ in near_pairs(hashes)}
    for k, name in enumerate(copies, start=1):
        assert (0, k) in pairs, f"{name} copy not found (distance {distance(original, copies[name])})"


def test_flipped_and_turned_copies_are_found_through_the_turn_hashes():
    original = textured_image(2)
    for copy in (original[:, :, ::-1], original[:, ::-1, :], np.rot90(original, 1, axes=(1, 2)),
                 np.transpose(original, (0, 2, 1))):
        copy = np.ascontiguousarray(copy)
        assert distance(original, copy) == 0
        # the turn's hash is one of the original's 8, so the image as it is differs from it
        assert perceptual_hash(copy) in set(image_hashes(original).tolist())
        assert near_pairs(np.stack([image_hashes(original), image_hashes(copy)])) == [(0, 1, 0)]
        # compared as they are (one hash each), a flipped image is another image
        assert near_pairs(np.array([perceptual_hash(original), perceptual_hash(copy)], dtype=np.uint64)) == []


def test_different_images_are_not_near_copies():
    images = [textured_image(seed) for seed in range(10, 22)]
    hashes = np.stack([image_hashes(im) for im in images])
    assert near_pairs(hashes) == []
    closest = min(distance(a, b) for k, a in enumerate(images) for b in images[k + 1:])
    assert closest > D


def test_hash_ignores_value_scale_and_offset_and_channel_layout():
    arr = textured_image(3).astype(np.float64)
    h = image_hashes(arr)
    np.testing.assert_array_equal(image_hashes(arr * 3.0 + 1000.0), h)  # another scale and offset
    np.testing.assert_array_equal(image_hashes(arr.mean(axis=0)), h)  # (H, W) grey = channel mean
    assert image_hashes(arr).dtype == np.uint64 and h.shape == (8,)
    assert set(image_hashes(np.full((3, 20, 30), 7.0)).tolist()) == {0}  # flat: no structure
    with pytest.raises(ValueError, match="2-D image"):
        image_hashes(np.zeros((1, 4, 8, 8)))  # a volume is refused, never hashed by accident


# ------------------------------------------------------------------------------------------------
# The pair search
# ------------------------------------------------------------------------------------------------


def test_threshold_edge_is_inclusive():
    # plain hashes: 0 and the D lowest bits set are D apart, the D + 1 lowest bits set D + 1 apart
    h = np.array([0, (1 << D) - 1, (1 << (D + 1)) - 1], dtype=np.uint64)
    assert near_pairs(h) == [(0, 1, D), (1, 2, 1)]
    assert near_pairs(h, max_distance=D + 1) == [(0, 1, D), (0, 2, D + 1), (1, 2, 1)]
    assert near_pairs(h, max_distance=D - 1) == [(1, 2, 1)]
    assert near_pairs(h, max_distance=0) == []


def _brute_force(h: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    def bits(x: int, y: int) -> int:
        return bin(int(x) ^ int(y)).count("1")

    out = []
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            d = min(min(bits(h[i, k], h[j, 0]) for k in range(h.shape[1])),
                    min(bits(h[i, 0], h[j, k]) for k in range(h.shape[1])))
            if d <= max_distance:
                out.append((i, j, d))
    return out


def _bits(positions) -> np.uint64:
    return np.uint64(sum(1 << int(b) for b in positions))


def _clustered_hashes(rng: np.random.Generator, n: int, turns: int = 8) -> np.ndarray:
    """Random hashes, half of them a few bits from an earlier one (so that pairs exist at every
    distance around the threshold): the later image as it is near one of the earlier's turns, or one
    of the later's turns near the earlier as it is (the search must look both ways)."""
    h = rng.integers(0, 2**63, size=(n, turns), dtype=np.uint64, endpoint=True)
    for i in range(n // 2, n):
        k, t = int(rng.integers(0, n // 2)), int(rng.integers(0, turns))
        flips = _bits(rng.choice(64, size=rng.integers(0, 2 * D), replace=False))
        if i % 2:
            h[i, 0] = h[k, t] ^ flips
        else:
            h[i, t] = h[k, 0] ^ flips
    return h


@pytest.mark.parametrize("block", [1, 7, 64])
def test_vectorised_search_equals_brute_force(block):
    rng = np.random.default_rng(block)
    h = _clustered_hashes(rng, 90)
    for max_distance in (0, D // 2, D, D + 3):
        expected = _brute_force(h, max_distance)
        assert near_pairs(h, max_distance, block=block) == expected
    assert any(d == D for *_, d in _brute_force(h, D))  # the edge itself is exercised
    plain = h[:, 0]
    assert near_pairs(plain, D, block=block) == _brute_force(plain[:, None], D)


def test_large_set_finds_planted_pairs():
    rng = np.random.default_rng(5)
    n = 5000
    h = rng.integers(0, 2**63, size=(n, 8), dtype=np.uint64, endpoint=True)
    planted = set()
    for k in range(40):
        i, j = sorted(rng.choice(n, size=2, replace=False).tolist())
        if any(i in p or j in p for p in planted):
            continue
        h[j, 0] = h[i, k % 8] ^ _bits(rng.choice(64, size=k % (D + 1), replace=False))
        planted.add((i, j))
    found = near_pairs(h)
    assert planted <= {(i, j) for i, j, _ in found}
    for i, j, d in found:  # anything else found is truly within reach
        assert d == _brute_force(h[[i, j]], 64)[0][2] <= D


def test_find_near_copies_names_pairs_closest_first():
    a, b = textured_image(30), textured_image(31)
    h = np.stack([image_hashes(x) for x in (a, b, jpeg_resave(b), resized(a, 0.5))])
    found = find_near_copies(["a.png", "b.png", "b.jpg", "a_small.png"], h)
    assert {(p.a, p.b) for p in found} == {("a.png", "a_small.png"), ("b.png", "b.jpg")}
    assert [p.distance for p in found] == sorted(p.distance for p in found)
    with pytest.raises(ValueError):
        find_near_copies(["only one"], h)


# ------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------


def _textured_folder(root, per_class: int = 4):
    """Class folders of unrelated textured PNGs (no near-copies among them)."""
    for k, cls in enumerate(("a", "b")):
        for i in range(per_class):
            write_png(root / cls / f"img{i}.png", textured_image(100 + 10 * k + i))
    return root


def test_inspect_warns_naming_both_files_of_a_near_copy(tmp_path, capsys):
    root = _textured_folder(tmp_path / "d")
    clean = inspect_data(root)
    assert clean.near_copies["n_pairs"] == 0 and clean.ok
    write_jpeg(root / "b" / "resaved.jpg", textured_image(100), quality=75)  # a/img0.png re-saved
    rep = inspect_data(root)
    assert rep.ok and rep.problems == []  # a warning, never a problem
    assert rep.near_copies["n_pairs"] == 1
    pair = rep.near_copies["pairs"][0]
    assert (pair["a"], pair["b"]) == ("a/img0.png", "b/resaved.jpg") and pair["distance"] <= D
    assert pair["labels"] == ["a", "b"] and not pair["straddles_split"]
    line = next(w for w in rep.warnings if "near-copy" in w)
    assert line.startswith(f"1 near-copy pair(s) (perceptual hash within {D} bits")
    assert "a/img0.png ↔ b/resaved.jpg" in line and "classes 'a' and 'b'" in line

    code = run_cli("inspect", root)
    out = capsys.readouterr().out
    assert code == 0 and "no problems found" in out
    assert "near-copy" in out and "a/img0.png" in out and "b/resaved.jpg" in out
    code = run_cli("inspect", root, "--json")
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["near_copies"]["n_pairs"] == 1
    assert {data["near_copies"]["pairs"][0]["a"], data["near_copies"]["pairs"][0]["b"]} == {
        "a/img0.png", "b/resaved.jpg"}


def test_inspect_bounds_the_list_but_counts_every_pair(tmp_path):
    root = _textured_folder(tmp_path / "d", per_class=3)
    for i in range(7):  # 7 resized copies of one image: 8 images, 28 pairs among them
        write_png(root / "a" / f"small{i}.png", resized(textured_image(100), 0.5 + 0.05 * i))
    rep = inspect_data(root)
    assert rep.near_copies["n_pairs"] == 28 and len(rep.near_copies["pairs"]) == 28
    line = next(w for w in rep.warnings if "near-copy" in w)
    assert line.startswith("28 near-copy pair(s)") and line.count("↔") == 5 and "and 23 more" in line


def test_inspect_calls_out_near_copies_across_a_given_split(tmp_path, capsys):
    root = tmp_path / "m"
    rows = []
    for i in range(6):
        cls = "a" if i % 2 else "b"
        write_png(root / "files" / f"{cls}_{i}.png", textured_image(200 + i))
        rows.append({"path": f"files/{cls}_{i}.png", "label": cls, "split": "test" if i >= 4 else "train"})
    write_jpeg(root / "files" / "copy_of_0.jpg", textured_image(200), quality=75)
    rows.append({"path": "files/copy_of_0.jpg", "label": "b", "split": "test"})
    write_png(root / "files" / "small_1.png", resized(textured_image(201), 0.5))
    rows.append({"path": "files/small_1.png", "label": "a", "split": "train"})  # same side: no leak
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    rep = inspect_data(manifest)
    nc = rep.near_copies
    assert nc["n_pairs"] == 2 and nc["n_straddling_split"] == 1
    first = nc["pairs"][0]  # the pair across the split is listed first
    assert (first["a"], first["b"]) == ("files/b_0.png", "files/copy_of_0.jpg") and first["straddles_split"]
    assert not nc["pairs"][1]["straddles_split"]
    line = next(w for w in rep.warnings if "straddle" in w)
    assert line.startswith("1 near-copy pair(s) straddle the given split")
    assert "files/b_0.png (train) ↔ files/copy_of_0.jpg (test)" in line and "small_1" not in line
    code = run_cli("inspect", manifest)
    out = capsys.readouterr().out
    assert code == 0 and "straddle" in out and "files/copy_of_0.jpg" in out


def test_inspect_keeps_exact_duplicates_out_of_near_copies(tmp_path):
    root = _textured_folder(tmp_path / "d")
    shutil.copy(root / "a" / "img1.png", root / "a" / "copy.png")
    rep = inspect_data(root)
    assert [p.kind for p in rep.problems] == ["duplicate"]  # reported (and merged) as before
    assert rep.near_copies["n_pairs"] == 0 and not [w for w in rep.warnings if "near-copy" in w]


def test_inspect_skips_volumes_and_says_so(tmp_path, capsys):
    root = make_class_folder(tmp_path / "v", {"a": 3, "b": 3}, size=(4, 8, 8), fmt="nii.gz")
    rep = inspect_data(root)
    assert rep.sample_kind == "3D volumes"
    assert rep.near_copies["n_not_compared"] == 6 and rep.near_copies["n_compared"] == 0
    assert rep.near_copies["n_pairs"] == 0
    assert any("2-D images only: 6 3-D volume(s) not compared" in n for n in rep.notes)
    code = run_cli("inspect", root)
    out = capsys.readouterr().out
    assert code == 0 and "not looked for (3-D volumes are not compared)" in out


def test_inspect_says_when_there_are_too_many_images_to_compare(tmp_path, monkeypatch, capsys):
    import fewlabel.data.inspect_near_copies as inspect_mod

    root = _textured_folder(tmp_path / "d")
    write_jpeg(root / "b" / "resaved.jpg", textured_image(100), quality=75)
    monkeypatch.setattr(inspect_mod, "NEAR_COPIES_MAX_IMAGES", 5)
    rep = inspect_data(root)
    assert rep.near_copies["n_pairs"] is None and rep.near_copies["n_not_compared"] == 9
    assert any("near-copies not looked for: 9 2-D images" in n for n in rep.notes)
    assert not [w for w in rep.warnings if "near-copy" in w] and rep.ok
    code = run_cli("inspect", root)
    out = capsys.readouterr().out
    assert code == 0 and "not looked for" in out
