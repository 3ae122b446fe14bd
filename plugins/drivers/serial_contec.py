"""Contec CMS50D+ finger pulse oximeter on its USB-serial cable: both firmware generations.

Wire facts, and where each was checked (public reverse-engineering projects read through the
project's search tool; no code copied). "Unverified" marks what no source showed.

Old firmware ("legacy"): 19200 baud, 8 data bits, odd parity, 1 stop bit; the oximeter sends
live data by itself, about 60 five-byte packets a second, and needs no command.
  byte 1: bit 7 = 1 (sync), bit 6 pulse beep, bit 5 SpO2 dropping, bit 4 finger out,
          bits 3..0 signal strength
  byte 2: bit 7 = 0, bits 6..0 pleth
  byte 3: bit 7 = 0, bit 6 = pulse rate bit 7, bit 5 searching, bit 4 probe (sensor) error,
          bits 3..0 bar graph
  byte 4: bit 7 = 0, pulse rate bits 6..0
  byte 5: bit 7 = 0, SpO2 bits 6..0
  - atbrask/CMS50Dplus cms50dplus/cms50dplus.py (19200 8O1, every bit above) and atbrask.dk
    (2015: "live 60 Hz data");
  - apneuvereniging.miraheze.org/wiki/CMS50X ("19200 baud, 8 data bits, 1 stop bit, odd
    parity", 5-byte live pattern, sync in the first byte's bit 7);
  - picbasic.co.uk forum thread 11311 (a Contec 5-byte live format with the same byte
    layout; it reads byte 1 bit 4 as "searching too long" rather than "finger out").
  Unverified: 127 (SpO2) and 255 (pulse) as the no-finger values; the semantics of bit 4 of
  byte 1 (named finger-out after atbrask); the USB cable's chip (assumed the same CP210x as
  the new firmware's).

New firmware (v4.6 and later, "v2"): 115200 baud 8N1, Contec's "Communication protocol of
pulse oximeter V7.0" (2010). Every package: a type byte with bit 7 = 0, a "high byte" with
bit 7 = 1 whose bits 0..6 are bit 7 of the following data bytes 1..7, then data bytes each
sent with bit 7 = 1. The host starts live data with the 9-byte command 7D 81 A1 80 80 80 80 80
80 and keeps it alive with 7D 81 AF 80 80 80 80 80 80; the live package is type 0x01, 9 bytes:
  01 | high byte | d1 | d2 pleth | d3 | d4 pulse rate | d5 SpO2 | d6 | d7
  with high-byte bit 0 (bit 7 of d1) set when the finger is out and bit 1 (bit 7 of d2) when
  searching / no valid data; d1 bits 3..0 look like signal strength; d6, d7 are 0xFF.
  - scribd.com document 226223253, "Communication Protocol of Pulse Oximeter V7.0" (its
    opening pages: 115200 baud, 1 start, 8 data, 1 stop, no parity; the package format with
    the type byte's bit 7 always 0 and the high byte's and data bytes' bit 7 always 1);
  - MarkMLl/Contec_cms50dplus cms50dplus4v6/consoleapp.pas (v4.6: start command, 9-byte
    packages "01 e0 85 d5 9a bd e3 ff ff", pulse rate d4 and SpO2 d5, high-byte bit 0 =
    finger out, signal strength in d1 bits 3..0, and: the device stops after about 30 s);
  - headrotor/contec_data stream_data.py (command replies, a live capture used in the tests,
    7D 81 AF sent periodically "keep-alive?", high byte E0 valid / E1 pulse and SpO2 not
    valid / E2 no valid data);
  - celiponcio/oximeter-CMS50Dplus-v4.6-LIVE-data-display-store-alarm cms50Dplus_thread.py
    (115200 8N1, high-byte bit 0 finger out, bit 1 searching, pulse rate d4, SpO2 d5).
  Unverified: the meaning of d1, d3, d6 and d7 beyond the above (not decoded: kept in raw);
  the keep-alive interval the device needs (sources send it every 0.7 s to ~2 s, one resends
  the start command every second; without it the stream stops after ~30 s). Here both the
  start and the keep-alive command are re-sent every 5 s, well inside those 30 s.

Observations: one SpO2 and one pulse-rate observation per second of live data. The framer
hands the parser 60 packets (about one second) at a time, so every packet's raw bytes are
kept; the values are the last packet's, the flags every condition the device reported during
that second. A value is absent (absent=error) when the device sent its no-value code (SpO2
127, pulse rate 255; flag "missing-data"), a 0 (no physiological value; flag "missing-data"),
or when the last packet says its values are not valid (finger-out, searching, sensor-error,
which are then the flags saying why). The device sends no time: effective = ctx.received.
"""

