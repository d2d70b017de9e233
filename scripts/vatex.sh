#!/usr/bin/env bash
# VATEX (25,991 train / 1,500 test videos, 10 English captions each; multi-caption evaluation):
# 8 GPUs x 64, 10 epochs, 12 frames, 32 words, lr 5e-3, segment-centre (eval-style) frame sampling in training.
#   bash scripts/vatex.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/vatex.sh
#   TEMPME=basic RATIO=0.6 bash scripts/vatex.sh --epochs 1    (extra flags go to main.py)
# Relaunching the same command resumes the run from its latest checkpoint (--resume auto).
set -euo pipefail

DATA_PATH="${DATA_PATH:-data/vatex}"                    # annotation files (see README, data section)
FEATURES_PATH="${FEATURES_PATH:-data/vatex/videos}"     # the videos (3 fps re-encoded or raw)
CLIP_DIR="${CLIP_DIR:-modules}"                          # holds ViT-B-32.pt
NUM_GPUS="${NUM_GPUS:-8}"
BATCH_PER_GPU="${BATCH_PER_GPU:-64}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs}"

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch "$NUM_GPUS" \
  --do_train True --do_eval True \
  --dataset vatex --data_path "$DATA_PATH" --features_path "$FEATURES_PATH" \
  --pretrained_dir "$CLIP_DIR" --pretrained_clip_name ViT-B/32 \
  --max_words 32 --max_frames 12 --epochs 10 --lr 5e-3 --train_frame_sampling uniform \
  --batch_size $((NUM_GPUS * BATCH_PER_GPU)) --batch_size_val 16 \
  --weight_decay 0.2 --warmup_proportion 0.1 --precision amp_bf16 \
  --output_dir "$OUTPUT_DIR" --run_name "${RUN_NAME:-vatex_stop$(tempme_tag)}" --resume auto \
  "${TEMPME_FLAGS[@]}" "$@"
