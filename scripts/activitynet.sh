#!/usr/bin/env bash
# ActivityNet Captions (paragraph-to-video, val_1 as test): the STOP recipe for long videos,
# 8 GPUs x 16, 10 epochs, 64 frames, 64 words, lr 1e-3.
#   bash scripts/activitynet.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/activitynet.sh
#   TEMPME=basic RATIO=0.6 bash scripts/activitynet.sh --epochs 1    (extra flags go to main.py)
# Environment: see scripts/common.sh. Relaunching the same command resumes the run (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

train_recipe activitynet 8 16 --max_words 64 --max_frames 64 --epochs 10 --lr 1e-3 "$@"
