"""scripts/video_search.py and the search package with trained tiny runs: a folder of short videos
(the synthetic test split, nested, with an unreadable file) answers every test caption where the
engine's evaluation ranks it; a long video made of those clips one after another gives each
caption's moment; incremental updates, a run killed at any moment and resumed, the lock, another
checkpoint, the JSON migration; the results page (parsed, and rendered in headless Chromium)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import _records, _run_flags

import main
import params
from dataloaders import build_dataset, make_reader
from dataloaders.synthetic import write_long_video, write_mp4
from dataloaders.video_reader import VideoReader
from engine.checkpoint import load_clip_weights
from engine.factory import build_trained_model, model_from_checkpoint
from modules.clip import normalize_video
from modules.tokenization import tokenize
from scripts import video_search
from scripts.make_long_video import make_folder
from scripts.moment_accuracy import moment_accuracy
from search import index as search_index
from search.index import build_index
from search.lock import index_lock
from search.moments import Moment, clock
from search.page import write_page
from search.store import IndexStore, WindowRecord

NUM_TEST_VIDEOS = 12
DATA = ("--synthetic_num_test_videos", str(NUM_TEST_VIDEOS), "--synthetic_num_frames", "8")
REPO = Path(__file__).resolve().parents[1]
RUNS = {
    # STOP reads 4 segment centres of 8 frames; the checkpoint holds no CLIP (re-created from the seed).
    "stop": DATA,
    # TempMe keeps 4 of all 8 frames, and CLIP is trained, so the checkpoint holds CLIP's weights.
    "tempme": (*DATA, "--use_tempme", "True", "--tempme_type", "basic", "--tempme_input_frames", "8",
               "--tempme_output_frames", "4", "--tempme_hidden_dim", "16", "--train_clip", "True"),
}
NESTING = ("", "a/", "a/b c/")   # a space, so the page's relative links must be URL-quoted


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, synthetic_dir):
    """Per entry of RUNS: (run folder, its args, test dataset, folder of its test videos), the
    videos nested in sub-folders beside an unreadable file and a text file."""
    runs = {}
    for name, extra in RUNS.items():
        out = tmp_path_factory.mktemp(f"run_{name}")
        flags = _run_flags(out, synthetic_dir, name, *extra)
        main.main(flags)
        args = params.get_args(flags)
        dataset = build_dataset(args, "test", tokenize)
        videos = out / "my videos"
        for i, source in enumerate(dataset.video_paths):
            target = videos / NESTING[i % len(NESTING)] / os.path.basename(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
        (videos / "a" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
        (videos / "a" / "notes.txt").write_text("not a video")
        runs[name] = (out / name, args, dataset, videos)
    return runs


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, trained_runs):
    return trained_runs[request.param]


@pytest.fixture(scope="module")
def stop_run(trained_runs):
    """For bookkeeping tests, where one model is enough."""
    return trained_runs["stop"]


@pytest.fixture(scope="module")
def indexed(run, tmp_path_factory):
    """(index folder, summary) of the run's test videos, indexed with the script in batches of 5
    (evaluation used 4) by one decoding worker process."""
    index = tmp_path_factory.mktemp("index") / "index"
    run_dir, _, _, videos = run
    summary = video_search.main(["index", "--checkpoint", str(run_dir / "best.pt"), "--videos", str(videos),
                                 "--index", str(index), "--device", "cpu", "--batch_size", "5",
                                 "--num_workers", "1", "--no_progress"])
    return index, summary


def _query_json(capsys, index: Path, texts: list[str], *extra: str) -> list[dict]:
    capsys.readouterr()
    video_search.main(["query", "--index", str(index), "--device", "cpu",
                       *[a for t in texts for a in ("--text", t)], "--json", *extra])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _windows(index: Path) -> dict[str, list[tuple[WindowRecord, np.ndarray]]]:
    """Every searchable window of an index with its embedding (float32 of the stored float16), by
    file, in window order."""
    store = IndexStore.open(str(index))
    try:
        stored = {shard.first + row: embedding for shard in store.shards()
                  for row, embedding in enumerate(np.asarray(shard.embeddings, dtype=np.float32))}
        records = store.lookup(sorted(stored))
    finally:
        store.close()
    by_file: dict[str, list[tuple[WindowRecord, np.ndarray]]] = {}
    for window_id, record in sorted(records.items(), key=lambda item: (item[1].relpath, item[1].start_frame)):
        by_file.setdefault(record.relpath, []).append((record, stored[window_id]))
    return by_file


def _failed(index: Path) -> dict[str, str]:
    store = IndexStore.open(str(index))
    try:
        return {path: entry.reason for path, entry in store.files().items() if entry.status == "failed"}
    finally:
        store.close()


@pytest.mark.slow
def test_search_ranks_every_test_caption_where_evaluation_does(run, indexed, capsys):
    run_dir, args, dataset, videos = run
    index, summary = indexed
    assert (summary["files"], summary["ok"], summary["failed"]) == (NUM_TEST_VIDEOS + 1, NUM_TEST_VIDEOS, 1)
    # The default window is the training clips' length (8 frames at 8 fps), so a clip is one window.
    assert (summary["segment"], summary["stride"]) == (1.0, 0.5) and summary["windows"] == NUM_TEST_VIDEOS
    failed = _failed(index)
    assert list(failed) == ["a/broken.mp4"] and "cannot decode" in failed["a/broken.mp4"]
    windows = _windows(index)
    embeddings = np.stack([embedding for (_, embedding), in windows.values()])
    assert embeddings.shape == (NUM_TEST_VIDEOS, 128) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-3)

    answers = _query_json(capsys, index, dataset.captions, "--top_k", "100")
    assert [a["query"] for a in answers] == dataset.captions
    ranks = []
    for answer, video_index in zip(answers, dataset.text_to_video):
        paths = [os.path.basename(r["path"]) for r in answer["results"]]
        assert len(paths) == NUM_TEST_VIDEOS and "broken.mp4" not in paths
        assert all(set(r) == {"path", "start", "end", "score", "frames"} for r in answer["results"])
        assert all((r["start"], r["end"]) == (0, 1) for r in answer["results"])   # the whole 1 s clip
        ranks.append(paths.index(os.path.basename(dataset.video_paths[video_index])) + 1)
    ranks = np.array(ranks, dtype=float)
    engine = next(r for r in _records(run_dir) if r["split"] == "test")["metrics"]["t2v"]
    ours = {"R1": 100 * np.mean(ranks <= 1), "R5": 100 * np.mean(ranks <= 5), "R10": 100 * np.mean(ranks <= 10),
            "MdR": float(np.median(ranks)), "MnR": float(ranks.mean())}
    assert ours == pytest.approx(engine)


@pytest.mark.slow
def test_kept_frames_are_the_ones_the_model_chose(run, indexed, capsys):
    """Manifest and JSON frames against the compressor run by hand on the reader's frames."""
    run_dir, args, dataset, videos = run
    index, _ = indexed
    by_name = {os.path.basename(path): windows[0][0] for path, windows in _windows(index).items()}
    model = build_trained_model(args, str(run_dir / "best.pt")).eval()
    reader = make_reader(args)
    for path in dataset.video_paths[:4]:
        window = by_name[os.path.basename(path)]
        video, mask, read = reader.read_with_indices(path, train=False)
        assert window.frames_read == read
        if model.tempme_compressor is None:
            assert window.frames_kept == read and read == [0, 2, 4, 6]
            continue
        with torch.no_grad():
            _, _, info = model.tempme_compressor(normalize_video(video[None]), mask[None])
        positions = info["indices"][0]
        assert window.frames_kept == sorted(read[p] for p in positions[positions >= 0].tolist())
        assert len(read) == 8 and len(window.frames_kept) == 4
    (answer,) = _query_json(capsys, index, [dataset.captions[0]], "--top_k", "3")
    for result in answer["results"]:
        assert result["frames"] == by_name[os.path.basename(result["path"])].frames_kept


