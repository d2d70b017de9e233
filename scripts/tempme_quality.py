"""Does frame selection matter, and do learned frames beat uniform frames inside the whole STOP?

Synthetic 48-frame clips in which every video carries a brief (2-3 frame) captioned event and its
test partner differs from it only by that event, in two conditions:

    clean        the clips as they are
    distractors  every clip also carries 12 uncaptioned outlier frames (noise bursts, cuts to
                 another scene), more than the 8-frame budget can hold

Per seed a base STOP model (the `--demo` model: tiny CLIP, spatial and temporal prompts on) is
trained on the clean clips (`base`: `--base_frames` frames with the event frame swapped in
(`--base_event_frames always`: a device of the instrument, so that every configuration starts from
a model that reads the events when it sees them; a tiny CLIP trained from scratch on uniform frames
does not learn them), `--base_epochs` epochs, batches of close captions after `--base_warmup`
random ones, `--caption_contrast`); then, in each condition, every configuration starts from it (`--init_model`; STOP's
per-frame prompt table is resampled to the configuration's frame count) and gets the same
fine-tuning budget on that condition's clips (`--epochs`, `--batch_size`, `--finetune_lr`, seed):

    uniform8     8 frames sampled uniformly, no TempMe                                (8 frames reach CLIP)
    oracle8      uniform8 with the sampled frame nearest the event swapped for an event frame, from
                 the generator's record (`--synthetic_event_frames always`): a ceiling, not a method  (8)
    spoiled8     uniform8 with every sampled event frame swapped for its neighbour (`never`): the floor (8)
    uniform48    every frame, six times the CLIP cost                                 (48)
    basic_text        48 -> 8 with TempMeCompressor, taught caption relevance        (8)
    basic_completion  48 -> 8 with TempMeCompressor, taught what a frame adds to the others  (8)

(selectable with `--configs`: basic_distinct, basic_none (no teacher), simple,
uniform8_merge and basic_merge (`--token_merge frame`), adaptive 48 -> [4, 12]).

The instrument: *partner accuracy*, the share of test videos whose caption scores the video above
its partner (t2v) and whose video scores its own caption above the partner's (v2t); chance is 50%
and only the event can lift it. Its sensitivity is oracle8 - spoiled8 (per seed, with a 95%
bootstrap interval over seeds): a model that reads the events when it sees them puts oracle8 far
above spoiled8; no selector result is read where that gap is under 30 points. Reported per
condition and configuration: partner accuracy t2v / v2t / mean, t2v and v2t R@1 and R@5 (mean,
std over seeds), paired differences against uniform8 with 95% bootstrap intervals, the share of
the uniform8 -> oracle8 partner gap a configuration closes, frames kept, the event hit rate (share
of test videos whose frames reaching CLIP include an event frame) and the outlier share (share of
the frames reaching CLIP that are distractors). Writes a JSON file and a PNG chart drawn with PIL.

    python scripts/tempme_quality.py --jobs 2 --threads 1   # the full study: 5 seeds, both conditions
    python scripts/tempme_quality.py --quick                 # 2 seeds, tiny data, a few minutes
    python scripts/tempme_quality.py -- --num_workers 1      # flags after `--` go to every main.py run

Each run lives in `<out_dir>/runs/<condition>/<config>_s<seed>/` (bases: `<out_dir>/runs/base_s<seed>/`);
a run whose folder already holds a test result for the same arguments on the same synthetic clips
(generator version included) is reused (any other run folder is started over), so an interrupted
study continues where it stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloaders  # noqa: E402
import params  # noqa: E402
from engine import checkpoint  # noqa: E402
from engine.evaluate import evaluate  # noqa: E402
from engine.factory import build_trained_model  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402

CLIP_FRAMES = 8          # the CLIP budget every learned selector is held to
INPUT_FRAMES = 48        # frames per synthetic clip, all loaded by the selectors
CONDITIONS = {"clean": 0, "distractors": 12}   # uncaptioned outlier frames per clip
_UNIFORM = ["--max_frames", str(CLIP_FRAMES)]
_BASIC = [*_UNIFORM, "--use_tempme", "True", "--tempme_type", "basic",
          "--tempme_input_frames", str(INPUT_FRAMES), "--tempme_output_frames", str(CLIP_FRAMES)]
CONFIGS: dict[str, list[str]] = {
    "uniform8": _UNIFORM,
    "oracle8": [*_UNIFORM, "--synthetic_event_frames", "always"],
    "spoiled8": [*_UNIFORM, "--synthetic_event_frames", "never"],
    "uniform48": ["--max_frames", str(INPUT_FRAMES)],
    "basic_text": [*_BASIC, "--tempme_teacher", "text"],
    "basic_completion": [*_BASIC, "--tempme_teacher", "completion"],
}
# Selectable with --configs, not part of the default study (default teacher where one applies).
OPTIONAL: dict[str, list[str]] = {
    "basic_distinct": [*_BASIC, "--tempme_teacher", "distinct"],
    "basic_none": [*_BASIC, "--tempme_aux_weight", "0"],
    "simple": ["--max_frames", str(INPUT_FRAMES), "--use_tempme", "True", "--tempme_type", "simple",
               "--tempme_compression_ratio", f"{CLIP_FRAMES / INPUT_FRAMES:.4f}"],
    "uniform8_merge": [*_UNIFORM, "--token_merge", "frame"],
    "basic_merge": [*_BASIC, "--token_merge", "frame"],
    "adaptive": [*_UNIFORM, "--use_tempme", "True", "--tempme_type", "adaptive",
                 "--tempme_max_input_frames", str(INPUT_FRAMES), "--tempme_min_output_frames", "4",
                 "--tempme_max_output_frames", "12"],
}
RUN_FLAGS = {**CONFIGS, **OPTIONAL}
REFERENCE, CEILING, FLOOR = "uniform8", "oracle8", "spoiled8"
SENSITIVITY_POINTS = 30.0   # oracle8 - spoiled8 partner accuracy under which no selector result is read
METRICS = ("partner", "partner_t2v", "partner_v2t", "t2v_R1", "t2v_R5", "v2t_R1", "v2t_R5", "frames_kept",
           "event_hit", "outlier_share")
PAIRED = ("partner", "t2v_R1", "v2t_R1")   # metrics compared with uniform8 seed by seed
FULL = dict(seeds=[0, 1, 2, 3, 4], base_epochs=12, epochs=2, num_videos=400, num_test_videos=100)
QUICK = dict(seeds=[0, 1], base_epochs=1, epochs=1, num_videos=48, num_test_videos=16)
BASE_BATCH = 32
# Study recipe on top of --demo: a compressor learning rate that lets the zero-initialised score
# head move within the short fine-tuning.
STUDY_FLAGS = ["--tempme_lr", "1e-2"]
BOOTSTRAP_SAMPLES = 10_000
STUDY_RECORD = "study.json"  # in each run folder: the synthetic dataset folder the run used


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small study for smoke tests: {QUICK}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"training seeds (full: {FULL['seeds']})")
    parser.add_argument("--base_epochs", type=int, default=None,
                        help=f"epochs of the base model (full: {FULL['base_epochs']})")
    parser.add_argument("--base_warmup", type=int, default=None,
                        help="base epochs with random batches before close-caption batches (main.py's "
                             "--close_captions_warmup; default: half of --base_epochs)")
    parser.add_argument("--base_frames", type=int, default=8,
                        help="frames per clip the base model trains on (default: 8)")
    parser.add_argument("--base_event_frames", choices=params.SYNTHETIC_EVENT_FRAMES, default="always",
                        help="frames the base trains on (main.py's --synthetic_event_frames): always (default) "
                             "swaps the sampled frame nearest the event for an event frame, so the base learns "
                             "what the captioned events look like and every configuration starts from a model that "
                             "reads them when it sees them; sampled: the loader's own frames")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"fine-tuning epochs of every configuration (full: {FULL['epochs']})")
    parser.add_argument("--num_videos", type=int, default=None, help=f"synthetic train videos (full: {FULL['num_videos']})")
    parser.add_argument("--num_test_videos", type=int, default=None,
                        help=f"synthetic val and test videos each (full: {FULL['num_test_videos']})")
    parser.add_argument("--batch_size", type=int, default=16, help="fine-tuning batch size (default: 16)")
    parser.add_argument("--finetune_lr", type=float, default=1e-4,
                        help="learning rate of the model in fine-tuning; the base trains at --demo's 1e-3, the "
                             "compressor always at --tempme_lr 1e-2 (default: 1e-4)")
    parser.add_argument("--batch_sampling", choices=params.BATCH_SAMPLING, default="close_captions",
                        help="how the base and every fine-tuning form their batches (main.py's --batch_sampling; "
                             "default: close_captions)")
    parser.add_argument("--caption_contrast", type=float, default=1.0,
                        help="main.py's --caption_contrast for the base and every fine-tuning (default: 1.0)")
    parser.add_argument("--conditions", nargs="+", choices=tuple(CONDITIONS), default=list(CONDITIONS),
                        help="data conditions (default: both)")
    parser.add_argument("--configs", nargs="+", choices=tuple(RUN_FLAGS), default=list(CONFIGS),
                        help=f"configurations (default: {', '.join(CONFIGS)}; also {', '.join(OPTIONAL)})")
    parser.add_argument("--out_dir", default="outputs/tempme_quality", help="(default: outputs/tempme_quality)")
    parser.add_argument("--json", default=None, help="results file (default: <out_dir>/tempme_quality.json)")
    parser.add_argument("--png", default=None, help="chart (default: <out_dir>/tempme_quality.png)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (processes; default: 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: torch's default; 1 is fastest with --jobs 2 on 2 cores)")
    own = parser.parse_args(argv[:split_at])
    for key, value in (QUICK if own.quick else FULL).items():
        if getattr(own, key) is None:
            setattr(own, key, value)
    for key in ("base_epochs", "base_frames", "epochs", "num_videos", "num_test_videos", "batch_size", "jobs"):
        if getattr(own, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(own, key)}")
    own.base_warmup = own.base_epochs // 2 if own.base_warmup is None else own.base_warmup
    if own.finetune_lr <= 0:
        parser.error(f"--finetune_lr must be > 0, got {own.finetune_lr}")
    own.configs = [REFERENCE, *(c for c in own.configs if c != REFERENCE)]   # every difference is taken against it
    own.json = own.json or os.path.join(own.out_dir, "tempme_quality.json")
    own.png = own.png or os.path.join(own.out_dir, "tempme_quality.png")
    return own, argv[split_at + 1:]


def run_argv(own: argparse.Namespace, extra: list[str], condition: str, config: str, seed: int) -> list[str]:
    """main.py flags of one run (later flags win, so `extra` can override anything); config
    "base" (condition "clean") is the model every configuration of the seed starts from."""
    runs = os.path.join(own.out_dir, "runs")
    if config == "base":
        output_dir = runs
        stage = ["--epochs", str(own.base_epochs), "--batch_size", str(BASE_BATCH), "--max_frames", str(own.base_frames),
                 "--close_captions_warmup", str(own.base_warmup), "--synthetic_event_frames", own.base_event_frames]
    else:
        output_dir = os.path.join(runs, condition)
        stage = ["--epochs", str(own.epochs), "--batch_size", str(own.batch_size), "--lr", str(own.finetune_lr),
                 "--init_model", os.path.join(runs, f"base_s{seed}", checkpoint.BEST), *RUN_FLAGS[config]]
    return ["--demo", "--no_progress", *STUDY_FLAGS, "--batch_sampling", own.batch_sampling,
            "--caption_contrast", str(own.caption_contrast),
            "--synthetic_num_frames", str(INPUT_FRAMES), "--synthetic_event_fraction", "1.0",
            "--synthetic_distractor_frames", str(CONDITIONS[condition]),
            "--synthetic_num_videos", str(own.num_videos), "--synthetic_num_test_videos", str(own.num_test_videos),
            "--seed", str(seed), "--output_dir", output_dir, "--run_name", f"{config}_s{seed}", *stage, *extra]


def _flags_read(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags a run reads: without TempMe none of the `tempme_*` ones (a changed TempMe default
    does not make the reference runs stale)."""
    return flags if flags.get("use_tempme") else {k: v for k, v in flags.items() if not k.startswith("tempme_")}


