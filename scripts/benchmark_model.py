"""Cost of the STOP visual path next to plain frozen CLIP on the same frames.

For one video of `--frames` frames (random CLIP of `--arch`, random pixels) it reports
- GFLOPs of the visual path, counted with `torch.utils.flop_counter` (2 per multiply-add)
  with attention forced to the math backend and `nn.MultiheadAttention`'s fast path off
  (fused kernels are invisible to the counter); FFTs, which the counter does not know, are
  counted as 2.5 N log2 N (real) / 5 N log2 N (complex) per transform of N points, and a
  complex batched matmul (the prompts' channel mixing) as 8 FLOPs per multiply-add;
- forward time (eval, no grad) and forward+backward time (train mode, gradient into the
  prompts) next to plain CLIP `encode_image` forward (frozen) and forward+backward (CLIP
  fine-tuned), wall clock on CPU, CUDA events on GPU, median of `--repeats`.

    python scripts/benchmark_model.py --device cpu --threads 2 --frames 12 --arch ViT-B/32

`--table token_merge` instead reports the token-merging rows of docs/token_merge.md side by side
(`TOKEN_MERGE_ROWS`: CLIP, the published TempMe schedule, STOP, STOP + merging, STOP + frame
selection, both): GFLOPs as above (the STOP prompt generator, which runs once per batch and is
cached in evaluation, shown separately), trainable parameters, and eval forward time as a ratio
to the CLIP row, each row timed in alternation with CLIP so the drift of a shared CPU cancels:

    python scripts/benchmark_model.py --table token_merge --device cpu --threads 2 --repeats 3 \
        --json docs/bench_token_merge_cpu.json --txt docs/bench_token_merge_cpu.txt
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import params  # noqa: E402
from engine.factory import model_config  # noqa: E402
from engine.optim import parameter_groups  # noqa: E402
from modules import stop as stop_module  # noqa: E402
from modules.clip import (  # noqa: E402
    CLIP_CONFIGS,
    build_clip,
    normalize_video,  # noqa: E402
    random_clip_state_dict,
)
from modules.factory import build_model  # noqa: E402

aten = torch.ops.aten


def _fft_flops(points: int, batch: int, complex_input: bool) -> int:
    return int(batch * (5.0 if complex_input else 2.5) * points * math.log2(max(points, 2)))


def _r2c(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = math.prod(input_shape[d] for d in dim)
    return _fft_flops(points, math.prod(input_shape) // points, False)


def _c2r(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = math.prod(out_shape[d] for d in dim)
    return _fft_flops(points, math.prod(out_shape) // points, False)


def _c2c(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = math.prod(input_shape[d] for d in dim)
    return _fft_flops(points, math.prod(input_shape) // points, True)


def _bmm(a: torch.Tensor, b: torch.Tensor, *args, out_val=None, **kwargs) -> int:
    """2 FLOPs per multiply-add, 8 for a complex one (4 real multiplies, 4 adds)."""
    batch, m, k = a.shape
    return (8 if a.is_complex() else 2) * batch * m * k * b.shape[-1]


_bmm._get_raw = True  # the counter passes tensors, not shapes: the dtype is needed

# Formulas the counter lacks (FFTs) or gets wrong (complex matmul, as in `fft_conv.fft_conv3d`).
FLOP_FORMULAS = {aten._fft_r2c: _r2c, aten._fft_c2r: _c2r, aten._fft_c2c: _c2c, aten.bmm: _bmm}


def count_flops(fn: Callable[[], object], model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """Total FLOPs of `fn()` (a no-grad forward of `model`) and per-module totals."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused MHA kernels are invisible to the counter
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    # The counter's module tracker rejects views of trainable leaves made under no_grad
    # (the prompt tables), so parameters are frozen while counting.
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for p in trainable:
            p.requires_grad_(True)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def times_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True) -> list[float]:
    """Wall time of each of `repeats` calls of `fn()` in ms, after one warm-up call unless
    `warmup` is False (CUDA events on GPU, `time.perf_counter` on CPU)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return times


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` in ms after one warm-up call."""
    return statistics.median(times_ms(fn, device, repeats))


