#!/usr/bin/env bash
# Stage 0 of the mini recipe: synthesise the corpus (espeak-ng voices) in MuST-C layout, and
# (--num-mt-extra N) N extra sentence pairs of text for the MT teacher in $corpus_dir/mt_extra.
set -euo pipefail
corpus_dir=corpus tgt_lang=de num_train=2000 num_dev=100 num_test=200 utts_per_talk=20 seed=1 nj=2 num_mt_extra=0
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --tgt-lang) tgt_lang=$2 ;;
    --num-train) num_train=$2 ;;
    --num-dev) num_dev=$2 ;;
    --num-test) num_test=$2 ;;
    --utts-per-talk) utts_per_talk=$2 ;;
    --seed) seed=$2 ;;
    --nj) nj=$2 ;;
    --num-mt-extra) num_mt_extra=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
if [ "$tgt_lang" != de ]; then
  echo "$0: the synthetic corpus is English->German; --tgt-lang must be de" >&2
  exit 2
fi
kdst make-mini-corpus "$corpus_dir" --num-train "$num_train" --num-dev "$num_dev" \
  --num-test "$num_test" --utts-per-talk "$utts_per_talk" --seed "$seed" --nj "$nj"
if [ "$num_mt_extra" -gt 0 ]; then
  # The held-out sets' sentences stay out of the teacher's text, as they stay out of train.
  kdst make-mini-text "$corpus_dir/mt_extra" --num "$num_mt_extra" --seed "$seed" \
    --exclude "$corpus_dir"/en-de/data/{dev,tst-COMMON}/txt/*.en
fi
