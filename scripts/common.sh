# Shared by the per-dataset scripts (sourced, not run): TempMe switches and the torchrun launch.
#
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
