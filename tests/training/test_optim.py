"""Learning-rate schedules."""

from __future__ import annotations

import pytest

from lungxray.training import (
    lr_multiplier,
)


@pytest.mark.parametrize(
    "step, total, warmup, schedule, expected",
    [
        (0, 100, 10, "cosine", 0.1),  # warm-up ramps linearly from 1/warmup
        (4, 100, 10, "cosine", 0.5),
        (9, 100, 10, "cosine", 1.0),
        (10, 100, 10, "cosine", 1.0),  # cosine starts at the peak
        (55, 100, 10, "cosine", 0.5),  # half way through the decay
        (100, 100, 10, "cosine", 0.0),  # and reaches zero at the end
        (150, 100, 10, "cosine", 0.0),  # past the end it stays there
        (0, 100, 0, "cosine", 1.0),
        (4, 100, 10, "constant", 0.5),
        (10, 100, 10, "constant", 1.0),
        (99, 100, 10, "constant", 1.0),
        (0, 100, 0, "constant", 1.0),
    ],
)
def test_lr_multiplier(step, total, warmup, schedule, expected):
    assert lr_multiplier(step, total, warmup, schedule) == pytest.approx(expected, abs=1e-9)


def test_lr_multiplier_cosine_is_monotone_and_ends_near_zero():
    values = [lr_multiplier(s, 200, 20, "cosine") for s in range(200)]
    assert all(b >= a for a, b in zip(values[:19], values[1:20], strict=True))
    assert all(b <= a for a, b in zip(values[20:], values[21:], strict=False))
    assert values[-1] < 1e-3
