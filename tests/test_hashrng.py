"""Tests for gsparse.hashrng: counter-based uniforms keyed by global index."""
import zlib

import pytest
import torch

from gsparse.hashrng import stream_key, uniform

MASK32 = 0xFFFFFFFF
MULTIPLIER = 0x45D9F3B
KEY = stream_key(7, "grow/0", "layer.weight", 100)


def _mix(value: int) -> int:
    """Plain-Python statement of the 32-bit mix, with unbounded integers (no overflow possible)."""
    value &= MASK32
    value = (((value >> 16) ^ value) * MULTIPLIER) & MASK32
    value = (((value >> 16) ^ value) * MULTIPLIER) & MASK32
    return (value >> 16) ^ value


def _python_uniform(key: int, index: int) -> float:
    hashed = _mix((index & MASK32) ^ key)
    hashed = _mix(hashed ^ (index >> 32) ^ _mix(key + 1))
    return (hashed >> 8) / float(1 << 24)


def test_stream_key_is_the_documented_hash_chain():
    # Pins the key derivation, so streams stay equal across processes, runs and versions.
    seed, purpose, layer, step = 3, "init", "fc.weight", 2 ** 33 + 5
    key = _mix(seed)
    for part in (zlib.crc32(purpose.encode()), zlib.crc32(layer.encode()), step, step >> 32):
        key = _mix(key ^ part)
    assert stream_key(seed, purpose, layer, step) == key
    assert 0 <= key < 2 ** 32


@pytest.mark.parametrize("index", [0, 1, 12345, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 17, 2 ** 62 + 3])
def test_uniform_matches_plain_python_statement(index):
    assert uniform(KEY, index, 1).item() == _python_uniform(KEY, index)


def test_uniform_is_deterministic_and_float32():
    first = uniform(KEY, 10, 1000)
    second = uniform(KEY, 10, 1000)
    assert first.dtype == torch.float32
    assert first.shape == (1000,)
    assert torch.equal(first, second)


@pytest.mark.parametrize("start, stop", [(0, 1), (0, 1000), (1, 2), (17, 530), (999, 1000), (400, 400)])
def test_slices_equal_the_whole(start, stop):
    whole = uniform(KEY, 0, 1000)
    assert torch.equal(whole[start:stop], uniform(KEY, start, stop - start))


def test_uneven_shards_concatenate_to_the_whole():
    whole = uniform(KEY, 0, 1000)
    bounds = [0, 3, 3, 500, 999, 1000]
    pieces = [uniform(KEY, a, b - a) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(pieces), whole)


def test_slices_across_the_2_pow_32_boundary():
    start = 2 ** 32 - 5
    whole = uniform(KEY, start, 10)
    assert torch.equal(whole, torch.cat([uniform(KEY, start, 5), uniform(KEY, 2 ** 32, 5)]))
    assert ((whole >= 0) & (whole < 1)).all()
    # The high 32 bits of the index matter: index 2**32 + i is not index i again.
    assert not torch.equal(uniform(KEY, 2 ** 32, 100), uniform(KEY, 0, 100))
    assert not torch.equal(uniform(KEY, 2 ** 33, 100), uniform(KEY, 2 ** 32, 100))


def test_zero_length():
    assert uniform(KEY, 5, 0).shape == (0,)


@pytest.mark.parametrize("other", [
    (8, "grow/0", "layer.weight", 100),   # seed
    (7, "grow/1", "layer.weight", 100),   # purpose
    (7, "init", "layer.weight", 100),
    (7, "grow/0", "layer.bias", 100),     # layer name
    (7, "grow/0", "layer.weight", 101),   # step
    (7, "grow/0", "layer.weight", 100 + 2 ** 32),  # step differing only above bit 32
])
def test_different_stream_parts_give_different_streams(other):
    base = (7, "grow/0", "layer.weight", 100)
    assert stream_key(*other) != stream_key(*base)
    a, b = uniform(stream_key(*base), 0, 1000), uniform(stream_key(*other), 0, 1000)
    assert not torch.equal(a, b)
    # not just different: essentially uncorrelated (no shared values at the same index)
    assert int((a == b).sum()) <= 2


def test_neighbouring_keys_give_unrelated_streams():
    a, b = uniform(1000, 0, 1000), uniform(1001, 0, 1000)
    assert int((a == b).sum()) <= 2
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1


def test_values_in_unit_interval_and_roughly_uniform():
    values = uniform(KEY, 0, 100_000)
    assert float(values.min()) >= 0.0
    assert float(values.max()) < 1.0
    assert abs(float(values.mean()) - 0.5) < 0.01  # std of the mean is about 0.0009
    counts = torch.histc(values, bins=10, min=0.0, max=1.0)
    assert ((counts > 9_000) & (counts < 11_000)).all(), counts
    _, repeats = torch.unique(values, return_counts=True)
    assert int(repeats.max()) <= 4


def test_consecutive_indices_are_not_monotone():
    values = uniform(KEY, 0, 1000)
    increasing = int((values[1:] > values[:-1]).sum())
    assert 400 < increasing < 600  # about half the steps go up for independent draws
