"""Extra parallel text for the mini recipe's MT teacher, from the same grammar as the speech corpus.

Real MT teachers learn from far more text than the ST data has audio for (Gaido et al.
train theirs on OPUS + MuST-C); that surplus is much of what word- and sequence-level
KD pass on to the student.  A teacher trained only on the student's 2,000 sentences
memorises them: its training-set outputs are nearly the references, so distillation
has little to add.  This module writes a text-only Kaldi data dir (``text.en``,
``text.de``, ``text`` = the German side, ``utt2spk``) of grammar sentences whose
English side avoids the held-out sets' sentences, with the same reference variability.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdst.synth.text import generate_pairs
from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import write_data_dir
from kdst.errors import KdstError

MARKER = ".complete"


def make_text_corpus(out_dir: str | Path, num: int, *, seed: int = 1, variability: float = 0.3,
                     exclude_files: list[str | Path] = ()) -> bool:
    """Write ``num`` sentence pairs into ``out_dir``; False if it holds them already (same settings)."""
    out = Path(out_dir)
    excluded = sorted({line.strip() for f in exclude_files for line in Path(f).read_text(encoding="utf-8").splitlines()
                       if line.strip()})
    settings = {"num": num, "seed": seed, "variability": variability, "excluded": len(excluded)}
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text())["settings"] == settings:
        return False
    # generate_pairs avoids `exclude` only as far as its retries allow (the grammar's short sentences
    # come up again and again), so held-out sentences are also filtered out here, strictly.
    held_out = set(excluded)
    pairs = [p for p in generate_pairs(num + num // 5 + 100, seed, variability, exclude=excluded)
             if p.en not in held_out][:num]
    if len(pairs) < num:
        raise KdstError(f"{out}: the grammar gave only {len(pairs)} sentences outside the held-out sets, not {num}")
    ids = [f"mt{i:06d}" for i in range(len(pairs))]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_data_dir(partial, {"text.en": dict(zip(ids, (p.en for p in pairs))),
                             "text.de": dict(zip(ids, (p.de for p in pairs))),
                             "text": dict(zip(ids, (p.de for p in pairs))),
                             "utt2spk": {u: u for u in ids}})
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    atomic_write_text(marker, json.dumps({"settings": settings}, indent=1) + "\n")
    return True
