"""Whisper (``WhisperForConditionalGeneration``) as a kdst ASR teacher: ``hf:PATH`` of a Whisper model.

``hf:openai/whisper-small`` (a cached hub name or a save_pretrained dir), with ``lang=`` (the
language of the speech, default ``en`` for a multilingual model; none for an English-only one) and
``task=`` (``transcribe``, the default, or ``translate``): ``hf:DIR,lang=de``.

Features.  Whisper reads its own log-mel spectrogram, not kdst's fbank.  ``kdst hf-features
--teacher hf:PATH DATA_DIR OUT_DIR`` reads the data dir's audio (wav.scp, segments; kdst.data.audio,
each recording read once, resampled to 16 kHz) and runs the model's ``WhisperFeatureExtractor`` (80
or 128 bins) on each utterance as a user of the extractor would; OUT_DIR is the data dir with the
feats.scp and utt2num_frames of those features.  The extractor pads every utterance with silence to
its window (30 s, 3000 frames) before the log-mel, and its normalisation (the floor at the maximum
minus 8) is taken over the whole window; kdst stores the frames up to and including the first one
whose analysis window is all padding, and the teacher repeats that frame up to the window: every
later frame is computed from the same zeros, so the encoder sees the extractor's output bit for bit
while the archive holds only the speech (tests).  A segment longer than the window is refused with
a line naming it: kdst does not chunk long-form audio.  Each shard's ``<name>.hf.json`` names the
extractor, and the teacher refuses a data dir whose features are not its own (``check_data_dir``).

Prompt and vocabulary.  The decoder starts from ``<|startoftranscript|>``, the language and task
tokens and ``<|notimestamps|>``, as ``generate(language=, task=)`` feeds it; lengths count the tokens
after it.  Whisper's pad, unk and eos are all ``<|endoftext|>``: kdst's 2 (``<sos/eos>``) is
``<|endoftext|>``, and its 0 and 1 take ``<|startoftranscript|>`` and ``<|notimestamps|>``, prompt tokens
a transcript never holds.  The exported tokenizer encodes a text with a leading space, as Whisper
writes its transcripts.

Search.  ``--hf-rule`` is Whisper's short-form beam search: ``generate(language=, task=,
num_beams=K, max_new_tokens=M)``'s 1-best, with the generation config's ``suppress_tokens`` and
``begin_suppress_tokens``.  Whisper's ``generate`` returns N copies of its 1-best for
``num_return_sequences=N`` (it repeats the input, which suits sampling), so kdst's n-best is that of
the beam search inside it (``GenerationMixin.generate`` with the same prompt and processors).  No
timestamps, no temperature fallback, no language detection.

Teacher-forced logits (word-level KD of a student that adopts the exported tokenizer): the prompt
then the target tokens, logits at the target tokens and ``<|endoftext|>``: row j is the distribution
after the prompt and the first j target tokens, which the student's row j predicts after ``<sos>`` and
the same j tokens.  ``kdst topk --teacher-data-dir`` (kdst.teacher.topk) caches them, the features
joined to the student's targets by utterance id; ``audio_sources`` is what such a cache records of the
speech, and what training compares with the student's data dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from kdst.data.audio import TARGET_RATE, iter_utterances
from kdst.data.files import atomic_path, atomic_write_text, remove_stale_temporaries
from kdst.data.kaldi_dir import DataDir, iter_entries, merge_into_data_dir, require_directory, write_kv
from kdst.errors import DataError, KdstError
from kdst.models.encoder_decoder import decoder_io
from kdst.models.hf_bridge import (GenerateRule, HfSpec, HfStepDecoder, check_vocabulary, export_tokenizer,
                                   import_transformers, parse_spec, resolve, tokens_tag, weights_file)

log = logging.getLogger(__name__)
TASKS = ("transcribe", "translate")
FEATURE_FILES = ("feats.scp", "utt2num_frames", "cmvn.ark")  # not copied into a Whisper features dir


# --- features -------------------------------------------------------------------------------

def feature_extractor(model_dir: Path, where: str):
    transformers = import_transformers()
    if not (model_dir / "preprocessor_config.json").is_file():
        raise KdstError(f"{where}: no preprocessor_config.json (the model's WhisperFeatureExtractor)")
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    if extractor.sampling_rate != TARGET_RATE:
        raise KdstError(f"{where}: the feature extractor takes {extractor.sampling_rate} Hz audio, kdst reads "
                        f"{TARGET_RATE} Hz")
    if extractor.dither:
        raise KdstError(f"{where}: the feature extractor dithers (dither={extractor.dither}): its features "
                        f"would differ at every run")
    return extractor


def extractor_digest(extractor) -> str:
    """What defines the features: the extractor's settings (bins, window, hop, chunk length)."""
    return hashlib.sha256(extractor.to_json_string().encode()).hexdigest()[:16]


