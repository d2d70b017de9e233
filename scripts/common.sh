# Shared by the per-dataset scripts (sourced, not run): TempMe switches, data flags, the recipe launch.
#
# Environment (all optional):
#   DATA_PATH=data/<dataset>  FEATURES_PATH=data/<dataset>/videos  CLIP_DIR=modules (holds ViT-B-32.pt)
#   NUM_GPUS, BATCH_PER_GPU (recipe defaults per script)  OUTPUT_DIR=outputs  RUN_NAME=<dataset>_stop[_tempme-...]
# TempMe is chosen with environment variables:
#   TEMPME=none|simple|basic|adaptive   (default none: plain STOP)
#   RATIO=0.75        simple: fraction of frames kept; basic: output frames = round(input * RATIO)
#   TEMPME_INPUT_FRAMES=32 TEMPME_OUTPUT_FRAMES=12                       (basic)
#   TEMPME_MAX_INPUT_FRAMES=48 TEMPME_MIN_OUTPUT_FRAMES=8 TEMPME_MAX_OUTPUT_FRAMES=16   (adaptive)
# Extra flags given to a script are passed on to main.py (later flags win).

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPME="${TEMPME:-none}"

case "$TEMPME" in
  none)
    TEMPME_FLAGS=(--use_tempme False) ;;
  simple)
    TEMPME_FLAGS=(--use_tempme True --tempme_type simple --tempme_compression_ratio "${RATIO:-0.75}") ;;
  basic)
    input="${TEMPME_INPUT_FRAMES:-32}"
    if [[ -n "${RATIO:-}" ]]; then
      output="$(awk -v n="$input" -v r="$RATIO" 'BEGIN { k = int(n * r + 0.5); print (k < 1 ? 1 : k) }')"
    else
      output="${TEMPME_OUTPUT_FRAMES:-12}"
    fi
    TEMPME_FLAGS=(--use_tempme True --tempme_type basic --tempme_input_frames "$input"
                  --tempme_output_frames "$output") ;;
  adaptive)
    TEMPME_FLAGS=(--use_tempme True --tempme_type adaptive
                  --tempme_max_input_frames "${TEMPME_MAX_INPUT_FRAMES:-48}"
                  --tempme_min_output_frames "${TEMPME_MIN_OUTPUT_FRAMES:-8}"
                  --tempme_max_output_frames "${TEMPME_MAX_OUTPUT_FRAMES:-16}") ;;
  *)
    echo "TEMPME must be none, simple, basic or adaptive (got '$TEMPME')" >&2
    exit 2 ;;
esac

# Run-name suffix from the TempMe settings, so variants do not overwrite each other.
tempme_tag() {
  case "$TEMPME" in
    none) echo "" ;;
    simple|basic) echo "_tempme-${TEMPME}${RATIO:+-$RATIO}" ;;
    *) echo "_tempme-${TEMPME}" ;;
  esac
}

# launch NUM_PROCESSES FLAGS...: one process per GPU on this node.
launch() {
  local nproc="$1"
  shift
  torchrun --standalone --nproc_per_node "$nproc" "$REPO_DIR/main.py" "$@"
}

# data_flags DATASET: sets DATA_FLAGS to the dataset, its folders and the CLIP weights.
data_flags() {
  DATA_FLAGS=(--dataset "$1" --data_path "${DATA_PATH:-data/$1}" --features_path "${FEATURES_PATH:-data/$1/videos}"
              --pretrained_dir "${CLIP_DIR:-modules}" --pretrained_clip_name ViT-B/32)
}

# train_recipe DATASET GPUS BATCH_PER_GPU FLAGS...: train, then test the best
# epoch, with the flags every recipe shares (AdamW wd 0.2, 10% warmup, bf16, resumable run folder).
# NUM_GPUS / BATCH_PER_GPU override the recipe's GPUS / BATCH_PER_GPU.
train_recipe() {
  local dataset="$1" gpus="${NUM_GPUS:-$2}" per_gpu="${BATCH_PER_GPU:-$3}"
  shift 3
  data_flags "$dataset"
  launch "$gpus" --do_train True --do_eval True "${DATA_FLAGS[@]}" \
    --batch_size $((gpus * per_gpu)) --batch_size_val 16 \
    --weight_decay 0.2 --warmup_proportion 0.1 --precision amp_bf16 \
    --output_dir "${OUTPUT_DIR:-outputs}" --run_name "${RUN_NAME:-${dataset}_stop$(tempme_tag)}" --resume auto \
    "${TEMPME_FLAGS[@]}" "$@"
}
