"""Whisper as a kdst ASR teacher (kdst.models.hf_whisper), checked against transformers itself.

A tiny random Whisper (test/hf_models.py: 1+2 layers, d_model 16, a byte-level BPE tokenizer, a 1 s
window) is saved with save_pretrained; nothing is downloaded.  Checks:

- ``kdst hf-features`` on a data dir with wav.scp and segments: the stored frames, continued with the
  last one to the window, equal the WhisperFeatureExtractor's output bit for bit (80 and 128 bins, at
  lengths from one sample to the whole window); a longer segment is refused naming it; decoding a
  data dir of kdst fbank features is refused;
- teacher-forced logits equal the model's own forward (atol 1e-5);
- kdst's beam search with ``hf_rule`` gives Whisper's ``generate(language="en", task="transcribe")``
  1-best and the n-best of the beam search inside it (tokens, order, scores) for several beams,
  length penalties and max lengths; ``kdst decode`` of the features dir writes generate()'s text;
- the exported tokenizer's ids are the HF tokenizer's (with the leading space Whisper writes).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'kdst[hf]')")

from helpers import tone  # noqa: E402
from hf_models import save_whisper  # noqa: E402

from kdst.cli import main  # noqa: E402
from kdst.data.audio import iter_utterances  # noqa: E402
from kdst.data.dataset import collate, make_dataset  # noqa: E402
from kdst.data.kaldi_dir import DataDir, write_data_dir  # noqa: E402
from kdst.data.text_norm import normalize_text  # noqa: E402
from kdst.data.tokenizer import load_tokenizer  # noqa: E402
from kdst.decode.search import SearchOptions, beam_search  # noqa: E402
from kdst.errors import DataError, KdstError  # noqa: E402
from kdst.models import hf_whisper  # noqa: E402
from kdst.models.teacher import load_teacher  # noqa: E402

TEXTS = ["hello world this is a test", "the cat sat on the mat", "a big red dog runs home",
         "she sells sea shells", "Mr. Brown's car, the red one."]
RATE = 16000


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return save_whisper(tmp_path_factory.mktemp("hf") / "whisper", TEXTS)


@pytest.fixture(scope="module")
def whisper128(tmp_path_factory):
    return save_whisper(tmp_path_factory.mktemp("hf") / "whisper128", TEXTS, bins=128, window_s=2, seed=3)


def _audio_dir(root, lengths, *, segments=False):
    """A data dir of tones (a different pitch each) with these lengths in samples; with ``segments``, two
    recordings cut into utterances."""
    wav = root / "wav"
    wav.mkdir(parents=True)
    files = {"wav.scp": {}, "utt2spk": {}, "text": {}}
    if not segments:
        for i, n in enumerate(lengths):
            utt = f"utt{i:02d}"
            soundfile.write(wav / f"{utt}.wav", tone(n / RATE, freq=150 + 330 * i, seed=i)[:n], RATE, subtype="FLOAT")
            files["wav.scp"][utt] = str(wav / f"{utt}.wav")
            files["utt2spk"][utt] = utt
            files["text"][utt] = TEXTS[i % len(TEXTS)]
    else:
        files["segments"] = {}
        for r in range(2):
            rec = f"rec{r}"
            soundfile.write(wav / f"{rec}.wav", tone(3.0, freq=300 + 500 * r, seed=r), RATE, subtype="PCM_16")
            files["wav.scp"][rec] = str(wav / f"{rec}.wav")
            start = 0.0
            for i, n in enumerate(lengths):
                utt = f"{rec}_{i:02d}"
                files["segments"][utt] = f"{rec} {start:.4f} {start + n / RATE:.4f}"
                files["utt2spk"][utt] = rec
                files["text"][utt] = TEXTS[i % len(TEXTS)]
                start += 0.05
    write_data_dir(root / "data", files)
    return root / "data"


def _features_dir(whisper, data, out, nj=1):
    assert main(["hf-features", "--teacher", f"hf:{whisper}", str(data), str(out), "--nj", str(nj)]) == 0
    return out


def _batch(teacher, data_dir, with_targets=False):
    dataset = make_dataset(teacher.data, data_dir, with_targets=with_targets)
    return collate([dataset[u] for u in dataset.ids]), dataset.ids


def _extractor_features(whisper, data_dir, ids):
    """What a user of the extractor feeds generate(): (B, bins, window), from the audio kdst reads."""
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(whisper)
    data = DataDir(data_dir)
    audio = {u.key: u.samples for u in iter_utterances(data.require("wav.scp"), data.segments())}
    return torch.cat([extractor(audio[u], sampling_rate=RATE, return_tensors="pt").input_features for u in ids])


def _continued(teacher, batch):
    """The stored features continued to the window as WhisperTeacher.encode does it."""
    src, lengths = batch["src"], batch["src_lengths"]
    window = teacher.model.window
    index = torch.minimum(torch.arange(window)[None], (lengths - 1)[:, None])
    return src.gather(1, index[:, :, None].expand(-1, window, src.shape[2])).transpose(1, 2)


# --- features ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["80", "128"])
def test_features_equal_the_extractors(which, whisper, whisper128, tmp_path):
    directory = whisper if which == "80" else whisper128
    window = 16000 if which == "80" else 32000
    lengths = [1, 399, 4000, 9999, window - 600, window - 41, window - 40, window]
    data = _audio_dir(tmp_path, lengths)
    out = _features_dir(directory, data, tmp_path / "whisper")
    teacher = load_teacher(f"hf:{directory}")
    batch, ids = _batch(teacher, out)
    stored = dict(zip(ids, batch["src_lengths"].tolist()))
    assert stored["utt00"] == 3 and stored[f"utt{len(lengths) - 1:02d}"] == window // 160  # ceil(201/160)+1; all
    assert torch.equal(_continued(teacher, batch), _extractor_features(directory, data, ids))
    # the copy holds the data dir's files, its own features, and the extractor's record beside the archive
    assert (out / "text").read_text() == (data / "text").read_text()
    assert (out / "arks" / "whisper_data.hf.json").is_file()


def test_features_of_segments_in_jobs_equal_the_extractors(whisper, tmp_path):
    data = _audio_dir(tmp_path, [3000, 8000, 12000], segments=True)
    out = _features_dir(whisper, data, tmp_path / "whisper", nj=2)
    teacher = load_teacher(f"hf:{whisper}")
    batch, ids = _batch(teacher, out)
    assert len(ids) == 6
    assert torch.equal(_continued(teacher, batch), _extractor_features(whisper, data, ids))


def test_a_segment_longer_than_the_window_is_refused_naming_it(whisper, tmp_path, capsys):
    data = _audio_dir(tmp_path, [8000, 16001])
    assert main(["hf-features", "--teacher", f"hf:{whisper}", str(data), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "utterance utt01: 1.00 s (16001 samples) is longer than hf:" in error
    assert "'s 1 s window (Whisper teachers take segments of at most 1 s" in error
    with pytest.raises(KdstError, match="another data dir"):
        hf_whisper.check_output_dir(data, data)


def test_decoding_kdst_fbank_features_is_refused(whisper, tmp_path):
    from kdst.decode.decode import decode_data_dir
    from kdst.data.features import write_fbank_shard
    from kdst.data.kaldi_dir import merge_into_data_dir

    data = _audio_dir(tmp_path, [8000, 9000])
    merge_into_data_dir(data, [write_fbank_shard(data, tmp_path / "fbank", "raw")])
    with pytest.raises(DataError, match=r"not Whisper features .*kdst hf-features --teacher hf:"):
        decode_data_dir(f"hf:{whisper}", data, tmp_path / "decode", SearchOptions(hf_rule=True), device="cpu")


# --- the prompt and the vocabulary ----------------------------------------------------------------

def test_prompt_language_and_task(whisper):
    hf_tok = transformers.AutoTokenizer.from_pretrained(whisper)
    ids = hf_tok.convert_tokens_to_ids
    assert load_teacher(f"hf:{whisper}").model.prompt == \
        [ids("<|startoftranscript|>"), ids("<|en|>"), ids("<|transcribe|>"), ids("<|notimestamps|>")]
    assert load_teacher(f"hf:{whisper},lang=de,task=translate").model.prompt == \
        [ids("<|startoftranscript|>"), ids("<|de|>"), ids("<|translate|>"), ids("<|notimestamps|>")]
    with pytest.raises(KdstError, match="lang=fr is not one of the model's languages"):
        load_teacher(f"hf:{whisper},lang=fr")
    with pytest.raises(KdstError, match="task=summarise"):
        load_teacher(f"hf:{whisper},task=summarise")
    with pytest.raises(KdstError, match="src= and tgt= are for MT models"):
        load_teacher(f"hf:{whisper},tgt=de")
    english_only = transformers.GenerationConfig(decoder_start_token_id=1, no_timestamps_token_id=9,
                                                 is_multilingual=False)
    assert hf_whisper.prompt_ids(english_only, hf_whisper.parse_spec("x"), "x") == [1, 9]
    with pytest.raises(KdstError, match="English-only"):
        hf_whisper.prompt_ids(english_only, hf_whisper.parse_spec("x,lang=en"), "x")


def test_tokenizer_ids_equal_the_hf_tokenizers(whisper):
    teacher = load_teacher(f"hf:{whisper}")
    hf_tok = transformers.AutoTokenizer.from_pretrained(whisper)
    tok, order = load_tokenizer(teacher.data.tokenizer), teacher.model.to_hf.tolist()
    assert order[:3] == [hf_tok.convert_tokens_to_ids("<|startoftranscript|>"),
                         hf_tok.convert_tokens_to_ids("<|notimestamps|>"), hf_tok.eos_token_id]
    assert sorted(order) == list(range(teacher.vocab_size)) and tok.tokens[:3] == ["<blank>", "<unk>", "<sos/eos>"]
    for text in TEXTS + ["zebra Quilter 1990"]:
        core = hf_tok(" " + text, add_special_tokens=False).input_ids  # Whisper writes a leading space
        assert [order[i] for i in tok.encode(text)] == core
        assert tok.decode(tok.encode(text)) == hf_tok.decode(core, skip_special_tokens=True).strip() == text


# --- teacher-forced logits --------------------------------------------------------------------------

def test_teacher_forced_logits_equal_the_models_forward(whisper, tmp_path):
    data = _audio_dir(tmp_path, [5000, 11000, 16000])
    out = _features_dir(whisper, data, tmp_path / "whisper")
    teacher = load_teacher(f"hf:{whisper}")
    model, hf_tok = teacher.model, transformers.AutoTokenizer.from_pretrained(whisper)
    batch, ids = _batch(teacher, out, with_targets=True)
    features = _extractor_features(whisper, data, ids)
    with torch.no_grad():
        logits, targets, _, _ = model.decoder_logits(batch)
    texts = DataDir(out).require("text")
    order = model.to_hf
    for i, utt in enumerate(ids):
        core = hf_tok(" " + texts[utt], add_special_tokens=False).input_ids
        with torch.no_grad():
            ref = model.hf(input_features=features[i:i + 1],
                           decoder_input_ids=torch.tensor([model.prompt + core])).logits[0, len(model.prompt) - 1:]
        n = len(core) + 1
        torch.testing.assert_close(logits[i, :n], ref[:, order], atol=1e-5, rtol=1e-5)
        assert [order[j] for j in targets[i, :n].tolist()] == core + [hf_tok.eos_token_id]


# --- n-best and 1-best against generate() -----------------------------------------------------------

ENDINGS: Counter = Counter()
SETTINGS = [(1, 1, 1.0, 8), (3, 2, 1.0, 10), (4, 4, 0.0, 6), (5, 3, 2.0, 12), (2, 2, 0.5, 15)]


@pytest.fixture(scope="module")
def features_dir(whisper, tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    data = _audio_dir(root, [3000, 5000, 7000, 9000, 11000, 13000, 15000, 16000])
    return data, _features_dir(whisper, data, root / "whisper")


@pytest.mark.parametrize("beam,nbest,lp,max_new", SETTINGS)
def test_nbest_equals_generate(beam, nbest, lp, max_new, whisper, features_dir):
    from transformers.generation.utils import GenerationMixin

    data, out = features_dir
    teacher = load_teacher(f"hf:{whisper}")
    model = teacher.model
    batch, ids = _batch(teacher, out)
    features = _extractor_features(whisper, data, ids)
    results = beam_search(model, batch["src"], batch["src_lengths"],
                          SearchOptions(beam=beam, nbest=nbest, length_penalty=lp, max_len_ratio=0,
                                        max_len_bias=max_new, hf_rule=True))
    order, eos = model.to_hf.tolist(), model.hf.generation_config.eos_token_id
    # The 1-best: Whisper's own generate, as a user calls it.
    best = model.hf.generate(features, language="en", task="transcribe", num_beams=beam, max_new_tokens=max_new,
                             length_penalty=lp)
    # The n-best: the beam search Whisper's generate runs, with its prompt and processors.
    prompt = torch.tensor([model.prompt]).expand(len(ids), -1)
    full = GenerationMixin.generate(model.hf, features, decoder_input_ids=prompt, num_beams=beam,
                                    num_return_sequences=nbest, max_new_tokens=max_new, length_penalty=lp,
                                    return_dict_in_generate=True, output_scores=True)
    sequences = full.sequences.view(len(ids), nbest, -1)[:, :, len(model.prompt):]
    for u in range(len(ids)):
        assert len(results[u]) == nbest
        for r, hyp in enumerate(results[u]):
            tokens = [order[i] for i in hyp.tokens]
            ended = len(tokens) < max_new
            row = sequences[u, r].tolist()
            assert row[:len(tokens) + ended] == tokens + [eos] * ended and all(x == eos for x in row[len(tokens):])
            if beam > 1:
                assert hyp.score == pytest.approx(float(full.sequences_scores.view(len(ids), nbest)[u, r]), abs=1e-5)
            ENDINGS["before the max length" if ended else "at the max length"] += 1
        one = best[u].tolist()
        assert [order[i] for i in results[u][0].tokens] == one[:len(results[u][0].tokens)]
        assert all(x == eos for x in one[len(results[u][0].tokens):])


def test_nbest_comparisons_saw_both_endings():
    if not ENDINGS:
        pytest.skip("the n-best comparisons did not run")
    assert ENDINGS["before the max length"] >= 5 and ENDINGS["at the max length"] >= 5, dict(ENDINGS)


def test_decode_writes_generates_text(whisper, features_dir, tmp_path):
    from kdst.decode.decode import decode_data_dir

    data, out = features_dir
    stats = decode_data_dir(f"hf:{whisper}", out, tmp_path / "decode",
                            SearchOptions(beam=3, nbest=3, max_len_ratio=0, max_len_bias=10, hf_rule=True),
                            device="cpu")
    assert stats["utterances"] == 8
    teacher = load_teacher(f"hf:{whisper}")
    hf_tok = transformers.AutoTokenizer.from_pretrained(whisper)
    ids = sorted(DataDir(out).require("utt2spk"))
    generated = teacher.model.hf.generate(_extractor_features(whisper, data, ids), language="en", task="transcribe",
                                          num_beams=3, max_new_tokens=10)
    expected = [t.strip() for t in hf_tok.batch_decode(generated, skip_special_tokens=True)]
    hyps = dict(line.rstrip("\n").partition(" ")[::2] for line in (tmp_path / "decode" / "hyp.txt").open())
    assert [hyps[u] for u in ids] == expected
    assert len((tmp_path / "decode" / "nbest.txt").read_text().splitlines()) == 24
    # --normalize: the same hypotheses, written as upper-case references are
    decode_data_dir(f"hf:{whisper}", out, tmp_path / "upper", SearchOptions(beam=3, max_len_ratio=0, max_len_bias=10,
                                                                            hf_rule=True), device="cpu",
                    normalize="upper")
    hyps = dict(line.rstrip("\n").partition(" ")[::2] for line in (tmp_path / "upper" / "hyp.txt").open())
    assert [hyps[u] for u in ids] == [normalize_text(t, "upper") for t in expected]
