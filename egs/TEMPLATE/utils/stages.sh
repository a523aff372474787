# Stage bookkeeping for kdst recipes (source it).
#
# A stage that finished writes a marker holding its signature: its options
# and the marker of the stage before it.  Re-running a finished stage with the
# same signature does nothing; changing an option, or re-running an earlier
# stage, makes it (and what follows) run again.

stage_dir=${stage_dir:-.stages}

log() { echo "$(date '+%F %T') [${prog:-$(basename "$0")}] $*" >&2; }

# stage_signature N OPTION_TEXT -> prints the signature of stage N: its options and the
# marker of the nearest earlier stage that has finished (stages a recipe lacks have none).
stage_signature() {
  local previous="" n
  for ((n = $1 - 1; n >= 0; n--)); do
    if [ -f "$stage_dir/stage$n.done" ]; then previous=$(cat "$stage_dir/stage$n.done"); break; fi
  done
  printf '%s\n%s\n' "$2" "$previous" | sha256sum | cut -d' ' -f1
}

# stage_is_done N SIGNATURE
stage_is_done() { [ -f "$stage_dir/stage$1.done" ] && [ "$(cat "$stage_dir/stage$1.done")" = "$2" ]; }

# stage_finished N SIGNATURE
stage_finished() {
  mkdir -p "$stage_dir"
  echo "$2" >"$stage_dir/.stage$1.tmp" && mv "$stage_dir/.stage$1.tmp" "$stage_dir/stage$1.done"
}
