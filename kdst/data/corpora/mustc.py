"""MuST-C (v1.0 layout) -> Kaldi data dirs.

The layout, as released and as the synthetic mini corpus writes it::

    en-de/data/<split>/wav/ted_767.wav          one 16 kHz file per talk
    en-de/data/<split>/txt/<split>.yaml         one line per segment:
        - {duration: 3.5, offset: 16.39, rW: 5, uW: 0, speaker_id: spk.767, wav: ted_767.wav}
    en-de/data/<split>/txt/<split>.en           the transcript of each segment, same order
    en-de/data/<split>/txt/<split>.de           its translation, same order

Output per split: ``wav.scp`` (talk -> absolute path), ``segments``,
``utt2spk``/``spk2utt`` (the talk is the speaker: MuST-C speaker ids are per
talk), ``text.en``, ``text.<tgt>`` and ``text``: the ST target, the translation;
with ``task="asr"``, the ASR target: the transcript lower-cased without
punctuation (``asr_text``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import soundfile
import yaml

from kdst.data.kaldi_dir import write_data_dir
from kdst.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
_FLOW_LINE = re.compile(r"^-\s*\{(.*)\}\s*$")
_REQUIRED = ("duration", "offset", "wav")
# Segment ends may overshoot the talk by the rounding of the yaml times.
_END_TOLERANCE = 0.05


@dataclass(frozen=True)
class Segment:
    wav: str
    offset: float
    duration: float
    line: int


def read_segment_yaml(path: Path) -> list[Segment]:
    """Parse a MuST-C segment list; line by line, so errors name the line and train loads fast."""
    segments = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = _parse_flow_mapping(line)
            if fields is None:
                try:
                    parsed = yaml.safe_load(line)
                except yaml.YAMLError:
                    parsed = None
                if not (isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict)):
                    raise DataError(path, "expected '- {duration: D, offset: O, ..., wav: W}'", number)
                fields = {str(k): str(v) for k, v in parsed[0].items()}
            missing = [k for k in _REQUIRED if k not in fields]
            if missing:
                raise DataError(path, f"missing field(s) {', '.join(missing)}", number)
            try:
                offset, duration = float(fields["offset"]), float(fields["duration"])
            except ValueError:
                raise DataError(path, "offset/duration are not numbers", number) from None
            if offset < 0 or duration <= 0:
                raise DataError(path, f"bad segment: offset {offset}, duration {duration}", number)
            segments.append(Segment(fields["wav"], offset, duration, number))
    return segments


def _parse_flow_mapping(line: str) -> dict[str, str] | None:
    match = _FLOW_LINE.match(line.strip())
    if match is None:
        return None
    fields = {}
    for item in match.group(1).split(","):
        key, sep, value = item.partition(":")
        if not sep:
            return None
        fields[key.strip()] = value.strip().strip("'\"")
    return fields


def recording_id(wav_name: str) -> str:
    """``ted_767.wav`` -> ``ted_00767``: zero-padded so that C-order sorting of
    utterance ids agrees with sorting of their talks (Kaldi requires it)."""
    stem = Path(wav_name).stem
    match = re.fullmatch(r"ted_(\d+)", stem)
    return f"ted_{int(match.group(1)):05d}" if match else stem


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "missing")
    try:
        return [" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(path, "not valid UTF-8", line) from None


_PUNCTUATION = re.compile(r"[^\w\s'-]|(?<!\w)['-]|['-](?!\w)")


def asr_text(transcript: str) -> str:
    """The ASR target of a transcript: lower case, no punctuation (apostrophes and hyphens inside
    words stay: "don't", "well-known")."""
    return " ".join(_PUNCTUATION.sub(" ", transcript.lower()).split())


def prepare_split(corpus_dir: Path, split: str, out_dir: Path, tgt_lang: str, task: str = "st") -> dict[str, int]:
    """One MuST-C split -> one Kaldi data dir; returns counts of kept and dropped segments."""
    split_dir = corpus_dir / "data" / split
    txt = split_dir / "txt"
    segments = read_segment_yaml(txt / f"{split}.yaml")
    sources = _read_lines(txt / f"{split}.en")
    targets = _read_lines(txt / f"{split}.{tgt_lang}")
    for path, lines in ((txt / f"{split}.en", sources), (txt / f"{split}.{tgt_lang}", targets)):
        if len(lines) != len(segments):
            raise DataError(path, f"{len(lines)} lines but {split}.yaml has {len(segments)} segments")

    files: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "segments", "utt2spk", "text.en",
                                                        f"text.{tgt_lang}")}
    talk_durations: dict[str, float] = {}
    dropped = {"empty text": 0, "past the end of the talk": 0}
    for seg, source, target in zip(segments, sources, targets):
        rec = recording_id(seg.wav)
        if rec not in talk_durations:
            wav_path = (split_dir / "wav" / seg.wav).resolve()
            if not wav_path.is_file():
                raise DataError(txt / f"{split}.yaml", f"audio not found: {wav_path}", seg.line)
            talk_durations[rec] = soundfile.info(str(wav_path)).duration
            files["wav.scp"][rec] = str(wav_path)
        if not source or not target:
            dropped["empty text"] += 1
            continue
        end = seg.offset + seg.duration
        if end > talk_durations[rec] + _END_TOLERANCE:
            dropped["past the end of the talk"] += 1
            continue
        utt = f"{rec}_{round(seg.offset * 1000):07d}_{round(end * 1000):07d}"
        if utt in files["segments"]:
            raise DataError(txt / f"{split}.yaml", f"two segments of {seg.wav} share start and end ({utt})",
                            seg.line)
        files["segments"][utt] = f"{rec} {seg.offset:.3f} {end:.3f}"
        files["utt2spk"][utt] = rec
        files["text.en"][utt] = source
        files[f"text.{tgt_lang}"][utt] = target
    files["text"] = files[f"text.{tgt_lang}"] if task == "st" else {u: asr_text(t) for u, t in files["text.en"].items()}
    write_data_dir(out_dir, files)
    stats = {"kept": len(files["segments"]), **{f"dropped ({why})": n for why, n in dropped.items() if n}}
    log.info("%s: %s", out_dir, ", ".join(f"{k} {v}" for k, v in stats.items()))
    return stats


def prepare_mustc(corpus_dir: str | Path, out_dir: str | Path, *, tgt_lang: str = "de",
                  splits: tuple[str, ...] | None = None, task: str = "st") -> dict[str, dict[str, int]]:
    """Prepare the splits of ``corpus_dir`` (the ``en-<tgt>`` directory or its parent).

    ``task`` says what ``text`` holds: "st" the translation, "asr" the normalised transcript.

    Without ``splits``, every split of SPLITS that is present is prepared.
    """
    corpus_dir = Path(corpus_dir)
    if (corpus_dir / f"en-{tgt_lang}").is_dir():
        corpus_dir = corpus_dir / f"en-{tgt_lang}"
    if not (corpus_dir / "data").is_dir():
        raise DataError(corpus_dir, f"not a MuST-C en-{tgt_lang} directory (no data/ inside)")
    if splits is None:
        splits = tuple(s for s in SPLITS if (corpus_dir / "data" / s).is_dir())
    if task not in ("st", "asr"):
        raise ValueError(f"task must be 'st' or 'asr', not '{task}'")
    return {split: prepare_split(corpus_dir, split, Path(out_dir) / split, tgt_lang, task) for split in splits}
