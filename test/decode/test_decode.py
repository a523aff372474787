"""kdst decode over a data dir (one job and several), with a CTC weight, and kdst results."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import make_mt_task, write_config
from kdst.cli import main
from kdst.data.kaldi_dir import DataDir, iter_entries
from kdst.decode.decode import check_joint_decoding
from kdst.errors import KdstError
from kdst.train.trainer import load_config, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = make_mt_task(tmp_path_factory.mktemp("mt"))
    exp = root / "exp" / "mt"
    run(load_config(write_config(root, root / "c.yaml", epochs=4)), exp)
    assert main(["average", "--exp-dir", str(exp), "--num", "2"]) == 0
    return root, exp / "avg_best2.pt"


def test_parallel_jobs_equal_one_job(trained, tmp_path: Path):
    root, checkpoint = trained
    common = ["decode", "--checkpoint", str(checkpoint), "--data-dir", str(root / "dev"), "--beam", "3",
              "--nbest", "3", "--max-len-ratio", "2.0"]
    assert main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "two"), "--nj", "2"]) == 0
    assert (tmp_path / "one" / "hyp.txt").read_text() == (tmp_path / "two" / "hyp.txt").read_text()
    # Other batches mean other padding: scores may differ in the last float digits, texts may not.
    one, two = (list(iter_entries(tmp_path / d / "nbest.txt")) for d in ("one", "two"))
    assert [(e.key, e.value.split(" ", 2)[2:]) for e in one] == [(e.key, e.value.split(" ", 2)[2:]) for e in two]
    for a, b in zip(one, two):
        assert [float(x) for x in a.value.split()[:2]] == pytest.approx([float(x) for x in b.value.split()[:2]],
                                                                        abs=1e-4)
    stats = json.loads((tmp_path / "two" / "decode_stats.json").read_text())
    assert stats["utterances"] == 16 and stats["jobs"] == 2 and stats["sentences_per_s"] > 0
    assert "rtf" not in stats  # text input: no audio

    hyp_ids = [e.key for e in iter_entries(tmp_path / "one" / "hyp.txt", allow_empty_value=True)]
    assert hyp_ids == DataDir(root / "dev").utterances()
    nbest: dict[str, list[tuple[int, float]]] = {}
    for e in iter_entries(tmp_path / "one" / "nbest.txt"):
        utt, rank = e.key.rsplit("-", 1)
        nbest.setdefault(utt, []).append((int(rank), float(e.value.split()[0])))
    assert sorted(nbest) == hyp_ids
    for entries in nbest.values():
        ranks = sorted(entries)
        assert [r for r, _ in ranks] == list(range(1, len(ranks) + 1))
        scores = [s for _, s in ranks]
        assert scores == sorted(scores, reverse=True), "rank 1 is the best"


def test_results_table(trained, tmp_path: Path, capsys):
    root, checkpoint = trained
    exp = tmp_path / "exp"
    for system in ("a", "b"):
        assert main(["decode", "--checkpoint", str(checkpoint), "--data-dir", str(root / "dev"), "--greedy",
                     "--max-len-ratio", "2.0", "--output-dir", str(exp / system / "decode_dev")]) == 0
    capsys.readouterr()
    assert main(["results", "--exp-dir", str(exp), "--data-dir", str(root), "--systems", "a b", "--sets", "dev"]) == 0
    results = json.loads((exp / "results.json").read_text())
    same = ("bleu", "chrf", "ter", "n", "params")
    assert [results["a"][k] for k in same] == [results["b"][k] for k in same] and results["a"]["n"] == 16
    assert 0 <= results["a"]["bleu"] <= 100 and results["a"]["params"] > 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith("| system | BLEU | chrF | TER | params")
    assert "| a |" in table and "BLEU: `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in table


def test_missing_hypotheses_are_an_error(tmp_path: Path, capsys):
    (tmp_path / "data" / "dev").mkdir(parents=True)
    assert main(["results", "--exp-dir", str(tmp_path / "exp"), "--data-dir", str(tmp_path / "data"),
                 "--systems", "a", "--sets", "dev"]) == 1
    assert "decode_dev/hyp.txt: missing" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_ctc(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny MT model with a CTC branch on its output vocabulary (as an ASR model has)."""
    root = make_mt_task(tmp_path_factory.mktemp("mt_ctc"))
    config = write_config(root, root / "c.yaml", epochs=3)
    values = yaml.safe_load(config.read_text())
    values["model"]["ctc_weight"] = 0.3
    config.write_text(yaml.safe_dump(values))
    exp = root / "exp" / "mt_ctc"
    run(load_config(config), exp)
    assert main(["average", "--exp-dir", str(exp), "--num", "2"]) == 0
    return root, exp / "avg_best2.pt"


