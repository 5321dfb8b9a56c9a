"""Process runtime: the orderly stop behind `waxhouse.runtime.stop_on_sigterm`
(`waxhouse.stopping`), without installing anything process-wide.

The signals themselves, sent to a real `python -m bytewax.run`, are in
tests/integration/test_sigterm.py and test_full_disk.py.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import AbortExecution, StatefulSourcePartition
from bytewax.testing import TestingSink, TestingSource, run_main

from waxhouse.runtime import stop_on_sigterm
from waxhouse.stopping import (
    FlowStopper,
    OrderlyStop,
    StopRequest,
    flow_stopper,
    is_bytewax_next_batch,
    runs_workers_on_threads,
)

FAILURE = "recovery directory /r is full (no space left on device): free space and restart"


class Partition(StatefulSourcePartition[int, None]):
    """Records, on each call, whether its `next_batch` is the one Bytewax would call."""

    def __init__(self, inner: Partition | None = None) -> None:
        self.inner = inner
        self.outermost: list[bool] = []

    def next_batch(self) -> list[int]:
        self.outermost.append(is_bytewax_next_batch(sys._getframe()))
        return self.inner.next_batch() if self.inner else [1]

    def snapshot(self) -> None:
        return None


def next_batch() -> bool:
    return is_bytewax_next_batch(sys._getframe())


@pytest.fixture
def no_profile() -> Iterator[None]:
    yield
    sys.setprofile(None)


class Exits:
    """Stands in for `os._exit`."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, status: int) -> None:
        self.codes.append(status)


@pytest.mark.parametrize(
    ("args", "threads"),
    [
        ({"workers_per_process": 1, "addresses": None}, False),
        ({"workers_per_process": None, "addresses": None}, False),
        ({"workers_per_process": 2, "addresses": None}, True),
        ({"workers_per_process": 1, "addresses": "a:1;b:1"}, True),
    ],
)
def test_workers_run_on_threads_with_several_workers_or_a_cluster(
    args: dict[str, object], threads: bool
) -> None:
    assert runs_workers_on_threads(args) is threads


def test_the_next_batch_bytewax_calls_is_the_outermost_source_partitions() -> None:
    inner = Partition()
    outer = Partition(inner)
    outer.next_batch()
    assert outer.outermost == [True]
    assert inner.outermost == [False]
    assert not next_batch(), "a function of that name outside a source partition"


def test_a_signal_on_the_main_thread_worker_aborts_the_next_next_batch(no_profile: None) -> None:
    stopper = FlowStopper(workers_on_threads=False)
    stopper.on_signal(signal.SIGTERM, None)
    assert stopper.request == StopRequest("SIGTERM")
    assert next_batch() is False  # other code runs on
    partition = Partition()
    with pytest.raises(OrderlyStop):
        partition.next_batch()
    assert partition.outermost == [], "raised as it was entered, before it read anything"
    assert sys.getprofile() is None
    assert issubclass(OrderlyStop, AbortExecution)  # what Bytewax ends a run cleanly on


def test_bytewax_ends_a_run_cleanly_when_the_signal_lands_inside_a_step(
    no_profile: None,
) -> None:
    stopper = FlowStopper(workers_on_threads=False)
    out: list[int] = []

    def step(n: int) -> int:
        if n == 1_000:  # the handler runs in the middle of a step's Python code
            stopper.on_signal(signal.SIGINT, None)
        return n

    flow = Dataflow("endless")
    numbers = op.input("numbers", flow, TestingSource(itertools.count(), batch_size=100))
    op.output("out", op.map("step", numbers, step), TestingSink(out))

    run_main(flow)  # returns: no KeyboardInterrupt, no panic

    assert out[:1_001] == list(range(1_001)), "the step that saw the signal finished"
    assert len(out) < 100_000


