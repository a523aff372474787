#!/usr/bin/env bash
# WSJ attention ASR compressed by sequence-level KD (Mun'im, Inoue & Shinoda 2019): a 29.6M-
# parameter Conformer teacher on train_si284 and students 9x (small) and 23x (tiny) smaller
# trained on its pseudo labels; characters, validation on test_dev93, the compression table on
# test_eval92.  --corpus-dir takes the WSJ0 (LDC93S6B) and WSJ1 (LDC94S13B) disc directories,
# or directories holding them, space separated.  Options: ./run.sh --help
# Whisper as the teacher (no stage-4 training; pseudo labels upper-cased, filtered at 10% WER;
# docs/HF_TEACHERS.md): ./run.sh --teacher hf:openai/whisper-small.en
# Decoding and the teacher's n-best use joint CTC/attention scores, weight 0.3 (ESPnet's WSJ setting;
# docs/DECODING.md); --ctc-weight 0 for the attention decoder alone.
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/asr.sh \
  --corpus-dir "/path/to/LDC93S6B /path/to/LDC94S13B" --nj 32 \
  --train-set train_si284 --dev-set test_dev93 --test-sets "test_dev93 test_eval92" \
  --report-set test_eval92 --speed-perturb 0.9,1.0,1.1 \
  --token-type char --max-len-ratio 1.0 \
  --student-sizes "small tiny" \
  --nbest-beam 10 --nbest-size 5 --n-average 10 --beam 10 --decode-nj 32 \
  --ctc-weight 0.3 \
  "$@"
