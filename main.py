"""Train and evaluate STOP (+ TempMe) text-video retrieval: `python main.py --demo`.

One process (CPU or one GPU) or `torchrun --nproc_per_node N main.py ...` (one process per
GPU; gloo on CPU). `main(argv)` reads as the story of a run; each step is one call into a
module with one job. Nothing happens at import time.
"""
from __future__ import annotations

import logging
import os
import random
import sys
from argparse import Namespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dataloaders
import params
from modules import checkpoint, distributed, logger, optim
from modules.evaluate import evaluate
from modules.factory import build_loss, build_trained_model
from modules.precision import build_scaler, resolve_precision
from modules.tokenization import tokenize
from modules.train import train_one_epoch

log = logging.getLogger("main")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run what the flags ask for. Returns {"epochs": this invocation's per-epoch val records,
    "test": the test record (None without --do_eval)}, as written to metrics.jsonl."""
    args = params.get_args(argv)
    if not (args.do_train or args.do_eval):
        raise SystemExit("nothing to do: pass --do_train and/or --do_eval (or --demo)")
    device = distributed.init_distributed(args.device)
    precision = resolve_precision(args.precision, device)
    run_dir = logger.make_run_dir(args)
    logger.setup_logging(run_dir)
    try:
        logger.write_args(run_dir, args)
        # Rank 0 decides whether there is something to resume, every rank follows.
        resume_path = distributed.broadcast_object(checkpoint.resolve_resume(args.resume, run_dir))
        # Every rank initialises the same model (seed first, build), then draws its own data
        # randomness (seed by rank).
        seed_everything(args.seed)
        model = build_trained_model(args, args.init_model).to(device)
        seed_everything(args.seed + distributed.get_rank())
        trainable = optim.trainable_names(model)

        train_loader, train_sampler = (dataloaders.build_dataloader(args, "train", tokenize) if args.do_train
                                       else (None, None))
        val_set = dataloaders.build_dataset(args, "val", tokenize) if args.do_train else None
        test_set = dataloaders.build_dataset(args, "test", tokenize) if args.do_eval else None
        log.info(logger.format_startup(args, run_dir, device, precision, model,
                                       {"train": train_loader and train_loader.dataset, "val": val_set,
                                        "test": test_set}))

        history, best_epoch = [], None
        if args.do_train:
            history, best_epoch = train_and_validate(args, model, trainable, train_loader, train_sampler,
                                                     val_set, resume_path, run_dir, device, precision)
            best = os.path.join(run_dir, checkpoint.BEST)
            checkpoint.load_model_state(model, checkpoint.load_checkpoint(best)["model"], trainable,
                                        source=best, require_all_trainable=True)

        test_record = None
        if args.do_eval:
            result = evaluate(model, test_set, args, device, precision)
            test_record = {"split": "test", "epoch": best_epoch, **result}
            logger.append_metrics(run_dir, test_record)
            log.info("\n%s", logger.format_metrics_table(f"test ({args.dataset})", result))
        return {"epochs": history, "test": test_record}
    finally:
        logger.close_logging()
        distributed.cleanup()


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's `random`."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def train_and_validate(args: Namespace, model: nn.Module, trainable: set[str], train_loader: Any,
                       train_sampler: Any, val_set: Any, resume_path: str | None, run_dir: str,
                       device: torch.device, precision: str) -> tuple[list[dict[str, Any]], int]:
    """The epoch loop: train, evaluate on val, log a metrics line, save latest (and best) checkpoint.
    Returns (this invocation's per-epoch records, best epoch of the whole run)."""
    optimizer = optim.build_optimizer(model, args)
    loss_fn = build_loss(args)
    scaler = build_scaler(precision, device)
    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(f"the train split gives {len(train_loader)} batches, fewer than "
                         f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    total_steps, warmup_steps = optim.schedule_lengths(steps_per_epoch, args)
    log.info("schedule: %d epochs x %d steps = %d optimiser steps, %d warmup | optimiser groups: %s",
             args.epochs, steps_per_epoch, total_steps, warmup_steps,
             ", ".join(f"{g['name']} ({len(g['params'])} tensors, lr {g['base_lr']:.1e}, wd {g['weight_decay']})"
                       for g in optimizer.param_groups))

    state = checkpoint.TrainingState()
    if resume_path:
        state = checkpoint.restore_training(checkpoint.load_checkpoint(resume_path), model, trainable,
                                            optimizer, scaler, source=resume_path,
                                            schedule={"total_steps": total_steps, "warmup_steps": warmup_steps})
        log.info("resumed from %s: %d of %d epochs done, step %d", resume_path, state.epoch, args.epochs, state.step)

    ddp_model = (DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
                 if distributed.is_distributed() else model)
    if state.rng is not None:
        checkpoint.restore_rng(state.rng)  # last, so the data order continues where the run stopped
    history = []
    for epoch in range(state.epoch, args.epochs):
        if hasattr(train_sampler, "set_epoch"):
            train_sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp_model, loss_fn, train_loader, optimizer, scaler, args, epoch=epoch,
                                start_step=state.step, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                warmup_steps=warmup_steps, device=device, precision=precision,
                                nonfinite_in_a_row=state.nonfinite_in_a_row)
        result = evaluate(model, val_set, args, device, precision)
        r1 = result["metrics"]["t2v"]["R1"]
        improved = r1 > state.best_r1
        state = checkpoint.TrainingState(epoch=epoch + 1, step=stats["step"],
                                         best_r1=r1 if improved else state.best_r1,
                                         best_epoch=epoch + 1 if improved else state.best_epoch,
                                         nonfinite_in_a_row=stats["nonfinite_in_a_row"])
        record = {"epoch": epoch + 1, "split": "val", "train_loss": stats["loss"], "lr": stats["lr"],
                  "step": stats["step"], "skipped_steps": stats["skipped_steps"],
                  "train_samples_per_s": stats["samples_per_s"], "train_bad_videos": stats["bad_videos"],
                  "best": improved, **result}
        history.append(record)
        logger.append_metrics(run_dir, record)
        log.info("\n%s", logger.format_metrics_table(
            f"epoch {epoch + 1}/{args.epochs} | train loss {stats['loss']:.4f} | val ({args.dataset})"
            f"{' | new best' if improved else ''}", result))
        payload = checkpoint.make_checkpoint(model, trainable, optimizer, scaler, state, args,
                                             total_steps=total_steps, warmup_steps=warmup_steps)
        if distributed.is_main_process():
            # best before latest: a run killed in between resumes with its best checkpoint in place.
            if improved:
                checkpoint.save_checkpoint(payload, os.path.join(run_dir, checkpoint.BEST))
            checkpoint.save_checkpoint(payload, os.path.join(run_dir, checkpoint.LATEST))
        distributed.barrier()
    return history, state.best_epoch


if __name__ == "__main__":
    main(sys.argv[1:])
