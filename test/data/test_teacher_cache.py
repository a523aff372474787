"""The stage-6 cache of teacher top-k outputs: format, random access, merging, and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdst.data.teacher_cache import (CacheWriter, TeacherCache, combine_digests, content_digest,
                                     low_kept_mass_warning, merge_caches, targets_digest)
from kdst.errors import DataError, KdstError

FINGERPRINT = {"teacher": "sha256:aaaa", "tokenizer": "sha256:bbbb", "k": 8, "text": "data/train/text"}


def fake_outputs(seed: int, n: int, k: int = 8, vocab: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Top-k style outputs: distinct indices per row, logits sorted descending."""
    rng = np.random.default_rng(seed)
    indices = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(n)]) if n else \
        np.zeros((0, k), dtype=np.int64)
    logits = -np.sort(-rng.normal(0.0, 5.0, size=(n, k)), axis=1) + 3.0
    return indices.astype(np.int64), logits.astype(np.float32)


def utterances(count: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {f"spk{i % 2}-utt{i:03d}": fake_outputs(i, n=3 + i) for i in range(count)}


def write(path: Path, entries: dict, **kwargs) -> None:
    options = {"k": 8, "vocab_size": 1000, "fingerprint": FINGERPRINT, **kwargs}
    with CacheWriter(path, **options) as writer:
        for utt, (indices, values) in entries.items():
            writer.add(utt, indices, values)


def assert_logits_match(stored: np.ndarray, logits: np.ndarray) -> None:
    expected = logits - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)


def test_topk_round_trip(tmp_path: Path):
    entries = utterances()
    write(tmp_path / "cache", entries)
    cache = TeacherCache(tmp_path / "cache", fingerprint=FINGERPRINT)
    assert (cache.k, cache.vocab_size, cache.mode, cache.fingerprint) == (8, 1000, "topk", FINGERPRINT)
    assert len(cache) == len(entries) and cache.ids == sorted(entries)
    assert "spk0-utt000" in cache and "nope" not in cache
    for utt, (indices, logits) in entries.items():
        got_indices, got_values = cache.get(utt, num_tokens=len(indices))
        assert got_indices.dtype == np.int64 and got_values.dtype == np.float32
        np.testing.assert_array_equal(got_indices, indices)
        assert_logits_match(got_values, logits)
        assert np.all(got_values <= 0) and np.all(got_values.max(axis=1) == 0)
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["index_dtype"] == "int16" and meta["value_dtype"] == "float16"
    assert meta["num_tokens"] == sum(len(i) for i, _ in entries.values())
    assert (tmp_path / "cache" / "index.tsv").read_text().splitlines()[0] == "spk0-utt000 0 3"


def test_bytes_per_token_is_32_for_k8(tmp_path: Path):
    write(tmp_path / "cache", utterances())
    assert TeacherCache(tmp_path / "cache").bytes_per_token() == 32.0  # FBK's float64+int64 format: 128


def test_sampled_mode_and_torch_input(tmp_path: Path):
    indices = torch.tensor([[5, 9, 0], [7, 0, 0]])
    counts = torch.tensor([[3, 1, 0], [4, 0, 0]])  # 0 = unused slot
    with CacheWriter(tmp_path / "cache", k=3, vocab_size=10, mode="sampled", fingerprint={"k": 3}) as writer:
        writer.add("u1", indices, counts)
    cache = TeacherCache(tmp_path / "cache")
    assert cache.mode == "sampled" and cache.meta["value_dtype"] == "uint16"
    got_indices, got_counts = cache.get("u1")
    np.testing.assert_array_equal(got_indices, indices.numpy())
    np.testing.assert_array_equal(got_counts, counts.numpy().astype(np.float32))
    assert cache.bytes_per_token() == 12.0


def test_large_vocabulary_uses_int32_indices(tmp_path: Path):
    indices = np.array([[40000, 0], [32767, 39999]])
    logits = np.array([[1.0, -1.0], [2.0, 0.5]], dtype=np.float32)
    with CacheWriter(tmp_path / "cache", k=2, vocab_size=40001, fingerprint={}) as writer:
        writer.add("u", indices, logits)
    cache = TeacherCache(tmp_path / "cache")
    assert cache.meta["index_dtype"] == "int32"
    got_indices, got_values = cache.get("u")
    np.testing.assert_array_equal(got_indices, indices)
    assert_logits_match(got_values, logits)
    assert cache.bytes_per_token() == 2 * (4 + 2)


