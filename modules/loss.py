"""The training loss: symmetric InfoNCE over the global batch plus TempMe's frame-selection term.

`RetrievalLoss(config)(model(input_ids, attention_mask, video, video_mask))` is what training
minimises (`engine.factory.build_loss` builds it from the flags; the training step adds the
frame-selection teacher's inputs). Under torchrun the
embeddings are all-gathered, the local shard keeping its gradient, so every process computes
the loss of the global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Temperature turning standardised frame distinctiveness into `frame_score_loss` targets:
# with 0.25 a frame 1 std more distinct than another gets e^4 (~55x) its target mass.
AUX_TEMPERATURE = 0.25


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` [N, ...] from every process along dim 0 -> [world*N, ...].

    The local shard keeps its autograd graph (gathered copies from other ranks are constants),
    so each process back-propagates the global-batch loss into its own samples only.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered, dim=0)


def symmetric_infonce(text_emb: torch.Tensor, video_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the cross-entropies over rows and over columns of `logit_scale * cos(text, video)`,
    text `[N, D]` and video `[N, D]` paired by index. Returns a scalar."""
    logits = logit_scale * F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def caption_contrast_loss(text_emb: torch.Tensor, logit_scale: torch.Tensor,
                          owners: torch.Tensor | None = None) -> torch.Tensor:
    """Each caption told apart from the batch's other captions: the cross-entropy of
    `logit_scale * cos(text_i, text_j)` over j at j = i, for text `[N, D]`. Captions of the same
    video (`owners [N]`, the video of each caption) are not each other's negatives. Keeps captions
    that differ by one detail from collapsing onto one embedding, which contrastive training from
    scratch otherwise allows as long as the videos do not yet show the detail either. A scalar."""
    texts = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.detach().float() * texts @ texts.t()
    labels = torch.arange(texts.shape[0], device=texts.device)
    if owners is not None:
        same_video = (owners[:, None] == owners[None, :]) & (labels[:, None] != labels[None, :])
        logits = logits.masked_fill(same_video, float("-inf"))
    return F.cross_entropy(logits, labels)


def frame_score_loss(scores: torch.Tensor, target_logits: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from softmax(target_logits) to softmax(scores) over the real frames.

    `scores` is the compressor's `info["scores"] [B, T]`, `target_logits [B, T]` (treated as
    constant), `video_mask [B, T]`. Videos without real frames are ignored. Returns a scalar.
    """
    real = video_mask > 0
    has_frames = real.any(1, keepdim=True)
    # Rows without real frames are made all-real (and dropped below) so nothing turns NaN.
    usable = real | ~has_frames
    log_p = scores.float().masked_fill(~usable, float("-inf")).log_softmax(-1)
    target = target_logits.detach().float().masked_fill(~usable, float("-inf")).softmax(-1)
    per_video = -(target * log_p.masked_fill(~usable, 0.0)).sum(-1)
    has_frames = has_frames.squeeze(1)
    return per_video[has_frames].mean() if has_frames.any() else scores.sum() * 0.0


def standardised(values: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """`values [B, T]` minus their mean over each video's real frames, over their std (+1e-6)."""
    real = (video_mask > 0).float()
    n = real.sum(1, keepdim=True).clamp(min=1)
    centre = (values * real).sum(1, keepdim=True) / n
    std = (((values - centre) * real) ** 2).sum(1, keepdim=True).div(n).sqrt()
    return (values - centre) / (std + 1e-6)


def distinctiveness_targets(frame_emb: torch.Tensor, video_mask: torch.Tensor,
                            temperature: float = AUX_TEMPERATURE) -> torch.Tensor:
    """Target logits `[B, T]` from L2-normalised frame embeddings `[B, T, D]`: each real frame's
    cosine distance to its video's mean embedding, standardised over the video's real frames,
    divided by `temperature`."""
    real = (video_mask > 0).float()
    mean = F.normalize((frame_emb * real[..., None]).sum(1, keepdim=True), dim=-1)
    return standardised(1.0 - (frame_emb * mean).sum(-1), video_mask) / temperature


