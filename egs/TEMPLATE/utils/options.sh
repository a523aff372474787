# Option handling for kdst recipes (source it; bash only).
#
#   opt NAME DEFAULT "help text"     declare an option --NAME (underscores become dashes)
#   parse_options "$@"               set them from --name VALUE / --name=VALUE; --help prints them
#
# Later occurrences win, so a corpus run.sh can pass its own defaults first
# and the user's options after them.  An unknown option is an error.

declare -a _kdst_opt_names=()
declare -A _kdst_opt_help=()
prog=${prog:-$0}  # the name messages give the script
usage_header=${usage_header:-"Usage: $prog [options]"}

opt() {
  _kdst_opt_names+=("$1")
  _kdst_opt_help[$1]=$3
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

parse_options() {
  local want_help=false arg name value
  while [ $# -gt 0 ]; do
    arg=$1; shift
    case $arg in
      --help|-h) want_help=true; continue ;;
      --*=*) name=${arg%%=*}; value=${arg#*=} ;;
      --*)
        name=$arg
        if [ $# -eq 0 ]; then echo "$prog: option $arg needs a value (see --help)" >&2; exit 2; fi
        value=$1; shift ;;
      *) echo "$prog: unexpected argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
    name=${name#--}; name=${name//-/_}
    if [ -z "${_kdst_opt_help[$name]+set}" ]; then
      echo "$prog: unknown option --${name//_/-} (see --help)" >&2; exit 2
    fi
    printf -v "$name" '%s' "$value"
  done
  if $want_help; then _kdst_print_help; exit 0; fi
}
