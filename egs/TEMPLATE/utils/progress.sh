# Progress of a training job on the console (source it).
#
# kdst train writes `epoch E step S: ... loss=L ...` every train.log_interval steps and
# `epoch E done: validation nll=...` after each epoch into EXP/train.log, which the
# console does not show.  follow_training prints the latest of those lines at most every
# $KDST_PROGRESS_INTERVAL seconds (default 30), with an estimate of the time left once an
# epoch has finished, and one last line when the log says the job ended.

# training_state LOG -> "EPOCH STEP LOSS DONE_EPOCH DONE_STEP VALIDATION..." from the newest lines
# of LOG: the last step line, and the last epoch that finished with the step it ended at and its
# validation ("-" where there is none yet); nothing if the log has no training line yet.
training_state() {
  awk '
    { for (i = 1; i + 3 <= NF; i++) if ($i == "epoch" && $(i + 2) == "step" && $(i + 3) ~ /^[0-9]+:$/) break }
    i + 3 <= NF {
      epoch = $(i + 1); step = $(i + 3); sub(/:$/, "", step); loss = "-"
      for (j = i + 4; j <= NF; j++) if ($j ~ /^loss=/) loss = substr($j, 6)
      next
    }
    { for (i = 1; i + 3 <= NF; i++) if ($i == "epoch" && $(i + 2) == "done:" && $(i + 3) == "validation") break }
    i + 3 <= NF {
      done_epoch = $(i + 1); done_step = step; valid = ""
      for (j = i + 4; j <= NF; j++) valid = valid " " $j
    }
    END {
      if (step == "" && done_epoch == "") exit
      if (step == "") { epoch = "-"; step = "-"; loss = "-" }
      if (done_epoch == "") done_epoch = "-"
      if (done_step == "") done_step = "-"
      print epoch, step, loss, done_epoch, done_step valid
    }
  ' "$1" 2>/dev/null
}

# config_value EXP SECTION KEY: a top-level section's key in EXP/config.yaml (the resolved
# config kdst train writes as it starts), empty if absent or null.
config_value() {
  awk -v section="$2:" -v key="$3:" '
    /^[^ #]/ { inside = ($1 == section) }
    inside && $1 == key && $2 != "null" { print $2; exit }
  ' "$1/config.yaml" 2>/dev/null
}

# duration SECONDS -> "1 h 05 min", "12 min", "40 s"
duration() {
  if [ "$1" -ge 3600 ]; then printf '%d h %02d min' $(($1 / 3600)) $(($1 % 3600 / 60))
  elif [ "$1" -ge 60 ]; then printf '%d min' $((($1 + 30) / 60))
  else printf '%d s' "$1"
  fi
}

# describe_state STATE -> "epoch E step S, loss L; after epoch D: validation nll=..."
describe_state() {
  local epoch step loss done_epoch done_step valid text=""
  [ -n "$1" ] || return 0  # nothing logged yet (e.g. the config was refused)
  read -r epoch step loss done_epoch done_step valid <<<"$1"
  [ "$step" = - ] || text="epoch $epoch step $step, loss $loss"
  [ "$done_epoch" = - ] || text="${text:+$text; }after epoch $done_epoch: validation $valid"
  echo "$text"
}

# file_version FILE -> its modification time to the nanosecond (nothing if it does not exist).  A
# log from an earlier run stays there until the launcher starts the job again: until the log's
# version differs from the one before the launch, it is not this run's.  (No clock is compared
# with another: a log on a cluster's file system may be stamped by another machine's clock.)
file_version() { stat -c %y "$1" 2>/dev/null || true; }

# follow_training EXP [PARENT_PID [LOG_VERSION]]: run it in the background while EXP/train.log is
# written (LOG_VERSION: file_version of the log before the job started); it prints on stderr, and
# stops by itself when the log says the job ended or PARENT_PID is gone.
follow_training() {
  local exp=$1 parent=${2:-} train_log=$1/train.log
  local interval=${KDST_PROGRESS_INTERVAL:-30} poll=${KDST_PROGRESS_POLL:-2}
  local before state shown="" last_print=-1 line
  local epoch step loss done_epoch done_step valid first_step="" first_time=0 epochs max_steps total left
  if [ $# -ge 3 ]; then before=$3; else before=$(file_version "$train_log"); fi
  while :; do
    sleep "$poll" >/dev/null 2>&1 || return 0  # (killed, it holds no pipe of the recipe's)
    if [ -n "$parent" ] && ! kill -0 "$parent" 2>/dev/null; then return 0; fi
    [ -f "$train_log" ] && [ "$(file_version "$train_log")" != "$before" ] || continue
    if grep -q '^# Ended (' "$train_log"; then return 0; fi  # with_progress says how it ended
    state=$(training_state "$train_log")
    [ -n "$state" ] || continue
    read -r epoch step loss done_epoch done_step valid <<<"$state"
    if [ "$step" != - ] && [ -z "$first_step" ]; then first_step=$step first_time=$SECONDS; fi
    if [ "$state" = "$shown" ] || { [ "$last_print" -ge 0 ] && [ $((SECONDS - last_print)) -lt "$interval" ]; }; then
      continue
    fi
    line="$exp: $(describe_state "$state")"
    # time left: the steps to go at the rate seen so far (validation included), once an epoch
    # has finished and so told how many steps an epoch has
    epochs=$(config_value "$exp" train epochs)
    max_steps=$(config_value "$exp" train max_steps)
    if [[ $done_step =~ ^[0-9]+$ && $step =~ ^[0-9]+$ && $epochs =~ ^[0-9]+$ ]] &&
       [ "$done_epoch" -gt 0 ] && [ "$step" -gt "$first_step" ] && [ $((SECONDS - first_time)) -gt 0 ]; then
      total=$((epochs * done_step / done_epoch))
      [[ ! $max_steps =~ ^[0-9]+$ ]] || [ "$max_steps" -le 0 ] || [ "$max_steps" -ge "$total" ] || total=$max_steps
      left=$(((total - step) * (SECONDS - first_time) / (step - first_step)))
      [ "$left" -lt 0 ] || line="$line; about $(duration "$left") left (epoch $epoch of $epochs)"
    fi
    log "$line"
    shown=$state last_print=$SECONDS
  done
}

# with_progress EXP PROGRAM ARGS...: runs PROGRAM (a job launcher writing EXP/train.log: a
# program, not a shell function) with follow_training beside it, then says how training ended.
# Its exit status is PROGRAM's.
with_progress() {
  local exp=$1 follower status=0 before state=""
  shift
  before=$(file_version "$exp/train.log")
  log "training $exp: log in $exp/train.log"
  follow_training "$exp" "$BASHPID" "$before" &
  follower=$!
  "$@" || status=$?
  kill "$follower" 2>/dev/null || true
  wait "$follower" 2>/dev/null || true
  if [ "$(file_version "$exp/train.log")" != "$before" ]; then
    state=$(describe_state "$(training_state "$exp/train.log")")
  fi
  if [ "$status" -eq 0 ]; then
    log "training $exp: finished${state:+: $state}"
  else
    log "training $exp: failed (exit $status)${state:+ at $state}; see $exp/train.log"
  fi
  return "$status"
}
