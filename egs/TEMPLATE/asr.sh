#!/usr/bin/env bash
# Attention encoder-decoder ASR compressed by sequence-level KD (Mun'im, Inoue & Shinoda 2019):
# the stages shared by every ASR corpus.
#
# A corpus recipe (egs/<corpus>/asr1/run.sh) calls this script with its own defaults
# followed by the user's options.  It runs from the recipe directory, which provides
# cmd.sh, path.sh, local/get_corpus.sh and local/prepare_data.sh.
#
#   0 corpus (mini: synthesise it)      1 data prep -> data/{<train>,<dev>,<test sets>}
#   2 features + global CMVN            3 tokenizer (Whisper's, for word students of a Whisper teacher)
#   4 teacher training                  5 teacher evaluation (decode + WER)
#   6 teacher n-best on the training set, and its top-k cache there for word students
#   7 pseudo-label sets: data/<train>/text.1best and pseudo_nbest<N>.txt (posterior weights)
#   8 students: every --student-sizes entry x every --student-modes entry
#   9 decoding of the teacher and every student on the test sets (speed measured side by side)
#   10 scoring + compression report -> exp/results.json, exp/RESULTS.md, exp/compression.png
#
# Student modes: gold (the references: the baseline), 1best (the teacher's best hypothesis),
# nbest_expand (each of the N best an example of its own), nbest_sample (one of the N drawn per
# epoch by the teacher's posterior), nbest_weighted (all N in one posterior-weighted loss), word
# (word-level KD: the references' CE and the KL to the teacher's top-k at every target position, from
# stage 6's cache, weighted (1 - --kd-weight) and --kd-weight: Kim & Rush's word-level KD).
# --gold-weight mixes the reference into the N-best modes.  --frame-kd-config FILE adds a ctckd student
# per size: gold targets plus frame-level KD from the teacher's CTC posteriors (kd.frame, docs/KD_METHODS.md).
# Students are exp/asr_<size>_<mode>,
# each trained from conf/train_student_<size>.yaml with the same settings for every mode.
# --seeds "1 2 3" trains every student once per seed (train.seed); a seed other than 1 adds _s<seed>
# to the system name (asr_small_1best_s2), so one-seed runs and seed 1 of a study share their students.
# The training stages register each system in exp/systems.json (kdst systems add: role, size,
# mode, teacher, and the group of a student's seeds: its name without the seed): the compression
# report takes the teacher and the students' modes from there, and gives a group one row, mean ± sd
# over its seeds, each seed tested against the same seed's gold student.
#
# --teacher hf:PATH[,lang=LANG]: a Whisper model (a save_pretrained dir or a hub name in the local
# cache; docs/HF_TEACHERS.md) is the teacher as it is: stage 4 trains nothing, and its decodings
# (stages 5, 6, 9) read its own log-mel features (data/<set>_whisper, kdst hf-features) with
# generate()'s rules (--hf-rule, at most --hf-max-len tokens), their text normalised as the
# references are written (--hf-normalize); stage 7 drops the pseudo labels above --hf-max-wer % WER
# (distil-whisper's filter), and the pseudo-label students then train on data/<train>_pl.
# With word students, stage 3 exports Whisper's tokenizer (kdst hf-tokenizer) into data/tokens/whisper
# instead of training one (--token-type and --vocab-size are unused): word-level KD needs the teacher's
# vocabulary, and every student adopts it so that the modes differ in their targets alone.  The
# teacher stage 4 trains shares the students' tokenizer already; its cache reads the training set's own
# features (feats.scp and the teacher's CMVN).
set -euo pipefail

template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
prog="egs/$(basename "$(dirname "$PWD")")/$(basename "$PWD")/run.sh"  # run.sh cd-s into its recipe dir
usage_header="Usage: $prog [--stage N] [--stop-stage M] [options]

