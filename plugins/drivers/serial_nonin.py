"""Nonin pulse oximeters on a serial line (or a USB-serial cable): data formats 2, 7 and 8.

Wire facts, and where each was checked (public reverse-engineering and integration code read
through the project's search tool; no code copied). "Unverified" marks what no source showed.

Format 2 (OEM III module, Xpod 3012LP USB, 9600 baud 8N1):
  frame = 5 bytes: 0x01 | STATUS | PLETH (8 bit) | FLOAT | CHK, with CHK = (sum of bytes
  0..3) mod 256. 25 frames make a packet, 3 packets a second (75 frames/s); STATUS bit 0
  (SYNC) is set on the first frame of each packet only.
  - pez-globo/pufferfish-software, firmware .../Driver/Serial/Nonin/FrameReceiver.cpp (start
    byte 0x01, status bit 7, checksum), PacketReceiver.cpp and Types.h (SYNC bit, 25-frame
    packets, status bit masks, FLOAT byte per frame);
  - mattjlewis/NoninPulseOx DataFormat2FrameSerialiser.java (5 bytes, 75/s, 25 per packet,
    a 30-frame capture whose checksums all hold: used in tests/test_serial_parsers.py);
  - agricolab/app-nonin nonin/device.py (Xpod 3012LP USB: 9600 baud, format 2, bit 6 SNSD).
Which devices speak which format: the WristOx2 3150 OEM specification's contents list "Serial
Data Format #1, #2, #7, #8, #13" (hobbydocbox.com and scribd.com copies of Nonin 7970-000-05;
only the contents pages were readable); mattjlewis/NoninPulseOx implements formats 2, 8 and
13 for the Onyx II 9560; Pufferfish reads an OEM III module in format 2.

Format 7 (WristOx2 3150, over Bluetooth SPP or its serial cable):
  frame = 5 bytes: STATUS | PLETH MSB | PLETH LSB | FLOAT | CHK, CHK = (sum of bytes 0..3)
  mod 256; STATUS bit 7 always 1; same 25-frame packets with SYNC in STATUS bit 0; packets
  every 1/3 s.
  - uk.ac.ox.ibme / org.apache.cordova.nonin NoninFrame.java and NoninPacket.java (Oxford
    IBME, Gibson and Salvi: layout, status bits 5..0, FLOAT index table, 127/511 missing
    values, STAT2 bits 0 and 5);
  - MD PnP OpenICE org.mdpnp.devices.nonin.pulseox Packet.java and Status.java (checksum,
    status bits, FLOAT index table).
  Unverified: STATUS bit 6 in format 7 (no format-7 source decodes it; it is left undecoded
  here, not guessed), and the baud rate on a wired port (9600 is chosen, as format 2; a
  Bluetooth SPP link ignores it).
Format 8 (WristOx2 3150, Onyx II 9560; format 1 plus a STATUS2 byte), once a second:
  frame = 4 bytes: STATUS | HR LSB | SpO2 | STATUS2, no checksum. STATUS: bit 7 = 1, bit 6
  SNSD, bit 5 OOT, bit 4 LPRF, bit 3 MPRF, bit 2 ARTF, bits 1..0 HR bits 8..7. HR LSB and
  SpO2 have bit 7 clear. STATUS2: bit 5 SmartPoint, bit 3 sensor alarm, bit 0 low battery.
  - mattjlewis/NoninPulseOx DataFormat8Serialiser.java (byte order, STATUS bits 5..0, HR
    9 bits, STATUS2 bits 5, 3, 0);
  - drphrozen/javautilityclasses NoninAndroid/.../Format8.java (STATUS bit 6 sensor
    disconnect, STATUS2 bits 3 and 0);
  - pastebin.com/7WvErGqY, "Nonin Serial Protocol 1" (format 1 = the first three bytes:
    bit 7 always 1, bit 6 SNSD, HR 9 bits with 511 = missing, SpO2 127 = missing).
  Unverified: bit 7 of STATUS2 (the framer does not rely on it), STATUS2 bits 1, 2 and 4
  (one source or none: not decoded), the 127/511 missing codes in format 8 itself (taken
  from format 1, whose first three bytes format 8 repeats).

STATUS (formats 2 and 7): bit 7 always 1; bit 6 SNSD sensor disconnected (format 2); bit 5
ARTF artifact; bit 4 OOT out of track; bit 3 SNSA sensor alarm; bits 2..1 perfusion
(01 green, 10 red = low, 11 yellow = marginal; shown only during a pulse); bit 0 SYNC.
FLOAT byte by frame of the packet (0-based): 0/1 HR MSB/LSB (4-beat average, "formatted for
recording", i.e. missing at once when the finger is out), 2 SpO2 (same), 3 firmware
revision, 5/6 3 Hz timer, 7 STAT2, 8 SpO2 for display, 9 SpO2 fast, 10 SpO2 beat-to-beat,
13/14 HR 8-beat, 15 SpO2 8-beat, 16 SpO2 8-beat display, 19..22 HR for display; HR MSB
carries HR bits 8..7 in its bits 1..0, HR LSB bits 6..0 (Oxford's NoninPacket and every
format 1/8 source; MD PnP's Packet.java shifts the MSB by 8, which only differs at 128/min and
above: the 7-bit reading is used). Missing data: SpO2 127, HR 511.

Observations: one SpO2 and one pulse-rate observation per second. Formats 2 and 7 send a
packet every 1/3 s; the framer hands the parser one second (3 packets, 375 bytes) at a time,
so the raw bytes of every frame are kept and the pleth waveform is in `raw`. The values are
the last packet's 4-beat averages (formatted for recording); the flags are every status bit
the device set during that second (artifact, out-of-track, sensor-alarm,
sensor-disconnected, and the worst perfusion shown: low- or marginal-perfusion), plus
low-battery from STAT2. A missing-data code gives `absent=error` with the flag
"missing-data". The device sends no time: effective = ctx.received, time_source=gateway.
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

FRAMES_PER_PACKET = 25
PACKETS_PER_SECOND = 3
FRAME_SIZE = 5  # formats 2 and 7
PACKET_SIZE = FRAME_SIZE * FRAMES_PER_PACKET
FORMAT8_SIZE = 4
STATUS_AT = {2: 1, 7: 0}  # index of STATUS in a format 2 / format 7 frame
MISSING_SPO2, MISSING_HR = 127, 511
MAX_DROPPED = 4 * PACKET_SIZE  # bytes without sync before they are reported anyway

# Frame of the packet (0-based) whose FLOAT byte holds each value.
HR_MSB, HR_LSB, SPO2, FIRMWARE, STAT2 = 0, 1, 2, 3, 7

# Every flag this module can set, in the order observations carry them.
FLAG_ORDER = ("missing-data", "sensor-disconnected", "sensor-alarm", "out-of-track",
              "artifact", "low-perfusion", "marginal-perfusion", "low-battery")
PERFUSION = {0b01: "green", 0b11: "yellow", 0b10: "red"}  # STATUS bits 2..1
PERFUSION_RANK = {"green": 1, "yellow": 2, "red": 3}
PERFUSION_FLAG = {"yellow": "marginal-perfusion", "red": "low-perfusion"}


def frame_problem(data_format: int, frame: bytes) -> tuple[str, str] | None:
    """Why 5 bytes are not a valid format 2/7 frame, as (stats counter, reason); or None."""
    if data_format == 2 and frame[0] != 0x01:
        return "lost_sync", f"start byte 0x{frame[0]:02x} is not 0x01"
    status = frame[STATUS_AT[data_format]]
    if not status & 0x80:
        return "lost_sync", f"status byte 0x{status:02x} has bit 7 clear"
    checksum = sum(frame[:4]) & 0xFF
    if frame[4] != checksum:
        return "bad_checksum", f"checksum 0x{frame[4]:02x}, but bytes 0-3 sum to 0x{checksum:02x}"
    return None


class _NoninFramer(ResyncFramer):
    """What the Nonin framers share beyond telemon.drivers.ResyncFramer."""

    max_dropped = MAX_DROPPED

    def _emit(self, out: list[bytes | FrameError], frame: bytes | bytearray) -> None:
        self.stats["emitted"] += 1
        out.append(bytes(frame))


class NoninFramer(_NoninFramer):
    """Formats 2 and 7: checks every 5-byte frame (start byte, status bit 7, checksum) and the
    SYNC bit, assembles 25-frame packets and hands on `packets_per_frame` packets at a time
    (default 3: one second). A bad frame or a packet cut short drops the packet in progress;
    the framer then searches for the next packet start (a valid SYNC frame followed by a valid
    frame without SYNC) and reports what it dropped, with the reason, as one FrameError.
    `pending()` is everything received and not yet handed on, `flush()` hands it on."""

    unit = "packet"

    def __init__(self, data_format: int = 2, packets_per_frame: int = PACKETS_PER_SECOND) -> None:
        if data_format not in STATUS_AT:
            raise ValueError(f"NoninFramer handles formats 2 and 7, not {data_format}")
        if packets_per_frame < 1:
            raise ValueError("packets_per_frame must be at least 1")
        super().__init__()
        self.format, self.packets_per_frame = data_format, packets_per_frame
        self.packet = bytearray()  # frames of the packet being assembled
        self.group = bytearray()  # complete packets not yet handed on

    def _sync(self, frame: bytes | bytearray) -> bool:
        return bool(frame[STATUS_AT[self.format]] & 0x01)

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buffer += data
        out: list[bytes | FrameError] = []
        buf, pos = self.buffer, 0
        while len(buf) - pos >= FRAME_SIZE:
            frame = bytes(buf[pos:pos + FRAME_SIZE])
            problem = frame_problem(self.format, frame)
            if not self.locked:
                if problem is None and self._sync(frame):
                    if len(buf) - pos < 2 * FRAME_SIZE:
                        break  # wait for the frame that confirms this packet start
                    after = buf[pos + FRAME_SIZE:pos + 2 * FRAME_SIZE]
                    if frame_problem(self.format, after) is None and not self._sync(after):
                        self._relock(out)
                        continue
                self._skip(out, frame[:1])
                pos += 1
                continue
            number = len(self.packet) // FRAME_SIZE + 1
            if problem is None and self._sync(frame) == (number == 1):
                self.stats["frames"] += 1
                self.packet += frame
                pos += FRAME_SIZE
                if len(self.packet) == PACKET_SIZE:
                    self.stats["packets"] += 1
                    self.group += self.packet
                    self.packet.clear()
                    if len(self.group) == PACKET_SIZE * self.packets_per_frame:
                        self._emit(out, self.group)
                        self.group.clear()
                continue
            if problem is None:  # a valid frame whose SYNC bit is wrong here
                why = (f"packet start (SYNC bit set) where frame {number} was due"
                       if number > 1 else "SYNC bit clear where a packet should start")
                problem = ("lost_sync", why)
            if self.group:  # complete packets are handed on before the loss is reported
                self._emit(out, self.group)
                self.group.clear()
            kind, reason = problem
            self._lose(out, f"frame {number} of a packet: {reason}", self.packet, kind=kind)
            self.packet.clear()
        del buf[:pos]
        return out

    def pending(self) -> bytes:
        return bytes(self.group + self.packet + self.lost + self.buffer)

    def flush(self) -> list[bytes | FrameError]:
        """At the end of a connection: complete packets, and what was left over."""
        out: list[bytes | FrameError] = []
        if self.group:
            self._emit(out, self.group)
        rest = bytes(self.packet + self.lost + self.buffer)
        if rest:
            self.stats["dropped_bytes"] += len(rest)
            out.append(FrameError(f"stream ended inside a packet: {len(rest)} byte(s) dropped",
                                  rest))
        for pending in (self.group, self.packet, self.lost, self.buffer):
            pending.clear()
        self.locked, self.reason = False, ""
        return out


def format8_problem(frame: bytes | bytearray) -> str | None:
    """Why 4 bytes are not a format 8 frame (STATUS bit 7 set, HR LSB and SpO2 bit 7 clear)."""
    if not frame[0] & 0x80:
        return f"status byte 0x{frame[0]:02x} has bit 7 clear"
    for index, name in ((1, "HR LSB"), (2, "SpO2")):
        if frame[index] & 0x80:
            return f"{name} byte 0x{frame[index]:02x} has bit 7 set"
    return None


class NoninFormat8Framer(_NoninFramer):
    """Format 8: 4-byte frames without a checksum, once a second. Sync rests on bit 7 (set in
    STATUS only). While searching, a frame is accepted only when the byte after it starts the
    next frame, so a lock is confirmed by two frames; once locked, frames go on at once."""

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        self.buffer += data
        out: list[bytes | FrameError] = []
        self._feed_sync_bit_frames(out, FORMAT8_SIZE, format8_problem, self._frame)
        return out

    def _frame(self, out: list[bytes | FrameError], frame: bytearray) -> None:
        self.stats["frames"] += 1
        self._emit(out, frame)

    def pending(self) -> bytes:
        return bytes(self.lost + self.buffer)

    def flush(self) -> list[bytes | FrameError]:
        rest = self.pending()
        self.lost.clear()
        self.buffer.clear()
        self.locked, self.reason = False, ""
        if not rest:
            return []
        self.stats["dropped_bytes"] += len(rest)
        return [FrameError(f"stream ended inside a frame: {len(rest)} byte(s) dropped", rest)]


def _observations(frame: bytes, ctx: ParseContext, driver: str, *, spo2: int, pulse: int,
                  flags: set[str], context: dict[str, str]) -> list[Observation]:
    """One SpO2 and one pulse-rate observation; the device's missing-data code -> absent."""
    effective = ctx.received
    context = {"time_source": "gateway", "method": "self-measured", **context}
    observations = []
    for key, raw_value, missing in (("spo2", spo2, MISSING_SPO2), ("pulse", pulse, MISSING_HR)):
        measure = KNOWN[key]
        own = flags | {"missing-data"} if raw_value == missing else flags
        value = None if raw_value == missing else Decimal(raw_value)
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
        raise FrameError(f"SpO2 {spo2} is neither 0-100 % nor the missing-data code 127")


