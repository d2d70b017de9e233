"""Synthetic dataset: deterministic, unique captions, events that need the right frames, safe concurrency."""
import hashlib
import json
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch

import params
from dataloaders import build_dataset, dataset_folders
from dataloaders.synthetic import EVENTS, add_distractors, ensure_dataset, plan_split, render
from dataloaders.video_reader import VideoReader

SMALL = dict(num_videos=24, num_test_videos=8, num_frames=8, resolution=32, event_fraction=0.5, seed=3)


def tree_digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return ensure_dataset(root=str(tmp_path_factory.mktemp("synth")), **SMALL)


def test_deterministic_from_seed(small, tmp_path):
    again = ensure_dataset(root=str(tmp_path), **SMALL)
    assert os.path.basename(again) == os.path.basename(small)  # same parameters, same cache key
    assert tree_digest(again) == tree_digest(small)  # byte-identical annotations and videos
    other = ensure_dataset(root=str(tmp_path), **{**SMALL, "seed": 4})
    assert other != again
    with open(os.path.join(other, "MSRVTT_JSFUSION_test.csv")) as f, \
            open(os.path.join(small, "MSRVTT_JSFUSION_test.csv")) as g:
        assert f.read() != g.read()


def test_captions_unique_per_split_and_events_needed(small):
    with open(os.path.join(small, "attributes.json")) as f:
        attributes = json.load(f)
    with open(os.path.join(small, "MSRVTT_data.json")) as f:
        sentences = json.load(f)["sentences"]
    first_caption = {}
    for sentence in sentences:
        first_caption.setdefault(sentence["video_id"], sentence["caption"])
    for split in ("train", "validate", "test"):
        ids = [v for v, a in attributes.items() if a["split"] == split]
        captions = [first_caption[v] for v in ids]
        assert len(set(captions)) == len(captions)  # one right answer per query
        events = [attributes[v]["event"] for v in ids]
        assert sum(e is not None for e in events) == round(len(ids) * SMALL["event_fraction"])
        bases = [tuple(attributes[v][k] for k in ("colour", "shape", "motion", "background")) for v in ids]
        assert len(set(bases)) < len(bases)  # some videos differ only by their event
        for v in ids:
            assert (attributes[v]["event"] or "") in first_caption[v]
            assert len(attributes[v]["event_frames"]) == (2 if attributes[v]["event"] else 0)


def test_event_frames_stand_out(small):
    with open(os.path.join(small, "attributes.json")) as f:
        attributes = json.load(f)
    reader = VideoReader(num_frames=SMALL["num_frames"], image_size=SMALL["resolution"])
    video_id = next(v for v, a in attributes.items() if a["event"])
    video, mask = reader.read(os.path.join(small, "videos", f"{video_id}.mp4"), train=False)
    assert mask.sum() == SMALL["num_frames"]  # decord reads the generated mp4 completely
    frames = video.float()
    events = attributes[video_id]["event_frames"]
    normal = [t for t in range(SMALL["num_frames"]) if t not in events]
    event_change = (frames[events[0]] - frames[normal[0]]).abs().mean()
    normal_change = (frames[normal[1]] - frames[normal[0]]).abs().mean()
    assert event_change > 3 * normal_change


def test_long_clips_and_capacity():
    rng = np.random.default_rng(0)
    frames, event_frames = render((0, 1, 2, 3, 0), num_frames=48, res=32, rng=rng)
    assert frames.shape == (48, 32, 32, 3) and 2 <= len(event_frames) <= 3
    plan = plan_split(600, 0.5, np.random.default_rng(1))  # the demo's train split
    assert len(set(plan)) == 600 and sum(p[-1] >= 0 for p in plan) == 300
    assert {p[-1] for p in plan} == {-1, *range(len(EVENTS))}
    with pytest.raises(ValueError, match="synthetic_event_fraction"):
        plan_split(600, 0.0, rng)


def ones_tokenizer(texts, max_words):
    return torch.ones(len(texts), max_words, dtype=torch.long)


