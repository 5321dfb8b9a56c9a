"""The autoscaling model: rates from samples, the DS2 count, dead band, stabilisation."""

from __future__ import annotations

import pytest

from tests.support.autoscaling import PARTS, Flow, process
from waxhouse.autoscale.model import (
    Controller,
    Demand,
    Policy,
    PolicyError,
    ProcessSample,
    Rates,
    Sample,
    needed,
)


def test_the_ds2_count_covers_input_and_backlog_at_the_target() -> None:
    policy = Policy(min_processes=1, max_processes=8, target_utilisation=0.5, catch_up_s=100)
    # 900/s + 10,000 over 100 s = 1,000/s; at 50% of 1,000/s a process: 2.
    assert needed(Demand(900.0, 10_000.0), 1_000.0, 8, policy) == 2
    assert needed(Demand(901.0, 10_000.0), 1_000.0, 8, policy) == 3
    assert needed(Demand(0.0, 0.0), 1_000.0, 8, policy) == 1


@pytest.mark.parametrize(
    ("partitions", "maximum", "minimum", "expected"),
    [(3, 8, 1, 3), (12, 5, 1, 5), (12, 8, 6, 6)],
)
def test_the_count_stays_within_min_max_and_the_partitions(
    partitions: int, maximum: int, minimum: int, expected: int
) -> None:
    policy = Policy(min_processes=minimum, max_processes=maximum)
    many = Demand(input_rate=10_000.0, backlog=0.0)
    few = Demand(input_rate=1.0, backlog=0.0)
    assert needed(many if expected != minimum else few, 1_000.0, partitions, policy) == expected


def test_rates_are_consumption_plus_lag_growth_and_capacity_per_cpu_second() -> None:
    earlier = Sample(10.0, [process(1_000, 1_000, 2.0)])
    later = Sample(20.0, [process(9_000, 3_000, 10.0)])
    rates = Rates.between(earlier, later, busy_cores=0.8)
    assert rates is not None
    assert rates.demand == Demand(input_rate=1_000.0, backlog=3_000.0)  # (8,000 + 2,000) / 10
    assert rates.consumed_rate == 800.0
    assert rates.capacity == 1_000.0  # 8,000 records in 8 CPU seconds
    assert rates.partitions == 4


def test_the_input_rate_is_the_end_offsets_growth_when_the_flow_reports_them() -> None:
    """Consumption comes in batches and a restart starts its lag gauges at 0: what
    arrived is read off the partitions' end offsets instead."""
    earlier = ProcessSample({"events/0": 0.0}, {"events/0": 0.0}, 0.0, {"events/0": 100.0})
    later = ProcessSample({"events/0": 10_000.0}, {"events/0": 0.0}, 1.0, {"events/0": 5_100.0})
    rates = Rates.between(Sample(0.0, [earlier]), Sample(10.0, [later]), 0.8)
    assert rates is not None and rates.demand.input_rate == 500.0


def test_busy_with_nothing_waiting_is_no_capacity_measurement() -> None:
    """A process starting up (or merging) is busy with no backlog: not its speed."""
    rates = Rates.between(
        Sample(0.0, [process(0, 0, 0.0)]), Sample(10.0, [process(5_000, 0, 9.5)]), 0.8
    )
    assert rates is not None and rates.capacity is None


def test_a_flow_with_nothing_waiting_measures_no_capacity_whatever_its_cpu() -> None:
    """1,000 records/s for 0.6 of a core, mostly fixed costs (an embedded store's merges):
    records per CPU second would say 1,667/s, far below what the process sustains."""
    rates = Rates.between(
        Sample(0.0, [process(0, 0, 0.0)]), Sample(10.0, [process(10_000, 0, 6.0)]), 0.8
    )
    assert rates is not None and rates.capacity is None


def test_an_idle_flow_measures_no_capacity_and_a_restart_no_rates() -> None:
    idle = Rates.between(
        Sample(0.0, [process(1_000, 0, 1.0)]), Sample(10.0, [process(1_010, 0, 1.2)]), 0.3
    )
    assert idle is not None and idle.capacity is None
    restarted = Rates.between(
        Sample(0.0, [process(5_000, 0, 9.0)]), Sample(10.0, [process(100, 0, 0.5)]), 0.3
    )
    assert restarted is None
    resized = Rates.between(
        Sample(0.0, [process(5_000, 0, 9.0)]),
        Sample(10.0, [process(100, 0, 0.5, PARTS[:2]), process(100, 0, 0.5, PARTS[2:])]),
        0.3,
    )
    assert resized is None


