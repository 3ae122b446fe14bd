"""Bluetooth SIG Pulse Oximeter Profile: PLX Spot-check Measurement (0x2A5E) and PLX
Continuous Measurement (0x2A5F), service 0x1822, with PLX Features (0x2A60) read at connect.
The characteristic a frame came from (ParseContext.source) selects the layout.

Spot-check layout (Pulse Oximeter Service 1.0; GATT Specification Supplement, "PLX
Spot-Check Measurement"), little-endian:
flags (uint8) | SpO2, pulse rate (SFLOAT each) | [time stamp (7-byte Date Time), flags
bit 0] | [measurement status (uint16), bit 1] | [device and sensor status (uint24), bit 2] |
[pulse amplitude index (SFLOAT, %), bit 3]. Bit 4 "device clock is not set": the time stamp
(if any) is then meaningless and the gateway's time is used. Bits 5-7 reserved, ignored.

Continuous layout ("PLX Continuous Measurement"): flags (uint8) | SpO2, pulse rate "normal"
(SFLOAT each) | [SpO2, PR fast, flags bit 0] | [SpO2, PR slow, bit 1] | [measurement
status, bit 2] | [device and sensor status, bit 3] | [pulse amplitude index, bit 4].
Bits 5-7 reserved. No time stamp: the gateway's receive time is used.

Observations: SpO2 (MDC_PULS_OXIM_SAT_O2, %) and pulse rate (MDC_PULS_OXIM_PULS_RATE, /min),
plus the pulse amplitude index (MDC_PULS_OXIM_PERF_REL, %) when sent. The continuous
"fast" and "slow" averages are kept in context (spo2_fast, pulse_fast, spo2_slow,
pulse_slow: the Decimal as text, or the absent reason) rather than as more SpO2
observations, which rules and limits would count as extra readings of the same moment.

Measurement status bits 5-15 and device and sensor status bits 0-15 become `flags` (the
names below); bits 0-4 and 16-23 respectively are reserved and ignored. PLX Features (uint16
supported features; then, when its bit 0 / bit 1 is set, a uint16 measurement-status
support mask / a uint24 device-and-sensor-status support mask) says which of those
conditions the oximeter can detect at all: context["status_supported"] lists them, so a
missing flag can be read as "not detected" only for conditions listed there.
"""

from __future__ import annotations

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import Number, date_time, read_value, sfloat, short_uuid, take, uint, uuid128
from telemon.hookspecs import hookimpl
from telemon.models import Observation, reading_id

NAME = "ble_pulse_oximeter"
SERVICE = uuid128(0x1822)
SPOT_CHECK = uuid128(0x2A5E)
CONTINUOUS = uuid128(0x2A5F)
PLX_FEATURES = uuid128(0x2A60)

MEASUREMENT_STATUS = {
    5: "measurement-ongoing", 6: "early-estimated-data", 7: "validated-data",
    8: "fully-qualified-data", 9: "data-from-storage", 10: "data-for-demonstration",
    11: "data-for-testing", 12: "calibration-ongoing", 13: "measurement-unavailable",
    14: "questionable-measurement", 15: "invalid-measurement",
}
DEVICE_SENSOR_STATUS = {
    0: "extended-display-update-ongoing", 1: "equipment-malfunction",
    2: "signal-processing-irregularity", 3: "inadequate-signal", 4: "poor-signal",
    5: "low-perfusion", 6: "erratic-signal", 7: "nonpulsatile-signal", 8: "questionable-pulse",
    9: "signal-analysis-ongoing", 10: "sensor-interference", 11: "sensor-unconnected-to-user",
    12: "unknown-sensor-connected", 13: "sensor-displaced", 14: "sensor-malfunctioning",
    15: "sensor-disconnected",
}


def named_bits(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if value & (1 << bit)]


