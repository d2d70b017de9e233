"""scripts/tempme_quality.py: partner accuracy and the instrument's sensitivity against hand-computed
cases, paired differences and intervals, and a quick study on tiny data (JSON, PNG, reuse)."""
from __future__ import annotations

import json
import statistics

import pytest
import torch
from PIL import Image

from scripts import tempme_quality


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_agreement():
    spread = tempme_quality.bootstrap_interval([-4.0, 1.0, 6.0, 11.0, 16.0])
    assert spread[0] < statistics.fmean([-4.0, 1.0, 6.0, 11.0, 16.0]) < spread[1]
    assert -4.0 <= spread[0] and spread[1] <= 16.0
    assert tempme_quality.bootstrap_interval([5.0] * 5) == (5.0, 5.0)


def test_partners_share_every_attribute_but_the_event():
    attributes = {f"v{i}": {"colour": c, "shape": "circle", "motion": "up", "background": "plain", "event": e}
                  for i, (c, e) in enumerate([("red", "flash"), ("blue", "star"), ("red", "star"), ("green", "star")])}
    assert tempme_quality.partners(["v0", "v1", "v2", "v3"], attributes) == {0: 2, 2: 0}   # v1, v3: no partner


def test_partner_accuracy_counts_own_above_partner_both_ways():
    # Videos 0 and 1 are partners, 2 and 3 too; caption i belongs to video i.
    sim = torch.tensor([[0.9, 0.5, 0.0, 0.0],
                        [0.8, 0.7, 0.0, 0.0],     # caption 1 prefers video 0: t2v miss for video 1
                        [0.0, 0.0, 0.6, 0.4],
                        [0.0, 0.0, 0.7, 0.6]])    # caption 3 scores video 2 above video 3's own: t2v miss
    t2v, v2t = tempme_quality.partner_accuracy(sim, [0, 1, 2, 3], {0: 1, 1: 0, 2: 3, 3: 2})
    assert t2v == 50.0                            # videos 0 and 2
    # v2t: video 0: 0.9 > 0.8 yes; video 1: 0.7 > 0.5 yes; video 2: 0.6 > 0.7 no; video 3: 0.6 > 0.4 yes.
    assert v2t == 75.0


def _rows(config: str, partner: list[float], r1: list[float]) -> list[dict]:
    return [{"config": config, "seed": s, **{m: 0.0 for m in tempme_quality.METRICS}, "partner": p, "t2v_R1": r}
            for s, (p, r) in enumerate(zip(partner, r1))]


def test_summary_pairs_seeds_and_measures_the_instruments_sensitivity():
    rows = (_rows("uniform8", [60, 70], [10, 30]) + _rows("oracle8", [90, 95], [12, 31])
            + _rows("spoiled8", [50, 52], [9, 29]) + _rows("basic", [80, 80], [20, 35]))
    summary = tempme_quality.summarise(rows, ["uniform8", "oracle8", "spoiled8", "basic"])
    basic = summary["configs"]["basic"]
    assert basic["t2v_R1_vs_uniform8"]["per_seed"] == [10.0, 5.0] and basic["t2v_R1_vs_uniform8"]["mean"] == 7.5
    assert basic["partner_vs_uniform8"]["per_seed"] == [20.0, 10.0]
    assert basic["t2v_R1"] == {"mean": 27.5, "std": statistics.stdev([20.0, 35.0])}
    assert basic["gap_closed"] == pytest.approx((80 - 65) / (92.5 - 65))      # of the uniform8 -> oracle8 gap
    gap = summary["sensitivity"]
    assert gap["per_seed"] == [40.0, 43.0] and gap["mean"] == 41.5 and gap["enough"] and gap["uniform8_between"]
    assert "t2v_R1_vs_uniform8" not in summary["configs"]["uniform8"]
    weak = tempme_quality.summarise(_rows("uniform8", [50, 50], [1, 1]) + _rows("oracle8", [60, 70], [1, 1])
                                    + _rows("spoiled8", [50, 50], [1, 1]), ["uniform8", "oracle8", "spoiled8"])
    assert not weak["sensitivity"]["enough"]
    assert "no selector result is read" in tempme_quality.format_table(weak)


