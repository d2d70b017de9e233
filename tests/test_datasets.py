"""Every dataset parser on tiny annotation files in the real layouts, video lookup, failures, loaders."""
import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch

import params
from dataloaders import EpochSampler, build_dataloader, build_dataset, make_loader
from dataloaders.synthetic import write_mp4

try:
    from modules.tokenization import tokenize
except ImportError:  # the tokenizer is written concurrently; same signature
    def tokenize(texts, max_words=32):
        out = torch.zeros(len(texts), max_words, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [49406] + [1 + sum(map(ord, w)) % 40000 for w in text.split()][: max_words - 2] + [49407]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_mp4(str(path), np.full((10, 32, 32, 3), 120, dtype=np.uint8))
    return path


def put_videos(folder, names, clip_file):
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip_file, target)


def get_args(dataset, data, videos, *extra):
    return params.get_args(["--dataset", dataset, "--data_path", str(data), "--features_path", str(videos),
                            "--max_frames", "4", "--image_size", "16", "--max_words", "12",
                            "--num_workers", "0", *extra])


def check_item(item, num_frames=4, size=16, words=12):
    assert item["input_ids"].shape == (words,) and item["input_ids"].dtype == torch.long
    assert torch.equal(item["attention_mask"], (item["input_ids"] != 0).long())
    assert item["video"].shape == (num_frames, 3, size, size) and item["video"].dtype == torch.uint8
    assert item["video_mask"].shape == (num_frames,) and item["video_mask"].dtype == torch.long
    real = item["video_mask"] > 0
    assert item["frame_indices"].shape == (num_frames,) and (item["frame_indices"][~real] == -1).all()
    assert (item["frame_indices"][real].diff() > 0).all()        # real frames, in the file's order


