"""The explanation checks with intervals: deletion, insertion and region perturbation against random
orders, cascading model randomisation, and the bootstrap verdicts they share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.explain.attributions import attribute
from fewlabel.explain.cascade import cascade, other_image_similarity, paired_similarity, randomisable_blocks
from fewlabel.explain.checks import check_methods, faithfulness, randomisation
from fewlabel.explain.intervals import MIN_IMAGES, bootstrap_mean, side_verdict
from fewlabel.models.encoder import create_encoder
from fewlabel.models.heads import Classifier, Ensemble

SIDE = 16
N = 12


class CornerModel(nn.Module):
    """Class 0's logit is the mean of the top-left 8x8 pixels (class 1's its negative): nothing else
    in the image matters, so the right map is known."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * x[:, 0, : SIDE // 2, : SIDE // 2].mean((1, 2))
        return torch.stack([s, -s], dim=1)


def _corner_data() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (N, 1, SIDE, SIDE)).astype(np.float32)
    x[:, :, : SIDE // 2, : SIDE // 2] += 1.0  # class 0, carried by the corner alone
    half = SIDE // 2
    right = np.zeros((N, SIDE, SIDE), np.float32)
    right[:, :half, :half] = 1 + rng.random((N, half, half))
    opposite = np.zeros((N, SIDE, SIDE), np.float32)
    opposite[:, half:, half:] = 1 + rng.random((N, half, half))
    maps = {"right": right, "opposite": opposite, "random": rng.random((N, SIDE, SIDE)).astype(np.float32)}
    return x, np.zeros(N, dtype=np.int64), maps


@pytest.fixture(scope="module")
def corner_checks() -> dict[str, dict]:
    x, target, maps = _corner_data()
    model = CornerModel()
    return {name: faithfulness(model, x, m, target, seed=3) for name, m in maps.items()}


def test_a_map_of_the_region_the_model_reads_beats_random_and_its_opposite_loses(corner_checks) -> None:
    right, opposite = corner_checks["right"], corner_checks["opposite"]
    # Deleting the corner first drops class 0 at once: a smaller area than random, interval below 0.
    assert right["deletion"]["verdict"] == "better than random" and right["deletion"]["high"] < 0
    assert right["insertion"]["verdict"] == "better than random" and right["insertion"]["low"] > 0
    # The opposite corner first: nothing changes until it is gone, so slower than random either way.
    assert opposite["deletion"]["verdict"] == "worse than random" and opposite["deletion"]["low"] > 0
    assert opposite["insertion"]["verdict"] == "worse than random" and opposite["insertion"]["high"] < 0
    for result in (right, opposite):
        for c in result.values():
            assert c["n"] == N and c["low"] <= c["delta"] <= c["high"]
            assert c["delta"] == pytest.approx(c["method"] - c["reference"])


def test_a_random_map_is_not_distinguishable_from_random_orders(corner_checks) -> None:
    for key, c in corner_checks["random"].items():
        assert c["verdict"] == f"not distinguishable from random ({N} images)", key
        assert c["low"] < 0 < c["high"]


def test_aopc_of_the_right_regions_exceeds_random_region_orders(corner_checks) -> None:
    right, opposite = corner_checks["right"]["aopc"], corner_checks["opposite"]["aopc"]
    assert right["method"] > right["reference"] and right["low"] > 0
    assert right["verdict"] == "better than random"
    # noise over the opposite corner first leaves the prediction where it was for the first steps
    assert opposite["method"] < opposite["reference"] and opposite["verdict"] == "worse than random"


def test_deletion_and_insertion_each_get_their_own_verdict() -> None:
    """A map that ranks three rows of the corner first and the rest of the corner last: inserting
    those rows already convinces the saturating model, deleting them does not. One verdict each,
    never folded into one pass or fail."""
    x, target, _ = _corner_data()
    rng = np.random.default_rng(1)
    half = SIDE // 2
    part = rng.random((N, SIDE, SIDE)).astype(np.float32)
    part[:, :3, :half] = 2 + rng.random((N, 3, half))
    part[:, 3:half, :half] = -1 - rng.random((N, half - 3, half))
    res = faithfulness(CornerModel(), x, part, target, seed=3)
    assert res["insertion"]["verdict"] == "better than random"
    assert res["deletion"]["verdict"] == "worse than random"


def test_bootstrap_interval_and_verdict_rules() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, 40)
    ci = bootstrap_mean(values, seed=1)
    assert ci["low"] < ci["mean"] < ci["high"] and ci["n"] == 40
    assert ci["mean"] == pytest.approx(values.mean())
    wider = bootstrap_mean(values[:10], seed=1)
    assert wider["high"] - wider["low"] > ci["high"] - ci["low"]
    # Missing values are left out, not counted as 0.
    assert bootstrap_mean([1.0, np.nan, 3.0])["n"] == 2
    assert bootstrap_mean([np.nan]) == {"mean": None, "low": None, "high": None, "n": 0}
    names = ("good", "bad", "neither")
    assert side_verdict({"low": 0.1, "high": 0.2, "n": 10}, "above", names) == "good"
    assert side_verdict({"low": 0.1, "high": 0.2, "n": 10}, "below", names) == "bad"
    assert side_verdict({"low": -0.1, "high": 0.2, "n": 10}, "below", names) == "neither (10 images)"
    # Five images all on one side happen by chance 1 time in 16: no verdict below MIN_IMAGES.
    few = bootstrap_mean([0.1, 0.2, 0.3, 0.2, 0.1])
    assert few["low"] > 0 and side_verdict(few, "above", names).startswith("too few images")
    assert MIN_IMAGES == 6


