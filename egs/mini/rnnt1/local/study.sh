#!/usr/bin/env bash
# The mini RNN-T study (issue 18): students of the teacher's architecture ("same", self-training) and of a
# 3x smaller streaming one, each on the references (none), the teacher's 1-best (hard) and KD on the
# whole output lattice (soft-full), under 3 seeds, written up as docs/results/mini_rnnt1.md beside a
# chart, docs/results/mini_rnnt1.png.
#
#   egs/mini/rnnt1/local/study.sh [--seeds "1 2 3"] [--kd-modes "..."] [--findings F] [--out F] [run.sh options]
#
# The matrix it trains is the smallest that tests both findings of docs/results/findings/mini_rnnt1.yaml
# (Hwang et al. 2022: hard targets beat soft ones for a student of another architecture, soft beat hard
# in self-training): hard and soft-full for both architectures, and none, the references, which is each
# column's baseline in the matrix.  soft-collapsed and hard+soft test no finding; --kd-modes "none hard
# soft-full soft-collapsed hard+soft" adds them (2 x 2 more students a seed).  The noisy-student
# generation of ./run.sh (ns_gen1, a row of the spec) is trained once: it has no seeds.
#
# 1. It runs ./run.sh --seeds "1 2 3" --kd-modes "none hard soft-full": every stage, 0-10, with these
#    options after any other run.sh option given here (--corpus-opts, --student-opts, ...), timing the
#    wall clock.  What an earlier ./run.sh with the same other options did is reused: stages 0-5 (data,
#    teacher) are done, stage 6 (the teacher's n-best on the training set, about a minute) runs again
#    because --kd-modes is not ./run.sh's, and the students of seed 1 (rnnt_same_none, ...) and ns_gen1
#    are resumed at their end, not trained again.  So after ./run.sh the study trains 12 students (seeds 2
#    and 3 of 2 architectures x 3 modes, two at a time) and decodes them: about 15 minutes on 2 idle
#    cores, estimated from the README's timing of ./run.sh (21 minutes for the teacher, 10 students and
#    the noisy student, about a minute of wall clock per student); about 35 minutes for the whole study
#    from nothing (18 students).
# 2. It appends a line to exp/study.tsv, the invocation log: when it started, its wall time, its exit
#    status, the commit of this checkout, nproc, the CPU model, the RAM, the systems exp/systems.json
#    held when it started (reused), and the command (kdst/report/study.py: FIELDS).  A study that
#    stopped and was started again has a line per invocation; the report sums their wall times.
# 3. kdst study-report writes the document from exp/results.json (stage 10's kdst results), exp/systems.json,
#    the log and the findings spec: the command, date, machine, commit and wall time; one row per student,
#    WER and CER mean ± sd over the seeds with their 95% confidence intervals; the chart; and each
#    finding with what the study measured (the paired bootstrap of the two students' hypotheses, each
#    seed's run paired with the other student's run of that seed) and its verdict.
#
# Run it in the background and leave it (nohup egs/mini/rnnt1/local/study.sh > study.log 2>&1 &); a
# stopped study continues where it stopped when started again with the same options.  Killing this
# script (TERM, INT) stops the recipe under it.  The option handling, the log and the report:
# egs/TEMPLATE/utils/study.sh.
set -euo pipefail

study_name=mini_rnnt1
study_about="Trains RNN-T students of two architectures on the references, hard and soft targets under several
seeds, then writes the study's document (kdst study-report)."
study_refuses="--stage --stop-stage"
study_why="every stage"
study_fixed=()
. "$(dirname "$(readlink -f "$0")")/../../../TEMPLATE/utils/study.sh"
study_opt seeds "1 2 3" "training seeds of every student"
study_opt kd_modes "none hard soft-full" "the students of each architecture, as run.sh --kd-modes"
study_main "$@"
