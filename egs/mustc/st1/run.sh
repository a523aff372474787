#!/usr/bin/env bash
# MuST-C v1.0 speech translation recipe (English -> --tgt-lang, default de).
# Point --corpus-dir at the directory holding en-de/ (or MUSTC_v1.0_en-de.tar.gz).
# En-It: --tgt-lang it (the corpus dir then holds en-it/).  Options: ./run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/st.sh \
  --corpus-dir /path/to/must-c --tgt-lang de --nj 32 \
  --speed-perturb 0.9,1.0,1.1 \
  --src-token-type bpe --src-vocab-size 8000 \
  --tgt-token-type bpe --tgt-vocab-size 8000 \
  --decode-nj 32 --nbest-beam 8 --nbest-size 8 \
  "$@"
