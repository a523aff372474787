#!/usr/bin/env bash
# Stage 0 of the mini RNN-T recipe: synthesise the corpus (espeak-ng voices) in MuST-C layout;
# the RNN-T recipe uses its English speech and transcripts (as egs/mini/asr1).
set -euo pipefail
corpus_dir=corpus num_train=2000 num_dev=100 num_test=200 utts_per_talk=20 seed=1 nj=2
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --num-train) num_train=$2 ;;
    --num-dev) num_dev=$2 ;;
    --num-test) num_test=$2 ;;
    --utts-per-talk) utts_per_talk=$2 ;;
    --seed) seed=$2 ;;
    --nj) nj=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
kdst make-mini-corpus "$corpus_dir" --num-train "$num_train" --num-dev "$num_dev" \
  --num-test "$num_test" --utts-per-talk "$utts_per_talk" --seed "$seed" --nj "$nj"
