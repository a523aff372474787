"""exp/systems.json: registering systems (also from jobs side by side) and reading them back."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from kdst.cli import main
from kdst.errors import KdstError
from kdst.report.systems import MANIFEST, System, read_systems, register, select


def test_register_read_and_replace_in_place(tmp_path: Path):
    exp = tmp_path / "exp"
    assert read_systems(exp) == []
    register(exp, System("mt_teacher", "mt", "teacher", model="espnet:/models/mt"))
    register(exp, System("st_word", "st", "student", mode="word", arch="st", teacher="espnet:/models/mt"))
    register(exp, System("st_none", "st", "student", arch="st"))
    # a stage that runs again registers the system again: its entry changes, its place does not
    register(exp, System("st_word", "st", "student", mode="word", arch="st", seed=3, teacher="exp/mt/avg.pt"))
    systems = read_systems(exp)
    assert [s.name for s in systems] == ["mt_teacher", "st_word", "st_none"]
    assert systems[1] == System("st_word", "st", "student", mode="word", arch="st", seed=3, teacher="exp/mt/avg.pt")
    assert [s.name for s in select(systems, task="st", role="student")] == ["st_word", "st_none"]
    content = json.loads((exp / MANIFEST).read_text())
    assert content["version"] == 1 and content["systems"][0] == {
        "name": "mt_teacher", "task": "mt", "role": "teacher", "mode": "none", "arch": "", "seed": None,
        "teacher": None, "exp_dir": "", "model": "espnet:/models/mt", "init": None, "group": None,
        "baseline": False}
    assert not list(exp.glob(f".{MANIFEST}.*.tmp"))  # written under a temporary name, then renamed


def test_a_manifest_without_groups_reads_and_seeds_share_a_group(tmp_path: Path):
    """A manifest written before ``group`` and ``baseline`` existed reads as systems of their own."""
    old = {"name": "st_none", "task": "st", "role": "student", "mode": "none", "arch": "st", "seed": 1,
           "teacher": None, "exp_dir": "exp/st_none", "model": "exp/st_none/avg.pt", "init": None}
    (tmp_path / MANIFEST).write_text(json.dumps({"version": 1, "systems": [old]}))
    (system,) = read_systems(tmp_path)
    assert (system.group, system.group_name, system.baseline) == (None, "st_none", False)
    register(tmp_path, System("st_word_s2", "st", "student", mode="word", seed=2, group="st_word"))
    assert [s.group_name for s in read_systems(tmp_path)] == ["st_none", "st_word"]
    for bad in ("", "exp/st_word"):
        with pytest.raises(KdstError, match=f"group '{bad}': a system name"):
            System("st_word_s3", "st", "student", group=bad)


def register_several(exp: Path, job: int) -> None:
    for i in range(5):
        register(exp, System(f"student{job}_{i}", "asr", "student", mode="gold", arch="small"))


def test_jobs_side_by_side_lose_no_entry(tmp_path: Path):
    exp = tmp_path / "exp"
    # fork: the children need nothing re-imported, only the function
    jobs = [multiprocessing.get_context("fork").Process(target=register_several, args=(exp, job)) for job in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0] * 6
    assert sorted(s.name for s in read_systems(exp)) == sorted(f"student{j}_{i}" for j in range(6) for i in range(5))


def test_bad_entries_and_bad_files_are_errors(tmp_path: Path):
    with pytest.raises(KdstError, match="task 'tts' is none of mt, st, asr, rnnt"):
        System("x", "tts", "student")
    with pytest.raises(KdstError, match="role 'pupil'"):
        System("x", "st", "pupil")
    with pytest.raises(KdstError, match="a directory name under exp/, not a path"):
        System("exp/x", "st", "student")
    (tmp_path / MANIFEST).write_text('{"systems": [{"name": "x"}]}')
    with pytest.raises(KdstError, match="not a systems manifest"):
        read_systems(tmp_path)


def test_command_line_add_and_list(tmp_path: Path, capsys):
    exp = tmp_path / "exp"
    (exp / "st_word_ft").mkdir(parents=True)
    (exp / "st_word_ft" / "config.yaml").write_text("train:\n  seed: 7\n  epochs: 3\n")
    assert main(["systems", "add", "--exp-dir", str(exp), "--name", "mt_teacher", "--task", "mt",
                 "--role", "teacher", "--model", "exp/mt_teacher/avg_best5.pt"]) == 0
    assert main(["systems", "add", "--exp-dir", str(exp), "--name", "st_word_ft", "--task", "st", "--role", "student",
                 "--mode", "word", "--arch", "st", "--teacher", "exp/mt_teacher/avg_best5.pt",
                 "--init", "exp/st_word/avg_best5.pt", "--teacher", ""]) == 0
    word = read_systems(exp)[1]
    # the seed of its config.yaml; an empty option (a recipe variable left empty) is no value
    assert (word.seed, word.teacher, word.init, word.exp_dir) == (7, None, "exp/st_word/avg_best5.pt",
                                                                   str(exp / "st_word_ft"))
    assert read_systems(exp)[0].seed is None  # no config.yaml: not trained by kdst train
    assert (word.group, word.baseline) == (None, False)
    assert main(["systems", "add", "--exp-dir", str(exp), "--name", "st_none_seed2", "--task", "st",
                 "--role", "student", "--seed", "2", "--group", "st_none", "--baseline"]) == 0
    none2 = read_systems(exp)[2]
    assert (none2.seed, none2.group, none2.baseline) == (2, "st_none", True)
    capsys.readouterr()
    assert main(["systems", "list", "--exp-dir", str(exp), "--task", "st", "--names"]) == 0
    assert capsys.readouterr().out == "st_word_ft st_none_seed2\n"
    assert main(["systems", "list", "--exp-dir", str(exp)]) == 0
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == \
        ["mt_teacher", "st_word_ft", "st_none_seed2"]
    assert main(["systems", "add", "--exp-dir", str(exp), "--name", "a/b", "--task", "st", "--role", "student"]) == 1
    assert "not a path" in capsys.readouterr().err
