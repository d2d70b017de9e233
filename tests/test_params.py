"""Flag parsing: booleans, validation messages, demo defaults, frames to load."""
from __future__ import annotations

import pytest

from modules.tempme import TempMeConfig
from params import DEMO_DEFAULTS, get_args


@pytest.mark.parametrize("text,value", [("True", True), ("false", False), ("1", True), ("0", False),
                                        ("yes", True), ("no", False)])
def test_boolean_values(text, value):
    assert get_args(["--use_tempme", text]).use_tempme is value
    assert get_args(["--adapter", text]).adapter is value


def test_bare_boolean_flag_means_true():
    args = get_args(["--do_train", "--dataset", "synthetic"])
    assert args.do_train is True and args.do_eval is False


def test_bad_boolean_is_rejected(capsys):
    with pytest.raises(SystemExit):
        get_args(["--use_tempme", "maybe"])
    assert "expected a boolean" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [
    (["--max_frames", "0"], "--max_frames"),
    (["--num_text_prompts", "3"], "--num_text_prompts"),
    (["--do_train", "--dataset", "msrvtt"], "--data_path"),
    (["--feature_framerate", "-1"], "--feature_framerate must be >= 0"),
    (["--slice_framepos", "3"], "--slice_framepos"),
])
def test_invalid_values_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        get_args(argv)
    assert flag in capsys.readouterr().err


def test_demo_defaults_apply_but_explicit_flags_win():
    args = get_args(["--demo", "--epochs", "1"])
    assert args.dataset == "synthetic" and args.clip_init == "random" and args.epochs == 1
    assert args.max_frames == DEMO_DEFAULTS["max_frames"]
    assert args.spatial_prompt and args.temporal_prompt and args.prompt_mode == "stop"   # the whole STOP
    assert get_args([]).dataset == "msrvtt"


def test_frames_to_load_follow_tempme_type():
    base = ["--max_frames", "12", "--tempme_input_frames", "32", "--tempme_max_input_frames", "48"]
    def loaded(*extra: str) -> int:
        return TempMeConfig.from_flags(get_args(base + list(extra))).num_input_frames

    assert loaded() == 12
    assert loaded("--use_tempme", "True", "--tempme_type", "simple") == 12
    assert loaded("--use_tempme", "True", "--tempme_type", "basic") == 32
    assert loaded("--use_tempme", "True", "--tempme_type", "adaptive") == 48
