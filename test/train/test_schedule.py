"""KD weight and temperature schedules: the values, the config, the loss mix and the trainer's steps."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from helpers import make_mt_task, write_config
from kdst.config import ConfigError, ScheduleConfig, parse_kd
from kdst.config.model import parse_model_config
from kdst.data.dataset import collate
from kdst.train.kd import WordKD
from kdst.train.schedule import scheduled
from kdst.train.trainer import load_config, run


def test_linear_and_cosine_values_by_hand():
    linear = ScheduleConfig(end=0.0, steps=10, start=5)
    assert [scheduled(1.0, linear, s) for s in (0, 5, 10, 15, 100)] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])
    cosine = ScheduleConfig(end=1.0, steps=4, shape="cosine")
    # 3 -> 1 over 4 steps: at r = 1/4 the cosine has covered (1 - cos(pi/4)) / 2 of the way
    assert scheduled(3.0, cosine, 1) == pytest.approx(1.0 + 2.0 * (1 + math.cos(math.pi / 4)) / 2)
    assert scheduled(3.0, cosine, 2) == pytest.approx(2.0)
    assert scheduled(3.0, cosine, 4) == pytest.approx(1.0)
    assert scheduled(0.3, None, 1000) == 0.3


MODEL = parse_model_config({"input": "text", "d_model": 8, "encoder": {"layers": 1, "heads": 2, "ff_dim": 8},
                            "decoder": {"layers": 1, "heads": 2, "ff_dim": 8}})


def test_schedule_config_is_checked():
    kd = parse_kd({"teacher": "t.pt", "weight": 1.0, "weight_schedule": {"end": 0.0, "steps": 100}}, MODEL)
    assert kd.weight_schedule == ScheduleConfig(end=0.0, steps=100)
    with pytest.raises(ConfigError, match=r"kd\.weight_schedule\.stepz: unknown key \(did you mean .*steps"):
        parse_kd({"teacher": "t.pt", "weight_schedule": {"end": 0.0, "stepz": 100}}, MODEL)
    with pytest.raises(ConfigError, match=r"weight_schedule\.end: must be in \[0, 1\]"):
        parse_kd({"teacher": "t.pt", "weight_schedule": {"end": 1.5, "steps": 100}}, MODEL)
    with pytest.raises(ConfigError, match=r"temperature_schedule\.end: must be > 0"):
        parse_kd({"cache": "c", "temperature_schedule": {"end": 0.0, "steps": 100}}, MODEL)
    with pytest.raises(ConfigError, match=r"steps: must be >= 1"):
        parse_kd({"cache": "c", "temperature_schedule": {"end": 2.0, "steps": 0}}, MODEL)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    root = make_mt_task(tmp_path_factory.mktemp("schedule"))
    run(load_config(write_config(root, root / "teacher.yaml", epochs=1)), root / "teacher")
    return {"root": root, "teacher": root / "teacher" / "epoch-1.pt"}


def test_the_loss_mixes_with_the_weight_and_temperature_of_the_step(task):
    from kdst.models import build_model
    from kdst.train.kd import setup_distillation
    from kdst.train.trainer import build_datasets
    from dataclasses import replace

    config = load_config(write_config(task["root"], task["root"] / "student.yaml"))
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes)).eval()
    # label_smoothing: the gold term smoothed as the student's own loss is (kd.label_smoothing's default is 0)
    kd = parse_kd({"teacher": str(task["teacher"]), "weight": 1.0, "temperature": 1.0, "label_smoothing": 0.1,
                   "weight_schedule": {"end": 0.0, "steps": 4},
                   "temperature_schedule": {"end": 3.0, "steps": 4, "shape": "cosine"}}, config.model)
    loss_model, kd_set = setup_distillation(kd, student, train_set, config.data, torch.device("cpu"))
    assert isinstance(loss_model, WordKD)
    batch = collate([kd_set[u] for u in kd_set.ids[:4]])
    with torch.no_grad():
        _, plain = student(batch)  # the gold loss alone
        for step, weight, temperature in ((0, 1.0, 1.0), (2, 0.5, 2.0), (4, 0.0, 3.0), (9, 0.0, 3.0)):
            loss_model.set_step(step)
            loss, stats = loss_model(batch)
            logits, targets, *_ = student.decoder_logits(batch)
            kd_alone = loss_model.student.kd_loss(logits, targets, loss_model.teacher_outputs(batch))
            assert float(stats["kd_weight"]) == pytest.approx(weight)
            assert float(stats["kd_temperature"]) == pytest.approx(temperature)
            assert float(loss) == pytest.approx((1 - weight) * float(plain["loss"]) + weight * float(kd_alone),
                                                rel=1e-5)


def test_the_trainer_sets_the_optimiser_step_and_resume_continues_it(task, tmp_path, monkeypatch):
    root = task["root"]
    path = write_config(root, tmp_path / "c.yaml", epochs=5, accum_grad=2, max_steps=2)
    config = yaml.safe_load(path.read_text())
    config["kd"] = {"teacher": str(task["teacher"]), "weight": 1.0, "weight_schedule": {"end": 0.0, "steps": 4}}
    path.write_text(yaml.safe_dump(config))
    seen: list[int] = []
    original = WordKD.set_step
    monkeypatch.setattr(WordKD, "set_step", lambda self, step: (seen.append(step), original(self, step)))
    run(load_config(path), tmp_path / "exp")
    assert seen == [0, 0, 1, 1]  # both micro-batches of a step see its value
    config["train"]["max_steps"] = 3
    path.write_text(yaml.safe_dump(config))
    seen.clear()
    run(load_config(path), tmp_path / "exp", resume=True)
    assert seen == [2, 2]


def test_an_online_teacher_never_trains(task):
    """The trainer's optimiser takes every trainable parameter of the loss model that is not the student's
    (kdst.train.trainer.kd_parameters): a teacher, alone or in an ensemble, must have none."""
    from dataclasses import replace

    from kdst.models import build_model
    from kdst.train.kd import setup_distillation
    from kdst.train.trainer import build_datasets, kd_parameters

    config = load_config(write_config(task["root"], task["root"] / "student.yaml"))
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes))
    for teacher in (str(task["teacher"]), [str(task["teacher"]), str(task["teacher"])]):
        kd = parse_kd({"teacher": teacher, "weight": 0.5}, config.model)
        loss_model, _ = setup_distillation(kd, student, train_set, config.data, torch.device("cpu"))
        assert kd_parameters(loss_model, student) == {}
        assert sum(p.numel() for p in loss_model.parameters()) > sum(p.numel() for p in student.parameters())
