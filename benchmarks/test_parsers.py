"""Parser throughput (frames/s = the `ops` column: one frame per call) on frames made by the
simulated devices (telemon.sim): every BLE health-profile parser, and the Nonin format 2 /
Contec CMS50D+ framers + parsers on one second of stream per call (375 / 300 bytes).

Named peers in the same run, on the same blood-pressure frames:
* `struct_unpack_bp`: a straightforward struct.unpack parser of the Blood Pressure
  Measurement into a dict of floats: no Decimal, no special values, no Observation. The
  floor: what decoding the bytes alone costs.
* `decode_json_bp`: `telemon decode`'s per-frame path (parse + its JSON line), without the
  process start-up.
The ratio telemon / struct.unpack is the price of exact Decimals, special values, ids and
typed observations; decode_json / telemon the price of the JSON line.
"""

from __future__ import annotations

import itertools
import json
import struct
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from telemon import sim
from telemon.cli import _observation_json
from telemon.drivers import ParseContext
from telemon.gatt import uuid128
from telemon.plugins.drivers import (
    ble_blood_pressure,
    ble_glucose,
    ble_heart_rate,
    ble_pulse_oximeter,
    ble_thermometer,
    ble_weight_scale,
    serial_contec,
    serial_nonin,
)

CPH = ZoneInfo("Europe/Copenhagen")
START = datetime(2026, 3, 2, tzinfo=CPH)
MODEL = sim.PatientModel.for_scenario("copd-exacerbation", start=START, seed=1)
FRAMES = 500


def ctx(source: str, features=None) -> ParseContext:
    return ParseContext(patient="p-1", device="d-1", gateway="gw-1", received=START,
                        device_tz=CPH, source=source, features=features or {})


def made(make, count: int = FRAMES, step: timedelta = timedelta(minutes=37)) -> list[bytes]:
    """`count` frames of one simulated device, at times spread over weeks."""
    return [make(MODEL, START + i * step) for i in range(count)]


BLE = {
    "blood_pressure": (ble_blood_pressure.parse, sim.bp_frame, uuid128(0x2A35), {}),
    "weight_scale": (ble_weight_scale.parse, sim.weight_frame, uuid128(0x2A9D),
                     sim.WEIGHT_FEATURES),
    "pulse_oximeter": (ble_pulse_oximeter.parse, sim.spot_check_frame, uuid128(0x2A5E), {}),
    "heart_rate": (ble_heart_rate.parse, sim.heart_rate_frame, uuid128(0x2A37), {}),
    "thermometer": (ble_thermometer.parse, sim.thermometer_frame, uuid128(0x2A1C), {}),
    "glucose": (ble_glucose.parse, sim.glucose_frame, uuid128(0x2A18), {}),
}


@pytest.fixture(scope="module")
def bp_frames() -> list[bytes]:
    return made(sim.bp_frame)


@pytest.mark.benchmark(group="BLE parsers: frames/s")
@pytest.mark.parametrize("profile", list(BLE))
def test_ble_parser(benchmark, profile):
    parse, make, source, features = BLE[profile]
    frames = made(make)
    context = ctx(source, features)
    cycle = itertools.cycle(frames)
    observations = benchmark(lambda: parse(next(cycle), context))
    assert observations


def stream(second, seconds: int = 120) -> list[bytes]:
    return [second(MODEL, START + timedelta(hours=8, seconds=i)) for i in range(seconds)]


@pytest.mark.benchmark(group="serial framer + parser: seconds of stream/s")
@pytest.mark.parametrize("driver, second", [
    (serial_nonin.DRIVERS[0], lambda m, t: sim.nonin_second(m, t, 2)),
    (serial_contec.DRIVERS[0], lambda m, t: sim.contec_second(m, t, "legacy")),
], ids=["nonin_format2", "contec_legacy"])
def test_serial_framer_and_parser(benchmark, driver, second):
    chunks = itertools.cycle(stream(second))
    framer = driver.stream.framer()
    context = ctx("/dev/ttyUSB0")

    def one_second():
        return [driver.parse(frame, context) for frame in framer.feed(next(chunks))]

    [observations] = benchmark(one_second)
    assert len(observations) == 2 and observations[0].value is not None


# --- peers on the blood-pressure frames ----------------------------------------------------

_HEAD = struct.Struct("<BHHH")


def _sfloat(word: int) -> float:
    mantissa = word & 0x0FFF
    exponent = word >> 12
    mantissa -= 0x1000 if mantissa & 0x0800 else 0
    exponent -= 0x10 if exponent & 0x08 else 0
    return mantissa * 10.0 ** exponent


def struct_unpack_bp(frame: bytes) -> dict:
    """The peer: flags, three SFLOATs, then the optional fields, into floats."""
    flags, systolic, diastolic, mean = _HEAD.unpack_from(frame)
    out = {"systolic": _sfloat(systolic), "diastolic": _sfloat(diastolic),
           "mean": _sfloat(mean), "unit": "kPa" if flags & 1 else "mmHg"}
    offset = 7
    if flags & 0x02:
        year, month, day, hour, minute, second = struct.unpack_from("<H5B", frame, offset)
        out["time"] = datetime(year, month, day, hour, minute, second, tzinfo=CPH)
        offset += 7
    if flags & 0x04:
        out["pulse"] = _sfloat(struct.unpack_from("<H", frame, offset)[0])
        offset += 2
    if flags & 0x08:
        out["user"] = frame[offset]
        offset += 1
    if flags & 0x10:
        out["status"] = struct.unpack_from("<H", frame, offset)[0]
    return out


@pytest.mark.benchmark(group="blood pressure 0x2A35: frames/s (peers)")
def test_bp_telemon_parser(benchmark, bp_frames):
    cycle, context = itertools.cycle(bp_frames), ctx(uuid128(0x2A35))
    bp, pulse = benchmark(lambda: ble_blood_pressure.parse(next(cycle), context))
    assert bp.components and pulse.value


@pytest.mark.benchmark(group="blood pressure 0x2A35: frames/s (peers)")
def test_bp_struct_unpack_peer(benchmark, bp_frames):
    cycle = itertools.cycle(bp_frames)
    decoded = benchmark(lambda: struct_unpack_bp(next(cycle)))
    assert 60 < decoded["systolic"] < 260 and decoded["pulse"] > 0
    # the peer reads the same numbers as the real parser
    for frame in bp_frames[:50]:
        bp, pulse = ble_blood_pressure.parse(frame, ctx(uuid128(0x2A35)))
        peer = struct_unpack_bp(frame)
        assert [float(c.value) for c in bp.components] == [
            peer["systolic"], peer["diastolic"], peer["mean"]]
        assert (float(pulse.value), bp.effective) == (peer["pulse"], peer["time"])


@pytest.mark.benchmark(group="blood pressure 0x2A35: frames/s (peers)")
def test_bp_decode_json_path(benchmark, bp_frames):
    cycle, context = itertools.cycle(bp_frames), ctx(uuid128(0x2A35))

    def decode_line():
        return [json.dumps(_observation_json(o)) for o in
                ble_blood_pressure.parse(next(cycle), context)]

    lines = benchmark(decode_line)
    assert len(lines) == 2 and json.loads(lines[0])["components"]
