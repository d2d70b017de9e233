"""CLIP4Clip: the text and video towers of CLIP with STOP prompts and optional TempMe.

    video uint8 [B,T_in,3,H,W] --normalise--> tempme_compressor (optional) --> [B,T,3,H,W] + mask [B,T]
        --> STOP prompts (optional) --> CLIP ViT (token merging optional) --> video embedding [B,D]
    input_ids [B,L] --> CLIP text transformer (with deep text prompts) --> text embedding [B,D]

The model takes built parts (`modules.factory.build_model` builds them from the flags) and
computes embeddings and their similarity; the training loss lives in `modules.loss`. CLIP is
frozen (and kept in eval mode) unless `train_clip`. Without prompts it is plain CLIP4Clip meanP.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modules.clip import CLIP, frozen_at_depth, normalize_video
from modules.stop import StopPrompts
from modules.token_merge import TokenMerger, merged_visual_forward

MAX_LOGIT_SCALE = math.log(100.0)
VIDEO_OUTPUTS = ("global_prompt0", "mean_cls")
PROMPT_MODES = ("stop", "none")


def masked_mean_of_normalized(frame_emb: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip meanP: frame embeddings `[B, T, D]` L2-normalised, averaged over real frames.

    A video without real frames gives zeros (not NaN). Returns `[B, D]`.
    """
    weights = (video_mask > 0).to(frame_emb.dtype).unsqueeze(-1)
    normed = F.normalize(frame_emb, dim=-1)
    return (normed * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class CLIP4Clip(nn.Module):
    """Text-video retrieval towers over one CLIP.

    Args:
        clip: the CLIP, with STOP's adapters in its blocks when prompting (`modules.stop.add_adapters`).
            Its own weights are frozen here unless `train_clip`; `logit_scale` always is.
        prompts: STOP's prompt modules, or None for plain CLIP4Clip meanP.
        tempme_compressor: a TempMe frame compressor (`modules.tempme`), or None.
        video_output: with prompts, "global_prompt0" (STOP) or "mean_cls" (meanP of the
            prompted frame CLS tokens); without prompts the output is always meanP.
        train_clip: fine-tune CLIP itself.
        frozen_clip_layers: with `train_clip`, the depth of CLIP that stays frozen (-1: none; N: the
            input embeddings and the first N blocks of each tower, `modules.clip.frozen_at_depth`).
        token_merger: token merging inside the ViT (`modules.token_merge`), or None. Its
            parameters (`clip` mode's temporal embeddings) train with the prompts.
    """

    def __init__(self, clip: CLIP, prompts: StopPrompts | None = None, tempme_compressor: nn.Module | None = None,
                 video_output: str = "global_prompt0", train_clip: bool = False, frozen_clip_layers: int = -1,
                 token_merger: TokenMerger | None = None) -> None:
        super().__init__()
        if video_output not in VIDEO_OUTPUTS:
            raise ValueError(f"--video_output must be one of {', '.join(VIDEO_OUTPUTS)}, got {video_output!r}")
        self.clip = clip
        self.prompts = prompts
        self.tempme_compressor = tempme_compressor
        self.video_output = video_output
        self.train_clip = train_clip
        self.token_merger = token_merger
        for name, param in clip.named_parameters():  # adapters (STOP's, inside CLIP's blocks) always train
            param.requires_grad_(".adapter." in name or (train_clip and not frozen_at_depth(name, frozen_clip_layers)))
        self.clip.logit_scale.requires_grad_(False)  # the temperature stays CLIP's (as in STOP)

    def train(self, mode: bool = True) -> "CLIP4Clip":
        """Frozen CLIP keeps eval-mode behaviour (dropout, norms) while the prompts train."""
        super().train(mode)
        if not self.train_clip:
            self.clip.eval()
        return self

    def get_text_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]` (SOT ... EOT, zero padding), attention_mask `[B, L]` -> `[B, D]`.

        The attention mask is implied by the ids: under CLIP's causal mask the EOT feature
        never sees the padding after it, so padding needs no explicit mask.
        """
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match "
                             f"input_ids {tuple(input_ids.shape)}")
        if self.prompts is None:
            return self.clip.encode_text(input_ids)
        return self.prompts.encode_text(self.clip, input_ids)

    def get_visual_output(self, video: torch.Tensor, video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video `[B, T, 3, H, W]` uint8 (0..255) or already-normalised float, video_mask `[B, T]`
        (1 = real frame) -> (video embedding `[B, D]`, mask of the frames CLIP saw `[B, T']`).

        T' = T without TempMe, the compressor's output length with it. Padded frames influence
        nothing.
        """
        emb, mask, _ = self.encode_video(video, video_mask)
        return emb, mask

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """`get_visual_output` plus the compressor's `info` (None without TempMe)."""
        if video.ndim != 5 or video.shape[:2] != video_mask.shape:
            raise ValueError(f"expected video [B, T, 3, H, W] and video_mask [B, T], got {tuple(video.shape)} "
                             f"and {tuple(video_mask.shape)}")
        if not video.is_floating_point():
            video = normalize_video(video)
        video = video.to(self.clip.dtype)
        info, source_indices = None, None
        input_frames = video.shape[1]
        if self.tempme_compressor is not None:
            video, video_mask, info = self.tempme_compressor(video, video_mask)
            source_indices = info["indices"]
        emb = self._embed(video, video_mask, source_indices, input_frames)
        return emb, video_mask, info

    def _embed(self, video: torch.Tensor, video_mask: torch.Tensor, source_indices: torch.Tensor | None,
               input_frames: int) -> torch.Tensor:
        """The video tower after the compressor: normalised frames `[B, T, 3, H, W]` -> `[B, D]`;
        `source_indices [B, T]` locate the frames among `input_frames` (STOP's prompt rows)."""
        visual = self.clip.visual
        if self.prompts is None:
            b, t = video_mask.shape
            if self.token_merger is None:
                frame_emb = visual(video.flatten(0, 1)).view(b, t, -1)
            else:
                frame_emb = visual.head(merged_visual_forward(visual, video, video_mask, self.token_merger))
            return masked_mean_of_normalized(frame_emb, video_mask)
        glob, cls = self.prompts.encode_video(visual, video, video_mask, source_indices, input_frames,
                                              self.token_merger)
        if self.video_output == "global_prompt0":
            return visual.head(glob[:, 0])
        return masked_mean_of_normalized(visual.head(cls), video_mask)

    @torch.no_grad()
    def frame_embeddings(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Every real frame alone through the video tower (a one-frame video at its place in
        time, no compressor), L2-normalised, no gradient: `video [B, T, 3, H, W]` (uint8 or
        normalised), `video_mask [B, T]` -> `[B, T, D]` float32 (zeros at padded frames). What
        a frame-selection teacher judges each input frame by (`modules.loss`)."""
        if not video.is_floating_point():
            video = normalize_video(video)
        video = video.to(self.clip.dtype)
        b, t = video_mask.shape
        real = video_mask > 0
        if not real.any():
            return video.new_zeros(b, t, self.clip.visual.proj.shape[1], dtype=torch.float32)
        position = torch.arange(t, device=video.device).expand(b, t)[real]
        frames = video[real][:, None]                                            # [N, 1, 3, H, W]
        emb = self._embed(frames, frames.new_ones(frames.shape[0], 1), position[:, None], t)
        out = emb.new_zeros(b, t, emb.shape[-1], dtype=torch.float32)
        out[real] = F.normalize(emb.float(), dim=-1)
        return out

    def logit_scale(self) -> torch.Tensor:
        """The similarity temperature `exp(logit_scale)`, clamped to at most 100 (a scalar)."""
        return self.clip.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def get_similarity_logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """`logit_scale * cos(text, video)`: `[Bt, D]`, `[Bv, D]` -> `[Bt, Bv]`."""
        return self.logit_scale() * F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).t()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, video: torch.Tensor,
                video_mask: torch.Tensor) -> dict[str, Any]:
        """Both towers on one batch; `modules.loss.RetrievalLoss` turns the result into the loss.

        Returns {"text_emb" `[B, D]`, "video_emb" `[B, D]`, "logit_scale" (scalar, exp'd),
        "video_mask" `[B, T']` (frames CLIP saw), "info" (the compressor's, or None)}.
        """
        text_emb = self.get_text_output(input_ids, attention_mask)
        video_emb, mask_out, info = self.encode_video(video, video_mask)
        return {"text_emb": text_emb, "video_emb": video_emb, "logit_scale": self.logit_scale(),
                "video_mask": mask_out, "info": info}
