#!/usr/bin/env bash
# RNN transducers distilled with hard or soft targets (Hwang, Sim, Zhang & Strohman 2022,
# arXiv 2210.05793): the stages shared by every RNN-T corpus.
#
# A corpus recipe (egs/<corpus>/rnnt1/run.sh) calls this script with its own defaults
# followed by the user's options.  It runs from the recipe directory, which provides
# cmd.sh, path.sh, local/get_corpus.sh and local/prepare_data.sh.
#
#   0 corpus (mini: synthesise it)      1 data prep -> data/{<train>,<dev>,<test sets>}
#   2 features + global CMVN            3 tokenizer
#   4 teacher training (conf/train_teacher.yaml, non-streaming) -> exp/rnnt_teacher
#   5 teacher evaluation (beam search on dev + test sets, WER/CER)
#   6 hard targets: the teacher's n-best on the training set -> data/<train>/text.1best, or a
#     subset data/<train>_pl/ where utterances are dropped (--min-confidence, an empty 1-best)
#   7 students: every --student-archs entry x every --kd-modes entry -> exp/rnnt_<arch>_<mode>
#   8 noisy-student iterations -> exp/ns_gen1 .. exp/ns_gen<N>
#   9 decoding of every system on the test sets (same beam, jobs and threads)
#   10 scoring -> exp/results.json, exp/RESULTS.md + the modes x architectures matrix
#      (exp/rnnt_matrix.json, exp/rnnt_matrix.png)
#
# KD modes (conf/train_student_<arch>.yaml is the same for all; a mode only adds --set options):
#   none            the references (the baseline of its column)
#   hard            the teacher's 1-best (data.text=text.1best), validated on the references
#   soft-full       references + KD on the whole output lattice from the online teacher
#   soft-collapsed  the same, distributions collapsed to {label, blank, rest}
#   hard+soft       the 1-best + KD (--hard-soft-mode full|collapsed)
# Soft KD is (1 - w) RNN-T per token + w (lattice KL sum / its nodes): --kd-normalize nodes, the mean KL
# per node, so w = 0.5 is alpha ~ 1 / (mean encoder frames) in the papers' RNN-T + alpha sum_{t,u} KL
# (each recipe's conf/train_student_*.yaml states its mapping; docs/KD_METHODS.md, "Transducer KD").
# System dirs spell the modes without '+' and '-': rnnt_<arch>_{none,hard,soft_full,soft_collapsed,hard_soft}.
# --seeds "1 2 3" trains every student once per seed (train.seed); a seed other than 1 adds _s<seed> to
# the system name (rnnt_streaming_hard_s2), so one-seed runs and seed 1 of a study share their students.
# The training stages register each system in exp/systems.json (kdst systems add: role, architecture,
# mode as --kd-modes spells it, teacher, and the group of a student's seeds: its name without the seed):
# the matrix of stage 10 finds its cells there, a cell the mean over its seeds, each seed tested against
# the same seed's none student of its column.
#
# Noisy student (stage 8, --ns-iterations N): generation 0 is the stage-4 teacher.  Generation
# g-1 labels the training pool (and --ns-unlabelled-set) by beam search; the labels are filtered by
# --ns-min-confidence; the student ns_gen<g> (--ns-config: the teacher's architecture, SpecAugment
# and dropout on; speed-perturbed features with --speed-perturb) trains on them (--ns-mode hard),
# with KD from generation g-1 online (soft: the references where there are some, the pseudo labels
# of the unlabelled pool), or both (hard+soft); it is then the teacher of generation g+1.  Each
# generation is decoded on --report-set right away: exp/ns_gen<g>/score_<set>.json.  The generations are
# trained once, under --ns-config's train.seed, whatever --seeds says: the matrix has one row per generation.
#
# --teacher hf:PATH[,lang=LANG]: a Whisper model (a save_pretrained dir or a hub name in the local
# cache; docs/HF_TEACHERS.md) gives the hard targets: stage 4 trains nothing, and its decodings
# (stages 5, 6, 9) read its own log-mel features (data/<set>_whisper, kdst hf-features) with
# generate()'s rules (--hf-rule, at most --hf-max-len tokens), their text normalised as the
# references are written (--hf-normalize); stage 6 also drops the labels above --hf-max-wer % WER.
# It has no transducer lattice: the KD modes are none and hard, and no noisy-student generation
# (--kd-modes "none hard" --ns-iterations 0).
set -euo pipefail

