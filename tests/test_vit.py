"""ViT encoders from the checkpoints users hold: timm and DINOv2 files, Hugging Face folders; the
architecture read from the file, strict one-line refusals, position interpolation, channel adaptation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_vit_refs import RefViT, write_dinobloom, write_hf, write_timm

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.fileio import file_sha256
from fewlabel.models import create_encoder
from fewlabel.models.vit import PRETRAINING_NOTE, VisionTransformerEncoder, vit_config_from_state
from fewlabel.models.vit_io import load_vit_encoder, read_checkpoint

X16 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert part in text, text


# ------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
@pytest.mark.parametrize("variant", [
    {},  # plain ViT: class position, GELU MLP, no layer scale
    {"reg": 4, "ls": True, "swiglu": True},  # timm's DINOv2-with-registers layout (no_embed_class)
])
def test_timm_file_loads_strictly_and_gives_the_reference_output(tmp_path: Path, suffix: str,
                                                                 variant: dict) -> None:
    ref = RefViT("timm", **variant).eval()
    path = write_timm(ref, tmp_path / f"vit{suffix}")
    enc = load_vit_encoder(path, input_size=None).eval()
    c = enc.config
    arch = (c["embed_dim"], c["depth"], c["num_heads"], c["patch_size"], c["pos_grid"])
    assert arch == (32, 2, 2, 4, [4, 4])
    assert c["num_reg_tokens"] == variant.get("reg", 0) and c["layer_scale"] == variant.get("ls", False)
    assert c["ffn"] == ("swiglu" if variant.get("swiglu") else "mlp") and c["mlp_hidden"] == 64
    assert c["pos_embed_cls"] is not bool(variant.get("reg"))
    assert c["weights"]["sha256"] == file_sha256(path) and c["weights"]["format"] == "timm"
    assert c["weights"]["note"] == PRETRAINING_NOTE and c["weights"]["dropped"] == ["head.* (2 tensors)"]
    assert c["weights"]["num_heads_from"] == "vit.json num_heads"
    with torch.no_grad():
        assert torch.equal(enc(X16), ref(X16))  # same operations in the same order: bit for bit


@pytest.mark.parametrize("chunks", [0, 2])
@pytest.mark.parametrize("variant", [{"ls": True}, {"ls": True, "reg": 4, "swiglu": True}])
def test_dinov2_training_checkpoint_as_dinobloom_ships_it(tmp_path: Path, chunks: int, variant: dict) -> None:
    ref = RefViT("dinov2", **variant).eval()
    path = write_dinobloom(ref, tmp_path / "dinobloom.pth", chunks=chunks)
    enc = load_vit_encoder(path, input_size=None).eval()
    record = enc.config["weights"]
    assert record["format"] == "dinov2"
    assert record["dropped"] == ["dino_head.mlp.0.weight", "ibot_head.mlp.0.weight", "mask_token"]
    with torch.no_grad():
        torch.testing.assert_close(enc(X16), ref(X16), rtol=1e-5, atol=1e-5)
        # DINOv2 resizes its 4x4 position grid to 6x6 for 24-px inputs with its own offset
        x24 = torch.randn(2, 3, 24, 24)
        torch.testing.assert_close(enc(x24), ref(x24), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["dinov2", "vit"])
def test_hugging_face_folder_written_with_transformers_names(tmp_path: Path, model_type: str) -> None:
    eps = 1e-12 if model_type == "vit" else 1e-6  # ViTModel's default layer_norm_eps
    ref = RefViT("timm", ls=model_type == "dinov2", eps=eps).eval()
    write_hf(ref, tmp_path / "hf", model_type)
    enc = load_vit_encoder(tmp_path / "hf", input_size=None).eval()  # the folder itself
    assert enc.config["weights"]["format"] == f"hf-{model_type}" and enc.config["norm_eps"] == eps
    assert enc.config["weights"]["num_heads_from"] == "config.json num_attention_heads"
    assert enc.config["weights"]["dropped"] == (["pooler.* (2 tensors)"] if model_type == "vit"
                                                else ["embeddings.mask_token"])
    with torch.no_grad():
        assert torch.equal(enc(X16), ref(X16))


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_swiglu", "dinov2_registers", "vit"])
def test_transformers_save_pretrained_loads(tmp_path: Path, kind: str) -> None:
    tr = pytest.importorskip("transformers")
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 4,
              "image_size": 16}
    if kind == "vit":
        model = tr.ViTModel(tr.ViTConfig(intermediate_size=64, **common))
    elif kind == "dinov2_registers":
        model = tr.Dinov2WithRegistersModel(tr.Dinov2WithRegistersConfig(num_register_tokens=4, **common))
    else:
        model = tr.Dinov2Model(tr.Dinov2Config(use_swiglu_ffn=kind == "dinov2_swiglu", **common))
    with torch.no_grad():  # layer norms and layer scales away from their 1/0 initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval().save_pretrained(tmp_path / "hf")
    enc = load_vit_encoder(tmp_path / "hf" / "model.safetensors", input_size=None).eval()
    for x in (X16, torch.randn(2, 3, 24, 24)):  # native grid, then positions interpolated as HF does
        with torch.no_grad():
            out = model(pixel_values=x, **({"interpolate_pos_encoding": True} if kind == "vit" else {}))
        torch.testing.assert_close(enc(x), out.last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


def test_hub_name_is_looked_up_in_the_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder("facebook/dinov2-small")
    _one_line(exc, "facebook/dinov2-small", "never downloads", "hf download", str(tmp_path / "cache"))
    repo = tmp_path / "cache" / "models--facebook--dinov2-small"
    write_hf(RefViT("timm", ls=True), repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    enc = load_vit_encoder("facebook/dinov2-small")
    assert Path(enc.config["weights"]["file"]) == repo / "snapshots" / "abc123" / "model.safetensors"


# -------------------------------------------------------------------------------------- architecture
def test_heads_default_to_head_size_64_and_a_json_beside_overrides(tmp_path: Path) -> None:
    ref = RefViT("timm", dim=128, heads=4, hidden=256)
    path = write_timm(ref, tmp_path / "vit.safetensors", heads=None)
    config = vit_config_from_state(read_checkpoint(path).state)
    assert config["num_heads"] == 2 and config["embed_dim"] == 128  # 128 // 64: not what the file had
    path.with_suffix(".json").write_text(json.dumps({"model_args": {"num_heads": 4}}))  # timm's layout
    enc = load_vit_encoder(path, input_size=None).eval()
    assert enc.config["num_heads"] == 4
    with torch.no_grad():
        assert torch.equal(enc(X16), ref.eval()(X16))


def test_heads_that_cannot_be_guessed_are_asked_for(tmp_path: Path) -> None:
    path = write_timm(RefViT("timm"), tmp_path / "vit.pth", heads=None)  # width 32: not a multiple of 64
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(path)
    _one_line(exc, "vit.pth", '{"num_heads": N}')


def test_input_adapter_and_default_size(tmp_path: Path) -> None:
    path = write_timm(RefViT("timm", patch=8, img=32), tmp_path / "vit.safetensors")
    enc = load_vit_encoder(path, in_channels=3)
    assert enc.config["input_size"] == 224  # the default, a multiple of the 8-px patch
    assert tuple(enc.forward_features(torch.randn(1, 3, 40, 40))[-1].shape) == (1, 32, 28, 28)
    assert load_vit_encoder(path, input_size=96).config["input_size"] == 96
    with pytest.raises(FewlabelError, match="input size 100 px is not a multiple of this ViT's 8-px patches: "
                       "use 96 or 104"):
        load_vit_encoder(path, input_size=100)  # refused, not rounded: a record never says 100 for 96
    with pytest.raises(FewlabelError, match="depth is the file's own"):
        load_vit_encoder(path, depth=3)


def test_one_channel_is_the_rgb_sum(tmp_path: Path) -> None:
    ref = RefViT("timm", ls=True).eval()
    path = write_timm(ref, tmp_path / "vit.safetensors")
    grey = load_vit_encoder(path, in_channels=1, input_size=None).eval()
    assert grey.config["in_channels"] == 1 and grey.config["weights"]["patch_embedding"] == "sum over RGB"
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), ref(x.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)
    five = load_vit_encoder(path, in_channels=5, input_size=None)
    assert five.patch_embed.proj.weight.shape[1] == 5


def test_positions_interpolate_to_other_sizes() -> None:
    enc = create_encoder("vit", in_channels=3, embed_dim=32, depth=2, num_heads=2, patch_size=4, pos_grid=4)
    table = enc.position_table(4, 4)
    assert torch.equal(table, enc.pos_embed)  # the stored grid: untouched
    wide = enc.position_table(6, 10)
    assert wide.shape == (1, 1 + 60, 32) and torch.equal(wide[:, :1], enc.pos_embed[:, :1])
    # bicubic: a linear ramp over the grid stays a ramp with the same end-to-end range
    with torch.no_grad():
        enc.pos_embed[0, 1:, 0] = torch.arange(4.0).repeat_interleave(4)
    ramp = enc.position_table(8, 8)[0, 1:, 0].reshape(8, 8)
    assert torch.all(ramp[1:, 0] >= ramp[:-1, 0]) and torch.allclose(ramp[:, 0], ramp[:, 5])
    assert enc(torch.randn(2, 3, 24, 40)).shape == (2, 32)
    assert enc.forward_features(torch.randn(1, 3, 18, 18))[-1].shape[-2:] == (4, 4)  # whole patches


def test_pool_options_and_rebuild_from_config() -> None:
    enc = create_encoder("vit", in_channels=2, embed_dim=32, depth=1, num_heads=4, patch_size=4, pos_grid=4,
                         pool="cls+mean").eval()
    assert enc.out_features == 64 and enc(torch.randn(2, 2, 16, 16)).shape == (2, 64)
    again = create_encoder(**enc.config)
    again.load_state_dict(enc.state_dict(), strict=True)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), enc(x))
    with pytest.raises(FewlabelError, match="2D only"):
        VisionTransformerEncoder(spatial_dims=3)


# ------------------------------------------------------------------------------------------- refusals
def _mutated(tmp_path: Path, change) -> Path:
    state = {k: v.clone() for k, v in RefViT("timm", ls=True).state_dict().items()}
    change(state)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps({"num_heads": 2}))
    return path


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update({"blocks.0.attn.q_norm.weight": torch.ones(16)}),
     ["unexpected key 'blocks.0.attn.q_norm.weight'"]),
    (lambda s: s.pop("blocks.1.ls2.gamma"), ["missing key 'blocks.1.ls2.gamma'"]),
    (lambda s: s.update({"blocks.1.mlp.fc2.bias": torch.zeros(31)}),
     ["key 'blocks.1.mlp.fc2.bias' has shape (31,)", "needs (32,)"]),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.0.")],
     ["missing key 'blocks.0.norm1.weight'", "block 0 is absent"]),
    (lambda s: s.update({"pos_embed": torch.zeros(1, 15, 32)}), ["'pos_embed' has 15 positions"]),
])
def test_a_file_that_does_not_fit_is_one_line_naming_file_and_key(tmp_path: Path, change, words) -> None:
    path = _mutated(tmp_path, change)
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(path)
    _one_line(exc, str(path), *words)


def test_hugging_face_refusals_name_their_keys(tmp_path: Path) -> None:
    path = write_hf(RefViT("timm", ls=True), tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    del state["encoder.layer.1.attention.attention.value.bias"]
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(path)
    _one_line(exc, str(path), "missing key 'encoder.layer.1.attention.attention.value.bias'")
    state["encoder.layer.1.attention.attention.value.bias"] = torch.zeros(32)
    del state["encoder.layer.0.layer_scale2.lambda1"]
    save_file(state, str(path))
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(path)
    _one_line(exc, "missing key 'encoder.layer.0.layer_scale2.lambda1'")
    (tmp_path / "hf" / "config.json").unlink()
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(path)
    _one_line(exc, "Hugging Face names", "config.json")


def test_special_pickled_and_fewlabel_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "vit.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(fifo)
    _one_line(exc, "FIFO", "never opened")
    pickled = tmp_path / "evil.pth"
    torch.save({"model": {"weights": object()}}, pickled)  # not loadable with weights_only
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(pickled)
    _one_line(exc, "evil.pth", "cannot be read")
    from fewlabel.models.io import save_encoder

    own = save_encoder(tmp_path / "enc.safetensors", create_encoder("convnet"))
    with pytest.raises(ModelFileError) as exc:
        load_vit_encoder(own)
    _one_line(exc, "is a fewlabel encoder or model file")
