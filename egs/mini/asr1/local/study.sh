#!/usr/bin/env bash
# The mini ASR compression study (issue 18): the small student of the references (gold), of the teacher's
# 1-best, of its 5-best (one drawn per epoch, and all five weighted by the teacher's posterior) and of its
# distributions (word-level KD from its top-8 cache) under 3 seeds, written up as docs/results/mini_asr1.md
# beside a chart, docs/results/mini_asr1.png.
#
#   egs/mini/asr1/local/study.sh [--seeds "1 2 3"] [--student-modes "..."] [--findings F] [--out F] [run.sh options]
#
# 1. It runs ./run.sh --seeds "1 2 3" --student-modes "gold 1best nbest_sample nbest_weighted word" (the
#    modes of ./run.sh and word): every stage, 0-10, with these options after any other run.sh option
#    given here (--corpus-opts, --train-opts, ...), timing the wall clock.  What an earlier ./run.sh with
#    the same other options did is reused: stages 0-5 (data, teacher) are done, stages 6 and 7 (the
#    teacher's n-best, its top-k cache, the pseudo labels) run again because --student-modes is not
#    ./run.sh's, and the students of seed 1 (asr_small_gold, ...) are resumed at their end, not trained
#    again.  Measured on 2 cores (docs/results/mini_asr1.md, 2026-12-05): 51 minutes from nothing for
#    the 4 modes of ./run.sh (the teacher 13 minutes, 12 students two at a time 36), and 15 more for the
#    3 word students and the decoding of all 16 systems.  --student-modes "gold 1best nbest_expand
#    nbest_sample nbest_weighted word" adds the third N-best mode (about 5 minutes a seed).
# 2. It appends a line to exp/study.tsv, the invocation log: when it started, its wall time, its exit
#    status, the commit of this checkout, nproc, the CPU model, the RAM, the systems exp/systems.json
#    held when it started (reused), and the command (kdst/report/study.py: FIELDS).  A study that
#    stopped and was started again has a line per invocation; the report sums their wall times.
# 3. kdst study-report writes the document from exp/results.json (stage 10's kdst compression),
#    exp/systems.json, the log and the findings spec (docs/results/findings/mini_asr1.yaml): the command,
#    date, machine, commit and wall time; one row per student, WER and CER mean ± sd over the seeds with
#    their 95% confidence intervals and the p-value against asr_small_gold (each seed's run paired with
#    the gold student's run of that seed; marked at p < 0.05); the chart; and each published finding the
#    spec lists (the N-best students beat the 1-best one) with what the study measured and its verdict.
#
# Run it in the background and leave it (nohup egs/mini/asr1/local/study.sh > study.log 2>&1 &); a
# stopped study continues where it stopped when started again with the same options.  Killing this
# script (TERM, INT) stops the recipe under it.  The option handling, the log and the report:
# egs/TEMPLATE/utils/study.sh.
set -euo pipefail

study_name=mini_asr1
study_about="Trains the small ASR student on the references, the teacher's 1-best and its 5-best under several
seeds, then writes the study's document (kdst study-report)."
study_refuses="--stage --stop-stage"
study_why="every stage"
study_fixed=()
. "$(dirname "$(readlink -f "$0")")/../../../TEMPLATE/utils/study.sh"
study_opt seeds "1 2 3" "training seeds of every student"
study_opt student_modes "gold 1best nbest_sample nbest_weighted word" "the students, as run.sh --student-modes"
study_main "$@"
