#!/usr/bin/env bash
# DiDeMo (paragraph-to-video: all sentences of a video joined): the STOP recipe for long videos,
# 8 GPUs x 16, 10 epochs, 64 frames, 64 words, lr 1e-3, the first 30 s of each video.
#   bash scripts/didemo.sh                          STOP
#   TEMPME=simple RATIO=0.75 bash scripts/didemo.sh
#   TEMPME=basic RATIO=0.6 bash scripts/didemo.sh --epochs 1    (extra flags go to main.py)
# Relaunching the same command resumes the run from its latest checkpoint (--resume auto).
set -euo pipefail

DATA_PATH="${DATA_PATH:-data/didemo}"                    # annotation files (see README, data section)
FEATURES_PATH="${FEATURES_PATH:-data/didemo/videos}"     # the videos (3 fps re-encoded or raw)
CLIP_DIR="${CLIP_DIR:-modules}"                          # holds ViT-B-32.pt
NUM_GPUS="${NUM_GPUS:-8}"
BATCH_PER_GPU="${BATCH_PER_GPU:-16}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs}"

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch "$NUM_GPUS" \
  --do_train True --do_eval True \
  --dataset didemo --data_path "$DATA_PATH" --features_path "$FEATURES_PATH" \
  --pretrained_dir "$CLIP_DIR" --pretrained_clip_name ViT-B/32 \
  --max_words 64 --max_frames 64 --video_max_seconds 30 --epochs 10 --lr 1e-3 \
  --batch_size $((NUM_GPUS * BATCH_PER_GPU)) --batch_size_val 16 \
  --weight_decay 0.2 --warmup_proportion 0.1 --precision amp_bf16 \
  --output_dir "$OUTPUT_DIR" --run_name "${RUN_NAME:-didemo_stop$(tempme_tag)}" --resume auto \
  "${TEMPME_FLAGS[@]}" "$@"
