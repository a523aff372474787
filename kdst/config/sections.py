"""The sections of a training config besides ``model``: data, optim, train and kd.

Every default of ``kdst train`` is a field default here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdst.config.schema import require


@dataclass(frozen=True)
class NbestTargetsConfig:
    """A teacher's N-best pseudo labels as training targets (kdst.data.nbest_targets)."""
    file: str  # relative to the training data dir, e.g. pseudo_nbest5.txt
    mode: Literal["expand", "sample", "weighted"] = "weighted"
    gold_weight: float = 0.0  # the reference's share, mixed in as one more hypothesis

    def __post_init__(self):
        require(0.0 <= self.gold_weight <= 1.0, "gold_weight", f"must be in [0, 1], not {self.gold_weight}")


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are batched.  A model's checkpoint keeps the
    section it was trained with, so decoding and teacher outputs read data the same way."""
    input: Literal["speech", "text"] = "speech"
    train: str | None = None  # Kaldi data dirs
    valid: str | None = None
    tokenizer: str | None = None  # target tokenizer dir
    text: str = "text"  # the data dir's file of training targets (text.seqkd: a teacher's 1-best)
    valid_text: str | None = None  # validation targets (default: text); students of teacher outputs use gold
    src_text: str | None = None  # input text: the source side (text.en)
    src_tokenizer: str | None = None
    ctc_text: str | None = None  # CTC targets from another text file (ST: the transcript)
    ctc_tokenizer: str | None = None
    cmvn: str | None = None  # global CMVN statistics (Kaldi matrix)
    max_units: int | None = None  # padded frames (speech) or tokens (text) per batch
    max_items: int = 10_000  # utterances per batch
    nbest_targets: NbestTargetsConfig | None = None
    # DataLoader processes building batches; None: 2 when training on a GPU, 0 (in the training process)
    # on the CPU, where workers take cores from the training threads (bench/RESULTS.md: 23% fewer steps/s)
    num_workers: int | None = None

    def __post_init__(self):
        if self.input == "text":
            require(self.src_text is not None, "src_text", "required when data.input is text")
            require(self.src_tokenizer is not None, "src_tokenizer", "required when data.input is text")
        require(self.ctc_text is None or self.ctc_tokenizer is not None, "ctc_tokenizer",
                "required with data.ctc_text")
        require(self.max_units is None or self.max_units >= 1, "max_units", f"must be >= 1, not {self.max_units}")
        require(self.max_items >= 1, "max_items", f"must be >= 1, not {self.max_items}")
        require(self.num_workers is None or self.num_workers >= 0, "num_workers",
                f"must be >= 0, not {self.num_workers}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a learning-rate schedule: noam (warmup, then 1/sqrt), linear decay or constant."""
    lr: float
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    schedule: Literal["noam", "linear", "constant"] = "noam"
    warmup_steps: int = 1000
    total_steps: int | None = None  # linear: where the rate reaches 0

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, not {self.lr}")
        require(all(0.0 <= b < 1.0 for b in self.betas), "betas", f"must be in [0, 1), not {list(self.betas)}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, not {self.weight_decay}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, not {self.warmup_steps}")
        if self.schedule == "linear":
            require(self.total_steps is not None and self.total_steps >= 1, "total_steps",
                    "required (>= 1) with schedule linear")


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment (Park et al. 2019), drawn per utterance."""
    freq_masks: int = 2
    freq_width: int = 27  # F: widest frequency mask, in bins
    time_masks: int = 2
    time_width: int = 40  # T: widest time mask, in frames
    time_ratio: float = 0.2  # p: no time mask covers more than this share of an utterance

    def __post_init__(self):
        for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, not {getattr(self, key)}")
        require(0.0 < self.time_ratio <= 1.0, "time_ratio", f"must be in (0, 1], not {self.time_ratio}")


@dataclass(frozen=True)
class InitPartConfig:
    """Submodules of the model (``encoder``, ``ctc``, ``decoder``) copied from a checkpoint before training."""
    checkpoint: str
    modules: tuple[str, ...]

    def __post_init__(self):
        require(len(self.modules) > 0, "modules", "must name a submodule (encoder, ctc, decoder, ...)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimiser steps (0: no limit); resume continues
    accum_grad: int = 1  # micro-batches per optimiser step
    clip: float = 5.0  # gradient norm
    seed: int = 1
    keep_best: int = 5  # epoch checkpoints kept by validation loss (and the last two)
    log_interval: int = 50  # optimiser steps between statistics
    nan: Literal["skip", "stop"] = "skip"  # a non-finite loss: drop that step, or stop with the utterances
    specaugment: SpecAugmentConfig | None = None
    bf16: bool = True  # autocast on a GPU
    init: str | None = None  # fine-tuning: start from this checkpoint's weights, fresh optimiser
    # or parts of the model from several checkpoints (ESPnet's init_param): an ASR model's encoder and
    # CTC head, an MT model's decoder; the rest starts afresh
    init_parts: tuple[InitPartConfig, ...] | None = None

    def __post_init__(self):
        require(self.epochs >= 1, "epochs", f"must be >= 1, not {self.epochs}")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0, not {self.max_steps}")
        require(self.accum_grad >= 1, "accum_grad", f"must be >= 1, not {self.accum_grad}")
        require(self.clip > 0, "clip", f"must be > 0, not {self.clip}")
        require(self.keep_best >= 1, "keep_best", f"must be >= 1, not {self.keep_best}")
        require(self.log_interval >= 1, "log_interval", f"must be >= 1, not {self.log_interval}")
        require(not (self.init and self.init_parts), "init_parts", "give train.init (the whole model) or "
                "train.init_parts, not both")
        if self.init_parts:
            named = [m for part in self.init_parts for m in part.modules]
            twice = sorted({m for m in named if named.count(m) > 1})
            require(not twice, "init_parts", f"{', '.join(twice)} would come from two checkpoints")

    # What may change when a stopped run continues (--resume): how long it runs and what it says.
    RESUMABLE_CHANGES = ("epochs", "max_steps", "log_interval", "keep_best", "nan")


@dataclass(frozen=True)
class ScheduleConfig:
    """A KD weight or temperature that moves with the optimiser step (kdst.train.schedule): the
    section's own value up to step ``start``, then ``shape`` to ``end`` at step ``start + steps``,
    then ``end``.  Without a schedule the value is constant."""
    end: float
    steps: int
    shape: Literal["linear", "cosine"] = "linear"
    start: int = 0

    def __post_init__(self):
        require(self.steps >= 1, "steps", f"must be >= 1, not {self.steps}")
        require(self.start >= 0, "start", f"must be >= 0, not {self.start}")


def _check_kd(weight: float, temperature: float, weight_schedule: ScheduleConfig | None = None,
              temperature_schedule: ScheduleConfig | None = None) -> None:
    require(0.0 <= weight <= 1.0, "weight", f"must be in [0, 1], not {weight}")
    require(temperature > 0, "temperature", f"must be > 0, not {temperature}")
    if weight_schedule is not None:
        require(0.0 <= weight_schedule.end <= 1.0, "weight_schedule.end",
                f"must be in [0, 1], not {weight_schedule.end}")
    if temperature_schedule is not None:
        require(temperature_schedule.end > 0, "temperature_schedule.end",
                f"must be > 0, not {temperature_schedule.end}")


def _check_teachers(teacher: str | tuple[str, ...] | None, weights: tuple[float, ...] | None) -> None:
    """kd.teacher: one reference or a list (an ensemble, kdst.models.ensemble); kd.teacher_weights: one per teacher."""
    require(teacher != (), "teacher", "an empty list names no teacher")
    if weights is not None:
        count = 0 if teacher is None else 1 if isinstance(teacher, str) else len(teacher)
        require(count > 0, "teacher_weights", "needs kd.teacher")
        require(len(weights) == count, "teacher_weights", f"{len(weights)} weight(s) for {count} teacher(s)")
        require(all(w > 0 for w in weights), "teacher_weights", f"each weight must be > 0, not {list(weights)}")


@dataclass(frozen=True)
class OnlineWordKDConfig:
    """Word-level KD from a teacher run in every step: ``(1 - weight) * CE + weight * KD``."""
    # a teacher reference (kdst.models.teacher): a checkpoint path or espnet:PATH; a list: their ensemble
    teacher: str | tuple[str, ...]
    teacher_weights: tuple[float, ...] | None = None  # an ensemble's weights (normalised; default uniform)
    weight: float = 0.5
    temperature: float = 1.0
    weight_schedule: ScheduleConfig | None = None  # weight as a function of the step
    temperature_schedule: ScheduleConfig | None = None
    t2_scale: bool = False  # multiply the KD term by T^2 (Hinton et al.)
    # of the gold CE term under word-KD, in place of model.label_smoothing: 0 as in FBK's word-KD
    # (docs/KD_METHODS.md, "Word-level KD"); the teacher's distribution already smooths the target
    label_smoothing: float = 0.0
    src_text: str | None = None  # the data dir's file the MT teacher reads (default: the teacher's own)
    frame: FrameKDConfig | None = None  # frame-level CTC/encoder KD beside word-level KD (kdst.train.frame_kd)

    def __post_init__(self):
        _check_kd(self.weight, self.temperature, self.weight_schedule, self.temperature_schedule)
        _check_teachers(self.teacher, self.teacher_weights)
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), not {self.label_smoothing}")


@dataclass(frozen=True)
class CachedWordKDConfig:
    """Word-level KD from a ``kdst topk`` cache of the teacher's distributions."""
    cache: str
    teacher: str | tuple[str, ...] | None = None  # when given, the cache must have been made by this teacher (ensemble)
    teacher_weights: tuple[float, ...] | None = None  # and with these ensemble weights
    weight: float = 0.5
    temperature: float = 1.0
    weight_schedule: ScheduleConfig | None = None  # weight as a function of the step
    temperature_schedule: ScheduleConfig | None = None
    t2_scale: bool = False
    label_smoothing: float = 0.0  # of the gold CE term, as in OnlineWordKDConfig
    # topk caches: KL over the k entries and one class for the teacher's remaining mass, instead of
    # renormalising over the k (needs a cache made at this temperature by a kdst that stores rest.bin)
    topk_rest: bool = False
    frame: FrameKDConfig | None = None  # frame-level CTC/encoder KD beside word-level KD (kdst.train.frame_kd)

    def __post_init__(self):
        _check_kd(self.weight, self.temperature, self.weight_schedule, self.temperature_schedule)
        _check_teachers(self.teacher, self.teacher_weights)
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), not {self.label_smoothing}")


