"""kdst.config.schema: a field that takes one value or a list of them (kd.teacher: A or [A, B])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kdst.config import CachedWordKDConfig, OnlineWordKDConfig, load_config, parse_config, to_dict
from kdst.config.schema import ConfigError, build
from kdst.errors import KdstError

ROOT = Path(__file__).resolve().parents[2]
ST = ROOT / "egs/mini/st1/conf/train_st.yaml"
PATHS = ["data.tokenizer=tok", "data.src_tokenizer=tok_en", "data.ctc_tokenizer=tok_en"]


@dataclass(frozen=True)
class OneOrMany:
    names: str | tuple[str, ...]
    maybe: str | tuple[str, ...] | None = None


@pytest.mark.parametrize("raw, expected", [
    ({"names": "a"}, OneOrMany("a")),
    ({"names": ["a", "b"]}, OneOrMany(("a", "b"))),
    ({"names": ["a"], "maybe": None}, OneOrMany(("a",))),
    ({"names": "a", "maybe": ["x"]}, OneOrMany("a", ("x",))),
])
def test_one_value_or_a_list(raw, expected):
    assert build(OneOrMany, raw, "s") == expected


@pytest.mark.parametrize("raw, message", [
    ({"names": 3}, "s.names: expected a string, got int 3"),
    ({"names": ["a", 3]}, "s.names[1]: expected a string, got int 3"),
    ({"names": {"a": 1}}, "s.names: expected a string, got a mapping"),
])
def test_wrong_types_name_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        build(OneOrMany, raw, "s")
    assert str(caught.value) == message


def test_kd_teacher_takes_a_list_of_teachers_and_their_weights():
    config = load_config(ST, PATHS + ["kd.teacher=[a.pt, b.pt]", "kd.teacher_weights=[1, 3]"])
    assert isinstance(config.kd, OnlineWordKDConfig)
    assert config.kd.teacher == ("a.pt", "b.pt") and config.kd.teacher_weights == (1.0, 3.0)
    assert parse_config(to_dict(config)) == config  # what checkpoints hold reads back the same
    assert load_config(ST, PATHS + ["kd.teacher=a.pt"]).kd.teacher == "a.pt"
    cached = load_config(ST, PATHS + ["kd.cache=c", "kd.teacher=[a.pt, b.pt]"]).kd
    assert isinstance(cached, CachedWordKDConfig) and cached.teacher == ("a.pt", "b.pt")


@pytest.mark.parametrize("overrides, message", [
    (["kd.teacher=[a.pt, b.pt]", "kd.teacher_weights=[1]"], "kd.teacher_weights: 1 weight(s) for 2 teacher(s)"),
    (["kd.teacher=a.pt", "kd.teacher_weights=[1, 2]"], "kd.teacher_weights: 2 weight(s) for 1 teacher(s)"),
    (["kd.teacher=[a.pt, b.pt]", "kd.teacher_weights=[1, 0]"], "kd.teacher_weights: each weight must be > 0"),
    (["kd.teacher=[]"], "kd.teacher: an empty list names no teacher"),
    (["kd.cache=c", "kd.teacher_weights=[1]"], "kd.teacher_weights: needs kd.teacher"),
])
def test_bad_teacher_lists_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(KdstError) as caught:
        load_config(ST, PATHS + overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)
