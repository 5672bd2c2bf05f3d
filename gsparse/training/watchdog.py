"""A bound on how long a rank may wait inside a training step.

A rank that raises closes its sockets and the others fail at once; a rank that hangs (a deadlock, a
stuck file system, a host that stops scheduling it) leaves the others waiting in a collective for
torch's process-group timeout, 30 minutes with gloo, and DeepSpeed's sub-groups do not take a
shorter one. The runner therefore arms this watchdog around every micro-batch's forward,
backward and optimizer step: if one does not finish within the collective timeout, the rank prints
where every thread is (``faulthandler``) and why, and exits with :data:`EXIT_CODE`; the launcher
(deepspeed, torchrun) then ends the other ranks, the hung one included. Evaluation, data loading
and checkpointing are not watched: they may legitimately take long.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from contextlib import contextmanager

TIMEOUT_ENV = "GSPARSE_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
EXIT_CODE = 124  # as timeout(1)


def resolve_timeout(timeout_s: float | None = None) -> float:
    """``timeout_s`` if given, else ``$GSPARSE_COLLECTIVE_TIMEOUT`` (seconds), else 600 s."""
    if timeout_s is None:
        value = os.environ.get(TIMEOUT_ENV)
        if not value:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(value)
        except ValueError:
            raise ValueError(f"${TIMEOUT_ENV}: expected a number of seconds, got {value!r}") from None
        source = f"${TIMEOUT_ENV}"
    else:
        source = "collective_timeout"
    if isinstance(timeout_s, bool) or not 0 < timeout_s < float("inf"):
        raise ValueError(f"{source}: expected a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


class StepWatchdog:
    """Exit the process when a watched block runs longer than ``timeout_s`` (see the module doc)."""

    def __init__(self, timeout_s: float, rank: int = 0, poll_s: float | None = None):
        self.timeout_s = timeout_s
        self.rank = rank
        self._poll_s = poll_s if poll_s is not None else min(1.0, timeout_s / 10)
        self._deadline: float | None = None
        self._what = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gsparse-step-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def watch(self, what: str):
        """Arm for the duration of the block; ``what`` names it in the message."""
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.timeout_s, what
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if expired:
                sys.stderr.write(
                    f"gsparse: rank {self.rank}: {what} has not finished after {self.timeout_s:g} s "
                    f"(collective_timeout, ${TIMEOUT_ENV}): another rank is hung or far slower, or this one is. "
                    f"Stopping this rank (exit code {EXIT_CODE}) so that the launcher ends the run; its threads "
                    "were here:\n")
                sys.stderr.flush()
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(EXIT_CODE)  # the main thread is blocked inside a collective: nothing else can end it
