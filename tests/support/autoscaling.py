"""For the autoscaler's tests and bench: a simulated flow (what its processes' metrics
would say), and a producer that ramps a real topic's rate."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waxhouse.autoscale.model import ProcessSample, Sample
from waxhouse.connectors.generator import ClickstreamGenerator, GeneratedRecord, GeneratorConfig

PARTS = ("events/0", "events/1", "events/2", "events/3")


def process(
    consumed: float,
    lag: float,
    cpu: float,
    parts: tuple[str, ...] = PARTS,
    arrived: float | None = None,
) -> ProcessSample:
    """A process reading `parts`, its totals spread evenly over them; with `arrived`, the
    partitions' end offsets too."""
    n = len(parts)
    end = {} if arrived is None else {p: arrived / n for p in parts}
    return ProcessSample({p: consumed / n for p in parts}, {p: lag / n for p in parts}, cpu, end)


class Flow:
    """A flow that sustains `capacity` records per CPU second on each process, fed at
    `rate` records per second: what its processes' metrics would say, every `step_s`."""

    def __init__(self, processes: int, capacity: float = 1_000.0, step_s: float = 5.0) -> None:
        self.processes = processes
        self.capacity = capacity
        self.step_s = step_s
        self.at = 0.0
        self.consumed = 0.0
        self.lag = 0.0
        self.cpu = 0.0
        self.arrived = 0.0  # the end offsets, summed: they never start again

    def restart(self, processes: int) -> None:
        """A rescale: new processes, counters from zero, the lag as it was."""
        self.processes, self.consumed, self.cpu = processes, 0.0, 0.0

    def sample(self, rate: float) -> Sample:
        self.at += self.step_s
        arrived = rate * self.step_s
        self.arrived += arrived
        most = self.processes * self.capacity * self.step_s  # one core each
        done = min(self.lag + arrived, most)
        self.lag += arrived - done
        self.consumed += done
        self.cpu += done / self.capacity + 0.01 * self.step_s * self.processes  # + polling
        n = self.processes
        parts = [PARTS[i::n] for i in range(n)]
        return Sample(
            self.at,
            [
                process(self.consumed / n, self.lag / n, self.cpu / n, part, self.arrived / n)
                for part in parts
            ],
        )


@dataclass(frozen=True)
class Phase:
    rate: int  # records per second
    seconds: float


def ramp(
    bootstrap: str, topic: str, phases: list[Phase], stop: threading.Event
) -> tuple[list[GeneratedRecord], dict[int, str]]:
    """Produce generated records, stamped as the generator stamps them, at each phase's
    rate in turn (the confluent client: a Python producer would not reach the rates that
    keep a flow process busy); the records, and where each went
    (`topic/partition/offset`)."""
    from confluent_kafka import Producer

    total = int(sum(p.rate * p.seconds for p in phases)) + 1_000
    records = ClickstreamGenerator(GeneratorConfig(seed=11, events=total)).take(total)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 500_000}
    )
    where: dict[int, str] = {}
    failed: list[str] = []

    def delivered(n: int) -> Callable[[Any, Any], None]:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                failed.append(str(error))
            else:
                where[n] = f"{message.topic()}/{message.partition()}/{message.offset()}"

        return report

    n = 0
    for phase in phases:
        began, sent = time.monotonic(), 0
        while not stop.is_set() and time.monotonic() - began < phase.seconds:
            due = min(int((time.monotonic() - began) * phase.rate), int(phase.rate * phase.seconds))
            for record in records[n : n + due - sent]:
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=record.value,
                            key=record.key,
                            timestamp=record.timestamp_ms,
                            on_delivery=delivered(n),
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                n += 1
            sent = due
            producer.poll(0)
            time.sleep(0.005)
    assert producer.flush(60) == 0, "records still unsent"
    assert not failed, failed[:3]
    return records[:n], where


def free_run(count: int) -> int:
    """The first of `count` consecutive loopback ports free right now."""
    while True:
        first = random.randint(20_000, 50_000)
        socks = [socket.socket() for _ in range(count)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("127.0.0.1", first + i))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
