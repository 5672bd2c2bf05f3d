"""The runner's step watchdog: a watched block that overruns ends the process with a message."""
import subprocess
import sys
import time

SCRIPT = """
import time
from gsparse.training.watchdog import StepWatchdog

watchdog = StepWatchdog(timeout_s={timeout}, rank=3, poll_s=0.05)
for step in range(3):  # blocks within the timeout never fire
    with watchdog.watch(f"quick step {{step}}"):
        time.sleep(0.05)
time.sleep({timeout} * 2)  # nor does time outside a watched block
def stuck_in_a_collective():
    with watchdog.watch("optimizer step 7"):
        time.sleep(60)
stuck_in_a_collective()
"""


def test_an_overrunning_step_ends_the_process_with_where_it_was():
    started = time.time()
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(timeout=0.5)], capture_output=True, text=True,
                            timeout=60)
    elapsed = time.time() - started
    assert result.returncode == 124
    assert ("gsparse: rank 3: optimizer step 7 has not finished after 0.5 s (collective_timeout, "
            "$GSPARSE_COLLECTIVE_TIMEOUT)") in result.stderr
    assert "quick step" not in result.stderr
    assert "stuck_in_a_collective" in result.stderr  # the threads' stacks say where it hung
    assert elapsed < 20


def test_closing_stops_the_thread():
    from gsparse.training.watchdog import StepWatchdog

    watchdog = StepWatchdog(timeout_s=0.2, poll_s=0.01)
    with watchdog.watch("step"):
        pass
    watchdog.close()
    assert not watchdog._thread.is_alive()
