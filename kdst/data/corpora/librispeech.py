"""LibriSpeech (openslr.org/12, as its tarballs unpack) -> Kaldi data dirs.

The layout it reads::

    LibriSpeech/train-clean-100/103/1240/103-1240-0000.flac     16 kHz FLAC, one per utterance
    LibriSpeech/train-clean-100/103/1240/103-1240.trans.txt     one line per utterance of the chapter:
        103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED

Output per part, named as Kaldi and ESPnet name them (``train_clean_100``, ``dev_clean``, ...):
``wav.scp`` (utterance -> absolute FLAC path), ``utt2spk`` and ``spk2utt`` (the speaker
is ``<speaker>-<chapter>``, as in Kaldi, so every utterance id starts with it),
``text`` (the transcript as released: upper case, no punctuation) and, on request,
``utt2dur``.  When several training parts are prepared they are also combined
into one dir: ``train_960`` for all three, as Kaldi's recipe does.

What is checked: a malformed transcript line (no transcript, an id of another
chapter, a repeated id) and a FLAC without a transcript line are errors that name
the file.  A transcript line whose FLAC is missing is skipped with a warning
(a partly extracted or trimmed copy), so that the rest of the part can be used;
a part left with no utterance is an error.

An unlabelled pool (``prepare_unlabelled``: Libri-Light or any tree of FLAC/WAV
files) becomes a data dir without ``text``, for pseudo-labelling in noisy-student
training.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import soundfile

from kdst.data.kaldi_dir import c_sort_key, write_data_dir
from kdst.errors import DataError, KdstError

log = logging.getLogger(__name__)

PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
         "test-other")
TRAIN_HOURS = {"train-clean-100": 100, "train-clean-360": 360, "train-other-500": 500}
AUDIO_SUFFIXES = (".flac", ".wav")
_WHITESPACE = re.compile(r"\s+")


def data_dir_name(part: str) -> str:
    """``train-clean-100`` -> ``train_clean_100``."""
    return part.replace("-", "_")


def part_name(name: str) -> str:
    """A part as the user may spell it (``dev_clean`` or ``dev-clean``) -> its directory name."""
    part = name.strip().replace("_", "-")
    if part not in PARTS:
        raise KdstError(f"unknown LibriSpeech part '{name}'; known: {', '.join(PARTS)}")
    return part


def combined_train_name(parts: Iterable[str]) -> str:
    """Kaldi's names for combined training parts: ``train_960`` (all), ``train_clean_460`` (the clean ones)."""
    parts = [p for p in parts if p in TRAIN_HOURS]
    hours = sum(TRAIN_HOURS[p] for p in parts)
    return f"train_clean_{hours}" if all("-clean-" in p for p in parts) else f"train_{hours}"


def find_corpus_dir(root: str | os.PathLike) -> Path:
    """The directory holding the part directories: ``root/LibriSpeech`` or ``root`` itself."""
    root = Path(root)
    if not root.is_dir():
        raise KdstError(f"{root}: not a directory (expected LibriSpeech/ or the directory holding it)")
    for candidate in (root / "LibriSpeech", root):
        if any((candidate / part).is_dir() for part in PARTS):
            return candidate
    raise KdstError(f"{root}: no LibriSpeech part ({', '.join(PARTS[:2])}, ...) in it or in {root / 'LibriSpeech'}")


# --- one part -----------------------------------------------------------------

@dataclass
class PartEntries:
    audio: dict[str, Path] = field(default_factory=dict)  # utterance -> flac
    text: dict[str, str] = field(default_factory=dict)
    utt2spk: dict[str, str] = field(default_factory=dict)  # speaker = '<speaker>-<chapter>', as in Kaldi
    missing_audio: list[str] = field(default_factory=list)  # 'FILE:LINE' of transcript lines without a flac


