"""The front door: every bad input ends as one line naming the file or flag, exit status 2,
no traceback; CLIP4Clip's flags; one run per run folder; val never the test split by default; Ctrl-C."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_archives import save_openai_archive, save_state_dict
from test_engine import _records, _run_flags, _tiny_flags
from torch import nn

import main
import params
from dataloaders import build_dataset, synthetic
from engine import checkpoint, logger
from modules import clip
from modules.errors import MissingFileError, UserError

REPO = Path(__file__).resolve().parents[1]


def no_tokenizer(texts, max_words):
    raise AssertionError("these tests fail before any caption is tokenised")


# ---------------------------------------------------------------- annotation files

MSRVTT_DATA = json.dumps({"sentences": [{"video_id": "video0", "caption": "a cat"},
                                        {"video_id": "video1", "caption": "a dog"}]})
MSRVTT_TEST = "key,vid_key,video_id,sentence\nret0,msr0,video0,a cat\n"
LSMDC_ROW = "clip_a\t0\t1\t0\t1\tSomeone runs.\n"


def parse_error(tmp_path: Path, dataset: str, files: dict[str, str | bytes | None], split: str = "train") -> str:
    """Write `files` (None: a folder of that name) into an annotation folder, build `split`; returns
    the UserError's message, which must be one line."""
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    videos.mkdir()
    for name, content in files.items():
        if content is None:
            (data / name).mkdir()
        elif isinstance(content, bytes):
            (data / name).write_bytes(content)
        else:
            (data / name).write_text(content)
    args = params.get_args(["--dataset", dataset, "--data_path", str(data), "--features_path", str(videos)])
    with pytest.raises(UserError) as error:
        build_dataset(args, split, no_tokenizer)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("dataset, files, split, expected", [
    ("msrvtt", {"MSRVTT_train.9k.csv": "vid\nvideo0\n", "MSRVTT_data.json": MSRVTT_DATA}, "train",
     ["MSRVTT_train.9k.csv", "no column 'video_id'"]),
    ("msrvtt", {"MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id\nret0,msr0,video0\n"}, "test",
     ["MSRVTT_JSFUSION_test.csv", "no column 'sentence'"]),
    ("msrvtt", {"MSRVTT_train.9k.csv": "video_id\nvideo0\n",
                "MSRVTT_data.json": json.dumps({"sentences": [{"video_id": "video0", "text": "a cat"}]})}, "train",
     ["MSRVTT_data.json", "sentences[0] has no field 'caption'"]),
    ("msrvtt", {"MSRVTT_train.9k.csv": "video_id\nvideo0\n", "MSRVTT_data.json": json.dumps({"videos": []})},
     "train", ["MSRVTT_data.json", "the top level has no field 'sentences'"]),
    ("msvd", {"train_list.txt": "a\n", "raw-captions.pkl": pickle.dumps([["a", "cat"]])}, "train",
     ["raw-captions.pkl", "expected a dict"]),
    ("lsmdc", {"LSMDC16_annos_training.csv": LSMDC_ROW + "clip_b\t0\t1\t0\tSomeone sits.\n"}, "train",
     ["LSMDC16_annos_training.csv", "line 2", "6 tab-separated fields"]),
    ("activitynet", {"train_ids.json": '["v_a"]', "train.json": '{"v_a": {"duration": 3}}'}, "train",
     ["train.json", "entry 'v_a' has no field 'sentences'"]),
    ("didemo", {"train_list.txt": "x.mp4\n", "train_data.json": '[{"video": "x.mp4", "description": "a"}, '
                                                               '{"video": "x.mp4", "times": [[0, 1]]}]'}, "train",
     ["train_data.json", "entry 1 has no field 'description'"]),
    ("vatex", {"train_list.txt": "c\n", "vatex_training_v1.0.json": '[{"videoID": "c", "chCap": ["中"]}]'}, "train",
     ["vatex_training_v1.0.json", "entry 0 has no field 'enCap'"]),
])
def test_missing_column_or_field_names_the_file_and_field(tmp_path, dataset, files, split, expected):
    message = parse_error(tmp_path, dataset, files, split)
    assert all(part in message for part in expected), message