@pytest.mark.slow
def test_model_from_checkpoint_is_the_trained_model(run, tmp_path):
    run_dir, args, _, _ = run
    rebuilt, saved_args = model_from_checkpoint(str(run_dir / "best.pt"))
    reference = build_trained_model(args, str(run_dir / "best.pt"))
    a, b = rebuilt.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert vars(saved_args) == vars(args)

    # A run on a CLIP weights file: found at the saved path, replaced by --clip_weights, or a clear error.
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    if saved_args.train_clip:
        return  # the checkpoint holds CLIP itself
    clip_file = tmp_path / "clip.pt"
    torch.save(load_clip_weights(args), clip_file)
    del checkpoint["args"]["video_output"]   # a flag added after the run: its default is used
    checkpoint["args"].update(clip_init="pretrained", clip_weights=str(clip_file))
    torch.save(checkpoint, tmp_path / "on_file.pt")
    from_file, file_args = model_from_checkpoint(str(tmp_path / "on_file.pt"))
    assert file_args.video_output == "global_prompt0"
    assert all(torch.equal(from_file.state_dict()[k], b[k]) for k in b)
    moved = tmp_path / "moved.pt"
    clip_file.rename(moved)
    with pytest.raises(FileNotFoundError, match="holds not all of CLIP.s weights .* pass --clip_weights PATH"):
        model_from_checkpoint(str(tmp_path / "on_file.pt"))
    model_from_checkpoint(str(tmp_path / "on_file.pt"), clip_weights=str(moved))
    torch.save(checkpoint["model"], tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="holds no saved arguments"):
        model_from_checkpoint(str(tmp_path / "bare.pt"))


