"""The v1 wire form: round trips, and a specific error with its path for every bad part."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemon import wire
from telemon.codes import KNOWN
from telemon.models import (
    AbsentReason,
    Alarm,
    AlarmEvent,
    Answer,
    Component,
    ConsentEvent,
    Enrolment,
    LimitSet,
    LimitVersion,
    Observation,
    QuestionnaireResponse,
    new_id,
)

T0 = datetime(2026, 3, 1, 7, 45, 12, tzinfo=timezone(timedelta(hours=1)))


def observation(**overrides):
    fields = dict(id=new_id(), patient="p-0001", device="dev-7", gateway="gw-0001",
                  code=KNOWN["spo2"].code, unit="%", value=Decimal("97.0"), effective=T0,
                  raw=b"\x00\xff\x10", flags=("artifact",), context={"method": "self"},
                  driver="nonin", driver_version="1.0")
    return Observation(**{**fields, **overrides})


RECORDS = [
    observation(),
    observation(value=None, absent=AbsentReason.NOT_A_NUMBER),
    observation(code=KNOWN["bp"].code, unit="mm[Hg]", value=None, components=(
        Component(code=KNOWN["bp_sys"].code, unit="mm[Hg]", value=Decimal("120.0")),
        Component(code=KNOWN["bp_dia"].code, unit="mm[Hg]", value=Decimal(80)),
        Component(code=KNOWN["bp_mean"].code, unit="mm[Hg]", absent=AbsentReason.ERROR),
    )),
    QuestionnaireResponse(id=new_id(), patient="p-0001", gateway="gw-0001",
                          questionnaire="cat", version="1", authored=T0,
                          answers=(Answer(item="q1", value=3), Answer(item="q2", value="yes")),
                          scores={"total": Decimal(14)}),
    Alarm(id=new_id(), patient="p-0001", module="copd", rule="limits", severity="red",
          raised=T0, message="SpO2 86 % below red limit 88 %", observations=("o1",),
          limits=LimitSet(red_low=Decimal(88)),
          events=(AlarmEvent(at=T0, action="raised", by="central"),)),
    Enrolment(patient="p-0001", organisation="org-0851", modules=("copd",),
              gateways=("gw-0001",), enrolled=T0),
    LimitVersion(patient="p-0001", code=KNOWN["spo2"].code,
                 limits=LimitSet(red_low=Decimal(85), yellow_low=Decimal(88)),
                 valid_from=T0, author="nurse-12", reason="habitually low", version=2),
    ConsentEvent(id=new_id(), patient="p-0001", purpose="research", granted=False, at=T0,
                 recorded_by="nurse-12"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips(record):
    payload = wire.encode(record)
    assert json.loads(payload)["v"] == 1
    assert wire.decode(payload) == record


def test_device_precision_survives_the_wire():
    payload = wire.encode(observation(value=Decimal("2.0")))
    assert b'"value":2.0' in payload
    assert str(wire.decode(payload).value) == "2.0"


def test_times_keep_their_instant():
    decoded = wire.decode(wire.encode(observation()))
    assert decoded.effective == T0
    assert decoded.effective.astimezone(UTC).hour == 6


def test_a_batch_keeps_the_good_items_and_reports_each_bad_one():
    good = [observation(), observation()]
    batch = json.loads(wire.encode_batch([good[0], observation(), good[1]]))
    batch["items"][1]["value"] = "ninety-seven"
    decoded = wire.decode_message(json.dumps(batch).encode())
    assert decoded.records == good
    [error] = decoded.errors
    assert error.path == "$.items[1].value"
    assert "decimal" in error.reason.lower()


def test_a_good_batch_of_every_record_type_decodes_whole():
    """Read in one pass, it gives what reading each item on its own gives."""
    decoded = wire.decode_message(wire.encode_batch(RECORDS))
    assert decoded.records == [wire.decode(wire.encode(r)) for r in RECORDS] == RECORDS
    assert decoded.errors == []


@pytest.mark.parametrize("change, path, reason", [
    ({"v": 2}, "$.v", "unsupported wire version 2"),
    ({"extra": 1}, "$", "unknown field `extra`"),
])
def test_a_batch_not_of_this_wire_version_or_form_is_refused_whole(change, path, reason):
    batch = {**json.loads(wire.encode_batch([observation()])), **change}
    decoded = wire.decode_message(json.dumps(batch).encode())
    assert decoded.records == []
    [error] = decoded.errors
    assert (error.path, reason in error.reason) == (path, True), error


@pytest.mark.parametrize("mutate, path, reason", [
    (lambda d: d.pop("v"), "$.v", "missing wire version"),
    (lambda d: d.update(v=2), "$.v", "unsupported wire version 2 (this telemon speaks 1)"),
    (lambda d: d.update(type="reading"), "$.type", "unknown record type 'reading'"),
    (lambda d: d.pop("patient"), "$", "missing required field `patient`"),
    (lambda d: d.update(effective="2026-03-01T07:45:12"), "$.effective", "timezone"),
    (lambda d: d.update(patient="0101901234 Jens"), "$.patient", "matching regex"),
    (lambda d: d.update(colour="red"), "$", "unknown field `colour`"),
    (lambda d: d["code"].pop("system"), "$.code", "missing required field `system`"),
    (lambda d: d.update(raw="not base64!"), "$.raw", "base64"),
    (lambda d: d.update(absent="not-a-number"), "$",
     "either a value or an absent reason, not both"),
    (lambda d: d.update(value=None), "$", "needs a value, an absent reason or components"),
])
def test_a_bad_record_gets_a_specific_error_at_its_path(mutate, path, reason):
    data = json.loads(wire.encode(observation()))
    mutate(data)
    decoded = wire.decode_message(json.dumps(data).encode())
    assert decoded.records == []
    [error] = decoded.errors
    assert error.path == path
    assert reason in error.reason


@pytest.mark.parametrize("payload, reason", [
    (b"", "truncated"),
    (b"\xff\xfe", "invalid"),
    (b"[1, 2]", "Expected `object`, got `array`"),
    (b'{"type": "batch", "v": 1, "items": {}}', "Expected `array`, got `object`"),
])
def test_garbage_is_rejected_with_a_reason(payload, reason):
    decoded = wire.decode_message(payload)
    assert decoded.records == []
    assert reason.lower() in decoded.errors[0].reason.lower()


def test_decode_refuses_a_batch_where_one_record_is_wanted():
    with pytest.raises(wire.WireError, match="expected one record, got a batch of 2"):
        wire.decode(wire.encode_batch([observation(), observation()]))


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_give_errors_never_raise(payload):
    decoded = wire.decode_message(payload)
    assert decoded.records or decoded.errors
    assert all(isinstance(e, wire.WireError) and e.reason for e in decoded.errors)
