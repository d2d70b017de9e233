#!/usr/bin/env bash
# Zero-shot CLIP (no prompts, no training: CLIP4Clip meanP) on the test split of any dataset.
#   DATASET=msvd DATA_PATH=data/msvd FEATURES_PATH=data/msvd/videos bash scripts/eval_zeroshot.sh
#   DATASET=didemo bash scripts/eval_zeroshot.sh --pretrained_clip_name ViT-B/16
# TEMPME=... works here too (an untrained compressor keeps uniform samples). Environment: see scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET="${DATASET:-msrvtt}"                              # msrvtt msvd lsmdc activitynet didemo vatex
case "$DATASET" in
  didemo|activitynet) LENGTH_FLAGS=(--max_words 64 --max_frames 64) ;;
  *) LENGTH_FLAGS=(--max_words 32 --max_frames 12) ;;
esac
data_flags "$DATASET"

launch "${NUM_GPUS:-1}" --do_eval True --prompt_mode none "${DATA_FLAGS[@]}" \
  "${LENGTH_FLAGS[@]}" --batch_size_val 16 --precision amp_bf16 \
  --output_dir "${OUTPUT_DIR:-outputs}" --run_name "${RUN_NAME:-${DATASET}_zeroshot$(tempme_tag)}" --resume auto \
  "${TEMPME_FLAGS[@]}" "$@"
