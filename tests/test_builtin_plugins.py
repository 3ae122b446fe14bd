"""The built-in plugins: the blood-pressure parser on hand-assembled frames, the CSV exporter,
the COPD module's declaration."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemon.codes import KNOWN
from telemon.drivers import FrameError, ParseContext
from telemon.models import AbsentReason, LimitSet, Triage
from telemon.plugins.drivers.ble_blood_pressure import parse
from telemon.plugins.exporters.csv import EXPORTER
from telemon.plugins.modules.copd import MODULE

COPENHAGEN = ZoneInfo("Europe/Copenhagen")
CTX = ParseContext(patient="p-0001", device="bpm-1", gateway="gw-0001",
                   received=datetime(2026, 3, 1, 9, 0, tzinfo=COPENHAGEN))

# Blood Pressure Measurement frames assembled by hand from the field layout of the Blood
# Pressure Service 1.1, section 3.1 (all little-endian SFLOAT: 0x0078 = 120 x 10^0).
FULL = bytes.fromhex(
    "1e"            # flags: time stamp, pulse rate, user id, measurement status; mmHg
    "7800 5000 5d00"  # systolic 120, diastolic 80, mean 93
    "ea07 03 01 07 2d 0c"  # 2026-03-01 07:45:12 (device local time)
    "4800"          # pulse 72
    "01"            # user 1
    "0600"          # status: cuff too loose, irregular pulse
)
MINIMAL = bytes.fromhex("00 7800 5000 5d00")


def components(obs):
    return {c.code.code: (c.value, c.absent) for c in obs.components}


def test_a_full_frame_decodes_every_field():
    bp, pulse = parse(FULL, CTX)
    assert bp.code == KNOWN["bp"].code and bp.unit == "mm[Hg]"
    assert components(bp) == {"150021": (Decimal(120), None), "150022": (Decimal(80), None),
                              "150023": (Decimal(93), None)}
    assert bp.effective == datetime(2026, 3, 1, 7, 45, 12, tzinfo=COPENHAGEN)
    assert bp.flags == ("cuff-loose", "irregular-pulse")
    assert bp.context == {"time_source": "device", "method": "self-measured", "user": "1"}
    assert bp.raw == FULL
    assert (pulse.code, pulse.value, pulse.unit) == (KNOWN["pulse_bp"].code, Decimal(72), "/min")
    assert pulse.id != bp.id


def test_a_minimal_frame_takes_the_gateway_time():
    [bp] = parse(MINIMAL, CTX)
    assert bp.effective == CTX.received
    assert bp.context["time_source"] == "gateway"


def test_year_zero_means_unknown_device_time():
    frame = bytes.fromhex("02 7800 5000 5d00 0000 00 00 00 00 00")
    [bp] = parse(frame, CTX)
    assert bp.effective == CTX.received and bp.context["time_source"] == "gateway"


def test_device_precision_and_kpa_are_kept():
    # 0xF4B5: exponent -1, mantissa 1205 -> 120.5; flags bit 0: kPa, 0xF0A0 -> 16.0
    [bp] = parse(bytes.fromhex("00 b5f4 5000 5d00"), CTX)
    assert str(components(bp)["150021"][0]) == "120.5"
    [kpa] = parse(bytes.fromhex("01 a0f0 a0f0 a0f0"), CTX)
    assert kpa.unit == "kPa" and str(components(kpa)["150021"][0]) == "16.0"


@pytest.mark.parametrize("word, reason", [
    ("ff07", AbsentReason.NOT_A_NUMBER), ("0008", AbsentReason.ERROR),
    ("fe07", AbsentReason.POSITIVE_INFINITY), ("0208", AbsentReason.NEGATIVE_INFINITY),
    ("0108", AbsentReason.UNSUPPORTED),
])
def test_special_values_are_absent_not_numbers(word, reason):
    [bp] = parse(bytes.fromhex(f"00 7800 5000 {word}"), CTX)
    assert components(bp)["150023"] == (None, reason)


def test_pulse_range_status_bits():
    frame = bytes.fromhex("10 7800 5000 5d00 0800")
    assert parse(frame, CTX)[0].flags == ("pulse-above-range",)


def test_the_same_frame_gives_the_same_ids():
    assert [o.id for o in parse(FULL, CTX)] == [o.id for o in parse(FULL, CTX)]


@pytest.mark.parametrize("frame, reason", [
    (b"", "frame ends before flags"),
    (bytes.fromhex("00 7800 50"), "frame ends before diastolic"),
    (bytes.fromhex("1e 7800 5000 5d00 ea07 03 01"), "frame ends before time stamp"),
    (MINIMAL + b"\x00", "1 unexpected byte(s) after the fields that flags 0x00 announce"),
    (bytes.fromhex("02 7800 5000 5d00 ea07 0d 01 07 2d 0c"), "invalid date-time 2026-13-01"),
])
def test_bad_frames_are_rejected_with_a_reason(frame, reason):
    with pytest.raises(FrameError) as exc:
        parse(frame, CTX)
    assert reason in str(exc.value)


@given(st.binary(max_size=40))
def test_any_bytes_decode_or_are_rejected_with_a_reason(frame):
    try:
        observations = parse(frame, CTX)
    except FrameError as exc:
        assert str(exc)
    else:
        assert observations and all(o.raw == frame for o in observations)


def test_csv_export_is_idempotent_and_long_format(tmp_path):
    target = EXPORTER.open({"directory": str(tmp_path)})
    batch = parse(FULL, CTX) + parse(MINIMAL, CTX)
    target.deliver(batch)
    bp_file = tmp_path / "p-0001" / "bp.csv"
    first = bp_file.read_text()
    target.deliver(batch)
    assert bp_file.read_text() == first
    rows = list(csv.DictReader(first.splitlines()))
    assert len(rows) == 6  # two readings x three components
    assert {r["code"] for r in rows} == {"150021", "150022", "150023"}
    earliest = rows[0]
    assert earliest["effective"] == "2026-03-01T06:45:12+00:00"  # UTC
    assert earliest["value"] == "120" and earliest["unit"] == "mm[Hg]"
    assert earliest["flags"] == "cuff-loose irregular-pulse"
    pulse_rows = list(csv.DictReader((tmp_path / "p-0001" / "pulse_bp.csv").open()))
    assert [r["value"] for r in pulse_rows] == ["72"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_csv_export_adds_new_rows_to_existing_files(tmp_path):
    target = EXPORTER.open({"directory": str(tmp_path)})
    target.deliver(parse(FULL, CTX))
    later = ParseContext(**{**CTX.__dict__, "received": CTX.received + timedelta(days=1)})
    target.deliver(parse(MINIMAL, later))
    rows = list(csv.DictReader((tmp_path / "p-0001" / "bp.csv").open()))
    assert len(rows) == 6
    assert rows[-1]["effective"] == "2026-03-02T08:00:00+00:00"


def test_copd_module_declaration_is_valid_and_cites_sources():
    assert MODULE.problems() == []
    assert all(code in MODULE.codes for code in MODULE.default_limits)


@pytest.mark.parametrize("value, triage", [(87, Triage.RED), (89, Triage.YELLOW),
                                           (90, Triage.GREEN), (99, Triage.GREEN)])
def test_copd_default_spo2_limits(value, triage):
    assert MODULE.default_limits["spo2"].classify(Decimal(value)) is triage


def test_copd_summary_line_has_units():
    assert MODULE.summarise({"spo2": 93.0, "pulse": 88.0}) == "SpO2 93 %, Pulse rate 88 /min"
    assert MODULE.summarise({}) == "no measurements yet"


def test_gateway_time_zone_applies_to_device_clock():
    utc_ctx = ParseContext(**{**CTX.__dict__, "device_tz": UTC})
    [bp, _] = parse(FULL, utc_ctx)
    assert bp.effective == datetime(2026, 3, 1, 7, 45, 12, tzinfo=UTC)


def test_module_rule_names_must_be_unique_and_not_the_cores():
    import dataclasses

    rule = MODULE.rules[0]
    twice = dataclasses.replace(MODULE, rules=(rule, rule))
    assert twice.problems() == ["rule name 'spo2_sustained_low' is used by more than one rule"]
    reserved = dataclasses.replace(MODULE, rules=(dataclasses.replace(rule, name="missing"),))
    assert "not 'missing'" in reserved.problems()[0]


def spo2_series(hours_and_values, yellow_low=90):
    import numpy as np

    from telemon.modules import Series

    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    times = np.array([t0 + h * 3600 for h, _ in hours_and_values], dtype=np.float64)
    values = np.array([v for _, v in hours_and_values], dtype=np.float64)
    limits = LimitSet(yellow_low=None if yellow_low is None else Decimal(yellow_low))
    return Series("p-1", "spo2", times, values,
                  tuple(f"o{i}" for i in range(len(times))), limits)


@pytest.mark.parametrize("readings, found", [
    ([], None),
    ([(0, 89)], None),                                  # one low reading: the limits' job
    ([(0, 89), (12, 88), (23.9, 89)], None),            # not yet 24 h
    ([(0, 89), (12, 88), (24, 89)], ("o0", "o1", "o2")),
    ([(0, 89), (12, 90), (24, 89), (36, 89)], None),    # a reading on the limit ends the run
    ([(0, 95), (6, 89), (18, float("nan")), (30, 89)], ("o1", "o2", "o3")),  # NaN: no break
    ([(0, 89), (24, 89), (30, 94)], None),              # recovered at the latest reading
])
def test_copd_sustained_low_spo2_rule(readings, found):
    from telemon.plugins.modules.copd import spo2_sustained_low

    findings = spo2_sustained_low(spo2_series(readings))
    if found is None:
        assert findings == []
    else:
        (finding,) = findings
        assert finding.severity is Triage.RED and finding.observations == found


def test_copd_sustained_low_spo2_rule_needs_a_yellow_low_limit():
    from telemon.plugins.modules.copd import spo2_sustained_low

    assert spo2_sustained_low(spo2_series([(0, 70), (30, 70)], yellow_low=None)) == []
