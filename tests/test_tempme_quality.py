"""scripts/tempme_quality.py on tiny data: runs train, paired differences and intervals are right,
JSON and PNG are written, finished runs are reused."""
from __future__ import annotations

import json
import statistics

import pytest
from PIL import Image

from scripts import tempme_quality


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_agreement():
    spread = tempme_quality.bootstrap_interval([-4.0, 1.0, 6.0, 11.0, 16.0])
    assert spread[0] < statistics.fmean([-4.0, 1.0, 6.0, 11.0, 16.0]) < spread[1]
    assert -4.0 <= spread[0] and spread[1] <= 16.0
    assert tempme_quality.bootstrap_interval([5.0] * 5) == (5.0, 5.0)


def test_summary_pairs_each_seed_with_its_own_uniform8_run():
    rows = [{"config": c, "seed": s, **{m: 0.0 for m in tempme_quality.METRICS}, "t2v_R1": r, "v2t_R1": r}
            for c, s, r in (("uniform8", 0, 10.0), ("uniform8", 1, 30.0), ("basic", 1, 35.0), ("basic", 0, 20.0))]
    summary = tempme_quality.summarise(rows, ["uniform8", "basic"])
    gain = summary["basic"]["t2v_R1_vs_uniform8"]
    assert gain["per_seed"] == [10.0, 5.0] and gain["mean"] == 7.5       # seed 0: 20 - 10, seed 1: 35 - 30
    assert summary["basic"]["t2v_R1"] == {"mean": 27.5, "std": statistics.stdev([20.0, 35.0])}
    assert "t2v_R1_vs_uniform8" not in summary["uniform8"]


@pytest.mark.slow
def test_quick_study_writes_json_and_chart(tmp_path):
    out = tmp_path / "study"
    study_flags = ["--quick", "--num_videos", "8", "--num_test_videos", "4", "--epochs", "1", "--batch_size", "8",
                   "--finetune_lr", "5e-4", "--threads", "1", "--out_dir", str(out), "--conditions", "distractors",
                   "--configs", "basic_text"]
    main_flags = ["--", "--synthetic_dir", str(tmp_path / "synthetic"), "--num_workers", "0",
                  "--tempme_hidden_dim", "16", "--batch_size_val", "8"]
    result = tempme_quality.main(study_flags + main_flags)
    saved = json.loads((out / "tempme_quality.json").read_text())
    assert saved["summary"] == result["summary"] and set(saved["summary"]) == {"distractors"}
    summary = saved["summary"]["distractors"]
    assert set(summary) == {"uniform8", "basic_text"}                       # the reference is always trained
    assert len(saved["runs"]) == 4 and len(saved["base_runs"]) == 2     # 2 seeds, one base each
    assert summary["uniform8"]["frames_kept"]["mean"] == summary["basic_text"]["frames_kept"]["mean"] == 8
    for run in saved["runs"]:
        assert 0.0 <= run["t2v_R1"] <= run["t2v_R5"] <= 100.0 and not run["reused"]
        assert 0.0 <= run["event_hit"] <= 100.0 and 0.0 <= run["outlier_share"] <= 100.0
    per_run = {(r["config"], r["seed"]): r["t2v_R1"] for r in saved["runs"]}
    gain = summary["basic_text"]["t2v_R1_vs_uniform8"]
    assert gain["per_seed"] == [per_run[("basic_text", s)] - per_run[("uniform8", s)] for s in (0, 1)]
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    # Uniform 8 of 48 frames with 12 distractors: about a quarter of what reaches CLIP is an outlier.
    assert 0.0 < summary["uniform8"]["outlier_share"]["mean"] < 60.0
    # The base trains at --demo's learning rate, every configuration fine-tunes at --finetune_lr.
    runs = out / "runs" / "distractors"
    base = json.loads((out / "runs" / "base_s0" / "args.json").read_text())
    tuned = json.loads((runs / "basic_text_s0" / "args.json").read_text())
    assert (base["lr"], tuned["lr"]) == (1e-3, 5e-4)
    # The base learns on the clean clips; the configurations fine-tune on their condition's.
    assert (base["synthetic_distractor_frames"], tuned["synthetic_distractor_frames"]) == (0, 12)
    Image.open(out / "tempme_quality.png").verify()

    # A second call with the same arguments reuses the finished runs, unless a run was trained
    # on other clips (e.g. an older synthetic generator version).
    (runs / "uniform8_s0" / tempme_quality.STUDY_RECORD).write_text(
        json.dumps({"dataset_folder": str(tmp_path / "synthetic" / "older_clips")}))
    again = tempme_quality.main(study_flags + ["--seeds", "0"] + main_flags)
    reused = {run["config"]: run["reused"] for run in again["runs"]}
    assert reused == {"uniform8": False, "basic_text": True}
