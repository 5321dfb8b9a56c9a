"""Stopping a running flow in order: on SIGTERM or SIGINT, or on a failure it detects itself.

Under `python -m bytewax.run`, a stop ends the dataflow the way Bytewax ends a finished
one: the run loop ends, every sink flushes and closes, the run summary prints, and the
process exits. The epoch in progress is not snapshotted, so the next start resumes from the
last snapshot, as after any stop.

- SIGTERM (`docker stop`, a Kubernetes pod deletion) or SIGINT (Ctrl-C): exit 0, no
  traceback.
- A failure the process notices before it breaks anything (`FlowStopper.fail`, or a
  `watch`ed check such as the recovery directory's free space): exit 1, with one line
  saying what happened and what to do as the last line of the output.
- A second SIGTERM or SIGINT while stopping: exit at once with 128 + the signal number,
  without waiting for the sinks; the state is then as safe as after `kill -9`.
- Anything else that goes wrong, during a stop or not, stays Bytewax's error: non-zero,
  with its traceback.

Why not Bytewax's own KeyboardInterrupt. With one worker (no `-w`, `-i`, `-a`) Bytewax
0.21.1 runs the dataflow on the main thread, and Python runs signal handlers there between
Bytewax's steps or inside a step's Python code; a KeyboardInterrupt becomes a Rust panic
(printed with its backtrace) and the run ends in a `BytewaxRuntimeError`, exit status 1.
The one stop Bytewax takes there without a panic is a source partition's `next_batch`
raising `bytewax.inputs.AbortExecution`. So the handler arms a profile hook on the main
thread, which raises `OrderlyStop` (an `AbortExecution`) as the next `next_batch` Bytewax
calls is entered, before the partition has read anything: the stop waits for the current
worker step and, if the source asked to sleep (`next_awake`), for it to wake. With worker
threads (`-w` > 1, or a cluster with `-i`/`-a`) the main thread only waits and runs the
handlers; an exception raised there makes every worker leave its loop after its current
step, and Bytewax re-raises it once the dataflow is dropped. So there the handler raises
`SystemExit` with the exit status.

Real signals are counted on a thread reading Python's signal wakeup file descriptor, so a
second one takes effect even while the main thread is busy in Rust or C code.
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType

from bytewax.inputs import AbortExecution, StatefulSourcePartition, StatelessSourcePartition

from waxhouse.runargs import bytewax_run_args

logger = logging.getLogger(__name__)

FAILURE_EXIT_CODE = 1
CHECK_INTERVAL_S = 0.1
_SOURCE_PARTITIONS = (StatefulSourcePartition, StatelessSourcePartition)

Check = Callable[[], "str | None"]
"""A condition the flow cannot go on under: returns its one-line message, or None."""


class OrderlyStop(AbortExecution):
    """Raised into Bytewax from a source partition's `next_batch`: end the run in order."""


@dataclass(frozen=True)
class StopRequest:
    """Why the flow stops: a signal (`failure` None, exit 0), or a failure's message."""

    cause: str
    failure: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.failure is None else FAILURE_EXIT_CODE


def is_bytewax_next_batch(frame: FrameType) -> bool:
    """Whether `frame` runs a source partition's `next_batch` as Bytewax called it: the
    outermost one, if a partition delegates to another."""
    found = False
    outer: FrameType | None = frame
    while outer is not None:
        if outer.f_code.co_name == "next_batch" and isinstance(
            outer.f_locals.get("self"), _SOURCE_PARTITIONS
        ):
            if found:
                return False
            found = True
        outer = outer.f_back
    return found


def runs_workers_on_threads(args: dict[str, object]) -> bool:
    """Whether `bytewax.run` started with `args` runs its workers on threads of their own
    (Bytewax's `cluster_main`) rather than on the main thread (`run_main`)."""
    workers = int(str(args.get("workers_per_process") or 1))
    return workers > 1 or args.get("addresses") is not None


