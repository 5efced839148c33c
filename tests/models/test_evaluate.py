"""Metric arithmetic."""

from __future__ import annotations

import math

import torch

from models.data.evaluate import cosine, pgr, r2_vs_mean


def test_pgr_is_the_share_of_the_gap_recovered_and_is_not_clipped():
    assert math.isclose(pgr(0.5, 0.2, 0.8), 0.5)
    assert math.isclose(pgr(0.9, 0.2, 0.8), 0.7 / 0.6)
    assert pgr(0.1, 0.2, 0.8) < 0
    assert math.isnan(pgr(0.5, 0.3, 0.3))


def test_r2_vs_mean_is_positive_only_when_better_than_the_mean():
    true, mean = torch.ones(4), torch.zeros(4)
    assert r2_vs_mean(true, true, mean) == 1.0
    assert r2_vs_mean(mean, true, mean) == 0.0
    assert r2_vs_mean(-true, true, mean) < 0
    assert math.isclose(cosine(true, 2 * true), 1.0)
