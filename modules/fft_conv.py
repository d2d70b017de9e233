"""The "same"-padded 3-D convolutions of STOP's prompt modules, in their cheapest exact form.

`same_conv3d(x, conv)` equals `conv(x)` for a stride-1 `nn.Conv3d` with odd kernel. Large
kernels (the reference's 11x11 and 15x25) run as `fft_conv3d`: the two spatial axes use the
convolution theorem, the few temporal taps are explicit (the reference code's direct 3-D
convolutions were ~170 of its ~317 visual GFLOPs). Kernels of at most 3x3 run directly, which
is faster there (CPU, 1 thread, 32 videos x 4 frames, 9 -> 9 channels, forward + backward:
3x3 at 64 px 316 ms direct vs 585 ms FFT; 5x5 at 32 px 173 vs 90 ms). `cached_when_frozen`
keeps values that depend only on parameters (kernel spectra, generated prompts) while no
gradient is recorded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Largest spatial kernel area (kh * kw) that runs as a direct convolution (see the module docstring).
DIRECT_MAX_KERNEL_AREA = 9


def fast_fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def cached_when_frozen(owner: nn.Module, name: str, params: list[torch.Tensor], extra: tuple, compute):
    """`compute()` of values that depend only on `params`, reused on `owner` while no gradient
    is recorded for them (evaluation) and they are unchanged.

    The key holds each parameter's storage and in-place version counter (bumped by optimiser
    steps and `load_state_dict`) plus `extra` (sizes, autocast state), so a stale value is
    never returned. With gradients on, the value is computed afresh (and not stored).
    """
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return compute()
    key = (tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params), extra)
    cache = owner.__dict__.setdefault("_frozen_cache", {})
    if name not in cache or cache[name][0] != key:
        cache[name] = (key, compute())
    return cache[name][1]


def _kernel_spectrum(weight: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """2-D DFT (size fh x fw, one-sided along w) of the spatially flipped kernels.

    weight `[C_out, C_in, kt, kh, kw]` -> complex `[fh * (fw//2+1), C_out, kt * C_in]`.
    Computed as two small real matmuls over the kh x kw support (an FFT of the zero-padded
    kernel would transform mostly zeros), already in the layout the channel mixing needs.
    """
    c_out, c_in, kt, kh, kw = weight.shape
    fr = fw // 2 + 1
    k = weight.flip(-1, -2).permute(3, 4, 0, 2, 1).reshape(kh, kw, -1)   # [kh, kw, M], M = (C_out, kt, C_in)
    ang_w = (2 * math.pi / fw) * torch.outer(torch.arange(kw, device=weight.device, dtype=weight.dtype),
                                             torch.arange(fr, device=weight.device, dtype=weight.dtype))
    # Along w: A = sum_b k[:, b] e^{-i ang}, as [kh, 2 (re, im), fr, M].
    basis_w = torch.stack([ang_w.cos(), -ang_w.sin()])                        # [2, kw, fr]
    a = torch.einsum("cbw,abm->acwm", basis_w, k)
    # Along h: (cos - i sin)(A_re + i A_im) -> [[cos, sin], [-sin, cos]] @ [A_re; A_im].
    ang_h = (2 * math.pi / fh) * torch.outer(torch.arange(fh, device=weight.device, dtype=weight.dtype),
                                             torch.arange(kh, device=weight.device, dtype=weight.dtype))
    cos, sin = ang_h.cos(), ang_h.sin()
    basis_h = torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)], 0)   # [2 fh, 2 kh]
    spec = basis_h @ a.transpose(0, 1).reshape(2 * kh, fr * k.shape[-1])        # [2 fh, fr * M]
    spec = spec.view(2, fh * fr, c_out, kt * c_in)
    return torch.complex(spec[0], spec[1])


def _time_padded_spectrum(x: torch.Tensor, pad: int, fh: int, fw: int) -> torch.Tensor:
    """x `[N, C, T, H, W]` zero-padded by `pad` frames at both ends -> 2-D spectra `[F, C, N, T + 2 pad]`
    (F = fh * (fw // 2 + 1) frequencies first, the layout of the per-frequency channel mixing)."""
    n, c, t = x.shape[:3]
    spec = torch.fft.rfft2(F.pad(x, (0, 0, 0, 0, pad, pad)), s=(fh, fw))
    return spec.permute(3, 4, 1, 0, 2).reshape(-1, c, n, t + 2 * pad)


def _taps(spec: torch.Tensor, kt: int, t: int) -> torch.Tensor:
    """Time-padded spectra `[F, C, N, T + kt - 1]` -> the kt shifted windows `[F, kt * C, N * T]`."""
    f, c, n = spec.shape[:3]
    return torch.stack([spec[..., a:a + t] for a in range(kt)], dim=1).view(f, kt * c, n * t)


def _same_conv(x: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int, int], fh: int, fw: int) -> torch.Tensor:
    """The "same" convolution of float32 `x [N, C_in, T, H, W]` with a kernel given as its spectrum
    `kernel [F, C_out, kt * C_in]` (`_kernel_spectrum`) of spatial `size = (kt, kh, kw)`; no bias."""
    kt, kh, kw = size
    n, _, t, h, w = x.shape
    fr = fw // 2 + 1
    out = torch.bmm(kernel, _taps(_time_padded_spectrum(x, kt // 2, fh, fw), kt, t))   # [F, C_out, N*T]
    out = torch.fft.irfft2(out.view(fh, fr, -1, n, t).permute(3, 2, 4, 0, 1), s=(fh, fw))
    return out[..., kh // 2:kh // 2 + h, kw // 2:kw // 2 + w]


class _FFTConv3d(torch.autograd.Function):
    """`F.conv3d(x, weight, bias, padding=same)` by FFT with a hand-written backward.

    Autograd through the FFT path would record every pad, slice, stack and permute and
    replay them as zero-filled copies; here the input gradient is the same FFT convolution
    with the adjoint kernel (transposed channels, flipped taps: exact for odd kernels) and the
    weight gradient the cross-correlation of the output gradient with the input, read at the
    kernel's lags from one inverse FFT.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: torch.Tensor,
                fh: int, fw: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.fh, ctx.fw, ctx.has_bias = fh, fw, bias is not None
        out = _same_conv(x, kernel, tuple(weight.shape[2:]), fh, fw)
        return out + bias.view(1, -1, 1, 1, 1) if bias is not None else out.contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        fh, fw = ctx.fh, ctx.fw
        c_out, c_in, kt, kh, kw = weight.shape
        n, _, t = x.shape[:3]
        grad_out = grad_out.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            adjoint = weight.transpose(0, 1).flip(2, 3, 4)
            grad_x = _same_conv(grad_out, _kernel_spectrum(adjoint, fh, fw), (kt, kh, kw), fh, fw)
        if ctx.needs_input_grad[1]:
            g = _time_padded_spectrum(grad_out, 0, fh, fw).reshape(-1, c_out, n * t)      # [F, C_out, N*T]
            x_taps = _taps(_time_padded_spectrum(x, kt // 2, fh, fw), kt, t)              # [F, kt*C_in, N*T]
            cross = torch.bmm(g.conj(), x_taps.transpose(1, 2))                          # [F, C_out, kt*C_in]
            lags = torch.fft.irfft2(cross.view(fh, fw // 2 + 1, -1).permute(2, 0, 1), s=(fh, fw))
            rows = (torch.arange(kh, device=x.device) - kh // 2) % fh
            cols = (torch.arange(kw, device=x.device) - kw // 2) % fw
            grad_weight = lags[:, rows][:, :, cols].view(c_out, kt, c_in, kh, kw).transpose(1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3, 4))
        return grad_x, grad_weight, grad_bias, None, None, None


def fft_conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """`conv(x)` for a stride-1, "same"-padded `nn.Conv3d` with odd kernel, computed by FFT.

    x: `[N, C_in, T, H, W]` -> `[N, C_out, T, H, W]`, equal to `F.conv3d` up to float rounding,
    gradients included. The two spatial axes use the convolution theorem (zero-padded to a
    fast length >= H + k_h - 1, so nothing wraps around); the few temporal taps are explicit.
    The channel (and tap) mixing is one complex batched matmul over the frequencies: one small
    GEMM per frequency, so with few frames its per-GEMM overhead, not its arithmetic, sets the
    cost, and a single complex product has half the GEMMs of a real/imaginary pair. Runs in
    float32 (outside autocast): spectra need the range.
    """
    kt, kh, kw = conv.kernel_size
    if conv.stride != (1, 1, 1) or conv.padding != (kt // 2, kh // 2, kw // 2) or not (kt % 2 and kh % 2 and kw % 2):
        raise ValueError(f"fft_conv3d needs a stride-1 'same' convolution with odd kernel, got {conv}")
    h, w = x.shape[-2:]
    fh, fw = fast_fft_size(h + kh - 1), fast_fft_size(w + kw - 1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        weight = conv.weight.float()
        # The spectrum is an input of the function without gradient: the weight gradient is
        # computed directly; in evaluation the spectrum is reused while the weight is unchanged.
        kernel = cached_when_frozen(conv, "spectrum", [conv.weight], (fh, fw),
                                    lambda: _kernel_spectrum(weight.detach(), fh, fw))
        bias = conv.bias.float() if conv.bias is not None else None
        return _FFTConv3d.apply(x.float(), weight, bias, kernel, fh, fw)


def same_conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """`conv(x)` for a stride-1 "same" `nn.Conv3d` with odd kernel, `[N, C_in, T, H, W]` ->
    `[N, C_out, T, H, W]` float32: directly for kernels up to 3x3, else `fft_conv3d`."""
    kh, kw = conv.kernel_size[1:]
    if kh * kw > DIRECT_MAX_KERNEL_AREA:
        return fft_conv3d(x, conv)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return conv(x.float())
