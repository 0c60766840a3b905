"""torchvision's ImageNet MobileNetV2 weights, found on disk (or downloaded on request) and loaded
into ``mobilenet_v2`` encoders, with the first convolution adapted to any number of channels.

Search order of ``find_imagenet_weights``:
  1. ``path`` (a file, or a folder holding ``mobilenet_v2-b0353104.pth``);
  2. ``$FEWLABEL_IMAGENET_WEIGHTS`` (file or folder, same rule);
  3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/mobilenet_v2-b0353104.pth``
     (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``), where torchvision itself keeps it;
  4. only with ``download=True``: torchvision's URL, into that cache.
A path that is given (1 or 2) but missing is an error, not a reason to look elsewhere: the user
asked for that file.

Integrity: files follow torchvision's naming ``name-<sha256 prefix>.pth``; the prefix is always
checked, so a truncated or swapped file is caught before it silently trains a model. The file is
read with ``torch.load(weights_only=True)``: no code in it runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fewlabel.errors import FewlabelError, ModelFileError
from fewlabel.fileio import dangling_link_reason, file_sha256, special_kind
from fewlabel.models.encoder import Encoder

FILENAME = "mobilenet_v2-b0353104.pth"
URL = f"https://download.pytorch.org/models/{FILENAME}"
ENV_VAR = "FEWLABEL_IMAGENET_WEIGHTS"
# torch.hub's convention: the hex digits between the last '-' and the extension.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_IN_CONV = "features.0.0.weight"


def verify_hash_prefix(path: str | Path) -> str:
    """Check that the file's sha256 starts with the hex digits in its name; return the full sha256."""
    path = Path(path)
    sha = file_sha256(path)
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        # Without a hash in the name there is nothing to check against; refuse rather than trust.
        raise ModelFileError(
            "name carries no sha256 prefix (torchvision's convention is 'name-<first 8 hex of sha256>.pth'; "
            f"this file's would be '-{sha[:8]}')",
            path,
        )
    if not sha.startswith(match.group(1)):
        raise ModelFileError(
            f"sha256 starts with {sha[:8]}, not {match.group(1)[:8]} as its name says: "
            "the file is truncated, corrupt or another file; delete it and fetch it again",
            path,
        )
    return sha


def _resolve(candidate: Path, origin: str) -> Path:
    """A file, or the torchvision file inside a folder; a missing path is an error naming its origin."""
    candidate = candidate.expanduser()
    if candidate.is_dir():
        inner = candidate / FILENAME
        if not inner.is_file():
            raise ModelFileError(f"folder ({origin}) holds no {FILENAME}", candidate)
        return inner
    if not candidate.is_file():
        missing = f"ImageNet weight file ({origin}) does not exist"
        raise ModelFileError(dangling_link_reason(candidate) or missing, candidate)
    return candidate