Stages: 0 corpus, 1 data prep, 2 features + CMVN, 3 tokenizer, 4 teacher, 5 teacher evaluation,
6 teacher n-best and top-k cache on train, 7 pseudo-label sets, 8 students (--student-sizes x --student-modes),
9 decoding, 10 scoring + compression report."
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
opt report_set "" "the split of the compression table (default: the last of --test-sets)"
opt speed_perturb "" "speed factors for the training set, e.g. 0.9,1.0,1.1 (empty: none)"
opt fbank_config "$template/../../conf/fbank.yaml" "fbank options"
opt feat_dir dump/fbank "where feature archives go"
opt token_type bpe "tokenizer: bpe, unigram or char (word students of a Whisper teacher: Whisper's)"
opt vocab_size 300 "vocabulary (bpe/unigram)" count
opt teacher_config conf/train_teacher.yaml "training config of the teacher"
opt student_sizes "small" "student sizes: conf/train_student_<size>.yaml each"
opt student_modes "gold 1best nbest_expand nbest_sample nbest_weighted" "student targets: gold 1best nbest_expand nbest_sample nbest_weighted word"
opt seeds 1 "training seeds of the students (space separated): each student is trained once per seed"
opt train_opts "" "extra kdst train options for every model, e.g. '--set train.epochs=5'"
opt nbest_beam 5 "teacher beam for the n-best on the training set" count
opt nbest_size 5 "N: hypotheses per utterance in the N-best pseudo labels (at most --nbest-beam)" count
opt posterior_scale 1.0 "N-best weights = softmax(scale * the teacher's length-normalised score on the 1-best's scale) over the N (kdst pseudo-labels --posterior score)" num
opt gold_weight 0.0 "share of the reference mixed into the N-best modes (0: pseudo labels only)" num
# lambda = 0.5, Kim & Rush's best for MT: unlike st.sh's word students (lambda 1, then fine-tuned on the
# references) nothing here fine-tunes them, so the references' CE stays in the loss, and it is what teaches
# the references' style, which a Whisper teacher forced with them does not write (docs/HF_TEACHERS.md)
opt kd_weight 0.5 "word students: share of the KD term, (1 - lambda) CE + lambda KD" num
opt topk 8 "word students: teacher entries per target token in the stage-6 cache" count
opt frame_kd_config "" "also train a ctckd student per size: kd.frame settings from this file (flat 'key: value' lines, e.g. conf/kd_frame.yaml)"
opt expand_epochs "" "train.epochs of nbest_expand students (empty: the config's; each of their epochs is ~N times longer)" count?
opt student_jobs 1 "students trained at the same time (stage 8); on one machine they share its cores" count
opt n_average 5 "checkpoints averaged for decoding (best by validation loss)" count
opt beam 5 "beam size for decoding" count
opt max_len_ratio 0.5 "decoding: max output tokens per encoder frame (after 4x subsampling)" num
opt ctc_weight 0 "decoding and the teacher n-best: joint CTC/attention weight (0: attention only; docs/DECODING.md)" num
opt ctc_pre_beam 1.5 "with --ctc-weight: CTC scores this x --beam best decoder tokens per beam (0: every token)" num
opt decode_nj 2 "parallel decoding jobs (the same for every system, so their speeds compare)" count
opt teacher "" "the teacher: empty = train it (stage 4); hf:PATH[,lang=LANG] = a Whisper model (no teacher training)"
opt hf_max_len 200 "a Whisper teacher's decodings: most tokens after its prompt (generate's max_new_tokens)" count
opt hf_normalize upper "a Whisper teacher's text, normalised as the references are written: upper, lower or none"
opt hf_max_wer 10 "a Whisper teacher's pseudo labels: drop the utterances above this WER (%) against the references (empty: keep all)" num?
parse_options "$@"

implemented=" 0 1 2 3 4 5 6 7 8 9 10 "
check_stages
for mode in $student_modes; do
  case $mode in
    gold|1best|nbest_expand|nbest_sample|nbest_weighted|word) ;;
    *) echo "$prog: unknown --student-modes entry '$mode' (gold 1best nbest_expand nbest_sample nbest_weighted word)" >&2
       exit 2 ;;
  esac
