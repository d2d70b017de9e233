"""Mixed precision: autocast and gradient scaler for `--precision` (AMP on CUDA only)."""
from __future__ import annotations

import contextlib

import torch

_AMP_DTYPES = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: CPU always runs fp32 (CPU autocast is slow and unneeded)."""
    return precision if device.type == "cuda" else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for forward passes; a no-op for fp32."""
    if precision not in _AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[precision])


def build_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaler, active only for fp16 (bf16 and fp32 have fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "amp_fp16")
