"""Every script's flags parse with params.get_args, for every TempMe switch.

The scripts run for real under bash with a stub `torchrun` first on PATH that records its
arguments, so variable expansion, line continuations and the TempMe environment switches are
exercised exactly as a user would run them; only the launch itself is replaced.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

import params
from modules.tempme import TempMeConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("msrvtt", "msvd", "didemo", "activitynet", "vatex", "lsmdc", "eval_zeroshot")


@pytest.fixture
def fake_torchrun(tmp_path):
    """A `torchrun` that writes its arguments, one per line, to a file."""
    record = tmp_path / "argv.txt"
    stub = tmp_path / "bin" / "torchrun"
    stub.parent.mkdir()
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub.parent, record


def run_script(name: str, fake_torchrun, env: dict[str, str], extra: tuple[str, ...] = ()):
    """Run scripts/<name>.sh; returns (torchrun options, main.py's argument list)."""
    bin_dir, record = fake_torchrun
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    subprocess.run(["bash", str(REPO / "scripts" / f"{name}.sh"), *extra], env=full_env, check=True,
                   capture_output=True, text=True, cwd=REPO)
    argv = record.read_text().splitlines()
    split = next(i for i, a in enumerate(argv) if a.endswith("main.py"))
    assert Path(argv[split]).resolve() == REPO / "main.py"
    return argv[:split], argv[split + 1:]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("tempme", ["none", "simple", "basic", "adaptive"])
def test_script_flags_parse(name, tempme, fake_torchrun):
    launcher, argv = run_script(name, fake_torchrun, {"TEMPME": tempme})
    args = params.get_args(argv)
    assert args.use_tempme == (tempme != "none")
    if tempme != "none":
        assert args.tempme_type == tempme
    assert args.resume == "auto"    # re-running a script continues its run folder instead of being refused
    if name == "eval_zeroshot":
        assert args.do_eval and not args.do_train and args.prompt_mode == "none"
    else:
        assert args.do_train and args.do_eval and args.dataset == name
    nproc = int(launcher[launcher.index("--nproc_per_node") + 1])
    assert args.batch_size % nproc == 0


def test_msrvtt_recipe_and_environment_switches(fake_torchrun):
    launcher, argv = run_script("msrvtt", fake_torchrun, {"TEMPME": "basic", "RATIO": "0.6",
                                                          "DATA_PATH": "/d", "NUM_GPUS": "2"})
    args = params.get_args(argv)
    assert launcher[launcher.index("--nproc_per_node") + 1] == "2"
    assert (args.data_path, args.batch_size, args.epochs, args.lr, args.max_frames, args.max_words) == \
        ("/d", 64, 5, 1e-3, 12, 32)
    assert args.expand_msrvtt_sentences and args.weight_decay == 0.2 and args.precision == "amp_bf16"
    # basic: 32 frames loaded, round(32 * 0.6) = 19 kept.
    assert (args.tempme_input_frames, args.tempme_output_frames) == (32, 19)
    assert TempMeConfig.from_flags(args).num_input_frames == 32
    _, argv = run_script("msrvtt", fake_torchrun, {"TEMPME": "simple", "RATIO": "0.5"}, ("--epochs", "1"))
    args = params.get_args(argv)
    assert args.tempme_compression_ratio == 0.5 and args.epochs == 1   # extra flags reach main.py
    assert args.run_name == "msrvtt_stop_tempme-simple-0.5"


def test_long_video_and_vatex_recipes(fake_torchrun):
    for name in ("didemo", "activitynet"):
        launcher, argv = run_script(name, fake_torchrun, {})
        args = params.get_args(argv)
        assert (args.max_frames, args.max_words, args.epochs, args.batch_size) == (64, 64, 10, 128)
    _, argv = run_script("vatex", fake_torchrun, {})
    args = params.get_args(argv)
    assert (args.lr, args.batch_size, args.epochs, args.train_frame_sampling) == (5e-3, 512, 10, "uniform")


def test_unknown_tempme_switch_fails_clearly(fake_torchrun):
    bin_dir, _ = fake_torchrun
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TEMPME": "fast"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "msrvtt.sh")], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "TEMPME must be none, simple, basic or adaptive" in result.stderr
