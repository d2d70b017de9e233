"""Engine: optimiser groups and schedule, training step rules, checkpoints, and full runs of
`main([...])` on a tiny synthetic set (single process, torchrun with 2 CPU processes, resume)."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import params
from engine import checkpoint, optim
from engine.interrupt import deferred_ctrl_c, raise_if_ctrl_c
from engine.train import NonFiniteLossError, train_one_epoch
from modules.loss import LossConfig

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- optimiser and schedule

class _Toy(nn.Module):
    """A model with every kind of parameter the decay rule distinguishes, and a loss."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.token_embedding = nn.Embedding(5, 3)
        self.text_prompts = nn.Parameter(torch.zeros(2, 3))
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.tempme_compressor = nn.Linear(3, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.loss_values: list[float] = []  # forced loss values (nan) per call, else the real loss

    def forward(self, input_ids, attention_mask, video, video_mask):
        x = video.float().flatten(1)[:, :4]
        loss = (self.norm(self.proj(x)) + self.tempme_compressor(self.text_prompts.sum(0))).pow(2).mean()
        loss = loss * self.logit_scale + self.token_embedding.weight.sum() * 0
        if self.loss_values:
            forced = self.loss_values.pop(0)
            if not math.isfinite(forced):
                return loss * forced
        return loss


def _opt_args(**kw) -> Namespace:
    base = dict(lr=1e-3, coef_lr=0.1, tempme_lr=5e-4, weight_decay=0.2, warmup_proportion=0.1, epochs=2,
                gradient_accumulation_steps=1, grad_clip=1.0, max_nonfinite_steps=3, no_progress=True,
                log_every=0)
    return Namespace(**{**base, **kw})


def test_optimizer_groups_decay_rules_and_learning_rates():
    model = _Toy()
    opt = optim.build_optimizer(model, _opt_args())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: ({names[id(p)] for p in g["params"]}, g["base_lr"], g["weight_decay"])
              for g in opt.param_groups}
    assert groups["stop/decay"] == ({"proj.weight"}, 1e-3, 0.2)
    assert groups["stop/no_decay"][0] == {"proj.bias", "norm.weight", "norm.bias", "token_embedding.weight",
                                          "text_prompts", "logit_scale"}
    assert groups["stop/no_decay"][2] == 0.0
    assert groups["tempme/decay"] == ({"tempme_compressor.weight"}, 5e-4, 0.2)
    assert groups["tempme/no_decay"] == ({"tempme_compressor.bias"}, 5e-4, 0.0)
    assert not any("frozen" in n for g in groups.values() for n in g[0])
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert optim.group_learning_rates(_opt_args())["clip"] == pytest.approx(1e-4)


def test_lr_schedule_is_warmup_then_cosine():
    total, warmup = 100, 10
    factors = [optim.lr_factor(s, total, warmup) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5)                       # half-way through the cosine
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # non-increasing after warmup
    assert optim.lr_factor(0, 10, 0) == 1.0                          # no warmup
    assert optim.schedule_lengths(37, _opt_args(epochs=3, warmup_proportion=0.1)) == (111, 11)


# ---------------------------------------------------------------- training step rules

def _batches(n: int, b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.zeros(b, 3, dtype=torch.long), "attention_mask": torch.ones(b, 3, dtype=torch.long),
             "video": torch.randint(0, 255, (b, 1, 3, 2, 2), generator=g, dtype=torch.uint8),
             "video_mask": torch.ones(b, 1, dtype=torch.long)} for _ in range(n)]


class _OwnLoss:
    """The toy model's output is its loss (no frame-selection teacher)."""
    config = LossConfig(aux_weight=0.0)

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs


def _run_epoch(model, batches, args, **kw):
    opt = optim.build_optimizer(model, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    steps = len(batches) // args.gradient_accumulation_steps
    stats = train_one_epoch(model, _OwnLoss(), batches, opt, scaler, args, epoch=0, start_step=0, steps_per_epoch=steps,
                            total_steps=steps, warmup_steps=0, device=torch.device("cpu"), precision="fp32", **kw)
    return stats, opt


def test_nonfinite_loss_skips_the_step_then_stops_the_run(caplog):
    torch.manual_seed(0)
    model = _Toy()
    before = model.proj.weight.detach().clone()
    model.loss_values = [math.nan]
    stats, _ = _run_epoch(model, _batches(1), _opt_args())
    assert torch.equal(model.proj.weight, before)                 # the only step was skipped
    assert stats["skipped_steps"] == 1 and stats["nonfinite_in_a_row"] == 1 and math.isnan(stats["loss"])
    assert "non-finite loss" in caplog.text
    model.loss_values = [1.0, math.inf]                           # finite, then non-finite
    stats, _ = _run_epoch(model, _batches(2), _opt_args())
    assert not torch.equal(model.proj.weight, before) and stats["skipped_steps"] == 1
    assert math.isfinite(stats["loss"])
    model.loss_values = [math.nan] * 3
    with pytest.raises(NonFiniteLossError, match="--max_nonfinite_steps 3"):
        _run_epoch(model, _batches(3), _opt_args())


def test_gradient_accumulation_matches_one_big_batch():
    """Two half batches accumulated equal one step on the full batch for a mean loss."""
    torch.manual_seed(0)
    big, small = _Toy(), _Toy()
    small.load_state_dict(big.state_dict())
    full = _batches(1, b=8)[0]
    halves = [{k: v[i:i + 4] for k, v in full.items()} for i in (0, 4)]
    _run_epoch(big, [full], _opt_args(grad_clip=0.0))
    stats, _ = _run_epoch(small, halves, _opt_args(grad_clip=0.0, gradient_accumulation_steps=2))
    assert stats["steps"] == 1
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


# ---------------------------------------------------------------- checkpoints

def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    state = checkpoint.capture_rng()
    path = str(tmp_path / "rng.pt")
    checkpoint.save_checkpoint({"model": {}, "rng": [state]}, path)
    assert not os.path.exists(path + ".tmp")
    want = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.restore_rng(checkpoint.load_checkpoint(path)["rng"][0])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_trainable_state_excludes_frozen_and_loading_checks_keys():
    model = _Toy()
    trainable = optim.trainable_names(model)
    state = checkpoint.trainable_state_dict(model, trainable)
    assert set(state) == trainable and not any(k.startswith("frozen") for k in state)
    with pytest.raises(ValueError, match="does not have"):
        checkpoint.load_model_state(model, {"nope": torch.zeros(1)}, trainable, "x.pt", True)
    with pytest.raises(ValueError, match="lacks trainable"):
        checkpoint.load_model_state(model, {"proj.weight": state["proj.weight"]}, trainable, "x.pt", True)


def test_clip_weights_path_and_resume_resolution(tmp_path):
    args = params.get_args(["--pretrained_dir", "/w", "--pretrained_clip_name", "ViT-B/16"])
    assert checkpoint.clip_weights_path(args) == os.path.join("/w", "ViT-B-16.pt")
    args.clip_weights = "/x/c.pt"
    assert checkpoint.clip_weights_path(args) == "/x/c.pt"
    with pytest.raises(FileNotFoundError, match="ViT-B-16.pt"):
        checkpoint.load_clip_weights(params.get_args(["--pretrained_dir", str(tmp_path),
                                                      "--pretrained_clip_name", "ViT-B/16"]))
    assert checkpoint.resolve_resume("auto", str(tmp_path)) is None       # nothing yet: fresh start
    (tmp_path / "latest.pt").write_bytes(b"")
    assert checkpoint.resolve_resume("auto", str(tmp_path)) == str(tmp_path / "latest.pt")
    with pytest.raises(FileNotFoundError, match="--resume"):
        checkpoint.resolve_resume(str(tmp_path / "missing.pt"), str(tmp_path))


# ---------------------------------------------------------------- full runs of main([...])

def _tiny_flags(synthetic_dir: Path) -> list[str]:
    """A tiny STOP run on the synthetic set: 4 train videos x 2 captions, 6 val/test videos,
    4 frames of 64 px (a 4-frame video, so frame sampling is deterministic), tiny random CLIP.
    STOP's 3-D convolution prompts (spatial, temporal) are off: on CPU they cost 10x the rest of
    this tiny model, and the engine does not depend on them (the model's tests cover them)."""
    return ["--do_train", "--do_eval", "--dataset", "synthetic", "--synthetic_dir", str(synthetic_dir),
            "--synthetic_num_videos", "4", "--synthetic_num_test_videos", "6", "--synthetic_num_frames", "4",
            "--synthetic_resolution", "32", "--image_size", "64", "--max_frames", "4", "--max_words", "16",
            "--expand_msrvtt_sentences", "True", "--clip_init", "random", "--clip_arch", "tiny",
            "--train_clip", "False", "--num_global_prompts", "2", "--num_local_prompts", "2",
            "--num_text_prompts", "2", "--spatial_prompt", "False", "--temporal_prompt", "False",
            "--adapter_dim", "8",
            "--batch_size", "8", "--batch_size_val", "4", "--epochs", "2", "--num_workers", "0",
            "--lr", "1e-3", "--coef_lr", "1.0", "--warmup_proportion", "0.25", "--no_progress", "--device", "cpu"]


def _run_flags(out_dir: Path, synthetic_dir: Path, run_name: str, *extra: str) -> list[str]:
    """`_tiny_flags` into the run folder `out_dir/run_name`, then `extra` (later flags win)."""
    return [*_tiny_flags(synthetic_dir), "--output_dir", str(out_dir), "--run_name", run_name, *extra]


def _flat(record: dict, prefix: str = "") -> dict:
    """Nested metric dicts -> {"metrics.t2v.R1": value} (pytest.approx compares flat dicts)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, synthetic_dir):
    """Two optimiser steps (2 epochs of one global batch of all 8 pairs) in one process."""
    import main
    out = tmp_path_factory.mktemp("runs")
    result = main.main(_run_flags(out, synthetic_dir, "single"))
    return out / "single", result


def test_single_process_run_writes_the_run_folder(single_run):
    run_dir, result = single_run
    records = _records(run_dir)
    assert [r["split"] for r in records] == ["val", "val", "test"]
    assert [r["epoch"] for r in records[:2]] == [1, 2] and records[0]["step"] == 1 and records[1]["step"] == 2
    for record in records[:2]:
        assert math.isfinite(record["train_loss"]) and set(record["lr"]) == {"stop"}
        assert record["frames_kept"] == {"mean": 4.0, "min": 4, "max": 4} and record["bad_videos"] == 0
        assert set(record["metrics"]["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR"}
    assert records[2] == {**result["test"]} and records[2]["num_videos"] == 6
    args = json.loads((run_dir / "args.json").read_text())
    assert args["batch_size"] == 8 and args["run_name"] == "single"
    log_text = (run_dir / "log.txt").read_text()
    assert "TempMe Configuration: enabled=False" in log_text and "data synthetic train: 8 items" in log_text
    assert "model selection (best epoch): the dataset's own val split" in log_text
    assert "R@1" in log_text and "test (synthetic)" in log_text


def test_checkpoint_holds_trainable_tensors_only(single_run, synthetic_dir):
    run_dir, _ = single_run
    ckpt = torch.load(run_dir / "latest.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 and ckpt["args"]["run_name"] == "single"
    assert set(ckpt) >= {"model", "optimizer", "scaler", "rng", "schedule", "best_r1"}
    from engine.factory import build_trained_model
    args = params.get_args(_run_flags(run_dir, synthetic_dir, "single"))
    model = build_trained_model(args)
    trainable = optim.trainable_names(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) > 10 and trainable
    assert set(ckpt["model"]) == trainable and not set(ckpt["model"]) & frozen
    # The saved prompts are the trained ones, not the initial ones.
    name = sorted(trainable)[0]
    assert not torch.equal(ckpt["model"][name], dict(model.named_parameters())[name].detach())
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == ckpt["best_epoch"] and set(best["model"]) == trainable


@pytest.mark.slow
def test_torchrun_two_processes_take_the_same_steps(single_run, synthetic_dir, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo), same global batch: same losses, same weights."""
    single_dir, _ = single_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main.py"), *_run_flags(tmp_path, synthetic_dir, "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = _records(single_dir), _records(tmp_path / "ddp")
    for a, b in zip(single[:2], ddp[:2]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert "processes 2" in (tmp_path / "ddp" / "log.txt").read_text()
    want = torch.load(single_dir / "latest.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "ddp" / "latest.pt", weights_only=True)["model"]
    assert set(want) == set(got)
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-5), name
    assert len(torch.load(tmp_path / "ddp" / "latest.pt", weights_only=True)["rng"]) == 2


@pytest.mark.slow
def test_torchrun_with_close_caption_batches_takes_the_one_process_steps(synthetic_dir, tmp_path):
    """16 videos in 4 global batches of 2 groups of close captions each: 2 processes (2 videos each
    per batch) take the steps of one process."""
    import main
    extra = ("--synthetic_num_videos", "16", "--expand_msrvtt_sentences", "False", "--batch_size", "4",
             "--batch_sampling", "close_captions", "--caption_group_size", "2")
    main.main(_run_flags(tmp_path, synthetic_dir, "one", *extra))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main.py"), *_run_flags(tmp_path, synthetic_dir, "two", *extra)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["split"] for r in two] == [r["split"] for r in one] == ["val", "val", "test"]
    for a, b in zip(one, two):
        if a["split"] == "val":
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert _flat(b["metrics"]) == pytest.approx(_flat(a["metrics"]), rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_torch_distributed_launch_runs_as_torchrun_does(single_run, synthetic_dir, tmp_path):
    """CLIP4Clip's launcher (`python -m torch.distributed.launch`, which passes --local-rank=N) with
    its entry point name: the same steps as one process."""
    single_dir, _ = single_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "main_task_retrieval.py"), *_run_flags(tmp_path, synthetic_dir, "launch")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for a, b in zip(_records(single_dir)[:2], _records(tmp_path / "launch")[:2]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    log = (tmp_path / "launch" / "log.txt").read_text()
    assert "processes 2" in log and "--local_rank 0 -> process 0 of this machine (LOCAL_RANK" in log


def _killed_after_first_epoch(monkeypatch, flags: list[str]) -> int:
    """Run main(flags) with a KeyboardInterrupt right after the first epoch's latest.pt is saved
    (a kill at that moment); returns the exit code."""
    import main
    real_save = checkpoint.save_checkpoint

    def save_then_die(payload, path):
        real_save(payload, path)
        if path.endswith(checkpoint.LATEST):
            raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_checkpoint", save_then_die)
        with pytest.raises(SystemExit) as stop:
            main.main(flags)
    return stop.value.code


def test_killed_run_resumed_with_auto_ends_like_an_uninterrupted_one(synthetic_dir, tmp_path, monkeypatch,
                                                                   capsys):
    """Batches of 4 (2 steps per epoch, order from the restored RNG) with TempMe on: kill right after
    epoch 1's checkpoint, relaunch with --resume auto, compare with a run never interrupted."""
    import main
    extra = ("--batch_size", "4", "--use_tempme", "True", "--tempme_compression_ratio", "0.5",
             "--tempme_hidden_dim", "16", "--resume", "auto")
    main.main(_run_flags(tmp_path, synthetic_dir, "whole", *extra))

    assert _killed_after_first_epoch(monkeypatch, _run_flags(tmp_path, synthetic_dir, "killed", *extra)) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted at epoch 1 step 2; continue with --resume auto"
    assert len(_records(tmp_path / "killed")) == 1
    resumed = main.main(_run_flags(tmp_path, synthetic_dir, "killed", *extra))
    assert [r["epoch"] for r in resumed["epochs"]] == [2]
    whole, killed = _records(tmp_path / "whole"), _records(tmp_path / "killed")
    assert [r["split"] for r in killed] == ["val", "val", "test"]
    assert whole[1]["frames_kept"]["mean"] == 2.0                   # TempMe keeps 2 of 4 frames
    for key in ("train_loss", "metrics", "step", "lr", "frames_kept"):
        assert _flat({key: killed[1][key]}) == pytest.approx(_flat({key: whole[1][key]})), key
    assert _flat(killed[2]["metrics"]) == pytest.approx(_flat(whole[2]["metrics"]))
    assert "resumed from" in (tmp_path / "killed" / "log.txt").read_text()


@pytest.mark.slow
def test_killed_run_with_workers_and_tsn_resumes_like_an_uninterrupted_one(synthetic_dir, tmp_path, monkeypatch):
    """2 persistent DataLoader workers, TSN sampling of 4 of 8 frames, one random caption per video:
    the frame offsets and captions of an item depend on (seed, epoch, index) only, so the run
    resumed after a kill at the end of epoch 1 ends like the uninterrupted one."""
    import main
    extra = ("--synthetic_num_frames", "8", "--num_workers", "2", "--train_frame_sampling", "random",
             "--expand_msrvtt_sentences", "False", "--batch_size", "2", "--resume", "auto")
    main.main(_run_flags(tmp_path, synthetic_dir, "whole", *extra))

    _killed_after_first_epoch(monkeypatch, _run_flags(tmp_path, synthetic_dir, "killed", *extra))
    resumed = main.main(_run_flags(tmp_path, synthetic_dir, "killed", *extra))
    assert [r["epoch"] for r in resumed["epochs"]] == [2]
    whole, killed = _records(tmp_path / "whole"), _records(tmp_path / "killed")
    assert [r["split"] for r in killed] == ["val", "val", "test"] and killed[1]["step"] == 4
    for key in ("train_loss", "metrics"):
        assert _flat({key: killed[1][key]}) == pytest.approx(_flat({key: whole[1][key]}), rel=1e-5), key
    assert _flat(killed[2]["metrics"]) == pytest.approx(_flat(whole[2]["metrics"]), rel=1e-5)


@pytest.mark.slow
def test_run_killed_in_its_process_resumes_in_a_new_one_like_an_uninterrupted_run(synthetic_dir, tmp_path):
    """SIGTERM to a real `python main.py` once epoch 1's latest.pt is written, then the same command
    with `--resume auto` in a new process. The spatial prompt's dropout draws from the global RNG,
    2 persistent workers load the data, batches are random in epoch 1 and of close captions after:
    every epoch the new process trains must end exactly as in a run never interrupted (nothing the
    new process starts may draw from the restored RNG)."""
    import main
    extra = ("--spatial_prompt", "True", "--synthetic_num_videos", "16", "--synthetic_num_frames", "8",
             "--batch_size", "4", "--epochs", "3", "--num_workers", "2", "--train_frame_sampling", "random",
             "--expand_msrvtt_sentences", "False", "--batch_sampling", "close_captions", "--caption_group_size", "2",
             "--close_captions_warmup", "1", "--resume", "auto")
    main.main(_run_flags(tmp_path, synthetic_dir, "whole", *extra))
    command = [sys.executable, str(REPO / "main.py"), *_run_flags(tmp_path, synthetic_dir, "killed", *extra)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / checkpoint.LATEST
    deadline = time.monotonic() + 300
    while not latest.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.terminate()
    first.wait(timeout=60)
    done_before = len(_records(tmp_path / "killed"))
    assert done_before < 3, "the first process finished before it could be killed"
    subprocess.run(command, cwd=REPO, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
    whole, killed = _records(tmp_path / "whole"), _records(tmp_path / "killed")
    assert [r["epoch"] for r in killed[:-1]] == [1, 2, 3] and killed[-1]["split"] == "test"
    assert killed[-1]["epoch"] == whole[-1]["epoch"]                  # the same best epoch
    for epoch in range(done_before, 3):      # the epochs the new process trained
        for key in ("train_loss", "metrics"):
            assert _flat({key: killed[epoch][key]}) == pytest.approx(_flat({key: whole[epoch][key]}), rel=1e-6), \
                (epoch + 1, key)
    assert _flat(killed[-1]["metrics"]) == pytest.approx(_flat(whole[-1]["metrics"]), rel=1e-6)


def test_eval_only_with_init_model_reproduces_the_test_metrics(single_run, synthetic_dir, tmp_path):
    import main
    run_dir, result = single_run
    flags = [f for f in _run_flags(tmp_path, synthetic_dir, "eval") if f != "--do_train"]
    out = main.main([*flags, "--do_train", "False", "--init_model", str(run_dir / "best.pt"), "--dsl"])
    assert out["epochs"] == [] and not (tmp_path / "eval" / "latest.pt").exists()
    assert _flat(out["test"]["metrics"]) == pytest.approx(_flat(result["test"]["metrics"]))
    assert set(out["test"]["dsl"]["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR"}
    assert "t2v DSL" in (tmp_path / "eval" / "log.txt").read_text()


@pytest.mark.slow
def test_torchrun_eval_with_a_partial_init_model_evaluates_one_model(single_run, synthetic_dir, tmp_path):
    """Tensors missing from --init_model keep their initialisation: every rank must initialise them
    alike (seed before building, seed by rank after), or each rank encodes its shard with another model."""
    import main
    run_dir, _ = single_run
    state = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    partial = {k: v for k, v in state.items() if ".adapter." not in k}
    assert len(partial) < len(state)
    torch.save(partial, tmp_path / "partial.pt")
    flags = [f for f in _run_flags(tmp_path, synthetic_dir, "one") if f != "--do_train"]
    flags += ["--do_train", "False", "--init_model", str(tmp_path / "partial.pt")]
    single = main.main(flags)["test"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main.py"), *flags, "--run_name", "two"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _records(tmp_path / "two")[-1]
    assert _flat(two["metrics"]) == pytest.approx(_flat(single["metrics"]), abs=1e-6)


@pytest.mark.parametrize("name,extra,rows", [
    ("frames8", ("--max_frames", "8"), 8),
    ("simple8", ("--max_frames", "8", "--use_tempme", "True", "--tempme_compression_ratio", "0.5"), 8),
    ("basic8to6", ("--use_tempme", "True", "--tempme_type", "basic", "--tempme_input_frames", "8",
                   "--tempme_output_frames", "6"), 6),
])
def test_checkpoint_trained_at_4_frames_evaluates_and_fine_tunes_at_other_frame_counts(
        single_run, synthetic_dir, tmp_path, name, extra, rows):
    """STOP's per-frame prompt table (4 rows per frame here) is resampled to the new frame count."""
    import main
    run_dir, _ = single_run
    flags = _run_flags(tmp_path, synthetic_dir, name, "--epochs", "1", "--init_model", str(run_dir / "best.pt"),
                       "--tempme_hidden_dim", "16", *extra)
    out = main.main(flags)
    assert math.isfinite(out["epochs"][0]["train_loss"]) and out["test"]["metrics"]["t2v"]["R1"] >= 0
    log_text = (tmp_path / name / "log.txt").read_text()
    assert f"per-frame prompt rows resampled from 4 to {rows} frames" in log_text
    table = torch.load(tmp_path / name / "latest.pt", weights_only=True)["model"]["prompts.prompt_generator.prompt_table"]
    assert table.shape[0] == 2 + 2 * rows                     # 2 text prompts + 2 local prompts per frame


def test_resume_never_resamples_the_prompt_table(single_run, synthetic_dir, tmp_path, capsys):
    import main
    run_dir, _ = single_run
    with pytest.raises(SystemExit) as stop:
        main.main(_run_flags(tmp_path, synthetic_dir, "resume8", "--resume", str(run_dir / "latest.pt"),
                             "--epochs", "3", "--max_frames", "8"))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--resume" in err and "other shapes" in err and "args.json" in err


def test_resume_auto_needs_a_run_name():
    with pytest.raises(SystemExit):
        params.get_args(["--do_train", "--dataset", "synthetic", "--resume", "auto"])


def test_ctrl_c_in_a_loop_stops_at_the_next_check_and_a_second_one_at_once():
    """Inside the block a Ctrl-C raises nothing where it lands (Python would swallow it, with a
    traceback, in some library callbacks); the loop's next check raises it. A second Ctrl-C raises
    at once; a Ctrl-C left unchecked is raised when the block ends; outside, SIGINT has its default
    handler again."""
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here

    with deferred_ctrl_c():
        raise_if_ctrl_c()  # nothing pending yet
        ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            raise_if_ctrl_c()
        raise_if_ctrl_c()  # raised once
        ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with deferred_ctrl_c():
            ctrl_c()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c()
