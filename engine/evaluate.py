"""Retrieval evaluation: texts and videos encoded separately in batches, similarity in chunks.

Under torchrun every rank encodes its shard (DistributedSampler, which pads the last shard
with repeats); features are all-gathered with their dataset indices and written back by
index, so the padding drops out and the order is the dataset's.
"""
from __future__ import annotations

import time
from argparse import Namespace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloaders import make_loader
from engine import distributed
from engine.interrupt import deferred_ctrl_c, raise_if_ctrl_c
from engine.metrics import compute_dsl_metrics, compute_metrics
from engine.precision import autocast

# Texts per similarity chunk: bounds the [chunk, Nv] block computed on the device at once.
SIM_CHUNK = 1024


def _assemble(local: torch.Tensor, indices: torch.Tensor, total: int) -> torch.Tensor:
    """Rank shards [n_local, ...] with dataset indices [n_local] -> [total, ...] in dataset order."""
    gathered = distributed.all_gather_variable(local)
    where = distributed.all_gather_variable(indices.to(local.device))
    out = local.new_zeros((total,) + tuple(local.shape[1:]))
    out[where] = gathered
    covered = torch.zeros(total, dtype=torch.bool, device=local.device)
    covered[where] = True
    if not covered.all():
        raise RuntimeError(f"evaluation covered {int(covered.sum())} of {total} items")
    return out


def _encode(loader: DataLoader, index_key: str, encode: Callable[[dict], tuple[torch.Tensor, ...]],
            desc: str, quiet: bool) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """Run `encode` over the loader; returns the per-output concatenations, indices, model seconds."""
    outputs: list[list[torch.Tensor]] = []
    indices, seconds = [], 0.0
    with deferred_ctrl_c():
        for batch in tqdm(loader, desc=desc, disable=quiet, dynamic_ncols=True, leave=False):
            raise_if_ctrl_c()
            start = time.perf_counter()
            result = encode(batch)
            if result[0].is_cuda:
                torch.cuda.synchronize(result[0].device)
            seconds += time.perf_counter() - start
            outputs.append([r.float() for r in result])
            indices.append(batch[index_key])
    columns = [torch.cat(col) for col in zip(*outputs)]
    return columns, torch.cat(indices), seconds


def frames_seen(frame_indices: torch.Tensor, mask_out: torch.Tensor, info: dict[str, torch.Tensor] | None
                ) -> torch.Tensor:
    """The file's frame index of every frame that reached CLIP, `[B, T_in]` padded with -1: from the
    loaded frames' `frame_indices [B, T_in]` and, with TempMe, the compressor's `info["indices"]`
    into them (`mask_out [B, T']` marks the frames CLIP saw)."""
    seen = torch.full_like(frame_indices, -1)
    picked = frame_indices if info is None else frame_indices.gather(1, info["indices"].clamp(min=0))
    width = mask_out.shape[1]
    seen[:, :width] = torch.where(mask_out > 0, picked[:, :width], torch.full_like(picked[:, :width], -1))
    return seen


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, args: Namespace, device: torch.device,
             precision: str, details: bool = False) -> dict[str, Any]:
    """Text->video and video->text metrics of `model` (unwrapped, not DDP) on `dataset`.

    `dataset` exposes `num_frames` (T loaded per video), `text_dataset()` (items with input_ids, attention_mask [L],
    caption_index), `video_dataset()` (video uint8 [T, 3, H, W], video_mask [T], video_index,
    video_ok), `captions`, `video_ids`, `text_to_video`. Every rank returns the same dict:
    {"metrics": {"t2v", "v2t"}, "dsl" (with --dsl, else None), "frames_kept" {mean, min, max},
    "frames_loaded", "effective_ratio", "videos_per_s", "texts_per_s", "num_texts",
    "num_videos", "bad_videos"}; with `details` also "similarity" (`[Nt, Nv]` float, CPU) and
    "frames_seen" (`[Nv, T_in]`: the file's frame index of each frame that reached CLIP, -1 padded).
    """
    model.eval()
    quiet = args.no_progress or not distributed.is_main_process()
    num_texts, num_videos = len(dataset.captions), len(dataset.video_ids)

    def encode_texts(batch: dict) -> tuple[torch.Tensor, ...]:
        with autocast(precision, device):
            return (model.get_text_output(batch["input_ids"].to(device), batch["attention_mask"].to(device)),)

    def encode_videos(batch: dict) -> tuple[torch.Tensor, ...]:
        with autocast(precision, device):
            emb, mask_out, info = model.encode_video(batch["video"].to(device), batch["video_mask"].to(device))
        return (emb, mask_out.sum(1), batch["video_mask"].to(device).sum(1), batch["video_ok"].to(device),
                frames_seen(batch["frame_indices"].to(device), mask_out, info))

    text_loader, _ = make_loader(dataset.text_dataset(), args, train=False)
    video_loader, _ = make_loader(dataset.video_dataset(), args, train=False)
    (text_local,), text_idx, text_seconds = _encode(text_loader, "caption_index", encode_texts, "encode texts", quiet)
    video_columns, video_idx, video_seconds = _encode(video_loader, "video_index", encode_videos, "encode videos",
                                                      quiet)
    text_emb = _assemble(text_local, text_idx, num_texts)
    video_emb, kept, real, ok, seen = (_assemble(col, video_idx, num_videos) for col in video_columns)

    sim = torch.cat([model.get_similarity_logits(text_emb[i:i + SIM_CHUNK], video_emb).float().cpu()
                     for i in range(0, num_texts, SIM_CHUNK)])
    text_to_video = torch.as_tensor(dataset.text_to_video, dtype=torch.long)
    extra = {"similarity": sim, "frames_seen": seen.long().cpu()} if details else {}
    return {**extra,
        "metrics": compute_metrics(sim, text_to_video),
        "dsl": compute_dsl_metrics(sim, text_to_video) if args.dsl else None,
        "frames_kept": {"mean": float(kept.mean()), "min": int(kept.min()), "max": int(kept.max())},
        "frames_loaded": dataset.num_frames,
        "effective_ratio": float(kept.sum() / real.sum().clamp(min=1)),
        "videos_per_s": distributed.all_reduce_number(len(video_idx) / max(video_seconds, 1e-9)),
        "texts_per_s": distributed.all_reduce_number(len(text_idx) / max(text_seconds, 1e-9)),
        "num_texts": num_texts, "num_videos": num_videos,
        "bad_videos": int((ok == 0).sum()),
    }
