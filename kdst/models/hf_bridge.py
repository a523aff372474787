"""Hugging Face seq2seq models (Marian/OPUS-MT, M2M100, NLLB, mBART; Whisper in kdst.models.hf_whisper)
as kdst teachers: ``hf:PATH``.

The only place kdst imports transformers (the optional extra ``kdst[hf]``).  ``PATH`` is a
directory written by ``save_pretrained`` (model and tokenizer), or a hub name such as
``Helsinki-NLP/opus-mt-en-de`` looked up in the local Hugging Face cache only: kdst never
downloads (``HF_HUB_OFFLINE`` is set before transformers is imported).  Options follow the
path after commas: ``hf:facebook/nllb-200-distilled-600M,src=eng_Latn,tgt=deu_Latn`` sets the
tokenizer's source language and the target language code forced as the first generated
token (``forced_bos_token_id``, as ``generate`` is told for NLLB, M2M100 and mBART-50); a Whisper
model takes ``lang=`` and ``task=`` instead (``hf:openai/whisper-small,lang=en``).

Vocabulary: kdst keeps ``<blank>`` 0 (padding), ``<unk>`` 1 and ``<sos/eos>`` 2; the HF
tokenizer's pad, unk and eos take those ids and every other HF id keeps its order after
them (kdst.data.tokenizer.hf_order).  The teacher's tokenizer is exported as a kdst
tokenizer directory (``type: hf``) in that order, and the wrapper translates ids at its
edges, so kdst's search, losses and caches see kdst ids only; the student adopts that
directory.  The decoder starts from the model's ``decoder_start_token_id`` (Marian: pad;
NLLB, M2M100: ``</s>``) wherever kdst feeds ``<sos>``.  A forced target language code is
the first generated token in a search (what ``generate`` does: its log-probability is 0,
and it counts in the length) and a fixed decoder prefix in teacher-forced logits, which
are returned at the positions of the target tokens and ``</s>`` only, so kdst's targets
(``tokenizer.encode(text)``) carry no language code.

Search: the wrapper's ``decoder`` has kdst's step protocol (``init_state``/``step``) over
the HF model's own forward with its ``EncoderDecoderCache`` (``past_key_values``): beams
reorder the self-attention cache, finished utterances leave both caches.  The first step feeds
the model's decoder prompt (its start token; Whisper's start, language, task and no-timestamps
tokens), as ``generate`` does, and the lengths count the tokens after it.
``GenerateRule`` is what ``--hf-rule`` (kdst.decode.search) takes from the model: the
logits processors of its generation config, applied as ``generate`` applies them, and
``generate``'s stopping rule (``early_stopping``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from kdst.data.files import atomic_path, file_digest
from kdst.data.tokenizer import BLANK, SOS_EOS, SOS_EOS_ID, UNK, hf_order, tokenizer_fingerprint
from kdst.errors import KdstError
from kdst.models.encoder_decoder import decoder_io
from kdst.models.encoders import lengths_to_mask

OPTIONS = ("src", "tgt", "lang", "task")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
NEG_INF = float("-inf")
# generate() settings that change beam search in ways --hf-rule does not reproduce, with their neutral values.
UNSUPPORTED = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
               "encoder_repetition_penalty": 1.0, "sequence_bias": None, "exponential_decay_length_penalty": None,
               "do_sample": False, "num_beam_groups": 1,
               "diversity_penalty": 0.0, "guidance_scale": None, "remove_invalid_values": False,
               "watermarking_config": None}


def import_transformers():
    """transformers, offline, or a clear error when the extra is missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # kdst never downloads a model
    try:
        import transformers
    except ImportError:
        raise KdstError("Hugging Face transformers is not installed: pip install 'kdst[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # loading bars on every teacher load
    return transformers


# --- the reference ----------------------------------------------------------------------

@dataclass(frozen=True)
class HfSpec:
    name: str  # a save_pretrained directory or a hub name
    src_lang: str | None = None
    tgt_lang: str | None = None
    lang: str | None = None  # Whisper: the language of the speech (its prompt's language token)
    task: str | None = None  # Whisper: transcribe (the default) or translate

    def options(self) -> list[tuple[str, str]]:
        values = (("src", self.src_lang), ("tgt", self.tgt_lang), ("lang", self.lang), ("task", self.task))
        return [(k, v) for k, v in values if v]

    def __str__(self) -> str:
        return ",".join([self.name, *(f"{k}={v}" for k, v in self.options())])


def parse_spec(text: str) -> HfSpec:
    """``NAME_OR_DIR[,src=LANG][,tgt=LANG]``, or for Whisper ``NAME_OR_DIR[,lang=LANG][,task=TASK]``."""
    name, *options = str(text).split(",")
    if not name:
        raise KdstError(f"hf:{text}: no model directory or hub name")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if key not in OPTIONS or not sep or not value:
            raise KdstError(f"hf:{text}: '{option}' is not an option (hf:PATH,src=LANG,tgt=LANG; Whisper: "
                            f"hf:PATH,lang=LANG,task=transcribe)")
        values[key] = value
    return HfSpec(name, values.get("src"), values.get("tgt"), values.get("lang"), values.get("task"))


def absolute_spec(text: str) -> str:
    """The spec with a local directory made absolute (a hub name stays as it is)."""
    spec = parse_spec(text)
    path = Path(spec.name).expanduser()
    return str(replace(spec, name=str(path.resolve()))) if path.exists() else str(spec)


def resolve(spec: HfSpec) -> Path:
    """The model directory: a local one, or the cached snapshot of a hub name (never downloaded)."""
    path = Path(spec.name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise KdstError(f"{path}: no config.json (a Hugging Face model directory written by save_pretrained)")
        return path.resolve()
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise KdstError(f"{spec.name}: no such model directory")
    import_transformers()
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(spec.name, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or a malformed name
        raise KdstError(f"hf:{spec.name}: not a local directory and not in the Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}); kdst never downloads: fetch it first "
                        f"(huggingface-cli download {spec.name}) or give a save_pretrained directory") from None


def weights_file(model_dir: Path) -> Path:
    """The file whose digest teacher outputs record (a sharded model's index)."""
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise KdstError(f"{model_dir}: no model weights ({', '.join(WEIGHT_FILES)})")


def teacher_digest(text: str) -> str:
    return file_digest(weights_file(resolve(parse_spec(text))))


# --- the vocabulary ---------------------------------------------------------------------

def special_ids(tokenizer, where) -> tuple[int, int, int]:
    ids = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id)
    if None in ids or len(set(ids)) != 3:
        raise KdstError(f"{where}: the tokenizer needs distinct pad, unk and eos tokens for kdst's ids "
                        f"(pad {ids[0]}, unk {ids[1]}, eos {ids[2]})")
    return ids  # type: ignore[return-value]


def _token_names(tokenizer, vocab_size: int) -> list[str]:
    """HF's token strings by HF id; ids beyond the tokenizer (a padded output layer) get placeholders."""
    names = []
    for i in range(vocab_size):
        name = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        # One token a line: a name that is empty or would break the line gets a placeholder (ids are by line).
        if not name or len(f"{name}x".splitlines()) != 1 or name != name.strip():
            name = f"<hf_{i}>"
        names.append(name)
    return names


def _source_specials(tokenizer, where) -> tuple[list[int], list[int]]:
    """The HF ids the tokenizer puts before and after a source sentence (a language code, </s>)."""
    probe = "kdst probe sentence"
    full = tokenizer(probe).input_ids
    core = tokenizer(probe, add_special_tokens=False).input_ids
    for start in range(len(full) - len(core) + 1):
        if core and full[start:start + len(core)] == core:
            return full[:start], full[start + len(core):]
    raise KdstError(f"{where}: cannot tell the tokenizer's special tokens from its encoding of '{probe}'")


def export_tokenizer(tokenizer, vocab_size: int, out_dir: str | os.PathLike, side: str, where, *,
                     specials: tuple[int, int, int] | None = None, prefix_space: bool = False) -> Path:
    """The HF tokenizer as a kdst tokenizer dir (``type: hf``, kdst.data.tokenizer) for the target (``tgt``)
    or source (``src``) side, ``vocab_size`` ids (the model's embedding or output size).  ``specials``: the HF
    ids that take kdst's 0, 1, 2 (default: the tokenizer's pad, unk, eos); ``prefix_space``: targets are
    encoded with a leading space, as the model writes them (Whisper).  Idempotent: an identical directory is
    left alone, so its fingerprint does not move."""
    pad, unk, eos = specials or special_ids(tokenizer, where)
    if len(tokenizer) > vocab_size:
        raise KdstError(f"{where}: the tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    order = hf_order(vocab_size, pad, unk, eos)
    to_kdst = {h: i for i, h in enumerate(order)}
    names = _token_names(tokenizer, vocab_size)
    tokens = [BLANK, UNK, SOS_EOS, *(names[h] for h in order[3:])]
    prefix, suffix = _source_specials(tokenizer, where) if side == "src" else ([], [])
    config = {"type": "hf", "vocab_size": vocab_size, "hf_special": {"pad": pad, "unk": unk, "eos": eos},
              "prefix": [to_kdst[i] for i in prefix], "suffix": [to_kdst[i] for i in suffix],
              "skip": sorted(to_kdst[i] for i in tokenizer.all_special_ids if i < vocab_size),
              "clean_up_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))}
    if prefix_space:
        config["prefix_space"] = True
    wanted = {"tokens.txt": "\n".join(tokens).encode() + b"\n"}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        config["backend"] = "tokenizers"
        wanted["tokenizer.json"] = backend.to_str().encode()
    else:
        spm_file = _sentencepiece_file(tokenizer, side, where)
        config.update(backend="sentencepiece", language_codes=bool(getattr(tokenizer, "supported_language_codes", [])))
        wanted["sp.model"] = Path(spm_file).read_bytes()
    wanted["tokenizer.yaml"] = yaml.safe_dump(config).encode()
    out = Path(out_dir)
    if out.is_dir() and all((out / n).is_file() and (out / n).read_bytes() == b for n, b in wanted.items()):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name, data in wanted.items():  # each file whole or not at all: a stopped export is redone
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    return out


def _sentencepiece_file(tokenizer, side: str, where) -> str:
    """The sentencepiece model of a tokenizer without a tokenizers backend (Marian: source/target, M2M100)."""
    if getattr(tokenizer, "separate_vocabs", False):
        raise KdstError(f"{where}: Marian models with separate source and target vocabularies are not supported")
    files = getattr(tokenizer, "spm_files", None)  # Marian: [source, target]
    path = files[0 if side == "src" else 1] if files else getattr(tokenizer, "spm_file", None)
    if not path or not Path(path).is_file():
        raise KdstError(f"{where}: {type(tokenizer).__name__} is neither a fast (tokenizer.json) nor a "
                        f"sentencepiece tokenizer kdst can export")
    return str(path)


def check_vocabulary(teacher_tokenizer: str | os.PathLike, student_tokenizer: str | os.PathLike) -> None:
    if tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(student_tokenizer):
        raise KdstError(f"the Hugging Face teacher's vocabulary {Path(teacher_tokenizer) / 'tokens.txt'} is not the "
                        f"student's {Path(student_tokenizer) / 'tokens.txt'}: the student must adopt the teacher's "
                        f"exported tokenizer (kdst hf-tokenizer)")


# --- generate()'s rules -------------------------------------------------------------------

class GenerateRule:
    """The parts of ``generate(num_beams=K)`` that kdst's search takes under ``--hf-rule``, read from the
    model's generation config: its logits processors (applied to the log-probabilities, in generate's
    order, no renormalisation unless ``renormalize_logits``) and its ``early_stopping`` rule.  The forced
    first token is the step's own (HfStepDecoder), so it applies under every rule.  ``prompt_len``: the
    decoder prompt's tokens (1: the start token; Whisper: 4), which ``min_length`` counts;
    ``forced_bos``: a forced first token, after which ``begin_suppress_tokens`` apply (generate's
    ``begin_index``)."""

    def __init__(self, generation_config, to_kdst: dict[int, int], where, *, prompt_len: int = 1,
                 forced_bos: bool = False):
        g = generation_config
        self.where = where
        self.early_stopping = g.early_stopping
        self.prompt_len = prompt_len
        self.min_length, self.min_new_tokens = int(g.min_length or 0), int(g.min_new_tokens or 0)
        self.suppress = sorted(to_kdst[i] for i in (g.suppress_tokens or []) if i in to_kdst)
        self.begin_suppress = sorted(to_kdst[i] for i in (g.begin_suppress_tokens or []) if i in to_kdst)
        self.begin_step = 1 if prompt_len == 1 and forced_bos else 0
        self.unsupported = [f"{name}={getattr(g, name)!r}" for name, neutral in UNSUPPORTED.items()
                            if getattr(g, name, neutral) not in (neutral, None)]
        bad = [list(words) for words in (g.bad_words_ids or [])]
        if any(len(words) != 1 for words in bad):
            self.unsupported.append(f"bad_words_ids={g.bad_words_ids!r} (only single tokens)")
        self.bad = sorted(to_kdst[w[0]] for w in bad if len(w) == 1 and w[0] in to_kdst)
        forced_eos = g.forced_eos_token_id
        forced_eos = [forced_eos] if isinstance(forced_eos, int) else list(forced_eos or [])
        if any(to_kdst.get(i) != SOS_EOS_ID for i in forced_eos):
            self.unsupported.append(f"forced_eos_token_id={g.forced_eos_token_id!r} (not the tokenizer's eos)")
        self.forced_eos = bool(forced_eos)
        self.renormalize = bool(g.renormalize_logits)

    def check(self) -> "GenerateRule":
        if self.unsupported:
            raise KdstError(f"{self.where}: --hf-rule cannot reproduce generate() with this generation config: "
                            f"{', '.join(self.unsupported)}")
        return self

    def process(self, logp: torch.Tensor, t: int, at_last: torch.Tensor) -> None:
        """In place, on the log-probabilities (N, V) of step ``t`` (``t`` tokens generated so far);
        ``at_last`` (N,): rows whose step this is the last of their max length."""
        if self.bad:
            logp[:, self.bad] = NEG_INF
        if t + self.prompt_len < self.min_length or t < self.min_new_tokens:  # min_length counts the prompt
            logp[:, SOS_EOS_ID] = NEG_INF
        if self.forced_eos and bool(at_last.any()):
            logp.masked_fill_(at_last[:, None], NEG_INF)
            logp[:, SOS_EOS_ID].masked_fill_(at_last, 0.0)
        if self.suppress:
            logp[:, self.suppress] = NEG_INF
        if self.begin_suppress and t == self.begin_step:
            logp[:, self.begin_suppress] = NEG_INF
        if self.renormalize:
            logp.copy_(logp.log_softmax(dim=-1))

    def done(self, best_live: torch.Tensor, worst_finished: torch.Tensor, t: int, max_lens: torch.Tensor,
             length_penalty: float) -> torch.Tensor:
        """generate()'s stop per utterance after step ``t``, from the best live beam's raw score and the worst
        of the K finished (-inf until there are K): ``early_stopping`` True, as soon as K hypotheses are
        finished; False (the default), when the best live beam's score at its current length would not
        beat the worst of them; ``"never"``, the same at the max length.  With one beam and False or True
        this stops at the first <eos> that ranks first, as generate()'s greedy search does (the live beam
        ranks below it at the same length); "never" with one beam is not greedy search."""
        if self.early_stopping is True:
            return worst_finished > NEG_INF
        if self.early_stopping == "never" and length_penalty > 0:
            length = max_lens.to(torch.float64).pow(length_penalty).float()
        else:
            length = float((t + 1) ** length_penalty)
        return best_live / length <= worst_finished


# --- the model ----------------------------------------------------------------------------

class HfState:
    """kdst's decoder-state protocol (reorder_, select) over HF's cache: N = A utterances x ``group`` rows.
    The encoder output and its mask are kept per row, as the HF decoder takes them."""

    def __init__(self, cache, memory: torch.Tensor, mask: torch.Tensor, group: int, length: int = 0):
        self.cache, self.memory, self.mask, self.group, self.length = cache, memory, mask, group, length

    def reorder_(self, rows: torch.Tensor, moved: torch.Tensor | None = None) -> None:
        # The cross-attention cache is the same for every beam of an utterance: only self-attention moves.
        if self.length:
            self.cache.self_attention_cache.reorder_cache(rows)

    def select(self, rows: torch.Tensor, utterances: torch.Tensor | None = None) -> "HfState":
        if utterances is None and self.group != 1:
            raise ValueError("select() on a state with several rows per utterance needs the utterances")
        if self.length:
            self.cache.self_attention_cache.batch_select_indices(rows)
            self.cache.cross_attention_cache.batch_select_indices(rows)
        return HfState(self.cache, self.memory.index_select(0, rows), self.mask.index_select(0, rows), self.group,
                       self.length)


class HfStepDecoder(nn.Module):
    """One decoder step of the HF model at a time, in kdst ids, for kdst's searches."""

    def __init__(self, teacher: "HfSeq2SeqTeacher"):
        super().__init__()
        self.teacher = [teacher]  # not a submodule: the teacher owns the weights

    def init_state(self, memory: torch.Tensor, memory_mask: torch.Tensor, group: int = 1,
                   capacity: int = 64) -> HfState:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        return HfState(cache, memory.repeat_interleave(group, 0), memory_mask.repeat_interleave(group, 0), group)

    def step(self, tokens: torch.Tensor, state: HfState) -> tuple[torch.Tensor, HfState]:
        """Logits (N, V) in kdst order for the token after ``tokens`` (N,, kdst ids; the first step's
        are <sos> and become the model's decoder start token)."""
        from transformers.modeling_outputs import BaseModelOutput

        teacher = self.teacher[0]
        if state.length == 0:  # the decoder prompt, as generate() feeds it
            hf_tokens = torch.tensor(teacher.prompt, device=tokens.device).expand(tokens.shape[0], -1)
        else:
            hf_tokens = teacher.to_hf[tokens][:, None]
            if teacher.max_positions and state.length + len(teacher.prompt) >= teacher.max_positions:
                raise KdstError(f"{teacher.where}: the decoder takes {teacher.max_positions} positions, its prompt "
                                f"{len(teacher.prompt)}: give at most {teacher.max_positions - len(teacher.prompt)} "
                                f"tokens (--max-len-bias with --max-len-ratio 0)")
        mask = {"attention_mask": state.mask} if teacher.encoder_mask else {}
        out = teacher.hf(encoder_outputs=BaseModelOutput(last_hidden_state=state.memory), decoder_input_ids=hf_tokens,
                         cache=state.cache, use_cache=True, **mask)
        logits = out.logits[:, -1].index_select(-1, teacher.to_hf)
        if state.length == 0 and teacher.forced_bos is not None:
            # generate()'s forced first token: log-probability 0, every other token impossible.
            logits = torch.full_like(logits, NEG_INF)
            logits[:, teacher.forced_bos] = 0.0
        state.length += 1
        return logits, state


class HfSeq2SeqTeacher(nn.Module):
    """An HF ``AutoModelForSeq2SeqLM`` behind kdst's teacher interface, in kdst ids."""

    def __init__(self, hf_model: nn.Module, *, order: list[int], src_order: list[int], forced_bos: int | None,
                 rule: GenerateRule, where):
        super().__init__()
        self.hf, self.where, self.generate_rule_ = hf_model, where, rule
        self.vocab_size = len(order)
        self.register_buffer("to_hf", torch.tensor(order), persistent=False)
        self.register_buffer("src_to_hf", torch.tensor(src_order), persistent=False)
        to_kdst = {h: i for i, h in enumerate(order)}
        config = hf_model.generation_config
        start = config.decoder_start_token_id
        if start is None:
            start = hf_model.config.decoder_start_token_id
        if start is None:
            raise KdstError(f"{where}: the model names no decoder_start_token_id")
        self.decoder_start = int(start)
        self.prompt = [self.decoder_start]  # HF ids fed before the first generated token
        self.encoder_mask, self.max_positions = True, None
        self.forced_bos = None if forced_bos is None else to_kdst[forced_bos]  # kdst id
        self.forced_bos_hf = forced_bos
        self.pad_hf = order[0]
        self.decoder = HfStepDecoder(self)

    def generate_rule(self) -> GenerateRule:
        """What ``--hf-rule`` follows (a clear error for generation configs it cannot reproduce)."""
        return self.generate_rule_.check()

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, S, D) for kdst source ids (B, S) and their lengths."""
        mask = lengths_to_mask(src_lengths, src.shape[1])
        ids = self.src_to_hf[src].masked_fill(~mask, self.pad_hf)
        out = self.hf.get_encoder()(input_ids=ids, attention_mask=mask.long())
        return out.last_hidden_state, src_lengths

    def decoder_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, U+1, V) in kdst order at the target tokens and </s> (the model's own
        forward, after its start token and any forced language code), their targets, the encoder output
        and its lengths, as kdst's EncoderDecoder.decoder_logits."""
        from transformers.modeling_outputs import BaseModelOutput

        memory, memory_lengths = self.encode(batch["src"], batch["src_lengths"])
        inputs, targets = decoder_io(batch["tgt"], batch["tgt_lengths"])
        hf_inputs = self.to_hf[inputs]
        hf_inputs[:, 0] = self.decoder_start
        skip = 0
        if self.forced_bos_hf is not None:
            hf_inputs = torch.cat([hf_inputs[:, :1], torch.full_like(hf_inputs[:, :1], self.forced_bos_hf),
                                   hf_inputs[:, 1:]], dim=1)
            skip = 1
        mask = lengths_to_mask(memory_lengths, memory.shape[1]).long()
        out = self.hf(encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=mask,
                      decoder_input_ids=hf_inputs, use_cache=False)
        return out.logits[:, skip:].index_select(-1, self.to_hf), targets, memory, memory_lengths


def _language_token(tokenizer, lang: str, where) -> int:
    """The id of a target language code: the token itself (NLLB eng_Latn, mBART de_DE) or M2M100's __de__."""
    for name in (lang, f"__{lang}__"):
        i = tokenizer.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tokenizer.unk_token_id:
            return i
    raise KdstError(f"{where}: tgt={lang} is not a language code of the tokenizer")


def load_seq2seq_teacher(spec: HfSpec, model_dir: Path, device: str | torch.device = "cpu", *,
                         src_text: str = "text.en", text: str = "text",
                         tokenizer: str | os.PathLike | None = None) -> tuple[HfSeq2SeqTeacher, dict]:
    """A seq2seq MT teacher in eval mode and a kdst-style config: ``data`` names the kdst tokenizer dirs
    (exported into ``<model dir>/kdst_tokens/<languages>/``), the input kind and the data dir's text files;
    ``checkpoint`` is the weights file (teacher outputs record its digest).  ``tokenizer``: the student's
    target tokenizer, which must be the teacher's (clear error naming both).  kdst.models.hf_teacher
    chooses between this and Whisper's loader."""
    where = f"hf:{spec}"
    transformers = import_transformers()
    if spec.lang or spec.task:
        raise KdstError(f"{where}: lang= and task= are Whisper's options (an MT model takes src= and tgt=)")
    try:
        with warnings.catch_warnings():  # Marian's tokenizer asks for sacremoses, which it does not use to tokenize
            warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
            hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True,
                                                                   dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise KdstError(f"{where}: cannot load the model and tokenizer ({str(e).splitlines()[0]})") from None
    if spec.src_lang:
        if not hasattr(hf_tokenizer, "src_lang"):
            raise KdstError(f"{where}: src={spec.src_lang}: this tokenizer has no source language")
        hf_tokenizer.src_lang = spec.src_lang
    forced_bos = model.generation_config.forced_bos_token_id
    if spec.tgt_lang:
        forced_bos = _language_token(hf_tokenizer, spec.tgt_lang, where)
        if hasattr(hf_tokenizer, "tgt_lang"):
            hf_tokenizer.tgt_lang = spec.tgt_lang
    vocab = model.get_output_embeddings().weight.shape[0]
    src_vocab = model.get_encoder().get_input_embeddings().weight.shape[0]
    pad, unk, eos = special_ids(hf_tokenizer, where)
    eos_config = model.generation_config.eos_token_id
    if eos_config not in (eos, [eos], None):
        raise KdstError(f"{where}: the generation config's eos_token_id {eos_config} is not the tokenizer's {eos}")
    order, src_order = hf_order(vocab, pad, unk, eos), hf_order(src_vocab, pad, unk, eos)
    rule = GenerateRule(model.generation_config, {h: i for i, h in enumerate(order)}, where,
                        forced_bos=forced_bos is not None)
    teacher = HfSeq2SeqTeacher(model, order=order, src_order=src_order, forced_bos=forced_bos, rule=rule,
                               where=where).to(device).eval()
    tag = tokens_tag(spec)
    tokens_dir = model_dir / "kdst_tokens" / tag
    data = {"input": "text", "text": text, "src_text": src_text,
            "tokenizer": str(export_tokenizer(hf_tokenizer, vocab, tokens_dir / "tgt", "tgt", where)),
            "src_tokenizer": str(export_tokenizer(hf_tokenizer, src_vocab, tokens_dir / "src", "src", where))}
    if tokenizer is not None:
        check_vocabulary(data["tokenizer"], tokenizer)
    return teacher, {"data": data, "model": {"hf": str(spec), "model_type": model_type(model_dir)},
                     "checkpoint": str(weights_file(model_dir))}


def tokens_tag(spec: HfSpec) -> str:
    """The directory under ``<model dir>/kdst_tokens`` of the tokenizers of a spec's options."""
    return "_".join(f"{k}-{v}" for k, v in spec.options()) or "default"


def model_type(model_dir: Path) -> str | None:
    """The ``model_type`` of a saved model's config.json (``whisper``, ``marian``, ``m2m_100`` ...)."""
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")


__all__ = ["GenerateRule", "HfSeq2SeqTeacher", "absolute_spec", "check_vocabulary", "export_tokenizer",
           "import_transformers", "load_seq2seq_teacher", "model_type", "parse_spec", "resolve", "teacher_digest"]
