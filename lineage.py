"""The command lines of STOP and CLIP4Clip, read onto this project's flags.

Users arrive with STOP's `scripts/msrvtt.sh` and CLIP4Clip's README commands. `add_arguments`
gives the parser their flags, in a help group of their own; after parsing, `read` turns the
values given into ours and lists, one line per flag, how each was read (the run's start-up block
prints the lines). Where one of our flags is given as well, ours wins (and the line says so). A
flag of theirs with no effect here is accepted only with the value this code implements; any other
value is a `ValueError` of one line naming the flag, the value and what we support.

Some of their flags are ours as well and are read where they are defined (`params.py`):
`--feature_framerate`, `--slice_framepos`, `--do_train 1`; some of their values of our flags are
read here: `--precision amp`, `--temporal_prompt group2-2`, `--resume None`, `--data_path
MSRVTT_data.json`.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from modules.stop import PROMPT_GENERATORS

GIVEN = "lineage_given"   # the namespace attribute holding {their flag: value given}, until `read`

# Their flag -> (our flag, its type, the values it takes (None: any), how a value becomes ours).
RENAMED: dict[str, tuple[str, Callable[[str], Any], tuple[str, ...] | None, dict[str, str]]] = {
    "--datatype": ("dataset", str, ("msrvtt", "msvd", "lsmdc", "activity", "didemo", "vatex"),
                   {"activity": "activitynet"}),
    "--num_thread_reader": ("num_workers", int, None, {}),
    "--n_display": ("log_every", int, None, {}),
    "--wd": ("weight_decay", float, None, {}),
    "--shared_latent_space": ("prompt_generator", str, PROMPT_GENERATORS, {}),
}
# Their flags without an effect here -> (the one value accepted, what this code does instead).
NO_EFFECT = {
    "--loose_type": ("", "text and video are encoded apart and compared by cosine (their loose type), the "
                         "only way here"),
    "--linear_patch": ("2d", "CLIP's 2-D patch embedding, the only one here"),
    "--sim_header": ("meanP", "the video embedding is STOP's first global prompt (--video_output), or the mean of "
                              "the frame embeddings with --prompt_mode none; no sequence or cross-attention heads"),
    "--time_embedding": ("0", "no time embedding on frame features; STOP's prompts carry the frame order"),
    "--load_from_pretrained": ("0", "--resume continues a run with its optimiser state; to start from trained "
                                    "weights alone use --init_model PATH"),
    "--optim": ("AdamW", "AdamW with linear warmup and cosine decay (BertAdam's warmup-cosine schedule), the only "
                         "optimiser here"),
}
ANNOTATION_FILES = {"--train_csv": "msrvtt_train_csv", "--val_csv": "msrvtt_test_csv"}
HELP = {   # their flag: (metavar, what it becomes here)
    "--datatype": ("NAME", "the dataset: --dataset (activity: activitynet)"),
    "--num_thread_reader": ("N", "data loader workers per process: --num_workers"),
    "--n_display": ("N", "log interval in steps: --log_every"),
    "--wd": ("W", "weight decay: --weight_decay"),
    "--shared_latent_space": ("NAME", "STOP's prompt generator: --prompt_generator"),
    "--train_csv": ("PATH", "MSR-VTT train split file: --msrvtt_train_csv (and its folder --data_path when none is "
                            "given); other datasets: not read, as in the reference"),
    "--val_csv": ("PATH", "MSR-VTT test split file: --msrvtt_test_csv (the best epoch is still chosen on "
                          "--val_holdout training videos); other datasets: not read"),
    "--freeze_clip": ("0|1", "1: CLIP frozen (--train_clip False), its --freeze_layer_num ignored, as in STOP; 0: "
                             "CLIP fine-tuned (--train_clip True)"),
    "--freeze_layer_num": ("N", "without --freeze_clip 1: CLIP fine-tuned above its input embeddings and first N "
                                "blocks (--train_clip True --clip_frozen_layers N; -1: all of CLIP)"),
    "--init_method": ("URL", "ignored: processes meet through torchrun's environment"),
    "--local_rank": ("N", "passed by python -m torch.distributed.launch; the process's GPU comes from LOCAL_RANK, "
                          "as under torchrun"),
}


class _Given(argparse.Action):
    """Records their flag (under its first name) and the text given, for `read`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = getattr(namespace, self.dest, None)
        given = dict(given) if isinstance(given, dict) else {}
        given[self.option_strings[0]] = values if isinstance(values, str) else ""
        setattr(namespace, self.dest, given)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Their flags, in a help group "coming from STOP / CLIP4Clip"."""
    group = parser.add_argument_group(
        "coming from STOP / CLIP4Clip",
        "their flags, read onto ours (the run's start-up block lists how); a flag with no effect here is "
        "accepted only with the value we implement. Theirs that are ours too: --feature_framerate, "
        "--slice_framepos, --precision amp (= amp_fp16), --temporal_prompt group2-2 (= True), --resume None, "
        "--data_path .../MSRVTT_data.json (its folder and that file), --do_train/--do_eval 1 or 0")
    for flag, (metavar, help) in HELP.items():
        names = (flag, "--local-rank") if flag == "--local_rank" else (flag,)
        group.add_argument(*names, action=_Given, dest=GIVEN, default=argparse.SUPPRESS, metavar=metavar, help=help)
    for flag, (value, meaning) in NO_EFFECT.items():
        group.add_argument(flag, action=_Given, dest=GIVEN, default=argparse.SUPPRESS,
                           nargs=0 if not value else None, metavar=value,
                           help=f"accepted{' as ' + value if value else ''}, no effect: {meaning}")


def read(args: argparse.Namespace, explicit: set[str]) -> None:
    """Turn their flags and values in `args` into ours, in place, and set `args.lineage` to the
    lines saying how each was read. `explicit`: the destinations of our flags given on the
    command line, which keep their values. Raises ValueError (one line) for a value we do not
    implement."""
    given: dict[str, str] = vars(args).pop(GIVEN, {})
    lines = []
    for flag, value in given.items():
        if flag in RENAMED:
            lines.append(_rename(args, explicit, flag, value))
        elif flag in NO_EFFECT:
            lines.append(_no_effect(flag, value))
    lines += _values_of_ours(args)
    lines += _annotation_files(args, explicit, given)
    lines += _clip_training(args, explicit, given)
    lines += _processes(given)
    args.lineage = lines


def _number(flag: str, value: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{flag} {value}: expected {'an integer' if kind is int else 'a number'}") from None


def _set(args: argparse.Namespace, explicit: set[str], dest: str, new: Any) -> str:
    """Our `--dest` becomes `new`, unless it was given otherwise: then it keeps its value, and the
    returned note (else "") says so."""
    if dest in explicit and getattr(args, dest) != new:
        return f" (not applied: --{dest} {getattr(args, dest)} is given too, and ours wins)"
    setattr(args, dest, new)
    return ""


def _rename(args: argparse.Namespace, explicit: set[str], flag: str, value: str) -> str:
    dest, kind, choices, ours = RENAMED[flag]
    if choices is not None and value not in choices:
        raise ValueError(f"{flag} {value}: we support {', '.join(choices)}")
    new = ours[value] if value in ours else _number(flag, value, kind)
    return f"{flag} {value} -> --{dest} {new}" + _set(args, explicit, dest, new)


def _no_effect(flag: str, value: str) -> str:
    accepted, meaning = NO_EFFECT[flag]
    if value != accepted:   # (a bare flag such as --loose_type cannot take a value: argparse refuses one)
        raise ValueError(f"{flag} {value}: not implemented; we support {accepted} ({meaning})")
    return f"{flag}{' ' + value if value else ''} -> no effect: {meaning}"


def _values_of_ours(args: argparse.Namespace) -> list[str]:
    """Their values of our flags `--precision`, `--temporal_prompt`, `--resume`."""
    lines = []
    if args.precision == "amp":
        args.precision = "amp_fp16"
        lines.append("--precision amp -> --precision amp_fp16 (fp16 autocast with a loss scaler, on CUDA)")
    if isinstance(args.temporal_prompt, str):
        if args.temporal_prompt != "group2-2":
            raise ValueError(f"--temporal_prompt {args.temporal_prompt}: STOP builds its temporal prompt only for "
                             f"group2-2; we support group2-2 (= True), True or False")
        args.temporal_prompt = True
        lines.append("--temporal_prompt group2-2 -> --temporal_prompt True (STOP's inter-frame temporal prompt)")
    if args.resume == "None":
        args.resume = None
        lines.append("--resume None -> no resume: a new run")
    return lines


def _annotation_files(args: argparse.Namespace, explicit: set[str], given: dict[str, str]) -> list[str]:
    """MSR-VTT's files as the lineage names them: `--data_path` the captions JSON, `--train_csv`
    and `--val_csv` paths of the split files. Other datasets' loaders read neither csv."""
    lines = []
    if args.dataset == "msrvtt" and args.data_path and args.data_path.endswith(".json") \
            and not os.path.isdir(args.data_path):
        path, folder = args.data_path, os.path.dirname(args.data_path) or "."
        args.data_path, name = folder, os.path.basename(path)
        lines.append(f"--data_path {path} -> --data_path {folder} --msrvtt_data_json {name}"
                     + _set(args, explicit, "msrvtt_data_json", name))
    for flag, dest in ANNOTATION_FILES.items():
        if flag not in given:
            continue
        path = given[flag]
        if args.dataset != "msrvtt":
            lines.append(f"{flag} {path} -> not read: the {args.dataset} files are found in --data_path, as the "
                         f"reference's loader finds them")
            continue
        folder = os.path.dirname(path) or "."
        if args.data_path is None:
            args.data_path = folder
            lines.append(f"{flag} {path} -> --data_path {folder} (none given)")
        same_folder = os.path.normpath(folder) == os.path.normpath(args.data_path)
        name = os.path.basename(path) if same_folder else os.path.abspath(path)
        lines.append(f"{flag} {path} -> --{dest} {name}" + _set(args, explicit, dest, name))
    return lines


