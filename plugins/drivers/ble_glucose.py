"""Bluetooth SIG Glucose Profile: Glucose Measurement (0x2A18, service 0x1808).

Layout (Glucose Service 1.0; GATT Specification Supplement, "Glucose Measurement"),
little-endian: flags (uint8) | sequence number (uint16) | base time (7-byte Date Time) |
[time offset (sint16, minutes), flags bit 0] | [concentration (SFLOAT) and type-sample
location (uint8: type in the low nibble, sample location in the high one), bit 1] |
[sensor status annunciation (uint16), bit 3]. Flags bit 2 gives the concentration unit:
0 kg/L, 1 mol/L. Bit 4 "context information follows" (a Glucose Measurement Context,
0x2A34, with the same sequence number comes next). Bits 5-7 are reserved and ignored.

Units, exactly with Decimal: kg/L -> mg/dL is x 10^5 (1 kg/L = 10^6 mg per 10 dL), mol/L
-> mmol/L is x 10^3; both are powers of ten, so the SFLOAT's digits are kept as they are
(mantissa 95, exponent -5 kg/L -> 95 mg/dL; 55 x 10^-4 mol/L -> 5.5 mmol/L). mg/dL is not
converted to mmol/L: that needs glucose's molar mass and would invent digits. A value with
fewer digits than its size keeps them: 55 x 10^-4 kg/L is Decimal('5.5E+2') mg/dL (550,
known to two significant digits), as the PHD IG asks ("2.0", not "2").

The code follows the sample type (capillary whole blood is MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD,
control solution MDC_CONC_GLU_CONTROL - flagged "control-solution": not a patient value);
no type or a reserved one gives MDC_CONC_GLU_GEN. The sample location goes into
context["sample_location"], the sequence number into context["sequence"], the time offset
into context["time_offset_min"]. A record without a concentration (bit 1 clear; meters send
such records for failed tests) has absent="error" and its status flags.

Meters keep their records and send them again on request, so the same record must get the
same id: with a device time the id is made of device, patient, code, time and bytes as
usual; when the base time is unknown (year 0) the observation takes the gateway's time, but
the id is made with a fixed time instead, from the bytes (which hold the sequence number).

Not done here: the meter sends records only when its Record Access Control Point (0x2A52)
is written (e.g. "report all records"), which is transport work; Glucose Measurement
Context (0x2A34: meal, carbohydrate, exercise, medication, HbA1c) needs joining with its
measurement by sequence number and is not subscribed to yet.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import date_time, sfloat, short_uuid, sint, take, uint, uuid128
from telemon.hookspecs import hookimpl
from telemon.models import AbsentReason, Observation, reading_id

NAME = "ble_glucose"
SERVICE = uuid128(0x1808)
GLUCOSE_MEASUREMENT = uuid128(0x2A18)

TYPES = {1: ("capillary-whole-blood", "glucose"), 2: ("capillary-plasma", "glucose_cap_plasma"),
         3: ("venous-whole-blood", "glucose_ven_blood"),
         4: ("venous-plasma", "glucose_ven_plasma"),
         5: ("arterial-whole-blood", "glucose_art_blood"),
         6: ("arterial-plasma", "glucose_art_plasma"),
         7: ("undetermined-whole-blood", "glucose_und_blood"),
         8: ("undetermined-plasma", "glucose_und_plasma"),
         9: ("interstitial-fluid", "glucose_isf"), 10: ("control-solution", "glucose_control")}
LOCATIONS = {1: "finger", 2: "alternate-site", 3: "earlobe", 4: "control-solution",
             15: "not-available"}
SENSOR_STATUS = {
    0: "battery-low", 1: "sensor-malfunction", 2: "sample-size-insufficient",
    3: "strip-insertion-error", 4: "strip-type-incorrect", 5: "result-above-device-range",
    6: "result-below-device-range", 7: "sensor-temperature-too-high",
    8: "sensor-temperature-too-low", 9: "strip-pulled-too-soon", 10: "general-device-fault",
    11: "time-fault",
}
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # stands in for "no device time" in ids


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one Glucose Measurement value into one glucose observation."""
    if ctx.source and short_uuid(ctx.source) != 0x2A18:
        raise FrameError(f"characteristic {ctx.source} is not Glucose Measurement (0x2A18)")
    flags = take(frame, 0, 1, "flags")[0]
    sequence = uint(frame, 1, 2, "sequence number")
    base = date_time(take(frame, 3, 7, "base time"), ctx.tz)
    offset = 10
    context = {"sequence": str(sequence), "method": "self-measured"}
    minutes = 0
    if flags & 0x01:
        minutes = sint(frame, offset, 2, "time offset")
        context["time_offset_min"] = str(minutes)
        offset += 2
    number = None
    type_key, location = "glucose_gen", None
    if flags & 0x02:
        number = sfloat(take(frame, offset, 2, "glucose concentration"))
        nibbles = take(frame, offset + 2, 1, "type-sample location")[0]
        offset += 3
        sample_type, location = nibbles & 0x0F, nibbles >> 4
        name, type_key = TYPES.get(sample_type, (f"reserved-{sample_type}", "glucose_gen"))
        context["sample_type"] = name
        context["sample_location"] = LOCATIONS.get(location, f"reserved-{location}")
    status: list[str] = []
    if flags & 0x08:
        annunciation = uint(frame, offset, 2, "sensor status annunciation")
        status = [name for bit, name in SENSOR_STATUS.items() if annunciation & (1 << bit)]
        offset += 2
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")
    if flags & 0x10:
        context["context_follows"] = "true"
    if type_key == "glucose_control" or location == 4:
        status.append("control-solution")

    if base is None:
        effective, id_time = ctx.received, UNKNOWN_TIME
        context["time_source"] = "gateway"
    else:
        try:
            effective = id_time = base + timedelta(minutes=minutes)
        except OverflowError:
            raise FrameError(f"base time {base.isoformat()} plus time offset {minutes} min "
                             "is out of range") from None
        context["time_source"] = "device"
    if flags & 0x04:
        unit, scale = "mmol/L", 3
    else:
        unit, scale = "mg/dL", 5
    if number is None:
        value, absent = None, AbsentReason.ERROR
    else:
        value, absent = number
        value = None if value is None else value.scaleb(scale)
    code = KNOWN[type_key].code
    return [Observation(
        id=reading_id(device=ctx.device, patient=ctx.patient, code=code.code,
                      effective=id_time, raw=frame),
        patient=ctx.patient, device=ctx.device, gateway=ctx.gateway, code=code, unit=unit,
        value=value, absent=absent, effective=effective, flags=tuple(status), context=context,
        raw=frame, driver=NAME, driver_version=__version__)]


DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Blood glucose meters with the Bluetooth SIG Glucose Profile",
    codes=("glucose", "glucose_gen", "glucose_cap_plasma", "glucose_ven_blood",
           "glucose_ven_plasma", "glucose_art_blood", "glucose_art_plasma",
           "glucose_und_blood", "glucose_und_plasma", "glucose_isf", "glucose_control"),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(GLUCOSE_MEASUREMENT,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
