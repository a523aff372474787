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
      topk_rest: false                     # (cache) the k entries plus one rest class, not renormalised
      label_smoothing: 0.0                 # of the gold CE term (replaces model.label_smoothing)

The section's variant (kdst.config.sections) follows from the student and ``cache``.
An ESPnet teacher (kdst.models.espnet_bridge) brings its own vocabulary: the student's
``data.tokenizer`` must be the one ``kdst espnet-tokenizer`` exported from it.  A Whisper
teacher (``hf:PATH``, kdst.models.hf_whisper) distils through the cache only (``kdst topk
--teacher-data-dir``): it hears its own log-mel features, which the student's batches do not
carry, and its encoder would run over a 30 s window for every utterance at every epoch where
the cache runs it once; ``kd.teacher: hf:WHISPER`` without ``cache`` is refused saying so.
A student adopts its exported tokenizer (``kdst hf-tokenizer``); its cache records the speech
it heard (wav.scp and segments per utterance), which must be the training data dir's.

With ``cache`` the teacher's forward pass was run once (stage 6) and its top-k (or
sampled tokens with counts) are read per utterance id; with only ``teacher`` it runs
in every step, frozen, in eval mode, under no_grad.  Both must share the student's
target vocabulary: a mismatch is an error, not a warning.

The two are one experiment: the online teacher keeps its float32 weights and runs
under the trainer's autocast like the student (on a GPU, bf16 matrix products with
float32 accumulation, norms and softmaxes), and its logits are taken in float32, as
the cache's are.  Casting its weights to bf16, as kdst once did, rounded every
activation and moved the KD term by 1e-4 to 2e-3 nats per token
(test/train/test_kd.py states the tolerance).

A sampled cache is drawn at one temperature, and the rest of a top-k cache
(``kd.topk_rest``) is measured at one: training at another T refuses such a cache
with both temperatures named (a renormalised top-k cache stores logits and serves
any T).  A top-k cache whose k entries keep little of the teacher's mass (at the
cache's T) gets a warning when training starts.

A transducer student distils over the RNN-T lattice: kdst.train.transducer_kd.
"""


from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdst.config import CachedWordKDConfig, DataConfig, KdConfig, LatticeKDConfig, ScheduleConfig
from kdst.data.kaldi_dir import DataDir
from kdst.data.teacher_cache import TeacherCache, low_kept_mass_warning, source_digest, targets_digest
from kdst.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from kdst.errors import DataError, KdstError
from kdst.models import Transducer
from kdst.models.decoder import TransformerDecoder
from kdst.models.protocol import TeacherOutputs
from kdst.models.ensemble import load_teachers, references_of, teachers_digest
from kdst.models.hf_teacher import is_whisper
from kdst.models.hf_whisper import audio_sources, reference_prompt
from kdst.train.schedule import KDSchedule, ScheduledKD
from kdst.train.transducer_kd import setup_transducer_distillation

log = logging.getLogger("kdst.train")


class TeacherInputs:
    """A training dataset whose examples also carry what the teacher needs, joined by utterance id:
    the teacher's source tokens (online) or the cached top-k rows (offline), with ``rest`` the cache's
    log mass outside the k entries as one more column of both (collate pads the pair alike; WordKD
    splits it off again)."""

    def __init__(self, base, *, teacher_src: dict[str, list[int]] | None = None, cache: TeacherCache | None = None,
                 rest: bool = False):
        self.base, self.teacher_src, self.cache, self.rest = base, teacher_src, cache, rest
        self.ids, self.src_lengths = base.ids, base.src_lengths

    def __getitem__(self, utt: str):
        example = self.base[utt]
        if self.teacher_src is not None:
            example = replace(example, teacher_src=self.teacher_src[utt])
        if self.cache is not None:  # one row per target token and one for <eos>
            indices, values = self.cache.get(utt, len(example.tgt) + 1)
            if self.rest:
                indices = np.concatenate([indices, np.zeros((len(indices), 1), dtype=indices.dtype)], axis=1)
                values = np.concatenate([values, self.cache.get_rest(utt)[:, None]], axis=1)
            example = replace(example, teacher_topk=(indices, values))
        return example


class WordKD(ScheduledKD):
    """The student with a word-level KD term; ``forward(batch) -> (loss, stats)`` like the student's."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, *, weight: float, temperature: float = 1.0,
                 t2_scale: bool = False, sampled: bool = False, weight_schedule: ScheduleConfig | None = None,
                 temperature_schedule: ScheduleConfig | None = None, topk_rest: bool = False,
                 label_smoothing: float | None = None):
        if not 0.0 <= weight <= 1.0:
            raise KdstError(f"kd.weight must be in [0, 1], not {weight}")
        super().__init__(student, teacher, KDSchedule(weight, temperature, weight_schedule, temperature_schedule))
        self.t2_scale, self.sampled = t2_scale, sampled
        self.topk_rest = topk_rest  # the batch's cached rows carry the rest as their last column
        self.label_smoothing = label_smoothing  # of the gold term; None: the student's own

    def teacher_outputs(self, batch: dict) -> TeacherOutputs:
        """The teacher's view of the batch at the student's decoder positions: the online teacher's logits,
        forced with the same target prefix from the transcript, or the cached top-k rows."""
        common = dict(weight=self.weight, temperature=self.temperature, t2_scale=self.t2_scale,
                      label_smoothing=self.label_smoothing)
        if self.teacher is None:
            indices, values = batch["teacher_topk_indices"], batch["teacher_topk_values"]
            if self.topk_rest:
                return TeacherOutputs(topk_indices=indices[..., :-1], topk_values=values[..., :-1],
                                      rest_log_mass=values[..., -1], **common)
            return TeacherOutputs(topk_indices=indices, topk_values=values, sampled=self.sampled, **common)
        with torch.no_grad():
            teacher_batch = {"src": batch["teacher_src"], "src_lengths": batch["teacher_src_lengths"],
                             "tgt": batch["tgt"], "tgt_lengths": batch["tgt_lengths"]}
            return TeacherOutputs(logits=self.teacher.decoder_logits(teacher_batch)[0].float(), **common)

    def kd_term(self, logits: torch.Tensor, targets: torch.Tensor, batch: dict) -> tuple[torch.Tensor, float]:
        """The KD term alone for the student's ``logits``, and its weight (for tests and diagnostics)."""
        teacher = self.teacher_outputs(batch)
        return self.student.kd_loss(logits, targets, teacher), teacher.weight


