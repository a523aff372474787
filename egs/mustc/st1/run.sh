#!/usr/bin/env bash
# MuST-C v1.0 speech translation recipe (English -> --tgt-lang, default de).
# Point --corpus-dir at the directory holding en-de/ (or MUSTC_v1.0_en-de.tar.gz).
# En-It: --tgt-lang it (the corpus dir then holds en-it/).  Options: ./run.sh --help
# Seq-Inter chooses among the MT teacher's 35 best, as Kim & Rush (2016) did (--nbest-beam 35
# --nbest-size 35; st.sh's default is 5).  The n-best stage costs about 7x a beam-5 decoding, and
# Seq-KD then trains on the beam-35 1-best (theirs was beam 5): --nbest-beam 5 --nbest-size 5 for both.
# Every student starts from an ASR-pre-trained encoder (--pretrain yes, conf/train_asr.yaml), as
# ESPnet's MuST-C recipes do; --pretrain both adds the students from scratch for the comparison.
# A pretrained MT teacher instead of stage 4's (docs/HF_TEACHERS.md; fetched into the HF cache beforehand):
#   ./run.sh --teacher hf:Helsinki-NLP/opus-mt-en-de
#   ./run.sh --teacher hf:facebook/nllb-200-distilled-600M,src=eng_Latn,tgt=deu_Latn
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/st.sh \
  --corpus-dir /path/to/must-c --tgt-lang de --nj 32 \
  --speed-perturb 0.9,1.0,1.1 \
  --src-token-type bpe --src-vocab-size 8000 \
  --tgt-token-type bpe --tgt-vocab-size 8000 \
  --decode-nj 32 --nbest-beam 35 --nbest-size 35 \
  --pretrain yes \
  "$@"
