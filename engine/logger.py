"""What a run writes for people: the run folder, log.txt, args.json, metrics.jsonl, metric tables.

Only rank 0 writes files and logs at INFO; other ranks log warnings to the console. A run folder
holds one run: `RunFolder.open` refuses a folder that already holds one unless `--resume`, and a
start that fails before training leaves no folder behind (`RunFolder.discard_if_unstarted`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from argparse import Namespace
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine import checkpoint, distributed
from modules.errors import UserError
from modules.tempme import TempMeConfig

_FORMAT = "%(asctime)s | %(levelname)s | %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


DEFAULT_OUTPUT_DIR = "outputs"
LOG = "log.txt"
# Files that make a folder hold a run (a start without --resume refuses such a folder).
RUN_FILES = ("args.json", "metrics.jsonl", checkpoint.LATEST, checkpoint.BEST)


def run_dir_path(args: Namespace) -> str:
    """`<--output_dir>/<--run_name>`; `--output_dir` alone is the run folder (as in CLIP4Clip);
    neither: `outputs/<dataset>_<time stamp>` (rank 0's clock, broadcast so every rank agrees)."""
    if args.run_name:
        return os.path.join(args.output_dir or DEFAULT_OUTPUT_DIR, args.run_name)
    if args.output_dir:
        return args.output_dir
    stamp = distributed.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
    return os.path.join(DEFAULT_OUTPUT_DIR, f"{args.dataset}_{stamp}")


@dataclass
class RunFolder:
    """The run folder's life: `open` (choose, refuse a used one, create), `started` once training
    or evaluation begins, `discard_if_unstarted` after a failed start; `progress` says how far
    training got, for the message of an interruption."""
    path: str | None = None
    created: bool = False   # this start made the folder
    started: bool = False   # training or evaluation began: the folder is kept
    progress: tuple[int, int] | None = None  # (epoch in progress, optimiser steps done) after its training

    def open(self, args: Namespace) -> str:
        """Choose the folder (`run_dir_path`), refuse one that holds a run unless `--resume` (a
        UserError naming --resume auto and --run_name), create it. Rank 0 decides and creates;
        every rank returns the path or raises."""
        path = run_dir_path(args)
        problem, created = None, False
        if distributed.is_main_process():
            problem = _unusable_run_dir(path, args)
            created = problem is None and not os.path.isdir(path)
            if problem is None:
                os.makedirs(path, exist_ok=True)
        problem, created = distributed.broadcast_object((problem, created))
        if problem:
            raise UserError(problem)
        self.path, self.created = path, created
        distributed.barrier()
        return path

    def discard_if_unstarted(self) -> None:
        """After a failure: remove the folder this start made if training never began and it holds
        nothing but its log and args.json (rank 0)."""
        if not (self.created and not self.started and self.path and distributed.is_main_process()):
            return
        for name in (LOG, "args.json"):
            if os.path.isfile(os.path.join(self.path, name)):
                os.remove(os.path.join(self.path, name))
        if os.path.isdir(self.path) and not os.listdir(self.path):
            os.rmdir(self.path)

    def append_log(self, message: str, level: str = "ERROR") -> None:
        """Append `message` to log.txt in the log's format, if the folder is there (rank 0)."""
        if self.path and os.path.isdir(self.path) and distributed.is_main_process():
            with open(os.path.join(self.path, LOG), "a") as f:
                f.write(f"{time.strftime(_DATE_FORMAT)} | {level} | {message}\n")


def _unusable_run_dir(path: str, args: Namespace) -> str | None:
    """Why `path` cannot take this run (a file; a folder holding a run without --resume), else None."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"run folder {path} is a file; choose another --output_dir/--run_name"
    used = [name for name in RUN_FILES if os.path.exists(os.path.join(path, name))]
    if used and args.resume is None:
        other = "--run_name" if args.run_name or not args.output_dir else "--output_dir (or add --run_name)"
        return (f"run folder {path} already holds a run ({', '.join(used)}): continue it with --resume auto, "
                f"or start a new run with another {other}")
    return None


def setup_logging(run_dir: str) -> None:
    """Root logger to the console and `<run_dir>/log.txt` (appended, so a resumed run continues
    the same log). Handlers from a previous in-process run are replaced."""
    root = logging.getLogger()
    close_logging()
    formatter = logging.Formatter(_FORMAT, _DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if distributed.is_main_process():
        handlers.append(logging.FileHandler(os.path.join(run_dir, LOG)))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._stop_tempme_run = True  # marks handlers this module owns
        root.addHandler(handler)
    root.setLevel(logging.INFO if distributed.is_main_process() else logging.WARNING)


def close_logging() -> None:
    """Remove and close the handlers `setup_logging` added (end of `main`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_stop_tempme_run", False):
            root.removeHandler(handler)
            handler.close()


def write_args(run_dir: str, args: Namespace) -> None:
    """`args.json`: the exact arguments of the run (rank 0)."""
    if distributed.is_main_process():
        with open(os.path.join(run_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2, sort_keys=True)


def append_metrics(run_dir: str, record: dict[str, Any]) -> None:
    """One JSON line per evaluation in `metrics.jsonl` (rank 0)."""
    if distributed.is_main_process():
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def format_metrics_table(title: str, result: dict[str, Any]) -> str:
    """Readable table of an evaluation result (see `engine.evaluate.evaluate`)."""
    rows = [("t2v", result["metrics"]["t2v"]), ("v2t", result["metrics"]["v2t"])]
    if result.get("dsl"):
        rows += [("t2v DSL", result["dsl"]["t2v"]), ("v2t DSL", result["dsl"]["v2t"])]
    lines = [title, f"{'':<8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MdR':>6} {'MnR':>7}"]
    for name, m in rows:
        lines.append(f"{name:<8} {m['R1']:6.1f} {m['R5']:6.1f} {m['R10']:6.1f} {m['MdR']:6.1f} {m['MnR']:7.1f}")
    kept = result["frames_kept"]
    lines.append(f"frames kept: mean {kept['mean']:.2f} min {kept['min']} max {kept['max']} of "
                 f"{result['frames_loaded']} loaded (effective ratio {result['effective_ratio']:.3f}) | "
                 f"encode {result['videos_per_s']:.1f} videos/s, {result['texts_per_s']:.1f} texts/s | "
                 f"{result['num_texts']} texts, {result['num_videos']} videos, bad videos {result['bad_videos']}")
    if result["bad_videos"]:
        lines.append(f"WARNING: {result['bad_videos']} videos could not be read and were encoded as empty "
                     f"(zero frames, mask 0); their retrieval scores are meaningless")
    return "\n".join(lines)


def _summary_row(name: str) -> str:
    """Parameter name -> its row in `parameter_summary` (CLIP towers, adapters, STOP parts, TempMe)."""
    parts = name.split(".")
    if parts[0] == "clip":
        if ".adapter." in name:
            return f"adapters ({'visual' if parts[1] == 'visual' else 'text'})"
        return {"visual": "clip.visual", "logit_scale": "clip.logit_scale"}.get(parts[1], "clip.text")
    return ".".join(parts[:2]) if parts[0] == "prompts" and len(parts) > 2 else parts[0]


def parameter_summary(model: nn.Module) -> str:
    """Start-up table of trainable / frozen parameter counts per module, with the total."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        counts[_summary_row(name)][0 if param.requires_grad else 1] += param.numel()
    width = max(len(k) for k in counts) + 2
    lines = [f"{'module':<{width}}{'trainable':>14}{'frozen':>14}"]
    for key, (trainable, frozen) in counts.items():
        lines.append(f"{key:<{width}}{trainable:>14,}{frozen:>14,}")
    total_t, total_f = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    lines.append(f"{'total':<{width}}{total_t:>14,}{total_f:>14,}")
    return "\n".join(lines)


def tempme_configuration(config: TempMeConfig, compressor: nn.Module | None) -> str:
    """The `TempMe Configuration: ...` start-up line: what `config` says, and the compressor's size."""
    size = f" params={sum(p.numel() for p in compressor.parameters()):,}" if compressor is not None else ""
    return f"TempMe Configuration: {config.describe()}{size}"


def format_startup(args: Namespace, run_dir: str, device: torch.device, precision: str, model: nn.Module,
                   datasets: dict[str, Any]) -> str:
    """The start-up block: run, device, how STOP's and CLIP4Clip's flags were read, dataset sizes,
    how val is made, frames loaded, parameter counts, TempMe."""
    lines = [f"run folder {run_dir} | device {device} | precision {precision} | "
             f"processes {distributed.get_world_size()} | seed {args.seed}"]
    if args.lineage:
        lines.append("flags of STOP / CLIP4Clip read as:\n" + "\n".join(f"  {line}" for line in args.lineage))
    for split, dataset in datasets.items():
        if dataset is not None:
            lines.append(f"data {args.dataset} {split}: {len(dataset)} items, {len(dataset.captions)} captions, "
                         f"{len(dataset.video_ids)} videos")
    if datasets.get("val") is not None:
        lines.append(f"model selection (best epoch): {datasets['val'].val_protocol}")
    tempme = TempMeConfig.from_flags(args)
    sampling = (f"{args.feature_framerate} per second (--slice_framepos {args.slice_framepos})"
                if args.feature_framerate is not None else "spread over the whole video")
    lines.append(f"frames loaded per video: {tempme.num_input_frames} at {args.image_size} px, {sampling} | "
                 f"max words {args.max_words}")
    lines.append(parameter_summary(model))
    lines.append(tempme_configuration(tempme, model.tempme_compressor))
    if model.token_merger is not None:
        lines.append("Token merge: " + model.token_merger.describe())
    return "\n".join(lines)