def test_extreme_logits_are_clamped_not_inf(tmp_path: Path):
    logits = np.array([[1e6, -1e6, -np.inf]], dtype=np.float32)
    with CacheWriter(tmp_path / "cache", k=3, vocab_size=10, fingerprint={}) as writer:
        writer.add("u", np.array([[1, 2, 3]]), logits)
    _, values = TeacherCache(tmp_path / "cache").get("u")
    assert np.all(np.isfinite(values)) and values[0, 0] == 0 and values[0, 2] <= -65000 + 64


def test_random_access_does_not_depend_on_write_order(tmp_path: Path):
    entries = utterances()
    write(tmp_path / "forward", entries)
    write(tmp_path / "backward", dict(reversed(list(entries.items()))))
    for name in ("indices.bin", "values.bin", "index.tsv", "meta.json"):
        assert (tmp_path / "forward" / name).read_bytes() == (tmp_path / "backward" / name).read_bytes()
    cache = TeacherCache(tmp_path / "backward")
    for utt in ["spk1-utt005", "spk0-utt000", "spk1-utt003"]:
        np.testing.assert_array_equal(cache.get(utt)[0], entries[utt][0])


def with_content(entries: dict) -> dict:
    """FINGERPRINT with digests of the entries' content, as kdst topk writes it for the utterances it saw."""
    targets = {utt: indices[:, 0].tolist() for utt, (indices, _) in entries.items()}
    return {**FINGERPRINT, "targets": targets_digest(targets, entries),
            "source": content_digest((utt, f"source of {utt}") for utt in entries)}


def test_merge_of_two_parts_equals_single_write(tmp_path: Path):
    """Also the fingerprint: the parts' content digests combine into the one of a single job."""
    entries = utterances()
    items = list(entries.items())
    write(tmp_path / "1", dict(items[::2]), fingerprint=with_content(dict(items[::2])))
    write(tmp_path / "2", dict(items[1::2]), fingerprint=with_content(dict(items[1::2])))
    write(tmp_path / "single", entries, fingerprint=with_content(entries))
    assert TeacherCache(tmp_path / "1").fingerprint["targets"] != TeacherCache(tmp_path / "2").fingerprint["targets"]
    merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")
    for name in ("indices.bin", "values.bin", "index.tsv", "meta.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()


def test_content_digest_depends_on_content_not_order():
    pairs = [("a", "1 2 3"), ("b", "4 5"), ("c", "")]
    digest = content_digest(pairs)
    assert len(digest) == 64 and digest == content_digest(reversed(pairs))
    assert digest == combine_digests([content_digest(pairs[:1]), content_digest(pairs[1:])])
    assert content_digest([("a", "1 2 4"), *pairs[1:]]) != digest  # one token of one utterance
    assert content_digest([("a", "4 5"), ("b", "1 2 3"), pairs[2]]) != digest  # texts swapped between utterances
    assert content_digest([]) == "0" * 64


def test_merge_rejects_content_digest_in_one_part_only(tmp_path: Path):
    items = list(utterances().items())
    write(tmp_path / "1", dict(items[:3]), fingerprint=with_content(dict(items[:3])))
    write(tmp_path / "2", dict(items[3:]))
    with pytest.raises(KdstError, match=r"2/meta.json: fingerprint differs .* in source, targets"):
        merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")


def test_merge_rejects_different_fingerprint(tmp_path: Path):
    items = list(utterances().items())
    write(tmp_path / "1", dict(items[:3]))
    write(tmp_path / "2", dict(items[3:]), fingerprint={**FINGERPRINT, "teacher": "sha256:cccc"})
    with pytest.raises(KdstError, match=r"2/meta.json: fingerprint differs .* in teacher"):
        merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_rejects_utterance_in_two_parts(tmp_path: Path):
    items = list(utterances().items())
    write(tmp_path / "1", dict(items[:4]))
    write(tmp_path / "2", dict(items[3:]))
    with pytest.raises(KdstError, match=rf"utterance '{items[3][0]}' is in two job caches"):
        merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")


def test_fingerprint_mismatch_names_differing_keys(tmp_path: Path):
    write(tmp_path / "cache", utterances(2))
    other = {**FINGERPRINT, "k": 4, "tokenizer": "sha256:dddd"}
    with pytest.raises(KdstError, match=r"cache/meta.json: cache was made by another teacher/tokenizer/k: "
                                        r"k, tokenizer \(re-run stage 6\)"):
        TeacherCache(tmp_path / "cache", fingerprint=other)


def test_missing_cache_and_missing_utterance(tmp_path: Path):
    with pytest.raises(KdstError, match="nowhere"):
        TeacherCache(tmp_path / "nowhere")
    write(tmp_path / "cache", utterances(2))
    cache = TeacherCache(tmp_path / "cache")
    with pytest.raises(KdstError, match=r"no teacher outputs for utterance 'other' \(the cache was made for"):
        cache.get("other")


def test_token_count_mismatch(tmp_path: Path):
    write(tmp_path / "cache", utterances(2))
    with pytest.raises(KdstError, match=r"utterance 'spk0-utt000' has 3 cached tokens, the target has 5"):
        TeacherCache(tmp_path / "cache").get("spk0-utt000", num_tokens=5)


def test_truncated_bin_is_named(tmp_path: Path):
    write(tmp_path / "cache", utterances(3))
    values = tmp_path / "cache" / "values.bin"
    values.write_bytes(values.read_bytes()[:-2])
    with pytest.raises(KdstError, match=r"values.bin: \d+ bytes, meta.json says"):
        TeacherCache(tmp_path / "cache")


def test_bad_index_line_has_line_number(tmp_path: Path):
    write(tmp_path / "cache", utterances(3))
    index = tmp_path / "cache" / "index.tsv"
    lines = index.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + " x"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"index.tsv:2: row and token count must be"):
        TeacherCache(tmp_path / "cache")


