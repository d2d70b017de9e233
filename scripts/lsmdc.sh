#!/usr/bin/env bash
# LSMDC (~101k train clips, 1,000 test clips): 4 GPUs x 32, 5 epochs, 12 frames, 32 words, lr 1e-3.
#   bash scripts/lsmdc.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/lsmdc.sh
#   TEMPME=basic RATIO=0.6 bash scripts/lsmdc.sh --epochs 1    (extra flags go to main.py)
# Environment: see scripts/common.sh. Relaunching the same command resumes the run (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

train_recipe lsmdc 4 32 --max_words 32 --max_frames 12 --epochs 5 --lr 1e-3 "$@"
