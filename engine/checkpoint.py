"""Every weight file the engine reads or writes: CLIP weights, run checkpoints, RNG states.

A checkpoint is a plain dict loadable with `torch.load(weights_only=True)`: the trainable
tensors only (never the frozen CLIP), optimiser and scaler state, epoch/step counters,
best score, the schedule lengths, the arguments as a plain dict and each rank's RNG states
as tensors and lists. Files are written to a temporary name and `os.replace`d, so a run
killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import logging
import os
import random
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import distributed
from modules import clip
from modules.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

LATEST = "latest.pt"
BEST = "best.pt"
# Parameter names of checkpoints written before the model took built parts (2026-12): the
# compressor was `tempme.*` and STOP's prompt modules sat at the top level.
_RENAMED_PREFIXES = (("tempme.", "tempme_compressor."), ("prompt_generator.", "prompts.prompt_generator."),
                     ("global_prompts", "prompts.global_prompts"), ("spatial_prompt.", "prompts.spatial_prompt."),
                     ("temporal_prompt.", "prompts.temporal_prompt."))


def _current_name(key: str) -> str:
    """A state-dict key with `module.` (DDP) stripped and an old parameter name renamed."""
    key = key.removeprefix("module.")
    for old, new in _RENAMED_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def clip_weights_path(args: Namespace) -> str:
    """`--clip_weights`, else `{--pretrained_dir}/{--pretrained_clip_name with '/' as '-'}.pt`."""
    if args.clip_weights:
        return args.clip_weights
    return os.path.join(args.pretrained_dir, args.pretrained_clip_name.replace("/", "-") + ".pt")


def load_clip_weights(args: Namespace) -> dict[str, torch.Tensor]:
    """CLIP's fp32 state dict: random init of `--clip_arch` for `--clip_init random`, else the
    file `clip_weights_path(args)` (MissingFileError naming it and its flag when missing)."""
    if args.clip_init == "random":
        return clip.random_clip_state_dict(args.clip_arch, seed=args.seed)
    flag = "--clip_weights" if args.clip_weights else "--pretrained_dir/--pretrained_clip_name"
    return clip.load_clip_state_dict(clip_weights_path(args), flag=flag)


def trainable_state_dict(model: nn.Module, trainable_names: set[str]) -> dict[str, torch.Tensor]:
    """The model's trainable tensors, plus buffers of modules that own trainable parameters
    (e.g. running statistics of a norm layer in the compressor). Frozen weights are left out."""
    owners = {name.rpartition(".")[0] for name in trainable_names}
    buffers = {name for name, _ in model.named_buffers() if name.rpartition(".")[0] in owners}
    return {k: v.detach() for k, v in model.state_dict().items() if k in trainable_names or k in buffers}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], trainable_names: set[str],
                     source: str, require_all_trainable: bool, flag: str = "--init_model") -> None:
    """Copy `state` into `model`. Unknown keys and tensors of another shape are a UserError naming
    `flag` and `source` (the file); trainable tensors missing from `state` are an error when
    resuming (`require_all_trainable`) and a warning otherwise (e.g. evaluating a STOP checkpoint
    with TempMe switched on). Outside resuming, a module with an `adapt_loaded_state(state, prefix)`
    method may first fit its tensors of another shape (STOP's per-frame prompt table, trained at
    another number of frames); each change is logged."""
    if not require_all_trainable:
        state = dict(state)
        for name, module in model.named_modules():
            if hasattr(module, "adapt_loaded_state"):
                for message in module.adapt_loaded_state(state, f"{name}." if name else ""):
                    log.info("%s: %s", source, message)
    model_state = model.state_dict()
    unexpected = sorted(set(state) - set(model_state))
    if unexpected:
        raise UserError(f"{flag} {source} holds weights this model does not have (e.g. {unexpected[:4]}): "
                        f"use the --prompt_mode/--use_tempme/--tempme_type flags it was trained with "
                        f"({run_args_path(source)})")
    missing = sorted(trainable_names - set(state))
    if missing and require_all_trainable:
        raise UserError(f"{flag} {source} lacks trainable weights of this model (e.g. {missing[:4]}): "
                        f"use the flags it was trained with ({run_args_path(source)})")
    check_shapes(model_state, state, source, flag)
    if missing:
        log.warning("%s lacks %d trainable tensors (kept at initialisation), e.g. %s", source, len(missing),
                    missing[:4])
    model.load_state_dict(state, strict=False)


def run_args_path(checkpoint_path: str) -> str:
    """Where the flags a checkpoint was trained with are: `args.json` of its run folder."""
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "args.json")


def check_shapes(model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
                 flag: str) -> None:
    """UserError naming `flag`, `source` and its run's args.json when a tensor of `state` has
    another shape than the model's tensor of the same name (the file was trained with other
    model flags: prompt counts, --adapter_dim, --clip_arch, TempMe sizes...)."""
    mismatched = [(name, tuple(tensor.shape), tuple(model_state[name].shape)) for name, tensor in state.items()
                  if name in model_state and tensor.shape != model_state[name].shape]
    if mismatched:
        name, theirs, ours = mismatched[0]
        raise UserError(f"{flag} {source}: {len(mismatched)} tensors have other shapes than this model's "
                        f"(e.g. {name}: {theirs} in the file, {ours} here); it was trained with other model "
                        f"flags: use those in its run's {run_args_path(source)}")


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, numpy, python) as tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(payload: dict[str, Any], path: str) -> None:
    """Write atomically: temporary file in the same folder, then `os.replace`."""
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


CHECKPOINT_EXPECTED = "a checkpoint of this project (best.pt or latest.pt of a run folder)"
# What `make_checkpoint` writes besides the model: resuming needs all of it.
TRAINING_KEYS = frozenset({"model", "optimizer", "scaler", "epoch", "step", "best_r1", "best_epoch",
                           "nonfinite_in_a_row", "schedule", "rng"})


def load_checkpoint(path: str, flag: str = "--init_model", training_state: bool = False) -> dict[str, Any]:
    """Load a checkpoint (or a bare state dict of trained tensors) on CPU with `weights_only=True`.

    `training_state` (resuming): the file must be a `make_checkpoint` dict. Anything else (CLIP
    weights, a file torch cannot read, trained tensors without optimiser state when resuming)
    raises a UserError naming `flag`, the file and the flag it belongs to."""
    content, archive = clip.read_weights_file(path, flag, CHECKPOINT_EXPECTED)
    kind = clip.weights_kind(content)
    if archive or kind in ("clip", "resnet_clip"):
        raise UserError(f"{flag} {path} holds CLIP weights, not {CHECKPOINT_EXPECTED}: pass it as --clip_weights")
    if kind not in ("checkpoint", "state_dict"):
        raise UserError(f"{flag} {path} holds no trained tensors (a {type(content).__name__}); "
                        f"expected {CHECKPOINT_EXPECTED}")
    if training_state and not TRAINING_KEYS <= set(content):
        raise UserError(f"{flag} {path} holds trained tensors only, no optimiser state or epoch to continue "
                        f"from: start from them with --init_model {path} instead")
    checkpoint = content if kind == "checkpoint" else {"model": content}  # a bare state dict of trained weights
    checkpoint["model"] = {_current_name(k): v for k, v in checkpoint["model"].items()}
    return checkpoint


def resolve_resume(resume: str | None, run_dir: str) -> str | None:
    """Checkpoint to resume from: `--resume auto` -> `<run_dir>/latest.pt` if it exists (else a
    fresh start, so the same command can be relaunched after a crash), `--resume PATH` -> PATH."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(run_dir, LATEST)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise MissingFileError(f"--resume {resume}: no such checkpoint file (use 'auto' or the path of a "
                               f"run's latest.pt)")
    return resume


