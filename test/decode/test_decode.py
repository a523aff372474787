"""kdst decode over a data dir (one job and several) and kdst results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_mt_task, write_config
from kdst.cli import main
from kdst.data.kaldi_dir import DataDir, iter_entries
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
