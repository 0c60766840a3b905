"""How fine-tuning uses the hardware it finds: numeric precision, memory layout, and how an
ensemble's members are made. Each ``auto`` is made concrete once (``resolved``), before a run's
configuration is hashed, so the run says what its numbers came from and never mixes two kinds.

* ``precision``: ``auto`` is bf16 autocast on a GPU with bf16 (else fp16 with loss scaling) and on a
  CPU that computes bf16 natively (AVX512-BF16 or AMX: about twice the speed of fp32 for a
  MobileNetV2 step), else fp32. A CPU without native bf16 would emulate it slower than fp32.
* ``ensemble_mode``: ``auto`` trains an ensemble's members independently, each from its own seed (on a
  GPU side by side in one stacked module, on a CPU one after another). ``snapshot`` takes them from
  one run instead (its schedule, then a short restarted cycle per further member:
  ``recipe.SnapshotTask``): cheaper, but on the few labels fewlabel is for its members differ too
  little, and it lost accuracy on a data set it was not chosen on (benchmarks/cpu_speed.py).
* 2D batches and convolution weights go channels-last on a CPU: oneDNN's convolutions are faster in
  that layout, fp32 included. Only the rounding changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch

from fewlabel.errors import FewlabelError
from fewlabel.settings import select_device

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENSEMBLE_MODES = ("auto", "independent", "snapshot")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NATIVE_BF16_ENV = "FEWLABEL_NATIVE_BF16"


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles). ``$FEWLABEL_NATIVE_BF16``
    = 0 or 1 overrides the probe (the test suite pins 0: the same numbers on every machine)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except (RuntimeError, AttributeError):  # a build without the probe: assume no
            continue
    return False


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)


def resolve_precision(precision: str, device: str | torch.device, amp: bool = True) -> str:
    """``precision`` made concrete for ``device``: ``fp32``, ``bf16`` or ``fp16``. ``amp=False`` (the
    older switch) makes ``auto`` mean fp32."""
    if precision not in PRECISIONS:
        raise FewlabelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    dev = _device(device)
    if precision == "auto":
        if not amp:
            return "fp32"
        if dev.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if dev.type == "cpu" and native_bf16_cpu() else "fp32"
    if precision == "fp16" and dev.type != "cuda":
        raise FewlabelError("precision fp16 needs a CUDA device (a CPU computes fp16 slower than fp32); "
                            "use bf16 or fp32")
    return precision


def usable_precision(precision: str | None, device: torch.device) -> str:
    """The precision a model trained at ``precision`` is scored at on ``device``: bf16 on a CPU that
    computes it natively (scoring 8 views of every test image is most of a small cell's time there),
    else fp32 (a GPU scores fp32 as it always has, stacked or not; bf16 weights are fp32 weights)."""
    return "bf16" if precision == "bf16" and device.type == "cpu" and native_bf16_cpu() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (nothing for fp32)."""
    dtype = _DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_ensemble_mode(mode: str, device: str | torch.device) -> str:
    """``mode`` made concrete: ``independent`` or ``snapshot`` (``auto``: independent on every device;
    ``device`` is kept so a rule by device stays a one-line change)."""
    if mode not in ENSEMBLE_MODES:
        raise FewlabelError(f"ensemble_mode must be one of {', '.join(ENSEMBLE_MODES)}, not {mode!r}")
    del device
    return "independent" if mode == "auto" else mode


def channels_last_on(device: torch.device) -> bool:
    """Whether 2D fine-tuning runs channels-last here (a CPU: oneDNN's faster layout)."""
    return device.type == "cpu"


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """A 2D batch (B, C, H, W) in channels-last memory; anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def module_fast_layout(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its 4D weights channels-last (in place; other tensors are untouched)."""
    return module.to(memory_format=torch.channels_last)


def resolved(config: Any) -> Any:
    """A copy of ``config`` (a ``FinetuneConfig``) whose device, precision and ensemble mode are concrete."""
    device = select_device(config.device)
    layout = channels_last_on(device) if config.channels_last is None else bool(config.channels_last)
    return dataclasses.replace(
        config, device=str(device), precision=resolve_precision(config.precision, device, config.amp),
        ensemble_mode=resolve_ensemble_mode(config.ensemble_mode, device), channels_last=layout)


def compute_line(config: Any, members: int = 1) -> str:
    """One line (``config``: a ``FinetuneConfig`` or its dict) that says how fine-tuning runs here:
    ``compute: cpu, bf16 (this CPU computes bf16 natively), 3 members trained one by one``."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    device, precision = str(get("device", "cpu")), str(get("precision", "fp32"))
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip() in ("0", "1")
    native = (f"${NATIVE_BF16_ENV} says {'native' if native_bf16_cpu() else 'no native'} bf16" if forced
              else "this CPU computes bf16 natively" if native_bf16_cpu() else "this CPU has no native bf16")
    why = f" ({native})" if device == "cpu" and (precision == "bf16" or not native_bf16_cpu()) else ""
    line = f"compute: {device}, {precision}{why}"
    if members > 1:
        mode = str(get("ensemble_mode", "independent"))
        line += (f", {members} members as snapshots of one run (its schedule, then short restarted cycles)"
                 if mode == "snapshot" else f", {members} members trained one by one")
    return line
