"""``kdst validate-data`` and ``kdst fix-data``: check a Kaldi data dir, repair what can be.

Validation reports every problem as one line ``FILE:LINE: what is wrong`` so
that a user (or an editor's quickfix list) can jump to it.  Each ``feats.scp``
entry must point inside its archive, at a matrix that ends inside it too (the
header at the offset says how long it is); ``deep`` also reads every matrix.  Fixing keeps the
utterances that are complete and consistent in every file, backs the originals
up under ``DIR/.backup/`` and says how many were dropped and why.
"""

from __future__ import annotations

import re
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio

from kdst.data.audio import AudioError, audio_duration
from kdst.data.kaldi_dir import (UTTERANCE_FILES, Entry, Segment, c_sort_key, parse_segment,
                                 spk2utt_from_utt2spk, write_kv)
from kdst.errors import DataError

# Files keyed by utterance id that must cover exactly the utterances of utt2spk.
_UTTERANCE_FILES = tuple(n for n in UTTERANCE_FILES if n != "utt2spk")
# Segment ends may overshoot the audio by rounding of the times written.
_SEGMENT_END_TOLERANCE = 0.05
_MAX_PROBLEMS_PER_FILE = 20


@dataclass
class Table:
    """A leniently read ``key value`` file: the good lines and what was wrong with the rest."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[int, str, str | None]] = field(default_factory=list)  # (line, message, key)

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines[key]}"


def read_table(path: Path, *, is_text: bool = False) -> Table:
    table = Table(path)
    previous: bytes | None = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                key = raw.split(maxsplit=1)[0].decode("utf-8", "replace") if raw.strip() else None
                table.problems.append((number, f"not valid UTF-8 (byte {e.start})", key))
                continue
            key, _, value = line.strip().partition(" ")
            value = value.strip()
            if not key:
                table.problems.append((number, "empty line", None))
                continue
            if not value:
                what = f"empty text for utterance '{key}'" if is_text else f"no value for key '{key}'"
                table.problems.append((number, what, key))
                continue
            if key in table.values:
                table.problems.append((number, f"duplicate key '{key}' (first on line {table.lines[key]})", None))
                continue
            order = c_sort_key(key)
            if previous is not None and order < previous:
                table.problems.append((number, f"not sorted (LC_ALL=C): '{key}' comes after "
                                               f"'{previous.decode()}'", None))
            previous = order
            table.values[key] = value
            table.lines[key] = number
    return table


def _present_files(path: Path) -> list[str]:
    names = [n for n in ("wav.scp", "utt2spk", "spk2utt", *_UTTERANCE_FILES) if (path / n).is_file()]
    return names + sorted(p.name for p in path.glob("text.*") if p.is_file() and not p.name.endswith(".tmp"))


def _read_all(path: Path) -> dict[str, Table]:
    return {name: read_table(path / name, is_text=name == "text" or name.startswith("text."))
            for name in _present_files(path)}


def _parse_segment(table: Table, utt: str) -> Segment | str:
    """The segment of ``utt``, or what is wrong with its line."""
    try:
        return parse_segment(table.path, Entry(utt, table.values[utt], table.lines[utt]))
    except DataError as e:
        return e.message


def validate_data_dir(path: str | Path, *, check_audio: bool = True, deep: bool = False) -> list[str]:
    """All problems of the data dir, each ``FILE:LINE: what is wrong``; empty when it is valid.
    ``deep``: also read every feature matrix of feats.scp."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a directory"]
    problems: list[str] = []
    for name in ("wav.scp", "utt2spk"):
        if not (path / name).is_file():
            problems.append(f"{path / name}: missing (every data dir needs it)")
    tables = _read_all(path)
    per_file: Counter[str] = Counter()

    def report(table: Table, line: int | None, message: str) -> None:
        per_file[table.path.name] += 1
        if per_file[table.path.name] <= _MAX_PROBLEMS_PER_FILE:
            problems.append(f"{table.path}:{line}: {message}" if line else f"{table.path}: {message}")

    for table in tables.values():
        for line, message, _ in table.problems:
            report(table, line, message)
    if "utt2spk" not in tables or "wav.scp" not in tables:
        return problems + _overflow(per_file, path)

    utt2spk, wav = tables["utt2spk"], tables["wav.scp"]
    utt_files = [n for n in tables if n in _UTTERANCE_FILES or n.startswith("text.")]
    if "segments" not in tables:
        utt_files.append("wav.scp")  # recordings are the utterances
    for name in utt_files:
        table = tables[name]
        for key in table.values.keys() - utt2spk.values.keys():
            report(table, table.lines[key], f"utterance '{key}' is not in utt2spk")
        for key in sorted(utt2spk.values.keys() - table.values.keys(), key=c_sort_key):
            if not any(k == key for _, _, k in table.problems):  # already reported on its own line
                report(utt2spk, utt2spk.lines[key], f"utterance '{key}' has no entry in {name}")

    _check_speakers(tables, report)
    durations: dict[str, float] = {}
    if check_audio:
        durations, errors = _durations(wav)
        for rec, error in errors.items():
            report(wav, wav.lines[rec], f"recording '{rec}': {error}")
    if "segments" in tables:
        _check_segments(tables["segments"], wav, durations, report)
    if "feats.scp" in tables:
        _check_feats(tables["feats.scp"], report, deep=deep, frames=tables.get("utt2num_frames"))
    for name in ("utt2num_frames", "utt2dur"):
        if name in tables:
            cast = int if name == "utt2num_frames" else float
            for key, value in tables[name].values.items():
                try:
                    ok = cast(value) > 0
                except ValueError:
                    ok = False
                if not ok:
                    report(tables[name], tables[name].lines[key], f"'{value}' is not a positive number")
    return problems + _overflow(per_file, path)


