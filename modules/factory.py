"""The one place where flags become modules: `build_model` and `build_loss`.

    model = build_model(clip_state_dict, args)         # CLIP4Clip with its STOP prompts and TempMe
    loss = build_loss(args)(model(input_ids, attention_mask, video, video_mask))
    model, args = model_from_checkpoint("outputs/run/best.pt")   # a trained model from its run alone

`args` is the namespace of `params.get_args` (or any object with those attributes). Below
this module everything takes typed configurations (`StopConfig`, `TempMeConfig`) or explicit
arguments.
"""
from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import fields
from typing import Any

import torch

import params
from modules.checkpoint import clip_weights_path, load_checkpoint, load_clip_weights, load_model_state
from modules.clip import INITIAL_LOGIT_SCALE, build_clip
from modules.clip4clip import CLIP4Clip
from modules.errors import UserError
from modules.loss import RetrievalLoss
from modules.optim import trainable_names
from modules.stop import REFERENCE_RESOLUTION, StopConfig, StopPrompts, add_adapters
from modules.tempme import TempMeConfig, get_tempme_model
from modules.token_merge import TokenMergeConfig, TokenMerger

__all__ = ["build_model", "build_loss", "build_trained_model", "model_from_checkpoint", "checkpoint_args",
           "stop_config", "tempme_config", "token_merge_config", "StopConfig", "TempMeConfig", "TokenMergeConfig"]


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


def checkpoint_args(saved: dict[str, Any]) -> Namespace:
    """A checkpoint's saved arguments (`vars(args)`) over the defaults of today's flags, so a
    checkpoint written before a flag existed gets that flag's default."""
    args = params.build_parser().parse_args([])
    vars(args).update(saved)
    return args


def _clip_state_for(checkpoint: dict[str, Any], args: Namespace, source: str) -> dict[str, torch.Tensor]:
    """CLIP's state dict for rebuilding a trained model: the checkpoint's own `clip.*` tensors when
    CLIP was trained (`--train_clip`: every CLIP weight but the frozen temperature is saved, which
    gets CLIP's initial value; search scores are cosines, so it changes no result), else a
    random CLIP re-created from `--clip_init random --clip_arch --seed`, else the CLIP weights file."""
    held = {k.removeprefix("clip."): v for k, v in checkpoint["model"].items()
            if k.startswith("clip.") and ".adapter." not in k}
    if args.train_clip and "visual.conv1.weight" in held:
        return {**held, "logit_scale": torch.tensor(INITIAL_LOGIT_SCALE)}
    if args.clip_init != "random" and not os.path.isfile(clip_weights_path(args)):
        raise FileNotFoundError(f"{source} holds no CLIP weights (trained with --train_clip False) and the CLIP "
                                f"weights file {clip_weights_path(args)} is not there: pass --clip_weights PATH")
    return load_clip_weights(args)


def model_from_checkpoint(path: str, clip_weights: str | None = None) -> tuple[CLIP4Clip, Namespace]:
    """The trained model of a run's checkpoint (best.pt / latest.pt), rebuilt from the arguments
    it saved (`checkpoint_args`), on CPU in eval mode, and those arguments.

    CLIP comes from the checkpoint when it holds it, else as the run made it (`_clip_state_for`);
    `clip_weights` replaces the run's CLIP weights path. The model is built under the run's seed
    (as `main.py` does), then takes every trained tensor: it is the model the run evaluated.
    Raises ValueError for a checkpoint without saved arguments (a bare state dict).
    """
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("args"), dict):
        raise ValueError(f"{path} holds no saved arguments (a bare state dict?): pass a run's best.pt or "
                         f"latest.pt written by main.py")
    args = checkpoint_args(checkpoint["args"])
    if clip_weights:
        args.clip_weights = clip_weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(_clip_state_for(checkpoint, args, path), args)
    load_model_state(model, checkpoint["model"], trainable_names(model), source=path, require_all_trainable=True)
    return model.eval(), args


def build_loss(args: Any) -> RetrievalLoss:
    """The training loss: symmetric InfoNCE, plus `--tempme_aux_weight` x the frame-selection loss
    of `--tempme_teacher` when TempMe is on."""
    return RetrievalLoss(aux_weight=args.tempme_aux_weight if args.use_tempme else 0.0, teacher=args.tempme_teacher)
