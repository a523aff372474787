#!/usr/bin/env bash
# Speech translation recipe: the stages shared by every ST corpus.
#
# A corpus recipe (egs/<corpus>/st1/run.sh) calls this script with its own
# defaults followed by the user's options.  It runs from the recipe directory,
# which provides cmd.sh, path.sh and local/get_corpus.sh.
#
#   0 corpus (mini: synthesise it)      1 data prep -> data/{train,dev,tst-COMMON}
#   2 features + global CMVN            3 tokenizers
#   4 MT teacher training               5 teacher evaluation (decode + score)
#   6 teacher top-k cache  7 teacher n-best  8 rescoring   (KD: not implemented yet)
#   9 student training per --kd-modes   10 fine-tuning of the word-KD student (not implemented yet)
#   11 decoding                         12 scoring -> exp/results.json, exp/RESULTS.md
set -euo pipefail

template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
prog="egs/$(basename "$(dirname "$PWD")")/$(basename "$PWD")/run.sh"  # run.sh cd-s into its recipe dir
usage_header="Usage: $prog [--stage N] [--stop-stage M] [options]

Stages: 0 corpus, 1 data prep, 2 features + CMVN, 3 tokenizers, 4 MT teacher,
5 teacher evaluation, 9 students (--kd-modes), 11 decoding, 12 scoring.
Stages 6-8 and 10 (teacher outputs, rescoring, fine-tuning) are not implemented yet."
. "$template/utils/options.sh"
. "$template/utils/stages.sh"

opt stage 0 "first stage to run"
opt stop_stage 12 "last stage to run"
opt nj 4 "parallel jobs for the data stages"
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
opt src_vocab_size 1000 "source vocabulary (bpe/unigram)"
opt tgt_token_type bpe "target tokenizer: bpe, unigram or char"
opt tgt_vocab_size 1000 "target vocabulary (bpe/unigram)"
opt mt_config conf/train_mt.yaml "training config of the MT teacher"
opt st_config conf/train_st.yaml "training config of the ST students"
opt train_opts "" "extra kdst train options for every model, e.g. '--set train.epochs=5'"
opt kd_modes none "students to train: none (baseline on gold references); KD modes come later"
opt n_average 5 "checkpoints averaged for decoding (best by validation loss)"
opt beam 5 "beam size for decoding"
opt mt_max_len_ratio 1.5 "MT decoding: max output tokens per source token"
opt st_max_len_ratio 0.5 "ST decoding: max output tokens per encoder frame (after 4x subsampling)"
opt decode_nj 2 "parallel decoding jobs"
parse_options "$@"

implemented=" 0 1 2 3 4 5 9 11 12 "  # the stages this version of kdst has
if [[ $implemented != *" $stage "* ]] && [ "$stage" -eq "$stop_stage" ]; then
  echo "$prog: stage $stage is not implemented yet (implemented:$implemented)" >&2
  exit 2
fi
for mode in $kd_modes; do
  if [ "$mode" != none ]; then
    echo "$prog: --kd-modes $mode is not implemented yet: only 'none' (the baseline) is" >&2
    exit 2
  fi
done

. ./path.sh
. ./cmd.sh

train_sp=$train_set
[ -n "$speed_perturb" ] && train_sp=${train_set}_sp
all_sets="$train_sp $dev_set $test_sets"
src_tokens=data/tokens/${src_lang}_${src_token_type}${src_vocab_size}
tgt_tokens=data/tokens/${tgt_lang}_${tgt_token_type}${tgt_vocab_size}
[ "$src_token_type" = char ] && src_tokens=data/tokens/${src_lang}_char
[ "$tgt_token_type" = char ] && tgt_tokens=data/tokens/${tgt_lang}_char

# run_stage N "OPTIONS THE STAGE DEPENDS ON" FUNCTION
run_stage() {
  local n=$1 signature
  [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ] || return 0
  if [[ $implemented != *" $n "* ]]; then
    log "stage $n: $3 is not implemented yet; skipped"
    return 0
  fi
  signature=$(stage_signature "$n" "$2")
  if stage_is_done "$n" "$signature"; then
    log "stage $n: done already (remove $stage_dir/stage$n.done to redo)"
    return 0
  fi
  log "stage $n: $3"
  local start=$SECONDS
  "$3"
  stage_finished "$n" "$signature"
  log "stage $n: finished in $((SECONDS - start)) s"
}

get_corpus() {
  # shellcheck disable=SC2086  # corpus_opts is a list of options
  local/get_corpus.sh --corpus-dir "$corpus_dir" --tgt-lang "$tgt_lang" $corpus_opts
}

