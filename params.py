"""Every command-line flag of the project, grouped, with validation.

`get_args(argv)` is the only entry point: `main.py`, the scripts and the tests all call it,
so a flag means the same thing everywhere. Boolean flags accept True/False/1/0/yes/no and
may be given bare (`--do_train` means `--do_train True`). STOP's and CLIP4Clip's flags are read
onto ours by `lineage.py`; `args.lineage` says how.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import lineage
from modules.clip import CLIP_CONFIGS
from modules.clip4clip import PROMPT_MODES, VIDEO_OUTPUTS
from modules.factory import ModelConfig
from modules.loss import TEACHERS, LossConfig
from modules.stop import PROMPT_GENERATORS, StopConfig
from modules.tempme import TEMPME_TYPES, TempMeConfig
from modules.token_merge import TOKEN_MERGE_MODES, TokenMergeConfig

CLIP_ARCHS = tuple(CLIP_CONFIGS)
# `--dataset` choices; `dataloaders.PARSERS` reads each but "synthetic" (generated in MSR-VTT's layout).
DATASETS = ("msrvtt", "msvd", "lsmdc", "activitynet", "didemo", "vatex", "synthetic")
BATCH_SAMPLING = ("random", "close_captions")   # --batch_sampling (dataloaders.samplers)
SYNTHETIC_EVENT_FRAMES = ("sampled", "always", "never")   # dataloaders.synthetic.event_frame_choice
# The model configurations' defaults are the flags' defaults (written once, in the dataclasses).
MODEL, STOP, TEMPME, MERGE, LOSS = ModelConfig(), StopConfig(), TempMeConfig(), TokenMergeConfig(), LossConfig()

# `--demo` switches to these values for every flag the user did not give explicitly:
# the synthetic dataset and a small random-init CLIP trained end-to-end on CPU.
DEMO_DEFAULTS = dict(
    do_train=True,
    do_eval=True,
    dataset="synthetic",
    clip_init="random",
    clip_arch="tiny-32",
    train_clip=True,
    image_size=32,             # the tiny CLIP's input resolution
    max_frames=4,
    max_words=24,
    synthetic_num_videos=400,
    synthetic_num_test_videos=100,
    synthetic_num_frames=16,
    synthetic_resolution=32,
    synthetic_event_fraction=0.2,
    tempme_compression_ratio=0.5,
    tempme_input_frames=16,
    tempme_output_frames=4,
    tempme_max_input_frames=16,
    tempme_min_output_frames=2,
    tempme_max_output_frames=6,
    tempme_hidden_dim=64,
    epochs=25,
    batch_size=32,
    batch_size_val=50,
    lr=1e-3,
    coef_lr=1.0,
    tempme_lr=1e-3,
    weight_decay=0.05,
    warmup_proportion=0.05,
    num_workers=2,
    log_every=0,
    run_name="demo",
)


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value; argparse's `type=bool` would turn "False" into True."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False/1/0/yes/no), got {value!r}")


def _bool_or_text(value: str | bool) -> bool | str:
    """A boolean, or the text itself when it is none (a value of STOP's that `lineage.read` reads)."""
    try:
        return str2bool(value)
    except argparse.ArgumentTypeError:
        return value


def _add_bool(group: argparse._ArgumentGroup, name: str, default: bool, help: str,
              parse: Callable[[str], bool | str] = str2bool) -> None:
    group.add_argument(name, type=parse, nargs="?", const=True, default=default, metavar="BOOL", help=help)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once, and only where the help does not already say it or X is None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An error is one line on stderr, "error: <what is wrong and which flag>", exit status 2, as
    `main` reports every other error the user can fix; under torchrun only rank 0 prints it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # Parsing precedes any process group: torchrun's RANK says who reports (rank 0).
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {message} (python main.py --help lists the flags)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        description="STOP text-video retrieval on a frozen CLIP, with TempMe frame compression.",
        formatter_class=_HelpFormatter)

    run = parser.add_argument_group("run")
    _add_bool(run, "--do_train", False, "train (and evaluate after every epoch)")
    _add_bool(run, "--do_eval", False, "evaluate on the test split")
    _add_bool(run, "--demo", False, "train and evaluate on the synthetic dataset with a small random CLIP on CPU")
    run.add_argument("--output_dir", default=None,
                     help="alone: the run folder itself, as in CLIP4Clip; with --run_name: its parent. "
                          "Neither given: outputs/<dataset>_<time stamp>")
    run.add_argument("--run_name", default=None, help="run folder name inside --output_dir (outputs when not given)")
    run.add_argument("--resume", default=None,
                     help="'auto' continues the run in the run folder from its latest.pt (a fresh start when there "
                          "is none), or a checkpoint PATH; without it a used run folder is refused")
    run.add_argument("--init_model", default=None, help="trained checkpoint to load before train/eval")
    run.add_argument("--seed", type=int, default=42, help="model initialisation, data order, val holdout")
    run.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    run.add_argument("--precision", choices=("amp_bf16", "amp_fp16", "fp32", "amp"), default="amp_bf16",
                     help="mixed precision on CUDA (amp: STOP's name of amp_fp16); CPU always runs fp32")
    _add_bool(run, "--no_progress", False, "disable tqdm progress bars (batch jobs)")
    run.add_argument("--log_every", type=int, default=20, help="training log interval in steps")
    run.add_argument("--max_nonfinite_steps", type=int, default=10,
                     help="stop after this many consecutive non-finite losses (each one skips its step)")
    _add_bool(run, "--dsl", False, "also report dual-softmax (DSL) re-ranked metrics as a separate row")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="msrvtt", help="the dataset (CLIP4Clip: --datatype)")
    data.add_argument("--val_holdout", type=int, default=500,
                      help="MSR-VTT without MSRVTT_JSFUSION_val.csv, and ActivityNet: training videos held out of "
                           "training as the val split (at most a tenth, drawn with --seed); 0: val is the test "
                           "split, so the best epoch is chosen on test (the lineage protocol)")
    data.add_argument("--data_path", default=None,
                      help="folder holding the annotation files (MSR-VTT: also its MSRVTT_data.json, as CLIP4Clip "
                           "passes it)")
    data.add_argument("--features_path", default=None, help="folder holding the videos")
    data.add_argument("--max_words", type=int, default=32, help="caption length in tokens, SOT/EOT included")
    data.add_argument("--max_frames", type=int, default=TEMPME.max_frames, help="frames per video reaching CLIP without TempMe")
    data.add_argument("--image_size", type=int, default=MODEL.image_size, help="frame side after resize + centre crop")
    data.add_argument("--video_backend", choices=("decord", "pyav"), default="decord",
                      help="video decoder (decord retries a file it cannot read with pyav)")
    data.add_argument("--num_workers", type=int, default=4, help="data loader worker processes per GPU")
    data.add_argument("--train_frame_sampling", choices=("random", "uniform"), default="random",
                      help="random: one random frame per segment (TSN), or with --feature_framerate a random one "
                           "of the frames each sampled frame stands for; uniform: as evaluation samples")
    data.add_argument("--feature_framerate", type=int, default=None,
                      help="sample R frames per second as CLIP4Clip does (0: every frame), so a longer video "
                           "gives more frames, up to the frames loaded per video; default: that many frames "
                           "spread over the whole video")
    data.add_argument("--slice_framepos", type=int, choices=(0, 1, 2), default=2,
                      help="with --feature_framerate, when a video gives more frames than are loaded: keep the "
                           "first (0), the last (1) or spread evenly over them (2; CLIP4Clip's default is 0, "
                           "its and STOP's commands pass 2)")
    data.add_argument("--batch_sampling", choices=BATCH_SAMPLING, default="random",
                      help="how training batches are formed: random, or close_captions: groups of "
                           "--caption_group_size videos whose captions are nearest by their words, so that each "
                           "batch holds the negatives a video is most easily confused with (docs/data.md)")
    data.add_argument("--caption_group_size", type=int, default=4,
                      help="close_captions: videos per group of close captions; must divide --batch_size")
    data.add_argument("--close_captions_warmup", type=int, default=0,
                      help="close_captions: the first N epochs form random batches (a model trained from scratch "
                           "first learns the coarse differences there)")
    _add_bool(data, "--expand_msrvtt_sentences", False, "MSR-VTT: train on every caption of the train videos")
    data.add_argument("--msrvtt_train_csv", default="MSRVTT_train.9k.csv",
                      help="MSR-VTT train split file (MSRVTT_train.9k.csv or MSRVTT_train.7k.csv), in --data_path "
                           "or a path")
    data.add_argument("--msrvtt_test_csv", default="MSRVTT_JSFUSION_test.csv",
                      help="MSR-VTT test split file (1k-A), in --data_path or a path")
    data.add_argument("--msrvtt_data_json", default="MSRVTT_data.json",
                      help="MSR-VTT captions file, in --data_path or a path")
    data.add_argument("--video_max_seconds", type=float, default=None,
                      help="read only the first N seconds of each video (DiDeMo uses 30)")
    data.add_argument("--synthetic_dir", default=None,
                      help="cache folder of the synthetic dataset (default: ~/.cache/stop_tempme/synthetic)")
    data.add_argument("--synthetic_num_videos", type=int, default=600, help="synthetic train videos")
    data.add_argument("--synthetic_num_test_videos", type=int, default=100, help="synthetic val/test videos each")
    data.add_argument("--synthetic_num_frames", type=int, default=16, help="frames per synthetic video")
    data.add_argument("--synthetic_resolution", type=int, default=64, help="synthetic frame side in pixels")
    data.add_argument("--synthetic_event_fraction", type=float, default=0.5,
                      help="share of synthetic videos carrying a brief captioned event")
    data.add_argument("--synthetic_distractor_frames", type=int, default=0,
                      help="uncaptioned outlier frames per synthetic video (noise bursts, cuts), in bursts of 2-3")
    data.add_argument("--synthetic_seed", type=int, default=0, help="seed of the synthetic dataset's generator")
    data.add_argument("--synthetic_event_frames", choices=SYNTHETIC_EVENT_FRAMES, default="sampled",
                      help="frames read from the synthetic clips, from the generator's record of each captioned "
                           "event: sampled (as the loader samples them), always (the sampled frame nearest the "
                           "event is swapped for an event frame: an oracle, the ceiling of frame selection) or "
                           "never (sampled event frames are swapped for their nearest other frames: the floor)")

    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_dir", default="modules", help="folder holding OpenAI's CLIP weights")
    model.add_argument("--pretrained_clip_name", default="ViT-B/32",
                       help="CLIP weights file {pretrained_dir}/{name with '/' as '-'}.pt")
    model.add_argument("--clip_weights", default=None, help="explicit CLIP weights file (overrides the two above)")
    model.add_argument("--clip_init", choices=("pretrained", "random"), default="pretrained",
                       help="random: random-init CLIP of --clip_arch (demo, benchmarks, tests)")
    model.add_argument("--clip_arch", choices=CLIP_ARCHS, default="ViT-B/32", help="architecture for --clip_init random")
    _add_bool(model, "--train_clip", MODEL.train_clip, "fine-tune CLIP itself (lr * coef_lr)")
    model.add_argument("--clip_frozen_layers", type=int, default=MODEL.clip_frozen_layers,
                       help="with --train_clip: -1 fine-tunes all of CLIP; N >= 0 keeps its input embeddings and "
                            "first N blocks of each tower frozen, as CLIP4Clip's --freeze_layer_num N")
    model.add_argument("--prompt_mode", choices=PROMPT_MODES, default=MODEL.prompt_mode,
                       help="none: plain CLIP4Clip meanP (zero-shot / baselines)")
    model.add_argument("--video_output", choices=VIDEO_OUTPUTS, default=MODEL.video_output,
                       help="video embedding with prompts: STOP's first global prompt or the mean of frame CLS tokens")

    stop = parser.add_argument_group("STOP prompts")
    stop.add_argument("--prompt_generator", choices=PROMPT_GENERATORS, default=STOP.prompt_generator,
                      help="module generating the per-frame prompts")
    stop.add_argument("--num_global_prompts", type=int, default=STOP.num_global_prompts, help="video-level visual prompts")
    stop.add_argument("--num_local_prompts", type=int, default=STOP.num_local_prompts, help="local visual prompts per frame")
    stop.add_argument("--num_text_prompts", type=int, default=STOP.num_text_prompts, help="deep text prompts (half prefix, half postfix)")
    _add_bool(stop, "--text_postfix_before_eot", STOP.text_postfix_before_eot,
              "ablation: place postfix text prompts before EOT so they can influence it")
    _add_bool(stop, "--spatial_prompt", STOP.spatial_prompt, "intra-frame spatial prompts")
    _add_bool(stop, "--temporal_prompt", STOP.temporal_prompt, "inter-frame temporal prompts (STOP: group2-2)",
              parse=_bool_or_text)
    stop.add_argument("--spatial_topk", type=int, default=STOP.spatial_topk, help="patches selected per frame")
    stop.add_argument("--prompt_scale", type=float, default=STOP.prompt_scale, help="scale of the spatial/temporal prompts")
    stop.add_argument("--spatial_dropout", type=float, default=STOP.spatial_dropout, help="dropout of the spatial prompt module")
    _add_bool(stop, "--adapter", STOP.adapter, "bottleneck adapters in every block of both towers")
    stop.add_argument("--adapter_dim", type=int, default=STOP.adapter_dim, help="adapter bottleneck width")
    stop.add_argument("--adapter_scale", type=float, default=STOP.adapter_scale, help="adapter output scale")

    tempme = parser.add_argument_group("TempMe frame compression")
    _add_bool(tempme, "--use_tempme", TEMPME.enabled, "compress frames with TempMe before CLIP")
    tempme.add_argument("--tempme_type", choices=TEMPME_TYPES, default=TEMPME.type,
                        help="simple: keep a ratio of --max_frames; basic: --tempme_input_frames -> "
                             "--tempme_output_frames; adaptive: a content-dependent count")
    tempme.add_argument("--tempme_compression_ratio", type=float, default=TEMPME.compression_ratio,
                        help="simple: fraction of frames KEPT, in (0, 1]; 1.0 = no compression, lower = faster")
    tempme.add_argument("--tempme_hidden_dim", type=int, default=TEMPME.hidden_dim,
                        help="compressor feature/transformer width (lower it on out-of-memory)")
    tempme.add_argument("--tempme_input_frames", type=int, default=TEMPME.input_frames, help="basic: frames loaded")
    tempme.add_argument("--tempme_output_frames", type=int, default=TEMPME.output_frames, help="basic: frames kept")
    tempme.add_argument("--tempme_num_layers", type=int, default=TEMPME.num_layers, help="basic: transformer layers")
    tempme.add_argument("--tempme_max_input_frames", type=int, default=TEMPME.max_input_frames, help="adaptive: frames loaded")
    tempme.add_argument("--tempme_min_output_frames", type=int, default=TEMPME.min_output_frames, help="adaptive: fewest frames kept")
    tempme.add_argument("--tempme_max_output_frames", type=int, default=TEMPME.max_output_frames, help="adaptive: most frames kept")
    tempme.add_argument("--tempme_lr", type=float, default=1e-3, help="learning rate of the compressor")
    tempme.add_argument("--tempme_aux_weight", type=float, default=LOSS.aux_weight,
                        help="weight of the auxiliary loss teaching the compressor's frame scores the teacher's "
                             "view of every input frame (0 = off)")
    tempme.add_argument("--tempme_teacher", choices=TEACHERS, default=LOSS.teacher,
                        help="auxiliary targets: completion = what a frame adds to the frames kept with it for "
                             "picking out its caption among the batch's (finds brief captioned moments); text = how "
                             "surely the frame alone picks out its caption; distinct = how unlike the rest of its "
                             "video a frame is (chases outliers such as cuts and flashes)")
    tempme.add_argument("--tempme_teacher_share", type=float, default=LOSS.teacher_share,
                        help="share of each training batch whose input frames the model embeds one by one for "
                             "the teacher (no gradient); the teacher's cost is this share of a pass over every "
                             "input frame")

    merge = parser.add_argument_group("token merging inside the ViT (docs/token_merge.md)")
    merge.add_argument("--token_merge", choices=TOKEN_MERGE_MODES, default=MERGE.mode,
                       help="frame: merge similar patch tokens inside each frame in the first 2/3 of the ViT's "
                            "blocks; clip: frame, then merge across groups of neighbouring frames (the "
                            "published TempMe schedule, with learned temporal embeddings)")
    merge.add_argument("--token_merge_r", type=int, default=MERGE.r,
                       help="tokens merged per block and frame in the frame phase at ViT-B/32's geometry "
                            "(49 patches, 8 blocks); other ViTs merge the same share: round(r*P/49*8/blocks)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=5, help="training epochs")
    optim.add_argument("--batch_size", type=int, default=32, help="global training batch size")
    optim.add_argument("--batch_size_val", type=int, default=16, help="evaluation batch size per process")
    optim.add_argument("--lr", type=float, default=1e-3, help="learning rate of prompts and adapters")
    optim.add_argument("--coef_lr", type=float, default=1e-3, help="CLIP's lr = lr * coef_lr (with --train_clip)")
    optim.add_argument("--weight_decay", type=float, default=0.2, help="not applied to biases, norms, prompt tables")
    optim.add_argument("--warmup_proportion", type=float, default=0.1, help="share of steps with linear warmup")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="batches per optimiser step")
    optim.add_argument("--caption_contrast", type=float, default=LOSS.caption_contrast,
                       help="weight of a caption-to-caption contrastive term: each caption's embedding must be told "
                            "apart from the batch's captions of other videos, so that captions differing by one "
                            "detail keep apart; for text towers trained from scratch (0 = off)")
    optim.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0 disables)")

    lineage.add_arguments(parser)
    parser.set_defaults(lineage=[])   # how their flags were read (`lineage.read`); none given: nothing
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Ranges of the engine's and the data's flags; the model's and the loss's flags are checked by
    their configurations (`ModelConfig.validate`, `LossConfig.validate`), at parse time."""
    positive = ("max_words", "batch_size", "batch_size_val", "epochs", "gradient_accumulation_steps",
                "max_nonfinite_steps", "synthetic_num_videos", "synthetic_num_test_videos", "synthetic_num_frames",
                "synthetic_resolution")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.feature_framerate is not None and args.feature_framerate < 0:
        parser.error(f"--feature_framerate must be >= 0 (0: every frame), got {args.feature_framerate}")
    for name in ("num_workers", "val_holdout", "synthetic_distractor_frames", "close_captions_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.max_words < 2:
        parser.error(f"--max_words must be >= 2 (SOT and EOT), got {args.max_words}")
    for name in ("lr", "tempme_lr"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    for name in ("warmup_proportion", "synthetic_event_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    if args.batch_sampling == "close_captions" and (args.caption_group_size < 2
                                                    or args.batch_size % args.caption_group_size):
        parser.error(f"--caption_group_size must be >= 2 and divide --batch_size {args.batch_size}, "
                     f"got {args.caption_group_size}")
    for config in (ModelConfig, LossConfig):
        try:
            config.from_flags(args).validate()
        except ValueError as exc:
            parser.error(str(exc))
    if args.resume == "auto" and args.run_name is None and args.output_dir is None:
        parser.error("--resume auto needs the run folder: give --run_name (outputs/<run_name>) or --output_dir")
    if args.clip_weights and args.clip_init == "random":
        parser.error(f"--clip_weights {args.clip_weights} is not used with --clip_init random"
                     f"{' (the --demo default)' if args.demo else ''}: add --clip_init pretrained to load it, "
                     f"or drop --clip_weights")
    if args.dataset != "synthetic" and (args.do_train or args.do_eval):
        for name in ("data_path", "features_path"):
            if getattr(args, name) is None:
                parser.error(f"--{name} is required for --dataset {args.dataset}")


def _given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """Destinations of the flags `argv` gives: parsed again onto a namespace in which every
    destination is already set, where argparse fills in no default."""
    unset = object()
    names = {action.dest for action in parser._actions if action.dest != lineage.GIVEN}
    namespace = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(names, unset)))
    return {name for name in names if getattr(namespace, name) is not unset}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: `sys.argv[1:]`) into a validated namespace, STOP's and CLIP4Clip's
    flags read onto ours (`args.lineage` lists how)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        # Re-parse with demo values as defaults so explicit flags still win.
        parser.set_defaults(**DEMO_DEFAULTS)
        args = parser.parse_args(argv)
    try:
        lineage.read(args, _given_flags(parser, argv))
    except ValueError as exc:
        parser.error(str(exc))
    _validate(parser, args)
    return args
