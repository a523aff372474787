#!/usr/bin/env bash
# Mini RNN-T distillation recipe: the synthetic English speech of the mini corpus (MuST-C layout,
# espeak-ng voices), 600 training utterances, transcribed by a 0.76M-parameter Conformer transducer
# teacher and distilled into students of its own architecture ("same": self-training) and a 3x
# smaller streaming one, with hard targets (its 1-best), soft targets (KD on the output lattice,
# full or collapsed) or both, plus one noisy-student generation: stages 0-10 within about 30
# minutes on 2 CPU cores, which leaves the students 8 epochs each, about half the teacher's
# updates (--student-opts "--set train.epochs=N" for better students).  Options: ./run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/rnnt.sh \
  --corpus-dir corpus --nj 2 \
  --corpus-opts "--num-train 600 --num-dev 100 --num-test 200 --seed 1" \
  --train-set train --dev-set dev --test-sets tst-COMMON \
  --token-type bpe --vocab-size 100 \
  --student-archs "same streaming" --student-jobs 2 --n-average 2 \
  --nbest-beam 4 --beam 4 --decode-nj 2 \
  --ns-iterations 1 --ns-mode hard+soft --ns-min-confidence 0.2 \
  "$@"
