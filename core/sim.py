"""Simulated patients and devices: a physiological model of one patient, the frame encoders
of every device telemon reads (the inverse of each parser), and `SimTransport`, which turns
the two into readings at a citizen's schedule, through the real parsers.

Everything runs and is tested without hardware: `sim_*` drivers (transport `sim`,
plugins/drivers/sim_devices.py) put simulated devices on an edge gateway, and
`telemon.testing` serves the same frames over a virtual BLE radio and a pty serial line, so
vendors test their own drivers against them.

The model (`PatientModel`)
    One patient: a `Baseline` per measure, a circadian (24 h) rhythm, a slow drift over days,
    measurement noise, and injectable `Event`s (COPD exacerbation, heart-failure
    decompensation, an AF episode; a low-back-pain flare, sudden hearing loss in one ear,
    hearing-aid non-use) with start, duration and severity. Besides vital signs it models
    the daily measures of the back-pain and hearing modules (pain NRS, Roland-Morris score,
    steps, exercise adherence, hearing-aid use, each ear's hearing level); telemon.cohorts
    turns them into readings, questionnaire answers and audiograms. `sample(code, at)` is
    a reading as a device would take it at `at`; it depends only on (seed, code, at): the
    same seed gives the same patient whatever is asked in whatever order. `true_value` is
    the same without measurement noise. `beats` / `rr_intervals` give a beat-to-beat
    timeline (sinus rhythm with respiratory sinus arrhythmia, or AF: irregular) for
    heart-rate straps and pleth waveforms. `PatientModel.for_scenario("copd-exacerbation",
    start=...)` places a scenario's events relative to `start` (SCENARIOS).

Encoders
    Pure functions, values -> bytes, one per frame layout a driver parses: the six Bluetooth
    SIG health profiles (`blood_pressure`, `weight_measurement`, `plx_spot_check`,
    `plx_continuous`, `heart_rate_measurement`, `temperature_measurement`,
    `glucose_measurement`, with `sfloat`, `float32`, `date_time`), Nonin serial formats 2, 7
    (`nonin_packet`) and 8 (`nonin_format8`), Contec CMS50D+ old (`contec_legacy_packet`) and
    new firmware (`contec_v2_package`). Any number argument may be an `AbsentReason` (the
    format's special value). Each encoder's docstring says what it rounds; values on the
    format's grid round-trip exactly through the real parser (tests/test_sim.py).

Device simulators (`SIMULATORS`)
    Per profile, a `telemon.drivers.Simulator`: the frame a device sends for a reading of the
    model at a time, the citizen's schedule (blood pressure morning and evening, weight each
    morning, ...), and for streaming devices a session of frames once a second.

`SimTransport`
    The transport of a `sim` driver, with the interface of the other transports: `status`,
    `counters`, `async run()` until `stop()` (safe from any thread). It takes readings at the
    schedule, `speed` times faster than real time if asked (deterministic for a seed), passes
    every frame through the driver's real parser (and the real framer, for stream devices),
    submits the observations and rejects what does not decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import numbers
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from telemon.drivers import Driver, FrameError, ParseContext, Simulator
from telemon.gatt import uuid128
from telemon.models import AbsentReason, Observation

if TYPE_CHECKING:
    from telemon.config import DeviceConfig

log = logging.getLogger("telemon.sim")

Number = Decimal | int | float | str | AbsentReason
HOME = ZoneInfo("Europe/Copenhagen")  # the model's default home zone (telemon's default)

# =========================================================================================
# Encoders: values -> bytes, the inverse of each parser
# =========================================================================================

SFLOAT_SPECIAL = {AbsentReason.NOT_A_NUMBER: 0x07FF, AbsentReason.ERROR: 0x0800,
                  AbsentReason.UNSUPPORTED: 0x0801, AbsentReason.POSITIVE_INFINITY: 0x07FE,
                  AbsentReason.NEGATIVE_INFINITY: 0x0802}
FLOAT_SPECIAL = {AbsentReason.NOT_A_NUMBER: 0x007FFFFF, AbsentReason.ERROR: 0x00800000,
                 AbsentReason.UNSUPPORTED: 0x00800001,
                 AbsentReason.POSITIVE_INFINITY: 0x007FFFFE,
                 AbsentReason.NEGATIVE_INFINITY: 0x00800002}


def decimal(value: Decimal | int | float | str) -> Decimal:
    """A number as a Decimal; a float (numpy's too) by its shortest repr (36.6 ->
    Decimal('36.6'))."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a bool is not a number")
    if isinstance(value, numbers.Integral):
        return Decimal(int(value))
    if isinstance(value, numbers.Real):
        return Decimal(repr(float(value)))
    return Decimal(value)


def rounded(value: float | Decimal, step: str | Decimal) -> Decimal:
    """`value` rounded (half even) to a multiple of `step`, with step's decimals:
    rounded(82.437, "0.1") -> Decimal('82.4'), rounded(0.83, "0.005") -> Decimal('0.830')."""
    step = Decimal(step)
    return ((decimal(value) / step).to_integral_value(ROUND_HALF_EVEN) * step).quantize(step)


def _mantissa(value: Number, *, max_mantissa: int, exponents: tuple[int, int]) -> tuple[int, int]:
    """(mantissa, exponent) of a decimal number, exactly; ValueError when it does not fit."""
    number = decimal(value)  # type: ignore[arg-type]
    if not number.is_finite():
        raise ValueError(f"{value} is not finite: give an AbsentReason for special values")
    sign, digits, exponent = number.as_tuple()
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    low, high = exponents
    while (abs(mantissa) > max_mantissa or exponent < low) and exponent < high:
        if mantissa % 10:
            break
        mantissa //= 10
        exponent += 1
    while exponent > high and abs(mantissa) * 10 <= max_mantissa:
        mantissa *= 10
        exponent -= 1
    if abs(mantissa) > max_mantissa or not low <= exponent <= high:
        raise ValueError(f"{value} does not fit a {max_mantissa.bit_length() + 1}-bit mantissa "
                         f"with exponent {low}..{high}: round it first")
    return mantissa, exponent


def sfloat(value: Number) -> bytes:
    """IEEE 11073-20601 SFLOAT (16 bit: 4-bit exponent, 12-bit mantissa), little-endian.
    Exact: Decimal('36.6') -> mantissa 366, exponent -1; an AbsentReason -> its special value;
    a value needing more than 12 bits of mantissa raises ValueError."""
    if isinstance(value, AbsentReason):
        return SFLOAT_SPECIAL[value].to_bytes(2, "little")
    mantissa, exponent = _mantissa(value, max_mantissa=2045, exponents=(-8, 7))
    return ((exponent & 0xF) << 12 | (mantissa & 0xFFF)).to_bytes(2, "little")


def float32(value: Number) -> bytes:
    """IEEE 11073-20601 FLOAT (32 bit: 8-bit exponent, 24-bit mantissa), little-endian."""
    if isinstance(value, AbsentReason):
        return FLOAT_SPECIAL[value].to_bytes(4, "little")
    mantissa, exponent = _mantissa(value, max_mantissa=(1 << 23) - 3, exponents=(-128, 127))
    return ((exponent & 0xFF) << 24 | (mantissa & 0xFFFFFF)).to_bytes(4, "little")


def date_time(moment: datetime | None) -> bytes:
    """The 7-byte Date Time: the wall-clock fields of `moment` as the device's clock shows
    them (convert to the device's zone first); None -> year 0, "unknown"."""
    if moment is None:
        return bytes(7)
    return (moment.year.to_bytes(2, "little")
            + bytes([moment.month, moment.day, moment.hour, moment.minute, moment.second]))


def _u(value: int, size: int, what: str, signed: bool = False) -> bytes:
    try:
        return int(value).to_bytes(size, "little", signed=signed)
    except OverflowError:
        raise ValueError(f"{what} {value} does not fit {size} byte(s)") from None


def _steps(value: Number, step: Decimal) -> int:
    """`value` in units of `step`, rounded half even (a device's field resolution)."""
    return int((decimal(value) / step).to_integral_value(ROUND_HALF_EVEN))  # type: ignore[arg-type]


