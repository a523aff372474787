#!/usr/bin/env bash
# Speech translation recipe: the stages shared by every ST corpus.
#
# A corpus recipe (egs/<corpus>/st1/run.sh) calls this script with its own
# defaults followed by the user's options.  It runs from the recipe directory,
# which provides cmd.sh, path.sh and local/get_corpus.sh.
#
#   0 corpus (mini: synthesise it)      1 data prep -> data/{train,dev,tst-COMMON}
#   2 features + global CMVN            3 tokenizers
#   4 MT teacher training, and the ASR pre-training of the students' encoder (--pretrain)
#                                       5 teacher evaluation (decode + score)
#   6 teacher top-k cache on train      7 teacher n-best on train
#   8 rescoring -> Seq-KD / Seq-Inter targets (data/<train>/text.seqkd, text.seqinter)
#   9 student training per --kd-modes   10 fine-tuning of the word-KD students on gold references
#   11 decoding                         12 scoring -> exp/results.json, exp/RESULTS.md
#
# KD modes (--kd-modes): none (gold references), word (word-level KD from the teacher's
# top-k cache, or online with --word-kd-source online), seqkd (the teacher's 1-best as
# the target), seqinter (the n-best entry closest to the reference), and combinations
# of a sequence mode with word KD (seqkd+word, seqinter+word; online teacher).
#
# --teacher REF names the MT teacher, and stages 5-9 hand that same REF to kdst decode
# --model, kdst topk --teacher and the students' kd.teacher.  Empty (the default): stage 4
# trains it, REF = exp/mt_teacher/avg_best<n_average>.pt.  espnet:PATH: an ESPnet2 MT model
# (exp dir with config.yaml + model file, or a packed zip) is the teacher as it is: stage 3
# exports its target token list and BPE model as the students' target tokenizer (they must
# share one vocabulary), stage 4 trains nothing, and kdst runs it through
# kdst.models.espnet_bridge.  --teacher-espnet PATH is the older spelling of --teacher espnet:PATH.
# hf:PATH[,src=LANG,tgt=LANG]: a Hugging Face seq2seq MT model (OPUS-MT, NLLB, M2M100; a save_pretrained
# dir or a hub name in the local cache; docs/HF_TEACHERS.md), the same way: stage 3 exports its tokenizer
# (kdst hf-tokenizer), stage 4 trains nothing, and its decodings (stages 5, 7) follow generate()'s rules
# (kdst decode --hf-rule).
#
# ASR pre-training (--pretrain yes|both; Gaido et al. 2020, ESPnet's ST recipes): stage 4 also trains
# one ASR model (CTC + attention on the transcript, the students' encoder shape: --asr-config),
# beside the MT teacher, and every pre-trained student starts with its encoder and CTC head
# (train.init_parts); --decoder-init mt also gives them the MT teacher's decoder (the mini recipe's
# students have its shape; MuST-C's do not). Systems: st_none (scratch) and st_pt (pre-trained), st_<mode> and
# st_pt_<mode>. --seeds "1 2 3" trains every student once per seed; a seed other than 1
# adds _s<seed> to the system name, so one-seed runs and seed 1 of a study share their students.
#
# Each training stage registers what it trained in exp/systems.json (kdst systems add: task,
# role, KD mode, teacher, init), where the reports find what a system is.
set -euo pipefail

template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
prog="egs/$(basename "$(dirname "$PWD")")/$(basename "$PWD")/run.sh"  # run.sh cd-s into its recipe dir
usage_header="Usage: $prog [--stage N] [--stop-stage M] [options]

Stages: 0 corpus, 1 data prep, 2 features + CMVN, 3 tokenizers, 4 MT teacher (+ ASR pre-training),
5 teacher evaluation, 6 teacher top-k cache, 7 teacher n-best, 8 rescoring,
9 students (--kd-modes), 10 fine-tuning of word-KD students, 11 decoding, 12 scoring."
. "$template/utils/options.sh"
. "$template/utils/stages.sh"
. "$template/utils/jobs.sh"
. "$template/utils/common.sh"
. "$template/utils/progress.sh"

