"""How many processes a flow needs, from its own metrics: the decision model of
`waxhouse autoscale`, pure and clock-injected.

The model is DS2's (Kalavri et al., OSDI 2018), as Flink's autoscaler uses it: the rate a
flow must sustain is the rate records arrive plus its backlog spread over a catch-up time,
and a process sustains its measured capacity at a target utilisation:

    needed = ceil((input rate + backlog / catch-up) / (capacity x target utilisation))

bounded by `Policy.min_processes`, `Policy.max_processes` and the source's partition count
(each partition is read by one worker: processes beyond it would idle).

- **Input rate** is the growth of the partitions' end offsets (what arrived), or without
  them what the flow consumed plus what its lag grew by; **backlog** is the lag. Both over
  `Policy.window_s` (10 s) of samples of every process's metrics: consumption comes in
  batches and lag in steps.
- **Capacity** is records consumed per CPU second of the flow's processes, times the cores
  a process can use (`Policy.cores_per_process`: one worker, about one core), measured
  from one look to the next only while the flow was behind (a tenth of a second's worth
  of records, and at least 100, waiting at both looks) and busy (`Policy.busy_share` of
  its cores, 30%): then it consumed as fast as the CPU it got allowed, fixed costs
  amortised. With nothing waiting the CPU goes to other work (a start, an embedded
  store's merges: a flow here at 1,000 records/s uses 0.6 of a core), which would make a
  process look many times slower than it is. The median of the last five measurements
  is used, so one odd look does not move it; until the first, `Policy.capacity` (if
  given) stands in.
- **Dead band.** Scaling down needs the smaller count to hold the demand at
  `target x (1 - dead_band)`; scaling up needs the demand over `target` at the current
  count. In between, the count stays.
- **Stabilisation.** A recommendation acts only once it has stood for `up_delay_s`
  (scaling up, the least count recommended over that time) or `down_delay_s` (scaling
  down, the largest), and at most once per `cooldown_s`. A rescale restarts the processes:
  their counters start again, so samples are compared only within one run of them.

>>> policy = Policy(min_processes=1, max_processes=4, target_utilisation=0.5, catch_up_s=100)
>>> needed(Demand(input_rate=900.0, backlog=10_000.0), capacity=1_000.0, partitions=4,
...        policy=policy)  # (900 + 10,000 / 100) / (1,000 x 0.5)
2
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
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
MIN_WAITING = 100  # records: less waiting is the lag between two fetches, not a backlog


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
    busy_share: float = 0.3
    capacity: float | None = None  # records per second per process, until measured
    window_s: float = 10.0  # rates are taken over at least this long

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
    records consumed so far, the lag and the end offset (what has arrived), and the
    process's CPU seconds so far."""

    consumed: Mapping[str, float]
    lag: Mapping[str, float]
    cpu_seconds: float
    end: Mapping[str, float] = field(default_factory=dict)


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

    def end(self) -> dict[str, float]:
        return _summed(p.end for p in self.processes)


def _summed(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for values in maps:
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
        end_before, end_after = earlier.end(), later.end()
        if lag_after and all(p in end_before and p in end_after for p in lag_after):
            arrived = sum(end_after[p] - end_before[p] for p in lag_after)
        else:  # no end offsets: what was consumed, plus what the lag grew by
            arrived = (
                consumed + sum(lag_after.values()) - sum(lag_before.get(p, 0.0) for p in lag_after)
            )
        input_rate = max(0.0, arrived / seconds)
        share = cpu / seconds
        # Busy, with a tenth of a second's worth waiting at both ends: then it consumed as
        # fast as its CPU allowed. Busy with little waiting is other work (a start, an
        # embedded store's merges).
        waiting = min(sum(lag_before.values()), sum(lag_after.values()))
        behind = waiting >= max(consumed / seconds / 10, MIN_WAITING)
        busy = share >= busy_cores * len(later.processes) and consumed > 0 and behind
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
    _samples: deque[Sample] = field(default_factory=deque)  # of the processes running now
    _measured: deque[float] = field(default_factory=lambda: deque(maxlen=5))  # per CPU second
    _history: deque[tuple[float, int]] = field(default_factory=deque)
    _last_action: float | None = None

    def rescaled(self, count: int, at: float) -> None:
        self.current = count
        self._samples.clear()
        self._history.clear()
        self._last_action = at

    def observe(self, sample: Sample) -> Decision:
        policy = self.policy
        busy = policy.busy_share * policy.cores_per_process
        samples = self._samples
        if samples:
            # Capacity from look to look: a burst keeps a process behind for seconds,
            # rarely for a whole window.
            recent = Rates.between(samples[-1], sample, busy)
            if recent is not None and recent.capacity is not None:
                self._measured.append(recent.capacity)
        samples.append(sample)
        while len(samples) > 1 and samples[1].at <= sample.at - policy.window_s:
            samples.popleft()
        earliest = samples[0]
        if earliest.at > sample.at - policy.window_s:
            age = sample.at - earliest.at
            return self._hold(sample.at, f"measuring ({age:.0f} of {policy.window_s:.0f} s)")
        # The demand over the window: consumption comes in batches, lag in steps.
        rates = Rates.between(earliest, sample, busy)
        if rates is None:
            return self._hold(sample.at, "samples not comparable (a process restarted)")
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
        """Records per second one process sustains: the median of the last five
        measurements taken while the flow was behind (one odd look does not move it),
        else the policy's."""
        if not self._measured:
            return self.policy.capacity
        return statistics.median(self._measured) * self.policy.cores_per_process

    def _decide(self, at: float, recommended: int, rates: Rates, capacity: float) -> Decision:
        policy = self.policy
        if recommended == self.current:
            return self._hold(at, "within the dead band", rates, capacity, recommended)
        if self._last_action is not None and at - self._last_action < policy.cooldown_s:
            left = policy.cooldown_s - (at - self._last_action)
            return self._hold(at, f"cooling down ({left:.0f} s left)", rates, capacity, recommended)
        delay = policy.up_delay_s if recommended > self.current else policy.down_delay_s
        horizon = at - max(policy.up_delay_s, policy.down_delay_s)
        history = self._history
        while len(history) > 1 and history[1][0] <= horizon:  # keeps one as old as it
            history.popleft()
        if history[0][0] > at - delay:
            return self._hold(at, f"not yet stable for {delay:.0f} s", rates, capacity, recommended)
        # The recommendations since the delay began: the one in force then, and the later.
        start = max(i for i, (when, _) in enumerate(history) if when <= at - delay)
        window = [count for _, count in list(history)[start:]]
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