def test_expanded_interval_misses_a_zero_mean_about_one_time_in_twenty() -> None:
    rng = np.random.default_rng(5)
    misses = 0
    for seed in range(300):
        ci = bootstrap_mean(rng.normal(0, 1, 12), seed=seed, n_boot=1000)
        misses += ci["low"] > 0 or ci["high"] < 0
    assert misses / 300 < 0.09  # the plain percentile interval misses ~10 % here


def test_blocks_in_forward_order_cover_every_weight_and_group_a_deep_model() -> None:
    clf = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2)
    assert [n for n, _ in randomisable_blocks(clf)] == ["head.1", "encoder.stages.2", "encoder.stages.1",
                                                        "encoder.stages.0"]
    deep = Classifier(create_encoder("mobilenet_v2", 1, 2, width_mult=0.25), 2)
    stages = randomisable_blocks(deep, max_stages=8)
    assert len(stages) == 8 and stages[0][0] == "head.1"
    covered = [id(p) for _, mods in stages for m in mods for p in m.parameters()]
    assert sorted(covered) == sorted(id(p) for p in deep.parameters())  # each weight once
    members = [Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2) for _ in range(2)]
    ens = randomisable_blocks(Ensemble(members))
    assert len(ens) == 4 and all(len(mods) == 2 for _, mods in ens)


def test_cascade_randomises_from_the_top_one_block_at_a_time() -> None:
    torch.manual_seed(0)
    clf = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2).eval()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    names = [n for n, _ in randomisable_blocks(clf)]
    for k, (name, model) in enumerate(cascade(clf, seed=0)):
        assert name == names[k]
        state = model.state_dict()
        for j, block in enumerate(names):
            changed = any(not torch.equal(state[key], before[key]) for key in state
                          if key.startswith(block + ".") and "num_batches" not in key)
            assert changed == (j <= k), (name, block)
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items())  # the caller's model untouched


def _trained_classifier() -> tuple[Classifier, np.ndarray]:
    from report_fixtures import make_test_set

    torch.manual_seed(0)
    ts = make_test_set(["a", "b"], n_per_class=12, size=SIDE, seed=1)
    clf = Classifier(create_encoder("convnet", 1, 2, width=4, depth=3), 2)
    opt = torch.optim.Adam(clf.parameters(), 1e-2)
    x, y = torch.as_tensor(ts.x), torch.as_tensor(ts.y)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    return clf.eval(), ts.x


def test_cascading_randomisation_changes_the_maps_of_a_trained_model() -> None:
    clf, x = _trained_classifier()
    target = clf(torch.as_tensor(x)).argmax(1).numpy()
    sal = attribute(clf, x, target, "saliency")
    res = randomisation(clf, x, sal, target, "saliency", attribute)
    stages = res["stages"]
    assert len(stages) == len(randomisable_blocks(clf)) == 4
    assert [s["randomised"] for s in stages][0] == "head.1"
    assert all(s["n"] == len(x) and s["low"] <= s["mean"] <= s["high"] for s in stages)
    # the weights below the head shape the map: with all random it ranks pixels unlike before
    assert stages[-1]["high"] < stages[0]["low"] and stages[-1]["high"] < 0.5
    assert res["verdict"] == "depends on the weights" and res["difference"]["high"] < 0

    def image_as_map(model, xs, target=None, method=None):  # blind to the model
        return np.abs(np.asarray(xs)[:, 0])

    blind = randomisation(clf, x, image_as_map(clf, x), target, "edge", image_as_map)
    assert all(s["mean"] == pytest.approx(1.0) for s in blind["stages"])
    assert blind["verdict"] == "keeps image structure" and blind["difference"]["low"] > 0


def test_rank_similarities() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 8, 8))
    np.testing.assert_allclose(paired_similarity(a, -a), 1.0)  # |map|: the sign does not count
    np.testing.assert_allclose(paired_similarity(a, np.zeros_like(a)), 0.0)  # a blank map ranks nothing
    same = np.repeat(a[:1], 5, axis=0)
    np.testing.assert_allclose(other_image_similarity(same), 1.0)
    assert abs(other_image_similarity(a)).max() < 0.3


def test_check_methods_records_are_strict_json_and_failures_name_bad_verdicts() -> None:
    x, target, maps = _corner_data()
    masks = np.zeros((N, 1, SIDE, SIDE), np.int64)
    masks[:, :, : SIDE // 2, : SIDE // 2] = 1

    def fn(model, xs, target, method):  # the maps do not depend on the model
        return maps[method]

    out = check_methods(CornerModel(), x, {"right": maps["right"], "opposite": maps["opposite"]}, target, fn,
                        masks=masks, seed=3, orders=3)
    json.dumps(out, allow_nan=False)
    # the maps ignore the model, so the cascade cannot change them: the one failure of the right map
    assert len(out["right"]["failures"]) == 1 and "keeps image structure" in out["right"]["failures"][0]
    assert any("worse than random order in deletion" in f for f in out["opposite"]["failures"])
    assert any("less relevance inside the masks" in f for f in out["opposite"]["failures"])
    assert out["right"]["mask"]["difference"]["verdict"] == "more inside the masks than their area"
    assert out["right"]["mask_inside"] == pytest.approx(1.0) and out["right"]["mask_area"] == 0.25
    assert out["right"]["n_images"] == N and out["right"]["random_orders"] == 3
