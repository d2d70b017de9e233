"""STOP: spatial-temporal prompting of a frozen CLIP (CVPR 2025), as in the authors' reference code.

`StopPrompts` (built from a `StopConfig`) is what `CLIP4Clip` holds: the prompt modules and the
prompted forward passes of both towers. Its building blocks:

- `TransformerPromptGenerator` / `LinearPromptGenerator`: the unified (DGL-style) generator of
  deep text prompts `[Lyr, n_t, Wt]` and per-frame local visual prompts `[Lyr, R, n_l, W]`.
- `SpatialPrompt`: intra-frame pixel prompts with a differentiable top-k patch selection.
- `TemporalPrompt`: inter-frame prompts from the layer-0 patch tokens, weighted per video.
- `Adapter`: the bottleneck adapter assigned to `ResidualAttentionBlock.adapter` in both towers.
- `prompted_visual_forward` / `prompted_text_forward`: CLIP's own blocks run over the prompted
  token sequences (no second copy of the block), the visual one with the block-structured
  attention (`block_attention`) as a batch of short sequences.

Cost: every 3-D convolution of the prompts runs as an exact FFT convolution
(`modules.fft_conv.same_conv3d`); the parameters stay `nn.Conv3d` modules. Below the reference's
224 px frames their spatial extents shrink with the frame side (`scaled_kernel`), so an 11x11
kernel stays ~5% of the frame and small demo frames stay cheap. The generator's
output depends only on parameters and is cached while no gradient is recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules.clip import CLIP, Attention, AttentionCore, QuickGELU, ResidualAttentionBlock, VisionTransformer
from modules.errors import UserError
from modules.fft_conv import cached_when_frozen, same_conv3d
from modules.token_merge import BlockStep, TokenMerger, Units, unit_attention_bias

# Kernel sizes of the reference code's prompt networks (spatial and temporal), for 224 px frames.
SPATIAL_KERNEL = (3, 11, 11)
SCORER_KERNEL = (5, 11, 11)
VARIATION_KERNEL = (5, 11, 11)
INTER_KERNEL = (3, 15, 25)
REFERENCE_RESOLUTION = 224


def scaled_kernel(kernel: tuple[int, int, int], scale: float) -> tuple[int, int, int]:
    """(taps, kh, kw) with the two spatial extents times `scale`, rounded to the nearest odd
    number, at least 3; the temporal taps are kept. `scale` 1 returns `kernel`."""
    return (kernel[0], *(max(3, 2 * round((k * scale - 1) / 2) + 1) for k in kernel[1:]))


def _same_conv(cin: int, cout: int, kernel: tuple[int, int, int]) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel))


def _zero_masked_frames(x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """x `[N, C, T, ...]`, frame_mask `[N, T]` (1 = real): padded frames set to 0, so that the
    temporal taps of the next convolution see them as zero padding (as if the video ended)."""
    return x * frame_mask.to(x.dtype).view(*frame_mask.shape[:1], 1, frame_mask.shape[1],
                                           *([1] * (x.ndim - 3)))


# --------------------------------------------------------------------------------------------
# Adapters and prompt generators
# --------------------------------------------------------------------------------------------

class Adapter(nn.Module):
    """Bottleneck d -> r -> d with PReLU, scaled: the block adds `scale * mlp(x)`.

    x `[N, L, d]` -> `[N, L, d]`.
    """

    def __init__(self, width: int, dim: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.PReLU(), nn.Linear(dim, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(x)


def _autocast_state() -> tuple:
    """Autocast settings that change a computed value (part of `cached_when_frozen` keys)."""
    return tuple((dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) for dev in ("cpu", "cuda"))


def _init_attention(attn: Attention) -> None:
    """`nn.MultiheadAttention`'s initialisation for a freshly built (not loaded) attention."""
    nn.init.xavier_uniform_(attn.in_proj_weight)
    nn.init.zeros_(attn.in_proj_bias)
    nn.init.zeros_(attn.out_proj.bias)