def supported(ctx: ParseContext) -> tuple[list[str] | None, str]:
    """Names of the status conditions PLX Features says the oximeter detects (None when the
    features were not read), and a note when the features value is unusable."""
    raw = read_value(ctx.features, 0x2A60)
    if raw is None:
        return None, ""
    try:
        features = uint(raw, 0, 2, "supported features")
        offset, names = 2, []
        if features & 0x01:
            names += named_bits(uint(raw, offset, 2, "measurement status support"),
                                MEASUREMENT_STATUS)
            offset += 2
        if features & 0x02:
            names += named_bits(uint(raw, offset, 3, "device and sensor status support"),
                                DEVICE_SENSOR_STATUS)
            offset += 3
    except FrameError as exc:
        return None, f"PLX Features ignored: {exc}"
    if offset != len(raw):
        return None, f"PLX Features ignored: {len(raw) - offset} unexpected byte(s)"
    return names, ""


def text(number: Number) -> str:
    value, absent = number
    return str(value) if value is not None else str(absent)


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one PLX Spot-check or Continuous Measurement value into SpO2 and pulse-rate
    observations (and a pulse amplitude index observation when sent)."""
    kind = short_uuid(ctx.source)
    if kind not in (0x2A5E, 0x2A5F):
        raise FrameError(f"characteristic {ctx.source or '(none)'} is neither PLX Spot-check "
                         "(0x2A5E) nor PLX Continuous Measurement (0x2A5F)")
    spot = kind == 0x2A5E
    flags = take(frame, 0, 1, "flags")[0]
    spo2 = sfloat(take(frame, 1, 2, "SpO2"))
    pulse = sfloat(take(frame, 3, 2, "pulse rate"))
    offset = 5
    context = {"time_source": "gateway", "method": "self-measured",
               "mode": "spot-check" if spot else "continuous"}
    effective = None
    if spot:
        has = {"status": flags & 0x02, "sensor": flags & 0x04, "pai": flags & 0x08}
        if flags & 0x10:
            context["device_clock"] = "not-set"
        if flags & 0x01:
            stamp = take(frame, offset, 7, "time stamp")
            offset += 7
            if not flags & 0x10:  # an unset clock's time stamp is not decoded at all
                effective = date_time(stamp, ctx.tz)
    else:
        has = {"status": flags & 0x04, "sensor": flags & 0x08, "pai": flags & 0x10}
        for bit, speed in ((0x01, "fast"), (0x02, "slow")):
            if flags & bit:
                context[f"spo2_{speed}"] = text(sfloat(take(frame, offset, 2, f"SpO2 {speed}")))
                context[f"pulse_{speed}"] = text(sfloat(take(frame, offset + 2, 2,
                                                             f"pulse rate {speed}")))
                offset += 4
    status: list[str] = []
    if has["status"]:
        status += named_bits(uint(frame, offset, 2, "measurement status"), MEASUREMENT_STATUS)
        offset += 2
    if has["sensor"]:
        status += named_bits(uint(frame, offset, 3, "device and sensor status"),
                             DEVICE_SENSOR_STATUS)
        offset += 3
    pai = None
    if has["pai"]:
        pai = sfloat(take(frame, offset, 2, "pulse amplitude index"))
        offset += 2
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")
    if effective is None:
        effective = ctx.received
    else:
        context["time_source"] = "device"
    names, note = supported(ctx)
    if names is not None:
        context["status_supported"] = " ".join(names)
    if note:
        context["features"] = note

    def observation(key: str, unit: str, number: Number) -> Observation:
        code = KNOWN[key].code
        value, absent = number
        return Observation(
            id=reading_id(device=ctx.device, patient=ctx.patient, code=code.code,
                          effective=effective, raw=frame),
            patient=ctx.patient, device=ctx.device, gateway=ctx.gateway, code=code, unit=unit,
            value=value, absent=absent, effective=effective, flags=tuple(status),
            context=context, raw=frame, driver=NAME, driver_version=__version__)

    observations = [observation("spo2", "%", spo2), observation("pulse", "/min", pulse)]
    if pai is not None:
        observations.append(observation("perfusion_index", "%", pai))
    return observations


DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Pulse oximeters with the Bluetooth SIG Pulse Oximeter Profile (spot-check "
                "and continuous)",
    codes=("spo2", "pulse", "perfusion_index"),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(SPOT_CHECK, CONTINUOUS),
                 reads=(PLX_FEATURES,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