@pytest.mark.parametrize("dataset, files, broken", [
    ("msrvtt", {"MSRVTT_train.9k.csv": "video_id\nvideo0\n"}, "MSRVTT_data.json"),
    ("activitynet", {}, "train_ids.json"),
    ("activitynet", {"train_ids.json": '["v_a"]'}, "train.json"),
    ("didemo", {"train_list.txt": "x.mp4\n"}, "train_data.json"),
    ("vatex", {"train_list.txt": "c\n"}, "ref_captions.json"),
    ("vatex", {"train_list.txt": "c\n"}, "vatex_training_v1.0.json"),
])
def test_truncated_json_names_the_file_and_line(tmp_path, dataset, files, broken):
    complete = {"MSRVTT_data.json": MSRVTT_DATA, "train_ids.json": '["v_a", "v_b"]',
                "train.json": '{"v_a": {"sentences": ["x"]}}', "train_data.json": '[{"video": "x.mp4"}]',
                "ref_captions.json": '{"c": ["a cat"]}', "vatex_training_v1.0.json": '[{"videoID": "c"}]'}[broken]
    truncated = "\n" + complete[:len(complete) // 2]        # a download cut short, on line 2
    message = parse_error(tmp_path, dataset, {**files, broken: truncated})
    assert broken in message and "invalid JSON at line 2" in message and "truncated" in message, message


def test_truncated_pickle_names_the_file(tmp_path):
    message = parse_error(tmp_path, "msvd", {"train_list.txt": "a\n",
                                             "raw-captions.pkl": pickle.dumps({"a": [["cat"]]})[:-5]})
    assert "raw-captions.pkl" in message and "not a readable pickle" in message


@pytest.mark.parametrize("dataset, files, bad", [
    ("msrvtt", {"MSRVTT_data.json": MSRVTT_DATA}, "MSRVTT_train.9k.csv"),
    ("msvd", {}, "train_list.txt"),
    ("lsmdc", {}, "LSMDC16_annos_training.csv"),
    ("activitynet", {"train_ids.json": '["v_a"]'}, "train.json"),
])
def test_bad_bytes_name_the_file_and_line(tmp_path, dataset, files, bad):
    content = {"MSRVTT_train.9k.csv": b"video_id\nvideo0\nvid\xe9o1\n", "train_list.txt": b"a\nb\n\xff\n",
               "LSMDC16_annos_training.csv": LSMDC_ROW.encode() * 2 + b"clip_c\t0\t1\t0\t1\tCaf\xe9.\n",
               "train.json": b'{"v_a":\n {"sentences":\n ["\xff"]}}'}[bad]
    message = parse_error(tmp_path, dataset, {**files, bad: content})
    assert bad in message and "line 3" in message and "is not UTF-8" in message, message


@pytest.mark.parametrize("dataset, first_file", [
    ("msrvtt", "MSRVTT_train.9k.csv"), ("msvd", "train_list.txt"), ("lsmdc", "LSMDC16_annos_training.csv"),
    ("activitynet", "train_ids.json"), ("didemo", "train_list.txt"), ("vatex", "train_list.txt")])
def test_a_folder_where_a_file_is_expected(tmp_path, dataset, first_file):
    message = parse_error(tmp_path, dataset, {first_file: None})
    assert f"{first_file} is a folder" in message and f"--dataset {dataset} --layout" in message


def test_data_and_features_paths_that_are_not_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    args = params.get_args(["--dataset", "msvd", "--data_path", str(tmp_path / "file"), "--features_path", "v"])
    with pytest.raises(MissingFileError, match="--data_path .*file is not a folder"):
        build_dataset(args, "test", no_tokenizer)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "test_list.txt").write_text("a\n")
    (tmp_path / "ann" / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [["cat"]]}))
    args = params.get_args(["--dataset", "msvd", "--data_path", str(tmp_path / "ann"),
                            "--features_path", str(tmp_path / "file")])
    with pytest.raises(MissingFileError, match="--features_path .*file is not a folder"):
        build_dataset(args, "test", no_tokenizer)


# ---------------------------------------------------------------- weights and checkpoints

@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """One file of every kind a user may hand to --clip_weights / --init_model / --resume."""
    folder = tmp_path_factory.mktemp("weights")
    state = clip.random_clip_state_dict("tiny", seed=0)
    trained = {"prompts.global_prompts": torch.zeros(2, 8)}
    zipped = folder / "zipped.pt"
    torch.save(trained, zipped)
    files = {"text": folder / "notes.txt", "random": folder / "random.bin", "empty": folder / "empty.pt",
             "truncated": folder / "truncated.pt", "folder": folder / "a_folder",
             "archive": save_openai_archive(state, folder / "ViT-tiny.pt"),
             "clip": save_state_dict(state, folder / "clip_state.pt"),
             "resnet": save_state_dict({"visual.attnpool.positional_embedding": torch.zeros(2)}, folder / "rn.pt"),
             "trained": save_state_dict(trained, folder / "trained.pt"),
             "checkpoint": save_state_dict({"model": trained, "optimizer": {}, "epoch": 1}, folder / "best.pt")}
    files["text"].write_text("these are not weights\n")
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes())
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(zipped.read_bytes()[:300])
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize("kind, expected", [
    ("text", "is not a PyTorch weights file (a text file)"), ("random", "is not a PyTorch weights file"),
    ("empty", "(the file is empty)"), ("truncated", "a damaged zip archive"), ("folder", "is a folder"),
    ("checkpoint", "a training checkpoint of this project, not CLIP weights: pass it as --init_model"),
    ("trained", "trained weights of this project go to --init_model"), ("resnet", "a ResNet CLIP")])
