"""FLOP counting of scripts/benchmark_model.count_flops where torch's counter needs help; the token-merging table."""
from __future__ import annotations

import math

import pytest
import torch

from scripts.benchmark_model import TOKEN_MERGE_ROWS, count_flops, token_merge_table

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


@pytest.mark.slow
def test_token_merge_table_rows():
    rows = {r["row"]: r for r in token_merge_table("tiny", 4, torch.device("cpu"), repeats=1)}
    assert list(rows) == list(TOKEN_MERGE_ROWS)
    for merged, base in (("CLIP + frame merge", "CLIP (meanP)"), ("STOP + frame merge", "STOP"),
                         ("STOP + clip merge", "STOP"), ("STOP + selection + frame merge", "STOP + frame selection (simple 0.5)")):
        assert rows[merged]["gflops"] < rows[base]["gflops"], merged
    assert rows["STOP + frame merge, r=4"]["gflops"] < rows["STOP + frame merge"]["gflops"]
    # tiny: one grouping block whose temporal embedding has a row per frame (4) of width 128
    assert rows["STOP + clip merge"]["trainable_parameters"] - rows["STOP"]["trainable_parameters"] == 4 * 128
    assert rows["published TempMe schedule (CLIP + clip merge)"]["trainable_parameters"] == 4 * 128
    assert rows["STOP"]["generator_gflops"] > 0 and rows["CLIP (meanP)"]["generator_gflops"] == 0
    assert all(r["time_ratio"] > 0 for r in rows.values())