def nbest_entries(decode_dir: Path) -> list[tuple[str, float, float, str]]:
    return [(e.key, float(e.value.split()[0]), float(e.value.split()[1]), " ".join(e.value.split()[2:]))
            for e in iter_entries(decode_dir / "nbest.txt")]


@pytest.mark.slow  # two decoding jobs start their own Python
def test_ctc_weight(trained_ctc, tmp_path: Path):
    root, checkpoint = trained_ctc
    common = ["decode", "--checkpoint", str(checkpoint), "--data-dir", str(root / "dev"), "--beam", "3",
              "--nbest", "3", "--max-len-ratio", "2.0"]
    assert main([*common, "--output-dir", str(tmp_path / "att")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "zero"), "--ctc-weight", "0"]) == 0
    for name in ("hyp.txt", "nbest.txt"):  # weight 0 is the attention search, to the last digit
        assert (tmp_path / "att" / name).read_text() == (tmp_path / "zero" / name).read_text()
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--ctc-weight", "0.5"]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "two"), "--ctc-weight", "0.5", "--nj", "2"]) == 0
    assert (tmp_path / "one" / "hyp.txt").read_text() == (tmp_path / "two" / "hyp.txt").read_text()
    joint, attention = nbest_entries(tmp_path / "one"), nbest_entries(tmp_path / "att")
    assert [e[1:] for e in joint] != [e[1:] for e in attention]  # the n-best scores are the joint ones
    for utt in DataDir(root / "dev").utterances():
        scores = [e[1] for e in joint if e[0].rsplit("-", 1)[0] == utt]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    stats = json.loads((tmp_path / "two" / "decode_stats.json").read_text())
    assert stats["ctc_weight"] == 0.5 and stats["jobs"] == 2


def test_ctc_weight_refusals(trained, trained_ctc, tmp_path: Path, capsys):
    (root, plain), (_, with_ctc) = trained, trained_ctc
    common = ["decode", "--data-dir", str(root / "dev"), "--output-dir", str(tmp_path / "out")]
    for model, extra, message in [
            (plain, [], "has no CTC branch (it was trained with model.ctc_weight 0)"),
            (with_ctc, ["--greedy"], "--ctc-weight needs beam search: use --beam 1 instead of --greedy"),
            (with_ctc, ["--ctc-weight", "1.5"], "--ctc-weight must be between 0 and 1, not 1.5")]:
        capsys.readouterr()
        assert main([*common, "--checkpoint", str(model), "--ctc-weight", "0.3", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_ctc_weight_refuses_a_ctc_branch_on_another_text():
    """ST: a CTC branch on the transcript (data.ctc_text) cannot score translations."""
    model = SimpleNamespace(ctc=torch.nn.Linear(4, 8))
    st = SimpleNamespace(ctc_text="text.en", ctc_tokenizer="tok_en", text="text", tokenizer="tok_de")
    with pytest.raises(KdstError, match=r"^--ctc-weight: st\.pt: its CTC branch predicts text\.en \(data\.ctc_text\)"):
        check_joint_decoding(SimpleNamespace(reference="st.pt", model=model, data=st), greedy=False)
    asr = SimpleNamespace(ctc_text="text", ctc_tokenizer="tok", text="text", tokenizer="tok")  # the same text
    check_joint_decoding(SimpleNamespace(reference="asr.pt", model=model, data=asr), greedy=False)


def test_hypotheses_with_line_breaks_stay_on_their_line(trained, tmp_path: Path, monkeypatch):
    """A byte-level vocabulary (Whisper's) can decode to line breaks and tabs: hyp.txt and nbest.txt keep one line
    per hypothesis, its words those of the plain decoding."""
    root, checkpoint = trained
    common = ["decode", "--checkpoint", str(checkpoint), "--data-dir", str(root / "dev"), "--beam", "2",
              "--nbest", "2", "--max-len-ratio", "2.0"]
    assert main([*common, "--output-dir", str(tmp_path / "plain")]) == 0
    from kdst.data import tokenizer as tokenizers
    for name in ("SentencePieceTokenizer", "CharTokenizer"):
        cls = getattr(tokenizers, name)
        plain = cls.decode
        monkeypatch.setattr(cls, "decode", lambda self, ids, plain=plain: "\n" + plain(self, ids).replace(" ", "\n\t"))
    assert main([*common, "--output-dir", str(tmp_path / "broken")]) == 0
    for name in ("hyp.txt", "nbest.txt"):
        plain_lines = (tmp_path / "plain" / name).read_text().splitlines()
        broken_lines = (tmp_path / "broken" / name).read_text().splitlines()
        assert broken_lines == plain_lines  # every decoding began with a line break
