"""The fine-tuning recipe levers and the MobileNetV2 input adapter: each does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_finetune import FAST, blobs, tiny_encoder

from fewlabel.errors import FewlabelError
from fewlabel.models.encoder import create_encoder
from fewlabel.models.heads import Classifier
from fewlabel.models.io import load_model_dir, save_model_dir
from fewlabel.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD
from fewlabel.training.finetune import (
    FinetuneConfig,
    dihedral_views,
    encoder_blocks,
    finetune,
    lr_factor,
    make_optimizer,
    predict_proba,
)


def small_mobilenet(**kw):
    torch.manual_seed(0)
    return create_encoder("mobilenet_v2", in_channels=3, width_mult=0.25, **kw).eval()


def test_input_size_resizes_inside_the_encoder():
    x = torch.randn(2, 3, 32, 32)
    adapted, plain = small_mobilenet(input_size=64), small_mobilenet()
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), plain(up))
        assert not torch.allclose(adapted(x), plain(x))


def test_imagenet_renorm_equals_imagenet_normalised_input():
    rng = np.random.default_rng(0)
    raw = torch.tensor(rng.uniform(0, 1, (2, 3, 32, 32)), dtype=torch.float32)
    mean, std = [0.6, 0.5, 0.7], [0.2, 0.25, 0.15]
    z = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    im_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    im_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    imagenet = (raw - im_mean) / im_std
    adapted, plain = small_mobilenet(input_mean=mean, input_std=std), small_mobilenet()
    with torch.no_grad():
        torch.testing.assert_close(adapted(z), plain(imagenet), rtol=1e-4, atol=1e-4)


def test_adapter_is_saved_with_the_model(tmp_path):
    enc = small_mobilenet(input_size=48, input_mean=[0.5] * 3, input_std=[0.2] * 3)
    clf = Classifier(enc, 3).eval()
    save_model_dir(tmp_path / "m", clf, {"class_names": ["a", "b", "c"]})
    loaded, _ = load_model_dir(tmp_path / "m")
    assert loaded.encoder.config["input_size"] == 48
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), clf(x))


def test_adapter_rejects_half_statistics():
    with pytest.raises(FewlabelError, match="together"):
        create_encoder("mobilenet_v2", input_mean=[0.5, 0.5, 0.5])


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = dihedral_views(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert len(dihedral_views(torch.zeros(1, 1, 4, 6))) == 4  # non-square: shape-keeping ones only


def test_tta_prediction_is_invariant_to_flips_and_turns():
    torch.manual_seed(0)
    clf = Classifier(tiny_encoder(), 2).eval()
    x, _ = blobs(4)
    turned = torch.rot90(torch.as_tensor(x), 1, (-2, -1)).numpy()
    np.testing.assert_allclose(predict_proba(clf, x, tta=True), predict_proba(clf, turned, tta=True),
                               atol=1e-5)
    assert not np.allclose(predict_proba(clf, x, tta=False), predict_proba(clf, turned, tta=False), atol=1e-5)


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "constant") == 1.0


def test_schedule_reaches_the_optimizer():
    x, y = blobs()
    config = FinetuneConfig(**{**FAST, "max_epochs": 3, "schedule": "cosine", "warmup_epochs": 1})
    torch.manual_seed(0)
    clf, result = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=0)
    assert result.steps > 0  # trained; the last step ran at a decayed rate
    assert lr_factor(result.steps - 1, result.steps, 3, "cosine") < 0.05


def test_layer_decay_gives_deeper_blocks_larger_rates():
    torch.manual_seed(0)
    clf = Classifier(tiny_encoder(), 2)
    opt = make_optimizer(clf, FinetuneConfig(lr=1e-3, encoder_lr=1e-4, layer_decay=0.5))
    rates = [g["lr"] for g in opt.param_groups[1:]]
    assert len(rates) == len(encoder_blocks(clf.encoder)) == 3
    assert rates == pytest.approx([2.5e-5, 5e-5, 1e-4])
    assert opt.param_groups[0]["lr"] == 1e-3  # the head


def test_bn_eval_keeps_running_statistics():
    x, y = blobs()
    torch.manual_seed(0)
    enc = tiny_encoder()
    stats = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    before_weights = {k: v.clone() for k, v in enc.state_dict().items() if k == "stages.0.0.weight"}
    config = FinetuneConfig(**{**FAST, "max_epochs": 2, "bn_mode": "eval"})
    clf, _ = finetune(x, y, None, None, 2, enc, config)
    after = clf.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    first_conv = [v for k, v in before_weights.items() if k.endswith("0.0.weight")][0]
    assert not torch.equal(after["stages.0.0.weight"], first_conv)  # the weights did train


def bright(n_per_class: int = 12, seed: int = 0):
    """Class 1 is brighter everywhere: what pooled random features can tell apart."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2 * n_per_class, 1, 16, 16)).astype(np.float32)
    y = np.repeat([0, 1], n_per_class)
    x[y == 1] += 1.0
    return x, y