@pytest.fixture
def msrvtt(tmp_path, clip_file):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    (data / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    sentences = [{"sen_id": i, "video_id": f"video{i % 3}", "caption": f"caption {i} of video{i % 3}"}
                 for i in range(9)]
    (data / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": sentences}))
    # A copy with an extra unnamed index column: must be read by column name.
    (data / "MSRVTT_JSFUSION_test.csv").write_text(
        ",key,vid_key,video_id,sentence\n0,ret0,msr2,video2,a man sings\n1,ret1,msr1,video1,a dog runs\n")
    put_videos(videos, ["video0.mp4", "video1.webm", "video2.webm", "video2.mp4"], clip_file)
    return data, videos


def test_msrvtt_parser_and_items(msrvtt):
    data, videos = msrvtt
    train = build_dataset(get_args("msrvtt", data, videos), "train", tokenize)
    assert train.video_ids == ["video0", "video1"] and len(train) == 2  # one item per video
    assert train.captions[:3] == ["caption 0 of video0", "caption 3 of video0", "caption 6 of video0"]
    assert train.text_to_video == [0, 0, 0, 1, 1, 1]  # grouped by video, video2 is not in the train csv
    assert train.video_paths[1].endswith("video1.webm")  # .webm fallback
    item = train[0]
    check_item(item)
    assert item["video_id"] == "video0" and train.text_to_video[item["caption_index"]] == 0
    assert {train[0]["caption_index"] for _ in range(30)} == {0, 1, 2}  # random caption of the video
    expanded = build_dataset(get_args("msrvtt", data, videos, "--expand_msrvtt_sentences"), "train", tokenize)
    assert len(expanded) == 6 and expanded[3]["caption_index"] == 3 and expanded[3]["video_id"] == "video1"
    test = build_dataset(get_args("msrvtt", data, videos), "test", tokenize)
    assert test.video_ids == ["video2", "video1"] and test.captions == ["a man sings", "a dog runs"]
    assert test.text_to_video == [0, 1] and test.video_paths[0].endswith("video2.mp4")  # .mp4 preferred
    assert build_dataset(get_args("msrvtt", data, videos), "val", tokenize).video_ids == test.video_ids


def test_msvd_parser(tmp_path, clip_file):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    captions = {"-4wsuPCjDBc_5_15": [["a", "cat", "plays"], ["cat", "playing"]], "abc_1_2": [["a", "dog"]]}
    (data / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (data / "train_list.txt").write_text("-4wsuPCjDBc_5_15\nabc_1_2\n")
    (data / "test_list.txt").write_text("abc_1_2\n")
    put_videos(videos, ["sub/-4wsuPCjDBc_5_15.avi", "abc_1_2.avi"], clip_file)
    train = build_dataset(get_args("msvd", data, videos), "train", tokenize)
    assert train.captions == ["a cat plays", "cat playing", "a dog"] and train.text_to_video == [0, 0, 1]
    assert len(train) == 3 and all(p is not None for p in train.video_paths)  # recursive lookup
    check_item(train[1])
    test = build_dataset(get_args("msvd", data, videos), "test", tokenize)
    assert test.video_ids == ["abc_1_2"] and test[0]["video_id"] == "abc_1_2"


def test_lsmdc_parser_dotted_ids(tmp_path, clip_file):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    ids = ["3086_UGLY_TRUTH_00.23.23.000-00.23.28.886", "3086_UGLY_TRUTH_00.23.30.000-00.23.31.500"]
    rows = [[ids[0], "0", "1", "0", "1", 'SOMEONE says "hi".'], [ids[1], "0", "1", "0", "1", "He leaves."]]
    (data / "LSMDC16_challenge_1000_publictect.csv").write_text("".join("\t".join(r) + "\n" for r in rows))
    put_videos(videos, [f"3086_UGLY_TRUTH/{ids[0]}.avi", f"3086_UGLY_TRUTH/{ids[1]}.avi"], clip_file)
    test = build_dataset(get_args("lsmdc", data, videos), "test", tokenize)
    assert test.video_ids == ids and test.captions == ['SOMEONE says "hi".', "He leaves."]
    assert all(p is not None and p.endswith(".avi") for p in test.video_paths)
    check_item(test[0])


def test_activitynet_paragraphs_and_prefix(tmp_path, clip_file, caplog):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    (data / "val_ids.json").write_text(json.dumps(["v_aaa", "v_bbb", "v_nocap", "v_nofile"]))
    (data / "val_1.json").write_text(json.dumps({
        "v_aaa": {"duration": 9, "timestamps": [[5, 9], [0, 4]], "sentences": [" Later he jumps.", " A man runs."]},
        "v_bbb": {"duration": 9, "timestamps": [[0, 9]], "sentences": ["A woman cooks."]},
        "v_nofile": {"duration": 9, "timestamps": [[0, 9]], "sentences": ["Lost."]}}))
    put_videos(videos, ["aaa.mp4", "v_bbb.mkv"], clip_file)  # with and without the v_ prefix
    with caplog.at_level(logging.INFO, logger="dataloaders"):
        test = build_dataset(get_args("activitynet", data, videos), "test", tokenize)
    assert test.video_ids == ["v_aaa", "v_bbb"] and test.skipped_video_ids == ["v_nofile"]
    assert test.captions == ["A man runs. Later he jumps.", "A woman cooks."]  # time order
    assert "1 of 3 videos have no file" in caplog.text and "have no captions" in caplog.text
    check_item(test[1])


def test_didemo_paragraphs_and_extensions(tmp_path, clip_file):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    (data / "train_list.txt").write_text("111@N00_2.3gp\n222@N00_3.mov\n333@N00_4.mp4\n")
    entries = [{"annotation_id": 1, "description": "a dog appears", "times": [[0, 1]], "video": "111@N00_2.3gp"},
               {"annotation_id": 2, "description": "red car", "times": [[1, 2]], "video": "222@N00_3.mov"},
               {"annotation_id": 3, "description": "the dog sits", "times": [[2, 3]], "video": "111@N00_2.3gp"},
               {"annotation_id": 4, "description": "a bird", "times": [[0, 1]], "video": "333@N00_4.mp4"}]
    (data / "train_data.json").write_text(json.dumps(entries))
    put_videos(videos, ["111@N00_2.3gp.mp4", "222@N00_3.mp4", "333@N00_4.mp4"], clip_file)
    train = build_dataset(get_args("didemo", data, videos, "--video_max_seconds", "30"), "train", tokenize)
    assert train.captions == ["a dog appears the dog sits", "red car", "a bird"]
    assert [p.rsplit("/", 1)[1] for p in train.video_paths] == ["111@N00_2.3gp.mp4", "222@N00_3.mp4",
                                                                "333@N00_4.mp4"]
    check_item(train[0])


@pytest.mark.parametrize("layout", ["stop", "official"])
def test_vatex_both_layouts(tmp_path, clip_file, layout):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    ids = ["abcdefghijk_000010_000020", "-bcdefghijk_000000_000010"]
    (data / "test_list.txt").write_text("\n".join(ids) + "\n")
    captions = {ids[0]: ["one a", "one b"], ids[1]: ["two a", "two b", "two c"]}
    if layout == "stop":
        (data / "ref_captions.json").write_text(json.dumps(captions))
    else:
        (data / "vatex_validation_v1.0.json").write_text(json.dumps(
            [{"videoID": k, "enCap": v, "chCap": ["中文"] * len(v)} for k, v in captions.items()]))
    put_videos(videos, [f"{i}.mp4" for i in ids], clip_file)
    test = build_dataset(get_args("vatex", data, videos), "test", tokenize)
    assert test.captions == ["one a", "one b", "two a", "two b", "two c"]
    assert test.text_to_video == [0, 0, 1, 1, 1] and len(test) == 5
    assert len(test.text_dataset()) == 5 and len(test.video_dataset()) == 2


@pytest.mark.parametrize("dataset, missing_name", [
    ("msrvtt", "MSRVTT_data.json"), ("msvd", "train_list.txt"), ("lsmdc", "LSMDC16_annos_training.csv"),
    ("activitynet", "train_ids.json"), ("didemo", "train_list.txt"), ("vatex", "train_list.txt")])
def test_missing_annotation_file_names_file_and_layout(tmp_path, dataset, missing_name):
    data, videos = tmp_path / "ann", tmp_path / "videos"
    data.mkdir()
    videos.mkdir()
    if dataset == "msrvtt":
        (data / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n")
    with pytest.raises(FileNotFoundError) as error:
        build_dataset(get_args(dataset, data, videos), "train", tokenize)
    message = str(error.value)
    assert str(data / missing_name) in message and "\n" not in message
    assert f"python -m dataloaders.check --dataset {dataset} --layout" in message


@pytest.fixture
def broken_msrvtt(msrvtt, tmp_path):
    """video1 corrupt (both files), video2 missing: only video0 readable."""
    data, videos = msrvtt
    (videos / "video1.webm").write_bytes(b"garbage" * 50)
    (videos / "video2.mp4").unlink()
    (videos / "video2.webm").unlink()
    return data, videos


def test_train_replaces_bad_videos(broken_msrvtt, caplog):
    data, videos = broken_msrvtt
    train = build_dataset(get_args("msrvtt", data, videos), "train", tokenize)
    with caplog.at_level(logging.WARNING, logger="dataloaders"):
        items = [train[1] for _ in range(5)]  # video1 is corrupt
    assert all(item["video_id"] == "video0" and item["video_ok"] == 1 for item in items)
    assert all(item["video_mask"].sum() == 4 for item in items)
    assert sum(item["num_bad_videos"] for item in items) >= 5
    assert caplog.text.count("bad video video1") == 1  # logged once
    assert "video1.webm" in caplog.text and "cannot decode" in caplog.text
    assert set(train.bad_videos) == {"video1"}


def test_eval_gives_zero_frames_for_bad_videos(broken_msrvtt, caplog):
    data, videos = broken_msrvtt
    test = build_dataset(get_args("msrvtt", data, videos), "test", tokenize)
    with caplog.at_level(logging.WARNING, logger="dataloaders"):
        items = [test.video_dataset()[i] for i in range(2)]
    for item in items:  # video2 missing, video1 corrupt
        assert item["video_ok"] == 0 and item["video_mask"].sum() == 0 and item["video"].eq(0).all()
    assert "missing" in test.bad_videos["video2"] and "video2" in caplog.text
    text = test.text_dataset()[1]
    assert set(text) == {"input_ids", "attention_mask", "caption_index", "video_index"}
    assert text["video_index"] == 1


def test_train_epoch_over_broken_folder_with_workers(broken_msrvtt):
    data, videos = broken_msrvtt
    args = get_args("msrvtt", data, videos, "--batch_size", "2", "--num_workers", "2",
                    "--expand_msrvtt_sentences")
    loader, sampler = build_dataloader(args, "train", tokenize)
    assert sampler is not None and loader.batch_size == 2
    batches = list(loader)
    assert len(batches) == 3  # 6 captions, every bad video replaced, no crash
    for batch in batches:
        assert batch["video"].shape == (2, 4, 3, 16, 16) and batch["video_ok"].eq(1).all()
        assert torch.isfinite(batch["video"].float()).all() and batch["video_mask"].sum() == 8
    assert sum(int(b["num_bad_videos"].sum()) for b in batches) >= 4  # counted on the main side
    eval_loader, eval_sampler = make_loader(build_dataset(args, "test", tokenize).video_dataset(), args, train=False)
    assert eval_sampler is None
    batch = next(iter(eval_loader))
    assert batch["video_ok"].tolist() == [0, 0] and batch["video_index"].tolist() == [0, 1]


def test_uniform_train_frame_sampling_uses_segment_centres(msrvtt):
    data, videos = msrvtt
    ramp = np.repeat(np.arange(0, 240, 8, dtype=np.uint8)[:, None, None, None], 32, axis=1)
    write_mp4(str(videos / "video0.mp4"), np.broadcast_to(ramp, (30, 32, 32, 3)).copy())  # frames differ
    uniform = build_dataset(get_args("msrvtt", data, videos, "--train_frame_sampling", "uniform"), "train", tokenize)
    centres, _, _, centre_indices = uniform.load_video(0, train=False)
    assert centre_indices.tolist() == [3, 10, 18, 25]             # 30 frames: centres of 4 segments
    for _ in range(3):
        frames, _, ok, _ = uniform.load_video(0, train=True)
        assert ok and torch.equal(frames, centres)
    random = build_dataset(get_args("msrvtt", data, videos), "train", tokenize)
    assert any(not torch.equal(random.load_video(0, train=True)[0], centres) for _ in range(8))


def test_train_items_are_a_function_of_seed_epoch_and_index(msrvtt):
    """(epoch, index) keys, as EpochSampler yields them: the caption drawn for a video and the TSN frame
    offsets repeat exactly for the same key (in any process or worker) and change with the epoch."""
    data, videos = msrvtt
    ramp = np.repeat(np.arange(0, 240, 8, dtype=np.uint8)[:, None, None, None], 32, axis=1)
    write_mp4(str(videos / "video0.mp4"), np.broadcast_to(ramp, (30, 32, 32, 3)).copy())  # frames differ
    train = build_dataset(get_args("msrvtt", data, videos), "train", tokenize)
    first = train[(0, 0)]
    again = build_dataset(get_args("msrvtt", data, videos), "train", tokenize)[(0, 0)]
    assert torch.equal(first["video"], again["video"]) and first["caption_index"] == again["caption_index"]
    epochs = [train[(epoch, 0)] for epoch in range(1, 20)]
    assert any(not torch.equal(item["video"], first["video"]) for item in epochs)
    assert {item["caption_index"] for item in epochs + [first]} == {0, 1, 2}
    other_seed = build_dataset(get_args("msrvtt", data, videos, "--seed", "3"), "train", tokenize)
    assert any(not torch.equal(other_seed[(e, 0)]["video"], train[(e, 0)]["video"]) for e in range(4))


def test_epoch_sampler_gives_one_and_two_processes_the_same_global_batches(msrvtt):
    data, videos = msrvtt
    train = build_dataset(get_args("msrvtt", data, videos, "--expand_msrvtt_sentences"), "train", tokenize)
    whole, halves = EpochSampler(train, 1, 0, seed=5), [EpochSampler(train, 2, rank, seed=5) for rank in (0, 1)]
    for sampler in (whole, *halves):
        sampler.set_epoch(3)
    order = list(whole)
    assert {epoch for epoch, _ in order} == {3} and sorted(i for _, i in order) == list(range(len(train)))
    shards = [list(sampler) for sampler in halves]
    for step in range(len(train) // 2):                         # global batch 2: one item per process
        assert {shards[0][step], shards[1][step]} == set(order[2 * step:2 * step + 2])
    whole.set_epoch(4)
    assert list(whole) != [(4, i) for _, i in order]             # another epoch, another order
