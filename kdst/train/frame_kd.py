"""Frame-level KD inside ``kdst train``: a speech teacher's CTC posteriors and encoder states.

An attention encoder-decoder student with a CTC branch learns, at every encoder frame, from an
ASR teacher that has a CTC head on the same vocabulary and the same frame rate (Takashima et al.
2018's frame-wise CTC KD), and optionally imitates one of the teacher's encoder layers through a
learned linear projection of its own (FitNets' hint, the encoder term of distil-whisper-style KD):

    kd:
      frame:
        teacher: exp/asr_teacher/avg_best5.pt  # a kdst attention encoder-decoder reading speech
        ctc_weight: 0.5      # the student's CTC branch: (1 - w) * CTC + w * KL(p_T || p_S)
        temperature: 1.0     # on both CTC posteriors; no T^2 factor
        normalize: tokens    # KL summed over real frames / CTC target tokens; frames: / real frames
        hidden_weight: 0.0   # loss + w_h * distance(h_T, W h_S + b)
        hidden_loss: mse     # or l1: mean over real frames and the teacher's dimensions
        hidden_layer: -1     # the student's encoder block (1-based, -1: the last) ...
        teacher_layer: -1    # ... and the teacher's

``frame`` stands alone (the student keeps its own targets) or beside word-level KD from an MT
teacher or a cache (``kd.teacher``/``kd.cache``, kdst.train.kd): then the word-level terms and
their schedules are kd.py's, and this wrapper adds the frame-level ones.  ``kd.frame`` defaults are
kdst.config.sections.FrameKDConfig's.

Where the CTC KL goes: the student mixes its losses as ``(1 - c) * attention + c * CTC``
(``model.ctc_weight`` c); with CTC KD the CTC part becomes ``(1 - w) * CTC + w * KL``, so the KL
enters the loss with weight ``c * w``.  The KL of a frame is sum_v p_T(v) (log p_T(v) - log p_S(v)),
padding frames count 0, and the sum over frames is divided by the CTC target tokens (the same
normaliser as the CTC loss, which is itself a sum over frames) or, with ``normalize: frames``, by
the number of real frames.  The hidden term is added on top, outside that mix.

In the ST recipe the student's CTC branch learns the transcript (``data.ctc_text``, its own
``data.ctc_tokenizer``): the ASR teacher's target tokenizer must then be that CTC tokenizer.

Unsupported (refused with one line saying what differs): teachers without a CTC head (for the
CTC term), another CTC vocabulary, another frame rate, other features (input dimension, CMVN),
ESPnet teachers, transducers (their KD is over the lattice: kdst.train.transducer_kd).

The teacher hears the features before SpecAugment, frozen, in eval mode, under no_grad (and
autocast on a GPU, its weights kept in fp32).  The projection is the only trainable part besides
the student: the trainer gives it to the optimiser and saves it under ``kd`` in its checkpoints,
whose ``model`` stays the plain student that decoding and averaging read.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kdst.config import DataConfig, KdConfig
from kdst.config.sections import FrameKDConfig, FrameOnlyKDConfig
from kdst.data.files import file_digest
from kdst.data.tokenizer import tokenizer_fingerprint
from kdst.errors import KdstError
from kdst.models.encoder_decoder import EncoderDecoder
from kdst.models.encoders import SpeechEncoder, lengths_to_mask
from kdst.models.protocol import TeacherOutputs
from kdst.models.teacher import load_teacher
from kdst.train.kd import WordKD, setup_distillation
from kdst.train.schedule import with_schedule_stats

log = logging.getLogger("kdst.train")


def encoder_block(encoder: nn.Module, layer: int, key: str) -> tuple[nn.Module, bool]:
    """The module whose output is the output of encoder block ``layer`` (1-based, negative from the end), and
    whether that output is time-major.  A conformer block's last step is its final layer norm (kdst's
    conformer runs the blocks' parts itself, never the block's forward); a transformer block is one module."""
    if not isinstance(encoder, SpeechEncoder):
        raise KdstError(f"{key}: frame-level KD needs a speech encoder (conformer or transformer)")
    blocks = encoder.blocks.conformer_layers if encoder.type == "conformer" else encoder.blocks.layers
    n = len(blocks)
    if not -n <= layer <= n:
        raise KdstError(f"{key}: {layer}, but the encoder has {n} block(s) (1 to {n}, or -1 to -{n} from the end)")
    block = blocks[layer - 1 if layer > 0 else n + layer]
    return (block.final_layer_norm, True) if encoder.type == "conformer" else (block, False)


@contextlib.contextmanager
def capture(module: nn.Module, time_major: bool):
    """Collect ``module``'s outputs, batch-major, while the block runs; the hook is gone afterwards."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        outputs.append(output.transpose(0, 1) if time_major else output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def hidden_distance(projected: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) difference over the real frames and every dimension of
    ``projected`` and ``target`` (B, T', D); padding frames count 0."""
    mask = lengths_to_mask(lengths, target.shape[1]).unsqueeze(-1)
    diff = projected.float() - target.float()
    per_value = diff.square() if kind == "mse" else diff.abs()
    return (per_value * mask).sum() / (mask.sum() * target.shape[-1]).clamp_min(1)


class FrameKD(nn.Module):
    """The student (alone or inside word-level KD) with frame-level KD from a speech teacher;
    ``forward(batch) -> (loss, stats)`` like the student's.  Stats add ``ctc_kd`` and ``hidden``."""

    def __init__(self, student: EncoderDecoder, teacher: EncoderDecoder, frame: FrameKDConfig,
                 word: WordKD | None = None):
        super().__init__()
        self.student, self.teacher, self.word, self.frame = student, teacher, word, frame
        teacher.requires_grad_(False)
        self.projection = None
        if frame.hidden_weight > 0:
            self.student_block = encoder_block(student.encoder, frame.hidden_layer, "kd.frame.hidden_layer")
            self.teacher_block = encoder_block(teacher.encoder, frame.teacher_layer, "kd.frame.teacher_layer")
            self.projection = nn.Linear(_width(student), _width(teacher))

    def train(self, mode: bool = True) -> "FrameKD":
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher, ever
        return self

    def set_step(self, step: int) -> None:
        """The optimiser step (the trainer's), for the word-level KD schedules."""
        if self.word is not None:
            self.word.set_step(step)

    def forward(self, batch: dict):
        outputs = self.word.teacher_outputs(batch) if self.word is not None else TeacherOutputs(weight=0.0)
        ctc_logits, teacher_hidden = self.teacher_frames(batch)
        if ctc_logits is not None:
            outputs = replace(outputs, ctc_logits=ctc_logits, ctc_weight=self.frame.ctc_weight,
                              ctc_temperature=self.frame.temperature, ctc_normalize=self.frame.normalize)
        if self.projection is None:
            return self._schedule_stats(self.student(batch, teacher=outputs))
        with capture(*self.student_block) as hidden:
            loss, stats = self._schedule_stats(self.student(batch, teacher=outputs))
        lengths = self.student.encoder.subsampling.output_lengths(batch["src_lengths"]).clamp(min=1)
        distance = hidden_distance(self.projection(hidden[-1]), teacher_hidden, lengths, self.frame.hidden_loss)
        loss = loss + self.frame.hidden_weight * distance
        stats["hidden"], stats["loss"] = distance.detach(), loss.detach()
        return loss, stats

    def _schedule_stats(self, result):
        return with_schedule_stats(result, self.word.schedule) if self.word is not None else result

    def teacher_frames(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's CTC logits (B, T', V) and its chosen layer's output (B, T', D), each None when unused."""
        src = batch.get("clean_src", batch["src"])  # the teacher hears the features without SpecAugment
        cuda = src.device.type == "cuda"
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=cuda))
            hidden = stack.enter_context(capture(*self.teacher_block)) if self.projection is not None else None
            memory, _ = self.teacher.encode(src, batch["src_lengths"])
            ctc_logits = self.teacher.ctc(memory) if self.frame.ctc_weight > 0 else None
        return ctc_logits, hidden[-1] if hidden is not None else None


def _width(model: EncoderDecoder) -> int:
    """The encoder's output dimension (d_model)."""
    return model.encoder.subsampling.proj.out_features


