"""Patient-level metrics: images pooled per patient by the mean of their probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from fewlabel.evaluate.metrics import classification_metrics, group_metrics, pool_by_group


def test_pool_by_group_takes_the_mean_and_the_patients_label():
    y = np.array([1, 1, 0, 0, 0])
    p1 = np.array([0.9, 0.2, 0.4, 0.1, 0.3])
    proba = np.stack([1 - p1, p1], axis=1)
    groups = ["b", "b", "a", "a", "c"]
    yg, pg, names = pool_by_group(y, proba, groups)
    assert names == ["a", "b", "c"]
    assert yg.tolist() == [0, 1, 0]
    np.testing.assert_allclose(pg[:, 1], [0.25, 0.55, 0.3])


def test_patient_auc_differs_from_the_image_auc_and_resamples_patients():
    # Patient 1 (class 1) has one confident and one wrong slice; pooled it still ranks above class 0.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.6, 0.3, 0.2, 0.1, 0.95, 0.05, 0.7, 0.5])
    proba = np.stack([1 - p1, p1], axis=1)
    groups = ["n1", "n1", "n2", "n2", "t1", "t1", "t2", "t2"]
    image = classification_metrics(y, proba, groups=groups, n_boot=200)
    patient = group_metrics(y, proba, groups, n_boot=200)
    assert image["roc_auc"]["value"] == pytest.approx(11 / 16)
    assert patient["roc_auc"]["value"] == pytest.approx(1.0)  # means .45/.15 vs .5/.6
    assert patient["n_groups"] == 4 and patient["rule"] == "mean of image probabilities"
    assert patient["roc_auc"]["ci_low"] <= patient["roc_auc"]["value"] <= patient["roc_auc"]["ci_high"]
    assert group_metrics(y, proba, groups, n_boot=200) == patient  # same seed, same numbers


def test_no_patient_metrics_when_every_patient_has_one_image():
    y = np.array([0, 1, 0, 1])
    proba = np.eye(2)[y]
    assert group_metrics(y, proba, ["a", "b", "c", "d"]) is None
    assert group_metrics(y, proba, None) is None


def test_report_patient_table_pools_each_repeat_and_skips_single_image_patients(tmp_path):
    import json

    from fewlabel.experiments.run_view import RunView
    from fewlabel.report.patients import patient_table

    y = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["n1", "n1", "n2", "n2", "t1", "t1", "t2", "t2"]
    (tmp_path / "plan.json").write_text(json.dumps({"test": {"labels": y, "groups": groups}}))
    (tmp_path / "run.json").write_text("{}")
    view = RunView(tmp_path)
    p1 = np.array([0.6, 0.3, 0.2, 0.1, 0.95, 0.05, 0.7, 0.5])
    np.save(tmp_path / "p0.npy", np.stack([1 - p1, p1], axis=1))
    np.save(tmp_path / "p1.npy", np.stack([p1, 1 - p1], axis=1))  # the reverse: patient AUC 0
    rows = [{"strategy": "s", "n_per_class": 2, "repeat": r, "status": "ok", "proba_path": f"p{r}.npy"}
            for r in (0, 1)]
    table = patient_table(view, rows, ["s"], n_boot=200)
    assert table["n_patients"] == 4 and table["n_images"] == 8
    (row,) = table["rows"]
    assert row["repeats"] == 2 and row["roc_auc"]["value"] == pytest.approx(0.5)  # mean of 1.0 and 0.0
    (tmp_path / "plan.json").write_text(json.dumps({"test": {"labels": y, "groups": list("abcdefgh")}}))
    assert patient_table(view, rows, ["s"], n_boot=200) is None