def test_with_worker_threads_the_signal_ends_the_wait_with_the_exit_status() -> None:
    stopper = FlowStopper(workers_on_threads=True)
    with pytest.raises(SystemExit) as stop:
        stopper.on_signal(signal.SIGINT, None)
    assert stop.value.code == 0
    stopper.on_signal(signal.SIGINT, None)  # acted once: a second one does not raise again

    failing = FlowStopper(workers_on_threads=True)
    failing.fail(FAILURE)
    with pytest.raises(SystemExit) as stop:
        failing.on_signal(signal.SIGTERM, None)  # how `fail` wakes the main thread
    assert stop.value.code == f"waxhouse: {FAILURE}"  # printed, exit status 1


def count_signals(stopper: FlowStopper, signals: list[int]) -> None:
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=stopper.count_signals, args=(read_fd,))
    thread.start()
    os.write(write_fd, bytes(signals))
    os.close(write_fd)
    thread.join(timeout=30)
    os.close(read_fd)
    assert not thread.is_alive()


def test_a_second_signal_exits_at_once(capfd: pytest.CaptureFixture[str]) -> None:
    exits = Exits()
    count_signals(FlowStopper(workers_on_threads=False, exit_now=exits), [signal.SIGTERM])
    assert exits.codes == []

    count_signals(
        FlowStopper(workers_on_threads=False, exit_now=exits),
        [signal.SIGTERM, signal.SIGCHLD, signal.SIGINT],
    )
    assert exits.codes == [128 + signal.SIGINT]
    assert "SIGINT again while stopping: exiting at once" in capfd.readouterr().err


def test_a_failure_stop_exits_1_with_its_line_last(capsys: pytest.CaptureFixture[str]) -> None:
    exits = Exits()
    stopper = FlowStopper(workers_on_threads=False, exit_now=exits)
    stopper.exit_status()
    assert exits.codes == [], "no stop: Python's own exit status"

    stopper.fail(FAILURE)
    stopper.fail("a later failure is not the reason")
    print("the run summary")
    stopper.exit_status()
    assert exits.codes == [1]
    captured = capsys.readouterr()
    assert captured.out == "the run summary\n"
    assert captured.err.splitlines()[-1] == f"waxhouse: {FAILURE}"


def test_a_signal_stop_leaves_the_exit_status_to_python() -> None:
    exits = Exits()
    stopper = FlowStopper(workers_on_threads=True, exit_now=exits)
    with pytest.raises(SystemExit):
        stopper.on_signal(signal.SIGTERM, None)
    stopper.fail(FAILURE)  # too late: the signal's stop is under way
    stopper.exit_status()
    assert exits.codes == []


def raise_error() -> BaseException:
    try:
        raise RuntimeError("(src/run.rs:167:13) database or disk is full\nmore detail")
    except RuntimeError as e:
        return e


def test_an_error_a_failure_explains_is_one_line_and_the_failure_last(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
    stopper = FlowStopper(workers_on_threads=False, exit_now=Exits())
    full = False
    stopper.watch(lambda: FAILURE if full else None)
    error = raise_error()

    stopper.excepthook(RuntimeError, error, error.__traceback__)
    assert seen == [error], "nothing explains it: printed as Python does"

    full = True  # the disk filled before the watcher looked: found when the run fails
    stopper.excepthook(RuntimeError, error, error.__traceback__)
    assert seen == [error]
    assert capsys.readouterr().err.splitlines() == [
        "RuntimeError: (src/run.rs:167:13) database or disk is full",
        f"waxhouse: {FAILURE}",
    ]


def test_a_watched_check_stops_the_flow(no_profile: None) -> None:
    stopper = FlowStopper(workers_on_threads=False, exit_now=Exits())
    answers = iter([None, None, FAILURE])
    stopper.watch(lambda: next(answers, FAILURE))
    for _ in range(300):  # bounded: polled every 0.1 s
        if stopper.request is not None:
            break
        time.sleep(0.05)
    assert stopper.request == StopRequest("failure", FAILURE)


def test_outside_bytewax_run_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM), sys.excepthook
    stop_on_sigterm()
    assert flow_stopper() is None
    assert (signal.getsignal(signal.SIGTERM), sys.excepthook) == before
