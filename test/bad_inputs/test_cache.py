"""The top-k cache (stage 6) against what training reads (stage 9): a cache made by `kdst topk` on a data dir
is accepted by training on it, and refused in one line once the texts changed (even with the same token
counts), for another data dir, from an older kdst, or with an index.tsv whose row ranges are wrong."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import make_mt_task, write_config
from kdst.cli import main
from kdst.data.kaldi_dir import read_kv, write_kv
from kdst.data.teacher_cache import CacheWriter, TeacherCache
from kdst.data.tokenizer import load_tokenizer
from kdst.errors import DataError, KdstError
from kdst.models import build_model
from kdst.train.kd import setup_distillation
from kdst.train.trainer import build_datasets, load_config, run


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A tiny MT task, a teacher trained for one epoch, and its `kdst topk` cache of the training set."""
    root = make_mt_task(tmp_path_factory.mktemp("cache"), sizes=(("train", 24, 1), ("dev", 8, 2)))
    run(load_config(write_config(root, root / "teacher.yaml", epochs=1)), root / "teacher")
    cache = root / "topk_train"
    assert main(["topk", "--teacher", str(root / "teacher" / "epoch-1.pt"), "--data-dir", str(root / "train"),
                 "--out", str(cache), "--k", "4", "--device", "cpu"]) == 0
    return {"root": root, "cache": cache}


def train(made: dict, tmp_path: Path, capsys, train_dir: Path | None = None, cache: Path | None = None):
    """`kdst train` of a student with word-level KD from the cache; (exit status, stderr lines)."""
    config = tmp_path / "student.yaml"
    write_config(made["root"], config, epochs=1)
    options = ["--set", f"kd.cache={cache or made['cache']}"]
    if train_dir is not None:
        options += ["--set", f"data.train={train_dir}"]
    capsys.readouterr()
    status = main(["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"), *options])
    return status, [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]


def copy_train(made: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made["root"] / "train", tmp_path / "train"))


def one_line(err: list[str]) -> str:
    assert len(err) == 1, err
    return err[0]


def test_cache_of_the_same_data_dir_is_accepted(made, tmp_path, capsys):
    status, err = train(made, tmp_path, capsys)
    assert status == 0, err
    assert (tmp_path / "exp" / "last.pt").is_file()
    fingerprint = TeacherCache(made["cache"]).fingerprint
    assert {"targets", "source", "source_text"} <= set(fingerprint) and fingerprint["source_text"] == "text.en"


def reorder_words(text: str) -> str:
    """Same characters, so the same number of character tokens, in another order."""
    words = text.split()
    return " ".join(words[1:] + words[:1])


@pytest.mark.parametrize("name, key", [("text", "targets"), ("text.en", "source")])
def test_edited_text_with_the_same_token_counts_is_refused(made, tmp_path, capsys, name, key):
    train_dir = copy_train(made, tmp_path)
    texts = read_kv(train_dir / name)
    utt = next(u for u, t in texts.items() if reorder_words(t) != t)
    tokenizer = load_tokenizer(made["root"] / ("tok_de" if name == "text" else "tok_en"))
    assert len(tokenizer.encode(reorder_words(texts[utt]))) == len(tokenizer.encode(texts[utt]))
    write_kv(train_dir / name, {**texts, utt: reorder_words(texts[utt])})
    status, err = train(made, tmp_path, capsys, train_dir)
    assert status == 1
    what = f"the token ids of {train_dir / 'text'}" if key == "targets" else f"the text of {train_dir / 'text.en'}"
    assert one_line(err) == (f"kdst train: error: {made['cache']}: the teacher cache does not match this training "
                             f"run: {key} ({what} differ{'s' if key == 'source' else ''}) (re-run the top-k stage)")
    assert not (tmp_path / "exp" / "last.pt").exists()


