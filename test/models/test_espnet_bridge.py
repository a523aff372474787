"""ESPnet2 models as kdst teachers (kdst.models.espnet_bridge), checked against ESPnet itself.

Tiny MT and ASR models are built with ESPnet's task builders and saved in ESPnet's layout
(test/espnet_models.py), then loaded through the bridge.  Checks:

- teacher-forced logits (what word-KD and the top-k cache read) equal ESPnet's decoder forward;
- kdst's batched beam search with ``espnet_rule=True`` returns the same n-best (tokens, order)
  as ESPnet's ``BatchBeamSearch`` (espnet.nets), configured as ESPnet's inference programs
  (mt_inference.Text2Text / asr_inference.Speech2Text) configure it with these options, which
  are what make the two comparable:

      beam_size = beam, nbest = nbest            ctc_weight = 0, lm_weight = 0, ngram_weight = 0
      penalty = 0 (length bonus off)             normalize_length = (length_penalty == 1)
      maxlenratio = -M  <->  max_len_ratio = 0, max_len_bias = M   (a fixed max length; > 0 works too:
                             ESPnet's max(1, int(r * T)) is what espnet_rule computes)
      minlenratio = r   <->  min_len_ratio = r
      maxlenratio != 0  (0 switches on ESPnet's end detection heuristic, which kdst does not have)

  and ESPnet's <blank> never likely (any trained model; ESPnet's search does not exclude it,
  kdst's does).  kdst's default rule (fairseq's: an <eos> does not take a beam slot; the
  forced <eos> at the max length is scored) is a different search and is not compared here.
"""

from __future__ import annotations

from dataclasses import replace

import random
import zipfile

import pytest
import torch
import yaml

pytest.importorskip("espnet2", reason="ESPnet is not installed (pip install 'kdst[espnet]')")

from espnet_models import build_asr, build_mt  # noqa: E402

from kdst.data.dataset import _pad  # noqa: E402
from kdst.data.tokenizer import load_tokenizer  # noqa: E402
from kdst.decode.search import SearchOptions, beam_search  # noqa: E402
from kdst.errors import KdstError  # noqa: E402
from kdst.models import espnet_bridge  # noqa: E402
from kdst.models.espnet_bridge import check_vocabulary, load_espnet_teacher  # noqa: E402

WORDS_EN = "the a house cat dog runs sees big small red green blue tree car walks".split()
WORDS_DE = "das ein haus katze hund läuft sieht groß klein rot grün blau baum auto geht".split()


