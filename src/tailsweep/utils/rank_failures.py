"""Name the DDP rank that died, instead of gloo's "Connection reset by peer" on the ranks that survived it.

When one rank of a distributed run is killed (the OOM killer, ``kill -9``, a crash in native code), the others fail
in their next collective with a communication error that never says which peer is gone. Here every rank records
the pid (and host) of every rank when the trainer sets up (one ``all_gather_object``, a collective like the setup
around it), and the launching process keeps Lightning's ``Popen`` objects of the ranks it started. When a rank's
run fails, ``name_dead_ranks`` looks at the recorded processes: the ones that are gone are named, with the signal
or exit code where the launching process can read it (``Popen.returncode``), in a ``RankDiedError`` such as

    rank 1 (pid 1234) of 2 died (killed by signal 9, SIGKILL); rank 0 stopped at step 12 with: Connection reset
    by peer [127.0.0.1]:29500

which ``run_task`` writes to ``failure.json`` and raises (the communication error is its cause).

Lightning's child-process observer on the launching process SIGKILLs the launcher itself within 5 s of a child's
death, which could cut the failure record short; ``PatientChildObserver`` replaces it: it stops the remaining
children at once as Lightning does, but gives the launching process ``grace_s`` seconds to record the failure and
exit, and only then (the launcher hung in a collective) writes ``failure.json`` itself and kills it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: text of the communication errors a dead peer causes (gloo over TCP, NCCL, torch's store)
COMMUNICATION_ERROR_MARKERS = ("connection reset by peer", "connection closed by peer", "broken pipe", "gloo",
                               "nccl", "socket timeout", "connection refused", "recvbytes", "sendbytes")
#: seconds a surviving rank waits for a peer whose connection dropped to be gone (its exit takes a moment)
WAIT_FOR_PEER_S = 3.0


class RankDiedError(RuntimeError):
    """A rank of the distributed run died; the message names it (pid, signal or exit code) and this rank's step."""

    def __init__(self, message: str, dead: Sequence[DeadRank]) -> None:
        super().__init__(message)
        self.dead = list(dead)


@dataclass(frozen=True)
class RankProcess:
    """Where one rank runs: its global rank, pid, host and the process's start time (``/proc``; tells a reused pid
    from the rank's own)."""

    rank: int
    pid: int
    host: str
    start_time: int | None


