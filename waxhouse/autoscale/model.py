"""How many processes a flow needs, from its own metrics: the decision model of
`waxhouse autoscale`, pure and clock-injected.

The model is DS2's (Kalavri et al., OSDI 2018), as Flink's autoscaler uses it: the rate a
flow must sustain is the rate records arrive plus its backlog spread over a catch-up time,
and a process sustains its measured capacity at a target utilisation:

    needed = ceil((input rate + backlog / catch-up) / (capacity x target utilisation))

bounded by `Policy.min_processes`, `Policy.max_processes` and the source's partition count
(each partition is read by one worker: processes beyond it would idle).

- **Input rate** per source partition is what the flow consumed plus what its lag grew by,
  per second, between two samples of every process's metrics; **backlog** is the lag.
- **Capacity** is records consumed per CPU second of the flow's processes, times the cores
  a process can use (`Policy.cores_per_process`: one worker, about one core). Measured
  only over intervals in which the processes ran near flat out (`Policy.busy_share` of
  their cores, 80%): there, records per CPU second is what a process sustains, its fixed
  costs included. Below, those fixed costs (polling, timers, an embedded store's
  background merges) dominate and would make it look several times slower than it is.
  Until such an interval has been seen, `Policy.capacity` (if given) stands in for it.
- **Dead band.** Scaling down needs the smaller count to hold the demand at
  `target x (1 - dead_band)`; scaling up needs the demand over `target` at the current
  count. In between, the count stays.
- **Stabilisation.** A recommendation acts only once it has stood for `up_delay_s`
  (scaling up, the least count recommended over that time) or `down_delay_s` (scaling
  down, the largest), and at most once per `cooldown_s`. A rescale restarts the processes:
  their counters start again, so samples are compared only within one run of them.

>>> policy = Policy(min_processes=1, max_processes=4, target_utilisation=0.5, catch_up_s=100)
>>> needed(Demand(input_rate=900.0, backlog=10_000.0), capacity=1_000.0, partitions=4,
...        policy=policy)
4
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from waxhouse.errors import WaxhouseError

__all__ = [
    "Controller",
    "Decision",
    "Demand",
    "Policy",
    "ProcessSample",
    "Rates",
    "Sample",
    "needed",
]

Action = Literal["up", "down", "hold"]


class PolicyError(WaxhouseError, ValueError):
    """An autoscaling policy that cannot work."""


@dataclass(frozen=True)
class Policy:
    """What the controller aims at and how cautiously it moves (see the module docs)."""

    min_processes: int = 1
    max_processes: int = 4
    target_utilisation: float = 0.7
    catch_up_s: float = 300.0
    dead_band: float = 0.2
    up_delay_s: float = 30.0
    down_delay_s: float = 300.0
    cooldown_s: float = 120.0
    cores_per_process: float = 1.0
    busy_share: float = 0.8
    capacity: float | None = None  # records per second per process, until measured

    def __post_init__(self) -> None:
        if not 1 <= self.min_processes <= self.max_processes:
            raise PolicyError(
                f"processes: need 1 <= min ({self.min_processes}) <= max ({self.max_processes})"
            )
        if not 0 < self.target_utilisation <= 1:
            raise PolicyError(f"target utilisation {self.target_utilisation}: not in (0, 1]")
        if not 0 <= self.dead_band < 1:
            raise PolicyError(f"dead band {self.dead_band}: not in [0, 1)")
        if self.catch_up_s <= 0 or self.cores_per_process <= 0:
            raise PolicyError("catch-up time and cores per process must be positive")
        if min(self.up_delay_s, self.down_delay_s, self.cooldown_s) < 0:
            raise PolicyError("delays and cooldown cannot be negative")
        if self.capacity is not None and self.capacity <= 0:
            raise PolicyError(f"capacity {self.capacity}: must be positive")


@dataclass(frozen=True)
class ProcessSample:
    """One process's metrics at one moment: per source partition (`topic/partition`) the
    records consumed so far and the lag, and the process's CPU seconds so far."""

    consumed: Mapping[str, float]
    lag: Mapping[str, float]
    cpu_seconds: float


@dataclass(frozen=True)
class Sample:
    """Every process of the flow, scraped at `at` (monotonic seconds)."""

    at: float
    processes: Sequence[ProcessSample]

    def consumed(self) -> dict[str, float]:
        return _summed(p.consumed for p in self.processes)

    def lag(self) -> dict[str, float]:
        return _summed(p.lag for p in self.processes)

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.processes)


def _summed(maps: object) -> dict[str, float]:
    total: dict[str, float] = {}
    for values in maps:  # type: ignore[attr-defined]
        for key, value in values.items():
            total[key] = total.get(key, 0.0) + value
    return total


@dataclass(frozen=True)
class Demand:
    """The records per second arriving (`input_rate`) and the records waiting (`backlog`)."""

    input_rate: float
    backlog: float