def _sentences(words, n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    recipe = tmp_path_factory.mktemp("espnet_mt")
    src, tgt = _sentences(WORDS_EN, 150, 0), _sentences(WORDS_DE, 150, 1)
    exp, model = build_mt(recipe, src, tgt, eos_bias=1.5)  # mixed output lengths
    teacher, config = load_espnet_teacher(exp)
    return dict(recipe=recipe, exp=exp, espnet=model.eval(), teacher=teacher, config=config, src=src, tgt=tgt)


def _espnet_ids(teacher, kdst_ids):
    return teacher.to_espnet[torch.as_tensor(kdst_ids, dtype=torch.long)]


def test_tokenizer_is_espnets(mt):
    """Text -> ids through the exported kdst tokenizer equals ESPnet's tokenizer + TokenIDConverter."""
    from espnet2.text.build_tokenizer import build_tokenizer
    from espnet2.text.token_id_converter import TokenIDConverter

    args = yaml.safe_load((mt["exp"] / "config.yaml").read_text())
    tokenizer = load_tokenizer(mt["config"]["data"]["tokenizer"])
    espnet_tok = build_tokenizer("bpe", bpemodel=str(mt["recipe"] / args["bpemodel"]))
    converter = TokenIDConverter(args["token_list"])
    for text in mt["tgt"][:20] + ["ein unbekanntes Wort xyz"]:
        ids = tokenizer.encode(text)
        assert _espnet_ids(mt["teacher"], ids).tolist() == converter.tokens2ids(espnet_tok.text2tokens(text))
        assert tokenizer.decode(ids) == espnet_tok.tokens2text(converter.ids2tokens(_espnet_ids(mt["teacher"], ids)))


def test_mt_logits_equal_espnet_forward(mt):
    teacher, model = mt["teacher"], mt["espnet"]
    src_tok, tok = (load_tokenizer(mt["config"]["data"][k]) for k in ("src_tokenizer", "tokenizer"))
    src, src_lengths = _pad([src_tok.encode(s) for s in mt["src"][:6]])
    tgt, tgt_lengths = _pad([tok.encode(t) for t in mt["tgt"][:6]])
    with torch.no_grad():
        logits, targets, _, _ = teacher.decoder_logits({"src": src, "src_lengths": src_lengths, "tgt": tgt,
                                                        "tgt_lengths": tgt_lengths})
        # ESPnet on its own ids, padded its way (-1), through its own encode and decoder forward
        pad = lambda rows, table: torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-1)  # noqa
        esp_src = pad([teacher.src_to_espnet[torch.tensor(src_tok.encode(s))] for s in mt["src"][:6]], None)
        esp_tgt = [_espnet_ids(teacher, tok.encode(t)) for t in mt["tgt"][:6]]
        memory, memory_lengths = model.encode(esp_src, src_lengths)
        ys_in = pad([torch.cat([torch.tensor([model.sos]), y]) for y in esp_tgt], None).clamp(min=0)
        expected, _ = model.decoder(memory, memory_lengths, ys_in, tgt_lengths + 1)
    real = targets != 0
    torch.testing.assert_close(logits[real], expected.index_select(-1, teacher.to_espnet)[real], rtol=0, atol=1e-5)
    # the targets are ESPnet's ys_out (y <eos>) in kdst ids
    assert targets[0, tgt_lengths[0]] == 2 and torch.equal(targets[0, :tgt_lengths[0]], tgt[0, :tgt_lengths[0]])


def _espnet_nbest(model, memory, beam, maxlen, minlenratio, normalize_length):
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.length_bonus import LengthBonus

    vocab = model.vocab_size
    search = BatchBeamSearch(scorers={"decoder": model.decoder, "length_bonus": LengthBonus(vocab)},
                             weights={"decoder": 1.0, "length_bonus": 0.0}, beam_size=beam, vocab_size=vocab,
                             sos=model.sos, eos=model.eos, token_list=None, pre_beam_score_key="full",
                             normalize_length=normalize_length).eval()
    with torch.no_grad():
        return search(x=memory, maxlenratio=-maxlen, minlenratio=minlenratio)


@pytest.mark.parametrize("beam,max_len,min_ratio,length_penalty",
                         [(4, 12, 0.0, 0.0), (4, 12, 0.0, 1.0), (3, 8, 0.5, 0.0), (1, 6, 0.0, 0.0)])
def test_mt_nbest_equals_espnet_beam_search(mt, beam, max_len, min_ratio, length_penalty):
    teacher, model = mt["teacher"], mt["espnet"]
    src_tok = load_tokenizer(mt["config"]["data"]["src_tokenizer"])
    src, src_lengths = _pad([src_tok.encode(s) for s in mt["src"][:12]])
    options = SearchOptions(beam=beam, nbest=beam, max_len_ratio=0.0, max_len_bias=max_len,
                            min_len_ratio=min_ratio, length_penalty=length_penalty, espnet_rule=True)
    ours = beam_search(teacher, src, src_lengths, options)
    with torch.no_grad():
        memory, memory_lengths = teacher.encode(src, src_lengths)
    from_espnet = {int(e): k for k, e in enumerate(teacher.to_espnet.tolist())}
    lengths = set()
    for i, hyps in enumerate(ours):
        theirs = _espnet_nbest(model, memory[i, :memory_lengths[i]], beam, max_len, min_ratio,
                               length_penalty == 1.0)[:beam]
        assert [h.tokens for h in hyps] == [tuple(from_espnet[int(t)] for t in h.yseq[1:-1]) for h in theirs]
        for h, e in zip(hyps, theirs):
            assert h.logprob == pytest.approx(float(e.score), abs=1e-4)
        lengths |= {len(h.tokens) for h in hyps}
    if beam > 1:
        assert len(lengths) > 1  # not all degenerate: several lengths, natural ends and forced ones