opt stage 0 "first stage to run" int
opt stop_stage 12 "last stage to run" int
opt nj 4 "parallel jobs for the data stages" count
opt corpus_dir corpus "where the corpus is (or, for mini, is synthesised)"
opt corpus_opts "" "extra options for local/get_corpus.sh (mini: --num-train N ...)"
opt src_lang en "source (speech) language"
opt tgt_lang de "target (translation) language"
opt train_set train "training split"
opt dev_set dev "validation split"
opt test_sets tst-COMMON "evaluation splits (space separated)"
opt speed_perturb "" "speed factors for the training set, e.g. 0.9,1.0,1.1 (empty: none)"
opt fbank_config "$template/../../conf/fbank.yaml" "fbank options"
opt feat_dir dump/fbank "where feature archives go"
opt src_token_type bpe "source tokenizer: bpe, unigram or char"
opt src_vocab_size 1000 "source vocabulary (bpe/unigram)" count
opt tgt_token_type bpe "target tokenizer: bpe, unigram or char"
opt tgt_vocab_size 1000 "target vocabulary (bpe/unigram)" count
opt mt_config conf/train_mt.yaml "training config of the MT teacher"
opt mt_extra_sets "" "extra parallel text for the MT teacher: data dirs with text.<src> and text (space separated)"
opt st_config conf/train_st.yaml "training config of the ST students"
opt pretrain no "ASR pre-training of the students' encoder: no, yes (every student starts from it) or both (each student both ways)"
opt decoder_init none "decoder of the pre-trained students: none (random) or mt (the MT teacher's, as ESPnet-ST's --dec-init; the students' decoder must have its shape)"
opt asr_config conf/train_asr.yaml "training config of the ASR pre-training model (the students' encoder shape)"
opt seeds 1 "training seeds of the students (space separated): each student is trained once per seed"
opt train_opts "" "extra kdst train options for every model, e.g. '--set train.epochs=5'"
opt kd_modes "none word seqkd seqinter" "students: none word seqkd seqinter seqkd+word seqinter+word"
opt word_kd_source cache "word KD teacher: cache (stage 6 top-k) or online (the MT teacher in every step)"
# lambda = 1: word-KD alone, then stage 10 fine-tunes on gold references, Gaido et al. (2020)'s best
# recipe (FBK's, as conf/kd_word.yaml says); kdst train's own default is Kim & Rush's 0.5 for MT
opt kd_weight 1.0 "share of the KD term in the word-KD loss (lambda; 1: word-KD alone, then fine-tuning)" num
opt kd_temperature 1.0 "softmax temperature of word KD (also of the stage-6 cache: its draws and rest)" num
opt topk 8 "teacher entries per target token in the cache" count
opt topk_mode topk "cache mode: topk (k best logits) or sampled (k draws with counts)"
opt word_kd_config conf/kd_word.yaml "more kd.* settings of the word-KD students: flat 'key: value' lines (label_smoothing, t2_scale; topk_rest for the cached student)"
opt nbest_beam 5 "teacher beam for the n-best on train (Seq-KD trains on its 1-best; Kim & Rush: beam 5)" count
opt nbest_size 5 "teacher hypotheses per utterance that Seq-Inter chooses among (Kim & Rush: 35, as egs/mustc/st1)" count
opt rescore_metric bleu "Seq-Inter choice: bleu (Kim & Rush), chrf, ter (closest to the reference) or mbr (reference-free: the one the n-best agrees with most)"
opt finetune yes "stage 10: fine-tune each word-KD student on gold references (yes/no)"
opt student_jobs 1 "students trained at the same time (stages 9, 10); on one machine they share its cores" count
opt finetune_opts "--set train.epochs=5 --set optim.lr=5.0e-4 --set optim.warmup_steps=1 --set optim.schedule=constant" "kdst train options of the fine-tuning"
opt n_average 5 "checkpoints averaged for decoding (best by validation loss)" count
opt beam 5 "beam size for decoding" count
opt mt_max_len_ratio 1.5 "MT decoding: max output tokens per source token" num
opt st_max_len_ratio 0.5 "ST decoding: max output tokens per encoder frame (after 4x subsampling)" num
opt decode_nj 2 "parallel decoding jobs" count
opt teacher "" "the MT teacher: empty = train it (stage 4), espnet:PATH = an ESPnet2 MT exp dir or packed zip, hf:PATH[,src=,tgt=] = a Hugging Face MT model (no teacher training; students adopt its vocabulary)"
opt teacher_espnet "" "the same as --teacher espnet:PATH"
parse_options "$@"

implemented=" 0 1 2 3 4 5 6 7 8 9 10 11 12 "  # the stages this version of kdst has
check_stages
for mode in $kd_modes; do
  case $mode in
    none|word|seqkd|seqinter|seqkd+word|seqinter+word) ;;
    *) echo "$prog: unknown --kd-modes entry '$mode' (none word seqkd seqinter seqkd+word seqinter+word)" >&2
       exit 2 ;;
  esac
