"""Transducer KD in training: an online transducer teacher, KL over the lattice (full and collapsed)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

import kdst.train.transducer_kd as kd_module
from kdst.config import SpecAugmentConfig, parse_config, parse_kd
from kdst.data.dataset import collate
from kdst.errors import KdstError
from kdst.losses import rnnt_kd_loss, rnnt_loss
from kdst.models import Transducer, build_model
from kdst.models.teacher import load_teacher
from kdst.train.kd import setup_distillation
from kdst.train.transducer_kd import TransducerKD
from kdst.train.trainer import build_datasets, compute_loss, run
from transducer_task import FEAT_DIM, make_feature_task, transducer_config

CPU = torch.device("cpu")
SPECAUGMENT = {"freq_masks": 1, "freq_width": 6, "time_masks": 1, "time_width": 10}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A tiny feature task and a (non-streaming) conformer transducer teacher trained on it for one epoch."""
    root = make_feature_task(tmp_path_factory.mktemp("rnnt_kd"))
    torch.set_num_threads(1)
    run(parse_config(transducer_config(root)), root / "teacher")
    return {"root": root, "teacher": root / "teacher" / "epoch-1.pt"}


def student_config(task: dict, **kd) -> dict:
    config = transducer_config(task["root"], streaming=True, specaugment=SPECAUGMENT)
    config["kd"] = {"teacher": str(task["teacher"]), "weight": 0.5, **kd}
    return config


def student_setup(task: dict, kd: dict):
    config = parse_config({**student_config(task), "kd": None})
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes))
    loss_model, kd_set = setup_distillation(parse_kd(kd, config.model), student, train_set, config.data, CPU)
    return config, student, loss_model, kd_set


def test_kd_term_is_the_lattice_kl_per_target_token(task):
    _, student, loss_model, kd_set = student_setup(task, {"teacher": str(task["teacher"]), "mode": "collapsed",
                                                          "temperature": 2.0})
    assert isinstance(loss_model, TransducerKD) and kd_set is not None
    teacher = loss_model.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    loss_model.train()
    assert student.training and not teacher.training
    batch = collate([kd_set[u] for u in kd_set.ids[:5]])
    loss_model.eval()  # no dropout: the forward below sees the same lattices
    with torch.no_grad():
        logits, lengths, tgt, tgt_lengths = student.joint_logits(batch)
        t_logits = teacher.joint_logits(batch)[0]
        expected = rnnt_kd_loss(logits, t_logits, tgt, lengths, tgt_lengths, mode="collapsed", temperature=2.0,
                                reduction="sum") / tgt_lengths.sum()
        rnnt = rnnt_loss(logits, tgt, lengths, tgt_lengths, reduction="sum") / tgt_lengths.sum()
        lattice_teacher = loss_model.kd_term(logits, batch)
        assert torch.equal(lattice_teacher.logits, t_logits)
        assert (lattice_teacher.mode, lattice_teacher.temperature, lattice_teacher.weight) == ("collapsed", 2.0, 0.5)
        loss, stats = loss_model(batch)
    assert stats["kd"] == pytest.approx(float(expected), rel=1e-5) and stats["kd"] > 0
    assert stats["rnnt"] == pytest.approx(float(rnnt), rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * float(rnnt) + 0.5 * float(expected), rel=1e-5)


def test_the_teacher_hears_the_features_before_specaugment(task):
    config, student, loss_model, kd_set = student_setup(task, {"teacher": str(task["teacher"])})
    specaugment = SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=20)
    config = replace(config, train=replace(config.train, specaugment=specaugment))
    heard = {}

    def spy(model, name):
        encode = model.encode

        def wrapped(src, src_lengths):
            heard[name] = src.clone()
            return encode(src, src_lengths)
        model.encode = wrapped

    spy(student, "student")
    spy(loss_model.teacher, "teacher")
    batch = collate([kd_set[u] for u in kd_set.ids[:4]])
    loss_model.train()
    torch.manual_seed(1)
    loss, stats = compute_loss(loss_model, batch, config, CPU)
    assert torch.isfinite(loss) and stats["kd"] > 0
    assert torch.equal(heard["teacher"], batch["src"])  # clean
    assert not torch.equal(heard["student"], batch["src"])  # masked
    assert (heard["student"] == 0).sum() > (batch["src"] == 0).sum()


