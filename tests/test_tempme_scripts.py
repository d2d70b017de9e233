"""scripts/benchmark_tempme.py and scripts/visualize_tempme.py on tiny models and data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scripts import benchmark_tempme, visualize_tempme

ROW_KEYS = {"type", "ratio", "frames_in", "frames_out", "encode_ms", "compressor_ms", "gflops", "peak_mem_mb"}


def test_benchmark_rows_schema_and_savings(tmp_path):
    out = tmp_path / "rows.json"
    benchmark_tempme.main(["--arch", "tiny", "--device", "cpu", "--repeats", "1", "--types", "none", "simple",
                           "--max_input_frames", "12", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {r["type"] for r in rows} == {"none", "simple"}
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["encode_ms"] > 0 and row["gflops"] > 0 and row["peak_mem_mb"] is None
    none = next(r for r in rows if r["type"] == "none")
    compressed = [r for r in rows if r["type"] == "simple" and r["ratio"] < 1]
    assert len(compressed) == 3
    for row in compressed:
        assert row["frames_out"] == max(1, round(12 * row["ratio"])) < none["frames_out"]
        assert row["gflops"] < none["gflops"]
        assert row["compressor_ms"] > 0


@pytest.fixture(scope="module")
def synthetic_flags(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return ["--demo", "--synthetic_dir", str(root), "--synthetic_num_videos", "8",
            "--synthetic_num_test_videos", "4", "--synthetic_num_frames", "16", "--use_tempme", "True",
            "--tempme_type", "basic", "--tempme_input_frames", "12", "--tempme_output_frames", "4",
            "--tempme_hidden_dim", "32"]


def test_visualizer_writes_sheet_with_grid_size(tmp_path, synthetic_flags):
    written = visualize_tempme.main(["--out_dir", str(tmp_path), "--num_videos", "2", "--columns", "5", "--"]
                                    + synthetic_flags)
    assert len(written) == 2
    image = Image.open(written[0])
    image.verify()
    image = Image.open(written[0]).convert("RGB")
    size = 64 + 2 * 3  # frame + border on both sides
    assert image.width == 5 * size                       # 12 frames in 5 columns
    caption_rows = image.height - 3 * (size + visualize_tempme.LABEL_HEIGHT)
    assert 0 < caption_rows < 80                          # 3 grid rows under the caption
    pixels = np.asarray(image).reshape(-1, 3)
    assert (pixels == visualize_tempme.SELECTED).all(axis=1).any()                           # selected frames are outlined


def test_visualizer_requires_tempme(tmp_path, synthetic_flags):
    flags = [f for f in synthetic_flags]
    flags[flags.index("--use_tempme") + 1] = "False"
    with pytest.raises(SystemExit):
        visualize_tempme.main(["--out_dir", str(tmp_path), "--"] + flags)
