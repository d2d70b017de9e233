"""Frame sampling, decoding with both backends, resize/crop, masks, failures, normalisation."""
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from dataloaders.synthetic import write_mp4
from dataloaders.video_reader import (VideoReader, VideoReadError, framerate_frame_indices, plan_windows,
                                     sample_frame_indices)
from modules.clip import CLIP_MEAN, CLIP_STD, normalize_video

BACKENDS = ("decord", "pyav")


def frame_level(k: int) -> int:
    return 10 + 5 * k


def make_indexed_video(path, num_frames: int, height: int = 48, width: int = 64) -> str:
    """Frame k: left half a flat grey of level 10 + 5k (identifies k after decoding), right half texture."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(height, width // 2, 3), dtype=np.uint8)
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for k in range(num_frames):
        frames[k, :, : width // 2] = frame_level(k)
        frames[k, :, width // 2:] = texture
    write_mp4(str(path), frames)
    return str(path)


def decoded_indices(video: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Frame numbers of read frames: from the flat left region (32 px crop of a 48x64 video)."""
    levels = video[mask.bool(), :, 8:24, 1:10].float().mean(dim=(1, 2, 3))
    return [int(round((v - 10) / 5)) for v in levels.tolist()]


@pytest.fixture(scope="module")
def video40(tmp_path_factory):
    return make_indexed_video(tmp_path_factory.mktemp("v") / "v40.mp4", 40)


def test_eval_sampling_is_segment_centres():
    assert sample_frame_indices(10, 3, random_offsets=False) == [1, 4, 7]
    assert sample_frame_indices(16, 8, random_offsets=False) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_frame_indices(5, 8, random_offsets=False) == [0, 1, 2, 3, 4]


def test_train_sampling_random_within_segments():
    rng = random.Random(0)
    draws = [sample_frame_indices(100, 8, random_offsets=True, rng=rng) for _ in range(200)]
    for draw in draws:
        for i, index in enumerate(draw):
            assert i * 100 // 8 <= index < (i + 1) * 100 // 8
    assert len({tuple(d) for d in draws}) > 150  # actually random
    assert {d[0] for d in draws} == set(range(0, 12))  # covers the whole first segment


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_shapes_and_frames(video40, backend):
    reader = VideoReader(backend=backend, num_frames=8, image_size=32)
    video, mask = reader.read(video40, train=False)
    assert video.shape == (8, 3, 32, 32) and video.dtype == torch.uint8
    assert mask.dtype == torch.long and mask.tolist() == [1] * 8
    assert decoded_indices(video, mask) == sample_frame_indices(40, 8, random_offsets=False)
    again, _ = reader.read(video40, train=False)
    assert torch.equal(video, again)  # deterministic evaluation


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_read_within_segments(video40, backend):
    reader = VideoReader(backend=backend, num_frames=4, image_size=32)
    seen = set()
    for seed in range(6):
        video, mask = reader.read(video40, train=True, rng=random.Random(seed))
        indices = decoded_indices(video, mask)
        for i, index in enumerate(indices):
            assert i * 10 <= index < (i + 1) * 10
        seen.add(tuple(indices))
    assert len(seen) > 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_read_with_indices_reports_the_decoded_frames(video40, tmp_path, backend, train):
    """The indices returned are the source frames actually decoded (read from the pixels)."""
    reader = VideoReader(backend=backend, num_frames=8, image_size=32)
    video, mask, indices = reader.read_with_indices(video40, train=train, rng=random.Random(3))
    assert indices == decoded_indices(video, mask) and len(indices) == 8
    short = make_indexed_video(tmp_path / "short.mp4", 5)
    video, mask, indices = reader.read_with_indices(short, train=train)
    assert indices == decoded_indices(video, mask) == [0, 1, 2, 3, 4] and mask.tolist() == [1] * 5 + [0] * 3


