from pathlib import Path

import pytest

from kdst.cli import main
from kdst.data.tokenizer import (BLANK_ID, SOS_EOS_ID, UNK_ID, load_tokenizer, tokenizer_fingerprint,
                                 train_tokenizer)
from kdst.errors import DataError, KdstError

SENTENCES = [f"der {adj} Hund sieht {n} Katzen nicht" for adj in ("alte", "kleine", "große") for n in range(40)]


@pytest.fixture
def kaldi_text(tmp_path: Path) -> Path:
    path = tmp_path / "text"
    path.write_text("".join(f"utt{i:03d} {s}\n" for i, s in enumerate(SENTENCES)), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_round_trip_and_special_ids(kind: str, kaldi_text: Path, tmp_path: Path):
    train_tokenizer(tmp_path / kind, [kaldi_text], type=kind, vocab_size=60)
    tokenizer = load_tokenizer(tmp_path / kind)
    assert tokenizer.tokens[:3] == ["<blank>", "<unk>", "<sos/eos>"]
    for sentence in SENTENCES[:10] + ["der  große   Hund"]:
        ids = tokenizer.encode(sentence)
        assert min(ids) > SOS_EOS_ID, "text never encodes to blank, unk or eos"
        assert tokenizer.decode(ids) == " ".join(sentence.split())
    assert tokenizer.decode([BLANK_ID, *tokenizer.encode("Hund"), SOS_EOS_ID]) == "Hund"
    assert UNK_ID in tokenizer.encode("Zebra") or kind != "char"


def test_sentencepiece_ids_agree_with_the_token_list(kaldi_text: Path, tmp_path: Path):
    train_tokenizer(tmp_path / "bpe", [kaldi_text], vocab_size=50)
    tokenizer = load_tokenizer(tmp_path / "bpe")
    assert len(tokenizer.tokens) == 50
    for i in tokenizer.encode("der kleine Hund"):
        assert tokenizer.model.id_to_piece(i) == tokenizer.tokens[i]


def test_small_corpus_gives_a_smaller_vocabulary_instead_of_failing(kaldi_text: Path, tmp_path: Path):
    train_tokenizer(tmp_path / "bpe", [kaldi_text], vocab_size=5000)
    assert 30 < len(load_tokenizer(tmp_path / "bpe").tokens) < 5000


def test_retraining_replaces_the_directory_and_changes_the_fingerprint(kaldi_text: Path, tmp_path: Path):
    train_tokenizer(tmp_path / "tok", [kaldi_text], vocab_size=60)
    first = tokenizer_fingerprint(tmp_path / "tok")
    train_tokenizer(tmp_path / "tok", [kaldi_text], vocab_size=60)
    assert tokenizer_fingerprint(tmp_path / "tok") == first, "training is deterministic"
    train_tokenizer(tmp_path / "tok", [kaldi_text], vocab_size=50)
    assert tokenizer_fingerprint(tmp_path / "tok") != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text", "tok"], "no temporary dirs left behind"


def test_errors(kaldi_text: Path, tmp_path: Path):
    with pytest.raises(KdstError, match="unknown tokenizer type"):
        train_tokenizer(tmp_path / "t", [kaldi_text], type="wordpiece")
    with pytest.raises(KdstError, match=r"sentencepiece: Vocabulary size is smaller than required_chars"):
        train_tokenizer(tmp_path / "t", [kaldi_text], vocab_size=10)
    with pytest.raises(DataError, match="not a kdst tokenizer directory"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad").write_bytes(b"utt1 caf\xe9\n")
    with pytest.raises(DataError, match=r"bad:1: not valid UTF-8"):
        train_tokenizer(tmp_path / "t", [tmp_path / "bad"])


def test_cli_train_encode_decode(kaldi_text: Path, tmp_path: Path, capsys):
    assert main(["tokenizer", "train", str(tmp_path / "tok"), str(kaldi_text), "--vocab-size", "60"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--keyed", str(tmp_path / "tok"), str(kaldi_text)]) == 0
    encoded = capsys.readouterr().out
    (tmp_path / "ids").write_text(encoded)
    assert main(["tokenizer", "decode", "--keyed", str(tmp_path / "tok"), str(tmp_path / "ids")]) == 0
    assert capsys.readouterr().out == kaldi_text.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_user_symbols_stay_whole(tmp_path, kind):
    text = tmp_path / "text"
    lines = [f"u{i} THE SALE <NOISE> OF HOTELS ,COMMA {'<NOISE> ' if i % 2 else ''}IS PART" for i in range(50)]
    text.write_text("".join(f"{x}\n" for x in lines))
    train_tokenizer(tmp_path / "tok", [text], type=kind, vocab_size=40, user_symbols=["<NOISE>"])
    tok = load_tokenizer(tmp_path / "tok")
    ids = tok.encode("SALE <NOISE> OF")
    noise = tok.tokens.index("<NOISE>")
    assert ids.count(noise) == 1
    assert "<" not in [tok.tokens[i] for i in ids]
    assert tok.decode(ids) == "SALE <NOISE> OF"
    with pytest.raises(KdstError, match="special"):
        train_tokenizer(tmp_path / "bad", [text], type=kind, user_symbols=["<unk>"])
