"""Ctrl-C inside the training and evaluation loops stops at the next batch.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives, including inside
callbacks whose exceptions it swallows with an "Exception ignored" traceback (the logging module's
fork hook, which runs each time a DataLoader starts its workers): the Ctrl-C is then lost and the
terminal shows a traceback. Inside `deferred_ctrl_c()` a Ctrl-C only marks a stop, which the loop
raises at its next batch (`raise_if_ctrl_c`) or the block raises when it ends; a second Ctrl-C
raises at once, for a batch that takes too long.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_pending = False


def _mark_stop(signum: int, frame: Any) -> None:
    global _pending
    if _pending:   # the second: now, and the stop is delivered
        _pending = False
        raise KeyboardInterrupt
    _pending = True


def raise_if_ctrl_c() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived since the block began."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_ctrl_c() -> Iterator[None]:
    """Defer Ctrl-C to the loop's checks inside the block (see the module docstring). Only in the
    main thread and where SIGINT has Python's default handler: a process that ignores SIGINT (a
    background job) keeps ignoring it; a nested block leaves the outer one in charge."""
    global _pending
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending = False
    signal.signal(signal.SIGINT, _mark_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_if_ctrl_c()