@pytest.mark.parametrize("mode", ["full", "collapsed"])
def test_training_with_the_teacher_saves_only_the_student(task, tmp_path, monkeypatch, mode):
    loaded = {}

    def spy_load_teacher(reference, device="cpu", **options):
        teacher = load_teacher(reference, device, **options)
        loaded["teacher"] = teacher.model
        return teacher

    monkeypatch.setattr(kd_module, "load_teacher", spy_load_teacher)
    config = student_config(task, mode=mode, temperature=1.5, weight=0.7)
    run(parse_config(config), tmp_path / "exp")

    saved = torch.load(tmp_path / "exp" / "last.pt", weights_only=False)
    student = build_model(saved["config"]["model"])
    assert isinstance(student, Transducer) and set(saved["model"]) == set(student.state_dict())
    assert not any(k.startswith("teacher") for k in saved["model"])
    assert saved["config"]["kd"]["mode"] == mode
    # the teacher is where it started: frozen, in eval mode
    teacher = loaded["teacher"]
    assert not teacher.training
    for name, value in torch.load(task["teacher"], weights_only=False)["model"].items():
        assert torch.equal(teacher.state_dict()[name], value), name

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((tmp_path / "exp" / "tensorboard").glob("events.*")))).Reload()
    assert {"train/kd", "train/rnnt", "train/loss", "valid/nll"} <= set(events.Tags()["scalars"])
    assert "valid/acc" not in events.Tags()["scalars"]
    kd = [e.value for e in events.Scalars("train/kd")]
    assert kd and all(0 < v < float("inf") for v in kd)


def test_interrupted_and_resumed_with_the_teacher(task, tmp_path):
    """A KD run stopped after 2 steps and resumed equals one uninterrupted run."""
    config = student_config(task, mode="full")
    run(parse_config(config), tmp_path / "whole")
    config["train"]["max_steps"] = 2
    run(parse_config(config), tmp_path / "parts")
    config["train"]["max_steps"] = 0
    run(parse_config(config), tmp_path / "parts", resume=True)
    whole, parts = (torch.load(tmp_path / d / "epoch-1.pt", weights_only=False)["model"] for d in ("whole", "parts"))
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], msg=name)


def test_teacher_with_another_vocabulary_is_an_error(task, tmp_path):
    saved = torch.load(task["teacher"], weights_only=False)
    model_config = {**saved["config"]["model"], "vocab_size": saved["config"]["model"]["vocab_size"] + 2}
    torch.save({"model": build_model(model_config).state_dict(), "config": {**saved["config"], "model": model_config}},
               tmp_path / "bigger.pt")
    with pytest.raises(KdstError, match=r"vocabulary has \d+ tokens, the student's \d+: transducer KD needs one"):
        student_setup(task, {"teacher": str(tmp_path / "bigger.pt")})
    # same size, other ids
    tok = tmp_path / "tok"
    shutil.copytree(saved["config"]["data"]["tokenizer"], tok)
    lines = (tok / "tokens.txt").read_text().splitlines()
    (tok / "tokens.txt").write_text("\n".join(lines[:-2] + lines[-2:][::-1]) + "\n")
    saved["config"]["data"]["tokenizer"] = str(tok)
    torch.save(saved, tmp_path / "other_tok.pt")
    with pytest.raises(KdstError, match="is not the student's .*: transducer KD needs one tokenizer"):
        student_setup(task, {"teacher": str(tmp_path / "other_tok.pt")})


def test_bad_kd_sections_are_errors(task, tmp_path):
    teacher = str(task["teacher"])
    with pytest.raises(KdstError, match=r"kd.cache: unknown key"):
        student_setup(task, {"teacher": teacher, "cache": "x", "t2_scale": True})
    with pytest.raises(KdstError, match="kd.teacher: missing"):
        student_setup(task, {"weight": 0.5})
    with pytest.raises(KdstError, match="kd.mode: 'sum' is not one of full, collapsed"):
        student_setup(task, {"teacher": teacher, "mode": "sum"})
    with pytest.raises(KdstError, match=r"kd.weight: must be in \[0, 1\]"):
        student_setup(task, {"teacher": teacher, "weight": 1.5})
    # an attention encoder-decoder cannot teach a transducer
    saved = torch.load(task["teacher"], weights_only=False)
    aed = {"input_dim": FEAT_DIM, "d_model": 16, "vocab_size": saved["config"]["model"]["vocab_size"],
           "encoder": {"layers": 1, "heads": 2, "ff_dim": 32, "subsampling_channels": 4},
           "decoder": {"layers": 1, "heads": 2, "ff_dim": 32}}
    torch.save({"model": build_model(aed).state_dict(), "config": {**saved["config"], "model": aed}},
               tmp_path / "aed.pt")
    with pytest.raises(KdstError, match="must be a transducer"):
        student_setup(task, {"teacher": str(tmp_path / "aed.pt")})


def test_teacher_with_another_frame_rate_is_an_error(task, monkeypatch):
    def slower_teacher(reference, device="cpu", **options):
        teacher = load_teacher(reference, device, **options)
        teacher.model.encoder.subsampling.output_lengths = lambda lengths: lengths // 6
        return teacher

    monkeypatch.setattr(kd_module, "load_teacher", slower_teacher)
    with pytest.raises(KdstError, match="another frame rate than the student's"):
        student_setup(task, {"teacher": str(task["teacher"])})
