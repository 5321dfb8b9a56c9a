"""Ceiling: the kafka-python consume loop plus `orjson.loads` of every value, no aggregation."""

from __future__ import annotations

import orjson

from bench.peers._bare import kafka_python_values
from bench.peers._job import Report, arguments


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report = Report()
    loads, error = orjson.loads, orjson.JSONDecodeError
    parsed = 0
    for values in kafka_python_values(args.bootstrap, args.topic):
        report.records += len(values)
        for value in values:
            try:
                loads(value)
                parsed += 1
            except (error, TypeError):
                pass
    report.stop()
    report.notes["parsed"] = parsed
    report.write(args.out)


if __name__ == "__main__":
    main()
