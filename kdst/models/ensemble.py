"""Teacher ensembles: several encoder-decoder teachers read as one, averaged in probability.

At every decoder position the ensemble's next-token distribution is the weighted mean of
its members' (Hinton et al. 2015's arithmetic mean; Freitag et al. 2017's ensemble teacher
for NMT):

    p_ens(y | x, y_<t) = sum_i w_i p_i(y | x, y_<t),     w_i > 0,  sum_i w_i = 1

:func:`load_teachers` gives such an ensemble as the same :class:`Teacher` that
``load_teacher`` gives for one reference, so every teacher consumer takes a list of
references: online word-level KD (``kd.teacher: [A, B]``, ``kd.teacher_weights``), the
top-k cache (``kdst topk --teacher A --teacher B``: one cache from N teachers) and decoding
(``kdst decode --model A --model B``: the ensemble's own beam search, whose n-best feeds
Seq-KD, Seq-Inter and pseudo labels).  One reference (and any weights) is that teacher
itself, not a one-member ensemble, so single-teacher outputs and their digests are unchanged.

What the model gives is *normalised log-probabilities*, not logits: ``decoder_logits`` and
``decoder.step`` return ``log p_ens`` (the log-sum-exp of ``log_softmax(z_i) + log w_i``, in
float32 whatever the members' dtype).  A softmax leaves them unchanged, so the search and
the KD losses need no change.  A temperature T then applies to the ensemble's distribution:
the KD target is ``softmax(log p_ens / T) ∝ p_ens^(1/T)``, not the mean of the members'
``softmax(z_i / T)``.  The two agree at T = 1; this choice is the one for which online KD and
a top-k cache of the same ensemble are the same teacher at any T, since the cache stores
``log p_ens`` and training applies T to it.

All members must read the data the same way (one dataset feeds them all): the same input
kind, target tokenizer, and source text and tokenizer (MT) or CMVN statistics (speech); a
mismatch is refused naming both.  Length limits of the search (``--max-len-ratio``) are
relative to the first member's encoder output.  Transducers are not supported.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from kdst.data.files import file_digest
from kdst.data.tokenizer import tokenizer_fingerprint
from kdst.errors import KdstError
from kdst.models.encoders import lengths_to_mask
from kdst.models.teacher import Teacher, load_teacher, teacher_digest
from kdst.models.transducer import Transducer


def references_of(references: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One reference or several, as a list of strings."""
    if isinstance(references, (str, os.PathLike)):
        return [os.fspath(references)]
    return [os.fspath(r) for r in references]


