"""``kdst topk``: one teacher forward pass over a data dir into a cache of its output distributions.

For every utterance and every target position (each target token and the final
<eos>), the MT teacher reads the transcript, is forced with the reference prefix,
and its distribution is stored compactly (kdst.data.teacher_cache).  A Whisper
teacher (``hf:PATH``, kdst.models.hf_whisper) hears the speech instead, through its
own log-mel features: ``teacher_data_dir`` is the copy of the data dir that ``kdst
hf-features`` made, and the teacher is forced, after its decoder prompt, with the
targets of the data dir the student trains on (its text, tokenized by the teacher's
exported tokenizer, which the student adopts), joined by utterance id.  The two data
dirs must name the same audio per utterance (wav.scp, segments), so the features are
those of the speech the student hears.  Any other speech teacher (a kdst ASR or ST
model, an ensemble of them, an ESPnet one without a frontend) reads the data dir's own
features (feats.scp, with its CMVN) and is forced with its targets: word-level KD of an
ASR student from the recipe's ASR teacher.

- ``topk``: the k most likely vocabulary entries and their logits (word-level KD
  renormalises over them, as FBK-fairseq does), and per token the log of the
  teacher's mass outside them at ``temperature`` (the rest: ``kd.topk_rest`` trains
  on the k entries plus one rest class instead of renormalising).  The mean mass the
  k entries keep goes into meta.json; below 80% the summary warns;
- ``sampled``: k tokens drawn from the teacher distribution at ``temperature``,
  softmax(z / T), stored as distinct ids with counts.  The KD loss against the
  empirical distribution is an unbiased estimate of the cross-entropy to the full
  teacher distribution at T (up to the teacher's entropy, a constant), where top-k is
  biased towards the head.  Training must use the same T: a cache drawn at another
  temperature is refused.

Sampling is seeded per utterance id, so the cache does not depend on how the data
dir was split into jobs.  The cache records a fingerprint of the teacher's weights,
the target and source tokenizers, k, the mode, the temperature (and the seed when
sampled), and the content the teacher saw: the target token ids it was forced with
and the source text it read, per utterance; training checks it.  A Whisper teacher's
records its features instead of a source text: the extractor's digest (``features``),
the decoder prompt (``prompt``: ``lang=`` and ``task=`` change it, not the weights) and
per utterance the audio the features were computed from (``source``,
kdst.models.hf_whisper.audio_sources), which training compares with its own data dir;
another speech teacher's likewise, ``features`` saying how it read them (the data dir's
feats.scp, its CMVN statistics' digest).  A Whisper teacher's batches hold
``batch_units`` frames of its window (30 s each, whatever the speech's length), what
its encoder computes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from kdst.config import DataConfig
from kdst.data.dataset import Example, iterate, make_batches, make_dataset
from kdst.data.files import file_digest
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import (CacheWriter, TeacherCache, cache_fingerprint, low_kept_mass_warning,
                                     source_digest, targets_digest)
from kdst.data.tokenizer import load_tokenizer
from kdst.errors import KdstError
from kdst.models.ensemble import load_teachers
from kdst.models.hf_whisper import WhisperTeacher, audio_sources
from kdst.models.teacher import Teacher

log = logging.getLogger("kdst.topk")
MODES = ("topk", "sampled")


def sample_counts(logits: torch.Tensor, k: int, generator: torch.Generator,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """k draws per row of softmax(logits / temperature) (n, V) as (ids, counts), each (n, k): the distinct
    ids drawn with how often; the remaining slots have count 0 (id 0)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    draws = torch.multinomial(probs, k, replacement=True, generator=generator)
    draws = draws.sort(dim=1).values
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    counts = (draws[:, :, None] == draws[:, None, :]).sum(-1)
    return torch.where(first, draws, 0), torch.where(first, counts, 0)


