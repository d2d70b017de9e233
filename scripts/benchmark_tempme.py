"""Visual encode cost with and without TempMe, all configurations side by side in one run.

For `none` and each compressor over a grid of input/output frame counts, measures per video:
total visual encode time (compressor + STOP spatial prompt + prompted ViT, i.e.
`CLIP4Clip.get_visual_output` on normalised frames), the compressor's time alone, frames kept,
GFLOPs (`scripts.benchmark_model.count_flops`: `torch.utils.flop_counter` with attention on the
math kernel and the prompts' FFTs counted) and, on CUDA, peak memory: what the encode allocates
at its peak beyond what was allocated before it (weights and input excluded). Warm-up calls are
excluded; times are medians over `--repeats`.

    python scripts/benchmark_tempme.py --device cpu --repeats 5 --json outputs/bench_tempme.json
    python scripts/benchmark_tempme.py --device cuda --batch_size 32 --precision amp_bf16

Each row is compared with the `none` row that loads the same number of input frames (columns
time/none, flops/none; comp share is the compressor's time over that row's encode time). A
shared CPU drifts by 10-20% within minutes, so rows are not timed in separate windows: each
compressed row's encode is timed in alternation with its `none` row, and its `encode_ms` is the
median of those paired ratios times the `none` row's median.

`--train` times the engine's training step instead (`engine.train.model_outputs`, the loss,
backward; per video): STOP on every input frame (`none`) against TempMe rows, whose step runs the
frame teacher on its share of the batch (`--tempme_teacher_share` of the videos embedded frame by
frame; at the default batch of 4, one video). Default rows: simple keeping 6 of 12, basic 48 -> 8,
and their `none` references.

    python scripts/benchmark_tempme.py --train --device cpu --repeats 3 --json outputs/bench_train.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.factory import build_loss, model_config  # noqa: E402
from engine.train import model_outputs  # noqa: E402
from modules.clip import load_clip_state_dict, random_clip_state_dict  # noqa: E402
from modules.clip4clip import CLIP4Clip  # noqa: E402
from modules.factory import build_model  # noqa: E402
from params import get_args  # noqa: E402
from scripts.benchmark_model import count_flops, time_ms, times_ms  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One benchmark row: a TempMe type and its frame counts. `ratio` is the fraction kept."""
    type: str
    frames_in: int
    ratio: float = 1.0
    frames_out: int | None = None      # basic: fixed output; adaptive: max output
    min_frames_out: int | None = None  # adaptive only

    def flags(self) -> list[str]:
        if self.type == "none":
            return ["--max_frames", str(self.frames_in)]
        common = ["--use_tempme", "True", "--tempme_type", self.type]
        if self.type == "simple":
            return common + ["--max_frames", str(self.frames_in), "--tempme_compression_ratio", str(self.ratio)]
        if self.type == "basic":
            return common + ["--max_frames", str(self.frames_out), "--tempme_input_frames", str(self.frames_in),
                             "--tempme_output_frames", str(self.frames_out)]
        return common + ["--max_frames", str(self.frames_out), "--tempme_max_input_frames", str(self.frames_in),
                         "--tempme_min_output_frames", str(self.min_frames_out),
                         "--tempme_max_output_frames", str(self.frames_out)]


DEFAULT_GRID = (
    [Setting("none", n) for n in (12, 32, 48)]
    + [Setting("simple", n, r) for n in (12, 32) for r in (1.0, 0.75, 0.5, 0.25)]
    + [Setting("basic", 32, 12 / 32, 12), Setting("basic", 48, 8 / 48, 8),
       Setting("adaptive", 48, 1.0, 16, 8)]
)
TRAIN_GRID = (Setting("none", 12), Setting("simple", 12, 0.5), Setting("none", 48), Setting("basic", 48, 8 / 48, 8))


@dataclass
class Row:
    type: str
    ratio: float
    frames_in: int
    frames_out: float
    encode_ms: float
    compressor_ms: float
    gflops: float
    peak_mem_mb: float | None