class TransformerPromptGenerator(nn.Module):
    """Unified prompt generator (`--prompt_generator transformer`).

    A table of `n_t + n_l * R` tokens per layer goes through one transformer block (the
    layers are its batch); the first `n_t` outputs pass an MLP to the text width. The output
    does not depend on the input, so it is computed once per call, not once per video (and
    reused in evaluation while the parameters are unchanged).
    forward() -> (text `[Lyr, n_t, Wt]`, visual `[Lyr, R, n_l, W]`).
    """

    def __init__(self, *, num_text: int, num_local: int, max_frames: int, layers: int, width: int,
                 text_width: int, heads: int) -> None:
        super().__init__()
        self.num_text, self.num_local, self.max_frames, self.layers, self.width = (
            num_text, num_local, max_frames, layers, width)
        self.prompt_table = nn.Parameter(torch.randn(num_text + num_local * max_frames, layers * width))
        self.block = ResidualAttentionBlock(width, heads)
        _init_attention(self.block.attn)
        self.text_mlp = nn.Sequential(nn.Linear(width, 2 * width), QuickGELU(), nn.Linear(2 * width, text_width))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return cached_when_frozen(self, "prompts", list(self.parameters()), _autocast_state(), self._generate)

    def adapt_loaded_state(self, state: dict[str, torch.Tensor], prefix: str) -> list[str]:
        """Fit a loaded `prompt_table` trained with another number of per-frame rows R to this
        generator's: its frame rows are resampled along time by linear interpolation (first and
        last frame kept, as ViT position tables are resampled); the text rows are kept. Changes
        `state` in place; returns a log line per change."""
        key = prefix + "prompt_table"
        table = state.get(key)
        if table is None or table.shape == self.prompt_table.shape:
            return []
        frame_rows = table.shape[0] - self.num_text
        if (table.shape[1] != self.prompt_table.shape[1] or frame_rows <= 0
                or frame_rows % self.num_local):
            return []   # not a table of this layout: the shape check reports it
        loaded_frames = frame_rows // self.num_local
        frames = table[self.num_text:].reshape(loaded_frames, -1).t()[None]          # [1, n_l * D, R]
        frames = F.interpolate(frames.float(), size=self.max_frames, mode="linear", align_corners=True)
        frames = frames[0].t().reshape(self.max_frames * self.num_local, -1).to(table.dtype)
        state[key] = torch.cat([table[:self.num_text], frames])
        return [f"{key}: per-frame prompt rows resampled from {loaded_frames} to {self.max_frames} frames "
                f"(linear interpolation along time)"]

    def _generate(self) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.prompt_table.view(-1, self.layers, self.width).transpose(0, 1)  # [Lyr, n, W]
        out = self.block(tokens)
        text = self.text_mlp(out[:, :self.num_text])
        visual = out[:, self.num_text:].reshape(self.layers, self.max_frames, self.num_local, self.width)
        return text, visual


class LinearPromptGenerator(nn.Module):
    """`--prompt_generator linear`: one `[n_l, Lyr*W]` table tiled over frames; two linear maps
    turn it into `n_l` prefix and `n_l` postfix text prompts (so `n_t = 2 n_l`).

    forward() -> (text `[Lyr, 2 n_l, Wt]`, visual `[Lyr, R, n_l, W]`).
    """

    def __init__(self, *, num_local: int, max_frames: int, layers: int, width: int, text_width: int,
                 patch_size: int) -> None:
        super().__init__()
        self.num_local, self.max_frames, self.layers, self.width = num_local, max_frames, layers, width
        self.prompt_table = nn.Parameter(torch.empty(1, num_local, layers * width))
        bound = math.sqrt(6.0 / (3 * patch_size ** 2 + width))  # the reference's xavier-style bound
        nn.init.uniform_(self.prompt_table, -bound, bound)
        self.prefix_proj = nn.Linear(width, text_width)
        self.postfix_proj = nn.Linear(width, text_width)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.prompt_table.view(self.num_local, self.layers, self.width).transpose(0, 1)  # [Lyr, n_l, W]
        text = torch.cat([self.prefix_proj(visual), self.postfix_proj(visual)], dim=1)
        return text, visual.unsqueeze(1).expand(-1, self.max_frames, -1, -1)