# Rows of `--table token_merge`: label -> main.py flags (on top of the architecture and --frames).
_SELECTION = ["--use_tempme", "True", "--tempme_type", "simple", "--tempme_compression_ratio", "0.5"]
TOKEN_MERGE_ROWS = {
    "CLIP (meanP)": ["--prompt_mode", "none"],
    "CLIP + frame merge": ["--prompt_mode", "none", "--token_merge", "frame"],
    "published TempMe schedule (CLIP + clip merge)": ["--prompt_mode", "none", "--token_merge", "clip"],
    "STOP": [],
    "STOP + frame merge": ["--token_merge", "frame"],
    "STOP + frame merge, r=4": ["--token_merge", "frame", "--token_merge_r", "4"],
    "STOP + clip merge": ["--token_merge", "clip"],
    "STOP + frame selection (simple 0.5)": _SELECTION,
    "STOP + selection + frame merge": _SELECTION + ["--token_merge", "frame"],
    "STOP + selection + clip merge": _SELECTION + ["--token_merge", "clip"],
}


def token_merge_table(arch: str, frames: int, device: torch.device, repeats: int) -> list[dict]:
    """`TOKEN_MERGE_ROWS` measured on one `frames`-frame video of a random `arch` CLIP: GFLOPs
    (total, of which the prompt generator), trainable parameters, eval forward ms and its median
    ratio to the first row's, timed in alternation with it."""
    resolution = CLIP_CONFIGS[arch]["image_resolution"]
    sd = random_clip_state_dict(arch, seed=0)
    video = torch.randint(0, 256, (1, frames, 3, resolution, resolution), dtype=torch.uint8, device=device)
    mask = torch.ones(1, frames, device=device)
    base = ["--clip_init", "random", "--clip_arch", arch, "--image_size", str(resolution), "--max_frames", str(frames)]

    def forward_of(flags: list[str]) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model(sd, model_config(params.get_args(base + flags))).to(device).eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return model.get_visual_output(video, mask)[0]
        return model, forward

    rows, reference = [], None
    for label, flags in TOKEN_MERGE_ROWS.items():
        model, forward = forward_of(flags)
        total, per_module = count_flops(forward, model)     # first call: the generator runs
        forward()                                            # warm-up
        if reference is None:
            reference = forward
        pairs = [(times_ms(forward, device, 1, warmup=False)[0], times_ms(reference, device, 1, warmup=False)[0])
                 for _ in range(repeats)]
        rows.append({"row": label, "flags": flags, "gflops": total / 1e9,
                     "generator_gflops": per_module.get("TransformerPromptGenerator", 0) / 1e9,
                     "trainable_parameters": sum(p.numel() for g in parameter_groups(model).values() for _, p in g),
                     "forward_ms": statistics.median(t for t, _ in pairs),
                     "time_ratio": statistics.median(t / r for t, r in pairs)})
        print(f"  measured {label}", flush=True)
    return rows


