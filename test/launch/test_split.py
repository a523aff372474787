"""Commands that split a data dir into jobs (kdst.launch.split): N jobs give what one job gives."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from helpers import make_mt_task, write_config
from kdst.cli import add_decode_arguments, for_jobs, main, model_reference
from kdst.data.teacher_cache import TeacherCache
from kdst.launch.split import JOB, options_path, read_job_options, write_job_options
from kdst.train.trainer import load_config, run


def test_job_options_round_trip(tmp_path: Path, monkeypatch):
    """Every parsed option reaches the job as it was parsed, one the runner has never heard of included."""
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_decode_arguments(parser)
    parser.add_argument("--brand-new", type=float, default=0.5)  # added to the command, not to the runner
    parser.add_argument("--lexicons", type=Path, nargs="*")
    parser.set_defaults(command="decode", run_command=lambda args: 0)
    args = parser.parse_args(["--model", "exp/m.pt", "--data-dir", "data/dev", "--output-dir", "out",
                              "--beam", "7", "--brand-new", "2.5", "--nj", "4", "--lexicons", "a", "b"])
    path = tmp_path / "log" / "decode.options.json"
    path.parent.mkdir()
    write_job_options(args, path, {"data_dir": tmp_path / "data" / "split4" / JOB,
                                   "output_dir": tmp_path / "out" / "split4" / JOB})
    assert json.loads(path.read_text())["options"]["brand_new"] == 2.5

    job = read_job_options(path, 3)
    expected = {**vars(args), "nj": 1, "data_dir": tmp_path / "data" / "split4" / "3",
                "output_dir": tmp_path / "out" / "split4" / "3", "lexicons": [tmp_path / "a", tmp_path / "b"]}
    del expected["run_command"]  # a function: the job looks its command up by name
    assert vars(job) == expected
    assert isinstance(job.data_dir, Path) and isinstance(job.beam, int) and job.model == ["exp/m.pt"]
    assert options_path(Path("exp/x/log/decode.JOB.log")) == Path("exp/x/log/decode.options.json")


def test_jobs_get_an_absolute_model_reference(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(model=None, teacher_espnet=Path("exp/mt_espnet"), beam=5)
    assert model_reference(args, "--model") == ["espnet:exp/mt_espnet"]  # the deprecated option, as a reference
    assert for_jobs(args, ["espnet:exp/mt_espnet"]).model == [f"espnet:{tmp_path / 'exp' / 'mt_espnet'}"]
    assert vars(for_jobs(args, ["exp/m.pt", "b.pt"])) == {  # several: an ensemble (kdst.models.ensemble)
        "model": [str(tmp_path / "exp" / "m.pt"), str(tmp_path / "b.pt")], "teacher_espnet": None, "beam": 5}


def test_unreadable_options_file_is_a_one_line_error(tmp_path: Path, capsys):
    (tmp_path / "o.json").write_text("{not json")
    assert main(["split-job", str(tmp_path / "o.json"), "1"]) == 1
    assert "cannot read job options" in capsys.readouterr().err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny MT task and a model trained on it for one epoch."""
    root = make_mt_task(tmp_path_factory.mktemp("mt"), sizes=(("train", 48, 1), ("dev", 10, 2)))
    run(load_config(write_config(root, root / "c.yaml", epochs=1)), root / "exp")
    return root, root / "exp" / "epoch-1.pt"


