"""What the autoscaler reads of a flow: each process's Prometheus text (Bytewax's API
server, `BYTEWAX_DATAFLOW_API_ENABLED=true`), cut down to what the model needs."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from prometheus_client.parser import text_string_to_metric_families

from waxhouse.autoscale.model import ProcessSample, Sample
from waxhouse.errors import WaxhouseError

CONSUMED = "waxhouse_records_consumed"  # the parser drops the counter's `_total`
LAG = "waxhouse_consumer_lag_records"
END = "waxhouse_source_end_offset"
CPU = "process_cpu_seconds"


class ScrapeError(WaxhouseError):
    """A process's metrics could not be read, or lack what the autoscaler needs."""


def process_sample(text: str) -> ProcessSample:
    """Per source partition (`topic/partition`) the records consumed, the lag and the end
    offset, and the CPU seconds, from one process's `/metrics` text."""
    consumed: dict[str, float] = {}
    lag: dict[str, float] = {}
    end: dict[str, float] = {}
    by_name = {CONSUMED: consumed, LAG: lag, END: end}
    cpu: float | None = None
    for family in text_string_to_metric_families(text):
        if family.name not in (CONSUMED, LAG, END, CPU):
            continue
        for sample in family.samples:
            if family.name == CPU:
                cpu = sample.value
            elif sample.name.endswith("_created"):
                continue
            else:
                part = f"{sample.labels.get('topic', '')}/{sample.labels.get('partition', '')}"
                by_name[family.name][part] = sample.value
    if cpu is None:
        raise ScrapeError(f"no {CPU}_total: not a flow's metrics on Linux")
    return ProcessSample(consumed, lag, cpu, end)


def fetch(url: str, timeout_s: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError) as e:
        raise ScrapeError(f"cannot read {url}: {e}") from e


def sample_flow(
    urls: Sequence[str],
    read: Callable[[str], str] = fetch,
    clock: Callable[[], float] = time.monotonic,
) -> Sample:
    """Every process's metrics, now."""
    processes = [process_sample(read(url)) for url in urls]
    return Sample(clock(), processes)
