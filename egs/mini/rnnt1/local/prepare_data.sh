#!/usr/bin/env bash
# Stage 1 of the mini RNN-T recipe: the MuST-C layout -> Kaldi data dirs whose text is the
# English transcript, lower-cased without punctuation (the translation stays in text.de).
# usage: local/prepare_data.sh [--corpus-dir corpus] [--out-dir data] [--sets train,dev,tst-COMMON]
# The mini corpus has no unlabelled pool: for noisy-student training on one, put a data dir
# without text under data/ and pass --ns-unlabelled-set (run.sh), leaving --ns-unlabelled-dir empty.
set -euo pipefail
corpus_dir=corpus out_dir=data sets=train,dev,tst-COMMON
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --out-dir) out_dir=$2 ;;
    --sets) sets=$2 ;;
    --unlabelled|--unlabelled-name)
      echo "$0: the mini corpus has no unlabelled audio tree: leave --ns-unlabelled-dir empty" >&2; exit 2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
kdst prep-mustc "$corpus_dir" "$out_dir" --tgt-lang de --task asr --splits "$sets"