template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
prog="egs/$(basename "$(dirname "$PWD")")/$(basename "$PWD")/run.sh"  # run.sh cd-s into its recipe dir
usage_header="Usage: $prog [--stage N] [--stop-stage M] [options]

Stages: 0 corpus, 1 data prep, 2 features + CMVN, 3 tokenizer, 4 teacher, 5 teacher evaluation,
6 hard targets (teacher n-best -> text.1best), 7 students (--student-archs x --kd-modes),
8 noisy-student iterations, 9 decoding, 10 scoring + modes x architectures matrix."
. "$template/utils/options.sh"
. "$template/utils/stages.sh"
. "$template/utils/jobs.sh"
. "$template/utils/common.sh"
. "$template/utils/progress.sh"

opt stage 0 "first stage to run" int
opt stop_stage 10 "last stage to run" int
opt nj 4 "parallel jobs for the data stages" count
opt corpus_dir corpus "where the corpus is (or, for mini, is synthesised)"
opt corpus_opts "" "extra options for local/get_corpus.sh (mini: --num-train N ...)"
opt train_set train "training split"
opt dev_set dev "validation split"
opt test_sets test "evaluation splits (space separated)"
opt report_set "" "the split of the modes x architectures matrix (default: the last of --test-sets)"
opt speed_perturb "" "speed factors for the training set, e.g. 0.9,1.0,1.1 (empty: none)"
opt fbank_config "$template/../../conf/fbank.yaml" "fbank options"
opt feat_dir dump/fbank "where feature archives go"
opt token_type bpe "tokenizer: bpe, unigram or char"
opt vocab_size 500 "vocabulary (bpe/unigram)" count
opt teacher_config conf/train_teacher.yaml "training config of the teacher (a non-streaming transducer)"
opt student_archs "same streaming" "student architectures: conf/train_student_<arch>.yaml each (same: the teacher's)"
opt kd_modes "none hard soft-full soft-collapsed hard+soft" "student targets: none hard soft-full soft-collapsed hard+soft"
opt kd_weight 0.5 "soft modes: loss = (1 - w) RNN-T + w KD (with --kd-normalize nodes: alpha ~ w / (1 - w) / mean encoder frames)" num
opt kd_temperature 1.0 "soft modes: temperature of the teacher's and student's distributions" num
opt kd_normalize nodes "soft modes: the lattice KL sum divided by its nodes, tokens or utterances (docs/KD_METHODS.md)"
opt kd_node_weights uniform "soft modes: every node's KL counts 1 (uniform) or the teacher's alignment occupancy (occupancy)"
opt hard_soft_mode full "KD of the hard+soft students and of the noisy students: full or collapsed"
opt train_opts "" "extra kdst train options for every model, e.g. '--set train.epochs=5'"
opt student_opts "" "extra kdst train options for the students and noisy students only (after --train-opts)"
opt student_jobs 1 "students trained at the same time (stage 7); on one machine they share its cores" count
opt seeds 1 "training seeds of the students (space separated): each student is trained once per seed (the noisy students once)"
opt nbest_beam 4 "beam (= n-best size) of the teacher on the training set (stages 6 and 8)" count
opt posterior_scale 1.0 "pseudo labels: posterior = softmax(scale * log P) over the n-best" num
opt min_confidence "" "stage 6: drop training utterances whose teacher confidence is below this (empty: keep all)" num?
opt confidence posterior "confidence measure: posterior (of the 1-best over the n-best, 0..1) or logprob (per word)"
opt ns_iterations 1 "noisy-student generations (0: none)" int
opt ns_mode hard+soft "noisy-student targets: hard, soft or hard+soft"
opt ns_config "" "training config of the noisy students (default: conf/train_student_same.yaml, else the teacher's)"
opt ns_unlabelled_set "" "data dir (no text) of an unlabelled pool pseudo-labelled in stage 8 (empty: none)"
opt ns_unlabelled_dir "" "audio tree of the unlabelled pool, prepared in stage 1 (empty: data/<ns-unlabelled-set> exists)"
opt ns_min_confidence "" "stage 8: drop pool utterances whose teacher confidence is below this (empty: keep all)" num?
opt n_average 5 "checkpoints averaged for decoding (best by validation loss)" count
opt beam 4 "beam size of the modified beam search (decoding)" count
opt decode_nj 2 "parallel decoding jobs (the same for every system, so their speeds compare)" count
opt teacher "" "the teacher: empty = train it (stage 4); hf:PATH[,lang=LANG] = a Whisper model for the hard targets (no teacher training)"
opt hf_max_len 200 "a Whisper teacher's decodings: most tokens after its prompt (generate's max_new_tokens)" count
opt hf_normalize upper "a Whisper teacher's text, normalised as the references are written: upper, lower or none"
opt hf_max_wer 10 "a Whisper teacher's hard targets: drop the utterances above this WER (%) against the references (empty: keep all)" num?
parse_options "$@"

