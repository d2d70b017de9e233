"""AdamW parameter groups and the learning-rate schedule.

The learning rate is a pure function of the global optimiser step (`lr_at_step`), so a
resumed run needs only the step counter, never a scheduler object's state.
"""
from __future__ import annotations

import math
from argparse import Namespace

import torch
from torch import nn

from modules.errors import UserError

ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-6
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Embedding)


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The model's trainable (name, parameter) pairs by optimiser group: "tempme" (the
    compressor, `tempme_compressor.*`), "clip" (CLIP's own weights, with `--train_clip`) and
    "stop" (prompts, generators, the adapters inside CLIP's blocks, and the temporal embeddings of
    `--token_merge clip`). Empty groups are left out."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("tempme_compressor."):
            group = "tempme"
        elif name.startswith("clip.") and ".adapter." not in name:
            group = "clip"
        else:
            group = "stop"
        groups.setdefault(group, []).append((name, param))
    return groups


def trainable_names(model: nn.Module) -> set[str]:
    """Names of every parameter the optimiser trains (what checkpoints hold)."""
    return {name for group in parameter_groups(model).values() for name, _ in group}


def group_learning_rates(args: Namespace) -> dict[str, float]:
    """Base lr of each trainable group: STOP prompts/adapters, CLIP itself, TempMe."""
    return {"stop": args.lr, "clip": args.lr * args.coef_lr, "tempme": args.tempme_lr}


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names excluded from weight decay: biases, norm and embedding-table weights, scalars such
    as logit_scale, prompt/position tables (a parameter whose own name says prompt or embed),
    and whatever a submodule lists in its `no_weight_decay()` (timm's convention)."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if hasattr(module, "no_weight_decay"):
            names.update(prefix + name for name in module.no_weight_decay())
        for param_name, param in module.named_parameters(recurse=False):
            if (param.ndim < 2 or isinstance(module, _NO_DECAY_MODULES)
                    or "prompt" in param_name or "embed" in param_name):
                names.add(prefix + param_name)
    return names


def build_optimizer(model: nn.Module, args: Namespace) -> torch.optim.AdamW:
    """AdamW over the model's `parameter_groups`, each split into decay / no-decay.

    Each param group records `name`, `base_lr` (what `set_learning_rate` scales) and its
    weight decay (`--weight_decay` or 0).
    """
    base_lrs = group_learning_rates(args)
    no_decay = _no_decay_names(model)
    param_groups = []
    for group_name, named_params in parameter_groups(model).items():
        for decay in (True, False):
            params = [p for n, p in named_params if (n not in no_decay) == decay]
            if params:
                param_groups.append({"params": params, "name": f"{group_name}/{'decay' if decay else 'no_decay'}",
                                     "base_lr": base_lrs[group_name], "lr": base_lrs[group_name],
                                     "weight_decay": args.weight_decay if decay else 0.0})
    if not param_groups:
        raise UserError("the model has no trainable parameters: check --prompt_mode, --train_clip and "
                         "--use_tempme (training needs at least one trainable group)")
    return torch.optim.AdamW(param_groups, betas=ADAMW_BETAS, eps=ADAMW_EPS)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warmup to 1 over
    `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, total_steps: int,
                      warmup_steps: int) -> float:
    """Apply the schedule of step `step` to every group; returns the factor applied."""
    factor = lr_factor(step, total_steps, warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor


def schedule_lengths(steps_per_epoch: int, args: Namespace) -> tuple[int, int]:
    """(total optimiser steps, warmup steps) of the run."""
    total = steps_per_epoch * args.epochs
    return total, int(args.warmup_proportion * total)
