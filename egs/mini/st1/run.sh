#!/usr/bin/env bash
# Mini speech translation recipe: a synthetic English->German corpus in the
# MuST-C layout, small enough for a laptop CPU.  Options: ./run.sh --help
# Seq-Inter chooses among st.sh's default 5 best (--nbest-beam/--nbest-size 5), for time; Kim & Rush
# chose among 35, as egs/mustc/st1 does.
# Every student starts from the ASR pre-trained encoder and the MT teacher's decoder (--pretrain yes
# --decoder-init mt; docs/results/mini_st1_pretraining.md): from scratch, 2,000 utterances do not teach
# a student to recognise and translate at once.  --pretrain both adds the students from scratch.
set -euo pipefail
cd "$(dirname "$0")"
exec ../../TEMPLATE/st.sh \
  --corpus-dir corpus --tgt-lang de --nj 2 \
  --corpus-opts "--num-train 2000 --num-dev 100 --num-test 200 --num-mt-extra 20000 --seed 1" \
  --mt-extra-sets corpus/mt_extra --student-jobs 2 --n-average 3 \
  --finetune-opts "--set train.epochs=3 --set optim.lr=5.0e-4 --set optim.warmup_steps=1 --set optim.schedule=constant" \
  --src-token-type bpe --src-vocab-size 300 \
  --tgt-token-type bpe --tgt-vocab-size 300 \
  --pretrain yes --decoder-init mt \
  "$@"
