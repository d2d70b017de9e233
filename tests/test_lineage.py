"""STOP's scripts/msrvtt.sh and CLIP4Clip's README commands, as their users type them: every flag
read onto ours with its meaning, the start-up block saying how, unsupported values refused in one line."""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
from test_engine import _records
from test_front_door import stop_of

import main
import params
from dataloaders import build_dataset, synthetic

# STOP's scripts/msrvtt.sh with its variables filled in ({D}: the MSR-VTT folder, {OUT}: the run folder).
STOP_MSRVTT = """
--do_train 1 --do_eval 0 --num_thread_reader 8 --epochs 5 --batch_size 32 --n_display 50
--train_csv {D}/MSRVTT_train.9k.csv --val_csv {D}/MSRVTT_JSFUSION_test.csv --data_path {D}/MSRVTT_data.json
--features_path {D}/videos --output_dir {OUT} --optim AdamW --lr 1e-3 --coef_lr 5e-4 --wd 0.2 --max_words 32
--max_frames 12 --batch_size_val 16 --datatype msrvtt --expand_msrvtt_sentences --feature_framerate 3
--freeze_layer_num 12 --slice_framepos 2 --loose_type --linear_patch 2d --sim_header meanP
--pretrained_clip_name ViT-B/32 --precision amp --init_method tcp://127.0.0.1:6010 --pretrained_dir {D}
--freeze_clip 1 --time_embedding 0 --resume None --load_from_pretrained 0 --shared_latent_space transformer
--temporal_prompt group2-2
"""
# CLIP4Clip's README commands, after `main_task_retrieval.py` (the launcher's --local-rank aside).
CLIP4CLIP_COMMON = """
--do_train --num_thread_reader={workers} --epochs=5 --batch_size=128 --n_display=50 {files}
--output_dir {OUT} --lr 1e-4 --max_words {words} --max_frames {frames} --batch_size_val 16 --datatype {datatype}
{expand} --feature_framerate 1 --coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2 --loose_type --linear_patch 2d
--sim_header meanP --pretrained_clip_name ViT-B/32
"""
CLIP4CLIP = {  # dataset: (--datatype, workers, words and frames, the files' flags, --expand_msrvtt_sentences)
    "msrvtt": ("msrvtt", 0, 32, 12, "--train_csv {D}/MSRVTT_train.9k.csv --val_csv {D}/MSRVTT_JSFUSION_test.csv "
                                    "--data_path {D}/MSRVTT_data.json --features_path {D}/videos", True),
    "msvd": ("msvd", 2, 32, 12, "--data_path {D} --features_path {D}/MSVD_Videos", False),
    "lsmdc": ("lsmdc", 2, 32, 12, "--data_path {D} --features_path {D}/LSMDC_Videos", False),
    "activitynet": ("activity", 2, 64, 64, "--data_path {D} --features_path {D}/Activity_Videos", False),
    "didemo": ("didemo", 2, 64, 64, "--data_path {D} --features_path {D}/DiDeMo_Videos", False),
}
# A tiny model and data for running a line end to end on CPU (later flags win).
TINY = ["--clip_init", "random", "--clip_arch", "tiny-32", "--image_size", "32", "--max_frames", "4",
        "--max_words", "16", "--batch_size", "8", "--batch_size_val", "8", "--epochs", "1", "--num_workers", "0",
        "--num_global_prompts", "2", "--num_local_prompts", "2", "--num_text_prompts", "4", "--adapter_dim", "8",
        "--device", "cpu", "--no_progress"]


def stop_line(folder: Path | str, out: Path | str) -> list[str]:
    return shlex.split(STOP_MSRVTT.format(D=folder, OUT=out))


