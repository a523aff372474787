"""kdst topk's sampling and rest: draws at the temperature, the teacher mass outside the top k."""

from __future__ import annotations

import math

import pytest
import torch

from kdst.teacher.topk import rest_log_mass, sample_counts


def test_sampled_counts_draw_at_the_temperature():
    logits = torch.tensor([[0.0, math.log(3.0)]] * 2)  # p = (1/4, 3/4) at T = 1, (0.366, 0.634) at T = 2
    for temperature, expected in ((1.0, 0.75), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))):
        ids, counts = sample_counts(logits, 2000, torch.Generator().manual_seed(0), temperature)
        assert float(counts[ids == 1].sum() / counts.sum()) == pytest.approx(expected, abs=0.02)
        assert (counts.sum(1) == 2000).all()


@pytest.mark.parametrize("temperature", (0.5, 1.0, 4.0))
def test_rest_log_mass_is_the_mass_outside_the_indices(temperature):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=g) * 3
    indices = logits.topk(4, dim=-1).indices
    p = torch.softmax(logits.double() / temperature, -1)
    expected = 1 - p.gather(-1, indices).sum(-1)
    torch.testing.assert_close(rest_log_mass(logits, indices, temperature).exp().double(), expected, rtol=1e-5,
                               atol=1e-7)
    # all the ids: nothing outside
    every = torch.arange(11).expand(2, 3, 11)
    assert torch.isneginf(rest_log_mass(logits, every, temperature)).all()


def test_rest_log_mass_stays_exact_where_one_minus_the_sum_cancels():
    """A teacher sure of its top entry: the rest is e^-60 * 10 / (1 + ...), which 1 - sum in float32 makes 0."""
    logits = torch.zeros(1, 11)
    logits[0, 0] = 60.0
    rest = float(rest_log_mass(logits, torch.tensor([[0]]), 1.0))
    assert rest == pytest.approx(-60.0 + math.log(10.0), abs=1e-4)
