"""The one check of the DeepSpeed internals gsparse relies on: clear messages naming the version."""
import pytest

import deepspeed
from gsparse.deepspeed import compat


def test_an_untested_version_is_refused_with_its_number_and_the_pin(monkeypatch):
    monkeypatch.setattr(deepspeed, "__version__", "0.20.1")
    with pytest.raises(compat.UnsupportedLayout, match=r"deepspeed 0\.20\.1 is not a version.*deepspeed>=0\.19\.7,<0\.19\.9"):
        compat.check_version()


@pytest.mark.parametrize("version", ["0.19.7", "0.19.8", "0.19.8+cpu"])
def test_tested_versions_pass(monkeypatch, version):
    monkeypatch.setattr(deepspeed, "__version__", version)
    compat.check_version()


def test_a_missing_internal_names_the_attribute_and_the_installed_version():
    class ZeroOptimizer:
        optimizer = None

    with pytest.raises(compat.UnsupportedLayout, match=rf"ZeroOptimizer has no grad_position.*deepspeed "
                                                      rf"{deepspeed.__version__}"):
        compat.require(ZeroOptimizer(), "optimizer", "grad_position")


def test_versions_parse_by_leading_digits():
    assert compat.parse_version("0.19.8+cpu") == (0, 19, 8)
    assert compat.parse_version("0.19.10rc1") == (0, 19, 10)
