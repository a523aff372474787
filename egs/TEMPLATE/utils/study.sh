# The study scripts of the mini recipes (egs/mini/<recipe>/local/study.sh; source it, bash only).
#
# A study runs its recipe's ./run.sh, every stage, with the options it studies after any other run.sh
# option, then writes its document with kdst study-report (kdst/report/study.py; docs/results/README.md).
# Shared here: the options (the study's own, those it refuses, the rest handed to run.sh as they are),
# the invocation log exp/study.tsv (a line per invocation: study.py's FIELDS), run.sh in a process
# group of its own (a TERM or INT here stops all of it), and the report.  A study script sets
#
#   study_name     its findings spec docs/results/findings/<name>.yaml and document docs/results/<name>.md
#   study_about    what it trains: the first paragraph of its --help
#   study_refuses  the run.sh options it sets itself, space separated (--stage --stop-stage ...), and
#   study_why      what it sets them to, for the line that refuses one
#   study_fixed    (an array, may be empty) run.sh options it always gives
#
# then declares each run.sh option it studies, `study_opt NAME DEFAULT "help"` (it goes to run.sh as
# --NAME VALUE, underscores as dashes), and calls `study_main "$@"`.

study_script=$(readlink -f "$0")
study_dir=$(dirname "$(dirname "$study_script")")  # the recipe: egs/<corpus>/<recipe>
prog="egs/$(basename "$(dirname "$study_dir")")/$(basename "$study_dir")/local/study.sh"
declare -a _study_opts=()
declare -A _study_help=()

study_opt() {
  _study_opts+=("$1")
  _study_help[$1]=$3
  printf -v "$1" '%s' "$2"
}

_study_fail() { echo "$prog: $*" >&2; exit 2; }

# _study_listed A B C: "A, B and C"
_study_listed() {
  local out=$1
  while [ $# -gt 2 ]; do shift; out+=", $1"; done
  [ $# -lt 2 ] || out+=" and $2"
  echo "$out"
}

_study_usage() {
  local name
  cat <<EOF
Usage: $prog [options] [run.sh options]

$study_about
Any other option goes to run.sh as it is (${prog%/local/study.sh}/run.sh --help);
$(_study_listed $study_refuses) are the study's to set.

Options (with the values they have now):
EOF
  for name in "${_study_opts[@]}"; do
    printf '  --%-16s %s (now: %s)\n' "${name//_/-} V" "${_study_help[$name]}" "${!name}"
  done
  printf '  --%-16s %s (now: %s)\n' "findings F" "the findings spec" \
    "${study_findings:-\$KDST_ROOT/docs/results/findings/$study_name.yaml}"
  printf '  --%-16s %s (now: %s)\n' "out F" "the document to write, the chart beside it as .png" \
    "${study_out:-\$KDST_ROOT/docs/results/$study_name.md}"
}

# _study_quote ARG: ARG as a shell reads it back, quoted only where it needs to be (the command in the document)
_study_quote() {
  if [[ $1 =~ ^[][A-Za-z0-9_./=:,+@%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# _study_parse "$@": the study's options into their variables, the rest into _study_forward
_study_parse() {
  local arg name value
  _study_forward=()
  study_findings="" study_out=""
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    name=${arg%%=*}
    case $arg in
      --help|-h) _study_usage; exit 0 ;;
      --*) ;;
      *) _study_forward+=("$arg"); continue ;;  # run.sh says what is wrong with it
    esac
    if [[ " $study_refuses " == *" $name "* ]]; then _study_fail "$name: the study sets it ($study_why)"; fi
    local var=${name#--}
    var=${var//-/_}
    if [ "$var" != findings ] && [ "$var" != out ] && [ -z "${_study_help[$var]+set}" ]; then
      _study_forward+=("$arg")  # every run.sh option takes a value: it goes along, whatever it looks like
      if [[ $arg != *=* ]] && [ $# -gt 0 ]; then _study_forward+=("$1"); shift; fi
      continue
    fi
    if [[ $arg == *=* ]]; then
      value=${arg#*=}
    else
      [ $# -gt 0 ] || _study_fail "option $arg needs a value (see --help)"
      value=$1
      shift
    fi
    case $var in
      findings) study_findings=$(readlink -m "$value") ;;  # from where the study was started
      out) study_out=$(readlink -m "$value") ;;
      *) printf -v "$var" '%s' "$value" ;;
    esac
  done
}

# study_main "$@": parse the options, run ./run.sh with the study's options, log the invocation, write the report
study_main() {
  local command=$prog arg name
  for arg in "$@"; do command+=" $(_study_quote "$arg")"; done
  _study_parse "$@"
  cd "$study_dir"
  . ./path.sh
  local findings=${study_findings:-$KDST_ROOT/docs/results/findings/$study_name.yaml}
  local out=${study_out:-$KDST_ROOT/docs/results/$study_name.md}
  [ -f "$findings" ] || _study_fail "--findings $findings: not found"
  [[ $out == *.md ]] || _study_fail "--out $out: a markdown file (.md); the chart goes beside it"
  local -a studied=()
  for name in "${_study_opts[@]}"; do studied+=("--${name//_/-}" "${!name}"); done

  # what the invocation log's line says of the machine and the checkout, taken as the study starts
  local registered="" commit cpu mem_kb cores started start_s
  [ -f exp/systems.json ] && registered=$(kdst systems list --names --exp-dir exp)
  commit=$(git -C "$KDST_ROOT" rev-parse HEAD 2>/dev/null) || commit="unknown (not a git checkout)"
  if [ -n "$(git -C "$KDST_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit+=" (with uncommitted changes)"
  fi
  cpu=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^[[:space:]]*//') || true
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null) || true
  cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys them; the machine does not
  started=$(date -Iseconds)
  start_s=$(date +%s)

  # run.sh leads a process group of its own, so that a signal here stops all of it: a bash killed alone
  # leaves the students it trains side by side running
  _study_child=""
  trap '[ -z "$_study_child" ] || kill -TERM -- "-$_study_child" 2>/dev/null || true' INT TERM
  set -m
  ./run.sh "${_study_forward[@]}" "${study_fixed[@]}" "${studied[@]}" </dev/null &
  _study_child=$!
  set +m
  local status=0
  while :; do
    if wait "$_study_child"; then status=0; break; else status=$?; fi
    kill -0 "$_study_child" 2>/dev/null || break  # ended; else a signal interrupted the wait, and it is stopping
  done
  _study_child=""
  if [ -d exp ]; then  # a line per invocation that ran something
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$started" "$(($(date +%s) - start_s))" "$status" "$commit" \
      "$cores" "${cpu//$'\t'/ }" "${mem_kb:-0}" "$(echo $registered)" "$command" >>exp/study.tsv
  fi
  if [ "$status" -ne 0 ]; then
    [ "$status" -eq 2 ] || echo "$prog: the recipe stopped with exit status $status (its log above); started" \
      "again with the same options, the study continues where it stopped" >&2
    exit "$status"
  fi
  kdst study-report --exp-dir exp --findings "$findings" --invocations exp/study.tsv --out "$out"
}
