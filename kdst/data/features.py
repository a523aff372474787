"""Features: Kaldi-compatible log-mel filterbanks, Kaldi ark/scp shards, global CMVN.

Fbank comes from ``torchaudio.compliance.kaldi.fbank`` so that features match
Kaldi's ``compute-fbank-feats`` for the same options.  Shards are written the
Kaldi way (``ark,scp``) with kaldiio, so Kaldi and ESPnet tools read them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import struct
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

import kaldiio
import numpy as np
import torch
import torchaudio.compliance.kaldi
import yaml
from tqdm import tqdm

from kdst.data.audio import TARGET_RATE, iter_utterances
from kdst.data.files import atomic_path, atomic_write_text, remove_stale_temporaries
from kdst.data.kaldi_dir import DataDir, Entry, iter_entries, require_directory, write_data_dir, write_kv
from kdst.errors import DataError, KdstError

log = logging.getLogger(__name__)

# What kaldiio raises on an ark that ends mid-matrix, a wrong offset or bytes that are no matrix.
_FEATURE_READ_ERRORS = (AssertionError, ValueError, EOFError, OSError, IndexError, struct.error)


@dataclass(frozen=True)
class FbankOptions:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # Kaldi dithers by default; kdst does not, so features are reproducible.
    dither: float = 0.0
    preemphasis_coefficient: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist, as in Kaldi
    window_type: str = "povey"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None) -> "FbankOptions":
        if path is None:
            return cls()
        if not Path(path).is_file():
            raise DataError(path, "fbank config not found")
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise DataError(path, f"not valid YAML ({getattr(e, 'problem', None) or e})") from None
        if not isinstance(raw, dict):
            raise DataError(path, "expected a mapping of fbank options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DataError(path, f"unknown fbank option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**raw)

    def fingerprint(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def compute_fbank(samples: np.ndarray, options: FbankOptions = FbankOptions()) -> np.ndarray:
    """(frames, num_mel_bins) float32 log-mel features of 16 kHz float samples in [-1, 1]."""
    # Kaldi reads 16-bit PCM as integers; scale so that energies (and the
    # log floor) match compute-fbank-feats.
    wave = torch.from_numpy(samples).unsqueeze(0) * 32768.0
    feats = torchaudio.compliance.kaldi.fbank(
        wave,
        num_mel_bins=options.num_mel_bins,
        frame_length=options.frame_length_ms,
        frame_shift=options.frame_shift_ms,
        dither=options.dither,
        preemphasis_coefficient=options.preemphasis_coefficient,
        low_freq=options.low_freq,
        high_freq=options.high_freq,
        window_type=options.window_type,
        energy_floor=0.0,
        sample_frequency=TARGET_RATE,
    )
    return feats.numpy()


def _shard_fingerprint(data: DataDir, options: FbankOptions) -> str:
    h = hashlib.sha256(options.fingerprint().encode())
    for name in ("wav.scp", "segments"):
        if data.has(name):
            h.update(data.file(name).read_bytes())
    return h.hexdigest()


def write_fbank_shard(data_dir: str | os.PathLike, feat_dir: str | os.PathLike, name: str,
                      options: FbankOptions = FbankOptions()) -> Path:
    """Compute features of one data dir into ``feat_dir/name.{ark,scp}`` (+ ``.utt2num_frames``).

    The scp is renamed into place last and a ``.done`` file records what it was
    computed from, so an interrupted job leaves no scp that points at a partial
    ark, and a re-run with the same inputs does nothing.
    """
    data = DataDir(data_dir)
    feat_dir = Path(feat_dir).resolve()
    require_directory(feat_dir, "feature directory")
    feat_dir.mkdir(parents=True, exist_ok=True)
    ark, scp = feat_dir / f"{name}.ark", feat_dir / f"{name}.scp"
    done = feat_dir / f"{name}.done"
    fingerprint = _shard_fingerprint(data, options)
    if done.is_file() and done.read_text() == fingerprint and scp.is_file():
        log.info("%s: features already computed", scp)
        return scp

    wav_scp = data.require("wav.scp")
    segments = data.segments()
    total = len(segments) if segments is not None else len(wav_scp)
    remove_stale_temporaries(feat_dir)  # of jobs killed before they could clean up
    # The ark is rewritten in place: an older scp must not point into it meanwhile.
    done.unlink(missing_ok=True)
    scp.unlink(missing_ok=True)
    num_frames: dict[str, str] = {}
    skipped = []
    utterances = iter_utterances(wav_scp, segments, data.file("wav.scp"))
    try:
        with atomic_path(scp) as scp_tmp, kaldiio.WriteHelper(f"ark,scp:{ark},{scp_tmp}") as writer:
            for utt in tqdm(utterances, total=total, desc=f"fbank {name}", disable=not sys.stderr.isatty(),
                            mininterval=2.0):
                feats = compute_fbank(utt.samples, options)
                if feats.shape[0] == 0:  # shorter than one window: Kaldi skips these too
                    skipped.append(utt.key)
                    continue
                writer(utt.key, feats)
                num_frames[utt.key] = str(feats.shape[0])
            write_kv(feat_dir / f"{name}.utt2num_frames", num_frames)  # before the scp is in place
        # (the ark and the scp were closed, then atomic_path renamed the scp into place)
    except BaseException:
        ark.unlink(missing_ok=True)  # a partial ark that no scp points at
        raise
    if skipped:
        log.warning("%s: skipped %d utterance(s) shorter than one frame: %s", data.path, len(skipped),
                    " ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    atomic_write_text(done, fingerprint)
    log.info("%s: %d utterances, %d skipped", scp, len(num_frames), len(skipped))
    return scp


# --- global CMVN -------------------------------------------------------------

def accumulate_cmvn(feature_matrices: Iterable[np.ndarray]) -> np.ndarray:
    """Kaldi's cmvn statistics: row 0 = [sum x, count], row 1 = [sum x^2, 0]."""
    stats: np.ndarray | None = None
    for feats in feature_matrices:
        if stats is None:
            stats = np.zeros((2, feats.shape[1] + 1), dtype=np.float64)
        f = feats.astype(np.float64)
        stats[0, :-1] += f.sum(axis=0)
        stats[1, :-1] += (f * f).sum(axis=0)
        stats[0, -1] += f.shape[0]
    if stats is None:
        raise KdstError("no features to compute CMVN statistics from")
    return stats


