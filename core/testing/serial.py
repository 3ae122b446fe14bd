"""Simulated serial pulse oximeters on a pseudo-terminal: real bytes at the real rate.

`serial_device(profile, model=...)` opens a pty pair (os.openpty) and streams, from a
background thread, what the device would send on its cable, built from a physiological
model (telemon.sim.PatientModel) by the same encoders the sim drivers use. The gateway (or a
vendor's driver under test) opens `device.port` with pyserial, at the driver's settings,
exactly as it would open /dev/ttyUSB0::

    with serial_device("nonin_format2", seed=7) as device:
        port = serial.Serial(device.port, 9600, timeout=0.5)
        framer = NoninFramer(2)
        ...

Profiles and what they send:
* "nonin_format2", "nonin_format7": 25-frame packets (125 bytes) three times a second;
* "nonin_format8": 4 bytes once a second;
* "contec_legacy": 5-byte live packets, 60 a second (written 6 at a time every 0.1 s);
* "contec_v2": nothing until the host writes the start command (7D 81 A1 80 80 80 80 80 80);
  then 9-byte live packages, 60 a second, until `keep_alive_timeout` seconds (default 30,
  as the v4.6 firmware does) pass without a start or keep-alive (7D 81 AF ...) command.
Driver names (serial_nonin_format2, serial_contec_cms50d_legacy, ...) work as profiles too.

A pty has no baud rate or parity: the line settings the port is opened with are kept by the
terminal, not enforced; the pacing here is the device's real rate. Values come from
`model` at simulated time `start + n x speed` seconds for the n-th second of streaming
(speed > 1 shows a trend quickly; the pleth waveform always plays at real speed). Bytes the
gateway writes are in `written`. A device keeps streaming whether or not the port is open,
as a real one does: what nobody reads is lost when the pty's buffer is full (`dropped`).
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Self

from telemon import sim

_BAUD = {9600: termios.B9600, 19200: termios.B19200, 115200: termios.B115200}


@dataclass(frozen=True)
class SerialProfile:
    """How one device streams: one second of bytes from the model, the writes it is split
    into, the line settings of its cable, and whether it waits for a start command."""

    second: Callable[[sim.PatientModel, datetime], bytes]
    writes_per_second: int
    baudrate: int
    parity: str = "N"
    needs_start: bool = False


PROFILES: dict[str, SerialProfile] = {
    "nonin_format2": SerialProfile(lambda m, at: sim.nonin_second(m, at, 2), 3, 9600),
    "nonin_format7": SerialProfile(lambda m, at: sim.nonin_second(m, at, 7), 3, 9600),
    "nonin_format8": SerialProfile(
        lambda m, at: sim.nonin_format8(min(100, round(m.sample("spo2", at))),
                                        round(m.sample("pulse", at))), 1, 9600),
    "contec_legacy": SerialProfile(lambda m, at: sim.contec_second(m, at, "legacy"), 10,
                                   19200, parity="O"),
    "contec_v2": SerialProfile(lambda m, at: sim.contec_second(m, at, "v2"), 10, 115200,
                               needs_start=True),
}
ALIASES = {"serial_nonin_format2": "nonin_format2", "serial_nonin_format7": "nonin_format7",
           "serial_nonin_format8": "nonin_format8",
           "serial_contec_cms50d_legacy": "contec_legacy",
           "serial_contec_cms50d_v2": "contec_v2", "sim_nonin_format2": "nonin_format2",
           "sim_contec_legacy": "contec_legacy"}


class SerialDevice:
    """A simulated serial device on a pty (see the module docstring). `port` is the path to
    open; `close()` (or leaving the `with` block) stops it."""

    def __init__(self, profile: str, model: sim.PatientModel | None = None, *,
                 seed: int = 0, scenario: str = "stable", start: datetime | None = None,
                 speed: float = 1.0, tz: tzinfo = sim.HOME,
                 keep_alive_timeout: float = 30.0) -> None:
        name = ALIASES.get(profile, profile)
        if name not in PROFILES:
            raise ValueError(f"unknown serial profile {profile!r}; one of "
                             f"{', '.join(PROFILES)}")
        if speed <= 0:
            raise ValueError("speed must be above 0")
        self.profile, self.spec = name, PROFILES[name]
        self.start = start or datetime.now(UTC)
        self.model = model or sim.PatientModel.for_scenario(scenario, start=self.start,
                                                            seed=seed, tz=tz)
        self.speed, self.keep_alive_timeout = speed, keep_alive_timeout
        self.written = bytearray()  # what the host wrote to the device
        self._scanned = 0  # how much of it was searched for commands
        self.sent = 0  # bytes written to the line
        self.dropped = 0  # bytes lost because nobody read them
        self.seconds = 0  # seconds of data streamed
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line editing before the host opens the port
        attributes = termios.tcgetattr(self._slave)
        speed_flag = _BAUD.get(self.spec.baudrate)
        if speed_flag is not None:
            attributes[4] = attributes[5] = speed_flag
            termios.tcsetattr(self._slave, termios.TCSANOW, attributes)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._streaming_until = 0.0 if self.spec.needs_start else float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim-{name}", daemon=True)
        self._thread.start()

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def streaming(self) -> bool:
        return time.monotonic() < self._streaming_until

    # -- the device -----------------------------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.spec.writes_per_second
        pending: list[bytes] = []
        begun = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            due = begun + tick * period
            self._listen(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            if time.monotonic() < due:
                continue
            tick += 1
            if not self.streaming:
                pending.clear()
                continue
            if not pending:
                pending = self._split(self._second())
            self._write(pending.pop(0))

    def _second(self) -> bytes:
        at = self.start + timedelta(seconds=self.seconds * self.speed)
        self.seconds += 1
        return self.spec.second(self.model, at.astimezone(self.model.tz))

    def _split(self, data: bytes) -> list[bytes]:
        count = self.spec.writes_per_second
        size = len(data) // count
        return [data[i * size:(i + 1) * size if i < count - 1 else len(data)]
                for i in range(count)]

    def _write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                done = os.write(self._master, view)
            except BlockingIOError:  # nobody reads: the line drops it, as a UART would
                self.dropped += len(view)
                return
            except OSError:
                return
            self.sent += done
            view = view[done:]

    def _listen(self, timeout: float) -> None:
        """Read what the host writes (commands) for up to `timeout` seconds."""
        try:
            ready = select.select([self._master], [], [], timeout)[0]
        except (OSError, ValueError):
            self._stop.wait(timeout)
            return
        if not ready:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        self.written += data
        if self.spec.needs_start:
            self._commands()

    def _commands(self) -> None:
        """The v2 firmware: a start or keep-alive command (re)opens the live stream."""
        size = len(sim.CONTEC_START_LIVE)
        text = bytes(self.written[max(0, self._scanned - size + 1):])
        self._scanned = len(self.written)
        if sim.CONTEC_START_LIVE in text or sim.CONTEC_KEEP_ALIVE in text:
            self._streaming_until = time.monotonic() + self.keep_alive_timeout


def serial_device(profile: str, model: sim.PatientModel | None = None,
                  **options) -> SerialDevice:
    """A simulated serial device of `profile` streaming on a new pty (see SerialDevice)."""
    return SerialDevice(profile, model, **options)


__all__ = ["PROFILES", "SerialDevice", "SerialProfile", "serial_device"]
