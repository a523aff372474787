"""validate-data reports each problem as FILE:LINE; fix-data keeps what is consistent."""

import re
from pathlib import Path


from kdst.cli import main
from kdst.data.kaldi_dir import DataDir
from kdst.data.validate import fix_data_dir, validate_data_dir


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def set_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def only_problem(data: Path, **kwargs) -> str:
    problems = validate_data_dir(data, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_dirs_have_no_problems(segmented_dir: Path, plain_dir: Path):
    assert validate_data_dir(segmented_dir) == []
    assert validate_data_dir(plain_dir) == []


def test_missing_audio(segmented_dir: Path):
    Path(DataDir(segmented_dir).require("wav.scp")["ted_00002"]).unlink()
    problem = only_problem(segmented_dir)
    assert problem.startswith(f"{segmented_dir}/wav.scp:2: recording 'ted_00002': audio file not found")


def test_corrupt_audio(segmented_dir: Path):
    Path(DataDir(segmented_dir).require("wav.scp")["ted_00001"]).write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert only_problem(segmented_dir).startswith(f"{segmented_dir}/wav.scp:1: recording 'ted_00001': "
                                                  f"cannot decode audio")


def test_failing_pipe(segmented_dir: Path):
    set_lines(segmented_dir / "wav.scp", ["ted_00001 exit 3 |", *lines_of(segmented_dir / "wav.scp")[1:]])
    assert "wav.scp:1: recording 'ted_00001': command failed (exit 3)" in only_problem(segmented_dir)


def test_duplicate_key(segmented_dir: Path):
    text = lines_of(segmented_dir / "text.en")
    set_lines(segmented_dir / "text.en", [text[0], text[0].split()[0] + " again", *text[1:]])
    assert only_problem(segmented_dir) == (f"{segmented_dir}/text.en:2: duplicate key '{text[0].split()[0]}' "
                                           f"(first on line 1)")


def test_unsorted_keys(segmented_dir: Path):
    text = lines_of(segmented_dir / "text")
    set_lines(segmented_dir / "text", [text[1], text[0], *text[2:]])
    assert only_problem(segmented_dir) == (f"{segmented_dir}/text:2: not sorted (LC_ALL=C): "
                                           f"'{text[0].split()[0]}' comes after '{text[1].split()[0]}'")


def test_empty_transcript(segmented_dir: Path):
    text = lines_of(segmented_dir / "text.en")
    key = text[2].split()[0]
    set_lines(segmented_dir / "text.en", [*text[:2], key, *text[3:]])
    assert only_problem(segmented_dir) == f"{segmented_dir}/text.en:3: empty text for utterance '{key}'"


def test_segment_past_end_of_audio(segmented_dir: Path):
    segments = lines_of(segmented_dir / "segments")
    utt, rec, start, _ = segments[1].split()
    set_lines(segmented_dir / "segments", [segments[0], f"{utt} {rec} {start} 7.5", *segments[2:]])
    assert only_problem(segmented_dir) == (f"{segmented_dir}/segments:2: segment ends at 7.5 s, past the end of "
                                           f"recording '{rec}' (3.000 s)")
    assert validate_data_dir(segmented_dir, check_audio=False) == []


def test_segment_ending_before_start(segmented_dir: Path):
    segments = lines_of(segmented_dir / "segments")
    utt, rec, _, _ = segments[0].split()
    set_lines(segmented_dir / "segments", [f"{utt} {rec} 1.0 0.5", *segments[1:]])
    assert only_problem(segmented_dir) == f"{segmented_dir}/segments:1: segment ends (0.5) before it starts (1.0)"


def test_non_utf8_text(segmented_dir: Path):
    raw = (segmented_dir / "text.de").read_bytes().split(b"\n")
    raw[1] = raw[1].split(b" ")[0] + b" Stra\xdfe"  # latin-1, not UTF-8
    (segmented_dir / "text.de").write_bytes(b"\n".join(raw))
    assert only_problem(segmented_dir).startswith(f"{segmented_dir}/text.de:2: not valid UTF-8")


def test_ids_that_do_not_match_across_files(segmented_dir: Path):
    text = lines_of(segmented_dir / "text")
    orphan = "ted_00002_9999999_9999999 stray line"
    set_lines(segmented_dir / "text", [*text[:-1], orphan])  # drops the last utterance, adds an unknown one
    problems = validate_data_dir(segmented_dir)
    missing = text[-1].split()[0]
    assert f"{segmented_dir}/text:4: utterance 'ted_00002_9999999_9999999' is not in utt2spk" in problems
    assert f"{segmented_dir}/utt2spk:4: utterance '{missing}' has no entry in text" in problems
    assert len(problems) == 2


def test_recording_missing_from_wav_scp(segmented_dir: Path):
    set_lines(segmented_dir / "wav.scp", lines_of(segmented_dir / "wav.scp")[:1])
    problems = validate_data_dir(segmented_dir)
    assert problems == [f"{segmented_dir}/segments:{n}: recording 'ted_00002' is not in wav.scp" for n in (3, 4)]


def test_speaker_order_must_follow_utterance_order(plain_dir: Path):
    set_lines(plain_dir / "utt2spk", ["spk1-utt0 b", "spk1-utt1 a", "spk1-utt2 b"])
    set_lines(plain_dir / "spk2utt", ["a spk1-utt1", "b spk1-utt0 spk1-utt2"])
    problem = only_problem(plain_dir)
    assert problem.startswith(f"{plain_dir}/utt2spk:2: speaker 'a' after 'b'")


def test_stale_spk2utt(plain_dir: Path):
    set_lines(plain_dir / "spk2utt", ["spk1 spk1-utt0 spk1-utt1"])
    assert only_problem(plain_dir).startswith(f"{plain_dir}/spk2utt:1: utterances of speaker 'spk1' differ")


def test_many_problems_are_capped_per_file(tmp_path: Path, plain_dir: Path):
    set_lines(plain_dir / "text", [f"z{i:03d} x" for i in range(50, 0, -1)])  # unsorted and unknown ids
    problems = validate_data_dir(plain_dir, check_audio=False)
    assert sum(re.match(rf"{plain_dir}/text:\d+: ", p) is not None for p in problems) == 20
    assert f"{plain_dir}/text: ... and " in problems[-1]


def test_cli_exit_status_and_one_line_per_problem(segmented_dir: Path, capsys):
    assert main(["validate-data", str(segmented_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"{segmented_dir}: OK"
    text = lines_of(segmented_dir / "text.en")
    set_lines(segmented_dir / "text.en", [text[0].split()[0], *text[1:]])
    assert main(["validate-data", str(segmented_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{segmented_dir}/text.en:1: empty text for utterance '{text[0].split()[0]}'",
                   f"{segmented_dir}: 1 problem(s)"]


def test_fix_keeps_consistent_utterances_and_backs_up(segmented_dir: Path):
    text_en = lines_of(segmented_dir / "text.en")
    empty = text_en[0].split()[0]
    set_lines(segmented_dir / "text.en", [empty, *text_en[1:]])          # empty transcript
    text = lines_of(segmented_dir / "text")
    set_lines(segmented_dir / "text", text[:-1] + ["zzz_orphan hallo"])  # last utt missing + an orphan
    original = (segmented_dir / "text").read_text()

    report = fix_data_dir(segmented_dir)

    assert (report.total, report.kept) == (5, 2)
    assert report.reasons == {"with empty text in text.en": 1, "missing from text": 1,
                              "missing from utt2spk": 1}
    assert "kept 2 of 5 utterances; dropped 3" in str(report)
    assert (segmented_dir / ".backup" / "text").read_text() == original
    assert validate_data_dir(segmented_dir) == []
    assert len(DataDir(segmented_dir).utterances()) == 2


def test_fix_drops_unreadable_audio_when_asked(segmented_dir: Path):
    Path(DataDir(segmented_dir).require("wav.scp")["ted_00002"]).unlink()
    assert fix_data_dir(segmented_dir).kept == 4  # structure alone is fine
    report = fix_data_dir(segmented_dir, check_audio=True)
    assert report.kept == 2 and report.reasons == {"with unreadable audio": 2}
    assert list(DataDir(segmented_dir).require("wav.scp")) == ["ted_00001"]
    assert validate_data_dir(segmented_dir) == []


def test_fix_removes_duplicates_and_sorts(plain_dir: Path):
    text = lines_of(plain_dir / "text")
    set_lines(plain_dir / "text", [text[2], text[0], text[1], text[0].split()[0] + " duplicate"])
    report = fix_data_dir(plain_dir)
    assert report.kept == 3
    assert lines_of(plain_dir / "text") == text
    assert validate_data_dir(plain_dir) == []


def test_cli_error_for_missing_dir(tmp_path: Path, capsys):
    assert main(["fix-data", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "missing" in err