done
for size in $student_sizes; do
  [[ $size != *_* ]] || { echo "$prog: --student-sizes $size: a size name cannot contain '_'" >&2; exit 2; }
  [ -f "conf/train_student_$size.yaml" ] || { echo "$prog: --student-sizes $size: conf/train_student_$size.yaml not found" >&2; exit 2; }
done
check_seeds
if [ -n "$frame_kd_config" ] && [ ! -f "$frame_kd_config" ]; then
  echo "$prog: --frame-kd-config $frame_kd_config not found" >&2
  exit 2
fi
if [ "$nbest_size" -gt "$nbest_beam" ]; then
  echo "$prog: --nbest-size $nbest_size exceeds --nbest-beam $nbest_beam" >&2
  exit 2
fi
if ! awk -v w="$ctc_weight" 'BEGIN { exit !(w >= 0 && w <= 1) }'; then
  echo "$prog: --ctc-weight $ctc_weight: must be between 0 and 1" >&2
  exit 2
fi
if ! awk -v w="$kd_weight" 'BEGIN { exit !(w >= 0 && w <= 1) }'; then
  echo "$prog: --kd-weight $kd_weight: must be between 0 and 1" >&2
  exit 2
fi
[ -n "$report_set" ] || report_set=${test_sets##* }
case $hf_normalize in none|upper|lower) ;; *) echo "$prog: --hf-normalize $hf_normalize: none, upper or lower" >&2; exit 2 ;; esac
hf_model=""  # a Whisper teacher's spec (a local directory made absolute), for the stage signatures
case $teacher in
  "") ;;
  hf:*)
    hf_model=$(hf_spec "$teacher") || exit 2
    teacher=hf:$hf_model
    if [ -n "$frame_kd_config" ]; then
      echo "$prog: --frame-kd-config: a Whisper teacher has no CTC posteriors to distil" >&2; exit 2
    fi ;;
  *) echo "$prog: --teacher $teacher: empty (stage 4 trains the teacher) or hf:PATH (a Whisper model)" >&2; exit 2 ;;
esac
wants_word() { [[ " $student_modes " == *" word "* ]]; }

. ./path.sh
. ./cmd.sh

train_sp=$train_set
[ -n "$speed_perturb" ] && train_sp=${train_set}_sp
all_sets="$train_sp $dev_set $test_sets"
tokens=data/tokens/${token_type}${vocab_size}
[ "$token_type" = char ] && tokens=data/tokens/char
tokens_sig=""  # stage 3's signature part, only where the students adopt Whisper's vocabulary
if [ -n "$hf_model" ] && wants_word; then
  tokens=data/tokens/whisper tokens_sig=" hf-tokenizer $hf_model"
fi

get_corpus() {
  # shellcheck disable=SC2086  # corpus_opts is a list of options
  local/get_corpus.sh --corpus-dir "$corpus_dir" $corpus_opts
}