def test_vocabulary_mismatch_names_both_files(mt, tmp_path):
    other = tmp_path / "student_tokens"
    other.mkdir()
    for name in ("tokenizer.yaml", "sp.model"):
        (other / name).write_bytes((espnet_bridge.Path(mt["config"]["data"]["tokenizer"]) / name).read_bytes())
    tokens = (espnet_bridge.Path(mt["config"]["data"]["tokenizer"]) / "tokens.txt").read_text().splitlines()
    (other / "tokens.txt").write_text("\n".join(tokens[:3] + tokens[4:] + tokens[3:4]) + "\n")
    with pytest.raises(KdstError, match=r"kdst_tokens/tgt/tokens.txt.*student_tokens/tokens.txt"):
        check_vocabulary(mt["config"]["data"]["tokenizer"], other)


def test_packed_zip(mt, tmp_path):
    """espnet_model_zoo layout: meta.yaml naming the config and model; config paths relative to the zip root."""
    zip_path = tmp_path / "mt_model.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("meta.yaml", yaml.safe_dump({"yaml_files": {"mt_train_config": "exp/mt_train/config.yaml"},
                                                "files": {"mt_model_file": "exp/mt_train/valid.acc.ave.pth"}}))
        for path in [mt["exp"] / "config.yaml", mt["exp"] / "valid.acc.ave.pth",
                     *sorted((mt["recipe"] / "data").rglob("*.model"))]:
            z.write(path, path.relative_to(mt["recipe"]))
    files = espnet_bridge.resolve(zip_path)
    assert files.task == "mt" and files.model_file.name == "valid.acc.ave.pth"
    assert files.config["bpemodel"].startswith(str(tmp_path / "mt_model"))
    teacher, _ = load_espnet_teacher(zip_path)
    state = mt["teacher"].state_dict()
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())


def test_missing_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("frontend: embed\n")
    with pytest.raises(KdstError, match="no model files"):
        espnet_bridge.resolve(tmp_path)


def test_asr_logits_and_nbest_equal_espnet(tmp_path):
    texts = _sentences(WORDS_EN, 100, 2)
    exp, model = build_asr(tmp_path, texts, input_size=20)
    model.eval()
    teacher, config = load_espnet_teacher(exp)
    assert config["data"]["input"] == "speech" and config["data"].get("cmvn") is None
    torch.manual_seed(0)
    feats_lengths = torch.tensor([40, 33, 27])
    feats = torch.randn(3, 40, 20)
    tok = load_tokenizer(config["data"]["tokenizer"])
    tgt, tgt_lengths = _pad([tok.encode(t) for t in texts[:3]])
    with torch.no_grad():
        logits, targets, memory, memory_lengths = teacher.decoder_logits(
            {"src": feats, "src_lengths": feats_lengths, "tgt": tgt, "tgt_lengths": tgt_lengths})
        ys_in = torch.nn.utils.rnn.pad_sequence(
            [torch.cat([torch.tensor([model.sos]), _espnet_ids(teacher, tok.encode(t))]) for t in texts[:3]],
            batch_first=True, padding_value=0)
        enc, enc_lengths = model.encode(feats, feats_lengths)
        expected, _ = model.decoder(enc, enc_lengths, ys_in, tgt_lengths + 1)
    real = targets != 0
    torch.testing.assert_close(logits[real], expected.index_select(-1, teacher.to_espnet)[real], rtol=0, atol=1e-5)

    options = SearchOptions(beam=3, nbest=3, max_len_ratio=0.0, max_len_bias=7, length_penalty=0.0,
                            espnet_rule=True)
    ours = beam_search(teacher, feats, feats_lengths, options)
    from_espnet = {int(e): k for k, e in enumerate(teacher.to_espnet.tolist())}
    for i, hyps in enumerate(ours):
        theirs = _espnet_nbest(model, memory[i, :memory_lengths[i]], 3, 7, 0.0, False)[:3]
        assert [h.tokens for h in hyps] == [tuple(from_espnet[int(t)] for t in h.yseq[1:-1]) for h in theirs]


