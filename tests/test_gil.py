"""node/gil.py: ``yielding`` passes every item through, in order, releasing the GIL as it goes."""

from __future__ import annotations

from unittest import mock

from raftstate.node import gil


def test_yielding_keeps_items_and_order_and_sleeps_every_n() -> None:
    with mock.patch.object(gil.time, "sleep") as sleep:
        assert list(gil.yielding(range(10), every=4)) == list(range(10))
    assert [c.args for c in sleep.call_args_list] == [(0,)] * 3  # items 0, 4, 8