def _clip_training(args: argparse.Namespace, explicit: set[str], given: dict[str, str]) -> list[str]:
    """`--freeze_clip` and `--freeze_layer_num` -> `--train_clip` and `--clip_frozen_layers`."""
    if "--freeze_clip" not in given and "--freeze_layer_num" not in given:
        return []
    freeze = _number("--freeze_clip", given["--freeze_clip"], int) if "--freeze_clip" in given else None
    layers = _number("--freeze_layer_num", given["--freeze_layer_num"], int) if "--freeze_layer_num" in given else None
    if freeze not in (None, 0, 1):
        raise ValueError(f"--freeze_clip {freeze}: we support 1 (CLIP frozen, as STOP) or 0 (CLIP fine-tuned)")
    if layers is not None and layers < -1:
        raise ValueError(f"--freeze_layer_num {layers}: we support -1 (all of CLIP trains) up to CLIP's number of "
                         f"blocks (12 for ViT-B; every block frozen)")
    line = " ".join(f"{flag} {given[flag]}" for flag in ("--freeze_layer_num", "--freeze_clip") if flag in given)
    if freeze == 1:
        ignored = "; --freeze_layer_num has no effect with it, as in STOP" if layers is not None else ""
        return [f"{line} -> --train_clip False (CLIP frozen, STOP's prompts and adapters train{ignored})"
                + _set(args, explicit, "train_clip", False)]
    frozen = -1 if layers is None else layers
    kept = ("all of CLIP" if frozen == -1 else
            f"CLIP above its input embeddings{f' and first {frozen} blocks' if frozen else ''}")
    line += f" -> --train_clip True --clip_frozen_layers {frozen} ({kept} trains, at lr x --coef_lr)"
    not_applied = _set(args, explicit, "train_clip", True)
    return [line + (not_applied or _set(args, explicit, "clip_frozen_layers", frozen))]