def benchmark_video(batch: int, frames: int, size: int, device: torch.device) -> torch.Tensor:
    """Normalised-range frames `[B, T, 3, size, size]` of a square moving over a textured
    background, so content-dependent compressors see real motion (not white noise)."""
    gen = torch.Generator().manual_seed(0)
    background = torch.rand(batch, 1, 3, size, size, generator=gen) * 0.5
    video = background.repeat(1, frames, 1, 1, 1)
    side = size // 4
    for t in range(frames):
        x = int((size - side) * t / max(frames - 1, 1))
        video[:, t, :, size // 3:size // 3 + side, x:x + side] = 1.5
    return video.to(device)


@dataclass
class Encoder:
    """One built configuration: its model and the two calls that are timed."""
    model: CLIP4Clip
    encode: Callable[[], torch.Tensor]  # frames -> frame mask after TempMe (full visual encode)
    compress: Callable[[], object]      # TempMe alone


def build_encoder(setting: Setting, clip_state: dict[str, torch.Tensor], base_flags: list[str], batch: int,
                  device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager]) -> Encoder:
    config = get_args(base_flags + setting.flags())
    # Inference only; parameters without grad also keep FlopCounterMode's module hooks quiet.
    model = build_model(clip_state, model_config(config)).to(device).eval().requires_grad_(False)
    video = benchmark_video(batch, setting.frames_in, config.image_size, device)
    mask = torch.ones(batch, setting.frames_in, dtype=torch.long, device=device)

    def encode() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return model.get_visual_output(video, mask)[1]

    def compress() -> object:
        with torch.no_grad(), autocast():
            return model.tempme_compressor(video, mask)

    return Encoder(model, encode, compress)