@dataclass
class TrainingState:
    """Where a run stands after `epoch` completed epochs (what resuming needs besides tensors)."""
    epoch: int = 0
    step: int = 0
    best_r1: float = -1.0
    best_epoch: int | None = None
    nonfinite_in_a_row: int = 0
    rng: dict[str, Any] | None = None  # this rank's RNG states, restored right before training


def make_checkpoint(model: nn.Module, trainable_names: set[str], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, state: TrainingState, args: Namespace, *,
                    total_steps: int, warmup_steps: int) -> dict[str, Any]:
    """The checkpoint dict. Collective under torchrun (every rank's RNG states are gathered), so
    every rank calls it; rank 0 saves it."""
    return {
        "model": trainable_state_dict(model, trainable_names),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch, "step": state.step, "best_r1": state.best_r1, "best_epoch": state.best_epoch,
        "nonfinite_in_a_row": state.nonfinite_in_a_row,
        "schedule": {"total_steps": total_steps, "warmup_steps": warmup_steps},
        "rng": distributed.all_gather_object(capture_rng()),
        "args": vars(args).copy(),
    }


def restore_training(checkpoint: dict[str, Any], model: nn.Module, trainable_names: set[str],
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, source: str,
                     schedule: dict[str, int]) -> TrainingState:
    """Load model, optimiser and scaler state from a `make_checkpoint` dict; returns the state to
    continue from. This rank's RNG states are used when the world size matches, else a warning.
    `schedule` ({total_steps, warmup_steps} of this run) is compared with the checkpoint's."""
    if checkpoint["schedule"] != schedule:
        log.warning("%s: lr schedule %s differs from this run's %s (--epochs, --batch_size or the number of "
                    "processes changed); the learning rate continues on this run's schedule", source,
                    checkpoint["schedule"], schedule)
    load_model_state(model, checkpoint["model"], trainable_names, source, require_all_trainable=True,
                     flag="--resume")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as exc:
        raise UserError(f"--resume {source}: optimiser state does not match this model's trainable groups "
                        f"({exc}); resume with the flags the run was started with ({run_args_path(source)})") from exc
    scaler.load_state_dict(checkpoint["scaler"])
    rng_states = checkpoint["rng"]
    rng = rng_states[distributed.get_rank()] if len(rng_states) == distributed.get_world_size() else None
    if rng is None:
        log.warning("%s was written by %d processes, this run has %d: RNG streams restart from the seed, "
                    "so data order and augmentation differ from an uninterrupted run", source,
                    len(rng_states), distributed.get_world_size())
    return TrainingState(epoch=checkpoint["epoch"], step=checkpoint["step"], best_r1=checkpoint["best_r1"],
                         best_epoch=checkpoint["best_epoch"], nonfinite_in_a_row=checkpoint["nonfinite_in_a_row"],
                         rng=rng)