@dataclass(frozen=True)
class DeadRank:
    """A rank found gone: how it ended (``signal`` or ``exit_code`` where the launching process saw it)."""

    rank: int
    pid: int
    host: str
    signal: int | None
    exit_code: int | None

    @property
    def how(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by signal {self.signal}, {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "exit status not visible from this rank, which did not launch it"


@dataclass
class _Watch:
    rank: int
    world_size: int
    ranks: list[RankProcess]
    children: dict[int, subprocess.Popen]   # global rank -> the Popen of a rank this process launched
    first_dead: dict[int, int]              # global rank -> returncode the observer saw before stopping the rest
    described: RankDiedError | None = None


_watch: _Watch | None = None
_recorded = threading.Event()  # set once the failure of the current job is recorded: the observer stands down
_observers: list[PatientChildObserver] = []


def _start_time(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # field 22 of stat: starttime, counted after the ")" that ends the command name


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def this_process(rank: int) -> RankProcess:
    pid = os.getpid()
    return RankProcess(rank, pid, socket.gethostname(), _start_time(pid))


def watch_ranks(rank: int, world_size: int, ranks: Sequence[RankProcess],
                children: Sequence[subprocess.Popen] = ()) -> None:
    """Remember every rank's process (gathered at setup) and the ``Popen`` objects of the ranks launched here."""
    global _watch
    by_pid = {child.pid: child for child in children}
    launched = {r.rank: by_pid[r.pid] for r in ranks if r.pid in by_pid and r.host == socket.gethostname()}
    first_dead = _watch.first_dead if _watch is not None else {}
    _watch = _Watch(rank, world_size, list(ranks), launched, first_dead)
    _recorded.clear()


def forget_ranks() -> None:
    """End of a job: nothing to name any more, and the observer of its ranks stands down."""
    global _watch
    _watch = None
    _recorded.set()
    for observer in _observers:
        observer.stand_down()
    _observers.clear()


def _dead_ranks(watch: _Watch) -> list[DeadRank]:
    host = socket.gethostname()
    dead = []
    for process in watch.ranks:
        if process.rank == watch.rank or process.host != host:
            continue  # a rank on another host cannot be looked at from here
        child = watch.children.get(process.rank)
        code = watch.first_dead.get(process.rank)
        if code is None and child is not None:
            code = child.poll()
        if code is not None:
            dead.append(DeadRank(process.rank, process.pid, host, -code if code < 0 else None,
                                 code if code >= 0 else None))
        elif child is None and (_start_time(process.pid) != process.start_time or _is_zombie(process.pid)):
            dead.append(DeadRank(process.rank, process.pid, host, None, None))
    return dead


def is_communication_error(error: BaseException) -> bool:
    """Whether ``error`` looks like what a collective raises when a peer is gone."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError | OSError | ConnectionError) and any(
        marker in text for marker in COMMUNICATION_ERROR_MARKERS)


def _short(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)  # gloo's "[.../pair.cc:534] " source prefix
    if is_communication_error(error):  # gloo adds "This is typically caused by a remote worker crashing. ..."
        text = text.split(". ")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def describe(watch: _Watch, dead: Sequence[DeadRank], error: BaseException | None, step: int | None) -> str:
    """``rank 1 (pid 1234) of 2 died (killed by signal 9, SIGKILL); rank 0 stopped at step 12 with: ...``."""
    names = "; ".join(f"rank {d.rank} (pid {d.pid}) of {watch.world_size} died ({d.how})" for d in dead)
    where = f" at step {step}" if step is not None else ""
    cause = f" with: {_short(error)}" if error is not None else " waiting for it (hung in a collective)"
    return f"{names}; rank {watch.rank} stopped{where}{cause}"


def name_dead_ranks(error: BaseException, step: int | None = None,
                    wait_s: float = WAIT_FOR_PEER_S) -> RankDiedError | None:
    """A ``RankDiedError`` naming the ranks that are gone when the communication error ``error`` ended this rank's
    run, else None (another error is this rank's own and stays as it is).

    The first description made for a job is kept (the trainer's ``on_exception`` knows the step; ``run_task``
    asks again later). It waits up to ``wait_s`` seconds for the peer's exit to show.
    """
    watch = _watch
    if watch is None or watch.world_size < 2 or not is_communication_error(error):
        return None
    if watch.described is not None:
        return watch.described
    deadline = time.monotonic() + wait_s
    while True:
        dead = _dead_ranks(watch)
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not dead:
        return None
    watch.described = RankDiedError(describe(watch, dead, error, step), dead)
    return watch.described


def failure_record(named: RankDiedError, error: BaseException) -> dict[str, Any]:
    """The ``failure.json`` fields of a failure caused by a dead rank."""
    return {"error": f"{type(named).__name__}: {named}", "dead_ranks": [asdict(d) | {"how": d.how} for d in named.dead],
            "cause": f"{type(error).__name__}: {error}"}


def records_for_dead_rank_zero(named: RankDiedError) -> bool:
    """Whether this rank writes ``failure.json`` in place of rank 0 (which writes the run's files): rank 0 is among
    the dead and this is the lowest rank that is not."""
    watch = _watch
    if watch is None or not any(d.rank == 0 for d in named.dead):
        return False
    dead = {d.rank for d in named.dead}
    return watch.rank == min(r for r in range(watch.world_size) if r not in dead)


def failure_recorded() -> None:
    """The job's failure is in ``failure.json``: the observer needs not write it nor kill the launcher."""
    _recorded.set()


def observe_children(children: Sequence[subprocess.Popen], write: Callable[[Mapping[str, Any]], None]) -> None:
    """Start a ``PatientChildObserver`` of the ranks launched here (in place of Lightning's observer)."""
    observer = PatientChildObserver(children, write)
    _observers.append(observer)
    observer.start()


class PatientChildObserver(threading.Thread):
    """Lightning's ``_ChildProcessObserver`` that lets the launching process record a child's death first.

    Every ``sleep_period`` seconds it polls the launched ranks; when one has ended with a non-zero status it notes
    that status (before anything else is killed, so the rank that died first is the one named), SIGKILLs the other
    children (they may hang in a collective), and waits up to ``grace_s`` seconds for the launching process to
    record the failure. When it has not (hung in a collective), it writes ``failure.json`` through ``write`` and
    the message to stderr, then SIGKILLs the launching process, as Lightning does at once.
    """

    def __init__(self, children: Sequence[subprocess.Popen], write: Callable[[Mapping[str, Any]], None],
                 grace_s: float = 30.0, sleep_period: float = 5.0, main_pid: int | None = None) -> None:
        super().__init__(daemon=True, name="patient-child-process-observer")
        self.children = list(children)
        self.write = write
        self.grace_s = grace_s
        self.sleep_period = sleep_period
        self.main_pid = os.getpid() if main_pid is None else main_pid  # the launching process
        self._standing_down = threading.Event()

    def stand_down(self) -> None:
        self._standing_down.set()

    def run(self) -> None:
        while not self._standing_down.wait(self.sleep_period):
            codes = [child.poll() for child in self.children]
            if all(code == 0 for code in codes):
                return
            failed = [(i, code) for i, code in enumerate(codes) if code]
            if failed:
                self._on_child_death(failed)
                return

    def _on_child_death(self, failed: list[tuple[int, int]]) -> None:
        watch = _watch
        if watch is not None:
            ranks = {child.pid: rank for rank, child in watch.children.items()}
            for index, code in failed:
                watch.first_dead.setdefault(ranks.get(self.children[index].pid, index + 1), code)
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
        if _recorded.wait(self.grace_s) or self._standing_down.is_set():
            return
        watch = _watch
        message = None
        if watch is not None:
            dead = _dead_ranks(watch)
            if dead:
                message = describe(watch, dead, None, None)
        if message is None:
            message = "; ".join(f"child process {self.children[i].pid} (rank {i + 1}) exited with {code}"
                                for i, code in failed) + f"; the launching process did not stop within {self.grace_s} s"
        try:
            self.write({"status": "failed", "error": f"RankDiedError: {message}",
                        "traceback": "none: the launching process did not stop by itself (hung in a collective) and "
                                     "was stopped by the child-process observer"})
        finally:
            print(f"RankDiedError: {message}; stopping the launching process", file=sys.stderr, flush=True)
            os.kill(self.main_pid, signal.SIGKILL)