prepare_data() {
  kdst prep-mustc "$corpus_dir" data --tgt-lang "$tgt_lang" --splits "$(echo "$train_set $dev_set $test_sets" | tr ' ' ,)"
  # shellcheck disable=SC2086
  kdst validate-data $(for s in $train_set $dev_set $test_sets; do echo "data/$s"; done)
}

make_features() {
  if [ -n "$speed_perturb" ]; then
    kdst speed-perturb "data/$train_set" "data/$train_sp" --factors "$speed_perturb"
  fi
  local set
  for set in $all_sets; do
    kdst fbank --nj "$nj" --cmd "$train_cmd" --config "$fbank_config" "data/$set" "$feat_dir/$set"
  done
  kdst compute-cmvn "data/$train_sp/feats.scp" "data/$train_sp/cmvn.ark"
  # shellcheck disable=SC2046
  kdst validate-data --no-audio $(for s in $all_sets; do echo "data/$s"; done)
}

train_tokenizers() {
  kdst tokenizer train "$src_tokens" "data/$train_set/text.$src_lang" \
    --type "$src_token_type" --vocab-size "$src_vocab_size"
  kdst tokenizer train "$tgt_tokens" "data/$train_set/text.$tgt_lang" \
    --type "$tgt_token_type" --vocab-size "$tgt_vocab_size"
}

mt_data="--set data.train=data/$train_set --set data.valid=data/$dev_set --set data.src_text=text.$src_lang
  --set data.tokenizer=$tgt_tokens --set data.src_tokenizer=$src_tokens"
st_data="--set data.train=data/$train_sp --set data.valid=data/$dev_set --set data.tokenizer=$tgt_tokens
  --set data.cmvn=data/$train_sp/cmvn.ark --set data.ctc_text=text.$src_lang --set data.ctc_tokenizer=$src_tokens"

# train_model EXP_DIR CONFIG "DATA OVERRIDES": resumes an interrupted run, then averages checkpoints.
train_model() {
  mkdir -p "$1"
  # shellcheck disable=SC2086
  ${cuda_cmd} "$1/train.log" kdst train --config "$2" --exp-dir "$1" --resume $3 $train_opts
  kdst average --exp-dir "$1" --num "$n_average"
}

# decode_sets EXP_DIR MAX_LEN_RATIO SETS...
decode_sets() {
  local exp=$1 ratio=$2 set
  shift 2
  for set in "$@"; do
    kdst decode --checkpoint "$exp/avg_best$n_average.pt" --data-dir "data/$set" \
      --output-dir "$exp/decode_$set" --beam "$beam" --max-len-ratio "$ratio" \
      --nj "$decode_nj" --cmd "$decode_cmd"
  done
}

train_teacher() { train_model exp/mt_teacher "$mt_config" "$mt_data"; }

evaluate_teacher() {
  # shellcheck disable=SC2086
  decode_sets exp/mt_teacher "$mt_max_len_ratio" $dev_set $test_sets
  kdst results --systems mt_teacher --sets "$test_sets"
}

train_students() {
  local mode
  for mode in $kd_modes; do
    train_model "exp/st_$mode" "$st_config" "$st_data"
  done
}

decode_students() {
  local mode
  for mode in $kd_modes; do
    # shellcheck disable=SC2086
    decode_sets "exp/st_$mode" "$st_max_len_ratio" $test_sets
  done
}

score_all() {
  kdst results --systems "mt_teacher $(for m in $kd_modes; do echo "st_$m"; done)" --sets "$test_sets"
}

stage_opts() { cat "$@" 2>/dev/null; echo "$train_opts $n_average"; }
run_stage 0 "$corpus_dir $tgt_lang $corpus_opts" get_corpus
run_stage 1 "$corpus_dir $tgt_lang $train_set $dev_set $test_sets" prepare_data
run_stage 2 "$speed_perturb $(cat "$fbank_config") $feat_dir $all_sets" make_features
run_stage 3 "$src_token_type $src_vocab_size $tgt_token_type $tgt_vocab_size $train_set" train_tokenizers
run_stage 4 "$(stage_opts "$mt_config")" train_teacher
run_stage 5 "$beam $mt_max_len_ratio $test_sets" evaluate_teacher
run_stage 6 "" teacher_topk_cache
run_stage 7 "" teacher_nbest
run_stage 8 "" rescore_nbest
run_stage 9 "$(stage_opts "$st_config") $kd_modes" train_students
run_stage 10 "" finetune_word_kd
run_stage 11 "$beam $st_max_len_ratio $kd_modes" decode_students
run_stage 12 "$kd_modes $test_sets" score_all
log "done: stages $stage-$stop_stage"
