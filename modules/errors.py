"""Errors the user can fix.

`main.main` turns a `UserError` into one line on rank 0 (also appended to the run's log.txt when
the run folder is kept) and exit status 2, without a traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix (a flag, a file, a folder).

    The message is one line: what is wrong, the flag or file, what to do. A ValueError, so
    callers that caught ValueError before these messages had their own class keep working.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the flags name does not exist (also a FileNotFoundError)."""


def one_line(message: str) -> str:
    """`message` as a single line (lines joined with '; '), for the console and log.txt."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
