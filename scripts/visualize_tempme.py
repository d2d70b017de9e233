"""Contact sheets of what TempMe keeps: one PNG per video.

Every input frame in a grid (in time order), the frames the compressor selects outlined in
green, each frame's score and index under it, the video's first caption on top.

    python scripts/visualize_tempme.py --init_model outputs/run/best.pt --out_dir docs/sheets \
        --num_videos 4 -- --dataset msrvtt --data_path ... --features_path ... \
        --use_tempme True --tempme_type basic

Flags after `--` are main.py's flags describing the model and data (as the run was trained);
without `--init_model` the compressor is freshly initialised (uniform selection).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders import build_dataset  # noqa: E402
from engine.factory import build_trained_model  # noqa: E402
from modules.clip import normalize_video  # noqa: E402
from modules.clip4clip import CLIP4Clip  # noqa: E402
from modules.tokenization import tokenize  # noqa: E402
from params import get_args  # noqa: E402

SELECTED = (40, 200, 60)
LABEL_HEIGHT = 14
CAPTION_LINE = 14


def contact_sheet(frames: torch.Tensor, frame_mask: torch.Tensor, selected: torch.Tensor, scores: torch.Tensor,
                  caption: str, columns: int = 8, border: int = 3) -> Image.Image:
    """frames uint8 `[T, 3, H, W]`, frame_mask `[T]`, selected bool `[T]`, scores `[T]` -> RGB image.

    The grid has `ceil(T_real / columns)` rows of `min(columns, T_real)` cells; each cell is the
    frame with a `border`-pixel frame (green when selected) and a label strip under it.
    """
    real = int(frame_mask.sum())
    if real == 0:
        raise ValueError("the video has no readable frames")
    height, width = frames.shape[-2:]
    cell_w, cell_h = width + 2 * border, height + 2 * border + LABEL_HEIGHT
    cols = min(columns, real)
    rows = -(-real // cols)
    lines = textwrap.wrap(caption, width=max(20, cols * cell_w // 7)) or [""]
    top = len(lines) * CAPTION_LINE + 4
    sheet = Image.new("RGB", (cols * cell_w, top + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * CAPTION_LINE), line, fill=(0, 0, 0), font=font)
    for t in range(real):
        x, y = (t % cols) * cell_w, top + (t // cols) * cell_h
        if selected[t]:
            draw.rectangle([x, y, x + cell_w - 1, y + height + 2 * border - 1], fill=SELECTED)
        image = Image.fromarray(frames[t].permute(1, 2, 0).numpy())
        sheet.paste(image, (x + border, y + border))
        draw.text((x + border, y + height + 2 * border), f"{t}: {scores[t]:.2f}",
                  fill=SELECTED if selected[t] else (90, 90, 90), font=font)
    return sheet


def selection(model: CLIP4Clip, video: torch.Tensor, video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the compressor on one video uint8 `[T, 3, H, W]` -> (selected bool `[T]`, scores `[T]`)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        _, _, info = model.tempme_compressor(normalize_video(video[None].to(device)), video_mask[None].to(device))
    selected = torch.zeros(video.shape[0], dtype=torch.bool)
    kept = info["indices"][0].cpu()
    selected[kept[kept >= 0]] = True
    return selected, info["scores"][0].float().cpu()


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split_at = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init_model", default=None, help="trained checkpoint (main.py's best.pt / latest.pt)")
    parser.add_argument("--out_dir", required=True, help="folder for the PNG files")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--num_videos", type=int, default=4, help="first N videos of the split")
    parser.add_argument("--video_ids", nargs="*", default=None, help="these videos instead of the first N")
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    own = parser.parse_args(argv[:split_at])
    model_args = get_args(argv[split_at + 1:])
    if not model_args.use_tempme:
        parser.error("pass the model flags after '--', including --use_tempme True and --tempme_type")
    return own, model_args


def main(argv: list[str] | None = None) -> list[Path]:
    own, args = parse_args(argv)
    model = build_trained_model(args, own.init_model).to(own.device).eval()
    dataset = build_dataset(args, own.split, tokenize)
    videos = dataset.video_dataset()
    if own.video_ids:
        unknown = sorted(set(own.video_ids) - set(dataset.video_ids))
        if unknown:
            raise SystemExit(f"--video_ids not in the {own.split} split: {unknown}")
        chosen = [dataset.video_ids.index(v) for v in own.video_ids]
    else:
        chosen = list(range(min(own.num_videos, len(videos))))
    out_dir = Path(own.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_caption = {}
    for caption_index, video_index in enumerate(dataset.text_to_video):
        first_caption.setdefault(video_index, dataset.captions[caption_index])
    written = []
    for index in chosen:
        item = videos[index]
        selected, scores = selection(model, item["video"], item["video_mask"])
        sheet = contact_sheet(item["video"], item["video_mask"], selected, scores,
                              first_caption.get(index, ""), columns=own.columns)
        path = out_dir / f"{item['video_id']}.png"
        sheet.save(path)
        written.append(path)
        print(f"{path}: kept {int(selected.sum())} of {int(item['video_mask'].sum())} frames")
    return written


if __name__ == "__main__":
    main()
