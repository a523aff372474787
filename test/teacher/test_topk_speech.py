"""Word-level KD from a speech teacher that reads the data dir's own features (a kdst ASR model):
``kdst topk --teacher CKPT`` and a student trained from the cache (kdst.teacher.topk, kdst.train.kd).

The teacher is a tiny attention encoder-decoder trained for one epoch on random 20-dim features
(test/transducer_task.py); wav.scp names a recording per utterance, which the cache records as the speech
heard (nothing opens it: the teacher reads feats.scp).  The oracle is the teacher's forward on each
utterance alone (a batch of one, no padding): the cache's k entries per target position are its top k,
in order, and its rest is the mass outside them (indices exact; values to the cache's float16).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from transducer_task import FEAT_DIM, make_feature_task, transducer_config

from kdst.cli import main
from kdst.config import parse_config
from kdst.data.dataset import collate, make_dataset
from kdst.data.kaldi_dir import read_kv, write_kv
from kdst.data.teacher_cache import TeacherCache
from kdst.errors import KdstError
from kdst.models import build_model
from kdst.models.teacher import load_teacher
from kdst.teacher.topk import write_cache
from kdst.train.kd import setup_distillation
from kdst.train.trainer import build_datasets, run

CPU = torch.device("cpu")
K = 4

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def aed_config(root, *, kd: dict | None = None, train_dir=None, seed: int = 7, **train) -> dict:
    """A tiny attention encoder-decoder with a CTC branch on make_feature_task's features and characters."""
    config = {
        "data": {"train": str(train_dir or root / "train"), "valid": str(root / "dev"), "text": "text",
                 "tokenizer": str(root / "tok"), "max_units": 400},
        "model": {"input_dim": FEAT_DIM, "d_model": 16, "ctc_weight": 0.3,
                  "encoder": {"type": "transformer", "layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.0,
                              "subsampling_channels": 4},
                  "decoder": {"layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.0}},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "noam"},
        "train": {"epochs": 1, "seed": seed, "log_interval": 1, "bf16": False, "nan": "stop", **train},
    }
    if kd is not None:
        config["kd"] = kd
    return config


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """The feature task with a wav.scp, its ASR teacher after one epoch, and the teacher's cache (k = 4, the CLI)."""
    root = make_feature_task(tmp_path_factory.mktemp("topk_speech"))
    utts = sorted(read_kv(root / "train" / "text"))
    write_kv(root / "train" / "wav.scp", {utt: f"/corpus/{utt}.flac" for utt in utts})
    run(parse_config(aed_config(root)), root / "teacher")
    teacher = root / "teacher" / "epoch-1.pt"
    cache = root / "topk"
    assert main(["topk", "--teacher", str(teacher), "--data-dir", str(root / "train"), "--out", str(cache),
                 "--k", str(K), "--device", "cpu"]) == 0
    return {"root": root, "teacher": teacher, "cache": cache, "utts": utts}


def setup(raw: dict):
    config = parse_config(raw)
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes))
    return setup_distillation(config.kd, student, train_set, config.data, CPU)


def test_cache_entries_are_the_top_k_of_the_teachers_forward_on_each_utterance(task):
    cache = TeacherCache(task["cache"])
    teacher = load_teacher(task["teacher"])
    dataset = make_dataset(teacher.data, task["root"] / "train")
    assert sorted(cache.ids) == task["utts"] and cache.k == K and cache.vocab_size == teacher.vocab_size
    with torch.no_grad():
        for utt in task["utts"]:
            logits = teacher.model.decoder_logits(collate([dataset[utt]]))[0][0].float()
            indices, values = cache.get(utt)
            top = logits.topk(K, dim=-1)
            assert len(indices) == len(dataset[utt].tgt) + 1  # every target token and <eos>
            assert torch.equal(torch.from_numpy(indices).long(), top.indices), utt
            torch.testing.assert_close(torch.from_numpy(values).float(), top.values - top.values[:, :1],
                                       rtol=1e-3, atol=2e-3)
            p = torch.softmax(logits.double(), dim=-1)
            rest = torch.log1p(-p.gather(1, top.indices).sum(1))
            torch.testing.assert_close(torch.from_numpy(cache.get_rest(utt)).double(), rest, rtol=0, atol=1e-4)


