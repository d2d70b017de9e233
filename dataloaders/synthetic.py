"""Synthetic retrieval dataset: coloured shapes moving on textured backgrounds, in the MSR-VTT layout.

Generated deterministically from the seed on first use into `<root>/<hash of the parameters>`
(root: `--synthetic_dir`, default ~/.cache/stop_tempme/synthetic), then read through the real
MSR-VTT parser and video reader. Layout of the generated folder:

    MSRVTT_train.9k.csv, MSRVTT_data.json (2 captions per video), MSRVTT_JSFUSION_val.csv,
    MSRVTT_JSFUSION_test.csv, videos/video<N>.mp4 (H.264, 8 fps),
    attributes.json (per video: colour, shape, motion, background, event, event_frames, distractor_frames)

A caption names colour, shape, motion and background; a share of the videos
(`--synthetic_event_fraction`) also carry a 2-3 frame event that the caption names. Event videos
come in pairs sharing every other attribute (event vs no event, or two different events), so
the event alone tells them apart: that is what makes frame selection matter. With
`--synthetic_distractor_frames N` every video also carries N uncaptioned outlier frames in bursts
of 2-3 (noise bursts and cuts to another scene, never on an event frame): frames as distinct as
the event that no caption mentions, as cuts and flashes in real video. Within a split every
caption is unique. Concurrent processes (torchrun ranks) each build in a private temporary
folder and `os.rename` it into place; a process that loses the race reuses the winner's folder.
`write_long_video` puts clips one after another into one long video whose parts are known.
"""
from __future__ import annotations

import fractions
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from modules.errors import UserError

logger = logging.getLogger("dataloaders")

GENERATOR_VERSION = 2  # bump when the output changes, so caches are rebuilt
COLOURS = {"red": (225, 35, 35), "green": (35, 175, 55), "blue": (40, 80, 235),
           "yellow": (245, 225, 35), "purple": (150, 55, 205), "orange": (250, 140, 25)}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("horizontally", "vertically", "diagonally", "in a circle")
BACKGROUNDS = ("striped", "checkered", "dotted", "plain")
EVENTS = ("a white flash", "a blackout", "a star")
DISTRACTORS = ("noise", "cut")
FPS = 8
TEMPLATES = ("a {colour} {shape} moving {motion} on a {background} background{event}",
             "a {background} background with a {colour} {shape} moving {motion}{event}")
EVENT_SUFFIX = (" with {event}", " and {event}")
TRAIL_LAGS = (0.9, 0.6, 0.3)      # radians of the motion cycle behind the current position
TRAIL_ALPHAS = (0.15, 0.25, 0.4)


def default_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "stop_tempme", "synthetic")


def ensure_dataset(*, root: str | None, num_videos: int, num_test_videos: int, num_frames: int,
                   resolution: int, event_fraction: float, seed: int, distractor_frames: int = 0) -> str:
    """Folder of the dataset for these parameters, generating it first if needed."""
    if resolution % 2 or resolution < 16:
        raise UserError(f"--synthetic_resolution must be even and >= 16 (H.264), got {resolution}")
    if num_frames < 4:
        raise UserError(f"--synthetic_num_frames must be >= 4, got {num_frames}")
    if not 0 <= distractor_frames <= num_frames // 2:
        raise UserError(f"--synthetic_distractor_frames must be in [0, {num_frames // 2}] (half the "
                        f"--synthetic_num_frames), got {distractor_frames}")
    params = dict(version=GENERATOR_VERSION, num_videos=num_videos, num_test_videos=num_test_videos,
                  num_frames=num_frames, resolution=resolution, event_fraction=event_fraction, seed=seed,
                  distractor_frames=distractor_frames)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = root or default_root()
    final = os.path.join(root, digest)
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{digest}-", dir=root)
    try:
        logger.info("generating the synthetic dataset into %s", final)
        _generate(tmp, params)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            # Another process finished first: its folder is identical, use it.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def plan_split(num: int, event_fraction: float, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Attribute tuples (colour, shape, motion, background, event or -1) of `num` distinct videos."""
    bases = list(itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(MOTIONS)),
                                   range(len(BACKGROUNDS))))
    bases = [bases[i] for i in rng.permutation(len(bases))]
    with_event = round(num * event_fraction)
    pairs = min(with_event, num - with_event)  # same base: event vs no event
    lone_events = with_event - pairs  # paired with each other: two different events
    plain = num - with_event - pairs
    needed = pairs + (lone_events + 1) // 2 + plain
    if needed > len(bases):
        raise UserError(f"cannot make {num} distinct synthetic captions with event fraction "
                         f"{event_fraction}: at most {len(bases)} attribute combinations without events; "
                         f"lower --synthetic_num_videos or raise --synthetic_event_fraction")
    base = iter(bases)
    plan: list[tuple[int, ...]] = []
    for _ in range(pairs):
        b = next(base)
        plan += [(*b, int(rng.integers(len(EVENTS)))), (*b, -1)]
    for i in range(0, lone_events, 2):
        b, events = next(base), rng.permutation(len(EVENTS))
        plan += [(*b, int(events[0]))] + ([(*b, int(events[1]))] if i + 1 < lone_events else [])
    plan += [(*next(base), -1) for _ in range(plain)]
    return [plan[i] for i in rng.permutation(len(plan))]


