"""KD weight and temperature as functions of the optimiser step (``kd.weight_schedule``,
``kd.temperature_schedule``; kdst.config.ScheduleConfig).

A scheduled value is ``v0`` (the section's ``weight`` or ``temperature``) up to step
``start``, moves to ``end`` over ``steps`` optimiser steps, and stays at ``end``::

    linear:  v(s) = v0 + (end - v0) * r
    cosine:  v(s) = end + (v0 - end) * (1 + cos(pi * r)) / 2      r = clamp((s - start) / steps, 0, 1)

The step is the trainer's count of optimiser steps (``progress.step``), saved in every
checkpoint, so a resumed run continues the schedule where it stopped, and every
micro-batch of one accumulated step sees the same value.  Typical uses: annealing the KD
share towards the gold loss (Gaido et al. 2020 found word-KD then gold fine-tuning best;
a weight falling from 1 to 0 is the smooth version), or cooling a high temperature.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdst.config import ScheduleConfig


def scheduled(value: float, schedule: ScheduleConfig | None, step: int) -> float:
    """The value at optimiser step ``step`` (``value`` itself without a schedule)."""
    if schedule is None:
        return value
    r = min(max((step - schedule.start) / schedule.steps, 0.0), 1.0)
    if schedule.shape == "linear":
        return value + (schedule.end - value) * r
    return schedule.end + (value - schedule.end) * (1.0 + math.cos(math.pi * r)) / 2.0


class KDSchedule:
    """The weight and temperature of a KD wrapper at the step the trainer last set (``set_step``)."""

    def __init__(self, weight: float, temperature: float, weight_schedule: ScheduleConfig | None = None,
                 temperature_schedule: ScheduleConfig | None = None):
        self.weight0, self.temperature0 = weight, temperature
        self.weight_schedule, self.temperature_schedule = weight_schedule, temperature_schedule
        self.step = 0

    @classmethod
    def of(cls, kd) -> "KDSchedule":
        """From a kd config section."""
        return cls(kd.weight, kd.temperature, kd.weight_schedule, kd.temperature_schedule)

    @property
    def active(self) -> bool:
        return self.weight_schedule is not None or self.temperature_schedule is not None

    @property
    def weight(self) -> float:
        return scheduled(self.weight0, self.weight_schedule, self.step)

    @property
    def temperature(self) -> float:
        return scheduled(self.temperature0, self.temperature_schedule, self.step)


def with_schedule_stats(result: tuple[torch.Tensor, dict], schedule: KDSchedule) -> tuple[torch.Tensor, dict]:
    """A student's ``(loss, stats)`` with the scheduled values added to the stats (logged like the others)."""
    loss, stats = result
    if schedule.active:
        stats["kd_weight"] = loss.new_tensor(schedule.weight).detach()
        stats["kd_temperature"] = loss.new_tensor(schedule.temperature).detach()
    return loss, stats


class ScheduledKD(nn.Module):
    """What every KD wrapper shares (kdst.train.kd.WordKD, kdst.train.transducer_kd.TransducerKD): a
    student, a frozen teacher that never leaves eval mode (None for a cache), the weight and temperature
    of the step the trainer set, and ``forward(batch) -> (loss, stats)`` like the student's.  A subclass
    gives ``teacher_outputs(batch)``, the teacher's view of the batch."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, schedule: KDSchedule):
        super().__init__()
        self.student, self.teacher, self.schedule = student, teacher, schedule
        if teacher is not None:
            teacher.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # no dropout in the teacher, ever
        return self

    @property
    def weight(self) -> float:
        return self.schedule.weight

    @property
    def temperature(self) -> float:
        return self.schedule.temperature

    def set_step(self, step: int) -> None:
        """The optimiser step of the batches that follow (the trainer's), for ``kd.*_schedule``."""
        self.schedule.step = step

    def forward(self, batch: dict):
        return with_schedule_stats(self.student(batch, teacher=self.teacher_outputs(batch)), self.schedule)