def _processes(given: dict[str, str]) -> list[str]:
    """`--init_method` (ignored) and `--local_rank` (checked against the launcher's environment)."""
    lines = []
    if "--local_rank" in given:
        rank = _number("--local_rank", given["--local_rank"], int)
        if os.environ.get("LOCAL_RANK") is None:
            raise ValueError(f"--local_rank {rank} without the launcher's environment (LOCAL_RANK, RANK, WORLD_SIZE): "
                             f"start with torchrun or python -m torch.distributed.launch")
        if int(os.environ["LOCAL_RANK"]) != rank:
            raise ValueError(f"--local_rank {rank} disagrees with LOCAL_RANK={os.environ['LOCAL_RANK']} of the "
                             f"launcher: drop --local_rank")
        lines.append(f"--local_rank {rank} -> process {rank} of this machine (LOCAL_RANK, as under torchrun)")
    if "--init_method" in given:
        method = given["--init_method"]
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            lines.append(f"--init_method {method} -> ignored: the processes meet through the launcher's "
                         f"MASTER_ADDR and MASTER_PORT")
        else:
            lines.append(f"--init_method {method} -> ignored: this is one process (STOP starts one per visible GPU "
                         f"itself; here: torchrun --nproc_per_node N main.py ..., with --batch_size the global "
                         f"batch, STOP's per-GPU batch x N)")
    return lines