@dataclass(frozen=True)
class LatticeKDConfig:
    """Transducer KD over the RNN-T lattice from an online transducer teacher."""
    teacher: str
    weight: float = 0.5
    temperature: float = 1.0
    weight_schedule: ScheduleConfig | None = None  # weight as a function of the step
    temperature_schedule: ScheduleConfig | None = None
    mode: Literal["full", "collapsed"] = "full"  # KL over V, or over {label, blank, rest}
    # What the lattice KL sum is divided by (docs/KD_METHODS.md maps each to the papers' alpha):
    # nodes: the lattice nodes (a mean KL per node; alpha ~ weight / (1 - weight) / mean encoder frames);
    # tokens: the target tokens, as the RNN-T term (alpha = weight / (1 - weight); before: the only one);
    # utterances: the utterances (alpha = weight / (1 - weight) x mean target tokens)
    normalize: Literal["nodes", "tokens", "utterances"] = "nodes"
    # uniform: every node's KL counts 1 (the papers); occupancy: weighted by the teacher's alignment
    # occupancy alpha(t,u) beta(t,u) / P(y|x) for the targets (kdst.losses.rnnt.lattice_occupancy)
    node_weights: Literal["uniform", "occupancy"] = "uniform"

    def __post_init__(self):
        _check_kd(self.weight, self.temperature, self.weight_schedule, self.temperature_schedule)


