"""Tests for gsparse.distributions. Expected values are computed by hand in comments."""
import logging
import math

import pytest

from gsparse.distributions import active_counts, layer_densities

# Two small Linear layers used in several tests:
#   a: [4, 8]  n=32,  ERK raw = (4+8)/32  = 0.375
#   b: [8, 16] n=128, ERK raw = (8+16)/128 = 0.1875
SMALL = {"a": [4, 8], "b": [8, 16]}


def test_uniform_with_custom_layer_and_key_order():
    shapes = {"z": [4, 8], "a": [8, 16], "m": [16, 3, 3, 3]}
    densities = layer_densities(shapes, 0.8, "uniform", custom={"m": 0.25})
    assert list(densities) == ["z", "a", "m"]
    assert densities["z"] == pytest.approx(0.2, abs=1e-12)
    assert densities["a"] == pytest.approx(0.2, abs=1e-12)
    assert densities["m"] == pytest.approx(0.75, abs=1e-12)


def test_default_distribution_is_uniform():
    assert layer_densities(SMALL, 0.5) == pytest.approx({"a": 0.5, "b": 0.5})


def test_erk_no_layer_forced_dense():
    # s=0.5: zeros a=16, b=64 -> rhs = 16 + 64 = 80
    # divisor = 0.375*32 + 0.1875*128 = 12 + 24 = 36 -> eps = 80/36 = 20/9
    # a = 0.375*20/9 = 5/6 (< 1, so nothing dense), b = 0.1875*20/9 = 5/12
    densities = layer_densities(SMALL, 0.5, "erk")
    assert densities["a"] == pytest.approx(5 / 6, abs=1e-12)
    assert densities["b"] == pytest.approx(5 / 12, abs=1e-12)
    # active: a = 32*5/6 = 26.67 -> 27, b = 128*5/12 = 53.33 -> 53; total 80 = target 80
    counts = active_counts(SMALL, densities)
    assert counts == {"a": 27, "b": 53}
    target = sum(math.prod(s) - math.floor(0.5 * math.prod(s)) for s in SMALL.values())
    assert target == 80
    assert abs(sum(counts.values()) - target) <= len(SMALL)


def test_erk_tiny_layer_forced_dense(caplog):
    # tiny [2,3]: n=6, raw=5/6, zeros=floor(5.4)=5, ones=1
    # big [256,512]: n=131072, raw=768/131072=3/512, zeros=floor(117964.8)=117964, ones=13108
    # round 1: rhs = 1 + 13108 = 13109, divisor = 5 + 768 = 773, eps = 16.958...
    #          tiny: 5/6 * 16.958 = 14.1 > 1 -> tiny made dense
    # round 2: rhs = 13108 - 5 = 13103, divisor = 768, eps = 13103/768
    #          big: 3/512 * 13103/768 = 39309/393216 = 0.09997 (<= 1, stop)
    shapes = {"tiny": [2, 3], "big": [256, 512]}
    with caplog.at_level(logging.INFO, logger="gsparse.distributions"):
        densities = layer_densities(shapes, 0.9, "erk")
    assert densities["tiny"] == 1.0
    eps = 13103 / 768
    assert densities["big"] == pytest.approx(3 / 512 * eps, abs=1e-12)
    assert densities["big"] == pytest.approx(39309 / 393216, abs=1e-12)
    # big keeps exactly 13103 weights; total 6 + 13103 = 13109 = target
    assert active_counts(shapes, densities) == {"tiny": 6, "big": 13103}
    assert "tiny" in caplog.text and "big" not in caplog.text


