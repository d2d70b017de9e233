"""CLIP4Clip's entry point name, so its README commands run as typed: the same as `main.py`."""
from __future__ import annotations

import sys

import main

if __name__ == "__main__":
    main.main(sys.argv[1:])
