"""Bluetooth SIG Health Thermometer Profile: Temperature Measurement (0x2A1C, service 0x1809).

The Temperature Type characteristic (0x2A1D) is optional in the service, and the BLE transport
reads every declared `reads` characteristic as required, so it is not declared; when the
transport supplies it in ParseContext.features, it gives the body site.

Layout (Health Thermometer Service 1.0; GATT Specification Supplement, "Temperature
Measurement"), little-endian:
flags (uint8) | temperature (IEEE-11073 32-bit FLOAT) | [time stamp (7-byte Date Time),
flags bit 1] | [temperature type (uint8), bit 2]. Flags bit 0 selects the unit: 0 Celsius
(UCUM Cel), 1 Fahrenheit ([degF], kept as sent, not converted). Bits 3-7 are reserved for
future use and ignored.

Temperature type (the body site): 1 armpit, 2 body (general), 3 ear (usually ear lobe),
4 finger, 5 gastro-intestinal tract, 6 mouth, 7 rectum, 8 toe, 9 tympanum (ear drum);
0 and 10-255 reserved. A thermometer whose site never changes may leave the field out and
offer the Temperature Type characteristic instead; the field wins when both are there.

Every reading is coded MDC_TEMP_BODY (the Danish NPU08676 and the disease modules' limits are
site-agnostic); the site goes into context["body_site"] and its site-specific 11073-10408
code (the PHD transcoding white paper's Metric-Id) into context["site_code"]. Site codes:
MDC_TEMP_RECT 2::57348, _ORAL 57352, _EAR 57356, _FINGER 57360, _TOE 57376, _AXILLA 57380,
_GIT 57384 (IEEE 11073-10408 constant tables), MDC_TEMP_TYMP 2::19320; the Ear lobe and
tympanum types map to _EAR and _TYMP. The Intermediate Temperature characteristic (0x2A1E,
same layout, readings still settling) is not subscribed to: only final readings are kept.
"""

from __future__ import annotations

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import BleMatch, Driver, FrameError, ParseContext
from telemon.gatt import float32, read_value, short_uuid, take, time_stamp, uuid128
from telemon.hookspecs import hookimpl
from telemon.models import Observation, reading_id

NAME = "ble_thermometer"
SERVICE = uuid128(0x1809)
TEMPERATURE_MEASUREMENT = uuid128(0x2A1C)
TEMPERATURE_TYPE = uuid128(0x2A1D)

SCADA = 2 * 65536
SITES = {1: ("armpit", SCADA + 57380), 2: ("body", None), 3: ("ear", SCADA + 57356),
         4: ("finger", SCADA + 57360), 5: ("gastro-intestinal-tract", SCADA + 57384),
         6: ("mouth", SCADA + 57352), 7: ("rectum", SCADA + 57348), 8: ("toe", SCADA + 57376),
         9: ("tympanum", SCADA + 19320)}


def parse(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """Decode one Temperature Measurement value into a body-temperature observation."""
    if ctx.source and short_uuid(ctx.source) != 0x2A1C:
        raise FrameError(f"characteristic {ctx.source} is not Temperature Measurement (0x2A1C)")
    flags = take(frame, 0, 1, "flags")[0]
    unit = "[degF]" if flags & 0x01 else "Cel"
    value, absent = float32(take(frame, 1, 4, "temperature"))
    offset = 5
    effective, time_source, offset = time_stamp(frame, offset, bool(flags & 0x02), ctx)
    site = None
    if flags & 0x04:
        site = take(frame, offset, 1, "temperature type")[0]
        offset += 1
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} unexpected byte(s) after the fields that flags "
                         f"0x{flags:02x} announce ({offset} bytes)")
    context = {"time_source": time_source, "method": "self-measured"}
    if site is None:
        static = read_value(ctx.features, 0x2A1D)
        if static is not None and len(static) == 1:
            site = static[0]
    if site is not None:
        name, code = SITES.get(site, (f"reserved-{site}", None))
        context["body_site"] = name
        if code is not None:
            context["site_code"] = str(code)
    temperature = KNOWN["temperature"].code
    return [Observation(
        id=reading_id(device=ctx.device, patient=ctx.patient, code=temperature.code,
                      effective=effective, raw=frame),
        patient=ctx.patient, device=ctx.device, gateway=ctx.gateway, code=temperature,
        unit=unit, value=value, absent=absent, effective=effective, context=context,
        raw=frame, driver=NAME, driver_version=__version__)]


DRIVER = Driver(
    name=NAME,
    version=__version__,
    transport="ble",
    parse=parse,
    description="Thermometers with the Bluetooth SIG Health Thermometer Profile",
    codes=("temperature",),
    ble=BleMatch(service_uuids=(SERVICE,), characteristics=(TEMPERATURE_MEASUREMENT,)),
)


@hookimpl
def register_drivers(register):
    register(DRIVER)