def test_cache_of_another_data_dir_is_refused(made, tmp_path, capsys):
    train_dir = copy_train(made, tmp_path)
    utt2spk = read_kv(train_dir / "utt2spk")
    dropped = sorted(utt2spk)[0]
    for name in ("utt2spk", "text", "text.en"):
        write_kv(train_dir / name, {u: v for u, v in read_kv(train_dir / name).items() if u != dropped})
    status, err = train(made, tmp_path, capsys, train_dir)
    assert status == 1
    assert one_line(err) == (f"kdst train: error: {made['cache']}: holds utterances that {train_dir / 'text'} has "
                             "not: made for another data dir (re-run the top-k stage)")


class WithoutOne:
    """The training set without its first utterance, as when fbank skipped one shorter than a frame."""

    def __init__(self, base):
        self.base, self.ids = base, base.ids[1:]
        self.targets = {utt: base.targets[utt] for utt in self.ids}
        self.src_lengths = {utt: base.src_lengths[utt] for utt in self.ids}

    def __getitem__(self, utt):
        return self.base[utt]


def test_cached_utterances_the_student_lacks_are_checked_from_the_text(made, tmp_path):
    config = load_config(write_config(made["root"], tmp_path / "student.yaml"), [f"kd.cache={made['cache']}"])
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes))
    _, kd_set = setup_distillation(config.kd, student, WithoutOne(train_set), config.data, torch.device("cpu"))
    assert kd_set.ids == train_set.ids[1:]
    # An edited text of that utterance is still caught.
    train_dir = copy_train(made, tmp_path)
    texts = read_kv(train_dir / "text")
    first = train_set.ids[0]
    write_kv(train_dir / "text", {**texts, first: reorder_words(texts[first])})
    config = replace(config, data=replace(config.data, train=str(train_dir)))
    with pytest.raises(KdstError, match=r"does not match this training run: targets \(the token ids of "):
        setup_distillation(config.kd, student, WithoutOne(train_set), config.data, torch.device("cpu"))


def test_cache_without_content_digests_is_refused(made, tmp_path, capsys):
    old = Path(shutil.copytree(made["cache"], tmp_path / "old_cache"))
    meta = json.loads((old / "meta.json").read_text())
    for key in ("targets", "source", "source_text"):
        del meta["fingerprint"][key]
    (old / "meta.json").write_text(json.dumps(meta))
    status, err = train(made, tmp_path, capsys, cache=old)
    assert status == 1
    assert one_line(err) == (f"kdst train: error: {old}: made by an older kdst, without digests of the texts it was "
                             "made from: re-run the top-k stage")


def write_index(tmp_path: Path, lines: list[str]) -> Path:
    """A 3-utterance cache of 2 rows each, whose index.tsv is then replaced by ``lines``."""
    with CacheWriter(tmp_path / "cache", k=2, vocab_size=10, fingerprint={}) as writer:
        for utt in ("a", "b", "c"):
            writer.add(utt, [[1, 2], [3, 4]], [[0.0, -1.0], [0.0, -2.0]])
    (tmp_path / "cache" / "index.tsv").write_text("".join(f"{line}\n" for line in lines))
    return tmp_path / "cache"


def test_overlapping_rows_in_the_index_are_refused(tmp_path):
    cache = write_index(tmp_path, ["a 0 2", "b 1 2", "c 4 2"])
    with pytest.raises(DataError) as error:
        TeacherCache(cache)
    assert str(error.value) == (f"{cache}/index.tsv:2: rows 1..3 of 'b' overlap rows 0..2 of 'a' (line 1); "
                                "re-run stage 6")


def test_rows_past_the_arrays_are_refused(tmp_path):
    cache = write_index(tmp_path, ["a 0 2", "b 2 2", "c 5 2"])
    with pytest.raises(DataError, match=rf"^{cache}/index.tsv:3: rows 5..7 of 'c' run past the 6 tokens in meta.json"):
        TeacherCache(cache)


def test_ranges_out_of_order_but_disjoint_are_read(tmp_path):
    cache = write_index(tmp_path, ["a 4 2", "b 0 2", "c 2 2"])
    assert TeacherCache(cache).get("a")[0].tolist() == [[1, 2], [3, 4]]
