"""FLOP counting of scripts/benchmark_model.count_flops where torch's counter needs help."""
from __future__ import annotations

import math

import torch

from scripts.benchmark_model import count_flops

MODEL = torch.nn.Linear(1, 1)   # count_flops freezes a model's parameters while counting


def test_batched_matmul_flops_real_and_complex():
    for dtype, per_multiply_add in ((torch.float32, 2), (torch.complex64, 8)):
        a, b = torch.randn(5, 3, 4, dtype=dtype), torch.randn(5, 4, 6, dtype=dtype)
        total, _ = count_flops(lambda: torch.bmm(a, b), MODEL)
        assert total == per_multiply_add * 5 * 3 * 4 * 6


def test_real_fft_flops():
    x = torch.randn(2, 16, 32)
    total, _ = count_flops(lambda: torch.fft.rfft2(x), MODEL)
    points = 16 * 32
    assert total == int(2 * 2.5 * points * math.log2(points))