def _long_video(dataset, folder: Path, repeats: int = 1) -> None:
    """`folder/long.mp4`: the test clips one after another, `repeats` times."""
    folder.mkdir(parents=True, exist_ok=True)
    write_long_video(str(folder / "long.mp4"), list(dataset.video_paths) * repeats)


@pytest.fixture(scope="module")
def long_indexed(run, tmp_path_factory):
    """(index, folder) of a folder holding a long video of 9 of the run's test clips one after
    another and the 3 others as short files beside it (`scripts/make_long_video.py`)."""
    _, _, dataset, _ = run
    folder = tmp_path_factory.mktemp("long") / "my videos"
    make_folder(dataset, str(folder), NUM_TEST_VIDEOS - 3, 3)
    index = folder.parent / "index"
    video_search.main(["index", "--checkpoint", str(run[0] / "best.pt"), "--videos", str(folder), "--index",
                       str(index), "--device", "cpu", "--num_workers", "1", "--no_progress"])
    return index, folder


@pytest.mark.slow
def test_each_captions_moment_in_a_long_video(run, tmp_path):
    """A long video holds the test clips one after another: each caption's best moment there should
    overlap its clip (temporal IoU >= 0.5) about as often as evaluation ranks the clip first among
    the same clips, at least the engine's t2v R@1 minus 10 points."""
    run_dir, _, dataset, _ = run
    make_folder(dataset, str(tmp_path / "videos"), NUM_TEST_VIDEOS, 0)
    result = moment_accuracy(str(run_dir / "best.pt"), str(tmp_path / "videos"),
                             os.path.dirname(dataset.video_paths[0]), str(tmp_path / "work"))
    engine_r1 = next(r for r in _records(run_dir) if r["split"] == "test")["metrics"]["t2v"]["R1"]
    assert result["captions"] == NUM_TEST_VIDEOS
    assert result["clip_r1"] == pytest.approx(engine_r1)   # the same clips, ranked as evaluation ranks them
    assert result["moment_hit_rate"] >= engine_r1 - 10


