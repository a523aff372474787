# Stage functions every recipe template shares (source it after the options are parsed).
# They read the template's variables when called: train_set, train_sp, all_sets,
# speed_perturb, nj, fbank_config, feat_dir, train_cmd, cuda_cmd, train_opts, n_average.
# train_model needs progress.sh.

# Stage 2: optional speed perturbation, fbank in nj jobs, global CMVN on the training set.
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

# train_model EXP_DIR CONFIG "OPTIONS": resumes an interrupted run, then averages checkpoints.
# The console gets where the log is and, while it trains, a progress line now and then (progress.sh).
train_model() {
  mkdir -p "$1"
  # A trainer still running in this exp dir (kdst train holds $1/.lock) would refuse the new one, but
  # the launcher would first truncate the log that trainer writes: refuse here, before the launcher.
  if [ -e "$1/.lock" ] && command -v flock >/dev/null && ! flock -n "$1/.lock" true 2>/dev/null; then
    echo "$1 is being trained by pid $(cut -d' ' -f1 "$1/.lock") on host $(cut -d' ' -f2 "$1/.lock") ($1/.lock)" >&2
    return 1
  fi
  # shellcheck disable=SC2086
  with_progress "$1" ${cuda_cmd} "$1/train.log" kdst train --config "$2" --exp-dir "$1" --resume $3 $train_opts
  kdst average --exp-dir "$1" --num "$n_average"
}

# hf_spec REFERENCE: the spec of an hf: teacher reference, a local directory made absolute (its ",options"
# kept) and a hub name as it is; a path that looks local (./, /, ~) and is missing is an error (status 2).
hf_spec() {
  local spec=${1#hf:} path
  path=${spec%%,*}
  if [ -e "$path" ]; then
    echo "$(readlink -f "$path")${spec#"$path"}"
  elif [[ $path == [./~]* ]]; then
    echo "$prog: --teacher $1: $path not found" >&2
    return 2
  else
    echo "$spec"
  fi
}

# teacher_features SETS...: a Whisper teacher's own features of the sets, into data/<set>$teacher_suffix
# (nothing to do for another teacher; $hf_model is empty then)
teacher_features() {
  [ -n "$hf_model" ] || return 0
  local set
  for set in "$@"; do
    kdst hf-features --teacher "$teacher" "data/$set" "data/$set$teacher_suffix" --nj "$nj" --cmd "$train_cmd"
  done
}

# check_seeds: --seeds (the students' training seeds) are whole numbers, each given once, or one line and
# exit 2; $seeds becomes them one space apart without leading zeros (they go into system names and train.seed).
check_seeds() {
  local seed out=""
  for seed in $seeds; do
    [[ $seed =~ ^[0-9]+$ ]] || { echo "$prog: --seeds '$seeds': seeds are whole numbers" >&2; exit 2; }
    seed=$((10#$seed))
    [[ " $out " != *" $seed "* ]] || { echo "$prog: --seeds '$seeds': seed $seed is given twice" >&2; exit 2; }
    out+="${out:+ }$seed"
  done
  [ -n "$out" ] || { echo "$prog: --seeds is empty" >&2; exit 2; }
  seeds=$out
}

# seed_suffix SEED: what a student's system name gets for its seed: nothing for seed 1 (a one-seed run and
# seed 1 of a study share their students), _s<seed> for any other.
seed_suffix() { [ "$1" = 1 ] || echo "_s$1"; }