def blood_pressure(systolic: Number, diastolic: Number, mean: Number, *, kpa: bool = False,
                   time: datetime | None = None, pulse: Number | None = None,
                   user: int | None = None, status: int | None = None) -> bytes:
    """Blood Pressure Measurement (0x2A35): flags | systolic, diastolic, MAP (SFLOAT) |
    [time stamp] | [pulse rate (SFLOAT)] | [user id, 0xFF unknown] | [measurement status:
    bit 0 body movement, 1 cuff loose, 2 irregular pulse, 3-4 pulse rate range (1 above,
    2 below), 5 improper position]. Pressures in mmHg, or kPa with `kpa`. Exact."""
    flags = (0x01 if kpa else 0) | (0x02 if time else 0) | (0x04 if pulse is not None else 0) \
        | (0x08 if user is not None else 0) | (0x10 if status is not None else 0)
    frame = bytes([flags]) + sfloat(systolic) + sfloat(diastolic) + sfloat(mean)
    if time:
        frame += date_time(time)
    if pulse is not None:
        frame += sfloat(pulse)
    if user is not None:
        frame += _u(user, 1, "user id")
    if status is not None:
        frame += _u(status, 2, "measurement status")
    return frame


WEIGHT_STEP = {False: Decimal("0.005"), True: Decimal("0.01")}  # kg, lb
HEIGHT_STEP = {False: Decimal("0.001"), True: Decimal("0.1")}  # m, in


def weight_measurement(weight: Number | None, *, imperial: bool = False,
                       time: datetime | None = None, user: int | None = None,
                       bmi: Number | None = None, height: Number | None = None) -> bytes:
    """Weight Measurement (0x2A9D): flags | weight (uint16: 0.005 kg, or 0.01 lb when
    `imperial`; None -> 0xFFFF "measurement unsuccessful") | [time stamp] | [user id] |
    [BMI (0.1 kg/m2) and height (0.001 m or 0.1 in)]. Weight, BMI and height are rounded to
    those steps, as the scale's own fields are."""
    if (bmi is None) != (height is None):
        raise ValueError("BMI and height go together (one flag announces both)")
    flags = (0x01 if imperial else 0) | (0x02 if time else 0) \
        | (0x04 if user is not None else 0) | (0x08 if bmi is not None else 0)
    raw = 0xFFFF if weight is None else _steps(weight, WEIGHT_STEP[imperial])
    if raw > 0xFFFF or raw < 0 or (weight is not None and raw == 0xFFFF):
        raise ValueError(f"weight {weight} is outside the field (0 to 655.34 kg / lb)")
    frame = bytes([flags]) + _u(raw, 2, "weight")
    if time:
        frame += date_time(time)
    if user is not None:
        frame += _u(user, 1, "user id")
    if bmi is not None and height is not None:
        frame += _u(_steps(bmi, Decimal("0.1")), 2, "BMI")
        frame += _u(_steps(height, HEIGHT_STEP[imperial]), 2, "height")
    return frame


def weight_scale_feature(*, time_stamp: bool = True, multiple_users: bool = False,
                         bmi: bool = False, weight_resolution: int = 0,
                         height_resolution: int = 0) -> bytes:
    """Weight Scale Feature (0x2A9E, read at connect): bit 0 time stamp, 1 multiple users,
    2 BMI; bits 3-6 weight resolution (3 = 0.1 kg), bits 7-9 height resolution."""
    value = (int(time_stamp) | int(multiple_users) << 1 | int(bmi) << 2
             | (weight_resolution & 0x0F) << 3 | (height_resolution & 0x07) << 7)
    return value.to_bytes(4, "little")


def plx_spot_check(spo2: Number, pulse: Number, *, time: datetime | None = None,
                   clock_not_set: bool = False, measurement_status: int | None = None,
                   sensor_status: int | None = None, pai: Number | None = None) -> bytes:
    """PLX Spot-check Measurement (0x2A5E): flags | SpO2, pulse rate (SFLOAT) | [time stamp,
    bit 0] | [measurement status uint16, bit 1] | [device and sensor status uint24, bit 2] |
    [pulse amplitude index SFLOAT, bit 3]; bit 4 "device clock not set". Exact."""
    flags = (0x01 if time else 0) | (0x02 if measurement_status is not None else 0) \
        | (0x04 if sensor_status is not None else 0) | (0x08 if pai is not None else 0) \
        | (0x10 if clock_not_set else 0)
    frame = bytes([flags]) + sfloat(spo2) + sfloat(pulse)
    if time:
        frame += date_time(time)
    if measurement_status is not None:
        frame += _u(measurement_status, 2, "measurement status")
    if sensor_status is not None:
        frame += _u(sensor_status, 3, "device and sensor status")
    if pai is not None:
        frame += sfloat(pai)
    return frame


def plx_continuous(spo2: Number, pulse: Number, *, fast: tuple[Number, Number] | None = None,
                   slow: tuple[Number, Number] | None = None,
                   measurement_status: int | None = None, sensor_status: int | None = None,
                   pai: Number | None = None) -> bytes:
    """PLX Continuous Measurement (0x2A5F): flags | SpO2, pulse rate "normal" | [fast pair,
    bit 0] | [slow pair, bit 1] | [measurement status, bit 2] | [device and sensor status,
    bit 3] | [pulse amplitude index, bit 4]. Exact."""
    flags = (0x01 if fast else 0) | (0x02 if slow else 0) \
        | (0x04 if measurement_status is not None else 0) \
        | (0x08 if sensor_status is not None else 0) | (0x10 if pai is not None else 0)
    frame = bytes([flags]) + sfloat(spo2) + sfloat(pulse)
    for pair in (fast, slow):
        if pair:
            frame += sfloat(pair[0]) + sfloat(pair[1])
    if measurement_status is not None:
        frame += _u(measurement_status, 2, "measurement status")
    if sensor_status is not None:
        frame += _u(sensor_status, 3, "device and sensor status")
    if pai is not None:
        frame += sfloat(pai)
    return frame


def heart_rate_measurement(rate: int, *, rr: Sequence[Number] = (), energy: int | None = None,
                           contact: bool | None = None, wide: bool | None = None) -> bytes:
    """Heart Rate Measurement (0x2A37): flags | heart rate (uint8, or uint16 when `wide` or
    above 255) | [energy expended uint16 kJ, bit 3] | [RR-intervals, bit 4: seconds, sent as
    uint16 counts of 1/1024 s, rounded]. `contact`: None "not supported" (bits 1-2 = 0),
    True "detected" (3), False "not detected" (2)."""
    wide = rate > 0xFF if wide is None else wide
    contact_bits = 0 if contact is None else (3 if contact else 2)
    flags = (0x01 if wide else 0) | contact_bits << 1 | (0x08 if energy is not None else 0) \
        | (0x10 if rr else 0)
    frame = bytes([flags]) + _u(rate, 2 if wide else 1, "heart rate")
    if energy is not None:
        frame += _u(energy, 2, "energy expended")
    for interval in rr:
        frame += _u(_steps(interval, Decimal(1) / 1024), 2, "RR-interval")
    return frame


def temperature_measurement(value: Number, *, fahrenheit: bool = False,
                            time: datetime | None = None, site: int | None = None) -> bytes:
    """Temperature Measurement (0x2A1C): flags | temperature (FLOAT; Celsius, or Fahrenheit
    with `fahrenheit`) | [time stamp, bit 1] | [temperature type, bit 2: 1 armpit, 2 body,
    3 ear, 4 finger, 5 GI tract, 6 mouth, 7 rectum, 8 toe, 9 tympanum]. Exact."""
    flags = (0x01 if fahrenheit else 0) | (0x02 if time else 0) | (0x04 if site is not None else 0)
    frame = bytes([flags]) + float32(value)
    if time:
        frame += date_time(time)
    if site is not None:
        frame += _u(site, 1, "temperature type")
    return frame