def test_erk_tied_layers_made_dense_in_same_round(caplog):
    # t1 [2,3] and t2 [3,2] both have raw 5/6 (tie at the max), zeros 5, ones 1 each
    # round 1: rhs = 1 + 1 + 13108 = 13110, divisor = 5 + 5 + 768 = 778, eps = 16.85
    #          5/6 * 16.85 > 1 -> BOTH t1 and t2 dense in this one round
    # round 2: rhs = 13108 - 5 - 5 = 13098, divisor = 768, eps = 13098/768
    #          big = 3/512 * 13098/768 = 13098/131072
    shapes = {"t1": [2, 3], "big": [256, 512], "t2": [3, 2]}
    with caplog.at_level(logging.INFO, logger="gsparse.distributions"):
        densities = layer_densities(shapes, 0.9, "erk")
    assert densities["t1"] == 1.0 and densities["t2"] == 1.0
    assert densities["big"] == pytest.approx(13098 / 131072, abs=1e-12)
    dense_logs = [r.getMessage() for r in caplog.records if "dense" in r.getMessage()]
    assert len(dense_logs) == 1
    assert "t1" in dense_logs[0] and "t2" in dense_logs[0]


def test_er_ignores_kernel_dims_erk_does_not():
    # conv [16,8,3,3]: n=1152; ERK raw = (16+8+3+3)/1152 = 5/192; ER raw = (8+16)/(8*16) = 3/16
    # fc [10,64]: n=640; raw = 74/640 = 37/320 for both ER and ERK
    # s=0.75: zeros conv=864 (ones 288), fc=480 (ones 160) -> rhs = 448
    shapes = {"conv": [16, 8, 3, 3], "fc": [10, 64]}
    # ERK: divisor = 30 + 74 = 104, eps = 448/104 = 56/13
    #      conv = 5/192*56/13 = 35/312, fc = 37/320*56/13 = 259/520
    erk = layer_densities(shapes, 0.75, "erk")
    assert erk["conv"] == pytest.approx(35 / 312, abs=1e-12)
    assert erk["fc"] == pytest.approx(259 / 520, abs=1e-12)
    # ER: divisor = 3/16*1152 + 74 = 216 + 74 = 290, eps = 448/290 = 224/145
    #     conv = 3/16*224/145 = 42/145, fc = 37/320*224/145 = 259/1450
    er = layer_densities(shapes, 0.75, "er")
    assert er["conv"] == pytest.approx(42 / 145, abs=1e-12)
    assert er["fc"] == pytest.approx(259 / 1450, abs=1e-12)


def test_er_on_one_dimensional_shape_uses_sum_over_prod():
    # w [4,8]: raw 12/32 = 0.375, zeros 16, ones 16; b [8]: raw 8/8 = 1, zeros 4, ones 4
    # rhs = 20, divisor = 12 + 8 = 20, eps = 1 -> b = 1.0 (not > 1, stays in solve), w = 0.375
    shapes = {"w": [4, 8], "b": [8]}
    for distribution in ("er", "erk"):
        densities = layer_densities(shapes, 0.5, distribution)
        assert densities["w"] == pytest.approx(0.375, abs=1e-12)
        assert densities["b"] == pytest.approx(1.0, abs=1e-12)


def test_erk_power_scale():
    # power 0.5: raw a = sqrt(0.375), raw b = sqrt(0.1875) = sqrt(0.375)/sqrt(2)
    # rhs = 80, divisor = sqrt(0.375) * (32 + 128/sqrt(2)) = sqrt(0.375) * (32 + 64*sqrt(2))
    # a = 80/(32 + 64*sqrt(2)) = 5/(2 + 4*sqrt(2)) = 0.6530, b = a/sqrt(2) = 5/(8 + 2*sqrt(2)) = 0.4617
    densities = layer_densities(SMALL, 0.5, "erk", erk_power_scale=0.5)
    assert densities["a"] == pytest.approx(5 / (2 + 4 * math.sqrt(2)), abs=1e-12)
    assert densities["b"] == pytest.approx(5 / (8 + 2 * math.sqrt(2)), abs=1e-12)
    # power 2: raw a = 0.140625, raw b = 0.03515625; divisor = 4.5 + 4.5 = 9, eps = 80/9
    #   a = 0.140625*80/9 = 1.25 > 1 -> a dense; rhs = 64 - 16 = 48, divisor = 4.5, eps = 32/3
    #   b = 0.03515625*32/3 = 0.375
    densities = layer_densities(SMALL, 0.5, "erk", erk_power_scale=2.0)
    assert densities == pytest.approx({"a": 1.0, "b": 0.375}, abs=1e-12)


