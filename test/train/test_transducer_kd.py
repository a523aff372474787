"""Transducer KD in training: an online transducer teacher, KL over the lattice (full and collapsed), divided
by the lattice nodes, target tokens or utterances, and optionally weighted by the teacher's node occupancy."""

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
from kdst.losses.rnnt import lattice_occupancy
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


def lattice_terms(student, teacher, batch, **kd) -> tuple:
    """(per-utterance KL sums, RNN-T loss per token, frames, target lengths) of a batch, recomputed here."""
    with torch.no_grad():
        logits, lengths, tgt, tgt_lengths = student.joint_logits(batch)
        t_logits = teacher.joint_logits(batch)[0]
        sums = rnnt_kd_loss(logits, t_logits, tgt, lengths, tgt_lengths, reduction="none", **kd)
        rnnt = rnnt_loss(logits, tgt, lengths, tgt_lengths, reduction="sum") / tgt_lengths.sum()
    return sums, rnnt, lengths, tgt_lengths


# How each kd.normalize divides the batch's KL sum: nodes = sum_b T_b (U_b + 1), tokens = sum_b U_b, utterances = B
DENOMINATORS = {
    "nodes": lambda frames, labels: float((frames * (labels + 1)).sum()),
    "tokens": lambda frames, labels: float(labels.sum()),
    "utterances": lambda frames, labels: float(len(labels)),
}


@pytest.mark.parametrize("normalize", [None, "nodes", "tokens", "utterances"])
def test_kd_term_is_the_lattice_kl_over_the_chosen_count(task, normalize):
    """The default divides the KL sum by the lattice nodes (it used to divide by the target tokens, which made
    the term about T times the mean per-node KL: a weight of 0.5 was alpha ~ 1 against the papers' 0.01)."""
    section = {"teacher": str(task["teacher"]), "mode": "collapsed", "temperature": 2.0}
    if normalize is not None:
        section["normalize"] = normalize
    _, student, loss_model, kd_set = student_setup(task, section)
    assert isinstance(loss_model, TransducerKD) and kd_set is not None
    teacher = loss_model.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    loss_model.train()
    assert student.training and not teacher.training
    batch = collate([kd_set[u] for u in kd_set.ids[:5]])
    loss_model.eval()  # no dropout: the forward below sees the same lattices
    sums, rnnt, frames, labels = lattice_terms(student, teacher, batch, mode="collapsed", temperature=2.0)
    expected = float(sums.sum()) / DENOMINATORS[normalize or "nodes"](frames, labels)
    with torch.no_grad():
        lattice_teacher = loss_model.kd_term(student.joint_logits(batch)[0], batch)
        assert (lattice_teacher.mode, lattice_teacher.temperature, lattice_teacher.weight) == ("collapsed", 2.0, 0.5)
        assert lattice_teacher.normalize == (normalize or "nodes") and lattice_teacher.node_weights is None
        loss, stats = loss_model(batch)
    assert stats["kd"] == pytest.approx(expected, rel=1e-5) and stats["kd"] > 0
    assert stats["rnnt"] == pytest.approx(float(rnnt), rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * float(rnnt) + 0.5 * expected, rel=1e-5)
    # the papers' alpha of this batch: weight / (1 - weight) x tokens / the chosen count (1 for tokens)
    denominator = DENOMINATORS[normalize or "nodes"](frames, labels)
    assert float(stats["kd_alpha"]) == pytest.approx(float(labels.sum()) / denominator, rel=1e-6)
    # the three counts differ on this batch (several frames per token), so the test tells them apart
    counts = {n: f(frames, labels) for n, f in DENOMINATORS.items()}
    assert counts["nodes"] > 2 * counts["tokens"] > 4 * counts["utterances"] > 0


def test_occupancy_weights_are_the_teachers(task):
    """kd.node_weights: occupancy weighs each node's KL by the teacher's alignment occupancy on the student's
    lattice (not the student's own), a constant; with kd.normalize nodes the sum is divided by the weights'
    total, T_b + U_b per utterance."""
    section = {"teacher": str(task["teacher"]), "node_weights": "occupancy"}
    _, student, loss_model, kd_set = student_setup(task, section)
    batch = collate([kd_set[u] for u in kd_set.ids[:5]])
    loss_model.eval()
    with torch.no_grad():
        logits, frames, tgt, labels = student.joint_logits(batch)
        t_logits = loss_model.teacher.joint_logits(batch)[0]
        gamma = lattice_occupancy(t_logits, tgt, frames, labels)
        own = lattice_occupancy(logits, tgt, frames, labels)
        outputs = loss_model.kd_term(logits, batch)
    assert outputs.node_weights is not None and not outputs.node_weights.requires_grad
    torch.testing.assert_close(outputs.node_weights, gamma)
    assert not torch.allclose(gamma, own, atol=1e-3)  # the student's occupancy would be another weighting
    torch.testing.assert_close(gamma.sum((1, 2)), (frames + labels).float(), rtol=1e-4, atol=1e-4)
    sums, rnnt, _, _ = lattice_terms(student, loss_model.teacher, batch, node_weights=gamma)
    uniform, _, _, _ = lattice_terms(student, loss_model.teacher, batch)
    expected = float(sums.sum()) / float((frames + labels).sum())
    loss, stats = loss_model(batch)  # still in eval mode: the lattices above
    assert stats["kd"] == pytest.approx(expected, rel=1e-4)
    assert stats["kd"] != pytest.approx(float(uniform.sum()) / DENOMINATORS["nodes"](frames, labels), rel=1e-3)
    loss.backward()
    assert all(p.grad is None for p in loss_model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


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


@pytest.mark.parametrize("mode, node_weights", [("full", "uniform"), ("collapsed", "uniform"),
                                                ("full", "occupancy")])
def test_training_with_the_teacher_saves_only_the_student(task, tmp_path, monkeypatch, mode, node_weights):
    loaded = {}

    def spy_load_teacher(reference, device="cpu", **options):
        teacher = load_teacher(reference, device, **options)
        loaded["teacher"] = teacher.model
        return teacher

    monkeypatch.setattr(kd_module, "load_teacher", spy_load_teacher)
    config = student_config(task, mode=mode, temperature=1.5, weight=0.7, node_weights=node_weights)
    run(parse_config(config), tmp_path / "exp")

    saved = torch.load(tmp_path / "exp" / "last.pt", weights_only=False)
    student = build_model(saved["config"]["model"])
    assert isinstance(student, Transducer) and set(saved["model"]) == set(student.state_dict())
    assert not any(k.startswith("teacher") for k in saved["model"])
    assert saved["config"]["kd"]["mode"] == mode and saved["config"]["kd"]["node_weights"] == node_weights
    assert saved["config"]["kd"]["normalize"] == "nodes"
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
    with pytest.raises(KdstError, match="kd.normalize: 'frames' is not one of nodes, tokens, utterances"):
        student_setup(task, {"teacher": teacher, "normalize": "frames"})
    with pytest.raises(KdstError, match="kd.node_weights: 'student' is not one of uniform, occupancy"):
        student_setup(task, {"teacher": teacher, "node_weights": "student"})
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
