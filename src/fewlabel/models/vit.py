"""Vision Transformers (ViT, DINOv2, DINOv2 with registers) in plain PyTorch, 2D only, registered as
``vit``.

Module names are timm's ``VisionTransformer`` names (``cls_token``, ``reg_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.ls1.gamma``, ``blocks.N.mlp.fc1``, ``norm``), so a timm state dict loads as it is; DINOv2's
and Hugging Face's names are renamed to these by ``fewlabel.models.vit_io``. ``vit_config_from_state``
reads the architecture from such a state dict: every size from the tensors' shapes, the number of
attention heads (which no state dict records) given, else embed_dim // 64.

Stage map (``forward_features``): one map, the patch tokens that ENTER the last block, as
(B, D, H/p, W/p). Not the last block's output: the class token is read after the last block, and the
output patch tokens never reach it, so Grad-CAM on them would see a zero gradient; the input patch
tokens reach it through the last block's attention (pytorch-grad-cam hooks ``blocks[-1].norm1`` for
the same reason). ``forward`` goes through ``forward_features`` and continues from that very map, so
attribution code that wraps ``forward_features`` finds the map on the path to the output.

Input adapter (in the config, so ``predict`` repeats it): ``input_size`` resizes inside ``forward`` as
MobileNetV2's does, and ``input_mean``/``input_std`` swap the data's z-score for ImageNet's
normalisation (``mobilenet.input_adapter``). Without ``input_size``, sides that are not a multiple of
the patch size are resized to the nearest multiple, so no border is silently dropped.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.models import layers
from fewlabel.models.encoder import Encoder, register_encoder
from fewlabel.models.mobilenet import apply_input_adapter, input_adapter

# The plain words a model config and report carry for weights whose training images nobody listed.
PRETRAINING_NOTE = "pretraining data unknown: it may have seen public images that are in your test set"
# Foundation models are used at 224 px (DINOv2's files hold a 518-px grid, interpolated down): 224 is a
# multiple of the usual patch sizes 8, 14 and 16.
DEFAULT_INPUT_SIZE = 224
# DINOv2's and timm's ViTs all use 64 channels per attention head; a state dict does not say it.
HEAD_DIM = 64
POOLS = ("cls", "mean", "cls+mean")
FFNS = ("mlp", "swiglu")
MAX_POSITIONS = 256 * 256  # a stored position grid larger than this is a corrupt or tampered config


class StageMaps(list):
    """The stage maps, plus the prefix tokens (class, registers) that entered the last block with them;
    ``forward`` needs both, and attribution wrappers pass the list object on unchanged."""

    prefix: torch.Tensor


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT; DINOv2's ``ls1``/``ls2``), key ``gamma``."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's layout: q, k, v stacked)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 - GELU - fc2; or, ``swiglu``, timm's ``SwiGLUPacked`` (= DINOv2's ``SwiGLUFFNFused``): fc1
    makes 2 x hidden channels, SiLU(first half) * second half goes into fc2."""

    def __init__(self, dim: int, hidden: int, swiglu: bool = False) -> None:
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(dim, hidden * (2 if swiglu else 1))
        self.act = nn.SiLU() if swiglu else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.swiglu:
            x1, x2 = x.chunk(2, dim=-1)
            x = self.act(x1) * x2
        else:
            x = self.act(x)
        return self.fc2(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, hidden: int, swiglu: bool, layer_scale: bool,
                 qkv_bias: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, swiglu)
        self.ls2: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches to tokens, as one strided convolution (key ``proj``)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _grid(pos_grid: Any) -> tuple[int, int]:
    values = [pos_grid, pos_grid] if isinstance(pos_grid, int) else list(pos_grid)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise FewlabelError(f"encoder 'vit' needs pos_grid as two whole numbers >= 1, got {pos_grid!r}")
    if values[0] * values[1] > MAX_POSITIONS:
        raise FewlabelError(f"encoder 'vit' pos_grid {values} holds more than {MAX_POSITIONS} positions")
    return values[0], values[1]


