"""Attributions (saliency, LRP, Grad-CAM), t-SNE, figures and the per-run explanations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.explain.attributions import ALL_METHODS, attribute, lrp_notes
from fewlabel.explain.embedding import default_perplexity, extract_features, tsne_embedding
from fewlabel.explain.figures import attribution_grid, tsne_scatter
from fewlabel.models.encoder import ConvEncoder, create_encoder
from fewlabel.models.heads import Classifier

PNG = b"\x89PNG\r\n\x1a\n"


class PlainNet(nn.Module):
    """Conv-ReLU-pool-conv-ReLU-avgpool-linear, no BN, no bias: LRP-0 conserves relevance exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.r2 = nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.r2(self.c2(self.p1(self.r1(self.c1(x))))))
        return self.fc(torch.flatten(x, 1))


class QuadrantEncoder(ConvEncoder):
    """A convnet that sees only the top-left quadrant of its input (the rest is zeroed first)."""

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        mask = torch.zeros_like(x)
        mask[:, :, : x.shape[2] // 2, : x.shape[3] // 2] = 1
        return super().forward_features(x * mask)


def _quadrant_classifier() -> Classifier:
    torch.manual_seed(0)
    enc = QuadrantEncoder(in_channels=1, spatial_dims=2, width=4, depth=3, norm="none")
    for m in enc.modules():  # no bias: a zeroed region then gives zero activations, nothing to attribute
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return Classifier(enc, 2).eval()


def _quadrant_share(maps: np.ndarray) -> float:
    a = np.abs(maps)
    h, w = a.shape[1:]
    return float(a[:, : h // 2, : w // 2].sum() / a.sum())


def test_lrp_conserves_relevance_on_plain_relu_net() -> None:
    torch.manual_seed(0)
    net = PlainNet().eval()
    x = torch.rand(3, 1, 16, 16)
    for target in (0, 1):
        rel = attribute(net, x, target=target, method="lrp", epsilon=1e-9)
        logits = net(x)[:, target].detach().numpy()
        assert rel.shape == (3, 16, 16)
        np.testing.assert_allclose(rel.reshape(3, -1).sum(1), logits, rtol=1e-3, atol=1e-6)


def test_attributions_concentrate_where_the_model_looks() -> None:
    clf = _quadrant_classifier()
    x = torch.randn(4, 1, 32, 32)
    # Saliency and LRP: the other quadrants cannot influence the logit at all.
    assert _quadrant_share(attribute(clf, x, None, "saliency")) > 0.99
    assert _quadrant_share(attribute(clf, x, None, "lrp", input_rule="same")) > 0.99
    # z^B spreads each first-layer unit's relevance over its whole receptive field by the pixel
    # bounds, so a one-pixel border outside the quadrant gets a little
    assert _quadrant_share(attribute(clf, x, None, "lrp")) > 0.95
    # Grad-CAM is coarse (a map 4x smaller, upsampled) and convolutions spread across the quadrant's
    # border: most of it inside (uniform would be 0.25), nothing in the far quadrant.
    cam = attribute(clf, torch.randn(4, 1, 64, 64), None, "gradcam")
    assert _quadrant_share(cam) > 0.7
    assert cam[:, 40:, 40:].sum() < 0.01 * cam.sum()


@pytest.mark.parametrize("dims,size", [(2, (32, 32)), (3, (16, 16, 16))])
@pytest.mark.parametrize("act,norm", [("relu", "batch"), ("leaky_relu", "instance"), ("gelu", "none")])
def test_every_method_gives_input_shaped_maps(dims: int, size: tuple[int, ...], act: str, norm: str) -> None:
    torch.manual_seed(0)
    clf = Classifier(create_encoder("convnet", 1, dims, width=4, depth=3, act=act, norm=norm), 2).eval()
    x = np.random.default_rng(0).normal(size=(2, 1, *size)).astype(np.float32)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    for method in ALL_METHODS:
        maps = attribute(clf, x, target=[0, 1], method=method)
        assert maps.shape == (2, *size) and maps.dtype == np.float32
        assert np.isfinite(maps).all()
    # captum rewrites weights and hangs hooks while it runs: none of that may leak to the caller.
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    assert not [n for n, m in clf.named_modules() if "rule" in m.__dict__]
    assert not any(m._forward_hooks or m._backward_hooks for m in clf.modules())


def test_lrp_runs_on_mobilenet_and_schouten_and_says_where_it_is_approximate() -> None:
    torch.manual_seed(0)
    mnv2 = Classifier(create_encoder("mobilenet_v2", 3, 2, width_mult=0.35), 3).eval()
    maps = attribute(mnv2, torch.randn(1, 3, 64, 64), None, "lrp")
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()
    notes = " ".join(lrp_notes(mnv2))
    assert "residual" in notes and "BatchNorm" in notes
    sch = Classifier(create_encoder("schouten", 1, 2, image_size=(64, 64), filters=(4, 8, 8)), 2).eval()
    for method in ("saliency", "lrp", "gradcam"):
        assert attribute(sch, torch.randn(2, 1, 64, 64), None, method).shape == (2, 64, 64)


def test_target_defaults_to_prediction_and_bad_input_is_refused() -> None:
    clf = _quadrant_classifier()
    x = torch.randn(3, 1, 32, 32)
    pred = clf(x).argmax(1).tolist()
    np.testing.assert_allclose(attribute(clf, x, None, "saliency"), attribute(clf, x, pred, "saliency"))
    with pytest.raises(ValueError, match="unknown attribution"):
        attribute(clf, x, None, "shap")
    with pytest.raises(ValueError, match="batch"):
        attribute(clf, x[0], None, "saliency")


def test_tsne_separates_clusters_and_handles_tiny_sets() -> None:
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(4, 1, (40, 16))])
    y = np.repeat([0, 1], 40)
    emb = tsne_embedding(feats, seed=0)
    assert emb.shape == (80, 2)
    # 1-nearest-neighbour in the embedding recovers the class: the map keeps the structure.
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1) + np.eye(80) * 1e9
    assert (y[d.argmin(1)] == y).mean() > 0.95
    np.testing.assert_array_equal(emb, tsne_embedding(feats, seed=0))  # seeded
    assert tsne_embedding(feats[:3]).shape == (3, 2)  # too few for t-SNE: PCA fallback
    assert tsne_embedding(np.ones((10, 4))).shape == (10, 2)
    assert default_perplexity(8) < 8 and default_perplexity(10_000) == 30


