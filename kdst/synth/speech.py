"""The synthetic English->German speech translation corpus, in the MuST-C v1.0 layout.

``make_corpus(root)`` writes ``root/en-de/data/<split>/{wav,txt}`` exactly as MuST-C
ships it, so the real-corpus preparation (``mustc.py``) reads it unchanged:

* ``wav/ted_<N>.wav``: one talk = one speaker (an espeak-ng voice+variant at a
  rate and pitch) reading ``utts_per_talk`` sentences with pauses, a lead-in
  silence and faint pink noise, 16 kHz mono int16;
* ``txt/<split>.yaml``: one ``- {duration, offset, rW, uW, speaker_id, wav}`` line
  per segment, exactly the samples of each utterance's speech;
* ``txt/<split>.en`` / ``.de``: transcript and reference translation per segment.

Everything is a function of the arguments: each talk is seeded from (seed, split,
talk index) so the files are byte-identical whatever ``nj`` is. Held-out splits use
speakers (voice+variant) never heard in train.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torchaudio.functional

from kdst.synth.text import generate_pairs
from kdst.data.files import atomic_write_text, remove_stale_temporaries, temporary_dir
from kdst.errors import KdstError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_SIZES = {"train": 2000, "dev": 100, "tst-COMMON": 200}
VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
          "en-029", "en-us-nyc")
# Variants (files under espeak-ng-data/voices/!v) split so that no dev/test
# speaker is heard in training: 8 voices x 18 variants for train, x 6 held out.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "adam", "Andy", "Annie",
                  "edward", "john", "linda", "paul", "robert", "steph")
HELDOUT_VARIANTS = ("m7", "m8", "f4", "f5", "Alex", "david")
_SPLIT_ORDER = ("train", "dev", "tst-COMMON", "tst-HE")
# Bumped whenever the output for the same arguments changes, so an old corpus is not reused.
_FORMAT = 1
# Any non-zero sample counts as speech: espeak pads with exact digital silence.
_SILENCE_LEVEL = 16


@dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str
    rate: int  # words per minute
    pitch: int  # 0-99

    @property
    def identity(self) -> str:
        return f"{self.voice}+{self.variant}"


@dataclass(frozen=True)
class _Talk:
    split: str
    index: int  # within the split: seeds the talk
    number: int  # N of ted_N.wav, unique over splits
    seed: int
    sentences: tuple[str, ...]
    wav_path: str


def _talk_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"kdst-mini-speech/{seed}/{split}/{index}")


def _draw_speaker(rng: random.Random, split: str) -> Speaker:
    variants = TRAIN_VARIANTS if split == "train" else HELDOUT_VARIANTS
    return Speaker(rng.choice(VOICES), rng.choice(variants), rng.randint(130, 190), rng.randint(30, 70))


def pick_speaker(seed: int, split: str, index: int) -> Speaker:
    """The speaker of a talk: only variants unseen in train outside train."""
    return _draw_speaker(_talk_rng(seed, split, index), split)


def espeak_data_dir() -> Path:
    """Where espeak-ng keeps its voices; a KdstError if espeak-ng cannot run."""
    if shutil.which("espeak-ng") is None:
        raise KdstError("espeak-ng not found: install it with `apt-get install espeak-ng`")
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    _, sep, path = out.stdout.partition("Data at:")
    if out.returncode != 0 or not sep:
        raise KdstError(f"espeak-ng --version failed: {out.stderr.strip() or out.stdout.strip()}")
    return Path(path.strip())


def check_espeak() -> None:
    # espeak-ng silently falls back to the plain voice for an unknown variant,
    # which would merge speakers (and break the train/test split) without a word.
    variant_dir = espeak_data_dir() / "voices" / "!v"
    missing = [v for v in TRAIN_VARIANTS + HELDOUT_VARIANTS if not (variant_dir / v).is_file()]
    if missing:
        raise KdstError(f"espeak-ng lacks voice variant(s) {', '.join(missing)} in {variant_dir}; "
                        "install the full espeak-ng-data package")


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """int16 samples of espeak's --stdout WAV, whose size fields are placeholders."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise KdstError("espeak-ng did not produce a WAV stream")
    pos, rate = 12, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"fmt ":
            fmt, channels, rate = (int.from_bytes(data[pos + 8 + a:pos + 8 + b], "little")
                                   for a, b in ((0, 2), (2, 4), (4, 8)))
            bits = int.from_bytes(data[pos + 22:pos + 24], "little")
            if (fmt, channels, bits) != (1, 1, 16):
                raise KdstError(f"espeak-ng WAV is not 16-bit mono PCM ({fmt}, {channels}, {bits})")
        elif chunk == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2"), rate
        pos += 8 + size
    raise KdstError("espeak-ng WAV stream has no data chunk")


