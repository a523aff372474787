"""WSJ (LDC93S6B wsj0 + LDC94S13B wsj1, as LDC ships them on discs) -> Kaldi data dirs.

The sets are Kaldi's (egs/wsj/s5/local/wsj_data_prep.sh), so that results compare
with Kaldi and ESPnet.  The layout it reads::

    11-13.1/wsj0/doc/indices/train/tr_s_wv1.ndx    index: 11_1_1:wsj0/si_tr_s/011/011c0201.wv1
    11-1.1/wsj0/si_tr_s/011/011c0201.wv1           shorten-compressed SPHERE audio
    11-4.1/wsj0/transcrp/dots/si_tr_s/011/011c0200.dot   transcripts of 011c02??
    13-34.1/wsj1/doc/indices/si_tr_s.ndx           wsj1 indices; wsj1 .dot files lie beside the audio

Disc and file names are upper case on some copies, so every lookup ignores case.
Output per set: ``wav.scp`` (``sph2pipe ... |`` for shorten audio, the path for
plain PCM), ``utt2spk``, ``spk2utt``, ``text``; and ``nlsyms.txt`` for all sets.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import c_sort_key, write_data_dir
from kdst.data.sphere import SPH2PIPE_HINT, is_shorten, read_sphere_header
from kdst.errors import DataError, KdstError

log = logging.getLogger(__name__)

DEFAULT_SETS = ("train_si284", "test_dev93", "test_eval92")
# Disc directories: 11-1.1 as LDC names them (11_1_1 on some copies).
_DISC_DIR = re.compile(r"^(\d+)[-_](\d+)[._](\d+)$")
_NDX_LINE = re.compile(r"^(\d+_\d+_\d+)\s*:\s*/?(\S+)$")
_DOT_LINE = re.compile(r"^(.*)\(([A-Za-z0-9_]+)\)$")
# Kaldi leaves this wsj0 training speaker out of si84 and si284.
_EXCLUDED = ("11-2.1/wsj0/si_tr_s/401/",)


@dataclass(frozen=True)
class IndexSource:
    disc: str  # the disc holding the index
    path: str  # relative to that disc
    disc_renames: tuple[tuple[str, str], ...] = ()  # index disc id -> disc the audio is really on


_SI84 = IndexSource("11-13.1", "wsj0/doc/indices/train/tr_s_wv1.ndx")
SETS: dict[str, tuple[IndexSource, ...]] = {
    "train_si84": (_SI84,),
    "train_si284": (IndexSource("13-34.1", "wsj1/doc/indices/si_tr_s.ndx"), _SI84),
    "test_eval92": (IndexSource("11-13.1", "wsj0/doc/indices/test/nvp/si_et_20.ndx"),),
    "test_dev93": (IndexSource("13-34.1", "wsj1/doc/indices/h1_p0.ndx"),),
    # The eval93 index names disc 13_32_1, but the audio is on 13-33.1.
    "test_eval93": (IndexSource("13-32.1", "wsj1/doc/indices/wsj1/eval/h1_p0.ndx", (("13-32.1", "13-33.1"),)),),
}


# --- discs --------------------------------------------------------------------

def disc_name(disc_id: str) -> str:
    """``11_1_1`` (index notation) or ``11-1.1`` (directory) -> ``11-1.1``."""
    match = _DISC_DIR.match(disc_id.strip().lower())
    if match is None:
        raise ValueError(f"not a WSJ disc id: {disc_id!r}")
    return "{}-{}.{}".format(*match.groups())


def find_discs(dirs: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """Disc name -> directory, for the disc dirs given or found up to 2 levels below them."""
    discs: dict[str, Path] = {}

    def visit(path: Path, depth: int) -> None:
        if _DISC_DIR.match(path.name.lower()):
            name = disc_name(path.name)
            if name in discs and discs[name] != path:
                log.warning("disc %s found twice: using %s, not %s", name, discs[name], path)
            discs.setdefault(name, path)
        elif depth < 2:
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                visit(child, depth + 1)

    for d in map(Path, dirs):
        if not d.is_dir():
            raise KdstError(f"{d}: not a directory (expected a WSJ disc like 11-13.1 or a directory holding discs)")
        visit(d, 0)
    return discs


@dataclass
class DiscFiles:
    """The files of all discs that prep looks up, by lower-cased path, found in one walk."""
    audio: dict[str, Path] = field(default_factory=dict)  # '11-1.1/wsj0/si_tr_s/011/011c0201.wv1'
    indices: dict[str, Path] = field(default_factory=dict)  # '11-13.1/wsj0/doc/indices/...ndx'
    dots: dict[str, list[Path]] = field(default_factory=dict)  # '011c0200' -> its .dot files


def scan_discs(discs: dict[str, Path]) -> DiscFiles:
    found = DiscFiles()
    for name, root in sorted(discs.items()):
        # followlinks: copies are often assembled from symlinks, as in Kaldi's links/ dir
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/").lower()
            for filename in sorted(filenames):
                lower = filename.lower()
                key = f"{name}/{lower}" if rel_dir == "." else f"{name}/{rel_dir}/{lower}"
                if lower.endswith(".wv1"):
                    found.audio[key] = Path(dirpath, filename)
                elif lower.endswith(".ndx"):
                    found.indices[key] = Path(dirpath, filename)
                elif lower.endswith(".dot"):
                    found.dots.setdefault(lower[:-4], []).append(Path(dirpath, filename))
    return found


# --- indices and transcripts --------------------------------------------------

def parse_ndx(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(disc id, path on that disc) of each entry of a WSJ ``.ndx`` index, in file order.

    Test-set indices leave out the extension; it is the ``.wv1`` (first channel) file.
    """
    entries = []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            match = _NDX_LINE.match(line)
            if match is None:
                raise DataError(path, f"expected 'DISC:PATH' like '11_1_1:wsj0/si_tr_s/011/011c0201.wv1', "
                                      f"got {line[:60]!r}", number)
            disc_id, rel = match.groups()
            if "." not in rel.rsplit("/", 1)[-1]:
                rel += ".wv1"
            entries.append((disc_id, rel))
    return entries


