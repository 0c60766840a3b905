"""No leakage: pretraining never sees test groups (pool) or test masks (segmentation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabel.data.catalog import load_catalog, load_pool
from fewlabel.errors import FewlabelError, SplitError
from fewlabel.pipeline import prepare_data
from fewlabel.pretrain.leakage import check_disjoint, exclude_groups, leak_free_ids, training_mask_ids

PATTERN = r"BloodImage_\d+"


def bccd_like(root: Path, n_smears: int = 10, crops: int = 3) -> tuple[Path, Path]:
    """labelled/<class>/BloodImage_000NN.png (one white cell per smear) and
    unlabelled/BloodImage_000NN_rK.png (red-cell crops cut from the same smears)."""
    labelled, pool = root / "labelled", root / "unlabelled"
    for i in range(n_smears):
        cls = "lymphocyte" if i % 2 else "neutrophil"
        (labelled / cls).mkdir(parents=True, exist_ok=True)
        value = np.full((16, 16), 10 * i + 5, np.uint8)
        Image.fromarray(value).save(labelled / cls / f"BloodImage_{i:05d}.png")
        pool.mkdir(parents=True, exist_ok=True)
        for k in range(crops):
            Image.fromarray(value).save(pool / f"BloodImage_{i:05d}_r{k}.png")
    return labelled, pool


def test_pool_loses_every_crop_of_a_test_smear(tmp_path):
    labelled, pool_dir = bccd_like(tmp_path)
    prepared = prepare_data(labelled, group_pattern=PATTERN, test_size=0.2, seed=0, unlabelled=pool_dir)
    test_groups = prepared.test_groups
    assert test_groups  # the hold-out is not empty
    pool = load_pool(pool_dir, group_pattern=PATTERN)
    kept = exclude_groups(pool, test_groups)
    kept_groups = set(kept.groups(kept.ids))
    assert not kept_groups & test_groups
    assert len(kept.ids) == len(pool.ids) - 3 * len(test_groups)  # all 3 crops of each test smear
    # The pipeline's own pool (what `train --unlabelled` and `pretrain --holdout-from` use) agrees.
    assert sorted(prepared.pool_without_test_groups()) == sorted(kept.ids)
    check_disjoint(kept_groups, test_groups)
    with pytest.raises(SplitError, match="shares"):
        check_disjoint(pool.groups(pool.ids), test_groups)


def test_leak_free_ids_keeps_order():
    assert leak_free_ids(["a1", "b1", "a2", "c1"], ["a", "b", "a", "c"], {"a"}) == ["b1", "c1"]


def test_segmentation_gets_training_masks_only(tmp_path):
    root = tmp_path / "seg"
    for i in range(12):
        cls = f"grade{i % 2}"
        for sub in ("images", "masks"):
            (root / sub / cls).mkdir(parents=True, exist_ok=True)
        # Two slices per patient: patient = i // 2, so a patient's slices must stay together.
        name = f"pat{i // 2}_s{i}.png"
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / "images" / cls / name)
        Image.fromarray((np.eye(8) * 255).astype(np.uint8)).save(root / "masks" / cls / name)
    cat = load_catalog(root, group_pattern=r"(pat\d+)_")
    test_ids = [cat.ids[0]]  # one slice of one patient is a test image ...
    patient = cat.groups(test_ids)[0]
    rest = [i for i in cat.ids if i not in test_ids]
    kept = training_mask_ids(cat, rest, test_ids)
    # ... so the patient's other slice is dropped too, and everything else keeps its mask.
    assert kept == [i for i in rest if cat.by_id[i].group != patient]
    assert len(kept) == len(rest) - 1
    with pytest.raises(SplitError, match="test image"):
        training_mask_ids(cat, rest + test_ids, test_ids)


def test_pool_holding_the_labelled_files_loses_the_test_files(tmp_path):
    """An unlabelled folder that contains the labelled files themselves (``--unlabelled`` = the data
    folder, or its ``images/``) must not hand test images or test masks to pretraining, even when the
    pool's ids/groups are not comparable with the labelled ones (manifest groups, images/ + masks/)."""
    import os

    from factory import make_image_mask_tree, make_manifest

    def real(p: str) -> str:
        return os.path.realpath(p)

    csv = make_manifest(tmp_path / "man", classes={"a": 8, "b": 8}, groups=True)
    prepared = prepare_data(csv, unlabelled=tmp_path / "man" / "files", test_size=0.25, seed=0)
    test_groups = prepared.test_groups
    tainted = {real(s.path) for s in prepared.catalog.samples if s.group in test_groups}
    kept = prepared.pool_without_test_groups()
    assert kept and not {real(prepared.unlabelled.by_id[i].path) for i in kept} & tainted

    root = make_image_mask_tree(tmp_path / "seg", classes={"a": 6, "b": 6})
    for pool_dir in (root, root / "images"):
        prepared = prepare_data(root, unlabelled=pool_dir, test_size=0.25, seed=0)
        tainted = set()
        for s in prepared.catalog.samples:
            if s.group in prepared.test_groups:
                tainted |= {real(s.path), real(s.mask)}
        kept = prepared.pool_without_test_groups()
        assert kept and not {real(prepared.unlabelled.by_id[i].path) for i in kept} & tainted


