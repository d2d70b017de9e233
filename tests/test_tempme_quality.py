"""scripts/tempme_quality.py --quick on tiny data: every configuration trains, JSON and PNG are written."""
from __future__ import annotations

import pytest

import json

from PIL import Image

from scripts import tempme_quality


@pytest.mark.slow
def test_quick_study_writes_json_and_chart(tmp_path):
    out = tmp_path / "study"
    study_flags = ["--quick", "--num_videos", "8", "--num_test_videos", "4", "--epochs", "1", "--batch_size", "8",
                   "--finetune_lr", "5e-4", "--threads", "1", "--out_dir", str(out)]
    main_flags = ["--", "--synthetic_dir", str(tmp_path / "synthetic"), "--num_workers", "0",
                  "--tempme_hidden_dim", "16"]
    result = tempme_quality.main(study_flags + main_flags)
    saved = json.loads((out / "tempme_quality.json").read_text())
    assert saved["summary"] == result["summary"]
    assert set(saved["summary"]) == set(tempme_quality.CONFIGS)
    assert len(saved["runs"]) == len(tempme_quality.CONFIGS)   # one seed
    frames = {c: s["frames_kept"]["mean"] for c, s in saved["summary"].items()}
    assert frames["uniform8"] == frames["simple"] == frames["basic"] == 8
    assert 4 <= frames["adaptive"] <= 12 and frames["uniform48"] == 48
    hits = {c: s["event_hit"]["mean"] for c, s in saved["summary"].items()}
    assert hits["uniform48"] == 100.0                          # every frame is seen
    assert all(0.0 <= h <= 100.0 for h in hits.values())
    for run in saved["runs"]:
        assert 0.0 <= run["t2v_R1"] <= run["t2v_R5"] <= 100.0
        assert not run["reused"]
    assert set(saved["base_summary"]) == set(tempme_quality.METRICS)
    assert saved["base_summary"]["frames_kept"]["mean"] == 8
    # The base trains at --demo's learning rate, every configuration fine-tunes at --finetune_lr.
    lr = {run: json.loads((out / "runs" / run / "args.json").read_text())["lr"] for run in ("base_s0", "simple_s0")}
    assert lr == {"base_s0": 1e-3, "simple_s0": 5e-4}
    image = Image.open(out / "tempme_quality.png")
    image.verify()
    assert Image.open(out / "tempme_quality.png").size == (920, 460)

    # A second call with the same arguments reuses the finished runs, unless a run was trained
    # on other clips (e.g. an older synthetic generator version).
    study = (out / "runs" / "uniform8_s0" / tempme_quality.STUDY_RECORD)
    study.write_text(json.dumps({"dataset_folder": str(tmp_path / "synthetic" / "older_clips")}))
    again = tempme_quality.main(study_flags + ["--configs", "uniform8", "simple"] + main_flags)
    reused = {run["config"]: run["reused"] for run in again["runs"]}
    assert reused == {"uniform8": False, "simple": True}
    assert again["summary"]["simple"] == result["summary"]["simple"]
