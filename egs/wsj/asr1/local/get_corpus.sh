#!/usr/bin/env bash
# Stage 0 of the WSJ recipe: check that the LDC discs are there.  WSJ0 (LDC93S6B) and WSJ1
# (LDC94S13B) come from the LDC under licence, so kdst cannot download them.
set -euo pipefail
corpus_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
read -r -a dirs <<< "$corpus_dir"
[ "${#dirs[@]}" -gt 0 ] || { echo "$0: --corpus-dir is empty: pass the WSJ disc directories" >&2; exit 2; }
for dir in "${dirs[@]}"; do
  if [ ! -d "$dir" ]; then
    echo "$0: $dir: not a directory. Pass --corpus-dir \"<WSJ0 dir> <WSJ1 dir>\": the LDC93S6B and" \
      "LDC94S13B disc directories (11-1.1 ... 13-34.1) or their parents." >&2
    exit 1
  fi
done
echo "$0: WSJ directories: ${dirs[*]} (stage 1 finds the discs and checks the audio)" >&2
