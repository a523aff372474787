#!/usr/bin/env bash
# Stage 1 of the LibriSpeech RNN-T recipe: LibriSpeech/ -> Kaldi data dirs named as Kaldi names
# them (train_960, dev_clean, test_other, ...), transcripts as released (upper case).
# usage: local/prepare_data.sh --corpus-dir DIR [--out-dir data] [--sets train_960,dev_clean,...]
#          [--unlabelled AUDIO_DIR --unlabelled-name NAME]
# A set is a part (dev_clean or dev-clean) or a combination of the training parts: train_960
# (all three), train_clean_460 (the clean ones).  --unlabelled prepares every .flac/.wav below
# AUDIO_DIR (e.g. Libri-Light) as data/NAME without text: the noisy student's unlabelled pool.
set -euo pipefail
corpus_dir="" out_dir=data sets=train_960,dev_clean,dev_other,test_clean,test_other
unlabelled="" unlabelled_name=unlab
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --out-dir) out_dir=$2 ;;
    --sets) sets=$2 ;;
    --unlabelled) unlabelled=$2 ;;
    --unlabelled-name) unlabelled_name=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is required (the LibriSpeech directory)" >&2; exit 2; }
parts=()
for set in ${sets//,/ }; do
  case $set in
    train_960) parts+=(train-clean-100 train-clean-360 train-other-500) ;;
    train_clean_460) parts+=(train-clean-100 train-clean-360) ;;
    *) parts+=("${set//_/-}") ;;
  esac
done
parts_csv=$(printf '%s\n' "${parts[@]}" | awk '!seen[$0]++' | paste -sd,)
extra=()
[ -z "$unlabelled" ] || extra=(--unlabelled "$unlabelled" --unlabelled-name "$unlabelled_name")
kdst prep-librispeech "$corpus_dir" --out-dir "$out_dir" --parts "$parts_csv" --combine-train auto "${extra[@]}"
for set in ${sets//,/ }; do
  [ -s "$out_dir/$set/wav.scp" ] || { echo "$0: $out_dir/$set was not prepared (parts: $parts_csv)" >&2; exit 1; }
done