def caption_relevance_targets(frame_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Target logits `[B_t, T]`: how surely each frame picks out its own video's caption among the
    batch's captions, `log softmax_c(logit_scale * cos(text_c, frame))` at c = its video.

    `frame_emb [B_t, T, D]` (L2-normalised) belongs to the first B_t of the captions
    `text_emb [B, D]`. A frame showing what the caption says, including the detail that tells it
    from the other captions, scores high; an outlier that no caption describes scores low.
    """
    texts = F.normalize(text_emb.detach().float(), dim=-1)
    logits = logit_scale.detach().float() * frame_emb @ texts.t()                 # [B_t, T, B]
    own = torch.arange(frame_emb.shape[0], device=frame_emb.device)
    return logits.log_softmax(-1)[own, :, own]


def completion_targets(frame_emb: torch.Tensor, video_mask: torch.Tensor, kept: torch.Tensor,
                       text_emb: torch.Tensor, logit_scale: torch.Tensor,
                       temperature: float = AUX_TEMPERATURE) -> torch.Tensor:
    """Target logits `[B_t, T]`: how much each frame adds to the other frames the compressor keeps,
    for picking out its video's caption among the batch's captions.

    A set of frames is approximated in the embedding space by the sum of their embeddings divided
    by K, the number of frames kept (the same divisor with and without the frame judged), and
    judged by `log softmax_c(logit_scale * <text_c, set>)` at c = its video. Not renormalised: a
    frame that matches no caption then moves every caption's score alike and adds nothing, where
    renormalising the set would shrink all scores and make such a frame look useful whenever the
    kept frames favour a rival caption (in the quality study's clips with distractors, a selector
    taught with the renormalised set kept about 1.5x as many outlier frames).

    Frame t's value is that judgement of the kept frames other than t with t, minus that of the
    kept frames other than t (what keeping t adds; what dropping it would lose), standardised over
    the video's real frames and divided by `temperature`. A frame is judged with the others, not
    alone: the frame showing the one detail that tells the caption from its closest rivals (a brief
    event) scores high although, alone, it shows little of the rest (colours, shapes); a frame that
    repeats what is kept, or an outlier that no caption describes, adds nothing and scores low.

    `frame_emb [B_t, T, D]` (L2-normalised, zeros where padded), `video_mask [B_t, T]`, `kept
    [B_t, K]` (indices into T, -1 = no frame: the compressor's `info["indices"]`) belong to the
    first B_t captions of `text_emb [B, D]`.
    """
    b, t = video_mask.shape
    valid, slots = kept >= 0, kept.clamp(min=0)
    picked = frame_emb.gather(1, slots[..., None].expand(-1, -1, frame_emb.shape[-1]))
    is_kept = torch.zeros(b, t, dtype=torch.bool, device=kept.device)
    is_kept.scatter_(1, slots, valid)
    others = (picked * valid[..., None]).sum(1)[:, None] - frame_emb * is_kept[..., None]   # [B_t, T, D]
    texts = F.normalize(text_emb.detach().float(), dim=-1)
    own = torch.arange(b, device=frame_emb.device)
    count = valid.sum(1).clamp(min=1)[:, None, None].float()     # K per video

    def judged(sets: torch.Tensor) -> torch.Tensor:              # [B_t, T, D] -> [B_t, T]
        logits = logit_scale.detach().float() * (sets / count) @ texts.t()
        return logits.log_softmax(-1)[own, :, own]

    value = (judged(others + frame_emb) - judged(others)).masked_fill(video_mask <= 0, 0.0)
    return standardised(value, video_mask) / temperature


TEACHERS = ("completion", "text", "distinct")


@dataclass
class LossConfig:
    """The loss's flags, their defaults the flags': `--caption_contrast` (`caption_contrast`: weight
    of `caption_contrast_loss`, 0 = off), and TempMe's frame-selection term: `--tempme_aux_weight`
    (`aux_weight`, 0 = no frame-selection term), `--tempme_teacher` (`teacher`) and
    `--tempme_teacher_share` (`teacher_share`: the share of each batch's videos, the first
    ceil(share * B), whose every input frame the model embeds for the teacher; a share, not every
    video, because those frames are what TempMe saves CLIP from)."""
    caption_contrast: float = 0.0
    aux_weight: float = 1.0
    teacher: str = "completion"
    teacher_share: float = 0.25

    @classmethod
    def from_flags(cls, flags: Any) -> "LossConfig":
        """From any object carrying the flags as attributes."""
        return cls(caption_contrast=flags.caption_contrast, aux_weight=flags.tempme_aux_weight,
                   teacher=flags.tempme_teacher, teacher_share=flags.tempme_teacher_share)

    def validate(self) -> None:
        """Raise ValueError naming the flag for values the loss cannot use."""
        if self.caption_contrast < 0:
            raise ValueError(f"--caption_contrast must be >= 0 (0 turns it off), got {self.caption_contrast}")
        if self.aux_weight < 0:
            raise ValueError(f"--tempme_aux_weight must be >= 0 (0 turns the auxiliary loss off), got {self.aux_weight}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"--tempme_teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        if not 0.0 <= self.teacher_share <= 1.0:
            raise ValueError(f"--tempme_teacher_share must be in [0, 1], got {self.teacher_share}")

    def taught_videos(self, batch_size: int) -> int:
        """How many of a batch's videos (the first ones) the teacher needs embedded frame by frame."""
        return math.ceil(self.teacher_share * batch_size) if self.aux_weight > 0 else 0


class RetrievalLoss(nn.Module):
    """Symmetric InfoNCE over the global batch, plus `aux_weight` x the frame-selection loss.

    The auxiliary term teaches the compressor's frame scores (`outputs["info"]["scores"]`)
    about every input frame of the first `config.taught_videos(B)` videos, which the training
    step embeds frame by frame (`CLIP4Clip.frame_embeddings`) into `outputs["teacher_frame_emb"]`
    `[B_t, T_in, D]` with their `outputs["input_mask"]` `[B_t, T_in]`: the straight-through gate
    only tells the compressor about frames it already selected. `teacher` picks the targets:
    "completion" (`completion_targets`: what a frame adds to the frames kept with it, for picking
    out its caption), "text" (`caption_relevance_targets`: frames that pick out their own caption
    alone, as a log-posterior) or "distinct" (`distinctiveness_targets`: frames unlike the rest of
    their video).
    """

    def __init__(self, config: LossConfig | None = None, aux_temperature: float = AUX_TEMPERATURE) -> None:
        super().__init__()
        self.config = config or LossConfig(aux_weight=0.0)
        self.config.validate()
        self.aux_temperature = aux_temperature

    def frame_targets(self, outputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's target logits `[B_t, T_in]` for the taught videos of `outputs`."""
        frame_emb, mask = outputs["teacher_frame_emb"], outputs["input_mask"]
        teacher = self.config.teacher
        if teacher == "distinct":
            return distinctiveness_targets(frame_emb, mask, self.aux_temperature)
        if teacher == "completion":
            return completion_targets(frame_emb, mask, outputs["info"]["indices"][:frame_emb.shape[0]],
                                      outputs["text_emb"], outputs["logit_scale"], self.aux_temperature)
        return caption_relevance_targets(frame_emb, outputs["text_emb"], outputs["logit_scale"])

    def forward(self, outputs: dict[str, Any], output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """`outputs` of `CLIP4Clip.forward` (plus the teacher's frame embeddings, see the class, and
        the batch's "video_index" `[B]` for the caption contrast) -> the scalar loss, or with
        `output_dict` {"contrastive", "caption_contrast", "frame_selection" (those computed), "loss"}."""
        text_emb = all_gather_with_grad(outputs["text_emb"])   # gathered once, for both terms
        losses = {"contrastive": symmetric_infonce(text_emb, all_gather_with_grad(outputs["video_emb"]),
                                                   outputs["logit_scale"])}
        loss = losses["contrastive"]
        if self.config.caption_contrast > 0:
            owners = outputs.get("video_index")
            losses["caption_contrast"] = caption_contrast_loss(
                text_emb, outputs["logit_scale"], None if owners is None else all_gather_with_grad(owners))
            loss = loss + self.config.caption_contrast * losses["caption_contrast"]
        if self.config.aux_weight > 0 and "teacher_frame_emb" in outputs:
            taught = outputs["teacher_frame_emb"].shape[0]
            losses["frame_selection"] = frame_score_loss(outputs["info"]["scores"][:taught],
                                                         self.frame_targets(outputs), outputs["input_mask"])
            loss = loss + self.config.aux_weight * losses["frame_selection"]
        losses["loss"] = loss
        return losses if output_dict else loss