def rest_log_mass(logits: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of softmax(logits / T)'s mass outside ``indices`` along the last axis (-inf when they cover it),
    as a log-sum-exp over the other entries, never log(1 - sum), which cancels when the k hold nearly all."""
    scaled = logits.float() / temperature
    outside = scaled.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return outside - scaled.logsumexp(-1)


def utterance_seed(utt: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{utt}".encode()).digest()[:8], "little") & (2**63 - 1)


class SpeechTargets:
    """A Whisper teacher's inputs: its features (``features``, the dataset of its data dir) and the student's
    targets (``targets``: token ids by utterance), joined by utterance id."""

    def __init__(self, features, targets: dict[str, list[int]]):
        self.features, self.targets = features, targets
        self.ids = sorted(targets)
        self.src_lengths = {utt: features.src_lengths[utt] for utt in self.ids}

    def __getitem__(self, utt: str) -> Example:
        return Example(utt, self.features[utt].src, self.targets[utt])


def transcript_inputs(loaded: Teacher, data: DataConfig, data_dir, teacher_data_dir) -> tuple[object, dict, dict]:
    """An MT teacher's dataset (the transcript and the targets of ``data_dir``), what the fingerprint records of
    what it read, and the lengths its batches count (source tokens)."""
    if teacher_data_dir is not None:
        raise KdstError(f"--teacher-data-dir {teacher_data_dir}: {loaded.reference} reads the transcript "
                        f"({data.src_text}), not speech features (the option is for a Whisper teacher)")
    dataset = make_dataset(data, data_dir)
    read = {"source_text": data.src_text, "src_tokenizer": data.src_tokenizer,
            "source": source_digest(DataDir(data_dir).require(data.src_text), dataset.ids)}
    return dataset, read, dataset.src_lengths


def feature_inputs(loaded: Teacher, data: DataConfig, data_dir, teacher_data_dir) -> tuple[object, dict, dict]:
    """A speech teacher that reads the data dir's own features (a kdst ASR or ST model, an ESPnet one without a
    frontend): the features and targets of ``data_dir`` as the teacher's data section reads them (its CMVN), and
    what the fingerprint records: the audio heard per utterance, as for Whisper (the student may read other
    features of the same speech), and ``features``, how it read them (feats.scp, the CMVN statistics' digest)."""
    if teacher_data_dir is not None:
        raise KdstError(f"--teacher-data-dir {teacher_data_dir}: {loaded.reference} reads the features of the data "
                        "dir itself (feats.scp); the option is for a Whisper teacher's own features")
    if not callable(getattr(loaded.model, "decoder_logits", None)):
        raise KdstError(f"{loaded.reference}: a transducer has no decoder distribution per target token for the "
                        "top-k cache (RNN-T students distil over the lattice: kd.mode soft-full)")
    # the teacher's CTC targets are no part of its decoder's distribution, and may be a file this dir lacks
    dataset = make_dataset(replace(data, ctc_text=None), data_dir)
    heard = audio_sources(data_dir)
    silent = [utt for utt in dataset.ids if utt not in heard]
    if silent:
        raise KdstError(f"{data_dir}: no audio (wav.scp, segments) for {len(silent)} utterance(s) with features, "
                        f"e.g. '{silent[0]}': the cache records the speech the teacher heard")
    # how it read them, the same in every job of a split data dir (the parts' fingerprints must agree)
    features = f"feats.scp, CMVN {file_digest(data.cmvn) if data.cmvn else 'none'}"
    read = {"source_text": None, "source": source_digest(heard, dataset.ids), "features": features}
    return dataset, read, dataset.src_lengths


def whisper_inputs(loaded: Teacher, data: DataConfig, data_dir, teacher_data_dir) -> tuple[SpeechTargets, dict, dict]:
    """A Whisper teacher's dataset: its features from ``teacher_data_dir``, the targets from ``data_dir``'s text,
    for every utterance of that text; what the fingerprint records of what it read; the lengths its batches
    count (its window, which its encoder computes whatever the speech's length)."""
    model, name = loaded.model, loaded.reference
    if teacher_data_dir is None:
        raise KdstError(f"{name} reads its own log-mel features: give --teacher-data-dir, the data dir made by kdst "
                        f"hf-features --teacher {name} {data_dir} DIR")
    model.check_data_dir(teacher_data_dir)
    features = make_dataset(data, teacher_data_dir, with_targets=False)
    text_file = Path(data_dir) / data.text
    texts = DataDir(data_dir).require(data.text)
    missing = [utt for utt in sorted(texts) if utt not in features.src_lengths]
    if missing:
        raise KdstError(f"{teacher_data_dir}: no features for {len(missing)} of the {len(texts)} utterances of "
                        f"{text_file}, e.g. '{missing[0]}' (make them with kdst hf-features --teacher {name} "
                        f"{data_dir} {teacher_data_dir})")
    heard, read = audio_sources(data_dir), audio_sources(teacher_data_dir)
    silent = [utt for utt in sorted(texts) if utt not in heard]
    if silent:
        raise KdstError(f"{data_dir}: no audio (wav.scp, segments) for {len(silent)} utterance(s) of {text_file}, "
                        f"e.g. '{silent[0]}'")
    other = [utt for utt in sorted(texts) if read.get(utt) != heard[utt]]
    if other:  # the join by id would pair a target with another recording's features
        raise KdstError(f"{teacher_data_dir}: the features of {len(other)} utterance(s) are of other audio than "
                        f"{data_dir} has (wav.scp, segments), e.g. '{other[0]}': make them with kdst hf-features "
                        f"--teacher {name} {data_dir} DIR")
    tokenizer = load_tokenizer(data.tokenizer)
    dataset = SpeechTargets(features, {utt: tokenizer.encode(texts[utt]) for utt in texts})
    read = {"source_text": None, "source": source_digest(heard, dataset.ids), "features": model.features_digest,
            "prompt": list(model.prompt)}
    return dataset, read, {utt: model.window for utt in dataset.ids}


def write_cache(teacher: str | list[str], data_dir: str | Path, out: str | Path, *, k: int = 8, mode: str = "topk",
                text: str | None = None, batch_units: int = 20000, device: str | None = None, seed: int = 1,
                src_text: str | None = None, weights: list[float] | None = None, temperature: float = 1.0,
                teacher_data_dir: str | Path | None = None) -> dict:
    """Run ``teacher`` (a teacher reference, kdst.models.teacher: MT, speech, or Whisper) over ``data_dir`` and write
    the cache to ``out``; returns a summary.  Several teachers: their ensemble (kdst.models.ensemble), weighted
    by ``weights``.  ``src_text``: the data dir's source text file, if not the
    teacher's own; ``text``: its target text file (default: the teacher's); ``temperature``: of the draws
    (sampled) and of the mass outside the top k (topk), which training at another T cannot use.  A Whisper
    ``teacher`` reads its features from ``teacher_data_dir`` (kdst hf-features of ``data_dir``)."""
    if mode not in MODES:
        raise KdstError(f"unknown cache mode '{mode}' ({', '.join(MODES)})")
    if k < 1:
        raise KdstError(f"--k must be >= 1, not {k}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise KdstError(f"--temperature must be a finite number > 0, not {temperature}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_teachers(teacher, device, weights, src_text=src_text)
    model = loaded.model
    data = replace(loaded.data, text=text or loaded.data.text)
    if data.input == "text":
        dataset, read, units = transcript_inputs(loaded, data, data_dir, teacher_data_dir)
    elif isinstance(model, WhisperTeacher):
        dataset, read, units = whisper_inputs(loaded, data, data_dir, teacher_data_dir)
    elif any(isinstance(member.model, WhisperTeacher) for member in getattr(loaded, "members", ())):
        raise KdstError(f"{loaded.reference}: a Whisper teacher hears its own features: its top-k cache takes it "
                        "alone, not in an ensemble")
    else:
        dataset, read, units = feature_inputs(loaded, data, data_dir, teacher_data_dir)
    if k > model.vocab_size:
        raise KdstError(f"k={k} is larger than the teacher's vocabulary ({model.vocab_size})")
    fingerprint = cache_fingerprint(loaded.digest, data.tokenizer, k=k, mode=mode, text=data.text,
                                    targets=targets_digest(dataset.targets, dataset.ids),
                                    source_text=read.pop("source_text"), source=read.pop("source"),
                                    temperature=temperature, src_tokenizer=read.pop("src_tokenizer", None),
                                    seed=seed if mode == "sampled" else None)
    # Where the teacher's vocabulary is, for the line that refuses a student with another one.
    fingerprint.update(read, tokenizer_dir=str(data.tokenizer))
    batches = make_batches(units, batch_units, shuffle=False)
    start, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(dataset.ids), desc="topk", disable=not sys.stderr.isatty(), mininterval=1.0)
    with CacheWriter(out, k=k, vocab_size=model.vocab_size, mode=mode, fingerprint=fingerprint,
                     rest=mode == "topk") as writer, \
            torch.inference_mode():
        for batch in iterate(dataset, batches):
            batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
            logits = model.decoder_logits(batch)[0].float()
            lengths = (batch["tgt_lengths"] + 1).tolist()  # the tokens and <eos>
            if mode == "topk":  # one top-k and one device-to-host copy per batch, not per utterance
                top = logits.topk(k, dim=-1)
                rest = rest_log_mass(logits, top.indices, temperature).cpu().numpy()
                values, indices = top.values.cpu().numpy(), top.indices.cpu().numpy()
            for i, (utt, n) in enumerate(zip(batch["ids"], lengths)):
                if mode == "topk":
                    writer.add(utt, indices[i, :n], values[i, :n], rest[i, :n])
                else:
                    generator = torch.Generator(device=logits.device).manual_seed(utterance_seed(utt, seed))
                    ids, counts = sample_counts(logits[i, :n], k, generator, temperature)
                    writer.add(utt, ids.cpu().numpy(), counts.cpu().numpy())
                tokens += n
            bar.update(len(batch["ids"]))
    bar.close()
    seconds = time.perf_counter() - start
    log.info("%s: %d utterances, %d target positions in %.1f s", out, len(dataset.ids), tokens, seconds)
    return {"utterances": len(dataset.ids), "tokens": tokens, "seconds": round(seconds, 3),
            "kept_mass": TeacherCache(out).kept_mass}


def summary(out: str | Path) -> list[str]:
    """What ``kdst topk`` prints about the cache at ``out``: its size, the mass its k entries keep, and a
    warning line (starting "warning:") when that is low."""
    cache = TeacherCache(out)
    line = (f"{out}: {len(cache)} utterances, k={cache.k} ({cache.mode}, T={cache.temperature:g}), "
            f"{cache.bytes_per_token():.1f} bytes per target token")
    if cache.kept_mass is not None:
        line += f", the k entries keep {cache.kept_mass:.1%} of the teacher's mass on average"
    warning = low_kept_mass_warning(cache)
    return [line] + ([f"warning: {warning}"] if warning else [])
