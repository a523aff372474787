# Option handling for kdst recipes (source it; bash only).
#
#   opt NAME DEFAULT "help text" [TYPE]   declare an option --NAME (underscores become dashes)
#   parse_options "$@"                    set them from --name VALUE / --name=VALUE; --help prints them
#
# Later occurrences win, so a corpus run.sh can pass its own defaults first
# and the user's options after them.  An unknown option, a missing value or a stray
# argument is an error (exit 2), and so is a value that is not of the option's TYPE:
#   int    a whole number, 0 or more          count  a whole number, 1 or more
#   num    a decimal number (-0.5, 1, 2.0e-3)
# A TYPE ending in '?' (count?) also accepts the empty string (an option that may be unset).
# Each error is one line naming the option, before anything is run or written.

declare -a _kdst_opt_names=()
declare -A _kdst_opt_help=() _kdst_opt_type=()
prog=${prog:-$0}  # the name messages give the script
usage_header=${usage_header:-"Usage: $prog [options]"}

opt() {
  case ${4:-} in
    ""|int|int\?|count|count\?|num|num\?) ;;
    *) echo "opt $1: unknown type '$4' (int, count or num, with an optional '?')" >&2; exit 2 ;;
  esac
  _kdst_opt_names+=("$1")
  _kdst_opt_help[$1]=$3
  _kdst_opt_type[$1]=${4:-}
  printf -v "$1" '%s' "$2"
}

_kdst_print_help() {
  echo "$usage_header"
  echo
  echo "Options (with the values they have now):"
  local name
  for name in "${_kdst_opt_names[@]}"; do
    printf '  --%-22s %s\n' "${name//_/-}" "${_kdst_opt_help[$name]}"
    printf '  %-24s (now: %s)\n' "" "${!name}"
  done
}

# usage_error MESSAGE: one line on stderr, exit 2 (a usage error, as for unknown options).
usage_error() { echo "$prog: $*" >&2; exit 2; }

# _kdst_check_type NAME: the option's value is of its declared type, or a usage error.
_kdst_check_type() {
  local name=$1 type=${_kdst_opt_type[$1]} value=${!1}
  [ -n "$type" ] || return 0
  if [[ $type == *\? ]]; then
    [ -n "$value" ] || return 0
    type=${type%\?}
  fi
  case $type in
    int|count)
      [[ $value =~ ^[0-9]+$ ]] || usage_error "--${name//_/-} '$value': not a whole number (see --help)"
      printf -v "$name" '%d' $((10#$value))  # 08 -> 8: shell arithmetic would read 08 as octal
      [ "$type" = int ] || [ "${!name}" -ge 1 ] || usage_error "--${name//_/-} $value: must be at least 1"
      ;;
    num)
      [[ $value =~ ^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] ||
        usage_error "--${name//_/-} '$value': not a number (see --help)" ;;
  esac
}

parse_options() {
  local want_help=false arg name value
  while [ $# -gt 0 ]; do
    arg=$1; shift
    case $arg in
      --help|-h) want_help=true; continue ;;
      --|--=*) usage_error "unexpected argument '$arg' (see --help)" ;;
      --*=*) name=${arg%%=*} ;;
      --*) name=$arg ;;
      *) usage_error "unexpected argument '$arg' (see --help)" ;;
    esac
    name=${name#--}; name=${name//-/_}
    # the name first: an unknown option is reported as such, also when no value follows it
    if [[ ! $name =~ ^[A-Za-z0-9_]+$ ]] || [ -z "${_kdst_opt_help[$name]+set}" ]; then
      usage_error "unknown option --${name//_/-} (see --help)"
    fi
    if [[ $arg == --*=* ]]; then
      value=${arg#*=}
    else
      [ $# -gt 0 ] || usage_error "option $arg needs a value (see --help)"
      value=$1; shift
    fi
    printf -v "$name" '%s' "$value"
  done
  if $want_help; then _kdst_print_help; exit 0; fi
  for name in "${_kdst_opt_names[@]}"; do _kdst_check_type "$name"; done
}