@pytest.mark.slow
def test_reindexing_encodes_only_new_or_changed_files(stop_run, tmp_path, monkeypatch):
    run_dir, _, _, source = stop_run
    videos, index, checkpoint = tmp_path / "videos", tmp_path / "index", str(run_dir / "best.pt")
    shutil.copytree(source, videos)
    first = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    before = {path: windows[0][1] for path, windows in _windows(index).items()}
    shards = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (index / "shards").iterdir()}
    assert len(first["encoded"]) == NUM_TEST_VIDEOS + 1 and first["reused"] == 0
    names = sorted(before)
    touched, modified, deleted, other = names[0], names[1], names[2], names[3]
    os.utime(videos / touched, ns=(1, 1))
    shutil.copy(videos / other, videos / modified)
    os.remove(videos / deleted)
    shutil.copy(videos / other, videos / "a" / "new.mp4")

    second = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert sorted(second["encoded"]) == sorted([touched, modified, "a/new.mp4"])
    assert second["dropped"] == [deleted] and second["reused"] == NUM_TEST_VIDEOS + 1 - 3
    # A commit writes only what is new: the first run's shards are untouched, one more holds 3 rows;
    # the old windows of the changed and deleted files stay behind, unreferenced.
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (index / "shards").iterdir()
            if p.name in shards} == shards
    new_shards = [np.load(p) for p in (index / "shards").iterdir() if p.name not in shards]
    assert [len(rows) for rows in new_shards] == [3] and second["dead_rows"] == 3
    after = {path: windows[0][1] for path, windows in _windows(index).items()}
    assert set(after) == set(before) - {deleted} | {"a/new.mp4"}
    for path in set(before) - {deleted, modified, touched}:
        assert np.array_equal(after[path], before[path])
    np.testing.assert_allclose(after[touched], before[touched], atol=1e-3)
    np.testing.assert_allclose(after[modified], before[other], atol=1e-3)
    np.testing.assert_allclose(after["a/new.mp4"], before[other], atol=1e-3)
    assert list(_failed(index)) == ["a/broken.mp4"]

    # Nothing changed: nothing encoded, and the model is not even built.
    monkeypatch.setattr(search_index, "model_from_checkpoint", lambda *a: pytest.fail("model built"))
    third = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert third["encoded"] == [] and third["dropped"] == [] and _windows(index).keys() == after.keys()


