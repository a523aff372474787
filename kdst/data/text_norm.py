"""Transcript normalisation: a teacher's text written the way a recipe's references are.

Whisper writes cased, punctuated text ("Mr. Quilter is the apostle of the middle classes,
and ..."); WSJ and LibriSpeech references are upper case without punctuation.  Pseudo labels
and a WER filter against the references compare like with like only after both sides are
normalised the same way (``kdst decode --normalize``, ``kdst pseudo-labels --normalize``):

    none    the text as it is
    upper   NFKC; annotations in brackets removed ([MUSIC], (laughs), <NOISE>); every character
            that is not a letter or a digit becomes a space, except an apostrophe between two of
            them (DON'T); upper case; single spaces
    lower   the same, lower case

Numbers, abbreviations and spellings are not rewritten: Whisper's "1990" stays where
LibriSpeech writes NINETEEN NINETY, its "Mr." becomes MR where WSJ may write MISTER.  The WER
filter drops the utterances where such differences add up (docs/HF_TEACHERS.md).
"""

from __future__ import annotations

import re
import unicodedata

from kdst.errors import KdstError

NORMALIZERS = ("none", "upper", "lower")
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalize_text(text: str, mode: str) -> str:
    if mode == "none":
        return text
    if mode not in NORMALIZERS:
        raise KdstError(f"unknown text normaliser '{mode}' ({', '.join(NORMALIZERS)})")
    text = _ANNOTATION.sub(" ", unicodedata.normalize("NFKC", text).translate(_APOSTROPHES))
    kept = [c if c.isalnum() or (c == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum()
                                 and text[i + 1].isalnum()) else " "
            for i, c in enumerate(text)]
    words = "".join(kept).split()
    return " ".join(words).upper() if mode == "upper" else " ".join(words).lower()
