"""One training epoch: forward (with the frame-selection teacher's inputs), loss scaling for DDP
and accumulation, clipping, AMP, skips.

The loss (`modules.loss.RetrievalLoss` of the model's outputs) is the global-batch InfoNCE on
every rank (features are all-gathered with the local shard keeping its gradient). DDP averages
gradients over ranks, so each rank back-propagates `loss * world_size`: one process and N
processes then take the same step for the same global batch.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from argparse import Namespace
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engine import distributed, optim
from engine.interrupt import deferred_ctrl_c, raise_if_ctrl_c
from engine.precision import autocast
from modules.clip import normalize_video
from modules.errors import UserError
from modules.loss import RetrievalLoss

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "video", "video_mask")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: `epoch` is the epoch in progress (1-based), `step` the optimiser
    steps completed. A KeyboardInterrupt, so anything that stops on Ctrl-C still does."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch} step {step}")
        self.epoch = epoch
        self.step = step


@contextlib.contextmanager
def interrupted_at(epoch: int, step: Callable[[], int]) -> Iterator[None]:
    """Turn a Ctrl-C inside the block into `Interrupted(epoch, step())` (an inner, more precise
    `Interrupted` passes through unchanged)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as exc:
        raise Interrupted(epoch, step()) from exc


class NonFiniteLossError(UserError, RuntimeError):
    """Raised after `--max_nonfinite_steps` consecutive non-finite losses (the message says which
    flags to change, so the run ends with that one line)."""


def model_outputs(model: nn.Module, loss_fn: RetrievalLoss, inputs: list[torch.Tensor],
                  video_index: torch.Tensor | None = None) -> dict[str, Any]:
    """The model's outputs for one batch (`input_ids`, `attention_mask`, `video`, `video_mask`), plus
    what the loss needs besides: the batch's `video_index [B]` (whose captions are whose), and for
    the frame-selection teacher every input frame of the first `loss_fn.config.taught_videos(B)`
    videos embedded alone (`CLIP4Clip.frame_embeddings`, no gradient) as "teacher_frame_emb", with
    their mask as "input_mask". `model` may be DDP-wrapped."""
    input_ids, attention_mask, video, video_mask = inputs
    if not video.is_floating_point():
        video = normalize_video(video)  # once: the model and the teacher share it
    outputs = model(input_ids, attention_mask, video, video_mask)
    if video_index is not None:
        outputs["video_index"] = video_index
    taught = loss_fn.config.taught_videos(video.shape[0])
    if taught:
        towers = model.module if isinstance(model, DistributedDataParallel) else model
        outputs["teacher_frame_emb"] = towers.frame_embeddings(video[:taught], video_mask[:taught])
        outputs["input_mask"] = video_mask[:taught]
    return outputs


def train_one_epoch(model: nn.Module, loss_fn: RetrievalLoss, loader: Iterable[dict[str, Any]],
                    optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, args: Namespace, *, epoch: int, start_step: int,
                    steps_per_epoch: int, total_steps: int, warmup_steps: int, device: torch.device,
                    precision: str, nonfinite_in_a_row: int = 0) -> dict[str, Any]:
    """Run `steps_per_epoch` optimiser steps of `--gradient_accumulation_steps` batches each.

    The loss of a batch is `loss_fn(model_outputs(model, loss_fn, batch inputs))`.
    Batches hold `input_ids`/`attention_mask` [B, L], `video` uint8 [B, T, 3, H, W],
    `video_mask` [B, T] (B = this process's share of `--batch_size`). A non-finite loss skips
    its optimiser step with a warning; `--max_nonfinite_steps` in a row raise NonFiniteLossError.
    Ctrl-C raises `Interrupted(epoch + 1, optimiser steps done)`.
    Returns {"loss", "lr" (per trainable group), "step", "steps", "skipped_steps", "samples_per_s", "bad_videos",
    "nonfinite_in_a_row"} (loss: mean over finite batches of the global-batch loss).
    """
    model.train()
    accum = args.gradient_accumulation_steps
    world = distributed.get_world_size()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step, loss_sum, loss_count, skipped, bad_videos, samples = start_step, 0.0, 0, 0, 0, 0
    window_ok = True
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True,
               disable=args.no_progress or not distributed.is_main_process())
    # Ctrl-C: stop at the next batch, raised as where training stopped, for the message.
    with interrupted_at(epoch + 1, lambda: step), deferred_ctrl_c():
        for i, batch in enumerate(loader):
            raise_if_ctrl_c()
            if i >= steps_per_epoch * accum:
                break  # an incomplete accumulation window at the end is dropped
            if i % accum == 0:
                optim.set_learning_rate(optimizer, step, total_steps, warmup_steps)
            last_in_window = (i + 1) % accum == 0
            bad_videos += int(batch["num_bad_videos"].sum()) if "num_bad_videos" in batch else 0
            samples += batch["input_ids"].shape[0]
            inputs = [batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS]
            video_index = batch["video_index"].to(device) if "video_index" in batch else None
            # Gradients are synchronised across ranks only on the last batch of a window.
            sync = contextlib.nullcontext() if last_in_window or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(precision, device):
                    loss = loss_fn(model_outputs(model, loss_fn, inputs, video_index))
                finite = distributed.all_reduce_number(0.0 if torch.isfinite(loss).item() else 1.0, "max") == 0
                if finite:
                    scaler.scale(loss * world / accum).backward()
                    loss_sum += loss.item()
                    loss_count += 1
                else:
                    window_ok = False
            if not last_in_window:
                continue
            if window_ok:
                if args.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                nonfinite_in_a_row = 0
            else:
                skipped += 1
                nonfinite_in_a_row += 1
                log.warning("epoch %d step %d: non-finite loss, optimiser step skipped (%d in a row, limit %d)",
                            epoch + 1, step + 1, nonfinite_in_a_row, args.max_nonfinite_steps)
                if nonfinite_in_a_row >= args.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{nonfinite_in_a_row} consecutive non-finite losses (--max_nonfinite_steps "
                        f"{args.max_nonfinite_steps}); lower --lr / --tempme_lr, use --precision amp_bf16 or "
                        f"fp32, or check the data for empty videos")
            optimizer.zero_grad(set_to_none=True)
            window_ok = True
            step += 1
            bar.update(1)
            if loss_count:
                bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if args.log_every and (step - start_step) % args.log_every == 0:
                log.info("epoch %d step %d/%d | loss %.4f | lr %.3e | %.1f samples/s", epoch + 1,
                         step - start_step, steps_per_epoch, loss.item(), optimizer.param_groups[0]["lr"],
                         samples * world / (time.perf_counter() - start))
    bar.close()
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / loss_count if loss_count else math.nan,
            "lr": {g["name"].split("/")[0]: g["lr"] for g in optimizer.param_groups}, "step": step, "steps": step - start_step,
            "skipped_steps": skipped, "samples_per_s": samples * world / max(elapsed, 1e-9),
            "bad_videos": int(distributed.all_reduce_number(bad_videos)),
            "nonfinite_in_a_row": nonfinite_in_a_row}