def _finished_test_record(args: argparse.Namespace, dataset_folder: str) -> dict[str, Any] | None:
    """The test record of a finished run with the same arguments (those it reads, `_flags_read`) on
    this synthetic dataset (its folder name hashes the generator version too), else None."""
    run_dir = os.path.join(args.output_dir, args.run_name)
    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            saved = json.load(f)
        with open(os.path.join(run_dir, STUDY_RECORD)) as f:
            used_folder = json.load(f)["dataset_folder"]
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, KeyError):
        return None
    same = _flags_read(saved) == _flags_read(json.loads(json.dumps(vars(args)))) and used_folder == dataset_folder
    tests = [r for r in records if r.get("split") == "test"]
    return tests[-1] if same and tests else None


def partners(video_ids: list[str], attributes: dict[str, dict[str, Any]]) -> dict[int, int]:
    """Test video index -> the index of its partner: the other test video with the same colour,
    shape, motion and background (they differ by their event only)."""
    by_base: dict[tuple, list[int]] = {}
    for index, video_id in enumerate(video_ids):
        record = attributes[video_id]
        by_base.setdefault(tuple(record[k] for k in ("colour", "shape", "motion", "background")), []).append(index)
    return {i: next(j for j in group if j != i) for group in by_base.values() if len(group) > 1 for i in group}


