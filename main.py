"""Train and evaluate STOP (+ TempMe) text-video retrieval: `python main.py --demo`.

One process (CPU or one GPU) or `torchrun --nproc_per_node N main.py ...` (one process per
GPU; gloo on CPU). `main(argv)` reads as the story of a run; each step is one call into a
module with one job. Nothing happens at import time.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from argparse import Namespace
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dataloaders
import params
from engine import checkpoint, distributed, logger, optim
from engine.evaluate import evaluate
from engine.factory import build_loss, build_trained_model
from engine.precision import build_scaler, resolve_precision
from engine.train import Interrupted, train_one_epoch
from modules.errors import UserError, one_line
from modules.tokenization import tokenize

log = logging.getLogger("main")

EXIT_USER_ERROR = 2   # as argparse exits on a bad flag
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run what the flags ask for. Returns {"epochs": this invocation's per-epoch val records,
    "test": the test record (None without --do_eval)}, as written to metrics.jsonl.

    Endings other than success (see `exits_cleanly`) raise SystemExit, so in-process callers and
    tests observe them with `pytest.raises(SystemExit)` and `.code`: 2 for an error the user can
    fix (one "error: ..." line on stderr), 130 for Ctrl-C ("interrupted at epoch E step S; ...")."""
    args = params.get_args(argv)
    run = logger.RunFolder()
    with exits_cleanly(args, run):
        if not (args.do_train or args.do_eval):
            raise UserError("nothing to do: pass --do_train and/or --do_eval (or --demo)")
        device = distributed.init_distributed(args.device)
        precision = resolve_precision(args.precision, device)
        run_dir = run.open(args)
        logger.setup_logging(run_dir)
        logger.write_args(run_dir, args)
        # Rank 0 decides whether there is something to resume, every rank follows; the file is
        # checked before anything else is built.
        resume_path = distributed.broadcast_object(checkpoint.resolve_resume(args.resume, run_dir))
        resume = checkpoint.load_checkpoint(resume_path, "--resume", training_state=True) if resume_path else None
        # Every rank initialises the same model (seed first, build), then draws its own randomness
        # (seed by rank; the data's comes from (seed, epoch, item), see dataloaders.EpochSampler).
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
        if val_set is not None and val_set.val_is_test and distributed.is_main_process():
            log.warning("model selection on the TEST split: %s", val_set.val_protocol)

        history, best_epoch = [], None
        if args.do_train:
            history, best_epoch = train_and_validate(args, model, trainable, train_loader, train_sampler,
                                                     val_set, resume, resume_path, run, device, precision)
            best = os.path.join(run_dir, checkpoint.BEST)
            checkpoint.load_model_state(model, checkpoint.load_checkpoint(best)["model"], trainable,
                                        source=best, require_all_trainable=True)

        test_record = None
        if args.do_eval:
            run.started = True
            result = evaluate(model, test_set, args, device, precision)
            test_record = {"split": "test", "epoch": best_epoch, **result}
            logger.append_metrics(run_dir, test_record)
            log.info("\n%s", logger.format_metrics_table(f"test ({args.dataset})", result))
        return {"epochs": history, "test": test_record}


@contextlib.contextmanager
def exits_cleanly(args: Namespace, run: logger.RunFolder) -> Iterator[None]:
    """How a run ends when it does not succeed. A UserError: one line "error: ..." on stderr
    (rank 0; other ranks stay quiet), appended to log.txt when the run folder is kept, then
    SystemExit(2), no traceback. Ctrl-C: "interrupted at epoch E step S; continue with --resume
    auto" the same way, SystemExit(130); the latest complete checkpoint stays valid (checkpoints
    are written atomically). Any failure before training began removes the run folder this
    start made. Logging and the process group are closed in every case."""
    try:
        yield
    except (UserError, KeyboardInterrupt) as exc:
        if isinstance(exc, UserError):
            message, code = f"error: {one_line(str(exc))}", EXIT_USER_ERROR
        else:
            message, code = interrupted_message(exc, args, run), EXIT_INTERRUPTED
        logger.close_logging()
        run.discard_if_unstarted()
        run.append_log(message, "ERROR" if code == EXIT_USER_ERROR else "WARNING")
        if distributed.launch_rank() == 0:
            print(message, file=sys.stderr)
        raise SystemExit(code) from None
    except BaseException:
        logger.close_logging()
        run.discard_if_unstarted()
        raise
    finally:
        logger.close_logging()
        distributed.cleanup()