def measure(setting: Setting, encoder: Encoder, batch: int, repeats: int, device: torch.device,
            reference: tuple[Callable[[], object], float] | None = None) -> Row:
    """Row of `setting`. With `reference` (the `none` encode of the same input and its median ms
    per video), the encode is timed in alternation with it and reported as the median of the
    paired time ratios times the reference's ms, so machine-speed drift between rows cancels out."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
    frames_out = encoder.encode().float().sum(1).mean().item()  # also the warm-up call
    peak = (torch.cuda.max_memory_allocated(device) - allocated) / 2 ** 20 / batch if device.type == "cuda" else None
    if reference is None:
        encode_ms = time_ms(encoder.encode, device, repeats) / batch
    else:
        reference_encode, reference_ms = reference
        ratios = [times_ms(encoder.encode, device, 1, warmup=False)[0]
                  / times_ms(reference_encode, device, 1, warmup=False)[0] for _ in range(repeats)]
        encode_ms = statistics.median(ratios) * reference_ms
    compressor_ms = time_ms(encoder.compress, device, repeats) / batch if encoder.model.tempme_compressor is not None else 0.0
    gflops = count_flops(encoder.encode, encoder.model)[0] / 1e9 / batch
    return Row(setting.type, setting.ratio, setting.frames_in, frames_out, encode_ms, compressor_ms, gflops, peak)


@dataclass
class TrainRow:
    type: str
    ratio: float
    frames_in: int
    frames_out: float
    step_ms: float         # per video: the whole training step (forward, teacher, loss, backward)
    taught: int            # videos of the batch whose every input frame the teacher embeds
    step_vs_none: float    # median paired ratio to STOP's step on every input frame


@dataclass
class Trainer:
    """One built configuration in train mode: the training step as the engine takes it."""
    step: Callable[[], torch.Tensor]          # returns the frame mask after TempMe
    taught: int


def build_trainer(setting: Setting, clip_state: dict[str, torch.Tensor], base_flags: list[str], batch: int,
                  device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager]) -> Trainer:
    """The engine's step (`engine.train.model_outputs`, the loss, backward), so a TempMe row's
    teacher runs inside it on its share of the batch."""
    config = get_args(base_flags + setting.flags())
    model = build_model(clip_state, model_config(config)).to(device).train()
    loss_fn = build_loss(config)
    video = benchmark_video(batch, setting.frames_in, config.image_size, device)
    mask = torch.ones(batch, setting.frames_in, dtype=torch.long, device=device)
    ids = torch.zeros(batch, config.max_words, dtype=torch.long, device=device)
    ids[:, 0], ids[:, 1:9], ids[:, 9] = 49406, torch.arange(400, 408, device=device), 49407

    def step() -> torch.Tensor:
        with autocast():
            outputs = model_outputs(model, loss_fn, [ids, (ids > 0).long(), video, mask])
            loss = loss_fn(outputs)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return outputs["video_mask"]

    return Trainer(step, loss_fn.config.taught_videos(batch))


def measure_train(setting: Setting, trainer: Trainer, batch: int, repeats: int, device: torch.device,
                  reference: tuple[Callable[[], object], float] | None) -> TrainRow:
    """Train row of `setting`: each repeat times the step in alternation with the reference step,
    so the ratio is paired; ms are per video."""
    frames_out = trainer.step().float().sum(1).mean().item()  # also the warm-up call
    if reference is None:
        step_ms = time_ms(trainer.step, device, repeats) / batch
        return TrainRow(setting.type, setting.ratio, setting.frames_in, frames_out, step_ms, trainer.taught, 1.0)
    reference_step, reference_ms = reference
    ratios = [times_ms(trainer.step, device, 1, warmup=False)[0]
              / times_ms(reference_step, device, 1, warmup=False)[0] for _ in range(repeats)]
    ratio = statistics.median(ratios)
    return TrainRow(setting.type, setting.ratio, setting.frames_in, frames_out, ratio * reference_ms, trainer.taught,
                    ratio)


def print_train_table(rows: list[TrainRow]) -> None:
    header = f"{'type':9}{'ratio':>7}{'in':>5}{'out':>7}{'step ms':>11}{'taught':>8}{'step/none':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.type:9}{r.ratio:>7.3f}{r.frames_in:>5}{r.frames_out:>7.2f}{r.step_ms:>11.1f}{r.taught:>8}"
              f"{r.step_vs_none:>11.3f}")


def print_table(rows: list[Row]) -> None:
    baseline = {r.frames_in: r for r in rows if r.type == "none"}
    header = (f"{'type':9}{'ratio':>7}{'in':>5}{'out':>7}{'encode ms':>11}{'comp ms':>9}{'GFLOPs':>9}"
              f"{'peak MB':>9}{'time/none':>10}{'flops/none':>11}{'comp share':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        base = baseline.get(r.frames_in)
        ratios = (f"{r.encode_ms / base.encode_ms:>10.3f}{r.gflops / base.gflops:>11.3f}"
                  f"{r.compressor_ms / base.encode_ms:>11.2%}") if base else ""
        peak = f"{r.peak_mem_mb:>9.0f}" if r.peak_mem_mb is not None else f"{'-':>9}"
        print(f"{r.type:9}{r.ratio:>7.3f}{r.frames_in:>5}{r.frames_out:>7.2f}{r.encode_ms:>11.1f}"
              f"{r.compressor_ms:>9.2f}{r.gflops:>9.1f}{peak}{ratios}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train", action="store_true",
                        help="time training steps (forward + backward + teacher) instead of the visual encode")
    parser.add_argument("--weights", default=None, help="CLIP weights file (default: random CLIP of --arch)")
    parser.add_argument("--arch", default="ViT-B/32", help="random CLIP size when --weights is not given")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="videos per call (default: 1; with --train 4, where the teacher's share of 0.25 is one "
                             "whole video)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("amp_bf16", "amp_fp16", "fp32"), default="amp_bf16",
                        help="autocast dtype on CUDA; CPU always runs fp32")
    parser.add_argument("--types", nargs="+", default=["none", "simple", "basic", "adaptive"],
                        help="restrict the grid to these types")
    parser.add_argument("--max_input_frames", type=int, default=48, help="skip grid rows loading more frames")
    parser.add_argument("--json", default=None, help="write the rows as a JSON list to this path")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further main.py flags for the model (e.g. --prompt_mode none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row] | list[TrainRow]:
    args = parse_args(argv)
    args.batch_size = args.batch_size or (4 if args.train else 1)
    device = torch.device(args.device)
    if args.weights:
        clip_state = load_clip_state_dict(args.weights)
    else:
        clip_state = random_clip_state_dict(args.arch, seed=0)
    resolution = round((clip_state["visual.positional_embedding"].shape[0] - 1) ** 0.5) \
        * clip_state["visual.conv1.weight"].shape[-1]
    base_flags = ["--image_size", str(resolution)] + args.extra
    use_amp = device.type == "cuda" and args.precision != "fp32"
    dtype = torch.bfloat16 if args.precision == "amp_bf16" else torch.float16
    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if use_amp else contextlib.nullcontext()

    grid = [s for s in (TRAIN_GRID if args.train else DEFAULT_GRID)
            if s.type in args.types and s.frames_in <= args.max_input_frames]
    print(f"device={device} batch={args.batch_size} repeats={args.repeats} mode={'train' if args.train else 'encode'} "
          f"precision={args.precision if use_amp else 'fp32'} weights={args.weights or 'random ' + args.arch} "
          f"threads={torch.get_num_threads()}"
          + (f" gpu={torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""), flush=True)
    build, measure_row = (build_trainer, measure_train) if args.train else (build_encoder, measure)
    rows = []
    references: dict[int, tuple[Callable[[], object], float]] = {}  # frames_in -> `none` call, its ms/video
    for setting in grid:
        built = build(setting, clip_state, base_flags, args.batch_size, device, autocast)
        row = measure_row(setting, built, args.batch_size, args.repeats, device, references.get(setting.frames_in))
        if setting.type == "none":
            references[setting.frames_in] = (built.step if args.train else built.encode,
                                             row.step_ms if args.train else row.encode_ms)
        rows.append(row)
        print(f"  measured {setting.type} in={setting.frames_in} ratio={setting.ratio:.3f}", flush=True)
    (print_train_table if args.train else print_table)(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


if __name__ == "__main__":
    main()
