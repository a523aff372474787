"""Typed configuration: every recipe config loads; every typo, wrong type and bad value is one line
naming the file (or the --set) and the key, and `kdst train` then writes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from kdst.cli import main
from kdst.errors import KdstError
from kdst.config import (CachedWordKDConfig, LatticeKDConfig, OnlineWordKDConfig, StreamingEncoderConfig,
                         TextEncoderConfig, TrainingConfig, load_config, parse_config, resume_differences, to_dict)

ROOT = Path(__file__).resolve().parents[2]
RECIPE_CONFIGS = sorted(ROOT.glob("egs/*/*/conf/train_*.yaml"))
ST = ROOT / "egs/mini/st1/conf/train_st.yaml"
PATHS = ["data.tokenizer=tok", "data.src_tokenizer=tok_en", "data.ctc_tokenizer=tok_en"]


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_config_loads_and_round_trips(path):
    config = load_config(path, PATHS)
    assert isinstance(config, TrainingConfig)
    assert parse_config(to_dict(config)) == config  # what config.yaml and checkpoints hold reads back the same
    yaml.safe_dump(to_dict(config))  # plain YAML


def test_sections_and_variants():
    config = load_config(ROOT / "egs/mini/st1/conf/train_mt.yaml", PATHS)
    assert isinstance(config.model.encoder, TextEncoderConfig) and config.model.input == "text"
    config = load_config(ROOT / "egs/mini/rnnt1/conf/train_student_streaming.yaml", PATHS + ["kd.teacher=t.pt"])
    assert isinstance(config.model.encoder, StreamingEncoderConfig) and config.model.encoder.chunk_size == 8
    assert isinstance(config.kd, LatticeKDConfig) and config.kd.mode == "full"
    assert isinstance(load_config(ST, PATHS + ["kd.teacher=t.pt"]).kd, OnlineWordKDConfig)
    cached = load_config(ST, PATHS + ["kd.cache=c", "kd.weight=0.3"]).kd
    assert isinstance(cached, CachedWordKDConfig) and cached.weight == 0.3 and cached.teacher is None
    assert load_config(ST, PATHS + ["optim.lr=1e-3"]).optim.lr == 0.001  # YAML 1.1 reads 1e-3 as a string
    assert load_config(ST, PATHS).train.epochs == 8 and load_config(ST, PATHS).data.max_items == 10_000  # a default


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "--set train.epochz=3: train.epochz: unknown key (did you mean train.epochs?)"),
    ("optm.lr=0.1", "--set optm.lr=0.1: optm: unknown key (did you mean optim?)"),
    ("data.max_unit=100", "--set data.max_unit=100: data.max_unit: unknown key (did you mean data.max_units?)"),
    ("kd.wieght=0.3", "--set kd.wieght=0.3: kd.wieght: unknown key (did you mean kd.weight?)"),
    ("optim.warmup_step=5", "--set optim.warmup_step=5: optim.warmup_step: unknown key "
                            "(did you mean optim.warmup_steps?)"),
    ("model.encoder.type=bogus", "--set model.encoder.type=bogus: model.encoder.type: 'bogus' is not one of "
                                 "conformer, transformer"),
    ("optim.lr=abc", "--set optim.lr=abc: optim.lr: expected a number, got str 'abc'"),
    ("model.d_model=0", "--set model.d_model=0: model.d_model: must be >= 1, not 0"),
    ("model.encoder.heads=3", "--set model.encoder.heads=3: model.encoder.heads: 3 heads do not divide d_model 128"),
    ("train.epochs=2.5", "--set train.epochs=2.5: train.epochs: expected an integer, got float 2.5"),
    ("train.nan=ignore", "--set train.nan=ignore: train.nan: 'ignore' is not one of skip, stop"),
    ("kd.weight=1.5", "--set kd.weight=1.5: kd.weight: must be in [0, 1], not 1.5"),
    ("kd.teacher_espnet=x", "--set kd.teacher_espnet=x: kd.teacher_espnet: no longer a key: write kd.teacher: "
                            "espnet:PATH"),
    ("optim.betas=[0.9]", "--set optim.betas=[0.9]: optim.betas: expected 2 values, got 1"),
    ("train.specaugment.time_ratio=0", "--set train.specaugment.time_ratio=0: train.specaugment.time_ratio: "
                                       "must be in (0, 1], not 0.0"),
    ("data.input=text", "data.src_text: required when data.input is text"),
    ("train", "--set train: not key=value (e.g. --set train.epochs=20)"),
])
def test_bad_overrides_are_one_line_naming_the_key(override, message):
    with pytest.raises(KdstError) as caught:
        load_config(ST, PATHS + ["kd.teacher=t.pt", override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("", "empty config"),
    ("- a\n- b\n", "expected a mapping of sections (data, model, optim, train, kd), got a list"),
    ("data: {}\nmodel: {}\n", "optim: missing section"),
    ("data: [1]\nmodel: {}\noptim: {lr: 1}\n", "data: expected a mapping of options, got a list"),
    ("trian: {}\n", "trian: unknown key (did you mean train?)"),
    ("data:\n  text: [unclosed\n", ":3: not valid YAML"),
])
def test_bad_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KdstError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_kdst_train_rejects_a_typo_in_one_line_and_writes_nothing(tmp_path, capsys):
    config = yaml.safe_load(ST.read_text())
    config["train"]["epochz"] = 3
    path = tmp_path / "train_st.yaml"
    path.write_text(yaml.safe_dump(config))
    exp = tmp_path / "exp"
    assert main(["train", "--config", str(path), "--exp-dir", str(exp), *[a for p in PATHS for a in ("--set", p)]]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"kdst train: error: {path}: train.epochz: unknown key (did you mean train.epochs?)"
    assert not exp.exists()


def test_resume_compares_the_dataclasses():
    old = load_config(ST, PATHS)
    longer = load_config(ST, PATHS + ["train.epochs=30", "train.log_interval=5"])
    assert resume_differences(old, longer) == []
    other = load_config(ST, PATHS + ["optim.lr=0.1", "model.encoder.layers=3"])
    assert resume_differences(old, other) == ["model.encoder.layers", "optim.lr"]


def test_configs_are_frozen():
    config = load_config(ST, PATHS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3