def run(controller: Controller, flow: Flow, rates: list[float]) -> list[tuple[float, str, int]]:
    """Feed the flow at each rate in turn; act on every decision; the actions taken."""
    actions = []
    for rate in rates:
        decision = controller.observe(flow.sample(rate))
        if decision.action != "hold":
            actions.append((decision.at, decision.action, decision.target))
            flow.restart(decision.target)
            controller.rescaled(decision.target, decision.at)
    return actions


def test_a_ramp_up_and_down_scales_once_each_way_without_flapping() -> None:
    policy = Policy(max_processes=4, up_delay_s=30, down_delay_s=120, cooldown_s=60)
    controller, flow = Controller(policy, current=1), Flow(processes=1)
    ramp = [100.0] * 20 + [1_200.0] * 60 + [100.0] * 80  # 5 s steps
    actions = run(controller, flow, ramp)
    assert [(action, target) for _, action, target in actions] == [("up", 2), ("down", 1)]
    (up_at, _, _), (down_at, _, _) = actions
    assert 100 + 30 <= up_at <= 100 + 60  # after the up delay, not much later
    assert down_at >= 400 + 120  # the load fell at 400 s; down waits longer
    assert flow.lag < 1_000


def test_looks_at_uneven_times_still_scale_down_after_the_longest_delay() -> None:
    """The down delay is the longest: a look exactly that old is rare when looks come
    every 3.3 s; the one in force when the delay began counts."""
    policy = Policy(up_delay_s=10, down_delay_s=30, cooldown_s=0, capacity=1_000.0)
    controller, flow = Controller(policy, current=2), Flow(processes=2, step_s=3.3)
    actions = run(controller, flow, [100.0] * 40)
    assert [(action, target) for _, action, target in actions] == [("down", 1)]


def test_load_inside_the_dead_band_never_rescales() -> None:
    # 2 processes at 1,000/s; 900/s is 45%: above 70% x (1 - 0.4) of one process.
    policy = Policy(max_processes=4, dead_band=0.4, up_delay_s=10, down_delay_s=10, cooldown_s=0)
    controller, flow = Controller(policy, current=2), Flow(processes=2)
    assert run(controller, flow, [900.0, 700.0, 800.0] * 40) == []


def test_a_spike_shorter_than_the_up_delay_does_nothing() -> None:
    policy = Policy(up_delay_s=60, cooldown_s=0)
    controller, flow = Controller(policy, current=1), Flow(processes=1, capacity=10_000.0)
    spike = [1_000.0] * 10 + [9_000.0] * 5 + [1_000.0] * 30
    assert run(controller, flow, spike) == []


def test_at_most_one_action_per_cooldown() -> None:
    policy = Policy(max_processes=8, up_delay_s=0, down_delay_s=0, cooldown_s=100)
    controller, flow = Controller(policy, current=1), Flow(processes=1)
    actions = run(controller, flow, [100.0] * 4 + [1_200.0] * 6 + [2_400.0] * 40)
    assert [target for _, _, target in actions] == [2, 4]
    (first, _, _), (second, _, _) = actions
    assert second - first >= 100


def test_capacity_stands_in_from_the_policy_until_measured() -> None:
    controller = Controller(Policy(capacity=2_000.0), current=1)
    assert controller.capacity() == 2_000.0
    controller.observe(Sample(0.0, [process(0, 5_000, 0.0)]))
    controller.observe(Sample(10.0, [process(9_000, 5_000, 9.0)]))  # busy, behind
    assert controller.capacity() == 1_000.0


def test_without_a_measured_or_given_capacity_it_holds() -> None:
    controller = Controller(Policy(), current=1)
    controller.observe(Sample(0.0, [process(0, 0, 0.0)]))
    decision = controller.observe(Sample(10.0, [process(10, 0, 0.1)]))
    assert (decision.action, decision.reason) == ("hold", decision.reason)
    assert "capacity unknown" in decision.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_processes": 0},
        {"min_processes": 3, "max_processes": 2},
        {"target_utilisation": 0.0},
        {"target_utilisation": 1.5},
        {"dead_band": 1.0},
        {"catch_up_s": 0.0},
        {"cooldown_s": -1.0},
        {"capacity": 0.0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(PolicyError):
        Policy(**kwargs)  # type: ignore[arg-type]