class VisionTransformerEncoder(Encoder):
    """A ViT body (no classification head). Defaults: DINOv2's ViT-S/14 at a 224-px grid, for training
    from scratch; a checkpoint's own settings come from ``vit_io.vit_config_from_state``.

    ``pos_embed_cls``: the position table holds a row for the class token (DINOv2, Hugging Face, most
    timm files) or not (timm's ``no_embed_class``, e.g. its DINOv2-with-registers files).
    ``interp_offset``/``interp_antialias``: how the position table is resized (bicubic) to another
    patch grid; DINOv2's own files use a scale factor of (grid + 0.1) / stored grid without antialiasing.
    ``pool``: the feature ``forward`` returns: the class token after the final norm (``cls``), the
    mean of the patch tokens (``mean``), or both side by side (``cls+mean``, DINOv2's linear probe).
    ``weights``: a record of the file the weights came from (kept in the config, never read here).
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, embed_dim: int = 384, depth: int = 12,
                 num_heads: int | None = None, patch_size: int = 14, mlp_hidden: int | None = None,
                 ffn: str = "mlp", layer_scale: bool = True, num_reg_tokens: int = 0,
                 pos_grid: Any = (16, 16), pos_embed_cls: bool = True, qkv_bias: bool = True,
                 patch_bias: bool = True, norm_eps: float = 1e-6, interp_offset: float = 0.0,
                 interp_antialias: bool = False, pool: str = "cls", input_size: int | None = None,
                 input_mean: list[float] | None = None, input_std: list[float] | None = None,
                 weights: dict[str, Any] | None = None) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise FewlabelError(f"encoder 'vit' is 2D only, got spatial_dims={spatial_dims}")
        dim, depth, patch = int(embed_dim), int(depth), int(patch_size)
        if dim < 1 or depth < 1 or patch < 1 or int(num_reg_tokens) < 0:
            raise FewlabelError(f"encoder 'vit' needs embed_dim, depth and patch_size >= 1 and "
                                f"num_reg_tokens >= 0, got {dim}, {depth}, {patch}, {num_reg_tokens}")
        if num_heads is None:
            if dim % HEAD_DIM:
                raise FewlabelError(f"encoder 'vit' cannot guess num_heads for embed_dim {dim} (not a "
                                    f"multiple of {HEAD_DIM}); give num_heads")
            num_heads = dim // HEAD_DIM
        if int(num_heads) < 1 or dim % int(num_heads):
            raise FewlabelError(f"encoder 'vit' embed_dim {dim} does not split into {num_heads} heads")
        if ffn not in FFNS or pool not in POOLS:
            raise FewlabelError(f"encoder 'vit' needs ffn in {FFNS} and pool in {POOLS}, got {ffn!r}, "
                                f"{pool!r}")
        if input_size is not None and int(input_size) % patch:
            raise FewlabelError(f"encoder 'vit' input_size {input_size} is not a multiple of its patch "
                                f"size {patch}")
        gh, gw = _grid(pos_grid)
        hidden = int(mlp_hidden) if mlp_hidden is not None else 4 * dim
        adapter, self._renorm = input_adapter("vit", input_size, input_mean, input_std, min_size=patch)
        self.in_channels, self.spatial_dims = int(in_channels), 2
        self.config = {
            "name": "vit", "in_channels": self.in_channels, "spatial_dims": 2, "embed_dim": dim,
            "depth": depth, "num_heads": int(num_heads), "patch_size": patch, "mlp_hidden": hidden,
            "ffn": ffn, "layer_scale": bool(layer_scale), "num_reg_tokens": int(num_reg_tokens),
            "pos_grid": [gh, gw], "pos_embed_cls": bool(pos_embed_cls), "qkv_bias": bool(qkv_bias),
            "patch_bias": bool(patch_bias), "norm_eps": float(norm_eps),
            "interp_offset": float(interp_offset), "interp_antialias": bool(interp_antialias),
            "pool": pool, **adapter,
        }
        if weights is not None:
            self.config["weights"] = dict(weights)
        self.input_size = adapter.get("input_size")
        self.patch_size, self.pos_grid, self.pooling = patch, (gh, gw), pool
        self.pos_embed_cls = bool(pos_embed_cls)
        self.interp_offset, self.interp_antialias = float(interp_offset), bool(interp_antialias)
        self.num_prefix = 1 + int(num_reg_tokens)

        # Registered in the order timm's names sort by depth: token tables, patches, blocks, norm,
        # so parameter groups by block (layer-wise rates) run from the input side to the output.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, int(num_reg_tokens), dim)) if num_reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, int(self.pos_embed_cls) + gh * gw, dim))
        self.patch_embed = PatchEmbed(self.in_channels, dim, patch, bias=bool(patch_bias))
        self.blocks = nn.ModuleList(
            Block(dim, int(num_heads), hidden, ffn == "swiglu", bool(layer_scale), bool(qkv_bias),
                  float(norm_eps)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=float(norm_eps))
        self.global_pool = layers.global_pool(2)  # Encoder.pool on the stage map (a GAN body uses it)
        self.stage_channels = [dim]
        self.stage_strides = [patch]
        self.out_features = dim * (2 if pool == "cls+mean" else 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT initialisation, so training from scratch behaves like the reference model.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet re-normalisation, then a resize to ``input_size`` (or to whole patches)."""
        p = self.patch_size
        if self.input_size is not None:
            size = (self.input_size, self.input_size)
        else:
            size = (max(p, round(x.shape[-2] / p) * p), max(p, round(x.shape[-1] / p) * p))
        return apply_input_adapter(x, self._renorm, size)

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """The position embeddings for an h x w patch grid: (1, [1 +] h*w, D), bicubic as DINOv2 does."""
        pos = self.pos_embed
        head, table = (pos[:, :1], pos[:, 1:]) if self.pos_embed_cls else (pos[:, :0], pos)
        gh, gw = self.pos_grid
        if (h, w) != (gh, gw):
            dim = table.shape[-1]
            grid = table.reshape(1, gh, gw, dim).permute(0, 3, 1, 2).float()
            if self.interp_offset:
                # DINOv2's kludge (a scale factor slightly above the ratio), kept so its files give
                # the features DINOv2 itself gives at that size.
                scale = ((h + self.interp_offset) / gh, (w + self.interp_offset) / gw)
                grid = F.interpolate(grid, scale_factor=scale, mode="bicubic",
                                     antialias=self.interp_antialias, align_corners=False)
            else:
                grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interp_antialias,
                                     align_corners=False)
            if tuple(grid.shape[-2:]) != (h, w):  # pragma: no cover - F.interpolate's own rounding
                raise RuntimeError(f"position grid resized to {tuple(grid.shape[-2:])}, not {(h, w)}")
            table = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)
        return torch.cat([head, table], dim=1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.adapt_input(x)
        b = x.shape[0]
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.to(x.dtype).expand(b, -1, -1)
        pos = self.position_table(h, w).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + pos if self.pos_embed_cls else torch.cat([cls, x + pos], dim=1)
        if self.reg_token is not None:  # registers carry no position (DINOv2 and timm alike)
            x = torch.cat([x[:, :1], self.reg_token.to(x.dtype).expand(b, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        maps = StageMaps([x[:, self.num_prefix:].transpose(1, 2).reshape(b, -1, h, w)])
        maps.prefix = x[:, :self.num_prefix]
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.forward_features(x)
        fmap, prefix = maps[-1], getattr(maps, "prefix", None)
        if prefix is None:
            raise RuntimeError("vit: forward_features must return its StageMaps (with .prefix) unchanged")
        x = torch.cat([prefix, fmap.flatten(2).transpose(1, 2)], dim=1)
        x = self.norm(self.blocks[-1](x))
        cls, mean = x[:, 0], x[:, self.num_prefix:].mean(dim=1)
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return mean
        return torch.cat([cls, mean], dim=1)


def grid_side(n: int) -> int | None:
    """The side of a square grid of ``n`` cells, or None when ``n`` is not a square."""
    side = math.isqrt(n)
    return side if side * side == n and side > 0 else None


def vit_config_from_state(state: dict[str, torch.Tensor], num_heads: int | None = None,
                          path: str | Path | None = None) -> dict[str, Any]:
    """The ``vit`` encoder settings a state dict in timm's names describes: width, depth, patch size,
    registers, layer scale, FFN kind and width, position grid (with or without a class row), biases, and
    the file's ``in_channels``. ``num_heads`` None: embed_dim // 64 (``HEAD_DIM``: DINOv2's and timm's
    ViTs all use 64 channels a head). ``path`` names the file in the one-line errors."""
    def need(key: str, dims: int) -> torch.Tensor:
        value = state.get(key)
        if value is None:
            raise ModelFileError(f"missing key {key!r}: not a ViT checkpoint this loader knows (timm, "
                                 "DINOv2 or Hugging Face dinov2/vit names)", path)
        if value.dim() != dims:
            raise ModelFileError(f"key {key!r} has shape {tuple(value.shape)}, not {dims}-D", path)
        return value

    proj = need("patch_embed.proj.weight", 4)
    dim, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    if proj.shape[2] != proj.shape[3]:
        raise ModelFileError(f"key 'patch_embed.proj.weight' has non-square patches {tuple(proj.shape[2:])}",
                             path)
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    if not indices:
        raise ModelFileError("holds no transformer blocks ('blocks.N.*' keys)", path)
    absent = sorted(set(range(indices[-1] + 1)) - set(indices))
    if absent:
        raise ModelFileError(f"missing key 'blocks.{absent[0]}.norm1.weight': block {absent[0]} is absent",
                             path)
    fc1, fc2 = need("blocks.0.mlp.fc1.weight", 2), need("blocks.0.mlp.fc2.weight", 2)
    hidden = int(fc2.shape[1])
    if fc1.shape[0] not in (hidden, 2 * hidden):
        raise ModelFileError(f"key 'blocks.0.mlp.fc1.weight' has {fc1.shape[0]} outputs but fc2 takes "
                             f"{hidden} (an MLP needs equal, a packed SwiGLU twice)", path)
    pos = need("pos_embed", 3)
    n = int(pos.shape[1])
    with_cls, without = grid_side(n - 1) if n > 1 else None, grid_side(n)
    if with_cls is None and without is None:
        raise ModelFileError(f"key 'pos_embed' has {n} positions: not a square grid, with or without a "
                             "class position", path)
    reg = state.get("reg_token")
    if num_heads is None:
        if dim % HEAD_DIM:
            raise ModelFileError(f"embed_dim {dim} is not a multiple of {HEAD_DIM}, so the number of "
                                 'attention heads cannot be guessed: put {"num_heads": N} in a .json of the '
                                 "same name beside the file", path)
        num_heads = dim // HEAD_DIM
    return {
        "in_channels": channels, "embed_dim": dim, "depth": indices[-1] + 1, "num_heads": int(num_heads),
        "patch_size": patch, "mlp_hidden": hidden, "ffn": "swiglu" if fc1.shape[0] == 2 * hidden else "mlp",
        "layer_scale": "blocks.0.ls1.gamma" in state,
        "num_reg_tokens": int(reg.shape[1]) if reg is not None and reg.dim() == 3 else 0,
        "pos_grid": [with_cls or without] * 2, "pos_embed_cls": with_cls is not None,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state, "patch_bias": "patch_embed.proj.bias" in state,
    }


def describe(encoder: VisionTransformerEncoder) -> str:
    """One line on where a ``vit`` encoder's weights came from, for a run's notes."""
    w = encoder.config.get("weights") or {}
    c = encoder.config
    return (f"encoder: ViT ({w.get('format', '?')}; {c['depth']} blocks, width {c['embed_dim']}, patch "
            f"{c['patch_size']}, {c['num_heads']} heads from {w.get('num_heads_from', '?')}) from "
            f"{Path(str(w.get('file', '?'))).name} (sha256 {str(w.get('sha256', '?'))[:12]}); "
            f"{w.get('note', PRETRAINING_NOTE)}")


@register_encoder("vit")
def _vit(in_channels: int = 3, spatial_dims: int = 2, image_size: Any = None, **kwargs: Any) -> Encoder:
    del image_size  # the position table is interpolated to any grid
    return VisionTransformerEncoder(in_channels=in_channels, spatial_dims=spatial_dims, **kwargs)
