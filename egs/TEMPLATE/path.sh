# Sourced by every recipe: puts kdst's venv on PATH and fixes the locale.
KDST_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
export KDST_ROOT
[ -d "$KDST_ROOT/tools/venv/bin" ] && export PATH=$KDST_ROOT/tools/venv/bin:$PATH
if ! command -v kdst >/dev/null 2>&1; then
  echo "kdst is not installed: run $KDST_ROOT/tools/install.sh" >&2
  exit 1
fi
export LC_ALL=C            # Kaldi sorting order
export PYTHONUNBUFFERED=1  # log lines appear as they are written
