"""RunView: the one read-only way into a run folder, checked against a real (tiny) curve run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fewlabel.errors import FewlabelError, SplitError
from fewlabel.experiments import Cell, RunView, run_curve

from factory import make_class_folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runview")
    data = make_class_folder(root / "d", {"a": 8, "b": 8}, size=(8, 8))
    out = root / "run"
    run_curve(data, out, ["scratch"], [2], 2, test_size=0.25, finetune={"max_epochs": 1}, log=None,
              progress=False)
    return out


def test_view_reads_what_the_curve_wrote(run_dir: Path) -> None:
    view = RunView(run_dir)
    assert view.config["strategies"] == ["scratch"] and view.dataset["classes"] == ["a", "b"]
    rows = view.rows(status="ok")
    assert [(r["n_per_class"], r["repeat"]) for r in rows] == [(2, 0), (2, 1)]
    labels, groups, source = view.test_truth()
    assert source == "plan.json" and labels.tolist() == view.plan.test_labels
    assert groups.tolist() == view.plan.test_groups
    probas = view.probas(rows, len(labels))
    assert sorted(probas[("scratch", 2)]) == [0, 1]
    assert probas[("scratch", 2)][0].shape == (len(labels), 2)
    files = view.cell_files(Cell("scratch", 2, 0))
    assert {"proba_test.npy", "cell.json", "config.json", "model.safetensors"} <= set(files)
    assert "model.safetensors" not in view.cell_files(Cell("scratch", 2, 1))  # only repeat 0 keeps it
    assert view.cell_files(Cell("scratch", 99, 0)) == {}
    model = view.model_dir(rows[0])
    assert model == files["config.json"].parent and view.model_dir(rows[1]) is None
    assert RunView.containing(model).root == view.root
    assert view.explanations() is None  # nothing explained yet


def test_open_test_set_is_the_plans_test_set_in_proba_order(run_dir: Path) -> None:
    view = RunView(run_dir)
    ts = view.open_test_set()
    assert ts.ids == view.plan.test_ids and ts.y.tolist() == view.plan.test_labels
    assert ts.x.dtype == np.float32 and ts.x.shape[0] == len(ts.ids) and ts.class_names == ["a", "b"]
    assert view.proba(view.rows()[0]).shape[0] == len(ts.ids)


def test_refusals_are_one_line(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(FewlabelError, match="run.json is missing"):
        RunView(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    bare = RunView(tmp_path)
    assert bare.rows() == [] and bare.test_truth() is None
    with pytest.raises(FewlabelError, match="no data_args"):
        bare.open_test_set()
    plan = json.loads((run_dir / "plan.json").read_text())
    plan["test"]["ids"] = plan["test"]["ids"][::-1]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(SplitError, match="edited"):
        _ = RunView(tmp_path).plan