from __future__ import annotations

from decimal import Decimal

from telemon import __version__
from telemon.codes import KNOWN
from telemon.drivers import (
    Driver,
    FrameError,
    ParseContext,
    ResyncFramer,
    SerialSettings,
    StreamProtocol,
    UsbMatch,
)
from telemon.hookspecs import hookimpl
from telemon.models import AbsentReason, Observation, reading_id

PACKETS_PER_FRAME = 60  # about one second of live data
LEGACY_SIZE = 5
V2_SIZE = 9
V2_LIVE = 0x01  # type byte of the real-time package
V2_MAX_PACKAGE = 64  # a package of another type longer than this is noise
MAX_DROPPED = 1024
MISSING_SPO2, MISSING_PULSE = 127, 255

START_LIVE = bytes.fromhex("7d81a1808080808080")
KEEP_ALIVE = bytes.fromhex("7d81af808080808080")

FLAG_ORDER = ("missing-data", "finger-out", "searching", "sensor-error", "spo2-dropping")


class _ContecFramer(ResyncFramer):
    """What the Contec framers share beyond telemon.drivers.ResyncFramer: complete packets
    are handed on `packets_per_frame` at a time; `pending()` is everything received and not
    yet handed on, `flush()` hands it on at the end of a connection."""

    unit = "packet"
    max_dropped = MAX_DROPPED

    def __init__(self, packets_per_frame: int = PACKETS_PER_FRAME) -> None:
        if packets_per_frame < 1:
            raise ValueError("packets_per_frame must be at least 1")
        super().__init__()
        self.packets_per_frame = packets_per_frame
        self.group = bytearray()  # complete packets not yet handed on
        self.count = 0  # packets in group
        self.stats.update(ignored_packages=0, ignored_bytes=0)

    def _packet(self, out: list[bytes | FrameError], packet: bytes | bytearray) -> None:
        self.stats["packets"] += 1
        self.stats["frames"] += 1
        self.group += packet
        self.count += 1
        if self.count == self.packets_per_frame:
            self._hand_on(out)

    def _hand_on(self, out: list[bytes | FrameError]) -> None:
        if self.group:
            self.stats["emitted"] += 1
            out.append(bytes(self.group))
            self.group.clear()
            self.count = 0

    def _lose(self, out: list[bytes | FrameError], reason: str, data: bytes | bytearray = b"",
              *, kind: str = "lost_sync") -> None:
        self._hand_on(out)  # the packets before the loss go on first
        super()._lose(out, reason, data, kind=kind)

    def pending(self) -> bytes:
        return bytes(self.group + self.lost + self.buffer)

    def flush(self) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        self._hand_on(out)
        rest = bytes(self.lost + self.buffer)
        if rest:
            self.stats["dropped_bytes"] += len(rest)
            out.append(FrameError(f"stream ended inside a packet: {len(rest)} byte(s) dropped",
                                  rest))
        self.lost.clear()
        self.buffer.clear()
        self.locked, self.reason = False, ""
        return out


def legacy_problem(packet: bytes | bytearray) -> str | None:
    """Why 5 bytes are not a legacy live packet (bit 7 set in byte 1 only), or None."""
    if not packet[0] & 0x80:
        return f"byte 1 0x{packet[0]:02x} has the sync bit (bit 7) clear"
    for index in range(1, LEGACY_SIZE):
        if packet[index] & 0x80:
            return f"byte {index + 1} 0x{packet[index]:02x} has bit 7 set (a packet start)"
    return None


class ContecLegacyFramer(_ContecFramer):
    """Old firmware: 5-byte packets, sync on bit 7. There is no checksum (odd parity is the
    UART's, checked by the serial driver); a packet with a misplaced bit 7 means lost sync.
    While searching, a packet is accepted only when the byte after it starts another one."""

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buffer += data
        out: list[bytes | FrameError] = []
        self._feed_sync_bit_frames(out, LEGACY_SIZE, legacy_problem, self._packet)
        return out