@dataclass(frozen=True)
class FrameKDConfig:
    """Frame-level KD from a speech teacher's encoder (kdst.train.frame_kd): its CTC posteriors on the student's
    CTC branch, and optionally one encoder layer's outputs against a learned projection of the student's."""
    teacher: str  # an attention encoder-decoder with a CTC head, same CTC vocabulary and frame rate as the student
    ctc_weight: float = 0.5  # the KD share of the student's CTC branch: (1 - w) * CTC + w * KL
    temperature: float = 1.0
    # KL summed over frames per CTC target token (the CTC loss's own normaliser), or averaged per frame
    normalize: Literal["tokens", "frames"] = "tokens"
    hidden_weight: float = 0.0  # loss + hidden_weight * distance(teacher layer, projected student layer)
    hidden_loss: Literal["mse", "l1"] = "mse"
    hidden_layer: int = -1  # the student's encoder block whose output is projected (1-based; -1: the last)
    teacher_layer: int = -1  # the teacher's encoder block it is compared with

    def __post_init__(self):
        require(0.0 <= self.ctc_weight <= 1.0, "ctc_weight", f"must be in [0, 1], not {self.ctc_weight}")
        require(self.temperature > 0, "temperature", f"must be > 0, not {self.temperature}")
        require(self.hidden_weight >= 0, "hidden_weight", f"must be >= 0, not {self.hidden_weight}")
        require(self.ctc_weight > 0 or self.hidden_weight > 0, "ctc_weight",
                "0 with hidden_weight 0: frame-level KD would add nothing")
        require(self.hidden_layer != 0, "hidden_layer", "counts encoder blocks from 1 (or from the end: -1)")
        require(self.teacher_layer != 0, "teacher_layer", "counts encoder blocks from 1 (or from the end: -1)")


@dataclass(frozen=True)
class FrameOnlyKDConfig:
    """Frame-level KD alone: a kd section with only ``frame`` (the student keeps its own targets)."""
    frame: FrameKDConfig


KdConfig = OnlineWordKDConfig | CachedWordKDConfig | LatticeKDConfig | FrameOnlyKDConfig
