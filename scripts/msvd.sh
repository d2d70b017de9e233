#!/usr/bin/env bash
# MSVD (1,200 train / 670 test videos, ~40 captions each; multi-caption evaluation):
# 4 GPUs x 32, 5 epochs, 12 frames, 32 words, lr 1e-3, every caption a training pair.
#   bash scripts/msvd.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/msvd.sh
#   TEMPME=basic RATIO=0.6 bash scripts/msvd.sh --epochs 1    (extra flags go to main.py)
# Relaunching the same command resumes the run from its latest checkpoint (--resume auto).
set -euo pipefail

DATA_PATH="${DATA_PATH:-data/msvd}"                    # annotation files (see README, data section)
FEATURES_PATH="${FEATURES_PATH:-data/msvd/videos}"     # the videos (3 fps re-encoded or raw)
CLIP_DIR="${CLIP_DIR:-modules}"                          # holds ViT-B-32.pt
NUM_GPUS="${NUM_GPUS:-4}"
BATCH_PER_GPU="${BATCH_PER_GPU:-32}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs}"

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch "$NUM_GPUS" \
  --do_train True --do_eval True \
  --dataset msvd --data_path "$DATA_PATH" --features_path "$FEATURES_PATH" \
  --pretrained_dir "$CLIP_DIR" --pretrained_clip_name ViT-B/32 \
  --max_words 32 --max_frames 12 --epochs 5 --lr 1e-3 \
  --batch_size $((NUM_GPUS * BATCH_PER_GPU)) --batch_size_val 16 \
  --weight_decay 0.2 --warmup_proportion 0.1 --precision amp_bf16 \
  --output_dir "$OUTPUT_DIR" --run_name "${RUN_NAME:-msvd_stop$(tempme_tag)}" --resume auto \
  "${TEMPME_FLAGS[@]}" "$@"