def test_clip_weights_of_the_wrong_kind_point_to_the_right_flag(weight_files, kind, expected):
    with pytest.raises(UserError) as error:
        clip.load_clip_state_dict(weight_files[kind])
    message = str(error.value)
    assert message.startswith(f"--clip_weights {weight_files[kind]}") and expected in message
    assert "\n" not in message and "weights_only" not in message


def test_missing_clip_weights_name_the_flags_and_the_file(tmp_path):
    args = params.get_args(["--pretrained_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError) as error:
        checkpoint.load_clip_weights(args)
    assert str(error.value).startswith(f"--pretrained_dir/--pretrained_clip_name {tmp_path / 'ViT-B-32.pt'} "
                                       f"does not exist") and isinstance(error.value, UserError)


@pytest.mark.parametrize("kind, flag, training_state, expected", [
    ("archive", "--init_model", False, "holds CLIP weights, not a checkpoint of this project (best.pt or latest.pt "
                                       "of a run folder): pass it as --clip_weights"),
    ("clip", "--resume", True, "holds CLIP weights"),
    ("text", "--resume", True, "is not a PyTorch weights file (a text file)"),
    ("trained", "--resume", True, "holds trained tensors only, no optimiser state or epoch to continue from: "
                                  "start from them with --init_model"),
    ("checkpoint", "--resume", True, "holds trained tensors only"),   # lacks the step, scaler, rng... entries
])
def test_checkpoints_of_the_wrong_kind_point_to_the_right_flag(weight_files, kind, flag, training_state, expected):
    with pytest.raises(UserError) as error:
        checkpoint.load_checkpoint(str(weight_files[kind]), flag, training_state=training_state)
    assert str(error.value).startswith(f"{flag} {weight_files[kind]}") and expected in str(error.value)
    # The same files are fine for --init_model: a bare state dict or a checkpoint.
    if kind in ("trained", "checkpoint"):
        assert set(checkpoint.load_checkpoint(str(weight_files[kind]))["model"]) == {"prompts.global_prompts"}


def test_init_model_of_other_shapes_names_the_flag_and_the_runs_args_json(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    state = {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(3)}
    path = str(tmp_path / "run" / "best.pt")
    with pytest.raises(UserError) as error:
        checkpoint.load_model_state(model, state, {"0.weight", "0.bias"}, path, require_all_trainable=False)
    message = str(error.value)
    assert message.startswith(f"--init_model {path}: 1 tensors have other shapes") and "(5, 4) in the file" in message
    assert str(tmp_path / "run" / "args.json") in message


# ---------------------------------------------------------------- main(): one line, exit 2, no run folder

def stop_of(argv: list[str], capsys) -> tuple[int, str]:
    """Run main(argv), which must end with SystemExit; returns (exit code, the one line on stderr)."""
    with pytest.raises(SystemExit) as stop:
        main.main(argv)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return stop.value.code, err.strip()


def test_user_error_ends_main_with_one_line_exit_2_and_no_run_folder(weight_files, tmp_path, capsys):
    flags = _run_flags(tmp_path, tmp_path / "synthetic", "run", "--clip_init", "pretrained",
                       "--clip_weights", str(weight_files["text"]))
    code, line = stop_of(flags, capsys)
    assert code == 2 and line.startswith(f"error: --clip_weights {weight_files['text']} is not a PyTorch weights")
    assert not (tmp_path / "run").exists()


def test_argparse_errors_read_the_same_way(capsys):
    code, line = stop_of(["--dataset", "nope"], capsys)
    assert code == 2 and line.startswith("error: argument --dataset: invalid choice: 'nope'")
    code, line = stop_of(["--demo", "--clip_weights", "ViT-B-32.pt"], capsys)
    assert code == 2 and "--clip_weights ViT-B-32.pt is not used with --clip_init random (the --demo default)" in line
    assert "--clip_init pretrained" in line


def test_resume_of_a_non_checkpoint_fails_before_the_data_are_built(weight_files, tmp_path, capsys):
    synthetic_dir = tmp_path / "synthetic"
    code, line = stop_of(_run_flags(tmp_path, synthetic_dir, "run", "--resume", str(weight_files["trained"])), capsys)
    assert code == 2 and f"--resume {weight_files['trained']} holds trained tensors only" in line
    assert not synthetic_dir.exists() and not (tmp_path / "run").exists()


def test_a_used_run_folder_is_refused_and_keeps_its_log(tmp_path, capsys):
    run_dir = tmp_path / "used"
    run_dir.mkdir()
    (run_dir / "args.json").write_text("{}")
    (run_dir / "log.txt").write_text("the first run\n")
    code, line = stop_of(_run_flags(tmp_path, tmp_path / "synthetic", "used"), capsys)
    assert code == 2 and line == (f"error: run folder {run_dir} already holds a run (args.json): continue it with "
                                  f"--resume auto, or start a new run with another --run_name")
    assert sorted(os.listdir(run_dir)) == ["args.json", "log.txt"] and (run_dir / "args.json").read_text() == "{}"
    # With --resume auto the same folder is accepted (no checkpoint yet: a fresh start).
    args = params.get_args(_run_flags(tmp_path, tmp_path / "synthetic", "used", "--resume", "auto"))
    assert logger.RunFolder().open(args) == str(run_dir)


def test_an_error_in_a_kept_run_folder_is_appended_to_its_log(tmp_path, capsys):
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    (run_dir / "latest.pt").write_text("not a checkpoint")
    code, line = stop_of(_run_flags(tmp_path, tmp_path / "synthetic", "resumed", "--resume", "auto"), capsys)
    assert code == 2 and line == f"error: --resume {run_dir / 'latest.pt'} is not a PyTorch weights file (a text " \
                                 f"file); expected a checkpoint of this project (best.pt or latest.pt of a run folder)"
    assert (run_dir / "log.txt").read_text().splitlines()[-1].endswith(f"| ERROR | {line}")


# ---------------------------------------------------------------- CLIP4Clip compatibility

def test_datatype_and_output_dir_as_clip4clip_users_type_them():
    base = ["--do_train", "--data_path", "d", "--features_path", "f"]
    args = params.get_args(["--datatype", "msvd", "--output_dir", "outputs/x", *base])
    assert args.dataset == "msvd" and logger.run_dir_path(args) == "outputs/x"
    args = params.get_args(["--output_dir", "runs", "--run_name", "r", *base])
    assert logger.run_dir_path(args) == os.path.join("runs", "r")
    assert logger.run_dir_path(params.get_args(["--run_name", "r"])) == os.path.join("outputs", "r")
    assert re.fullmatch(r"outputs/msrvtt_\d{8}-\d{6}", logger.run_dir_path(params.get_args([])))
    assert params.get_args(["--output_dir", "outputs/x", "--resume", "auto"]).resume == "auto"
    with pytest.raises(SystemExit):
        params.get_args(["--resume", "auto"])      # neither names the run folder


def test_help_prints_each_default_once(capsys):
    with pytest.raises(SystemExit):
        params.get_args(["--help"])
    blocks = re.split(r"\n  (?=-)", capsys.readouterr().out)
    shown = {block.split()[0]: " ".join(block.split()).count("(default") for block in blocks[1:]}
    parser = params.build_parser()
    for action in parser._actions[1:]:   # after --help: every default shown once, None never as "None"
        assert shown[action.option_strings[0]] == 1 if action.default not in (None, argparse.SUPPRESS) else \
            shown[action.option_strings[0]] <= 1, action.option_strings


@pytest.mark.slow
@pytest.mark.parametrize("holdout", [None, "0"])
def test_the_integration_notes_command_runs_into_its_output_dir(msrvtt_without_val, tmp_path, holdout):
    """`--use_tempme True --tempme_type simple --tempme_compression_ratio 0.6 --datatype msrvtt --output_dir
    outputs/tempme_simple` plus --do_train --data_path --features_path, on MSR-VTT-layout files (the synthetic
    set) without a val csv: by default val is held out of training; --val_holdout 0 is the lineage protocol."""
    folder = msrvtt_without_val
    out = tmp_path / "outputs" / "tempme_simple"
    tiny = [f for f in _tiny_flags(tmp_path) if f not in ("--do_eval", "--dataset", "synthetic")]
    main.main([*tiny, "--epochs", "1", *(["--val_holdout", holdout] if holdout else []),
               "--use_tempme", "True", "--tempme_type", "simple", "--tempme_compression_ratio", "0.6",
               "--datatype", "msrvtt", "--output_dir", str(out),
               "--do_train", "--data_path", str(folder), "--features_path", str(folder / "videos")])
    assert sorted(os.listdir(out)) == ["args.json", "best.pt", "latest.pt", "log.txt", "metrics.jsonl"]
    record, = _records(out)
    assert record["frames_kept"]["mean"] == 2.0                # round(0.6 x 4 frames)
    log_text = (out / "log.txt").read_text()
    if holdout is None:
        assert record["num_videos"] == 2 and "data msrvtt train: 36 items" in log_text
        assert ("model selection (best epoch): val is 2 of 20 training videos held out of training (--val_holdout, "
                "--seed 42), disjoint from the test split") in log_text and "WARNING" not in log_text
    else:
        assert record["num_videos"] == 6 and "data msrvtt train: 40 items" in log_text
        assert "WARNING | model selection on the TEST split: val is the TEST split (--val_holdout 0)" in log_text


# ---------------------------------------------------------------- honest model selection

@pytest.fixture(scope="module")
def msrvtt_without_val(tmp_path_factory) -> Path:
    """The synthetic set's MSR-VTT-layout files (20 train, 6 test videos) without MSRVTT_JSFUSION_val.csv,
    as CLIP4Clip distributes MSR-VTT."""
    root = tmp_path_factory.mktemp("msrvtt_without_val")
    source = Path(synthetic.ensure_dataset(root=str(root / "synthetic"), num_videos=20, num_test_videos=6,
                                           num_frames=4, resolution=32, event_fraction=0.2, seed=0))
    folder = root / "msrvtt"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("MSRVTT_JSFUSION_val.csv"))
    return folder


def test_without_a_val_file_val_is_held_out_of_training_disjoint_from_test(msrvtt_without_val):
    folder = msrvtt_without_val
    flags = ["--dataset", "msrvtt", "--data_path", str(folder), "--features_path", str(folder / "videos"),
             "--max_frames", "4", "--image_size", "32"]
    splits = {s: build_dataset(params.get_args(flags), s, no_tokenizer) for s in ("train", "val", "test")}
    train, val, test = (set(splits[s].video_ids) for s in ("train", "val", "test"))
    assert len(val) == 2 and len(train) == 18                 # 500 asked, at most a tenth of 20
    assert not val & train and not val & test and not train & test
    assert len(splits["val"].captions) == 2                   # one caption per video, as the 1k-A test
    assert not splits["val"].val_is_test and "2 of 20 training videos held out" in splits["val"].val_protocol
    again = build_dataset(params.get_args(flags), "val", no_tokenizer).video_ids
    other_seed = build_dataset(params.get_args([*flags, "--seed", "7"]), "val", no_tokenizer).video_ids
    assert again == splits["val"].video_ids and other_seed != again   # deterministic by seed
    lineage = build_dataset(params.get_args([*flags, "--val_holdout", "0"]), "val", no_tokenizer)
    assert lineage.video_ids == splits["test"].video_ids and lineage.val_is_test
    assert len(build_dataset(params.get_args([*flags, "--val_holdout", "0"]), "train", no_tokenizer)) == 20


# ---------------------------------------------------------------- python main.py in a subprocess

def _python(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(REPO / "main.py"), *argv], env=env, cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_python_main_prints_one_line_and_exits_2(weight_files, tmp_path):
    proc = _python(*_run_flags(tmp_path, tmp_path / "synthetic", "run", "--clip_init", "pretrained",
                               "--clip_weights", str(weight_files["random"])))
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: --clip_weights {weight_files['random']} is not a PyTorch weights file")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_a_valid_checkpoint(tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C; the 2 DataLoader workers get it too)."""
    # SIGINT's default disposition in the child, as under a terminal: a test session started in the
    # background (`pytest &` without job control) passes SIGINT on as ignored, and Python, rightly,
    # then installs no KeyboardInterrupt handler.
    proc = _python(*_run_flags(tmp_path, tmp_path / "synthetic", "run", "--epochs", "500", "--num_workers", "2"),
                   start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = tmp_path / "run" / checkpoint.LATEST
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"interrupted at epoch (\d+) step (\d+); continue with --resume auto\n", err)
    epoch, step = map(int, re.findall(r"\d+", err))
    saved = checkpoint.load_checkpoint(str(latest), "--resume", training_state=True)
    assert saved["epoch"] in (epoch - 1, epoch) and saved["step"] <= step
    assert (tmp_path / "run" / "log.txt").read_text().splitlines()[-1].endswith(f"| WARNING | {err.strip()}")