def caption(attributes: tuple[int, ...], template: int = 0) -> str:
    colour, shape, motion, background, event = attributes
    suffix = EVENT_SUFFIX[template].format(event=EVENTS[event]) if event >= 0 else ""
    return TEMPLATES[template].format(colour=list(COLOURS)[colour], shape=SHAPES[shape],
                                      motion=MOTIONS[motion], background=BACKGROUNDS[background],
                                      event=suffix)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1  # [-1, 1]
    if shape == "circle":
        return x ** 2 + y ** 2 <= 1
    if shape == "square":
        return (abs(x) <= 0.85) & (abs(y) <= 0.85)
    if shape == "triangle":
        return (y <= 0.9) & (y >= 2 * abs(x) - 1)
    return (abs(x) <= 0.3) | (abs(y) <= 0.3)  # cross


def _star_mask(res: int) -> np.ndarray:
    y, x = (np.mgrid[0:res, 0:res] + 0.5) / res * 2 - 1
    radius, angle = np.hypot(x, y), np.arctan2(y, x)
    return radius <= 0.55 * (0.55 + 0.45 * np.cos(5 * angle))


def _background(kind: str, res: int, rng: np.random.Generator) -> np.ndarray:
    tone = rng.integers(95, 140) + rng.integers(-12, 13, size=3)
    y, x = np.mgrid[0:res, 0:res]
    cell = max(2, res // 8)
    if kind == "striped":
        pattern = ((x if rng.random() < 0.5 else y) // cell) % 2
    elif kind == "checkered":
        pattern = (x // cell + y // cell) % 2
    elif kind == "dotted":
        pattern = (np.hypot(x % cell - cell / 2, y % cell - cell / 2) < cell / 3).astype(int)
    else:
        pattern = np.zeros((res, res), dtype=int)
    image = tone[None, None, :] + 45 * pattern[..., None] - 20
    return np.clip(image, 0, 255).astype(np.uint8)


def render(attributes: tuple[int, ...], num_frames: int, res: int,
           rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """uint8 frames `[F, res, res, 3]` of one video and the indices of its event frames."""
    colour, shape, motion, background, event = attributes
    frames = np.repeat(_background(BACKGROUNDS[background], res, rng)[None], num_frames, axis=0)
    size = int(res * 0.4) // 2 * 2
    mask = _shape_mask(SHAPES[shape], size)
    amplitude = res / 2 - size / 2 - 1
    phase = rng.uniform(0, 2 * np.pi)
    colour_rgb = np.array(COLOURS[list(COLOURS)[colour]], dtype=np.float32)

    def corner(theta: float) -> tuple[int, int]:
        dx, dy = {"horizontally": (np.sin(theta), 0.0), "vertically": (0.0, np.sin(theta)),
                  "diagonally": (np.sin(theta), np.sin(theta)),
                  "in a circle": (np.cos(theta), np.sin(theta))}[MOTIONS[motion]]
        return int(round(res / 2 + amplitude * dy - size / 2)), int(round(res / 2 + amplitude * dx - size / 2))

    for t in range(num_frames):
        theta = phase + 2 * np.pi * t / num_frames
        # A fading motion trail (earlier positions, oldest faintest), like motion blur in real
        # video: each frame alone shows the direction of motion, as the caption's motion word needs.
        for lag, alpha in zip(TRAIL_LAGS, TRAIL_ALPHAS):
            top, left = corner(theta - lag)
            region = frames[t, top:top + size, left:left + size]
            region[mask] = (region[mask] * (1 - alpha) + colour_rgb * alpha).astype(np.uint8)
        top, left = corner(theta)
        frames[t, top:top + size, left:left + size][mask] = colour_rgb.astype(np.uint8)
    event_frames: list[int] = []
    if event >= 0:
        length = 2 if num_frames < 24 else int(rng.integers(2, 4))
        start = int(rng.integers(0, num_frames - length + 1))
        event_frames = list(range(start, start + length))
        kind = EVENTS[event]
        for t in event_frames:
            if kind == "a white flash":
                frames[t] = (frames[t] * 0.15 + 255 * 0.85).astype(np.uint8)
            elif kind == "a blackout":
                frames[t] = (frames[t] * 0.1).astype(np.uint8)
            else:
                frames[t][_star_mask(res)] = (255, 255, 255)
    return frames, event_frames


def add_distractors(frames: np.ndarray, count: int, keep: list[int], rng: np.random.Generator) -> list[int]:
    """Overwrite `count` frames of `frames [F, H, W, 3]` (never those in `keep`, e.g. the event) with
    bursts of 2-3 uncaptioned outlier frames: uniform noise, or a cut to a still of another scene
    (another background and shape). Returns the indices written, sorted."""
    num_frames, res = frames.shape[:2]
    taken, written = set(keep), []
    while len(written) < count:
        length = min(count - len(written), int(rng.integers(2, 4)))
        starts = [t for t in range(num_frames - length + 1) if not taken & set(range(t - 1, t + length + 1))]
        if not starts:
            starts = [t for t in range(num_frames - length + 1) if not taken & set(range(t, t + length))]
        start = starts[int(rng.integers(len(starts)))]
        if DISTRACTORS[int(rng.integers(len(DISTRACTORS)))] == "noise":
            still = None
        else:
            still = _background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], res, rng)
            size = int(res * 0.5) // 2 * 2
            top, left = rng.integers(0, res - size, size=2)
            colour = rng.integers(0, 256, size=3).astype(np.uint8)
            still[top:top + size, left:left + size][_shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], size)] = colour
        for t in range(start, start + length):
            frames[t] = rng.integers(0, 256, size=frames[t].shape, dtype=np.uint8) if still is None else still
            taken.add(t)
            written.append(t)
    return sorted(written)


