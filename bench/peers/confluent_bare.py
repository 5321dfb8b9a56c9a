"""Ceiling: the confluent-kafka consume loop only, nothing else."""

from __future__ import annotations

from bench.peers._bare import confluent_values
from bench.peers._job import Report, arguments


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    report = Report()
    for values in confluent_values(args.bootstrap, args.topic):
        report.records += len(values)
    report.stop()
    report.write(args.out)


if __name__ == "__main__":
    main()
