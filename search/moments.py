"""Distinct moments from ranked windows: overlapping hits of one file merge into one moment.

The windows are read best first. A window founds a new moment unless it overlaps a moment of its
file already found; one that overlaps the latest moment extends it (start, end: the union), one
that overlaps an earlier moment is absorbed by it unchanged. A moment therefore spans its file's
overlapping windows that rank above the next moment's best window, its score is its best
window's, and what the first k moments are does not depend on how many are asked for.
`per_file` caps the moments of one file: windows that would found more are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from search.store import WindowRecord


@dataclass
class Moment:
    """A result: `relpath` (in the index), `start` / `end` seconds, `score` (its best window's
    cosine), `best` (that window: the frames shown), `windows` merged."""
    relpath: str
    start: float
    end: float
    score: float
    best: WindowRecord
    windows: int = 1

    def overlaps(self, window: WindowRecord) -> bool:
        return window.relpath == self.relpath and window.start < self.end and self.start < window.end


def merge_moments(ranked: Iterable[tuple[float, WindowRecord]], k: int,
                  per_file: int | None = None) -> tuple[list[Moment], bool]:
    """The first `k` moments of `ranked` (score, window) pairs, best first. Returns them and whether
    they are final: the (k+1)-th moment was founded, or `ranked` ran out (final when it held
    every window of the index)."""
    moments: list[Moment] = []
    per_path: dict[str, int] = {}
    for score, window in ranked:
        hit = next((m for m in moments if m.overlaps(window)), None)
        if hit is not None:
            if hit is moments[-1]:
                hit.start, hit.end = min(hit.start, window.start), max(hit.end, window.end)
                hit.windows += 1
            continue
        if per_file and per_path.get(window.relpath, 0) >= per_file:
            continue
        if len(moments) == k:
            return moments, True
        moments.append(Moment(window.relpath, window.start, window.end, score, window))
        per_path[window.relpath] = per_path.get(window.relpath, 0) + 1
    return moments, False


def clock(seconds: float) -> str:
    """Seconds as a clock reading: 'm:ss.s', or 'h:mm:ss.s' from an hour on."""
    tenths = round(seconds * 10)
    hours, rest = divmod(tenths, 36_000)
    minutes, rest = divmod(rest, 600)
    text = f"{minutes:d}:{rest // 10:02d}.{rest % 10}"
    return f"{hours:d}:{minutes:02d}:{rest // 10:02d}.{rest % 10}" if hours else text
