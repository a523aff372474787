"""Kaldi data directories: the ``key value`` files every stage reads and writes.

A data dir holds ``wav.scp`` (recording -> path or ``cmd |``), optional
``segments`` (utterance -> recording start end), ``utt2spk``/``spk2utt``,
``text`` (the task's target), ``text.<lang>`` per language, and after
features ``feats.scp`` and ``utt2num_frames``.  Every file is sorted by key
in ``LC_ALL=C`` (byte) order with unique keys.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from kdst.data.files import atomic_write_text
from kdst.data.split import merge_scp, split_lines
from kdst.errors import DataError, KdstError

# Files keyed by utterance id; wav.scp is keyed by recording id (the same
# as the utterance id when there is no segments file).
UTTERANCE_FILES = ("text", "utt2spk", "segments", "feats.scp", "utt2num_frames", "utt2dur")


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int  # 1-based line number in the file it came from


def c_sort_key(key: str) -> bytes:
    """Byte order of the key, which is what ``LC_ALL=C sort`` uses."""
    return key.encode("utf-8")


def iter_entries(path: str | os.PathLike, *, allow_empty_value: bool = False) -> Iterator[Entry]:
    """Yield the ``key value`` lines of a Kaldi file; a malformed line (or no file) is a DataError."""
    with open_for_reading(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 (byte {e.start})", number) from None
            key, _, value = line.strip().partition(" ")
            value = value.strip()
            if not key:
                raise DataError(path, "empty line", number)
            if not value and not allow_empty_value:
                raise DataError(path, f"no value for key '{key}'", number)
            yield Entry(key, value, number)


def open_for_reading(path: str | os.PathLike):
    """``open(path, "rb")``; a missing file, a directory or an unreadable one is a DataError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "missing") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, not a file") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror})") from None


def require_directory(path: str | os.PathLike, what: str) -> None:
    """An output directory that is a file now would fail deep inside a stage: say so before it starts."""
    if Path(path).exists() and not Path(path).is_dir():
        raise KdstError(f"{path}: the {what} exists and is not a directory")


def read_kv(path: str | os.PathLike, *, allow_empty_value: bool = False) -> dict[str, str]:
    """Read a Kaldi ``key value`` file into a dict; duplicate keys are a DataError."""
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for e in iter_entries(path, allow_empty_value=allow_empty_value):
        if e.key in out:
            raise DataError(path, f"duplicate key '{e.key}' (first on line {first_line[e.key]})", e.line)
        out[e.key] = e.value
        first_line[e.key] = e.line
    return out


