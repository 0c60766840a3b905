"""Encoders (convnet, schouten, mobilenet_v2), the registry, the Classifier, and captum LRP on them."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models import create_encoder, encoder_names
from fewlabel.models.heads import Classifier
from fewlabel.models.mobilenet import Add
from fewlabel.models.schouten import min_image_size


def _check_contract(enc: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Shapes promised by the Encoder contract, checked against what the maps really are."""
    maps = enc.forward_features(x)
    assert len(maps) == len(enc.stage_channels) == len(enc.stage_strides)
    assert [m.shape[1] for m in maps] == enc.stage_channels
    out = enc(x)
    assert out.shape == (x.shape[0], enc.out_features)
    assert enc.in_channels == x.shape[1] and enc.spatial_dims == x.dim() - 2
    rebuilt = create_encoder(**enc.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in enc.state_dict().items()
    }
    return maps


def test_registry_lists_all_builtin_encoders() -> None:
    assert {"convnet", "schouten", "mobilenet_v2"} <= set(encoder_names())
    with pytest.raises(FewlabelError, match="unknown encoder 'nope'"):
        create_encoder("nope")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_convnet_2d_3d_any_channels(dims: int, channels: int) -> None:
    torch.manual_seed(0)
    enc = create_encoder("convnet", in_channels=channels, spatial_dims=dims, width=4, depth=3).eval()
    size = 16 if dims == 2 else 8
    x = torch.randn(2, channels, *([size] * dims))
    maps = _check_contract(enc, x)
    assert [m.shape[2] for m in maps] == [size // s for s in enc.stage_strides]


def test_schouten_matches_the_paper_at_257px() -> None:
    enc = create_encoder("schouten", image_size=(257, 257)).eval()
    maps = _check_contract(enc, torch.randn(2, 1, 257, 257))
    assert enc.stage_channels == [4, 8, 8, 8, 16, 16]
    assert [m.shape[-1] for m in maps] == [127, 62, 30, 14, 6, 2]  # valid conv (-2) then floor(/2)
    assert enc.out_features == 32 and enc.dense.in_features == 16 * 2 * 2
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(c.padding == (0, 0) and c.kernel_size == (3, 3) for c in convs)
    # Output is the dense layer after a ReLU: non-negative.
    assert (enc(torch.randn(3, 1, 257, 257)) >= 0).all()


def test_schouten_size_limits() -> None:
    assert min_image_size(6) == 190
    create_encoder("schouten", image_size=190)  # the smallest that fits
    with pytest.raises(FewlabelError, match="at least 190 px") as info:
        create_encoder("schouten", image_size=96)
    assert "(96, 96)" in str(info.value)
    with pytest.raises(FewlabelError, match="at least 190 px"):
        create_encoder("schouten", image_size=189)
    with pytest.raises(FewlabelError, match="needs image_size"):
        create_encoder("schouten")
    # Fewer stages for small images.
    enc = create_encoder("schouten", image_size=96, filters=[4, 8, 8, 8])
    assert enc(torch.randn(1, 1, 96, 96)).shape == (1, 32)
    # Built for one size: another input size is a clear error, not a matmul error.
    with pytest.raises(FewlabelError, match="built for image_size"):
        enc(torch.randn(1, 1, 64, 64))


def test_schouten_3d_and_channels() -> None:
    enc = create_encoder("schouten", in_channels=2, spatial_dims=3, image_size=22, filters=[4, 8, 8]).eval()
    maps = _check_contract(enc, torch.randn(1, 2, 22, 22, 22))
    assert [m.shape[-1] for m in maps] == [10, 4, 1]
    with pytest.raises(FewlabelError, match="3 sides but spatial_dims is 2"):
        create_encoder("schouten", image_size=(257, 257, 257))


def test_mobilenet_module_names_and_stages() -> None:
    enc = create_encoder("mobilenet_v2", in_channels=3).eval()
    keys = list(enc.state_dict())
    # torchvision's names: 314 tensors in its file, minus the 2 of classifier.1.
    assert len(keys) == 312
    for key in ("features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
                "features.2.conv.0.0.weight", "features.17.conv.3.running_var", "features.18.0.weight",
                "features.18.1.num_batches_tracked"):
        assert key in keys
    assert not any(k.startswith("classifier") for k in keys)
    maps = _check_contract(enc, torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]  # strides 2, 4, 8, 16, 32
    assert enc.stage_channels == [16, 24, 32, 96, 1280] and enc.out_features == 1280
    # Separate activation module per use (LRP needs it), none in-place.
    relus = [m for m in enc.modules() if isinstance(m, nn.ReLU6)]
    assert len(relus) == len({id(m) for m in relus}) == 35 and not any(m.inplace for m in relus)


def test_mobilenet_width_and_dims() -> None:
    enc = create_encoder("mobilenet_v2", in_channels=1, width_mult=0.5)
    assert enc.stage_channels == [8, 16, 16, 48, 1280]
    assert enc.features[0][0].weight.shape == (16, 1, 3, 3)
    _check_contract(enc.eval(), torch.randn(2, 1, 32, 32))
    with pytest.raises(FewlabelError, match="2D only"):
        create_encoder("mobilenet_v2", spatial_dims=3)


def test_classifier_head_and_features() -> None:
    torch.manual_seed(0)
    enc = create_encoder("convnet", in_channels=1, width=4, depth=2)
    model = Classifier(enc, num_classes=3, dropout=0.2).eval()
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.2
    assert isinstance(model.head[1], nn.Linear) and model.head[1].in_features == enc.out_features
    x = torch.randn(4, 1, 16, 16)
    feats = model.features(x)
    assert feats.shape == (4, 8)
    assert torch.allclose(model(x), model.head[1](feats))  # eval: dropout is identity
    assert not any(k.startswith("head.0") for k in model.state_dict())
    with pytest.raises(ValueError):
        Classifier(enc, num_classes=1)


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("convnet", {"width": 4, "depth": 3}, (2, 1, 32, 32)),
        ("schouten", {"image_size": 96, "filters": [4, 8, 8, 8]}, (2, 1, 96, 96)),
    ],
)
def test_lrp_runs_with_default_rules(name: str, kwargs: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    model = Classifier(create_encoder(name, **kwargs), 2).eval()
    x = torch.randn(*shape, requires_grad=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attr = LRP(model).attribute(x, target=1)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # captum restores


def test_lrp_on_mobilenet_needs_rules() -> None:
    """Known limitation: captum has no default rule for ReLU6 or our residual ``Add``; with an
    IdentityRule on ReLU6 (relevance passes through, as for ReLU) and EpsilonRule on Add it runs."""
    torch.manual_seed(0)
    model = Classifier(create_encoder("mobilenet_v2", in_channels=3, width_mult=0.35), 2).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with pytest.raises(TypeError, match="no rule defined"):
        LRP(model).attribute(x, target=1)
    for module in model.modules():
        if isinstance(module, nn.ReLU6):
            module.rule = IdentityRule()
        elif isinstance(module, Add):
            module.rule = EpsilonRule()
    attr = LRP(model).attribute(x, target=1)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