def read_transcripts(path: Path, speaker: str, chapter: str) -> dict[str, tuple[str, int]]:
    """utterance -> (transcript, line) of a ``<speaker>-<chapter>.trans.txt`` file."""
    prefix = f"{speaker}-{chapter}-"
    out: dict[str, tuple[str, int]] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 (byte {e.start})", number) from None
            if not line:
                continue
            utt, *rest = line.split(maxsplit=1)
            text = _WHITESPACE.sub(" ", rest[0]) if rest else ""
            if not text:
                raise DataError(path, f"expected '<utterance id> <TRANSCRIPT>', got {line[:60]!r}", number)
            if not utt.startswith(prefix) or len(utt) == len(prefix):
                raise DataError(path, f"utterance id '{utt}' is not of chapter {speaker}-{chapter} "
                                      f"(expected '{prefix}NNNN')", number)
            if utt in out:
                raise DataError(path, f"utterance '{utt}' listed twice (first on line {out[utt][1]})", number)
            out[utt] = (text, number)
    return out


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def collect_part(part_dir: Path) -> PartEntries:
    """The utterances of one part: ``<speaker>/<chapter>/`` directories, each with its transcript file."""
    out = PartEntries()
    for speaker_dir in _subdirs(part_dir):
        for chapter_dir in _subdirs(speaker_dir):
            speaker, chapter = speaker_dir.name, chapter_dir.name
            flacs = {p.name[:-5]: p for p in chapter_dir.iterdir()
                     if p.name.endswith(".flac") and not p.name.startswith(".")}
            trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
            if not trans.is_file():
                if flacs:
                    raise DataError(trans, f"missing: the {len(flacs)} flac file(s) beside it have no transcript")
                continue
            transcripts = read_transcripts(trans, speaker, chapter)
            unlisted = sorted(set(flacs) - set(transcripts), key=c_sort_key)
            if unlisted:
                raise DataError(trans, f"no transcript line for {flacs[unlisted[0]].name}"
                                       + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
            for utt, (text, line) in transcripts.items():
                if utt not in flacs:
                    out.missing_audio.append(f"{trans}:{line}")
                    continue
                out.audio[utt] = flacs[utt]
                out.text[utt] = text
                out.utt2spk[utt] = f"{speaker}-{chapter}"
    return out


# --- durations and writing ------------------------------------------------------

def durations(paths: Iterable[Path]) -> dict[Path, float]:
    """Duration in seconds of each audio file, from its header."""
    paths = sorted(set(paths))

    def duration(path: Path) -> float:
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise DataError(path, f"cannot decode audio: {e}") from None
        return info.frames / info.samplerate

    with ThreadPoolExecutor(max_workers=8) as pool:  # many small header reads: threads help on network disks
        return dict(zip(paths, pool.map(duration, paths)))


def _write(path: Path, audio: dict[str, Path], utt2spk: dict[str, str], text: dict[str, str] | None,
           lengths: dict[Path, float] | None) -> None:
    files = {"wav.scp": {u: os.path.abspath(p) for u, p in audio.items()}, "utt2spk": utt2spk}
    if text is not None:
        files["text"] = text
    if lengths is not None:
        files["utt2dur"] = {u: f"{lengths[p]:.3f}" for u, p in audio.items()}
    write_data_dir(path, files)
    if lengths is None:  # a utt2dur of an earlier run would no longer match
        (path / "utt2dur").unlink(missing_ok=True)


def prepare_librispeech(root: str | os.PathLike, out_dir: str | os.PathLike, parts: Iterable[str] | None = None,
                        combine_train: str | None = "auto", with_durations: bool = False) -> dict[str, int]:
    """Write ``out_dir/<part>`` data dirs; returns utterances per data dir written.

    ``root``: the directory holding ``LibriSpeech/``, or the one holding the parts.
    ``parts``: default every part present.  ``combine_train``: the name of the dir
    combining the training parts when more than one is prepared; "auto" for
    Kaldi's name (``train_960``, ``train_clean_460``, ...), None for none.
    """
    corpus = find_corpus_dir(root)
    if parts is None:
        parts = [p for p in PARTS if (corpus / p).is_dir()]
    else:
        parts = list(dict.fromkeys(part_name(p) for p in parts))
        missing = [p for p in parts if not (corpus / p).is_dir()]
        if missing:
            present = [p for p in PARTS if (corpus / p).is_dir()]
            raise KdstError(f"LibriSpeech part(s) {', '.join(missing)} not in {corpus} "
                            f"(present: {', '.join(present) or 'none'})")
    if not parts:
        raise KdstError("no LibriSpeech part to prepare")
    collected = {part: collect_part(corpus / part) for part in parts}
    for part, entries in collected.items():
        if not entries.audio:
            raise DataError(corpus / part, "no utterance with both a flac file and a transcript line")
    lengths = durations(p for e in collected.values() for p in e.audio.values()) if with_durations else None

    out_dir = Path(out_dir)
    counts = {}
    for part, entries in collected.items():
        name = data_dir_name(part)
        if entries.missing_audio:
            log.warning("%s: skipped %d transcript line(s) whose flac file is missing (e.g. %s)", name,
                        len(entries.missing_audio), entries.missing_audio[0])
        utt2spk = entries.utt2spk
        _write(out_dir / name, entries.audio, utt2spk, entries.text, lengths)
        log.info("%s: %d utterances, %d speakers (speaker-chapter), %d skipped", out_dir / name, len(utt2spk),
                 len(set(utt2spk.values())), len(entries.missing_audio))
        counts[name] = len(utt2spk)

    train = [p for p in parts if p in TRAIN_HOURS]
    if combine_train and len(train) > 1:
        name = combined_train_name(train) if combine_train == "auto" else combine_train
        if name in counts:
            raise KdstError(f"the combined training dir cannot be named '{name}': that is a part")
        audio = {u: p for part in train for u, p in collected[part].audio.items()}
        text = {u: t for part in train for u, t in collected[part].text.items()}
        utt2spk = {u: s for part in train for u, s in collected[part].utt2spk.items()}
        _write(out_dir / name, audio, utt2spk, text, lengths)
        log.info("%s: %d utterances, %d speakers (speaker-chapter), from %s", out_dir / name, len(utt2spk),
                 len(set(utt2spk.values())), " + ".join(map(data_dir_name, train)))
        counts[name] = len(utt2spk)
    return counts


# --- unlabelled audio -------------------------------------------------------------

def _id_part(name: str) -> str:
    return _WHITESPACE.sub("_", name)  # Kaldi ids hold no whitespace


def prepare_unlabelled(audio_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str = "unlab",
                       with_durations: bool = False) -> int:
    """Every ``*.flac``/``*.wav`` below ``audio_dir`` -> ``out_dir/<name>``, a data dir without ``text``.

    ``small/100/sea_fairies/01_baum.flac`` becomes utterance ``100-sea_fairies-01_baum`` of speaker
    ``100-sea_fairies`` (the directories joined, as LibriSpeech's speaker-chapter); a file directly in
    ``audio_dir`` is its own speaker.  Returns the number of utterances.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise KdstError(f"{audio_dir}: not a directory (expected a tree of .flac/.wav files)")
    audio: dict[str, Path] = {}
    utt2spk: dict[str, str] = {}
    # followlinks: pools are often assembled from symlinks
    for dirpath, dirnames, filenames in os.walk(audio_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dirs = [_id_part(d) for d in Path(dirpath).relative_to(audio_dir).parts]
        for filename in sorted(filenames):
            stem, suffix = os.path.splitext(filename)
            if suffix.lower() not in AUDIO_SUFFIXES or filename.startswith("."):
                continue
            utt = "-".join([*rel_dirs, _id_part(stem)])
            path = Path(dirpath, filename)
            if utt in audio:
                raise KdstError(f"{path} and {audio[utt]} would both be utterance '{utt}': rename one")
            audio[utt] = path
            utt2spk[utt] = "-".join(rel_dirs) or utt
    if not audio:
        raise KdstError(f"{audio_dir}: no .flac or .wav file below it")
    _check_speaker_order(utt2spk)
    lengths = durations(audio.values()) if with_durations else None
    path = Path(out_dir) / name
    _write(path, audio, utt2spk, None, lengths)
    (path / "text").unlink(missing_ok=True)  # an unlabelled dir has none; pseudo-labelling writes it
    log.info("%s: %d unlabelled utterances, %d speakers, from %s", path, len(audio), len(set(utt2spk.values())),
             audio_dir)
    return len(audio)


def _check_speaker_order(utt2spk: dict[str, str]) -> None:
    """Kaldi needs utterances sorted by id to be sorted by speaker too; audio both in a directory and in
    its subdirectories (``a/x.flac`` beside ``a/b/y.flac``) can break that."""
    previous = None
    for utt in sorted(utt2spk, key=c_sort_key):
        speaker = utt2spk[utt]
        if previous is not None and c_sort_key(speaker) < c_sort_key(previous[1]):
            raise KdstError(f"utterance '{utt}' (speaker '{speaker}') sorts after '{previous[0]}' (speaker "
                            f"'{previous[1]}'): keep audio files either in a directory or in its subdirectories, "
                            f"not both")
        previous = (utt, speaker)


# --- command line (to be registered in kdst/cli.py as `kdst prep-librispeech`) --------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="LibriSpeech/, the directory holding it, or one holding the parts")
    parser.add_argument("--out-dir", type=Path, default=Path("data"))
    parser.add_argument("--parts", help=f"comma-separated (default: all present), of: {', '.join(PARTS)}")
    parser.add_argument("--combine-train", default="auto",
                        help="name of the dir combining the training parts prepared ('auto': train_960 for "
                             "all three, as Kaldi; 'none': do not combine)")
    parser.add_argument("--with-durations", action="store_true", help="also write utt2dur (reads every header)")
    parser.add_argument("--unlabelled", type=Path, metavar="DIR",
                        help="also prepare every .flac/.wav below DIR as an unlabelled data dir (no text)")
    parser.add_argument("--unlabelled-name", default="unlab", help="its data dir name")


def run(args: argparse.Namespace) -> int:
    parts = [p for p in args.parts.split(",") if p.strip()] if args.parts else None
    combine = None if args.combine_train.lower() in ("", "none") else args.combine_train
    prepare_librispeech(args.root, args.out_dir, parts=parts, combine_train=combine,
                        with_durations=args.with_durations)  # logs per set
    if args.unlabelled is not None:
        prepare_unlabelled(args.unlabelled, args.out_dir, name=args.unlabelled_name,
                           with_durations=args.with_durations)
    return 0