def test_custom_layers_excluded_from_erk_solve():
    # c [3,5] has custom sparsity 0.3 -> density 0.7, and contributes nothing to rhs/divisor,
    # so a, b are exactly as in test_erk_no_layer_forced_dense: eps = 20/9, a = 5/6, b = 5/12
    shapes = {"a": [4, 8], "c": [3, 5], "b": [8, 16]}
    densities = layer_densities(shapes, 0.5, "erk", custom={"c": 0.3})
    assert list(densities) == ["a", "c", "b"]
    assert densities["a"] == pytest.approx(5 / 6, abs=1e-12)
    assert densities["b"] == pytest.approx(5 / 12, abs=1e-12)
    assert densities["c"] == pytest.approx(0.7, abs=1e-12)
    # Without the custom entry, c (raw 8/15, n=15, zeros 7, ones 8) joins the solve:
    #   rhs = 88, divisor = 36 + 8 = 44, eps = 2 -> c = 16/15 > 1 -> c dense
    #   rhs = 80 - 7 = 73, divisor = 36, eps = 73/36 -> a = 0.375*73/36, b = 0.1875*73/36
    densities = layer_densities(shapes, 0.5, "erk")
    assert densities["c"] == 1.0
    assert densities["a"] == pytest.approx(0.375 * 73 / 36, abs=1e-12)
    assert densities["b"] == pytest.approx(0.1875 * 73 / 36, abs=1e-12)


def test_all_layers_custom_erk():
    densities = layer_densities(SMALL, 0.9, "erk", custom={"a": 0.0, "b": 1.0})
    assert densities == {"a": 1.0, "b": 0.0}


def test_erk_zero_sparsity_everything_dense():
    # s=0: rhs=160, divisor=36, eps=40/9 -> a = 5/3 > 1 dense; then rhs=128, divisor=24,
    # eps=16/3 -> b = 0.1875*16/3 = 1 (exactly, up to float rounding)
    densities = layer_densities(SMALL, 0.0, "erk")
    assert densities["a"] == 1.0
    assert densities["b"] == pytest.approx(1.0, abs=1e-12)


def test_active_counts_round_half_up_and_clamp():
    shapes = {"three": [3], "ten": [2, 5], "ten_low": [10], "over": [4], "under": [4]}
    densities = {"three": 0.5, "ten": 0.25, "ten_low": 0.24, "over": 1.5, "under": -0.2}
    # 0.5*3 = 1.5 -> 2; 0.25*10 = 2.5 -> 3 (half up, not banker's 2); 0.24*10 = 2.4 -> 2
    # 1.5*4 = 6 -> clamped to 4; -0.2*4 = -0.8 -> floor(-0.3) = -1 -> clamped to 0
    assert active_counts(shapes, densities) == {"three": 2, "ten": 3, "ten_low": 2, "over": 4, "under": 0}


def test_unknown_distribution_names_allowed_values():
    with pytest.raises(ValueError, match=r"uniform.*er.*erk"):
        layer_densities(SMALL, 0.5, "erdos")


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        layer_densities(SMALL, sparsity, "erk")


@pytest.mark.parametrize("value", [-0.1, 1.01])
def test_custom_sparsity_out_of_range(value):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layer_densities(SMALL, 0.5, "uniform", custom={"a": value})


def test_custom_unknown_layer():
    with pytest.raises(ValueError, match="nope"):
        layer_densities(SMALL, 0.5, "erk", custom={"nope": 0.5})
