"""The on-disk cache of offline teacher outputs for word-level knowledge distillation (stage 6).

For every utterance and every target token the teacher's top-k vocabulary
entries are kept: either their indices and logits (mode ``topk``) or, for
sampled KD, the sampled tokens and how often each was drawn (mode
``sampled``).  A cache is a directory::

    meta.json     version, mode, k, vocab_size, dtypes, token and utterance counts, fingerprint,
                  and with rest.bin the mean mass the k entries keep (kept_mass)
    indices.bin   int16 (vocab_size <= 32767) or int32, little-endian, row-major (tokens, k)
    values.bin    float16 logits (topk) or uint16 counts (sampled), little-endian, (tokens, k)
    rest.bin      (topk, optional) float32 per token: log of the teacher's probability mass
                  outside the k entries at the cache's temperature (-inf when k = V)
    index.tsv     "<utt> <first token row> <num tokens>" per line, C-sorted by utterance id

Utterances are concatenated in C order of their ids, but readers go through
``index.tsv`` (keyed by utterance id, never by row position), and read rows
through ``np.memmap``, so a training data loader touches only the utterances
it needs.

Compactness: a token costs ``k * (2 + 2)`` bytes with a vocabulary of up to
32767 entries, 32 B for k=8 (36 B with rest.bin), against 128 B for the format FBK
published for their word-KD teacher outputs (float64 logits + int64 indices).

The rest (``rest.bin``) is what renormalising over the k entries throws away: with it
word-level KD can use the teacher's true top-k probabilities and one more class for
everything else (``kd.topk_rest``, kdst.losses.word_kd), and the cache can say how
much of the teacher's mass its k entries keep (``kept_mass``; at T > 1 top-8 may keep
a quarter of it, see ``low_kept_mass_warning``).  It depends on the temperature, which
``kdst topk`` records in the fingerprint.  Caches made before it have no rest.bin.

Logits are shift-invariant under softmax, so the writer stores each row minus
its maximum: values are <= 0, the top entry is exactly 0, and float16 is most
precise near the top entries, which carry most of the probability mass.  Values
are clamped to the float16 range (±65000) first, so a very negative (or -inf)
logit becomes a probability of effectively zero instead of overflowing.

A cache directory appears complete or not at all: the writer fills a temporary
directory beside the target and renames it into place on ``close()``.

The fingerprint says what the cache was made from.  Besides names and digests of
files, it holds digests of the *content* the teacher saw per utterance (the target
token ids, the source text): a cache made before the text was edited, even with the
same token counts, no longer matches.  These keys (``CONTENT_KEYS``) are
``content_digest``s, independent of utterance order, so the caches of split jobs
merge into the fingerprint one job over the whole data dir would have written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from kdst.data.files import atomic_path, atomic_write_text, remove_stale_temporaries, temporary_dir
from kdst.data.kaldi_dir import c_sort_key, iter_entries
from kdst.data.tokenizer import tokenizer_fingerprint
from kdst.errors import DataError, KdstError

CACHE_VERSION = 1

MODES = ("topk", "sampled")

# Largest vocabulary whose indices fit int16 (ids 0 .. 32766).
INT16_VOCAB_LIMIT = 32767

# float16's largest finite value is 65504; stay a little below so rounding never overflows to inf.
FLOAT16_LIMIT = 65000.0

COUNT_LIMIT = np.iinfo(np.uint16).max

# Explicit little-endian dtypes, so a cache written on one machine reads the same on any other.
_DTYPES = {"int16": np.dtype("<i2"), "int32": np.dtype("<i4"), "float16": np.dtype("<f2"),
           "uint16": np.dtype("<u2")}

META = "meta.json"
INDICES = "indices.bin"
VALUES = "values.bin"
REST = "rest.bin"
INDEX = "index.tsv"

REST_DTYPE = np.dtype("<f4")

# Below this mean share of the teacher's mass in the k entries, renormalised top-k KD trains on a
# distribution far from the teacher's: say so when the cache is made and when training starts.
KEPT_MASS_WARNING = 0.8

# Fingerprint keys holding a content_digest over the cache's utterances; merge_caches combines them.
CONTENT_KEYS = ("targets", "source")


def index_dtype_name(vocab_size: int) -> str:
    return "int16" if vocab_size <= INT16_VOCAB_LIMIT else "int32"


def value_dtype_name(mode: str) -> str:
    return "float16" if mode == "topk" else "uint16"


def _to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or torch tensor (on any device, any float dtype)."""
    if hasattr(array, "detach"):  # a torch tensor; duck-typed so this module does not need torch
        tensor = array.detach()
        if tensor.is_floating_point():
            tensor = tensor.float()  # bfloat16 has no numpy equivalent
        return tensor.cpu().numpy()
    return np.asarray(array)


