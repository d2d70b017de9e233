"""At equal CLIP cost, do learned frames beat uniform frames? (issue 8, item 2)

On the synthetic dataset with brief events (48-frame clips; every video carries a 2-3 frame
event and its test partner differs from it only by that event), per seed: first a base model is
trained on 8 uniform frames (`base_s<seed>`, `--base_epochs`), then every configuration starts
from it (`--init_model`, as when TempMe is added to a trained model) and gets the same
fine-tuning budget (`--epochs`, `--batch_size`, `--finetune_lr`, data, seed):

    uniform8   8 frames sampled uniformly, no TempMe          (8 frames reach CLIP)
    simple     48 -> 8 with SimpleTempMe (ratio 1/6)          (8)
    basic      48 -> 8 with TempMeCompressor                  (8)
    adaptive   48 -> [4, 12] with AdaptiveTempMe              (content-dependent, ~8)
    uniform48  all 48 frames, no TempMe (upper bound)         (48)

(ablation, only when named in `--configs`: `simple_noaux`, simple with `--tempme_aux_weight 0`)

and reports, over seeds, test t2v/v2t R@1/R@5 (mean ± std), mean frames kept and the event hit
rate (share of test videos whose kept frames include one of their event frames; computed from
the best checkpoint's compressor, or from the uniform sampling indices). Writes a JSON file and
a PNG bar chart drawn with PIL.

    python scripts/tempme_quality.py --jobs 2 --threads 1  # full study: 3 seeds, ~35 min on an idle 2-core CPU
    python scripts/tempme_quality.py --quick               # 1 seed, small data, about a minute
    python scripts/tempme_quality.py -- --num_workers 1    # flags after `--` go to every main.py run

The model is `--demo`'s tiny random CLIP trained end-to-end, as plain CLIP4Clip meanP
(`--prompt_mode none`) so the runs fit the CPU budget (STOP's per-frame prompt tables depend on
`--max_frames`, so a uniform-8 base does not load into the 48-frame configurations). Each run
lives in `<out_dir>/runs/<config>_s<seed>/`; a run whose folder already holds a test result
for the same arguments on the same synthetic clips (generator version included) is reused (any
other run folder is started over), so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloaders  # noqa: E402
import params  # noqa: E402
from dataloaders.video_reader import normalize_video  # noqa: E402
from modules import checkpoint  # noqa: E402
from modules.factory import build_trained_model  # noqa: E402
from modules.tempme import uniform_frame_indices  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402

CLIP_FRAMES = 8          # the CLIP budget every learned selector is held to
INPUT_FRAMES = 48        # frames per synthetic clip, all loaded by the selectors
CONFIGS: dict[str, list[str]] = {
    "uniform8": ["--max_frames", str(CLIP_FRAMES)],
    "simple": ["--max_frames", str(INPUT_FRAMES), "--use_tempme", "True", "--tempme_type", "simple",
               "--tempme_compression_ratio", f"{CLIP_FRAMES / INPUT_FRAMES:.4f}"],
    "basic": ["--max_frames", str(CLIP_FRAMES), "--use_tempme", "True", "--tempme_type", "basic",
              "--tempme_input_frames", str(INPUT_FRAMES), "--tempme_output_frames", str(CLIP_FRAMES)],
    "adaptive": ["--max_frames", str(CLIP_FRAMES), "--use_tempme", "True", "--tempme_type", "adaptive",
                 "--tempme_max_input_frames", str(INPUT_FRAMES), "--tempme_min_output_frames", "4",
                 "--tempme_max_output_frames", "12"],
    "uniform48": ["--max_frames", str(INPUT_FRAMES)],
}
# Selectable with --configs, not part of the default study: simple without the auxiliary
# frame-selection loss, i.e. what the straight-through gate alone learns.
ABLATIONS: dict[str, list[str]] = {"simple_noaux": CONFIGS["simple"] + ["--tempme_aux_weight", "0"]}
RUN_FLAGS = {**CONFIGS, **ABLATIONS}
METRICS = ("t2v_R1", "t2v_R5", "v2t_R1", "v2t_R5", "frames_kept", "event_hit")
FULL = dict(seeds=[0, 1, 2], base_epochs=10, epochs=2, num_videos=400, num_test_videos=100)
QUICK = dict(seeds=[0], base_epochs=1, epochs=1, num_videos=64, num_test_videos=20)
BASE_BATCH = 32
# Study recipe on top of --demo: plain CLIP4Clip meanP (see the module docstring) and a
# compressor learning rate that lets the zero-initialised score head move within the short
# fine-tuning.
STUDY_FLAGS = ["--prompt_mode", "none", "--tempme_lr", "1e-2"]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small study for tests: {QUICK} unless given explicitly")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"training seeds (full: {FULL['seeds']})")
    parser.add_argument("--base_epochs", type=int, default=None,
                        help=f"epochs of the uniform-8 base model (full: {FULL['base_epochs']})")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"fine-tuning epochs of every configuration (full: {FULL['epochs']})")
    parser.add_argument("--num_videos", type=int, default=None,
                        help=f"synthetic train videos (full: {FULL['num_videos']})")
    parser.add_argument("--num_test_videos", type=int, default=None,
                        help=f"synthetic val and test videos each (full: {FULL['num_test_videos']})")
    parser.add_argument("--batch_size", type=int, default=16, help="fine-tuning batch size")
    parser.add_argument("--finetune_lr", type=float, default=1e-4,
                        help="learning rate of the model in fine-tuning (the base trains at --demo's 1e-3; "
                             "the compressor always uses --tempme_lr 1e-2); at 1e-3 fine-tuning costs "
                             "uniform8 7 R@1 points against its base (README, Results)")
    parser.add_argument("--configs", nargs="+", choices=tuple(RUN_FLAGS), default=list(CONFIGS),
                        help=f"configurations to train (ablations, not run by default: {', '.join(ABLATIONS)})")
    parser.add_argument("--out_dir", default="outputs/tempme_quality")
    parser.add_argument("--json", default=None, help="results file (default: <out_dir>/tempme_quality.json)")
    parser.add_argument("--png", default=None, help="bar chart (default: <out_dir>/tempme_quality.png)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (separate processes)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: torch's default; 1 is fastest on a busy 2-core CPU)")
    own = parser.parse_args(argv[:split_at])
    defaults = QUICK if own.quick else FULL
    for key, value in defaults.items():
        if getattr(own, key) is None:
            setattr(own, key, value)
    for key in ("base_epochs", "epochs", "num_videos", "num_test_videos", "batch_size", "jobs"):
        if getattr(own, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(own, key)}")
    if own.finetune_lr <= 0:
        parser.error(f"--finetune_lr must be > 0, got {own.finetune_lr}")
    own.json = own.json or os.path.join(own.out_dir, "tempme_quality.json")
    own.png = own.png or os.path.join(own.out_dir, "tempme_quality.png")
    return own, argv[split_at + 1:]


def run_argv(own: argparse.Namespace, extra: list[str], config: str, seed: int) -> list[str]:
    """main.py flags of one run (later flags win, so `extra` can override anything); config
    "base" is the uniform-8 model every configuration of the seed starts from."""
    runs = os.path.join(own.out_dir, "runs")
    if config == "base":
        stage = ["--epochs", str(own.base_epochs), "--batch_size", str(BASE_BATCH), *CONFIGS["uniform8"]]
    else:
        stage = ["--epochs", str(own.epochs), "--batch_size", str(own.batch_size), "--lr", str(own.finetune_lr),
                 "--init_model", os.path.join(runs, f"base_s{seed}", checkpoint.BEST), *RUN_FLAGS[config]]
    return ["--demo", "--no_progress", *STUDY_FLAGS, "--synthetic_num_frames", str(INPUT_FRAMES),
            "--synthetic_event_fraction", "1.0", "--synthetic_num_videos", str(own.num_videos),
            "--synthetic_num_test_videos", str(own.num_test_videos), "--seed", str(seed),
            "--output_dir", runs, "--run_name", f"{config}_s{seed}", *stage, *extra]


STUDY_RECORD = "study.json"  # in each run folder: the synthetic dataset folder the run used


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
def event_hit_rate(argv: list[str]) -> float:
    """Share of test videos with an event whose frames reaching CLIP include an event frame.

    TempMe: the best checkpoint's compressor on the loaded frames (as in evaluation); without
    TempMe: the loader's uniform evaluation samples.
    """
    args = params.get_args(argv)
    dataset = dataloaders.build_dataset(args, "test", tokenize)
    with open(os.path.join(dataloaders.dataset_folders(args)[0], "attributes.json")) as f:
        attributes = json.load(f)
    events = [set(attributes[v]["event_frames"]) for v in dataset.video_ids]
    loaded = uniform_frame_indices(args.synthetic_num_frames, dataset.num_frames)  # input frame -> clip frame
    kept: list[list[int]] = []
    if not args.use_tempme:
        kept = [loaded.tolist()] * len(events)
    else:
        best = os.path.join(args.output_dir, args.run_name, checkpoint.BEST)
        model = build_trained_model(args, best, require_all_trainable=True).eval()
        for start in range(0, len(events), args.batch_size_val):
            items = [dataset.load_video(i, train=False) for i in range(start, min(start + args.batch_size_val,
                                                                                   len(events)))]
            video = normalize_video(torch.stack([item[0] for item in items]))
            _, _, info = model.tempme_compressor(video, torch.stack([item[1] for item in items]))
            kept += [loaded[row[row >= 0]].tolist() for row in info["indices"]]
    with_event = [i for i, e in enumerate(events) if e]
    if not with_event:
        raise ValueError("no test video carries an event: the study needs --synthetic_event_fraction > 0")
    return 100.0 * sum(bool(events[i] & set(kept[i])) for i in with_event) / len(with_event)


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
            "frames_kept": test["frames_kept"]["mean"], "event_hit": event_hit_rate(argv),
            "seconds": round(time.perf_counter() - start, 1), "reused": reused}


def summarise(rows: list[dict[str, Any]], configs: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per configuration and metric: mean and (sample) std over seeds (std 0 for one seed)."""
    out = {}
    for config in configs:
        mine = [r for r in rows if r["config"] == config]
        out[config] = {m: {"mean": statistics.fmean(r[m] for r in mine),
                           "std": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0}
                       for m in METRICS}
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of mean ± std per configuration."""
    head = ["config", "frames to CLIP", "t2v R@1", "t2v R@5", "v2t R@1", "v2t R@5", "event hit %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, s in summary.items():
        cells = [config, f"{s['frames_kept']['mean']:.2f}"] + [
            f"{s[m]['mean']:.1f} ± {s[m]['std']:.1f}" for m in ("t2v_R1", "t2v_R5", "v2t_R1", "v2t_R5", "event_hit")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict[str, dict[str, float]]], title: str, path: str) -> None:
    """Grouped bars (t2v R@1, v2t R@1, event hit %) per configuration with ±std whiskers, PIL only."""
    series = (("t2v_R1", "t2v R@1", (52, 101, 164)), ("v2t_R1", "v2t R@1", (115, 160, 210)),
              ("event_hit", "event hit %", (230, 140, 40)))
    width, height, left, right, top, bottom = 920, 460, 60, 20, 56, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float:
        return top + plot_h * (1 - max(0.0, min(value, 100.0)) / 100.0)

    for tick in range(0, 101, 20):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 28, y - 6), f"{tick:3d}", fill="black", font=font)
    draw.line([(left, top), (left, top + plot_h), (width - right, top + plot_h)], fill="black")
    draw.text((left, 8), title, fill="black", font=font)
    for i, (_, name, colour) in enumerate(series):   # legend
        x = left + 10 + 130 * i
        draw.rectangle([x, 30, x + 12, 42], fill=colour)
        draw.text((x + 18, 30), name, fill="black", font=font)

    group_w = plot_w / len(summary)
    bar_w = group_w * 0.7 / len(series)
    for g, (config, stats) in enumerate(summary.items()):
        x0 = left + g * group_w + group_w * 0.15
        for i, (metric, _, colour) in enumerate(series):
            mean, std = stats[metric]["mean"], stats[metric]["std"]
            xa, xb = x0 + i * bar_w, x0 + (i + 1) * bar_w - 2
            draw.rectangle([xa, y_of(mean), xb, y_of(0)], fill=colour)
            xm = (xa + xb) / 2
            if std > 0:
                draw.line([(xm, y_of(mean - std)), (xm, y_of(mean + std))], fill="black", width=1)
                for v in (mean - std, mean + std):
                    draw.line([(xm - 3, y_of(v)), (xm + 3, y_of(v))], fill="black")
            draw.text((xa, y_of(mean) - 12), f"{mean:.0f}", fill="black", font=font)
        label = f"{config}\n{stats['frames_kept']['mean']:.1f} frames"
        draw.multiline_text((left + g * group_w + group_w * 0.15, top + plot_h + 8), label, fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study; returns what it writes to `--json`."""
    own, extra = parse_args(argv)
    bases = [run_argv(own, extra, "base", seed) for seed in own.seeds]
    jobs = [(config, seed, run_argv(own, extra, config, seed)) for seed in own.seeds for config in own.configs]
    dataloaders.dataset_folders(params.get_args(bases[0]))  # generate the clips once, before any worker
    started = time.perf_counter()
    if own.jobs > 1:
        with ProcessPoolExecutor(own.jobs, mp_context=get_context("spawn")) as pool:
            base_futures = [pool.submit(run_one, a, own.threads) for a in bases]
            futures = []
            for seed, base in zip(own.seeds, base_futures):   # a seed's runs start once its base is done
                base.result()
                futures += [pool.submit(run_one, a, own.threads) for _, s, a in jobs if s == seed]
            base_rows = [f.result() for f in base_futures]
            results = [f.result() for f in futures]
    else:
        base_rows = [run_one(a, own.threads) for a in bases]
        results = [run_one(a, own.threads) for _, _, a in jobs]
    rows = [{"config": c, "seed": s, **r} for (c, s, _), r in zip(jobs, results)]
    summary = summarise(rows, own.configs)
    base_summary = summarise([{"config": "base", **r} for r in base_rows], ["base"])["base"]
    command = "python scripts/tempme_quality.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    result = {
        "command": command.strip(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "settings": {"seeds": own.seeds, "base_epochs": own.base_epochs, "base_batch_size": BASE_BATCH,
                     "epochs": own.epochs, "finetune_lr": own.finetune_lr, "num_videos": own.num_videos,
                     "num_test_videos": own.num_test_videos, "batch_size": own.batch_size,
                     "clip_frames": CLIP_FRAMES, "input_frames": INPUT_FRAMES, "extra_main_flags": extra},
        "configs": {c: RUN_FLAGS[c] for c in own.configs},
        "base_runs": [{"seed": s, **r} for s, r in zip(own.seeds, base_rows)],
        "runs": rows,
        "summary": summary,
        "base_summary": base_summary,
    }
    Path(own.json).parent.mkdir(parents=True, exist_ok=True)
    with open(own.json, "w") as f:
        json.dump(result, f, indent=1)
    bar_chart(summary, f"synthetic 48-frame clips with brief events, {len(own.seeds)} seed(s): test "
                       f"retrieval after {own.epochs} fine-tuning epochs from a uniform-8 base", own.png)
    print(format_table({"base (uniform8, not fine-tuned)": base_summary, **summary}))
    print(f"wrote {own.json} and {own.png} ({result['minutes']} min)")
    return result


if __name__ == "__main__":
    main()
