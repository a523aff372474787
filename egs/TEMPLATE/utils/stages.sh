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

# run_stage N "OPTIONS THE STAGE DEPENDS ON" FUNCTION: runs FUNCTION if N is within
# --stage/--stop-stage and its signature changed.  Needs $stage, $stop_stage and
# $implemented (" 0 1 2 ... ": the stages this version of the recipe has).
run_stage() {
  local n=$1 signature
  [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ] || return 0
  if [[ $implemented != *" $n "* ]]; then
    log "stage $n: $3 is not implemented yet; skipped"
    return 0
  fi
  signature=$(stage_signature "$n" "$2")
  if stage_is_done "$n" "$signature"; then
    log "stage $n: done already (remove $stage_dir/stage$n.done to redo)"
    return 0
  fi
  log "stage $n: $3"
  local start=$SECONDS
  "$3"
  stage_finished "$n" "$signature"
  log "stage $n: finished in $((SECONDS - start)) s"
}
