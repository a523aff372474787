"""Audio: wav.scp entries (paths and ``cmd |`` pipes), resampling, segments.

Everything is returned as mono float32 in [-1, 1] at ``TARGET_RATE``.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import soundfile
import torch
import torchaudio.functional

from kdst.data import sphere
from kdst.data.kaldi_dir import Segment
from kdst.errors import DataError

TARGET_RATE = 16000


class AudioError(Exception):
    """The audio of a wav.scp entry cannot be read; the message says why."""


def is_pipe(value: str) -> bool:
    return value.rstrip().endswith("|")


def read_wav_scp_value(value: str) -> tuple[np.ndarray, int]:
    """Decode one wav.scp value: a file path or a shell command ending in ``|``.

    Returns (samples, rate) as float32, first channel only: the corpora kdst
    targets are mono, and Kaldi likewise reads channel 0 unless told otherwise.
    """
    if is_pipe(value):
        command = value.rstrip()[:-1]
        proc = subprocess.run(["bash", "-c", command], capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AudioError(f"command failed (exit {proc.returncode}): {err[-1] if err else command}")
        source: str | io.BytesIO = io.BytesIO(proc.stdout)
    else:
        if not os.path.isfile(value):
            raise AudioError(f"audio file not found: {value}")
        if sphere.is_sphere_file(value):  # WSJ: libsndfile would not say why shorten fails
            samples, rate = _sphere_or_raise(sphere.read_sphere, value)
            if samples.shape[0] == 0:
                raise AudioError("audio is empty")
            return samples, rate
        source = value
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"cannot decode audio: {e}") from None
    if samples.shape[0] == 0:
        raise AudioError("audio is empty")
    return np.ascontiguousarray(samples[:, 0]), rate


def audio_duration(value: str) -> float:
    """Duration in seconds; reads only the header for plain files."""
    if not is_pipe(value):
        if not os.path.isfile(value):
            raise AudioError(f"audio file not found: {value}")
        if sphere.is_sphere_file(value):
            header = _sphere_or_raise(sphere.read_sphere_header, value)
            if sphere.is_shorten(header) or header.sample_count is None:
                return len(read_wav_scp_value(value)[0]) / header.sample_rate  # raises the hint for shorten
            if header.sample_count <= 0:
                raise AudioError("audio is empty")
            return header.sample_count / header.sample_rate
        try:
            info = soundfile.info(value)
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"cannot decode audio: {e}") from None
        if info.frames <= 0:
            raise AudioError("audio is empty")
        return info.frames / info.samplerate
    samples, rate = read_wav_scp_value(value)
    return len(samples) / rate


def _sphere_or_raise(read, path: str):
    try:
        return read(path)
    except DataError as e:  # the wav.scp entry is the file: say what is wrong with it
        raise AudioError(e.message) from None


def resample(samples: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    if rate == target:
        return samples
    out = torchaudio.functional.resample(torch.from_numpy(samples), rate, target)
    return out.numpy()


def load_recording(value: str) -> np.ndarray:
    """A whole recording at TARGET_RATE."""
    samples, rate = read_wav_scp_value(value)
    return resample(samples, rate)


def cut(samples: np.ndarray, start: float, end: float, rate: int = TARGET_RATE) -> np.ndarray:
    first, last = int(round(start * rate)), int(round(end * rate))
    return samples[max(first, 0):min(last, len(samples))]


@dataclass(frozen=True)
class Utterance:
    key: str
    samples: np.ndarray  # float32 at TARGET_RATE


def iter_utterances(
    wav_scp: Mapping[str, str],
    segments: Mapping[str, Segment] | None,
    wav_scp_path: str | os.PathLike = "wav.scp",
) -> Iterator[Utterance]:
    """Yield utterances in C order of their recordings, decoding each recording once.

    With segments, talk-level recordings are read once and cut into
    utterances; this matters for MuST-C, where a talk holds ~100 segments.
    """
    if segments is None:
        for key in sorted(wav_scp):
            yield Utterance(key, _load_or_raise(wav_scp, key, wav_scp_path))
        return
    by_recording: dict[str, list[tuple[str, Segment]]] = {}
    for utt, seg in segments.items():
        by_recording.setdefault(seg.recording, []).append((utt, seg))
    for recording in sorted(by_recording):
        if recording not in wav_scp:
            raise DataError(wav_scp_path, f"recording '{recording}' (used in segments) is not in wav.scp")
        samples = _load_or_raise(wav_scp, recording, wav_scp_path)
        for utt, seg in sorted(by_recording[recording]):
            piece = cut(samples, seg.start, seg.end)
            if len(piece) == 0:
                raise DataError(wav_scp_path, f"segment {utt} ({seg.start}-{seg.end} s) is outside recording "
                                f"'{recording}' ({len(samples) / TARGET_RATE:.2f} s)")
            yield Utterance(utt, piece)


def _load_or_raise(wav_scp: Mapping[str, str], key: str, wav_scp_path: str | os.PathLike) -> np.ndarray:
    try:
        return load_recording(wav_scp[key])
    except AudioError as e:
        raise DataError(wav_scp_path, f"recording '{key}': {e}", _line_of(os.fspath(wav_scp_path), key)) from None


def _line_of(path: str, key: str) -> int | None:
    """Line of ``key`` in a Kaldi file, looked up only when reporting an error."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if raw.split(maxsplit=1)[:1] == [key.encode("utf-8")]:
                    return number
    except OSError:
        pass
    return None