def _committed(database: Path) -> int:
    """Windows committed to an index another process is writing (0 before it exists)."""
    if not database.exists():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        except sqlite3.OperationalError:   # the tables are not created yet
            return 0


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_from_its_last_commit(stop_run, tmp_path):
    """A real `index` process killed with SIGKILL mid-way through a long video, then run again: it
    encodes only the windows after its last commit, and the index equals one built in one go."""
    run_dir, _, dataset, _ = stop_run
    videos, checkpoint = tmp_path / "videos", str(run_dir / "best.pt")
    _long_video(dataset, videos, repeats=4)              # 48 s: 95 windows
    shutil.copy(dataset.video_paths[0], videos / "short.mp4")
    flags = ["--checkpoint", checkpoint, "--videos", str(videos), "--device", "cpu", "--batch_size", "1",
             "--num_workers", "0", "--no_progress"]
    reference = video_search.main(["index", *flags, "--index", str(tmp_path / "reference")])
    index = tmp_path / "index"
    child = subprocess.Popen([sys.executable, str(REPO / "scripts" / "video_search.py"), "index", *flags,
                              "--index", str(index), "--commit_seconds", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _committed(index / "index.sqlite") < 10 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    committed = _committed(index / "index.sqlite")
    assert 10 <= committed < reference["windows"], "the run was not killed half-way"
    resumed = video_search.main(["index", *flags, "--index", str(index)])
    assert resumed["windows_encoded"] == reference["windows"] - committed   # nothing lost, nothing twice
    assert (resumed["windows"], resumed["dead_rows"]) == (reference["windows"], 0)
    ours, theirs = _windows(index), _windows(tmp_path / "reference")
    assert ours.keys() == theirs.keys() == {"long.mp4", "short.mp4"}
    for path in ours:
        assert [(w.start_frame, w.end_frame, w.frames_read, w.frames_kept) for w, _ in ours[path]] == \
               [(w.start_frame, w.end_frame, w.frames_read, w.frames_kept) for w, _ in theirs[path]]
        np.testing.assert_allclose(np.stack([e for _, e in ours[path]]), np.stack([e for _, e in theirs[path]]),
                                   atol=1e-3)


@pytest.mark.slow
def test_a_file_that_changes_while_it_is_encoded_is_encoded_again(stop_run, tmp_path, monkeypatch):
    run_dir, _, dataset, _ = stop_run
    videos, index, checkpoint = tmp_path / "videos", tmp_path / "index", str(run_dir / "best.pt")
    _long_video(dataset, videos)
    shutil.copy(dataset.video_paths[0], videos / "short.mp4")
    real = search_index.encode_windows

    def edited_during_the_run(*args, **kwargs):
        for item in real(*args, **kwargs):
            if item.number == 0 and args[3][item.job].path == "long.mp4":
                os.utime(videos / "long.mp4", ns=(1, 1))   # the file changes under the run
            yield item

    monkeypatch.setattr(search_index, "encode_windows", edited_during_the_run)
    first = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert sorted(first["encoded"]) == ["long.mp4", "short.mp4"]
    monkeypatch.setattr(search_index, "encode_windows", real)
    second = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert second["encoded"] == ["long.mp4"] and second["reused"] == 1


@pytest.mark.slow
def test_a_second_index_run_stops_with_one_line_naming_the_lock(stop_run, tmp_path):
    run_dir, _, _, videos = stop_run
    index = tmp_path / "index"
    with index_lock(str(index)):
        with pytest.raises(SystemExit, match=r"^error: --index .* is being written by another index run "
                                             rf"\(pid {os.getpid()} .* holds {index}/index\.lock\): wait") as stop:
            video_search.main(["index", "--checkpoint", str(run_dir / "best.pt"), "--videos", str(videos),
                               "--index", str(index), "--no_progress"])
    assert "\n" not in str(stop.value)


@pytest.mark.slow
def test_index_and_query_refuse_another_model(run, indexed, tmp_path):
    run_dir, _, _, videos = run
    index, _ = indexed
    with pytest.raises(SystemExit, match=r"^error: --index .* was built with checkpoint .*best\.pt .* not "
                                         r".*latest\.pt .* do not mix; start a new index with another --index folder"):
        video_search.main(["index", "--checkpoint", str(run_dir / "latest.pt"), "--videos", str(videos),
                           "--index", str(index), "--no_progress"])
    with pytest.raises(ValueError, match="indexes .* not"):
        build_index(str(run_dir / "best.pt"), str(tmp_path), str(index), device="cpu", progress=False)
    with pytest.raises(ValueError, match="holds windows of --segment 1 --stride 0.5, not --segment 3 --stride 1.5"):
        build_index(str(run_dir / "best.pt"), str(videos), str(index), segment=3, device="cpu", progress=False)
    with pytest.raises(ValueError, match="--stride must be in \\(0, --segment 2\\]"):
        build_index(str(run_dir / "best.pt"), str(videos), str(tmp_path / "new"), segment=2, stride=3,
                    device="cpu", progress=False)
    changed = tmp_path / "changed"
    shutil.copytree(index, changed)
    store = IndexStore.open(str(changed))
    store.set_meta(model={**store.meta["model"], "sha256": "0" * 64})   # as if best.pt had been overwritten since
    store.close()
    with pytest.raises(SystemExit, match="changed since --index .* was built"):
        video_search.main(["query", "--index", str(changed), "--text", "a red circle"])
    with pytest.raises(SystemExit, match="holds no index.sqlite: build it with"):
        video_search.main(["query", "--index", str(tmp_path / "nothing"), "--text", "a red circle"])


@pytest.mark.slow
def test_a_json_index_of_the_earlier_format_is_migrated_and_answers_as_before(run, indexed, tmp_path, capsys,
                                                                             caplog):
    """The earlier format (manifest.json + float32 embeddings, one per file), written from an index
    of one window per file, is migrated by the first query, which answers as the index did."""
    _, _, dataset, _ = run
    index, _ = indexed
    store = IndexStore.open(str(index))
    files, meta = store.files(), dict(store.meta)
    store.close()
    windows = _windows(index)
    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    entries, rows = [], []
    for path, entry in files.items():
        fields = {"path": path, "size": entry.size, "mtime_ns": entry.mtime_ns, "status": entry.status}
        if entry.status == "ok":
            (window, embedding), = windows[path]
            fields.update(row=len(rows), frames_read=window.frames_read, frames_kept=window.frames_kept)
            rows.append(embedding)
        else:
            fields["reason"] = entry.reason
        entries.append(fields)
    np.save(legacy_dir / "embeddings-0123.npy", np.stack(rows))
    (legacy_dir / "manifest.json").write_text(json.dumps({
        "version": 1, "videos_dir": meta["videos_dir"], "embeddings": "embeddings-0123.npy", "dim": meta["dim"],
        "frames_per_video": meta["frames_per_window"], "model": meta["model"], "videos": entries}))
    expected = _query_json(capsys, index, dataset.captions[:3], "--top_k", "5")
    answers = _query_json(capsys, legacy_dir, dataset.captions[:3], "--top_k", "5")
    assert "migrated the JSON index" in caplog.text and (legacy_dir / "index.sqlite").exists()
    for ours, theirs in zip(answers, expected):
        assert [r["path"] for r in ours["results"]] == [r["path"] for r in theirs["results"]]
        assert [r["score"] for r in ours["results"]] == pytest.approx([r["score"] for r in theirs["results"]])


class _Page(HTMLParser):
    """Headings, moment links, images (src, class of the enclosing figure) and frame captions of a
    results page."""

    def __init__(self):
        super().__init__()
        self.headings, self.links, self.images, self.captions = [], [], [], []
        self.figure, self.text_of = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.text_of = {"h2": self.headings, "figcaption": self.captions}.get(tag)
        if tag == "figure":
            self.figure = attrs["class"]
        if tag == "img":
            self.images.append((attrs["src"], self.figure))
        if tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        if self.text_of is not None:
            self.text_of.append(data)
            self.text_of = None


@pytest.fixture(scope="module")
def page(run, long_indexed, tmp_path_factory):
    """(page path, queries, moments) of a query over the long video and short clips."""
    _, _, dataset, _ = run
    index, _ = long_indexed
    queries = dataset.captions[:3] + ['a <b>"quoted"</b> & odd query']
    page = tmp_path_factory.mktemp("page") / "site" / "results.html"
    page.parent.mkdir()
    moments = video_search.main(["query", "--index", str(index), "--device", "cpu", "--top_k", "3",
                                 "--html", str(page), *[a for q in queries for a in ("--text", q)]])
    return page, queries, moments


@pytest.mark.slow
def test_page_holds_every_query_and_its_moments(run, long_indexed, page):
    _, args, _, _ = run
    _, folder = long_indexed
    path, queries, moments = page
    parsed = _Page()
    parsed.feed(path.read_text())
    assert parsed.headings == queries   # escaping round-trips, the odd query included
    # Each moment links to its file, played from its start to its end.
    expected = [f"{os.path.relpath(folder / m.relpath, path.parent)}#t={m.start:g},{m.end:g}"
                for query_moments in moments for m in query_moments]
    assert [unquote(link) for link in parsed.links] == expected and len(expected) == len(queries) * 3
    read, kept = (8, 4) if args.use_tempme else (4, 4)
    classes = [c for _, c in parsed.images]
    assert len(classes) == len(queries) * 3 * read and classes.count("kept") == len(queries) * 3 * kept
    assert classes.count("dropped") == len(classes) - classes.count("kept")
    for src, _ in parsed.images:
        assert not os.path.isabs(src) and (path.parent / unquote(src)).is_file()
    # The first moment's strip: its best window's frames as the reader gives them to the model, in
    # order, each with its time in the file.
    best = moments[0][0].best
    video, _ = make_reader(args).read_frames(str(folder / best.relpath), best.frames_read)
    assert parsed.captions[:read] == [clock(i / best.fps) for i in best.frames_read]
    for position, (src, figure) in enumerate(parsed.images[:read]):
        image = np.asarray(Image.open(path.parent / unquote(src))).astype(float)
        assert image.shape == (64, 64, 3)   # the model's 64 px crop
        distances = [np.abs(image - frame.permute(1, 2, 0).numpy()).mean() for frame in video]
        assert int(np.argmin(distances)) == position and distances[position] < 3   # JPEG rounding only
        assert (figure == "kept") == (best.frames_read[position] in best.frames_kept)


@pytest.mark.slow
def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    path, _, _ = page
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1100,900", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    green = (abs(pixels - np.array([40, 200, 60])).sum(-1) < 30).sum()   # the kept frames' outline
    assert green > 1000 and pixels.std() > 20


def test_page_flags_moments_whose_file_changed_or_vanished(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    write_mp4(str(tmp_path / "v.mp4"), frames)
    reader = VideoReader(num_frames=4, image_size=32)

    def moment(window_id: int, relpath: str, read: list[int], kept: list[int]) -> Moment:
        window = WindowRecord(window_id, relpath, 8.0, 0, 6, read, kept)
        return Moment(relpath, window.start, window.end, 0.5, window)

    same = moment(1, "v.mp4", [0, 1, 3, 4], [1, 4])
    changed = moment(2, "v.mp4", [0, 1, 2, 9], [1])   # frame 9 is past the end now
    gone = moment(3, "gone.mp4", [0], [0])
    page = tmp_path / "p.html"
    written = write_page(str(page), str(tmp_path), ["q1", "q2"], [[same, gone], [changed]], reader, "subtitle",
                         compressed=True)
    assert [os.path.basename(w) for w in written] == ["w1-0.jpg", "w1-1.jpg", "w1-3.jpg", "w1-4.jpg",
                                                      "w2-0.jpg", "w2-1.jpg", "w2-2.jpg", "w2-5.jpg"]
    text = page.read_text()
    assert text.count('class="kept"') == 2 + 1 and text.count('class="dropped"') == 2 + 3
    assert text.count("cannot read the file now") == 1 and "gone.mp4" in text
    assert text.count("changed since it was indexed") == 1   # `changed`, not `same`, whose frames match
    assert text.count('href="v.mp4#t=0,0.75"') == 2 and "0:00.5" in text   # frame 4 at 8 fps


def test_find_videos_recurses_and_knows_the_loaders_extensions(tmp_path):
    for name in ("a.mp4", "sub/b.WEBM", "sub/deeper/c.mkv", "sub/notes.txt", "d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * len(name))
    found = search_index.find_videos(str(tmp_path))
    assert list(found) == ["a.mp4", "sub/b.WEBM", "sub/deeper/c.mkv"]
    assert found["a.mp4"] == (5, os.stat(tmp_path / "a.mp4").st_mtime_ns)
    with pytest.raises(FileNotFoundError, match="--videos .* is not a folder"):
        search_index.find_videos(str(tmp_path / "missing"))


def test_query_flags_need_one_text_source(tmp_path):
    with pytest.raises(SystemExit):
        video_search.build_parser().parse_args(["query", "--index", "x"])
    with pytest.raises(SystemExit):
        video_search.build_parser().parse_args(["query", "--index", "x", "--text", "a", "--queries", "f"])
    with pytest.raises(SystemExit, match="--queries .*: no such file"):
        video_search.read_queries(str(tmp_path / "missing.txt"))
    (tmp_path / "q.txt").write_text("a red circle\n\n  a blue square  \n")
    assert video_search.read_queries(str(tmp_path / "q.txt")) == ["a red circle", "a blue square"]


def test_bad_numbers_and_a_corrupt_index_end_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="^error: --top_k must be >= 1, got 0$"):
        video_search.main(["query", "--index", str(tmp_path), "--text", "a red circle", "--top_k", "0"])
    with pytest.raises(SystemExit, match="^error: --batch_size must be >= 1, got 0$"):
        video_search.main(["index", "--checkpoint", "c.pt", "--videos", "v", "--index", "i", "--batch_size", "0"])
    (tmp_path / "index.sqlite").write_bytes(b"not a database " * 100)
    with pytest.raises(SystemExit, match=r"^error: --index .* is not a readable index \(.*\): index into a new "
                                         r"folder$"):
        video_search.main(["query", "--index", str(tmp_path), "--text", "a red circle"])
