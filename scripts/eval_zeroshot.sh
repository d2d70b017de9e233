#!/usr/bin/env bash
# Zero-shot CLIP (no prompts, no training: CLIP4Clip meanP) on the test split of any dataset.
#   DATASET=msvd DATA_PATH=data/msvd FEATURES_PATH=data/msvd/videos bash scripts/eval_zeroshot.sh
#   DATASET=didemo bash scripts/eval_zeroshot.sh --pretrained_clip_name ViT-B/16
# TEMPME=... works here too (an untrained compressor keeps uniform samples).
set -euo pipefail

DATASET="${DATASET:-msrvtt}"                              # msrvtt msvd lsmdc activitynet didemo vatex
DATA_PATH="${DATA_PATH:-data/$DATASET}"
FEATURES_PATH="${FEATURES_PATH:-data/$DATASET/videos}"
CLIP_DIR="${CLIP_DIR:-modules}"
NUM_GPUS="${NUM_GPUS:-1}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs}"

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case "$DATASET" in
  didemo|activitynet) LENGTH_FLAGS=(--max_words 64 --max_frames 64) ;;
  *) LENGTH_FLAGS=(--max_words 32 --max_frames 12) ;;
esac

launch "$NUM_GPUS" \
  --do_eval True --prompt_mode none \
  --dataset "$DATASET" --data_path "$DATA_PATH" --features_path "$FEATURES_PATH" \
  --pretrained_dir "$CLIP_DIR" --pretrained_clip_name ViT-B/32 \
  "${LENGTH_FLAGS[@]}" --batch_size_val 16 --precision amp_bf16 \
  --output_dir "$OUTPUT_DIR" --run_name "${RUN_NAME:-${DATASET}_zeroshot$(tempme_tag)}" \
  "${TEMPME_FLAGS[@]}" "$@"