def ctc_vocabulary(data: DataConfig) -> str:
    """The tokenizer of a model's CTC targets: data.ctc_tokenizer with data.ctc_text (ST), else the target one."""
    return data.ctc_tokenizer if data.ctc_text else data.tokenizer


def setup_kd(kd: KdConfig, student: nn.Module, train_set, data: DataConfig, device: torch.device):
    """The loss model and training dataset of the ``kd`` section: kdst.train.kd's, inside FrameKD when the
    section has ``frame``."""
    frame = getattr(kd, "frame", None)
    if frame is None:
        return setup_distillation(kd, student, train_set, data, device)
    word = None
    if not isinstance(kd, FrameOnlyKDConfig):
        word, train_set = setup_distillation(kd, student, train_set, data, device)
    return setup_frame_distillation(frame, student, data, device, word), train_set


def setup_frame_distillation(frame: FrameKDConfig, student: nn.Module, data: DataConfig, device: torch.device,
                             word: WordKD | None = None) -> FrameKD:
    """FrameKD for ``kd.frame``, after checking that teacher and student compare frame by frame."""
    name = frame.teacher
    if not isinstance(student, EncoderDecoder) or data.input != "speech":
        raise KdstError("kd.frame: frame-level KD is for attention encoder-decoder students reading speech")
    if frame.teacher.startswith("espnet:"):
        raise KdstError(f"{name}: frame-level KD takes a kdst checkpoint teacher (an ESPnet teacher's CTC head and "
                        "encoder layers are not reachable here)")
    teacher = load_teacher(name, device)
    model = teacher.model
    if not isinstance(model, EncoderDecoder) or teacher.data.input != "speech":
        raise KdstError(f"{name}: the frame-level KD teacher must be an attention encoder-decoder reading speech")
    if frame.ctc_weight > 0:
        _check_ctc(name, model, student, teacher.data, data)
    t_dim, s_dim = model.encoder.subsampling.input_dim, student.encoder.subsampling.input_dim
    if t_dim != s_dim:
        raise KdstError(f"{name}: the teacher reads {t_dim}-dim features, the student {s_dim}-dim: frame-level KD "
                        "needs the same features")
    if not _same_file(teacher.data.cmvn, data.cmvn):
        raise KdstError(f"{name}: the teacher was trained on features normalised with {teacher.data.cmvn}, the "
                        f"student's are normalised with {data.cmvn}")
    probe = torch.arange(1, 4097)
    t_frames = model.encoder.subsampling.output_lengths(probe).clamp(min=1)  # as the encoders clamp them
    s_frames = student.encoder.subsampling.output_lengths(probe).clamp(min=1)
    differ = (t_frames != s_frames).nonzero()
    if len(differ):
        i = int(differ[0])
        raise KdstError(f"{name}: the teacher's encoder has another frame rate than the student's ({int(probe[i])} "
                        f"input frames give {int(t_frames[i])} teacher frames, {int(s_frames[i])} student frames): "
                        "frame-level KD compares them frame by frame")
    log.info("frame-level KD (CTC weight %g, T=%g, per %s; hidden weight %g) from the teacher %s",
             frame.ctc_weight, frame.temperature, frame.normalize.rstrip("s"), frame.hidden_weight, name)
    return FrameKD(student, model, frame, word).to(device)