prepared_sets=$(echo "$train_set $dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd,)

prepare_data() {
  # Writes the data dirs, and data/nlsyms.txt where the corpus marks noises (WSJ's <NOISE>).
  local/prepare_data.sh --corpus-dir "$corpus_dir" --out-dir data --sets "$prepared_sets"
  # shellcheck disable=SC2046
  kdst validate-data --no-audio $(for s in ${prepared_sets//,/ }; do echo "data/$s"; done)
}

train_tokenizer() {
  if [ -n "$tokens_sig" ]; then  # word-level KD needs one vocabulary: the students adopt the teacher's
    rm -rf "$tokens"  # another teacher's export must not leave a file behind
    kdst hf-tokenizer --teacher "$teacher" --out "$tokens"
    return 0
  fi
  local symbols=()
  [ -s data/nlsyms.txt ] && symbols=(--user-symbols data/nlsyms.txt)  # kept whole, never split
  kdst tokenizer train "$tokens" "data/$train_set/text" --type "$token_type" --vocab-size "$vocab_size" \
    "${symbols[@]}"
}

# Joint CTC/attention decoding (kdst decode refuses a model without a CTC branch): the option, and
# the stage signatures' part, only with a weight, so that runs without one keep their finished stages.
ctc_decode=()
if awk -v w="$ctc_weight" 'BEGIN { exit !(w > 0) }'; then
  ctc_decode=(--ctc-weight "$ctc_weight" --ctc-pre-beam "$ctc_pre_beam")
fi
ctc_sig=${ctc_decode[*]:+ ${ctc_decode[*]}}
# The seeds in the student stages' signatures, likewise only where they are not the one seed 1: runs
# from before --seeds keep their finished stages
seeds_sig=""
[ "$seeds" = 1 ] || seeds_sig=" seeds $seeds"

asr_data="--set data.train=data/$train_sp --set data.valid=data/$dev_set --set data.tokenizer=$tokens
  --set data.cmvn=data/$train_sp/cmvn.ark"

# The teacher's decoding options and data dirs: a Whisper teacher reads data/<set>_whisper (its own
# features, made by teacher_features) with generate()'s rules and normalised text.
teacher_decode=(--max-len-ratio "$max_len_ratio" "${ctc_decode[@]}")
teacher_suffix=""
hf_labels=()  # kdst pseudo-labels options of a Whisper teacher
hf_sig=""  # the stage signatures' part, only with a Whisper teacher
if [ -n "$hf_model" ]; then
  teacher_decode=(--hf-rule --max-len-ratio 0 --max-len-bias "$hf_max_len" --normalize "$hf_normalize")
  teacher_suffix=_whisper
  hf_labels=(--normalize "$hf_normalize" --drop-empty --dropped "exp/asr_teacher/nbest_$train_sp/dropped.txt")
  [ -z "$hf_max_wer" ] || hf_labels+=(--max-wer "$hf_max_wer")
  hf_sig=" hf $hf_model $hf_max_len $hf_normalize"
fi

# Students over Whisper's vocabulary write their text normalised as the teacher's is, so that the table
# scores them alike: its byte-level tokens spell case and punctuation the references may not have (a line
# break, too, is one line of hyp.txt since kdst decode writes every hypothesis on one line).
student_decode=(--max-len-ratio "$max_len_ratio" "${ctc_decode[@]}")
[ -z "$tokens_sig" ] || student_decode+=(--normalize "$hf_normalize")

# decode_sets SYSTEM SETS...
decode_sets() {
  local exp=exp/$1 set model=exp/$1/avg_best$n_average.pt suffix="" opts=("${student_decode[@]}")
  if [ "$1" = asr_teacher ]; then model=$teacher suffix=$teacher_suffix opts=("${teacher_decode[@]}"); fi
  shift
  [ "$model" != "$teacher" ] || teacher_features "$@"
  for set in "$@"; do
    kdst decode --model "$model" --data-dir "data/$set$suffix" \
      --output-dir "$exp/decode_$set" --beam "$beam" "${opts[@]}" \
      --nj "$decode_nj" --cmd "$decode_cmd"
  done
}

[ -n "$teacher" ] || teacher=exp/asr_teacher/avg_best$n_average.pt
nbest_dir=exp/asr_teacher/nbest_$train_sp
topk_cache=exp/asr_teacher/topk_$train_sp
# The word students' parts of the stage signatures, only with word students: other runs keep their stages
topk_sig="" kd_sig=""
if wants_word; then topk_sig=" topk $topk" kd_sig=" kd $kd_weight"; fi

train_teacher() {
  if [ -n "$hf_model" ]; then
    log "the teacher is the Whisper model $hf_model; nothing to train"
  else
    train_model exp/asr_teacher "$teacher_config" "$asr_data"
  fi
  kdst systems add --name asr_teacher --task asr --role teacher --arch teacher --model "$teacher"
}

evaluate_teacher() {
  # shellcheck disable=SC2046  # the dev set once, also when it is a test set (WSJ: test_dev93)
  decode_sets asr_teacher $(echo "$dev_set $test_sets" | tr ' ' '\n' | awk 'NF && !seen[$0]++')
  kdst results --systems asr_teacher --sets "$test_sets" --metrics wer,cer
}

wants_pseudo_labels() { [[ " $student_modes " == *" 1best "* || " $student_modes " == *" nbest_"* ]]; }

teacher_outputs() {
  if ! wants_pseudo_labels && ! wants_word; then
    log "every student trains on gold references; no teacher n-best needed"
    return 0
  fi
  teacher_features "$train_sp"
  if wants_pseudo_labels; then
    kdst decode --model "$teacher" --data-dir "data/$train_sp$teacher_suffix" --output-dir "$nbest_dir" \
      --beam "$nbest_beam" --nbest "$nbest_beam" "${teacher_decode[@]}" \
      --nj "$decode_nj" --cmd "$decode_cmd"
  fi
  if wants_word; then  # forced with the references the word students learn; Whisper hears its own features
    local heard=()
    [ -z "$hf_model" ] || heard=(--teacher-data-dir "data/$train_sp$teacher_suffix")
    kdst topk --teacher "$teacher" --data-dir "data/$train_sp" "${heard[@]}" \
      --text text --out "$topk_cache" --k "$topk" --nj "$decode_nj" --cmd "$decode_cmd"
  fi
}

pseudo_labels() {
  if ! wants_pseudo_labels; then
    log "every student trains on gold references; no pseudo labels needed"
    return 0
  fi
  kdst pseudo-labels --nbest "$nbest_dir/nbest.txt" --out-dir "data/$train_sp" --n "$nbest_size" \
    --scale "$posterior_scale" --ref "data/$train_sp/text" --stats-json "$nbest_dir/pseudo_labels.json" \
    "${hf_labels[@]}"
  rm -rf "data/${train_sp}_pl"
  local missing f
  missing=$(awk 'NR == FNR { have[$1]; next } !($1 in have)' "data/$train_sp/text.1best" \
    "data/$train_sp/utt2num_frames" | wc -l)
  if [ "$missing" -gt 0 ]; then  # the WER filter dropped some: the pseudo-label students train on the rest
    mkdir -p "data/${train_sp}_pl"
    for f in feats.scp utt2num_frames utt2spk text; do
      awk 'NR == FNR { keep[$1]; next } $1 in keep' "data/$train_sp/text.1best" "data/$train_sp/$f" \
        >"data/${train_sp}_pl/$f"
    done
    awk '{ u[$2] = u[$2] " " $1 } END { for (s in u) print s u[s] }' "data/${train_sp}_pl/utt2spk" |
      sort >"data/${train_sp}_pl/spk2utt"
    mv "data/$train_sp/text.1best" "data/$train_sp/pseudo_nbest$nbest_size.txt" "data/${train_sp}_pl/"
    log "pseudo labels of $(wc -l <"data/${train_sp}_pl/text.1best") utterances in data/${train_sp}_pl" \
      "($missing dropped: $nbest_dir/dropped.txt)"
  fi
}

# Where the pseudo-label students train: data/<train>, or data/<train>_pl where stage 7 dropped utterances.
labels_dir() { if [ -d "data/${train_sp}_pl" ]; then echo "data/${train_sp}_pl"; else echo "data/$train_sp"; fi; }

# The kdst train options of a student mode.
mode_opts() {
  case $1 in
    gold) ;;
    1best) echo "--set data.train=$(labels_dir) --set data.text=text.1best --set data.valid_text=text" ;;
    nbest_*)
      echo "--set data.train=$(labels_dir) --set data.nbest_targets.file=pseudo_nbest$nbest_size.txt"
      echo "--set data.nbest_targets.mode=${1#nbest_}"
      echo "--set data.nbest_targets.gold_weight=$gold_weight --set data.valid_text=text" ;;
    word)  # the references of every training utterance, and the teacher's top-k at each of their positions
      echo "--set kd.cache=$topk_cache --set kd.teacher=$teacher --set kd.weight=$kd_weight" ;;
    ctckd)  # each 'key: value' line of the file is one --set kd.frame.key=value; the teacher is this recipe's
      awk '!/^[[:space:]]*(#|$)/ { sub(/[[:space:]]*#.*/, ""); split($0, kv, /:[[:space:]]*/);
                                  printf "--set kd.frame.%s=%s\n", kv[1], kv[2] }' "$frame_kd_config"
      echo "--set kd.frame.teacher=$teacher" ;;
  esac
  if [ "$1" = nbest_expand ] && [ -n "$expand_epochs" ]; then echo "--set train.epochs=$expand_epochs"; fi
  return 0
}

