"""CLIP4Clip with STOP prompts and optional TempMe frame compression (DESIGN.md sections 4, 5).

`CLIP4Clip(clip_state_dict, config)` is the model the engine trains and evaluates:

    video uint8 [B,T_in,3,H,W] --normalise--> TempMe (optional) --> [B,T,3,H,W] + mask [B,T]
        --> STOP spatial prompt --> CLIP ViT with global/local/temporal prompts --> [B,D]
    input_ids [B,L] --> CLIP text transformer with deep text prompts --> [B,D]

CLIP is frozen (and kept in eval mode) unless `--train_clip True`. `--prompt_mode none` is
plain CLIP4Clip meanP: no prompt module and no adapter is built.
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from dataloaders.video_reader import normalize_video
from modules.clip import build_clip
from modules.distributed import all_gather_with_grad
from modules.stop import (Adapter, LinearPromptGenerator, SpatialPrompt, TemporalPrompt, TransformerPromptGenerator,
                          prompted_text_forward, prompted_visual_forward)
from modules.tempme import frame_score_loss, get_tempme_model

MAX_LOGIT_SCALE = math.log(100.0)
# Temperature turning standardised frame distinctiveness into `frame_selection_loss` targets:
# with 0.25 a frame 1 std more distinct than another gets e^4 (~55x) its target mass.
AUX_TEMPERATURE = 0.25


def masked_mean_of_normalized(frame_emb: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip meanP: frame embeddings `[B, T, D]` L2-normalised, averaged over real frames.

    A video without real frames gives zeros (not NaN). Returns `[B, D]`.
    """
    weights = (video_mask > 0).to(frame_emb.dtype).unsqueeze(-1)
    normed = F.normalize(frame_emb, dim=-1)
    return (normed * weights).sum(1) / weights.sum(1).clamp(min=1.0)


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