def partner_accuracy(similarity: torch.Tensor, caption_of: list[int], partner: dict[int, int]) -> tuple[float, float]:
    """(t2v, v2t) partner accuracy in percent from the test `similarity [Nt, Nv]`: over the videos
    v with a partner p, t2v counts sim(caption of v, v) > sim(caption of v, p) and v2t counts
    sim(caption of v, v) > sim(caption of p, v); `caption_of[v]` is v's (first) caption."""
    videos = sorted(partner)
    if not videos:
        raise ValueError("no test video has a partner: the study needs --synthetic_event_fraction 1.0")
    own = torch.tensor([similarity[caption_of[v], v] for v in videos])
    t2v = torch.tensor([similarity[caption_of[v], partner[v]] for v in videos])
    v2t = torch.tensor([similarity[caption_of[partner[v]], v] for v in videos])
    return 100.0 * (own > t2v).double().mean().item(), 100.0 * (own > v2t).double().mean().item()


@torch.no_grad()
def test_details(argv: list[str]) -> dict[str, float]:
    """What a run's best checkpoint does on the test split beyond the engine's metrics: partner
    accuracy (t2v, v2t, their mean), the event hit rate (share of test videos whose frames reaching
    CLIP include an event frame) and the outlier share (share of those frames that are distractors)."""
    args = params.get_args(argv)
    dataset = dataloaders.build_dataset(args, "test", tokenize)
    model = build_trained_model(args, os.path.join(args.output_dir, args.run_name, checkpoint.BEST),
                                require_all_trainable=True)
    result = evaluate(model, dataset, args, torch.device("cpu"), "fp32", details=True)
    with open(os.path.join(dataloaders.dataset_folders(args)[0], "attributes.json")) as f:
        attributes = json.load(f)
    t2v, v2t = partner_accuracy(result["similarity"], [c[0] for c in dataset.video_to_captions],
                                partners(dataset.video_ids, attributes))
    seen = [set(row[row >= 0].tolist()) for row in result["frames_seen"]]
    events = [set(attributes[v]["event_frames"]) for v in dataset.video_ids]
    outliers = [set(attributes[v]["distractor_frames"]) for v in dataset.video_ids]
    return {"partner_t2v": t2v, "partner_v2t": v2t, "partner": (t2v + v2t) / 2,
            "event_hit": 100.0 * statistics.fmean(bool(e & s) for e, s in zip(events, seen) if e),
            "outlier_share": 100.0 * sum(len(o & s) for o, s in zip(outliers, seen)) / max(1, sum(map(len, seen)))}


