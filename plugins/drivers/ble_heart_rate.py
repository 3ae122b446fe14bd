"""Bluetooth SIG Heart Rate Profile: Heart Rate Measurement (0x2A37, service 0x180D).

Body Sensor Location (0x2A38: chest, wrist, ...) is optional in the service, and the BLE
transport reads every declared `reads` characteristic as required, so it is not declared;
when the transport supplies it in ParseContext.features, context["body_site"] gets it.

Layout (Heart Rate Service 1.0; GATT Specification Supplement, "Heart Rate Measurement"),
little-endian:
flags (uint8) | heart rate (uint8, or uint16 when flags bit 0 is set) |
[energy expended (uint16, kJ), bit 3] | [RR-intervals (uint16 each, 1/1024 s), bit 4:
as many as fill the rest of the frame, oldest first].
Flags bits 1-2 are the sensor contact status: 0 or 1 not supported, 2 supported but no contact
detected, 3 contact detected (context["sensor_contact"]; flag "no-sensor-contact" for 2).
Bits 5-7 are reserved for future use and ignored. Energy expended stays at 0xFFFF once it
reaches its maximum, until the client resets it (flag "energy-at-maximum").

The frame carries no time: the heart rate is stamped with the gateway's receive time.

RR intervals (for the ECG/AF code downstream): one observation per interval, code
MDC_ECG_TIME_PD_RR_GL, unit s, value = count / 1024 exactly as a Decimal (840 -> 0.8203125).
Its `effective` is the time of the beat that ends the interval, reconstructed backwards from
the receive time: the newest interval ends at `received`, each earlier one where the next
began (context["rr_timing"] = "derived"; the error is the notification latency, the same
for all intervals of a frame, so successive beat times keep their spacing). One observation
per interval, rather than one compound observation, because a Component has no time of its
own and the rhythm code needs a time per beat. context["rr_index"] says "i/n" within the
frame, and the index is part of each interval's id, so ids stay distinct even when two
intervals (and so two beat times) are equal.
A frame that sets the RR flag but holds no interval is rejected: the flag announces one or
more (Nordic's Android BLE library rejects it too); like every bad frame it is quarantined
with its bytes, not lost.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, localcontext

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import read_value, short_uuid, take, uint, uuid128
from telemon.hookspecs import hookimpl
from telemon.models import Observation, reading_id

NAME = "ble_heart_rate"
SERVICE = uuid128(0x180D)
HEART_RATE_MEASUREMENT = uuid128(0x2A37)
BODY_SENSOR_LOCATION = uuid128(0x2A38)

SENSOR_LOCATION = {0: "other", 1: "chest", 2: "wrist", 3: "finger", 4: "hand", 5: "ear-lobe",
                   6: "foot"}
CONTACT = {2: "not-detected", 3: "detected"}
ENERGY_MAX = 0xFFFF


def rr_seconds(count: int) -> Decimal:
    """An RR interval of `count` 1/1024 s as exact seconds (n / 2^10 always terminates)."""
    with localcontext() as exact:
        exact.prec = 28
        return Decimal(count) / Decimal(1024)


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one Heart Rate Measurement value into a heart-rate observation, an
    energy-expended observation when present, and one observation per RR interval."""
    if ctx.source and short_uuid(ctx.source) != 0x2A37:
        raise FrameError(f"characteristic {ctx.source} is not Heart Rate Measurement (0x2A37)")
    flags = take(frame, 0, 1, "flags")[0]
    width = 2 if flags & 0x01 else 1
    rate = uint(frame, 1, width, "heart rate")
    offset = 1 + width
    energy = None
    if flags & 0x08:
        energy = uint(frame, offset, 2, "energy expended")
        offset += 2
    counts: list[int] = []
    if flags & 0x10:
        if offset >= len(frame):
            raise FrameError(f"flags 0x{flags:02x} announce RR-intervals, but the frame ends "
                             f"at byte {offset} without one")
        if (len(frame) - offset) % 2:
            raise FrameError(f"RR-intervals take 2 bytes each, but {len(frame) - offset} "
                             f"byte(s) follow at byte {offset}")
        counts = [uint(frame, at, 2, "RR-interval") for at in range(offset, len(frame), 2)]
        offset = len(frame)
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")

    context = {"time_source": "gateway", "method": "self-measured"}
    contact = (flags >> 1) & 0x03
    context["sensor_contact"] = CONTACT.get(contact, "not-supported")
    status = ("no-sensor-contact",) if contact == 2 else ()
    location = read_value(ctx.features, 0x2A38)
    if location is not None and len(location) == 1:
        context["body_site"] = SENSOR_LOCATION.get(location[0], f"reserved-{location[0]}")
    received = ctx.received

    def observation(key: str, unit: str, value: Decimal, effective=received,
                    extra: dict[str, str] | None = None, id_key: str = "",
                    more_flags: tuple[str, ...] = ()):
        code = KNOWN[key].code
        return Observation(
            id=reading_id(device=ctx.device, patient=ctx.patient, code=id_key or code.code,
                          effective=effective, raw=frame),
            patient=ctx.patient, device=ctx.device, gateway=ctx.gateway, code=code, unit=unit,
            value=value, effective=effective, flags=status + more_flags,
            context={**context, **(extra or {})}, raw=frame, driver=NAME,
            driver_version=__version__)

    observations = [observation("heart_rate", "/min", Decimal(rate))]
    if energy is not None:
        observations.append(observation(
            "energy_expended", "kJ", Decimal(energy),
            more_flags=("energy-at-maximum",) if energy == ENERGY_MAX else ()))
    rr = KNOWN["rr_interval"].code.code
    for index, count in enumerate(counts):
        later = sum(counts[index + 1:])  # 1/1024 s between this beat and the newest one
        ends = received - timedelta(microseconds=later * 15625 / 16)  # 10^6 / 1024 = 15625/16
        observations.append(observation(
            "rr_interval", "s", rr_seconds(count), effective=ends,
            extra={"rr_index": f"{index + 1}/{len(counts)}", "rr_timing": "derived"},
            id_key=f"{rr}#{index}"))
    return observations

DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Heart-rate sensors (chest straps, ECG patches) with the Bluetooth SIG "
                "Heart Rate Profile, RR intervals included",
    codes=("heart_rate", "energy_expended", "rr_interval"),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(HEART_RATE_MEASUREMENT,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