def glucose_measurement(sequence: int, base_time: datetime | None,
                        concentration: Number | None = None, *, mmol: bool = True,
                        sample_type: int = 1, location: int = 1, time_offset: int | None = None,
                        status: int | None = None, context_follows: bool = False) -> bytes:
    """Glucose Measurement (0x2A18): flags | sequence (uint16) | base time | [time offset,
    sint16 minutes, bit 0] | [concentration SFLOAT + type/location nibbles, bit 1] | [sensor
    status annunciation uint16, bit 3]; bit 2 unit (mol/L), bit 4 context follows.
    `concentration` in mmol/L (sent as mol/L) or, with mmol=False, mg/dL (sent as kg/L):
    exact, since both are powers of ten. Type 1 capillary whole blood, location 1 finger."""
    flags = (0x01 if time_offset is not None else 0) | (0x02 if concentration is not None else 0) \
        | (0x04 if mmol else 0) | (0x08 if status is not None else 0) \
        | (0x10 if context_follows else 0)
    frame = bytes([flags]) + _u(sequence, 2, "sequence number") + date_time(base_time)
    if time_offset is not None:
        frame += _u(time_offset, 2, "time offset", signed=True)
    if concentration is not None:
        if isinstance(concentration, AbsentReason):
            frame += sfloat(concentration)
        else:
            frame += sfloat(decimal(concentration).scaleb(-3 if mmol else -5))  # type: ignore[arg-type]
        if not (0 <= sample_type <= 15 and 0 <= location <= 15):
            raise ValueError("sample type and location are 4-bit values")
        frame += bytes([location << 4 | sample_type])
    if status is not None:
        frame += _u(status, 2, "sensor status annunciation")
    return frame


# --- serial pulse oximeters -----------------------------------------------------------------

NONIN_FRAMES = 25  # frames per packet; 3 packets a second
NONIN_MISSING_SPO2, NONIN_MISSING_HR = 127, 511
NONIN_PERFUSION = {"green": 0b01, "red": 0b10, "yellow": 0b11}  # STATUS bits 2..1


def nonin_frame(data_format: int, status: int, value: int, pleth: int) -> bytes:
    """One 5-byte frame. Format 2: 01 | STATUS | PLETH (8 bit) | FLOAT | CHK; format 7:
    STATUS | PLETH MSB | PLETH LSB | FLOAT | CHK; CHK = sum of bytes 0-3 mod 256."""
    if data_format == 2:
        body = bytes([0x01, status, pleth & 0xFF, value])
    elif data_format == 7:
        body = bytes([status, pleth >> 8 & 0xFF, pleth & 0xFF, value])
    else:
        raise ValueError(f"Nonin frames are format 2 or 7, not {data_format}")
    return body + bytes([sum(body) & 0xFF])


def nonin_packet(spo2: int | None, pulse: int | None, *, data_format: int = 2,
                 status: int | Sequence[int] = 0, pleth: Sequence[int] | None = None,
                 firmware: int = 0x29, stat2: int = 0, timer: int = 0) -> bytes:
    """One 25-frame packet (1/3 s) of Nonin format 2 or 7. `status`: STATUS bits 6-1 (0x40
    sensor disconnected, 0x20 artifact, 0x10 out of track, 0x08 sensor alarm, bits 2-1
    perfusion), for all frames or one per frame; bit 7 and the SYNC bit (frame 0) are added.
    FLOAT bytes: 0/1 HR MSB/LSB (HR bits 8-7 / 6-0), 2 SpO2, 3 firmware, 5/6 a packet counter
    (the 3 Hz timer: layout unverified, not decoded), 7 STAT2 (bit 0 low battery, bit 5
    SmartPoint), and the display / fast / 8-beat copies of SpO2 and HR (8-10, 13-16, 19-22).
    None -> the missing-data codes 127 (SpO2) / 511 (HR)."""
    spo2_raw = NONIN_MISSING_SPO2 if spo2 is None else int(spo2)
    hr = NONIN_MISSING_HR if pulse is None else int(pulse)
    if not 0 <= spo2_raw <= 127 or not 0 <= hr <= 511:
        raise ValueError(f"SpO2 {spo2} / HR {pulse} outside the format's 7 / 9 bits")
    floats = [0] * NONIN_FRAMES
    msb, lsb = hr >> 7 & 0x03, hr & 0x7F
    floats[0], floats[1], floats[2], floats[3] = msb, lsb, spo2_raw, firmware & 0xFF
    floats[5], floats[6], floats[7] = timer >> 7 & 0x7F, timer & 0x7F, stat2 & 0xFF
    for k in (8, 9, 10, 15, 16):
        floats[k] = spo2_raw
    for high, low in ((13, 14), (19, 20), (21, 22)):
        floats[high], floats[low] = msb, lsb
    statuses = [status] * NONIN_FRAMES if isinstance(status, int) else list(status)
    waves = list(pleth) if pleth is not None else [0x80 if data_format == 2 else 0x4000] * 25
    if len(statuses) != NONIN_FRAMES or len(waves) != NONIN_FRAMES:
        raise ValueError("status and pleth need one value per frame (25)")
    return b"".join(
        nonin_frame(data_format, 0x80 | (statuses[k] & 0x7E) | (1 if k == 0 else 0), floats[k],
                    waves[k])
        for k in range(NONIN_FRAMES))


def nonin_format8(spo2: int | None, pulse: int | None, *, status: int = 0,
                  status2: int = 0) -> bytes:
    """Format 8 (4 bytes a second): STATUS (bit 7 set; 0x40 sensor disconnected, 0x20 out of
    track, 0x10 low perfusion, 0x08 marginal perfusion, 0x04 artifact; bits 1-0 HR bits 8-7)
    | HR bits 6-0 | SpO2 | STATUS2 (0x20 SmartPoint, 0x08 sensor alarm, 0x01 low battery)."""
    hr = NONIN_MISSING_HR if pulse is None else int(pulse)
    spo2_raw = NONIN_MISSING_SPO2 if spo2 is None else int(spo2)
    if not 0 <= spo2_raw <= 127 or not 0 <= hr <= 511:
        raise ValueError(f"SpO2 {spo2} / HR {pulse} outside the format's 7 / 9 bits")
    return bytes([0x80 | (status & 0x7C) | hr >> 7, hr & 0x7F, spo2_raw, status2 & 0x7F])


CONTEC_MISSING_SPO2, CONTEC_MISSING_PULSE = 127, 255


def contec_legacy_packet(spo2: int | None, pulse: int | None, *, pleth: int = 0x40,
                         signal: int = 5, bar: int = 3, beep: bool = False,
                         dropping: bool = False, finger_out: bool = False,
                         searching: bool = False, sensor_error: bool = False) -> bytes:
    """Contec CMS50D+ old firmware, one 5-byte live packet (60 a second): sync 0x80 | beep
    0x40 | SpO2 dropping 0x20 | finger out 0x10 | signal strength (4 bits); pleth (7 bits);
    pulse bit 7 (as 0x40) | searching 0x20 | sensor error 0x10 | bar graph (4 bits); pulse
    bits 6-0; SpO2 (7 bits). None -> the no-value codes 127 / 255."""
    rate = CONTEC_MISSING_PULSE if pulse is None else int(pulse)
    oxygen = CONTEC_MISSING_SPO2 if spo2 is None else int(spo2)
    if not 0 <= rate <= 255 or not 0 <= oxygen <= 127:
        raise ValueError(f"pulse {pulse} / SpO2 {spo2} outside the packet's 8 / 7 bits")
    first = 0x80 | (0x40 if beep else 0) | (0x20 if dropping else 0) \
        | (0x10 if finger_out else 0) | (signal & 0x0F)
    third = (rate & 0x80) >> 1 | (0x20 if searching else 0) | (0x10 if sensor_error else 0) \
        | (bar & 0x0F)
    return bytes([first, pleth & 0x7F, third, rate & 0x7F, oxygen])


def contec_v2_package(spo2: int | None, pulse: int | None, *, pleth: int = 0x40,
                      signal: int = 5, finger_out: bool = False,
                      searching: bool = False) -> bytes:
    """Contec CMS50D+ firmware 4.6+, one 9-byte live package (type 0x01): 01 | high byte
    (0x80, bit j = bit 7 of data byte j+1) | d1 signal | d2 pleth | d3 (unknown, 0) | d4
    pulse | d5 SpO2 | FF FF, every data byte with bit 7 set on the wire. Bit 7 of d1 is the
    finger-out flag and bit 7 of d2 "searching" (high-byte bits 0 and 1), so signal and
    pleth are 7-bit here. None -> the no-value codes 127 / 255."""
    rate = CONTEC_MISSING_PULSE if pulse is None else int(pulse)
    oxygen = CONTEC_MISSING_SPO2 if spo2 is None else int(spo2)
    if not 0 <= rate <= 255 or not 0 <= oxygen <= 255:
        raise ValueError(f"pulse {pulse} / SpO2 {spo2} outside a byte")
    data = [(signal & 0x0F) | (0x80 if finger_out else 0),
            (pleth & 0x7F) | (0x80 if searching else 0), 0, rate, oxygen, 0xFF, 0xFF]
    high = 0x80
    for j, value in enumerate(data):
        if value & 0x80:
            high |= 1 << j
    return bytes([0x01, high, *(0x80 | d & 0x7F for d in data)])


