"""A rank that raises inside a mask update stops the whole run, promptly and with a non-zero exit code.

tests/distributed/failing_method.py trains the toy task through the runner at ZeRO-2 on 2 CPU ranks
(gloo) with a method whose mask update raises on rank 1 at step 3, while rank 0 enters the update's
collectives. Rank 0 must not wait there: its gloo pair sees the peer's sockets close ("Connection
closed by peer") and it raises too, and the launchers end the remaining processes. Measured on 2
shared CPU cores: 3-5 s from the failure to the launchers' exit (deepspeed 4 s, torchrun 3 s, two
one-rank nodes 5 s), 12-22 s per launch in all; the test allows 30 s.

A rank that hangs instead (sleeps without exiting) is stopped by the runner's step watchdog
(gsparse.training.watchdog): with GSPARSE_COLLECTIVE_TIMEOUT=5 every rank exits with code 124
about 5 s after the hang began.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "distributed" / "failing_method.py"
REPOSITORY = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 120  # the whole launch, start-up included
STOP_BOUND_S = 30  # from the failing rank's raise to the launcher's exit
EXIT_GRACE_S = 5  # for ranks still exiting after the launcher's exit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _commands(launcher: str, run_dir: Path, hang: bool = False) -> list[list[str]]:
    worker = [str(WORKER), "--run-dir", str(run_dir), "--fail-step", "3", *(["--hang"] if hang else [])]
    if launcher == "deepspeed":
        return [["deepspeed", "--num_accelerators", "2", "--master_port", str(_free_port()), *worker]]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if launcher == "torchrun":
        return [[*torchrun, "--standalone", "--nproc_per_node", "2", *worker]]
    # two "nodes" of one rank each: rank 0's agent cannot see rank 1 fail, only its own worker
    port = _free_port()
    return [[*torchrun, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
             f"--master_port={port}", *worker] for rank in (0, 1)]


def _processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return pids


def _launch(tmp_path: Path, launcher: str, run_dir: Path, hang: bool = False, env_extra: dict | None = None):
    """Run the launch; returns (exit codes, log text, when it stopped, processes left afterwards)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    log = tmp_path / "launch.log"
    started = time.time()
    with log.open("w") as output:
        launches = [subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)
                    for command in _commands(launcher, run_dir, hang)]
        try:
            codes = [launch.wait(timeout=max(1.0, started + LAUNCH_TIMEOUT_S - time.time())) for launch in launches]
        finally:
            stopped = time.time()
            for launch in launches:
                if launch.poll() is None:
                    launch.kill()
            survivors = _processes_naming(str(run_dir))
            while survivors and time.time() < stopped + EXIT_GRACE_S:  # ranks the launcher just signalled
                time.sleep(0.2)
                survivors = _processes_naming(str(run_dir))
            for pid in survivors:  # leave nothing running, whatever this test finds
                os.kill(pid, signal.SIGKILL)
    return codes, log.read_text(), stopped, survivors


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun", "two_nodes"])
def test_failure_on_one_rank_stops_every_rank(tmp_path, launcher):
    run_dir = tmp_path / f"rank-failure-{launcher}"
    buffers_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    codes, text, stopped, survivors = _launch(tmp_path, launcher, run_dir)
    # the deepspeed launcher turns on DeepSpeed's shared-memory all-reduce, whose buffers DeepSpeed
    # never removes: the runner drops their names once every rank has mapped them, crash or not
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= buffers_before
    assert all(code != 0 for code in codes), (codes, text[-4000:])
    assert "RuntimeError: injected failure on rank 1 at step 3" in text
    assert survivors == []
    failed_at = float((run_dir / "failed_at").read_text())
    assert 0 <= stopped - failed_at <= STOP_BOUND_S, (stopped - failed_at, text[-4000:])
    assert not (run_dir / "checkpoints" / "epoch1").exists()  # no rank trained on to the epoch's end


HANG_TIMEOUT_S = 5


@pytest.mark.parametrize("launcher", ["deepspeed", "two_nodes"])
def test_hung_rank_stops_every_rank_after_the_collective_timeout(tmp_path, launcher):
    """Rank 1 sleeps inside a mask update without exiting; rank 0 waits in the update's collective.
    With a 5 s collective timeout the ranks' watchdogs (both are inside the step) stop the run: the
    first to fire exits with code 124 naming the step and the timeout, the other fails on the closed
    connection or is ended by the launcher; the launch ends within the timeout plus the same bound
    as for a raising rank."""
    run_dir = tmp_path / f"rank-hang-{launcher}"
    codes, text, stopped, survivors = _launch(tmp_path, launcher, run_dir, hang=True,
                                              env_extra={"GSPARSE_COLLECTIVE_TIMEOUT": str(HANG_TIMEOUT_S)})
    assert all(code != 0 for code in codes), (codes, text[-4000:])
    message = ("epoch 1, micro-batch 3 (forward, backward, optimizer step) has not finished after "
               f"{HANG_TIMEOUT_S} s (collective_timeout, $GSPARSE_COLLECTIVE_TIMEOUT)")
    # whichever watchdog fires first stops its rank; the launcher (or the closed connection) the other
    assert any(f"gsparse: rank {rank}: {message}" in text for rank in (0, 1)), text[-4000:]
    assert "injected failure" not in text  # nobody raised: the hung rank was stopped by its watchdog
    assert survivors == []
    hung_at = float((run_dir / "failed_at").read_text())
    assert HANG_TIMEOUT_S <= stopped - hung_at <= HANG_TIMEOUT_S + STOP_BOUND_S, (stopped - hung_at, text[-4000:])