@pytest.mark.slow
def test_quick_study_writes_json_and_chart(tmp_path):
    out = tmp_path / "study"
    study_flags = ["--quick", "--num_videos", "8", "--num_test_videos", "4", "--epochs", "1", "--batch_size", "8",
                   "--base_frames", "4", "--finetune_lr", "5e-4", "--threads", "1", "--out_dir", str(out),
                   "--conditions", "distractors", "--configs", "oracle8", "spoiled8", "basic_text"]
    main_flags = ["--", "--synthetic_dir", str(tmp_path / "synthetic"), "--num_workers", "0",
                  "--tempme_hidden_dim", "16", "--batch_size_val", "8"]
    result = tempme_quality.main(study_flags + main_flags)
    saved = json.loads((out / "tempme_quality.json").read_text())
    assert saved["summary"] == result["summary"] and set(saved["summary"]) == {"distractors"}
    summary = saved["summary"]["distractors"]
    assert list(summary["configs"]) == ["uniform8", "oracle8", "spoiled8", "basic_text"]   # uniform8 always runs
    assert len(saved["runs"]) == 8 and len(saved["base_runs"]) == 2     # 2 seeds, one base each
    assert {summary["configs"][c]["frames_kept"]["mean"] for c in summary["configs"]} == {8}
    for run in saved["runs"]:
        assert 0.0 <= run["t2v_R1"] <= run["t2v_R5"] <= 100.0 and not run["reused"]
        assert 0.0 <= run["partner_t2v"] <= 100.0 and run["partner"] == (run["partner_t2v"] + run["partner_v2t"]) / 2
        assert 0.0 <= run["outlier_share"] <= 100.0
    hits = {c: summary["configs"][c]["event_hit"]["mean"] for c in ("uniform8", "oracle8", "spoiled8")}
    assert hits["oracle8"] == 100.0 and hits["spoiled8"] == 0.0 and 0.0 <= hits["uniform8"] <= 100.0
    per_run = {(r["config"], r["seed"]): r["t2v_R1"] for r in saved["runs"]}
    gain = summary["configs"]["basic_text"]["t2v_R1_vs_uniform8"]
    assert gain["per_seed"] == [per_run[("basic_text", s)] - per_run[("uniform8", s)] for s in (0, 1)]
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    assert len(summary["sensitivity"]["per_seed"]) == 2
    # Uniform 8 of 48 frames with 12 distractors: about a quarter of what reaches CLIP is an outlier.
    assert 0.0 < summary["configs"]["uniform8"]["outlier_share"]["mean"] < 60.0
    # The base trains at --demo's learning rate on --base_frames, every configuration fine-tunes at
    # --finetune_lr; all of them form batches of close captions.
    runs = out / "runs" / "distractors"
    base = json.loads((out / "runs" / "base_s0" / "args.json").read_text())
    tuned = json.loads((runs / "basic_text_s0" / "args.json").read_text())
    assert (base["lr"], tuned["lr"], base["max_frames"]) == (1e-3, 5e-4, 4)
    assert base["batch_sampling"] == tuned["batch_sampling"] == "close_captions"
    # The base learns on the clean clips; the configurations fine-tune on their condition's.
    assert (base["synthetic_distractor_frames"], tuned["synthetic_distractor_frames"]) == (0, 12)
    Image.open(out / "tempme_quality.png").verify()

    # A second call with the same arguments reuses the finished runs, unless a run was trained
    # on other clips (e.g. an older synthetic generator version).
    (runs / "uniform8_s0" / tempme_quality.STUDY_RECORD).write_text(
        json.dumps({"dataset_folder": str(tmp_path / "synthetic" / "older_clips")}))
    again = tempme_quality.main(study_flags + ["--seeds", "0"] + main_flags)
    reused = {run["config"]: run["reused"] for run in again["runs"]}
    assert reused == {"uniform8": False, "oracle8": True, "spoiled8": True, "basic_text": True}