def test_backends_give_same_frames(video40):
    a, _ = VideoReader(backend="decord", num_frames=12, image_size=32).read(video40, train=False)
    b, _ = VideoReader(backend="pyav", num_frames=12, image_size=32).read(video40, train=False)
    diff = (a.float() - b.float()).abs()
    assert diff.mean() < 2.0 and diff.max() <= 40  # colour-conversion rounding only


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_video_is_padded_and_masked(tmp_path, backend):
    path = make_indexed_video(tmp_path / "short.mp4", 5)
    video, mask = VideoReader(backend=backend, num_frames=8, image_size=32).read(path, train=True)
    assert mask.tolist() == [1] * 5 + [0] * 3
    assert decoded_indices(video, mask) == [0, 1, 2, 3, 4]
    assert video[5:].eq(0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_seconds_limits_to_the_start(video40, backend):
    reader = VideoReader(backend=backend, num_frames=4, image_size=32, max_seconds=2.0)  # 8 fps -> 16 frames
    video, mask = reader.read(video40, train=False)
    assert decoded_indices(video, mask) == sample_frame_indices(16, 4, random_offsets=False)


def test_resize_keeps_aspect_and_centre_crops(tmp_path):
    frames = np.zeros((4, 32, 64, 3), dtype=np.uint8)
    frames[:, :, 16:48] = 200  # a centred bright square, dark sides
    write_mp4(str(tmp_path / "wide.mp4"), frames)
    video, _ = VideoReader(num_frames=4, image_size=16).read(str(tmp_path / "wide.mp4"), train=False)
    assert video.shape == (4, 3, 16, 16)
    assert video[:, :, :, 2:14].float().mean() > 180  # the crop is the centre, not a squashed frame


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_and_empty_files_raise(tmp_path, backend, video40):
    reader = VideoReader(backend=backend, num_frames=4, image_size=32)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        reader.read(str(empty), train=False)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoReadError, match="cannot decode"):
        reader.read(str(corrupt), train=False)


def test_normalize_video_matches_clip_formula():
    video = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    out = normalize_video(video)
    expected = (video.float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == video.shape
    torch.testing.assert_close(out, expected)
    as_double = normalize_video(video.double())
    assert as_double.dtype == torch.float64  # a floating input keeps its dtype
    torch.testing.assert_close(as_double, expected.double(), rtol=1e-6, atol=1e-6)


def test_plan_windows_covers_a_video_with_full_segments():
    assert plan_windows(40, 8, 2, 1) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert plan_windows(44, 8, 2, 1)[-2:] == [(24, 40), (28, 44)]   # the tail: a full window ending at the end
    assert plan_windows(16, 8, 2, 1) == plan_windows(16, 8, 0, 0) == [(0, 16)]   # no longer than a segment
    assert plan_windows(10, 8, 2, 1) == [(0, 10)]
    assert plan_windows(400, 8, 0, 0) == [(0, 400)]


class _CountingContainer:
    """A PyAV container that records the frames its decoder yields and any seek."""

    def __init__(self, container, log: dict):
        self.container, self.log = container, log
        log["opened"] += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.container.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.container, name)

    def seek(self, *args, **kwargs):
        self.log["seeks"] += 1
        return self.container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.log["decoded"] += 1
            yield frame


def test_read_windows_samples_each_window_as_a_clip_in_one_decode(video40, monkeypatch):
    import av

    log = {"opened": 0, "seeks": 0, "decoded": 0}
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), log))
    reader = VideoReader(num_frames=4, image_size=32)
    windows = list(reader.read_windows(video40, 2.0, 1.0))
    assert log == {"opened": 1, "seeks": 0, "decoded": 38}   # one pass, in order, up to the last frame sampled (37)
    assert [(w.number, w.start, w.end, w.fps) for w in windows] == [
        (n, start, end, 8.0) for n, (start, end) in enumerate(plan_windows(40, 8, 2, 1))]
    for w in windows:   # each window read as `read` reads a clip of its frames: segment centres
        expected = [w.start + i for i in sample_frame_indices(16, 4, random_offsets=False)]
        assert w.indices == decoded_indices(w.video, w.mask) == expected and w.mask.tolist() == [1] * 4
    later = list(reader.read_windows(video40, 2.0, 1.0, first=2))
    assert [w.number for w in later] == [2, 3] and all(torch.equal(a.video, b.video) for a, b in zip(windows[2:], later))
    (whole,) = reader.read_windows(video40, 0, 0)
    video, mask, indices = reader.read_with_indices(video40, train=False)
    assert whole.indices == indices and torch.equal(whole.video, video) and torch.equal(whole.mask, mask)


def test_read_windows_of_bad_files_raise(tmp_path):
    reader = VideoReader(num_frames=4, image_size=32)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    for name, reason in (("empty.mp4", "empty file"), ("noise.mp4", "cannot decode")):
        with pytest.raises(VideoReadError, match=reason):
            list(reader.read_windows(str(tmp_path / name), 2.0, 1.0))


# ---------------------------------------------------------------- frames at a frame rate (CLIP4Clip's extractor)

