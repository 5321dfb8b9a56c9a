"""The test broker's pure helpers (the broker itself is exercised in tests/integration)."""

from __future__ import annotations

import base64

from tests.support.kafka_broker import new_cluster_id


def test_cluster_ids_are_16_byte_ids_that_never_look_like_an_option() -> None:
    ids = [new_cluster_id() for _ in range(5_000)]  # ~1 in 64 raw draws starts with "-"
    assert all(not i.startswith("-") and len(i) == 22 for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
