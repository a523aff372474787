"""``kdst topk``: one teacher forward pass over a data dir into a cache of its output distributions.

For every utterance and every target position (each target token and the final
<eos>), the MT teacher reads the transcript, is forced with the reference prefix,
and its distribution is stored compactly (kdst.data.teacher_cache):

- ``topk``: the k most likely vocabulary entries and their logits (word-level KD
  renormalises over them, as FBK-fairseq does);
- ``sampled``: k tokens drawn from the teacher distribution, stored as distinct ids
  with counts.  The KD loss against the empirical distribution is an unbiased
  estimate of the cross-entropy to the full teacher distribution (up to the
  teacher's entropy, a constant), where top-k is biased towards the head.

Sampling is seeded per utterance id, so the cache does not depend on how the data
dir was split into jobs.  The cache records a fingerprint of the teacher's weights,
the tokenizer, k, the mode, and the content the teacher saw: the target token ids it
was forced with and the source text it read, per utterance; training checks it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from kdst.data.dataset import iterate, make_batches, make_dataset
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import CacheWriter, cache_fingerprint, source_digest, targets_digest
from kdst.errors import KdstError
from kdst.models.ensemble import load_teachers

log = logging.getLogger("kdst.topk")
MODES = ("topk", "sampled")


def sample_counts(logits: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k draws per row of softmax(logits) (n, V) as (ids, counts), each (n, k): the distinct ids drawn
    with how often; the remaining slots have count 0 (id 0)."""
    draws = torch.multinomial(torch.softmax(logits.float(), dim=-1), k, replacement=True, generator=generator)
    draws = draws.sort(dim=1).values
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    counts = (draws[:, :, None] == draws[:, None, :]).sum(-1)
    return torch.where(first, draws, 0), torch.where(first, counts, 0)


def utterance_seed(utt: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{utt}".encode()).digest()[:8], "little") & (2**63 - 1)


def write_cache(teacher: str | list[str], data_dir: str | Path, out: str | Path, *, k: int = 8, mode: str = "topk",
                text: str | None = None, batch_units: int = 20000, device: str | None = None, seed: int = 1,
                src_text: str | None = None, weights: list[float] | None = None) -> dict:
    """Run the MT ``teacher`` (a teacher reference, kdst.models.teacher) over ``data_dir`` and write the
    cache to ``out``; returns a summary.  Several teachers: their ensemble (kdst.models.ensemble), weighted
    by ``weights``.  ``src_text``: the data dir's source text file, if not the
    teacher's own; ``text``: its target text file (default: the teacher's)."""
    if mode not in MODES:
        raise KdstError(f"unknown cache mode '{mode}' ({', '.join(MODES)})")
    if k < 1:
        raise KdstError(f"--k must be >= 1, not {k}")
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
                                    source=source_digest(DataDir(data_dir).require(data.src_text), dataset.ids))
    batches = make_batches(dataset.src_lengths, batch_units, shuffle=False)
    start, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(dataset.ids), desc="topk", disable=not sys.stderr.isatty(), mininterval=1.0)
    with CacheWriter(out, k=k, vocab_size=model.vocab_size, mode=mode, fingerprint=fingerprint) as writer, \
            torch.inference_mode():
        for batch in iterate(dataset, batches):
            batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
            logits = model.decoder_logits(batch)[0].float()
            lengths = (batch["tgt_lengths"] + 1).tolist()  # the tokens and <eos>
            if mode == "topk":  # one top-k and one device-to-host copy per batch, not per utterance
                values, indices = (x.cpu().numpy() for x in logits.topk(k, dim=-1))
            for i, (utt, n) in enumerate(zip(batch["ids"], lengths)):
                if mode == "topk":
                    writer.add(utt, indices[i, :n], values[i, :n])
                else:
                    generator = torch.Generator(device=logits.device).manual_seed(utterance_seed(utt, seed))
                    ids, counts = sample_counts(logits[i, :n], k, generator)
                    writer.add(utt, ids.cpu().numpy(), counts.cpu().numpy())
                tokens += n
            bar.update(len(batch["ids"]))
    bar.close()
    seconds = time.perf_counter() - start
    log.info("%s: %d utterances, %d target positions in %.1f s", out, len(dataset.ids), tokens, seconds)
    return {"utterances": len(dataset.ids), "tokens": tokens, "seconds": round(seconds, 3)}