# Commands of the v2 firmware (Contec protocol V7.0; see serial_contec's docstring).
CONTEC_START_LIVE = bytes.fromhex("7d81a1808080808080")
CONTEC_KEEP_ALIVE = bytes.fromhex("7d81af808080808080")


# =========================================================================================
# The physiological model
# =========================================================================================
#
# Sources (CLINICAL.md unless marked otherwise; "assumption" = a modelling choice that no
# source here fixes, kept modest so that a stable patient stays plausible):
# * day-to-day variation in stable COPD: SD of heart rate ~5 /min and of SpO2 ~1 % (Hurst et
#   al. 2010, BMC Pulm Med 10:52, domiciliary pulse oximetry; not in CLINICAL.md). Split
#   here between measurement noise and the slow drift.
# * body temperature: mean oral 36.8 C, nadir 6 AM, peak 4-6 PM, amplitude of diurnal
#   variation 0.5 C (Mackowiak et al. 1992, JAMA 268:1578; not in CLINICAL.md). Taken as
#   peak-to-trough: a 0.25 C sinusoid around the mean.
# * blood pressure dips in sleep: mean dip 18/15 mmHg, sleep/awake ratio 0.87/0.82
#   (Hinderliter et al. 2013, J Am Soc Hypertens; a > 10 % fall is "dipping"; not in
#   CLINICAL.md). Modelled as an 8/6 mmHg sinusoid with its trough at 3 AM: a dipper's
#   ~10 % systolic fall, milder than that study's mean.
# * pulse, SpO2, respiratory rate and FEV1 lowest in the early morning hours; weight lowest
#   in the morning: assumptions (small amplitudes).

CODES = ("spo2", "pulse", "heart_rate", "pulse_bp", "weight", "bp_sys", "bp_dia", "bp_mean",
         "temperature", "glucose", "resp_rate", "fev1",
         # the back-pain and hearing modules' measures (appended: earlier indexes, and so
         # every earlier reading, stay as they were)
         "pain_nrs", "rmdq_score", "steps", "exercise_adherence", "hearing_aid_use",
         "hearing_left", "hearing_right")
ALIASES = {"heart_rate": "pulse", "pulse_bp": "pulse"}  # the same physiology, other devices
_CODE_INDEX = {code: index for index, code in enumerate(CODES)}


@dataclass(frozen=True)
class Baseline:
    """One patient's usual values (awake, at rest); the default is an older citizen with
    COPD and heart failure in telemonitoring: SpO2 94 % (TELBIL's < 95 % limit is "commonly
    lowered for chronic lung disease", CLINICAL.md), FEV1 1.5 L (moderate-severe COPD)."""

    spo2: float = 94.0  # %
    pulse: float = 76.0  # /min
    weight: float = 82.0  # kg
    bp_sys: float = 134.0  # mmHg
    bp_dia: float = 80.0  # mmHg
    temperature: float = 36.8  # Cel (oral; Mackowiak 1992)
    glucose: float = 6.0  # mmol/L, fasting
    resp_rate: float = 16.0  # /min
    fev1: float | None = 1.5  # L; None: no spirometry
    # Back pain and hearing. Assumptions unless cited: a citizen with persistent low back
    # pain on an ordinary day (pain NRS 0-10, Roland-Morris 0-24), an older adult's steps,
    # most of the prescribed exercises done; hearing-aid use ~10 h/day (Demant 2021,
    # CLINICAL.md); a moderate loss in each ear (PTA4 35-<50 dB HL, WHO 2021, CLINICAL.md).
    pain_nrs: float = 3.0
    rmdq_score: float = 8.0
    steps: float = 5000.0  # per day
    exercise_adherence: float = 80.0  # % of the day's prescribed exercise done
    hearing_aid_use: float = 10.0  # h/day
    hearing_left: float = 40.0  # dB HL, pure-tone average of 0.5, 1, 2, 4 kHz
    hearing_right: float = 40.0


# Circadian rhythm: (amplitude, local hour of the trough) of a 24 h sinusoid.
CIRCADIAN = {"spo2": (0.5, 4.0), "pulse": (5.0, 4.0), "weight": (0.3, 7.0),
             "bp_sys": (8.0, 3.0), "bp_dia": (6.0, 3.0), "temperature": (0.25, 6.0),
             "resp_rate": (1.0, 4.0), "fev1": (0.05, 4.0), "glucose": (0.0, 0.0),
             # daily self-reports, counts and logs, and hearing: no rhythm within the day
             "pain_nrs": (0.0, 0.0), "rmdq_score": (0.0, 0.0), "steps": (0.0, 0.0),
             "exercise_adherence": (0.0, 0.0), "hearing_aid_use": (0.0, 0.0),
             "hearing_left": (0.0, 0.0), "hearing_right": (0.0, 0.0)}
# Measurement noise (SD of one reading; truncated at 3 SD) by code.
NOISE = {"spo2": 0.8, "pulse": 4.0, "heart_rate": 2.0, "pulse_bp": 4.0, "weight": 0.25,
         "bp_sys": 6.0, "bp_dia": 4.0, "temperature": 0.12, "glucose": 0.4, "resp_rate": 1.5,
         "fev1": 0.08,
         # Hearing-aid use: the within-user day-to-day SD of data-logged use, 3.9 h (Demant
         # 2021, CLINICAL.md). Audiometric test-retest ~3 dB, the others' day-to-day spread:
         # assumptions.
         "pain_nrs": 1.0, "rmdq_score": 1.5, "steps": 1200.0, "exercise_adherence": 15.0,
         "hearing_aid_use": 3.9, "hearing_left": 3.0, "hearing_right": 3.0}
# Slow drift: the largest excursion of a sum of three slow sinusoids (periods 9, 23 and 53
# days, phases from the seed): the patient's good and bad weeks.
DRIFT = {"spo2": 0.6, "pulse": 3.0, "weight": 0.6, "bp_sys": 5.0, "bp_dia": 3.0,
         "temperature": 0.05, "glucose": 0.3, "resp_rate": 1.0, "fev1": 0.06,
         # appended after the others, so their drift phases (drawn in this order) stay
         "pain_nrs": 0.5, "rmdq_score": 1.0, "steps": 500.0, "exercise_adherence": 5.0,
         "hearing_aid_use": 1.0, "hearing_left": 1.0, "hearing_right": 1.0}
DRIFT_PERIODS_DAYS = (9.0, 23.0, 53.0)
MEALS = (8.0, 12.5, 18.5)  # local hours; glucose peaks ~1 h later (assumption)
LIMITS = {"spo2": (50.0, 100.0), "pulse": (25.0, 220.0), "weight": (10.0, 400.0),
          "bp_sys": (60.0, 260.0), "bp_dia": (30.0, 160.0), "temperature": (34.0, 42.0),
          "glucose": (1.0, 40.0), "resp_rate": (4.0, 60.0), "fev1": (0.2, 6.0),
          "pain_nrs": (0.0, 10.0), "rmdq_score": (0.0, 24.0), "steps": (0.0, 40000.0),
          "exercise_adherence": (0.0, 100.0), "hearing_aid_use": (0.0, 24.0),
          "hearing_left": (-10.0, 120.0), "hearing_right": (-10.0, 120.0)}

