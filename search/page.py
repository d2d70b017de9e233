"""A static HTML page of search results: each query, its moments with the frames the model saw.

A moment shows its span (a link that plays the file from its start to its end:
`file.mp4#t=START,END`, relative to the page) and the frames of its best window as the model saw
them (resized and centre-cropped to `--image_size`), each with its time in the file; the frames
that reached CLIP (TempMe's choice, or all of them without TempMe) are outlined, the others
dimmed. Images go to `<page stem>_files/` beside the page and are linked relatively, so the page's
folder can be copied or served as it is (with the videos where the links expect them).
"""
from __future__ import annotations

import html
import os
import urllib.parse

from PIL import Image

from dataloaders.video_reader import VideoReader, VideoReadError
from search.moments import Moment, clock

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
.info {{ width: 250px; flex: none; font-size: 13px; overflow-wrap: anywhere; }}
.rank {{ font-weight: 600; font-size: 15px; }}
.score {{ font-variant-numeric: tabular-nums; color: #444; }}
.span a {{ font-weight: 600; font-variant-numeric: tabular-nums; color: #1a5fb4; text-decoration: none; }}
.path {{ font-family: ui-monospace, monospace; font-size: 12px; color: #555; }}
.note {{ color: #b35c00; font-size: 12px; }}
.strip {{ display: flex; gap: 4px; flex-wrap: wrap; }}
figure {{ margin: 0; text-align: center; font-size: 11px; color: #666; font-variant-numeric: tabular-nums; }}
figure img {{ display: block; width: {DISPLAY_SIZE}px; height: {DISPLAY_SIZE}px; border: 3px solid #d0d0d0;
              border-radius: 3px; }}
figure.kept img {{ border-color: #28c83c; }}
figure.kept figcaption {{ color: #1d8f2c; font-weight: 600; }}
figure.dropped img {{ opacity: 0.45; }}
"""


def _href(path: str, page_dir: str) -> str:
    return urllib.parse.quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))


def _seconds(value: float) -> str:
    """A media-fragment time: seconds with at most 3 decimals, no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _frames(path: str, moment: Moment, reader: VideoReader, image_dir: str) -> tuple[list[tuple[int, str]], str]:
    """Read the frames of a moment's best window again and write them as JPEGs: ([(source frame
    index, image file)], "" or why they cannot be shown as indexed)."""
    try:
        video, read = reader.read_frames(path, moment.best.frames_read)
    except (VideoReadError, OSError) as exc:
        return [], f"cannot read the file now: {exc}"
    files = []
    for position, source in enumerate(read):
        name = os.path.join(image_dir, f"w{moment.best.id}-{source}.jpg")
        Image.fromarray(video[position].permute(1, 2, 0).numpy()).save(name, quality=92)
        files.append((source, name))
    changed = "" if read == moment.best.frames_read else "the file changed since it was indexed: these frames " \
                                                        "may not be the ones scored"
    return files, changed


def _strip(moment: Moment, files: list[tuple[int, str]], note: str, page_dir: str) -> str:
    """HTML of a moment's frames (kept ones outlined, the others dimmed), each with its time."""
    figures = [f'<figure class="{"kept" if source in moment.best.frames_kept else "dropped"}">'
               f'<img src="{_href(name, page_dir)}" alt="frame {source}" loading="lazy">'
               f'<figcaption>{clock(source / moment.best.fps)}</figcaption></figure>' for source, name in files]
    note = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<div class="frames">{note}<div class="strip">{"".join(figures)}</div></div>'


def write_page(page: str, videos_dir: str, queries: list[str], moments: list[list[Moment]], reader: VideoReader,
               subtitle: str, compressed: bool) -> list[str]:
    """Write the results page `page` (queries and their moments in files under `videos_dir`,
    `subtitle` under the title; `compressed`: the model has TempMe, so frames can be dropped);
    returns the image files written."""
    page_dir = os.path.dirname(os.path.abspath(page))
    image_dir = os.path.join(page_dir, os.path.splitext(os.path.basename(page))[0] + "_files")
    os.makedirs(image_dir, exist_ok=True)
    written: dict[int, tuple[list[tuple[int, str]], str]] = {}   # window id -> _frames(), once per window
    sections = []
    for query, query_moments in zip(queries, moments):
        rows = []
        for rank, moment in enumerate(query_moments, 1):
            path = os.path.join(videos_dir, moment.relpath)
            if moment.best.id not in written:
                written[moment.best.id] = _frames(path, moment, reader, image_dir)
            link = f"{_href(path, page_dir)}#t={_seconds(moment.start)},{_seconds(moment.end)}"
            merged = f"{moment.windows} windows merged; " if moment.windows > 1 else ""
            rows.append(f'<div class="hit"><div class="info"><div class="rank">#{rank}</div>'
                        f'<div class="span"><a href="{html.escape(link)}">{clock(moment.start)} &ndash; '
                        f'{clock(moment.end)}</a></div>'
                        f'<div class="score">score {moment.score:.4f}</div>'
                        f'<div class="path">{html.escape(moment.relpath)}</div>'
                        f'<div class="meta">{merged}best window {clock(moment.best.start)} &ndash; '
                        f'{clock(moment.best.end)}: {len(moment.best.frames_kept)} of {len(moment.best.frames_read)} '
                        f'frames reached the model</div></div>{_strip(moment, *written[moment.best.id], page_dir)}'
                        f'</div>')
        sections.append(f'<section class="query"><h2>{html.escape(query)}</h2>'
                        f'{"".join(rows) or "<p class=note>no videos in the index</p>"}</section>')
    legend = ('<span class="swatch" style="background:#28c83c"></span>frames TempMe kept for the model'
              '<span class="swatch" style="background:#d0d0d0"></span>frames read but dropped' if compressed else
              '<span class="swatch" style="background:#28c83c"></span>every frame read reaches the model (no TempMe)')
    legend = (f'<p class="legend">the time links play the moment; under a frame: its time in the file '
              f'&middot; {legend}</p>')
    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Video search</title>'
                f'<style>{STYLE}</style></head><body><h1>Video search</h1><p class="meta">{html.escape(subtitle)}</p>'
                f'{legend}{"".join(sections)}</body></html>\n')
    tmp = f"{page}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(document)
    os.replace(tmp, page)
    return [name for files, _ in written.values() for _, name in files]