@dataclass(frozen=True)
class Rates:
    """What two samples of the same processes say."""

    demand: Demand
    consumed_rate: float
    cpu_share: float  # CPU seconds per second, over all processes
    capacity: float | None  # records per CPU second, None when too idle to tell
    partitions: int

    @classmethod
    def between(cls, earlier: Sample, later: Sample, busy_cores: float) -> Rates | None:
        """None when they cannot be compared: no time between them, another process
        count, or a counter that went back (a process restarted)."""
        seconds = later.at - earlier.at
        if seconds <= 0 or len(earlier.processes) != len(later.processes):
            return None
        before, after = earlier.consumed(), later.consumed()
        if any(after.get(part, 0.0) < count for part, count in before.items()):
            return None
        cpu = later.cpu_seconds() - earlier.cpu_seconds()
        if cpu < 0:
            return None
        lag_before, lag_after = earlier.lag(), later.lag()
        consumed = sum(after.values()) - sum(before.values())
        grown = sum(lag_after.values()) - sum(lag_before.get(p, 0.0) for p in lag_after)
        input_rate = max(0.0, (consumed + grown) / seconds)
        share = cpu / seconds
        busy = share >= busy_cores * len(later.processes) and consumed > 0
        return cls(
            demand=Demand(input_rate, sum(lag_after.values())),
            consumed_rate=consumed / seconds,
            cpu_share=share,
            capacity=consumed / cpu if busy and cpu > 0 else None,
            partitions=len(set(after) | set(lag_after)),
        )


def needed(
    demand: Demand, capacity: float, partitions: int, policy: Policy, utilisation: float = 0.0
) -> int:
    """Processes that sustain `demand` at `utilisation` (default: the policy's target) of
    `capacity` (records per second per process), within the policy's bounds and the
    partition count."""
    target = utilisation or policy.target_utilisation
    rate = demand.input_rate + demand.backlog / policy.catch_up_s
    count = math.ceil(rate / (capacity * target)) if rate > 0 else 1
    ceiling = min(policy.max_processes, max(partitions, 1))
    return max(policy.min_processes, min(count, ceiling))


@dataclass(frozen=True)
class Decision:
    """One look: the count recommended now, whether to act on it, and why."""

    at: float
    current: int
    recommended: int
    action: Action
    target: int  # the count to go to (= current when holding)
    reason: str
    rates: Rates | None = None
    capacity: float | None = None  # records per second per process, as used


@dataclass
class Controller:
    """Feeds on samples of one flow; decides when to rescale it (`observe`).

    `current`: the process count running. Call `rescaled(count, at)` once the flow runs
    at its new size: samples from before are not compared with those after.
    """

    policy: Policy
    current: int
    _previous: Sample | None = None
    _capacity: float | None = None  # records per CPU second, the latest busy measurement
    _history: deque[tuple[float, int]] = field(default_factory=deque)
    _last_action: float | None = None

    def __post_init__(self) -> None:
        self._capacity_hint = self.policy.capacity

    def rescaled(self, count: int, at: float) -> None:
        self.current = count
        self._previous = None
        self._history.clear()
        self._last_action = at

    def observe(self, sample: Sample) -> Decision:
        previous, self._previous = self._previous, sample
        if previous is None:
            return self._hold(sample.at, "first sample of this run: no rates yet")
        policy = self.policy
        rates = Rates.between(previous, sample, policy.busy_share * policy.cores_per_process)
        if rates is None:
            return self._hold(sample.at, "samples not comparable (a process restarted)")
        if rates.capacity is not None:
            self._capacity = rates.capacity
        per_process = self.capacity()
        if per_process is None:
            return self._hold(sample.at, "capacity unknown: the flow has not been busy yet", rates)
        up = needed(rates.demand, per_process, rates.partitions, policy)
        low = policy.target_utilisation * (1 - policy.dead_band)
        down = needed(rates.demand, per_process, rates.partitions, policy, utilisation=low)
        if up > self.current:
            recommended = up
        elif down < self.current:
            recommended = down
        else:
            recommended = self.current
        self._history.append((sample.at, recommended))
        return self._decide(sample.at, recommended, rates, per_process)

    def capacity(self) -> float | None:
        """Records per second one process sustains, as last measured (or the policy's)."""
        if self._capacity is None:
            return self._capacity_hint
        return self._capacity * self.policy.cores_per_process

    def _decide(self, at: float, recommended: int, rates: Rates, capacity: float) -> Decision:
        policy = self.policy
        if recommended == self.current:
            return self._hold(at, "within the dead band", rates, capacity, recommended)
        if self._last_action is not None and at - self._last_action < policy.cooldown_s:
            left = policy.cooldown_s - (at - self._last_action)
            return self._hold(at, f"cooling down ({left:.0f} s left)", rates, capacity, recommended)
        delay = policy.up_delay_s if recommended > self.current else policy.down_delay_s
        horizon = at - max(policy.up_delay_s, policy.down_delay_s)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        if self._history[0][0] > at - delay:
            return self._hold(at, f"not yet stable for {delay:.0f} s", rates, capacity, recommended)
        window = [count for when, count in self._history if when >= at - delay]
        # The count every recommendation over the delay agrees with.
        target = min(window) if recommended > self.current else max(window)
        if target == self.current:
            return self._hold(at, f"not stable for {delay:.0f} s", rates, capacity, recommended)
        action: Action = "up" if target > self.current else "down"
        why = _why(rates, capacity)
        return Decision(at, self.current, recommended, action, target, why, rates, capacity)

    def _hold(
        self,
        at: float,
        reason: str,
        rates: Rates | None = None,
        capacity: float | None = None,
        recommended: int | None = None,
    ) -> Decision:
        count = self.current if recommended is None else recommended
        return Decision(at, self.current, count, "hold", self.current, reason, rates, capacity)


def _why(rates: Rates, capacity: float) -> str:
    demand = rates.demand
    return (
        f"input {demand.input_rate:,.0f}/s, backlog {demand.backlog:,.0f}, "
        f"capacity {capacity:,.0f}/s per process"
    )