def normalise_weights(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    """The weights of ``n`` teachers summing to 1 (uniform when None); a user's mistake is one line."""
    if weights is None:
        return (1.0 / n,) * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise KdstError(f"--teacher-weights: {len(weights)} weight(s) for {n} teacher(s)")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise KdstError(f"--teacher-weights: each weight must be a positive number, not {weights}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def ensemble_digest(digests: Sequence[str], weights: Sequence[float]) -> str:
    """What teacher outputs record for an ensemble: a digest of the members' digests and normalised weights.
    Sorted, since the mean does not depend on the order of the members; 12 digits, so that [1, 7] and
    [0.1, 0.7] (0.1 / 0.7999999999999999 = 0.12500000000000003) are the same weights."""
    lines = sorted(f"{d} {w:.12g}" for d, w in zip(digests, normalise_weights(weights, len(digests))))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def teachers_digest(references, weights: Sequence[float] | None = None) -> str:
    """The digest :func:`load_teachers` would give, without building the models."""
    refs = references_of(references)
    weights = normalise_weights(weights, len(refs))
    if len(refs) == 1:
        return teacher_digest(refs[0])
    return ensemble_digest([teacher_digest(r) for r in refs], weights)


def mix(log_probs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``log sum_i w_i exp(log_probs[i])``, float32: the log of the weighted mean probability."""
    return torch.logsumexp(torch.stack([lp.float() + math.log(w) for lp, w in zip(log_probs, weights)]), dim=0)


@dataclass(frozen=True)
class EnsembleMemory:
    """Each member's encoder output and its lengths.  The search reads only ``shape`` and ``device``
    (those of the first member) and hands the object back to ``decoder.init_state``."""
    parts: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def shape(self) -> torch.Size:
        return self.parts[0][0].shape

    @property
    def device(self) -> torch.device:
        return self.parts[0][0].device


@dataclass
class EnsembleState:
    """The members' decoder states, reordered and selected together (kdst.models.decoder.DecoderState)."""
    states: list

    @property
    def length(self) -> int:
        return self.states[0].length

    def reorder_(self, rows: torch.Tensor, moved: torch.Tensor | None = None) -> None:
        if moved is None:  # computed once for all members
            moved = (rows != torch.arange(rows.numel(), device=rows.device)).nonzero().squeeze(1)
        for state in self.states:
            state.reorder_(rows, moved)

    def select(self, rows: torch.Tensor, utterances: torch.Tensor | None = None) -> "EnsembleState":
        return EnsembleState([state.select(rows, utterances) for state in self.states])


class EnsembleDecoder:
    """``init_state`` / ``step`` of the members' decoders, stepped together.  Not a module: the
    members' decoders are registered once, in :class:`EnsembleModel`."""

    def __init__(self, members: nn.ModuleList, weights: tuple[float, ...]):
        self.members, self.weights = members, weights

    def init_state(self, memory: EnsembleMemory, memory_mask: torch.Tensor | None = None, group: int = 1,
                   capacity: int = 64) -> EnsembleState:
        """``memory_mask`` (the first member's) is not used: each member masks its own encoder output."""
        return EnsembleState([m.decoder.init_state(mem, lengths_to_mask(lengths, mem.shape[1]), group=group,
                                                   capacity=capacity)
                              for m, (mem, lengths) in zip(self.members, memory.parts)])

    def step(self, tokens: torch.Tensor, state: EnsembleState) -> tuple[torch.Tensor, EnsembleState]:
        """``log p_ens`` (N, V) of the next token (normalised log-probabilities, which stand for logits)."""
        log_probs = [torch.log_softmax(m.decoder.step(tokens, s)[0], dim=-1, dtype=torch.float32)
                     for m, s in zip(self.members, state.states)]
        return mix(log_probs, self.weights), state


class EnsembleModel(nn.Module):
    """Teachers as one encoder-decoder teacher (the interface of kdst.models.encoder_decoder and
    kdst.models.espnet_bridge that decoding and teacher outputs use)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise KdstError("an ensemble needs at least one teacher")
        self.members = nn.ModuleList(members)
        # A tuple, not a buffer: casting the members to bf16 must not round the weights.
        self.weights = normalise_weights(weights, len(members))
        self.vocab_size = int(members[0].vocab_size)
        self.decoder = EnsembleDecoder(self.members, self.weights)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[EnsembleMemory, torch.Tensor]:
        """Every member's encoder output, and the first member's lengths (the search's length limits)."""
        parts = tuple(m.encode(src, src_lengths) for m in self.members)
        return EnsembleMemory(parts), parts[0][1]

    def decoder_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, EnsembleMemory, torch.Tensor]:
        """Teacher-forced ``log p_ens`` (B, U+1, V) (normalised log-probabilities), the targets, every
        member's encoder output, and the first member's encoder lengths."""
        outputs = [m.decoder_logits(batch) for m in self.members]
        log_probs = [torch.log_softmax(o[0], dim=-1, dtype=torch.float32) for o in outputs]
        memory = EnsembleMemory(tuple((o[2], o[3]) for o in outputs))
        return mix(log_probs, self.weights), outputs[0][1], memory, outputs[0][3]


@dataclass(frozen=True)
class EnsembleTeacher(Teacher):
    """A :class:`Teacher` whose model is an :class:`EnsembleModel`; ``model_file`` is the first
    member's (see :func:`model_files` for all of them), ``digest`` that of :func:`ensemble_digest`."""
    members: tuple[Teacher, ...] = ()
    weights: tuple[float, ...] = ()


def model_files(teacher: Teacher) -> list[Path]:
    """The files holding a teacher's weights: one, or each member's."""
    if isinstance(teacher, EnsembleTeacher):
        return [m.model_file for m in teacher.members]
    return [teacher.model_file]


def ensemble(members: Sequence[Teacher], weights: Sequence[float] | None = None) -> EnsembleTeacher:
    """Loaded teachers as one (a one-member ensemble too: the tests compare it with its member)."""
    weights = normalise_weights(weights, len(members))
    first = members[0]
    for other in members[1:]:
        check_compatible(first, other)
    for t in members:
        if isinstance(t.model, Transducer):
            raise KdstError(f"{t.reference}: a transducer cannot be an ensemble member (encoder-decoders only)")
    model = EnsembleModel([t.model for t in members], weights)
    return EnsembleTeacher(" + ".join(t.reference for t in members), model, first.data, first.tokenizer,
                           first.model_file, ensemble_digest([t.digest for t in members], weights),
                           members=tuple(members), weights=weights)


def check_compatible(a: Teacher, b: Teacher) -> None:
    """``b`` reads the data as ``a`` does and predicts the same vocabulary, or a line naming both."""
    def refuse(what: str, x, y):
        raise KdstError(f"{b.reference}: {what} {y} is not {a.reference}'s {x}: ensemble members must share it")

    if a.data.input != b.data.input:
        refuse("input kind", a.data.input, b.data.input)
    if tokenizer_fingerprint(a.data.tokenizer) != tokenizer_fingerprint(b.data.tokenizer):
        refuse("target tokenizer", a.data.tokenizer, b.data.tokenizer)
    if a.vocab_size != b.vocab_size:
        refuse("vocabulary size", a.vocab_size, b.vocab_size)
    if a.data.input == "text":
        if a.data.src_text != b.data.src_text:
            refuse("source text file", a.data.src_text, b.data.src_text)
        if tokenizer_fingerprint(a.data.src_tokenizer) != tokenizer_fingerprint(b.data.src_tokenizer):
            refuse("source tokenizer", a.data.src_tokenizer, b.data.src_tokenizer)
    elif a.data.cmvn != b.data.cmvn and _content(a.data.cmvn) != _content(b.data.cmvn):
        refuse("CMVN statistics", a.data.cmvn, b.data.cmvn)


def _content(path: str | None) -> str | None:
    """A file's digest (two copies of the same statistics are the same), else its name."""
    return file_digest(path) if path and Path(path).is_file() else path


def load_teachers(references, device: str | torch.device = "cpu", weights: Sequence[float] | None = None, *,
                  src_text: str | None = None) -> Teacher:
    """The teacher of one reference (kdst.models.teacher.load_teacher), or the ensemble of several,
    weighted by ``weights`` (normalised; uniform when None)."""
    refs = references_of(references)
    if not refs:
        raise KdstError("no teacher reference (a checkpoint path or espnet:PATH)")
    weights = normalise_weights(weights, len(refs))
    if len(refs) == 1:
        return load_teacher(refs[0], device, src_text=src_text)
    return ensemble([load_teacher(r, device, src_text=src_text) for r in refs], weights)
