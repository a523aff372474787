"""kdst decode on bad inputs: each is one error line naming the file (and line or option), and no output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CORRUPTIONS = ("truncated", "empty", "random")


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_checkpoint(models, fails, corrupt, tmp_path: Path, how: str):
    model = corrupt(models.mt_model, tmp_path / f"{how}.pt", how)
    line = fails(["decode", "--model", model, "--data-dir", models.mt / "dev", "--output-dir", tmp_path / "out"],
                 model)
    assert "not a readable checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_feats_scp_without_an_utterance(models, fails, tmp_path: Path):
    data = shutil.copytree(models.st / "dev", tmp_path / "dev")
    lines = (data / "feats.scp").read_text().splitlines(keepends=True)
    dropped = lines.pop(1).split()[0]
    (data / "feats.scp").write_text("".join(lines))
    fails(["decode", "--model", models.st_model, "--data-dir", data, "--output-dir", tmp_path / "out"],
          data / "feats.scp", f"'{dropped}'")
    assert not (tmp_path / "out").exists()


def test_feature_ark_truncated_mid_matrix(models, fails, tmp_path: Path):
    data = shutil.copytree(models.st / "dev", tmp_path / "dev")
    ark = (models.st / "dev" / "feats.ark").read_bytes()
    (data / "feats.ark").write_bytes(ark[: len(ark) - 1000])  # the last matrix loses its end
    scp = (data / "feats.scp").read_text().replace(str(models.st / "dev"), str(data))
    (data / "feats.scp").write_text(scp)
    last = scp.splitlines()[-1].split()[0]
    fails(["decode", "--model", models.st_model, "--data-dir", data, "--output-dir", tmp_path / "out"],
          f"{data / 'feats.scp'}:{len(scp.splitlines())}", f"'{last}'", "truncated")
    assert not (tmp_path / "out" / "hyp.txt").exists()


def test_speech_model_on_a_text_only_data_dir(models, fails, tmp_path: Path):
    line = fails(["decode", "--model", models.st_model, "--data-dir", models.mt / "dev",
                  "--output-dir", tmp_path / "out"], models.mt / "dev" / "feats.scp")
    assert "kdst fbank" in line


@pytest.mark.parametrize("options, option", [
    (["--beam", "0"], "--beam"),
    (["--beam", "-3"], "--beam"),
    (["--beam", "2", "--nbest", "3"], "--nbest"),
    (["--nbest", "0"], "--nbest"),
    (["--max-len-ratio", "-1"], "--max-len-ratio"),
    (["--min-len-ratio", "-0.5"], "--min-len-ratio"),
    (["--length-penalty", "-1"], "--length-penalty"),
    (["--batch-units", "0"], "--batch-units"),
    (["--max-symbols-per-frame", "0"], "--max-symbols-per-frame"),
])
def test_options_out_of_range(models, fails, tmp_path: Path, options: list[str], option: str):
    fails(["decode", "--model", models.mt_model, "--data-dir", models.mt / "dev", "--output-dir", tmp_path / "out",
           *options], option)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("nj", ["1", "2"])
def test_output_dir_is_a_file(models, fails, tmp_path: Path, nj: str):
    (tmp_path / "out").write_text("not a directory\n")
    fails(["decode", "--model", models.mt_model, "--data-dir", models.mt / "dev", "--output-dir", tmp_path / "out",
           "--nj", nj], tmp_path / "out")