# A student is a spec SIZE_MODE@SEED (small_nbest_weighted@2), seed by seed; its system name:
# asr_small_nbest_weighted_s2 (asr_small_nbest_weighted for seed 1).
student_specs() {
  local seed size mode
  for seed in $seeds; do for size in $student_sizes; do
    for mode in $student_modes ${frame_kd_config:+ctckd}; do echo "${size}_$mode@$seed"; done
  done; done
}
system_of() { echo "asr_${1%@*}$(seed_suffix "${1#*@}")"; }
student_systems() { local spec; for spec in $(student_specs); do system_of "$spec"; done; }

train_student() {
  local student=${1%@*} seed=${1#*@} system learnt_from=()
  local size=${student%%_*} mode=${student#*_}
  system=$(system_of "$1")
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=$student_threads train_model "exp/$system" "conf/train_student_$size.yaml" \
    "$asr_data --set train.seed=$seed $(mode_opts "$mode")"
  [ "$mode" = gold ] || learnt_from=(--teacher "$teacher")
  # the seeds of one student make one row of the tables: its group is its name without the seed
  kdst systems add --name "$system" --task asr --role student --mode "$mode" --arch "$size" \
    --model "exp/$system/avg_best$n_average.pt" "${learnt_from[@]}" --group "asr_$student"
}

train_students() {
  # shellcheck disable=SC2046
  student_threads=$(threads_for $(student_specs | wc -l)) in_parallel "$student_jobs" train_student $(student_specs)
}

decode_all() {
  local system
  # The teacher again too: every speed in the compression table comes from this one stage.
  for system in asr_teacher $(student_systems); do
    # shellcheck disable=SC2086
    decode_sets "$system" $test_sets
  done
}

report() {
  local systems
  systems="asr_teacher $(student_systems | tr '\n' ' ')"
  # the teacher, each student's mode and its group, as the training stages registered them in
  # exp/systems.json: a group's seeds are one row, each tested against the gold student's run of its seed
  kdst compression --systems "$systems" --set "$report_set" --other-sets "$test_sets"
}

stage_opts() { cat "$@" 2>/dev/null; echo "$train_opts $n_average"; }
run_stage 0 "$corpus_dir $corpus_opts" get_corpus
run_stage 1 "$corpus_dir $prepared_sets" prepare_data
run_stage 2 "$speed_perturb $(cat "$fbank_config") $feat_dir $all_sets" make_features
run_stage 3 "$token_type $vocab_size $train_set$tokens_sig" train_tokenizer
run_stage 4 "$(stage_opts "$teacher_config")$hf_sig" train_teacher
run_stage 5 "$beam $max_len_ratio $test_sets$ctc_sig$hf_sig" evaluate_teacher
run_stage 6 "$student_modes $nbest_beam $max_len_ratio$ctc_sig$hf_sig$topk_sig" teacher_outputs
run_stage 7 "$student_modes $nbest_size $posterior_scale$hf_sig${hf_sig:+ $hf_max_wer}" pseudo_labels
run_stage 8 "$(stage_opts $(for s in $student_sizes; do echo "conf/train_student_$s.yaml"; done) $frame_kd_config) $student_sizes $student_modes $gold_weight $expand_epochs$seeds_sig$kd_sig" train_students
run_stage 9 "$beam $max_len_ratio $student_sizes $student_modes $frame_kd_config $decode_nj$ctc_sig$hf_sig$seeds_sig" decode_all
run_stage 10 "$student_sizes $student_modes $frame_kd_config $test_sets $report_set$seeds_sig" report
log "done: stages $stage-$stop_stage"
