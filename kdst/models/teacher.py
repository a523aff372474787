"""The teacher reference: one string names a teacher everywhere, and one function loads it.

    exp/mt_teacher/avg_best5.pt     a kdst checkpoint (any path without a known prefix)
    espnet:exp/mt_espnet            an ESPnet2 exp dir, packed zip or config.yaml (kdst.models.espnet_bridge)
    hf:Helsinki-NLP/opus-mt-en-de   a Hugging Face seq2seq model: a save_pretrained dir or a hub name in the
                                    local cache, with options (hf:PATH,src=eng_Latn,tgt=deu_Latn;
                                    kdst.models.hf_bridge), or a Whisper ASR model (hf:PATH,lang=en;
                                    kdst.models.hf_whisper: it reads kdst hf-features' features)

Decoding (``kdst decode --model``), the top-k cache (``kdst topk --teacher``), n-best
generation, online word-level KD and transducer KD (``kd.teacher``) all take such a
string and call :func:`load_teacher`, which gives the model with what reading data for
it needs: its data config (tokenizers, input kind, text files) and target tokenizer, and
the digest of the file holding its weights, which teacher outputs record so a reader
can tell they came from this teacher.  A new kind of teacher (a hub model) is one more
prefix here and one more loader beside :func:`_load_espnet`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from kdst.config import ConfigError, DataConfig, build
from kdst.data.files import file_digest
from kdst.data.tokenizer import Tokenizer, load_tokenizer
from kdst.errors import KdstError
from kdst.models.loading import load_model

KINDS = ("kdst", "espnet", "hf")
PLANNED: dict[str, str] = {}


@dataclass(frozen=True)
class TeacherRef:
    kind: str  # "kdst", "espnet" or "hf"
    path: Path

    def __str__(self) -> str:
        return str(self.path) if self.kind == "kdst" else f"{self.kind}:{self.path}"


def parse_reference(reference: str | os.PathLike) -> TeacherRef:
    """``espnet:PATH``, ``hf:PATH`` or a kdst checkpoint path; a known-but-unsupported prefix is an error."""
    text = os.fspath(reference)
    if not text:
        raise KdstError("empty teacher reference (a checkpoint path, espnet:PATH or hf:PATH)")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in PLANNED:
        raise KdstError(f"{text}: {PLANNED[prefix]} (teachers: a kdst checkpoint path, espnet:PATH or hf:PATH)")
    if sep and prefix in KINDS and prefix != "kdst":
        if not rest:
            raise KdstError(f"{text}: no path after '{prefix}:'")
        return TeacherRef(prefix, Path(rest))
    return TeacherRef("kdst", Path(text))


def absolute_reference(reference: str) -> str:
    """The same reference with an absolute path (for jobs that run in another directory)."""
    ref = parse_reference(reference)
    if ref.kind == "hf":  # a hub name is not a path; a local directory is made absolute, its options kept
        from kdst.models.hf_bridge import absolute_spec

        return f"hf:{absolute_spec(str(ref.path))}"
    return str(replace(ref, path=ref.path.resolve()))


@dataclass(frozen=True)
class Teacher:
    reference: str
    model: nn.Module  # in eval mode
    data: DataConfig  # how the teacher reads a data dir (tokenizers, input kind, text files)
    tokenizer: Tokenizer  # its target vocabulary
    model_file: Path  # the file holding its weights
    digest: str  # of model_file; recorded by teacher outputs

    @property
    def vocab_size(self) -> int:
        return int(self.model.vocab_size)


def load_teacher(reference: str | os.PathLike, device: str | torch.device = "cpu", *,
                 src_text: str | None = None) -> Teacher:
    """The teacher a reference names, in eval mode on ``device``.  ``src_text``: the data dir's
    source text file an MT teacher reads, instead of the one it was trained with."""
    ref = parse_reference(reference)
    if ref.kind == "espnet":
        model, data, model_file = _load_espnet(ref.path, device)
    elif ref.kind == "hf":
        model, data, model_file = _load_hf(str(ref.path), device)
    else:
        model, config = load_model(ref.path, device)
        data, model_file = config.data, ref.path
    if src_text is not None:
        if data.input != "text":
            raise KdstError(f"{reference}: a source text file ({src_text}) is for MT teachers; this one reads speech")
        data = replace(data, src_text=src_text)
    return Teacher(str(ref), model, data, load_tokenizer(data.tokenizer), model_file, file_digest(model_file))


def teacher_digest(reference: str | os.PathLike) -> str:
    """The digest :func:`load_teacher` would give, without building the model."""
    ref = parse_reference(reference)
    if ref.kind == "espnet":
        from kdst.models.espnet_bridge import resolve

        return file_digest(resolve(ref.path).model_file)
    if ref.kind == "hf":
        from kdst.models.hf_bridge import teacher_digest as hf_digest

        return hf_digest(str(ref.path))
    if not ref.path.is_file():
        raise KdstError(f"{ref.path}: teacher checkpoint not found")
    return file_digest(ref.path)


def _load_espnet(path: Path, device) -> tuple[nn.Module, DataConfig, Path]:
    from kdst.models.espnet_bridge import load_espnet_teacher

    model, config = load_espnet_teacher(path, device)
    try:
        data = build(DataConfig, config["data"], "data")
    except ConfigError as e:
        raise KdstError(f"{path}: {e}") from None
    return model, data, Path(config["checkpoint"])


def _load_hf(spec: str, device) -> tuple[nn.Module, DataConfig, Path]:
    from kdst.models.hf_teacher import load_hf_teacher

    model, config = load_hf_teacher(spec, device)
    try:
        data = build(DataConfig, config["data"], "data")
    except ConfigError as e:
        raise KdstError(f"hf:{spec}: {e}") from None
    return model, data, Path(config["checkpoint"])
