"""Flags to model and loss: the engine's side of `modules.factory`.

    model = build_trained_model(args, "outputs/run/best.pt")  # CLIP weights the flags name + trained tensors
    loss = build_loss(args)
    model, args = model_from_checkpoint("outputs/run/best.pt")  # a trained model from its run alone

`args` is the namespace of `params.get_args` (or any object with those attributes).
"""
from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import replace
from typing import Any

import torch

import params
from engine.checkpoint import clip_weights_path, load_checkpoint, load_clip_weights, load_model_state
from engine.optim import trainable_names
from modules.clip import INITIAL_LOGIT_SCALE
from modules.clip4clip import CLIP4Clip
from modules.factory import ModelConfig, build_model
from modules.loss import LossConfig, RetrievalLoss

__all__ = ["model_config", "build_trained_model", "model_from_checkpoint", "checkpoint_args", "build_loss"]


def model_config(args: Any) -> ModelConfig:
    """The model flags as a `ModelConfig`."""
    return ModelConfig.from_flags(args)


def build_trained_model(args: Any, checkpoint_path: str | None = None,
                        require_all_trainable: bool = False) -> CLIP4Clip:
    """`build_model` on the CLIP weights the flags name (`checkpoint.load_clip_weights`), then the
    trained tensors of `checkpoint_path` (a run's best.pt / latest.pt), if given. Trainable
    tensors the checkpoint lacks keep their initialisation with a warning, or raise with
    `require_all_trainable`."""
    model = build_model(load_clip_weights(args), model_config(args))
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
    all of CLIP was trained (`--train_clip` without `--clip_frozen_layers`: every CLIP weight but
    the frozen temperature is saved, which gets CLIP's initial value; search scores are cosines, so
    it changes no result), else a random CLIP re-created from `--clip_init random --clip_arch
    --seed`, else the CLIP weights file (the trained tensors are loaded over either)."""
    held = {k.removeprefix("clip."): v for k, v in checkpoint["model"].items()
            if k.startswith("clip.") and ".adapter." not in k}
    if args.train_clip and "visual.conv1.weight" in held:
        return {**held, "logit_scale": torch.tensor(INITIAL_LOGIT_SCALE)}
    if args.clip_init != "random" and not os.path.isfile(clip_weights_path(args)):
        raise FileNotFoundError(f"{source} holds not all of CLIP's weights (trained with --train_clip False or "
                                f"--clip_frozen_layers) and the CLIP weights file {clip_weights_path(args)} is not "
                                f"there: pass --clip_weights PATH")
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
        model = build_model(_clip_state_for(checkpoint, args, path), model_config(args))
    load_model_state(model, checkpoint["model"], trainable_names(model), source=path, require_all_trainable=True)
    return model.eval(), args


def build_loss(args: Any) -> RetrievalLoss:
    """The training loss: symmetric InfoNCE, plus `--tempme_aux_weight` x the frame-selection loss
    of `--tempme_teacher` on a `--tempme_teacher_share` of each batch when TempMe is on."""
    config = LossConfig.from_flags(args)
    return RetrievalLoss(config if args.use_tempme else replace(config, aux_weight=0.0))  # no selection, no teacher