def kept_frames(extractor, samples: int) -> int:
    """The frames stored for an utterance of ``samples``: up to the first whose analysis window (centred,
    ``n_fft`` wide) holds only padding, every later frame being equal to it."""
    first_silent = math.ceil((samples + extractor.n_fft // 2) / extractor.hop_length)
    return min(extractor.nb_max_frames, first_silent + 1)


def log_mel(extractor, samples, utt: str, where: str):
    """(frames, bins) float32: the extractor's features of one utterance, cut after its first silent frame."""
    if len(samples) > extractor.n_samples:
        raise KdstError(f"{utt}: {len(samples) / TARGET_RATE:.2f} s ({len(samples)} samples) is longer than "
                        f"{where}'s {extractor.n_samples / TARGET_RATE:g} s window (Whisper teachers take segments "
                        f"of at most {extractor.chunk_length} s; split the recording)")
    feats = extractor(samples, sampling_rate=TARGET_RATE, return_tensors="np").input_features[0]  # (bins, frames)
    return feats[:, :kept_frames(extractor, len(samples))].T.copy()


def write_features_shard(reference: str, data_dir: str | os.PathLike, feat_dir: str | os.PathLike,
                         name: str) -> Path:
    """The Whisper features of one data dir into ``feat_dir/name.{ark,scp}`` (+ ``.utt2num_frames``, and
    ``.hf.json`` naming the extractor), as kdst.data.features.write_fbank_shard writes fbank: the scp is
    renamed into place last, and a re-run with the same audio and extractor does nothing."""
    import kaldiio
    from tqdm import tqdm

    spec = parse_spec(reference)
    where = f"hf:{spec}"
    model_dir = resolve(spec)
    extractor = feature_extractor(model_dir, where)
    data = DataDir(data_dir)
    feat_dir = Path(feat_dir).resolve()
    require_directory(feat_dir, "feature directory")
    feat_dir.mkdir(parents=True, exist_ok=True)
    ark, scp, meta = feat_dir / f"{name}.ark", feat_dir / f"{name}.scp", feat_dir / f"{name}.hf.json"
    h = hashlib.sha256(extractor_digest(extractor).encode())
    for file in ("wav.scp", "segments"):
        if data.has(file):
            h.update(data.file(file).read_bytes())
    description = {"model": str(spec), "extractor": extractor_digest(extractor), "bins": extractor.feature_size,
                   "window_frames": extractor.nb_max_frames, "source": h.hexdigest()}
    wanted = json.dumps(description, indent=1) + "\n"
    if meta.is_file() and meta.read_text() == wanted and scp.is_file():
        log.info("%s: features already computed", scp)
        return scp
    wav_scp = data.require("wav.scp")
    segments = data.segments()
    remove_stale_temporaries(feat_dir)
    meta.unlink(missing_ok=True)
    scp.unlink(missing_ok=True)
    frames: dict[str, str] = {}
    total = len(segments) if segments is not None else len(wav_scp)
    try:
        with atomic_path(scp) as scp_tmp, kaldiio.WriteHelper(f"ark,scp:{ark},{scp_tmp}") as writer:
            for utt in tqdm(iter_utterances(wav_scp, segments, data.file("wav.scp")), total=total,
                            desc=f"hf-features {name}", disable=not sys.stderr.isatty(), mininterval=2.0):
                feats = log_mel(extractor, utt.samples, f"{data.path}: utterance {utt.key}", where)
                writer(utt.key, feats)
                frames[utt.key] = str(feats.shape[0])
            write_kv(feat_dir / f"{name}.utt2num_frames", frames)
    except BaseException:
        ark.unlink(missing_ok=True)
        raise
    atomic_write_text(meta, wanted)
    log.info("%s: %d utterances", scp, len(frames))
    return scp


def finish_features_dir(data_dir: str | os.PathLike, out_dir: str | os.PathLike, scps: list[Path]) -> Path:
    """``out_dir``: the files of ``data_dir`` (texts, utt2spk, wav.scp, segments, ...) but its features,
    with feats.scp and utt2num_frames merged from the Whisper shards ``scps``."""
    source, out = Path(data_dir).resolve(), Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in FEATURE_FILES and not path.name.endswith(".tmp"):
            with atomic_path(out / path.name) as tmp:
                shutil.copyfile(path, tmp)
    merge_into_data_dir(out, scps)
    return out


def check_output_dir(data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    if Path(out_dir).resolve() == Path(data_dir).resolve():
        raise KdstError(f"{out_dir}: the Whisper features go into another data dir than {data_dir} (its feats.scp "
                        f"holds the students' features)")
    require_directory(out_dir, "output data dir")


def check_features(data_dir: str | os.PathLike, digest: str, reference: str) -> None:
    """KdstError unless every archive of the data dir's feats.scp was written by ``kdst hf-features`` with
    the extractor of digest ``digest``."""
    scp = Path(data_dir) / "feats.scp"
    fix = (f"make them with kdst hf-features --teacher {reference} DATA_DIR OUT_DIR and decode OUT_DIR")
    if not scp.is_file():
        raise DataError(scp, f"missing: {reference} reads its own log-mel features ({fix})")
    arks = {entry.value.rsplit(":", 1)[0] for entry in iter_entries(scp)}
    for ark in sorted(arks):
        meta = Path(ark).with_suffix(".hf.json")
        try:
            made = json.loads(meta.read_text()).get("extractor")
        except (OSError, ValueError):
            made = None
        if made != digest:
            what = "another model's" if made else "not Whisper features (kdst fbank's?)"
            raise DataError(scp, f"{ark} holds {what}: {reference} reads its own log-mel features ({fix})")


def audio_sources(data_dir: str | os.PathLike) -> dict[str, str]:
    """utterance -> what its speech is read from: its recording's wav.scp entry and, with segments, its start
    and end.  With the extractor's digest this is what defines its Whisper features (write_features_shard
    skips a shard on the same record), so two data dirs whose entries agree hold features of the same speech."""
    data = DataDir(data_dir)
    wav = data.require("wav.scp")
    segments = data.segments()
    if segments is None:
        return dict(wav)
    return {utt: f"{s.start!r} {s.end!r} {wav[s.recording]}" for utt, s in segments.items() if s.recording in wav}


# --- the model --------------------------------------------------------------------------------

def prompt_ids(generation_config, spec: HfSpec, where: str) -> list[int]:
    """The decoder prompt generate(language=, task=) feeds: start, language, task, no-timestamps."""
    g = generation_config
    start, no_timestamps = g.decoder_start_token_id, getattr(g, "no_timestamps_token_id", None)
    if start is None or no_timestamps is None:
        raise KdstError(f"{where}: the generation config names no decoder_start_token_id or no_timestamps_token_id "
                        f"(an outdated Whisper generation config)")
    task = spec.task or "transcribe"
    if task not in TASKS:
        raise KdstError(f"{where}: task={task}: Whisper's tasks are {', '.join(TASKS)}")
    if not getattr(g, "is_multilingual", False):
        if spec.lang or spec.task:
            raise KdstError(f"{where}: an English-only Whisper model takes no lang= or task=")
        return [int(start), int(no_timestamps)]
    lang = spec.lang or "en"
    lang_to_id, task_to_id = getattr(g, "lang_to_id", None) or {}, getattr(g, "task_to_id", None) or {}
    token = lang if lang.startswith("<|") else f"<|{lang}|>"
    if token not in lang_to_id:
        raise KdstError(f"{where}: lang={lang} is not one of the model's languages (e.g. "
                        f"{', '.join(sorted(lang_to_id)[:5])})")
    if task not in task_to_id:
        raise KdstError(f"{where}: the generation config has no task_to_id entry for {task}")
    return [int(start), int(lang_to_id[token]), int(task_to_id[task]), int(no_timestamps)]


def reference_prompt(reference: str) -> list[int]:
    """The decoder prompt ``hf:reference`` (``lang=``, ``task=``) feeds, from its generation config alone (no
    weights loaded): what a cache made by that teacher records as ``prompt``."""
    spec = parse_spec(reference)
    where, model_dir = f"hf:{reference}", resolve(spec)
    transformers = import_transformers()
    try:
        config = transformers.GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:  # no generation_config.json: generate() derives it from config.json
        config = transformers.GenerationConfig.from_model_config(
            transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True))
    return prompt_ids(config, spec, where)


class WhisperTeacher(nn.Module):
    """A Whisper model behind kdst's teacher interface, in kdst ids, reading kdst hf-features' features."""

    def __init__(self, hf_model: nn.Module, *, order: list[int], prompt: list[int], rule: GenerateRule,
                 extractor, reference: str, where: str):
        super().__init__()
        self.hf, self.where, self.generate_rule_, self.reference = hf_model, where, rule, reference
        self.vocab_size = len(order)
        self.register_buffer("to_hf", torch.tensor(order), persistent=False)
        self.prompt, self.decoder_start = prompt, prompt[0]
        self.forced_bos = None
        self.encoder_mask = False  # Whisper attends to its whole window
        self.max_positions = int(hf_model.config.max_target_positions)
        self.window, self.bins = int(extractor.nb_max_frames), int(extractor.feature_size)
        self.features_digest = extractor_digest(extractor)
        self.decoder = HfStepDecoder(self)

    def generate_rule(self) -> GenerateRule:
        return self.generate_rule_.check()

    def check_data_dir(self, data_dir: str | os.PathLike) -> None:
        """The data dir's features must be this model's (kdst hf-features), not kdst fbank's."""
        check_features(data_dir, self.features_digest, self.reference)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, window / 2, D) for stored features (B, T, bins): each utterance continued with
        its last stored frame (its first silent one) to the window, which is what the extractor computed."""
        b, t, bins = src.shape
        if bins != self.bins or t > self.window:
            raise KdstError(f"{self.where}: features of {bins} bins and up to {t} frames, the model takes {self.bins} "
                            f"bins and at most {self.window} frames (features of kdst hf-features)")
        positions = torch.arange(self.window, device=src.device)
        index = torch.minimum(positions[None, :], (src_lengths.to(src.device) - 1)[:, None])  # (B, window)
        features = src.gather(1, index[:, :, None].expand(b, self.window, bins)).transpose(1, 2)
        memory = self.hf.get_encoder()(input_features=features.to(self.hf.dtype)).last_hidden_state
        return memory, torch.full((b,), memory.shape[1], dtype=torch.long, device=memory.device)

    def decoder_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, U+1, V) in kdst order at the target tokens and <|endoftext|>, after the
        prompt; their targets, the encoder output and its lengths (as EncoderDecoder.decoder_logits)."""
        from transformers.modeling_outputs import BaseModelOutput

        memory, memory_lengths = self.encode(batch["src"], batch["src_lengths"])
        inputs, targets = decoder_io(batch["tgt"], batch["tgt_lengths"])
        if inputs.shape[1] - 1 + len(self.prompt) > self.max_positions:
            raise KdstError(f"{self.where}: a target of {inputs.shape[1] - 1} tokens does not fit the decoder's "
                            f"{self.max_positions} positions after its {len(self.prompt)}-token prompt")
        prompt = torch.tensor(self.prompt, device=inputs.device).expand(inputs.shape[0], -1)
        hf_inputs = torch.cat([prompt, self.to_hf[inputs[:, 1:]]], dim=1)
        out = self.hf(encoder_outputs=BaseModelOutput(last_hidden_state=memory), decoder_input_ids=hf_inputs,
                      use_cache=False)
        logits = out.logits[:, len(self.prompt) - 1:].index_select(-1, self.to_hf)
        return logits, targets, memory, memory_lengths


def load_whisper_teacher(spec: HfSpec, model_dir: Path, device: str | torch.device = "cpu", *, text: str = "text",
                         tokenizer: str | os.PathLike | None = None) -> tuple[WhisperTeacher, dict]:
    """The teacher in eval mode and a kdst-style config (kdst.models.hf_teacher.load_hf_teacher's): ``data`` reads speech
    features (kdst hf-features) and names the exported target tokenizer; ``tokenizer``: the student's,
    which must be the teacher's."""
    where = f"hf:{spec}"
    if spec.src_lang or spec.tgt_lang:
        raise KdstError(f"{where}: src= and tgt= are for MT models; a Whisper model takes lang= and task=")
    transformers = import_transformers()
    extractor = feature_extractor(model_dir, where)
    try:
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir, local_files_only=True,
                                                                             dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise KdstError(f"{where}: cannot load the model and tokenizer ({str(e).splitlines()[0]})") from None
    if extractor.feature_size != model.config.num_mel_bins:
        raise KdstError(f"{where}: the feature extractor gives {extractor.feature_size} bins, the model takes "
                        f"{model.config.num_mel_bins}")
    g = model.generation_config
    prompt = prompt_ids(g, spec, where)
    eos = hf_tokenizer.eos_token_id
    if eos is None or g.eos_token_id not in (eos, [eos]):
        raise KdstError(f"{where}: the generation config's eos_token_id {g.eos_token_id} is not the tokenizer's {eos}")
    vocab = model.get_output_embeddings().weight.shape[0]
    specials = (prompt[0], prompt[-1], eos)
    order = [*specials, *(i for i in range(vocab) if i not in specials)]
    rule = GenerateRule(g, {h: i for i, h in enumerate(order)}, where, prompt_len=len(prompt))
    teacher = WhisperTeacher(model, order=order, prompt=prompt, rule=rule, extractor=extractor,
                             reference=f"hf:{spec}", where=where).to(device).eval()
    tokens_dir = model_dir / "kdst_tokens" / tokens_tag(spec) / "tgt"
    data = {"input": "speech", "text": text,
            "tokenizer": str(export_tokenizer(hf_tokenizer, vocab, tokens_dir, "tgt", where, specials=specials,
                                              prefix_space=True))}
    if tokenizer is not None:
        check_vocabulary(data["tokenizer"], tokenizer)
    return teacher, {"data": data, "model": {"hf": str(spec), "model_type": "whisper"},
                     "checkpoint": str(weights_file(model_dir))}


__all__ = ["WhisperTeacher", "audio_sources", "check_features", "check_output_dir", "extractor_digest",
           "feature_extractor", "finish_features_dir", "kept_frames", "load_whisper_teacher", "log_mel", "prompt_ids",
           "reference_prompt", "write_features_shard"]