def test_probe_only_learns_without_touching_the_encoder():
    x, y = bright()
    xt, yt = bright(seed=1)
    torch.manual_seed(0)
    enc = tiny_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    config = FinetuneConfig(**{**FAST, "probe_only_max_per_class": 100})
    clf, result = finetune(x, y, None, None, 2, enc, config, seed=0)
    assert result.stopped_because == "linear_probe"
    assert all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in before.items())
    assert (predict_proba(clf, xt).argmax(1) == yt).mean() >= 0.9


def test_epochs_without_validation():
    x, y = blobs()
    torch.manual_seed(0)
    config = FinetuneConfig(**{**FAST, "max_epochs": 9, "epochs_without_validation": 2})
    _, result = finetune(x, y, None, None, 2, tiny_encoder(), config, seed=0)
    assert result.epochs == 2
    _, result = finetune(x, y, x[::3], y[::3], 2, tiny_encoder(), config, seed=0)
    assert result.epochs > 2 or result.stopped_because == "early_stopping"


@pytest.mark.parametrize("field,value", [("augment", "rotate"), ("schedule", "step"), ("bn_mode", "x"),
                                         ("layer_decay", 1.5)])
def test_bad_recipe_values_are_one_line_errors(field, value):
    x, y = blobs(2)
    with pytest.raises(FewlabelError, match=field):
        finetune(x, y, None, None, 2, tiny_encoder(), FinetuneConfig(**{**FAST, field: value}))


@pytest.mark.parametrize("encoder,kwargs", [("mobilenet_v2", {"input_size": 32, "width_mult": 0.25}),
                                            ("convnet", {"width": 8, "depth": 3})])
def test_cell_with_adapter_and_tta_survives_save_and_load(tmp_path, encoder, kwargs):
    """The fair scratch row (MobileNetV2 from random weights, resized inside the encoder) and TTA at
    test time: the saved model gives the numbers the curve recorded."""
    import fewlabel
    from fewlabel import pipeline

    from factory import make_class_folder

    root = make_class_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(16, 16), channels=3, seed=0)
    data = pipeline.prepare_data(root, test_size=3, seed=0)
    spec = pipeline.StrategySpec(name="scratch", encoder=encoder, encoder_kwargs=kwargs)
    config = FinetuneConfig(**{**FAST, "max_epochs": 4, "lr": 1e-2, "augment": "dihedral", "tta": True})
    cell = pipeline.fit_cell(data, data.pool_ids[:10], spec, 0, config)
    save_model_dir(tmp_path / "m", cell.classifier, pipeline.model_config(data, spec, cell, 0))
    model = fewlabel.load_model(tmp_path / "m", device="cpu")
    assert model.classifier.encoder.config == cell.classifier.encoder.config
    # log scale: confident models put the differences in the smallest probabilities
    np.testing.assert_allclose(np.log(model.predict_arrays(data.test_arrays[0])), np.log(cell.proba_test),
                               atol=1e-4)
    if encoder == "convnet":  # a model whose outputs move with the input: TTA must have been applied
        no_tta = predict_proba(model.classifier, data.test_arrays[0], tta=False)
        assert np.abs(np.log(no_tta) - np.log(cell.proba_test)).max() > 1e-3