class CLIP4Clip(nn.Module):
    """Text-video retrieval on CLIP with STOP prompts and optional TempMe (see module docstring).

    `config` is the namespace of `params.get_args`.
    """

    def __init__(self, clip_state_dict: dict[str, torch.Tensor], config: argparse.Namespace) -> None:
        super().__init__()
        self.clip = build_clip(clip_state_dict)
        self.train_clip = config.train_clip
        self.prompt_mode = config.prompt_mode
        self.video_output = config.video_output
        self.text_postfix_before_eot = config.text_postfix_before_eot
        self.clip.requires_grad_(self.train_clip)
        self.clip.logit_scale.requires_grad_(False)  # DESIGN 4.9: temperature stays CLIP's

        self.tempme = get_tempme_model(config)
        self.last_tempme_info: dict[str, torch.Tensor] | None = None
        self.tempme_aux_weight = config.tempme_aux_weight if self.tempme is not None else 0.0

        visual = self.clip.visual
        if config.image_size != visual.input_resolution:
            raise ValueError(f"--image_size {config.image_size} does not match CLIP's input resolution "
                             f"{visual.input_resolution}; set --image_size {visual.input_resolution}")
        # Per-frame prompt rows: enough for the most frames that can reach CLIP.
        self.max_prompt_frames = max(config.max_frames, self.tempme.output_frames if self.tempme else 0)
        self.prompt_generator: nn.Module | None = None
        self.global_prompts: nn.Parameter | None = None
        self.spatial_prompt: SpatialPrompt | None = None
        self.temporal_prompt: TemporalPrompt | None = None
        if self.prompt_mode == "stop":
            self._build_stop(config)

    def _build_stop(self, config: argparse.Namespace) -> None:
        visual, text = self.clip.visual, self.clip.transformer
        layers = max(text.layers, visual.transformer.layers)
        if config.prompt_generator == "transformer":
            self.prompt_generator = TransformerPromptGenerator(
                num_text=config.num_text_prompts, num_local=config.num_local_prompts,
                max_frames=self.max_prompt_frames, layers=layers, width=visual.width, text_width=text.width,
                heads=visual.transformer.heads)
        else:
            if config.num_text_prompts != 2 * config.num_local_prompts:
                raise ValueError(f"--prompt_generator linear maps each local prompt to one prefix and one postfix "
                                 f"text prompt: --num_text_prompts ({config.num_text_prompts}) must be "
                                 f"2 x --num_local_prompts ({config.num_local_prompts})")
            self.prompt_generator = LinearPromptGenerator(
                num_local=config.num_local_prompts, max_frames=self.max_prompt_frames, layers=layers,
                width=visual.width, text_width=text.width, patch_size=visual.patch_size)
        self.global_prompts = nn.Parameter(torch.empty(1, config.num_global_prompts, visual.width))
        bound = math.sqrt(6.0 / (3 * visual.patch_size ** 2 + visual.width))  # the reference's init
        nn.init.uniform_(self.global_prompts, -bound, bound)
        if config.spatial_prompt:
            self.spatial_prompt = SpatialPrompt(grid_size=visual.grid_size, patch_size=visual.patch_size,
                                                topk=config.spatial_topk, scale=config.prompt_scale,
                                                dropout=config.spatial_dropout)
        if config.temporal_prompt:
            self.temporal_prompt = TemporalPrompt(width=visual.width, heads=visual.transformer.heads,
                                                  num_patches=visual.num_patches,
                                                  num_local=config.num_local_prompts, scale=config.prompt_scale)
        if config.adapter:
            for tower in (visual.transformer, text):
                for block in tower.resblocks:
                    block.adapter = Adapter(tower.width, config.adapter_dim, config.adapter_scale)

    # ---------------------------------------------------------------------------------------
    # Modes and parameter groups
    # ---------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "CLIP4Clip":
        """Frozen CLIP keeps eval-mode behaviour (dropout, norms) while the prompts train."""
        super().train(mode)
        if not self.train_clip:
            self.clip.eval()
        return self

    @staticmethod
    def _group_of(name: str) -> str:
        """Parameter name -> 'stop' (prompts, generators, adapters), 'tempme' or 'clip'."""
        if name.startswith("tempme."):
            return "tempme"
        if name.startswith("clip.") and ".adapter." not in name:
            return "clip"
        return "stop"

    def trainable_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable (name, parameter) pairs for the optimiser: "stop" always (empty with
        `--prompt_mode none`), "clip" with `--train_clip True` (never `logit_scale`), "tempme"
        when a compressor is built."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"stop": []}
        if self.train_clip:
            groups["clip"] = []
        if self.tempme is not None:
            groups["tempme"] = []
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups[self._group_of(name)].append((name, param))
        return groups

    @staticmethod
    def _summary_row(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "clip":
            if ".adapter." in name:
                return f"adapters ({'visual' if parts[1] == 'visual' else 'text'})"
            return "clip.visual" if parts[1] == "visual" else ("clip.logit_scale" if parts[1] == "logit_scale"
                                                               else "clip.text")
        return parts[0]

    def summary(self) -> str:
        """Start-up table of trainable / frozen parameter counts per module, with the total."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for name, param in self.named_parameters():
            counts[self._summary_row(name)][0 if param.requires_grad else 1] += param.numel()
        width = max(len(k) for k in counts) + 2
        lines = [f"{'module':<{width}}{'trainable':>14}{'frozen':>14}"]
        for key, (trainable, frozen) in counts.items():
            lines.append(f"{key:<{width}}{trainable:>14,}{frozen:>14,}")
        total_t, total_f = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        lines.append(f"{'total':<{width}}{total_t:>14,}{total_f:>14,}")
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------------
    # Towers
    # ---------------------------------------------------------------------------------------

    def get_text_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]` (SOT ... EOT, zero padding), attention_mask `[B, L]` -> `[B, D]`.

        The attention mask is implied by the ids: under CLIP's causal mask the EOT feature
        never sees the padding after it, so padding needs no explicit mask.
        """
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                             f"input_ids {tuple(input_ids.shape)}")
        if self.prompt_generator is None:
            return self.clip.encode_text(input_ids)
        text_prompts, _ = self.prompt_generator()
        return prompted_text_forward(self.clip, input_ids, text_prompts, self.text_postfix_before_eot)

    def get_visual_output(self, video: torch.Tensor, video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video `[B, T, 3, H, W]` uint8 (0..255) or already-normalised float, video_mask `[B, T]`
        (1 = real frame) -> (video embedding `[B, D]`, mask of the frames CLIP saw `[B, T']`).

        T' = T without TempMe, the compressor's output length with it. Padded frames influence
        nothing.
        """
        if video.ndim != 5 or video.shape[:2] != video_mask.shape:
            raise ValueError(f"expected video [B, T, 3, H, W] and video_mask [B, T], got {tuple(video.shape)} "
                             f"and {tuple(video_mask.shape)}")
        if not video.is_floating_point():
            video = normalize_video(video)
        video = video.to(self.clip.dtype)
        indices, input_frames = None, video.shape[1]
        if self.tempme is not None:
            video, video_mask, info = self.tempme(video, video_mask)
            self.last_tempme_info = info
            indices = info["indices"]
        b, t = video_mask.shape
        visual = self.clip.visual
        if self.prompt_generator is None:
            frame_emb = visual(video.flatten(0, 1)).view(b, t, -1)
            return masked_mean_of_normalized(frame_emb, video_mask), video_mask

        patch_mask = None
        if self.spatial_prompt is not None:
            video, patch_mask = self.spatial_prompt(video, video_mask)
        frames = visual.embed(video.flatten(0, 1)).view(b, t, 1 + visual.num_patches, visual.width)
        _, local = self.prompt_generator()                                  # [Lyr, R, n_l, W]
        rows = prompt_rows(indices, t, input_frames, self.max_prompt_frames, video.device)
        local = local[:, rows]                                              # [Lyr, (B,) T, n_l, W]
        if local.ndim == 4:
            local = local.unsqueeze(1)
        local = local.expand(-1, b, -1, -1, -1)
        if self.temporal_prompt is not None:
            local = local + self.temporal_prompt(frames[:, :, 1:], video_mask, patch_mask)
        glob, cls = prompted_visual_forward(visual, frames, video_mask, self.global_prompts.expand(b, -1, -1),
                                            local)
        if self.video_output == "global_prompt0":
            return visual.head(glob[:, 0]), video_mask
        return masked_mean_of_normalized(visual.head(cls), video_mask), video_mask

    # ---------------------------------------------------------------------------------------
    # Similarity and loss
    # ---------------------------------------------------------------------------------------

    def get_similarity_logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """`logit_scale.exp() * cos(text, video)`: `[Bt, D]`, `[Bv, D]` -> `[Bt, Bv]`."""
        scale = self.clip.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).t()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, video: torch.Tensor,
                video_mask: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the global batch (features all-gathered across processes, the
        local shard keeping its gradient): mean of cross-entropy over rows and over columns.

        In training with TempMe and `--tempme_aux_weight` w > 0, adds w * `frame_selection_loss`.
        """
        if not video.is_floating_point():
            video = normalize_video(video)  # once: the compressor and the aux teacher share it
        text_emb = self.get_text_output(input_ids, attention_mask)
        video_emb, _ = self.get_visual_output(video, video_mask)
        logits = self.get_similarity_logits(all_gather_with_grad(text_emb), all_gather_with_grad(video_emb))
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        if self.training and self.tempme_aux_weight > 0:
            loss = loss + self.tempme_aux_weight * self.frame_selection_loss(video, video_mask)
        return loss

    def frame_selection_loss(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Auxiliary TempMe loss: the compressor's frame scores should follow each frame's
        distinctiveness in CLIP space.

        The straight-through gate only tells the compressor about frames it already selected,
        and weakly; this teaches it about every input frame. Teacher, without gradient: plain
        CLIP embeddings (no prompts) of all input frames `video [B, T_in, 3, H, W]`
        (normalised); a frame's distinctiveness is its cosine distance to the mean embedding of
        its video's real frames, standardised over those frames and divided by
        `AUX_TEMPERATURE` to give target logits. The coverage prior still spreads the kept
        frames over the clip; the learned scores add the frames that an average over uniform
        samples would drown (a brief event), which is what the kept budget is for. Text-frame
        similarity was tried as the teacher and measured worse: on the synthetic set it ranks
        event frames last, because a model trained on uniform frames has not learnt the
        events and an event frame hides the content the rest of the caption describes.
        Loss: `frame_score_loss` between `last_tempme_info["scores"]` and the targets. Costs
        one no-grad CLIP pass over every input frame. Returns a scalar.
        """
        real = (video_mask > 0).float()
        with torch.no_grad():
            b, t = video_mask.shape
            frames = F.normalize(self.clip.encode_image(video.flatten(0, 1)).view(b, t, -1).float(), dim=-1)
            mean = F.normalize((frames * real[..., None]).sum(1, keepdim=True), dim=-1)
            distinct = 1.0 - (frames * mean).sum(-1)                                    # [B, T_in]
            n = real.sum(1, keepdim=True).clamp(min=1)
            centre = (distinct * real).sum(1, keepdim=True) / n
            std = (((distinct - centre) * real) ** 2).sum(1, keepdim=True).div(n).sqrt()
            target = (distinct - centre) / (std + 1e-6) / AUX_TEMPERATURE
        return frame_score_loss(self.last_tempme_info["scores"], target, video_mask)
