#!/usr/bin/env bash
# MSR-VTT (9k train, 1k-A test) with the STOP paper recipe: 4 GPUs x 32, 5 epochs,
# 12 frames, 32 words, lr 1e-3, every caption of the train videos, AMP.
#   bash scripts/msrvtt.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/msrvtt.sh
#   TEMPME=basic RATIO=0.6 bash scripts/msrvtt.sh --epochs 1    (extra flags go to main.py)
# Environment: see scripts/common.sh. Relaunching the same command resumes the run (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

train_recipe msrvtt 4 32 \
  --msrvtt_train_csv MSRVTT_train.9k.csv --expand_msrvtt_sentences True \
  --max_words 32 --max_frames 12 --epochs 5 --lr 1e-3 "$@"
