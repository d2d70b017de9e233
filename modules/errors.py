"""Errors the user can fix, and where a run stood when it was interrupted.

`main.main` turns a `UserError` into one line on rank 0 (also appended to the run's log.txt when
the run folder is kept) and exit status 2, without a traceback; an `Interrupted` (Ctrl-C) into
"interrupted at epoch E step S; continue with --resume auto" and exit status 130.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class UserError(ValueError):
    """Bad input the user can fix (a flag, a file, a folder).

    The message is one line: what is wrong, the flag or file, what to do. A ValueError, so
    callers that caught ValueError before these messages had their own class keep working.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the flags name does not exist (also a FileNotFoundError)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: `epoch` is the epoch in progress (1-based), `step` the optimiser
    steps completed. A KeyboardInterrupt, so anything that stops on Ctrl-C still does."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch} step {step}")
        self.epoch = epoch
        self.step = step


@contextlib.contextmanager
def interrupted_at(epoch: int, step: Callable[[], int]) -> Iterator[None]:
    """Turn a Ctrl-C inside the block into `Interrupted(epoch, step())` (an inner, more precise
    `Interrupted` passes through unchanged)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as exc:
        raise Interrupted(epoch, step()) from exc


def one_line(message: str) -> str:
    """`message` as a single line (lines joined with '; '), for the console and log.txt."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
