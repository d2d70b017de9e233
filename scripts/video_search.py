"""Search your own videos with a trained model: index a folder, query it in words, see the frames.

    python scripts/video_search.py index --checkpoint outputs/demo/best.pt --videos DIR --index OUT
    python scripts/video_search.py query --index OUT --text "a red circle moving vertically" --html OUT/page.html

`index` rebuilds the model from the checkpoint alone and encodes every video under DIR
(recursively) exactly as evaluation does; run it again and it encodes only new or changed
files. `query` answers with the same model: a ranked table per query, `--json` lines, or an
HTML page of the hits' frames. Guide and index layout: docs/search.md.
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
from search.index import build_index, load_index  # noqa: E402
from search.page import write_page  # noqa: E402
from search.query import SEARCH_BACKENDS, Hit, encode_texts, model_for_index, search  # noqa: E402

log = logging.getLogger("video_search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="create or update the index of a folder of videos")
    index.add_argument("--checkpoint", required=True, help="a run's best.pt / latest.pt (main.py)")
    index.add_argument("--videos", required=True, help="folder searched recursively for video files")
    index.add_argument("--index", required=True, help="index folder (created; updated when it exists)")
    index.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    index.add_argument("--batch_size", type=int, default=None, help="videos per batch (default: the run's "
                                                                    "--batch_size_val)")
    index.add_argument("--num_workers", type=int, default=None, help="decoding worker processes (default: the "
                                                                     "run's --num_workers)")
    index.add_argument("--clip_weights", default=None,
                       help="CLIP weights file, when the checkpoint holds none and the run's file moved")
    index.add_argument("--no_progress", action="store_true", help="no progress bar")

    query = commands.add_parser("query", help="search an index with text")
    query.add_argument("--index", required=True, help="index folder written by the index command")
    texts = query.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a query (repeat for several)")
    texts.add_argument("--queries", help="text file with one query per line")
    query.add_argument("--top_k", type=int, default=10, help="results per query")
    query.add_argument("--json", action="store_true", help="print one JSON object per query per line")
    query.add_argument("--html", default=None, metavar="PAGE", help="also write a results page with the frames")
    query.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    query.add_argument("--clip_weights", default=None,
                       help="CLIP weights file, when the checkpoint holds none and the file indexing used moved")
    query.add_argument("--search", choices=SEARCH_BACKENDS, default="auto",
                       help="exact: chunked matrix product; faiss: faiss-cpu's exact index; auto: faiss for "
                            "large indexes when installed")
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


def format_table(query: str, hits: list[Hit]) -> str:
    """The ranked table of one query: rank, score, path."""
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  path"]
    lines += [f"{rank:>4}  {hit.score:>7.4f}  {hit.path}" for rank, hit in enumerate(hits, 1)]
    return "\n".join(lines if hits else lines[:1] + ["  (the index holds no searchable video)"])


def as_json(query: str, hits: list[Hit]) -> dict:
    """{"query", "results": [{"path", "score", "frames" (source indices of the frames the model kept)}]}."""
    return {"query": query, "results": [{"path": h.path, "score": h.score, "frames": h.frames_kept} for h in hits]}


def run_index(opts: argparse.Namespace) -> dict:
    summary = build_index(opts.checkpoint, opts.videos, opts.index, device=opts.device, batch_size=opts.batch_size,
                          num_workers=opts.num_workers, clip_weights=opts.clip_weights,
                          progress=not opts.no_progress)
    print(f"{opts.index}: {summary['videos']} videos ({summary['ok']} searchable, {summary['failed']} failed); "
          f"this run encoded {len(summary['encoded'])}, reused {summary['reused']}, dropped "
          f"{len(summary['dropped'])}")
    if summary["encoded"]:
        print(f"throughput: {summary['videos_per_s']:.2f} videos/s ({len(summary['encoded'])} videos in "
              f"{summary['seconds']:.1f} s, decoding included)")
    return summary


def run_query(opts: argparse.Namespace) -> list[list[Hit]]:
    if opts.top_k < 1:
        raise SystemExit(f"--top_k must be >= 1, got {opts.top_k}")
    queries = opts.text or read_queries(opts.queries)
    manifest, embeddings = load_index(opts.index)
    model, args = model_for_index(manifest, opts.index, opts.clip_weights)
    device = resolve_device(opts.device)
    hits = search(manifest, embeddings, encode_texts(model.to(device), args, queries, device), opts.top_k,
                  opts.search)
    for query, query_hits in zip(queries, hits):
        print(json.dumps(as_json(query, query_hits)) if opts.json else format_table(query, query_hits) + "\n")
    if opts.html:
        searchable = sum(e["status"] == "ok" for e in manifest["videos"])
        write_page(opts.html, queries, hits, make_reader(args),
                   f"{searchable} videos under {manifest['videos_dir']} | model {manifest['model']['checkpoint']}",
                   compressed=args.use_tempme)
        log.info("wrote %s", opts.html)
    return hits


def main(argv: list[str] | None = None) -> dict | list[list[Hit]]:
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_index(opts) if opts.command == "index" else run_query(opts)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
