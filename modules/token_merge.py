"""Token merging inside CLIP's ViT (`--token_merge`): the schedule of the published TempMe
(Shen et al., ICLR 2025), with ToMe's bipartite soft matching (Bolya et al., ICLR 2023).

Written from the papers' rules. Our `--tempme_type` compressors (modules/tempme.py) choose
whole frames before CLIP; this module merges similar tokens inside the ViT, and the two combine.

Terms used below:
- unit: tokens that attend to each other (besides STOP's global prompts): one frame, or in
  `clip` mode, after grouping, a clip of neighbouring frames. Tensors are `[B, U, S, W]`.
- head tokens: the first `H` tokens of a unit, never merged: per frame its CLS token and
  STOP's local prompts (`head_per_frame` = 1 + n_l), frames in temporal order.
- patch tokens: the rest of the unit; merged.
- size `[B, U, S]` float32: how many input patches a token stands for (head tokens 1).
  Attention adds log(size) to the key logits (proportional attention).
- real `[B, U, S]` bool: the token comes from a real frame (video_mask 1).

Modes (`TokenMergeConfig`, plan in `merge_plan`):
- `frame`: after the attention of each of the first `round(2/3 depth)` blocks, every frame
  merges `r` patch tokens (keys of the attention averaged over heads as the metric).
- `clip`: `frame`, then for the next (up to) 3 blocks neighbouring units are grouped (2, 2, 3),
  a learned per-unit temporal embedding is added, 30% of each group's image tokens (CLS and
  patches) are merged before attention (metric: the hidden states) and 10% after it (keys);
  the remaining blocks merge 10% after attention. Every frame's CLS token survives.

Padding. Padded frames (video_mask 0) and the empty units that complete a group (a group size
that does not divide the unit count) are padded tokens: real queries never attend to them, the
merge counts of a unit are computed from its real tokens only, and the rectangle is kept by
dropping padded tokens (they stand for nothing) instead of merging real ones. Real tokens come
first in every unit and the bipartite split alternates over real tokens only, so a video's
embedding depends neither on its padded frames' content nor on how many frame slots the
batch has (see docs/token_merge.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from modules.clip import AttentionCore, VisionTransformer

TOKEN_MERGE_MODES = ("none", "frame", "clip")
# The published schedule for ViT-B/32 (49 patches, 12 blocks): `r` tokens per frame after the
# attention of blocks 0-7 (50 -> 34 tokens per frame at r = 2), groups of 2, 2, 3 frames at
# blocks 8, 9, 10 merging 30% before and 10% after attention, 10% after attention in block 11.
REFERENCE_PATCHES = 49
REFERENCE_FRAME_LAYERS = 8
FRAME_LAYER_FRACTION = 2 / 3
CLIP_GROUPS = (2, 2, 3)
CROSS_SHARE = 0.3
INTRA_SHARE = 0.1


@dataclass
class TokenMergeConfig:
    """The `--token_merge` (`mode`) / `--token_merge_r` (`r`) flags, their defaults the flags',
    and `max_frames`: the most frames that can reach CLIP (rows of the temporal embeddings of
    `clip` mode; `modules.factory.build_model` derives it)."""
    mode: str = "none"
    r: int = 2
    max_frames: int = 12

    @classmethod
    def from_flags(cls, flags: Any) -> "TokenMergeConfig":
        """From any object carrying the flags as attributes (`max_frames` keeps its default)."""
        return cls(mode=flags.token_merge, r=flags.token_merge_r)

    def validate(self) -> None:
        """Raise ValueError naming the flag for values no merger can be built from."""
        if self.mode not in TOKEN_MERGE_MODES:
            raise ValueError(f"--token_merge must be one of {', '.join(TOKEN_MERGE_MODES)}, got {self.mode!r}")
        if self.r < 0:
            raise ValueError(f"--token_merge_r must be >= 0, got {self.r}")


@dataclass(frozen=True)
class MergeCount:
    """Tokens one merge step removes from a unit: `tokens + floor(share * image tokens)`, image
    tokens being the unit's CLS and patch tokens, at most half its patch tokens."""
    tokens: int = 0
    share: float = 0.0

    def __call__(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """cls, patches: LongTensors (token counts per unit) -> LongTensor of the same shape."""
        wanted = self.tokens + torch.floor((cls + patches).double() * self.share).long()
        return torch.minimum(wanted, patches // 2)


@dataclass(frozen=True)
class LayerPlan:
    """What happens around one ViT block: `group` neighbouring units joined before it (1 = no
    grouping), with temporal embedding `embedding` (its index) added; merges before and after
    its attention."""
    group: int = 1
    embedding: int | None = None
    before: MergeCount | None = None
    after: MergeCount | None = None


def frame_layers(depth: int) -> int:
    """Blocks with per-frame merging: `round(2/3 depth)` (B/32, B/16: 8 of 12; L/14: 16 of 24)."""
    return max(1, round(FRAME_LAYER_FRACTION * depth))


def tokens_per_layer(r: int, num_patches: int, depth: int) -> int:
    """Tokens each frame merges per block in the frame phase: `r` at ViT-B/32's geometry (49 patches,
    8 merging blocks), scaled so other ViTs merge the same share of their patches over their frame
    phase: `round(r * P / 49 * 8 / frame_layers)`, at least 1 when r > 0 (B/16: 4r, L/14: ~2.6r)."""
    if r == 0:
        return 0
    return max(1, round(r * num_patches / REFERENCE_PATCHES * REFERENCE_FRAME_LAYERS / frame_layers(depth)))


def merge_plan(mode: str, r: int, depth: int, num_patches: int) -> list[LayerPlan]:
    """One `LayerPlan` per ViT block for `mode` ("none", "frame", "clip")."""
    if mode == "none":
        return [LayerPlan() for _ in range(depth)]
    n_frame = frame_layers(depth)
    per_frame = MergeCount(tokens=tokens_per_layer(r, num_patches, depth)) if r else None
    plan = [LayerPlan(after=per_frame) for _ in range(n_frame)]
    if mode == "frame":
        return plan + [LayerPlan() for _ in range(depth - n_frame)]
    for i, group in enumerate(CLIP_GROUPS[:depth - n_frame]):
        plan.append(LayerPlan(group=group, embedding=i, before=MergeCount(share=CROSS_SHARE),
                              after=MergeCount(share=INTRA_SHARE)))
    return plan + [LayerPlan(after=MergeCount(share=INTRA_SHARE)) for _ in range(depth - len(plan))]


# --------------------------------------------------------------------------------------------
# Token state and the operations on it
# --------------------------------------------------------------------------------------------

@dataclass
class Units:
    """Tokens of a batch of videos as units (see the module docstring).

    x `[B, U, S, W]`, size `[B, U, S]` float32, real `[B, U, S]` bool; `head` leading tokens per
    unit are never merged; each unit holds `frames` frames (`head = frames * head_per_frame`).
    `weighted`: sizes differ from 1 or a unit mixes real and padded tokens, so attention needs
    `unit_attention_bias` (False keeps the unmerged model's exact computation).
    """
    x: torch.Tensor
    size: torch.Tensor
    real: torch.Tensor
    head: int
    frames: int = 1
    weighted: bool = False

    @property
    def head_per_frame(self) -> int:
        return self.head // self.frames

    @classmethod
    def from_frames(cls, tokens: torch.Tensor, video_mask: torch.Tensor, head_per_frame: int) -> "Units":
        """tokens `[B, T, S, W]` (per frame `head_per_frame` head tokens, then patches), video_mask `[B, T]`."""
        b, t, s, _ = tokens.shape
        real = (video_mask > 0).view(b, t, 1).expand(b, t, s)
        return cls(tokens, tokens.new_ones(b, t, s, dtype=torch.float32), real, head=head_per_frame)

    def frame_heads(self) -> torch.Tensor:
        """Head tokens per frame slot `[B, U * frames, head_per_frame, W]` (empty units' slots included)."""
        b, u, _, w = self.x.shape
        return self.x[:, :, :self.head].reshape(b, u * self.frames, self.head_per_frame, w)

    def with_frame_heads(self, heads: torch.Tensor) -> "Units":
        """Replace the head tokens: `heads [B, U * frames, head_per_frame, W]`."""
        b, u, _, w = self.x.shape
        x = torch.cat([heads.reshape(b, u, self.head, w), self.x[:, :, self.head:]], dim=2)
        return replace(self, x=x)


def _group_tensor(t: torch.Tensor, group: int, head: int) -> torch.Tensor:
    """`[B, U, S, ...]` -> `[B, ceil(U/g), g*S, ...]`: units padded with zeros/False to a multiple
    of `group`, then each new unit is [heads of its g units, patches of its g units] in order."""
    if group == 1:
        return t
    b, u, s = t.shape[:3]
    extra = (-u) % group
    if extra:
        t = torch.cat([t, t.new_zeros(b, extra, *t.shape[2:])], dim=1)
    t = t.view(b, (u + extra) // group, group, s, *t.shape[3:])
    heads = t[:, :, :, :head].flatten(2, 3)
    patches = t[:, :, :, head:].flatten(2, 3)
    return torch.cat([heads, patches], dim=2)


def group_units(units: Units, group: int) -> Units:
    """Join `group` neighbouring units into one (empty padded units complete the last group)."""
    if group == 1:
        return units
    size = _group_tensor(units.size, group, units.head)
    return Units(_group_tensor(units.x, group, units.head), size.masked_fill(size == 0, 1.0),
                 _group_tensor(units.real, group, units.head), head=units.head * group,
                 frames=units.frames * group, weighted=True)


def merge_patches(units: Units, metric: torch.Tensor, count: MergeCount) -> Units:
    """One bipartite soft matching step on every unit's patch tokens.

    metric `[B, U, S, C]` (compared by cosine; head positions ignored). In each unit the real
    patch tokens alternate, in order, between destinations (even rank) and sources (odd rank);
    each source's match is its most similar destination; the `count(real CLS, real patches)`
    sources with the most similar matches are merged into them as size-weighted means (sizes
    add). To keep all units the same length, a unit then drops padded tokens (first in order)
    until it has removed `count(CLS slots, patch slots)` tokens. Order is otherwise kept.
    """
    b, u, s, w = units.x.shape
    head, n = units.head, s - units.head
    total = int(count(torch.tensor(units.frames), torch.tensor(n)))
    if total == 0:
        return units
    rows = b * u
    x, size, real = units.x.reshape(rows, s, w), units.size.reshape(rows, s), units.real.reshape(rows, s)
    patch = torch.arange(s, device=x.device) >= head
    real_patch = real & patch
    n_real = real_patch.sum(1)
    real_cls = real[:, :head].reshape(rows, units.frames, units.head_per_frame)[..., 0].sum(1)
    drops = torch.minimum((total - count(real_cls, n_real)).clamp(min=0), n - n_real)  # padded tokens dropped
    merges = total - drops                                                              # real sources merged
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        rank = real_patch.long().cumsum(1) - 1
        src, dst = real_patch & (rank % 2 == 1), real_patch & (rank % 2 == 0)
        k = F.normalize(metric.reshape(rows, s, -1).float(), dim=-1)
        similarity = torch.bmm(k, k.transpose(1, 2)).masked_fill(~dst.unsqueeze(1), -math.inf)
        best, target = similarity.max(dim=-1)                  # every token's best destination
        order = best.masked_fill(~src, -math.inf).argsort(dim=1, descending=True, stable=True)
        position = torch.empty_like(order).scatter_(1, order, torch.arange(s, device=x.device).expand(rows, s))
        merged = src & (position < merges.unsqueeze(1))
        padded = patch & ~real
        removed = merged | (padded & (padded.long().cumsum(1) - 1 < drops.unsqueeze(1)))
        split = removed.to(torch.int8).argsort(dim=1, descending=True, stable=True)
        gone, keep = split[:, :total], split[:, total:]       # removed / kept tokens, each in order
        into = ((~removed).long().cumsum(1) - 1).gather(1, target.gather(1, gone))  # kept index of the match
        weight = (size * merged).gather(1, gone)               # 0 for dropped padded tokens
        new_size = size.gather(1, keep).scatter_add(1, into, weight)
    # A destination of size s_d absorbing sources (x_i, s_i) becomes x_d + sum_i s_i (x_i - x_d) / S_d,
    # S_d = s_d + sum_i s_i: the size-weighted mean, computed on the moved tokens only, in float32.
    compute = torch.promote_types(x.dtype, torch.float32)
    kept = _take_rows(x, keep)
    into_flat = _flat_index(into, s - total)
    moved = _take_rows(x, gone).to(compute)
    delta = (moved - _take_rows(kept, into).to(compute)) * (weight / new_size.gather(1, into)).unsqueeze(-1)
    new_x = kept.to(compute).flatten(0, 1).index_add(0, into_flat, delta.flatten(0, 1)).to(x.dtype)
    return replace(units, x=new_x.view(b, u, s - total, w), size=new_size.view(b, u, s - total),
                   real=real.gather(1, keep).view(b, u, s - total), weighted=True)


def _flat_index(index: torch.Tensor, length: int) -> torch.Tensor:
    """Per-row indices `[R, K]` into rows of `length` -> indices into the flattened `[R * length]`."""
    return (index + length * torch.arange(index.shape[0], device=index.device).unsqueeze(1)).flatten()


def _take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x [R, S, W]`, `index [R, K]` -> `x[r, index[r, k]]` as `[R, K, W]` (an `index_select`, much
    faster on CPU than `gather` with an expanded index)."""
    return x.flatten(0, 1).index_select(0, _flat_index(index, x.shape[1])).view(*index.shape, x.shape[-1])


def unit_attention_bias(units: Units, prefix: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive key bias of the attention inside each unit, `[B*U, 1, S or 1, prefix + S]`:
    log(size) of every key (proportional attention), -inf on padded keys for real queries, and 0
    for `prefix` leading keys (STOP's global prompts). None while no token is weighted."""
    if not units.weighted:
        return None
    b, u, s = units.size.shape
    bias = units.size.log().view(b * u, 1, 1, s)
    if units.frames > 1:   # grouped units may mix real and padded tokens
        real = units.real.view(b * u, 1, 1, s)
        allowed = real | ~real.transpose(-1, -2)                      # [B*U, 1, query, key]
        bias = bias.masked_fill(~allowed, -math.inf)
    if prefix:
        bias = torch.cat([bias.new_zeros(*bias.shape[:3], prefix), bias], dim=-1)
    return bias.to(dtype)


def _blocks(indices: list[int]) -> str:
    return f"block {indices[0]}" if len(indices) == 1 else f"blocks {indices[0]}-{indices[-1]}"


def unit_attention(units: Units) -> AttentionCore:
    """Attention inside each unit of `[B*U, heads, S, hd]` sequences with `unit_attention_bias`
    (exactly `Attention`'s own SDPA call while no token is weighted)."""
    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=unit_attention_bias(units, 0, q.dtype))
    return core


# --------------------------------------------------------------------------------------------
# The module and its per-block driver
# --------------------------------------------------------------------------------------------

class TokenMerger(nn.Module):
    """Token merging for one ViT: the per-block plan and the learned temporal embeddings of
    `clip` mode (one zero-initialised row per unit entering each grouping block, sized for
    `config.max_frames`; no parameters in `frame` mode).

    Drives both visual paths block by block: `begin`, then per block `before_block`, `block_step`
    (the attention core wrapper and the after-attention hook for `ResidualAttentionBlock`).
    """

    def __init__(self, config: TokenMergeConfig, depth: int, num_patches: int, width: int) -> None:
        super().__init__()
        config.validate()
        self.mode, self.r, self.max_frames = config.mode, config.r, config.max_frames
        self.num_patches = num_patches
        self.plan = merge_plan(config.mode, config.r, depth, num_patches)
        units, rows = config.max_frames, []
        for layer in self.plan:
            if layer.embedding is not None:
                rows.append(units)
                units = -(-units // layer.group)
        self.temporal_embeddings = nn.ParameterList([nn.Parameter(torch.zeros(n, width)) for n in rows])

    def no_weight_decay(self) -> set[str]:
        return {f"temporal_embeddings.{i}" for i in range(len(self.temporal_embeddings))}

    def describe(self) -> str:
        """One start-up line: what happens in which blocks."""
        parts = [f"mode={self.mode} r={self.r}"]
        per_frame = [i for i, layer in enumerate(self.plan) if layer.after and layer.after.tokens]
        if per_frame:
            r = self.plan[per_frame[0]].after.tokens
            parts.append(f"{_blocks(per_frame)} merge {r} tokens per frame after attention "
                         f"({self.num_patches + 1} -> {self.num_patches + 1 - r * len(per_frame)} per frame)")
        cross = [i for i, layer in enumerate(self.plan) if layer.embedding is not None]
        if cross:
            groups = ", ".join(str(self.plan[i].group) for i in cross)
            parts.append(f"{_blocks(cross)} group {groups} neighbouring units, merge "
                         f"{CROSS_SHARE:.0%} before and {INTRA_SHARE:.0%} after attention; temporal embeddings "
                         f"{sum(p.numel() for p in self.temporal_embeddings):,} parameters")
        intra = [i for i, layer in enumerate(self.plan) if i > (cross or [len(self.plan)])[-1] and layer.after]
        if intra:
            parts.append(f"{_blocks(intra)} merge {INTRA_SHARE:.0%} after attention")
        return " | ".join(parts)

    def begin(self, tokens: torch.Tensor, video_mask: torch.Tensor, head_per_frame: int) -> Units:
        """tokens `[B, T, S, W]` of the frames (head tokens first), video_mask `[B, T]`."""
        if tokens.shape[1] > self.max_frames and len(self.temporal_embeddings):
            raise ValueError(f"{tokens.shape[1]} frames reach CLIP but --token_merge clip was built for "
                             f"{self.max_frames}; raise --max_frames to at least {tokens.shape[1]}")
        return Units.from_frames(tokens, video_mask, head_per_frame)

    def before_block(self, index: int, units: Units) -> Units:
        """Grouping, temporal embedding and the merge before block `index`'s attention."""
        layer = self.plan[index]
        if layer.embedding is None:
            return units
        # Fewer units than the group size: one group of them all (the empty units that would
        # complete it change nothing for real tokens, they only cost time).
        group = min(layer.group, units.x.shape[1])
        embedding = self.temporal_embeddings[layer.embedding][:units.x.shape[1]]
        grouped = group_units(units, group)
        shifted = _group_tensor(units.x + embedding.to(units.x.dtype)[None, :, None], group, units.head)
        return merge_patches(replace(grouped, x=shifted), grouped.x.detach(), layer.before)

    def block_step(self, index: int, units: Units, prefix: int | None) -> "BlockStep":
        return BlockStep(self.plan[index].after, units, prefix)


class BlockStep:
    """Merging after one block's attention. `prefix` None: the block runs on `[B*U, S, W]`
    (plain ViT); an int: on `[B, prefix + U*S, W]` (STOP: `prefix` global prompts first).

    `wrap(core)` records the keys `core` receives (averaged over heads: the merge metric);
    `after_attention(x)` merges the units in the block's residual stream; `units` holds the
    result (sizes, real flags) for the next block.
    """

    def __init__(self, count: MergeCount | None, units: Units, prefix: int | None) -> None:
        self.count, self.units, self.prefix = count, units, prefix
        self.keys: torch.Tensor | None = None

    def wrap(self, core: AttentionCore) -> AttentionCore:
        if self.count is None:
            return core

        def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys = k.mean(1)
            return core(q, k, v)
        return recording

    def _units_of(self, t: torch.Tensor) -> torch.Tensor:
        b, u, s = self.units.size.shape
        return t.view(b, u, s, -1) if self.prefix is None else t[:, self.prefix:].view(b, u, s, -1)

    @property
    def after_attention(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None if self.count is None else self._merge

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        self.units = merge_patches(replace(self.units, x=self._units_of(x)), self._units_of(self.keys), self.count)
        self.keys = None
        if self.prefix is None:
            return self.units.x.flatten(0, 1)
        return torch.cat([x[:, :self.prefix], self.units.x.flatten(1, 2)], dim=1)

    def finish(self, x: torch.Tensor) -> Units:
        """The block's output `x` (layout as its input) as units."""
        return replace(self.units, x=self._units_of(x))


def merged_visual_forward(visual: VisionTransformer, images: torch.Tensor, video_mask: torch.Tensor,
                          merger: TokenMerger) -> torch.Tensor:
    """CLIP's ViT with token merging over normalised frames `images [B, T, 3, H, W]`, video_mask
    `[B, T]` -> every frame's CLS token `[B, T, W]` before `ln_post` (the plain-CLIP path)."""
    b, t = video_mask.shape
    tokens = visual.embed(images.flatten(0, 1))
    units = merger.begin(tokens.view(b, t, *tokens.shape[1:]), video_mask, head_per_frame=1)
    for i, block in enumerate(visual.transformer.resblocks):
        units = merger.before_block(i, units)
        step = merger.block_step(i, units, prefix=None)
        units = step.finish(block(units.x.flatten(0, 1), attention_core=step.wrap(unit_attention(units)),
                                  after_attention=step.after_attention))
    return units.frame_heads()[:, :t, 0]