def _overflow(per_file: Counter[str], path: Path) -> list[str]:
    return [f"{path / name}: ... and {n - _MAX_PROBLEMS_PER_FILE} more problem(s)"
            for name, n in per_file.items() if n > _MAX_PROBLEMS_PER_FILE]


def _check_speakers(tables: dict[str, Table], report) -> None:
    utt2spk = tables["utt2spk"]
    previous = None
    for utt in sorted(utt2spk.values, key=c_sort_key):
        speaker = utt2spk.values[utt]
        if previous is not None and c_sort_key(speaker) < c_sort_key(previous):
            report(utt2spk, utt2spk.lines[utt], f"speaker '{speaker}' after '{previous}': utterance ids must sort "
                                                f"in speaker order (prefix them with the speaker id)")
            break
        previous = speaker
    if "spk2utt" in tables:
        spk2utt, expected = tables["spk2utt"], spk2utt_from_utt2spk(utt2spk.values)
        for speaker, utts in spk2utt.values.items():
            if speaker not in expected:
                report(spk2utt, spk2utt.lines[speaker], f"speaker '{speaker}' is not in utt2spk")
            elif set(utts.split()) != set(expected[speaker].split()):
                report(spk2utt, spk2utt.lines[speaker], f"utterances of speaker '{speaker}' differ from utt2spk "
                                                        f"(run kdst fix-data to regenerate spk2utt)")
        for speaker in expected.keys() - spk2utt.values.keys():
            report(spk2utt, None, f"speaker '{speaker}' of utt2spk is missing")


def _durations(wav: Table) -> tuple[dict[str, float], dict[str, str]]:
    """Duration of every readable recording, and why the others cannot be read."""
    durations, errors = {}, {}
    for rec, value in wav.values.items():
        try:
            durations[rec] = audio_duration(value)
        except AudioError as e:
            errors[rec] = str(e)
    return durations, errors