def _normalized(fingerprint: dict) -> dict:
    """The fingerprint as it reads back from JSON (tuples become lists, keys strings)."""
    if not isinstance(fingerprint, dict):
        raise TypeError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
    return json.loads(json.dumps(fingerprint, sort_keys=True))


_MISSING = object()  # tells a key that is absent from one side from a key whose value is None


def _differing_keys(a: dict, b: dict) -> list[str]:
    return sorted(key for key in set(a) | set(b) if a.get(key, _MISSING) != b.get(key, _MISSING))


class CacheWriter:
    """Writes one cache directory; use as a context manager. Entries may come in any order.

    Entries are kept in memory in their stored (compact) dtypes and written on
    ``close()``; leaving the ``with`` block through an exception writes nothing.
    """

    def __init__(self, path: str | os.PathLike, *, k: int, vocab_size: int, mode: str = "topk",
                 fingerprint: dict, rest: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if rest and mode != "topk":
            raise ValueError("the mass outside the k entries (rest) is stored for mode topk only")
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        self.path = Path(path)
        self.k = int(k)
        self.vocab_size = int(vocab_size)
        self.mode = mode
        self.fingerprint = _normalized(fingerprint)
        self._index_dtype = _DTYPES[index_dtype_name(self.vocab_size)]
        self._value_dtype = _DTYPES[value_dtype_name(mode)]
        self.rest = bool(rest)
        self._entries: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._closed = False

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, utt: str, indices: Any, values: Any, rest: Any = None) -> None:
        """Add one utterance: ``indices`` (n, k) vocabulary ids, ``values`` (n, k) logits or counts, and with
        ``rest=True`` writers ``rest`` (n,): log of the teacher's mass outside the k entries per token."""
        if self._closed:
            raise RuntimeError(f"{self.path}: cache writer is already closed")
        if not isinstance(utt, str) or not utt or len(utt.split()) != 1 or utt.strip() != utt:
            # index.tsv is whitespace-separated, like every Kaldi file.
            raise ValueError(f"utterance id must be a non-empty string without whitespace, got {utt!r}")
        if utt in self._entries:
            raise KdstError(f"{self.path}: teacher outputs for utterance '{utt}' added twice")
        indices = _to_numpy(indices)
        values = _to_numpy(values)
        if indices.ndim != 2 or indices.shape[1] != self.k:
            raise ValueError(f"utterance '{utt}': indices must have shape (tokens, {self.k}), "
                             f"got {tuple(indices.shape)}")
        if values.shape != indices.shape:
            raise ValueError(f"utterance '{utt}': values have shape {tuple(values.shape)}, "
                             f"indices {tuple(indices.shape)}")
        self._entries[utt] = (self._check_indices(utt, indices), self._convert_values(utt, values),
                              self._check_rest(utt, rest, len(indices)))

    def _check_rest(self, utt: str, rest: Any, n: int) -> np.ndarray | None:
        if not self.rest:
            if rest is not None:
                raise ValueError(f"utterance '{utt}': rest given to a writer made without rest=True")
            return None
        if rest is None:
            raise ValueError(f"utterance '{utt}': this writer stores the rest (log mass outside the k entries)")
        rest = _to_numpy(rest).astype(np.float32)
        if rest.shape != (n,):
            raise ValueError(f"utterance '{utt}': rest must have shape ({n},), got {tuple(rest.shape)}")
        # A log-probability: <= 0 up to rounding (clipped, so that 1 - exp(rest) stays a mass), -inf allowed.
        if np.isnan(rest).any() or (rest > 1e-4).any():
            raise ValueError(f"utterance '{utt}': rest must be log-probabilities (<= 0), got max {rest.max()}")
        return np.ascontiguousarray(np.minimum(rest, 0.0), dtype=REST_DTYPE)

    def _check_indices(self, utt: str, indices: np.ndarray) -> np.ndarray:
        if indices.dtype.kind not in "iu":
            raise ValueError(f"utterance '{utt}': indices must be integers, got {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.vocab_size):
            raise ValueError(f"utterance '{utt}': indices must lie in [0, {self.vocab_size}), "
                             f"got {indices.min()} .. {indices.max()}")
        return np.ascontiguousarray(indices, dtype=self._index_dtype)

    def _convert_values(self, utt: str, values: np.ndarray) -> np.ndarray:
        if self.mode == "sampled":
            if values.dtype.kind == "f":
                if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
                    raise ValueError(f"utterance '{utt}': counts must be whole numbers")
            elif values.dtype.kind not in "iu":
                raise ValueError(f"utterance '{utt}': counts must be integers, got {values.dtype}")
            if values.size and (values.min() < 0 or values.max() > COUNT_LIMIT):
                raise ValueError(f"utterance '{utt}': counts must lie in [0, {COUNT_LIMIT}], "
                                 f"got {values.min()} .. {values.max()}")
            return np.ascontiguousarray(values, dtype=self._value_dtype)
        if values.dtype.kind not in "fiu":
            raise ValueError(f"utterance '{utt}': logits must be numbers, got {values.dtype}")
        logits = values.astype(np.float32)
        if np.isnan(logits).any():
            raise ValueError(f"utterance '{utt}': logits contain NaN")
        if logits.shape[0] == 0:
            return np.zeros(logits.shape, dtype=self._value_dtype)
        top = logits.max(axis=1, keepdims=True)
        if not np.isfinite(top).all():
            # +inf, or a row of only -inf: no distribution can be recovered from it.
            raise ValueError(f"utterance '{utt}': a token's largest logit is not finite")
        shifted = np.clip(logits - top, -FLOAT16_LIMIT, FLOAT16_LIMIT)
        return np.ascontiguousarray(shifted, dtype=self._value_dtype)

    def abort(self) -> None:
        """Drop everything added; nothing is written."""
        self._entries.clear()
        self._closed = True

    def close(self) -> None:
        """Write the cache directory atomically (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        entries = [(utt, *self._entries[utt]) for utt in sorted(self._entries, key=c_sort_key)]
        meta = _meta(self.mode, self.k, self.vocab_size, self.fingerprint,
                     kept_mass(r for *_, r in entries) if self.rest else None, rest=self.rest)
        try:
            _write_cache_dir(self.path, meta, entries)
        finally:
            self._entries.clear()


def kept_mass(rests: Iterable[np.ndarray]) -> float | None:
    """The mean over tokens of the teacher's mass in the k entries, 1 - exp(rest); None without tokens."""
    total, count = 0.0, 0
    for rest in rests:
        total += float(np.sum(-np.expm1(rest.astype(np.float64))))
        count += len(rest)
    return total / count if count else None


def _meta(mode: str, k: int, vocab_size: int, fingerprint: dict, mean_kept_mass: float | None = None,
          rest: bool = False) -> dict:
    extra = {}
    if rest:
        extra = {"rest": "float32 log of the teacher's mass outside the k entries, per token, at the "
                         "fingerprint's temperature",
                 "kept_mass": None if mean_kept_mass is None else round(mean_kept_mass, 6)}
    return {
        **extra,
        "version": CACHE_VERSION,
        "mode": mode,
        "k": k,
        "vocab_size": vocab_size,
        "index_dtype": index_dtype_name(vocab_size),
        "value_dtype": value_dtype_name(mode),
        "byte_order": "little",
        "values": "logits minus the row maximum" if mode == "topk" else "sample counts (0 = unused slot)",
        "fingerprint": fingerprint,
    }


def _write_cache_dir(path: Path, meta: dict,
                     entries: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
    """Write a cache from ``(utt, indices, values, rest)`` in C order, arrays already in the stored dtypes
    (``rest`` None unless ``meta`` has "rest").

    Everything goes into a temporary directory beside ``path`` that is renamed
    into place at the end, so readers never see a partial cache.
    """
    index_dtype = _DTYPES[meta["index_dtype"]]
    value_dtype = _DTYPES[meta["value_dtype"]]
    lines = []
    row = 0
    for utt, indices, *_ in entries:
        lines.append(f"{utt} {row} {len(indices)}\n")
        row += len(indices)
    meta = {**meta, "num_tokens": row, "num_utterances": len(entries)}

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)  # of writers killed before they could clean up
    tmp_dir = temporary_dir(path)
    try:
        _write_rows(tmp_dir / INDICES, (np.ascontiguousarray(i, dtype=index_dtype) for _, i, _, _ in entries))
        _write_rows(tmp_dir / VALUES, (np.ascontiguousarray(v, dtype=value_dtype) for _, _, v, _ in entries))
        if "rest" in meta:
            _write_rows(tmp_dir / REST, (np.ascontiguousarray(r, dtype=REST_DTYPE) for *_, r in entries))
        atomic_write_text(tmp_dir / INDEX, "".join(lines))
        atomic_write_text(tmp_dir / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _replace_dir(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _write_rows(path: Path, arrays: Iterable[np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for array in arrays:
            f.write(array.tobytes())


def _replace_dir(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``, replacing an older cache there (rename cannot replace a full directory)."""
    if not path.exists() and not path.is_symlink():
        os.rename(new, path)
        return
    if not path.is_dir() or path.is_symlink():
        raise KdstError(f"{path}: exists and is not a cache directory; remove it first")
    old = temporary_dir(path)
    os.rename(path, old / "cache")
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old / "cache", path)  # put the old cache back rather than leave nothing
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


class TeacherCache:
    """Read access to a cache directory, by utterance id.

    The .bin files are opened through ``np.memmap`` on first use (and not
    pickled), so a cache made before DataLoader workers fork or spawn works in
    each of them.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict | None = None):
        self.path = Path(path)
        meta_path = self.path / META
        if not self.path.is_dir():
            raise KdstError(f"{self.path}: no teacher cache here (run stage 6)")
        if not meta_path.is_file():
            raise KdstError(f"{meta_path}: missing, {self.path} is not a complete teacher cache (re-run stage 6)")
        self.meta = _read_meta(meta_path)
        self.mode: str = self.meta["mode"]
        self.k: int = self.meta["k"]
        self.vocab_size: int = self.meta["vocab_size"]
        self.fingerprint: dict = self.meta["fingerprint"]
        self.num_tokens: int = self.meta["num_tokens"]
        self.has_rest: bool = "rest" in self.meta
        self._index_dtype = _DTYPES[self.meta["index_dtype"]]
        self._value_dtype = _DTYPES[self.meta["value_dtype"]]
        if fingerprint is not None:
            differ = _differing_keys(self.fingerprint, _normalized(fingerprint))
            if differ:
                raise KdstError(f"{meta_path}: cache was made by another teacher/tokenizer/k: "
                                f"{', '.join(differ)} (re-run stage 6)")
        self._rows = _read_index(self.path / INDEX, self.num_tokens)
        if len(self._rows) != self.meta["num_utterances"]:
            raise KdstError(f"{self.path / INDEX}: {len(self._rows)} utterances, meta.json says "
                            f"{self.meta['num_utterances']} (re-run stage 6)")
        for name, dtype in ((INDICES, self._index_dtype), (VALUES, self._value_dtype)):
            self._check_size(self.path / name, dtype)
        if self.has_rest:
            self._check_size(self.path / REST, REST_DTYPE, per_token=1)
        self._indices: np.ndarray | None = None
        self._values: np.ndarray | None = None
        self._rest: np.ndarray | None = None

    @property
    def temperature(self) -> float:
        """The temperature the cache was made at (sampled draws, rest, kept mass); kdst made caches at 1
        before it recorded one."""
        return float(self.fingerprint.get("temperature", 1.0))

    @property
    def kept_mass(self) -> float | None:
        """The mean share of the teacher's mass in the k entries at ``temperature`` (caches with rest.bin)."""
        return self.meta.get("kept_mass")

    def _check_size(self, path: Path, dtype: np.dtype, per_token: int | None = None) -> None:
        per_token = self.k if per_token is None else per_token
        expected = self.num_tokens * per_token * dtype.itemsize
        if not path.is_file():
            raise KdstError(f"{path}: missing (re-run stage 6)")
        size = path.stat().st_size
        if size != expected:
            raise KdstError(f"{path}: {size} bytes, meta.json says {self.num_tokens} tokens x {per_token} x "
                            f"{dtype.itemsize} B = {expected} (truncated or from another run; re-run stage 6)")

    def __getstate__(self) -> dict:
        # A pickled memmap would carry the whole array; workers reopen the files instead.
        return {**self.__dict__, "_indices": None, "_values": None, "_rest": None}

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._indices is None or self._values is None:
            shape = (self.num_tokens, self.k)
            if self.num_tokens == 0:  # mmap cannot map an empty file
                self._indices = np.zeros(shape, dtype=self._index_dtype)
                self._values = np.zeros(shape, dtype=self._value_dtype)
            else:
                self._indices = np.memmap(self.path / INDICES, dtype=self._index_dtype, mode="r", shape=shape)
                self._values = np.memmap(self.path / VALUES, dtype=self._value_dtype, mode="r", shape=shape)
        return self._indices, self._values

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, utt: object) -> bool:
        return utt in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    @property
    def ids(self) -> list[str]:
        """Utterance ids in C order."""
        return list(self._rows)  # index.tsv is C-sorted and read in order

    def num_tokens_of(self, utt: str) -> int:
        return self._lookup(utt)[1]

    def _lookup(self, utt: str) -> tuple[int, int]:
        try:
            return self._rows[utt]
        except KeyError:
            raise KdstError(f"{self.path}: no teacher outputs for utterance '{utt}' "
                            "(the cache was made for another data dir?)") from None

    def _raw(self, utt: str) -> tuple[np.ndarray, np.ndarray]:
        """Views of the stored rows of ``utt`` (no copy, stored dtypes)."""
        first, n = self._lookup(utt)
        indices, values = self._open()
        return indices[first:first + n], values[first:first + n]

    def get(self, utt: str, num_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int64 (n, k), values float32 (n, k))`` of ``utt``; values are shifted logits or counts."""
        first, n = self._lookup(utt)
        if num_tokens is not None and num_tokens != n:
            raise KdstError(f"{self.path}: utterance '{utt}' has {n} cached tokens, the target has "
                            f"{num_tokens} (different tokenizer or text?)")
        indices, values = self._raw(utt)
        return np.array(indices, dtype=np.int64), np.array(values, dtype=np.float32)

    def get_rest(self, utt: str) -> np.ndarray:
        """``utt``'s float32 (n,) log teacher mass outside the k entries (caches with rest.bin)."""
        if not self.has_rest:
            raise KdstError(f"{self.path}: no rest.bin (the teacher's mass outside the top k): made by an older "
                            "kdst or in sampled mode; re-run the top-k stage (kdst topk --mode topk)")
        first, n = self._lookup(utt)
        if self._rest is None:
            self._rest = (np.zeros(0, dtype=REST_DTYPE) if self.num_tokens == 0 else
                          np.memmap(self.path / REST, dtype=REST_DTYPE, mode="r", shape=(self.num_tokens,)))
        return np.array(self._rest[first:first + n], dtype=np.float32)

    def bytes_per_token(self) -> float:
        """Bytes of indices.bin + values.bin (+ rest.bin) per cached token."""
        files = [INDICES, VALUES] + ([REST] if self.has_rest else [])
        per_token = self.k * (self._index_dtype.itemsize + self._value_dtype.itemsize)
        per_token += REST_DTYPE.itemsize if self.has_rest else 0
        if self.num_tokens == 0:
            return float(per_token)
        return sum((self.path / name).stat().st_size for name in files) / self.num_tokens


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(path, "not a JSON object")
    if meta.get("version") != CACHE_VERSION:
        raise DataError(path, f"cache version {meta.get('version')!r}, this kdst reads version {CACHE_VERSION} "
                              "(re-run stage 6)")
    for key in ("k", "vocab_size", "num_tokens", "num_utterances"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(path, f"'{key}' must be a non-negative integer, got {value!r}")
    if meta.get("mode") not in MODES:
        raise DataError(path, f"'mode' must be one of {', '.join(MODES)}, got {meta.get('mode')!r}")
    expected = {"index_dtype": index_dtype_name(meta["vocab_size"]), "value_dtype": value_dtype_name(meta["mode"]),
                "byte_order": "little"}
    for key, value in expected.items():
        if meta.get(key) != value:
            raise DataError(path, f"'{key}' is {meta.get(key)!r}, expected '{value}'")
    if not isinstance(meta.get("fingerprint"), dict):
        raise DataError(path, "'fingerprint' must be an object")
    if "rest" in meta:
        if meta["mode"] != "topk":
            raise DataError(path, "'rest' is stored for mode topk only")
        kept = meta.get("kept_mass")
        if kept is not None and (not isinstance(kept, (int, float)) or isinstance(kept, bool) or not 0 <= kept <= 1):
            raise DataError(path, f"'kept_mass' must be a number in [0, 1] or null, got {kept!r}")
    return meta


def _read_index(path: Path, num_tokens: int) -> dict[str, tuple[int, int]]:
    """``utt -> (first row, tokens)`` from index.tsv, which must be C-sorted with unique ids."""
    if not path.is_file():
        raise KdstError(f"{path}: missing (re-run stage 6)")
    rows: dict[str, tuple[int, int]] = {}
    lines: dict[str, int] = {}
    previous: bytes | None = None
    for entry in iter_entries(path):  # malformed and non-UTF-8 lines are DataErrors with their line
        utt, line, number = entry.key, f"{entry.key} {entry.value}", entry.line
        fields = entry.value.split()
        if len(fields) != 2:
            raise DataError(path, f"expected '<utt> <first row> <num tokens>', got {len(fields) + 1} fields", number)
        first_text, count_text = fields
        if not all(t.isascii() and t.isdigit() for t in (first_text, count_text)):
            raise DataError(path, f"row and token count must be non-negative integers: '{line}'", number)
        first, count = int(first_text), int(count_text)
        if first + count > num_tokens:
            raise DataError(path, f"rows {first}..{first + count} of '{utt}' run past the {num_tokens} "
                                  "tokens in meta.json", number)
        key = c_sort_key(utt)
        if previous is not None and key <= previous:
            problem = "duplicate utterance" if key == previous else "not sorted in C order at utterance"
            raise DataError(path, f"{problem} '{utt}'", number)
        previous = key
        rows[utt] = (first, count)
        lines[utt] = number
    _check_no_overlap(path, rows, lines)
    return rows


def _check_no_overlap(path: Path, rows: dict[str, tuple[int, int]], lines: dict[str, int]) -> None:
    """Two utterances sharing rows would each train on the other's teacher outputs without a sign."""
    ranges = sorted((first, count, utt) for utt, (first, count) in rows.items() if count > 0)
    for (first_a, count_a, utt_a), (first_b, count_b, utt_b) in zip(ranges, ranges[1:]):
        if first_b < first_a + count_a:
            raise DataError(path, f"rows {first_b}..{first_b + count_b} of '{utt_b}' overlap rows "
                                  f"{first_a}..{first_a + count_a} of '{utt_a}' (line {lines[utt_a]}); "
                                  "re-run stage 6", lines[utt_b])


def merge_caches(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> None:
    """Merge the caches of ``nj`` jobs into one at ``out``.

    The parts must agree on fingerprint, k, mode and vocab_size, and hold
    disjoint utterances.  Rows are copied as stored, so merging is lossless and
    gives the same files as one writer that got every utterance.
    """
    if not parts:
        raise ValueError("merge_caches needs at least one part")
    caches = [TeacherCache(part) for part in parts]
    first = caches[0]
    for cache in caches[1:]:
        if cache.has_rest != first.has_rest:
            raise KdstError(f"{cache.path / META}: {'has' if cache.has_rest else 'has no'} rest.bin and "
                            f"{first.path / META} {'has' if first.has_rest else 'has not'}; the parts come from "
                            "different runs (re-run stage 6)")
        for key in ("mode", "k", "vocab_size"):
            if cache.meta[key] != first.meta[key]:
                raise KdstError(f"{cache.path / META}: {key} is {cache.meta[key]!r}, {first.path / META} has "
                                f"{first.meta[key]!r}; the parts come from different runs (re-run stage 6)")
        differ = [key for key in _differing_keys(cache.fingerprint, first.fingerprint)
                  if key not in CONTENT_KEYS or (key in cache.fingerprint) != (key in first.fingerprint)]
        if differ:
            raise KdstError(f"{cache.path / META}: fingerprint differs from {first.path / META} in "
                            f"{', '.join(differ)}; the parts come from different runs (re-run stage 6)")
    owner: dict[str, TeacherCache] = {}
    for cache in caches:
        for utt in cache.ids:
            if utt in owner:
                raise KdstError(f"utterance '{utt}' is in two job caches: {owner[utt].path} and {cache.path}")
            owner[utt] = cache
    entries = [(utt, *owner[utt]._raw(utt), owner[utt].get_rest(utt) if first.has_rest else None)
               for utt in sorted(owner, key=c_sort_key)]
    fingerprint = {**first.fingerprint, **{key: combine_digests(cache.fingerprint[key] for cache in caches)
                                           for key in CONTENT_KEYS if key in first.fingerprint}}
    mean_kept = kept_mass(rest for *_, rest in entries) if first.has_rest else None
    _write_cache_dir(Path(out), _meta(first.mode, first.k, first.vocab_size, fingerprint, mean_kept,
                                      rest=first.has_rest), entries)


def content_digest(items: Iterable[tuple[str, str]]) -> str:
    """A digest of ``(utterance id, content)`` pairs that does not depend on their order: the XOR of one
    SHA-256 per utterance, as 64 hex digits.  Ids are unique within a cache, so no two terms cancel;
    the digests of disjoint parts combine with ``combine_digests``."""
    total = 0
    for utt, content in items:
        total ^= int.from_bytes(hashlib.sha256(f"{utt}\n{content}".encode("utf-8")).digest(), "big")
    return f"{total:064x}"


def combine_digests(digests: Iterable[str]) -> str:
    """The content_digest of the union of disjoint parts, from the parts' digests."""
    total = 0
    for digest in digests:
        total ^= int(digest, 16)
    return f"{total:064x}"


def targets_digest(targets: Mapping[str, Sequence[int]], ids: Iterable[str]) -> str:
    """The content_digest of the target token ids of ``ids`` (a dataset's ``targets``)."""
    return content_digest((utt, " ".join(map(str, targets[utt]))) for utt in ids)


def source_digest(sources: Mapping[str, str], ids: Iterable[str]) -> str:
    """The content_digest of the source text lines of ``ids`` as the data dir holds them (the teacher's input)."""
    return content_digest((utt, sources[utt]) for utt in ids)


def cache_fingerprint(teacher_digest: str, tokenizer_dir: str | Path, *, k: int, mode: str, text: str,
                      targets: str, source_text: str, source: str, temperature: float = 1.0,
                      src_tokenizer: str | Path | None = None, seed: int | None = None) -> dict:
    """What a top-k cache depends on; stored in the cache and checked by its readers.  ``teacher_digest``:
    of the file holding the teacher's weights (kdst.models.teacher.Teacher.digest); ``text`` and
    ``source_text``: the data dir's target and source file names; ``targets`` and ``source``: the
    ``targets_digest`` and ``source_digest`` of what the teacher was forced with and read;
    ``temperature``: of the sampled draws and of the rest; ``src_tokenizer``: how the teacher turned
    the source text into ids (the weights' digest does not cover that directory); ``seed``: of the
    sampled draws."""
    fingerprint = {"teacher": teacher_digest, "tokenizer": tokenizer_fingerprint(tokenizer_dir), "k": int(k),
                   "mode": mode, "text": text, "targets": targets, "source_text": source_text, "source": source,
                   "temperature": float(temperature)}
    if src_tokenizer is not None:
        fingerprint["src_tokenizer"] = tokenizer_fingerprint(src_tokenizer)
    if seed is not None:
        fingerprint["seed"] = int(seed)
    return fingerprint


def low_kept_mass_warning(cache: TeacherCache) -> str | None:
    """One line when the cache's k entries keep less than KEPT_MASS_WARNING of the teacher's mass on average
    (at the temperature the cache was made at), naming the remedies; None otherwise or when not measured."""
    kept = cache.kept_mass
    if kept is None or kept >= KEPT_MASS_WARNING:
        return None
    return (f"{cache.path}: the top {cache.k} entries keep {kept:.1%} of the teacher's probability mass on average "
            f"at T = {cache.temperature:g} (below {KEPT_MASS_WARNING:.0%}): renormalised top-k KD trains on a much "
            "sharper distribution than the teacher's; use a larger k (kdst topk --k) or kd.topk_rest: true")