class Float32Projection(nn.Module):
    """A linear layer that runs in float32 outside autocast: an online teacher's output projection."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.linear(x.float())


def with_float32_logits(teacher: nn.Module) -> nn.Module:
    """``teacher`` (float32 weights) with the output projection of each kdst decoder in it (one, or an
    ensemble's members) made a Float32Projection.  The rest of it runs under the trainer's autocast (bf16
    matrix products on a GPU), but logits out of autocast are bf16, rounded by up to 2^-9 of their size:
    0.06 at a logit of 30, a probability off by 6%, where the cache's are float32.  Other decoders (ESPnet)
    give their logits as they make them."""
    for module in list(teacher.modules()):
        if isinstance(module, TransformerDecoder) and isinstance(module.output, nn.Linear):
            module.output = Float32Projection(module.output)
    return teacher


def setup_distillation(kd: KdConfig, student: nn.Module, train_set, data: DataConfig, device: torch.device):
    """The loss model and the training dataset for the ``kd`` config section."""
    if isinstance(kd, LatticeKDConfig):
        return setup_transducer_distillation(kd, student, data, device), train_set
    if isinstance(student, Transducer):
        raise KdstError("a transducer student distils over the RNN-T lattice: its kd section takes teacher, "
                        "weight, temperature and mode")
    student_vocab = tokenizer_fingerprint(data.tokenizer)
    common = dict(weight=kd.weight, temperature=kd.temperature, t2_scale=kd.t2_scale,
                  weight_schedule=kd.weight_schedule, temperature_schedule=kd.temperature_schedule,
                  label_smoothing=kd.label_smoothing)
    if isinstance(kd, CachedWordKDConfig):
        cache = TeacherCache(kd.cache)
        check_cache_matches(cache, kd, train_set, data)
        check_cache_temperature(cache, kd)
        log.info("word-level KD from the %s cache %s (k=%d%s, %.1f bytes/token)", cache.mode, kd.cache, cache.k,
                 " plus the rest" if kd.topk_rest else "", cache.bytes_per_token())
        if cache.kept_mass is not None:
            log.info("the cache's k entries keep %.1f%% of the teacher's mass on average at T = %g%s",
                     100 * cache.kept_mass, cache.temperature,
                     " (the rest is its own class)" if kd.topk_rest else " (renormalised)")
        warning = None if kd.topk_rest else low_kept_mass_warning(cache)
        if warning:
            log.warning("%s", warning)
        return (WordKD(student, None, sampled=cache.mode == "sampled", topk_rest=kd.topk_rest, **common),
                TeacherInputs(train_set, cache=cache, rest=kd.topk_rest))

    refuse_online_whisper(kd.teacher)
    teacher = load_teachers(kd.teacher, device, kd.teacher_weights, src_text=kd.src_text)
    if teacher.data.input != "text":
        raise KdstError(f"{teacher_names(kd.teacher)}: an online teacher must be an MT model reading the transcript; "
                        f"a speech teacher distils through the top-k cache: kdst topk --teacher "
                        f"{teacher_names(kd.teacher)} --data-dir DATA --out DIR, then kd.cache: DIR")
    if tokenizer_fingerprint(teacher.data.tokenizer) != student_vocab:
        raise KdstError(f"{teacher_names(kd.teacher)}: the teacher's target tokenizer {teacher.data.tokenizer} is "
                        f"not the student's {data.tokenizer}: word-level KD needs one vocabulary (an ESPnet teacher's: "
                        f"kdst espnet-tokenizer)")
    model = with_float32_logits(teacher.model)  # float32 weights, under the trainer's autocast
    src_tokenizer = load_tokenizer(teacher.data.src_tokenizer)
    sources = DataDir(data.train).require(teacher.data.src_text)
    missing = [u for u in train_set.ids if u not in sources]
    if missing:
        raise KdstError(f"{Path(data.train) / teacher.data.src_text}: no transcript for {len(missing)} "
                        f"training utterance(s), e.g. '{missing[0]}'")
    teacher_src = {u: src_tokenizer.encode(sources[u]) for u in train_set.ids}
    log.info("word-level KD from the online teacher %s", kd.teacher)
    return WordKD(student, model, **common), TeacherInputs(train_set, teacher_src=teacher_src)


def refuse_online_whisper(references) -> None:
    """A Whisper teacher hears its own features, which the student's batches do not carry: its word-level KD goes
    through the top-k cache (one line saying how), before the model is loaded."""
    for reference in references_of(references):
        if reference.startswith("hf:") and is_whisper(reference[3:]):
            raise KdstError(f"kd.teacher {reference}: a Whisper teacher distils through the top-k cache, not online "
                            f"(it reads its own features): kdst topk --teacher {reference} --data-dir DATA "
                            "--teacher-data-dir DATA_whisper --out DIR (docs/HF_TEACHERS.md), then kd.cache: DIR")


def check_cache_temperature(cache: TeacherCache, kd: CachedWordKDConfig) -> None:
    """A sampled cache (its draws) and the rest of a top-k cache hold the teacher at the temperature they were
    made at; KD at another one would pair a teacher at one T with a student at another."""
    if kd.topk_rest and cache.mode != "topk":
        raise KdstError(f"{kd.cache}: kd.topk_rest needs a topk cache, this one is {cache.mode} "
                        "(kdst topk --mode topk)")
    if kd.topk_rest and not cache.has_rest:
        raise KdstError(f"{kd.cache}: kd.topk_rest needs the teacher's mass outside the top k (rest.bin), which "
                        "this cache, made by an older kdst, lacks: re-run the top-k stage")
    if cache.mode != "sampled" and not kd.topk_rest:
        return  # stored logits: any temperature is applied at training time
    what = "its draws are from" if cache.mode == "sampled" else "its rest is the mass of"
    made = cache.temperature
    if kd.temperature_schedule is not None:
        raise KdstError(f"{kd.cache}: made at temperature {made:g} ({what} the teacher at that T only), "
                        "kd.temperature_schedule changes T: use a renormalised topk cache")
    if not math.isclose(made, kd.temperature, rel_tol=1e-9):
        raise KdstError(f"{kd.cache}: made at temperature {made:g}, kd.temperature is {kd.temperature:g} ({what} "
                        f"the teacher at T = {made:g}): re-run the top-k stage with kdst topk --temperature "
                        f"{kd.temperature:g}")


def teacher_names(teacher: str | tuple[str, ...]) -> str:
    """``kd.teacher`` as a message names it: one reference, or an ensemble's joined by ' + '."""
    return teacher if isinstance(teacher, str) else " + ".join(teacher)


def check_cache_matches(cache: TeacherCache, kd: CachedWordKDConfig, train_set, data: DataConfig) -> None:
    """The cache must hold this training set's utterances, made from its vocabulary and texts (and teacher,
    when kd.teacher names one): a stale cache would train on another text's teacher outputs without a sign.
    The content is compared through digests the trainer recomputes: the target ids of the training set and
    the source text lines in the data dir."""
    made = cache.fingerprint
    if any(key not in made for key in ("targets", "source_text", "source")):
        raise KdstError(f"{kd.cache}: made by an older kdst, without digests of the texts it was made from: "
                        "re-run the top-k stage")
    if made.get("tokenizer") != tokenizer_fingerprint(data.tokenizer):
        teacher_vocab = made.get("tokenizer_dir") or "the teacher's tokenizer"
        raise KdstError(f"{kd.cache}: made over the vocabulary of {teacher_vocab}, the student's data.tokenizer "
                        f"{data.tokenizer} is another: word-level KD needs one vocabulary (the student adopts the "
                        "teacher's: kdst hf-tokenizer, kdst espnet-tokenizer)")
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
    if kd.teacher and made.get("teacher") != teachers_digest(kd.teacher, kd.teacher_weights):
        wrong.append(f"teacher (not {teacher_names(kd.teacher)})")
    elif kd.teacher and "prompt" in made and len(references_of(kd.teacher)) == 1:
        # the same Whisper weights with another lang= or task= are another teacher: the digest is the weights'
        prompt = reference_prompt(references_of(kd.teacher)[0].removeprefix("hf:"))
        if made["prompt"] != prompt:
            wrong.append(f"teacher's prompt (made with the decoder prompt {made['prompt']}, {kd.teacher} feeds "
                         f"{prompt}: another lang= or task=)")
    if made["targets"] != targets_digest(targets, ids):
        wrong.append(f"targets (the token ids of {Path(data.train) / data.text} differ)")
    if "features" in made:  # a speech teacher's (Whisper, an ASR model): it heard the student's audio
        try:
            sources = audio_sources(data.train)
        except DataError:
            sources = {}
        if any(utt not in sources for utt in ids) or made["source"] != source_digest(sources, ids):
            wrong.append(f"source (the audio of {data.train}, wav.scp and segments, differs)")
    else:
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
