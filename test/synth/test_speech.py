"""The synthetic speech corpus: MuST-C layout, exact segments, determinism, reuse."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from helpers import needs
from kdst.synth import speech as mini_speech
from kdst.synth.speech import HELDOUT_VARIANTS, TRAIN_VARIANTS, make_corpus, pick_speaker
from kdst.errors import KdstError

SIZES = {"train": 6, "dev": 2, "tst-COMMON": 2}
UTTS_PER_TALK = 3
needs_espeak = needs["espeak-ng"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("mini")
    stats = make_corpus(root, sizes=SIZES, seed=7, utts_per_talk=UTTS_PER_TALK, nj=2, progress=False)
    return root, stats


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def segments(root: Path, split: str) -> list[dict]:
    return yaml.safe_load((root / "en-de" / "data" / split / "txt" / f"{split}.yaml").read_text())


@pytest.mark.slow
@needs_espeak
def test_layout_is_mustc(corpus):
    root, stats = corpus
    expected = {"en-de/.complete"}
    talk = 1
    for split, n in SIZES.items():
        expected |= {f"en-de/data/{split}/txt/{split}.{ext}" for ext in ("yaml", "en", "de")}
        for _ in range(-(-n // UTTS_PER_TALK)):
            expected.add(f"en-de/data/{split}/wav/ted_{talk}.wav")
            talk += 1
    assert set(files_under(root)) == expected
    assert stats["utterances"] == SIZES
    assert 0 < stats["total_hours"] < 0.1 and stats["elapsed"] >= 0


@pytest.mark.slow
@needs_espeak
@pytest.mark.parametrize("split", list(SIZES))
def test_yaml_and_text_agree(corpus, split):
    root, _ = corpus
    txt = root / "en-de" / "data" / split / "txt"
    segs = segments(root, split)
    en = txt.joinpath(f"{split}.en").read_text(encoding="utf-8").splitlines()
    de = txt.joinpath(f"{split}.de").read_text(encoding="utf-8").splitlines()
    assert len(segs) == len(en) == len(de) == SIZES[split]
    line = txt.joinpath(f"{split}.yaml").read_text().splitlines()[0]
    assert line.startswith("- {duration: ") and ", uW: 0, speaker_id: spk." in line
    for seg, sentence in zip(segs, en):
        assert set(seg) == {"duration", "offset", "rW", "uW", "speaker_id", "wav"}
        assert seg["rW"] == len(sentence.split()) and seg["uW"] == 0
        assert seg["speaker_id"] == "spk." + seg["wav"][len("ted_"):-len(".wav")]
    # Talk order, then time order within a talk.
    keys = [(int(s["wav"][4:-4]), s["offset"]) for s in segs]
    assert keys == sorted(keys)


@pytest.mark.slow
@needs_espeak
def test_segments_are_exact_speech_inside_the_talk(corpus):
    root, _ = corpus
    for split in SIZES:
        by_wav: dict[str, list[dict]] = {}
        for seg in segments(root, split):
            by_wav.setdefault(seg["wav"], []).append(seg)
        for wav, segs in by_wav.items():
            path = root / "en-de" / "data" / split / "wav" / wav
            info = soundfile.info(str(path))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            audio, _ = soundfile.read(str(path), dtype="float64")
            speech = np.zeros(len(audio), dtype=bool)
            for seg in segs:
                start, length = seg["offset"] * 16000, seg["duration"] * 16000
                assert abs(start - round(start)) < 1e-6 and abs(length - round(length)) < 1e-6
                start, end = round(start), round(start) + round(length)
                assert 0 < start < end <= len(audio)
                assert not speech[start:end].any()
                speech[start:end] = True
            noise_rms = np.sqrt(np.mean(audio[~speech] ** 2))
            assert 0 < noise_rms < 0.01  # faint background noise, not digital silence
            for seg in segs:
                start = round(seg["offset"] * 16000)
                rms = np.sqrt(np.mean(audio[start:start + round(seg["duration"] * 16000)] ** 2))
                assert rms > 20 * noise_rms
                # Trimmed: the first and last 10 ms are already speech, not silence.
                assert np.abs(audio[start:start + 160]).max() > 3 * noise_rms


@pytest.mark.slow
@needs_espeak
def test_same_seed_gives_identical_bytes_whatever_nj(corpus, tmp_path):
    root, _ = corpus
    make_corpus(tmp_path, sizes=SIZES, seed=7, utts_per_talk=UTTS_PER_TALK, nj=1, progress=False)
    ours, theirs = files_under(root), files_under(tmp_path)
    ours.pop("en-de/.complete"), theirs.pop("en-de/.complete")  # holds the elapsed time
    assert ours == theirs


def test_test_speakers_are_unseen_in_train():
    assert not set(TRAIN_VARIANTS) & set(HELDOUT_VARIANTS)
    train = {pick_speaker(1, "train", i).identity for i in range(200)}
    held_out = {pick_speaker(1, split, i).identity for split in ("dev", "tst-COMMON") for i in range(50)}
    assert not train & held_out
    assert len(train) > 50 and len(held_out) > 20
    speaker = pick_speaker(1, "dev", 0)
    assert speaker == pick_speaker(1, "dev", 0)
    assert 130 <= speaker.rate <= 190 and 30 <= speaker.pitch <= 70


@needs_espeak
def test_all_variants_are_installed():
    mini_speech.check_espeak()


@pytest.mark.slow
@needs_espeak
def test_second_call_reuses_and_other_settings_fail(corpus):
    root, stats = corpus
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    started = time.monotonic()
    assert make_corpus(root, sizes=SIZES, seed=7, utts_per_talk=UTTS_PER_TALK, nj=2, progress=False) == stats
    assert time.monotonic() - started < 1.0
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    with pytest.raises(KdstError, match="other settings"):
        make_corpus(root, sizes=SIZES, seed=8, utts_per_talk=UTTS_PER_TALK, progress=False)
    with pytest.raises(KdstError, match="other settings"):
        make_corpus(root, sizes={"train": 3}, seed=7, utts_per_talk=UTTS_PER_TALK, progress=False)


def test_unfinished_corpus_is_not_overwritten(tmp_path):
    (tmp_path / "en-de" / "data").mkdir(parents=True)
    with pytest.raises(KdstError, match="not a finished mini corpus"):
        make_corpus(tmp_path, sizes={"train": 1}, progress=False)


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KdstError, match="apt-get install espeak-ng"):
        make_corpus(tmp_path / "corpus", sizes={"train": 1}, progress=False)
    assert not (tmp_path / "corpus" / "en-de" / "data").exists()
