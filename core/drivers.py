"""What a device driver declares: its transport, how its devices are matched, a pure parser.

The parser is a function of bytes (plus who/where it was read) to observations, with no I/O,
so it is tested on recorded frames. Transport code (BLE, serial, USB) lives in the edge and
calls the parser; it never lives in the parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, Protocol

from telemon.models import Observation

Transport = Literal["ble", "serial", "usb", "sim"]
TRANSPORTS = ("ble", "serial", "usb", "sim")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,48}$")


class FrameError(ValueError):
    """A frame the parser cannot decode; the reason says exactly why (kept in quarantine).
    A framer that gives up on bytes passes them as `raw`, so the quarantine keeps them."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.raw = raw


@dataclass(frozen=True)
class ParseContext:
    """Who and where a frame was read: the parser puts it on every observation."""

    patient: str
    device: str
    gateway: str
    received: datetime  # gateway clock, used when the device sends no time of its own
    device_tz: tzinfo | None = None  # the zone the device clock is set to; None: received's
    source: str = ""  # where the frame came from: the BLE characteristic UUID, or the port
    features: Mapping[str, bytes] = field(default_factory=dict)  # BLE values read at connect

    @property
    def tz(self) -> tzinfo:
        return self.device_tz or self.received.tzinfo or UTC


@dataclass(frozen=True)
class BleMatch:
    """A BLE device is ours when it advertises one of these services (or its name matches)."""

    service_uuids: tuple[str, ...]
    characteristics: tuple[str, ...]  # notified/indicated; their values go to the parser
    reads: tuple[str, ...] = ()  # read once at connect (e.g. a feature characteristic);
    # the parser finds them in ParseContext.features
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


class Framer(Protocol):
    """Splits a serial byte stream into frames for the parser. Pure and stateful: one per
    connection. Bytes that fit no frame (lost sync, bad checksum) come back as FrameError
    items, with the reason, and the framer resynchronises; it never raises."""

    def feed(self, data: bytes) -> list[bytes | FrameError]: ...


class ResyncFramer:
    """A base for framers that must find their place in a byte stream (serial oximeters send
    frames without any start marker but a bit). From the moment sync is lost until it is
    found again the bytes that fit no frame are collected, then reported as one FrameError
    with the reason and the raw bytes. A subclass writes `feed` with `_skip` (a byte that
    starts no frame), `_relock` (a frame start found) and `_lose` (sync lost, and why);
    `_feed_sync_bit_frames` is all of `feed` for fixed-size frames whose first byte alone
    has bit 7 set."""

    unit = "frame"  # what the framer frames, in its messages
    max_dropped = 1024  # bytes without sync before they are reported anyway (memory bound)

    def __init__(self) -> None:
        self.buffer = bytearray()  # received, not yet examined
        self.locked = False
        self.lost = bytearray()  # given up on since sync was lost
        self.reason = ""  # why sync was lost ("" before the first lock)
        self.stats = {"frames": 0, "packets": 0, "emitted": 0, "bad_checksum": 0,
                      "lost_sync": 0, "resyncs": 0, "dropped_bytes": 0}

    def _lose(self, out: list[bytes | FrameError], reason: str, data: bytes | bytearray = b"",
              *, kind: str = "lost_sync") -> None:
        self.stats[kind] += 1
        self.locked, self.reason = False, reason
        self.lost += data

    def _skip(self, out: list[bytes | FrameError], data: bytes | bytearray) -> None:
        self.lost += data
        if len(self.lost) >= self.max_dropped:
            out.append(self._report(f"no {self.unit} start found yet"))

    def _relock(self, out: list[bytes | FrameError]) -> None:
        self.locked = True
        if self.lost:
            self.stats["resyncs"] += 1
            out.append(self._report("resynchronised" if self.reason else "synchronised"))

    def _report(self, outcome: str) -> FrameError:
        raw = bytes(self.lost)
        self.stats["dropped_bytes"] += len(raw)
        self.lost.clear()
        cause = self.reason or f"bytes before the first {self.unit} start"
        return FrameError(f"{cause}; {outcome} after dropping {len(raw)} byte(s)", raw)

    def _feed_sync_bit_frames(self, out: list[bytes | FrameError], size: int,
                              problem: Callable[[bytearray], str | None],
                              accept: Callable[[list[bytes | FrameError], bytearray], None],
                              ) -> None:
        """Take the frames of `size` bytes out of the buffer (`problem`: why some bytes are
        no frame, or None; `accept`: what to do with a frame). While searching, a frame
        counts only when the byte after it starts another, so a lock takes two frames;
        once locked, frames go on at once."""
        buf, pos = self.buffer, 0
        while len(buf) - pos >= size:
            frame = buf[pos:pos + size]
            found = problem(frame)
            if not self.locked:
                if found is None:
                    if len(buf) - pos == size:
                        break  # wait for the next frame's first byte
                    if buf[pos + size] & 0x80:
                        self._relock(out)
                        continue
                self._skip(out, frame[:1])
                pos += 1
                continue
            if found is None:
                accept(out, frame)
                pos += size
                continue
            self._lose(out, f"{self.unit}: {found}")
        del buf[:pos]


