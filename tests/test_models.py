"""Core objects: ids, limits and triage order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from telemon.models import LimitSet, Triage, new_id, reading_id


def test_new_ids_are_uuid7_unique_and_time_ordered():
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    prefixes = [i[:13] for i in ids]  # the 48-bit millisecond timestamp
    assert prefixes == sorted(prefixes)


def test_reading_id_is_stable_for_the_same_reading_and_differs_otherwise():
    t = datetime(2026, 1, 1, 8, tzinfo=UTC)
    a = reading_id(device="d", patient="p", code="150020", effective=t, raw=b"\x01")
    assert a == reading_id(device="d", patient="p", code="150020", effective=t, raw=b"\x01")
    assert a != reading_id(device="d", patient="p", code="150020", effective=t, raw=b"\x02")
    assert a != reading_id(device="d2", patient="p", code="150020", effective=t, raw=b"\x01")


def test_triage_orders_worst_last():
    assert max(Triage.GREEN, Triage.RED, Triage.MISSING, Triage.YELLOW) is Triage.RED
    assert sorted(Triage) == [Triage.GREEN, Triage.MISSING, Triage.YELLOW, Triage.RED]


LIMITS = LimitSet(red_low=Decimal(88), yellow_low=Decimal(90), yellow_high=Decimal(100),
                  red_high=Decimal(110))


@pytest.mark.parametrize("value, expected", [
    (Decimal("87.9"), Triage.RED), (Decimal(88), Triage.YELLOW), (Decimal("89.9"), Triage.YELLOW),
    (Decimal(90), Triage.GREEN), (Decimal(100), Triage.GREEN), (Decimal("100.1"), Triage.YELLOW),
    (Decimal(110), Triage.YELLOW), (Decimal("110.1"), Triage.RED), (None, Triage.GREEN),
    (float("nan"), Triage.GREEN),
])
def test_limit_boundaries_belong_to_the_inner_band(value, expected):
    assert LIMITS.classify(value) is expected


def test_limits_must_be_ordered():
    with pytest.raises(ValueError, match="yellow_low=92 > yellow_high=90"):
        LimitSet(yellow_low=Decimal(92), yellow_high=Decimal(90))


def test_limits_out_of_order_are_rejected_on_the_wire_too():
    with pytest.raises(msgspec.ValidationError, match="limits out of order"):
        msgspec.json.decode(b'{"red_low": 95, "yellow_low": 90}', type=LimitSet)


def test_records_are_immutable():
    with pytest.raises(AttributeError):
        LIMITS.red_low = Decimal(1)