def test_figures_are_pngs_for_2d_and_3d() -> None:
    clf2 = Classifier(create_encoder("convnet", 1, 2, width=4, depth=2), 2).eval()
    x2 = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)
    maps = {m: attribute(clf2, x2, None, m) for m in ("saliency", "lrp", "gradcam")}
    assert attribution_grid(x2, maps, ["a $x$", "b"], title="t").startswith(PNG)
    clf3 = Classifier(create_encoder("convnet", 1, 3, width=4, depth=2), 2).eval()
    x3 = np.random.default_rng(0).normal(size=(1, 1, 8, 8, 8)).astype(np.float32)
    maps3 = {m: attribute(clf3, x3, None, m) for m in ("saliency", "gradcam")}
    assert attribution_grid(x3, maps3, ["vol"]).startswith(PNG)
    feats = extract_features(clf2, x2)
    assert feats.shape == (2, clf2.encoder.out_features)
    assert tsne_scatter(np.zeros((2, 2)), [0, 1], ["<b>", "50$"]).startswith(PNG)


def test_explain_run_writes_index_and_reuses_unchanged_cells(tmp_path) -> None:
    from report_fixtures import HOSTILE, make_run, make_test_set

    from fewlabel.experiments.run_view import RunView
    from fewlabel.explain.run import explain_run

    run = make_run(tmp_path / "run", strategies=("scratch", "ssl"), sizes=(2, 5), repeats=2, missing=(),
                   failed=())
    ts = make_test_set(["healthy", HOSTILE], n_per_class=4)
    index = explain_run(run, n_per_class=2, test_set=ts)
    assert RunView(run).explanations() == json.loads(json.dumps(index, allow_nan=False))
    assert len(index["cells"]) == 4 and not index["errors"]
    assert [e["label"] for e in index["examples"]] == ["healthy", "healthy", HOSTILE, HOSTILE]
    # the checks run on every test image here (4 per class, under the 8 asked for), the grid's among them
    assert index["check_images"] == 8
    checked = index["cells"][0]["signature"]["check_examples"]
    assert set(index["cells"][0]["signature"]["examples"]) <= set(checked) and len(checked) == 8
    for cell in index["cells"]:
        for c in cell["checks"].values():
            assert c["n_images"] == 8 and c["deletion"]["n"] == 8 and "verdict" in c["aopc"]
    for cell in index["cells"]:
        assert (run / cell["grid"]).read_bytes().startswith(PNG)
        assert (run / cell["tsne"]).read_bytes().startswith(PNG)
    # Reused, not recomputed: the figures are not rewritten (same modification times).
    mtimes = {c["grid"]: (run / c["grid"]).stat().st_mtime_ns for c in index["cells"]}
    again = explain_run(run, n_per_class=2, test_set=ts)
    assert again["cells"] == index["cells"]
    assert {c["grid"]: (run / c["grid"]).stat().st_mtime_ns for c in again["cells"]} == mtimes
    # A model that no longer loads is reported, and the other cells still get their figures.
    (run / "cells/ssl/n5_r0/model.safetensors").write_bytes(b"garbage")
    (run / "explanations/ssl/n5_grid.png").unlink()
    broken = explain_run(run, n_per_class=2, test_set=ts)
    assert [(e["strategy"], e["n_per_class"]) for e in broken["errors"]] == [("ssl", 5)]
    assert len(broken["cells"]) == 3


