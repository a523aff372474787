"""Word-level knowledge distillation inside ``kdst train`` (Kim & Rush 2016; Liu et al. 2019).

The student is trained on ``(1 - weight) * CE(targets) + weight * KD``, where KD is
``kdst.losses.word_kd_loss`` between the teacher's and the student's next-token
distributions at every target position, both forced with the same target prefix.
The teacher's distribution comes from one of two places (the ``kd`` config section):

    kd:
      weight: 0.5                          # the KD share of the loss (lambda)
      temperature: 1.0
      t2_scale: false                      # multiply the KD term by T^2 (Hinton et al.)
      teacher: exp/mt_teacher/avg_best5.pt # online: the MT teacher reads the transcript (a teacher
                                           # reference, kdst.models.teacher: also espnet:PATH)
      src_text: text.en                    # (online) the transcript file it reads (default: its own)
      cache: exp/mt_teacher/topk_train     # offline: a `kdst topk` cache replaces the teacher

The section's variant (kdst.config.sections) follows from the student and ``cache``.
An ESPnet teacher (kdst.models.espnet_bridge) brings its own vocabulary: the student's
``data.tokenizer`` must be the one ``kdst espnet-tokenizer`` exported from it.

With ``cache`` the teacher's forward pass was run once (stage 6) and its top-k (or
sampled tokens with counts) are read per utterance id; with only ``teacher`` it runs
in every step, frozen, in eval mode, under no_grad, and in bf16 on a GPU.  Both
must share the student's target vocabulary: a mismatch is an error, not a warning.

A transducer student distils over the RNN-T lattice: kdst.train.transducer_kd.
"""


from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kdst.config import CachedWordKDConfig, DataConfig, KdConfig, LatticeKDConfig, ScheduleConfig
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import TeacherCache, source_digest, targets_digest
from kdst.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from kdst.errors import KdstError
from kdst.models import Transducer
from kdst.models.protocol import TeacherOutputs
from kdst.models.ensemble import load_teachers, teachers_digest
from kdst.train.schedule import KDSchedule, with_schedule_stats
from kdst.train.transducer_kd import setup_transducer_distillation

log = logging.getLogger("kdst.train")


class TeacherInputs:
    """A training dataset whose examples also carry what the teacher needs, joined by utterance id:
    the teacher's source tokens (online) or the cached top-k rows (offline)."""

    def __init__(self, base, *, teacher_src: dict[str, list[int]] | None = None, cache: TeacherCache | None = None):
        self.base, self.teacher_src, self.cache = base, teacher_src, cache
        self.ids, self.src_lengths = base.ids, base.src_lengths

    def __getitem__(self, utt: str):
        example = self.base[utt]
        if self.teacher_src is not None:
            example = replace(example, teacher_src=self.teacher_src[utt])
        if self.cache is not None:  # one row per target token and one for <eos>
            example = replace(example, teacher_topk=self.cache.get(utt, len(example.tgt) + 1))
        return example


