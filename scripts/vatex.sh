#!/usr/bin/env bash
# VATEX (25,991 train / 1,500 test videos, 10 English captions each; multi-caption evaluation):
# 8 GPUs x 64, 10 epochs, 12 frames, 32 words, lr 5e-3, segment-centre (eval-style) frame sampling in training.
#   bash scripts/vatex.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/vatex.sh
#   TEMPME=basic RATIO=0.6 bash scripts/vatex.sh --epochs 1    (extra flags go to main.py)
# Environment: see scripts/common.sh. Relaunching the same command resumes the run (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

train_recipe vatex 8 64 --max_words 32 --max_frames 12 --epochs 10 --lr 5e-3 --train_frame_sampling uniform "$@"
