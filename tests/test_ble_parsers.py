"""The Bluetooth SIG health-profile parsers: weight scale, pulse oximeter, heart rate,
thermometer, glucose meter.

Test vectors come from two kinds of source:
* published example frames from other implementations' test suites, cited where used (only
  the bytes and the values they decode to; where a source disagrees with the Bluetooth SIG
  specification, the comment says so and the test follows the specification);
* frames assembled here, field by field, by small encoders (`sf`, `fl`, `dt`, `u16`) that
  are independent of the parsers, so every flag combination that changes the layout is
  decoded and checked.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemon.codes import KNOWN
from telemon.drivers import FrameError, ParseContext
from telemon.gatt import read_value, short_uuid, uuid128
from telemon.models import AbsentReason
from telemon.plugins.drivers import (
    ble_glucose,
    ble_heart_rate,
    ble_pulse_oximeter,
    ble_thermometer,
    ble_weight_scale,
)

COPENHAGEN = ZoneInfo("Europe/Copenhagen")
RECEIVED = datetime(2026, 3, 1, 9, 0, tzinfo=COPENHAGEN)
CTX = ParseContext(patient="p-0001", device="dev-1", gateway="gw-0001", received=RECEIVED)
SPOT, CONT = uuid128(0x2A5E), uuid128(0x2A5F)
DRIVERS = (ble_weight_scale, ble_pulse_oximeter, ble_heart_rate, ble_thermometer, ble_glucose)


def ctx(source: str = "", features: dict[str, bytes] | None = None, **changes) -> ParseContext:
    return ParseContext(**{**CTX.__dict__, "source": source, "features": features or {},
                           **changes})


# --- independent little encoders for hand-assembled frames --------------------------------

def u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def sf(mantissa: int, exponent: int = 0) -> bytes:
    """IEEE-11073 SFLOAT: 4-bit exponent above a 12-bit mantissa (both two's complement)."""
    return ((exponent & 0xF) << 12 | (mantissa & 0xFFF)).to_bytes(2, "little")


def fl(mantissa: int, exponent: int = 0) -> bytes:
    """IEEE-11073 FLOAT: 8-bit exponent above a 24-bit mantissa."""
    return ((exponent & 0xFF) << 24 | (mantissa & 0xFFFFFF)).to_bytes(4, "little")


def dt(year, month, day, hour=0, minute=0, second=0) -> bytes:
    return u16(year) + bytes([month, day, hour, minute, second])


def by_code(observations):
    return {o.code.code: o for o in observations}


def check_common(observations, frame, driver):
    """What every observation of every parser must have."""
    assert observations
    assert all(o.raw == frame for o in observations)
    assert len({o.id for o in observations}) == len(observations)
    assert all(o.driver == driver.NAME and o.patient == "p-0001" for o in observations)
    assert all(o.effective.tzinfo is not None for o in observations)


# --- declarations -------------------------------------------------------------------------

@pytest.mark.parametrize("module", DRIVERS, ids=lambda m: m.NAME)
def test_driver_declarations_are_valid(module):
    driver = module.DRIVER
    assert driver.problems() == []
    assert driver.name == module.__name__.rsplit(".", 1)[1]
    assert all(code in KNOWN for code in driver.codes)
    for uuid in driver.ble.service_uuids + driver.ble.characteristics + driver.ble.reads:
        assert uuid == uuid.lower() and len(uuid) == 36 and short_uuid(uuid) is not None
    registered = []
    module.register_drivers(register=registered.append)
    assert registered == [driver]


@pytest.mark.parametrize("module, service, characteristics, reads", [
    (ble_weight_scale, 0x181D, (0x2A9D,), (0x2A9E,)),
    (ble_pulse_oximeter, 0x1822, (0x2A5E, 0x2A5F), (0x2A60,)),
    # Body Sensor Location and Temperature Type are optional characteristics: not declared
    # as reads while the transport treats every read as required.
    (ble_heart_rate, 0x180D, (0x2A37,), ()),
    (ble_thermometer, 0x1809, (0x2A1C,), ()),
    (ble_glucose, 0x1808, (0x2A18,), ()),
])
def test_drivers_match_the_sig_assigned_numbers(module, service, characteristics, reads):
    ble = module.DRIVER.ble
    assert ble.service_uuids == (f"0000{service:04x}-0000-1000-8000-00805f9b34fb",)
    assert tuple(map(short_uuid, ble.characteristics)) == characteristics
    assert tuple(map(short_uuid, ble.reads)) == reads


def test_uuid_helpers():
    assert uuid128(0x2A37) == "00002a37-0000-1000-8000-00805f9b34fb"
    assert [short_uuid(u) for u in ("2a37", "0x2A37", "00002A37-0000-1000-8000-00805F9B34FB",
                                    "", "6e400001-b5a3-f393-e0a9-e50e24dcca9e")] == [
        0x2A37, 0x2A37, 0x2A37, None, None]
    assert read_value({"2A9E": b"\x01"}, 0x2A9E) == b"\x01"
    assert read_value({"2a9e": b"\x01"}, 0x2A9F) is None


# --- weight scale ---------------------------------------------------------------------------

weigh = ble_weight_scale.parse


WEIGHT_STAMP = dt(2026, 3, 1, 7, 30, 5)


def weight_frame(flags, weight=14000, stamp=WEIGHT_STAMP, user=2, bmi=229, height=1750):
    frame = bytes([flags]) + u16(weight)
    if flags & 0x02:
        frame += stamp
    if flags & 0x04:
        frame += bytes([user])
    if flags & 0x08:
        frame += u16(bmi) + u16(height)
    return frame


def test_weight_published_example_spezi():
    # StanfordSpezi SpeziKt, WeightDataConverterTest: [6, 32, 18, 0,0,0,0,0,0,0, 1] is
    # "23,2 kg, user 1": flags 0x06 (time stamp, user id), weight 0x1220 = 4640 x 0.005 kg,
    # time stamp all zero (year 0: unknown), user 1. Likewise [6, 16, 14, ...] is 18.0 kg.
    frame = bytes([6, 32, 18, 0, 0, 0, 0, 0, 0, 0, 1])
    [weight] = weigh(frame, CTX)
    assert (weight.value, weight.unit) == (Decimal("23.200"), "kg")
    assert weight.code == KNOWN["weight"].code
    assert weight.context == {"time_source": "gateway", "method": "self-measured", "user": "1"}
    assert weight.effective == RECEIVED
    check_common([weight], frame, ble_weight_scale)
    [other] = weigh(bytes([6, 16, 14, 0, 0, 0, 0, 0, 0, 0, 1]), CTX)
    assert other.value == Decimal("18.000")


def test_weight_full_si_frame():
    frame = bytes.fromhex(
        "0e"              # flags: time stamp, user id, BMI and height; SI units
        "b036"            # weight 0x36B0 = 14000 x 0.005 kg = 70.000 kg
        "ea07 03 01 07 1e 05"  # 2026-03-01 07:30:05, device local time
        "02"              # user 2
        "e500"            # BMI 229 x 0.1 = 22.9 kg/m2
        "d606"            # height 1750 x 0.001 m = 1.750 m
    )
    observations = weigh(frame, CTX)
    check_common(observations, frame, ble_weight_scale)
    found = by_code(observations)
    assert (found["188736"].value, found["188736"].unit) == (Decimal("70.000"), "kg")
    assert str(found["188736"].value) == "70.000"
    assert (found["188752"].value, found["188752"].unit) == (Decimal("22.9"), "kg/m2")
    assert (found["188740"].value, found["188740"].unit) == (Decimal("1.750"), "m")
    assert all(o.effective == datetime(2026, 3, 1, 7, 30, 5, tzinfo=COPENHAGEN)
               for o in observations)
    assert found["188736"].context == {"time_source": "device", "method": "self-measured",
                                       "user": "2"}


def test_weight_imperial_units_are_kept_not_converted():
    frame = bytes.fromhex(
        "09"      # flags: imperial, BMI and height
        "483c"    # 0x3C48 = 15432 x 0.01 lb = 154.32 lb
        "e500"    # BMI 22.9
        "b102"    # 0x02B1 = 689 x 0.1 in = 68.9 in
    )
    found = by_code(weigh(frame, CTX))
    assert (str(found["188736"].value), found["188736"].unit) == ("154.32", "[lb_av]")
    assert (str(found["188740"].value), found["188740"].unit) == ("68.9", "[in_i]")
    assert found["188752"].unit == "kg/m2"


@pytest.mark.parametrize("flags", range(16))
def test_weight_every_layout(flags):
    frame = weight_frame(flags)
    observations = weigh(frame, CTX)
    check_common(observations, frame, ble_weight_scale)
    found = by_code(observations)
    assert len(observations) == (3 if flags & 0x08 else 1)
    step = Decimal("0.01") if flags & 0x01 else Decimal("0.005")
    assert found["188736"].value == 14000 * step
    assert (found["188736"].effective == datetime(2026, 3, 1, 7, 30, 5, tzinfo=COPENHAGEN)) \
        == bool(flags & 0x02)
    assert ("user" in found["188736"].context) == bool(flags & 0x04)


def test_weight_reserved_flag_bits_are_ignored():
    plain = weigh(weight_frame(0x00), CTX)[0]
    rfu = weigh(weight_frame(0xF0), CTX)[0]
    assert (rfu.value, rfu.unit, rfu.context) == (plain.value, plain.unit, plain.context)


@pytest.mark.parametrize("resolution, weight, shown", [
    (3, 14000, "70.0"),     # 0.1 kg: 70.000 shown as 70.0
    (7, 14000, "70.000"),   # 0.005 kg: the field's own precision
    (4, 14001, "70.005"),   # 0.05 kg, but the value needs 3 decimals: nothing is rounded away
    (1, 120, "0.6"),        # 0.5 kg: 120 x 0.005 = 0.6 kg, NOT 120 x 0.5 = 60 (no rescaling;
                            # SpeziBluetooth's WeightScaleTests rescale by the resolution)
    (0, 14000, "70.000"),   # not specified
    (9, 14000, "70.000"),   # reserved code
])
def test_weight_resolution_sets_precision_never_scale(resolution, weight, shown):
    features = {uuid128(0x2A9E): (resolution << 3).to_bytes(4, "little")}
    [observation] = weigh(weight_frame(0x00, weight=weight), ctx(features=features))
    assert str(observation.value) == shown
    assert ("weight_resolution" in observation.context) == (1 <= resolution <= 7)


def test_weight_resolution_in_pounds_and_height_resolution():
    # weight resolution 1 (1 lb), height resolution 1 (1 in) in imperial units
    features = {uuid128(0x2A9E): (1 << 3 | 1 << 7 | 0x07).to_bytes(4, "little")}
    found = by_code(weigh(weight_frame(0x09, weight=15400, height=690), ctx(features=features)))
    assert str(found["188736"].value) == "154"
    assert str(found["188740"].value) == "69"
    assert found["188736"].context["weight_resolution"] == "1"
    assert found["188736"].context["height_resolution"] == "1"
    # height resolution 1 in SI is 0.01 m: 1.750 -> 1.75
    features = {uuid128(0x2A9E): (1 << 7).to_bytes(4, "little")}
    found = by_code(weigh(weight_frame(0x08), ctx(features=features)))
    assert str(found["188740"].value) == "1.75"


def test_weight_unusable_feature_value_is_noted_and_ignored():
    [observation] = weigh(weight_frame(0x00), ctx(features={uuid128(0x2A9E): b"\x18\x00"}))
    assert str(observation.value) == "70.000"
    assert observation.context["features"] == ("Weight Scale Feature of 2 bytes ignored "
                                               "(expected 4)")


def test_weight_measurement_unsuccessful_and_unknown_user():
    frame = weight_frame(0x06, weight=0xFFFF, user=0xFF)
    [observation] = weigh(frame, CTX)
    assert (observation.value, observation.absent) == (None, AbsentReason.ERROR)
    assert observation.flags == ("measurement-unsuccessful",)
    assert observation.context["user"] == "unknown"


@pytest.mark.parametrize("frame, reason", [
    (b"", "frame ends before flags: needs bytes 0..0, has 0"),
    (bytes.fromhex("00 b0"), "frame ends before weight: needs bytes 1..2, has 2"),
    (bytes.fromhex("02 b036 ea07 03"), "frame ends before time stamp"),
    (bytes.fromhex("04 b036"), "frame ends before user id"),
    (bytes.fromhex("08 b036 e500"), "frame ends before height"),
    (weight_frame(0x00) + b"\x00", "1 unexpected byte(s) after the fields that flags 0x00 "
                                   "announce (3 bytes)"),
    (weight_frame(0x02, stamp=dt(2026, 2, 30)), "invalid date-time 2026-02-30"),
    (weight_frame(0x08, weight=0xFFFF), "weight 0xFFFF (measurement unsuccessful) with BMI"),
])
def test_weight_bad_frames(frame, reason):
    with pytest.raises(FrameError) as exc:
        weigh(frame, CTX)
    assert reason in str(exc.value)


def test_weight_rejects_another_characteristic():
    with pytest.raises(FrameError, match="is not Weight Measurement"):
        weigh(weight_frame(0), ctx(source=uuid128(0x2A9E)))
    assert weigh(weight_frame(0), ctx(source=uuid128(0x2A9D)))


def test_weight_same_record_same_ids_and_distinct_per_code():
    frame = weight_frame(0x0A)
    first, again = weigh(frame, CTX), weigh(frame, ctx(received=RECEIVED + timedelta(hours=1)))
    assert [o.id for o in first] == [o.id for o in again]  # device time: re-sent, same ids
    assert len({o.id for o in first}) == 3


# --- heart rate -----------------------------------------------------------------------------

heart = ble_heart_rate.parse
HR_SOURCE = uuid128(0x2A37)


def test_heart_rate_published_examples_nordic():
    # NordicSemiconductor/Android-BLE-Common-Library, HeartRateMeasurementDataCallbackTest.
    # {0, 85}: 85 /min, contact not supported.
    [rate] = heart(bytes([0, 85]), CTX)
    assert (rate.value, rate.unit, rate.code) == (Decimal(85), "/min", KNOWN["heart_rate"].code)
    assert rate.context["sensor_contact"] == "not-supported" and rate.flags == ()
    # {0x04, 0xFF}: 255 /min, contact supported but not detected.
    [rate] = heart(bytes([0x04, 0xFF]), CTX)
    assert rate.value == 255 and rate.flags == ("no-sensor-contact",)
    assert rate.context["sensor_contact"] == "not-detected"
    # {0b11110, 85, 50, 0, 33, 0}: 85 /min, contact detected, 50 kJ, one RR of 33/1024 s.
    frame = bytes([0b11110, 85, 50, 0, 33, 0])
    observations = heart(frame, CTX)
    check_common(observations, frame, ble_heart_rate)
    found = by_code(observations)
    assert found["147842"].context["sensor_contact"] == "detected"
    assert (found["8454263"].value, found["8454263"].unit) == (Decimal(50), "kJ")
    assert (found["147240"].value, found["147240"].unit) == (Decimal(33) / 1024, "s")
    # {0b11111, 1, 1, 50, 1, 1, 0, 2, 1, 0xFF, 0xFF}: uint16 257 /min, 306 kJ, RR 1, 258, 65535.
    frame = bytes([0b11111, 1, 1, 50, 1, 1, 0, 2, 1, 0xFF, 0xFF])
    observations = heart(frame, ctx(source=HR_SOURCE))
    check_common(observations, frame, ble_heart_rate)
    assert [o.value for o in observations] == [
        Decimal(257), Decimal(306), Decimal("0.0009765625"), Decimal("0.251953125"),
        Decimal("63.9990234375")]
    # {0b10111, 1, 1}: uint16 heart rate 257, RR-intervals announced but none sent: invalid.
    with pytest.raises(FrameError, match="announce RR-intervals, but the frame ends at byte 3"):
        heart(bytes([0b10111, 1, 1]), CTX)


def test_rr_intervals_are_exact_seconds_with_beat_times():
    frame = bytes.fromhex(
        "10"      # flags: RR-intervals present; uint8 heart rate; no contact feature
        "48"      # 72 /min
        "4803"    # RR 0x0348 = 840/1024 s = 0.8203125 s   (oldest)
        "0004"    # RR 1024/1024 s = 1 s
        "0002"    # RR 512/1024 s = 0.5 s                   (newest)
    )
    observations = heart(frame, CTX)
    check_common(observations, frame, ble_heart_rate)
    rate, *rr = observations
    assert rate.effective == RECEIVED and rate.context["time_source"] == "gateway"
    assert [str(o.value) for o in rr] == ["0.8203125", "1", "0.5"]
    assert all(o.code == KNOWN["rr_interval"].code and o.unit == "s" for o in rr)
    # each interval ends where the next begins; the newest ends at the receive time
    assert [o.effective for o in rr] == [RECEIVED - timedelta(seconds=1.5),
                                         RECEIVED - timedelta(seconds=0.5), RECEIVED]
    assert [o.context["rr_index"] for o in rr] == ["1/3", "2/3", "3/3"]
    assert all(o.context["rr_timing"] == "derived" for o in rr)


def test_equal_rr_intervals_get_distinct_ids():
    frame = bytes.fromhex("10 48 0000 0000 0004 0004")  # two zero-length intervals too
    observations = heart(frame, CTX)
    assert len({o.id for o in observations}) == 5


@pytest.mark.parametrize("flags", [f | c << 1 for f in (0, 1, 8, 9, 16, 17, 24, 25)
                                   for c in range(4)])
def test_heart_rate_every_layout(flags):
    frame = bytes([flags]) + (u16(300) if flags & 1 else bytes([72]))
    if flags & 0x08:
        frame += u16(1234)
    if flags & 0x10:
        frame += u16(800) + u16(820)
    observations = heart(frame, CTX)
    check_common(observations, frame, ble_heart_rate)
    assert observations[0].value == (300 if flags & 1 else 72)
    assert len(observations) == 1 + bool(flags & 0x08) + 2 * bool(flags & 0x10)
    contact = (flags >> 1) & 3
    assert observations[0].context["sensor_contact"] == {
        0: "not-supported", 1: "not-supported", 2: "not-detected", 3: "detected"}[contact]
    assert all(("no-sensor-contact" in o.flags) == (contact == 2) for o in observations)


def test_heart_rate_reserved_bits_energy_maximum_and_sensor_location():
    [rate] = heart(bytes([0xE0, 60]), CTX)  # bits 5-7 reserved: ignored
    assert rate.value == 60
    rate, energy = heart(bytes([0x08, 60]) + u16(0xFFFF), CTX)
    assert energy.value == 65535 and energy.flags == ("energy-at-maximum",)
    assert rate.flags == ()
    located = ctx(features={uuid128(0x2A38): b"\x01"})
    assert heart(bytes([0, 60]), located)[0].context["body_site"] == "chest"
    located = ctx(features={uuid128(0x2A38): b"\x09"})
    assert heart(bytes([0, 60]), located)[0].context["body_site"] == "reserved-9"


@pytest.mark.parametrize("frame, reason", [
    (b"", "frame ends before flags"),
    (bytes([0x01, 0x48]), "frame ends before heart rate: needs bytes 1..2, has 2"),
    (bytes([0x10, 72, 0x48, 0x03, 0x00]), "RR-intervals take 2 bytes each, but 3 byte(s) "
                                          "follow at byte 2"),
    (bytes([0x00, 72, 0x00]), "1 unexpected byte(s) after the fields that flags 0x00 announce"),
    (bytes([0x08, 72, 0x00, 0x01, 0x02]), "1 unexpected byte(s)"),
    (bytes([0x18, 66, 0x10, 0x00]), "flags 0x18 announce RR-intervals, but the frame ends at "
                                    "byte 4 without one"),
])
def test_heart_rate_bad_frames(frame, reason):
    with pytest.raises(FrameError) as exc:
        heart(frame, CTX)
    assert reason in str(exc.value)


def test_heart_rate_rejects_another_characteristic():
    with pytest.raises(FrameError, match="is not Heart Rate Measurement"):
        heart(bytes([0, 60]), ctx(source=uuid128(0x2A38)))


# --- thermometer ----------------------------------------------------------------------------

thermo = ble_thermometer.parse


def test_thermometer_published_example_nordic():
    # NordicSemiconductor/Android-BLE-Common-Library, TemperatureMeasurementDataCallbackTest:
    # {0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04}
    # = 37.60 Celsius (FLOAT 0xFE000EB0: 3760 x 10^-2), 2012-12-05 11:50:27, type 4 (finger).
    frame = bytes([0x06, 0xB0, 0x0E, 0x00, 0xFE, 0xDC, 0x07, 0x0C, 0x05, 0x0B, 0x32, 0x1B, 0x04])
    [temperature] = thermo(frame, ctx(source=uuid128(0x2A1C)))
    check_common([temperature], frame, ble_thermometer)
    assert (str(temperature.value), temperature.unit) == ("37.60", "Cel")
    assert temperature.code == KNOWN["temperature"].code
    assert temperature.effective == datetime(2012, 12, 5, 11, 50, 27, tzinfo=COPENHAGEN)
    assert temperature.context == {"time_source": "device", "method": "self-measured",
                                   "body_site": "finger", "site_code": "188432"}
    # The same without its last byte (the announced type is missing): invalid.
    with pytest.raises(FrameError, match="frame ends before temperature type"):
        thermo(frame[:-1], CTX)


def test_thermometer_fahrenheit_is_kept():
    frame = bytes([0x01]) + fl(986, -1)  # 98.6 degF
    [temperature] = thermo(frame, CTX)
    assert (str(temperature.value), temperature.unit) == ("98.6", "[degF]")
    assert temperature.effective == RECEIVED and temperature.context["time_source"] == "gateway"


@pytest.mark.parametrize("flags", range(8))
def test_thermometer_every_layout(flags):
    frame = bytes([flags]) + fl(3712, -2)
    if flags & 0x02:
        frame += dt(2026, 2, 28, 22, 15, 0)
    if flags & 0x04:
        frame += bytes([6])
    [temperature] = thermo(frame, CTX)
    check_common([temperature], frame, ble_thermometer)
    assert temperature.value == Decimal("37.12")
    assert temperature.unit == ("[degF]" if flags & 1 else "Cel")
    assert (temperature.context["time_source"] == "device") == bool(flags & 0x02)
    assert temperature.context.get("body_site") == ("mouth" if flags & 0x04 else None)


@pytest.mark.parametrize("word, reason", [
    ("ffff7f00", AbsentReason.NOT_A_NUMBER), ("00008000", AbsentReason.ERROR),
    ("feff7f00", AbsentReason.POSITIVE_INFINITY), ("02008000", AbsentReason.NEGATIVE_INFINITY),
    ("01008000", AbsentReason.UNSUPPORTED),
])
def test_thermometer_special_values(word, reason):
    [temperature] = thermo(bytes([0]) + bytes.fromhex(word), CTX)
    assert (temperature.value, temperature.absent) == (None, reason)


def test_temperature_type_from_the_characteristic_read_at_connect():
    static = ctx(features={uuid128(0x2A1D): bytes([9])})
    [temperature] = thermo(bytes([0]) + fl(375, -1), static)
    assert temperature.context["body_site"] == "tympanum"
    assert temperature.context["site_code"] == "150392"
    # the field in the frame wins over the static characteristic
    [temperature] = thermo(bytes([4]) + fl(375, -1) + bytes([1]), static)
    assert (temperature.context["body_site"], temperature.context["site_code"]) == (
        "armpit", "188452")
    [temperature] = thermo(bytes([4]) + fl(375, -1) + bytes([2]), static)
    assert temperature.context["body_site"] == "body" and "site_code" not in temperature.context
    [temperature] = thermo(bytes([4]) + fl(375, -1) + bytes([0]), CTX)
    assert temperature.context["body_site"] == "reserved-0"


def test_thermometer_reserved_flag_bits_are_ignored():
    [temperature] = thermo(bytes([0xF8]) + fl(375, -1), CTX)
    assert (str(temperature.value), temperature.unit) == ("37.5", "Cel")


@pytest.mark.parametrize("frame, reason", [
    (b"", "frame ends before flags"),
    (bytes([0]) + fl(375, -1)[:3], "frame ends before temperature: needs bytes 1..4, has 4"),
    (bytes([2]) + fl(375, -1) + dt(2026, 1, 1)[:4], "frame ends before time stamp"),
    (bytes([2]) + fl(375, -1) + dt(2026, 13, 1), "invalid date-time 2026-13-01"),
    (bytes([0]) + fl(375, -1) + b"\x06", "1 unexpected byte(s) after the fields that flags 0x00 "
                                         "announce (5 bytes)"),
])
def test_thermometer_bad_frames(frame, reason):
    with pytest.raises(FrameError) as exc:
        thermo(frame, CTX)
    assert reason in str(exc.value)


def test_thermometer_rejects_intermediate_temperature():
    with pytest.raises(FrameError, match="is not Temperature Measurement"):
        thermo(bytes([0]) + fl(375, -1), ctx(source=uuid128(0x2A1E)))


# --- pulse oximeter -------------------------------------------------------------------------

plx = ble_pulse_oximeter.parse

# StanfordSpezi/SpeziBluetooth, Tests/SpeziBluetoothServicesTests/PLXTests.swift.
SPEZI_SPOT = bytes([15, 172, 243, 190, 245, 232, 7, 11, 29, 23, 8, 57, 32, 64, 34, 0, 0, 102,
                    227])
SPEZI_CONTINUOUS = bytes([28, 95, 0, 90, 0, 32, 0, 0, 0, 0, 87, 240])
SPEZI_CONTINUOUS_FULL = bytes([31, 222, 243, 202, 243, 202, 243, 90, 245, 212, 243, 178, 242,
                               32, 1, 0, 0, 0, 122, 227])
SPEZI_FEATURES = bytes([163, 0, 64, 16, 128, 1, 0])


def test_plx_spot_check_published_example_spezi():
    # SpO2 94.0 % (SFLOAT 0xF3AC), pulse 147.0 (0xF5BE), 2024-11-29 23:08:57, measurement
    # status "measurement ongoing" + "questionable measurement detected", device and sensor
    # status "equipment malfunction" + "low perfusion", pulse amplitude index 8.70 (0xE366).
    observations = plx(SPEZI_SPOT, ctx(source=SPOT))
    check_common(observations, SPEZI_SPOT, ble_pulse_oximeter)
    spo2, pulse, pai = observations
    assert (spo2.code, str(spo2.value), spo2.unit) == (KNOWN["spo2"].code, "94.0", "%")
    assert (pulse.code, str(pulse.value), pulse.unit) == (KNOWN["pulse"].code, "147.0", "/min")
    assert (pai.code, str(pai.value), pai.unit) == (KNOWN["perfusion_index"].code, "8.70", "%")
    assert spo2.effective == datetime(2024, 11, 29, 23, 8, 57, tzinfo=COPENHAGEN)
    assert spo2.flags == ("measurement-ongoing", "questionable-measurement",
                          "equipment-malfunction", "low-perfusion")
    assert spo2.context == {"time_source": "device", "method": "self-measured",
                            "mode": "spot-check"}


def test_plx_continuous_published_examples_spezi():
    spo2, pulse, pai = plx(SPEZI_CONTINUOUS, ctx(source=CONT))
    assert (spo2.value, pulse.value, str(pai.value)) == (95, 90, "8.7")
    assert spo2.flags == ("measurement-ongoing",)
    assert spo2.effective == RECEIVED and spo2.context["time_source"] == "gateway"
    observations = plx(SPEZI_CONTINUOUS_FULL, ctx(source=CONT))
    check_common(observations, SPEZI_CONTINUOUS_FULL, ble_pulse_oximeter)
    spo2, pulse, pai = observations
    assert (str(spo2.value), str(pulse.value), str(pai.value)) == ("99.0", "97.0", "8.90")
    assert {k: v for k, v in spo2.context.items() if "_" in k and k != "time_source"} == {
        "spo2_fast": "97.0", "pulse_fast": "137.0", "spo2_slow": "98.0", "pulse_slow": "69.0"}
    assert spo2.flags == ("measurement-ongoing", "fully-qualified-data")
    # the simplest frame: [0, 100, 0, 90, 0] = SpO2 100, pulse 90
    assert [o.value for o in plx(bytes([0, 100, 0, 90, 0]), ctx(source=CONT))] == [100, 90]


def test_plx_features_say_which_conditions_are_detected():
    # SpeziBluetooth PLXTests: features 0x00A3 (measurement status and device-and-sensor status
    # support, SpO2PR-slow, multiple bonds); measurement status support "early estimated data"
    # + "calibration ongoing"; device and sensor status support "nonpulsatile signal" +
    # "questionable pulse".
    [spo2, *_] = plx(SPEZI_CONTINUOUS, ctx(source=CONT,
                                           features={uuid128(0x2A60): SPEZI_FEATURES}))
    assert spo2.context["status_supported"] == ("early-estimated-data calibration-ongoing "
                                                "nonpulsatile-signal questionable-pulse")
    [spo2, *_] = plx(SPEZI_CONTINUOUS, ctx(source=CONT,
                                           features={uuid128(0x2A60): b"\x00\x00"}))
    assert spo2.context["status_supported"] == ""
    [spo2, *_] = plx(SPEZI_CONTINUOUS, ctx(source=CONT,
                                           features={uuid128(0x2A60): SPEZI_FEATURES[:4]}))
    assert "status_supported" not in spo2.context
    assert spo2.context["features"].startswith("PLX Features ignored: frame ends before "
                                               "device and sensor status support")


@pytest.mark.parametrize("flags", range(32))
def test_plx_spot_check_every_layout(flags):
    frame = bytes([flags]) + sf(970, -1) + sf(72)
    if flags & 0x01:
        frame += dt(2026, 2, 28, 8, 0, 0)
    if flags & 0x02:
        frame += u16(1 << 15)   # invalid measurement detected
    if flags & 0x04:
        frame += (1 << 11).to_bytes(3, "little")  # sensor unconnected to user
    if flags & 0x08:
        frame += sf(25, -1)
    observations = plx(frame, ctx(source=SPOT))
    check_common(observations, frame, ble_pulse_oximeter)
    assert [o.value for o in observations[:2]] == [Decimal("97.0"), Decimal(72)]
    assert len(observations) == 2 + bool(flags & 0x08)
    device_time = flags & 0x01 and not flags & 0x10
    assert (observations[0].effective == RECEIVED) == (not device_time)
    assert ("invalid-measurement" in observations[0].flags) == bool(flags & 0x02)
    assert ("sensor-unconnected-to-user" in observations[0].flags) == bool(flags & 0x04)
    assert (observations[0].context.get("device_clock") == "not-set") == bool(flags & 0x10)


@pytest.mark.parametrize("flags", range(32))
def test_plx_continuous_every_layout(flags):
    frame = bytes([flags]) + sf(96) + sf(70)
    if flags & 0x01:
        frame += sf(95) + sf(71)
    if flags & 0x02:
        frame += sf(97) + sf(69)
    if flags & 0x04:
        frame += u16(1 << 13)   # measurement unavailable
    if flags & 0x08:
        frame += (1 << 5).to_bytes(3, "little")  # low perfusion
    if flags & 0x10:
        frame += sf(31, -1)
    observations = plx(frame, ctx(source=CONT))
    check_common(observations, frame, ble_pulse_oximeter)
    spo2 = observations[0]
    assert [o.value for o in observations[:2]] == [96, 70]
    assert len(observations) == 2 + bool(flags & 0x10)
    assert spo2.context.get("spo2_fast") == ("95" if flags & 0x01 else None)
    assert spo2.context.get("pulse_slow") == ("69" if flags & 0x02 else None)
    assert ("measurement-unavailable" in spo2.flags) == bool(flags & 0x04)
    assert ("low-perfusion" in spo2.flags) == bool(flags & 0x08)


def test_plx_clock_not_set_ignores_even_a_nonsense_time_stamp():
    frame = bytes([0x11]) + sf(98) + sf(60) + dt(2000, 0, 0, 99, 99, 99)
    spo2, _ = plx(frame, ctx(source=SPOT))
    assert spo2.effective == RECEIVED
    assert spo2.context["device_clock"] == "not-set" and spo2.context["time_source"] == "gateway"


def test_plx_special_values_and_reserved_bits():
    frame = bytes([0xE6]) + sf(0x7FF) + sf(0x800 - 0x1000) + u16(0x001F) + b"\x00\x00\xff"
    spo2, pulse = plx(frame, ctx(source=SPOT))
    assert (spo2.value, spo2.absent) == (None, AbsentReason.NOT_A_NUMBER)
    assert (pulse.value, pulse.absent) == (None, AbsentReason.ERROR)
    assert spo2.flags == ()  # status bits 0-4 and 16-23 are reserved; flag bits 5-7 too
    frame = bytes([0x01]) + sf(96) + sf(70) + sf(0x7FE) + sf(-2046)
    [spo2, _] = plx(frame, ctx(source=CONT))
    assert spo2.context["spo2_fast"] == "positive-infinity"
    assert spo2.context["pulse_fast"] == "negative-infinity"


@pytest.mark.parametrize("frame, source, reason", [
    (SPEZI_SPOT, "", "characteristic (none) is neither PLX Spot-check"),
    (SPEZI_SPOT, uuid128(0x2A60), "is neither PLX Spot-check (0x2A5E) nor PLX Continuous"),
    (b"", SPOT, "frame ends before flags"),
    (bytes([0, 96, 0, 70]), CONT, "frame ends before pulse rate: needs bytes 3..4, has 4"),
    (SPEZI_SPOT[:-3], SPOT, "frame ends before device and sensor status"),
    (SPEZI_CONTINUOUS + b"\x00", CONT, "1 unexpected byte(s) after the fields that flags 0x1c"),
    (bytes([1]) + sf(96) + sf(70) + sf(95), CONT, "frame ends before pulse rate fast"),
    (bytes([1]) + sf(96) + sf(70) + dt(2026, 4, 31), SPOT, "invalid date-time 2026-04-31"),
    (SPEZI_SPOT, CONT, "unexpected byte(s)"),  # a spot-check frame is not a continuous one
])
def test_plx_bad_frames(frame, source, reason):
    with pytest.raises(FrameError) as exc:
        plx(frame, ctx(source=source))
    assert reason in str(exc.value)


# --- glucose --------------------------------------------------------------------------------

glucose = ble_glucose.parse


GLUCOSE_BASE, GLUCOSE_55 = dt(2026, 2, 28, 7, 45, 0), sf(55, -4)


def glucose_frame(flags, sequence=7, base=GLUCOSE_BASE, offset=-15, concentration=GLUCOSE_55,
                  nibbles=0x11, status=0x0001):
    frame = bytes([flags]) + u16(sequence) + base
    if flags & 0x01:
        frame += offset.to_bytes(2, "little", signed=True)
    if flags & 0x02:
        frame += concentration + bytes([nibbles])
    if flags & 0x08:
        frame += u16(status)
    return frame


def test_glucose_published_example_nordic():
    # NordicSemiconductor/Android-BLE-Common-Library, GlucoseMeasurementDataCallbackTest:
    # flags 0b011011 (time offset, concentration+type+location, kg/L, status, context follows),
    # sequence 1, 2019-02-27 11:10:30, offset -5 min, concentration SFLOAT 30 (kg/L),
    # type 2 capillary plasma / location 1 finger, status 0x0105.
    # The status bits, per the Glucose Service: bit 0 battery low, bit 2 sample size
    # insufficient, bit 8 sensor temperature too low (Nordic's comment calls bit 2 "device
    # fault", and its GlucoseStatus swaps bits 5 and 6 - Wireshark's dissector and the
    # specification have bit 5 = result higher, bit 6 = result lower than the device can process).
    frame = bytes([0b011011, 1, 0, 0xE3, 0x07, 2, 27, 11, 10, 30, 0xFB, 0xFF, 30, 0, 0x12,
                   0b101, 0b1])
    [reading] = glucose(frame, ctx(source=uuid128(0x2A18)))
    check_common([reading], frame, ble_glucose)
    assert reading.effective == datetime(2019, 2, 27, 11, 5, 30, tzinfo=COPENHAGEN)
    assert reading.code == KNOWN["glucose_cap_plasma"].code
    assert (reading.value, reading.unit) == (Decimal(3_000_000), "mg/dL")  # 30 kg/L x 10^5
    assert reading.flags == ("battery-low", "sample-size-insufficient",
                             "sensor-temperature-too-low")
    assert reading.context == {
        "sequence": "1", "method": "self-measured", "time_offset_min": "-5",
        "sample_type": "capillary-plasma", "sample_location": "finger",
        "context_follows": "true", "time_source": "device"}
    # Nordic's invalid frame: the time offset is announced but missing, so the fields after
    # it run one short of the sensor status annunciation.
    invalid = bytes([0b011011, 0, 0, 0xE2, 0x07, 4, 26, 11, 9, 30, 30, 0, 0x12, 0b101, 0b1])
    with pytest.raises(FrameError, match="frame ends before sensor status annunciation"):
        glucose(invalid, CTX)


@pytest.mark.parametrize("flags, sfloat_bytes, value, unit", [
    (0x02, sf(95, -5), "95", "mg/dL"),      # 95 x 10^-5 kg/L = 95 mg/dL
    (0x02, sf(1021, -6), "102.1", "mg/dL"),  # 0.001021 kg/L = 102.1 mg/dL
    (0x06, sf(55, -4), "5.5", "mmol/L"),     # 0.0055 mol/L = 5.5 mmol/L
    (0x06, sf(123, -5), "1.23", "mmol/L"),   # digits kept exactly, no float rounding
    (0x02, sf(12, -4), "1.2E+2", "mg/dL"),   # 0.0012 kg/L: two significant digits, kept
])
def test_glucose_units_convert_exactly(flags, sfloat_bytes, value, unit):
    [reading] = glucose(glucose_frame(flags, concentration=sfloat_bytes), CTX)
    assert (str(reading.value), reading.unit) == (value, unit)


@pytest.mark.parametrize("nibble, key, name", [
    (1, "glucose", "capillary-whole-blood"), (2, "glucose_cap_plasma", "capillary-plasma"),
    (3, "glucose_ven_blood", "venous-whole-blood"), (4, "glucose_ven_plasma", "venous-plasma"),
    (5, "glucose_art_blood", "arterial-whole-blood"),
    (6, "glucose_art_plasma", "arterial-plasma"),
    (7, "glucose_und_blood", "undetermined-whole-blood"),
    (8, "glucose_und_plasma", "undetermined-plasma"), (9, "glucose_isf", "interstitial-fluid"),
    (10, "glucose_control", "control-solution"), (0, "glucose_gen", "reserved-0"),
    (15, "glucose_gen", "reserved-15"),
])
def test_glucose_sample_type_selects_the_code(nibble, key, name):
    [reading] = glucose(glucose_frame(0x02, nibbles=0x10 | nibble), CTX)
    assert reading.code == KNOWN[key].code
    assert reading.context["sample_type"] == name
    assert ("control-solution" in reading.flags) == (nibble == 10)


@pytest.mark.parametrize("nibble, location", [(1, "finger"), (2, "alternate-site"),
                                              (3, "earlobe"), (4, "control-solution"),
                                              (15, "not-available"), (7, "reserved-7")])
def test_glucose_sample_location(nibble, location):
    [reading] = glucose(glucose_frame(0x02, nibbles=nibble << 4 | 1), CTX)
    assert reading.context["sample_location"] == location
    assert ("control-solution" in reading.flags) == (nibble == 4)


@pytest.mark.parametrize("flags", range(32))
def test_glucose_every_layout(flags):
    frame = glucose_frame(flags)
    [reading] = glucose(frame, CTX)
    check_common([reading], frame, ble_glucose)
    assert reading.context["sequence"] == "7"
    minutes = -15 if flags & 0x01 else 0
    assert reading.effective == datetime(2026, 2, 28, 7, 45, tzinfo=COPENHAGEN) + timedelta(
        minutes=minutes)
    if flags & 0x02:
        # 55 x 10^-4 of either unit: 5.5 mmol/L, or 550 mg/dL with two significant digits
        expected = ("5.5", "mmol/L") if flags & 0x04 else ("5.5E+2", "mg/dL")
        assert (str(reading.value), reading.unit) == expected
    else:
        assert (reading.value, reading.absent) == (None, AbsentReason.ERROR)
        assert reading.code == KNOWN["glucose_gen"].code
    assert (reading.flags == ("battery-low",)) == bool(flags & 0x08)
    assert (reading.context.get("context_follows") == "true") == bool(flags & 0x10)


def test_glucose_every_status_bit_and_reserved_ones():
    [reading] = glucose(glucose_frame(0x08, status=0xFFFF), CTX)
    assert len(reading.flags) == 12  # bits 12-15 are reserved
    assert reading.flags[5:7] == ("result-above-device-range", "result-below-device-range")
    [reading] = glucose(glucose_frame(0xE8, status=0xF000), CTX)
    assert reading.flags == ()


def test_glucose_resent_records_keep_their_id():
    later = ctx(received=RECEIVED + timedelta(days=2))
    frame = glucose_frame(0x03)
    assert glucose(frame, CTX)[0].id == glucose(frame, later)[0].id
    # unknown base time (year 0): gateway time, but the id still comes from the record
    unknown = glucose_frame(0x02, base=dt(0, 0, 0))
    first, again = glucose(unknown, CTX)[0], glucose(unknown, later)[0]
    assert (first.effective, again.effective) == (RECEIVED, later.received)
    assert first.context["time_source"] == "gateway"
    assert first.id == again.id
    # a different sequence number is a different record
    assert glucose(glucose_frame(0x02, sequence=8, base=dt(0, 0, 0)), CTX)[0].id != first.id


def test_glucose_time_offset_crosses_midnight():
    frame = glucose_frame(0x01, base=dt(2026, 1, 1, 0, 10), offset=-20)
    assert glucose(frame, CTX)[0].effective == datetime(2025, 12, 31, 23, 50,
                                                        tzinfo=COPENHAGEN)


@pytest.mark.parametrize("frame, reason", [
    (b"", "frame ends before flags"),
    (bytes([0, 7]), "frame ends before sequence number: needs bytes 1..2, has 2"),
    (bytes([0, 7, 0]) + dt(2026, 1, 1)[:6], "frame ends before base time"),
    (glucose_frame(0x01)[:-1], "frame ends before time offset"),
    (glucose_frame(0x02)[:-1], "frame ends before type-sample location"),
    (glucose_frame(0x00) + b"\x00\x00", "2 unexpected byte(s) after the fields that flags 0x00"),
    (glucose_frame(0x00, base=dt(2026, 2, 29)), "invalid date-time 2026-02-29"),
    (glucose_frame(0x01, base=dt(9999, 12, 31, 23, 59), offset=120),
     "base time 9999-12-31T23:59:00+01:00 plus time offset 120 min is out of range"),
])
def test_glucose_bad_frames(frame, reason):
    with pytest.raises(FrameError) as exc:
        glucose(frame, CTX)
    assert reason in str(exc.value)


def test_glucose_rejects_the_context_characteristic():
    with pytest.raises(FrameError, match="is not Glucose Measurement"):
        glucose(glucose_frame(0), ctx(source=uuid128(0x2A34)))


# --- every parser, any bytes ----------------------------------------------------------------

FEATURES = st.dictionaries(
    st.sampled_from([uuid128(0x2A9E), uuid128(0x2A60), uuid128(0x2A38), uuid128(0x2A1D),
                     "2a60", "2A9E"]),
    st.binary(max_size=8), max_size=3)
SOURCES = st.sampled_from(["", SPOT, CONT, uuid128(0x2A9D), uuid128(0x2A37), uuid128(0x2A1C),
                           uuid128(0x2A18), "not-a-uuid"])
PARSERS = st.sampled_from([m.parse for m in DRIVERS])
# Frames: fully random bytes, and random bytes behind each plausible flags byte so that the
# optional fields are exercised far more often than by chance.
FRAMES = st.one_of(st.binary(max_size=40),
                   st.builds(lambda flags, rest: bytes([flags]) + rest,
                             st.integers(0, 255), st.binary(min_size=2, max_size=30)))


@given(parse=PARSERS, frame=FRAMES, source=SOURCES, features=FEATURES,
       tz=st.sampled_from([None, UTC, COPENHAGEN]))
def test_any_bytes_decode_or_are_rejected_with_a_reason(parse, frame, source, features, tz):
    context = ctx(source=source, features=features, device_tz=tz)
    try:
        observations = parse(frame, context)
    except FrameError as exc:
        assert str(exc)
    else:
        assert observations
        assert all(o.raw == frame for o in observations)
        assert len({o.id for o in observations}) == len(observations)
        assert all((o.value is None) != (o.absent is None) for o in observations)


@given(frame=st.binary(min_size=5, max_size=25))
def test_any_spot_check_frame_with_its_flags_decodes_or_says_why(frame):
    try:
        observations = plx(frame, ctx(source=SPOT))
    except FrameError as exc:
        assert str(exc).startswith(("frame ends before", "invalid date-time")) \
            or "unexpected byte(s)" in str(exc)
    else:
        assert [o.code.code for o in observations][:2] == ["150456", "149530"]


def test_rerunning_any_parser_gives_identical_observations():
    frames = [(ble_weight_scale.parse, weight_frame(0x0E), CTX),
              (ble_heart_rate.parse, bytes([0x10, 72, 0x48, 0x03]), CTX),
              (ble_thermometer.parse, bytes([0]) + fl(375, -1), CTX),
              (ble_pulse_oximeter.parse, SPEZI_SPOT, ctx(source=SPOT)),
              (ble_glucose.parse, glucose_frame(0x1F), CTX)]
    for parse, frame, context in frames:
        assert parse(frame, context) == parse(frame, context)


def test_ids_differ_between_patients_and_devices():
    frame = weight_frame(0x02)
    ids = {weigh(frame, ctx(patient=p, device=d))[0].id
           for p, d in itertools.product(("p-1", "p-2"), ("dev-1", "dev-2"))}
    assert len(ids) == 4