done
case $word_kd_source in cache|online) ;; *) echo "$prog: --word-kd-source must be cache or online" >&2; exit 2 ;; esac
if [ -n "$word_kd_config" ] && [ ! -f "$word_kd_config" ]; then
  echo "$prog: --word-kd-config $word_kd_config not found" >&2
  exit 2
fi
case $pretrain in
  no) pretrain_variants=no ;; yes) pretrain_variants=yes ;; both) pretrain_variants="no yes" ;;
  *) echo "$prog: --pretrain must be no, yes or both" >&2; exit 2 ;;
esac
case $decoder_init in none|mt) ;; *) echo "$prog: --decoder-init must be none or mt" >&2; exit 2 ;; esac
check_seeds
first_seed=${seeds%% *}
if [ -n "$teacher_espnet" ]; then
  if [ -n "$teacher" ] && [ "$teacher" != "espnet:$teacher_espnet" ]; then
    echo "$prog: --teacher $teacher and --teacher-espnet $teacher_espnet name two teachers: give one" >&2
    exit 2
  fi
  teacher=espnet:$teacher_espnet
fi
# espnet_model: the ESPnet teacher's path, empty when stage 4 trains the teacher (stage signatures hold it)
espnet_model=""
case $teacher in
  "") teacher=exp/mt_teacher/avg_best$n_average.pt ;;
  espnet:*)
    espnet_model=$(readlink -f "${teacher#espnet:}") || true
    [ -n "$espnet_model" ] && [ -e "$espnet_model" ] ||
      { echo "$prog: --teacher $teacher: ${teacher#espnet:} not found" >&2; exit 2; }
    teacher=espnet:$espnet_model ;;
  hf:*)  # a local directory made absolute (its options kept), a hub name as it is
    hf_model=$(hf_spec "$teacher") || exit 2
    teacher=hf:$hf_model ;;
  *) echo "$prog: --teacher $teacher: empty (stage 4 trains the teacher), espnet:PATH or hf:PATH" >&2; exit 2 ;;
esac
# hf_model: the Hugging Face teacher's spec, empty otherwise; the stage signatures hold either
hf_model=${hf_model:-}
if [ "$decoder_init" = mt ] && [ -n "$espnet_model$hf_model" ]; then
  # a recipe's default that this teacher cannot serve: its decoder has another vocabulary and shape
  echo "$prog: note: the pre-trained students' decoders start random: --decoder-init mt copies the decoder" \
    "of the MT teacher stage 4 trains, and the teacher is $teacher" >&2
  decoder_init=none
fi
teacher_sig=$espnet_model$hf_model
hf_decode=()  # generate()'s rules for a Hugging Face teacher's decodings
[[ $teacher == hf:* ]] && hf_decode=(--hf-rule)

. ./path.sh
. ./cmd.sh
train_sp=$train_set
[ -n "$speed_perturb" ] && train_sp=${train_set}_sp
all_sets="$train_sp $dev_set $test_sets"
src_tokens=data/tokens/${src_lang}_${src_token_type}${src_vocab_size}
tgt_tokens=data/tokens/${tgt_lang}_${tgt_token_type}${tgt_vocab_size}
[ "$src_token_type" = char ] && src_tokens=data/tokens/${src_lang}_char
[ "$tgt_token_type" = char ] && tgt_tokens=data/tokens/${tgt_lang}_char
[[ $teacher == espnet:* ]] && tgt_tokens=data/tokens/${tgt_lang}_espnet
[[ $teacher == hf:* ]] && tgt_tokens=data/tokens/${tgt_lang}_hf

get_corpus() {
  # shellcheck disable=SC2086  # corpus_opts is a list of options
  local/get_corpus.sh --corpus-dir "$corpus_dir" --tgt-lang "$tgt_lang" $corpus_opts
}

prepare_data() {
  kdst prep-mustc "$corpus_dir" data --tgt-lang "$tgt_lang" --splits "$(echo "$train_set $dev_set $test_sets" | tr ' ' ,)"
  # shellcheck disable=SC2086
  kdst validate-data $(for s in $train_set $dev_set $test_sets; do echo "data/$s"; done)
}

