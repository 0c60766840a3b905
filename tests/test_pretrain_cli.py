"""`fewlabel pretrain {gan,segmentation,ssl}`: files, progress lines, cache, and no test leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabel.cli import main
from fewlabel.models.io import load_encoder, read_header
from fewlabel.pipeline import prepare_data

PATTERN = r"BloodImage_\d+"
SMALL = ["--steps", "2", "--width", "4", "--depth", "2", "--batch-size", "4"]


def bccd_like(root: Path, n_smears: int = 10, crops: int = 2) -> tuple[Path, Path]:
    """Labelled white cells and unlabelled red-cell crops from the same smears; each smear's
    pixel value is 10 * index + 5, so a pretraining input tells which smear it came from."""
    labelled, pool = root / "labelled", root / "pool"
    for i in range(n_smears):
        cls = "lymphocyte" if i % 2 else "neutrophil"
        (labelled / cls).mkdir(parents=True, exist_ok=True)
        pool.mkdir(parents=True, exist_ok=True)
        value = np.full((16, 16, 3), 10 * i + 5, np.uint8)
        Image.fromarray(value).save(labelled / cls / f"BloodImage_{i:05d}.png")
        for k in range(crops):
            Image.fromarray(value).save(pool / f"BloodImage_{i:05d}_r{k}.png")
    return labelled, pool


def source_index(images: np.ndarray, preprocess: dict) -> list[int]:
    """Undo the z-score and the /255 to recover each image's smear index."""
    mean, std = np.asarray(preprocess["mean"]), np.asarray(preprocess["std"])
    raw = (images[:, :, 0, 0] * std + mean) * 255
    return sorted({int(round((v - 5) / 10)) for v in raw[:, 0]})


@pytest.fixture
def spy(monkeypatch):
    """Replace a trainer by one that records its inputs and returns an untrained encoder."""
    seen: dict = {}

    def install(module_name: str, func_name: str):
        import importlib

        module = importlib.import_module(module_name)

        def fake(images, *args, encoder=None, **kwargs):
            seen["images"] = np.asarray(images)
            val = kwargs.get("val_images")
            seen["val_images"] = np.zeros((0,)) if val is None else np.asarray(val)
            if args and not hasattr(args[0], "steps"):
                seen["masks"] = np.asarray(args[0])
            return encoder, {"steps": 0, "final_losses": {}}

        monkeypatch.setattr(module, func_name, fake)
        return seen

    return install


def test_gan_writes_file_pictures_and_is_cached_the_second_time(tmp_path, capsys):
    _, pool = bccd_like(tmp_path)
    out = tmp_path / "gan.safetensors"
    args = ["pretrain", "gan", str(pool), "--out", str(out), "--image-size", "16",
            "--cache-dir", str(tmp_path / "cache"), *SMALL]
    main(args)
    text = capsys.readouterr().out
    assert f"encoder written to {out}" in text and "2 steps" in text and "loss_d" in text
    assert (tmp_path / "gan_files" / "samples_final.png").exists()
    encoder, meta = load_encoder(out)
    assert meta["method"] == "gan" and encoder.in_channels == 3 and meta["preprocess"]["size"] == [16, 16]
    main([*args, "--overwrite"])  # the --out file exists now: replacing it needs consent
    assert "cached" in capsys.readouterr().out


def test_ssl_pool_excludes_test_smears(tmp_path, spy):
    labelled, pool = bccd_like(tmp_path)
    seen = spy("fewlabel.pretrain.ssl", "pretrain_ssl")
    out = tmp_path / "ssl.safetensors"
    main(["pretrain", "ssl", str(pool), "--out", str(out), "--holdout-from", str(labelled),
          "--group-pattern", PATTERN, "--cache-dir", str(tmp_path / "cache"), *SMALL])
    prepared = prepare_data(labelled, group_pattern=PATTERN, test_size=0.2, seed=0)
    test_smears = {int(g.split("_")[1]) for g in prepared.test_groups}
    used = source_index(seen["images"], read_header(out)["meta"]["preprocess"])
    assert test_smears and not set(used) & test_smears
    assert set(used) == set(range(10)) - test_smears
    assert len(seen["images"]) == 2 * (10 - len(test_smears))