def test_exception_in_writer_block_leaves_no_directory(tmp_path: Path):
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with CacheWriter(tmp_path / "cache", k=8, vocab_size=1000, fingerprint=FINGERPRINT) as writer:
            writer.add("u", *fake_outputs(0, 4))
            raise RuntimeError("teacher crashed")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_an_older_cache(tmp_path: Path):
    write(tmp_path / "cache", utterances(4))
    write(tmp_path / "cache", utterances(2))
    assert len(TeacherCache(tmp_path / "cache")) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_add_rejects_bad_input(tmp_path: Path):
    writer = CacheWriter(tmp_path / "cache", k=8, vocab_size=1000, fingerprint=FINGERPRINT)
    indices, logits = fake_outputs(0, 3)
    writer.add("u", indices, logits)
    with pytest.raises(KdstError, match="'u' added twice"):
        writer.add("u", indices, logits)
    with pytest.raises(ValueError, match="shape"):
        writer.add("v", indices[:, :4], logits[:, :4])
    with pytest.raises(ValueError, match="shape"):
        writer.add("v", indices, logits[:2])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        writer.add("v", indices + 1000, logits)
    with pytest.raises(ValueError, match="whitespace"):
        writer.add("a b", indices, logits)
    sampled = CacheWriter(tmp_path / "s", k=2, vocab_size=10, mode="sampled", fingerprint={})
    with pytest.raises(ValueError, match="counts"):
        sampled.add("v", np.zeros((1, 2), dtype=int), np.array([[-1, 0]]))
    writer.abort()
    sampled.abort()
    assert list(tmp_path.iterdir()) == []


def test_pickled_cache_reopens_its_files(tmp_path: Path):
    import pickle

    entries = utterances(2)
    write(tmp_path / "cache", entries)
    cache = TeacherCache(tmp_path / "cache")
    cache.get("spk0-utt000")  # maps the files
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._indices is None
    np.testing.assert_array_equal(copy.get("spk1-utt001")[0], entries["spk1-utt001"][0])


# ---------------------------------------------------------------- the rest: the teacher's mass outside the top k


def with_rest(entries: dict, seed: int = 0) -> dict:
    """Each utterance's outputs with a log rest mass per token: log(0.5), log(0.01), -inf (k = V), ..."""
    rng = np.random.default_rng(seed)
    out = {}
    for utt, (indices, logits) in entries.items():
        rest = np.log(rng.uniform(0.01, 0.6, size=len(indices))).astype(np.float32)
        if len(rest):
            rest[0] = -np.inf  # the top k hold everything
        out[utt] = (indices, logits, rest)
    return out


def write_rest(path: Path, entries: dict, **kwargs) -> None:
    options = {"k": 8, "vocab_size": 1000, "fingerprint": FINGERPRINT, "rest": True, **kwargs}
    with CacheWriter(path, **options) as writer:
        for utt, (indices, values, rest) in entries.items():
            writer.add(utt, indices, values, rest)


def test_rest_round_trip_and_kept_mass(tmp_path: Path):
    entries = with_rest(utterances())
    write_rest(tmp_path / "cache", entries, fingerprint={**FINGERPRINT, "temperature": 2.0})
    cache = TeacherCache(tmp_path / "cache")
    assert cache.has_rest and cache.temperature == 2.0
    for utt, (_, _, rest) in entries.items():
        got = cache.get_rest(utt)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, rest)
    # the hand computation: the mean over all tokens of 1 - exp(rest)
    kept = np.concatenate([1 - np.exp(r.astype(np.float64)) for _, _, r in entries.values()])
    assert cache.kept_mass == pytest.approx(kept.mean(), abs=1e-6)
    assert (tmp_path / "cache" / "rest.bin").stat().st_size == 4 * cache.num_tokens
    assert cache.bytes_per_token() == 36.0  # 32 B of top-8 and a float32