def format_token_merge_table(rows: list[dict]) -> str:
    lines = [f"{'':48}{'GFLOPs':>8}{'of which gen.':>14}{'trainable':>12}{'fwd ms':>9}{'time / CLIP':>13}"]
    for r in rows:
        lines.append(f"{r['row']:48}{r['gflops']:>8.1f}{r['generator_gflops']:>14.1f}{r['trainable_parameters']:>12,}"
                     f"{r['forward_ms']:>9.0f}{r['time_ratio']:>13.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--arch", default="ViT-B/32", choices=sorted(CLIP_CONFIGS))
    parser.add_argument("--skip_backward", action="store_true", help="time the forward passes only")
    parser.add_argument("--direct_conv", action="store_true",
                        help="run the prompts' 3-D convolutions as direct F.conv3d (the reference code's "
                             "formulation) instead of the FFT form, for comparison")
    parser.add_argument("--table", choices=("model", "token_merge"), default="model",
                        help="model: STOP next to plain CLIP; token_merge: the rows of TOKEN_MERGE_ROWS")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--txt", default=None, help="also write the printed table (and the command) to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.table == "token_merge":
        command = "python scripts/benchmark_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
        header = (f"{args.arch}, one {args.frames}-frame video (batch 1), {device} ({torch.get_num_threads()} threads), "
                  f"eval forward; time ratios paired with the CLIP row, median of {args.repeats}")
        rows = token_merge_table(args.arch, args.frames, device, args.repeats)
        text = "\n".join([header, format_token_merge_table(rows)])
        print(text)
        result = {"command": command, "arch": args.arch, "frames": args.frames, "device": str(device),
                  "threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
        if args.txt:
            with open(args.txt, "w") as f:
                f.write(f"$ {command}\n{text}\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return result
    if args.direct_conv:
        stop_module.same_conv3d = lambda x, conv: conv(x.float())

    resolution = CLIP_CONFIGS[args.arch]["image_resolution"]
    sd = random_clip_state_dict(args.arch, seed=0)
    config = params.get_args(["--clip_init", "random", "--clip_arch", args.arch, "--image_size", str(resolution),
                              "--max_frames", str(args.frames)])
    stop = build_model(sd, model_config(config)).to(device)
    clip = build_clip(sd).to(device)
    video = torch.randint(0, 256, (1, args.frames, 3, resolution, resolution), dtype=torch.uint8, device=device)
    mask = torch.ones(1, args.frames, device=device)
    frames = normalize_video(video[0])

    def clip_forward() -> torch.Tensor:
        with torch.no_grad():
            return clip.encode_image(frames)

    def stop_forward() -> torch.Tensor:
        with torch.no_grad():
            return stop.eval().get_visual_output(video, mask)[0]

    def clip_train_step() -> None:
        clip.train().requires_grad_(True)
        clip.encode_image(frames).sum().backward()
        clip.zero_grad(set_to_none=True)

    def stop_train_step() -> None:
        stop.train().get_visual_output(video, mask)[0].sum().backward()
        stop.zero_grad(set_to_none=True)

    clip_flops, _ = count_flops(clip_forward, clip)
    stop_flops, stop_modules = count_flops(stop_forward, stop)
    # get_visual_output is not `forward`, so the counter names its top modules by class.
    parts = {key: stop_modules.get(type(getattr(stop.prompts, key)).__name__, 0)
             for key in ("spatial_prompt", "temporal_prompt", "prompt_generator")}
    parts["prompted ViT"] = stop_flops - sum(parts.values())
    result = {
        "arch": args.arch, "frames": args.frames, "conv": "direct" if args.direct_conv else "fft",
        "device": str(device), "threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for g in parameter_groups(stop).values() for _, p in g),
        "gflops": {"clip": clip_flops / 1e9, "stop": stop_flops / 1e9,
                   **{f"stop.{k}": v / 1e9 for k, v in parts.items()}},
        "ms": {"clip_forward": time_ms(clip_forward, device, args.repeats),
               "stop_forward": time_ms(stop_forward, device, args.repeats)},
    }
    if not args.skip_backward:
        result["ms"]["clip_forward_backward"] = time_ms(clip_train_step, device, args.repeats)
        result["ms"]["stop_forward_backward"] = time_ms(stop_train_step, device, args.repeats)
    ms = result["ms"]
    result["ratios"] = {"gflops": stop_flops / clip_flops, "forward": ms["stop_forward"] / ms["clip_forward"]}
    if not args.skip_backward:
        result["ratios"]["train_vs_frozen_clip_forward"] = ms["stop_forward_backward"] / ms["clip_forward"]
        result["ratios"]["train_vs_clip_finetune"] = ms["stop_forward_backward"] / ms["clip_forward_backward"]

    print(f"{args.arch}, one {args.frames}-frame video, {device} ({result['threads']} threads), "
          f"{result['conv']} prompt convolutions; "
          f"STOP trainable parameters {result['trainable_parameters']:,}")
    print(f"{'':34}{'GFLOPs':>10}{'forward ms':>12}{'fwd+bwd ms':>12}")
    print(f"{'plain CLIP encode_image':34}{clip_flops / 1e9:>10.1f}{ms['clip_forward']:>12.0f}"
          f"{ms.get('clip_forward_backward', float('nan')):>12.0f}")
    print(f"{'STOP visual path':34}{stop_flops / 1e9:>10.1f}{ms['stop_forward']:>12.0f}"
          f"{ms.get('stop_forward_backward', float('nan')):>12.0f}")
    for key, value in parts.items():
        print(f"{'  of which ' + key:34}{value / 1e9:>10.1f}")
    print("ratios STOP / CLIP: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
