"""kdst checkpoints: reading one safely, and a model from it, for decoding, teachers and fine-tuning.

A checkpoint is a ``torch.save`` dict with ``model`` (the state dict) and ``config`` (the
training config's plain values, kdst.config); training checkpoints add the optimiser,
scheduler, progress and RNG states.  Every way a file can fail to be one (missing,
truncated, not a torch file, another dict, weights of another shape) is a one-line
KdstError naming the file.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import torch
from torch import nn

from kdst.config import ConfigError, TrainingConfig, parse_config
from kdst.errors import KdstError
from kdst.models import build_model


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """The dict a kdst checkpoint holds, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise KdstError(f"{path}: {what} not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError, AssertionError, struct.error,
            OverflowError, MemoryError) as e:  # random bytes can claim absurd lengths: the last two
        # torch's first sentence says what failed; the rest is advice that this message replaces.
        reason = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise KdstError(f"{path}: not a readable {what} (truncated or not a torch file: {reason})") from None
    if not isinstance(saved, dict) or "model" not in saved or "config" not in saved:
        raise KdstError(f"{path}: not a kdst {what} (no model weights and config in it)")
    return saved


def saved_config(saved: dict, path: str | Path) -> TrainingConfig:
    """The training config a checkpoint was made with."""
    try:
        return parse_config(saved["config"])
    except ConfigError as e:
        raise KdstError(f"{path}: the config saved in this checkpoint is not one this kdst reads: {e}") from None


def load_weights(model: nn.Module, weights: dict, path: str | Path) -> None:
    """``model.load_state_dict(weights)``, or one line saying how the checkpoint's model differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape, e.g. {k} {tuple(weights[k].shape)} "
                         f"where this model has {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise KdstError(f"{path}: the weights are of another model ({'; '.join(parts)})")
    model.load_state_dict(weights)


def load_submodules(model: nn.Module, weights: dict, path: str | Path, modules: tuple[str, ...]) -> int:
    """Copy the parameters and buffers of ``modules`` (names of submodules: ``encoder``, ``ctc``) from a
    checkpoint's ``weights`` into ``model``; the rest of ``model`` keeps its own.  Every tensor of those
    submodules must be in the checkpoint with the same shape: a partial copy would train a half-initialised
    encoder without a sign.  Returns the number of tensors copied."""
    own = model.state_dict()
    children = dict(model.named_children())
    for name in modules:
        if name not in children:
            raise KdstError(f"train.init_parts: this model has no submodule '{name}' "
                            f"(it has {', '.join(children)})")
    wanted = [k for k in own if k.split(".", 1)[0] in modules]
    missing = [k for k in wanted if k not in weights]
    shapes = [k for k in wanted if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing:
        raise KdstError(f"{path}: has no {missing[0]} ({len(missing)} tensor(s) of "
                        f"{', '.join(modules)} missing): not a model with this model's {missing[0].split('.')[0]}")
    if shapes:
        k = shapes[0]
        raise KdstError(f"{path}: {k} is {tuple(weights[k].shape)} there and {tuple(own[k].shape)} in this model "
                        f"({len(shapes)} tensor(s) of {', '.join(modules)} differ): the two {k.split('.')[0]}s "
                        "must have one shape (layers, d_model, vocabulary)")
    model.load_state_dict({**own, **{k: weights[k] for k in wanted}})
    return len(wanted)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainingConfig]:
    """A model in eval mode from any kdst checkpoint (epoch, last or averaged), with its config."""
    saved = read_checkpoint(checkpoint)
    config = saved_config(saved, checkpoint)
    model = build_model(config.model)
    load_weights(model, saved["model"], checkpoint)
    return model.to(device).eval(), config
