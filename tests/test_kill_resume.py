"""kill -9 of one rank mid-run, then ``--resume``, ends with the logs and metrics of the uninterrupted run.

tests/distributed/resumable_worker.py trains the toy task with RigL at ZeRO-2 on 2 CPU ranks under the
deepspeed launcher. A second run (slowed by a sleep per step, which changes no result) loses rank 1 to
SIGKILL once epoch 1's checkpoint is complete; the launcher must exit non-zero and leave no rank behind.
Relaunched with ``--resume`` it continues from the newest intact checkpoint and must reproduce the
uninterrupted run's per-epoch log rows, mask updates and final metrics exactly.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.test_rank_failure import EXIT_GRACE_S, REPOSITORY, _free_port, _processes_naming

WORKER = Path(__file__).resolve().parent / "distributed" / "resumable_worker.py"
LAUNCH_TIMEOUT_S = 60  # each launch, start-up included
KILLED_EXIT_BOUND_S = 60  # from the SIGKILL to the launcher's exit
STEP_SECONDS = 0.25  # the killed run's sleep per step: 2 s per epoch, time to kill it mid-run
FINAL_METRICS = ("val_accuracy", "test_accuracy", "final_test_accuracy", "final_loss", "density", "final_sparsity",
                 "exploration_degree", "num_updates", "best_epoch")


def _launch(run_dir: Path, log: Path, *options: str) -> subprocess.Popen:
    command = ["deepspeed", "--num_accelerators", "2", "--master_port", str(_free_port()), str(WORKER),
               "--run-dir", str(run_dir), "--epochs", "3", *options]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with log.open("a") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)


def _rank_pid(run_dir: Path, local_rank: int) -> int | None:
    """The pid of the rank process of ``run_dir`` with LOCAL_RANK ``local_rank``, if it is running."""
    for pid in _processes_naming(str(run_dir)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if f"--local_rank={local_rank}".encode() in cmdline or f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    return None


def _stop_everything(launch: subprocess.Popen, run_dir: Path) -> None:
    if launch.poll() is None:
        launch.kill()
        launch.wait()
    for pid in _processes_naming(str(run_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rows(run_dir: Path, name: str = "log.jsonl") -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run_dir / name).read_text().splitlines()]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_kill_9_of_one_rank_then_resume_equals_the_uninterrupted_run(tmp_path):
    straight, killed, log = tmp_path / "straight", tmp_path / "killed", tmp_path / "launch.log"

    launch = _launch(straight, log)
    try:
        assert launch.wait(timeout=LAUNCH_TIMEOUT_S) == 0, log.read_text()[-4000:]
    finally:
        _stop_everything(launch, straight)

    launch = _launch(killed, log, "--step-seconds", str(STEP_SECONDS))
    try:
        deadline = time.time() + LAUNCH_TIMEOUT_S
        while not (killed / "checkpoints" / "epoch1" / "manifest.json").exists():
            assert launch.poll() is None and time.time() < deadline, log.read_text()[-4000:]
            time.sleep(0.05)
        victim = _rank_pid(killed, local_rank=1)
        assert victim is not None, "no rank 1 process found"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        code = launch.wait(timeout=KILLED_EXIT_BOUND_S)
        stopped = time.time()
        survivors = _processes_naming(str(killed))
        while survivors and time.time() < stopped + EXIT_GRACE_S:  # ranks the launcher just signalled
            time.sleep(0.2)
            survivors = _processes_naming(str(killed))
    finally:
        _stop_everything(launch, killed)
    assert code != 0
    assert stopped - killed_at <= KILLED_EXIT_BOUND_S
    assert survivors == []
    assert not (killed / "metrics.json").exists() or _metrics(killed)["status"] != "finished"

    launch = _launch(killed, log, "--resume")
    try:
        assert launch.wait(timeout=LAUNCH_TIMEOUT_S) == 0, log.read_text()[-4000:]
    finally:
        _stop_everything(launch, killed)

    assert _rows(killed) == _rows(straight)
    assert [row["epoch"] for row in _rows(killed)] == [1, 2, 3]
    assert _rows(killed, "updates.jsonl") == _rows(straight, "updates.jsonl")
    assert [row["step"] for row in _rows(killed, "updates.jsonl")] == list(range(2, 19, 2))  # none twice
    resumed, reference = _metrics(killed), _metrics(straight)
    assert resumed["resumed_from"] in (1, 2) and resumed["optimizer_state_restored"] is True
    assert {key: resumed[key] for key in FINAL_METRICS} == {key: reference[key] for key in FINAL_METRICS}
