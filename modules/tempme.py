"""TempMe: learned frame compressors that run on the raw video before CLIP.

Every compressor maps `(video [B, T_in, C, H, W], video_mask [B, T_in])` to
`(video_out [B, T_out, C, H, W], mask_out [B, T_out], info)`:

- `video_out` holds real input frames (hard selection: in eval they are bit-identical copies),
  in temporal order, then zero frames with mask 0 when a video has fewer real frames than the
  batch's T_out. Padded input frames are never chosen.
- `info["indices"]` LongTensor `[B, T_out]`: source frame of each output frame, -1 for padding.
- `info["scores"]` `[B, T_in]`: per-frame importance (learned part + coverage prior), with
  gradient, so an auxiliary loss (`modules.loss.frame_score_loss`)
  can supervise frames that were not selected; padded input frames get `PADDED_SCORE`.
- `info["probs"]` `[B, T_in]`: selection probability of every input frame (with gradient);
  the gate of a selected frame is built from it.
- `info["frames_kept"]` LongTensor `[B]`: number of real output frames.

Design choices shared by the three types:

- **Cheap features.** Frames are average-pooled to `pool_size`² (32² by default) and stacked with
  their difference from the mean of their temporal neighbours (a brief event shows up as a
  spike there); three stride-2 convolutions and two change scalars give one feature per frame.
  That is ~3M multiply-adds per frame against ~4.4G for a ViT-B/32 frame.
- **Neutral start.** The layer producing the learned scores is zero-initialised and a fixed
  coverage prior is added: minus the distance (in units of the sampling stride) of each real
  frame to the nearest segment centre `uniform_frame_indices` would sample. A fresh
  compressor therefore picks exactly the uniform samples of the real frames (the indices the
  data loader's evaluation sampling would choose for that count), so adding TempMe
  to a trained model starts from its uniform-sampling baseline.
- **Gradient: straight-through gate, not a differentiable top-k.** Each selected frame is
  multiplied by `1 + (p - p.detach())`, where `p` is its selection probability. The forward
  value is exactly 1, so CLIP sees the true frames in training too (a relaxed top-k would feed
  CLIP blends of frames that never occur at test time, and costs CLIP passes on every frame),
  while `dL/dp = <dL/dframe, frame>` tells the scorer whether the retrieval loss wants more
  or less of that frame. Frames that were not selected get no signal this way; an auxiliary
  loss on `info["scores"]` covers them.
- Selection is identical in train and eval (only the gate differs) and deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPME_TYPES = ("simple", "basic", "adaptive")
PADDED_SCORE = -1e4  # info["scores"] of padded input frames: finite, so losses over scores stay finite


def uniform_frame_indices(num_frames: int | torch.Tensor, num_samples: int | torch.Tensor,
                          width: int | None = None) -> torch.Tensor:
    """Uniform temporal samples, exactly as the data loader's evaluation sampling picks them.

    Sample j of k over n frames is the centre `(start + end - 1) // 2` of the segment
    `[j*n//k, (j+1)*n//k)` (`dataloaders.video_reader.sample_frame_indices`, vectorised).
    `num_frames`, `num_samples`: ints or LongTensors `[B]` with `num_samples <= num_frames`.
    Returns LongTensor `[width]` (ints) or `[B, width]`, -1 for `j >= num_samples`;
    `width` defaults to the largest `num_samples`.
    """
    n = torch.as_tensor(num_frames, dtype=torch.long)
    k = torch.as_tensor(num_samples, dtype=torch.long, device=n.device)
    if width is None:
        width = int(k.max()) if k.numel() else 0
    j = torch.arange(width, device=n.device)
    n, k_safe = n[..., None], k.clamp(min=1)[..., None]
    centres = (j * n // k_safe + (j + 1) * n // k_safe - 1) // 2
    return torch.where(j < k[..., None], centres, torch.full_like(centres, -1))


def _real_rank(real: torch.Tensor) -> torch.Tensor:
    """Position of each frame among the real frames of its video, `[B, T]` (meaningless where padded)."""
    return real.long().cumsum(1) - 1


def _coverage_prior(real: torch.Tensor, k: torch.Tensor, centres_width: int, scale: float) -> torch.Tensor:
    """Distance prior `[B, T, W]`: -scale * |rank of frame - uniform centre j| / stride, for k samples.

    Centre j >= k[b] is unused and gives -inf. `real` `[B, T]` bool, `k` `[B]` (<= real frames).
    """
    n = real.sum(1)
    centres = uniform_frame_indices(n, k, centres_width)  # [B, W]
    dist = (_real_rank(real)[:, :, None] - centres[:, None, :]).abs().float()
    stride = n.float() / k.clamp(min=1).float()
    prior = -scale * dist / stride.clamp(min=1e-6)[:, None, None]
    return prior.masked_fill(centres[:, None, :] < 0, float("-inf"))


def _neighbour_indices(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the previous and next real frame of every frame, `[B, T]` each (itself when none)."""
    B, T = real.shape
    t = torch.arange(T, device=real.device).expand(B, T)
    last_real = torch.where(real, t, torch.full_like(t, -1)).cummax(1).values
    prev = torch.cat([torch.full_like(t[:, :1], -1), last_real[:, :-1]], 1)
    next_real = torch.where(real, t, torch.full_like(t, T)).flip(1).cummin(1).values.flip(1)
    nxt = torch.cat([next_real[:, 1:], torch.full_like(t[:, :1], T)], 1)
    prev = torch.where((prev >= 0) & real, prev, t)
    nxt = torch.where((nxt < T) & real, nxt, t)
    return prev, nxt


