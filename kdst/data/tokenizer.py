"""Tokenizers: sentencepiece (bpe / unigram) and characters, behind one interface.

A tokenizer lives in a directory:

    tokenizer.yaml   {type: bpe|unigram|char, vocab_size: N, user_symbols: [...]}
    tokens.txt       the token list, one token per line; the line number is the id
    sp.model         the sentencepiece model (bpe / unigram only)

Ids are the same for every type, so models and losses never care which one
produced them: 0 ``<blank>`` (padding, CTC and RNN-T blank), 1 ``<unk>``,
2 ``<sos/eos>``, then the units.  Sentencepiece is trained with exactly these
special ids, so its ids and the token list agree without any remapping.

User symbols (non-linguistic marks such as WSJ's ``<NOISE>``) are kept whole:
one unit each, never split into characters or pieces.

``type: espnet`` is an ESPnet2 token list adopted as it is (kdst.models.espnet_bridge
writes it): ``tokens.txt`` holds ESPnet's list with its last entry, ``<sos/eos>``,
moved to id 2, and text maps to pieces of ESPnet's own BPE model (``sp.model``, or
characters with ``<space>``, or words) and pieces to ids through the list, as ESPnet does;
ESPnet's sentencepiece ids are never used.

``type: hf`` is a Hugging Face tokenizer (kdst.models.hf_bridge writes it): the HF ids
permuted so that its pad, unk and eos tokens take kdst's 0, 1 and 2 and the others keep
their order (:func:`hf_order`), so id ``i`` here is HF id ``hf_order(...)[i]``.  Text maps
to ids with the tokenizer's own ``tokenizer.json`` (the ``tokenizers`` library, from
``kdst[hf]``) or, for sentencepiece tokenizers (Marian, M2M100), its ``sp.model`` and the
token list, as the HF tokenizer does, without transformers.  ``prefix``/``suffix``: the
special tokens the HF tokenizer adds to a source sentence (a language code, ``</s>``).
``prefix_space`` (Whisper): a text is encoded with a leading space, as the model writes
its transcripts (`` Hello`` is one token, ``Hello`` another), and decoded text is stripped.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol

import sentencepiece as spm
import yaml

from kdst.data.files import umask
from kdst.data.kaldi_dir import iter_entries, open_for_reading
from kdst.errors import DataError, KdstError

BLANK, UNK, SOS_EOS = "<blank>", "<unk>", "<sos/eos>"
BLANK_ID, UNK_ID, SOS_EOS_ID = 0, 1, 2
SPECIALS = (BLANK, UNK, SOS_EOS)
SPACE = "\u2581"  # sentencepiece's word boundary, reused for characters
TYPES = ("bpe", "unigram", "char")
ESPNET_SPACE = "<space>"  # the word boundary of ESPnet's char token lists


class Tokenizer(Protocol):
    tokens: list[str]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class SentencePieceTokenizer:
    def __init__(self, directory: Path):
        self.model = spm.SentencePieceProcessor(model_file=os.fspath(directory / "sp.model"))
        self.tokens = read_token_list(directory / "tokens.txt")
        if len(self.tokens) != self.model.get_piece_size():
            raise DataError(directory / "tokens.txt", f"{len(self.tokens)} tokens but sp.model has "
                                                      f"{self.model.get_piece_size()}")

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.model.decode([i for i in ids if i not in (BLANK_ID, SOS_EOS_ID)])


class CharTokenizer:
    def __init__(self, directory: Path, user_symbols: Iterable[str] = ()):
        self.tokens = read_token_list(directory / "tokens.txt")
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._symbols = _symbol_pattern(user_symbols)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, UNK_ID) for c in _char_split(" ".join(text.split()), self._symbols)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i not in (BLANK_ID, SOS_EOS_ID)).replace(SPACE, " ").strip()


class EspnetTokenizer:
    """An ESPnet2 token list (kdst order) with ESPnet's BPE model or characters (``token_type``)."""

    def __init__(self, directory: Path, token_type: str):
        self.tokens = read_token_list(directory / "tokens.txt")
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self.token_type = token_type
        if token_type == "bpe":
            self.model = spm.SentencePieceProcessor(model_file=os.fspath(directory / "sp.model"))
        elif token_type not in ("char", "word"):
            raise DataError(directory / "tokenizer.yaml", f"unsupported ESPnet token_type '{token_type}' "
                                                          f"(bpe, char, word)")

    def encode(self, text: str) -> list[int]:
        if self.token_type == "bpe":
            pieces = self.model.encode(text, out_type=str)
        elif self.token_type == "word":
            pieces = text.split()
        else:
            pieces = [ESPNET_SPACE if c == " " else c for c in text]
        return [self._ids.get(p, UNK_ID) for p in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.tokens[i] for i in ids if i not in (BLANK_ID, SOS_EOS_ID)]
        if self.token_type == "bpe":
            return self.model.decode_pieces(pieces)
        if self.token_type == "word":
            return " ".join(pieces)
        return "".join(pieces).replace(ESPNET_SPACE, " ")


