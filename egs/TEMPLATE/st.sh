#!/usr/bin/env bash
# Speech translation recipe: the stages shared by every ST corpus.
#
# A corpus recipe (egs/<corpus>/st1/run.sh) calls this script with its own
# defaults followed by the user's options.  It runs from the recipe directory,
# which provides cmd.sh, path.sh and local/get_corpus.sh.
#
#   0 corpus (mini: synthesise it)      1 data prep -> data/{train,dev,tst-COMMON}
#   2 features + global CMVN            3 tokenizers
#   4-12 (teacher training, KD, decoding, scoring) come with the trainer.
set -euo pipefail

template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
prog="egs/$(basename "$(dirname "$PWD")")/$(basename "$PWD")/run.sh"  # run.sh cd-s into its recipe dir
usage_header="Usage: $prog [--stage N] [--stop-stage M] [options]

Stages: 0 corpus, 1 data prep, 2 features + CMVN, 3 tokenizers."
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
parse_options "$@"

last_stage=3  # the stages this version of kdst implements
if [ "$stage" -gt "$last_stage" ]; then
  echo "$prog: stage $stage is not implemented yet: this version of kdst has stages 0-$last_stage" \
       "(corpus, data, features, tokenizers)" >&2
  exit 2
fi
if [ "$stop_stage" -gt "$last_stage" ]; then
  log "stages $((last_stage + 1))-$stop_stage (teacher, KD, decoding, scoring) are not implemented yet;" \
      "running stages $stage-$last_stage"
  stop_stage=$last_stage
fi

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

run_stage 0 "$corpus_dir $tgt_lang $corpus_opts" get_corpus
run_stage 1 "$corpus_dir $tgt_lang $train_set $dev_set $test_sets" prepare_data
run_stage 2 "$speed_perturb $(cat "$fbank_config") $feat_dir $all_sets" make_features
run_stage 3 "$src_token_type $src_vocab_size $tgt_token_type $tgt_vocab_size $train_set" train_tokenizers
log "done: stages $stage-$stop_stage"
