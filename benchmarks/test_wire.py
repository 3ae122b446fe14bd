"""Decoding a batch of 1,000 observations: telemon.wire (msgspec, validated into typed
records) against the standard library's json.loads (parsing only, no validation)."""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from telemon import wire
from telemon.codes import KNOWN
from telemon.models import Observation, new_id


@pytest.fixture(scope="module")
def batch():
    t = datetime(2026, 3, 1, 7, 45, tzinfo=UTC)
    return wire.encode_batch([
        Observation(id=new_id(), patient="p-0001", device="dev-1", gateway="gw-0001",
                    code=KNOWN["spo2"].code, unit="%", value=Decimal(90 + i % 9), effective=t,
                    raw=bytes(12), driver="nonin", driver_version="1")
        for i in range(1000)])


@pytest.mark.benchmark(group="decode 1,000 observations")
def test_telemon_wire(benchmark, batch):
    decoded = benchmark(wire.decode_message, batch)
    assert len(decoded.records) == 1000 and not decoded.errors


@pytest.mark.benchmark(group="decode 1,000 observations")
def test_json_loads_unvalidated(benchmark, batch):
    assert len(benchmark(json.loads, batch)["items"]) == 1000
