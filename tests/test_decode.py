"""`telemon decode --profile NAME HEX`: the vendor's debugging tool. One JSON line per
observation; exit 1 with the reason for a frame that does not decode; exit 2 for an unknown
profile or bad hex."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from telemon import plugin_manager, sim
from telemon.cli import cli
from telemon.plugin_manager import Registry
from telemon.plugins.drivers import (
    ble_blood_pressure,
    ble_glucose,
    ble_heart_rate,
    ble_pulse_oximeter,
    ble_thermometer,
    ble_weight_scale,
    serial_contec,
    serial_nonin,
    sim_devices,
)

CPH = ZoneInfo("Europe/Copenhagen")
RECEIVED = "2026-03-01T09:00:00+01:00"
# 120/80/93 mmHg, 2026-03-01 07:45:12, pulse 72, user 1, cuff loose + irregular pulse
BP = "1e 7800 5000 5d00 ea07 03 01 07 2d 0c 4800 01 0600"
MDC = "urn:iso:std:iso:11073:10101"


@pytest.fixture
def builtins(monkeypatch):
    """Every built-in driver, whatever entry points this environment has installed."""
    drivers = []
    for module in (ble_blood_pressure, ble_glucose, ble_heart_rate, ble_pulse_oximeter,
                   ble_thermometer, ble_weight_scale, serial_contec, serial_nonin, sim_devices):
        module.register_drivers(register=drivers.append)
    registry = Registry(drivers={d.name: d for d in drivers})
    monkeypatch.setattr(plugin_manager, "get", lambda: (None, registry))
    return registry


def decode(*args: str):
    result = CliRunner().invoke(cli, ["decode", *args])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result, lines


def test_blood_pressure_by_characteristic_uuid(builtins):
    result, (bp, pulse) = decode("--profile", "2A35", "--received", RECEIVED, BP)
    assert result.exit_code == 0, result.output
    assert bp == {
        "driver": "ble_blood_pressure",
        "code": {"system": MDC, "code": "150020", "display": "Blood pressure"},
        "components": [
            {"code": {"system": MDC, "code": "150021", "display": "Systolic blood pressure"},
             "unit": "mm[Hg]", "value": "120"},
            {"code": {"system": MDC, "code": "150022", "display": "Diastolic blood pressure"},
             "unit": "mm[Hg]", "value": "80"},
            {"code": {"system": MDC, "code": "150023", "display": "Mean arterial pressure"},
             "unit": "mm[Hg]", "value": "93"}],
        "unit": "mm[Hg]", "time": "2026-03-01T07:45:12+01:00",
        "status": ["cuff-loose", "irregular-pulse"],
        "context": {"time_source": "device", "method": "self-measured", "user": "1"},
        "raw": BP.replace(" ", "")}
    assert (pulse["code"]["code"], pulse["value"], pulse["unit"]) == ("149546", "72", "/min")
    assert "components" not in pulse


@pytest.mark.parametrize("name", ["2A35", "2a35", "0x2A35", "00002a35-0000-1000-8000-00805f9b34fb",
                                  "ble_blood_pressure"])
def test_every_spelling_of_the_profile(builtins, name):
    result, lines = decode("-p", name, BP.replace(" ", ":"))
    assert result.exit_code == 0 and [line["code"]["code"] for line in lines] == [
        "150020", "149546"]


def test_the_device_clock_zone_and_the_receive_time():
    # the default registry: whatever plugins are installed (ble_blood_pressure always is)
    result, lines = decode("-p", "2A35", "--tz", "UTC", BP)
    assert result.exit_code == 0, result.output
    assert lines[0]["time"] == "2026-03-01T07:45:12+00:00"
    result, [bp] = decode("-p", "2A35", "--received", RECEIVED, "00 7800 5000 5d00")
    assert bp["time"] == "2026-03-01T09:00:00+01:00"
    assert bp["context"]["time_source"] == "gateway"


def test_the_characteristic_chooses_the_layout(builtins):
    spot = sim.plx_spot_check(95, 70).hex()
    continuous = sim.plx_continuous(95, 70, fast=(94, 71)).hex()
    result, lines = decode("-p", "2A5F", continuous)
    assert result.exit_code == 0 and lines[0]["context"]["mode"] == "continuous"
    assert lines[0]["context"]["spo2_fast"] == "94"
    result, lines = decode("-p", "2A5E", spot)
    assert result.exit_code == 0 and lines[0]["context"]["mode"] == "spot-check"
    # by driver name, the first characteristic (spot check) is assumed
    result, lines = decode("-p", "ble_pulse_oximeter", spot)
    assert result.exit_code == 0 and [line["value"] for line in lines] == ["95", "70"]


def test_values_read_at_connect(builtins):
    frame = sim.weight_measurement(82.4).hex()
    feature = sim.weight_scale_feature(weight_resolution=3).hex()
    result, [plain] = decode("-p", "2A9D", frame)
    assert plain["value"] == "82.400" and plain["unit"] == "kg"
    result, [shown] = decode("-p", "2A9D", "--read", f"2A9E={feature}", frame)
    assert result.exit_code == 0
    assert shown["value"] == "82.4" and shown["context"]["weight_resolution"] == "0.1"
    result, _ = decode("-p", "2A9D", "--read", "2A9E", frame)
    assert result.exit_code == 2 and "is not UUID=HEX" in result.output


def test_absent_values_and_rr_intervals(builtins):
    result, [temperature] = decode("-p", "2A1C", "00 ffff7f00")  # FLOAT NaN
    assert result.exit_code == 0
    assert temperature["absent"] == "not-a-number" and "value" not in temperature
    frame = sim.heart_rate_measurement(72, rr=[0.8203125, 0.84375], contact=True).hex()
    result, lines = decode("-p", "2A37", "--received", RECEIVED, frame)
    assert result.exit_code == 0
    assert [(line["code"]["display"], line["value"]) for line in lines] == [
        ("Heart rate (ECG)", "72"), ("RR interval", "0.8203125"), ("RR interval", "0.84375")]
    assert lines[1]["time"] == "2026-03-01T08:59:59.156250+01:00"  # derived beat time


@pytest.mark.parametrize("profile, frame, reason", [
    ("2A35", "1e 7800 5000", "frame ends before mean arterial pressure: needs bytes 5..6, "
                             "has 5"),
    ("2A35", "00 7800 5000 5d00 ff", "1 unexpected byte(s) after the fields that flags 0x00 "
                                     "announce (7 bytes)"),
    ("2A37", "10 48", "flags 0x10 announce RR-intervals, but the frame ends at byte 2 "
                      "without one"),
    ("ble_glucose", "00 0100 ea07 02 1e 0a 00 00", "invalid date-time 2026-02-30 10:00:00"),
])
def test_a_frame_that_does_not_decode_exits_1_with_the_reason(builtins, profile, frame,
                                                               reason):
    result, lines = decode("-p", profile, frame)
    assert result.exit_code == 1 and lines == []
    assert result.stderr.startswith("error: frame does not decode (")
    assert reason in result.stderr


@pytest.mark.parametrize("args, message", [
    (["-p", "acme_scale", "00"], "'acme_scale' is neither an installed driver nor a "
                                 "characteristic UUID"),
    (["-p", "2A99", "00"], "no installed driver reads characteristic 2A99"),
    (["-p", "2A35", "1e 7"], "odd number of digits (3)"),
    (["-p", "2A35", "zz"], "not hex: 'z' is not a hex digit"),
    (["-p", "2A35", " "], "no bytes given"),
    (["-p", "2A35", "--tz", "Mars/Olympus", "00"], "unknown time zone"),
    (["-p", "2A35", "--received", "yesterday", "00"], "not an ISO 8601 time with an offset"),
    (["-p", "2A35", "--stream", "00"], "has no framer"),
    (["00"], "Missing option '--profile'"),
])
def test_usage_errors_exit_2(builtins, args, message):
    result, lines = decode(*args)
    assert result.exit_code == 2 and lines == []
    assert message in result.output


def test_serial_frames_as_the_parser_sees_them_and_raw_streams(builtins):
    model = sim.PatientModel(1)
    at = datetime(2026, 3, 1, 8, tzinfo=CPH)
    second = sim.nonin_second(model, at)
    expected = [str(min(100, round(model.sample("spo2", at)))),
                str(round(model.sample("pulse", at)))]
    result, lines = decode("-p", "serial_nonin_format2", second.hex())
    assert result.exit_code == 0 and [line["value"] for line in lines] == expected
    assert lines[0]["context"]["packets"] == "3" and lines[0]["raw"] == second.hex()
    # a capture off the port, starting mid-packet: the framer finds the packets and says
    # what it dropped (exit 1: some bytes did not decode)
    capture = second[7:] + second + second[:100]
    result, lines = decode("-p", "serial_nonin_format2", "--stream", capture.hex())
    assert result.exit_code == 1 and [line["value"] for line in lines] == expected * 2
    assert "frame 1: bytes before the first packet start; synchronised after dropping " \
           "118 byte(s)" in result.stderr
    assert "stream ended inside a packet: 100 byte(s) dropped" in result.stderr
    result, lines = decode("-p", "serial_nonin_format2", "--stream", second.hex())
    assert result.exit_code == 0 and len(lines) == 2
    legacy = sim.contec_legacy_packet(96, 61).hex()
    result, lines = decode("-p", "serial_contec_cms50d_legacy", legacy)
    assert result.exit_code == 0 and [line["value"] for line in lines] == ["96", "61"]


def test_sim_drivers_decode_with_their_real_parser(builtins):
    frame = sim.temperature_measurement(sim.rounded(36.85, "0.1"), site=6).hex()
    result, [line] = decode("-p", "sim_thermometer", frame)
    assert result.exit_code == 0
    assert (line["driver"], line["value"], line["unit"]) == ("ble_thermometer", "36.8", "Cel")
    assert line["context"]["body_site"] == "mouth"


def test_a_driver_bug_is_reported_not_raised(builtins, monkeypatch):
    import dataclasses

    def broken(frame, ctx):
        raise ZeroDivisionError("division by zero")

    builtins.drivers["ble_thermometer"] = dataclasses.replace(
        builtins.drivers["ble_thermometer"], parse=broken)
    result, _ = decode("-p", "2A1C", "00 00000000")
    assert result.exit_code == 1
    assert "driver ble_thermometer crashed: ZeroDivisionError: division by zero" in result.stderr


def test_encoded_frames_decode_to_what_was_encoded(builtins):
    """The sim encoders and the decode tool agree, field by field."""
    moment = datetime(2026, 3, 1, 7, 15, 30, tzinfo=CPH)
    frame = sim.glucose_measurement(42, moment, "5.5", time_offset=-15, status=0x0001)
    result, [line] = decode("-p", "2A18", frame.hex())
    assert result.exit_code == 0
    assert (line["value"], line["unit"], line["time"], line["status"]) == (
        "5.5", "mmol/L", "2026-03-01T07:00:30+01:00", ["battery-low"])
    assert line["context"]["sequence"] == "42" and line["context"]["time_offset_min"] == "-15"