def test_explain_cli_writes_overlays_and_maps(tmp_path, capsys) -> None:
    pytest.importorskip("fewlabel.data.tensors")
    import tifffile

    from fewlabel.cli import main
    from fewlabel.data.tensors import Preprocess
    from fewlabel.models.io import save_model_dir

    pre = Preprocess(spatial_dims=2, size=(32, 32), channels=1)
    clf = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2)
    save_model_dir(tmp_path / "model", clf, {"class_names": ["healthy", "<b>cancer</b>"],
                                             "preprocess": pre.to_dict()})
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "imgs" / name / "cell.tif",
                         np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32))
    main(["explain", str(tmp_path / "model"), str(tmp_path / "imgs"), "--method", "lrp",
          "--target", "<b>cancer</b>", "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("explained <b>cancer</b>" in line for line in lines)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    # Two files of the same name in two folders: both kept, under distinct names.
    assert written == ["cell__lrp.npy", "cell__lrp.png", "cell_lrp.npy", "cell_lrp.png"]
    maps = [np.load(p) for p in sorted((tmp_path / "out").glob("*.npy"))]
    assert all(m.shape == (32, 32) for m in maps)
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(tmp_path / "model"), str(tmp_path / "imgs"), "--target", "nope",
              "--out", str(tmp_path / "o2")])
    assert exc.value.code == 2 and "unknown class" in capsys.readouterr().err


def test_explain_run_on_a_3d_run(tmp_path) -> None:
    from report_fixtures import make_run, make_test_set

    from fewlabel.explain.run import explain_run

    run = make_run(tmp_path / "run3d", strategies=("scratch",), sizes=(2,), repeats=1, missing=(), failed=(),
                   spatial_dims=3)
    index = explain_run(run, n_per_class=1, test_set=make_test_set(["a", "b"], n_per_class=3, spatial_dims=3))
    assert not index["errors"] and len(index["cells"]) == 1
    assert (run / index["cells"][0]["grid"]).stat().st_size > 10_000  # 2 images x 3 planes x 4 panels