implemented=" 0 1 2 3 4 5 6 7 8 9 10 "
check_stages
fail() { echo "$prog: $*" >&2; exit 2; }
for mode in $kd_modes; do
  case $mode in
    none|hard|soft-full|soft-collapsed|hard+soft) ;;
    *) fail "unknown --kd-modes entry '$mode' (none hard soft-full soft-collapsed hard+soft)" ;;
  esac
done
for arch in $student_archs; do
  [[ $arch =~ ^[A-Za-z0-9]+$ ]] || fail "--student-archs $arch: an architecture name is letters and digits only"
  [ -f "conf/train_student_$arch.yaml" ] || fail "--student-archs $arch: conf/train_student_$arch.yaml not found"
done
check_seeds
case $hard_soft_mode in full|collapsed) ;; *) fail "--hard-soft-mode $hard_soft_mode: full or collapsed" ;; esac
case $ns_mode in hard|soft|hard+soft) ;; *) fail "--ns-mode $ns_mode: hard, soft or hard+soft" ;; esac
case $confidence in posterior|logprob) ;; *) fail "--confidence $confidence: posterior or logprob" ;; esac
awk -v w="$kd_weight" 'BEGIN { exit !(w >= 0 && w <= 1) }' || fail "--kd-weight $kd_weight: a number in [0, 1]"
case $kd_normalize in nodes|tokens|utterances) ;; *) fail "--kd-normalize $kd_normalize: nodes, tokens or utterances" ;; esac
case $kd_node_weights in uniform|occupancy) ;; *) fail "--kd-node-weights $kd_node_weights: uniform or occupancy" ;; esac
if [ -z "$ns_config" ]; then
  ns_config=$teacher_config
  [ -f conf/train_student_same.yaml ] && ns_config=conf/train_student_same.yaml
fi
if [ "$ns_iterations" -gt 0 ] && [ ! -f "$ns_config" ]; then fail "--ns-config $ns_config: not found"; fi
[ -n "$report_set" ] || report_set=${test_sets##* }
[[ " $test_sets " == *" $report_set "* ]] || fail "--report-set $report_set: not among --test-sets ($test_sets)"
case $hf_normalize in none|upper|lower) ;; *) fail "--hf-normalize $hf_normalize: none, upper or lower" ;; esac
hf_model=""  # a Whisper teacher's spec (a local directory made absolute), for the stage signatures
case $teacher in
  "") ;;
  hf:*)
    hf_model=$(hf_spec "$teacher") || exit 2
    teacher=hf:$hf_model
    for mode in $kd_modes; do
      [[ $mode == none || $mode == hard ]] ||
        fail "--kd-modes $mode: a Whisper teacher has no transducer lattice (--kd-modes \"none hard\")"
    done
    [ "$ns_iterations" -eq 0 ] || fail "--ns-iterations $ns_iterations: no noisy students from a Whisper teacher (--ns-iterations 0)" ;;
  *) fail "--teacher $teacher: empty (stage 4 trains the teacher) or hf:PATH (a Whisper model)" ;;
esac

. ./path.sh
. ./cmd.sh

train_sp=$train_set
[ -n "$speed_perturb" ] && train_sp=${train_set}_sp
all_sets="$train_sp $dev_set $test_sets $ns_unlabelled_set"
tokens=data/tokens/${token_type}${vocab_size}
[ "$token_type" = char ] && tokens=data/tokens/char
[ -n "$teacher" ] || teacher=exp/rnnt_teacher/avg_best$n_average.pt
nbest_dir=exp/rnnt_teacher/nbest_$train_sp

