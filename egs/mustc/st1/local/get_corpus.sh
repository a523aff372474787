#!/usr/bin/env bash
# Stage 0 of the MuST-C recipe: find the corpus, unpacking the release tarball if needed.
# MuST-C is distributed after registration, so kdst cannot download it for you.
set -euo pipefail
corpus_dir="" tgt_lang=de
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-dir) corpus_dir=$2 ;;
    --tgt-lang) tgt_lang=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
target=$corpus_dir/en-$tgt_lang
if [ -d "$target/data" ]; then
  echo "$0: found $target" >&2
  exit 0
fi
tarball=$corpus_dir/MUSTC_v1.0_en-$tgt_lang.tar.gz
if [ -f "$tarball" ]; then
  echo "$0: unpacking $tarball" >&2
  tar -xzf "$tarball" -C "$corpus_dir"
  [ -d "$target/data" ] && exit 0
  echo "$0: $tarball did not contain en-$tgt_lang/data" >&2
  exit 1
fi
echo "$0: MuST-C en-$tgt_lang not found: expected $target/data or $tarball." >&2
echo "$0: download MuST-C v1.0 (registration required on the MuST-C website) and pass --corpus-dir." >&2
exit 1