def clip4clip_line(dataset: str, folder: Path | str, out: Path | str) -> list[str]:
    datatype, workers, words, frames, files, expand = CLIP4CLIP[dataset]
    return shlex.split(CLIP4CLIP_COMMON.format(
        workers=workers, files=files.format(D=folder), OUT=out, words=words, frames=frames, datatype=datatype,
        expand="--expand_msrvtt_sentences" if expand else ""))


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory) -> Path:
    """MSR-VTT's files as CLIP4Clip ships them (no val csv), from the synthetic set: 20 train and
    6 test videos of 16 frames at 8 fps (2 s)."""
    root = tmp_path_factory.mktemp("lineage")
    source = Path(synthetic.ensure_dataset(root=str(root / "synthetic"), num_videos=20, num_test_videos=6,
                                           num_frames=16, resolution=32, event_fraction=0.2, seed=0))
    shutil.copytree(source, root / "msrvtt", ignore=shutil.ignore_patterns("MSRVTT_JSFUSION_val.csv"))
    return root / "msrvtt"


def test_stops_msrvtt_line_asks_for_stop_on_a_frozen_clip():
    args = params.get_args(stop_line("data/msrvtt", "logs/stop"))
    assert (args.do_train, args.do_eval, args.dataset, args.num_workers, args.log_every) == \
        (True, False, "msrvtt", 8, 50)
    assert (args.data_path, args.msrvtt_train_csv, args.msrvtt_test_csv, args.msrvtt_data_json) == \
        ("data/msrvtt", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json")
    assert (args.features_path, args.output_dir, args.pretrained_dir) == ("data/msrvtt/videos", "logs/stop",
                                                                          "data/msrvtt")
    assert (args.epochs, args.batch_size, args.batch_size_val, args.lr, args.coef_lr, args.weight_decay) == \
        (5, 32, 16, 1e-3, 5e-4, 0.2)
    assert (args.max_words, args.max_frames, args.expand_msrvtt_sentences) == (32, 12, True)
    assert (args.feature_framerate, args.slice_framepos) == (3, 2)
    assert (args.train_clip, args.prompt_mode, args.prompt_generator, args.temporal_prompt) == \
        (False, "stop", "transformer", True)
    assert (args.precision, args.resume, args.pretrained_clip_name) == ("amp_fp16", None, "ViT-B/32")
    read = {line.split()[0]: line for line in args.lineage}
    assert set(read) == {"--num_thread_reader", "--n_display", "--train_csv", "--val_csv", "--data_path", "--optim",
                         "--wd", "--datatype", "--freeze_layer_num", "--loose_type", "--linear_patch",
                         "--sim_header", "--precision", "--init_method", "--time_embedding", "--resume",
                         "--load_from_pretrained", "--shared_latent_space", "--temporal_prompt"}
    assert len(args.lineage) == len(read), "one line per flag"
    assert read["--freeze_layer_num"].startswith("--freeze_layer_num 12 --freeze_clip 1 -> --train_clip False")
    assert "has no effect with it, as in STOP" in read["--freeze_layer_num"]
    assert read["--init_method"].startswith("--init_method tcp://127.0.0.1:6010 -> ignored: this is one process")


@pytest.mark.parametrize("dataset", CLIP4CLIP)
def test_clip4clips_lines_ask_for_clip_fine_tuned_above_its_embeddings(dataset):
    args = params.get_args(clip4clip_line(dataset, "data/x", "ckpts/run"))
    datatype, workers, words, frames, _, expand = CLIP4CLIP[dataset]
    assert (args.dataset, args.do_train, args.do_eval, args.num_workers, args.log_every) == \
        (dataset, True, False, workers, 50)
    assert (args.epochs, args.batch_size, args.batch_size_val, args.lr, args.coef_lr) == (5, 128, 16, 1e-4, 1e-3)
    assert (args.max_words, args.max_frames, args.expand_msrvtt_sentences) == (words, frames, expand)
    assert (args.feature_framerate, args.slice_framepos) == (1, 2)
    assert (args.train_clip, args.clip_frozen_layers) == (True, 0)
    assert (args.output_dir, args.data_path) == ("ckpts/run", "data/x")
    assert f"--datatype {datatype} -> --dataset {dataset}" in args.lineage
    assert "--freeze_layer_num 0 -> --train_clip True --clip_frozen_layers 0 (CLIP above its input embeddings " \
           "trains, at lr x --coef_lr)" in args.lineage
    if dataset == "msrvtt":
        assert (args.msrvtt_train_csv, args.msrvtt_test_csv, args.msrvtt_data_json) == \
            ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json")


@pytest.mark.parametrize("extra, train_clip, frozen_layers", [
    (["--freeze_layer_num", "12", "--freeze_clip", "1"], False, -1),   # STOP: CLIP frozen whatever the number
    (["--freeze_clip", "1", "--freeze_layer_num", "0"], False, -1),
    (["--freeze_layer_num", "0"], True, 0),                            # CLIP4Clip: embeddings frozen
    (["--freeze_layer_num", "6", "--freeze_clip", "0"], True, 6),
    (["--freeze_layer_num", "-1"], True, -1),
    (["--freeze_clip", "0"], True, -1),                                # STOP fine-tuning all of CLIP
])
def test_which_clip_layers_train(extra, train_clip, frozen_layers):
    args = params.get_args(extra)
    assert (args.train_clip, args.clip_frozen_layers) == (train_clip, frozen_layers)


def test_annotation_files_where_the_lineage_puts_them(tmp_path):
    elsewhere = tmp_path / "splits" / "MSRVTT_train.7k.csv"
    args = params.get_args(["--train_csv", str(elsewhere), "--data_path", "data/msrvtt/MSRVTT_data.json"])
    assert (args.data_path, args.msrvtt_train_csv) == ("data/msrvtt", str(elsewhere))   # absolute: another folder
    args = params.get_args(["--train_csv", "data/msrvtt/MSRVTT_train.7k.csv"])
    assert (args.data_path, args.msrvtt_train_csv) == ("data/msrvtt", "MSRVTT_train.7k.csv")
    args = params.get_args(["--datatype", "activity", "--data_path", "data/anet",
                            "--val_csv", "data/anet/MSRVTT_JSFUSION_test.csv"])      # STOP's activitynet.sh
    assert args.dataset == "activitynet" and args.data_path == "data/anet"
    assert args.lineage[-1].startswith("--val_csv data/anet/MSRVTT_JSFUSION_test.csv -> not read")


def test_their_data_path_file_finds_the_files_in_its_folder(msrvtt):
    args = params.get_args(["--data_path", str(msrvtt / "MSRVTT_data.json"), "--features_path",
                            str(msrvtt / "videos"), "--max_frames", "4", "--image_size", "32"])
    train = build_dataset(args, "train", lambda texts, words: None)
    assert args.data_path == str(msrvtt) and len(train.video_ids) == 18   # 2 held out as val


@pytest.mark.parametrize("argv, error", [
    (["--sim_header", "seqTransf"], "error: --sim_header seqTransf: not implemented; we support meanP ("),
    (["--linear_patch", "3d"], "error: --linear_patch 3d: not implemented; we support 2d ("),
    (["--optim", "BertAdam"], "error: --optim BertAdam: not implemented; we support AdamW ("),
    (["--time_embedding", "1"], "error: --time_embedding 1: not implemented; we support 0 ("),
    (["--load_from_pretrained", "1"], "error: --load_from_pretrained 1: not implemented; we support 0 ("),
    (["--temporal_prompt", "group3-3"], "error: --temporal_prompt group3-3: STOP builds its temporal prompt only "
                                        "for group2-2; we support group2-2 (= True), True or False"),
    (["--shared_latent_space", "mlp"], "error: --shared_latent_space mlp: we support transformer, linear"),
    (["--datatype", "hmdb"], "error: --datatype hmdb: we support msrvtt, msvd, lsmdc, activity, didemo, vatex"),
    (["--freeze_clip", "2"], "error: --freeze_clip 2: we support 1 (CLIP frozen, as STOP) or 0 (CLIP fine-tuned)"),
    (["--freeze_layer_num", "-2"], "error: --freeze_layer_num -2: we support -1 (all of CLIP trains) up to"),
    (["--wd", "heavy"], "error: --wd heavy: expected a number"),
    (["--precision", "fp16"], "error: argument --precision: invalid choice: 'fp16'"),
    (["--loose_type=1"], "error: argument --loose_type: ignored explicit argument '1'"),
    (["--local_rank", "1"], "error: --local_rank 1 without the launcher's environment (LOCAL_RANK, RANK, "
                            "WORLD_SIZE): start with torchrun or python -m torch.distributed.launch"),
])
def test_values_we_do_not_implement_end_in_one_line(argv, error, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    code, line = stop_of(argv, capsys)
    assert code == 2 and line.startswith(error), line


@pytest.mark.parametrize("argv, ours", [
    (["--wd", "0.1", "--weight_decay", "0.2"], {"weight_decay": 0.2}),
    (["--weight_decay", "0.2", "--wd", "0.1"], {"weight_decay": 0.2}),
    (["--train_clip", "True", "--freeze_clip", "1"], {"train_clip": True, "clip_frozen_layers": -1}),
    (["--freeze_layer_num", "0", "--train_clip", "False"], {"train_clip": False, "clip_frozen_layers": -1}),
    (["--freeze_layer_num", "0", "--clip_frozen_layers", "2"], {"train_clip": True, "clip_frozen_layers": 2}),
    (["--data_path", "d/MSRVTT_data.json", "--msrvtt_data_json", "captions.json"],
     {"data_path": "d", "msrvtt_data_json": "captions.json"}),
])
def test_our_flag_given_as_well_wins_and_the_line_says_so(argv, ours):
    args = params.get_args(argv)
    assert {name: getattr(args, name) for name in ours} == ours
    assert args.lineage[0].endswith("is given too, and ours wins)")


def test_their_launchers_arguments(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = params.get_args(["--local-rank=1", "--init_method", "tcp://127.0.0.1:6010"])
    assert args.lineage == [
        "--local_rank 1 -> process 1 of this machine (LOCAL_RANK, as under torchrun)",
        "--init_method tcp://127.0.0.1:6010 -> ignored: the processes meet through the launcher's MASTER_ADDR and "
        "MASTER_PORT"]
    with pytest.raises(SystemExit):
        params.get_args(["--local_rank", "0"])


def test_help_lists_their_flags_in_their_own_group(capsys):
    with pytest.raises(SystemExit):
        params.get_args(["--help"])
    ours, theirs = capsys.readouterr().out.split("coming from STOP / CLIP4Clip:")
    for flag in ("--num_thread_reader", "--wd", "--freeze_layer_num", "--sim_header", "--local_rank", "--datatype"):
        assert f"\n  {flag} " in theirs and f"\n  {flag} " not in ours
    assert "--linear_patch 2d accepted as 2d, no effect" in " ".join(theirs.split())


def test_stops_line_trains_and_evaluates_here(msrvtt, tmp_path):
    """STOP's msrvtt.sh on the MSR-VTT-layout fixture, then a tiny model (later flags win): trains,
    validates on held-out training videos, and says in its log how each of STOP's flags was read."""
    out = tmp_path / "logs" / "stop"
    argv = [*stop_line(msrvtt, out), *TINY]
    result = main.main(argv)
    assert sorted(os.listdir(out)) == ["args.json", "best.pt", "latest.pt", "log.txt", "metrics.jsonl"]
    record, = _records(out)
    assert record["split"] == "val" and result["test"] is None            # --do_eval 0
    assert record["frames_kept"]["max"] == 4 == record["frames_loaded"]   # 2 s at 3 per second: 6 frames, 4 kept
    log = (out / "log.txt").read_text()
    assert ("flags of STOP / CLIP4Clip read as:\n  --num_thread_reader 8 -> --num_workers 8 (not applied: "
            "--num_workers 0 is given too, and ours wins)\n") in log
    lines = params.get_args(argv).lineage
    assert len(lines) == 19 and all(f"\n  {line}\n" in log for line in lines)
    assert "frames loaded per video: 4 at 32 px, 3 per second (--slice_framepos 2)" in log


@pytest.mark.slow
def test_clip4clips_msrvtt_line_fine_tunes_clip_here(msrvtt, tmp_path):
    out = tmp_path / "ckpts" / "msrvtt"
    main.main([*clip4clip_line("msrvtt", msrvtt, out), *TINY, "--do_eval"])
    records = _records(out)
    assert [r["split"] for r in records] == ["val", "test"]
    log = (out / "log.txt").read_text()
    visual = next(line.split() for line in log.splitlines() if line.startswith("clip.visual "))
    trainable, frozen = (int(n.replace(",", "")) for n in visual[1:3])
    assert trainable > 0 and frozen > 0          # the embeddings below the blocks stay frozen