def synthesize(text: str, speaker: Speaker) -> np.ndarray:
    """One utterance as float32 at SAMPLE_RATE, silence trimmed, an even number of samples.

    Even lengths (and even offsets) keep every time a multiple of 125 us, which
    the yaml's 6 decimals represent exactly.
    """
    command = ["espeak-ng", "-v", speaker.identity, "-s", str(speaker.rate), "-p", str(speaker.pitch),
               "--stdout", text]
    proc = subprocess.run(command, capture_output=True)
    if proc.returncode != 0:
        raise KdstError(f"espeak-ng failed on {text!r}: {proc.stderr.decode(errors='replace').strip()}")
    samples, rate = _parse_wav(proc.stdout)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > _SILENCE_LEVEL)
    if loud.size == 0:
        raise KdstError(f"espeak-ng produced silence for {text!r} with voice {speaker.identity}")
    speech = samples[loud[0]:loud[-1] + 1].astype(np.float32) / 32768.0
    speech = torchaudio.functional.resample(torch.from_numpy(speech), rate, SAMPLE_RATE).numpy()
    return np.pad(speech, (0, len(speech) % 2))


def _even(seconds: float) -> int:
    return 2 * round(seconds * SAMPLE_RATE / 2)


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))  # 1/f power, flat below 20 Hz
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def render_talk(talk: _Talk) -> list[tuple[int, int]]:
    """Synthesise and write one talk; returns (offset, length) in samples per utterance."""
    rng = _talk_rng(talk.seed, talk.split, talk.index)
    speaker = _draw_speaker(rng, talk.split)
    clips = [synthesize(text, speaker) for text in talk.sentences]
    positions, cursor = [], _even(rng.uniform(0.5, 1.0))
    for clip in clips:
        positions.append((cursor, len(clip)))
        cursor += len(clip) + _even(rng.uniform(0.3, 1.2))
    total = positions[-1][0] + positions[-1][1] + _even(rng.uniform(0.4, 0.8))
    audio = np.zeros(total, dtype=np.float64)
    for (offset, length), clip in zip(positions, clips):
        audio[offset:offset + length] = clip
    speech_rms = np.sqrt(np.mean(np.concatenate(clips).astype(np.float64) ** 2))
    snr_db = rng.uniform(35.0, 45.0)
    noise = _pink_noise(np.random.default_rng(rng.getrandbits(64)), total)
    audio += noise * speech_rms * 10 ** (-snr_db / 20)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(talk.wav_path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return positions


def _ordered_splits(sizes: Mapping[str, int]) -> list[str]:
    known = [s for s in _SPLIT_ORDER if s in sizes]
    return known + sorted(s for s in sizes if s not in _SPLIT_ORDER)


def _split_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "little")


def _single_thread() -> None:
    # nj processes already fill the cores, and one thread makes the resampling
    # independent of the thread count (so nj=1 and nj=2 give the same bytes).
    torch.set_num_threads(1)