def test_hold_out_off_trains_on_the_whole_draw_for_a_fixed_schedule(tmp_path):
    """``hold_out=False``: the draw's validation part trains too, nothing validates, the epochs are the
    fixed schedule's; with the default the same draw keeps a validation part."""
    from fewlabel import pipeline

    from factory import make_class_folder

    root = make_class_folder(tmp_path / "data", {"a": 12, "b": 12}, size=(16, 16), channels=3, seed=0)
    data = pipeline.prepare_data(root, test_size=3, seed=0)
    spec = pipeline.StrategySpec(name="scratch", encoder="convnet", encoder_kwargs={"width": 8, "depth": 2})
    draw = list(data.pool_ids[:16])
    held = pipeline.fit_cell(data, draw, spec, 0, FinetuneConfig(**{**FAST, "max_epochs": 3}))
    assert held.val_ids and set(held.train_ids) | set(held.val_ids) == set(draw)
    config = FinetuneConfig(**{**FAST, "max_epochs": 9, "epochs_without_validation": 3, "hold_out": False})
    cell = pipeline.fit_cell(data, draw, spec, 0, config)
    assert cell.val_ids == [] and sorted(cell.train_ids) == sorted(draw)
    assert cell.fit.epochs == 3 and not set(cell.train_ids) & set(data.test_ids)


def test_a_users_setting_wins_over_the_strategys_recipe():
    """imagenet's recipe sets lr 1e-4 and dihedral augmentation: a user's lr stays, the rest fills in."""
    from fewlabel import pipeline

    spec = pipeline.default_spec("imagenet")
    assert spec.finetune["lr"] == 1e-4 and spec.finetune["augment"] == "dihedral"
    config = pipeline.finetune_config_for(spec, FinetuneConfig(lr=5e-3, ensemble=3))
    assert config.lr == 5e-3 and config.ensemble == 3 and config.augment == "dihedral"
    assert pipeline.finetune_config_for(spec, FinetuneConfig()).lr == 1e-4
    # the recipe's ensemble and TTA are the default's; a user's explicit one model, no TTA, wins
    house = pipeline.finetune_config_for(spec, FinetuneConfig())
    assert house.ensemble == 3 and house.tta is True
    mine = pipeline.finetune_config_for(spec, FinetuneConfig(ensemble=1, tta=False))
    assert mine.ensemble == 1 and mine.tta is False
    # every drawn label trains for a fixed 20 epochs; a user's hold-out (the default value, named) wins
    assert house.hold_out is False and house.max_epochs == 20
    held = pipeline.finetune_config_for(spec, FinetuneConfig(hold_out=True, explicit=("hold_out",)))
    assert held.hold_out is True and held.max_epochs == 20


def test_a_setting_the_user_named_wins_even_at_its_default():
    """``explicit`` names what the user set: weight decay 1e-4 (FinetuneConfig's default) named by
    the user stays, where unnamed it is imagenet's recipe value 0."""
    from fewlabel import pipeline

    spec = pipeline.default_spec("imagenet")
    assert spec.finetune["weight_decay"] == 0.0 and FinetuneConfig().weight_decay == 1e-4
    assert pipeline.finetune_config_for(spec, FinetuneConfig()).weight_decay == 0.0
    named = pipeline.finetune_config_for(spec, FinetuneConfig(explicit=("weight_decay", "lr")))
    assert named.weight_decay == 1e-4 and named.lr == 1e-3 and named.augment == "dihedral"
    assert FinetuneConfig(explicit="lr, weight_decay,lr").explicit == ("lr", "weight_decay")