def _check_segments(segments: Table, wav: Table, durations: dict[str, float], report) -> None:
    for utt, value in segments.values.items():
        segment = _parse_segment(segments, utt)
        if isinstance(segment, str):
            report(segments, segments.lines[utt], segment)
            continue
        rec, end = segment.recording, segment.end
        if rec not in wav.values:
            report(segments, segments.lines[utt], f"recording '{rec}' is not in wav.scp")
        elif rec in durations and end > durations[rec] + _SEGMENT_END_TOLERANCE:
            report(segments, segments.lines[utt], f"segment ends at {end} s, past the end of recording '{rec}' "
                                                  f"({durations[rec]:.3f} s)")


# "<ark>:<byte offset>", optionally with kaldiio's "[rows]" or "[rows,cols]" slice.
_SCP_LOCATION = re.compile(r"(?P<ark>.+):(?P<offset>[0-9]+)(\[[^\]]*\])?")
# An uncompressed Kaldi binary matrix at an scp offset: "\0B", its type, then "\4" and an int32 for
# the rows and for the columns; the data follows.
_MATRIX_HEADER = struct.Struct("<2s3sBiBi")
_MATRIX_ITEMSIZE = {b"FM ": 4, b"DM ": 8}


def _check_feats(feats: Table, report, *, deep: bool, frames: Table | None) -> None:
    """Every entry points inside its archive (a relative path is read from the current directory, as
    kaldiio does), at a matrix that ends inside it: a truncated ark otherwise passes until training reads
    it.  ``deep``: read every matrix, and compare its frames with utt2num_frames."""
    by_ark: dict[str, list[tuple[int, str]]] = {}
    for utt, value in feats.values.items():
        if value.endswith("|"):  # a command: nothing to check before running it
            continue
        location = _SCP_LOCATION.fullmatch(value)
        ark, offset = (location["ark"], int(location["offset"])) if location else (value, 0)
        by_ark.setdefault(ark, []).append((offset, utt))
    bad: set[str] = set()
    for ark, entries in by_ark.items():
        if not Path(ark).is_file():
            first = min(entries, key=lambda entry: feats.lines[entry[1]])[1]
            report(feats, feats.lines[first], f"feature archive not found: {ark}")
            bad.update(utt for _, utt in entries)
            continue
        for utt, problem in _truncated(ark, sorted(entries)):
            report(feats, feats.lines[utt], problem)
            bad.add(utt)
    if deep:
        for utt, value in feats.values.items():
            if utt not in bad:
                problem = _unreadable(utt, value, frames)
                if problem:
                    report(feats, feats.lines[utt], problem)


