"""scripts/video_search.py and modules/search: a trained tiny run indexes a folder of videos (the
synthetic test split, nested, with an unreadable file) and answers every test caption where the
engine's evaluation ranks it; incremental re-indexing; the results page; exact vs faiss search."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
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
from dataloaders.synthetic import write_mp4
from dataloaders.video_reader import VideoReader
from engine.checkpoint import load_clip_weights
from engine.factory import build_trained_model, model_from_checkpoint
from modules.clip import normalize_video
from modules.tokenization import tokenize
from scripts import video_search
from search import index as search_index
from search import query as search_query
from search.index import build_index, load_index
from search.page import write_page
from search.query import Hit

NUM_TEST_VIDEOS = 12
DATA = ("--synthetic_num_test_videos", str(NUM_TEST_VIDEOS), "--synthetic_num_frames", "8")
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


@pytest.mark.slow
def test_search_ranks_every_test_caption_where_evaluation_does(run, indexed, capsys):
    run_dir, args, dataset, videos = run
    index, summary = indexed
    assert (summary["videos"], summary["ok"], summary["failed"]) == (NUM_TEST_VIDEOS + 1, NUM_TEST_VIDEOS, 1)
    manifest, embeddings = load_index(str(index))
    failed = [e for e in manifest["videos"] if e["status"] == "failed"]
    assert [e["path"] for e in failed] == ["a/broken.mp4"] and "cannot decode" in failed[0]["reason"]
    assert embeddings.shape == (NUM_TEST_VIDEOS, 128) and np.allclose(np.linalg.norm(embeddings, axis=1), 1)

    answers = _query_json(capsys, index, dataset.captions, "--top_k", "100")
    assert [a["query"] for a in answers] == dataset.captions
    ranks = []
    for answer, video_index in zip(answers, dataset.text_to_video):
        paths = [os.path.basename(r["path"]) for r in answer["results"]]
        assert len(paths) == NUM_TEST_VIDEOS and "broken.mp4" not in paths
        assert all(set(r) == {"path", "score", "frames"} for r in answer["results"])
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
    manifest, _ = load_index(str(index))
    model = build_trained_model(args, str(run_dir / "best.pt")).eval()
    reader = make_reader(args)
    by_name = {os.path.basename(e["path"]): e for e in manifest["videos"]}
    for path in dataset.video_paths[:4]:
        entry = by_name[os.path.basename(path)]
        video, mask, read = reader.read_with_indices(path, train=False)
        assert entry["frames_read"] == read
        if model.tempme_compressor is None:
            assert entry["frames_kept"] == read and read == [0, 2, 4, 6]
            continue
        with torch.no_grad():
            _, _, info = model.tempme_compressor(normalize_video(video[None]), mask[None])
        positions = info["indices"][0]
        assert entry["frames_kept"] == sorted(read[p] for p in positions[positions >= 0].tolist())
        assert len(read) == 8 and len(entry["frames_kept"]) == 4
    caption = dataset.captions[0]
    (answer,) = _query_json(capsys, index, [caption], "--top_k", "3")
    for result in answer["results"]:
        assert result["frames"] == by_name[os.path.basename(result["path"])]["frames_kept"]


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


def _rows(index: Path) -> dict[str, np.ndarray]:
    manifest, embeddings = load_index(str(index))
    return {e["path"]: np.array(embeddings[e["row"]]) for e in manifest["videos"] if e["status"] == "ok"}


@pytest.mark.slow
def test_reindexing_encodes_only_new_or_changed_files(stop_run, tmp_path, monkeypatch):
    run_dir, _, _, source = stop_run
    videos, index, checkpoint = tmp_path / "videos", tmp_path / "index", str(run_dir / "best.pt")
    shutil.copytree(source, videos)
    first = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    before = _rows(index)
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
    after = _rows(index)
    assert set(after) == set(before) - {deleted} | {"a/new.mp4"}
    for path in set(before) - {deleted, modified, touched}:
        assert np.array_equal(after[path], before[path])
    np.testing.assert_allclose(after[touched], before[touched], atol=1e-6)
    np.testing.assert_allclose(after[modified], before[other], atol=1e-6)
    np.testing.assert_allclose(after["a/new.mp4"], before[other], atol=1e-6)
    manifest, _ = load_index(str(index))
    assert [e["path"] for e in manifest["videos"] if e["status"] == "failed"] == ["a/broken.mp4"]
    assert len(list(index.glob("embeddings-*.npy"))) == 1

    # Nothing changed: nothing encoded, and the model is not even built.
    monkeypatch.setattr(search_index, "model_from_checkpoint", lambda *a: pytest.fail("model built"))
    third = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert third["encoded"] == [] and third["dropped"] == [] and _rows(index).keys() == after.keys()


@pytest.mark.slow
def test_a_killed_indexing_run_keeps_what_it_committed(stop_run, tmp_path, monkeypatch):
    run_dir, _, _, videos = stop_run
    index, checkpoint = tmp_path / "index", str(run_dir / "best.pt")
    real = search_index.encode_files

    def dies_after_three(*args, **kwargs):
        for count, item in enumerate(real(*args, **kwargs)):
            if count == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(search_index, "COMMIT_SECONDS", -1.0)   # commit after every video
    monkeypatch.setattr(search_index, "encode_files", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert len(load_index(str(index))[0]["videos"]) == 3
    monkeypatch.setattr(search_index, "encode_files", real)
    resumed = build_index(checkpoint, str(videos), str(index), device="cpu", num_workers=0, progress=False)
    assert resumed["reused"] == 3 and len(resumed["encoded"]) == NUM_TEST_VIDEOS + 1 - 3


@pytest.mark.slow
def test_index_and_query_refuse_another_model(run, indexed, tmp_path):
    run_dir, _, _, videos = run
    index, _ = indexed
    with pytest.raises(ValueError, match="was built with checkpoint .* pass a new --index folder"):
        build_index(str(run_dir / "latest.pt"), str(videos), str(index), device="cpu", progress=False)
    with pytest.raises(ValueError, match="indexes .* not"):
        build_index(str(run_dir / "best.pt"), str(tmp_path), str(index), device="cpu", progress=False)
    changed = tmp_path / "changed"
    shutil.copytree(index, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["model"]["sha256"] = "0" * 64   # as if best.pt had been overwritten since
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="changed since --index .* was built"):
        video_search.main(["query", "--index", str(changed), "--text", "a red circle"])
    with pytest.raises(SystemExit, match="holds no manifest.json: build it with"):
        video_search.main(["query", "--index", str(tmp_path / "nothing"), "--text", "a red circle"])


class _Page(HTMLParser):
    """Headings, images (src, class of the enclosing figure) of a results page."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.figure, self.in_h2 = [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.in_h2 = tag == "h2"
        if tag == "figure":
            self.figure = attrs["class"]
        if tag == "img":
            self.images.append((attrs["src"], self.figure))

    def handle_data(self, data):
        if self.in_h2:
            self.headings.append(data)
            self.in_h2 = False


