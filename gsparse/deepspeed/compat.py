"""The one place that knows which DeepSpeed internals gsparse relies on, and checks them.

gsparse reads ZeRO's partition layout (flat fp32 partitions, fragment mappings, stage-3 grad
positions) and hooks the inner optimizer's steps; those are internals, so only tested DeepSpeed
versions are accepted and every attribute read is checked first, with a message that names the
installed version.
"""
from __future__ import annotations

import re

TESTED_DEEPSPEED = ((0, 19, 7), (0, 19, 8))
TESTED_TEXT = "0.19.7-0.19.8"
PIN = "deepspeed>=0.19.7,<0.19.9"


class UnsupportedLayout(RuntimeError):
    """The DeepSpeed engine uses a feature or a version whose layout gsparse does not know."""


def installed_version() -> str:
    try:
        import deepspeed
    except ImportError as error:  # pragma: no cover - the extra is missing
        raise ImportError(f"gsparse.deepspeed needs DeepSpeed: pip install 'gsparse[deepspeed]' ({PIN})") from error
    return deepspeed.__version__


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.19.8+cpu"`` -> ``(0, 19, 8)`` (the leading digits of each of the first three parts)."""
    parts = []
    for part in text.split("+")[0].split(".")[:3]:
        digits = re.match(r"\d*", part).group()
        parts.append(int(digits or 0))
    return tuple(parts)


def check_version() -> None:
    """Refuse a DeepSpeed version gsparse was not tested with."""
    version = installed_version()
    if not TESTED_DEEPSPEED[0] <= parse_version(version) <= TESTED_DEEPSPEED[1]:
        raise UnsupportedLayout(f"deepspeed {version} is not a version gsparse was tested with ({TESTED_TEXT}); "
                                f"install one with: pip install '{PIN}'")


def require(obj, *names: str) -> None:
    """Fail clearly if ``obj`` lacks an internal attribute gsparse reads."""
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise UnsupportedLayout(
            f"{type(obj).__name__} has no {', '.join(missing)}: the ZeRO layout of the installed deepspeed "
            f"{installed_version()} is not one gsparse knows (tested: {TESTED_TEXT})")
