"""Search inside your own videos with a trained model: index a folder, query it in words, get moments.

    python scripts/video_search.py index --checkpoint outputs/demo/best.pt --videos DIR --index OUT
    python scripts/video_search.py query --index OUT --text "a red circle moving vertically" --html OUT/page.html

`index` rebuilds the model from the checkpoint alone and encodes every video under DIR
(recursively) as overlapping windows, each exactly as evaluation encodes a clip; run it again and
it encodes only what is new, changed, or left by a killed run. `query` answers with the same model:
the best moments (file, start and end seconds, score) as a table, `--json` lines, or an HTML page of
the frames with links that play each moment. Guide and index layout: docs/search.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders import make_reader  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from search.index import COMMIT_SECONDS, build_index, open_index  # noqa: E402
from search.lock import IndexLockedError  # noqa: E402
from search.moments import Moment, clock  # noqa: E402
from search.page import write_page  # noqa: E402
from search.query import SEARCH_BACKENDS, encode_texts, model_for_index, search, searcher  # noqa: E402

log = logging.getLogger("video_search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="create or update the index of a folder of videos")
    index.add_argument("--checkpoint", required=True, help="a run's best.pt / latest.pt (main.py)")
    index.add_argument("--videos", required=True, help="folder searched recursively for video files")
    index.add_argument("--index", required=True, help="index folder (created; updated when it exists)")
    index.add_argument("--segment", type=float, default=None, metavar="SECONDS",
                       help="window length (default: the length of the clips the checkpoint was trained on; an "
                            "existing index keeps its own); 0: one window per file")
    index.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                       help="seconds from one window's start to the next (default: half the segment)")
    index.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    index.add_argument("--batch_size", type=int, default=None, help="windows per batch (default: the run's "
                                                                    "--batch_size_val)")
    index.add_argument("--num_workers", type=int, default=None, help="decoding worker processes (default: the "
                                                                     "run's --num_workers)")
    index.add_argument("--clip_weights", default=None,
                       help="CLIP weights file, when the checkpoint holds none and the run's file moved")
    index.add_argument("--commit_seconds", type=float, default=COMMIT_SECONDS,
                       help="commit the windows encoded at least this often: what a killed run can lose")
    index.add_argument("--no_progress", action="store_true", help="no progress bar")

    query = commands.add_parser("query", help="search an index with text")
    query.add_argument("--index", required=True, help="index folder written by the index command")
    texts = query.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a query (repeat for several)")
    texts.add_argument("--queries", help="text file with one query per line")
    query.add_argument("--top_k", type=int, default=10, help="moments per query")
    query.add_argument("--per_file", type=int, default=None, metavar="N", help="at most N moments of one file")
    query.add_argument("--json", action="store_true", help="print one JSON object per query per line")
    query.add_argument("--html", default=None, metavar="PAGE", help="also write a results page with the frames")
    query.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    query.add_argument("--clip_weights", default=None,
                       help="CLIP weights file, when the checkpoint holds none and the file indexing used moved")
    query.add_argument("--search", choices=SEARCH_BACKENDS, default="auto",
                       help="exact: every window scored; faiss: the index's faiss graph (approximate, built by "
                            "index for large indexes when faiss-cpu is installed); auto: the graph when there is one")
    return parser


def read_queries(path: str) -> list[str]:
    """Non-empty lines of a query file."""
    try:
        with open(path, encoding="utf-8") as f:
            queries = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise SystemExit(f"--queries {path}: no such file") from None
    if not queries:
        raise SystemExit(f"--queries {path} holds no query (one per line)")
    return queries


def format_table(query: str, moments: list[Moment]) -> str:
    """The ranked table of one query: rank, score, start, end, path."""
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  {'start':>9}  {'end':>9}  path"]
    lines += [f"{rank:>4}  {m.score:>7.4f}  {clock(m.start):>9}  {clock(m.end):>9}  {m.relpath}"
              for rank, m in enumerate(moments, 1)]
    return "\n".join(lines if moments else lines[:1] + ["  (the index holds no searchable video)"])


def as_json(query: str, moments: list[Moment]) -> dict:
    """{"query", "results": [{"path", "start", "end" (seconds), "score", "frames" (source indices of the
    frames of the moment's best window that reached the model)}]}."""
    return {"query": query, "results": [{"path": m.relpath, "start": round(m.start, 3), "end": round(m.end, 3),
                                         "score": m.score, "frames": m.best.frames_kept} for m in moments]}


def _at_least(minimum: float, **flags: float | None) -> None:
    """One line for a numeric flag below its minimum."""
    for name, value in flags.items():
        if value is not None and value < minimum:
            raise SystemExit(f"error: --{name} must be >= {minimum:g}, got {value:g}")


def run_index(opts: argparse.Namespace) -> dict:
    _at_least(1, batch_size=opts.batch_size)
    _at_least(0, num_workers=opts.num_workers, commit_seconds=opts.commit_seconds)
    summary = build_index(opts.checkpoint, opts.videos, opts.index, segment=opts.segment, stride=opts.stride,
                          device=opts.device, batch_size=opts.batch_size, num_workers=opts.num_workers,
                          clip_weights=opts.clip_weights, commit_seconds=opts.commit_seconds,
                          progress=not opts.no_progress)
    windows = (f"{summary['segment']:g} s every {summary['stride']:g} s" if summary["segment"]
               else "one per file")
    print(f"{opts.index}: {summary['files']} files ({summary['ok']} searchable, {summary['failed']} failed), "
          f"{summary['windows']} windows ({windows}); this run encoded {len(summary['encoded'])} files "
          f"({summary['windows_encoded']} windows), reused {summary['reused']}, dropped {len(summary['dropped'])}")
    if summary["windows_encoded"]:
        print(f"throughput: {summary['video_seconds'] / summary['seconds']:.1f} video seconds per second "
              f"({summary['video_seconds']:.1f} s of video in {summary['seconds']:.1f} s, decoding included)")
    if summary["ann"]:
        ann = summary["ann"]
        print(f"faiss graph: {ann['rows']} windows, recall@10 {ann['recall_at_10']:.3f} against exact search "
              f"(efSearch {ann['ef_search']}, {ann['queries']} windows of the index as queries)")
    return summary


def run_query(opts: argparse.Namespace) -> list[list[Moment]]:
    _at_least(1, top_k=opts.top_k, per_file=opts.per_file)
    queries = opts.text or read_queries(opts.queries)
    store = open_index(opts.index)
    try:
        model, args = model_for_index(store.meta, opts.index, opts.clip_weights)
        device = resolve_device(opts.device)
        moments = search(store, encode_texts(model.to(device), args, queries, device), opts.top_k, opts.per_file,
                         searcher(store, opts.search))
        for query, query_moments in zip(queries, moments):
            print(json.dumps(as_json(query, query_moments)) if opts.json else format_table(query, query_moments)
                  + "\n")
        if opts.html:
            counts = store.counts()
            write_page(opts.html, store.meta["videos_dir"], queries, moments, make_reader(args),
                       f"{counts['windows']} windows of {counts['ok'] + counts['partial']} videos under "
                       f"{store.meta['videos_dir']} | model {store.meta['model']['checkpoint']}",
                       compressed=args.use_tempme)
            log.info("wrote %s", opts.html)
    finally:
        store.close()
    return moments


def main(argv: list[str] | None = None) -> dict | list[list[Moment]]:
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_index(opts) if opts.command == "index" else run_query(opts)
    except (FileNotFoundError, ValueError, ImportError, IndexLockedError) as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