def run_one(argv: list[str], threads: int) -> dict[str, Any]:
    """Train + test one configuration (or reuse a finished run); returns its row of metrics."""
    if threads:
        torch.set_num_threads(threads)
    import main  # the engine; imported here so a spawned worker loads it itself

    start = time.perf_counter()
    args = params.get_args(argv)
    dataset_folder = dataloaders.dataset_folders(args)[0]
    test = _finished_test_record(args, dataset_folder)
    reused = test is not None
    if test is None:
        # A run folder of other arguments or an unfinished run: start it over (main refuses a used folder).
        shutil.rmtree(os.path.join(args.output_dir, args.run_name), ignore_errors=True)
        test = main.main(argv)["test"]
        with open(os.path.join(args.output_dir, args.run_name, STUDY_RECORD), "w") as f:
            json.dump({"dataset_folder": dataset_folder}, f)
    metrics = test["metrics"]
    return {"t2v_R1": metrics["t2v"]["R1"], "t2v_R5": metrics["t2v"]["R5"],
            "v2t_R1": metrics["v2t"]["R1"], "v2t_R5": metrics["v2t"]["R5"],
            "frames_kept": test["frames_kept"]["mean"], **test_details(argv),
            "seconds": round(time.perf_counter() - start, 1), "reused": reused}