# --------------------------------------------------------------------------------------------
# Spatial and temporal prompts
# --------------------------------------------------------------------------------------------

def straight_through_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Hard top-k mask of `scores [..., P]` in the forward pass (exactly 0/1), with the
    gradient of the soft mask `k * softmax(scores)` (which also sums to k) in the backward."""
    hard = torch.zeros_like(scores).scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)
    soft = k * scores.softmax(dim=-1)
    return hard + (soft - soft.detach())


class SpatialPrompt(nn.Module):
    """Intra-frame spatial prompts in pixel space.

    forward(video `[B, T, 3, H, W]` normalised, video_mask `[B, T]`) ->
    (prompted video `[B, T, 3, H, W]`, patch mask `[B, T, P]`).
    A conv stack 3->9->9->9->16 (PReLU after the 2nd and 3rd), dropout, a channels-last MLP
    16->16->3 give the prompt image P; a scorer conv gives a score per pixel, averaged over
    each real ViT patch (`patch_size` x `patch_size`); the top-k patches form the mask M
    (straight-through, so the scorer learns). Frames become x + s*P + s*P*M. Padded frames
    are zeroed before every convolution, so they act as the end of the video.
    """

    def __init__(self, *, grid_size: int, patch_size: int, topk: int, scale: float, dropout: float,
                 kernel_scale: float = 1.0) -> None:
        super().__init__()
        if not 1 <= topk <= grid_size ** 2:
            raise UserError(f"--spatial_topk must be in [1, {grid_size ** 2}] (patches per frame), got {topk}")
        self.grid_size, self.patch_size, self.topk, self.scale = grid_size, patch_size, topk, scale
        kernel = scaled_kernel(SPATIAL_KERNEL, kernel_scale)
        self.convs = nn.ModuleList([_same_conv(cin, cout, kernel) for cin, cout in ((3, 9), (9, 9), (9, 9), (9, 16))])
        # PReLU after the 2nd and 3rd convolution (none after the 1st: the reference's stack).
        self.acts = nn.ModuleList([nn.Identity(), nn.PReLU(), nn.PReLU(), nn.Identity()])
        self.mlp = nn.Sequential(nn.Linear(16, 16), nn.PReLU(), nn.Linear(16, 3))
        self.dropout = nn.Dropout(dropout)
        self.scorer = _same_conv(3, 1, scaled_kernel(SCORER_KERNEL, kernel_scale))

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """x `[B, 3, T, H, W]` (padded frames zeroed) -> score per ViT patch `[B, T, P]`."""
        score_map = same_conv3d(x, self.scorer)[:, 0]                       # [B, T, H, W]
        pooled = F.avg_pool2d(score_map.flatten(0, 1), self.patch_size)  # real p x p patches
        return pooled.view(x.shape[0], x.shape[2], -1)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _, h, w = video.shape
        if h != self.grid_size * self.patch_size or w != h:
            raise ValueError(f"spatial prompt built for {self.grid_size * self.patch_size}px frames, got {h}x{w}")
        x = _zero_masked_frames(video.transpose(1, 2), video_mask)        # [B, 3, T, H, W]
        prompt = x
        for conv, act in zip(self.convs, self.acts):
            prompt = act(_zero_masked_frames(same_conv3d(prompt, conv), video_mask))
        prompt = self.dropout(prompt.to(video.dtype))
        prompt = self.dropout(self.mlp(prompt.permute(0, 2, 3, 4, 1)))   # [B, T, H, W, 3]
        prompt = prompt.permute(0, 1, 4, 2, 3)                            # [B, T, 3, H, W]
        patch_mask = straight_through_topk(self.patch_scores(x), self.topk)  # [B, T, P]
        pixel_mask = patch_mask.view(b, t, 1, self.grid_size, 1, self.grid_size, 1).expand(
            -1, -1, -1, -1, self.patch_size, -1, self.patch_size).reshape(b, t, 1, h, w)
        return video + self.scale * prompt * (1 + pixel_mask.to(prompt.dtype)), patch_mask


class TemporalPrompt(nn.Module):
    """Inter-frame temporal prompts from the layer-0 patch tokens.

    forward(patches `[B, T, P, W]` (after `ln_pre`), video_mask `[B, T]`, patch_mask `[B, T, P]`
    or None) -> prompts `[B, T, n_l, W]`, added to the local prompts of every layer.
    Self-attention over the video's real tokens; a frame-variation weight (conv over the
    attended tokens as a (T, P, W) volume, selected patches doubled, mean over tokens and
    channels) min-max normalised per video over its real frames, with an epsilon (a static
    video gives 0, not NaN); an inter-frame conv 1->9->1 and an MLP over the patch axis.
    """

    def __init__(self, *, width: int, heads: int, num_patches: int, num_local: int, scale: float,
                 kernel_scale: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.scale, self.eps = scale, eps
        self.attn = Attention(width, heads)
        _init_attention(self.attn)
        self.variation_conv = _same_conv(1, 1, scaled_kernel(VARIATION_KERNEL, kernel_scale))
        inter = scaled_kernel(INTER_KERNEL, kernel_scale)
        self.inter_convs = nn.ModuleList([_same_conv(1, 9, inter), _same_conv(9, 1, inter)])
        self.inter_act = nn.PReLU()
        self.mlp = nn.Sequential(nn.Linear(num_patches, 16), nn.PReLU(), nn.Linear(16, num_local))

    def frame_weights(self, tokens: torch.Tensor, video_mask: torch.Tensor,
                      patch_mask: torch.Tensor | None) -> torch.Tensor:
        """tokens `[B, 1, T, P, W]` (padded frames zero) -> per-video min-max weights `[B, T]`."""
        v = same_conv3d(tokens, self.variation_conv)[:, 0]                 # [B, T, P, W]
        if patch_mask is not None:
            v = v * (1 + patch_mask.unsqueeze(-1).to(v.dtype))
        v = v.mean(dim=(2, 3))
        real = video_mask > 0
        lo = v.masked_fill(~real, float("inf")).amin(1, keepdim=True)
        hi = v.masked_fill(~real, float("-inf")).amax(1, keepdim=True)
        # A video without real frames has lo=inf; its weights are unused, keep them finite.
        lo, hi = torch.where(real.any(1, keepdim=True), lo, 0.0), torch.where(real.any(1, keepdim=True), hi, 0.0)
        return ((v - lo) / (hi - lo + self.eps)).masked_fill(~real, 0.0)

    def forward(self, patches: torch.Tensor, video_mask: torch.Tensor,
                patch_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, p, w = patches.shape
        real = (video_mask > 0).repeat_interleave(p, dim=1)                 # [B, T*P]
        # Keys of padded frames are masked out; a video without real frames attends to all
        # (its rows would be all -inf otherwise; its output is unused).
        keys = (real | ~real.any(1, keepdim=True)).view(b, 1, 1, t * p)
        attended = self.attn(patches.reshape(b, t * p, w), attn_mask=keys).view(b, 1, t, p, w)
        attended = _zero_masked_frames(attended, video_mask)
        weights = self.frame_weights(attended, video_mask, patch_mask)     # [B, T]
        x = self.inter_act(_zero_masked_frames(same_conv3d(attended, self.inter_convs[0]), video_mask))
        x = same_conv3d(x, self.inter_convs[1])[:, 0].to(patches.dtype)      # [B, T, P, W]
        x = self.mlp(x.transpose(2, 3)).transpose(2, 3)                    # [B, T, n_l, W]
        return self.scale * x * (1 + weights.to(x.dtype)).view(b, t, 1, 1)


# --------------------------------------------------------------------------------------------
# Prompted towers
# --------------------------------------------------------------------------------------------

def block_attention(num_global: int, num_frames: int, video_mask: torch.Tensor,
                    units: Units | None = None) -> AttentionCore:
    """STOP's block-structured visual attention in the structure it has, for sequences laid out as
    `[n_g global, frame 0 tokens, frame 1 tokens, ...]` (S tokens per frame).

    Frame tokens attend to the global prompts and their own frame: one SDPA over B*T short
    sequences (keys n_g + S). Global prompts attend to themselves and the tokens of real
    frames: one SDPA over B sequences with a key mask. q, k, v: `[B, heads, L, hd]`.
    With token merging, `units` (`num_frames` of them) replaces the frames: keys get log(size)
    (proportional attention) and a unit's padded tokens are hidden from its real ones.
    """
    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, heads, length, hd = q.shape
        s = (length - num_global) // num_frames

        def frames(x: torch.Tensor) -> torch.Tensor:  # [B, h, T*S, hd] -> [B*T, h, S, hd]
            return x[:, :, num_global:].reshape(b, heads, num_frames, s, hd).transpose(1, 2).reshape(-1, heads, s, hd)

        def with_global(x: torch.Tensor) -> torch.Tensor:  # frame keys/values prefixed by the global ones
            g = x[:, :, :num_global].unsqueeze(1).expand(-1, num_frames, -1, -1, -1).reshape(-1, heads, num_global, hd)
            return torch.cat([g, frames(x)], dim=2)

        frame_bias = None if units is None else unit_attention_bias(units, num_global, q.dtype)
        out_frames = F.scaled_dot_product_attention(frames(q), with_global(k), with_global(v), attn_mask=frame_bias)
        out_frames = out_frames.view(b, num_frames, heads, s, hd).transpose(1, 2).reshape(b, heads, -1, hd)
        real = (video_mask > 0).repeat_interleave(s, dim=1) if units is None else units.real.flatten(1)
        if units is not None and units.weighted:
            weights = units.size.flatten(1).log().masked_fill(~real, -math.inf)
            keys = torch.cat([weights.new_zeros(b, num_global), weights], dim=1).view(b, 1, 1, length).to(q.dtype)
        else:
            keys = torch.cat([real.new_ones(b, num_global), real], dim=1).view(b, 1, 1, length)
        out_global = F.scaled_dot_product_attention(q[:, :, :num_global], k, v, attn_mask=keys)
        return torch.cat([out_global, out_frames], dim=2)

    return core


def prompted_visual_forward(visual: VisionTransformer, frames: torch.Tensor, video_mask: torch.Tensor,
                            global_prompts: torch.Tensor, local_prompts: torch.Tensor,
                            merger: TokenMerger | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run CLIP's ViT blocks over the STOP token sequence.

    frames `[B, T, 1+P, W]` (CLS + patches after `ln_pre`), video_mask `[B, T]`,
    global_prompts `[B, n_g, W]` (shallow), local_prompts `[Lyr, B, T, n_l, W]` (deep: layer i
    replaces the local prompt tokens before block i). `merger` merges patch tokens between
    blocks (`modules.token_merge`); a frame's CLS and local prompts are never merged and, in
    `clip` mode, travel with it into its group's head.
    Returns (global tokens `[B, n_g, W]`, frame CLS tokens `[B, T, W]`), before `ln_post`.
    """
    t = frames.shape[1]
    n_g, n_l = global_prompts.shape[1], local_prompts.shape[3]
    blocks = visual.transformer.resblocks
    if local_prompts.shape[0] < len(blocks):
        raise ValueError(f"{local_prompts.shape[0]} prompt layers for {len(blocks)} ViT blocks")
    tokens = torch.cat([frames[:, :, :1], local_prompts[0], frames[:, :, 1:]], dim=2)
    units = Units.from_frames(tokens, video_mask, head_per_frame=1 + n_l) if merger is None else \
        merger.begin(tokens, video_mask, head_per_frame=1 + n_l)
    glob = global_prompts
    for i, block in enumerate(blocks):
        if i:
            heads = units.frame_heads()                                   # [B, U*F, 1+n_l, W]
            prompts = F.pad(local_prompts[i], (0, 0, 0, 0, 0, heads.shape[1] - t))  # empty frame slots
            units = units.with_frame_heads(torch.cat([heads[:, :, :1], prompts], dim=2))
        if merger is not None:
            units = merger.before_block(i, units)
        step = BlockStep(None, units, n_g) if merger is None else merger.block_step(i, units, n_g)
        core = block_attention(n_g, units.x.shape[1], video_mask, units)
        x = block(torch.cat([glob, units.x.flatten(1, 2)], dim=1), attention_core=step.wrap(core),
                  after_attention=step.after_attention)
        glob, units = x[:, :n_g], step.finish(x)
    return glob, units.frame_heads()[:, :t, 0]


