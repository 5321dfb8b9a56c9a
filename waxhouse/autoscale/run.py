"""`waxhouse autoscale`: sample a flow's processes, decide (`waxhouse.autoscale.model`),
and rescale it through an actuator, or only say what it would do (`--dry-run`).

Each look prints one line:

    seconds  processes  input/s  backlog  capacity/s  needed  action  reason
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

from prometheus_client import Counter, Gauge

from waxhouse.autoscale.metrics import ScrapeError, sample_flow
from waxhouse.autoscale.model import Controller, Decision, Sample

logger = logging.getLogger(__name__)

PROCESSES = Gauge(
    "waxhouse_autoscale_processes",
    "The flow's process count: running now (current) and recommended by the model.",
    ["kind"],
)
ACTIONS = Counter(
    "waxhouse_autoscale_actions_total", "Rescales the autoscaler made.", ["direction"]
)
RESCALE_SECONDS = Gauge(
    "waxhouse_autoscale_rescale_seconds",
    "How long the last rescale took: stopping the processes, and starting the new ones.",
    ["phase"],
)

HEADER = (
    f"{'seconds':>8}  {'processes':>9}  {'input/s':>10}  {'backlog':>10}  "
    f"{'capacity/s':>10}  {'needed':>6}  {'action':<6}  reason"
)


class Actuator(Protocol):
    """What changes the flow's size: the local processes, or a StatefulSet."""

    @property
    def size(self) -> int: ...

    def metrics_urls(self) -> list[str]: ...

    def check(self) -> None: ...

    def rescale(self, processes: int) -> object: ...


def line(decision: Decision, started: float) -> str:
    rates, capacity = decision.rates, decision.capacity
    rate = f"{rates.demand.input_rate:,.0f}" if rates else "-"
    backlog = f"{rates.demand.backlog:,.0f}" if rates else "-"
    per = f"{capacity:,.0f}" if capacity else "-"
    return (
        f"{decision.at - started:>8.0f}  {decision.current:>9}  {rate:>10}  {backlog:>10}  "
        f"{per:>10}  {decision.recommended:>6}  {decision.action:<6}  {decision.reason}"
    )


class Autoscaler:
    """Looks every `interval_s`: samples the flow, decides, and rescales it through
    `actuator`, unless `dry_run` (or there is none: then `urls` are the processes'
    metrics). A dry run prints the action it would take."""

    def __init__(
        self,
        controller: Controller,
        out: TextIO,
        *,
        actuator: Actuator | None = None,
        dry_run: bool = False,
        urls: Sequence[str] = (),
        sample: Callable[[Sequence[str]], Sample] = sample_flow,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.controller = controller
        self._out = out
        self._actuator = actuator
        self._dry_run = dry_run or actuator is None
        self._urls = list(urls)
        self._sample = sample
        self._clock = clock
        self._sleep = sleep
        self.decisions: list[Decision] = []
        self.rescales: list[tuple[Decision, object]] = []  # each action, with its report
        self._started = clock()

    def run(self, interval_s: float, looks: int | None = None) -> list[Decision]:
        """Look every `interval_s`, `looks` times (default: until interrupted)."""
        print(HEADER, file=self._out, flush=True)
        n = 0
        while looks is None or n < looks:
            if n:
                self._sleep(interval_s)
            n += 1
            self.look()
        return self.decisions

    def look(self) -> Decision | None:
        """Sample, decide, act if due; print the look's line. None if no process answered."""
        actuator = self._actuator
        if actuator is not None:
            actuator.check()
        urls = actuator.metrics_urls() if actuator is not None else self._urls
        try:
            sample = self._sample(urls)
        except ScrapeError as e:
            logger.warning("autoscale: %s", e)
            return None
        decision = self.controller.observe(sample)
        self.decisions.append(decision)
        print(line(decision, self._started), file=self._out, flush=True)
        PROCESSES.labels(kind="current").set(decision.current)
        PROCESSES.labels(kind="recommended").set(decision.recommended)
        if decision.action != "hold" and actuator is not None and not self._dry_run:
            logger.info(
                "autoscale: %s from %d to %d processes: %s",
                decision.action,
                decision.current,
                decision.target,
                decision.reason,
            )
            report = actuator.rescale(decision.target)
            self.rescales.append((decision, report))
            self.controller.rescaled(decision.target, self._clock())
            ACTIONS.labels(direction=decision.action).inc()
            for phase in ("stop_s", "start_s"):
                value = getattr(report, phase, None)
                if value is not None:
                    RESCALE_SECONDS.labels(phase=phase.removesuffix("_s")).set(value)
            logger.info("autoscale: rescaled: %s", report)
        return decision