# One utterance per batch: the jobs' batches are the single job's batches, so even the
# scores must agree to the last digit (what this tests is the splitting, not padding).
# Short hypotheses (an undertrained model babbles to the length limit): a test, not a translation.
DECODE = ["--batch-units", "1", "--max-len-ratio", "0.5", "--max-len-bias", "2", "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("search", [["--beam", "2"], ["--beam", "3", "--nbest", "3"]], ids=["1best", "nbest3"])
def test_decode_jobs_equal_one_job(teacher, tmp_path: Path, monkeypatch, search):
    root, checkpoint = teacher
    assert main(["decode", "--model", str(checkpoint), "--data-dir", str(root / "dev"),
                 "--output-dir", str(tmp_path / "one"), *DECODE, *search]) == 0
    # Relative paths and the old option name: the jobs run in the launcher's directory, but must not need to.
    monkeypatch.chdir(root)
    assert main(["decode", "--checkpoint", "exp/epoch-1.pt", "--data-dir", "dev", "--output-dir",
                 str(Path("..") / tmp_path.name / "three"), "--nj", "3", *DECODE, *search]) == 0
    for name in ("hyp.txt", "nbest.txt"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "three" / name).read_text(), name
    if "--nbest" in search:
        ranks = [line.split()[0].rsplit("-", 1)[1] for line in (tmp_path / "one" / "nbest.txt").read_text().splitlines()]
        assert set(ranks) == {"1", "2", "3"}
    logs = sorted((tmp_path / "three" / "log").glob("decode.*.log"))
    assert [p.name for p in logs] == ["decode.1.log", "decode.2.log", "decode.3.log"]
    assert all(p.read_text().splitlines()[-1].startswith("# Ended (code 0) ") for p in logs)
    stats = json.loads((tmp_path / "three" / "decode_stats.json").read_text())
    assert stats["jobs"] == 3 and stats["utterances"] == 10


@pytest.mark.slow
def test_topk_jobs_equal_one_job(teacher, tmp_path: Path, capsys):
    root, checkpoint = teacher
    common = ["topk", "--teacher", str(checkpoint), "--data-dir", str(root / "dev"), "--k", "4", "--device", "cpu",
              "--batch-units", "1"]  # as in DECODE: the same batches in the jobs as in the one job
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--nj", "2"]) == 0
    one, two = TeacherCache(tmp_path / "one"), TeacherCache(tmp_path / "two")
    assert one.ids == two.ids and len(one) == 10
    assert (one.k, one.mode, one.fingerprint) == (two.k, two.mode, two.fingerprint)
    for utt in one.ids:
        for a, b in zip(one.get(utt), two.get(utt)):
            np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "two.split2").exists(), "the job parts are removed once merged"
    assert sorted(p.name for p in (tmp_path / "log").glob("two.*.log")) == ["two.1.log", "two.2.log"]


@pytest.mark.slow
def test_fbank_jobs_equal_one_job(plain_dir: Path, tmp_path: Path):
    assert main(["fbank", str(plain_dir), str(tmp_path / "f1")]) == 0
    single = {k: v.copy() for k, v in kaldiio.load_scp(str(plain_dir / "feats.scp")).items()}
    frames = (plain_dir / "utt2num_frames").read_text()
    assert main(["fbank", "--nj", "3", str(plain_dir), str(tmp_path / "f3")]) == 0
    parallel = kaldiio.load_scp(str(plain_dir / "feats.scp"))
    assert sorted(parallel) == sorted(single) and len(single) == 3
    for key in single:
        np.testing.assert_array_equal(parallel[key], single[key])
    assert (plain_dir / "utt2num_frames").read_text() == frames
    assert sorted(p.name for p in (tmp_path / "f3" / "log").glob("*.log")) == [
        f"raw_fbank_plain.{i}.log" for i in (1, 2, 3)]


def test_one_model_option(tmp_path: Path, capsys):
    common = ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    assert main(["decode", "--model", "a.pt", "--teacher-espnet", "exp/e", *common]) == 1
    assert "--model and --teacher-espnet both name a model" in capsys.readouterr().err
    assert main(["decode", *common]) == 1
    assert "no model: give --model CHECKPOINT or --model espnet:DIR" in capsys.readouterr().err
    assert main(["topk", "--teacher", "a.pt", "--teacher-espnet", "e", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "c")]) == 1
    assert "--teacher and --teacher-espnet both name a model" in capsys.readouterr().err