def _truncated(ark: str, entries: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """``(utt, problem)`` for the entries of ``ark`` (sorted by offset) that start or end past its end."""
    problems = []
    with open(ark, "rb") as f:
        size = f.seek(0, 2)
        for offset, utt in entries:
            if offset >= size:
                problems.append((utt, f"'{utt}' starts at byte {offset}, past the end of {ark} ({size} bytes): "
                                      "the archive is truncated"))
                continue
            f.seek(offset)
            header = f.read(_MATRIX_HEADER.size)
            if not header.startswith(b"\0B"):
                continue  # not a binary matrix (text, compressed): only a full read can tell (--deep)
            if len(header) < _MATRIX_HEADER.size:
                end = offset + _MATRIX_HEADER.size
            else:
                _, kind, _, rows, _, cols = _MATRIX_HEADER.unpack(header)
                if kind not in _MATRIX_ITEMSIZE:
                    continue
                end = offset + _MATRIX_HEADER.size + rows * cols * _MATRIX_ITEMSIZE[kind]
            if end > size:
                problems.append((utt, f"the matrix of '{utt}' ends at byte {end}, past the end of {ark} "
                                      f"({size} bytes): the archive is truncated"))
    return problems


def _unreadable(utt: str, value: str, frames: Table | None) -> str | None:
    """What is wrong with the matrix of ``utt`` when it is read, or None."""
    try:
        matrix = kaldiio.load_mat(value)
    except Exception as e:  # kaldiio raises many kinds (ValueError, struct.error, EOFError...): each is a failure
        return f"cannot read the matrix of '{utt}': {type(e).__name__}: {e}"
    if frames is not None and utt in frames.values and frames.values[utt] != str(len(matrix)):
        return f"the matrix of '{utt}' has {len(matrix)} frames, utt2num_frames says {frames.values[utt]}"
    return None


# --- fix -----------------------------------------------------------------------

@dataclass
class FixReport:
    total: int
    kept: int
    reasons: Counter[str]

    def __str__(self) -> str:
        dropped = self.total - self.kept
        text = f"kept {self.kept} of {self.total} utterances"
        if dropped:
            text += f"; dropped {dropped}: " + ", ".join(f"{n} {why}" for why, n in self.reasons.most_common())
        return text


def fix_data_dir(path: str | Path, *, check_audio: bool = False) -> FixReport:
    """Keep the utterances that are complete and consistent everywhere; back up the originals."""
    path = Path(path)
    tables = _read_all(path)
    if "utt2spk" not in tables or "wav.scp" not in tables:
        missing = [n for n in ("utt2spk", "wav.scp") if n not in tables]
        raise DataError(path / missing[0], "missing: cannot fix a data dir without it")
    wav = tables["wav.scp"]
    all_utts = set().union(*(t.values.keys() | {k for _, _, k in t.problems if k}
                             for n, t in tables.items() if n != "wav.scp" and n != "spk2utt"))
    if "segments" not in tables:
        all_utts |= wav.values.keys()

    reasons: dict[str, str] = {}  # utterance -> why it is dropped (the first reason found)

    def drop(utt: str, why: str) -> None:
        reasons.setdefault(utt, why)

    for name, table in tables.items():
        if name == "spk2utt":
            continue
        for _, message, key in table.problems:
            if key is not None and name != "wav.scp":
                drop(key, "with empty text in " + name if message.startswith("empty text")
                     else f"with a bad line in {name}")
    utt_files = [n for n in tables if n in _UTTERANCE_FILES or n.startswith("text.") or n == "utt2spk"]
    for name in utt_files:
        for utt in all_utts - tables[name].values.keys():
            drop(utt, f"missing from {name}")

    durations = _durations(wav)[0] if check_audio else None
    if "segments" in tables:
        for utt in tables["segments"].values:
            segment = _parse_segment(tables["segments"], utt)
            if isinstance(segment, str):
                drop(utt, "with a bad segment")
            elif segment.recording not in wav.values:
                drop(utt, "whose recording is not in wav.scp")
            elif durations is not None and segment.recording not in durations:
                drop(utt, "with unreadable audio")
            elif durations is not None and segment.end > durations[segment.recording] + _SEGMENT_END_TOLERANCE:
                drop(utt, "with a segment past the end of the audio")
    else:
        for utt in all_utts - wav.values.keys():
            drop(utt, "missing from wav.scp")
        if durations is not None:
            for utt in all_utts & wav.values.keys() - durations.keys():
                drop(utt, "with unreadable audio")

    keep = all_utts - reasons.keys()
    backup = path / ".backup"
    backup.mkdir(exist_ok=True)
    for name in tables:
        shutil.copy2(path / name, backup / name)
    for name in utt_files:
        write_kv(path / name, {k: v for k, v in tables[name].values.items() if k in keep})
    if "segments" in tables:
        used = {tables["segments"].values[u].split()[0] for u in keep}
    else:
        used = keep
    write_kv(path / "wav.scp", {k: v for k, v in wav.values.items() if k in used})
    write_kv(path / "spk2utt", spk2utt_from_utt2spk({u: tables["utt2spk"].values[u] for u in keep}))
    return FixReport(total=len(all_utts), kept=len(keep), reasons=Counter(reasons.values()))