def test_pool_copies_of_test_images_are_found_by_content_not_by_path(tmp_path):
    """A pool folder holding copies of the labelled files (another folder, other names) loses the copies
    of test images: content keys match where paths and groups cannot."""
    import shutil

    from factory import make_manifest

    csv = make_manifest(tmp_path / "man", classes={"a": 8, "b": 8}, groups=True)
    shutil.copytree(tmp_path / "man" / "files", tmp_path / "elsewhere")
    for i, f in enumerate(sorted((tmp_path / "elsewhere").iterdir())):
        f.rename(f.with_name(f"renamed_{i}{f.suffix}"))
    prepared = prepare_data(csv, unlabelled=tmp_path / "elsewhere", test_size=0.25, seed=0)
    entry = prepared.plan.pretrain_pools["unlabelled"]
    assert entry["dropped_test_content"] == len(prepared.test_ids) > 0
    assert len(entry["ids"]) == 16 - len(prepared.test_ids)
    kept_keys = {prepared.unlabelled_keys[i] for i in entry["ids"]}
    assert not kept_keys & prepared.test_file_keys



def test_empty_masks_on_both_sides_of_the_split_are_no_leak(tmp_path):
    """Slices without a lesion share one all-zero mask file content. A mask is seen only with its
    image, so identical empty masks in the test set and the pretraining pool must not fail the cells."""
    from fewlabel.experiments import run_curve

    from factory import make_image_mask_tree

    root = make_image_mask_tree(tmp_path / "seg", {"a": 10, "b": 10}, size=(16, 16))
    for cls in ("a", "b"):  # 8 of 10 masks per class empty: some in the test set, most in the pool
        for mask in sorted((root / "masks" / cls).iterdir())[:8]:
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    prepared = prepare_data(root, test_size=3, seed=0)
    test_masks = {prepared.catalog.by_id[i].mask for i in prepared.test_ids}
    assert len({Path(m).read_bytes() for m in test_masks}) < len(test_masks)  # copies among test masks
    result = run_curve(root, tmp_path / "run", strategies="segmentation,segmentation+region", sizes=[2],
                       repeats=1, test_size=3, seed=0, finetune={"max_epochs": 1, "device": "cpu"},
                       pretrain={"steps": 4, "batch_size": 4, "log_every": 2}, log=None, progress=False)
    assert result.counts == {"ok": 2, "failed": 0, "skipped": 0}, result.failed
    seen = json.loads((tmp_path / "run" / "run.json").read_text())["preparations"]
    assert set(seen) == {"segmentation", "segmentation+region"}


def _resave(src: Path, dst: Path) -> Path:
    """The same pixels in another file: other compression and a text chunk, so the bytes differ."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "another viewer")
    Image.open(src).save(dst, compress_level=1, pnginfo=info)
    assert dst.read_bytes() != src.read_bytes()
    assert np.array_equal(np.asarray(Image.open(dst)), np.asarray(Image.open(src)))
    return dst


def test_a_re_saved_copy_is_merged_with_its_original(tmp_path):
    from factory import make_class_folder

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(16, 16), channels=3)
    original = sorted((data / "a").iterdir())[0]
    copy = _resave(original, data / "a" / "zz_resaved.png")
    for seed in range(4):  # whatever the draw, the two never sit on both sides of the split
        prepared = prepare_data(data, test_size=0.25, seed=seed)
        ids = {f"a/{original.name}", f"a/{copy.name}"}
        assert sorted(ids) in prepared.plan.merged
        assert len(ids & set(prepared.test_ids)) in (0, 2)


def test_a_re_saved_copy_of_a_test_image_never_reaches_pretraining(tmp_path):
    from fewlabel.pipeline import check_encoder_file

    from factory import make_class_folder, make_pool

    data = make_class_folder(tmp_path / "d", {"a": 8, "b": 8}, size=(16, 16), channels=3)
    pool = make_pool(tmp_path / "pool", n=6, size=(16, 16), channels=3)
    prepared = prepare_data(data, test_size=0.25, seed=0)
    _resave(Path(prepared.catalog.by_id[prepared.test_ids[0]].path), pool / "resaved.png")
    prepared = prepare_data(data, unlabelled=pool, test_size=0.25, seed=0)
    entry = prepared.plan.pretrain_pools["unlabelled"]
    assert entry["dropped_test_content"] == 1 and len(entry["ids"]) == 6
    # an encoder made elsewhere on a pool holding the copy: its record names the copy's pixels
    copy_id = next(s.id for s in prepared.unlabelled.samples if s.id.endswith("resaved.png"))
    seen = sorted(prepared.seen_keys_of([copy_id], unlabelled=True))
    with pytest.raises(FewlabelError, match="trained on 1 of the test images"):
        check_encoder_file("enc.safetensors", {"seen_files": seen}, prepared)
