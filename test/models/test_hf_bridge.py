"""Hugging Face seq2seq models as kdst teachers (kdst.models.hf_bridge), checked against transformers itself.

Tiny random models (2+2 layers, d_model 16) and word-level tokenizers are built here and saved with
``save_pretrained``; nothing is downloaded.  Checks:

- the exported tokenizers give the HF tokenizer's ids (through the documented permutation) and text;
- teacher-forced logits through the bridge equal the HF model's own forward (atol 1e-5: the same
  modules on the same inputs, one call against another);
- kdst's batched beam search with ``hf_rule=True`` returns exactly ``generate(num_beams=K,
  num_return_sequences=N)``'s n-best (tokens, order and scores) for several beams, length penalties,
  max lengths and early-stopping rules, with and without Marian's forced </s> and NLLB's forced
  target language code.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'kdst[hf]')")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from kdst.data.tokenizer import hf_order, load_tokenizer  # noqa: E402
from kdst.decode.search import SearchOptionError, SearchOptions, beam_search  # noqa: E402
from kdst.errors import KdstError  # noqa: E402
from kdst.models import hf_bridge, hf_teacher  # noqa: E402
from kdst.models.teacher import absolute_reference, load_teacher, parse_reference, teacher_digest  # noqa: E402

WORDS = "the a house cat dog runs sees big small red green blue tree car walks das ein haus katze hund".split()
LANGS = ["eng_Latn", "deu_Latn", "fra_Latn"]


def _sentences(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS + ["zebra"]) for _ in range(rng.randint(1, 7))) for _ in range(n)]


def _word_tokenizer(vocab: dict[str, int], template: str, specials: list[str], **names):
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(s, vocab[s]) for s in specials])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def _sharpen(model, std):
    """Weights far from HF's small init: outputs that depend on the source, as a trained model's do."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed_positions" not in name:
                p.normal_(0, std)