# Event effects at severity 1, at the height of the event (the envelope scales them):
EFFECTS: dict[str, dict[str, float]] = {
    # COPD exacerbation. Direction and detectability: SpO2 falls and heart rate rises, both
    # detectable just before onset and greatest 2-3 days after symptom onset (Hurst 2010;
    # not in CLINICAL.md); SpO2 < 90 % agrees with exacerbations (Cooper et al. 2020,
    # CLINICAL.md): a 4 % fall takes a 94 % baseline to the 90 % line, so about half the
    # readings at the height of the event are below it. FEV1 falls (the FEV1 < 7-day mean
    # - 1.645 SD predictor, CLINICAL.md; here -15 % of baseline); infection may raise the
    # temperature past TELBIL's 37 C (CLINICAL.md) and the respiratory rate towards its
    # 24 /min limit. Magnitudes beyond those anchors: assumptions.
    "copd-exacerbation": {"spo2": -4.0, "pulse": 10.0, "temperature": 0.6, "resp_rate": 5.0,
                          "fev1": -0.15},  # fev1: a fraction of the baseline
    # Heart-failure decompensation: fluid retention. Weight +3 kg over the 3-day onset,
    # which trips the ESC rule of thumb (> 2 kg in 3 days, CLINICAL.md) at severity >= 0.7;
    # Chaudhry et al. 2007 (Circulation 116:1549; not in CLINICAL.md) saw a gradual gain
    # diverging from controls in the last week before admission, increases of 2.3-4.5 kg
    # carrying an adjusted OR of 4.5. Weight alone barely precedes decompensation
    # (Gyllensten 2016, CLINICAL.md), so pulse rises and SpO2 falls a little too
    # (assumptions), for rules that combine measures.
    "hf-decompensation": {"weight": 3.0, "pulse": 8.0, "spo2": -1.5, "resp_rate": 3.0},
    # Paroxysmal AF: the ventricular rate rises (assumption: +20 /min) and RR intervals turn
    # irregular: independent draws (a random series, turning-point ratio ~2/3, high CV(RR)
    # and nRMSSD: the AF features of Tateno & Glass 2001 and Dash 2009, CLINICAL.md).
    "af": {"pulse": 20.0},
    # Low-back-pain flare: pain and disability up by more than the minimal important change
    # (NRS 2 points, Roland-Morris 5 points; Ostelo 2008, CLINICAL.md), so a severity-1
    # flare is a change that matters; steps (-40 % of the baseline) and exercise adherence
    # (-40 points) fall with it (assumptions).
    "back-pain-flare": {"pain_nrs": 3.0, "rmdq_score": 6.0, "steps": -0.4,
                        "exercise_adherence": -40.0},
    # Sudden sensorineural hearing loss in one ear: +40 dB over 2 days at severity 1, so
    # from severity 0.75 on a loss of >= 30 dB within <= 3 days ("sudden", NICE NG98,
    # CLINICAL.md); the same at every frequency (assumption).
    "sudden-hearing-loss-left": {"hearing_left": 40.0},
    "sudden-hearing-loss-right": {"hearing_right": 40.0},
    # Hearing-aid non-use: daily use falls 7 h from its ~10 h/day (Demant 2021,
    # CLINICAL.md: no standard cut-off, so a rule must compare with the user's own level).
    "hearing-aid-non-use": {"hearing_aid_use": -7.0},
}
RELATIVE = {"fev1", "steps"}  # effects given as a fraction of the baseline
# Time course per kind: (onset, duration = onset + plateau, recovery), each in days.
# COPD: peak 2-3 days after onset (Hurst 2010); median recovery 6 days for PEF and 7 for
# symptoms (Seemungal et al. 2000, AJRCCM 161:1608; not in CLINICAL.md). HF: onset over 3
# days, treated after a week, diuresis over 4 days (assumption). AF: abrupt start and end.
TIME_COURSE = {"copd-exacerbation": (2.0, 5.0, 7.0), "hf-decompensation": (3.0, 7.0, 4.0),
               "af": (0.0, 2.0, 0.0),
               # assumptions: a flare over a day, a week at its worst, two weeks to settle;
               # a sudden loss over 2 days, partial recovery only after a month; non-use
               # setting in over 3 days, for 3 weeks
               "back-pain-flare": (1.0, 7.0, 14.0),
               "sudden-hearing-loss-left": (2.0, 30.0, 30.0),
               "sudden-hearing-loss-right": (2.0, 30.0, 30.0),
               "hearing-aid-non-use": (3.0, 21.0, 3.0)}
EVENT_KINDS = tuple(EFFECTS)


@dataclass(frozen=True)
class Event:
    """Something that happens to the patient: `kind` (one of EVENT_KINDS) from `start`. The
    effect rises linearly over `onset`, holds until `start + duration`, then falls linearly
    over `recovery` (defaults per kind: TIME_COURSE). `severity` scales the effects (1 is
    the documented size; 0.5 half of it)."""

    kind: str
    start: datetime
    duration: timedelta | None = None
    severity: float = 1.0
    onset: timedelta | None = None
    recovery: timedelta | None = None

    def __post_init__(self) -> None:
        if self.kind not in EFFECTS:
            raise ValueError(f"unknown event kind {self.kind!r}; one of {', '.join(EFFECTS)}")
        if self.start.tzinfo is None:
            raise ValueError("an event's start must be timezone-aware")
        onset, duration, recovery = (timedelta(days=d) for d in TIME_COURSE[self.kind])
        object.__setattr__(self, "onset", onset if self.onset is None else self.onset)
        object.__setattr__(self, "duration", duration if self.duration is None
                           else self.duration)
        object.__setattr__(self, "recovery", recovery if self.recovery is None
                           else self.recovery)
        if self.duration < self.onset or self.recovery < timedelta(0) or self.severity < 0:
            raise ValueError("an event needs duration >= onset >= 0, recovery >= 0 and "
                             "severity >= 0")

    @property
    def end(self) -> datetime:
        """When the effect is over (recovery complete)."""
        return self.start + self.duration + self.recovery  # type: ignore[operator]

    def level(self, at: datetime) -> float:
        """The effect's share at `at`: 0 before and after, severity at the height."""
        if at < self.start or at >= self.end:
            return 0.0
        elapsed = (at - self.start).total_seconds()
        onset = self.onset.total_seconds()  # type: ignore[union-attr]
        hold = self.duration.total_seconds()  # type: ignore[union-attr]
        if elapsed < onset:
            shape = elapsed / onset
        elif elapsed < hold:
            shape = 1.0
        else:
            shape = 1.0 - (elapsed - hold) / self.recovery.total_seconds()  # type: ignore[union-attr]
        return self.severity * shape


def _scenario_events(name: str, start: datetime, severity: float) -> tuple[Event, ...]:
    day = timedelta(days=1)
    return {
        "stable": (),
        "copd-exacerbation": (Event("copd-exacerbation", start + 3 * day, severity=severity),),
        "hf-decompensation": (Event("hf-decompensation", start + 3 * day, severity=severity),),
        "af": (Event("af", start + day, severity=severity),),
    }[name]