def test_build_dataset_through_msrvtt_layout(small, tmp_path):
    root = os.path.dirname(small)
    args = params.get_args(["--dataset", "synthetic", "--synthetic_dir", root, "--synthetic_num_videos", "24",
                            "--synthetic_num_test_videos", "8", "--synthetic_num_frames", "8",
                            "--synthetic_resolution", "32", "--synthetic_seed", "3", "--max_frames", "4",
                            "--image_size", "32"])
    train, val, test = (build_dataset(args, split, ones_tokenizer) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (24, 8, 8)
    assert not set(val.video_ids) & set(test.video_ids) and not set(train.video_ids) & set(test.video_ids)
    item = train[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["video_mask"].sum() == 4


def _generate_in(root, queue):
    queue.put(ensure_dataset(root=root, **{**SMALL, "seed": 11}))


def test_concurrent_generation_is_safe(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_generate_in, args=(str(tmp_path), queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    paths = {queue.get(timeout=5) for _ in workers}
    assert len(paths) == 1 and os.listdir(tmp_path) == [os.path.basename(paths.pop())]  # no temp leftovers


def test_distractors_are_uncaptioned_outliers_away_from_the_event(small, tmp_path):
    rng = np.random.default_rng(0)
    frames, events = render((0, 1, 2, 1, 0), 48, 32, rng)
    clean = frames.copy()
    written = add_distractors(frames, 12, events, rng)
    assert len(written) == 12 == len(set(written)) and not set(written) & set(events)
    changed = [t for t in range(48) if not np.array_equal(frames[t], clean[t])]
    assert changed == written                                             # exactly those frames, nothing else
    # Outliers: each is farther from its clip's median frame than any untouched frame is.
    median = np.median(clean.astype(float), axis=0)
    distance = [np.abs(frames[t].astype(float) - median).mean() for t in range(48)]
    untouched = [distance[t] for t in range(48) if t not in written and t not in events]
    assert min(distance[t] for t in written) > max(untouched)
    folder = ensure_dataset(root=str(tmp_path), **{**SMALL, "distractor_frames": 3})
    with open(os.path.join(folder, "attributes.json")) as f, open(os.path.join(small, "attributes.json")) as g:
        noisy, plain = json.load(f), json.load(g)
    assert all(len(a["distractor_frames"]) == 3 for a in noisy.values())
    assert all(a["distractor_frames"] == [] for a in plain.values())
    assert {v: a["event_frames"] for v, a in noisy.items()} == {v: a["event_frames"] for v, a in plain.items()}
    with open(os.path.join(folder, "MSRVTT_data.json")) as f, open(os.path.join(small, "MSRVTT_data.json")) as g:
        assert json.load(f)["sentences"] == json.load(g)["sentences"]      # same clips, same captions
    with pytest.raises(ValueError, match="--synthetic_distractor_frames"):
        ensure_dataset(root=str(tmp_path), **{**SMALL, "distractor_frames": 5})


def test_event_frames_always_and_never(tmp_path):
    """The study's reference rows read the clips through the generator's record of the events: `always`
    puts an event frame among the sampled ones (moving the nearest sampled frame only), `never` takes
    every event frame out; `sampled` is the loader's own choice."""
    flags = ["--dataset", "synthetic", "--synthetic_dir", str(tmp_path), "--synthetic_num_videos", "12",
             "--synthetic_num_test_videos", "12", "--synthetic_num_frames", "24", "--synthetic_event_fraction", "1.0",
             "--synthetic_resolution", "32", "--image_size", "32", "--max_frames", "4", "--num_workers", "0"]
    seen = {}
    for mode in ("sampled", "always", "never"):
        data = build_dataset(params.get_args(flags + ["--synthetic_event_frames", mode]), "test", ones_tokenizer)
        seen[mode] = [data.load_video(i, train=False)[3].tolist() for i in range(len(data.video_ids))]
        pickle.loads(pickle.dumps(data))            # loader workers may be spawned with the dataset
    with open(os.path.join(dataset_folders(params.get_args(flags))[0], "attributes.json")) as f:
        attributes = json.load(f)
    events = [set(attributes[v]["event_frames"]) for v in data.video_ids]
    assert seen["sampled"][0] == [2, 8, 14, 20]                          # centres of 4 segments of 6
    for sampled, always, never, event in zip(seen["sampled"], seen["always"], seen["never"], events):
        assert event & set(always) and not event & set(never)
        assert always == sorted(always) and never == sorted(never) and len(set(never)) == 4
        if event & set(sampled):
            assert always == sampled
        else:                                                        # one frame moved, onto the event
            assert sum(a != s for a, s in zip(always, sampled)) == 1
    assert any(s != n for s, n in zip(seen["sampled"], seen["never"]))   # some sampled frames were events