def compute_global_cmvn(feats_scp: str | os.PathLike, out: str | os.PathLike) -> np.ndarray:
    """Accumulate statistics over every utterance of ``feats_scp`` into a Kaldi matrix file."""
    matrices = ((e, load_feature_matrix(feats_scp, e)) for e in iter_entries(feats_scp))
    stats = accumulate_cmvn(_same_dimension(feats_scp, matrices))
    with atomic_path(out) as tmp:
        kaldiio.save_mat(os.fspath(tmp), stats)
    return stats


def _same_dimension(scp: str | os.PathLike, entries: Iterable[tuple[Entry, np.ndarray]]) -> Iterable[np.ndarray]:
    dim = None
    for entry, feats in entries:
        if feats.ndim != 2 or (dim is not None and feats.shape[1] != dim):
            expected = "a matrix" if dim is None else f"(frames, {dim}) like the ones before"
            raise DataError(scp, f"the features of '{entry.key}' have shape {feats.shape}, not {expected}",
                            entry.line)
        dim = feats.shape[1]
        yield feats


def load_feature_matrix(scp: str | os.PathLike, entry: Entry) -> np.ndarray:
    """The matrix of one ``feats.scp`` line (``ark:offset``, a pipe...), or a DataError naming that line."""
    try:
        return kaldiio.load_mat(entry.value)
    except _FEATURE_READ_ERRORS as e:
        raise DataError(scp, f"the features of '{entry.key}' cannot be read from {entry.value} (truncated or not "
                             f"a Kaldi ark? {_first_line(e)})", entry.line) from None


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@dataclass(frozen=True)
class GlobalCMVN:
    mean: np.ndarray
    inv_std: np.ndarray

    @classmethod
    def from_stats(cls, stats: np.ndarray, var_floor: float = 1e-20) -> "GlobalCMVN":
        count = stats[0, -1]
        mean = stats[0, :-1] / count
        var = np.maximum(stats[1, :-1] / count - mean * mean, var_floor)
        return cls(mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GlobalCMVN":
        if not Path(path).is_file():
            raise DataError(path, "CMVN statistics not found (kdst compute-cmvn writes them)")
        try:
            stats = kaldiio.load_mat(os.fspath(path))
        except _FEATURE_READ_ERRORS as e:
            raise DataError(path, f"not a Kaldi matrix ({_first_line(e)})") from None
        if stats.ndim != 2 or stats.shape[0] != 2 or stats[0, -1] <= 0:
            raise DataError(path, f"not CMVN statistics (2 rows, a frame count last): shape {stats.shape}")
        return cls.from_stats(stats)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return (feats - self.mean) * self.inv_std


# --- speed perturbation --------------------------------------------------------

def speed_perturb_data_dir(src: str | os.PathLike, dst: str | os.PathLike, factors: Iterable[float]) -> None:
    """Kaldi-style speed perturbation: a new data dir whose recordings are sox pipes.

    Utterances, speakers and recordings of factor f get the prefix ``sp<f>-``
    (factor 1.0 keeps the original ids); segment times are divided by f.
    Features are then computed from the pipes like from any other wav.scp.
    """
    data = DataDir(src)
    wav_scp = data.require("wav.scp")
    segments = data.segments()
    languages = data.text_languages()
    out: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "utt2spk", "text",
                                                       *(f"text.{lang}" for lang in languages))}
    if segments is not None:
        out["segments"] = {}
    for factor in factors:
        prefix = "" if factor == 1.0 else f"sp{factor:g}-"
        for rec, value in wav_scp.items():
            out["wav.scp"][prefix + rec] = value if factor == 1.0 else _sox_speed(value, factor)
        for utt, spk in data.require("utt2spk").items():
            out["utt2spk"][prefix + utt] = prefix + spk
        for name in ("text", *(f"text.{lang}" for lang in languages)):
            for utt, text in (data.read(name) or {}).items():
                out[name][prefix + utt] = text
        for utt, seg in (segments or {}).items():
            out["segments"][prefix + utt] = f"{prefix}{seg.recording} {seg.start / factor:.3f} {seg.end / factor:.3f}"
    if not out["text"]:
        del out["text"]
    write_data_dir(dst, out)


def _sox_speed(value: str, factor: float) -> str:
    if value.rstrip().endswith("|"):
        return f"{value.rstrip()[:-1].rstrip()} | sox -t wav - -t wav - speed {factor:g} |"
    return f"sox {shlex.quote(value)} -t wav - speed {factor:g} |"


def read_utt2num_frames(path: str | os.PathLike) -> dict[str, int]:
    out = {}
    for e in iter_entries(path):
        try:
            out[e.key] = int(e.value)
        except ValueError:
            raise DataError(path, f"frame count is not an integer: '{e.value}'", e.line) from None
    return out