def event_frame_choice(mode: str, folder: str) -> "EventFrameChoice | None":
    """The frames a reference row reads from this dataset's clips (`--synthetic_event_frames`), from
    the generator's record of where each captioned event is (`attributes.json`): None for "sampled"
    (the loader's own sampling); "always" swaps the sampled frame nearest the event for the event
    frame nearest it, unless one is sampled already (an oracle: a ceiling for frame selection, not
    a method); "never" swaps every sampled event frame for the nearest frame that is neither an
    event frame nor sampled (the floor)."""
    if mode == "sampled":
        return None
    with open(os.path.join(folder, "attributes.json")) as f:
        events = {video_id: record["event_frames"] for video_id, record in json.load(f).items()}
    return EventFrameChoice(mode == "always", events)


class EventFrameChoice:
    """`(video_id, sampled indices, usable frames) -> indices` with (`with_event`) or without the
    video's event frames; a class, not a closure, so that loader workers can be spawned with it."""

    def __init__(self, with_event: bool, events: dict[str, list[int]]):
        self.with_event, self.events = with_event, events

    def __call__(self, video_id: str, sampled: list[int], total: int) -> list[int]:
        choose = _with_event if self.with_event else _without_event
        return choose(sampled, self.events[video_id], total)


def _with_event(sampled: list[int], event: list[int], total: int) -> list[int]:
    if not event or set(sampled) & set(event):
        return sampled
    position = min(range(len(sampled)), key=lambda i: min(abs(sampled[i] - e) for e in event))
    out = list(sampled)
    out[position] = min(event, key=lambda e: abs(e - sampled[position]))
    return out


