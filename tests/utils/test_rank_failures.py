"""Naming the DDP rank that died (utils/rank_failures.py), on real processes standing in for ranks; the 2-rank run
is tests/distributed/test_ddp_faults.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tailsweep.utils import rank_failures
from tailsweep.utils.rank_failures import (
    PatientChildObserver,
    RankProcess,
    name_dead_ranks,
    records_for_dead_rank_zero,
    this_process,
    watch_ranks,
)

GLOO = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:20617. "
        "This is typically caused by a remote worker crashing. GLHF!")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A process standing in for a rank (killed and reaped after the test)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    rank_failures.forget_ranks()


def _record(process: subprocess.Popen, rank: int) -> RankProcess:
    for _ in range(50):  # /proc shows the start time once the child exists
        start = rank_failures._start_time(process.pid)
        if start is not None:
            break
        time.sleep(0.01)
    return RankProcess(rank, process.pid, socket.gethostname(), start)


def test_the_launching_rank_names_a_sigkilled_child_with_its_signal_and_its_own_step(sleeper) -> None:
    watch_ranks(0, 2, [this_process(0), _record(sleeper, 1)], [sleeper])
    assert name_dead_ranks(RuntimeError(GLOO), step=12, wait_s=0.0) is None  # the peer is alive: not a dead rank
    rank_failures._watch.described = None
    sleeper.send_signal(signal.SIGKILL)
    named = name_dead_ranks(RuntimeError(GLOO), step=12)
    assert str(named) == (f"rank 1 (pid {sleeper.pid}) of 2 died (killed by signal 9, SIGKILL); rank 0 stopped at "
                          "step 12 with: Connection closed by peer [127.0.0.1]:20617")
    assert named.dead[0].signal == signal.SIGKILL and named.dead[0].exit_code is None
    # run_task asks again without the step: the trainer's description (with the step) is kept
    assert name_dead_ranks(RuntimeError(GLOO)) is named
    assert not records_for_dead_rank_zero(named)


def test_a_child_that_exited_with_an_error_is_named_with_its_exit_code() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        watch_ranks(0, 2, [this_process(0), _record(child, 1)], [child])
        named = name_dead_ranks(RuntimeError("Connection reset by peer"), step=4)
        assert "rank 1 (pid" in str(named) and "died (exit code 3); rank 0 stopped at step 4" in str(named)
    finally:
        child.wait()
        rank_failures.forget_ranks()


def test_a_rank_that_did_not_launch_the_dead_one_names_it_and_writes_for_a_dead_rank_zero(sleeper) -> None:
    """Rank 1's view: rank 0 (here the sleeper, not in its launched children) is gone; rank 1 is the lowest rank
    alive, so it writes failure.json in rank 0's place."""
    watch_ranks(1, 3, [_record(sleeper, 0), this_process(1), this_process(2)])
    sleeper.send_signal(signal.SIGKILL)
    named = name_dead_ranks(RuntimeError(GLOO), step=7)  # a zombie (not reaped yet) counts as dead
    assert str(named).startswith(f"rank 0 (pid {sleeper.pid}) of 3 died (exit status not visible from this rank")
    assert "rank 1 stopped at step 7" in str(named)
    assert records_for_dead_rank_zero(named)


def test_an_error_of_the_rank_itself_is_left_as_it_is(sleeper) -> None:
    watch_ranks(0, 2, [this_process(0), _record(sleeper, 1)], [sleeper])
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    assert name_dead_ranks(ValueError("bad label"), step=1) is None  # not a communication error: its own
    rank_failures.forget_ranks()
    assert name_dead_ranks(RuntimeError(GLOO)) is None  # nothing watched (a single process, or after the job)


def test_the_observer_lets_the_launcher_record_the_failure_and_stops_it_only_when_it_hangs(sleeper) -> None:
    """The child dies; the stand-in launcher (a sleeping process) records nothing within the grace period, so the
    observer writes failure.json naming the rank and SIGKILLs it. A launcher that records in time is left alone."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    written: list[dict[str, Any]] = []
    try:
        watch_ranks(0, 2, [this_process(0), _record(sleeper, 1)], [sleeper])
        observer = PatientChildObserver([sleeper], written.append, grace_s=0.5, sleep_period=0.05,
                                        main_pid=launcher.pid)
        observer.start()
        sleeper.send_signal(signal.SIGKILL)
        observer.join(timeout=10)
        assert launcher.wait(timeout=10) == -signal.SIGKILL
        (payload,) = written
        assert payload["error"].startswith(f"RankDiedError: rank 1 (pid {sleeper.pid}) of 2 died (killed by signal 9")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()

    patient = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    try:
        observer = PatientChildObserver([child], written.append, grace_s=5.0, sleep_period=0.05,
                                        main_pid=patient.pid)
        rank_failures._recorded.clear()
        observer.start()
        child.wait()
        time.sleep(0.3)
        rank_failures.failure_recorded()  # run_task wrote failure.json
        observer.join(timeout=10)
        assert not observer.is_alive() and patient.poll() is None and len(written) == 1
    finally:
        patient.kill()
        patient.wait()
        child.wait()
