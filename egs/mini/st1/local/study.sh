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
#    did is reused: the data stages (0-3) are done already; stage 4 adds the ASR pre-training model
#    (the MT teacher, trained already, is resumed at its end); stages 5-8 (teacher decoding, top-k
#    cache, n-best, rescoring: about a minute) run again because stage 4 changed; and every student
#    already trained (seed 1 from scratch: st_none, st_word, ...) is resumed at its end, not trained
#    again.  So the study trains the ASR model, the pre-trained students, seeds 2 and 3 of every
#    student and their fine-tuned copies: 6 times the students of ./run.sh, a few hours on 2 cores.
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
# script (TERM, INT) stops the recipe under it.
set -euo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
recipe_dir=$(dirname "$(dirname "$script")")
recipe="egs/$(basename "$(dirname "$recipe_dir")")/$(basename "$recipe_dir")"
prog=$recipe/local/study.sh

fail() { echo "$prog: $*" >&2; exit 2; }

usage() {
  cat <<EOF
Usage: $prog [options] [run.sh options]

Trains every ST student with and without ASR pre-training under several seeds (run.sh --pretrain both),
then writes the study's document (kdst study-report).  Any other option goes to run.sh as it is
($recipe/run.sh --help); --pretrain, --stage, --stop-stage and --finetune are the study's to set.

Options (with the values they have now):
  --seeds V       training seeds of every student (now: $seeds)
  --kd-modes V    the students, as run.sh --kd-modes (now: $kd_modes)
  --findings F    the findings spec (now: ${findings:-\$KDST_ROOT/docs/results/findings/mini_st1.yaml})
  --out F         the document to write, the chart beside it as .png (now: ${out:-\$KDST_ROOT/docs/results/mini_st1.md})
EOF
}

# quote ARG: ARG as a shell reads it back, quoted only where it needs to be (the command in the document)
quote() {
  if [[ $1 =~ ^[][A-Za-z0-9_./=:,+@%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

seeds="1 2 3"
kd_modes="none word seqkd seqinter"
findings=""
out=""
forward=()
command=$prog
for arg in "$@"; do command+=" $(quote "$arg")"; done
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case $arg in
    --help|-h) usage; exit 0 ;;
    --pretrain|--pretrain=*|--stage|--stage=*|--stop-stage|--stop-stage=*|--finetune|--finetune=*)
      fail "${arg%%=*}: the study sets it (--pretrain both, every stage, fine-tuning of the word-KD students)" ;;
    --seeds=*|--kd-modes=*|--findings=*|--out=*) value=${arg#*=}; arg=${arg%%=*} ;;
    --seeds|--kd-modes|--findings|--out)
      [ $# -gt 0 ] || fail "option $arg needs a value (see --help)"
      value=$1
      shift ;;
    --*=*) forward+=("$arg"); continue ;;
    --*)  # every run.sh option takes a value: it goes along, whatever it looks like
      forward+=("$arg")
      if [ $# -gt 0 ]; then forward+=("$1"); shift; fi
      continue ;;
    *) forward+=("$arg"); continue ;;  # run.sh says what is wrong with it
  esac
  case $arg in
    --seeds) seeds=$value ;;
    --kd-modes) kd_modes=$value ;;
    --findings) findings=$(readlink -m "$value") ;;
    --out) out=$(readlink -m "$value") ;;
  esac
done

cd "$recipe_dir"
. ./path.sh
findings=${findings:-$KDST_ROOT/docs/results/findings/mini_st1.yaml}
out=${out:-$KDST_ROOT/docs/results/mini_st1.md}
[ -f "$findings" ] || fail "--findings $findings: not found"
[[ $out == *.md ]] || fail "--out $out: a markdown file (.md); the chart goes beside it"
log=exp/study.tsv

registered=""
[ -f exp/systems.json ] && registered=$(kdst systems list --names --exp-dir exp)
commit=$(git -C "$KDST_ROOT" rev-parse HEAD 2>/dev/null) || commit="unknown (not a git checkout)"
if [ -n "$(git -C "$KDST_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit+=" (with uncommitted changes)"
fi
cpu=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^[[:space:]]*//') || true
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null) || true
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys them; the machine does not
started=$(date -Iseconds)
start_s=$(date +%s)

# record_invocation EXIT_STATUS: the line of this invocation in the log (once; not when nothing ran)
recorded=""
record_invocation() {
  [ -z "$recorded" ] && [ -d exp ] || return 0
  recorded=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$started" "$(($(date +%s) - start_s))" "$1" "$commit" "$cores" \
    "${cpu//$'\t'/ }" "${mem_kb:-0}" "$(echo $registered)" "$command" >>"$log"
}

# run.sh leads a process group of its own, so that a signal here stops all of it: a bash killed alone
# leaves the students it trains side by side running
child=""
stop() { [ -z "$child" ] || kill -TERM -- "-$child" 2>/dev/null || true; }
trap stop INT TERM
set -m
./run.sh "${forward[@]}" --pretrain both --seeds "$seeds" --kd-modes "$kd_modes" --finetune yes </dev/null &
child=$!
set +m
status=0
while :; do
  if wait "$child"; then status=0; break; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break  # ended; else a signal interrupted the wait, and it is stopping
done
child=""
record_invocation "$status"
if [ "$status" -ne 0 ]; then
  [ "$status" -eq 2 ] || echo "$prog: the recipe stopped with exit status $status (its log above); started" \
    "again with the same options, the study continues where it stopped" >&2
  exit "$status"
fi
kdst study-report --exp-dir exp --findings "$findings" --invocations "$log" --out "$out"