def test_waveform_frontend_is_refused_for_features(tmp_path, monkeypatch):
    exp, _ = build_asr(tmp_path, _sentences(WORDS_EN, 60, 3), input_size=20)
    teacher, _ = load_espnet_teacher(exp)
    monkeypatch.setattr(teacher.espnet, "frontend", torch.nn.Identity())
    with pytest.raises(KdstError, match="frontend: null"):
        teacher.encode(torch.zeros(1, 30, 20), torch.tensor([30]))


def test_online_word_kd_from_an_espnet_teacher(mt, tmp_path):
    """kd.teacher: espnet:PATH: the KD term of a batch is the KL to ESPnet's own teacher-forced distributions."""
    from helpers import write_config

    from kdst.data.dataset import collate
    from kdst.data.kaldi_dir import write_data_dir
    from kdst.data.tokenizer import train_tokenizer
    from kdst.losses import word_kd_loss
    from kdst.models import build_model
    from kdst.train.kd import WordKD, setup_distillation
    from kdst.config import parse_kd
    from kdst.train.trainer import build_datasets, load_config

    ids = [f"utt{i:03d}" for i in range(40)]
    for split, rows in (("train", slice(0, 40)), ("dev", slice(40, 50))):
        names = ids if split == "train" else [f"dev{i}" for i in range(10)]
        write_data_dir(tmp_path / split, {"text.en": dict(zip(names, mt["src"][rows])),
                                          "text": dict(zip(names, mt["tgt"][rows])),
                                          "utt2spk": {u: u for u in names}})
    train_tokenizer(tmp_path / "tok_en", [tmp_path / "train" / "text.en"], type="char")  # the student's own source
    config = load_config(write_config(tmp_path, tmp_path / "student.yaml"),  # the tokenizer adopted from the teacher
                         [f"data.tokenizer={mt['config']['data']['tokenizer']}"])
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes)).eval()
    kd = parse_kd({"teacher": f"espnet:{mt['exp']}", "weight": 0.5, "temperature": 2.0}, config.model)
    loss_model, kd_set = setup_distillation(kd, student, train_set, config.data, torch.device("cpu"))
    assert isinstance(loss_model, WordKD) and loss_model.teacher is not None

    batch = collate([kd_set[u] for u in ids[:5]])
    teacher, model = mt["teacher"], mt["espnet"]
    src_tok, tok = (load_tokenizer(mt["config"]["data"][k]) for k in ("src_tokenizer", "tokenizer"))
    with torch.no_grad():
        logits, targets, *_ = student.decoder_logits(batch)
        term, weight = loss_model.kd_term(logits, targets, batch)
        # the oracle: ESPnet's encode + decoder forward, one utterance at a time, on ESPnet ids
        expected = []
        for n, utt in enumerate(ids[:5]):
            src = teacher.src_to_espnet[torch.tensor(src_tok.encode(mt["src"][n]))][None]
            y = _espnet_ids(teacher, tok.encode(mt["tgt"][n]))
            memory, memory_lengths = model.encode(src, torch.tensor([src.shape[1]]))
            ys_in = torch.cat([torch.tensor([model.sos]), y])[None]
            out, _ = model.decoder(memory, memory_lengths, ys_in, torch.tensor([len(y) + 1]))
            expected.append(out[0].index_select(-1, teacher.to_espnet))
    mask = targets != 0
    student_rows = torch.cat([logits[n][mask[n]] for n in range(5)])
    oracle = word_kd_loss(student_rows, torch.cat(expected), temperature=2.0)
    assert weight == 0.5 and float(term) == pytest.approx(float(oracle), rel=1e-5)

    other = tmp_path / "tok_other"
    train_tokenizer(other, [tmp_path / "train" / "text"], type="char")
    with pytest.raises(KdstError, match="kdst espnet-tokenizer"):
        setup_distillation(kd, student, train_set, replace(config.data, tokenizer=str(other)), torch.device("cpu"))