def _run_talks(talks: Sequence[_Talk], nj: int, progress: bool) -> Iterator[tuple[_Talk, list[tuple[int, int]]]]:
    """Render talks in ``nj`` processes; yields in input order."""
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(talks), unit="talk", desc="synthesising")
    step = max(1, len(talks) // 10)

    def report(done: int) -> None:
        if bar is not None:
            bar.update(1)
        elif progress and (done % step == 0 or done == len(talks)):
            log.info("mini corpus: %d / %d talks synthesised", done, len(talks))

    threads = torch.get_num_threads()
    try:
        if nj <= 1:
            _single_thread()
            for done, talk in enumerate(talks, 1):
                positions = render_talk(talk)
                report(done)
                yield talk, positions
            return
        # spawn, not fork: the parent may hold torch/OpenMP threads, which fork does not survive.
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(nj, mp_context=context, initializer=_single_thread)
        try:
            for done, (talk, positions) in enumerate(zip(talks, pool.map(render_talk, talks)), 1):
                report(done)
                yield talk, positions
        finally:
            # On a failure, do not make the user wait for every queued talk.
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()


def _segment_line(offset: int, length: int, words: int, number: int) -> str:
    return (f"- {{duration: {length / SAMPLE_RATE:.6f}, offset: {offset / SAMPLE_RATE:.6f}, rW: {words}, "
            f"uW: 0, speaker_id: spk.{number}, wav: ted_{number}.wav}}")


def _settings(sizes: Mapping[str, int], seed: int, utts_per_talk: int, variability: float) -> dict:
    return {"format": _FORMAT, "seed": seed, "sizes": dict(sizes), "utts_per_talk": utts_per_talk,
            "variability": variability}


def make_corpus(root: str | os.PathLike, *, sizes: Mapping[str, int] | None = None, seed: int = 1,
                utts_per_talk: int = 20, nj: int = 2, variability: float = 0.3,
                progress: bool = True) -> dict:
    """Build the mini corpus under ``root/en-de``; returns utterances, talks and hours
    (of segmented speech) per split and the elapsed seconds. A finished corpus with the same settings is
    reused as is; one with other settings is an error."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if utts_per_talk < 1 or any(n < 0 for n in sizes.values()):
        raise KdstError("mini corpus: utts_per_talk must be >= 1 and split sizes >= 0")
    settings = _settings(sizes, seed, utts_per_talk, variability)
    lang_dir = Path(root) / "en-de"
    marker, data_dir = lang_dir / ".complete", lang_dir / "data"
    # What a killed build left; a live build's (here or on another host) is left alone. Before any
    # return: a corpus finished by another run must not keep a dead one's leftovers forever.
    remove_stale_temporaries(lang_dir)
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("settings") == settings:
            log.info("mini corpus: %s is complete, reusing it", lang_dir)
            return done["stats"]
        raise KdstError(f"{lang_dir} already holds a mini corpus made with other settings "
                        f"({done.get('settings')}); remove it to make a new one")
    if data_dir.exists():
        raise KdstError(f"{data_dir} exists but is not a finished mini corpus (no {marker.name}); remove it")
    check_espeak()
    started = time.monotonic()
    partial = temporary_dir(data_dir)
    try:
        stats = _build(partial, sizes, seed, utts_per_talk, nj, variability, progress)
        os.rename(partial, data_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    stats["elapsed"] = round(time.monotonic() - started, 1)
    atomic_write_text(marker, json.dumps({"settings": settings, "stats": stats}, indent=1) + "\n")
    log.info("mini corpus: %s utterances, %.2f h in %.0f s", stats["utterances"], stats["total_hours"],
             stats["elapsed"])
    return stats


def _build(out: Path, sizes: Mapping[str, int], seed: int, utts_per_talk: int, nj: int, variability: float,
           progress: bool) -> dict:
    talks: list[_Talk] = []
    pairs_by_split = {}
    seen: list[str] = []
    for split in _ordered_splits(sizes):
        # Held-out sentences avoid the earlier splits', so test is not memorised text.
        pairs = generate_pairs(sizes[split], _split_seed(seed, split), variability, exclude=seen)
        seen += [p.en for p in pairs]
        pairs_by_split[split] = pairs
        (out / split / "wav").mkdir(parents=True)
        (out / split / "txt").mkdir(parents=True)
        for index, start in enumerate(range(0, len(pairs), utts_per_talk)):
            number = len(talks) + 1
            sentences = tuple(p.en for p in pairs[start:start + utts_per_talk])
            talks.append(_Talk(split, index, number, seed, sentences, str(out / split / "wav" / f"ted_{number}.wav")))

    lines: dict[str, list[str]] = {split: [] for split in pairs_by_split}
    samples = dict.fromkeys(pairs_by_split, 0)
    for talk, positions in _run_talks(talks, nj, progress):
        for (offset, length), text in zip(positions, talk.sentences):
            lines[talk.split].append(_segment_line(offset, length, len(text.split()), talk.number))
            samples[talk.split] += length
    for split, pairs in pairs_by_split.items():
        txt = out / split / "txt"
        (txt / f"{split}.yaml").write_text("".join(f"{line}\n" for line in lines[split]), encoding="utf-8")
        (txt / f"{split}.en").write_text("".join(f"{p.en}\n" for p in pairs), encoding="utf-8")
        (txt / f"{split}.de").write_text("".join(f"{p.de}\n" for p in pairs), encoding="utf-8")
    hours = {split: round(n / SAMPLE_RATE / 3600, 4) for split, n in samples.items()}
    return {"utterances": {split: len(p) for split, p in pairs_by_split.items()},
            "talks": {split: sum(t.split == split for t in talks) for split in pairs_by_split},
            "hours": hours, "total_hours": round(sum(hours.values()), 4)}