SCENARIOS = ("stable", "copd-exacerbation", "hf-decompensation", "af")
"""Scenario names (device config key `scenario`): a stable patient, or one whose event
begins 3 days after the start (an AF episode: after 1 day, for 2 days)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BEAT_GRID = 300.0  # s: the beat timeline follows the model's rate in these steps
_DAY_ANCHOR = time(3)  # the beat timeline restarts each day at 03:00 local (one odd interval)


def _micros(at: datetime) -> int:
    """Microseconds since 1970 as a non-negative seed part (exact, whatever the zone)."""
    if at.tzinfo is None:
        raise ValueError("times given to the model must be timezone-aware")
    return (at - _EPOCH) // timedelta(microseconds=1) + (1 << 62)


class PatientModel:
    """One simulated patient. Deterministic: every value is a function of (seed, code, time).

    `tz` is the patient's home zone (the circadian rhythm follows local time). `noise=False`
    makes `sample` equal `true_value`.
    """

    def __init__(self, seed: int = 0, *, baseline: Baseline | None = None,
                 events: Iterable[Event] = (), tz: tzinfo = HOME, noise: bool = True) -> None:
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.seed, self.baseline, self.tz, self.noise = seed, baseline or Baseline(), tz, noise
        self.events = tuple(events)
        rng = np.random.default_rng((seed, 7))
        # phases of the drift sinusoids, per measure (fixed for this patient)
        self._drift = {key: rng.uniform(0, 2 * math.pi, len(DRIFT_PERIODS_DAYS))
                       for key in DRIFT}
        self._beat_cache: dict[date, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_scenario(cls, name: str, *, start: datetime, seed: int = 0, severity: float = 1.0,
                     **options: Any) -> PatientModel:
        """A patient living scenario `name` (one of SCENARIOS) from `start`."""
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
        return cls(seed, events=_scenario_events(name, start, severity), **options)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{e.kind}@{e.start.isoformat()}" for e in self.events) or "stable"
        return f"PatientModel(seed={self.seed}, {kinds})"

    # -- the physiology -------------------------------------------------------------------

    def level(self, kind: str, at: datetime) -> float:
        """How strongly events of `kind` act at `at` (0: none; severity at the height)."""
        return max((e.level(at) for e in self.events if e.kind == kind), default=0.0)

    def in_af(self, at: datetime) -> bool:
        return self.level("af", at) > 0

    def true_value(self, code: str, at: datetime) -> float:
        """The patient's physiology at `at`, without measurement noise."""
        if at.tzinfo is None:
            raise ValueError("times given to the model must be timezone-aware")
        if code == "bp_mean":
            systolic, diastolic = (self.true_value(c, at) for c in ("bp_sys", "bp_dia"))
            return diastolic + (systolic - diastolic) / 3
        key = ALIASES.get(code, code)
        if key not in LIMITS:
            raise ValueError(f"the model has no {code!r}; one of {', '.join(CODES)}")
        base = getattr(self.baseline, key)
        if base is None:
            raise ValueError(f"this patient has no {key} baseline")
        local = at.astimezone(self.tz)
        hours = local.hour + local.minute / 60 + local.second / 3600
        amplitude, trough = CIRCADIAN[key]
        value = base - amplitude * math.cos(2 * math.pi * (hours - trough) / 24)
        if key == "glucose":
            value += sum(2.0 * math.exp(-((hours - meal - 1.0) ** 2) / (2 * 0.6 ** 2))
                         for meal in MEALS)
        days = (at - _EPOCH).total_seconds() / 86400
        phases = self._drift[key]
        value += DRIFT[key] * sum(math.sin(2 * math.pi * days / period + phase)
                                  for period, phase in zip(DRIFT_PERIODS_DAYS, phases,
                                                           strict=True)) / 3
        for event in self.events:
            effect = EFFECTS[event.kind].get(key)
            if effect:
                share = event.level(at)
                value += effect * share * (base if key in RELATIVE else 1.0)
        low, high = LIMITS[key]
        return min(max(value, low), high)

    def sample(self, code: str, at: datetime) -> float:
        """A reading of `code` taken at `at`: the physiology plus measurement noise (normal,
        truncated at 3 SD), the same for the same (seed, code, at)."""
        if code == "bp_mean":
            systolic, diastolic = (self.sample(c, at) for c in ("bp_sys", "bp_dia"))
            return diastolic + (systolic - diastolic) / 3
        value = self.true_value(code, at)
        if not self.noise:
            return value
        rng = np.random.default_rng((self.seed, _CODE_INDEX[code], _micros(at)))
        value += NOISE[code] * float(np.clip(rng.standard_normal(), -3.0, 3.0))
        low, high = LIMITS[ALIASES.get(code, code)]
        return min(max(value, low), high)

    # -- beat to beat ---------------------------------------------------------------------

    def beats(self, start: datetime, end: datetime) -> np.ndarray:
        """Times (POSIX seconds) of the heart beats in [start, end)."""
        first = (start.astimezone(self.tz) - timedelta(hours=3)).date()
        last = (end.astimezone(self.tz) - timedelta(hours=3)).date()
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        times = np.concatenate([self._day_beats(day) for day in days])
        low, high = start.timestamp(), end.timestamp()
        return times[(times >= low) & (times < high)]

    def rr_intervals(self, start: datetime, end: datetime) -> list[float]:
        """RR intervals (s) of the beats that end in [start, end), oldest first."""
        times = self.beats(start - timedelta(seconds=5), end)
        intervals = np.diff(times)
        ends = times[1:]
        return [float(x) for x in intervals[ends >= start.timestamp()]]

    def beat_phase(self, at: datetime, offsets: Sequence[float]) -> np.ndarray:
        """Where in its beat each moment `at + offset` (s) falls: 0 at a beat, rising to 1."""
        offsets = np.asarray(offsets, dtype=float)
        times = self.beats(at + timedelta(seconds=float(offsets.min()) - 5),
                           at + timedelta(seconds=float(offsets.max()) + 5))
        moments = at.timestamp() + offsets
        index = np.clip(np.searchsorted(times, moments, side="right"), 1, len(times) - 1)
        before, after = times[index - 1], times[index]
        return np.clip((moments - before) / (after - before), 0.0, 1.0)

    def _day_beats(self, day: date) -> np.ndarray:
        """The beat timeline of one day (03:00 local to 03:00 the next day). Sinus rhythm:
        RR = 60/rate, modulated by breathing (respiratory sinus arrhythmia, 3.5 %) plus a
        little noise; AF: independent RR draws with a CV of 12 % + 10 % x severity. The rate
        follows the model in 5-minute steps. Cached (a few days)."""
        with self._lock:
            if day in self._beat_cache:
                return self._beat_cache[day]
        start = datetime.combine(day, _DAY_ANCHOR, self.tz)
        end = datetime.combine(day + timedelta(days=1), _DAY_ANCHOR, self.tz)
        total = (end - start).total_seconds()
        steps = int(total // _BEAT_GRID) + 1
        moments = [start + timedelta(seconds=_BEAT_GRID * m) for m in range(steps)]
        rate = np.array([self.true_value("pulse", m) for m in moments])
        breathing = np.array([self.true_value("resp_rate", m) for m in moments]) / 60
        af = np.array([self.level("af", m) for m in moments])
        rng = np.random.default_rng((self.seed, 99, day.toordinal()))
        count = int(total * rate.max() / 60 * 1.3) + 16
        z = np.clip(rng.standard_normal(count), -2.5, 2.5)
        t = np.arange(1, count + 1) * (60 / rate.mean())
        for _ in range(4):  # fixed point: each RR depends on when its beat falls
            minute = np.clip((t // _BEAT_GRID).astype(int), 0, steps - 1)
            mean_rr = 60 / rate[minute]
            sinus = mean_rr * (1 + 0.035 * np.sin(2 * np.pi * breathing[minute] * t)
                               + 0.008 * z)
            fibrillation = mean_rr * (1 + (0.12 + 0.10 * af[minute]) * z)
            rr = np.clip(np.where(af[minute] > 0, fibrillation, sinus), 0.25, 2.5)
            t = np.cumsum(rr)
        beats = start.timestamp() + t[t < total]
        with self._lock:
            if len(self._beat_cache) >= 4:
                self._beat_cache.pop(next(iter(self._beat_cache)))
            self._beat_cache[day] = beats
        return beats


# =========================================================================================
# Device simulators: the frame a device sends for a reading of the model
# =========================================================================================


def _whole(value: float) -> int:
    return int(decimal(value).to_integral_value(ROUND_HALF_EVEN))


def _pleth_shape(phase: np.ndarray) -> np.ndarray:
    """A photoplethysmogram-like pulse, 0..1: a systolic peak and a dicrotic wave."""
    wave = np.exp(-(((phase - 0.18) / 0.09) ** 2)) + 0.35 * np.exp(-(((phase - 0.5) / 0.12) ** 2))
    return wave / 1.05


def bp_frame(model: PatientModel, at: datetime) -> bytes:
    """An upper-arm monitor's reading: mmHg, MAP from the cuff, its time stamp, pulse, user 1,
    and the irregular-pulse bit while the patient is in AF."""
    systolic, diastolic = (_whole(model.sample(c, at)) for c in ("bp_sys", "bp_dia"))
    mean = _whole(diastolic + (systolic - diastolic) / 3)
    status = 0x0004 if model.in_af(at) else 0x0000
    return blood_pressure(systolic, diastolic, mean, time=at,
                          pulse=_whole(model.sample("pulse_bp", at)), user=1, status=status)


WEIGHT_FEATURES = {uuid128(0x2A9E): weight_scale_feature(weight_resolution=3)}  # 0.1 kg


def weight_frame(model: PatientModel, at: datetime) -> bytes:
    """A bathroom scale with 0.1 kg resolution and a clock."""
    return weight_measurement(rounded(model.sample("weight", at), "0.1"), time=at)


def spot_check_frame(model: PatientModel, at: datetime) -> bytes:
    """A finger oximeter's spot check with its time stamp."""
    spo2 = min(100, _whole(model.sample("spo2", at)))
    return plx_spot_check(spo2, _whole(model.sample("pulse", at)), time=at)


def heart_rate_frame(model: PatientModel, at: datetime) -> bytes:
    """A chest strap's notification: the RR intervals of the beats in the last second, and
    the rate over the last five seconds' beats; sensor contact detected."""
    rr = model.rr_intervals(at - timedelta(seconds=1), at)
    recent = model.rr_intervals(at - timedelta(seconds=5), at)
    rate = _whole(60 / (sum(recent) / len(recent))) if recent else _whole(
        model.sample("heart_rate", at))
    return heart_rate_measurement(rate, rr=[rounded(x, Decimal(1) / 1024) for x in rr],
                                  contact=True)


def thermometer_frame(model: PatientModel, at: datetime) -> bytes:
    """An oral thermometer (0.1 C), with its time stamp and site (mouth)."""
    return temperature_measurement(rounded(model.sample("temperature", at), "0.1"), time=at,
                                   site=6)


def glucose_frame(model: PatientModel, at: datetime) -> bytes:
    """A meter's capillary (finger) reading in mmol/L, 0.1 resolution. The sequence number
    counts minutes (mod 65536), so it rises with every reading as a meter's does."""
    sequence = int(at.timestamp() // 60) % 0x10000
    return glucose_measurement(sequence, at, rounded(model.sample("glucose", at), "0.1"))


def nonin_second(model: PatientModel, at: datetime, data_format: int = 2) -> bytes:
    """One second of Nonin format 2 (or 7): 3 packets of 25 frames, the pleth following the
    model's beats, perfusion shown green at each pulse, SpO2 and HR of the reading."""
    spo2 = min(100, _whole(model.sample("spo2", at)))
    pulse = _whole(model.sample("pulse", at))
    phase = model.beat_phase(at, np.arange(75) / 75)
    wave = _pleth_shape(phase)
    pleth = (40 + 180 * wave).astype(int) if data_format == 2 else (
        0x1000 + 0x6000 * wave).astype(int)
    status = np.where(phase < 0.08, NONIN_PERFUSION["green"] << 1, 0)
    timer = int(at.timestamp() * 3)
    return b"".join(
        nonin_packet(spo2, pulse, data_format=data_format,
                     status=[int(s) for s in status[p * 25:(p + 1) * 25]],
                     pleth=[int(v) for v in pleth[p * 25:(p + 1) * 25]], timer=timer + p)
        for p in range(3))


def contec_second(model: PatientModel, at: datetime, firmware: str = "legacy") -> bytes:
    """One second of a Contec CMS50D+ live stream: 60 packets, pleth and the beep bit
    following the model's beats (v2: 60 nine-byte packages)."""
    spo2 = min(100, _whole(model.sample("spo2", at)))
    pulse = min(254, _whole(model.sample("pulse", at)))
    phase = model.beat_phase(at, np.arange(60) / 60)
    wave = _pleth_shape(phase)
    if firmware == "v2":
        return b"".join(contec_v2_package(spo2, pulse, pleth=int(10 + 110 * w), signal=6)
                        for w in wave)
    return b"".join(
        contec_legacy_packet(spo2, pulse, pleth=int(10 + 110 * w), signal=6,
                             bar=int(w * 15), beep=bool(p < 0.06))
        for w, p in zip(wave, phase, strict=True))


def _second(frame: Callable[..., bytes], *args: Any) -> Callable[[PatientModel, datetime],
                                                                 bytes]:
    def one_second(model: PatientModel, at: datetime) -> bytes:
        return frame(model, at, *args)
    one_second.__doc__ = frame.__doc__
    return one_second


# Schedules: the citizen's routine (local time). Home blood pressure morning and evening;
# weight each morning after voiding, before breakfast (the HF self-care routine); oximeter
# spot checks morning and afternoon; one temperature and one fasting glucose; a minute with
# a chest strap or a serial oximeter each morning (a frame a second).
SIMULATORS: dict[str, Simulator] = {
    "blood_pressure": Simulator(bp_frame, ("08:00", "20:00"), source=uuid128(0x2A35)),
    "weight_scale": Simulator(weight_frame, ("07:30",), source=uuid128(0x2A9D),
                              features=WEIGHT_FEATURES),
    "pulse_oximeter": Simulator(spot_check_frame, ("08:05", "15:00"), source=uuid128(0x2A5E)),
    "heart_rate": Simulator(heart_rate_frame, ("08:10",), session=60, every=1.0,
                            source=uuid128(0x2A37)),
    "thermometer": Simulator(thermometer_frame, ("08:15",), source=uuid128(0x2A1C)),
    "glucose": Simulator(glucose_frame, ("07:45",), source=uuid128(0x2A18)),
    "nonin_format2": Simulator(_second(nonin_second, 2), ("08:05",), session=60, every=1.0,
                               source="/dev/ttySIM0"),
    "contec_legacy": Simulator(_second(contec_second, "legacy"), ("08:05",), session=60,
                               every=1.0, source="/dev/ttySIM0"),
}
"""The device simulators by profile."""
REAL_DRIVERS = {"blood_pressure": "ble_blood_pressure", "weight_scale": "ble_weight_scale",
                "pulse_oximeter": "ble_pulse_oximeter", "heart_rate": "ble_heart_rate",
                "thermometer": "ble_thermometer", "glucose": "ble_glucose",
                "nonin_format2": "serial_nonin_format2",
                "contec_legacy": "serial_contec_cms50d_legacy"}
"""The real driver whose parser (and framer) each simulator's frames are for."""


def reading_times(simulator: Simulator, start: datetime, end: datetime | None, *, seed: int = 0,
                  tz: tzinfo = HOME, salt: str = "") -> Iterator[datetime]:
    """The times readings are taken in [start, end): each day's schedule in zone `tz`, each
    shifted by a jitter of up to `simulator.jitter` minutes (whole seconds) drawn from
    (seed, salt, day, slot). In time order; `end` may be None (no end)."""
    key = zlib.crc32(salt.encode())
    day = (start.astimezone(tz) - timedelta(days=1)).date()
    slots = [time(int(t[:2]), int(t[3:])) for t in simulator.schedule]
    while end is None or datetime.combine(day, time(0), tz) - timedelta(days=1) < end:
        times = []
        for index, slot in enumerate(slots):
            rng = np.random.default_rng((seed, key, day.toordinal(), index))
            shift = timedelta(seconds=round(60 * float(
                rng.uniform(-simulator.jitter, simulator.jitter))))
            times.append(datetime.combine(day, slot, tz) + shift)
        for moment in sorted(times):
            if moment >= start and (end is None or moment < end):
                yield moment
        day += timedelta(days=1)


def session_times(simulator: Simulator, reading: datetime) -> list[datetime]:
    """The frame times of one reading: one frame, or one every `every` s for `session` s."""
    if simulator.session <= 0:
        return [reading]
    count = max(1, math.ceil(simulator.session / simulator.every - 1e-9))
    return [reading + timedelta(seconds=i * simulator.every) for i in range(count)]


def device_seed(device: str) -> int:
    """The default seed of a simulated device: stable per device id."""
    return zlib.crc32(device.encode())


# =========================================================================================
# The sim transport
# =========================================================================================

IDLE, CONNECTED, STOPPED = "idle", "connected", "stopped"
Submit = Callable[[list[Observation]], None]
Reject = Callable[[str, str, bytes], None]  # (source, reason, raw)


@dataclass
class Counters:
    connections: int = 0  # readings taken (a health device connects to deliver each one)
    frames: int = 0
    observations: int = 0
    rejected: int = 0


class SimTransport:
    """Reads a simulated device: readings of a `PatientModel` at the driver's schedule,
    through the driver's real parser, until `stop()`.

    `device` is the device's config (telemon.config.DeviceConfig); its optional `scenario`,
    `seed` and `speed` keys choose the patient (default: "stable", a seed from the device id,
    real time). `tz` is the device clock's zone, which is also the patient's home zone
    (None: Europe/Copenhagen).
    Simulated time starts at `start` (default: `clock()` when `run()` starts) and runs
    `speed` times faster than the event loop's clock; observations are received (and, for
    devices without a clock, stamped) at simulated time. With `until` (simulated), `run()`
    returns once it is reached. `model` replaces the scenario's patient. `corrupt` cuts a
    share of frames short (drawn from the seed), to exercise the quarantine path.

    Every observation gets context["simulated"] = the scenario, so simulated data can never
    pass for a patient's. Status: "idle", "connected" while running, "stopped".
    """

    def __init__(self, driver: Driver, device: DeviceConfig, *, gateway_id: str,
                 tz: tzinfo | None,
                 submit: Submit, reject: Reject,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 speed: float | None = None, start: datetime | None = None,
                 until: datetime | None = None, model: PatientModel | None = None,
                 corrupt: float = 0.0) -> None:
        if driver.simulate is None:
            raise ValueError(f"driver {driver.name} declares no Simulator: not a sim driver")
        self.driver, self.device, self.gateway_id = driver, device, gateway_id
        self.tz = tz or HOME
        self.simulator = driver.simulate
        self.submit, self.reject, self.clock = submit, reject, clock
        scenario = getattr(device, "scenario", None) or "stable"
        seed = getattr(device, "seed", None)
        self.scenario = scenario
        self.seed = device_seed(device.device) if seed is None else int(seed)
        self.speed = float(speed or getattr(device, "speed", None) or 1.0)
        if self.speed <= 0:
            raise ValueError("speed must be above 0")
        if scenario not in SCENARIOS and model is None:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        self.start, self.until, self.model = start, until, model
        self.corrupt = corrupt
        self.status = IDLE
        self.reason = ""
        self.counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._origin: tuple[datetime, float] | None = None  # (simulated start, loop time)

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to return; safe from any thread, also before `run()` starts."""
        self._stopping.set()
        loop, event = self._loop, self._stop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(event.set)

    def now(self) -> datetime | None:
        """The simulated time (None before `run()`)."""
        if self._origin is None or self._loop is None:
            return None
        start, real = self._origin
        return start + timedelta(seconds=(self._loop.time() - real) * self.speed)

    async def run(self) -> None:
        """Take readings at the schedule until `stop()` (or `until`)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping.is_set():
            self._stop.set()
        start = self.start or self.clock()
        if self.model is None:
            self.model = PatientModel.for_scenario(self.scenario, start=start, seed=self.seed,
                                                   tz=self.tz)
        self._origin = (start, self._loop.time())
        self._set_status(CONNECTED)
        log.info("%s: simulating %s (%s, seed %d) at %gx from %s", self.device.device,
                 self.driver.name, self.scenario, self.seed, self.speed, start.isoformat())
        try:
            for reading in reading_times(self.simulator, start, self.until, seed=self.seed,
                                         tz=self.tz, salt=self.driver.name):
                if not await self._session(reading):
                    return
            if self.until is not None:
                await self._sleep_until(self.until)
        finally:
            self._stopping.clear()
            self._set_status(STOPPED)

    async def _session(self, reading: datetime) -> bool:
        """One reading (a frame, or a session of frames); False when stopped meanwhile."""
        framer = self.driver.stream.framer() if self.driver.stream else None
        connected = False
        try:
            for moment in session_times(self.simulator, reading):
                if self.until is not None and moment >= self.until:
                    break
                if not await self._sleep_until(moment):
                    return False
                if not connected:
                    self.counters.connections += 1
                    connected = True
                self._deliver(moment, self._frame(moment), framer)
            return True
        finally:
            if framer is not None and hasattr(framer, "flush"):
                for item in framer.flush():
                    self._item(item, self.now() or reading)

    def _frame(self, moment: datetime) -> bytes:
        assert self.model is not None
        frame = self.simulator.frame(self.model, moment.astimezone(self.tz))
        if self.corrupt > 0:
            rng = np.random.default_rng((self.seed, 5, _micros(moment)))
            if rng.random() < self.corrupt:
                frame = frame[:-1]
        return frame

    async def _sleep_until(self, moment: datetime) -> bool:
        """Wait until simulated time reaches `moment`; False when stopped first."""
        assert self._stop is not None and self._origin is not None and self._loop is not None
        start, real = self._origin
        due = real + (moment - start).total_seconds() / self.speed
        delay = due - self._loop.time()
        if self._stop.is_set():
            return False
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        else:
            await asyncio.sleep(0)  # let others run while catching up
        return not self._stop.is_set()

    # -- frames ---------------------------------------------------------------------------

    def _deliver(self, moment: datetime, frame: bytes, framer: Any) -> None:
        if framer is None:
            self._handle(frame, moment)
            return
        for item in framer.feed(frame):
            self._item(item, moment)

    def _item(self, item: bytes | FrameError, moment: datetime) -> None:
        if isinstance(item, FrameError):
            self.counters.frames += 1
            self._reject(str(item), item.raw)
        else:
            self._handle(item, moment)

    def _handle(self, frame: bytes, moment: datetime) -> None:
        """Parse one frame with the real parser; never raises."""
        self.counters.frames += 1
        ctx = ParseContext(patient=self.device.patient, device=self.device.device,
                           gateway=self.gateway_id, received=moment.astimezone(self.tz),
                           device_tz=self.tz, source=self.simulator.source,
                           features=self.simulator.features)
        try:
            observations = self.driver.parse(frame, ctx)
        except FrameError as exc:
            self._reject(str(exc), frame)
            return
        except Exception as exc:  # a parser bug must not stop the gateway
            log.exception("%s: driver %s crashed on %s", self.device.device, self.driver.name,
                          frame.hex(" "))
            self._reject(f"driver {self.driver.name} crashed: {type(exc).__name__}: {exc}",
                         frame)
            return
        if not observations:
            return
        marked = [msgspec.structs.replace(o, context={**o.context, "simulated": self.scenario})
                  for o in observations]
        try:
            self.submit(marked)
        except Exception as exc:
            log.exception("%s: submit failed", self.device.device)
            self._reject(f"submit failed: {type(exc).__name__}: {exc}", frame)
            return
        self.counters.observations += len(marked)

    def _reject(self, reason: str, frame: bytes) -> None:
        self.counters.rejected += 1
        log.warning("%s: rejected frame: %s (%s)", self.device.device, reason, frame.hex(" "))
        try:
            self.reject(self.simulator.source or self.driver.name, reason, frame)
        except Exception:
            log.exception("%s: reject failed; frame %s is only in this log",
                          self.device.device, frame.hex())

    def _set_status(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason


def profile_of(name: str) -> str:
    """The simulator profile a name means: a profile ("blood_pressure"), a sim driver
    ("sim_blood_pressure") or the real driver ("ble_blood_pressure")."""
    if name in SIMULATORS:
        return name
    if name.startswith("sim_") and name[4:] in SIMULATORS:
        return name[4:]
    for profile, real in REAL_DRIVERS.items():
        if real == name:
            return profile
    if name == "health_thermometer":
        return "thermometer"
    raise ValueError(f"no simulator for {name!r}; profiles: {', '.join(SIMULATORS)}")


def frames(profile: str, model: PatientModel, start: datetime, end: datetime, *,
           tz: tzinfo | None = None, seed: int | None = None) -> list[tuple[datetime, bytes]]:
    """Every frame a simulated device of `profile` sends in [start, end): (time, bytes), at
    its schedule (as SimTransport produces them, without the transport)."""
    simulator = SIMULATORS[profile_of(profile)]
    zone = tz or model.tz
    out = []
    for reading in reading_times(simulator, start, end, seed=model.seed if seed is None else seed,
                                 tz=zone, salt="sim_" + profile_of(profile)):
        for moment in session_times(simulator, reading):
            local = moment.astimezone(zone)
            out.append((local, simulator.frame(model, local)))
    return out


__all__ = [
    "CODES", "EFFECTS", "EVENT_KINDS", "REAL_DRIVERS", "SCENARIOS", "SIMULATORS",
    "TIME_COURSE", "Baseline", "Counters", "Event", "PatientModel", "SimTransport",
    "blood_pressure", "bp_frame", "contec_legacy_packet", "contec_second", "contec_v2_package",
    "date_time", "decimal", "device_seed", "float32", "frames", "glucose_frame",
    "glucose_measurement", "heart_rate_frame", "heart_rate_measurement", "nonin_format8",
    "nonin_frame", "nonin_packet", "nonin_second", "plx_continuous", "plx_spot_check",
    "profile_of", "reading_times", "rounded", "session_times", "sfloat", "spot_check_frame",
    "temperature_measurement", "thermometer_frame", "weight_frame", "weight_measurement",
    "weight_scale_feature",
]
