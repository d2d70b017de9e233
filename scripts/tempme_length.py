"""Frames kept by `--tempme_type adaptive` against video duration, with frame-rate sampling.

Writes mp4 videos of each duration in three contents, each the same content made longer: `still`
(one scene, sensor noise only), `pan` (a camera panning slowly across a texture that never
repeats) and `cuts` (a new still scene every 6 s). Each is read as training and evaluation read it (`VideoReader`:
`--feature_framerate R`, up to `--tempme_max_input_frames` frames, spread evenly beyond) and
passed through a fresh adaptive compressor (the defaults of `TempMeConfig`: 48 frames in, 8 to
16 kept); prints a markdown table of duration -> frames decoded and kept per content and rate.

    python scripts/tempme_length.py                                   # the table in docs/tempme.md
    python scripts/tempme_length.py --durations 2 10 60 --framerates 1 --json outputs/length.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders import synthetic  # noqa: E402
from dataloaders.video_reader import VideoReader  # noqa: E402
from modules.clip import normalize_video  # noqa: E402
from modules.tempme import TempMeConfig, get_tempme_model  # noqa: E402

CONTENTS = ("still", "pan", "cuts")
SOURCE_FPS = 10
SIDE = 64
PAN_SPEED = 8          # pixels per second the camera pans in `pan`
SCENE_SECONDS = 6      # seconds between cuts in `cuts`


def _smooth_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 `[height, width, 3]`: random colours on a 16-px grid, bilinearly interpolated."""
    grid = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    y, x = np.arange(height) / 16, np.arange(width) / 16
    y0, x0 = y.astype(int), x.astype(int)
    wy, wx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.uint8)


def content_frames(content: str, seconds: float, seed: int = 0) -> np.ndarray:
    """uint8 `[F, SIDE, SIDE, 3]` at SOURCE_FPS of `content`; a longer video of a content begins
    with the shorter one: `still` one scene with sensor noise, `pan` a camera panning across a
    texture that never repeats, `cuts` a new still scene every SCENE_SECONDS."""
    count = max(1, round(seconds * SOURCE_FPS))
    rng = np.random.default_rng(seed)
    if content == "pan":
        strip = _smooth_texture(SIDE, SIDE + PAN_SPEED * (count // SOURCE_FPS + 1), rng)
        return np.stack([strip[:, t * PAN_SPEED // SOURCE_FPS:][:, :SIDE] for t in range(count)])
    scene_frames = count if content == "still" else SCENE_SECONDS * SOURCE_FPS
    stills = [synthetic.render((s % 6, s % 4, s % 4, (s // 4) % 4, -1), 1, SIDE, rng)[0][0]
              for s in range(count // scene_frames + 1)]
    frames = np.stack([stills[t // scene_frames] for t in range(count)]).astype(np.float32)
    return np.clip(frames + rng.normal(0, 2, size=frames.shape), 0, 255).astype(np.uint8)


def frames_kept(path: str, compressor: torch.nn.Module, config: TempMeConfig, framerate: int) -> tuple[int, int]:
    """(frames decoded, frames kept) for the video at `path`, read as evaluation reads it."""
    reader = VideoReader(backend="pyav", num_frames=config.num_input_frames, image_size=SIDE, framerate=framerate)
    video, mask = reader.read(path, train=False)
    with torch.no_grad():
        _, _, info = compressor(normalize_video(video[None]), mask[None])
    return int(mask.sum()), int(info["frames_kept"][0])


def measure(durations: list[float], framerates: list[int], seed: int = 0) -> list[dict]:
    """One row per (rate, duration): frames decoded and kept per content."""
    config = TempMeConfig(enabled=True, type="adaptive")
    torch.manual_seed(seed)
    compressor = get_tempme_model(config).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for content in CONTENTS:
            for seconds in durations:
                paths[content, seconds] = str(Path(folder) / f"{content}_{seconds}.mp4")
                synthetic.write_mp4(paths[content, seconds], content_frames(content, seconds, seed), fps=SOURCE_FPS)
        for framerate in framerates:
            for seconds in durations:
                row = {"framerate": framerate, "seconds": seconds}
                for content in CONTENTS:
                    row["decoded"], row[content] = frames_kept(paths[content, seconds], compressor, config, framerate)
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| `--feature_framerate` | duration | frames decoded | kept: " + " | kept: ".join(CONTENTS) + " |",
             "|---|---|---|" + "---|" * len(CONTENTS)]
    for row in rows:
        kept = " | ".join(str(row[content]) for content in CONTENTS)
        lines.append(f"| {row['framerate']} | {row['seconds']:g} s | {row['decoded']} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[2, 5, 10, 20, 30, 60, 180],
                        help="video durations in seconds")
    parser.add_argument("--framerates", type=int, nargs="+", default=[1, 3], help="--feature_framerate values")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    opts = parser.parse_args(argv)
    rows = measure(opts.durations, opts.framerates)
    print(markdown(rows))
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
