"""Reference ViTs written the way timm and DINOv2 write theirs, and their checkpoints in each format
(helpers for test_vit*.py; no tests here).

The references are independent of ``fewlabel.models.vit``: their own attention, their own position
handling (timm's ``_pos_embed``, DINOv2's ``interpolate_pos_encoding`` with its 0.1 offset), their own
module names, so a checkpoint saved from one is what timm or DINOv2 would have saved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int, manual: bool) -> None:
        super().__init__()
        self.heads, self.manual = heads, manual
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.manual:  # DINOv2's Attention without xformers
            q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
            x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:  # timm's fused path
            x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class RefLayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RefMlp(nn.Module):
    """timm's Mlp (fc1/fc2, GELU), timm's SwiGLUPacked (fc1/fc2) or DINOv2's SwiGLUFFNFused (w12/w3)."""

    def __init__(self, dim: int, hidden: int, swiglu: bool, dinov2: bool) -> None:
        super().__init__()
        self.swiglu, self.dinov2 = swiglu, dinov2
        first, second = nn.Linear(dim, hidden * (2 if swiglu else 1)), nn.Linear(hidden, dim)
        if swiglu and dinov2:
            self.w12, self.w3 = first, second
        else:
            self.fc1, self.fc2 = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            x1, x2 = (self.w12 if self.dinov2 else self.fc1)(x).chunk(2, dim=-1)
            return (self.w3 if self.dinov2 else self.fc2)(F.silu(x1) * x2)
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool, ls: bool, eps: float,
                 dinov2: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = RefAttention(dim, heads, manual=dinov2)
        self.ls1 = RefLayerScale(dim) if ls else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = RefMlp(dim, hidden, swiglu, dinov2)
        self.ls2 = RefLayerScale(dim) if ls else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class RefViT(nn.Module):
    """``style`` "timm" (``reg_token``, ``head``, ``no_embed_class`` with registers) or "dinov2"
    (``register_tokens``, ``mask_token``, SwiGLU as ``w12``/``w3``, positions resized DINOv2's way)."""

    def __init__(self, style: str = "timm", dim: int = 32, depth: int = 2, heads: int = 2, patch: int = 4,
                 img: int = 16, reg: int = 0, ls: bool = False, swiglu: bool = False, eps: float = 1e-6,
                 hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.style, self.patch, self.reg = style, patch, reg
        dinov2 = style == "dinov2"
        # timm's register models keep no class position (no_embed_class); DINOv2 keeps one.
        self.no_embed_class = reg > 0 and not dinov2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if reg:
            name = "register_tokens" if dinov2 else "reg_token"
            setattr(self, name, nn.Parameter(torch.zeros(1, reg, dim)))
        if dinov2:
            self.mask_token = nn.Parameter(torch.zeros(1, dim))
        grid = (img // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, grid + (0 if self.no_embed_class else 1), dim))
        self.blocks = nn.ModuleList(RefBlock(dim, heads, hidden, swiglu, ls, eps, dinov2)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        if not dinov2:
            self.head = nn.Linear(dim, 5)
        with torch.no_grad():  # every tensor random, so a mis-mapped one shows in the output
            for name, p in self.named_parameters():
                scale = name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma"))
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if scale else 0.0))

    def _dinov2_pos(self, h: int, w: int, offset: float, antialias: bool) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if n == h * w and h == w:
            return pos
        m = int(math.sqrt(n))
        kwargs = ({"scale_factor": ((h + offset) / m, (w + offset) / m)} if offset else {"size": (h, w)})
        patch_pos = F.interpolate(pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2), mode="bicubic",
                                  antialias=antialias, **kwargs)
        return torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm tokens (B, 1 + registers + patches, D)."""
        b = x.shape[0]
        t = self.patch_embed.proj(x)
        h, w = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(b, -1, -1)
        if self.style == "dinov2":
            offset, antialias = (0.0, True) if self.reg else (0.1, False)  # DINOv2's hub settings
            t = torch.cat([cls, t], dim=1) + self._dinov2_pos(h, w, offset, antialias)
            if self.reg:
                t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        elif self.no_embed_class:
            t = torch.cat([cls, self.reg_token.expand(b, -1, -1), t + self.pos_embed], dim=1)
        else:
            t = torch.cat([cls, t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]


def write_timm(ref: RefViT, path: Path, heads: int | None = 2) -> Path:
    """The state dict as timm saves it (safetensors or torch.save by suffix), heads in a JSON beside."""
    state = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    if heads is not None:
        path.with_suffix(".json").write_text(json.dumps({"num_heads": heads}))
    return path


def write_dinobloom(ref: RefViT, path: Path, chunks: int = 0) -> Path:
    """A DINOv2 training checkpoint as DinoBloom ships it: ``teacher`` -> ``backbone.*`` plus DINO and
    iBOT heads (and, with ``chunks``, DINOv2's chunked block names ``blocks.c.i``)."""
    teacher = {}
    per = max(1, len(ref.blocks) // chunks) if chunks else 0
    for k, v in ref.state_dict().items():
        if chunks and k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per}.{k[len('blocks.'):]}"
        teacher[f"backbone.{k}"] = v.clone()
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, ref.norm.weight.shape[0])
    teacher["ibot_head.mlp.0.weight"] = torch.randn(8, ref.norm.weight.shape[0])
    torch.save({"teacher": teacher}, path)
    path.with_suffix(".json").write_text(json.dumps({"num_heads": ref.blocks[0].attn.heads}))
    return path


def write_hf(ref: RefViT, folder: Path, model_type: str = "dinov2") -> Path:
    """A Hugging Face folder (config.json + model.safetensors) written from a timm-style reference, with
    transformers' saved names: separate query/key/value, ``lambda1``, ``layernorm``, ``mask_token``."""
    hf: dict[str, torch.Tensor] = {}
    vit = model_type == "vit"
    names = {"norm1": "layernorm_before" if vit else "norm1", "norm2": "layernorm_after" if vit else "norm2",
             "attn.proj": "attention.output.dense", "ls1.gamma": "layer_scale1.lambda1",
             "ls2.gamma": "layer_scale2.lambda1", "mlp.fc1": "intermediate.dense" if vit else "mlp.fc1",
             "mlp.fc2": "output.dense" if vit else "mlp.fc2"}
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "reg_token": "embeddings.register_tokens", "patch_embed.proj.weight":
           "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.bias":
           "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
           "norm.bias": "layernorm.bias"}
    for k, v in ref.state_dict().items():
        v = v.detach().clone().contiguous()
        if k in top:
            hf[top[k]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0), strict=True):
                    hf[f"encoder.layer.{i}.attention.attention.{name}.{rest.split('.')[-1]}"] = part.clone()
                continue
            module = next(m for m in names if rest.startswith(m))
            hf[f"encoder.layer.{i}.{names[module]}{rest[len(module):]}"] = v
    dim = ref.norm.weight.shape[0]
    if vit:
        hf["pooler.dense.weight"], hf["pooler.dense.bias"] = torch.randn(dim, dim), torch.zeros(dim)
    else:
        hf["embeddings.mask_token"] = torch.zeros(1, dim)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(folder / "model.safetensors"))
    config = {"model_type": model_type, "hidden_size": dim, "num_attention_heads": ref.blocks[0].attn.heads,
              "num_hidden_layers": len(ref.blocks), "patch_size": ref.patch, "hidden_act": "gelu",
              "layer_norm_eps": ref.norm.eps}
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "model.safetensors"
