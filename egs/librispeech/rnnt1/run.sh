#!/usr/bin/env bash
# LibriSpeech RNN-T distillation (Hwang, Sim, Zhang & Strohman 2022): a 77M-parameter non-streaming
# Conformer transducer teacher on train_960 (speed-perturbed), BPE 500, distilled into students of
# its own architecture ("same": self-training, where soft targets should win) and a 21M-parameter
# streaming one ("streaming", 640 ms chunks: where hard targets should win), with hard targets,
# soft targets (full or collapsed lattice KD) or both, and two noisy-student generations.  GPUs:
# set cmd.sh for the cluster.  --corpus-dir is LibriSpeech/ (openslr.org/12) or its parent.
# An unlabelled pool for the noisy students (e.g. Libri-Light):
#   ./run.sh --ns-unlabelled-dir /path/to/librilight/small --ns-unlabelled-set unlab
# Options: ./run.sh --help
# Whisper's hard targets instead of stage 4's teacher (no lattice: hard targets only; docs/HF_TEACHERS.md):
#   ./run.sh --teacher hf:openai/whisper-small.en --kd-modes "none hard" --ns-iterations 0
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/rnnt.sh \
  --corpus-dir /path/to/LibriSpeech --nj 32 \
  --train-set train_960 --dev-set dev_clean --test-sets "dev_other test_clean test_other" \
  --report-set test_other --speed-perturb 0.9,1.0,1.1 \
  --token-type bpe --vocab-size 500 \
  --student-archs "same streaming" --student-jobs 1 \
  --kd-weight 0.5 --kd-temperature 1.0 \
  --nbest-beam 4 --beam 4 --n-average 10 --decode-nj 32 \
  --ns-iterations 2 --ns-mode soft --ns-min-confidence 0.5 \
  "$@"
