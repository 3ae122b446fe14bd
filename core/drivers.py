"""What a device driver declares: its transport, how its devices are matched, a pure parser.

The parser is a function of bytes (plus who/where it was read) to observations, with no I/O,
so it is tested on recorded frames. Transport code (BLE, serial, USB) lives in the edge and
calls the parser; it never lives in the parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Literal

from telemon.models import Observation

Transport = Literal["ble", "serial", "usb", "sim"]
TRANSPORTS = ("ble", "serial", "usb", "sim")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,48}$")


class FrameError(ValueError):
    """A frame the parser cannot decode; the reason says exactly why (kept in quarantine)."""


@dataclass(frozen=True)
class ParseContext:
    """Who and where a frame was read: the parser puts it on every observation."""

    patient: str
    device: str
    gateway: str
    received: datetime  # gateway clock, used when the device sends no time of its own
    device_tz: tzinfo | None = None  # the zone the device clock is set to; None: received's

    @property
    def tz(self) -> tzinfo:
        return self.device_tz or self.received.tzinfo or UTC


@dataclass(frozen=True)
class BleMatch:
    """A BLE device is ours when it advertises one of these services (or its name matches)."""

    service_uuids: tuple[str, ...]
    characteristic: str  # the characteristic whose values the parser decodes, e.g. "2a35"
    local_name: str | None = None  # regular expression on the advertised local name


@dataclass(frozen=True)
class UsbMatch:
    vid: int
    pid: int


@dataclass(frozen=True)
class SerialSettings:
    baudrate: int
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: float = 1


@dataclass(frozen=True)
class Driver:
    name: str
    version: str
    transport: Transport
    parse: Callable[[bytes, ParseContext], list[Observation]]
    description: str
    codes: tuple[str, ...] = ()  # keys of telemon.codes.KNOWN it can produce
    ble: BleMatch | None = None
    serial: SerialSettings | None = None
    usb: tuple[UsbMatch, ...] = field(default=())

    def problems(self) -> list[str]:
        """Everything wrong with this declaration (empty when it is valid)."""
        found = []
        if not NAME_PATTERN.match(self.name):
            found.append(f"name {self.name!r} must be lower-case letters, digits and _")
        if self.transport not in TRANSPORTS:
            found.append(f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
        if not callable(self.parse):
            found.append("parse must be a function of (bytes, ParseContext)")
        if self.transport == "ble" and self.ble is None:
            found.append("a ble driver needs a BleMatch (service UUIDs)")
        if self.transport in ("serial", "usb") and self.serial is None:
            found.append(f"a {self.transport} driver needs SerialSettings")
        if self.transport == "usb" and not self.usb:
            found.append("a usb driver needs at least one UsbMatch (VID:PID)")
        return found
