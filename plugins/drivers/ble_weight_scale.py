"""Bluetooth SIG Weight Scale Profile: Weight Measurement (0x2A9D, service 0x181D), with the
Weight Scale Feature (0x2A9E) read at connect.

Weight Measurement layout (Weight Scale Service 1.0; GATT Specification Supplement,
"Weight Measurement"), little-endian:
flags (uint8) | weight (uint16) | [time stamp (7-byte Date Time), flags bit 1] |
[user id (uint8, 0xFF = unknown user), bit 2] | [BMI (uint16, 0.1 kg/m2) and height
(uint16), bit 3]. Flags bit 0 selects the units: 0 SI (weight 0.005 kg, height 0.001 m),
1 imperial (weight 0.01 lb, height 0.1 in). Bits 4-7 are reserved for future use and ignored
(receivers must ignore RFU bits; some scales use bit 4 for "below zero"). Weight 0xFFFF is
"Measurement Unsuccessful"; then only the time stamp and user id may follow.

Weight Scale Feature (uint32): bit 0 time stamp, bit 1 multiple users, bit 2 BMI supported;
bits 3-6 weight resolution, bits 7-9 height resolution; bits 10-31 reserved.

Choices:
* The weight field always counts 0.005 kg (or 0.01 lb). The feature's resolution says how
  precise the scale is, it does not rescale the field (some open-source parsers multiply by
  it; that is wrong). The value is shown with the resolution's decimals when that loses
  nothing (14000 x 0.005 kg at 0.1 kg resolution -> Decimal('70.0')); otherwise with the
  field's own (Decimal('70.005')). The resolution is kept in context["weight_resolution"].
* Units are kept as the device sent them: kg / m, or [lb_av] / [in_i] (UCUM). Converting
  pounds to kilograms (x 0.45359237) would invent precision the scale does not have and lose
  what the citizen saw on the display; the value and unit stay a faithful copy of the
  reading, and a consumer that compares with kg limits converts with UCUM, exactly.
"""

from __future__ import annotations

from decimal import Decimal

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import read_value, short_uuid, take, time_stamp, uint, uuid128
from telemon.hookspecs import hookimpl
from telemon.models import AbsentReason, Observation, reading_id

NAME = "ble_weight_scale"
SERVICE = uuid128(0x181D)
WEIGHT_MEASUREMENT = uuid128(0x2A9D)
WEIGHT_SCALE_FEATURE = uuid128(0x2A9E)

UNSUCCESSFUL = 0xFFFF
# Resolution codes of the Weight Scale Feature -> (SI step, imperial step).
WEIGHT_RESOLUTION = {1: ("0.5", "1"), 2: ("0.2", "0.5"), 3: ("0.1", "0.2"), 4: ("0.05", "0.1"),
                     5: ("0.02", "0.05"), 6: ("0.01", "0.02"), 7: ("0.005", "0.01")}
HEIGHT_RESOLUTION = {1: ("0.01", "1"), 2: ("0.005", "0.5"), 3: ("0.001", "0.1")}
WEIGHT_STEP = (Decimal("0.005"), Decimal("0.01"))  # field units: SI, imperial
HEIGHT_STEP = (Decimal("0.001"), Decimal("0.1"))
BMI_STEP = Decimal("0.1")


def shown_at(value: Decimal, resolution: str | None) -> Decimal:
    """`value` with the decimals of the device's `resolution` when that is exact."""
    if resolution is None:
        return value
    quantum = Decimal(1).scaleb(Decimal(resolution).as_tuple().exponent)
    shown = value.quantize(quantum)
    return shown if shown == value else value


def feature(ctx: ParseContext) -> tuple[int | None, str]:
    """The Weight Scale Feature read at connect, or None; and a note when it is unusable."""
    raw = read_value(ctx.features, 0x2A9E)
    if raw is None:
        return None, ""
    if len(raw) != 4:
        return None, f"Weight Scale Feature of {len(raw)} bytes ignored (expected 4)"
    return int.from_bytes(raw, "little"), ""


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one Weight Measurement value into a weight observation and, when the flags
    announce them, BMI and height observations."""
    if ctx.source and short_uuid(ctx.source) != 0x2A9D:
        raise FrameError(f"characteristic {ctx.source} is not Weight Measurement (0x2A9D)")
    flags = take(frame, 0, 1, "flags")[0]
    imperial = flags & 0x01
    weight_raw = uint(frame, 1, 2, "weight")
    offset = 3
    effective, time_source, offset = time_stamp(frame, offset, bool(flags & 0x02), ctx)
    context = {"time_source": time_source, "method": "self-measured"}
    if flags & 0x04:
        user = take(frame, offset, 1, "user id")[0]
        context["user"] = "unknown" if user == 0xFF else str(user)
        offset += 1
    bmi_raw = height_raw = None
    if flags & 0x08:
        bmi_raw = uint(frame, offset, 2, "BMI")
        height_raw = uint(frame, offset + 2, 2, "height")
        offset += 4
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")
    if weight_raw == UNSUCCESSFUL and bmi_raw is not None:
        raise FrameError("weight 0xFFFF (measurement unsuccessful) with BMI and height, "
                         "which the Weight Scale Service forbids")

    features, note = feature(ctx)
    if note:
        context["features"] = note
    weight_resolution = height_resolution = None
    if features is not None:
        weight_code, height_code = (features >> 3) & 0x0F, (features >> 7) & 0x07
        if weight_code in WEIGHT_RESOLUTION:
            weight_resolution = WEIGHT_RESOLUTION[weight_code][imperial]
            context["weight_resolution"] = weight_resolution
        if height_code in HEIGHT_RESOLUTION and bmi_raw is not None:
            height_resolution = HEIGHT_RESOLUTION[height_code][imperial]
            context["height_resolution"] = height_resolution

    weight_unit, height_unit = ("[lb_av]", "[in_i]") if imperial else ("kg", "m")
    common = dict(device=ctx.device, patient=ctx.patient, gateway=ctx.gateway,
                  effective=effective, raw=frame, context=context, driver=NAME,
                  driver_version=__version__)

    def observation(key: str, unit: str, value: Decimal | None,
                    absent: AbsentReason | None = None, flags: tuple[str, ...] = ()):
        code = KNOWN[key].code
        return Observation(id=reading_id(device=ctx.device, patient=ctx.patient, code=code.code,
                                         effective=effective, raw=frame),
                           code=code, unit=unit, value=value, absent=absent, flags=flags,
                           **common)

    if weight_raw == UNSUCCESSFUL:
        observations = [observation("weight", weight_unit, None, AbsentReason.ERROR,
                                    ("measurement-unsuccessful",))]
    else:
        weight = shown_at(weight_raw * WEIGHT_STEP[imperial], weight_resolution)
        observations = [observation("weight", weight_unit, weight)]
    if bmi_raw is not None and height_raw is not None:
        observations.append(observation("bmi", "kg/m2", bmi_raw * BMI_STEP))
        height = shown_at(height_raw * HEIGHT_STEP[imperial], height_resolution)
        observations.append(observation("height", height_unit, height))
    return observations


DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Weight scales with the Bluetooth SIG Weight Scale Profile",
    codes=("weight", "bmi", "height"),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(WEIGHT_MEASUREMENT,),
                 reads=(WEIGHT_SCALE_FEATURE,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