def hf_order(vocab_size: int, pad: int, unk: int, eos: int) -> list[int]:
    """``order[kdst_id] = hf_id``: HF's pad, unk and eos at kdst's 0, 1, 2, the other HF ids after them in order."""
    first = (pad, unk, eos)
    return [*first, *(i for i in range(vocab_size) if i not in first)]


class HfTokenizer:
    """A Hugging Face tokenizer exported by kdst.models.hf_bridge, in kdst ids (module docstring)."""

    def __init__(self, directory: Path, config: dict):
        self.tokens = read_token_list(directory / "tokens.txt")
        special = config.get("hf_special") or {}
        try:
            self.to_hf = hf_order(len(self.tokens), special["pad"], special["unk"], special["eos"])
        except (KeyError, TypeError):
            raise DataError(directory / "tokenizer.yaml", "hf_special must give the HF ids of pad, unk and eos") from None
        self.from_hf = {h: i for i, h in enumerate(self.to_hf)}
        self.prefix, self.suffix = list(config.get("prefix") or []), list(config.get("suffix") or [])
        self.skip = {BLANK_ID, SOS_EOS_ID, *(config.get("skip") or [])}
        self.language_codes = bool(config.get("language_codes", False))
        self.clean_up_spaces = bool(config.get("clean_up_spaces", False))
        self.prefix_space = bool(config.get("prefix_space", False))
        self.backend = config.get("backend")
        if self.backend == "tokenizers":
            try:
                from tokenizers import Tokenizer as Backend
            except ImportError:
                raise KdstError(f"{directory}: a Hugging Face tokenizer needs the tokenizers package: "
                                f"pip install 'kdst[hf]'") from None
            self._backend = Backend.from_file(os.fspath(directory / "tokenizer.json"))
        elif self.backend == "sentencepiece":
            self._sp = spm.SentencePieceProcessor(model_file=os.fspath(directory / "sp.model"))
            self._ids: dict[str, int] = {}
            for i, t in enumerate(self.tokens):
                self._ids.setdefault(t, i)
        else:
            raise DataError(directory / "tokenizer.yaml", f"unknown Hugging Face tokenizer backend '{self.backend}' "
                                                          f"(tokenizers, sentencepiece)")

    def encode(self, text: str) -> list[int]:
        return [*self.prefix, *self._core(text), *self.suffix]

    def _core(self, text: str) -> list[int]:
        if self.prefix_space and text and not text.startswith(" "):
            text = " " + text
        if self.backend == "tokenizers":
            return [self.from_hf[i] for i in self._backend.encode(text, add_special_tokens=False).ids]
        code = []
        # Marian: a leading >>lang<< (multilingual targets) is one token, not sentencepiece input.
        if self.language_codes and text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[:end + 2]], text[end + 2:]
        return [self._ids.get(p, UNK_ID) for p in code + self._sp.encode(text, out_type=str)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [i for i in ids if i not in self.skip]
        if self.backend == "tokenizers":
            text = self._backend.decode([self.to_hf[i] for i in ids], skip_special_tokens=True)
            if self.prefix_space:
                text = text.strip()
        else:
            text = self._sp.decode_pieces([self.tokens[i] for i in ids]).replace(SPACE, " ").strip()
        return _clean_up_spaces(text) if self.clean_up_spaces else text


def _clean_up_spaces(text: str) -> str:
    """What HF tokenizers with ``clean_up_tokenization_spaces`` do to decoded text."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def _symbol_pattern(symbols: Iterable[str]) -> re.Pattern | None:
    symbols = sorted(set(symbols), key=len, reverse=True)  # the longest first: "<NOISE2>" before "<NOISE>"
    return re.compile("(" + "|".join(map(re.escape, symbols)) + ")") if symbols else None


def _char_split(text: str, symbols: re.Pattern | None) -> list[str]:
    """Characters of ``text`` (spaces as SPACE), user symbols whole."""
    if symbols is None:
        return list(text.replace(" ", SPACE))
    units: list[str] = []
    for i, part in enumerate(symbols.split(text)):  # odd parts are the symbols
        units += [part] if i % 2 else list(part.replace(" ", SPACE))
    return units


def read_token_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "token list missing")
    tokens = path.read_text(encoding="utf-8").splitlines()
    if tuple(tokens[:3]) != SPECIALS:
        raise DataError(path, f"the first tokens must be {', '.join(SPECIALS)}", 1)
    return tokens


def _read_texts(paths: Iterable[str | os.PathLike], kaldi_text: bool) -> list[str]:
    """Lines of plain text files, or the values of Kaldi ``text`` files (keys dropped)."""
    texts = []
    for path in paths:
        if kaldi_text:
            texts += [e.value for e in iter_entries(path)]
        else:
            texts += [line.strip() for line in read_utf8_lines(path) if line.strip()]
    if not texts:
        raise KdstError(f"no training text in {', '.join(map(str, paths))}")
    return texts


def read_utf8_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a text file, without their ends; a missing file or a line not in UTF-8 is a DataError."""
    with open_for_reading(path) as f:
        return [decode_line(raw, path, number) for number, raw in enumerate(f, start=1)]


def decode_line(raw: bytes, path: str | os.PathLike, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 (byte {e.start})", number) from None


def train_tokenizer(out_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, type: str = "bpe",
                    vocab_size: int = 1000, character_coverage: float = 1.0,
                    kaldi_text: bool = True, user_symbols: Iterable[str] = ()) -> None:
    """Train a tokenizer on text files and write it to ``out_dir`` (atomically, as a directory)."""
    if type not in TYPES:
        raise KdstError(f"unknown tokenizer type '{type}'; choose from {', '.join(TYPES)}")
    user_symbols = sorted(set(user_symbols))
    bad = [u for u in user_symbols if not u or any(c.isspace() for c in u) or u in SPECIALS]
    if bad:
        raise KdstError(f"user symbol '{bad[0]}' is empty, holds a space or is a special token")
    texts = _read_texts(inputs, kaldi_text)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private
    try:
        tokens = _char_units(texts, user_symbols) if type == "char" else \
            _train_sentencepiece(tmp, texts, type, vocab_size, character_coverage, user_symbols)
        (tmp / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
        config = {"type": type, "vocab_size": len(tokens), **({"user_symbols": user_symbols} if user_symbols else {})}
        (tmp / "tokenizer.yaml").write_text(yaml.safe_dump(config))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # a directory cannot be renamed over another: move the old one aside first
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _char_units(texts: list[str], user_symbols: list[str] = ()) -> list[str]:
    pattern = _symbol_pattern(user_symbols)
    counts = Counter(c for t in texts for c in _char_split(" ".join(t.split()), pattern) if c not in user_symbols)
    return [*SPECIALS, *user_symbols, *sorted(counts, key=lambda c: (-counts[c], c))]


def _train_sentencepiece(directory: Path, texts: list[str], type: str, vocab_size: int,
                         character_coverage: float, user_symbols: list[str] = ()) -> list[str]:
    # Training from an iterator into memory keeps file paths out of the model,
    # so the same text always gives the same bytes (and fingerprint).
    model_bytes = io.BytesIO()
    try:
        _spm_train(texts, model_bytes, type, vocab_size, character_coverage, user_symbols)
    except RuntimeError as e:  # sentencepiece reports bad settings this way, e.g. too small a vocabulary
        raise KdstError(f"sentencepiece: {str(e).split('] ')[-1]}") from None
    (directory / "sp.model").write_bytes(model_bytes.getvalue())
    model = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    return [model.id_to_piece(i) for i in range(model.get_piece_size())]


def _spm_train(texts: list[str], model_bytes: io.BytesIO, type: str, vocab_size: int,
               character_coverage: float, user_symbols: list[str] = ()) -> None:
    extra = {"user_defined_symbols": list(user_symbols)} if user_symbols else {}
    spm.SentencePieceTrainer.train(**extra,
        sentence_iterator=iter(texts), model_writer=model_bytes, model_type=type,
        vocab_size=vocab_size, character_coverage=character_coverage,
        pad_id=BLANK_ID, pad_piece=BLANK, unk_id=UNK_ID, unk_piece=UNK,
        bos_id=-1, eos_id=SOS_EOS_ID, eos_piece=SOS_EOS,
        # Small corpora cannot fill a large vocabulary: take what they give.
        hard_vocab_limit=False, num_threads=2,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2,
    )


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    directory = Path(directory)
    config_path = directory / "tokenizer.yaml"
    if not config_path.is_file():
        raise DataError(config_path, "missing: not a kdst tokenizer directory")
    config = yaml.safe_load(config_path.read_text()) or {}
    kind = config.get("type")
    if kind == "char":
        return CharTokenizer(directory, config.get("user_symbols", ()))
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer(directory)
    if kind == "espnet":
        return EspnetTokenizer(directory, config.get("token_type", "bpe"))
    if kind == "hf":
        return HfTokenizer(directory, config)
    raise DataError(config_path, f"unknown tokenizer type '{kind}'")


def tokenizer_fingerprint(directory: str | os.PathLike) -> str:
    """A digest of what defines the ids; teacher outputs record it to catch mismatches."""
    h = hashlib.sha256()
    for name in ("tokenizer.yaml", "tokens.txt", "sp.model", "tokenizer.json"):
        path = Path(directory) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]

