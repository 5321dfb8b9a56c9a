"""Ours with the confluent-kafka backed source: `waxhouse` with `KAFKA_CLIENT=confluent`."""

from __future__ import annotations

from bench.peers import waxhouse


def main() -> None:
    waxhouse.main({"KAFKA_CLIENT": "confluent"})


if __name__ == "__main__":
    main()