def parse_dot(path: str | os.PathLike) -> dict[str, str]:
    """utterance id (lower case) -> raw transcript, from ``<words> (<utt id>)`` lines."""
    transcripts = {}
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            match = _DOT_LINE.match(line)
            if match is None:
                raise DataError(path, f"expected '<transcript> (<utterance id>)', got {line[:60]!r}", number)
            transcripts[match.group(2).lower()] = match.group(1).strip()
    return transcripts


class Transcripts:
    """Looks transcripts up by utterance id: ``011c0201`` is in ``011c0200.dot``; each file is read once."""

    def __init__(self, dots: dict[str, list[Path]]):
        self._dots = dots
        self._parsed: dict[str, dict[str, str]] = {}

    def get(self, utt: str) -> str | None:
        key = utt[:6] + "00"
        if key not in self._parsed:
            merged: dict[str, str] = {}
            for path in self._dots.get(key, []):  # a copy beside the audio and in transcrp/dots: first wins
                for u, text in parse_dot(path).items():
                    merged.setdefault(u, text)
            self._parsed[key] = merged
        return self._parsed[key].get(utt)


# --- transcript normalisation -------------------------------------------------

_NEIGHBOUR_OR_LONG_NOISE = re.compile(r"^\[(<[^\]]*|[^\]]*>|[^\]]*/|/[^\]]*)\]$")
_VERBAL_DELETION = re.compile(r"^<([^<>]+)>$")
_REPLACE = {"%PERCENT": "PERCENT", ".POINT": "POINT", "--DASH": "-DASH"}


def normalize_transcript(text: str, noise_word: str = "<NOISE>") -> str:
    """Kaldi's WSJ rules: a .dot transcript -> the words the recogniser is trained on.

    Mispronunciation marks (``*WORD*``) are kept, as Kaldi keeps them, so that
    texts (and WERs) match Kaldi and ESPnet; verbalized punctuation (``,COMMA``)
    is spoken, so it stays a word.
    """
    words = []
    for word in text.split():
        word = word.upper().replace("\\", "")
        if word in _REPLACE:
            words.append(_REPLACE[word])
        elif word in ("~", ".") or _NEIGHBOUR_OR_LONG_NOISE.match(word):
            # truncation and pause marks; a noise over the neighbouring word or the
            # start/end of a long one: the noise itself is not a word of its own here
            continue
        elif word.startswith("[") and word.endswith("]"):
            words.append(noise_word)
        elif (match := _VERBAL_DELETION.match(word)) is not None:
            words.append(match.group(1))  # deleted in the prompt, but spoken
        elif word:
            words.append(word)
    return " ".join(words)


def non_linguistic_symbols(texts: Iterable[str]) -> list[str]:
    """The ``<...>`` tokens of the texts, C-sorted: ESPnet's nlsyms file."""
    symbols = {w for text in texts for w in text.split() if len(w) > 2 and w[0] == "<" and w[-1] == ">"}
    return sorted(symbols, key=c_sort_key)


# --- sets ---------------------------------------------------------------------

@dataclass
class SetEntries:
    audio: dict[str, Path]  # utterance -> .wv1 file
    text: dict[str, str]
    skipped: dict[str, list[str]]  # reason -> index entries
    excluded: int = 0  # entries Kaldi leaves out on purpose (not a problem of the copy)