class FlowStopper:
    """Stops the dataflow of this process in order; one per process (`flow_stopper()`).

    `exit_now` ends the process without cleanup (`os._exit`; replaceable in tests).
    """

    def __init__(
        self, *, workers_on_threads: bool, exit_now: Callable[[int], None] = os._exit
    ) -> None:
        self._workers_on_threads = workers_on_threads
        self._exit_now = exit_now
        self._lock = threading.Lock()
        self._request: StopRequest | None = None
        self._installed = False
        self._acted = False
        self._reported = False
        self._wakeups = 0  # our own `interrupt_main` calls, not yet seen as signals
        self._signals = 0  # real SIGTERMs and SIGINTs seen
        self._checks: list[Check] = []
        self._previous_excepthook = sys.excepthook

    @property
    def request(self) -> StopRequest | None:
        return self._request

    def install(self) -> None:
        """Handle SIGTERM and SIGINT, and own the exit status. Once, on the main thread."""
        if self._installed:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(
            target=self.count_signals, args=(read_fd,), name="waxhouse-signals", daemon=True
        ).start()
        signal.signal(signal.SIGTERM, self.on_signal)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup`, `cmd &`
            signal.signal(signal.SIGINT, self.on_signal)
        # Registered early, so run late: after the exit handlers of what the flow opens.
        atexit.register(self.exit_status)
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self.excepthook
        self._installed = True
        if self._request is not None:
            self._act()

    def watch(self, check: Check) -> None:
        """Fail the flow with `check`'s message once it has one: asked every
        `CHECK_INTERVAL_S` on a thread, and again if the run ends in an error (a failure
        only stops the flow once `install()` has run)."""
        self._checks.append(check)
        if len(self._checks) == 1:
            threading.Thread(target=self._poll, name="waxhouse-checks", daemon=True).start()

    def fail(self, message: str) -> None:
        """Stop the flow in order, then exit 1 with `message` last. From any thread."""
        with self._lock:
            if self._request is not None:
                return
            self._request = StopRequest("failure", message)
            wake = self._installed
            if wake:
                self._wakeups += 1
        logger.warning("stopping the flow: %s", message)
        if wake:
            # Run `on_signal` on the main thread as soon as it runs Python code.
            _thread.interrupt_main(signal.SIGTERM)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler of SIGTERM and SIGINT (main thread)."""
        with self._lock:
            if self._request is None:
                self._request = StopRequest(signal.Signals(signum).name)
        self._act()

    def _act(self) -> None:
        request = self._request
        if self._acted or request is None:
            return
        self._acted = True
        if request.failure is None:
            logger.warning(
                "%s: stopping after the current batch (send it again to stop at once)",
                request.cause,
            )
        if self._workers_on_threads:
            self._reported = True
            raise SystemExit(f"waxhouse: {request.failure}" if request.failure else 0)
        sys.setprofile(self._abort_at_next_batch)

    def _abort_at_next_batch(self, frame: FrameType, event: str, arg: object) -> None:
        name = frame.f_code.co_name
        if event == "call" and name == "next_batch" and is_bytewax_next_batch(frame):
            sys.setprofile(None)
            raise OrderlyStop(f"stop requested ({self._request})")

    def count_signals(self, read_fd: int) -> None:
        """Read signal numbers from the wakeup fd; exit at once on the second stop signal."""
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in (signal.SIGTERM, signal.SIGINT):
                    continue
                with self._lock:
                    if signum == signal.SIGTERM and self._wakeups:
                        self._wakeups -= 1
                        continue
                    self._signals += 1
                    second = self._signals >= 2
                if second:
                    self._exit_at_once(signum)
                    return

    def _exit_at_once(self, signum: int) -> None:
        line = (
            f"\nwaxhouse: {signal.Signals(signum).name} again while stopping: exiting at "
            "once without flushing; the next start resumes from the last snapshot\n"
        )
        # Not through logging or sys.stderr, whose locks the main thread may hold.
        os.write(2, line.encode())
        self._exit_now(128 + signum)

    def _poll(self) -> None:
        while self._request is None:
            for check in self._checks:
                message = check()
                if message is not None:
                    self.fail(message)
                    return
            time.sleep(CHECK_INTERVAL_S)

    def excepthook(
        self, kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        """The run ended in an error. If a failure explains it (asked for before, or found
        now, such as a full disk), print the error's first line and then the failure's, in
        place of a traceback of Bytewax's runner; else print the error as Python does."""
        request = self._request
        failure = request.failure if request is not None else None
        if failure is None:
            failure = next((m for m in (check() for check in self._checks) if m), None)
        if failure is None:
            self._previous_excepthook(kind, value, tb)
            return
        self._reported = True
        first = (str(value).strip().splitlines() or [""])[0]
        print(f"{kind.__name__}: {first}", file=sys.stderr)
        print(f"waxhouse: {failure}", file=sys.stderr, flush=True)

    def exit_status(self) -> None:
        """At exit, after a failure stop that let the run end normally: print the failure
        last and exit 1 (the exit handlers registered before this one are skipped)."""
        request = self._request
        if request is None or request.failure is None or self._reported:
            return
        self._reported = True
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        print(f"waxhouse: {request.failure}", file=sys.stderr, flush=True)
        self._exit_now(request.exit_code)


_stopper: FlowStopper | None = None


def flow_stopper() -> FlowStopper | None:
    """This process's stopper when it runs under `python -m bytewax.run`, else None."""
    global _stopper
    if _stopper is None:
        args = bytewax_run_args()
        if args is None:
            return None
        _stopper = FlowStopper(workers_on_threads=runs_workers_on_threads(args))
    return _stopper
