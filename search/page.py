"""A static HTML page of search results: each query, its hits as strips of the frames the model saw.

Every frame the reader took from a hit's file is shown as the model saw it (resized and centre-
cropped to `--image_size`); the frames that reached CLIP (TempMe's choice, or all of them
without TempMe) are outlined, the others dimmed. Images go to `<page stem>_files/` beside the
page and are linked relatively, so the page's folder can be copied or served as it is.
"""
from __future__ import annotations

import hashlib
import html
import os
import urllib.parse

from PIL import Image

from dataloaders.video_reader import VideoReader, VideoReadError
from search.query import Hit

DISPLAY_SIZE = 112   # CSS pixels per frame in a strip
STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.meta, .legend {{ color: #666; font-size: 13px; margin: 0 0 4px; }}
.legend .swatch {{ display: inline-block; width: 10px; height: 10px; vertical-align: middle; margin: 0 4px 0 6px; }}
section.query {{ margin: 28px 0; }}
section.query h2 {{ font-size: 17px; margin: 0 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
.hit {{ display: flex; gap: 14px; align-items: center; margin: 8px 0; padding: 8px; background: #fff;
        border: 1px solid #e4e4e4; border-radius: 6px; }}
.info {{ width: 230px; flex: none; font-size: 13px; overflow-wrap: anywhere; }}
.rank {{ font-weight: 600; font-size: 15px; }}
.score {{ font-variant-numeric: tabular-nums; color: #444; }}
.path {{ font-family: ui-monospace, monospace; font-size: 12px; color: #555; }}
.note {{ color: #b35c00; font-size: 12px; }}
.strip {{ display: flex; gap: 4px; flex-wrap: wrap; }}
figure {{ margin: 0; text-align: center; font-size: 11px; color: #666; }}
figure img {{ display: block; width: {DISPLAY_SIZE}px; height: {DISPLAY_SIZE}px; border: 3px solid #d0d0d0;
              border-radius: 3px; }}
figure.kept img {{ border-color: #28c83c; }}
figure.kept figcaption {{ color: #1d8f2c; font-weight: 600; }}
figure.dropped img {{ opacity: 0.45; }}
"""


def _href(path: str, page_dir: str) -> str:
    return urllib.parse.quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))


def _frames(path: str, relpath: str, reader: VideoReader, image_dir: str) -> tuple[list[tuple[int, str]], str]:
    """Read a video as indexing did and write its frames as JPEGs: ([(source frame index, image
    file)], "" or why the file cannot be read now)."""
    try:
        video, _, read = reader.read_with_indices(path, train=False)
    except (VideoReadError, OSError) as exc:
        return [], f"cannot read the file now: {exc}"
    stem = hashlib.sha1(relpath.encode()).hexdigest()[:16]
    files = []
    for position, source in enumerate(read):
        name = os.path.join(image_dir, f"{stem}-{source}.jpg")
        Image.fromarray(video[position].permute(1, 2, 0).numpy()).save(name, quality=92)
        files.append((source, name))
    return files, ""


def _strip(hit: Hit, files: list[tuple[int, str]], error: str, page_dir: str) -> str:
    """HTML of one hit's frames (kept ones outlined, the others dimmed), with a note when the file
    cannot be read now or gives other frames than it did when indexed."""
    figures = [f'<figure class="{"kept" if source in hit.frames_kept else "dropped"}">'
               f'<img src="{_href(name, page_dir)}" alt="frame {source}" loading="lazy">'
               f'<figcaption>#{source}</figcaption></figure>' for source, name in files]
    note = error or ("" if [source for source, _ in files] == hit.frames_read else
                     "the file changed since it was indexed: these frames may not be the ones scored")
    note = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<div class="frames">{note}<div class="strip">{"".join(figures)}</div></div>'


def write_page(page: str, queries: list[str], hits: list[list[Hit]], reader: VideoReader, subtitle: str,
               compressed: bool) -> list[str]:
    """Write the results page `page` (queries and their hits, `subtitle` under the title; `compressed`:
    the model has TempMe, so frames can be dropped); returns the image files written."""
    page_dir = os.path.dirname(os.path.abspath(page))
    image_dir = os.path.join(page_dir, os.path.splitext(os.path.basename(page))[0] + "_files")
    os.makedirs(image_dir, exist_ok=True)
    written: dict[str, tuple[list[tuple[int, str]], str]] = {}   # video path -> _frames(), once per video
    sections = []
    for query, query_hits in zip(queries, hits):
        rows = []
        for rank, hit in enumerate(query_hits, 1):
            if hit.path not in written:
                written[hit.path] = _frames(hit.path, hit.relpath, reader, image_dir)
            rows.append(f'<div class="hit"><div class="info"><div class="rank">#{rank}</div>'
                        f'<div class="score">score {hit.score:.4f}</div>'
                        f'<div class="path">{html.escape(hit.relpath)}</div>'
                        f'<div class="meta">{len(hit.frames_kept)} of {len(hit.frames_read)} frames reached the '
                        f'model</div></div>{_strip(hit, *written[hit.path], page_dir)}</div>')
        sections.append(f'<section class="query"><h2>{html.escape(query)}</h2>'
                        f'{"".join(rows) or "<p class=note>no videos in the index</p>"}</section>')
    legend = ('<span class="swatch" style="background:#28c83c"></span>frames TempMe kept for the model'
              '<span class="swatch" style="background:#d0d0d0"></span>frames read but dropped' if compressed else
              '<span class="swatch" style="background:#28c83c"></span>every frame read reaches the model (no TempMe)')
    legend = f'<p class="legend">#n under a frame: its index in the video file &middot; {legend}</p>'
    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Video search</title>'
                f'<style>{STYLE}</style></head><body><h1>Video search</h1><p class="meta">{html.escape(subtitle)}</p>'
                f'{legend}{"".join(sections)}</body></html>\n')
    tmp = f"{page}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(document)
    os.replace(tmp, page)
    return [name for files, _ in written.values() for _, name in files]
