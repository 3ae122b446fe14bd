"""Bluetooth SIG Blood Pressure Profile: Blood Pressure Measurement (0x2A35, service 0x1810).

Frame layout (Bluetooth SIG, Blood Pressure Service 1.1, section 3.1), little-endian:
flags (uint8) | systolic, diastolic, mean arterial pressure (SFLOAT each) |
[time stamp (7-byte Date Time), flags bit 1] | [pulse rate (SFLOAT), bit 2] |
[user id (uint8, 0xFF = unknown user), bit 3] | [measurement status (uint16), bit 4].
Flags bit 0 selects the unit: 0 mmHg, 1 kPa. Bits 5-7 are reserved and ignored.
"""

from __future__ import annotations

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import sfloat, take, time_stamp
from telemon.hookspecs import hookimpl
from telemon.models import Component, Observation, reading_id

NAME = "ble_blood_pressure"
SERVICE = "00001810-0000-1000-8000-00805f9b34fb"
CHARACTERISTIC = "00002a35-0000-1000-8000-00805f9b34fb"

STATUS_BITS = {0: "body-movement", 1: "cuff-loose", 2: "irregular-pulse",
               5: "improper-position"}
PULSE_RANGE = {1: "pulse-above-range", 2: "pulse-below-range", 3: "pulse-range-reserved"}


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one Blood Pressure Measurement value into a BP observation (systolic,
    diastolic, mean as components) and, when present, a pulse-rate observation."""
    flags = take(frame, 0, 1, "flags")[0]
    unit = "kPa" if flags & 0x01 else "mm[Hg]"
    pressures = [sfloat(take(frame, 1 + 2 * i, 2, name))
                 for i, name in enumerate(("systolic", "diastolic", "mean arterial pressure"))]
    offset = 7
    effective, time_source, offset = time_stamp(frame, offset, bool(flags & 0x02), ctx)
    pulse = None
    if flags & 0x04:
        pulse = sfloat(take(frame, offset, 2, "pulse rate"))
        offset += 2
    context = {"time_source": time_source, "method": "self-measured"}
    if flags & 0x08:
        user = take(frame, offset, 1, "user id")[0]
        context["user"] = "unknown" if user == 0xFF else str(user)
        offset += 1
    status_flags: list[str] = []
    if flags & 0x10:
        status = int.from_bytes(take(frame, offset, 2, "measurement status"), "little")
        status_flags = [name for bit, name in STATUS_BITS.items() if status & (1 << bit)]
        if (status >> 3) & 0x3:
            status_flags.append(PULSE_RANGE[(status >> 3) & 0x3])
        offset += 2
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")

    components = tuple(
        Component(code=KNOWN[key].code, unit=unit, value=value, absent=absent)
        for key, (value, absent) in zip(("bp_sys", "bp_dia", "bp_mean"), pressures, strict=True)
    )
    common = dict(device=ctx.device, patient=ctx.patient, gateway=ctx.gateway,
                  effective=effective, raw=frame, flags=tuple(status_flags), context=context,
                  driver=NAME, driver_version=__version__)
    bp = KNOWN["bp"]
    observations = [Observation(
        id=reading_id(device=ctx.device, patient=ctx.patient, code=bp.code.code,
                      effective=effective, raw=frame),
        code=bp.code, unit=unit, components=components, **common)]
    if pulse is not None:
        rate = KNOWN["pulse_bp"]
        value, absent = pulse
        observations.append(Observation(
            id=reading_id(device=ctx.device, patient=ctx.patient, code=rate.code.code,
                          effective=effective, raw=frame),
            code=rate.code, unit="/min", value=value, absent=absent, **common))
    return observations


DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Blood pressure monitors with the Bluetooth SIG Blood Pressure Profile",
    codes=("bp", "bp_sys", "bp_dia", "bp_mean", "pulse_bp"),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(CHARACTERISTIC,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