def reference_framerate_indices(frame_count: int, fps: int, framerate: int, max_frames: int, slice_framepos: int
                                ) -> list[int]:
    """What CLIP4Clip's extractor and loader keep, computed as they do: read second by second, at
    each the frames `sec * fps + ind` for the first `framerate` multiples `ind` of `fps // framerate`
    (every frame for 0), stop at the first frame past the end; then cut to `max_frames`."""
    interval = max(1, fps // framerate) if framerate else 1
    inds = list(np.arange(0, fps, interval))[:framerate or fps]
    read = []
    for sec in range((frame_count + fps - 1) // fps + 1):
        stop = False
        for ind in inds:
            if sec * fps + ind >= frame_count:
                stop = True
                break
            read.append(sec * fps + ind)
        if stop:
            break
    if len(read) <= max_frames:
        return read
    if slice_framepos == 0:
        return read[:max_frames]
    if slice_framepos == 1:
        return read[-max_frames:]
    return [read[i] for i in np.linspace(0, len(read) - 1, num=max_frames, dtype=int)]


def write_numbered(path, count: int, fps=10, seconds=None) -> str:
    """A 32x32 video whose frame k is flat: red 8 + 16 (k % 16), green 8 + 16 (k // 16)."""
    frames = np.full((count, 32, 32, 3), 128, dtype=np.uint8)
    for k in range(count):
        frames[k, ..., 0], frames[k, ..., 1] = 8 + 16 * (k % 16), 8 + 16 * (k // 16)
    write_mp4(str(path), frames, fps=fps, seconds=seconds)
    return str(path)


def numbers_of(video: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Frame numbers of the real frames of `video [T, 3, 32, 32]` read back from their colour."""
    red, green = video[mask.bool()].float().mean(dim=(2, 3))[:, :2].T
    return [round((r - 8) / 16) + 16 * round((g - 8) / 16) for r, g in zip(red.tolist(), green.tolist())]


# (name, frames, rate written, the integer rate the extractor reads, variable-rate presentation times)
FRAMERATE_VIDEOS = [
    ("30fps", 100, 30, 30, None),
    ("29.97fps", 100, Fraction(30000, 1001), 29, None),           # the reference truncates the rate
    ("under_a_second", 5, 10, 10, None),
    ("variable_rate", 50, 30, 12, [i / 10 for i in range(20)] + [2 + i / 15 for i in range(30)]),  # 12.6 on average
    ("slower_than_sampled", 7, 2, 2, None),                       # fewer frames per second than asked for
]


@pytest.fixture(scope="module")
def framerate_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("framerate")
    return {name: (write_numbered(folder / f"{name}.mp4", count, rate, seconds), count, fps)
            for name, count, rate, fps, seconds in FRAMERATE_VIDEOS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [v[0] for v in FRAMERATE_VIDEOS])
@pytest.mark.parametrize("framerate, max_frames, slice_framepos", [
    (3, 4, 0), (3, 4, 1), (3, 4, 2), (2, 6, 2), (1, 12, 2), (0, 8, 2), (3, 64, 2)])
def test_framerate_sampling_decodes_the_reference_frames(framerate_videos, backend, name, framerate, max_frames,
                                                         slice_framepos):
    path, count, fps = framerate_videos[name]
    expected = reference_framerate_indices(count, fps, framerate, max_frames, slice_framepos)
    reader = VideoReader(backend=backend, num_frames=max_frames, image_size=32, framerate=framerate,
                         slice_framepos=slice_framepos)
    video, mask, indices = reader.read_with_indices(path, train=False)
    assert indices == expected
    assert numbers_of(video, mask) == expected, "the decoded frames are the ones named"
    assert mask.tolist() == [1] * len(expected) + [0] * (max_frames - len(expected))


def test_framerate_sampling_follows_the_duration():
    """At 3 frames per second of 30 fps video: 1 s gives 3 frames, 4 s 12, 10 s 30; cut to 48."""
    counts = [len(framerate_frame_indices(30 * s, 30.0, 3, 48, 2, False)) for s in (1, 4, 10, 16, 17, 60)]
    assert counts == [3, 12, 30, 48, 48, 48]


@pytest.mark.parametrize("backend", BACKENDS)
def test_framerate_training_offsets_stay_within_each_frames_share(framerate_videos, backend):
    """Training moves each kept frame to a random one of the fps // R frames it stands for."""
    path, count, fps = framerate_videos["30fps"]
    evaluation = reference_framerate_indices(count, fps, 3, 4, 2)              # [0, 30, 60, 90]
    reader = VideoReader(backend=backend, num_frames=4, image_size=32, framerate=3, slice_framepos=2)
    seen = set()
    for seed in range(8):
        video, mask, indices = reader.read_with_indices(path, train=True, rng=random.Random(seed))
        assert numbers_of(video, mask) == indices
        assert all(start <= index < min(start + 10, count) for start, index in zip(evaluation, indices))
        seen.add(tuple(indices))
    assert len(seen) > 4
    draws = {framerate_frame_indices(100, 30.0, 3, 64, 2, True, random.Random(seed))[-1] for seed in range(50)}
    assert draws == set(range(90, 100)), "the last frame's share ends with the video"
