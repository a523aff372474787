#!/usr/bin/env bash
# The mini ST study (issue 18): every ST student -- --kd-modes "none word seqkd seqinter" and the word-KD
# students fine-tuned on gold -- from scratch and with the ASR pre-trained encoder, under 3 seeds,
# written up as docs/results/mini_st1.md beside a chart, docs/results/mini_st1.png.
#
#   egs/mini/st1/local/study.sh [--seeds "1 2 3"] [--kd-modes "..."] [--findings F] [--out F] [run.sh options]
#
# 1. It runs ./run.sh --pretrain both --seeds "1 2 3" --kd-modes "none word seqkd seqinter": every
#    stage, 0-12, with these options after any other run.sh option given here (--corpus-opts,
#    --train-opts, ...), timing the wall clock.  What an earlier ./run.sh with the same other options
#    did is reused: the data stages (0-3) are done already; stage 4's MT teacher and ASR pre-training
#    model, trained already, are resumed at their end; stages 5-8 (teacher decoding, top-k cache, n-best,
#    rescoring: about a minute) run again because stage 4's options changed; and every student already
#    trained (seed 1, pre-trained: st_pt, st_pt_word, ...) is resumed at its end, not trained again.  So
#    the study trains the students from scratch, seeds 2 and 3 of the pre-trained ones and the fine-tuned
#    copies: 5 times the students of ./run.sh, about an hour on 2 cores.
# 2. It appends a line to exp/study.tsv, the invocation log: when it started, its wall time, its exit
#    status, the commit of this checkout, nproc, the CPU model, the RAM, the systems exp/systems.json
#    held when it started (reused), and the command (kdst/report/study.py: FIELDS).  A study that
#    stopped and was started again has a line per invocation; the report sums their wall times.
# 3. kdst study-report writes the document from exp/results.json, exp/systems.json, the log and the
#    findings spec (docs/results/findings/mini_st1.yaml): the command, date, machine, commit and wall
#    time; one row per student, BLEU and chrF mean ± sd over the seeds with their 95% confidence
#    intervals, the length ratio, and the p-value against st_none (marked at p < 0.05); the chart;
#    and each published finding the spec lists with what the study measured and its verdict.
#
# Run it in the background and leave it (nohup egs/mini/st1/local/study.sh > study.log 2>&1 &); a
# stopped study continues where it stopped when started again with the same options.  Killing this
# script (TERM, INT) stops the recipe under it.  The option handling, the log and the report:
# egs/TEMPLATE/utils/study.sh.
set -euo pipefail

study_name=mini_st1
study_about="Trains every ST student with and without ASR pre-training under several seeds (run.sh --pretrain both),
then writes the study's document (kdst study-report)."
study_refuses="--pretrain --stage --stop-stage --finetune"
study_why="--pretrain both, every stage, fine-tuning of the word-KD students"
study_fixed=(--pretrain both --finetune yes)
. "$(dirname "$(readlink -f "$0")")/../../../TEMPLATE/utils/study.sh"
study_opt seeds "1 2 3" "training seeds of every student"
study_opt kd_modes "none word seqkd seqinter" "the students, as run.sh --kd-modes"
study_main "$@"
