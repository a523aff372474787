#!/usr/bin/env bash
# The main job: set up tools/venv if needed, then run the mini speech translation
# recipe (egs/mini/st1) end to end.  Options go to that recipe: ./run.sh --help
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
"$root/tools/install.sh"
exec "$root/egs/mini/st1/run.sh" "$@"
