#!/usr/bin/env bash
# Stage 1 of the WSJ recipe: LDC discs -> Kaldi data dirs (Kaldi's sets) + data/nlsyms.txt.
# usage: local/prepare_data.sh --corpus-dir "<dir1> <dir2> ..." [--out-dir data] [--sets a,b,c]
# Each corpus dir is a disc (11-13.1, 13-34.1, ...) or holds discs (LDC93S6B/, LDC94S13B/).
set -euo pipefail
corpus_dir="" out_dir=data sets=train_si284,test_dev93,test_eval92
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --out-dir) out_dir=$2 ;;
    --sets) sets=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is required (the WSJ discs)" >&2; exit 2; }
read -r -a dirs <<< "$corpus_dir"  # several directories, separated by spaces
kdst prep-wsj "${dirs[@]}" --out-dir "$out_dir" --sets "$sets"
set_dirs=()
for set in ${sets//,/ }; do set_dirs+=("$out_dir/$set"); done
kdst validate-data --no-audio "${set_dirs[@]}"
