#!/usr/bin/env bash
# Mini ASR compression recipe: the synthetic English speech of the mini corpus (MuST-C layout,
# espeak-ng voices) transcribed by a 5.7M-parameter teacher, whose pseudo labels train students
# 16x and 27x smaller, on a laptop CPU in minutes.  Options: ./run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/asr.sh \
  --corpus-dir corpus --nj 2 \
  --corpus-opts "--num-train 2000 --num-dev 100 --num-test 200 --seed 1" \
  --train-set train --dev-set dev --test-sets tst-COMMON \
  --token-type bpe --vocab-size 300 \
  --student-sizes "small" --student-jobs 2 --n-average 3 \
  "$@"