def test_batchnorm_folding_keeps_the_outputs_and_lrp_conserves_through_it() -> None:
    from fewlabel.explain.rules import fold_batchnorm

    torch.manual_seed(1)
    clf = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2)
    clf.train()
    for _ in range(3):  # non-trivial running statistics
        clf(torch.randn(8, 1, 16, 16) * 2 + 1)
    clf.eval()
    for m in clf.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    import copy

    folded = copy.deepcopy(clf)
    assert fold_batchnorm(folded) == 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), clf(x), rtol=1e-4, atol=1e-5)
    notes = lrp_notes(clf)
    assert notes[:3] == ["ε = 0.1", "z^B rule at the input layer", "BatchNorm folded into 5 convolutions"]


def test_zb_input_rule_conserves_relevance_on_negative_inputs() -> None:
    """z-scored pixels are negative half the time: the z^B rule still hands the input exactly the
    relevance that reached the first layer (plain net, no bias: that is the logit)."""
    torch.manual_seed(0)
    net = PlainNet().eval()
    x = torch.randn(3, 1, 16, 16)
    rel = attribute(net, x, target=1, method="lrp", epsilon=1e-9)
    same = attribute(net, x, target=1, method="lrp", epsilon=1e-9, input_rule="same")
    logits = net(x)[:, 1].detach().numpy()
    np.testing.assert_allclose(rel.reshape(3, -1).sum(1), logits, rtol=1e-3, atol=1e-5)
    assert not np.allclose(rel, same)  # the input rule changed how relevance spreads over pixels


def test_checks_tell_a_faithful_map_from_a_random_one_and_catch_model_independent_maps() -> None:
    from fewlabel.explain.cascade import randomisable_blocks
    from fewlabel.explain.checks import check_methods, faithfulness, mask_share, randomised_copy

    clf = _quadrant_classifier()
    x = torch.randn(6, 1, 32, 32).numpy()
    target = clf(torch.as_tensor(x)).argmax(1).numpy()
    sal = attribute(clf, x, target, "saliency")
    f = faithfulness(clf, x, sal, target)
    rng = np.random.default_rng(0)
    noise = faithfulness(clf, x, rng.random(sal.shape).astype(np.float32), target)
    # saliency knows only the top-left quadrant matters: deleting it first moves the prediction more
    def gap(r):
        return abs(r["deletion"]["delta"]) + abs(r["insertion"]["delta"])

    assert gap(f) > gap(noise)
    rnd = randomised_copy(clf, seed=1)
    assert all(not torch.equal(a, b) for a, b in zip(rnd.parameters(), clf.parameters(), strict=True))

    def image_as_map(model, xs, target=None, method=None):  # a "method" blind to the model
        return np.abs(np.asarray(xs)[:, 0])

    checks = check_methods(clf, x, {"saliency": sal, "edge": image_as_map(clf, x)}, target,
                           lambda m, xs, target, method: attribute(m, xs, target, method)
                           if method == "saliency" else image_as_map(m, xs),
                           masks=np.zeros((6, 1, 32, 32), int) + (np.arange(32) < 16)[None, None, :, None])
    assert checks["edge"]["randomisation_similarity"] == pytest.approx(1.0)
    assert checks["edge"]["randomisation"]["verdict"] == "keeps image structure"
    assert any("keeps image structure" in s for s in checks["edge"]["failures"])
    # the quadrant model's architecture (not its weights) confines saliency: the check cannot tell
    assert checks["saliency"]["mask_inside"] > 0.9 and checks["saliency"]["mask_area"] == 0.5
    assert checks["saliency"]["mask"]["difference"]["verdict"] == "more inside the masks than their area"
    torch.manual_seed(0)
    plain = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2).eval()
    t2 = plain(torch.as_tensor(x)).argmax(1).numpy()
    maps = {m: attribute(plain, x, t2, m) for m in ("saliency", "lrp", "gradcam")}
    for method, c in check_methods(plain, x, maps, t2, attribute).items():
        stages = c["randomisation"]["stages"]
        assert len(stages) == len(randomisable_blocks(plain)) == 4, method
        assert stages[-1]["mean"] < 0.9, method  # the maps depend on the weights
        assert "mask" not in c and "mask_inside" not in c
        json.dumps(c, allow_nan=False)
    assert mask_share(np.ones((1, 4, 4)), np.ones((1, 1, 4, 4)))["inside"] == 1.0