class WordKD(nn.Module):
    """The student with a word-level KD term; ``forward(batch) -> (loss, stats)`` like the student's."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, *, weight: float, temperature: float = 1.0,
                 t2_scale: bool = False, sampled: bool = False, weight_schedule: ScheduleConfig | None = None,
                 temperature_schedule: ScheduleConfig | None = None):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise KdstError(f"kd.weight must be in [0, 1], not {weight}")
        self.student, self.teacher = student, teacher
        self.schedule = KDSchedule(weight, temperature, weight_schedule, temperature_schedule)
        self.t2_scale, self.sampled = t2_scale, sampled
        if teacher is not None:
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> "WordKD":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # no dropout in the teacher, ever
        return self

    @property
    def weight(self) -> float:
        return self.schedule.weight

    @property
    def temperature(self) -> float:
        return self.schedule.temperature

    def set_step(self, step: int) -> None:
        """The optimiser step of the batches that follow (the trainer's), for ``kd.*_schedule``."""
        self.schedule.step = step

    def forward(self, batch: dict):
        return with_schedule_stats(self.student(batch, teacher=self.teacher_outputs(batch)), self.schedule)

    def teacher_outputs(self, batch: dict) -> TeacherOutputs:
        """The teacher's view of the batch at the student's decoder positions: the online teacher's logits,
        forced with the same target prefix from the transcript, or the cached top-k rows."""
        common = dict(weight=self.weight, temperature=self.temperature, t2_scale=self.t2_scale)
        if self.teacher is None:
            return TeacherOutputs(topk_indices=batch["teacher_topk_indices"],
                                  topk_values=batch["teacher_topk_values"], sampled=self.sampled, **common)
        with torch.no_grad():
            teacher_batch = {"src": batch["teacher_src"], "src_lengths": batch["teacher_src_lengths"],
                             "tgt": batch["tgt"], "tgt_lengths": batch["tgt_lengths"]}
            return TeacherOutputs(logits=self.teacher.decoder_logits(teacher_batch)[0], **common)

    def kd_term(self, logits: torch.Tensor, targets: torch.Tensor, batch: dict) -> tuple[torch.Tensor, float]:
        """The KD term alone for the student's ``logits``, and its weight (for tests and diagnostics)."""
        teacher = self.teacher_outputs(batch)
        return self.student.kd_loss(logits, targets, teacher), teacher.weight


def setup_distillation(kd: KdConfig, student: nn.Module, train_set, data: DataConfig, device: torch.device):
    """The loss model and the training dataset for the ``kd`` config section."""
    if isinstance(kd, LatticeKDConfig):
        return setup_transducer_distillation(kd, student, data, device), train_set
    if isinstance(student, Transducer):
        raise KdstError("a transducer student distils over the RNN-T lattice: its kd section takes teacher, "
                        "weight, temperature and mode")
    student_vocab = tokenizer_fingerprint(data.tokenizer)
    common = dict(weight=kd.weight, temperature=kd.temperature, t2_scale=kd.t2_scale,
                  weight_schedule=kd.weight_schedule, temperature_schedule=kd.temperature_schedule)
    if isinstance(kd, CachedWordKDConfig):
        cache = TeacherCache(kd.cache)
        check_cache_matches(cache, kd, train_set, data)
        log.info("word-level KD from the %s cache %s (k=%d, %.1f bytes/token)", cache.mode, kd.cache, cache.k,
                 cache.bytes_per_token())
        return (WordKD(student, None, sampled=cache.mode == "sampled", **common),
                TeacherInputs(train_set, cache=cache))

    teacher = load_teachers(kd.teacher, device, kd.teacher_weights, src_text=kd.src_text)
    if teacher.data.input != "text":
        raise KdstError(f"{kd.teacher}: an online teacher must be an MT model reading the transcript")
    if tokenizer_fingerprint(teacher.data.tokenizer) != student_vocab:
        raise KdstError(f"{kd.teacher}: the teacher's target tokenizer {teacher.data.tokenizer} is not the "
                        f"student's {data.tokenizer}: word-level KD needs one vocabulary (an ESPnet teacher's: "
                        f"kdst espnet-tokenizer)")
    model = teacher.model.to(torch.bfloat16) if device.type == "cuda" else teacher.model
    src_tokenizer = load_tokenizer(teacher.data.src_tokenizer)
    sources = DataDir(data.train).require(teacher.data.src_text)
    missing = [u for u in train_set.ids if u not in sources]
    if missing:
        raise KdstError(f"{Path(data.train) / teacher.data.src_text}: no transcript for {len(missing)} "
                        f"training utterance(s), e.g. '{missing[0]}'")
    teacher_src = {u: src_tokenizer.encode(sources[u]) for u in train_set.ids}
    log.info("word-level KD from the online teacher %s", kd.teacher)
    return WordKD(student, model, **common), TeacherInputs(train_set, teacher_src=teacher_src)


def check_cache_matches(cache: TeacherCache, kd: CachedWordKDConfig, train_set, data: DataConfig) -> None:
    """The cache must hold this training set's utterances, made from its vocabulary and texts (and teacher,
    when kd.teacher names one): a stale cache would train on another text's teacher outputs without a sign.
    The content is compared through digests the trainer recomputes: the target ids of the training set and
    the source text lines in the data dir."""
    made = cache.fingerprint
    if any(key not in made for key in ("targets", "source_text", "source")):
        raise KdstError(f"{kd.cache}: made by an older kdst, without digests of the texts it was made from: "
                        "re-run the top-k stage")
    missing = [utt for utt in train_set.ids if utt not in cache]
    if missing:
        raise KdstError(f"{kd.cache}: no teacher outputs for {len(missing)} of the {len(train_set.ids)} training "
                        f"utterances, e.g. '{missing[0]}': made for another data dir (re-run the top-k stage)")
    ids = cache.ids
    targets = _cached_targets(ids, train_set, data)
    if targets is None:
        raise KdstError(f"{kd.cache}: holds utterances that {Path(data.train) / data.text} has not: made for "
                        "another data dir (re-run the top-k stage)")
    wrong = []
    if made.get("tokenizer") != tokenizer_fingerprint(data.tokenizer):
        wrong.append(f"tokenizer (not {data.tokenizer})")
    if kd.teacher and made.get("teacher") != teachers_digest(kd.teacher, kd.teacher_weights):
        wrong.append(f"teacher (not {kd.teacher})")
    if made["targets"] != targets_digest(targets, ids):
        wrong.append(f"targets (the token ids of {Path(data.train) / data.text} differ)")
    source_path = Path(data.train) / made["source_text"]
    sources = DataDir(data.train).read(made["source_text"]) or {}
    if any(utt not in sources for utt in ids) or made["source"] != source_digest(sources, ids):
        wrong.append(f"source (the text of {source_path} differs)")
    if wrong:
        raise KdstError(f"{kd.cache}: the teacher cache does not match this training run: {', '.join(wrong)} "
                        "(re-run the top-k stage)")


def _cached_targets(ids: list[str], train_set, data: DataConfig) -> dict[str, list[int]] | None:
    """Target ids of the cache's utterances as the student tokenizes them: from its dataset, and for those it
    lacks (fbank skips utterances shorter than one frame) from the data dir's text; None if a text is missing."""
    extra = [utt for utt in ids if utt not in train_set.targets]
    if not extra:
        return train_set.targets
    texts = DataDir(data.train).read(data.text) or {}
    if any(utt not in texts for utt in extra):
        return None
    tokenizer = load_tokenizer(data.tokenizer)
    return {**train_set.targets, **{utt: tokenizer.encode(texts[utt]) for utt in extra}}