def collect_set(name: str, files: DiscFiles, transcripts: Transcripts, noise_word: str) -> SetEntries:
    out = SetEntries({}, {}, {"missing audio": [], "no transcript": []})
    for source in SETS[name]:
        index_key = f"{source.disc}/{source.path}".lower()
        if index_key not in files.indices:
            raise KdstError(f"index {source.disc}/{source.path} is not on disc {source.disc}")
        renames = dict(source.disc_renames)
        for disc_id, rel in parse_ndx(files.indices[index_key]):
            disc = disc_name(disc_id)
            key = f"{renames.get(disc, disc)}/{rel}".lower()
            if any(key.startswith(x) for x in _EXCLUDED):
                out.excluded += 1
                continue
            utt = Path(rel).stem.lower()
            if utt in out.audio:  # an utterance listed twice (or in both indices of si284) is kept once
                continue
            if key not in files.audio:
                out.skipped["missing audio"].append(key)
                continue
            raw = transcripts.get(utt)
            text = normalize_transcript(raw, noise_word) if raw is not None else ""
            if not text:
                out.skipped["no transcript"].append(key)
                continue
            out.audio[utt] = files.audio[key]
            out.text[utt] = text
    return out


def wav_scp_values(paths: Iterable[Path]) -> dict[Path, str]:
    """Audio file -> its wav.scp value; headers only are read (one small read per file)."""
    paths = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=8) as pool:  # many small reads: threads help on network disks
        headers = dict(zip(paths, pool.map(read_sphere_header, paths)))
    sph2pipe = None
    if any(is_shorten(h) for h in headers.values()):
        sph2pipe = shutil.which("sph2pipe")
        if sph2pipe is None:
            example = next(p for p, h in headers.items() if is_shorten(h))
            raise KdstError(f"the WSJ audio is shorten-compressed (e.g. {example}) and sph2pipe is not on PATH: "
                            f"{SPH2PIPE_HINT}")
    values = {}
    for path, header in headers.items():
        absolute = path.absolute()
        # The absolute sph2pipe path, as Kaldi writes it: later stages may run with another PATH.
        values[path] = (f"{shlex.quote(sph2pipe)} -f wav -p -c 1 {shlex.quote(str(absolute))} |"
                        if sph2pipe and is_shorten(header) else str(absolute))
    return values


def prepare_wsj(dirs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                sets: Iterable[str] = DEFAULT_SETS, noise_word: str = "<NOISE>") -> dict[str, int]:
    """Write ``out_dir/<set>`` data dirs and ``out_dir/nlsyms.txt``; returns utterances per set."""
    dirs, sets = [Path(d) for d in dirs], list(sets)
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise KdstError(f"unknown WSJ set(s) {', '.join(unknown)}; known: {', '.join(SETS)}")
    discs = find_discs(dirs)
    needed = sorted({src.disc for s in sets for src in SETS[s]})
    missing = [d for d in needed if d not in discs]
    if missing:
        raise KdstError(f"WSJ disc(s) {', '.join(missing)} not found (needed for {', '.join(sets)}); searched "
                        f"{', '.join(map(str, dirs))} and 2 levels below; found: {', '.join(sorted(discs)) or 'none'}")
    files = scan_discs(discs)
    transcripts = Transcripts(files.dots)
    collected = {s: collect_set(s, files, transcripts, noise_word) for s in sets}
    values = wav_scp_values(p for entries in collected.values() for p in entries.audio.values())

    out_dir = Path(out_dir)
    counts = {}
    for name, entries in collected.items():
        for reason, keys in entries.skipped.items():
            if keys:
                log.warning("%s: skipped %d index entr%s, %s (e.g. %s)", name, len(keys),
                            "y" if len(keys) == 1 else "ies", reason, keys[0])
        if not entries.audio:
            raise KdstError(f"WSJ set {name} is empty: no index entry has both audio and a transcript")
        utt2spk = {utt: utt[:3] for utt in entries.audio}
        write_data_dir(out_dir / name, {"wav.scp": {u: values[p] for u, p in entries.audio.items()},
                                        "utt2spk": utt2spk, "text": entries.text})
        skipped = sum(len(k) for k in entries.skipped.values())
        log.info("%s: %d utterances, %d speakers, %d skipped, %d excluded as in Kaldi (wsj0 speaker 401)",
                 out_dir / name, len(utt2spk), len(set(utt2spk.values())), skipped, entries.excluded)
        counts[name] = len(utt2spk)
    symbols = non_linguistic_symbols(t for entries in collected.values() for t in entries.text.values())
    atomic_write_text(out_dir / "nlsyms.txt", "".join(f"{s}\n" for s in symbols))
    return counts


# --- command line (registered in kdst/cli.py as `kdst prep-wsj`) ----------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", type=Path,
                        help="WSJ disc directories (11-1.1, 13-34.1, ...) or directories holding them")
    parser.add_argument("--out-dir", type=Path, default=Path("data"))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--noise-word", default="<NOISE>", help="what [noise] marks become")


def run(args: argparse.Namespace) -> int:
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    prepare_wsj(args.dirs, args.out_dir, sets=sets, noise_word=args.noise_word)  # logs per set
    return 0
