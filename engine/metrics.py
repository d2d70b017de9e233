"""Retrieval metrics from a similarity matrix: tie-aware ranks, multi-caption video->text.

Pure functions on tensors (no model, no process group), so they are tested against
hand-computed cases. Ranks are average positions under ties: a query's rank is
`1 + #(others scoring strictly higher) + #(others scoring equal) / 2`, so a constant
similarity matrix never yields R@1 = 100. Work is done in row chunks so that a
10k x 10k matrix needs only a few hundred MB of temporary memory.
"""
from __future__ import annotations

import numpy as np
import torch

RECALL_KS = (1, 5, 10)
# Boolean temporaries per chunk: chunk rows x columns stays around this many elements.
_CHUNK_ELEMENTS = 1 << 24


def _chunk_size(num_columns: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, num_columns))


def text_to_video_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Rank of each caption's own video among all videos.

    sim: [Nt, Nv] text-video scores; text_to_video: [Nt] video index of each caption.
    Returns [Nt] float ranks (1 = best; .5 steps under ties).
    """
    ranks = torch.empty(sim.shape[0], dtype=torch.float64)
    step = _chunk_size(sim.shape[1])
    for start in range(0, sim.shape[0], step):
        rows = sim[start:start + step].float()
        target = text_to_video[start:start + step].to(rows.device)
        positive = rows.gather(1, target[:, None])                      # [c, 1]
        higher = (rows > positive).sum(1)
        equal = (rows == positive).sum(1) - 1                           # the positive itself
        ranks[start:start + step] = (1 + higher + equal / 2).double().cpu()
    return ranks


def video_to_text_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """Rank of each video's best-scoring caption among the captions of OTHER videos.

    sim: [Nt, Nv]; text_to_video: [Nt]. A video's own other captions never push it down,
    so with several captions per video the rank is that of its best caption. Videos without
    any caption are not queries. Returns [number of videos with a caption] float ranks.
    """
    num_videos = sim.shape[1]
    owner = text_to_video.to(sim.device)
    has_caption = torch.bincount(owner, minlength=num_videos) > 0
    ranks = []
    step = _chunk_size(sim.shape[0])
    for start in range(0, num_videos, step):
        video_ids = torch.arange(start, min(start + step, num_videos), device=sim.device)
        cols = sim[:, start:start + step].T.float()                     # [c, Nt]
        own = owner[None, :] == video_ids[:, None]                      # [c, Nt]
        best = cols.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
        higher = ((cols > best) & ~own).sum(1)
        equal = ((cols == best) & ~own).sum(1)
        chunk_ranks = (1 + higher + equal / 2).double().cpu()
        ranks.append(chunk_ranks[has_caption[start:start + step].cpu()])
    return torch.cat(ranks)


def ranks_to_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 in percent (rank <= K), median and mean rank, from [N] ranks."""
    metrics = {f"R{k}": float((ranks <= k).double().mean() * 100) for k in RECALL_KS}
    metrics["MdR"] = float(ranks.quantile(0.5))  # the mean of the two middle ranks when N is even
    metrics["MnR"] = float(ranks.mean())
    return metrics


def compute_metrics(sim: torch.Tensor | np.ndarray,
                    text_to_video: torch.Tensor | np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Text->video and video->text retrieval metrics.

    sim: [Nt, Nv] similarity (any number of captions per video), a tensor or a numpy array (as
    CLIP4Clip's `compute_metrics` takes); text_to_video: [Nt] long, `text_to_video[i]` = index of
    caption i's video; None: caption i belongs to video i (a square matrix, CLIP4Clip's case).
    Returns {"t2v": {R1, R5, R10, MdR, MnR}, "v2t": {...}}.
    """
    sim = torch.as_tensor(sim)
    if text_to_video is None:
        if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"without text_to_video, sim must be square (caption i belongs to video i), "
                             f"got {tuple(sim.shape)}")
        text_to_video = torch.arange(sim.shape[0])
    text_to_video = torch.as_tensor(text_to_video)
    if sim.dim() != 2 or text_to_video.shape != (sim.shape[0],):
        raise ValueError(f"expected sim [Nt, Nv] and text_to_video [Nt], got {tuple(sim.shape)} "
                         f"and {tuple(text_to_video.shape)}")
    text_to_video = text_to_video.long()
    if text_to_video.numel() and (text_to_video.min() < 0 or text_to_video.max() >= sim.shape[1]):
        raise ValueError(f"text_to_video holds video indices outside [0, {sim.shape[1]})")
    return {"t2v": ranks_to_metrics(text_to_video_ranks(sim, text_to_video)),
            "v2t": ranks_to_metrics(video_to_text_ranks(sim, text_to_video))}


def dual_softmax(sim: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual-softmax (DSL) re-ranking: each score weighted by its softmax over the other axis.

    sim: [Nt, Nv] logits (logit_scale * cosine, so temperature 1 matches training).
    Returns (t2v_sim, v2t_sim), both [Nt, Nv]: for t2v each score is weighted by its softmax
    over captions (column), for v2t by its softmax over videos (row). It uses the whole test
    set's statistics, which is why it is reported as a separate row, never as the headline.
    """
    sim = sim.float()
    t2v = sim * torch.softmax(sim / temperature, dim=0)
    v2t = sim * torch.softmax(sim / temperature, dim=1)
    return t2v, v2t


def compute_dsl_metrics(sim: torch.Tensor, text_to_video: torch.Tensor,
                        temperature: float = 1.0) -> dict[str, dict[str, float]]:
    """`compute_metrics` after DSL re-ranking (separate row, same keys)."""
    t2v_sim, v2t_sim = dual_softmax(sim, temperature)
    text_to_video = text_to_video.long()
    return {"t2v": ranks_to_metrics(text_to_video_ranks(t2v_sim, text_to_video)),
            "v2t": ranks_to_metrics(video_to_text_ranks(v2t_sim, text_to_video))}
