#!/usr/bin/env bash
# Times the data stages (0-3) of the mini ST recipe at its default size, in a private
# copy of the recipe so egs/mini/st1 is left alone, and prints a Markdown table.
#   bench/data_stages.sh [extra recipe options]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/egs/mini"
ln -s "$root/egs/TEMPLATE" "$work/egs/TEMPLATE"
mkdir "$work/egs/mini/st1"
# The recipe's own files, not the outputs of an earlier run.
tar -C "$root/egs/mini/st1" --exclude=./corpus --exclude=./data --exclude=./dump --exclude=./exp \
  --exclude=./.stages -cf - . | tar -C "$work/egs/mini/st1" -xf -
export PATH=$root/tools/venv/bin:$PATH
start=$SECONDS
"$work/egs/mini/st1/run.sh" --stop-stage 3 "$@" >"$work/log" 2>&1
total=$((SECONDS - start))
audio_h=$(python3 -c "import json; print(json.load(open('$work/egs/mini/st1/corpus/en-de/.complete'))['stats']['total_hours'])" \
  2>/dev/null || echo "?")
echo "| stage | seconds |"
echo "|---|---|"
sed -n 's/.*stage \([0-9]*\): finished in \([0-9]*\) s/| \1 | \2 |/p' "$work/log"
echo "| total | $total |"
echo
echo "speech synthesised: $audio_h h; $(nproc) cores; $(date -u '+%F')"