@pytest.fixture(scope="module")
def page(run, indexed, tmp_path_factory):
    """(page path, queries, hits) of a query over the run's test videos."""
    _, _, dataset, _ = run
    index, _ = indexed
    queries = dataset.captions[:3] + ['a <b>"quoted"</b> & odd query']
    page = tmp_path_factory.mktemp("page") / "site" / "results.html"
    page.parent.mkdir()
    hits = video_search.main(["query", "--index", str(index), "--device", "cpu", "--top_k", "3",
                              "--html", str(page), *[a for q in queries for a in ("--text", q)]])
    return page, queries, hits


@pytest.mark.slow
def test_page_holds_every_query_and_its_frames(run, page):
    _, args, _, _ = run
    path, queries, hits = page
    parsed = _Page()
    parsed.feed(path.read_text())
    assert parsed.headings == queries   # escaping round-trips, the odd query included
    read, kept = (8, 4) if args.use_tempme else (4, 4)
    classes = [c for _, c in parsed.images]
    assert len(classes) == len(queries) * 3 * read and classes.count("kept") == len(queries) * 3 * kept
    assert classes.count("dropped") == len(classes) - classes.count("kept")
    for src, _ in parsed.images:
        assert not os.path.isabs(src) and (path.parent / unquote(src)).is_file()
    # The first hit's strip holds the frames the reader gives the model, in order.
    video, _, indices = make_reader(args).read_with_indices(hits[0][0].path, train=False)
    for position, (src, figure) in enumerate(parsed.images[:read]):
        image = np.asarray(Image.open(path.parent / unquote(src))).astype(float)
        assert image.shape == (64, 64, 3)   # the model's 64 px crop
        distances = [np.abs(image - frame.permute(1, 2, 0).numpy()).mean() for frame in video[:read]]
        assert int(np.argmin(distances)) == position and distances[position] < 3   # JPEG rounding only
        assert (figure == "kept") == (indices[position] in hits[0][0].frames_kept)


