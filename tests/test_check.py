"""The dataset checker: counts, names missing and corrupt videos, exit codes."""
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dataloaders.check import main
from dataloaders.synthetic import write_mp4


@pytest.fixture
def folder(tmp_path):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    videos.mkdir()
    (data / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr0,video0,a\nret1,msr1,video1,b\nret2,msr2,video2,c\n")
    (data / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n")
    (data / "MSRVTT_data.json").write_text(json.dumps({"sentences": [
        {"sen_id": 0, "video_id": "video0", "caption": "a"}]}))
    write_mp4(str(videos / "video0.mp4"), np.full((3, 16, 16, 3), 90, dtype=np.uint8))  # 3 < 4 frames
    shutil.copy(videos / "video0.mp4", videos / "video1.mp4")
    shutil.copy(videos / "video0.mp4", videos / "video2.mp4")
    return data, videos


def argv(data, videos, *extra):
    return ["--dataset", "msrvtt", "--data_path", str(data), "--features_path", str(videos),
            "--max_frames", "4", "--image_size", "16", "--no_progress", *extra]


def test_clean_folder_exits_0(folder, capsys):
    assert main(argv(*folder, "--split", "test", "train", "--num_workers", "0")) == 0
    out = capsys.readouterr().out
    assert "[msrvtt test] videos 3, captions 3, ok 3, missing 0, unreadable 0" in out
    assert "too short (< 4 frames, padded) 3" in out and "[msrvtt train] videos 1" in out


def test_missing_and_corrupt_are_named_exit_1(folder, capsys):
    data, videos = folder
    (videos / "video1.mp4").write_bytes(b"\x00corrupt" * 64)
    (videos / "video2.mp4").unlink()
    assert main(argv(data, videos, "--split", "test", "--num_workers", "2")) == 1
    out = capsys.readouterr().out
    assert "ok 1, missing 1, unreadable 1" in out
    assert "missing: video2" in out and "unreadable: video1" in out and "video1.mp4" in out


@pytest.mark.filterwarnings("ignore:'dataloaders.check' found in sys.modules:RuntimeWarning")
def test_module_entry_point_exit_status(folder, monkeypatch, capsys):
    data, videos = folder
    (videos / "video0.mp4").write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["check", *argv(data, videos, "--split", "test", "--num_workers", "0")])
    with pytest.raises(SystemExit) as exit_info:  # what `python -m dataloaders.check` runs
        runpy.run_module("dataloaders.check", run_name="__main__")
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "unreadable: video0" in out and "empty file" in out


def test_videos_folder_is_printed_and_the_synthetic_one_generated(folder, tmp_path, capsys):
    assert main(argv(*folder, "--videos_folder")) == 0
    assert capsys.readouterr().out.strip() == str(folder[1])
    flags = ["--demo", "--synthetic_dir", str(tmp_path / "synth"), "--synthetic_num_videos", "4",
             "--synthetic_num_test_videos", "2", "--videos_folder"]
    assert main(flags) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(str(tmp_path / "synth")) and len(list((tmp_path / "synth").glob("*/videos/*.mp4"))) == 8
    assert sorted(p.name for p in Path(printed).iterdir())[:1] == ["video0.mp4"]
