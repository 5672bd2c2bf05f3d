"""Tests for gsparse.schedules. Expected values are worked out by hand in the comments."""
import math

import pytest

from gsparse.schedules import DROP_FRACTION_DECAYS, UpdateSchedule


def schedule(interval=100, first=100, last=None, drop=0.5, decay="constant", final=0.1):
    return UpdateSchedule(update_interval=interval, first_update_step=first, last_update_step=last,
                          drop_fraction=drop, drop_fraction_decay=decay, final_drop_fraction=final)


@pytest.mark.parametrize("interval, first, last, horizon, expected", [
    (100, 100, None, 500, [100, 200, 300, 400, 500]),
    (100, 100, 300, 500, [100, 200, 300]),          # last is inclusive
    (100, 250, 450, 600, [300, 400]),               # first/last need not be multiples
    (100, 50, None, 300, [100, 200, 300]),          # first before the first multiple
    (100, 200, 200, 500, [200]),                    # first == last
    (100, 201, 299, 500, []),                       # no multiple in [first, last]
    (1, 3, 5, 10, [3, 4, 5]),
    (3, 1, 10, 12, [3, 6, 9]),
    (7, 7, None, 30, [7, 14, 21, 28]),
])
def test_update_steps(interval, first, last, horizon, expected):
    s = schedule(interval, first, last)
    assert [t for t in range(0, horizon + 1) if s.is_update_step(t)] == expected


def test_step_zero_is_never_an_update():
    assert not schedule(interval=1, first=1).is_update_step(0)


def test_constant_decay_ignores_progress():
    for last in (None, 300):
        s = schedule(first=100, last=last, drop=0.3, decay="constant")
        assert [s.drop_fraction_at(t) for t in (0, 100, 200, 300, 10_000)] == [0.3] * 5


# first = 100, last = 300, drop = 0.5, final = 0.1 (span 200, amplitude 0.4)
#   linear : 0.1 + 0.4 * (1 - p)
#   cosine : 0.1 + 0.4 * (1 + cos(pi p)) / 2
@pytest.mark.parametrize("decay, step, expected", [
    ("linear", 0, 0.5),      # before the start: p clamped to 0
    ("linear", 100, 0.5),
    ("linear", 150, 0.4),    # p = 0.25
    ("linear", 200, 0.3),    # p = 0.5
    ("linear", 250, 0.2),    # p = 0.75
    ("linear", 300, 0.1),
    ("linear", 1000, 0.1),   # beyond the end: p clamped to 1
    ("cosine", 0, 0.5),
    ("cosine", 100, 0.5),
    ("cosine", 150, 0.1 + 0.4 * (0.5 + math.sqrt(2) / 4)),  # cos(pi/4) = sqrt(2)/2 -> 0.441421...
    ("cosine", 200, 0.3),
    ("cosine", 250, 0.1 + 0.4 * (0.5 - math.sqrt(2) / 4)),  # -> 0.158579...
    ("cosine", 300, 0.1),
    ("cosine", 1000, 0.1),
])
def test_decay_values(decay, step, expected):
    s = schedule(first=100, last=300, drop=0.5, decay=decay, final=0.1)
    assert s.drop_fraction_at(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_hand_values_written_out():
    s = schedule(first=100, last=300, drop=0.5, decay="cosine", final=0.1)
    assert s.drop_fraction_at(150) == pytest.approx(0.4414213562, abs=1e-9)
    assert s.drop_fraction_at(250) == pytest.approx(0.1585786438, abs=1e-9)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_to_zero_by_default_final(decay):
    s = UpdateSchedule(update_interval=10, first_update_step=10, last_update_step=110, drop_fraction=0.3,
                       drop_fraction_decay=decay)
    assert s.drop_fraction_at(10) == pytest.approx(0.3)
    assert s.drop_fraction_at(60) == pytest.approx(0.15)  # midpoint: both decays give half
    assert s.drop_fraction_at(110) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_is_monotone_non_increasing(decay):
    s = schedule(first=100, last=300, drop=0.5, decay=decay, final=0.1)
    values = [s.drop_fraction_at(t) for t in range(0, 400, 5)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_without_last_step_stays_constant(decay):
    s = schedule(first=100, last=None, drop=0.4, decay=decay, final=0.0)
    assert [s.drop_fraction_at(t) for t in (100, 5000)] == [0.4, 0.4]


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_first_equals_last(decay):
    s = schedule(first=200, last=200, drop=0.5, decay=decay, final=0.1)
    assert s.drop_fraction_at(200) == pytest.approx(0.5)
    assert s.drop_fraction_at(201) == pytest.approx(0.1)


def test_decay_names():
    assert DROP_FRACTION_DECAYS == ("constant", "cosine", "linear")
