# Stage bookkeeping for kdst recipes (source it).
#
# A stage that finished writes a marker holding its signature: its options
# and the marker of the stage before it.  Re-running a finished stage with the
# same signature does nothing; changing an option, or re-running an earlier
# stage, makes it (and what follows) run again.

stage_dir=${stage_dir:-.stages}

log() { echo "$(date '+%F %T') [${prog:-$(basename "$0")}] $*" >&2; }

# check_stages: --stage and --stop-stage are stages of this recipe ($implemented) and the first is
# not after the last; otherwise one line naming the option, exit 2.  Call it after parse_options.
check_stages() {
  local -a stages
  read -ra stages <<<"$implemented"
  local first=${stages[0]} last=${stages[${#stages[@]} - 1]} name value
  for name in stage stop_stage; do
    value=$((10#${!name}))  # parse_options checked that it is a whole number
    if [ "$value" -lt "$first" ] || [ "$value" -gt "$last" ]; then
      echo "$prog: --${name//_/-} $value: this recipe's stages are $first to $last (see --help)" >&2
      exit 2
    fi
    printf -v "$name" '%s' "$value"
  done
  if [ "$stage" -gt "$stop_stage" ]; then
    echo "$prog: --stop-stage $stop_stage is before --stage $stage: no stage would run" >&2
    exit 2
  fi
}

# While a stage runs, the jobs it launches know it (kdst launch then says how to rerun the recipe),
# and a stage that fails says so, and where to start again, as the recipe exits.
export KDST_RECIPE=${prog:-$0}
_kdst_stage_running=""
_kdst_stage_failed() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -n "$_kdst_stage_running" ]; then
    log "stage $_kdst_stage_running: failed (exit $status) after $((SECONDS - _kdst_stage_start)) s;" \
      "after fixing the cause, rerun the recipe from this stage: $KDST_RECIPE --stage $_kdst_stage_running"
  fi
}
trap _kdst_stage_failed EXIT

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
  _kdst_stage_running=$n _kdst_stage_start=$SECONDS
  export KDST_RECIPE_STAGE=$n
  "$3"
  unset KDST_RECIPE_STAGE
  _kdst_stage_running=""
  stage_finished "$n" "$signature"
  log "stage $n: finished in $((SECONDS - _kdst_stage_start)) s"
}
