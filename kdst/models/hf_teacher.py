"""``hf:PATH`` teachers: a seq2seq MT model (kdst.models.hf_bridge) or Whisper (kdst.models.hf_whisper),
chosen by the saved model's ``model_type``.  This module sits above both bridges, so neither imports the
other's loader."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kdst.data.files import atomic_path
from kdst.errors import KdstError
from kdst.models.hf_bridge import load_seq2seq_teacher, model_type, parse_spec, resolve
from kdst.models.hf_whisper import load_whisper_teacher


def load_hf_teacher(reference: str, device: str | torch.device = "cpu", *, src_text: str = "text.en",
                    text: str = "text", tokenizer: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """The teacher of ``hf:reference`` in eval mode and its kdst-style config (``data``, ``model``,
    ``checkpoint``); ``tokenizer``: the student's target tokenizer, which must be the teacher's."""
    spec = parse_spec(reference)
    model_dir = resolve(spec)
    if model_type(model_dir) == "whisper":
        return load_whisper_teacher(spec, model_dir, device, text=text, tokenizer=tokenizer)
    return load_seq2seq_teacher(spec, model_dir, device, src_text=src_text, text=text, tokenizer=tokenizer)


def is_whisper(reference: str) -> bool:
    """Whether ``hf:reference`` is a Whisper model, from its config.json alone (no weights loaded)."""
    return model_type(resolve(parse_spec(reference))) == "whisper"


def export_hf_tokenizer(reference: str, out_dir: str | os.PathLike, side: str = "tgt") -> Path:
    """``kdst hf-tokenizer``: the teacher's target or source tokenizer as a kdst tokenizer dir."""
    _, config = load_hf_teacher(reference)
    if side != "tgt" and "src_tokenizer" not in config["data"]:
        raise KdstError(f"hf:{reference}: reads speech, it has no source tokenizer (--side tgt)")
    source = Path(config["data"]["tokenizer" if side == "tgt" else "src_tokenizer"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        with atomic_path(out / path.name) as tmp:
            tmp.write_bytes(path.read_bytes())
    return out