class LineFramer:
    """Frames of devices that send one text line per reading, ending in `terminator`.
    A line longer than `max_length` is noise or lost sync: it is reported and dropped."""

    def __init__(self, terminator: bytes = b"\r\n", max_length: int = 256) -> None:
        self.terminator, self.max_length = terminator, max_length
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(self.terminator)
        out: list[bytes | FrameError] = [
            line + self.terminator if len(line) <= self.max_length
            else FrameError(f"line of {len(line)} bytes exceeds {self.max_length}: dropped")
            for line in lines]
        if len(self.buffer) > self.max_length:
            out.append(FrameError(f"{len(self.buffer)} bytes without a line end: dropped"))
            self.buffer = b""
        return out


@dataclass(frozen=True)
class StreamProtocol:
    """How a serial/USB device talks: its framer, and what to write to it."""

    framer: Callable[[], Framer]  # a new framer per connection
    on_open: bytes = b""  # written once the port is open (e.g. "start live data")
    keep_alive: bytes = b""  # written every keep_alive_every seconds while connected
    keep_alive_every: float = 0.0


SCHEDULE_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


@dataclass(frozen=True)
class Simulator:
    """How a `sim` driver makes its device's frames from a physiological model (telemon.sim).

    `frame(model, at)` is pure: the bytes the device would send for a reading taken at `at`
    (aware, in the device clock's zone) of the patient `model` (a telemon.sim.PatientModel).
    Readings are taken at the local times of day in `schedule` ("HH:MM", the citizen's
    routine, shifted by up to `jitter` minutes each day); a streaming device sends a frame
    every `every` seconds for `session` seconds per reading (0: one frame). `source` and
    `features` are what a real transport would put in ParseContext (the characteristic UUID
    or port; the values read at connect).
    """

    frame: Callable[[Any, datetime], bytes]
    schedule: tuple[str, ...] = ("08:00",)
    session: float = 0.0
    every: float = 1.0
    jitter: float = 15.0
    source: str = ""
    features: Mapping[str, bytes] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if not callable(self.frame):
            found.append("simulate.frame must be a function of (model, datetime)")
        if not self.schedule:
            found.append("simulate.schedule needs at least one time of day")
        found += [f"simulate.schedule time {t!r} is not HH:MM" for t in self.schedule
                  if not isinstance(t, str) or not SCHEDULE_TIME.match(t)]
        if self.session < 0 or self.every <= 0 or self.jitter < 0:
            found.append("simulate.session and jitter must be >= 0, every > 0")
        return found


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
    stream: StreamProtocol | None = None
    usb: tuple[UsbMatch, ...] = field(default=())
    simulate: Simulator | None = None  # sim drivers: how frames are made (telemon.sim)

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
        if self.transport in ("serial", "usb") and (self.serial is None or self.stream is None):
            found.append(f"a {self.transport} driver needs SerialSettings and a StreamProtocol")
        if self.transport == "usb" and not self.usb:
            found.append("a usb driver needs at least one UsbMatch (VID:PID)")
        if self.transport == "sim":
            if not isinstance(self.simulate, Simulator):
                found.append("a sim driver needs a Simulator (simulate=...)")
            else:
                found += self.simulate.problems()
        return found
