"""The per-layer sparse/dense choice: its rule, its cache and its refusals, on injected timings."""
import logging

import pytest
import torch

from gsparse.kernels import ExecutionChoice, choice, choose_execution, clear_choice_cache


@pytest.fixture(autouse=True)
def empty_cache():
    clear_choice_cache()
    yield
    clear_choice_cache()


class FixedTimer:
    """Runs each step once (so the real steps are exercised) and reports fixed timings."""

    def __init__(self, dense_ms, sparse_ms):
        self.timings, self.calls = (dense_ms, sparse_ms), 0

    def __call__(self, dense_step, sparse_step, repeats):
        self.calls += 1
        dense_step()
        sparse_step()
        return self.timings


@pytest.mark.parametrize("dense_ms, sparse_ms, mode", [
    (10.0, 9.5, "dense"),   # 1.05x: inside the noise margin
    (11.0, 10.0, "sparse"),  # exactly 1.10x
    (10.0, 2.5, "sparse"),
    (2.0, 5.0, "dense"),
])
def test_rule_on_injected_timings(dense_ms, sparse_ms, mode):
    timer = FixedTimer(dense_ms, sparse_ms)
    result = choose_execution(16, 12, 20, 8, timer=timer)
    assert result == ExecutionChoice(mode, dense_ms, sparse_ms, result.reason)
    assert f"{dense_ms / sparse_ms:.2f}x" in result.reason and timer.calls == 1


def test_cache_is_hit_within_buckets_and_cleared():
    timer = FixedTimer(10.0, 2.0)
    first = choose_execution(16, 12, 20, 8, timer=timer)
    assert choose_execution(16, 12, 21, 8, timer=timer) is first  # same density and batch buckets
    assert choose_execution(16, 12, 20, 9, timer=timer) is first
    assert timer.calls == 1
    choose_execution(16, 12, 20, 16, timer=timer)  # batch bucket 4 instead of 3
    choose_execution(16, 12, 40, 8, timer=timer)  # density twice as high
    choose_execution(16, 12, 20, 8, dtype=torch.float64, timer=timer)
    choose_execution(12, 16, 20, 8, timer=timer)
    assert timer.calls == 5
    clear_choice_cache()
    choose_execution(16, 12, 20, 8, timer=timer)
    assert timer.calls == 6


def test_unsupported_dtype_is_dense_without_timing(monkeypatch):
    timer = FixedTimer(10.0, 1.0)
    monkeypatch.setattr(choice, "csr_supported", lambda dtype, device: dtype != torch.bfloat16)
    result = choose_execution(16, 12, 20, 8, dtype=torch.bfloat16, timer=timer)
    assert (result.mode, result.dense_ms, result.sparse_ms) == ("dense", None, None)
    assert "bfloat16" in result.reason and "cpu" in result.reason and timer.calls == 0


def test_real_bfloat16_support_decides_the_mode():
    supported = choice.csr_supported(torch.bfloat16, "cpu")
    result = choose_execution(16, 12, 20, 8, dtype=torch.bfloat16, timer=FixedTimer(10.0, 1.0))
    assert result.mode == ("sparse" if supported else "dense")


def test_full_density_and_empty_batch_are_dense_without_timing():
    timer = FixedTimer(10.0, 1.0)
    assert choose_execution(16, 12, 16 * 12, 8, timer=timer).reason == "every weight is active"
    assert choose_execution(16, 12, 20, 0, timer=timer).mode == "dense"
    assert timer.calls == 0


def test_choice_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="gsparse.kernels.choice"):
        choose_execution(16, 12, 20, 8, timer=FixedTimer(10.0, 2.0))
    assert "layer 16x12, 20 active, 8 rows" in caplog.text and "sparse" in caplog.text


def test_paired_timing_interleaves_and_takes_medians(monkeypatch):
    clock = [0.0]
    order = []
    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock[0])

    def step(name, seconds):
        def run():
            order.append(name)
            clock[0] += seconds[len([n for n in order if n == name]) - 1]
        return run

    dense = step("dense", [0.050, 0.010, 0.012, 0.011])  # warm-up, then 3 timed rounds
    sparse = step("sparse", [0.030, 0.004, 0.002, 0.003])
    assert choice.paired_timing(dense, sparse, repeats=3) == pytest.approx((11.0, 3.0))
    assert order == ["dense", "sparse"] * 4


def test_paired_timing_fits_rounds_in_the_budget(monkeypatch):
    clock = [0.0]
    calls = []
    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock[0])

    def step(seconds):
        def run():
            calls.append(seconds)
            clock[0] += seconds
        return run

    choice.paired_timing(step(0.030), step(0.015), repeats=None)  # 45 ms a round: 150 ms budget -> 3 rounds
    assert len(calls) == 2 * (1 + 3)
    calls.clear()
    choice.paired_timing(step(0.0001), step(0.0001), repeats=None)  # tiny layers: capped
    assert len(calls) == 2 * (1 + choice.MAX_REPEATS)
    calls.clear()
    choice.paired_timing(step(0.5), step(0.2), repeats=None)  # big layers: at least one round
    assert len(calls) == 2 * 2
