"""Transducer distillation inside ``kdst train``: KL over the RNN-T lattice.

A transducer student distils from an online transducer teacher over the RNN-T lattice
(Hwang et al. 2023, soft targets; their hard targets are teacher pseudo labels in
``data.text`` and need nothing here):

    kd:
      teacher: exp/rnnt_teacher/avg_best5.pt  # a transducer checkpoint, same tokenizer and frame rate
      weight: 0.5                             # loss = (1 - weight) * RNNT + weight * KD
      temperature: 1.0                        # on both sides; no T^2 factor
      mode: full                              # full: KL over V at every node; collapsed: over {y, blank, rest}
      normalize: nodes                        # KD = the KL sum / the lattice nodes (or: tokens, utterances)
      node_weights: uniform                   # or occupancy: each node's KL x the teacher's occupancy

The teacher hears the features before SpecAugment (``batch["clean_src"]``, noisy student)
and its joint logits on the same lattice (same targets, same encoder frames) are the soft
targets.  The KD term is ``rnnt_kd_loss(..., reduction="sum")`` (computed together with the
RNN-T term by ``rnnt_loss_and_kd``) divided by ``kd_normalizer``'s count.  The RNN-T term is
per target token, so the papers' L = RNNT + alpha * sum_{t,u} KL (per utterance) is
``weight / (1 - weight) = alpha`` with ``normalize: tokens``, and about ``alpha x`` the mean
encoder frames per utterance with ``nodes`` (docs/KD_METHODS.md, "Transducer KD").

``node_weights: occupancy`` weighs each node by the teacher's posterior of passing there
(alpha(t,u) beta(t,u) / P(y|x) on the teacher's own lattice for the same targets, at
temperature 1): the KL is then taken where the teacher's alignments run, and nodes no
plausible alignment visits (a label emitted at the first frame of a long utterance) stop
counting.  The weights are the teacher's, not the student's: they are constants of the
batch (no gradient, nothing the student can move by putting its own mass elsewhere), good
from the first step (an untrained student's occupancy is spread over the whole lattice),
and they ask the student to match the teacher where the teacher puts its alignments.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kdst.config import DataConfig, LatticeKDConfig, ScheduleConfig
from kdst.data.files import file_digest
from kdst.data.tokenizer import tokenizer_fingerprint
from kdst.data.tokenizer import BLANK_ID
from kdst.errors import KdstError
from kdst.losses.rnnt import lattice_occupancy
from kdst.models import Transducer
from kdst.models.protocol import TeacherOutputs
from kdst.models.teacher import load_teacher
from kdst.train.schedule import KDSchedule, ScheduledKD

log = logging.getLogger("kdst.train")


def _frame_lengths(model: Transducer, src_lengths: torch.Tensor) -> torch.Tensor:
    """Encoder output frames per utterance, without running the encoder (every transducer encoder
    starts with a Conv2dSubsampling, whose output lengths are a function of the input lengths)."""
    return model.encoder.subsampling.output_lengths(src_lengths).clamp(min=1)


class TransducerKD(ScheduledKD):
    """A transducer student with the lattice KD term of an online transducer teacher;
    ``forward(batch) -> (loss, stats)`` like the student's."""

    def __init__(self, student: Transducer, teacher: Transducer, *, weight: float, temperature: float = 1.0,
                 mode: str = "full", teacher_input_dim: int = 80, weight_schedule: ScheduleConfig | None = None,
                 temperature_schedule: ScheduleConfig | None = None, normalize: str = "nodes",
                 node_weights: str = "uniform"):
        super().__init__(student, teacher, KDSchedule(weight, temperature, weight_schedule, temperature_schedule))
        self.mode = mode
        self.normalize, self.node_weights = normalize, node_weights
        self.teacher_input_dim = teacher_input_dim

    def kd_term(self, logits: torch.Tensor, batch: dict) -> TeacherOutputs:
        """The teacher's outputs for the student's joint ``logits`` of this batch (for tests and diagnostics)."""
        teacher = self.teacher_outputs(batch)
        if teacher.logits.shape != logits.shape:
            raise KdstError(f"the teacher's joint lattice {tuple(teacher.logits.shape)} is not the student's "
                            f"{tuple(logits.shape)}: teacher and student need one frame rate and one vocabulary")
        return teacher

    def teacher_outputs(self, batch: dict) -> TeacherOutputs:
        """The teacher's joint logits on the student's lattice: same targets, same encoder frames."""
        if "tgt_weight" in batch:
            raise KdstError("transducer KD does not combine with several weighted targets per utterance")
        src = batch.get("clean_src", batch["src"])  # the teacher hears the features without SpecAugment
        if src.shape[-1] != self.teacher_input_dim:
            raise KdstError(f"the teacher takes {self.teacher_input_dim}-dim features, the student's batch has "
                            f"{src.shape[-1]}")
        cuda = src.device.type == "cuda"
        with torch.no_grad(), torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=cuda):
            teacher_logits, frames, tgt, tgt_lengths = self.teacher.joint_logits({**batch, "src": src})
        occupancy = None
        if self.node_weights == "occupancy":  # at temperature 1: the teacher's own alignment posterior
            occupancy = lattice_occupancy(teacher_logits, tgt, frames, tgt_lengths, blank=BLANK_ID)
        # Same frame lengths as the student's lattice: setup_transducer_distillation compared the two frame
        # rates once, so no batch waits for the device to compare lengths; the student's forward compares shapes.
        return TeacherOutputs(logits=teacher_logits, mode=self.mode, temperature=self.temperature, weight=self.weight,
                              normalize=self.normalize, node_weights=occupancy)