def interrupted_message(exc: KeyboardInterrupt, args: Namespace, run: logger.RunFolder) -> str:
    """The one line that ends a run stopped with Ctrl-C: where it stopped and how to go on."""
    if not run.started:
        return "interrupted before training began"
    resume = "--resume auto" + ("" if args.run_name or args.output_dir else f" --run_name {os.path.basename(run.path)}")
    epoch, step = (exc.epoch, exc.step) if isinstance(exc, Interrupted) else run.progress or (None, None)
    if epoch is not None:
        return f"interrupted at epoch {epoch} step {step}; continue with {resume}"
    return f"interrupted during the test evaluation; run again with {resume} to finish"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's `random`."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def train_and_validate(args: Namespace, model: nn.Module, trainable: set[str], train_loader: Any,
                       train_sampler: Any, val_set: Any, resume: dict[str, Any] | None, resume_path: str | None,
                       run: logger.RunFolder, device: torch.device,
                       precision: str) -> tuple[list[dict[str, Any]], int]:
    """The epoch loop: train, evaluate on val, log a metrics line, save latest (and best) checkpoint.
    `resume`: the checkpoint dict to continue from (read from `resume_path`). Marks `run` started
    when the first epoch begins. Returns (this invocation's per-epoch records, best epoch of the
    whole run)."""
    run_dir = run.path
    optimizer = optim.build_optimizer(model, args)
    loss_fn = build_loss(args)
    scaler = build_scaler(precision, device)
    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise UserError(f"the train split gives {len(train_loader)} batches, fewer than "
                        f"--gradient_accumulation_steps {args.gradient_accumulation_steps}: lower it or --batch_size")
    total_steps, warmup_steps = optim.schedule_lengths(steps_per_epoch, args)
    log.info("schedule: %d epochs x %d steps = %d optimiser steps, %d warmup | optimiser groups: %s",
             args.epochs, steps_per_epoch, total_steps, warmup_steps,
             ", ".join(f"{g['name']} ({len(g['params'])} tensors, lr {g['base_lr']:.1e}, wd {g['weight_decay']})"
                       for g in optimizer.param_groups))

    state = checkpoint.TrainingState()
    if resume is not None:
        state = checkpoint.restore_training(resume, model, trainable, optimizer, scaler, source=resume_path,
                                            schedule={"total_steps": total_steps, "warmup_steps": warmup_steps})
        log.info("resumed from %s: %d of %d epochs done, step %d", resume_path, state.epoch, args.epochs, state.step)

    ddp_model = (DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
                 if distributed.is_distributed() else model)
    if state.rng is not None:
        checkpoint.restore_rng(state.rng)  # last, so dropout and the like continue where the run stopped
    history = []
    run.started = True
    for epoch in range(state.epoch, args.epochs):
        if hasattr(train_sampler, "set_epoch"):
            train_sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp_model, loss_fn, train_loader, optimizer, scaler, args, epoch=epoch,
                                start_step=state.step, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                warmup_steps=warmup_steps, device=device, precision=precision,
                                nonfinite_in_a_row=state.nonfinite_in_a_row)
        run.progress = (epoch + 1, stats["step"])  # for the message of a Ctrl-C while validating or saving
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
    run.progress = None
    return history, state.best_epoch


if __name__ == "__main__":
    main(sys.argv[1:])