def _marian_sentencepiece_tokenizer(directory):
    """A MarianTokenizer as OPUS-MT ships it: a sentencepiece model (source.spm = target.spm here) and
    vocab.json with </s> 0, <unk> 1, the pieces, <pad> last; trained on the test's words."""
    import json

    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "spm.model"
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(_sentences(300, 11)), model_writer=f, vocab_size=40,
                                       model_type="unigram", character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    vocab = {"</s>": 0, "<unk>": 1, **{piece: i + 2 for i, piece in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    return transformers.MarianTokenizer(source_spm=str(model), target_spm=str(model),
                                        vocab=str(directory / "vocab.json")), vocab


def _save_marian(directory, seed=0, eos_bias=0.5, sentencepiece=False):
    """Marian's layout: </s> 0, <unk> 1, the words, <pad> last (its decoder start); forced </s> at the max length."""
    if sentencepiece:
        tokenizer, vocab = _marian_sentencepiece_tokenizer(directory / "spm")
    else:
        vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
        vocab["<pad>"] = len(vocab)
        tokenizer = _word_tokenizer(vocab, "$A </s>", ["</s>"], pad_token="<pad>", eos_token="</s>",
                                    unk_token="<unk>")
    v = len(vocab)
    torch.manual_seed(seed)
    config = transformers.MarianConfig(vocab_size=v, d_model=16, encoder_layers=2, decoder_layers=2,
                                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=v - 1,
                                       eos_token_id=0, decoder_start_token_id=v - 1, forced_eos_token_id=0)
    model = transformers.MarianMTModel(config).eval()
    _sharpen(model, 0.2)
    model.final_logits_bias[0, 0] += eos_bias  # hypotheses of mixed lengths
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _save_nllb(directory, seed=1, eos_bias=1.0):
    """NLLB's layout (M2M100 architecture): <s> 0, <pad> 1, </s> 2, <unk> 3, words, language codes; the
    source is "<lang> words </s>", the decoder starts with </s> and the target language is forced."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    for lang in LANGS:
        vocab[lang] = len(vocab)
    tokenizer = _word_tokenizer(vocab, "eng_Latn $A </s>", ["eng_Latn", "</s>"], bos_token="<s>", pad_token="<pad>",
                                eos_token="</s>", unk_token="<unk>", additional_special_tokens=LANGS)
    torch.manual_seed(seed)
    config = transformers.M2M100Config(vocab_size=len(vocab) + 3, d_model=16, encoder_layers=2, decoder_layers=2,
                                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                                       eos_token_id=2, decoder_start_token_id=2, scale_embedding=True,
                                       tie_word_embeddings=False)
    model = transformers.M2M100ForConditionalGeneration(config).eval()
    _sharpen(model, 0.3)
    with torch.no_grad():  # </s> more likely (hypotheses of mixed lengths): the final norm's bias leans towards it
        eos_row = model.lm_head.weight[2]
        model.model.decoder.layer_norm.bias += eos_bias * eos_row / eos_row.norm()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return _save_marian(tmp_path_factory.mktemp("hf") / "marian")


@pytest.fixture(scope="module")
def opus(tmp_path_factory):
    """Marian with OPUS-MT's sentencepiece tokenizer (MarianTokenizer, no tokenizer.json)."""
    return _save_marian(tmp_path_factory.mktemp("hf") / "opus", sentencepiece=True, eos_bias=1.5)


@pytest.fixture(scope="module")
def nllb(tmp_path_factory):
    return _save_nllb(tmp_path_factory.mktemp("hf") / "nllb")


def _src_batch(teacher, texts):
    """kdst source ids, padded with 0, and their lengths."""
    tok = load_tokenizer(teacher.data.src_tokenizer)
    ids = [tok.encode(t) for t in texts]
    src = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, row in enumerate(ids):
        src[i, :len(row)] = torch.tensor(row)
    return src, torch.tensor([len(r) for r in ids])


# --- the reference and the vocabulary ---------------------------------------------------

def test_reference_parsing_and_resolution(marian, tmp_path, monkeypatch):
    ref = parse_reference(f"hf:{marian},src=eng_Latn,tgt=deu_Latn")
    assert ref.kind == "hf" and str(ref) == f"hf:{marian},src=eng_Latn,tgt=deu_Latn"
    assert hf_bridge.parse_spec("org/name,tgt=de") == hf_bridge.HfSpec("org/name", None, "de")
    with pytest.raises(KdstError, match="'language=de' is not an option"):
        hf_bridge.parse_spec("org/name,language=de")
    assert hf_bridge.parse_spec("org/name,lang=de,task=translate") == \
        hf_bridge.HfSpec("org/name", lang="de", task="translate")
    with pytest.raises(KdstError, match="lang= and task= are Whisper's options"):
        load_teacher(f"hf:{marian},lang=de")
    # A local directory becomes absolute with its options; a hub name stays a name.
    monkeypatch.chdir(marian.parent)
    assert absolute_reference(f"hf:{marian.name},tgt=x") == f"hf:{marian},tgt=x"
    assert absolute_reference("hf:Helsinki-NLP/opus-mt-en-de") == "hf:Helsinki-NLP/opus-mt-en-de"
    assert teacher_digest(f"hf:{marian}") == load_teacher(f"hf:{marian}").digest


def test_hub_name_not_in_the_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(KdstError, match=r"not in the Hugging Face cache .*kdst never downloads") as e:
        load_teacher("hf:kdst-test/not-cached")
    assert "\n" not in str(e.value)
    with pytest.raises(KdstError, match="no config.json"):
        load_teacher(f"hf:{tmp_path}")


def test_hub_name_resolved_from_the_cache(marian, tmp_path, monkeypatch):
    """The cache's layout (models--org--name/refs/main -> snapshots/<commit>/) is read, offline."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--kdst-test--tiny-marian" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in marian.iterdir():
        if f.is_file():
            (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--kdst-test--tiny-marian" / "refs").mkdir()
    (cache / "models--kdst-test--tiny-marian" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    teacher = load_teacher("hf:kdst-test/tiny-marian")
    assert teacher.model_file == snapshot / "model.safetensors"


def test_tokenizer_ids_equal_the_hf_tokenizers(marian, opus, nllb):
    for directory, spec, backend in ((marian, "", "tokenizers"), (opus, "", "sentencepiece"),
                                     (nllb, ",tgt=deu_Latn", "tokenizers")):
        teacher = load_teacher(f"hf:{directory}{spec}")
        assert load_tokenizer(teacher.data.tokenizer).backend == backend
        hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
        src, tgt = load_tokenizer(teacher.data.src_tokenizer), load_tokenizer(teacher.data.tokenizer)
        order = hf_order(teacher.vocab_size, hf_tok.pad_token_id, hf_tok.unk_token_id, hf_tok.eos_token_id)
        assert order[:3] == [hf_tok.pad_token_id, hf_tok.unk_token_id, hf_tok.eos_token_id]
        assert sorted(order) == list(range(teacher.vocab_size))
        assert src.tokens[:3] == ["<blank>", "<unk>", "<sos/eos>"] and len(tgt.tokens) == teacher.vocab_size
        for text in _sentences(20, 3):  # "zebra" is not in the vocabulary: <unk>
            assert [order[i] for i in src.encode(text)] == hf_tok(text).input_ids
            core = hf_tok(text, add_special_tokens=False).input_ids
            assert [order[i] for i in tgt.encode(text)] == core
            assert tgt.decode(tgt.encode(text)) == hf_tok.decode(core, skip_special_tokens=True)
            assert tgt.tokens[tgt.encode(text)[0]] == hf_tok.convert_ids_to_tokens(core[0]) or core[0] == 3


def test_student_with_another_vocabulary_is_refused_naming_both(marian, tmp_path):
    from kdst.data.tokenizer import train_tokenizer

    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {s}\n" for i, s in enumerate(_sentences(30, 4))))
    train_tokenizer(tmp_path / "student_tok", [text], type="char")
    with pytest.raises(KdstError, match=r"kdst_tokens/default/tgt/tokens.txt is not the student's .*student_tok"):
        hf_teacher.load_hf_teacher(str(marian), tokenizer=tmp_path / "student_tok")
    teacher, config = hf_teacher.load_hf_teacher(str(marian))
    hf_teacher.load_hf_teacher(str(marian), tokenizer=config["data"]["tokenizer"])  # the adopted one is fine


def test_unknown_languages_are_refused(nllb, tmp_path):
    with pytest.raises(KdstError, match="tgt=xx_Yyyy is not a language code"):
        load_teacher(f"hf:{nllb},tgt=xx_Yyyy")
    with pytest.raises(KdstError, match="src=eng_Latn: this tokenizer has no source language"):
        load_teacher(f"hf:{nllb},src=eng_Latn")
    whisper = tmp_path / "whisper"  # Whisper goes to kdst.models.hf_whisper (test_hf_whisper.py)
    whisper.mkdir()
    (whisper / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(KdstError, match="no preprocessor_config.json .*WhisperFeatureExtractor"):
        load_teacher(f"hf:{whisper}")


# --- teacher-forced logits ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["marian", "opus", "nllb"])
def test_teacher_forced_logits_equal_the_models_forward(which, marian, opus, nllb):
    directory, spec = {"marian": (marian, ""), "opus": (opus, ""), "nllb": (nllb, ",tgt=fra_Latn")}[which]
    teacher = load_teacher(f"hf:{directory}{spec}")
    model, hf_tok = teacher.model, transformers.AutoTokenizer.from_pretrained(directory)
    sources, targets = _sentences(4, 5), _sentences(4, 6)
    src, src_lengths = _src_batch(teacher, sources)
    tgt_tok = load_tokenizer(teacher.data.tokenizer)
    tgt_ids = [tgt_tok.encode(t) for t in targets]
    tgt = torch.zeros(4, max(map(len, tgt_ids)), dtype=torch.long)
    for i, row in enumerate(tgt_ids):
        tgt[i, :len(row)] = torch.tensor(row)
    with torch.no_grad():
        logits, out_targets, _, _ = model.decoder_logits({"src": src, "src_lengths": src_lengths, "tgt": tgt,
                                                          "tgt_lengths": torch.tensor([len(r) for r in tgt_ids])})
    order = model.to_hf
    start = model.hf.generation_config.decoder_start_token_id
    forced = [hf_tok.convert_tokens_to_ids("fra_Latn")] if which == "nllb" else []
    for i in range(4):  # one sentence at a time, unpadded, through HF's own forward
        enc = hf_tok(sources[i], return_tensors="pt")
        core = hf_tok(targets[i], add_special_tokens=False).input_ids
        with torch.no_grad():
            ref = model.hf(**enc, decoder_input_ids=torch.tensor([[start, *forced, *core]])).logits[0, len(forced):]
        n = len(core) + 1  # the tokens and </s>
        torch.testing.assert_close(logits[i, :n], ref[:, order], atol=1e-5, rtol=1e-5)
        assert [order[j] for j in out_targets[i, :n].tolist()] == core + [hf_tok.eos_token_id]


# --- n-best against generate() ----------------------------------------------------------------

def _generate_nbest(model, hf_tok, sources, beam, nbest, length_penalty, max_new, forced_bos):
    enc = hf_tok(sources, return_tensors="pt", padding=True)
    kwargs = {"forced_bos_token_id": forced_bos} if forced_bos is not None else {}
    out = model.hf.generate(**enc, num_beams=beam, num_return_sequences=nbest, length_penalty=length_penalty,
                            max_new_tokens=max_new, output_scores=True, return_dict_in_generate=True, **kwargs)
    scores = out.sequences_scores if beam > 1 else None  # one beam: generate()'s greedy search, no score
    return out.sequences.view(len(sources), nbest, -1), scores


ENDINGS: dict[str, Counter] = {"marian": Counter(), "opus": Counter(), "nllb": Counter()}
SETTINGS = [  # beam, nbest, length_penalty, max_new_tokens, early_stopping, Marian's forced </s>
    (1, 1, 1.0, 6, False, True),
    (3, 2, 1.0, 8, False, True),
    (4, 4, 0.0, 5, False, False),
    (5, 3, 2.0, 10, False, False),
    (4, 2, 0.5, 12, True, False),
    (3, 3, 1.0, 7, "never", True),
]


@pytest.mark.parametrize("which", ["marian", "opus", "nllb"])
@pytest.mark.parametrize("beam,nbest,lp,max_new,early_stopping,forced_eos", SETTINGS)
def test_nbest_equals_generate(which, beam, nbest, lp, max_new, early_stopping, forced_eos, marian, opus, nllb):
    directory, spec = {"marian": (marian, ""), "opus": (opus, ""), "nllb": (nllb, ",tgt=deu_Latn")}[which]
    teacher = load_teacher(f"hf:{directory}{spec}")
    model, hf_tok = teacher.model, transformers.AutoTokenizer.from_pretrained(directory)
    config = model.hf.generation_config
    config.early_stopping = early_stopping
    config.forced_eos_token_id = hf_tok.eos_token_id if forced_eos else None
    model.generate_rule_ = hf_bridge.GenerateRule(config, {h: i for i, h in enumerate(model.to_hf.tolist())}, "x")
    sources = _sentences(9, 7 + beam)
    forced_bos = hf_tok.convert_tokens_to_ids("deu_Latn") if which == "nllb" else None
    sequences, scores = _generate_nbest(model, hf_tok, sources, beam, nbest, lp, max_new, forced_bos)
    src, src_lengths = _src_batch(teacher, sources)
    options = SearchOptions(beam=beam, nbest=nbest, length_penalty=lp, max_len_ratio=0, max_len_bias=max_new,
                            hf_rule=True)
    results = beam_search(model, src, src_lengths, options)
    order, eos = model.to_hf.tolist(), hf_tok.eos_token_id
    fill = config.pad_token_id
    lengths = []
    for u, nbest_list in enumerate(results):
        assert len(nbest_list) == nbest
        for r, hyp in enumerate(nbest_list):
            tokens = [order[i] for i in hyp.tokens] + ([eos] if len(hyp.tokens) < max_new else [])
            lengths.append(len(hyp.tokens))
            row = sequences[u, r, 1:].tolist()
            assert row[:len(tokens)] == tokens and all(x == fill for x in row[len(tokens):]), (u, r)
            if scores is not None:
                assert hyp.score == pytest.approx(float(scores.view(len(sources), nbest)[u, r]), abs=1e-5)
    ENDINGS[which]["before the max length"] += sum(n < max_new - 1 for n in lengths)
    ENDINGS[which]["at the max length"] += sum(n >= max_new - 1 for n in lengths)


def test_nbest_comparisons_saw_both_endings(request):
    """The comparisons above met hypotheses ending with <eos> before the max length and at it (forced, or
    cut with their last token kept), for both models."""
    if any(sum(counts.values()) == 0 for counts in ENDINGS.values()):
        pytest.skip("the n-best comparisons did not run")
    for which, counts in ENDINGS.items():
        assert all(n >= 5 for n in counts.values()), (which, dict(counts))


def test_hf_rule_options_are_checked(marian):
    teacher = load_teacher(f"hf:{marian}")
    with pytest.raises(SearchOptionError, match="not with --espnet-rule"):
        SearchOptions(hf_rule=True, espnet_rule=True)
    model = teacher.model
    model.hf.generation_config.no_repeat_ngram_size = 3
    model.generate_rule_ = hf_bridge.GenerateRule(model.hf.generation_config,
                                                  {h: i for i, h in enumerate(model.to_hf.tolist())}, "hf:x")
    src, lengths = _src_batch(teacher, ["the cat"])
    with pytest.raises(KdstError, match="hf:x: --hf-rule cannot reproduce generate.*no_repeat_ngram_size=3"):
        beam_search(model, src, lengths, SearchOptions(hf_rule=True))


# --- through kdst's programs -------------------------------------------------------------------

def test_decode_and_topk_of_a_data_dir(opus, tmp_path):
    """kdst decode (--hf-rule) and kdst topk read a data dir's source text through the exported tokenizers:
    the 1-best equals generate()'s decoded text, the cache holds the teacher-forced top-k."""
    from kdst.data.teacher_cache import TeacherCache
    from kdst.decode.decode import decode_data_dir
    from kdst.teacher.topk import write_cache

    data = tmp_path / "data"
    data.mkdir()
    sources, targets = _sentences(6, 21), _sentences(6, 22)
    (data / "text.en").write_text("".join(f"utt{i} {s}\n" for i, s in enumerate(sources)))
    (data / "text").write_text("".join(f"utt{i} {s}\n" for i, s in enumerate(targets)))
    options = SearchOptions(beam=3, nbest=2, max_len_ratio=0, max_len_bias=8, hf_rule=True)
    stats = decode_data_dir(f"hf:{opus}", data, tmp_path / "decode", options, device="cpu")
    assert stats["utterances"] == 6
    teacher = load_teacher(f"hf:{opus}")
    hf_tok = transformers.AutoTokenizer.from_pretrained(opus)
    out = teacher.model.hf.generate(**hf_tok(sources, return_tensors="pt", padding=True), num_beams=3,
                                    max_new_tokens=8)
    expected = hf_tok.batch_decode(out, skip_special_tokens=True)
    hyps = dict(line.rstrip("\n").partition(" ")[::2] for line in (tmp_path / "decode" / "hyp.txt").open())
    assert [hyps[f"utt{i}"] for i in range(6)] == [e.strip() for e in expected]
    assert len((tmp_path / "decode" / "nbest.txt").read_text().splitlines()) == 12

    write_cache(f"hf:{opus}", data, tmp_path / "topk", k=4, device="cpu")
    cache = TeacherCache(tmp_path / "topk")
    tgt_tok = load_tokenizer(teacher.data.tokenizer)
    src, src_lengths = _src_batch(teacher, sources[:1])
    tgt = torch.tensor([tgt_tok.encode(targets[0])])
    with torch.no_grad():
        logits = teacher.model.decoder_logits({"src": src, "src_lengths": src_lengths, "tgt": tgt,
                                               "tgt_lengths": torch.tensor([tgt.shape[1]])})[0][0]
    row = cache.get("utt0", tgt.shape[1] + 1)
    assert torch.equal(torch.as_tensor(row[0]).long(), logits.topk(4).indices)