# The teacher's decoding options and data dirs: a Whisper teacher reads data/<set>_whisper (its own
# features, made by teacher_features) with generate()'s rules and normalised text.
teacher_decode=()
teacher_suffix=""
hf_labels=()  # kdst pseudo-labels options of a Whisper teacher
hf_sig=""  # the stage signatures' part, only with a Whisper teacher
if [ -n "$hf_model" ]; then
  teacher_decode=(--hf-rule --max-len-ratio 0 --max-len-bias "$hf_max_len" --normalize "$hf_normalize")
  teacher_suffix=_whisper
  hf_labels=(--normalize "$hf_normalize" --dropped "$nbest_dir/dropped.txt")
  [ -z "$hf_max_wer" ] || hf_labels+=(--max-wer "$hf_max_wer")
  hf_sig=" hf $hf_model $hf_max_len $hf_normalize"
fi
# The seeds in the student stages' signatures, only where they are not the one seed 1: runs from before
# --seeds keep their finished stages
seeds_sig=""
[ "$seeds" = 1 ] || seeds_sig=" seeds $seeds"

get_corpus() {
  # shellcheck disable=SC2086  # corpus_opts is a list of options
  local/get_corpus.sh --corpus-dir "$corpus_dir" $corpus_opts
}

prepared_sets=$(echo "$train_set $dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd,)

prepare_data() {
  local unlabelled=()
  [ -n "$ns_unlabelled_dir" ] && unlabelled=(--unlabelled "$ns_unlabelled_dir" --unlabelled-name "$ns_unlabelled_set")
  local/prepare_data.sh --corpus-dir "$corpus_dir" --out-dir data --sets "$prepared_sets" "${unlabelled[@]}"
  # shellcheck disable=SC2046
  kdst validate-data --no-audio $(for s in ${prepared_sets//,/ }; do echo "data/$s"; done)
  if [ -n "$ns_unlabelled_set" ] && [ ! -s "data/$ns_unlabelled_set/wav.scp" ]; then
    echo "$prog: --ns-unlabelled-set $ns_unlabelled_set: data/$ns_unlabelled_set/wav.scp is missing (prepare" \
      "it, or give --ns-unlabelled-dir)" >&2
    return 1
  fi
}

train_tokenizer() {
  kdst tokenizer train "$tokens" "data/$train_set/text" --type "$token_type" --vocab-size "$vocab_size"
}

rnnt_data="--set data.train=data/$train_sp --set data.valid=data/$dev_set --set data.tokenizer=$tokens
  --set data.cmvn=data/$train_sp/cmvn.ark"

# decode_sets SYSTEM SETS...: modified beam search, 1-best (a Whisper teacher: its beam search).
decode_sets() {
  local exp=exp/$1 set model=exp/$1/avg_best$n_average.pt suffix="" opts=()
  if [ "$1" = rnnt_teacher ]; then model=$teacher suffix=$teacher_suffix opts=("${teacher_decode[@]}"); fi
  shift
  [ "$model" != "$teacher" ] || teacher_features "$@"
  for set in "$@"; do
    kdst decode --model "$model" --data-dir "data/$set$suffix" "${opts[@]}" \
      --output-dir "$exp/decode_$set" --beam "$beam" --nj "$decode_nj" --cmd "$decode_cmd"
  done
}

# label_set CHECKPOINT SET OUT_DIR: the n-best of a model on a data dir (the teacher's view of it).
label_set() {
  local suffix="" opts=()
  if [ "$1" = "$teacher" ]; then teacher_features "$2"; suffix=$teacher_suffix opts=("${teacher_decode[@]}"); fi
  kdst decode --model "$1" --data-dir "data/$2$suffix" --output-dir "$3" "${opts[@]}" \
    --beam "$nbest_beam" --nbest "$nbest_beam" --nj "$decode_nj" --cmd "$decode_cmd"
}

# subset_dir DST KEYS SETS...: the utterances keyed in the Kaldi file KEYS, gathered from the data
# dirs SETS: what training reads (feats.scp, utt2num_frames) plus utt2spk/spk2utt and the
# references (text) where the sets have them.  No wav.scp: such a dir is for training only.
subset_dir() {
  local dst=$1 keys=$2 f s
  shift 2
  mkdir -p "$dst"
  for f in feats.scp utt2num_frames utt2spk text; do
    for s in "$@"; do [ ! -f "data/$s/$f" ] || cat "data/$s/$f"; done |
      awk 'NR == FNR { keep[$1]; next } $1 in keep' "$keys" - | sort -u >"$dst/$f.tmp"
    mv "$dst/$f.tmp" "$dst/$f"
  done
  [ -s "$dst/text" ] || rm -f "$dst/text"
  awk '{ u[$2] = u[$2] " " $1 } END { for (s in u) print s u[s] }' "$dst/utt2spk" | sort >"$dst/spk2utt"
  local want have
  want=$(wc -l <"$keys"); have=$(wc -l <"$dst/utt2num_frames")
  if [ "$want" != "$have" ]; then
    echo "$prog: $dst: $have of the $want utterances of $keys have features in data/{$*}" >&2
    return 1
  fi
}

train_teacher() {
  if [ -n "$hf_model" ]; then
    log "the teacher is the Whisper model $hf_model; nothing to train"
  else
    train_model exp/rnnt_teacher "$teacher_config" "$rnnt_data"
  fi
  kdst systems add --name rnnt_teacher --task rnnt --role teacher --arch teacher --model "$teacher"
}

evaluate_teacher() {
  # shellcheck disable=SC2046  # the dev set once, also when it is a test set
  decode_sets rnnt_teacher $(echo "$dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++')
  kdst results --systems rnnt_teacher --sets "$test_sets" --metrics wer,cer
}

wants_hard_targets() { [[ " $kd_modes " == *" hard "* || " $kd_modes " == *" hard+soft "* ]]; }

# confidence_opts THRESHOLD: the kdst pseudo-labels options of a confidence filter.
confidence_opts() { [ -z "$1" ] || echo "--min-confidence $1 --confidence $confidence"; }

# The hard students' training data: data/<train>, or data/<train>_pl where stage 6 dropped
# utterances (under --min-confidence, or with an empty 1-best).
hard_dir() {  # the directory, not its text.1best: stage 6 asks before it copies the labels there
  if [ -d "data/${train_sp}_pl" ]; then echo "data/${train_sp}_pl"; else echo "data/$train_sp"; fi
}

hard_targets() {
  if ! wants_hard_targets; then
    log "no --kd-modes entry trains on hard targets; no teacher n-best needed"
    return 0
  fi
  label_set "$teacher" "$train_sp" "$nbest_dir"
  # shellcheck disable=SC2046
  kdst pseudo-labels --nbest "$nbest_dir/nbest.txt" --out-dir "$nbest_dir" --n "$nbest_beam" \
    --scale "$posterior_scale" --ref "data/$train_sp/text" --stats-json "$nbest_dir/pseudo_labels.json" \
    --drop-empty $(confidence_opts "$min_confidence") "${hf_labels[@]}"
  rm -rf "data/${train_sp}_pl" "data/$train_sp/text.1best" "data/$train_sp/pseudo_nbest$nbest_beam.txt"
  if [ "$(wc -l <"$nbest_dir/text.1best")" -lt "$(wc -l <"data/$train_sp/utt2num_frames")" ]; then
    subset_dir "data/${train_sp}_pl" "$nbest_dir/text.1best" "$train_sp"
  fi
  local dir
  dir=$(hard_dir)
  cp "$nbest_dir/pseudo_nbest$nbest_beam.txt" "$dir/pseudo_nbest$nbest_beam.txt"
  cp "$nbest_dir/text.1best" "$dir/text.1best.tmp" && mv "$dir/text.1best.tmp" "$dir/text.1best"
  log "hard targets in $dir/text.1best: $(tr -d '\n' <"$nbest_dir/pseudo_labels.json")"
}

# mode_dir MODE: the mode as it appears in system names (hard+soft -> hard_soft, soft-full -> soft_full).
mode_dir() { local m=${1//+/_}; echo "${m//-/_}"; }

# kd_opts TEACHER_CHECKPOINT KD_MODE
kd_opts() {
  echo "--set kd.teacher=$1 --set kd.weight=$kd_weight --set kd.temperature=$kd_temperature --set kd.mode=$2" \
    "--set kd.normalize=$kd_normalize --set kd.node_weights=$kd_node_weights"
}

# The kdst train options of a student mode.
mode_opts() {
  case $1 in
    none) ;;
    hard) echo "--set data.train=$(hard_dir) --set data.text=text.1best --set data.valid_text=text" ;;
    soft-full|soft-collapsed) kd_opts "$teacher" "${1#soft-}" ;;
    hard+soft)
      echo "--set data.train=$(hard_dir) --set data.text=text.1best --set data.valid_text=text"
      kd_opts "$teacher" "$hard_soft_mode" ;;
  esac
}

# A student is a spec ARCH_MODEDIR@SEED (streaming_hard_soft@2), seed by seed; its system name:
# rnnt_streaming_hard_soft_s2 (rnnt_streaming_hard_soft for seed 1).
student_specs() {
  local seed arch mode
  for seed in $seeds; do for arch in $student_archs; do
    for mode in $kd_modes; do echo "${arch}_$(mode_dir "$mode")@$seed"; done
  done; done
}
system_of() { echo "rnnt_${1%@*}$(seed_suffix "${1#*@}")"; }
student_systems() { local spec; for spec in $(student_specs); do system_of "$spec"; done; }

# mode_of ARCH_MODEDIR -> the --kd-modes entry
mode_of() {
  local mode
  for mode in $kd_modes; do [ "$(mode_dir "$mode")" != "${1#*_}" ] || { echo "$mode"; return 0; }; done
  return 1
}

train_student() {
  local student=${1%@*} seed=${1#*@} system mode learnt_from=()
  local arch=${student%%_*}
  system=$(system_of "$1")
  mode=$(mode_of "$student")
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=$student_threads train_model "exp/$system" "conf/train_student_$arch.yaml" \
    "$rnnt_data --set train.seed=$seed $(mode_opts "$mode") $student_opts"
  [ "$mode" = none ] || learnt_from=(--teacher "$teacher")
  # the seeds of one student make one cell of the matrix: its group is its name without the seed
  kdst systems add --name "$system" --task rnnt --role student --mode "$mode" --arch "$arch" \
    --model "exp/$system/avg_best$n_average.pt" "${learnt_from[@]}" --group "rnnt_$student"
}

train_students() {
  # shellcheck disable=SC2046
  student_threads=$(threads_for $(student_specs | wc -l)) in_parallel "$student_jobs" train_student $(student_specs)
}

ns_systems() { local g; for ((g = 1; g <= ns_iterations; g++)); do echo "ns_gen$g"; done; }

# The checkpoint of generation G (0: the stage-4 teacher).
ns_checkpoint() {
  if [ "$1" -eq 0 ]; then echo "$teacher"; else echo "exp/ns_gen$1/avg_best$n_average.pt"; fi
}

# ns_generation G: generation G-1 labels the pool, ns_gen<G> learns from it.
ns_generation() {
  local g=$1 prev exp=exp/ns_gen$1 pool set labels teacher_dir
  prev=$(ns_checkpoint $((g - 1)))
  teacher_dir=$(dirname "$prev")
  pool="$train_sp $ns_unlabelled_set"
  mkdir -p "$exp"
  : >"$exp/pool_nbest.txt.tmp"
  for set in $pool; do
    # The stage-6 n-best of the teacher on the training set is generation 0's labels already.
    if [ "$teacher_dir/nbest_$set" != "$nbest_dir" ] || [ ! -s "$nbest_dir/nbest.txt" ] ||
       [ "$nbest_dir/nbest.txt" -ot "$prev" ]; then
      label_set "$prev" "$set" "$teacher_dir/nbest_$set"
    fi
    cat "$teacher_dir/nbest_$set/nbest.txt" >>"$exp/pool_nbest.txt.tmp"
  done
  mv "$exp/pool_nbest.txt.tmp" "$exp/pool_nbest.txt"
  labels=$exp/labels
  mkdir -p "$labels"
  # shellcheck disable=SC2046
  kdst pseudo-labels --nbest "$exp/pool_nbest.txt" --out-dir "$labels" --n 1 --scale "$posterior_scale" \
    --ref "data/$train_sp/text" --stats-json "$exp/pseudo_labels.json" --drop-empty \
    $(confidence_opts "$ns_min_confidence")
  # data/ns_gen<G>: text = what the student trains on, text.1best = the pseudo labels, text.gold = the references
  local data=data/ns_gen$g keys=$labels/text.1best
  if [ "$ns_mode" = soft ]; then  # the references where there are some, the pseudo labels elsewhere
    awk 'NR == FNR { ref[$1]; next } !($1 in ref)' "data/$train_sp/text" "$labels/text.1best" |
      cat - "data/$train_sp/text" | sort >"$exp/keys"
    keys=$exp/keys
  fi
  rm -rf "$data"  # of an earlier run, perhaps with another --ns-mode
  # shellcheck disable=SC2086
  subset_dir "$data" "$keys" $pool
  [ ! -f "$data/text" ] || mv "$data/text" "$data/text.gold"
  awk 'NR == FNR { ref[$1]; next } $1 in ref' "$keys" "$labels/text.1best" >"$data/text.1best"
  if [ "$ns_mode" = soft ]; then
    { cat "$data/text.gold"; awk 'NR == FNR { ref[$1]; next } !($1 in ref)' "$data/text.gold" "$data/text.1best"; } |
      sort >"$data/text"
  else
    cp "$data/text.1best" "$data/text"
  fi
  local opts="--set data.train=$data --set data.text=text --set data.valid_text=text"
  case $ns_mode in
    soft|hard+soft) opts="$opts $(kd_opts "$prev" "$hard_soft_mode")" ;;
  esac
  train_model "$exp" "$ns_config" "$rnnt_data $opts $student_opts"
  kdst systems add --name "ns_gen$g" --task rnnt --role noisy-student --mode "$ns_mode" --arch ns \
    --model "$(ns_checkpoint "$g")" --teacher "$prev"
  decode_sets "ns_gen$g" "$report_set"
  kdst score --ref "data/$report_set/text" --hyp "$exp/decode_$report_set/hyp.txt" --metrics wer,cer --json \
    >"$exp/score_$report_set.json.tmp"
  mv "$exp/score_$report_set.json.tmp" "$exp/score_$report_set.json"
  log "noisy student generation $g ($ns_mode, teacher $prev): $(tr -d '\n ' <"$exp/score_$report_set.json")"
}

noisy_student() {
  local g
  if [ "$ns_iterations" -eq 0 ]; then
    log "--ns-iterations 0: no noisy-student generation"
    return 0
  fi
  for ((g = 1; g <= ns_iterations; g++)); do ns_generation "$g"; done
}

systems() { echo rnnt_teacher; student_systems; ns_systems; }

decode_all() {
  local system
  # The teacher again too: every speed in the table comes from this one stage.
  for system in $(systems); do
    # shellcheck disable=SC2086
    decode_sets "$system" $test_sets
  done
}

report() {
  kdst results --systems "$(systems | paste -sd' ')" --sets "$test_sets" --metrics wer,cer
  # the cells (a group's seeds: their mean, each tested against the none student's run of its seed), the
  # teacher and the generations' teachers, as the training stages registered them
  kdst rnnt-report --exp-dir exp --archs "$student_archs" \
    --modes "$kd_modes" --ns-systems "$(ns_systems | paste -sd' ')" --report-set "$report_set" \
    --sets "$test_sets"
}

stage_opts() { cat "$@" 2>/dev/null; echo "$train_opts $n_average"; }
student_confs() { for arch in $student_archs; do echo "conf/train_student_$arch.yaml"; done; }
run_stage 0 "$corpus_dir $corpus_opts" get_corpus
run_stage 1 "$corpus_dir $prepared_sets $ns_unlabelled_set $ns_unlabelled_dir" prepare_data
run_stage 2 "$speed_perturb $(cat "$fbank_config") $feat_dir $all_sets" make_features
run_stage 3 "$token_type $vocab_size $train_set" train_tokenizer
run_stage 4 "$(stage_opts "$teacher_config")$hf_sig" train_teacher
run_stage 5 "$beam $test_sets$hf_sig" evaluate_teacher
run_stage 6 "$kd_modes $nbest_beam $posterior_scale $min_confidence $confidence$hf_sig${hf_sig:+ $hf_max_wer}" hard_targets
kd_settings="$kd_weight $kd_temperature $hard_soft_mode $kd_normalize $kd_node_weights"
# shellcheck disable=SC2046
run_stage 7 "$(stage_opts $(student_confs)) $student_opts $student_archs $kd_modes $kd_settings$seeds_sig" train_students
ns_settings="$ns_iterations $ns_mode $ns_unlabelled_set $ns_min_confidence $confidence $nbest_beam $beam $report_set"
run_stage 8 "$(stage_opts "$ns_config") $student_opts $ns_settings $kd_settings" noisy_student
run_stage 9 "$beam $student_archs $kd_modes $ns_iterations $test_sets $decode_nj$hf_sig$seeds_sig" decode_all
run_stage 10 "$student_archs $kd_modes $ns_iterations $test_sets $report_set$seeds_sig" report
log "done: stages $stage-$stop_stage"
