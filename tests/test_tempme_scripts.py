"""scripts/benchmark_tempme.py, scripts/visualize_tempme.py and scripts/tempme_length.py on tiny models and data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import benchmark_tempme, tempme_length, visualize_tempme

ROW_KEYS = {"type", "ratio", "frames_in", "frames_out", "encode_ms", "compressor_ms", "gflops", "peak_mem_mb"}


@pytest.mark.slow
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


def test_compressed_rows_are_timed_as_paired_ratios_to_their_reference(monkeypatch):
    """Each compressed row's encode_ms is median(own/reference per pair) x the reference median,
    so a machine slowing down between rows does not move the ratio."""
    def own_encode() -> torch.Tensor:
        return torch.ones(1, 4)   # frame mask after TempMe: 4 frames kept

    def reference_encode() -> torch.Tensor:
        return torch.ones(1, 8)

    timings = {own_encode: [10.0, 30.0, 20.0], reference_encode: [20.0, 20.0, 40.0]}  # ratios .5, 1.5, .5
    calls = []

    def fake_times_ms(fn, device, repeats, warmup=True):
        calls.append(fn)
        return [timings[fn].pop(0) for _ in range(repeats)]

    monkeypatch.setattr(benchmark_tempme, "times_ms", fake_times_ms)
    model = torch.nn.Linear(2, 2)
    model.tempme_compressor = None
    encoder = benchmark_tempme.Encoder(model, encode=own_encode, compress=lambda: None)
    row = benchmark_tempme.measure(benchmark_tempme.Setting("simple", 8, 0.5), encoder, batch=2, repeats=3,
                                   device=torch.device("cpu"), reference=(reference_encode, 50.0))
    assert row.frames_out == 4
    assert row.encode_ms == pytest.approx(0.5 * 50.0)   # median ratio x reference ms per video
    assert calls == [own_encode, reference_encode] * 3     # alternated, pair by pair


def test_train_rows_pair_each_step_with_the_reference(monkeypatch):
    """step_vs_none = median over repeats of step / reference step (the teacher runs inside the step)."""
    def step() -> torch.Tensor:
        return torch.ones(2, 3)                                  # frame mask after TempMe: 3 frames

    def reference() -> None:
        return None

    timings = {step: [12.0, 30.0, 10.0], reference: [40.0, 40.0, 40.0]}
    calls = []

    def fake_times_ms(fn, device, repeats, warmup=True):
        calls.append(fn)
        return [timings[fn].pop(0) for _ in range(repeats)]

    monkeypatch.setattr(benchmark_tempme, "times_ms", fake_times_ms)
    row = benchmark_tempme.measure_train(benchmark_tempme.Setting("basic", 48, 1 / 6, 8),
                                         benchmark_tempme.Trainer(step, taught=1), batch=2, repeats=3,
                                         device=torch.device("cpu"), reference=(reference, 100.0))
    # 12 / 40 = 0.3, 30 / 40 = 0.75, 10 / 40 = 0.25 -> median 0.3
    assert row.step_vs_none == pytest.approx(0.3) and row.step_ms == pytest.approx(30.0)
    assert row.frames_out == 3 and row.taught == 1
    assert calls == [step, reference] * 3                                  # alternated, pair by pair


@pytest.mark.slow
def test_train_benchmark_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "train.json"
    benchmark_tempme.main(["--train", "--arch", "tiny", "--device", "cpu", "--repeats", "1",
                           "--max_input_frames", "12", "--json", str(out)])
    rows = {r["type"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"none", "simple"} and rows["simple"]["frames_out"] == 6
    assert rows["simple"]["taught"] == 1 and rows["none"]["taught"] == 0   # batch 4: a quarter is one video
    assert rows["none"]["step_vs_none"] == 1.0 and rows["simple"]["step_vs_none"] > 0


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
    size = 32 + 2 * 3  # the demo's 32 px frame + border on both sides
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


def test_adaptive_keeps_more_frames_of_longer_videos_read_at_a_frame_rate():
    """Real mp4 files read at 1 frame per second: 4 s, 16 s and 64 s of each content."""
    rows = tempme_length.main(["--durations", "4", "16", "64", "--framerates", "1"])
    assert [row["decoded"] for row in rows] == [4, 16, 48]
    for content in tempme_length.CONTENTS:
        kept = [row[content] for row in rows]
        assert kept == sorted(kept), (content, kept)
    assert [row["still"] for row in rows] == [4, 8, 8]
    assert rows[-1]["pan"] == 16 > rows[-1]["cuts"] > rows[-1]["still"]