def bootstrap_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_SAMPLES))
    return means[int(0.025 * BOOTSTRAP_SAMPLES)], means[int(0.975 * BOOTSTRAP_SAMPLES) - 1]


def paired(values: list[float]) -> dict[str, Any]:
    """Per-seed differences with their mean and 95% bootstrap interval."""
    low, high = bootstrap_interval(values)
    return {"per_seed": values, "mean": statistics.fmean(values), "ci95": [low, high]}


def summarise(rows: list[dict[str, Any]], configs: list[str]) -> dict[str, Any]:
    """One condition's runs: per configuration the mean and (sample) std over seeds of every metric,
    and for every configuration but uniform8 the per-seed differences against it (`PAIRED`
    metrics) with their mean and 95% bootstrap interval, and the share of the uniform8 -> oracle8
    partner gap it closes. With both oracle8 and spoiled8: the instrument's sensitivity."""
    by_config = {c: {r["seed"]: r for r in rows if r["config"] == c} for c in configs}
    reference = by_config[REFERENCE]
    out: dict[str, Any] = {"configs": {}}
    for config in configs:
        mine = [by_config[config][s] for s in sorted(by_config[config])]
        entry: dict[str, Any] = {m: {"mean": statistics.fmean(r[m] for r in mine),
                                     "std": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0}
                                 for m in METRICS}
        if config != REFERENCE:
            for metric in PAIRED:
                entry[f"{metric}_vs_{REFERENCE}"] = paired([r[metric] - reference[r["seed"]][metric] for r in mine])
        out["configs"][config] = entry
    if CEILING in by_config and FLOOR in by_config:
        seeds = sorted(by_config[CEILING])
        gap = paired([by_config[CEILING][s]["partner"] - by_config[FLOOR][s]["partner"] for s in seeds])
        reach = out["configs"][CEILING]["partner"]["mean"] - out["configs"][REFERENCE]["partner"]["mean"]
        out["sensitivity"] = {**gap, "enough": gap["mean"] >= SENSITIVITY_POINTS,
                              "uniform8_between": (out["configs"][FLOOR]["partner"]["mean"]
                                                   <= out["configs"][REFERENCE]["partner"]["mean"]
                                                   <= out["configs"][CEILING]["partner"]["mean"])}
        for config, entry in out["configs"].items():
            if config not in (REFERENCE, CEILING, FLOOR):
                gain = entry["partner"]["mean"] - out["configs"][REFERENCE]["partner"]["mean"]
                entry["gap_closed"] = gain / reach if reach > 0 else None
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of one condition: mean ± std per configuration, paired differences against
    uniform8 [95% interval], the share of the uniform8 -> oracle8 gap closed."""
    head = ["config", "frames", "partner acc. (t2v / v2t)", f"- {REFERENCE} [95% CI]", "gap closed",
            "t2v R@1", f"- {REFERENCE} [95% CI]", "v2t R@1", "event hit %", "outliers %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def diff(entry: dict[str, Any], metric: str) -> str:
        d = entry.get(f"{metric}_vs_{REFERENCE}")
        return f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]" if d else "-"

    for config, s in summary["configs"].items():
        closed = s.get("gap_closed")
        cells = [config, f"{s['frames_kept']['mean']:.1f}",
                 f"{s['partner']['mean']:.1f} ± {s['partner']['std']:.1f} ({s['partner_t2v']['mean']:.0f} / "
                 f"{s['partner_v2t']['mean']:.0f})", diff(s, "partner"),
                 "-" if closed is None else f"{100 * closed:.0f}%",
                 f"{s['t2v_R1']['mean']:.1f} ± {s['t2v_R1']['std']:.1f}", diff(s, "t2v_R1"),
                 f"{s['v2t_R1']['mean']:.1f} ± {s['v2t_R1']['std']:.1f}",
                 f"{s['event_hit']['mean']:.0f}", f"{s['outlier_share']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if "sensitivity" in summary:
        gap = summary["sensitivity"]
        verdict = ("the instrument can see selection" if gap["enough"] else
                   f"under {SENSITIVITY_POINTS:.0f} points: no selector result is read")
        lines.append(f"\nsensitivity: {CEILING} - {FLOOR} partner accuracy {gap['mean']:+.1f} "
                     f"[{gap['ci95'][0]:+.1f}, {gap['ci95'][1]:+.1f}] (per seed "
                     f"{' '.join(f'{d:+.0f}' for d in gap['per_seed'])}): {verdict}; {REFERENCE} "
                     f"{'lies' if gap['uniform8_between'] else 'does NOT lie'} between them")
    return "\n".join(lines)


def chart(summaries: dict[str, dict[str, Any]], title: str, path: str) -> None:
    """One panel per condition: partner accuracy of every configuration (bar: mean over seeds, dots:
    seeds, dashed: chance), spoiled8 and oracle8 drawn as the floor and ceiling lines; PIL only."""
    panel_w, height, left, top, bottom = 520, 440, 50, 60, 80
    image = Image.new("RGB", (left + panel_w * len(summaries), height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 8), title, fill="black", font=font)
    plot_h = height - top - bottom

    def y_of(value: float) -> float:     # 0..100 %
        return top + plot_h * (1 - value / 100)

    for p, (condition, summary) in enumerate(summaries.items()):
        x0, configs = left + p * panel_w, summary["configs"]
        draw.text((x0 + 10, top - 22), f"{condition}: partner accuracy % (mean; dots: seeds)", fill="black", font=font)
        for tick in (0, 25, 50, 75, 100):
            draw.line([(x0, y_of(tick)), (x0 + panel_w - 20, y_of(tick))],
                      fill=(200, 200, 200) if tick != 50 else (120, 120, 120))
            draw.text((x0 - 30 if p == 0 else x0 + 2, y_of(tick) - 6), f"{tick}", fill="black", font=font)
        for name, colour in ((CEILING, (60, 150, 60)), (FLOOR, (200, 70, 50))):
            if name in configs:
                draw.line([(x0, y_of(configs[name]["partner"]["mean"])),
                           (x0 + panel_w - 20, y_of(configs[name]["partner"]["mean"]))], fill=colour, width=2)
        group_w = (panel_w - 40) / max(1, len(configs))
        for g, (config, s) in enumerate(configs.items()):
            xa, xb = x0 + 20 + g * group_w + group_w * 0.2, x0 + 20 + (g + 1) * group_w - group_w * 0.2
            colour = {CEILING: (60, 150, 60), FLOOR: (200, 70, 50), REFERENCE: (150, 150, 150)}.get(
                config, (52, 101, 164))
            draw.rectangle([xa, y_of(s["partner"]["mean"]), xb, y_of(0)], fill=colour)
            seeds = s.get(f"partner_vs_{REFERENCE}", {}).get("per_seed")
            base = configs[REFERENCE]["partner"]
            if seeds is not None:
                for d in seeds:
                    draw.ellipse([xb - 8, y_of(base["mean"] + d) - 2, xb - 4, y_of(base["mean"] + d) + 2], fill="black")
            draw.multiline_text((xa - 6, top + plot_h + 8), config.replace("_", "\n"), fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _run_all(own: argparse.Namespace, extra: list[str]) -> tuple[list[dict], list[dict]]:
    """Train every seed's base, then every configuration of a seed (in every condition) once its
    base is done."""
    bases = {seed: run_argv(own, extra, "clean", "base", seed) for seed in own.seeds}
    jobs = [(condition, config, seed) for seed in own.seeds for condition in own.conditions for config in own.configs]
    argvs = {job: run_argv(own, extra, *job) for job in jobs}
    for condition in own.conditions:   # generate each condition's clips once, before any worker
        dataloaders.dataset_folders(params.get_args(run_argv(own, extra, condition, REFERENCE, own.seeds[0])))
    if own.jobs == 1:
        base_rows = {seed: run_one(argv, own.threads) for seed, argv in bases.items()}
        results = {job: run_one(argv, own.threads) for job, argv in argvs.items()}
    else:
        with ProcessPoolExecutor(own.jobs, mp_context=get_context("spawn")) as pool:
            base_futures = {seed: pool.submit(run_one, argv, own.threads) for seed, argv in bases.items()}
            futures: dict[tuple, Future] = {}
            for seed, base in base_futures.items():
                base.result()
                futures.update({job: pool.submit(run_one, argvs[job], own.threads) for job in jobs if job[2] == seed})
            base_rows = {seed: f.result() for seed, f in base_futures.items()}
            results = {job: f.result() for job, f in futures.items()}
    base_list = [{"config": "base", "seed": s, **base_rows[s]} for s in own.seeds]
    run_list = [{"condition": c, "config": config, "seed": s, **results[(c, config, s)]} for c, config, s in jobs]
    return base_list, run_list


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study; returns what it writes to `--json`."""
    own, extra = parse_args(argv)
    started = time.perf_counter()
    base_rows, rows = _run_all(own, extra)
    summaries = {c: summarise([r for r in rows if r["condition"] == c], own.configs) for c in own.conditions}
    base_summary = summarise([{**r, "config": REFERENCE} for r in base_rows], [REFERENCE])["configs"][REFERENCE]
    command = "python scripts/tempme_quality.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    result = {
        "command": command.strip(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "settings": {"seeds": own.seeds, "conditions": {c: CONDITIONS[c] for c in own.conditions},
                     "base_epochs": own.base_epochs, "base_warmup": own.base_warmup, "base_frames": own.base_frames,
                     "base_batch_size": BASE_BATCH,
                     "base_event_frames": own.base_event_frames, "epochs": own.epochs, "finetune_lr": own.finetune_lr,
                     "batch_sampling": own.batch_sampling, "caption_contrast": own.caption_contrast,
                     "num_videos": own.num_videos, "num_test_videos": own.num_test_videos,
                     "batch_size": own.batch_size, "clip_frames": CLIP_FRAMES, "input_frames": INPUT_FRAMES,
                     "extra_main_flags": extra},
        "configs": {c: RUN_FLAGS[c] for c in own.configs},
        "base_runs": base_rows,
        "runs": rows,
        "summary": summaries,
        "base_summary": base_summary,
    }
    Path(own.json).parent.mkdir(parents=True, exist_ok=True)
    with open(own.json, "w") as f:
        json.dump(result, f, indent=1)
    chart(summaries, f"STOP on synthetic 48-frame clips, {len(own.seeds)} seeds, {own.batch_sampling} batches: "
                     f"partner accuracy after {own.epochs} fine-tuning epochs from the base", own.png)
    print(f"base ({own.base_frames} frames, event frames {own.base_event_frames}, clean clips, tested the same "
          f"way): partner accuracy "
          f"{base_summary['partner']['mean']:.1f} ± {base_summary['partner']['std']:.1f}, t2v R@1 "
          f"{base_summary['t2v_R1']['mean']:.1f} ± {base_summary['t2v_R1']['std']:.1f}")
    for condition in own.conditions:
        print(f"\n{condition}\n{format_table(summaries[condition])}")
    print(f"wrote {own.json} and {own.png} ({result['minutes']} min)")
    return result


if __name__ == "__main__":
    main()
