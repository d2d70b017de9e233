"""The one place where flags become modules: `build_model` and `build_loss`.

    model = build_model(clip_state_dict, args)         # CLIP4Clip with its STOP prompts and TempMe
    loss = build_loss(args)(model(input_ids, attention_mask, video, video_mask))

`args` is the namespace of `params.get_args` (or any object with those attributes). Below
this module everything takes typed configurations (`StopConfig`, `TempMeConfig`) or explicit
arguments.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from modules.checkpoint import load_checkpoint, load_clip_weights, load_model_state
from modules.clip import build_clip
from modules.clip4clip import CLIP4Clip
from modules.errors import UserError
from modules.loss import RetrievalLoss
from modules.optim import trainable_names
from modules.stop import REFERENCE_RESOLUTION, StopConfig, StopPrompts, add_adapters
from modules.tempme import TempMeConfig, get_tempme_model
from modules.token_merge import TokenMergeConfig, TokenMerger

__all__ = ["build_model", "build_loss", "build_trained_model", "stop_config", "tempme_config", "token_merge_config",
           "StopConfig", "TempMeConfig", "TokenMergeConfig"]


def tempme_config(args: Any) -> TempMeConfig:
    """The TempMe flags (`--use_tempme`, `--tempme_*`, `--max_frames`) as a `TempMeConfig`."""
    return TempMeConfig.from_flags(args)


def stop_config(args: Any, prompt_frames: int) -> StopConfig:
    """The "STOP prompts" flags as a `StopConfig` with `prompt_frames` per-frame prompt rows; the
    prompt kernels shrink with frames smaller than the reference's 224 px (`--image_size`)."""
    derived = {"prompt_frames": prompt_frames, "kernel_scale": min(1.0, args.image_size / REFERENCE_RESOLUTION)}
    return StopConfig(**{f.name: getattr(args, f.name) for f in fields(StopConfig) if f.name not in derived},
                      **derived)


def token_merge_config(args: Any) -> TokenMergeConfig:
    """`--token_merge` / `--token_merge_r` as a `TokenMergeConfig` sized for the most frames that
    can reach CLIP (`--max_frames`, or the compressor's most output frames)."""
    return TokenMergeConfig(mode=args.token_merge, r=args.token_merge_r,
                            max_frames=tempme_config(args).num_output_frames)


def build_model(clip_state_dict: dict[str, torch.Tensor], args: Any) -> CLIP4Clip:
    """CLIP4Clip over a CLIP holding `clip_state_dict`, with what the flags ask for: STOP's prompts
    and adapters (`--prompt_mode stop`), a TempMe compressor (`--use_tempme`), token merging
    inside the ViT (`--token_merge`), the output mode, CLIP fine-tuning, and the share of each
    batch taught frame by frame for the auxiliary loss (`--tempme_teacher_share`, when
    `--tempme_aux_weight > 0`).

    The per-frame prompt tables get one row per frame that can reach CLIP: `--max_frames`, or
    the compressor's most output frames if larger. Raises ValueError naming the flag for
    combinations that cannot be built (e.g. `--image_size` other than CLIP's resolution).
    """
    clip = build_clip(clip_state_dict)
    if args.image_size != clip.visual.input_resolution:
        raise UserError(f"--image_size {args.image_size} does not match CLIP's input resolution "
                         f"{clip.visual.input_resolution}; set --image_size {clip.visual.input_resolution}")
    compressor = get_tempme_model(tempme_config(args))
    prompts = None
    if args.prompt_mode == "stop":
        config = stop_config(args, prompt_frames=max(args.max_frames, compressor.output_frames if compressor else 0))
        prompts = StopPrompts(config, clip)
        if config.adapter:
            add_adapters(clip, config.adapter_dim, config.adapter_scale)
    merge = token_merge_config(args)
    merger = None if merge.mode == "none" else TokenMerger(
        merge, depth=clip.visual.transformer.layers, num_patches=clip.visual.num_patches, width=clip.visual.width)
    teacher_share = args.tempme_teacher_share if compressor is not None and args.tempme_aux_weight > 0 else 0.0
    return CLIP4Clip(clip, prompts, compressor, video_output=args.video_output, train_clip=args.train_clip,
                     teacher_share=teacher_share, token_merger=merger)


def build_trained_model(args: Any, checkpoint_path: str | None = None,
                        require_all_trainable: bool = False) -> CLIP4Clip:
    """`build_model` on the CLIP weights the flags name (`checkpoint.load_clip_weights`), then the
    trained tensors of `checkpoint_path` (a run's best.pt / latest.pt), if given. Trainable
    tensors the checkpoint lacks keep their initialisation with a warning, or raise with
    `require_all_trainable`."""
    model = build_model(load_clip_weights(args), args)
    if checkpoint_path:
        load_model_state(model, load_checkpoint(checkpoint_path)["model"], trainable_names(model),
                         source=checkpoint_path, require_all_trainable=require_all_trainable)
    return model


def build_loss(args: Any) -> RetrievalLoss:
    """The training loss: symmetric InfoNCE, plus `--tempme_aux_weight` x the frame-selection loss
    of `--tempme_teacher` when TempMe is on."""
    return RetrievalLoss(aux_weight=args.tempme_aux_weight if args.use_tempme else 0.0, teacher=args.tempme_teacher)