def test_cache_without_rest_says_how_to_get_one(tmp_path: Path):
    write(tmp_path / "cache", utterances(2))
    cache = TeacherCache(tmp_path / "cache")
    assert not cache.has_rest and cache.kept_mass is None and cache.temperature == 1.0  # not recorded: 1
    with pytest.raises(KdstError, match=r"cache: no rest.bin .* re-run the top-k stage"):
        cache.get_rest("spk0-utt000")


def test_merge_keeps_the_rest_and_the_token_weighted_kept_mass(tmp_path: Path):
    entries = with_rest(utterances())
    items = list(entries.items())
    write_rest(tmp_path / "1", dict(items[:2]))
    write_rest(tmp_path / "2", dict(items[2:]))
    write_rest(tmp_path / "single", entries)
    merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")
    for name in ("indices.bin", "values.bin", "rest.bin", "index.tsv", "meta.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    write(tmp_path / "plain", {u: v[:2] for u, v in items[2:]})
    with pytest.raises(KdstError, match=r"plain/meta.json: has no rest.bin and .*1/meta.json has"):
        merge_caches([tmp_path / "1", tmp_path / "plain"], tmp_path / "bad")


def test_merge_refuses_parts_made_at_other_temperatures(tmp_path: Path):
    items = list(utterances().items())
    write(tmp_path / "1", dict(items[:3]), fingerprint={**FINGERPRINT, "temperature": 1.0})
    write(tmp_path / "2", dict(items[3:]), fingerprint={**FINGERPRINT, "temperature": 2.0})
    with pytest.raises(KdstError, match=r"2/meta.json: fingerprint differs .* in temperature"):
        merge_caches([tmp_path / "1", tmp_path / "2"], tmp_path / "merged")


def test_bad_rest_is_refused(tmp_path: Path):
    indices, logits = fake_outputs(0, 3)
    with pytest.raises(ValueError, match="mode topk only"):
        CacheWriter(tmp_path / "s", k=8, vocab_size=1000, mode="sampled", fingerprint={}, rest=True)
    writer = CacheWriter(tmp_path / "c", k=8, vocab_size=1000, fingerprint={}, rest=True)
    with pytest.raises(ValueError, match="stores the rest"):
        writer.add("u", indices, logits)
    with pytest.raises(ValueError, match=r"rest must have shape \(3,\)"):
        writer.add("u", indices, logits, np.zeros(2))
    with pytest.raises(ValueError, match="log-probabilities"):
        writer.add("u", indices, logits, np.array([0.0, 0.5, -1.0]))
    writer.abort()
    plain = CacheWriter(tmp_path / "p", k=8, vocab_size=1000, fingerprint={})
    with pytest.raises(ValueError, match="without rest=True"):
        plain.add("u", indices, logits, np.zeros(3))
    plain.abort()
    write_rest(tmp_path / "cache", with_rest(utterances(2)))
    rest = tmp_path / "cache" / "rest.bin"
    rest.write_bytes(rest.read_bytes()[:-4])
    with pytest.raises(KdstError, match=r"rest.bin: \d+ bytes, meta.json says \d+ tokens x 1 x 4 B"):
        TeacherCache(tmp_path / "cache")


def test_low_kept_mass_warning_names_the_fixes(tmp_path: Path):
    entries = {utt: (i, v, np.full(len(i), np.log(0.5), dtype=np.float32))
               for utt, (i, v) in utterances(3).items()}
    write_rest(tmp_path / "low", entries, fingerprint={**FINGERPRINT, "temperature": 4.0})
    warning = low_kept_mass_warning(TeacherCache(tmp_path / "low"))
    assert warning == (f"{tmp_path / 'low'}: the top 8 entries keep 50.0% of the teacher's probability mass on "
                       "average at T = 4 (below 80%): renormalised top-k KD trains on a much sharper distribution "
                       "than the teacher's; use a larger k (kdst topk --k) or kd.topk_rest: true")
    entries = {utt: (i, v, np.full(len(i), np.log(0.1), dtype=np.float32)) for utt, (i, v, _) in entries.items()}
    write_rest(tmp_path / "high", entries)
    assert low_kept_mass_warning(TeacherCache(tmp_path / "high")) is None