def test_top_k_cache_of_an_espnet_asr_teacher_is_espnets_decoder_top_k(tmp_path):
    """kdst topk --teacher espnet:PATH over a data dir of features: the cache's k entries per target position are
    the top k of ESPnet's own decoder forward on that utterance (kdst order), and it records the audio heard."""
    import kaldiio

    from kdst.data.kaldi_dir import write_data_dir
    from kdst.data.teacher_cache import TeacherCache
    from kdst.teacher.topk import write_cache

    texts = _sentences(WORDS_EN, 60, 4)
    exp, model = build_asr(tmp_path, texts, input_size=20)
    model.eval()
    teacher, config = load_espnet_teacher(exp)
    tok = load_tokenizer(config["data"]["tokenizer"])
    data, feats = tmp_path / "train", {}
    data.mkdir()
    rng = torch.Generator().manual_seed(5)
    with kaldiio.WriteHelper(f"ark,scp:{data / 'feats.ark'},{data / 'feats.scp'}") as writer:
        for i in range(6):
            feats[f"u{i}"] = torch.randn(30 + 4 * i, 20, generator=rng)
            writer(f"u{i}", feats[f"u{i}"].numpy())
    ids = sorted(feats)
    write_data_dir(data, {"text": {u: texts[i] for i, u in enumerate(ids)}, "utt2spk": {u: u for u in ids},
                          "utt2num_frames": {u: str(len(feats[u])) for u in ids},
                          "wav.scp": {u: f"/corpus/{u}.wav" for u in ids}})
    write_cache(f"espnet:{exp}", data, tmp_path / "topk", k=4, device="cpu")
    cache = TeacherCache(tmp_path / "topk")
    assert sorted(cache.ids) == ids and cache.fingerprint["features"] == "feats.scp, CMVN none"
    # ESPnet's forward on the batch the cache ran (all six, padded to the longest): ESPnet's subsampled mask
    # keeps up to two frames more of a padded utterance than the utterance alone has (its own batched training
    # and decoding do the same), so the distributions depend on the padding and the oracle pads alike
    lengths = torch.tensor([len(feats[u]) for u in ids])
    padded = torch.nn.utils.rnn.pad_sequence([feats[u] for u in ids], batch_first=True)
    ys = [torch.cat([torch.tensor([model.sos]), _espnet_ids(teacher, tok.encode(texts[i]))]) for i in range(6)]
    ys_lengths = torch.tensor([len(y) for y in ys])
    with torch.no_grad():
        enc, enc_lengths = model.encode(padded, lengths)
        logits, _ = model.decoder(enc, enc_lengths, torch.nn.utils.rnn.pad_sequence(ys, batch_first=True), ys_lengths)
    for i, utt in enumerate(ids):
        expected = logits[i, :ys_lengths[i]].index_select(-1, teacher.to_espnet).topk(4, dim=-1)
        indices, values = cache.get(utt)
        assert torch.equal(torch.from_numpy(indices).long(), expected.indices), utt
        torch.testing.assert_close(torch.from_numpy(values).float(), expected.values - expected.values[:, :1],
                                   rtol=1e-3, atol=2e-3)
