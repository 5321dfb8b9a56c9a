"""The autoscaler's loop over a simulated flow, and what it reads of real metrics text."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tests.support.autoscaling import Flow
from waxhouse.autoscale.metrics import ScrapeError, process_sample, sample_flow
from waxhouse.autoscale.model import Controller, Policy, Sample
from waxhouse.autoscale.run import Autoscaler


def metrics_text(consumed: dict[str, float], lag: dict[str, float], cpu: float | None) -> str:
    """A process's /metrics as prometheus_client writes it."""
    registry = CollectorRegistry()
    records = Counter(
        "waxhouse_records_consumed_total", "", ["topic", "partition"], registry=registry
    )
    behind = Gauge("waxhouse_consumer_lag_records", "", ["topic", "partition"], registry=registry)
    end = Gauge("waxhouse_source_end_offset", "", ["topic", "partition"], registry=registry)
    for part, value in consumed.items():
        topic, partition = part.split("/")
        records.labels(topic=topic, partition=partition).inc(value)
        behind.labels(topic=topic, partition=partition).set(lag[part])
        end.labels(topic=topic, partition=partition).set(value + lag[part])
    if cpu is not None:
        Counter("process_cpu_seconds_total", "", registry=registry).inc(cpu)
    Gauge("waxhouse_watermark_seconds", "", ["partition"], registry=registry)
    return generate_latest(registry).decode()


def test_a_process_sample_is_its_partitions_counts_and_lag_and_its_cpu() -> None:
    text = metrics_text({"events/0": 10.0, "events/1": 5.0}, {"events/0": 3, "events/1": 0}, 2.5)
    sample = process_sample(text)
    assert sample.consumed == {"events/0": 10.0, "events/1": 5.0}
    assert sample.lag == {"events/0": 3.0, "events/1": 0.0}
    assert sample.end == {"events/0": 13.0, "events/1": 5.0}
    assert sample.cpu_seconds == 2.5


def test_metrics_without_cpu_time_are_refused() -> None:
    with pytest.raises(ScrapeError, match="process_cpu_seconds"):
        process_sample(metrics_text({"events/0": 1.0}, {"events/0": 0.0}, None))


def test_a_flow_sample_reads_every_process() -> None:
    texts = {
        "a": metrics_text({"events/0": 4.0}, {"events/0": 1.0}, 1.0),
        "b": metrics_text({"events/1": 6.0}, {"events/1": 2.0}, 2.0),
    }
    sample = sample_flow(["a", "b"], read=texts.__getitem__, clock=lambda: 42.0)
    assert (sample.at, sample.consumed(), sample.cpu_seconds()) == (
        42.0,
        {"events/0": 4.0, "events/1": 6.0},
        3.0,
    )


@dataclass
class Processes:
    """An actuator over the simulated flow."""

    flow: Flow
    rescales: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.flow.processes

    def metrics_urls(self) -> list[str]:
        return [f"p{i}" for i in range(self.size)]

    def check(self) -> None:
        pass

    def rescale(self, processes: int) -> None:
        self.rescales.append(processes)
        self.flow.restart(processes)


def fed(flow: Flow, rates: list[float]) -> object:
    """A `sample` function: the flow fed at the next rate at every look."""
    feed = iter(rates)

    def sample(urls: Sequence[str]) -> Sample:
        assert len(urls) == flow.processes
        return flow.sample(next(feed))

    return sample


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_loop_rescales_through_its_actuator_unless_a_dry_run(dry_run: bool) -> None:
    flow = Flow(processes=1)
    actuator = Processes(flow)
    policy = Policy(max_processes=4, up_delay_s=10, cooldown_s=30)
    out = io.StringIO()
    clock = iter(range(0, 10_000, 5))
    autoscaler = Autoscaler(
        Controller(policy, current=1),
        out,
        actuator=actuator,
        dry_run=dry_run,
        sample=fed(flow, [1_500.0] * 12),  # type: ignore[arg-type]
        clock=lambda: float(next(clock)),
        sleep=lambda _: None,
    )
    decisions = autoscaler.run(interval_s=5, looks=12)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["seconds", "processes", "input/s"]
    assert len(lines) == 13
    ups = [d for d in decisions if d.action == "up"]
    if dry_run:
        assert actuator.rescales == [] and len(ups) > 1  # said again at every look
        assert all(line.split()[1] == "1" for line in lines[1:])
    else:
        assert actuator.rescales == [3]  # 1,500/s at 70% of 1,000/s
        assert [line.split()[1] for line in lines[1:]][-1] == "3"