@pytest.mark.slow
def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    path, _, _ = page
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,900", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    green = (abs(pixels - np.array([40, 200, 60])).sum(-1) < 30).sum()   # the kept frames' outline
    assert green > 1000 and pixels.std() > 20


def test_page_flags_hits_whose_file_changed_or_vanished(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    write_mp4(str(tmp_path / "v.mp4"), frames)
    reader = VideoReader(num_frames=4, image_size=32)
    same = Hit(str(tmp_path / "v.mp4"), "v.mp4", 0.5, frames_read=[0, 1, 3, 4], frames_kept=[1, 4])  # centres
    changed = Hit(same.path, same.relpath, 0.4, frames_read=[0, 1, 2, 3], frames_kept=[1])
    gone = Hit(str(tmp_path / "gone.mp4"), "gone.mp4", 0.3, frames_read=[0], frames_kept=[0])
    page = tmp_path / "p.html"
    written = write_page(str(page), ["q1", "q2"], [[same, gone], [changed]], reader, "subtitle", compressed=True)
    assert [os.path.basename(w).split("-")[1] for w in written] == ["0.jpg", "1.jpg", "3.jpg", "4.jpg"]
    text = page.read_text()
    assert text.count('class="kept"') == 2 + 1 and text.count('class="dropped"') == 2 + 3
    assert text.count("cannot read the file now") == 1 and "gone.mp4" in text
    assert text.count("changed since it was indexed") == 1   # `changed`, not `same`, whose frames match


def test_exact_search_against_a_full_sort_and_faiss(monkeypatch):
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((1000, 32)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings[500] = embeddings[7]                       # a tie: the lower row comes first
    queries = np.concatenate([embeddings[[7]], rng.standard_normal((9, 32)).astype(np.float32)])
    monkeypatch.setattr(search_query, "SEARCH_CHUNK", 64)   # many chunks to merge
    scores, rows = search_query.exact_top_k(embeddings, queries, 15)
    full = queries @ embeddings.T
    for q in range(len(queries)):
        expected = sorted(range(len(embeddings)), key=lambda i: (-full[q, i], i))[:15]
        assert rows[q].tolist() == expected
        np.testing.assert_allclose(scores[q], full[q, expected], rtol=1e-5, atol=1e-6)
    assert rows[0][:2].tolist() == [7, 500]
    assert search_query.exact_top_k(embeddings[:5], queries, 10)[1].shape == (10, 5)
    pytest.importorskip("faiss")
    f_scores, f_rows = search_query.top_k(embeddings, queries, 15, backend="faiss")
    assert np.array_equal(f_rows, rows)
    np.testing.assert_allclose(f_scores, scores, atol=1e-5)


def test_auto_search_uses_faiss_only_for_large_indexes(monkeypatch):
    calls = []
    monkeypatch.setattr(search_query, "faiss_top_k", lambda *a: calls.append("faiss"))
    monkeypatch.setattr(search_query, "exact_top_k", lambda *a: calls.append("exact"))
    monkeypatch.setattr(search_query.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(search_query, "FAISS_MIN_VIDEOS", 100)
    search_query.top_k(np.zeros((99, 4)), np.zeros((1, 4)), 5)
    search_query.top_k(np.zeros((100, 4)), np.zeros((1, 4)), 5)
    monkeypatch.setattr(search_query.importlib.util, "find_spec", lambda name: None)
    search_query.top_k(np.zeros((100, 4)), np.zeros((1, 4)), 5)
    assert calls == ["exact", "faiss", "exact"]


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