def test_train_set_at_a_default_value_beats_the_recipe(tmp_path):
    """The real command: ``--set weight_decay=0.0001`` with scratch_mobilenet (whose recipe says 0)
    trains at 1e-4; the model records the settings it trained with."""
    import json

    from factory import make_class_folder, run_cli

    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), channels=3, seed=0)
    common = ["--labels-per-class", "2", "--set", "max_epochs=1", "--set", "ensemble=1",
              "--set", "progress=false", "--device", "cpu"]
    assert run_cli("train", "--strategy", "scratch_mobilenet", data, "--out", tmp_path / "named",
                   "--set", "weight_decay=0.0001", *common) == 0
    assert run_cli("train", "--strategy", "scratch_mobilenet", data, "--out", tmp_path / "recipe",
                   *common) == 0
    named, recipe = (json.loads((tmp_path / d / "config.json").read_text())["finetune"]
                     for d in ("named", "recipe"))
    assert named["weight_decay"] == 1e-4 and recipe["weight_decay"] == 0.0
    assert named["lr"] == recipe["lr"] == 1e-4 and named["ensemble"] == 1


def test_input_size_sets_the_side_a_resizing_encoder_computes_at(tmp_path, capsys):
    """``--input-size 40``: the model records it (so ``predict`` resizes the same way) and scores its
    test set; an encoder that does not resize, or a side too small, is refused in one line before
    anything is written (train and curve alike)."""
    import json

    from fewlabel import strategies

    from factory import make_class_folder, run_cli

    data = make_class_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(16, 16), channels=3, seed=0)
    common = ["--labels-per-class", "2", "--set", "max_epochs=1", "--set", "ensemble=1",
              "--set", "progress=false", "--device", "cpu"]
    assert run_cli("train", "--strategy", "scratch_mobilenet", data, "--out", tmp_path / "m",
                   "--input-size", "40", *common) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["encoder"]["input_size"] == 40
    assert run_cli("predict", tmp_path / "m", data / "a", "--out", tmp_path / "p.csv") == 0
    # that model as the probe's encoder: the file rebuilds it at 40 px, and the record says no other size
    assert run_cli("train", "--strategy", "probe", "--encoder-weights", tmp_path / "m" / "model.safetensors",
                   data, "--out", tmp_path / "probe", *common) == 0
    probe = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert probe["encoder"]["input_size"] == 40 and probe["strategy"]["encoder_kwargs"] == {}
    capsys.readouterr()

    no = tmp_path / "no"
    refusals = [("train", "--strategy", "scratch", data, "--out", no, "--input-size", "40", *common),
                ("curve", data, "--out", no, "--strategies", "scratch", "--sizes", "2", "--input-size", "40"),
                ("train", "--strategy", "scratch_mobilenet", data, "--out", no, "--input-size", "8", *common),
                ("train", "--encoder", "convnet", data, "--out", no, "--input-size", "40", *common),
                # a file fewlabel wrote rebuilds its encoder at the size it was trained at
                ("train", "--strategy", "probe", "--encoder-weights", tmp_path / "m" / "model.safetensors",
                 data, "--out", no, "--input-size", "64", *common)]
    for args in refusals:
        assert run_cli(*args) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--input-size" in err and "Traceback" not in err, err
        assert not no.exists()

    specs = {"scratch": {"encoder": "convnet", "encoder_kwargs": {}},
             "imagenet": {"encoder": "mobilenet_v2", "encoder_kwargs": {"input_size": 160, "width": 1}}}
    sized = strategies.with_input_size(specs, 224)
    assert sized["imagenet"]["encoder_kwargs"] == {"input_size": 224, "width": 1}
    assert sized["scratch"] == specs["scratch"] and specs["imagenet"]["encoder_kwargs"]["input_size"] == 160
    assert strategies.with_input_size(specs, None) is specs
