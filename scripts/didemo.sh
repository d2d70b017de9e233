#!/usr/bin/env bash
# DiDeMo (paragraph-to-video: all sentences of a video joined): the STOP recipe for long videos,
# 8 GPUs x 16, 10 epochs, 64 frames, 64 words, lr 1e-3, the first 30 s of each video.
#   bash scripts/didemo.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/didemo.sh
#   TEMPME=basic RATIO=0.6 bash scripts/didemo.sh --epochs 1    (extra flags go to main.py)
# Environment: see scripts/common.sh. Relaunching the same command resumes the run (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

train_recipe didemo 8 16 --max_words 64 --max_frames 64 --video_max_seconds 30 --epochs 10 --lr 1e-3 "$@"