def text_positions(input_ids: torch.Tensor, num_prompts: int, postfix_before_eot: bool) -> torch.Tensor:
    """Sequence position of every token of `[words (L), prefix prompts, postfix prompts]`.

    input_ids `[B, L]` -> positions `[B, L + n_t]`. Layout `[SOT, prefix, words, postfix]`
    (faithful: the postfix prompts follow EOT and padding, so under the causal mask they
    cannot reach EOT), or with `postfix_before_eot` `[SOT, prefix, words before EOT, postfix,
    EOT, padding]`. Keeping the tokens in this fixed order and expressing the layout through
    the causal mask on positions makes deep prompt replacement a slice.
    """
    b, length = input_ids.shape
    half = num_prompts // 2
    src = torch.arange(length, device=input_ids.device).expand(b, -1)
    eot = input_ids.argmax(dim=-1, keepdim=True)                          # [B, 1]
    postfix_start = eot if postfix_before_eot else torch.full_like(eot, length)
    words = src + half * (src >= 1) + half * (src >= postfix_start)
    j = torch.arange(half, device=input_ids.device).expand(b, -1)
    return torch.cat([words, 1 + j, postfix_start + half + j], dim=1)


def prompted_text_forward(clip: CLIP, input_ids: torch.Tensor, text_prompts: torch.Tensor,
                          postfix_before_eot: bool) -> torch.Tensor:
    """CLIP's text tower with deep prompts.

    input_ids `[B, L]`, text_prompts `[Lyr, n_t, Wt]` (first half prefix) -> `[B, D]`.
    Positional embeddings are added to the words only; layer i's prompts replace the
    prompt tokens before block i; the output is the EOT feature after `ln_final` + projection.
    """
    b, length = input_ids.shape
    n_t = text_prompts.shape[1]
    if length > clip.context_length:
        raise ValueError(f"text length {length} exceeds CLIP's context length {clip.context_length}")
    pos = text_positions(input_ids, n_t, postfix_before_eot)
    causal = (pos.unsqueeze(1) <= pos.unsqueeze(2)).unsqueeze(1)            # [B, 1, L+n_t, L+n_t]
    words = clip.token_embedding(input_ids) + clip.positional_embedding[:length]
    for i, block in enumerate(clip.transformer.resblocks):
        x = torch.cat([words, text_prompts[i].to(words.dtype).expand(b, -1, -1)], dim=1)
        x = block(x, attn_mask=causal)
        words = x[:, :length]
    eot = words[torch.arange(b, device=words.device), input_ids.argmax(dim=-1)]
    return clip.ln_final(eot) @ clip.text_projection