def _check_ctc(name: str, teacher: EncoderDecoder, student: EncoderDecoder, teacher_data: DataConfig,
               data: DataConfig) -> None:
    if student.ctc is None:
        raise KdstError("kd.frame.ctc_weight: the student has no CTC branch (model.ctc_weight: 0); CTC KD needs one "
                        "(or set kd.frame.ctc_weight: 0 for the hidden-state term alone)")
    if teacher.ctc is None:
        raise KdstError(f"{name}: the teacher has no CTC head (trained with model.ctc_weight: 0): CTC KD needs one "
                        "(or set kd.frame.ctc_weight: 0 for the hidden-state term alone)")
    t_vocab, s_vocab = ctc_vocabulary(teacher_data), ctc_vocabulary(data)
    key = "data.ctc_tokenizer" if data.ctc_text else "data.tokenizer"
    if (tokenizer_fingerprint(t_vocab) != tokenizer_fingerprint(s_vocab)
            or teacher.ctc.out_features != student.ctc.out_features):
        raise KdstError(f"{name}: the teacher's CTC vocabulary ({t_vocab}, {teacher.ctc.out_features} tokens) is not "
                        f"the student's ({key} {s_vocab}, {student.ctc.out_features} tokens): CTC KD needs one "
                        "vocabulary")


def _same_file(a: str | None, b: str | None) -> bool:
    """Both unset, or the same file (by path or by content)."""
    if not a or not b:
        return not a and not b
    if Path(a).resolve() == Path(b).resolve():
        return True
    return Path(a).is_file() and Path(b).is_file() and file_digest(a) == file_digest(b)
