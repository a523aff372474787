"""``kdst topk``: one teacher forward pass over a data dir into a cache of its output distributions.

For every utterance and every target position (each target token and the final
<eos>), the MT teacher reads the transcript, is forced with the reference prefix,
and its distribution is stored compactly (kdst.data.teacher_cache):

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
and the source text it read, per utterance; training checks it.
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

from kdst.data.dataset import iterate, make_batches, make_dataset
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import (CacheWriter, TeacherCache, cache_fingerprint, low_kept_mass_warning,
                                     source_digest, targets_digest)
from kdst.errors import KdstError
from kdst.models.ensemble import load_teachers

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


def write_cache(teacher: str | list[str], data_dir: str | Path, out: str | Path, *, k: int = 8, mode: str = "topk",
                text: str | None = None, batch_units: int = 20000, device: str | None = None, seed: int = 1,
                src_text: str | None = None, weights: list[float] | None = None, temperature: float = 1.0) -> dict:
    """Run the MT ``teacher`` (a teacher reference, kdst.models.teacher) over ``data_dir`` and write the
    cache to ``out``; returns a summary.  Several teachers: their ensemble (kdst.models.ensemble), weighted
    by ``weights``.  ``src_text``: the data dir's source text file, if not the
    teacher's own; ``text``: its target text file (default: the teacher's); ``temperature``: of the draws
    (sampled) and of the mass outside the top k (topk), which training at another T cannot use."""
    if mode not in MODES:
        raise KdstError(f"unknown cache mode '{mode}' ({', '.join(MODES)})")
    if k < 1:
        raise KdstError(f"--k must be >= 1, not {k}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise KdstError(f"--temperature must be a finite number > 0, not {temperature}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_teachers(teacher, device, weights, src_text=src_text)
    model = loaded.model
    if loaded.data.input != "text":
        raise KdstError(f"{teacher}: the top-k cache needs an MT teacher (it reads the transcript)")
    data = replace(loaded.data, text=text or loaded.data.text)
    dataset = make_dataset(data, data_dir)
    if k > model.vocab_size:
        raise KdstError(f"k={k} is larger than the teacher's vocabulary ({model.vocab_size})")
    fingerprint = cache_fingerprint(loaded.digest, data.tokenizer, k=k, mode=mode, text=data.text,
                                    targets=targets_digest(dataset.targets, dataset.ids), source_text=data.src_text,
                                    source=source_digest(DataDir(data_dir).require(data.src_text), dataset.ids),
                                    temperature=temperature, src_tokenizer=data.src_tokenizer,
                                    seed=seed if mode == "sampled" else None)
    batches = make_batches(dataset.src_lengths, batch_units, shuffle=False)
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
