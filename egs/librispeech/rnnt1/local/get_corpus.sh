#!/usr/bin/env bash
# Stage 0 of the LibriSpeech RNN-T recipe: check that the corpus is there.  LibriSpeech is free
# (CC BY 4.0) from https://www.openslr.org/12 but the cluster is assumed to have no internet, so
# this stage downloads nothing: it says what to fetch where it is missing.
# usage: local/get_corpus.sh --corpus-dir DIR [--parts train-clean-100,...,test-other]
# DIR is LibriSpeech/ (as the tarballs unpack) or the directory holding it.
set -euo pipefail
corpus_dir="" parts=train-clean-100,train-clean-360,train-other-500,dev-clean,dev-other,test-clean,test-other
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --parts) parts=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is empty: pass the LibriSpeech directory" >&2; exit 2; }
root=$corpus_dir
[ -d "$corpus_dir/LibriSpeech" ] && root=$corpus_dir/LibriSpeech
missing=()
for part in ${parts//,/ }; do
  [ -d "$root/$part" ] || missing+=("$part")
done
if [ "${#missing[@]}" -gt 0 ]; then
  {
    echo "$0: $root: missing LibriSpeech part(s): ${missing[*]}"
    echo "Fetch them on a machine with internet access and copy them here, e.g."
    echo "  mkdir -p $corpus_dir && cd $corpus_dir"
    for part in "${missing[@]}"; do
      echo "  wget https://www.openslr.org/resources/12/$part.tar.gz && tar xzf $part.tar.gz   # -> LibriSpeech/$part"
    done
    echo "(mirrors: https://us.openslr.org/resources/12/, https://openslr.elda.org/resources/12/;"
    echo " md5sums: https://www.openslr.org/resources/12/md5sum.txt).  The training parts are 6.3 GB"
    echo " (train-clean-100), 23 GB (train-clean-360) and 30 GB (train-other-500)."
  } >&2
  exit 1
fi
echo "$0: LibriSpeech parts in $root: ${parts//,/ } (stage 1 reads the transcripts and checks the audio)" >&2
