"""Bluetooth GATT number formats shared by the BLE health-profile parsers (pure functions).

IEEE 11073-20601 SFLOAT (16 bit: 4-bit exponent, 12-bit mantissa) and FLOAT (32 bit: 8-bit
exponent, 24-bit mantissa), little-endian, value = mantissa x 10^exponent, kept as a Decimal
with the device's precision. Special values become an AbsentReason, never a number.
The 7-byte Date Time characteristic has no time zone: it is the device's local time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from decimal import Decimal

from telemon.drivers import FrameError, ParseContext
from telemon.models import AbsentReason

SFLOAT_SPECIAL = {0x07FF: AbsentReason.NOT_A_NUMBER, 0x0800: AbsentReason.ERROR,
                  0x0801: AbsentReason.UNSUPPORTED, 0x07FE: AbsentReason.POSITIVE_INFINITY,
                  0x0802: AbsentReason.NEGATIVE_INFINITY}
FLOAT_SPECIAL = {0x007FFFFF: AbsentReason.NOT_A_NUMBER, 0x00800000: AbsentReason.ERROR,
                 0x00800001: AbsentReason.UNSUPPORTED,
                 0x007FFFFE: AbsentReason.POSITIVE_INFINITY,
                 0x00800002: AbsentReason.NEGATIVE_INFINITY}

Number = tuple[Decimal | None, AbsentReason | None]


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def take(frame: bytes, offset: int, size: int, what: str) -> bytes:
    """`size` bytes of `frame` at `offset`, or FrameError naming the missing field."""
    if offset + size > len(frame):
        raise FrameError(f"frame ends before {what}: needs bytes {offset}..{offset + size - 1}, "
                         f"has {len(frame)}")
    return frame[offset:offset + size]


def sfloat(raw: bytes) -> Number:
    word = int.from_bytes(raw, "little")
    if word in SFLOAT_SPECIAL:
        return None, SFLOAT_SPECIAL[word]
    return Decimal(_signed(word & 0x0FFF, 12)).scaleb(_signed(word >> 12, 4)), None


def float32(raw: bytes) -> Number:
    word = int.from_bytes(raw, "little")
    if word in FLOAT_SPECIAL:
        return None, FLOAT_SPECIAL[word]
    return Decimal(_signed(word & 0xFFFFFF, 24)).scaleb(_signed(word >> 24, 8)), None


def date_time(raw: bytes, tz: tzinfo) -> datetime | None:
    """The 7-byte Date Time in the device's zone `tz`; None when the year is 0 (unknown)."""
    year = int.from_bytes(raw[0:2], "little")
    month, day, hour, minute, second = raw[2:7]
    if year == 0:
        return None
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError as exc:
        raise FrameError(f"invalid date-time {year:04}-{month:02}-{day:02} "
                         f"{hour:02}:{minute:02}:{second:02}: {exc}") from None


def uint(frame: bytes, offset: int, size: int, what: str) -> int:
    """An unsigned little-endian integer of `size` bytes at `offset` (FrameError if short)."""
    return int.from_bytes(take(frame, offset, size, what), "little")


def sint(frame: bytes, offset: int, size: int, what: str) -> int:
    """A signed (two's complement) little-endian integer of `size` bytes at `offset`."""
    return int.from_bytes(take(frame, offset, size, what), "little", signed=True)


BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"  # Bluetooth Base UUID (Core spec, Vol 3 B 2.5.1)


def uuid128(short: int) -> str:
    """The full lower-case 128-bit form of a 16-bit SIG UUID: 0x2A37 -> '00002a37-0000-...'."""
    return f"{short:08x}{BASE_UUID_SUFFIX}"


def short_uuid(text: str) -> int | None:
    """The 16-bit SIG number of a UUID written as '2a37', '0x2A37' or in full 128-bit form;
    None for anything else (a vendor UUID, an empty string)."""
    value = text.strip().lower()
    if value.endswith(BASE_UUID_SUFFIX) and len(value) == 36 and value.startswith("0000"):
        value = value[4:8]
    value = value.removeprefix("0x")
    if 1 <= len(value) <= 4 and all(c in "0123456789abcdef" for c in value):
        return int(value, 16)
    return None


def read_value(features: Mapping[str, bytes], short: int) -> bytes | None:
    """The value of characteristic `short` among those read at connect (ParseContext.features),
    whichever way its UUID key is written; None when it was not read."""
    for key, value in features.items():
        if short_uuid(key) == short:
            return bytes(value)
    return None


def time_stamp(frame: bytes, offset: int, present: bool,
               ctx: ParseContext) -> tuple[datetime, str, int]:
    """An optional 7-byte time stamp at `offset`: (effective time, its source, the offset
    after it). Without one, or with year 0 (unknown), the gateway's receive time is used and
    the source is "gateway"."""
    effective = None
    if present:
        effective = date_time(take(frame, offset, 7, "time stamp"), ctx.tz)
        offset += 7
    if effective is None:
        return ctx.received, "gateway", offset
    return effective, "device", offset