def _without_event(sampled: list[int], event: list[int], total: int) -> list[int]:
    out = list(sampled)
    for i, index in enumerate(sampled):
        if index in event:
            free = [t for t in range(total) if t not in event and t not in out]
            out[i] = min(free, key=lambda t: (abs(t - index), t)) if free else index
    return sorted(out)


def write_mp4(path: str, frames: np.ndarray, fps: float = FPS, seconds: list[float] | None = None) -> None:
    """Encode uint8 `[F, H, W, 3]` (H, W even) as H.264 mp4 with PyAV, at `fps` (an int or a
    `fractions.Fraction` such as 30000/1001), or at variable frame rate with frame f shown from
    `seconds[f]` on (increasing, millisecond precision)."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17", "preset": "ultrafast"}
        stream.thread_count = 1
        if seconds is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if seconds is not None:
                picture.pts, picture.time_base = round(seconds[index] * 1000), fractions.Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def write_long_video(path: str, clips: list[str], fps: int = FPS) -> list[tuple[float, float]]:
    """Write the video files `clips` (one frame size) one after another as one H.264 mp4 at `fps`
    (`write_mp4`): a long video whose parts are known. Returns each clip's (start, end) seconds in it."""
    import av

    frames: list[np.ndarray] = []
    spans = []
    for clip in clips:
        with av.open(clip) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
        spans.append((len(frames) / fps, (len(frames) + len(decoded)) / fps))
        frames += decoded
    write_mp4(path, np.stack(frames), fps)
    return spans


def _generate(folder: str, params: dict) -> None:
    os.makedirs(os.path.join(folder, "videos"))
    sizes = {"train": params["num_videos"], "validate": params["num_test_videos"],
             "test": params["num_test_videos"]}
    videos, sentences, attributes_json, ids_of = [], [], {}, {}
    next_id = 0
    for split_number, (split, size) in enumerate(sizes.items()):
        rng = np.random.default_rng([params["seed"], split_number])
        # A stream of its own: with distractors the clips are the clean ones plus the outliers.
        distractor_rng = np.random.default_rng([params["seed"], split_number, 1])
        ids_of[split] = []
        for attributes in plan_split(size, params["event_fraction"], rng):
            video_id = f"video{next_id}"
            next_id += 1
            frames, event_frames = render(attributes, params["num_frames"], params["resolution"], rng)
            distractor_frames = add_distractors(frames, params["distractor_frames"], event_frames, distractor_rng)
            write_mp4(os.path.join(folder, "videos", f"{video_id}.mp4"), frames)
            ids_of[split].append((video_id, caption(attributes)))
            videos.append({"id": len(videos), "video_id": video_id, "split": split})
            sentences += [{"sen_id": len(sentences) + k, "video_id": video_id, "caption": caption(attributes, k)}
                          for k in range(len(TEMPLATES))]
            colour, shape, motion, background, event = attributes
            attributes_json[video_id] = {
                "split": split, "colour": list(COLOURS)[colour], "shape": SHAPES[shape],
                "motion": MOTIONS[motion], "background": BACKGROUNDS[background],
                "event": EVENTS[event] if event >= 0 else None, "event_frames": event_frames,
                "distractor_frames": distractor_frames}
    with open(os.path.join(folder, "MSRVTT_train.9k.csv"), "w") as f:
        f.write("video_id\n" + "".join(f"{v}\n" for v, _ in ids_of["train"]))
    for split, name in (("validate", "MSRVTT_JSFUSION_val.csv"), ("test", "MSRVTT_JSFUSION_test.csv")):
        with open(os.path.join(folder, name), "w") as f:
            f.write("key,vid_key,video_id,sentence\n")
            f.writelines(f"ret{i},msr{v[5:]},{v},{c}\n" for i, (v, c) in enumerate(ids_of[split]))
    with open(os.path.join(folder, "MSRVTT_data.json"), "w") as f:
        json.dump({"info": {"generator": "stop_tempme synthetic", **params}, "videos": videos,
                   "sentences": sentences}, f)
    with open(os.path.join(folder, "attributes.json"), "w") as f:
        json.dump(attributes_json, f, indent=1)