def segmentation_set(root: Path) -> Path:
    for i in range(12):
        cls = f"grade{i % 2}"
        for sub in ("images", "masks"):
            (root / sub / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 10 * i + 5, np.uint8)).save(root / "images" / cls / f"s{i:02d}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(root / "masks" / cls / f"s{i:02d}.png")
    return root


def test_segmentation_never_sees_test_masks(tmp_path, spy):
    data = segmentation_set(tmp_path / "seg")
    seen = spy("fewlabel.pretrain.segmentation", "pretrain_segmentation")
    out = tmp_path / "seg.safetensors"
    main(["pretrain", "segmentation", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
          "--seed", "3", *SMALL])
    prepared = prepare_data(data, test_size=0.2, seed=3)
    test_index = {int(Path(i).stem[1:]) for i in prepared.test_ids}
    used = source_index(seen["images"], read_header(out)["meta"]["preprocess"])
    assert test_index and not set(used) & test_index
    # Training and validation images together: everything but the test images.
    assert len(seen["masks"]) == len(seen["images"])
    assert len(seen["images"]) + len(seen["val_images"]) == 12 - len(test_index)
    # --no-holdout: masks of a set that is not evaluated on, all of them.
    main(["pretrain", "segmentation", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
          "--no-holdout", "--overwrite", *SMALL])
    assert len(seen["images"]) + len(seen["val_images"]) == 12


def test_real_segmentation_run_reports_dice(tmp_path, capsys):
    data = segmentation_set(tmp_path / "seg")
    out = tmp_path / "seg.safetensors"
    main(["pretrain", "segmentation", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
          *SMALL])
    assert "val_dice" in capsys.readouterr().out
    assert (tmp_path / "seg_files" / "masks_val.png").exists()


def test_user_errors_are_one_line(tmp_path, capsys):
    _, pool = bccd_like(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "vae", str(pool), "--out", str(tmp_path / "x.safetensors")])
    assert exc.value.code == 2
    assert "unknown method 'vae'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # 24 px cannot be generated by 4 doublings
        main(["pretrain", "gan", str(pool), "--out", str(tmp_path / "x.safetensors"), "--image-size", "24",
              "--cache-dir", str(tmp_path / "c"), *SMALL])
    err = capsys.readouterr().err
    assert "divisible by 16" in err and len(err.strip().splitlines()) == 1


def test_segmentation_holds_out_what_train_count_groups_holds_out(tmp_path, spy):
    """``train --count groups`` draws its test set by patients; ``pretrain segmentation`` must be able
    to draw the same one (``--count``), or it pretrains on the masks of test patients."""
    root = tmp_path / "seg"
    for i in range(24):  # 12 patients of 2 slices, 6 per class
        cls = f"grade{(i // 2) % 2}"
        for sub in ("images", "masks"):
            (root / sub / cls).mkdir(parents=True, exist_ok=True)
        name = f"pat{i // 2:02d}_s{i:02d}.png"
        Image.fromarray(np.full((16, 16), 10 * i + 5, np.uint8)).save(root / "images" / cls / name)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(root / "masks" / cls / name)
    seen = spy("fewlabel.pretrain.segmentation", "pretrain_segmentation")
    out = tmp_path / "seg.safetensors"
    main(["pretrain", "segmentation", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
          "--group-pattern", r"(pat\d+)_", "--test-size", "2", "--count", "groups", *SMALL])
    train_view = prepare_data(root, group_pattern=r"(pat\d+)_", test_size=2, count="groups")
    test_index = {int(Path(i).stem.split("_s")[1]) for i in train_view.test_ids}
    used = source_index(seen["images"], read_header(out)["meta"]["preprocess"])
    assert len(test_index) == 8 and not set(used) & test_index


def test_train_refuses_an_encoder_that_saw_its_test_images(tmp_path: Path) -> None:
    """Pretraining on the labelled folder itself (no --holdout-from) saw the future test images:
    `train` names the encoder and refuses it; with --holdout-from the same pool is accepted."""
    from factory import make_class_folder
    from factory import run_cli as cli

    data = make_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(16, 16), seed=4)
    leaky, clean = tmp_path / "leaky.safetensors", tmp_path / "clean.safetensors"
    common = ["--steps", "2", "--batch-size", "4", "--width", "4", "--depth", "2",
              "--cache-dir", tmp_path / "c"]
    assert cli("pretrain", "ssl", data, "--out", leaky, *common) == 0
    assert cli("pretrain", "ssl", data, "--out", clean, "--holdout-from", data, *common) == 0
    train = ["train", data, "--strategy", "ssl", "--labels-per-class", "3", "--max-epochs", "1"]
    assert cli(*train, "--encoder-weights", leaky, "--out", tmp_path / "m1") == 2
    assert not (tmp_path / "m1").exists()
    assert cli(*train, "--encoder-weights", clean, "--out", tmp_path / "m2") == 0