train_tokenizers() {
  kdst tokenizer train "$src_tokens" "data/$train_set/text.$src_lang" \
    --type "$src_token_type" --vocab-size "$src_vocab_size"
  if [[ $teacher == espnet:* ]]; then  # the students adopt the ESPnet teacher's token list and BPE model
    kdst espnet-tokenizer --teacher-espnet "$espnet_model" --out "$tgt_tokens"
    return 0
  fi
  if [[ $teacher == hf:* ]]; then  # the students adopt the Hugging Face teacher's tokenizer
    kdst hf-tokenizer --teacher "$teacher" --out "$tgt_tokens" --side tgt
    return 0
  fi
  kdst tokenizer train "$tgt_tokens" "data/$train_set/text.$tgt_lang" \
    --type "$tgt_token_type" --vocab-size "$tgt_vocab_size"
}

mt_train=data/$train_set
[ -n "$mt_extra_sets" ] && mt_train=data/mt_train
mt_data="--set data.train=$mt_train --set data.valid=data/$dev_set --set data.src_text=text.$src_lang
  --set data.tokenizer=$tgt_tokens --set data.src_tokenizer=$src_tokens"
st_data="--set data.train=data/$train_sp --set data.valid=data/$dev_set --set data.tokenizer=$tgt_tokens
  --set data.cmvn=data/$train_sp/cmvn.ark --set data.ctc_text=text.$src_lang --set data.ctc_tokenizer=$src_tokens"

# decode_sets MODEL OUTPUT_EXP_DIR MAX_LEN_RATIO SETS...: MODEL a student's checkpoint, or $teacher
decode_sets() {
  local model=$1 exp=$2 ratio=$3 set src=()
  shift 3
  [ "$model" != "$teacher" ] || src=(--src-text "text.$src_lang" "${hf_decode[@]}")  # the MT teacher reads the transcripts
  for set in "$@"; do
    kdst decode --model "$model" "${src[@]}" --data-dir "data/$set" \
      --output-dir "$exp/decode_$set" --beam "$beam" --max-len-ratio "$ratio" \
      --nj "$decode_nj" --cmd "$decode_cmd"
  done
}

# register NAME ROLE MODE [kdst systems add options]: into exp/systems.json, for the reports
register() {
  local name=$1 role=$2 mode=$3
  shift 3
  kdst systems add --name "$name" --task "$(task_of "$name")" --role "$role" --mode "$mode" "$@"
}
task_of() { case $1 in mt_teacher) echo mt ;; asr_pretrain) echo asr ;; *) echo st ;; esac; }

train_teacher() {
  if [[ $teacher == espnet:* ]]; then
    log "the teacher is the ESPnet model $espnet_model; nothing to train"
  elif [[ $teacher == hf:* ]]; then
    log "the teacher is the Hugging Face model $hf_model; nothing to train"
  else
    if [ -n "$mt_extra_sets" ]; then
      # shellcheck disable=SC2086
      kdst combine-text "$mt_train" "data/$train_set" $mt_extra_sets --files "text.$src_lang,text"
    fi
    train_model exp/mt_teacher "$mt_config" "$mt_data"
  fi
  register mt_teacher teacher none --arch mt --model "$teacher"
}

pretrained=exp/asr_pretrain/avg_best$n_average.pt
asr_data="--set data.train=data/$train_sp --set data.valid=data/$dev_set --set data.text=text.$src_lang
  --set data.tokenizer=$src_tokens --set data.cmvn=data/$train_sp/cmvn.ark"

train_asr_pretrain() {
  OMP_NUM_THREADS=$model_threads train_model exp/asr_pretrain "$asr_config" "$asr_data"
  register asr_pretrain pretrained none --arch st --model "$pretrained"
}

# Stage 4: the teacher and the ASR pre-training model are independent: side by side, each on its share
# of the cores (--student-jobs at a time).
train_stage4_model() { if [ "$1" = teacher ]; then train_teacher; else train_asr_pretrain; fi; }
train_stage4() {
  local models=teacher
  [ "$pretrain" = no ] || models="teacher asr"
  # shellcheck disable=SC2086
  model_threads=$(threads_for $(echo $models | wc -w)) in_parallel "$student_jobs" train_stage4_model $models
}

evaluate_teacher() {
  # shellcheck disable=SC2086
  decode_sets "$teacher" exp/mt_teacher "$mt_max_len_ratio" $dev_set $test_sets
  kdst results --systems mt_teacher --sets "$test_sets"
}

topk_cache=exp/mt_teacher/topk_$train_sp
nbest_dir=exp/mt_teacher/nbest_$train_sp
wants() { [[ " $kd_modes " == *"$1"* ]]; }  # wants seq: some mode uses a sequence-level target