class ContecV2Framer(_ContecFramer):
    """New firmware: packages are self-delimiting (type byte bit 7 = 0, every later byte bit 7
    = 1). Live packages (type 0x01, 9 bytes) are handed on; packages of other types (replies to
    commands) are counted in stats["ignored_packages"] and ["ignored_bytes"] and dropped. A
    live package cut short, or a byte with bit 7 set where a type byte is due, is lost sync:
    the framer resumes at the next type byte."""

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buffer += data
        out: list[bytes | FrameError] = []
        buf, pos = self.buffer, 0
        while pos < len(buf):
            if not self.locked:
                if buf[pos] & 0x80:
                    self._skip(out, buf[pos:pos + 1])
                    pos += 1
                    continue
                self._relock(out)
            kind = buf[pos]
            if kind & 0x80:
                self._lose(out, f"byte 0x{kind:02x} (bit 7 set) where a package type was due")
                continue
            end = pos + 1
            while end < len(buf) and buf[end] & 0x80 and end - pos < V2_MAX_PACKAGE:
                end += 1
            length = end - pos
            if kind == V2_LIVE:
                if length >= V2_SIZE:
                    self._packet(out, buf[pos:pos + V2_SIZE])
                    pos += V2_SIZE
                elif end < len(buf):  # a type byte came before the package was complete
                    self._lose(out, f"live package cut short after {length} of {V2_SIZE} "
                               "bytes", buf[pos:end])
                    pos = end
                else:
                    break  # wait for the rest
                continue
            if length >= V2_MAX_PACKAGE:
                self._lose(out, f"package of type 0x{kind:02x} longer than {V2_MAX_PACKAGE} "
                           "bytes", buf[pos:end])
                pos = end
            elif end < len(buf):  # complete: the next type byte has arrived
                self.stats["ignored_packages"] += 1
                self.stats["ignored_bytes"] += length
                pos = end
            else:
                break
        del buf[:pos]
        return out


def _observations(frame: bytes, ctx: ParseContext, driver: str, *, spo2: int, pulse: int,
                  invalid: bool, flags: set[str], context: dict[str, str]) -> list[Observation]:
    effective = ctx.received
    context = {"time_source": "gateway", "method": "self-measured", **context}
    observations = []
    for key, raw_value, missing in (("spo2", spo2, MISSING_SPO2), ("pulse", pulse, MISSING_PULSE)):
        measure = KNOWN[key]
        no_value = raw_value in (missing, 0)
        own = flags | {"missing-data"} if no_value else flags
        value = None if no_value or invalid else Decimal(raw_value)
        observations.append(Observation(
            id=reading_id(device=ctx.device, patient=ctx.patient, code=measure.code.code,
                          effective=effective, raw=frame),
            patient=ctx.patient, device=ctx.device, gateway=ctx.gateway, code=measure.code,
            unit=measure.unit, effective=effective, value=value,
            absent=AbsentReason.ERROR if value is None else None,
            flags=tuple(f for f in FLAG_ORDER if f in own), context=context, raw=frame,
            driver=driver, driver_version=__version__))
    return observations


def _check_spo2(spo2: int) -> None:
    if spo2 > 100 and spo2 != MISSING_SPO2:
        raise FrameError(f"SpO2 {spo2} is neither 0-100 % nor the no-value code 127")


LEGACY, V2 = "serial_contec_cms50d_legacy", "serial_contec_cms50d_v2"


def _legacy_flags(packet: bytes) -> set[str]:
    first, third = packet[0], packet[2]
    return {name for present, name in ((first & 0x10, "finger-out"), (third & 0x20, "searching"),
                                       (third & 0x10, "sensor-error"),
                                       (first & 0x20, "spo2-dropping")) if present}


