"""Shared test set-up: tests import helpers from this folder and run on CPU only."""
from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))          # helper modules such as clip_archives
sys.path.insert(0, str(TESTS_DIR.parent))   # the repo root (main, params, modules, dataloaders)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests exercise the CPU path; GPUs are benchmarked separately