teacher_topk_cache() {
  if [[ " $kd_modes " != *" word "* ]] || [ "$word_kd_source" != cache ]; then
    log "no --kd-modes entry reads the top-k cache; nothing to do"
    return 0
  fi
  kdst topk --teacher "$teacher" --src-text "text.$src_lang" --data-dir "data/$train_sp" --out "$topk_cache" --k "$topk" \
    --mode "$topk_mode" --temperature "$kd_temperature" --nj "$decode_nj" --cmd "$decode_cmd"
}

teacher_nbest() {
  if ! wants seq; then
    log "no --kd-modes entry uses the teacher's n-best; nothing to do"
    return 0
  fi
  kdst decode --model "$teacher" --src-text "text.$src_lang" --data-dir "data/$train_sp" --output-dir "$nbest_dir" \
    --beam "$nbest_beam" --nbest "$nbest_size" --max-len-ratio "$mt_max_len_ratio" "${hf_decode[@]}" \
    --nj "$decode_nj" --cmd "$decode_cmd"
}

rescore_nbest() {
  if ! wants seq; then
    log "no --kd-modes entry uses rescored targets; nothing to do"
    return 0
  fi
  kdst rescore --nbest "$nbest_dir/nbest.txt" --metric rank --out "data/$train_sp/text.seqkd" \
    --stats-json "$nbest_dir/seqkd_stats.json"
  kdst rescore --nbest "$nbest_dir/nbest.txt" --ref "data/$train_sp/text" --metric "$rescore_metric" \
    --nbest-size "$nbest_size" --out "data/$train_sp/text.seqinter" --stats-json "$nbest_dir/seqinter_stats.json"
}

