#!/usr/bin/env bash
# Sets kdst up (tools/install.sh) and runs the test suite; arguments go to pytest,
# e.g. tools/test.sh -m "not slow" or tools/test.sh test/data.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/install.sh" || exit
cd "$root" || exit
"$root/tools/venv/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then  # pytest: no test was collected (e.g. a -k that matches nothing)
  echo "tools/test.sh: no tests were collected" >&2
  exit 0
fi
exit "$status"