def _parse_packets(data_format: int, driver: str, frame: bytes,
                   ctx: ParseContext) -> list[Observation]:
    if not frame or len(frame) % PACKET_SIZE:
        raise FrameError(f"{len(frame)} bytes are not whole packets of {FRAMES_PER_PACKET} "
                         f"{FRAME_SIZE}-byte frames ({PACKET_SIZE} bytes each)")
    status_at = STATUS_AT[data_format]
    flags: set[str] = set()
    perfusion = ""
    for start in range(0, len(frame), FRAME_SIZE):
        unit = frame[start:start + FRAME_SIZE]
        packet, number = divmod(start, PACKET_SIZE)
        where = f"packet {packet + 1}, frame {number // FRAME_SIZE + 1}"
        if problem := frame_problem(data_format, unit):
            raise FrameError(f"{where}: {problem[1]}")
        status = unit[status_at]
        if bool(status & 0x01) != (number == 0):
            raise FrameError(f"{where}: SYNC bit {'set' if status & 1 else 'clear'}; it is set "
                             "on the first frame of a packet only")
        if data_format == 2 and status & 0x40:
            flags.add("sensor-disconnected")
        for bit, name in ((0x20, "artifact"), (0x10, "out-of-track"), (0x08, "sensor-alarm")):
            if status & bit:
                flags.add(name)
        shown = PERFUSION.get((status >> 1) & 0b11, "")
        if shown and PERFUSION_RANK[shown] > PERFUSION_RANK.get(perfusion, 0):
            perfusion = shown
    last = frame[-PACKET_SIZE:]
    floats = [last[k * FRAME_SIZE + 3] for k in range(FRAMES_PER_PACKET)]
    pulse = (floats[HR_MSB] & 0x03) << 7 | floats[HR_LSB] & 0x7F
    spo2 = floats[SPO2]
    _check_spo2(spo2)
    if floats[STAT2] & 0x01:
        flags.add("low-battery")
    if perfusion in PERFUSION_FLAG:
        flags.add(PERFUSION_FLAG[perfusion])
    context = {"data_format": str(data_format), "packets": str(len(frame) // PACKET_SIZE),
               "firmware_revision": str(floats[FIRMWARE])}
    if perfusion:
        context["perfusion"] = perfusion
    if floats[STAT2] & 0x20:
        context["smartpoint"] = "yes"
    return _observations(frame, ctx, driver, spo2=spo2, pulse=pulse, flags=flags,
                         context=context)


FORMAT2, FORMAT7, FORMAT8 = "serial_nonin_format2", "serial_nonin_format7", "serial_nonin_format8"


def parse_format2(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """One or more 125-byte format 2 packets (as NoninFramer(2) hands them on)."""
    return _parse_packets(2, FORMAT2, frame, ctx)


def parse_format7(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """One or more 125-byte format 7 packets (as NoninFramer(7) hands them on)."""
    return _parse_packets(7, FORMAT7, frame, ctx)


def parse_format8(frame: bytes, ctx: ParseContext) -> list[Observation]:
    """One 4-byte format 8 frame."""
    if len(frame) != FORMAT8_SIZE:
        raise FrameError(f"a format 8 frame has {FORMAT8_SIZE} bytes, not {len(frame)}")
    if problem := format8_problem(frame):
        raise FrameError(problem)
    status, hr_lsb, spo2, status2 = frame
    pulse = (status & 0x03) << 7 | hr_lsb
    _check_spo2(spo2)
    flags = {name for bit, name in ((0x40, "sensor-disconnected"), (0x20, "out-of-track"),
                                    (0x10, "low-perfusion"), (0x08, "marginal-perfusion"),
                                    (0x04, "artifact")) if status & bit}
    flags |= {name for bit, name in ((0x08, "sensor-alarm"), (0x01, "low-battery"))
              if status2 & bit}
    context = {"data_format": "8"}
    if status2 & 0x20:
        context["smartpoint"] = "yes"
    return _observations(frame, ctx, FORMAT8, spo2=spo2, pulse=pulse, flags=flags,
                         context=context)


NONIN_SERIAL = SerialSettings(baudrate=9600)  # 8N1: agricolab/app-nonin (format 2, Xpod)

# Nonin Xpod 3012LP USB: an FTDI FT232R cable, 0403:6001 (agricolab/app-nonin detects the
# Xpod by exactly this pair). That is FTDI's generic ID: any FT232R adapter has it, so the
# USB transport must not take a match for proof that a Nonin is attached. No USB IDs of other
# Nonin models were found (unverified: none listed for formats 7 and 8).
XPOD_USB = (UsbMatch(vid=0x0403, pid=0x6001),)

DRIVERS = (
    Driver(
        name=FORMAT2, version=__version__, transport="serial", parse=parse_format2,
        description="Nonin pulse oximeters in serial data format 2 (OEM III, Xpod): "
                    "SpO2 and pulse rate once a second",
        codes=("spo2", "pulse"), serial=NONIN_SERIAL,
        stream=StreamProtocol(framer=lambda: NoninFramer(2)), usb=XPOD_USB),
    Driver(
        name=FORMAT7, version=__version__, transport="serial", parse=parse_format7,
        description="Nonin pulse oximeters in serial data format 7 (16-bit pleth; WristOx2 "
                    "3150): SpO2 and pulse rate once a second",
        codes=("spo2", "pulse"), serial=NONIN_SERIAL,
        stream=StreamProtocol(framer=lambda: NoninFramer(7))),
    Driver(
        name=FORMAT8, version=__version__, transport="serial", parse=parse_format8,
        description="Nonin pulse oximeters in serial data format 8 (4 bytes a second; "
                    "WristOx2 3150, Onyx II 9560): SpO2 and pulse rate",
        codes=("spo2", "pulse"), serial=NONIN_SERIAL,
        stream=StreamProtocol(framer=NoninFormat8Framer)),
)
# No on_open command: the data format is a setting stored in the oximeter (set with Nonin's
# own tools); writing format-selection commands whose bytes no source confirms to a medical
# device would be a guess.


@hookimpl
def register_drivers(register):
    for driver in DRIVERS:
        register(driver)