# --------------------------------------------------------------------------------------------
# The assembled STOP prompts
# --------------------------------------------------------------------------------------------

PROMPT_GENERATORS = ("transformer", "linear")


@dataclass
class StopConfig:
    """STOP's prompt modules: each field `f` is the flag `--f` of the "STOP prompts" group (its
    default is the flag's), plus `prompt_frames`, rows of the per-frame prompt tables (the most
    frames that reach CLIP), and `kernel_scale`, the frame side over 224 px (at most 1) that the
    prompt kernels shrink by; `modules.factory.build_model` derives those two."""
    prompt_generator: str = "transformer"
    num_global_prompts: int = 4
    num_local_prompts: int = 4
    num_text_prompts: int = 8
    text_postfix_before_eot: bool = False
    spatial_prompt: bool = True
    temporal_prompt: bool = True
    spatial_topk: int = 6
    prompt_scale: float = 0.05
    spatial_dropout: float = 0.5
    adapter: bool = True
    adapter_dim: int = 32
    adapter_scale: float = 0.1
    prompt_frames: int = 12
    kernel_scale: float = 1.0

    DERIVED = ("prompt_frames", "kernel_scale")  # not flags: `build_model` sets them

    @classmethod
    def from_flags(cls, flags: Any) -> "StopConfig":
        """From any object carrying the flags as attributes (the derived fields keep their defaults)."""
        return cls(**{f.name: getattr(flags, f.name) for f in fields(cls) if f.name not in cls.DERIVED})

    def validate(self) -> None:
        """Raise ValueError naming the flag for values no prompt module can be built from (the
        bound of `--spatial_topk` depends on CLIP's patch grid and is checked when building)."""
        if self.prompt_generator not in PROMPT_GENERATORS:
            raise ValueError(f"--prompt_generator must be one of {', '.join(PROMPT_GENERATORS)}, "
                             f"got {self.prompt_generator!r}")
        for name in ("num_global_prompts", "num_local_prompts", "spatial_topk", "adapter_dim", "prompt_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_text_prompts < 0 or self.num_text_prompts % 2:
            raise ValueError(f"--num_text_prompts must be an even number >= 0 (half prefix, half postfix), "
                             f"got {self.num_text_prompts}")
        if self.prompt_generator == "linear" and self.num_text_prompts != 2 * self.num_local_prompts:
            raise ValueError(f"--prompt_generator linear maps each local prompt to one prefix and one postfix "
                             f"text prompt: --num_text_prompts ({self.num_text_prompts}) must be "
                             f"2 x --num_local_prompts ({self.num_local_prompts})")
        if not 0.0 <= self.spatial_dropout <= 1.0:
            raise ValueError(f"--spatial_dropout must be in [0, 1], got {self.spatial_dropout}")
        if not 0.0 < self.kernel_scale <= 1.0:
            raise ValueError(f"kernel_scale must be in (0, 1], got {self.kernel_scale}")


def add_adapters(clip: CLIP, dim: int, scale: float) -> None:
    """Give every residual block of both towers a fresh bottleneck adapter."""
    for tower in (clip.visual.transformer, clip.transformer):
        for block in tower.resblocks:
            block.adapter = Adapter(tower.width, dim, scale)


def prompt_rows(indices: torch.Tensor | None, num_frames: int, input_frames: int, rows: int,
                device: torch.device) -> torch.Tensor:
    """Which row of the prompt generator's per-frame prompts each frame reaching CLIP uses.

    Without TempMe (indices None) frame t uses row t. With TempMe, output frame j came from
    input frame `indices[b, j]` of `input_frames`; it uses the row at the same relative time,
    `round(idx * (rows - 1) / (input_frames - 1))`, so when the compressor keeps a subset of
    the frames a baseline STOP model was trained on, each kept frame gets exactly the prompt it
    had there. Padding (-1) uses row 0 (padded frames are masked everywhere).
    Returns `[T]` or `[B, T]` long.
    """
    if indices is None:
        if num_frames > rows:
            raise ValueError(f"{num_frames} frames reach CLIP but the prompt generator has rows for {rows}; "
                             f"raise --max_frames to at least {num_frames}")
        return torch.arange(num_frames, device=device)
    scale = (rows - 1) / max(input_frames - 1, 1)
    return (indices.clamp(min=0).double() * scale).round().long().clamp(max=rows - 1)


class StopPrompts(nn.Module):
    """STOP's trainable prompt modules for one CLIP, and the prompted passes of its towers.

    Holds the prompt generator (deep text prompts and `prompt_frames` rows of per-frame local
    prompts), the shallow global prompts, and the optional spatial and temporal prompt
    modules. Adapters live inside CLIP's blocks (`add_adapters`), not here.
    """

    def __init__(self, config: StopConfig, clip: CLIP) -> None:
        super().__init__()
        config.validate()
        visual, text = clip.visual, clip.transformer
        layers = max(text.layers, visual.transformer.layers)
        self.prompt_frames = config.prompt_frames
        self.postfix_before_eot = config.text_postfix_before_eot
        self.prompt_generator: nn.Module
        if config.prompt_generator == "transformer":
            self.prompt_generator = TransformerPromptGenerator(
                num_text=config.num_text_prompts, num_local=config.num_local_prompts,
                max_frames=config.prompt_frames, layers=layers, width=visual.width, text_width=text.width,
                heads=visual.transformer.heads)
        else:
            self.prompt_generator = LinearPromptGenerator(
                num_local=config.num_local_prompts, max_frames=config.prompt_frames, layers=layers,
                width=visual.width, text_width=text.width, patch_size=visual.patch_size)
        self.global_prompts = nn.Parameter(torch.empty(1, config.num_global_prompts, visual.width))
        bound = math.sqrt(6.0 / (3 * visual.patch_size ** 2 + visual.width))  # the reference's init
        nn.init.uniform_(self.global_prompts, -bound, bound)
        self.spatial_prompt = (SpatialPrompt(grid_size=visual.grid_size, patch_size=visual.patch_size,
                                             topk=config.spatial_topk, scale=config.prompt_scale,
                                             dropout=config.spatial_dropout, kernel_scale=config.kernel_scale)
                               if config.spatial_prompt else None)
        self.temporal_prompt = (TemporalPrompt(width=visual.width, heads=visual.transformer.heads,
                                               num_patches=visual.num_patches, num_local=config.num_local_prompts,
                                               scale=config.prompt_scale, kernel_scale=config.kernel_scale)
                                if config.temporal_prompt else None)

    def encode_text(self, clip: CLIP, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]` -> text embeddings `[B, D]` (deep text prompts)."""
        text_prompts, _ = self.prompt_generator()
        return prompted_text_forward(clip, input_ids, text_prompts, self.postfix_before_eot)

    def encode_video(self, visual: VisionTransformer, video: torch.Tensor, video_mask: torch.Tensor,
                     source_indices: torch.Tensor | None, input_frames: int,
                     merger: TokenMerger | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompted ViT over normalised frames `video [B, T, 3, H, W]`, `video_mask [B, T]`.

        `source_indices [B, T]` (TempMe's `info["indices"]` into `input_frames` frames, or None)
        choose each frame's prompt row (`prompt_rows`); `merger` merges tokens inside the ViT.
        Returns (global prompt tokens `[B, n_g, W]`, frame CLS tokens `[B, T, W]`), before `ln_post`.
        """
        b, t = video_mask.shape
        patch_mask = None
        if self.spatial_prompt is not None:
            video, patch_mask = self.spatial_prompt(video, video_mask)
        frames = visual.embed(video.flatten(0, 1)).view(b, t, 1 + visual.num_patches, visual.width)
        _, local = self.prompt_generator()                                  # [Lyr, R, n_l, W]
        rows = prompt_rows(source_indices, t, input_frames, self.prompt_frames, video.device)
        local = local[:, rows]                                              # [Lyr, (B,) T, n_l, W]
        if local.ndim == 4:
            local = local.unsqueeze(1)
        local = local.expand(-1, b, -1, -1, -1)
        if self.temporal_prompt is not None:
            local = local + self.temporal_prompt(frames[:, :, 1:], video_mask, patch_mask)
        return prompted_visual_forward(visual, frames, video_mask, self.global_prompts.expand(b, -1, -1), local,
                                       merger)
