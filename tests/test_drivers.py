"""Core driver helpers: declarations, the line framer, GATT number formats."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemon.drivers import BleMatch, Driver, FrameError, LineFramer, SerialSettings
from telemon.gatt import date_time, float32, sfloat
from telemon.models import AbsentReason


def parse(frame, ctx):
    return []


@pytest.mark.parametrize("kwargs, problem", [
    (dict(transport="ble"), "a ble driver needs a BleMatch"),
    (dict(transport="serial", serial=SerialSettings(9600)),
     "a serial driver needs SerialSettings and a StreamProtocol"),
    (dict(transport="usb"), "a usb driver needs at least one UsbMatch"),
    (dict(transport="sim", parse="not callable"), "parse must be a function"),
])
def test_driver_declaration_problems(kwargs, problem):
    driver = Driver(**{"name": "x_driver", "version": "1", "parse": parse,
                       "description": "d", **kwargs})
    assert any(problem in p for p in driver.problems())


def test_a_complete_ble_declaration_has_no_problems():
    driver = Driver(name="x_driver", version="1", transport="ble", parse=parse, description="d",
                    ble=BleMatch(service_uuids=("1810",), characteristics=("2a35",)))
    assert driver.problems() == []


def test_line_framer_joins_chunks_and_drops_noise():
    framer = LineFramer(max_length=8)
    assert framer.feed(b"A=1\r") == []
    assert framer.feed(b"\nB=2\r\nC") == [b"A=1\r\n", b"B=2\r\n"]
    [error] = framer.feed(b"CCCCCCCCCCCC")
    assert isinstance(error, FrameError) and "without a line end" in str(error)
    out = framer.feed(b"0123456789\r\nD=4\r\n")
    assert isinstance(out[0], FrameError) and "exceeds 8" in str(out[0])
    assert out[1:] == [b"D=4\r\n"]


@given(st.lists(st.binary(max_size=50), max_size=20))
def test_line_framer_never_raises_and_loses_no_complete_line(chunks):
    framer = LineFramer(max_length=1000)
    frames = [f for chunk in chunks for f in framer.feed(chunk)]
    stream = b"".join(chunks)
    assert b"".join(f for f in frames if isinstance(f, bytes)) + framer.buffer == stream


@pytest.mark.parametrize("raw, expected", [
    ("7800", (Decimal(120), None)),          # 120 x 10^0
    ("b5f4", (Decimal("120.5"), None)),      # 1205 x 10^-1
    ("ff0f", (Decimal(-1), None)),           # mantissa 0xFFF = -1
    ("ff07", (None, AbsentReason.NOT_A_NUMBER)),
    ("0008", (None, AbsentReason.ERROR)),
    ("fe07", (None, AbsentReason.POSITIVE_INFINITY)),
    ("0208", (None, AbsentReason.NEGATIVE_INFINITY)),
    ("0108", (None, AbsentReason.UNSUPPORTED)),
])
def test_sfloat(raw, expected):
    assert sfloat(bytes.fromhex(raw)) == expected


@pytest.mark.parametrize("raw, expected", [
    ("6c0100fe", (Decimal("3.64"), None)),   # 364 x 10^-2 (little-endian 0xFE00016C)
    ("ffff7f00", (None, AbsentReason.NOT_A_NUMBER)),
    ("00008000", (None, AbsentReason.ERROR)),
    ("feff7f00", (None, AbsentReason.POSITIVE_INFINITY)),
    ("02008000", (None, AbsentReason.NEGATIVE_INFINITY)),
    ("ffffff00", (Decimal(-1), None)),
])
def test_float32(raw, expected):
    assert float32(bytes.fromhex(raw)) == expected


def test_date_time_unknown_year_and_invalid_date():
    assert date_time(bytes.fromhex("0000 01 01 00 00 00"), UTC) is None
    with pytest.raises(FrameError, match="invalid date-time 2026-02-30"):
        date_time(bytes.fromhex("ea07 02 1e 00 00 00"), UTC)
