"""Ensembles (``FinetuneConfig.ensemble``): members with their own seeds, probabilities averaged, saved
and loaded as one model, explained as the mean of their members' maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_finetune import FAST, blobs, tiny_encoder

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.explain.attributions import attribute, lrp_notes
from fewlabel.models.heads import Classifier, Ensemble
from fewlabel.models.io import encoder_state, load_model_dir, save_model_dir
from fewlabel.training.finetune import FinetuneConfig, finetune, member_seed, predict_proba

CONFIG = {**FAST, "max_epochs": 4, "lr": 3e-3, "augment": "dihedral"}


@pytest.fixture(scope="module")
def fitted():
    x, y = blobs()
    torch.manual_seed(0)
    start = tiny_encoder()
    single, one = finetune(x, y, None, None, 2, _copy(start), FinetuneConfig(**CONFIG), seed=7)
    three = FinetuneConfig(**CONFIG, ensemble=3, ensemble_mode="independent")
    ensemble, result = finetune(x, y, None, None, 2, _copy(start), three, seed=7)
    return x, y, single, ensemble, (one, result)


def _copy(module):
    import copy

    return copy.deepcopy(module)


def test_first_member_is_the_single_model_and_the_others_differ(fitted):
    _, _, single, ensemble, (one, result) = fitted
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    first = ensemble.members[0].state_dict()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=0)
    second = ensemble.members[1].state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first if first[k].is_floating_point())
    assert member_seed(7, 0) == 7 and len({member_seed(7, k) for k in range(3)}) == 3
    # the first member's history, the members' summed work
    assert result.epochs == one.epochs == 4 and result.steps == 3 * one.steps > 0


def test_ensemble_probabilities_are_the_members_mean(fitted):
    x, _, _, ensemble, _ = fitted
    members = np.mean([predict_proba(m, x, tta=False) for m in ensemble.members], axis=0)
    np.testing.assert_allclose(predict_proba(ensemble, x, tta=False), members, atol=1e-6)
    width = ensemble.members[0].encoder.out_features
    assert ensemble.features(torch.as_tensor(x[:2])).shape == (2, 3 * width)


def test_ensemble_saves_and_loads_as_one_model(fitted, tmp_path):
    x, _, _, ensemble, _ = fitted
    save_model_dir(tmp_path / "m", ensemble, {"class_names": ["a", "b"]})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["members"] == 3
    loaded, _ = load_model_dir(tmp_path / "m")
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 3
    np.testing.assert_allclose(predict_proba(loaded, x), predict_proba(ensemble, x), atol=1e-6)
    # a model file seeds another run with its first member's encoder
    state, _ = encoder_state(tmp_path / "m" / "model.safetensors")
    for key, value in ensemble.members[0].encoder.state_dict().items():
        torch.testing.assert_close(state[key], value)


def test_config_that_disagrees_with_the_weights_is_one_line(fitted, tmp_path):
    _, _, _, ensemble, _ = fitted
    save_model_dir(tmp_path / "m", ensemble)
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    for bad, says in ((2, "members 2"), (10**6, "whole number"), (True, "whole number")):
        path.write_text(json.dumps({**config, "members": bad}))
        with pytest.raises(ModelFileError, match=says):
            load_model_dir(tmp_path / "m")


def test_explanation_is_the_members_mean_map_for_the_ensembles_class(fitted):
    x, _, _, ensemble, _ = fitted
    predicted = predict_proba(ensemble, x[:4], tta=False).argmax(1).tolist()
    maps = attribute(ensemble, x[:4], method="saliency")
    members = np.mean([attribute(m, x[:4], target=predicted, method="saliency") for m in ensemble.members], 0)
    np.testing.assert_allclose(maps, members, rtol=1e-5, atol=1e-7)
    assert attribute(ensemble, x[:2], method="gradcam").shape == (2, 16, 16)
    assert attribute(ensemble, x[:2], method="lrp").shape == (2, 16, 16)
    assert "3 ensemble members" in lrp_notes(ensemble)[0]


def test_members_must_match_and_the_count_is_checked():
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble([Classifier(tiny_encoder(), 2)])
    with pytest.raises(ValueError, match="share"):
        Ensemble([Classifier(tiny_encoder(), 2), Classifier(tiny_encoder(), 3)])
    x, y = blobs(2)
    with pytest.raises(FewlabelError, match="ensemble"):
        finetune(x, y, None, None, 2, tiny_encoder(), FinetuneConfig(**FAST, ensemble=0))


def test_cli_trains_predicts_and_explains_an_ensemble(tmp_path):
    """The real commands: ``train --set ensemble=2`` writes one model folder; ``predict`` and
    ``explain`` use every member (their numbers are the ensemble's, not the first member's)."""
    import csv

    import fewlabel

    from factory import make_class_folder, run_cli

    data = make_class_folder(tmp_path / "data", {"a": 10, "b": 10}, size=(16, 16), channels=3, seed=0)
    out = tmp_path / "m"
    code = run_cli("train", "--strategy", "scratch", data, "--out", out, "--labels-per-class", "4",
                   "--set", "ensemble=2", "--set", "max_epochs=2", "--set", "progress=false")
    assert code == 0
    model = fewlabel.load_model(out, device="cpu")
    assert isinstance(model.classifier, Ensemble)
    assert json.loads((out / "config.json").read_text())["members"] == 2
    images = sorted(data.rglob("*.png"))[:3]
    assert run_cli("predict", out, *images, "--out", tmp_path / "p.csv") == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    expected = model.predict([str(p) for p in images]).proba
    rows = [[float(r["p_a"]), float(r["p_b"])] for r in rows]
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    first_member = fewlabel.api.Model(model.classifier.members[0], model.config, device="cpu")
    assert np.abs(first_member.predict([str(p) for p in images]).proba - expected).max() > 1e-4
    assert run_cli("explain", out, *images[:1], "--method", "saliency", "--out", tmp_path / "x") == 0
    assert list((tmp_path / "x").glob("*.npy"))