def hub_path() -> Path:
    """Where torchvision caches the file: ``torch.hub.get_dir()/checkpoints/<FILENAME>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def find_imagenet_weights(path: str | Path | None = None, download: bool = False) -> Path:
    """Path of a verified torchvision MobileNetV2 ImageNet file (search order in the module doc)."""
    return _find(path, download)[0]


def _find(path: str | Path | None, download: bool) -> tuple[Path, str]:
    """``(file, sha256)``: the file is hashed once, for the check and for the load record."""
    if path is not None:
        found = _resolve(Path(path), "given path")
    elif os.environ.get(ENV_VAR):
        found = _resolve(Path(os.environ[ENV_VAR]), f"${ENV_VAR}")
    elif hub_path().is_file():
        found = hub_path()
    elif download:
        found = hub_path()
        found.parent.mkdir(parents=True, exist_ok=True)
        match = _HASH_IN_NAME.search(FILENAME)
        assert match is not None
        try:
            # Writes to a temp file and moves it into place only when the hash prefix matches.
            torch.hub.download_url_to_file(URL, str(found), hash_prefix=match.group(1), progress=True)
        except Exception as exc:  # offline, proxy, HTTP error, hash mismatch: one line for the user
            raise ModelFileError(
                f"ImageNet weights not on disk and could not download {URL} ({exc}); put {FILENAME} "
                f"in {found.parent} or set ${ENV_VAR} to its path", found) from exc
    else:
        raise ModelFileError(
            f"ImageNet weights not found: pass a path, set ${ENV_VAR}, put {FILENAME} in "
            f"{hub_path().parent}, or allow download",
            hub_path(),
        )
    return found, verify_hash_prefix(found)


def read_state_dict(path: str | Path, wrappers: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a plain state dict, with one-line errors. A checkpoint that
    wraps it under one of ``wrappers`` (the first present wins) is unwrapped."""
    path = Path(path)
    kind = special_kind(path)
    if kind is not None:  # torch.load would wait on a FIFO forever
        raise ModelFileError(f"is {kind}, not a weights file (never opened)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"cannot be read as a PyTorch weight file: {exc}", path) from exc
    wrapper = next((w for w in wrappers if isinstance(state, dict) and isinstance(state.get(w), dict)), None)
    if wrapper is not None:
        state = state[wrapper]  # a common wrapping of checkpoints
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError("does not hold a state dict (names -> tensors)", path)
    return dict(state)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt an RGB first-conv weight (out, 3, ...) to ``in_channels`` (timm's ``adapt_input_conv``).

    1 channel: sum over RGB (a grey image z-scored like each RGB channel gives the same response as a
    grey RGB image). N != 3: repeat the RGB filters cyclically and scale by 3/N, which keeps the
    activation scale of the pretrained net for inputs of comparable magnitude.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"expected a 3-channel conv weight, got shape {tuple(weight.shape)}")
    if in_channels == 3:
        return weight
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, not {in_channels}")
    dtype = weight.dtype
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_channels // 3)
        w = w.repeat(1, repeat, *([1] * (w.dim() - 2)))[:, :in_channels] * (3.0 / in_channels)
    return w.to(dtype)


def load_imagenet_weights(
    encoder: Encoder, path: str | Path | None = None, download: bool = False
) -> dict[str, Any]:
    """Load torchvision's ImageNet MobileNetV2 weights into ``encoder`` (a ``mobilenet_v2``) in place.

    All ``features.*`` keys must match (strict); ``classifier.*`` (the 1000-class head) is dropped;
    the first conv is adapted to ``encoder.in_channels``. Returns a record of what was loaded, for the
    model's config: ``source``, ``sha256``, ``url``, ``in_channels``, ``first_conv``, ``dropped``,
    ``n_tensors``.
    """
    name = encoder.config.get("name")
    if name != "mobilenet_v2":
        raise FewlabelError(f"ImageNet weights exist only for encoder 'mobilenet_v2', not {name!r}")
    file, sha = _find(path, download)
    state = read_state_dict(file)
    dropped = sorted(k for k in state if k.startswith("classifier."))
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}

    in_channels = encoder.in_channels
    rule = "as is (RGB)"
    first = state.get(_IN_CONV)
    if first is not None and first.dim() == 4 and first.shape[1] == 3 and in_channels != 3:
        state[_IN_CONV] = adapt_input_conv(state[_IN_CONV], in_channels)
        rule = "sum over RGB" if in_channels == 1 else f"RGB repeated cyclically x 3/{in_channels}"

    target = encoder.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if encoder.config.get("width_mult", 1.0) != 1.0:
            parts.append(f"the file is for width_mult 1.0, the encoder has {encoder.config['width_mult']}")
        if missing:
            parts.append(
                f"{len(missing)} missing keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}"
                f"{', ...' if len(unexpected) > 3 else ''})"
            )
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (first {k}: file {tuple(state[k].shape)} "
                f"vs encoder {tuple(target[k].shape)})"
            )
        raise ModelFileError("does not fit the mobilenet_v2 encoder: " + "; ".join(parts), file)
    encoder.load_state_dict(state, strict=True)
    return {
        "source": str(file), "sha256": sha, "url": URL, "in_channels": in_channels,
        "first_conv": rule, "dropped": dropped, "n_tensors": len(state),
    }