def _num_heads(hidden_dim: int) -> int:
    return 4 if hidden_dim % 4 == 0 else 1


class FrameEncoder(nn.Module):
    """Cheap per-frame features from pooled frames.

    Input `video [B, T, C, H, W]`, `real [B, T]` bool. Returns features `[B, T, hidden_dim]` and
    `change [B, T]`: mean absolute difference of each pooled frame to the previous real frame
    (0 for the first real frame and padded frames), in normalised pixel units.
    """

    def __init__(self, hidden_dim: int, pool_size: int = 32, width: int = 32, in_channels: int = 3):
        super().__init__()
        self.pool_size = pool_size
        self.cnn = nn.Sequential(
            nn.Conv2d(2 * in_channels, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(4 * width + 2, hidden_dim)

    def forward(self, video: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = video.shape[:3]
        x = F.adaptive_avg_pool2d(video.flatten(0, 1).float(), self.pool_size)
        x = x.view(B, T, C, self.pool_size, self.pool_size)
        prev_idx, next_idx = _neighbour_indices(real)
        batch = torch.arange(B, device=video.device)[:, None]
        prev, nxt = x[batch, prev_idx], x[batch, next_idx]
        change_prev = (x - prev).abs().mean((2, 3, 4))
        change_next = (nxt - x).abs().mean((2, 3, 4))
        spike = x - 0.5 * (prev + nxt)  # non-zero where a frame differs from both neighbours
        h = self.cnn(torch.cat([x, spike], 2).flatten(0, 1)).view(B, T, -1)
        feats = self.proj(torch.cat([h, change_prev[..., None], change_next[..., None]], -1))
        return feats, change_prev


def _zero_init(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _gather_frames(video: torch.Tensor, video_mask: torch.Tensor, indices: torch.Tensor,
                   gate_probs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the selected frames (`indices [B, K]`, -1 = padding) into `[B, K, C, H, W]` + mask `[B, K]`.

    With `gate_probs [B, K]` (training) each frame is multiplied by `1 + (p - p.detach())`,
    which is exactly 1 in value, so the frames stay bit-identical while `p` gets a gradient.
    """
    B, T = video_mask.shape
    valid = indices >= 0
    flat = (indices.clamp(min=0) + T * torch.arange(B, device=indices.device)[:, None]).flatten()
    out = video.flatten(0, 1).index_select(0, flat).view(*indices.shape, *video.shape[2:])
    if gate_probs is not None:
        gate = 1 + (gate_probs - gate_probs.detach())
        out = out * gate.to(out.dtype)[..., None, None, None]
    out.masked_fill_(~valid[..., None, None, None], 0)  # `out` is a fresh tensor: no extra copy
    return out, valid.to(video_mask.dtype)


def _top_k_in_time(scores: torch.Tensor, real: torch.Tensor, k: torch.Tensor,
                   width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k[b] best real frames of each video, sorted in time and padded to `width`.

    `scores [B, T]`, `real [B, T]` bool, `k [B]` (<= real frames, <= width <= T).
    Returns `indices [B, width]` (-1 padding), selection probabilities `[B, T]` (sigmoid of the
    score's margin over the detached boundary between the k-th and (k+1)-th best frame, 0 for
    padded frames) and each frame's score rank `[B, T]` (0 = best).
    """
    B, T = scores.shape
    n = real.sum(1)
    masked = scores.masked_fill(~real, float("-inf"))
    sorted_scores, order = masked.detach().sort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=scores.device).expand(B, T))

    keep = torch.arange(width, device=scores.device) < k[:, None]
    kept = torch.where(keep, order[:, :width], torch.full_like(order[:, :width], T)).sort(-1).values
    indices = torch.where(kept < T, kept, torch.full_like(kept, -1))

    last_kept = sorted_scores.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    first_dropped = sorted_scores.gather(1, k.clamp(max=T - 1)[:, None]).squeeze(1)
    first_dropped = torch.where(k < n, first_dropped, last_kept - 2.0)  # all kept: fixed margin
    boundary = torch.where(n > 0, 0.5 * (last_kept + first_dropped), torch.zeros_like(last_kept))
    probs = torch.sigmoid(scores - boundary[:, None]).masked_fill(~real, 0.0)
    return indices, probs, rank


def _picked(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`values [B, T]` at `indices [B, K]` (-1 reads frame 0; those outputs are masked anyway)."""
    return values.gather(1, indices.clamp(min=0))


class _TempMeBase(nn.Module):
    """Attributes shared by every compressor: `input_frames` (frames it is built for) and
    `output_frames` (most frames it returns)."""

    input_frames: int
    output_frames: int

    def no_weight_decay(self) -> set[str]:
        """Names of position/query tables that the optimiser should not decay."""
        return set()

    def _select(self, video: torch.Tensor, video_mask: torch.Tensor, indices: torch.Tensor,
                gate_probs: torch.Tensor, scores: torch.Tensor, probs: torch.Tensor, frames_kept: torch.Tensor,
                **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The `forward` contract's return value, built the same way for every type: the frames
        at `indices [B, K]` (gated by `gate_probs [B, K]` in training), their mask, and `info`
        (`scores [B, T]` with padded frames at `PADDED_SCORE`, `probs`, `frames_kept`, `extra`)."""
        video_out, mask_out = _gather_frames(video, video_mask, indices, gate_probs if self.training else None)
        info = {"indices": indices, "scores": scores.masked_fill(video_mask <= 0, PADDED_SCORE),
                "probs": probs, "frames_kept": frames_kept, **extra}
        return video_out, mask_out, info


class _FrameScorer(nn.Module):
    """Per-frame features -> one temporal self-attention layer -> zero-initialised score head.

    Returns learned scores `[B, T]` (float32), contextual features `[B, T, D]` and `change [B, T]`.
    """

    def __init__(self, hidden_dim: int, pool_size: int):
        super().__init__()
        self.frames = FrameEncoder(hidden_dim, pool_size)
        self.context = nn.TransformerEncoderLayer(
            hidden_dim, _num_heads(hidden_dim), 2 * hidden_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = _zero_init(nn.Linear(hidden_dim, 1))

    def forward(self, video: torch.Tensor, real: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, change = self.frames(video, real)
        # A video without real frames would give an all-masked attention row (NaN); its
        # scores are never used, so let it attend to everything.
        key_padding = ~real & real.any(1, keepdim=True)
        ctx = self.context(feats, src_key_padding_mask=key_padding)
        return self.head(self.norm(ctx)).squeeze(-1).float(), ctx, change


class SimpleTempMe(_TempMeBase):
    """`--tempme_type simple`: score every frame, keep T_out = max(1, round(T_in * ratio)) best.

    Scores are a CNN feature per frame, one temporal self-attention layer and a linear head,
    plus the uniform-coverage prior for T_out samples. Videos with fewer real frames than
    T_out keep all of them. `forward` contract: see the module docstring.
    """

    def __init__(self, input_frames: int, compression_ratio: float, hidden_dim: int,
                 pool_size: int = 32, prior_scale: float = 1.0):
        super().__init__()
        self.compression_ratio = compression_ratio
        self.input_frames = input_frames
        self.output_frames = self.num_output_frames(input_frames)
        self.prior_scale = prior_scale
        self.scorer = _FrameScorer(hidden_dim, pool_size)

    def num_output_frames(self, num_input_frames: int) -> int:
        """T_out for a clip of `num_input_frames` frames."""
        return max(1, round(num_input_frames * self.compression_ratio))

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        real = video_mask > 0
        t_out = self.num_output_frames(video.shape[1])
        k = real.sum(1).clamp(max=t_out)
        learned, _, _ = self.scorer(video, real)
        scores = learned + _coverage_prior(real, k, t_out, self.prior_scale).amax(-1)
        indices, probs, _ = _top_k_in_time(scores, real, k, t_out)
        return self._select(video, video_mask, indices, _picked(probs, indices), scores, probs, k)


class TempMeCompressor(_TempMeBase):
    """`--tempme_type basic`: `output_frames` learnable queries each pick one distinct frame.

    Frame features + a learnable temporal position table go through `num_layers` transformer
    encoder layers. Query j's logit for frame t is `query_j . key_t / sqrt(D)` (key projection
    zero-initialised) plus a coverage prior peaking at the j-th uniform sample of the real
    frames; queries are initialised to the position embedding of that sample. Queries pick
    greedily in order, each taking the argmax over frames not yet taken; picks are sorted in
    time. The gate probability of a pick is the picking query's softmax over the frames
    available to it.
    """

    def __init__(self, input_frames: int, output_frames: int, hidden_dim: int,
                 num_layers: int, pool_size: int = 32, prior_scale: float = 1.0):
        super().__init__()
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.prior_scale = prior_scale
        self.frames = FrameEncoder(hidden_dim, pool_size)
        self.pos_embed = nn.Parameter(_sinusoid_table(input_frames, hidden_dim))
        layer = nn.TransformerEncoderLayer(
            hidden_dim, _num_heads(hidden_dim), 2 * hidden_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.key = _zero_init(nn.Linear(hidden_dim, hidden_dim))
        uniform = uniform_frame_indices(input_frames, output_frames)
        self.queries = nn.Parameter(self.pos_embed.detach()[uniform].clone())

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "queries"}

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        B, T = video_mask.shape
        if T > self.input_frames:
            raise ValueError(f"TempMeCompressor got {T} frames per video but was built for at most "
                             f"{self.input_frames}: raise --tempme_input_frames or load fewer frames")
        real = video_mask > 0
        J = self.output_frames
        k = real.sum(1).clamp(max=J)
        feats, _ = self.frames(video, real)
        key_padding = ~real & real.any(1, keepdim=True)  # see _FrameScorer
        enc = self.encoder(feats + self.pos_embed[:T], src_key_padding_mask=key_padding)
        keys = self.key(self.norm(enc))
        learned = torch.einsum("jd,btd->bjt", self.queries, keys).float() / math.sqrt(keys.shape[-1])
        logits = learned + _coverage_prior(real, k, J, self.prior_scale).transpose(1, 2)  # [B, J, T]

        available = real.clone()
        picks, pick_probs, query_probs = [], [], []
        for j in range(J):
            active = j < k
            lj = logits[:, j].masked_fill(~available, float("-inf"))
            lj = torch.where(active[:, None], lj, torch.zeros_like(lj))  # inactive: no all -inf rows
            pj = lj.softmax(-1)
            idx = lj.detach().argmax(-1)
            picks.append(torch.where(active, idx, torch.full_like(idx, -1)))
            pick_probs.append(pj.gather(1, idx[:, None]).squeeze(1))
            query_probs.append(pj * active[:, None])
            available = available & ~(F.one_hot(idx, T).bool() & active[:, None])
        picks_t = torch.stack(picks, 1)
        order = torch.where(picks_t >= 0, picks_t, torch.full_like(picks_t, T)).argsort(-1)
        indices = picks_t.gather(1, order)
        gate_probs = torch.stack(pick_probs, 1).gather(1, order)

        active_queries = (torch.arange(J, device=k.device) < k[:, None])[:, :, None]
        scores = logits.masked_fill(~active_queries, float("-inf")).amax(1)
        probs = torch.stack(query_probs, 1).sum(1).clamp(max=1.0).masked_fill(~real, 0.0)
        return self._select(video, video_mask, indices, gate_probs, scores, probs, k)


def _sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position table `[length, dim]` used to initialise position embeddings."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class AdaptiveTempMe(_TempMeBase):
    """`--tempme_type adaptive`: keep a content-dependent number of frames per video.

    The count comes from frame-change statistics that need no training: the consecutive
    real-frame pairs whose mean absolute pooled-pixel change exceeds a threshold (soft count,
    sigmoid in log space), as a share s of the T - 1 pairs of a full input of T frames, give
    `k = min + (max - min) * s`, rounded. So a clip that keeps changing keeps more frames than a
    near-static one out of the box, and a video filling fewer of the T inputs (frame-rate sampling
    of a short video) has fewer pairs to count and keeps fewer than a longer one of the same content. A
    zero-initialised head on the mean frame feature shifts the log-threshold per video, which
    is how learning refines the count; it learns through the gate of the selected frames
    (`p * sigmoid(k_soft - rank - 0.5)`, i.e. the chance the frame's score rank is within the
    count). Which frames are kept follows `SimpleTempMe` (scores + coverage prior for k
    samples). The batch is padded to its largest count with mask 0. `info["soft_frames_kept"]`
    `[B]` carries the count with gradient, e.g. for a frame-budget loss.
    """

    def __init__(self, input_frames: int, min_output_frames: int, max_output_frames: int,
                 hidden_dim: int, pool_size: int = 32, change_threshold: float = 0.1,
                 prior_scale: float = 1.0):
        super().__init__()
        self.input_frames = input_frames
        self.min_output_frames = min_output_frames
        self.output_frames = max_output_frames
        self.log_change_threshold = math.log(change_threshold)
        self.prior_scale = prior_scale
        self.scorer = _FrameScorer(hidden_dim, pool_size)
        self.count_head = _zero_init(nn.Linear(hidden_dim, 1))

    def _soft_count(self, feats: torch.Tensor, change: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Continuous frame count `[B]` in [min, max] from `change [B, T]` and features `[B, T, D]`:
        significant changes between consecutive real frames over the T - 1 pairs of a full input."""
        n = real.sum(1)
        mean_feat = (feats * real[..., None]).sum(1) / n.clamp(min=1)[:, None]
        log_threshold = self.log_change_threshold + self.count_head(mean_feat).squeeze(-1).float()
        significant = torch.sigmoid(4.0 * (torch.log(change + 1e-6) - log_threshold[:, None]))
        has_prev = real & (_real_rank(real) > 0)
        share = (significant * has_prev).sum(1) / max(1, real.shape[1] - 1)
        return self.min_output_frames + (self.output_frames - self.min_output_frames) * share

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        real = video_mask > 0
        learned, feats, change = self.scorer(video, real)
        soft_count = self._soft_count(feats, change, real)
        count = torch.floor(soft_count.detach() + 0.5).long()
        k = torch.minimum(count.clamp(self.min_output_frames, self.output_frames), real.sum(1))
        width = max(1, int(k.max()))
        scores = learned + _coverage_prior(real, k, width, self.prior_scale).amax(-1)
        indices, probs, rank = _top_k_in_time(scores, real, k, width)
        probs = probs * torch.sigmoid(soft_count[:, None] - rank.float() - 0.5)
        return self._select(video, video_mask, indices, _picked(probs, indices), scores, probs, k,
                            soft_frames_kept=soft_count)


@dataclass
class TempMeConfig:
    """What `get_tempme_model` needs: the `--use_tempme` / `--tempme_*` flags (each field `f` is
    the flag `--tempme_f`; `enabled` is `--use_tempme`) and `max_frames`, the input of `simple`;
    their defaults are the flags'.

    Besides the compressor it answers how many frames the loader decodes per video
    (`num_input_frames`) and how many can reach CLIP (`max_output_frames`), so those numbers
    are computed in one place.
    """
    enabled: bool = False
    type: str = "simple"
    compression_ratio: float = 0.75
    hidden_dim: int = 256
    input_frames: int = 32
    output_frames: int = 12
    num_layers: int = 2
    max_input_frames: int = 48
    min_output_frames: int = 8
    max_output_frames: int = 16
    max_frames: int = 12

    @classmethod
    def from_flags(cls, flags: Any) -> "TempMeConfig":
        """From any object carrying the flags as attributes (the namespace of `params.get_args`)."""
        names = {"enabled": "use_tempme", "max_frames": "max_frames"}
        return cls(**{f.name: getattr(flags, names.get(f.name, f"tempme_{f.name}")) for f in fields(cls)})

    def validate(self) -> None:
        """Raise ValueError naming the flag for values no compressor can be built from (the
        `--tempme_*` values only matter, and are only checked, with `enabled`)."""
        if self.max_frames < 1:
            raise ValueError(f"--max_frames must be >= 1, got {self.max_frames}")
        if not self.enabled:
            return
        if self.type not in TEMPME_TYPES:
            raise ValueError(f"--tempme_type must be one of {', '.join(TEMPME_TYPES)}, got {self.type!r}")
        if not 0.0 < self.compression_ratio <= 1.0:
            raise ValueError(f"--tempme_compression_ratio is the fraction of frames kept and must be in "
                             f"(0, 1], got {self.compression_ratio}")
        for name in ("hidden_dim", "num_layers", "input_frames", "max_input_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"--tempme_{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.output_frames <= self.input_frames:
            raise ValueError(f"--tempme_output_frames must be in [1, --tempme_input_frames="
                             f"{self.input_frames}], got {self.output_frames}")
        if not 1 <= self.min_output_frames <= self.max_output_frames:
            raise ValueError(f"--tempme_min_output_frames must be in [1, --tempme_max_output_frames="
                             f"{self.max_output_frames}], got {self.min_output_frames}")
        if self.max_output_frames > self.max_input_frames:
            raise ValueError(f"--tempme_max_output_frames must be <= --tempme_max_input_frames="
                             f"{self.max_input_frames}, got {self.max_output_frames}")

    @property
    def num_input_frames(self) -> int:
        """Frames the data loader decodes per video: the compressor's input, else what CLIP sees."""
        if not self.enabled or self.type == "simple":
            return self.max_frames
        return self.input_frames if self.type == "basic" else self.max_input_frames

    @property
    def num_output_frames(self) -> int:
        """The most frames per video that reach CLIP."""
        if not self.enabled:
            return self.max_frames
        if self.type == "simple":
            return max(1, round(self.max_frames * self.compression_ratio))
        return self.output_frames if self.type == "basic" else self.max_output_frames

    def describe(self) -> str:
        """One line for the run's start-up block: type, frames loaded and kept, sizes."""
        if not self.enabled:
            return f"enabled=False frames={self.max_frames}"
        parts = [f"enabled=True type={self.type}"]
        if self.type == "simple":
            parts.append(f"ratio={self.compression_ratio}")
        parts.append(f"input_frames={self.num_input_frames}")
        if self.type == "adaptive":
            parts.append(f"output_frames={self.min_output_frames}-{self.max_output_frames} (min-max, per video)")
        else:
            parts.append(f"output_frames={self.num_output_frames}")
        parts.append(f"hidden_dim={self.hidden_dim}")
        if self.type == "basic":
            parts.append(f"layers={self.num_layers}")
        return " ".join(parts)


def get_tempme_model(config: TempMeConfig | Any) -> _TempMeBase | None:
    """The compressor `config` asks for, or None when TempMe is off.

    `config` is a `TempMeConfig` or an object carrying the flags (the namespace of
    `params.get_args`). The only place mapping `--tempme_type` to a class. Raises ValueError
    naming the flag for invalid values.
    """
    if not isinstance(config, TempMeConfig):
        config = TempMeConfig.from_flags(config)
    if not config.enabled:
        return None
    config.validate()
    if config.type == "simple":
        return SimpleTempMe(input_frames=config.max_frames, compression_ratio=config.compression_ratio,
                            hidden_dim=config.hidden_dim)
    if config.type == "basic":
        return TempMeCompressor(input_frames=config.input_frames, output_frames=config.output_frames,
                                hidden_dim=config.hidden_dim, num_layers=config.num_layers)
    return AdaptiveTempMe(input_frames=config.max_input_frames, min_output_frames=config.min_output_frames,
                          max_output_frames=config.max_output_frames, hidden_dim=config.hidden_dim)
