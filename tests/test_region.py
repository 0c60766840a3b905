"""Region input (``segmentation+region``): the U-Net's crop, made from images alone, by a U-Net
that saw no test patient; and the patient-level metrics a cell gains when patients repeat."""

from __future__ import annotations

import numpy as np
import pytest

from fewlabel.data import readers
from fewlabel.models.io import read_header
from fewlabel.pipeline import add_draw, default_spec, fit_cell, prepare_data, prepare_strategy
from fewlabel.pipeline import region as region_mod
from fewlabel.pipeline.region import region_arrays, region_box, unet_path
from fewlabel.training.finetune import FinetuneConfig

from factory import GROUP_PATTERN, make_image_mask_tree


def test_region_box_is_a_square_around_the_found_pixels_or_none():
    found = np.zeros((40, 40), bool)
    found[10:14, 20:30] = True  # 4 x 10 pixels
    box = region_box(found)
    assert box is not None
    (r0, r1), (c0, c1) = box
    assert r0 * 40 <= 10 and r1 * 40 >= 14 and c0 * 40 <= 20 and c1 * 40 >= 30  # holds the region
    assert r1 - r0 == pytest.approx(c1 - c0)  # square
    assert (c1 - c0) * 40 == pytest.approx(10 * (1 + 2 * region_mod.MARGIN))  # widened by the margin
    stray = found.copy()
    stray[38, 38] = True  # a stray pixel far away does not stretch the box
    assert region_box(stray) == box
    assert region_box(np.zeros((40, 40), bool)) is None  # nothing found: the caller keeps the whole image
    edge = np.zeros((40, 40), bool)
    edge[0:3, 0:3] = True
    (a, b), (c, d) = region_box(edge)
    assert a == 0 and c == 0 and b <= 1 and d <= 1  # shifted inside the image, never past it


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    """A masked data set with 2 images per patient, split by patient, the U-Net prepared (few steps)."""
    root = make_image_mask_tree(tmp_path_factory.mktemp("seg"), classes={"a": 16, "b": 16},
                                size=(32, 32), images_per_group=2, mask_value=255)
    data = prepare_data(root, group_pattern=GROUP_PATTERN, test_size=0.25, seed=0, count="groups")
    spec = default_spec("segmentation+region", pretrain={"steps": 30, "batch_size": 8, "log_every": 10,
                                                          "lr": 3e-3, "progress": False})
    spec = prepare_strategy(spec, data, cache_dir=tmp_path_factory.mktemp("cache"), seed=0, progress=False)
    return data, spec


def test_unet_saw_no_test_patient_and_is_saved_beside_the_encoder(region_run):
    data, spec = region_run
    assert unet_path(spec.encoder_weights).is_file()
    seen = set(read_header(spec.encoder_weights)["meta"]["seen_files"])
    assert seen and not seen & data.test_file_keys  # no test image, no test mask
    masked = data.plan.pretrain_pools["masks"]
    trained_on = set(data.catalog.groups(masked["train"] + masked["val"]))
    assert trained_on and not trained_on & data.test_groups


def test_test_crops_never_read_a_mask(region_run, monkeypatch, tmp_path):
    data, spec = region_run
    read: list[str] = []
    real_read = readers.read_image

    def spy(path, *a, **k):
        read.append(str(path))
        return real_read(path, *a, **k)

    def no_mask(*a, **k):
        raise AssertionError("a mask was read for a region crop")

    monkeypatch.setattr(region_mod.readers, "read_image", spy)
    monkeypatch.setattr(readers, "read_mask", no_mask)
    from fewlabel.data import tensors

    monkeypatch.setattr(tensors, "load_masks", no_mask)
    tensors.clear_cache()
    test = list(data.test_ids)
    x = region_arrays(data, test, spec.encoder_weights)
    mask_paths = {str(data.catalog.by_id[i].mask) for i in data.catalog.ids}
    assert read and not set(read) & mask_paths
    assert set(read) == {str(data.catalog.by_id[i].path) for i in test}
    assert x.shape == (len(test), data.channels, *data.image_size) and np.isfinite(x).all()
    # The crop changes the image (the U-Net found the blob), and depends on nothing but the image:
    # the same call on a fresh cache gives the same arrays.
    whole, _ = data.arrays(test)
    assert not np.allclose(x, whole)
    tensors.clear_cache()
    np.testing.assert_array_equal(region_arrays(data, test, spec.encoder_weights), x)
    # Crops share the image cache's budget: with room for none, they are cropped again, the same.
    monkeypatch.setenv("FEWLABEL_CACHE_MB", "0.000001")
    tensors.clear_cache()
    np.testing.assert_array_equal(region_arrays(data, test, spec.encoder_weights), x)
    assert tensors.cache_info()["bytes"] == 0


def test_region_cell_trains_on_crops_and_reports_patients(region_run):
    data, spec = region_run
    config = FinetuneConfig(max_epochs=2, progress=False, device="cpu")
    entry = add_draw(data, 4, 0, 0, count="groups")
    cell = fit_cell(data, entry["labelled"], spec, 0, config, train_ids=entry["train"], val_ids=entry["val"])
    again = fit_cell(data, entry["labelled"], spec, 0, config, train_ids=entry["train"], val_ids=entry["val"])
    np.testing.assert_array_equal(cell.proba_test, again.proba_test)  # same seed, same numbers
    patient = cell.metrics["patient"]
    assert patient["n_groups"] == len(set(data.catalog.groups(data.test_ids))) < len(data.test_ids)
    assert patient["rule"] == "mean of image probabilities"
    assert any("region input" in n for n in cell.notes)