def setup_transducer_distillation(kd: LatticeKDConfig, student: nn.Module, data: DataConfig,
                                  device: torch.device) -> TransducerKD:
    """The loss model of a transducer student for the ``kd`` config section (an online transducer teacher)."""
    if not isinstance(student, Transducer):
        raise KdstError("lattice KD (kd.mode) is for transducer students")
    teacher = load_teacher(kd.teacher, device)
    name = kd.teacher
    if not isinstance(teacher.model, Transducer):
        raise KdstError(f"{name}: the teacher of a transducer student must be a transducer (model.type: transducer)")
    if teacher.vocab_size != student.vocab_size:
        raise KdstError(f"{name}: the teacher's vocabulary has {teacher.vocab_size} tokens, the student's "
                        f"{student.vocab_size}: transducer KD needs one tokenizer")
    if tokenizer_fingerprint(teacher.data.tokenizer) != tokenizer_fingerprint(data.tokenizer):
        raise KdstError(f"{name}: the teacher's tokenizer {teacher.data.tokenizer} is not the "
                        f"student's {data.tokenizer}: transducer KD needs one tokenizer")
    if teacher.data.input != "speech" or data.input != "speech":
        raise KdstError(f"{name}: transducer KD needs a teacher and a student that read speech")
    if not _same_file(teacher.data.cmvn, data.cmvn):
        raise KdstError(f"{name}: the teacher was trained on features normalised with "
                        f"{teacher.data.cmvn}, the student's are normalised with {data.cmvn}")
    probe = torch.arange(1, 4097)
    differ = (_frame_lengths(teacher.model, probe) != _frame_lengths(student, probe)).nonzero()
    if len(differ):
        raise KdstError(f"{name}: the teacher's encoder has another frame rate than the student's (e.g. "
                        f"{int(probe[differ[0]])} input frames): transducer KD compares their lattices node by node")
    log.info("transducer KD (%s, weight %g, T=%g, KL sum per %s, %s node weights) from the online teacher %s",
             kd.mode, kd.weight, kd.temperature, kd.normalize.rstrip("s"), kd.node_weights, name)
    return TransducerKD(student, teacher.model, weight=kd.weight, temperature=kd.temperature, mode=kd.mode,
                        teacher_input_dim=teacher.model.encoder.subsampling.input_dim,
                        weight_schedule=kd.weight_schedule, temperature_schedule=kd.temperature_schedule,
                        normalize=kd.normalize, node_weights=kd.node_weights)


def _same_file(a: str | None, b: str | None) -> bool:
    """Both unset, or the same file (by path or by content)."""
    if not a or not b:
        return not a and not b
    if Path(a).resolve() == Path(b).resolve():
        return True
    return Path(a).is_file() and Path(b).is_file() and file_digest(a) == file_digest(b)