# A student is a spec MODE@PRETRAIN@SEED (seqkd+word@yes@2); its system name: st_seqkd_word, st_pt_seqkd_word_s2
student_specs() {
  local seed pt mode
  for seed in $seeds; do for pt in $pretrain_variants; do for mode in $kd_modes; do
    echo "$mode@$pt@$seed"
  done; done; done
}
system_of() {
  local mode=${1%%@*} rest=${1#*@} name=st
  local pt=${rest%@*} seed=${rest#*@}
  [ "$pt" = yes ] && name=st_pt
  if [ "$mode" != none ] || [ "$pt" != yes ]; then name="${name}_${mode//+/_}"; fi
  echo "$name$(seed_suffix "$seed")"
}

# The kdst train options of a student spec.
mode_opts() {
  local mode=${1%%@*} rest=${1#*@}
  local pt=${rest%@*} seed=${rest#*@}
  echo "--set train.seed=$seed"
  # JSON-style quotes: the options are split at spaces, and YAML needs a space after an unquoted key's colon
  if [ "$pt" = yes ]; then
    local parts="{\"checkpoint\":\"$pretrained\",\"modules\":[encoder,ctc]}"
    [ "$decoder_init" = mt ] && parts+=",{\"checkpoint\":\"$teacher\",\"modules\":[decoder]}"
    echo "--set train.init_parts=[$parts]"
  fi
  case $mode in
    seqkd*) echo "--set data.text=text.seqkd --set data.valid_text=text" ;;
    seqinter*) echo "--set data.text=text.seqinter --set data.valid_text=text" ;;
  esac
  case $mode in
    *word*)
      echo "--set kd.weight=$kd_weight --set kd.temperature=$kd_temperature --set kd.teacher=$teacher"
      # the cache holds the teacher on the gold references (made reading text.$src_lang in stage 6);
      # a sequence target needs the teacher online, reading the transcript itself
      if [ "$mode" = word ] && [ "$word_kd_source" = cache ]; then
        echo "--set kd.cache=$topk_cache"
      else
        echo "--set kd.src_text=text.$src_lang"
      fi
      # each 'key: value' line of --word-kd-config is one --set kd.key=value; topk_rest is the cache's
      [ -z "$word_kd_config" ] || awk -v cached="$([ "$mode" = word ] && [ "$word_kd_source" = cache ] && echo 1)" '
        !/^[[:space:]]*(#|$)/ { sub(/[[:space:]]*#.*/, ""); split($0, kv, /:[[:space:]]*/)
                                if (kv[1] != "topk_rest" || cached) printf "--set kd.%s=%s\n", kv[1], kv[2] }' \
        "$word_kd_config" ;;
  esac
  return 0
}

train_student() {
  local system mode=${1%%@*} rest=${1#*@} learnt_from=() init=()
  system=$(system_of "$1")
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=$student_threads train_model "exp/$system" "$st_config" "$st_data $(mode_opts "$1")"
  [ "$mode" = none ] || learnt_from=(--teacher "$teacher")
  [ "${rest%@*}" = yes ] && init=(--init "$pretrained")
  # the seeds of one student make one row of the tables: its group is its name without the seed
  register "$system" student "$mode" --arch st --model "exp/$system/avg_best$n_average.pt" "${learnt_from[@]}" \
    "${init[@]}" --group "$(system_of "${1%@*}@1")"
}

train_students() {
  # shellcheck disable=SC2046
  student_threads=$(threads_for $(student_specs | wc -l)) in_parallel "$student_jobs" train_student $(student_specs)
}

finetuned_specs() {
  [ "$finetune" = yes ] || return 0
  local spec
  for spec in $(student_specs); do
    [[ ${spec%%@*} == *word* ]] && echo "$spec"
  done
  return 0
}

finetuned_systems() {
  local spec
  for spec in $(finetuned_specs); do echo "$(system_of "$spec")_ft"; done
}

# finetune_student SPEC
finetune_student() {
  local from system
  from=$(system_of "$1")
  system=${from}_ft
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=$student_threads train_model "exp/$system" "$st_config" \
    "$st_data --set train.init=exp/$from/avg_best$n_average.pt --set train.seed=${1##*@} $finetune_opts"
  register "$system" student "${1%%@*}" --arch st --model "exp/$system/avg_best$n_average.pt" --teacher "$teacher" \
    --init "exp/$from/avg_best$n_average.pt" --group "$(system_of "${1%@*}@1")_ft"
}

finetune_word_kd() {
  # shellcheck disable=SC2046
  student_threads=$(threads_for $(finetuned_specs | wc -l)) in_parallel "$student_jobs" finetune_student $(finetuned_specs)
}

student_systems() {
  local spec
  for spec in $(student_specs); do system_of "$spec"; done
  finetuned_systems
}

decode_students() {
  local system
  for system in $(student_systems); do
    # shellcheck disable=SC2086
    decode_sets "exp/$system/avg_best$n_average.pt" "exp/$system" "$st_max_len_ratio" $test_sets
  done
}

score_all() {
  local baseline=()
  # the baseline: the student of the references, from scratch (or pre-trained, when every student is)
  [[ " $kd_modes " == *" none "* ]] && baseline=(--baseline "$(system_of "none@${pretrain_variants%% *}@$first_seed")")
  kdst results --systems "mt_teacher $(student_systems | tr '\n' ' ')" --sets "$test_sets" "${baseline[@]}"
}

stage_opts() { cat "$@" 2>/dev/null; echo "$train_opts $n_average"; }
run_stage 0 "$corpus_dir $tgt_lang $corpus_opts" get_corpus
run_stage 1 "$corpus_dir $tgt_lang $train_set $dev_set $test_sets" prepare_data
run_stage 2 "$speed_perturb $(cat "$fbank_config") $feat_dir $all_sets" make_features
run_stage 3 "$src_token_type $src_vocab_size $tgt_token_type $tgt_vocab_size $train_set $teacher_sig" train_tokenizers
run_stage 4 "$(stage_opts "$mt_config") $mt_extra_sets $teacher_sig $pretrain $([ "$pretrain" = no ] || stage_opts "$asr_config")" train_stage4
run_stage 5 "$beam $mt_max_len_ratio $test_sets $teacher_sig" evaluate_teacher
run_stage 6 "$kd_modes $word_kd_source $topk $topk_mode $kd_temperature $teacher_sig" teacher_topk_cache
run_stage 7 "$kd_modes $nbest_beam $nbest_size $mt_max_len_ratio $teacher_sig" teacher_nbest
run_stage 8 "$kd_modes $rescore_metric $nbest_size $teacher_sig" rescore_nbest
run_stage 9 "$(stage_opts "$st_config" $word_kd_config) $kd_modes $word_kd_source $kd_weight $kd_temperature $teacher_sig $pretrain $decoder_init $seeds" train_students
run_stage 10 "$kd_modes $finetune $finetune_opts $pretrain $decoder_init $seeds" finetune_word_kd
run_stage 11 "$beam $st_max_len_ratio $kd_modes $finetune $pretrain $decoder_init $seeds" decode_students
run_stage 12 "$kd_modes $finetune $test_sets $pretrain $decoder_init $seeds" score_all
log "done: stages $stage-$stop_stage"