def write_kv(path: str | os.PathLike, items: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Write ``key value`` lines sorted in C order, atomically."""
    pairs = items.items() if isinstance(items, Mapping) else items
    lines = sorted(pairs, key=lambda kv: c_sort_key(kv[0]))
    atomic_write_text(path, "".join(f"{k} {v}\n" for k, v in lines))


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, str]:
    speakers: dict[str, list[str]] = {}
    for utt in sorted(utt2spk, key=c_sort_key):
        speakers.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in speakers.items()}


@dataclass(frozen=True)
class Segment:
    recording: str
    start: float
    end: float


def parse_segment(path: str | os.PathLike, entry: Entry) -> Segment:
    fields = entry.value.split()
    if len(fields) != 3:
        raise DataError(path, f"expected 'utt recording start end', got {len(fields) + 1} fields", entry.line)
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        raise DataError(path, f"start/end are not numbers: '{entry.value}'", entry.line) from None
    if start < 0:
        raise DataError(path, f"segment starts before 0 ({start})", entry.line)
    if end <= start:
        raise DataError(path, f"segment ends ({end}) before it starts ({start})", entry.line)
    return Segment(fields[0], start, end)


class DataDir:
    """Read access to a Kaldi data dir, keyed by utterance id.

    Files are read lazily and cached; a file that is absent reads as None.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(self.path, "not a directory")
        self._cache: dict[str, dict[str, str] | None] = {}

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def read(self, name: str) -> dict[str, str] | None:
        if name not in self._cache:
            self._cache[name] = read_kv(self.file(name)) if self.has(name) else None
        return self._cache[name]

    def require(self, name: str) -> dict[str, str]:
        table = self.read(name)
        if table is None:
            raise DataError(self.file(name), "missing")
        return table

    def text_languages(self) -> list[str]:
        """The ``<lang>`` suffixes of the ``text.<lang>`` files present."""
        return sorted(p.name[len("text."):] for p in self.path.glob("text.*") if p.is_file()
                      and not p.name.endswith(".tmp"))

    def utterances(self) -> list[str]:
        """Utterance ids in C order, from utt2spk (every data dir has one)."""
        return sorted(self.require("utt2spk"), key=c_sort_key)

    def segments(self) -> dict[str, Segment] | None:
        if not self.has("segments"):
            return None
        path = self.file("segments")
        return {e.key: parse_segment(path, e) for e in iter_entries(path)}

    def recording_of(self) -> dict[str, str]:
        """utterance -> recording id (itself when there is no segments file, or no audio: MT data)."""
        segments = self.segments()
        if segments is not None:
            return {u: s.recording for u, s in segments.items()}
        return {u: u for u in (self.read("wav.scp") or self.require("utt2spk"))}


def write_data_dir(path: str | os.PathLike, files: Mapping[str, Mapping[str, str]]) -> None:
    """Write a data dir from ``{file name: {key: value}}``; spk2utt is derived from utt2spk."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, table in files.items():
        write_kv(path / name, table)
    if "utt2spk" in files:
        write_kv(path / "spk2utt", spk2utt_from_utt2spk(files["utt2spk"]))


def subset_data_dir(src: str | os.PathLike, dst: str | os.PathLike, utterances: Iterable[str]) -> None:
    """Copy the given utterances (and the recordings they use) of ``src`` into ``dst``."""
    data = DataDir(src)
    keep = set(utterances)
    files: dict[str, dict[str, str]] = {}
    for name in (*UTTERANCE_FILES, *(f"text.{lang}" for lang in data.text_languages())):
        table = data.read(name)
        if table is not None:
            files[name] = {k: v for k, v in table.items() if k in keep}
    if data.has("wav.scp"):
        recordings = {r for u, r in data.recording_of().items() if u in keep}
        files["wav.scp"] = {k: v for k, v in data.require("wav.scp").items() if k in recordings}
    write_data_dir(dst, files)
    if data.has("cmvn.ark"):  # global statistics stay valid for a subset
        (Path(dst) / "cmvn.ark").write_bytes(data.file("cmvn.ark").read_bytes())


def split_data_dir(path: str | os.PathLike, n: int) -> Path:
    """Split a data dir into ``path/split<n>/{1..n}`` for ``n`` parallel jobs.

    Utterances of one recording stay in one part, so each job decodes each
    talk-level audio file once.
    """
    data = DataDir(path)
    recording_of = data.recording_of()
    parts = split_lines(data.utterances(), n, group_of=lambda utt: recording_of[utt])
    out = data.path / f"split{n}"
    for index, utterances in enumerate(parts, start=1):
        subset_data_dir(data.path, out / str(index), utterances)
    return out


def merge_into_data_dir(path: str | os.PathLike, scps: list[Path]) -> None:
    """Merge feature shards (``X.scp`` with ``X.utt2num_frames`` beside) into feats.scp + utt2num_frames."""
    data = Path(path)
    merge_scp(scps, data / "feats.scp")
    merge_scp([scp.with_suffix(".utt2num_frames") for scp in scps], data / "utt2num_frames")


def combine_text_dirs(out: str | os.PathLike, sources: list[str | os.PathLike], files: list[str]) -> int:
    """A text-only data dir holding the union of ``files`` (e.g. text.en, text) of ``sources``, with
    utt2spk; every source must have every file for each of its utterances.  Returns the utterances."""
    tables: dict[str, dict[str, str]] = {name: {} for name in files}
    speakers: dict[str, str] = {}
    for source in sources:
        data = DataDir(source)
        own = data.require(files[0])
        speakers.update(data.read("utt2spk") or {u: u for u in own})
        for name in files:
            table = data.require(name)
            clash = next((u for u in table if u in tables[name]), None)
            if clash is not None:
                raise KdstError(f"{data.file(name)}: utterance '{clash}' is also in another of {', '.join(map(str, sources))}")
            tables[name].update(table)
    utterances = set(tables[files[0]])
    for name in files[1:]:
        if set(tables[name]) != utterances:
            odd = sorted(set(tables[name]) ^ utterances)[0]
            raise KdstError(f"{name}: utterance '{odd}' is not in every file of {', '.join(files)}")
    # A derived dir: rebuilt whole, then renamed over the old one, so no stale file survives.
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_data_dir(partial, {**tables, "utt2spk": {u: speakers.get(u, u) for u in utterances}})
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return len(utterances)