def test_fingerprint_records_the_speech_heard_and_how_the_features_were_read(task, tmp_path):
    made = TeacherCache(task["cache"]).fingerprint
    assert made["features"] == "feats.scp, CMVN none" and made["source_text"] is None
    # another recording under one utterance is another source; the features, as read, are the same
    train = shutil.copytree(task["root"] / "train", tmp_path / "train")
    wavs = read_kv(train / "wav.scp")
    write_kv(train / "wav.scp", {**wavs, task["utts"][0]: "/corpus/other.flac"})
    write_cache(str(task["teacher"]), train, tmp_path / "other", k=K, device="cpu")
    other = TeacherCache(tmp_path / "other").fingerprint
    assert other["source"] != made["source"] and other["targets"] == made["targets"]
    assert other["teacher"] == made["teacher"] and other["features"] == made["features"]


@pytest.mark.slow  # two job processes, each importing torch: ~10 s on a shared 2-core CPU
def test_two_jobs_write_the_cache_one_job_wrote(task, tmp_path):
    assert main(["topk", "--teacher", str(task["teacher"]), "--data-dir", str(task["root"] / "train"),
                 "--out", str(tmp_path / "two"), "--k", str(K), "--device", "cpu", "--nj", "2"]) == 0
    one, two = TeacherCache(task["cache"]), TeacherCache(tmp_path / "two")
    assert two.fingerprint == one.fingerprint and sorted(two.ids) == sorted(one.ids)
    # the jobs' batches pad to other lengths than the one job's, which moves float32 sums in their last bits
    for utt in one.ids:
        (i1, v1), (i2, v2) = one.get(utt), two.get(utt)
        assert (i1 == i2).all() and (v1 == v2).all(), utt
        torch.testing.assert_close(torch.from_numpy(two.get_rest(utt)), torch.from_numpy(one.get_rest(utt)),
                                   rtol=0, atol=1e-5)


def test_a_student_of_the_teachers_vocabulary_trains_from_the_cache(task, tmp_path):
    kd = {"cache": str(task["cache"]), "teacher": str(task["teacher"]), "weight": 0.5}
    loss_model, kd_set = setup(aed_config(task["root"], kd=kd, seed=3))
    batch = collate([kd_set[u] for u in kd_set.ids[:4]])
    assert batch["teacher_topk_indices"].shape[:2] == (4, int(batch["tgt_lengths"].max()) + 1)
    loss_model.train()
    loss, _ = loss_model(batch)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    progress = run(parse_config(aed_config(task["root"], kd=kd, seed=3, max_steps=1)), tmp_path / "exp")
    assert progress.step == 1 and (tmp_path / "exp" / "last.pt").is_file()


def test_training_on_other_speech_than_the_teacher_heard_is_refused(task, tmp_path):
    train = shutil.copytree(task["root"] / "train", tmp_path / "train")
    wavs = read_kv(train / "wav.scp")
    write_kv(train / "wav.scp", {**wavs, task["utts"][1]: wavs[task["utts"][2]]})
    kd = {"cache": str(task["cache"]), "weight": 0.5}
    with pytest.raises(KdstError, match=r"does not match this training run: source \(the audio of .*/train, "
                                        r"wav.scp and segments, differs\)"):
        setup(aed_config(task["root"], kd=kd, train_dir=train))


def test_what_the_cache_cannot_take_is_one_line(task, tmp_path, capsys):
    train = task["root"] / "train"

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main(["topk", "--data-dir", str(args[0]), "--out", str(tmp_path / "cache"), "--device", "cpu",
                     *args[1:]]) == 1
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and not (tmp_path / "cache").exists()
        return error

    error = refused(train, "--teacher", str(task["teacher"]), "--teacher-data-dir", str(train))
    assert f"--teacher-data-dir {train}: {task['teacher']} reads the features of the data dir itself" in error
    silent = shutil.copytree(train, tmp_path / "silent")
    write_kv(silent / "wav.scp", {u: w for u, w in read_kv(silent / "wav.scp").items() if u != task["utts"][3]})
    error = refused(silent, "--teacher", str(task["teacher"]))
    assert f"{silent}: no audio (wav.scp, segments) for 1 utterance(s) with features, e.g. '{task['utts'][3]}'" \
        in error
    run(parse_config(transducer_config(task["root"], max_steps=1)), tmp_path / "rnnt")
    error = refused(train, "--teacher", str(tmp_path / "rnnt" / "last.pt"))
    assert "a transducer has no decoder distribution per target token for the top-k cache" in error


def test_online_kd_from_a_speech_teacher_points_at_the_cache(task):
    kd = {"teacher": str(task["teacher"]), "weight": 0.5}
    with pytest.raises(KdstError, match=r"an online teacher must be an MT model reading the transcript; a speech "
                                        r"teacher distils through the top-k cache: kdst topk --teacher .*epoch-1.pt "
                                        r"--data-dir DATA --out DIR, then kd.cache: DIR$"):
        setup(aed_config(task["root"], kd=kd))