def parse_legacy(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """One or more 5-byte live packets of the old firmware (as ContecLegacyFramer hands them
    on): SpO2 and pulse rate of the last, flags of all."""
    if not frame or len(frame) % LEGACY_SIZE:
        raise FrameError(f"{len(frame)} bytes are not whole {LEGACY_SIZE}-byte packets")
    flags: set[str] = set()
    for start in range(0, len(frame), LEGACY_SIZE):
        packet = frame[start:start + LEGACY_SIZE]
        if problem := legacy_problem(packet):
            raise FrameError(f"packet {start // LEGACY_SIZE + 1}: {problem}")
        flags |= _legacy_flags(packet)
    last = frame[-LEGACY_SIZE:]
    pulse = (last[2] & 0x40) << 1 | last[3]
    spo2 = last[4]
    _check_spo2(spo2)
    invalid = bool(_legacy_flags(last) - {"spo2-dropping"})
    context = {"firmware": "legacy", "packets": str(len(frame) // LEGACY_SIZE),
               "signal_strength": str(last[0] & 0x0F)}
    return _observations(frame, ctx, LEGACY, spo2=spo2, pulse=pulse, invalid=invalid,
                         flags=flags, context=context)


def v2_problem(package: bytes | bytearray) -> str | None:
    """Why 9 bytes are not a v2 live package, or None."""
    if package[0] != V2_LIVE:
        return f"type byte 0x{package[0]:02x} is not 0x01 (live data)"
    for index in range(1, V2_SIZE):
        if not package[index] & 0x80:
            return f"byte {index + 1} 0x{package[index]:02x} has bit 7 clear"
    return None


def v2_data(package: bytes | bytearray) -> list[int]:
    """The 7 data bytes of a package with their bit 7 restored from the high byte."""
    high = package[1]
    return [package[2 + j] & 0x7F | (0x80 if high >> j & 1 else 0) for j in range(7)]


def _v2_flags(package: bytes) -> set[str]:
    high = package[1]
    return {name for bit, name in ((0x01, "finger-out"), (0x02, "searching")) if high & bit}


def parse_v2(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """One or more 9-byte live packages of the new firmware (as ContecV2Framer hands them on):
    SpO2 and pulse rate of the last, flags of all."""
    if not frame or len(frame) % V2_SIZE:
        raise FrameError(f"{len(frame)} bytes are not whole {V2_SIZE}-byte live packages")
    flags: set[str] = set()
    for start in range(0, len(frame), V2_SIZE):
        package = frame[start:start + V2_SIZE]
        if problem := v2_problem(package):
            raise FrameError(f"package {start // V2_SIZE + 1}: {problem}")
        flags |= _v2_flags(package)
    last = frame[-V2_SIZE:]
    data = v2_data(last)
    pulse, spo2 = data[3], data[4]
    _check_spo2(spo2)
    context = {"firmware": "v2", "packets": str(len(frame) // V2_SIZE),
               "signal_strength": str(data[0] & 0x0F)}
    return _observations(frame, ctx, V2, spo2=spo2, pulse=pulse, invalid=bool(_v2_flags(last)),
                         flags=flags, context=context)


# The CMS50D+ cable's USB-serial chip: Silicon Labs CP210x, 10c4:ea60 (MarkMLl's
# LocateCp210xPort unit looks for it; other v4.6 bridges pick the "Silicon Labs"/"CP210x"
# port). It is the chip's generic ID, shared by countless adapters, and both firmware
# generations use the same cable (unverified for the old one): the USB transport has to
# try one driver and fall back to the other (v2 answers the start command with 0x01
# packages at 115200 8N1; legacy streams by itself at 19200 8O1).
CP210X = (UsbMatch(vid=0x10C4, pid=0xEA60),)

DRIVERS = (
    Driver(
        name=LEGACY, version=__version__, transport="serial", parse=parse_legacy,
        description="Contec CMS50D+ pulse oximeter, old firmware (19200 8O1, 5-byte live "
                    "packets): SpO2 and pulse rate once a second",
        codes=("spo2", "pulse"),
        serial=SerialSettings(baudrate=19200, bytesize=8, parity="O", stopbits=1),
        stream=StreamProtocol(framer=ContecLegacyFramer), usb=CP210X),
    Driver(
        name=V2, version=__version__, transport="serial", parse=parse_v2,
        description="Contec CMS50D+ pulse oximeter, firmware 4.6 and later (115200 8N1, "
                    "command protocol V7.0): SpO2 and pulse rate once a second",
        codes=("spo2", "pulse"),
        serial=SerialSettings(baudrate=115200),
        stream=StreamProtocol(framer=ContecV2Framer, on_open=START_LIVE,
                              keep_alive=START_LIVE + KEEP_ALIVE, keep_alive_every=5.0),
        usb=CP210X),
)


@hookimpl
def register_drivers(register):
    for driver in DRIVERS:
        register(driver)
