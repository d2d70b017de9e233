"""At equal CLIP cost, do learned frames beat uniform frames inside the whole STOP?

Synthetic 48-frame clips where every video carries a brief (2-3 frame) captioned event and its
test partner differs from it only by that event, in two conditions:

    clean        the clips as they are
    distractors  every clip also carries 12 uncaptioned outlier frames (noise bursts, cuts to
                 another scene), more than the 8-frame budget can hold

Per seed a base STOP model (the `--demo` model: tiny CLIP, spatial and temporal prompts on) is
trained on 8 uniform frames of the clean clips (`base`); then, in each condition, every
configuration starts from it (`--init_model`; STOP's per-frame prompt table is resampled to the
configuration's frame count), as when TempMe is added to a trained STOP model, and gets the same
fine-tuning budget on that condition's clips (`--epochs`, `--batch_size`, `--finetune_lr`, seed):

    uniform8          8 frames sampled uniformly, no TempMe                        (8 frames reach CLIP)
    basic_text        48 -> 8 with TempMeCompressor, taught caption relevance      (8)
    basic_distinct    the same, taught frame distinctiveness                       (8)
    basic_none        the same without the auxiliary loss (the gate alone)         (8)

(selectable with `--configs`, not run by default: basic_mix, taught both teachers (standardised
and summed); simple, 48 -> 8 with SimpleTempMe and the default teacher; uniform8_merge and
basic_merge, uniform8 and basic with the default teacher plus `--token_merge frame`; adaptive,
48 -> [4, 12]; uniform48).
Reported per condition: test t2v / v2t R@1 and R@5 over seeds (mean, std), the per-seed paired
difference of each configuration against uniform8 with a 95% bootstrap interval over seeds, the
frames kept, the event hit rate (share of test videos whose frames reaching CLIP include an
event frame) and the outlier share (share of the frames reaching CLIP that are distractors).
Writes a JSON file and a PNG chart drawn with PIL.

    python scripts/tempme_quality.py --jobs 2 --threads 1   # the full study: 5 seeds, both conditions
    python scripts/tempme_quality.py --quick                 # 2 seeds, tiny data, a few minutes
    python scripts/tempme_quality.py -- --num_workers 1      # flags after `--` go to every main.py run

Each run lives in `<out_dir>/runs/<condition>/<config>_s<seed>/` (bases: `<out_dir>/runs/base_s<seed>/`);
a run whose folder already
holds a test result for the same arguments on the same synthetic clips (generator version
included) is reused (any other run folder is started over), so an interrupted study continues
where it stopped.
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
from engine.factory import build_trained_model  # noqa: E402
from modules.clip import normalize_video  # noqa: E402
from modules.tempme import uniform_frame_indices  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402

CLIP_FRAMES = 8          # the CLIP budget every learned selector is held to
INPUT_FRAMES = 48        # frames per synthetic clip, all loaded by the selectors
CONDITIONS = {"clean": 0, "distractors": 12}   # uncaptioned outlier frames per clip
_BASIC = ["--max_frames", str(CLIP_FRAMES), "--use_tempme", "True", "--tempme_type", "basic",
          "--tempme_input_frames", str(INPUT_FRAMES), "--tempme_output_frames", str(CLIP_FRAMES)]
_SIMPLE = ["--max_frames", str(INPUT_FRAMES), "--use_tempme", "True", "--tempme_type", "simple",
           "--tempme_compression_ratio", f"{CLIP_FRAMES / INPUT_FRAMES:.4f}"]
CONFIGS: dict[str, list[str]] = {
    "uniform8": ["--max_frames", str(CLIP_FRAMES)],
    "basic_text": _BASIC + ["--tempme_teacher", "text"],
    "basic_distinct": _BASIC + ["--tempme_teacher", "distinct"],
    "basic_none": _BASIC + ["--tempme_aux_weight", "0"],
}
# Selectable with --configs, not part of the default study (default teacher where one applies).
OPTIONAL: dict[str, list[str]] = {
    "basic_mix": _BASIC + ["--tempme_teacher", "mix"],
    "simple": _SIMPLE,
    "uniform8_merge": CONFIGS["uniform8"] + ["--token_merge", "frame"],
    "basic_merge": _BASIC + ["--token_merge", "frame"],
    "adaptive": ["--max_frames", str(CLIP_FRAMES), "--use_tempme", "True", "--tempme_type", "adaptive",
                 "--tempme_max_input_frames", str(INPUT_FRAMES), "--tempme_min_output_frames", "4",
                 "--tempme_max_output_frames", "12"],
    "uniform48": ["--max_frames", str(INPUT_FRAMES)],
}
RUN_FLAGS = {**CONFIGS, **OPTIONAL}
REFERENCE = "uniform8"
METRICS = ("t2v_R1", "t2v_R5", "v2t_R1", "v2t_R5", "frames_kept", "event_hit", "outlier_share")
FULL = dict(seeds=[0, 1, 2, 3, 4], base_epochs=8, epochs=2, num_videos=400, num_test_videos=100)
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
                        help=f"epochs of the uniform-8 base model (full: {FULL['base_epochs']})")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"fine-tuning epochs of every configuration (full: {FULL['epochs']})")
    parser.add_argument("--num_videos", type=int, default=None, help=f"synthetic train videos (full: {FULL['num_videos']})")
    parser.add_argument("--num_test_videos", type=int, default=None,
                        help=f"synthetic val and test videos each (full: {FULL['num_test_videos']})")
    parser.add_argument("--batch_size", type=int, default=16, help="fine-tuning batch size (default: 16)")
    parser.add_argument("--finetune_lr", type=float, default=1e-4,
                        help="learning rate of the model in fine-tuning; the base trains at --demo's 1e-3, the "
                             "compressor always at --tempme_lr 1e-2 (default: 1e-4)")
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
    for key in ("base_epochs", "epochs", "num_videos", "num_test_videos", "batch_size", "jobs"):
        if getattr(own, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(own, key)}")
    if own.finetune_lr <= 0:
        parser.error(f"--finetune_lr must be > 0, got {own.finetune_lr}")
    if REFERENCE not in own.configs:
        own.configs = [REFERENCE, *own.configs]   # every difference is taken against it
    own.json = own.json or os.path.join(own.out_dir, "tempme_quality.json")
    own.png = own.png or os.path.join(own.out_dir, "tempme_quality.png")
    return own, argv[split_at + 1:]


def run_argv(own: argparse.Namespace, extra: list[str], condition: str, config: str, seed: int) -> list[str]:
    """main.py flags of one run (later flags win, so `extra` can override anything); config
    "base" (condition "clean") is the uniform-8 model every configuration of the seed starts from."""
    runs = os.path.join(own.out_dir, "runs")
    if config == "base":
        output_dir = runs
        stage = ["--epochs", str(own.base_epochs), "--batch_size", str(BASE_BATCH), *CONFIGS[REFERENCE]]
    else:
        output_dir = os.path.join(runs, condition)
        stage = ["--epochs", str(own.epochs), "--batch_size", str(own.batch_size), "--lr", str(own.finetune_lr),
                 "--init_model", os.path.join(runs, f"base_s{seed}", checkpoint.BEST), *RUN_FLAGS[config]]
    return ["--demo", "--no_progress", *STUDY_FLAGS, "--synthetic_num_frames", str(INPUT_FRAMES),
            "--synthetic_event_fraction", "1.0", "--synthetic_distractor_frames", str(CONDITIONS[condition]),
            "--synthetic_num_videos", str(own.num_videos), "--synthetic_num_test_videos", str(own.num_test_videos),
            "--seed", str(seed), "--output_dir", output_dir, "--run_name", f"{config}_s{seed}", *stage, *extra]


def _finished_test_record(args: argparse.Namespace, dataset_folder: str) -> dict[str, Any] | None:
    """The test record of a finished run with exactly these arguments on this synthetic dataset
    (its folder name hashes the generator version too), else None."""
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
    same = saved == json.loads(json.dumps(vars(args))) and used_folder == dataset_folder
    tests = [r for r in records if r.get("split") == "test"]
    return tests[-1] if same and tests else None


@torch.no_grad()
def selection_stats(argv: list[str]) -> dict[str, float]:
    """What reached CLIP on the test split: {"event_hit": % of test videos whose frames include an
    event frame, "outlier_share": % of those frames that are distractors}.

    TempMe: the best checkpoint's compressor on the loaded frames (as in evaluation); without
    TempMe: the loader's uniform evaluation samples.
    """
    args = params.get_args(argv)
    dataset = dataloaders.build_dataset(args, "test", tokenize)
    with open(os.path.join(dataloaders.dataset_folders(args)[0], "attributes.json")) as f:
        attributes = json.load(f)
    loaded = uniform_frame_indices(args.synthetic_num_frames, dataset.num_frames)  # loaded frame -> clip frame
    kept: list[list[int]] = []
    if not args.use_tempme:
        kept = [loaded.tolist()] * len(dataset.video_ids)
    else:
        best = os.path.join(args.output_dir, args.run_name, checkpoint.BEST)
        compressor = build_trained_model(args, best, require_all_trainable=True).eval().tempme_compressor
        for start in range(0, len(dataset.video_ids), args.batch_size_val):
            items = [dataset.load_video(i, train=False)
                     for i in range(start, min(start + args.batch_size_val, len(dataset.video_ids)))]
            _, _, info = compressor(normalize_video(torch.stack([item[0] for item in items])),
                                    torch.stack([item[1] for item in items]))
            kept += [loaded[row[row >= 0]].tolist() for row in info["indices"]]
    events = [set(attributes[v]["event_frames"]) for v in dataset.video_ids]
    outliers = [set(attributes[v]["distractor_frames"]) for v in dataset.video_ids]
    with_event = [i for i, e in enumerate(events) if e]
    if not with_event:
        raise ValueError("no test video carries an event: the study needs --synthetic_event_fraction > 0")
    return {"event_hit": 100.0 * sum(bool(events[i] & set(kept[i])) for i in with_event) / len(with_event),
            "outlier_share": 100.0 * sum(len(outliers[i] & set(k)) for i, k in enumerate(kept))
            / max(1, sum(len(k) for k in kept))}


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
            "frames_kept": test["frames_kept"]["mean"], **selection_stats(argv),
            "seconds": round(time.perf_counter() - start, 1), "reused": reused}


def bootstrap_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_SAMPLES))
    return means[int(0.025 * BOOTSTRAP_SAMPLES)], means[int(0.975 * BOOTSTRAP_SAMPLES) - 1]


def summarise(rows: list[dict[str, Any]], configs: list[str]) -> dict[str, dict[str, Any]]:
    """Per configuration: mean and (sample) std over seeds of every metric, and for every
    configuration but the reference the per-seed t2v/v2t R@1 differences against it, their mean
    and 95% bootstrap interval."""
    out: dict[str, dict[str, Any]] = {}
    reference = {r["seed"]: r for r in rows if r["config"] == REFERENCE}
    for config in configs:
        mine = sorted((r for r in rows if r["config"] == config), key=lambda r: r["seed"])
        entry: dict[str, Any] = {m: {"mean": statistics.fmean(r[m] for r in mine),
                                     "std": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0}
                                 for m in METRICS}
        if config != REFERENCE:
            for metric in ("t2v_R1", "v2t_R1"):
                diffs = [r[metric] - reference[r["seed"]][metric] for r in mine]
                low, high = bootstrap_interval(diffs)
                entry[f"{metric}_vs_{REFERENCE}"] = {"per_seed": diffs, "mean": statistics.fmean(diffs),
                                                     "ci95": [low, high]}
        out[config] = entry
    return out


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table: mean ± std per configuration, and the paired t2v R@1 gain over uniform8."""
    head = ["config", "frames", "t2v R@1", "v2t R@1", f"t2v R@1 - {REFERENCE} [95% CI]", "per seed",
            "event hit %", "outliers %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, s in summary.items():
        gain = s.get(f"t2v_R1_vs_{REFERENCE}")
        gain_cells = ([f"{gain['mean']:+.1f} [{gain['ci95'][0]:+.1f}, {gain['ci95'][1]:+.1f}]",
                       " ".join(f"{d:+.0f}" for d in gain["per_seed"])] if gain else ["-", "-"])
        cells = [config, f"{s['frames_kept']['mean']:.1f}",
                 *(f"{s[m]['mean']:.1f} ± {s[m]['std']:.1f}" for m in ("t2v_R1", "v2t_R1")), *gain_cells,
                 f"{s['event_hit']['mean']:.0f}", f"{s['outlier_share']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summaries: dict[str, dict[str, dict[str, Any]]], title: str, path: str) -> None:
    """One panel per condition: the paired t2v R@1 difference of each configuration against
    uniform8 (bar: mean over seeds, whisker: 95% bootstrap interval, dots: seeds), PIL only."""
    panel_w, height, left, top, bottom = 460, 420, 50, 60, 80
    width = left + panel_w * len(summaries)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 8), title, fill="black", font=font)
    values = [v for s in summaries.values() for c in s.values() if f"t2v_R1_vs_{REFERENCE}" in c
              for v in (*c[f"t2v_R1_vs_{REFERENCE}"]["per_seed"], *c[f"t2v_R1_vs_{REFERENCE}"]["ci95"])]
    limit = max(10.0, *(abs(v) for v in values)) if values else 10.0
    plot_h = height - top - bottom

    def y_of(value: float) -> float:
        return top + plot_h * (0.5 - value / (2 * limit))

    for p, (condition, summary) in enumerate(summaries.items()):
        x0 = left + p * panel_w
        draw.text((x0 + 10, top - 22), f"{condition}: t2v R@1 minus {REFERENCE} (per seed)", fill="black", font=font)
        draw.line([(x0, y_of(0)), (x0 + panel_w - 20, y_of(0))], fill="black")
        for tick in (-limit, -limit / 2, limit / 2, limit):
            draw.line([(x0, y_of(tick)), (x0 + panel_w - 20, y_of(tick))], fill=(230, 230, 230))
            draw.text((x0 - 40 if p == 0 else x0 + 2, y_of(tick) - 6), f"{tick:+.0f}", fill="black", font=font)
        others = [(c, s[f"t2v_R1_vs_{REFERENCE}"]) for c, s in summary.items() if c != REFERENCE]
        group_w = (panel_w - 40) / max(1, len(others))
        for g, (config, gain) in enumerate(others):
            xa, xb = x0 + 20 + g * group_w + group_w * 0.2, x0 + 20 + (g + 1) * group_w - group_w * 0.2
            colour = (52, 101, 164) if gain["ci95"][0] > 0 else (150, 150, 150) if gain["ci95"][1] >= 0 \
                else (200, 70, 50)
            draw.rectangle([xa, min(y_of(gain["mean"]), y_of(0)), xb, max(y_of(gain["mean"]), y_of(0))], fill=colour)
            xm = (xa + xb) / 2
            draw.line([(xm, y_of(gain["ci95"][0])), (xm, y_of(gain["ci95"][1]))], fill="black", width=2)
            for d in gain["per_seed"]:
                draw.ellipse([xm + 6, y_of(d) - 2, xm + 10, y_of(d) + 2], fill="black")
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
    base_summary = summarise([{**r, "config": REFERENCE} for r in base_rows], [REFERENCE])[REFERENCE]
    command = "python scripts/tempme_quality.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    result = {
        "command": command.strip(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "settings": {"seeds": own.seeds, "conditions": {c: CONDITIONS[c] for c in own.conditions},
                     "base_epochs": own.base_epochs, "base_batch_size": BASE_BATCH, "epochs": own.epochs,
                     "finetune_lr": own.finetune_lr, "num_videos": own.num_videos,
                     "num_test_videos": own.num_test_videos, "batch_size": own.batch_size,
                     "clip_frames": CLIP_FRAMES, "input_frames": INPUT_FRAMES, "extra_main_flags": extra},
        "configs": {c: RUN_FLAGS[c] for c in own.configs},
        "base_runs": base_rows,
        "runs": rows,
        "summary": summaries,
        "base_summary": base_summary,
    }
    Path(own.json).parent.mkdir(parents=True, exist_ok=True)
    with open(own.json, "w") as f:
        json.dump(result, f, indent=1)
    bar_chart(summaries, f"STOP on synthetic 48-frame clips, {len(own.seeds)} seeds: learned 48 -> 8 frames "
                         f"against uniform 8 after {own.epochs} fine-tuning epochs from a uniform-8 base", own.png)
    print(f"base (uniform 8 on clean clips, before fine-tuning): t2v R@1 {base_summary['t2v_R1']['mean']:.1f} "
          f"± {base_summary['t2v_R1']['std']:.1f}")
    for condition in own.conditions:
        print(f"\n{condition}\n{format_table(summaries[condition])}")
    print(f"wrote {own.json} and {own.png} ({result['minutes']} min)")
    return result


if __name__ == "__main__":
    main()
