"""The edge gateway's serial transport: open a port, read, frame, parse, reconnect.

One `SerialTransport` per configured serial or USB-serial device. It opens the port with
pyserial at the driver's `SerialSettings` (baud rate, byte size, parity, stop bits; an
exclusive lock on POSIX, so two programs never split one stream), writes the driver's
`StreamProtocol.on_open` bytes, then `keep_alive` every `keep_alive_every` seconds, and reads
in a worker thread of its own (pyserial is blocking; reads time out every `read_timeout`
seconds so `stop()` is honoured at once). Every connection gets a fresh framer; each frame it
hands on goes to the driver's pure parser with a `ParseContext` (patient, device, gateway,
received = `clock()` in the gateway's time zone, source = the port). Observations go to
`submit`; a `FrameError` from the framer (lost sync, bad checksum: with its `.raw` bytes) or
from the parser (with the frame) goes to `reject(source, reason, raw)` and reading goes on.

When the port fails while open (`SerialException`/`OSError`: a USB cable pulled out), the
framer is flushed (what it held is handed on or rejected, never dropped silently), the
status becomes "disconnected", and the port is opened again after an exponential backoff
with full jitter (`telemon.backoff.Backoff`, reset once a connection delivered a frame or
stayed up `stable_after` seconds).

Where the port comes from: the device's `address` (e.g. `/dev/ttyUSB0`, or better the stable
`/dev/serial/by-id/...` link), or, with no address and a driver that declares USB VID:PIDs,
a `telemon.usb.UsbDiscovery` that offers ports as they are plugged in (see its matching
rule). A driver with neither cannot run: status "error: ...".

`status` says where it stands (and the log says the same in words; `reason` has details):

* ``idle`` (before `run()`), ``opening``, ``connected`` (the port is open and read),
  ``probing`` (a discovered USB port on probation: the first valid frame makes it
  "connected"; see `telemon.usb`), ``waiting-for-usb`` (no matching USB port is plugged in)
* ``not-found`` – the port does not exist (never opened in this run: wrong address, or the
  device is not plugged in)
* ``disconnected`` – the port went away while open, or is still gone when retried
* ``no-permission`` – the gateway's user may not open the port; `reason` names the port and
  the fix (the ``dialout`` group, or a udev rule)
* ``busy`` – another program holds the port
* ``error: <reason>`` – anything else (e.g. settings the port refuses)
* ``stopped`` – after `stop()`

`submit`, `reject` and `on_status` are called from the transport's reader thread (status
changes also from the event loop): they must be thread-safe (the edge runtime hands them
to its outbox writer thread; a plain list's append will do in a test). A slow `submit`
delays only this device's reads (the OS buffers the stream meanwhile), never an event
loop. A stopped transport stays stopped: `run()` after `stop()` returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol

from telemon.backoff import Backoff
from telemon.drivers import Driver, FrameError, Framer, ParseContext, SerialSettings
from telemon.models import Observation
from telemon.usb import UsbClaim, UsbDiscovery, permission_message

log = logging.getLogger("telemon.serial")

Submit = Callable[[list[Observation]], None]
Reject = Callable[[str, str, bytes], None]  # (source, reason, raw)

IDLE, OPENING, CONNECTED, PROBING = "idle", "opening", "connected", "probing"
WAITING_FOR_USB, NOT_FOUND, DISCONNECTED = "waiting-for-usb", "not-found", "disconnected"
NO_PERMISSION, BUSY, STOPPED = "no-permission", "busy", "stopped"

_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO})
_DENIED = frozenset({errno.EACCES, errno.EPERM})
_BUSY = frozenset({errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK})


class PortGone(Exception):
    """The open port failed (read/write error, or its USB device was removed)."""


class ProbeFailed(Exception):
    """A discovered USB port gave no valid frame to this driver in the probe time."""


class SerialLike(Protocol):
    """What the transport uses of a `serial.Serial`."""

    in_waiting: int

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


OpenPort = Callable[[str, SerialSettings, float], SerialLike]


def open_serial(port: str, settings: SerialSettings, timeout: float) -> SerialLike:
    """Open `port` with pyserial at `settings`, reads timing out after `timeout` s, writes
    after 1 s; exclusively (flock) on POSIX. Raises pyserial's SerialException, whose
    `errno` says why (EACCES, ENOENT, ...)."""
    import serial

    ser = serial.Serial()
    ser.port = port
    ser.baudrate, ser.bytesize = settings.baudrate, settings.bytesize
    ser.parity, ser.stopbits = settings.parity, settings.stopbits
    ser.timeout, ser.write_timeout = timeout, 1.0
    if os.name == "posix":
        ser.exclusive = True
    ser.open()
    return ser


def describe(settings: SerialSettings) -> str:
    """115200 8N1"""
    return f"{settings.baudrate} {settings.bytesize}{settings.parity}{settings.stopbits:g}"


def classify(exc: BaseException, port: str, *, was_connected: bool = False,
             usb: tuple[int, int] | None = None) -> tuple[str, str]:
    """(status, reason) for an exception met opening or reading `port`. A port that is not
    there is "not-found", or "disconnected" when it was open before in this run."""
    if isinstance(exc, PortGone):
        return DISCONNECTED, str(exc)
    if isinstance(exc, ProbeFailed):
        return WAITING_FOR_USB, str(exc)
    number = getattr(exc, "errno", None)
    if isinstance(exc, PermissionError) or number in _DENIED:
        group = None
        with contextlib.suppress(OSError, KeyError):
            import grp

            group = grp.getgrgid(os.stat(port).st_gid).gr_name
        return NO_PERMISSION, permission_message(port, usb=usb, group=group)
    if isinstance(exc, FileNotFoundError) or number in _GONE:
        if was_connected:
            return DISCONNECTED, f"{port} is gone (device unplugged or switched off?)"
        return NOT_FOUND, (f"no such port {port}: is the device plugged in, and is this "
                           "its address?")
    if number in _BUSY or "lock" in str(exc).lower():
        return BUSY, f"{port} is in use by another program ({exc})"
    return "error", f"{port}: {type(exc).__name__}: {exc}"


@dataclass
class SerialCounters:
    connections: int = 0  # times the port was opened
    frames: int = 0  # frames the framer handed to the parser
    observations: int = 0  # submitted
    rejected: int = 0  # framer errors and frames the parser refused
    bytes: int = 0  # read from the port
    keep_alives: int = 0  # keep-alive writes
    framer: dict[str, int] = field(default_factory=dict)  # the framers' stats, all connections


@dataclass
class _Outcome:
    error: BaseException | None  # None: stopped
    opened: bool = False
    stable: bool = False  # delivered a frame or stayed up long enough to reset the backoff


def _now() -> datetime:
    return datetime.now(UTC)


class SerialTransport:
    """Reads one serial device for one patient with one driver until `stop()`.

    `device` is the edge config's `DeviceConfig` (driver, patient, device, address). `port`
    overrides its address; `usb` is the gateway's shared USB discovery (used when there is
    no address; one of its own is made when not given). `open_port` is `open_serial` unless
    a test replaces the boundary.
    """

    def __init__(self, driver: Driver, device: Any, *, gateway_id: str, tz: tzinfo | None,
                 submit: Submit, reject: Reject, clock: Callable[[], datetime] = _now,
                 port: str | None = None, usb: UsbDiscovery | None = None,
                 backoff: Backoff | None = None, read_timeout: float = 0.1,
                 stable_after: float = 10.0, open_port: OpenPort = open_serial,
                 on_status: Callable[[str], None] | None = None) -> None:
        if driver.serial is None or driver.stream is None:
            raise ValueError(f"driver {driver.name} declares no SerialSettings and "
                             "StreamProtocol: not a serial driver")
        self.driver, self.device = driver, device
        self.gateway_id, self.tz = gateway_id, tz
        self.submit, self.reject, self.clock = submit, reject, clock
        self.port = port or getattr(device, "address", None)
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.read_timeout, self.stable_after = read_timeout, stable_after
        self.open_port, self.on_status = open_port, on_status
        self.status, self.reason = IDLE, ""
        self.counters = SerialCounters()
        self.current_port: str | None = None  # the port open now (or last tried)
        self.usb: UsbDiscovery | None = None
        self.claim: UsbClaim | None = None
        self._own_usb = False
        if self.port is None and driver.usb:
            self._own_usb = usb is None
            self.usb = usb or UsbDiscovery()
            self.claim = self.usb.claim(device.device, driver)
        self._usb_ids = (driver.usb[0].vid, driver.usb[0].pid) if len(driver.usb) == 1 else None
        self._halt = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._framer: Framer | None = None
        self._framer_totals: dict[str, int] = {}
        self._was_connected = False
        self._good = 0  # frames the parser accepted, all connections
        self._logged: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.device, "device", self.port))

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to close the port and return (safe from any thread or callback)."""
        self._halt.set()
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                stopped.set()
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(stopped.set)

    async def run(self) -> None:
        """Open, read, parse; when the port fails retry with backoff; return after stop()."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self._halt.is_set():  # stop() came before run()
            self._set_status(STOPPED)
            return
        discovery = None
        if self._own_usb and self.usb is not None:
            discovery = asyncio.ensure_future(self.usb.run())
        try:
            if self.port is None and self.claim is None:
                self._set_status("error: no address", (
                    f"device {self.name} has no address, and driver {self.driver.name} "
                    "declares no USB VID:PID to find it by: give its port as address"))
                log.error("%s: %s", self.name, self.reason)
                await self._stopped.wait()
                return
            while not self._halt.is_set():
                path = self.port if self.claim is None else await self._usb_port()
                if path is None:
                    break
                outcome = await self._session_in_thread(path)
                if self._halt.is_set():
                    break
                if self.claim is not None:
                    self.claim.release(failed_probe=isinstance(outcome.error, ProbeFailed))
                if outcome.error is None:  # cannot happen unless halted: be safe
                    outcome.error = PortGone(f"{path}: reading ended")
                self._report(outcome.error, path)
                if isinstance(outcome.error, ProbeFailed):
                    continue  # the next candidate gets the port; no backoff for us
                if outcome.stable:
                    self.backoff.reset()
                delay = self.backoff.next()
                log.info("%s: %s; next attempt in %.1f s (attempt %d)", self.name, self.status,
                         delay, self.backoff.attempts)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
        finally:
            if self.claim is not None and self.claim.port is not None:
                self.claim.release()
            if discovery is not None and self.usb is not None:
                self.usb.stop()
                with contextlib.suppress(Exception):
                    await discovery
            self._set_status(STOPPED)

    # -- USB discovery ----------------------------------------------------------------------

    async def _usb_port(self) -> str | None:
        """Wait until discovery offers a port (showing why not meanwhile); None if stopped."""
        claim = self.claim
        assert claim is not None and self._stopped is not None
        while not self._halt.is_set():
            claim.changed.clear()
            if claim.port is not None and claim.revoked:  # gone before it was opened
                claim.release()
            if claim.port is not None:
                return claim.port.device
            if claim.problem is not None:
                self._set_status(NO_PERMISSION, claim.problem)
            elif self.status not in (DISCONNECTED, WAITING_FOR_USB):
                wanted = ", ".join(f"{m.vid:04x}:{m.pid:04x}" for m in self.driver.usb)
                self._set_status(WAITING_FOR_USB, f"no USB serial port {wanted} plugged in "
                                                  "(or all taken by other devices)")
            changed = asyncio.ensure_future(claim.changed.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stopped.cancel()
        return None

    # -- one connection, in a thread of its own -----------------------------------------------

    async def _session_in_thread(self, path: str) -> _Outcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()

        def deliver(outcome: _Outcome) -> None:
            if not done.done():
                done.set_result(outcome)

        def target() -> None:
            try:
                outcome = self._session(path)
            except BaseException as exc:  # never lose the thread's end
                log.exception("%s: serial session crashed", self.name)
                outcome = _Outcome(exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(deliver, outcome)

        thread = threading.Thread(target=target, name=f"serial-{self.name}", daemon=True)
        thread.start()
        try:
            return await done
        except asyncio.CancelledError:
            self._halt.set()  # the thread sees it within one read timeout
            raise

    def _session(self, path: str) -> _Outcome:
        """Open `path`, read until it fails or `stop()`; flush the framer at the end."""
        self.current_port = path
        self._progress(OPENING)
        try:
            ser = self.open_port(path, self.driver.serial, self.read_timeout)
        except Exception as exc:
            return _Outcome(exc)
        stream = self.driver.stream
        assert stream is not None and self.driver.serial is not None
        framer = stream.framer()
        self._framer = framer
        started = time.monotonic()
        good_before = self._good
        self.counters.connections += 1
        self._was_connected = True
        claim = self.claim
        probing = claim is not None and claim.probe_until is not None
        self._set_status(PROBING if probing else CONNECTED,
                         f"{path} at {describe(self.driver.serial)}")
        log.info("%s: opened %s at %s for driver %s%s", self.name, path,
                 describe(self.driver.serial), self.driver.name,
                 " (probing: waiting for a valid frame)" if probing else "")
        outcome = _Outcome(None, opened=True)
        try:
            if stream.on_open:
                self._write(ser, stream.on_open)
            every = stream.keep_alive_every if stream.keep_alive else 0.0
            next_keep = time.monotonic() + every if every > 0 else None
            while not self._halt.is_set():
                if claim is not None and claim.revoked:
                    raise PortGone(f"USB port {path} was removed")
                data = ser.read(max(1, ser.in_waiting))
                if data:
                    self.counters.bytes += len(data)
                    self._handle(framer.feed(data), path)
                    self._update_framer_stats()
                now = time.monotonic()
                if next_keep is not None and now >= next_keep:
                    self._write(ser, stream.keep_alive)
                    self.counters.keep_alives += 1
                    next_keep = now + every
                if (claim is not None and claim.probe_until is not None
                        and not claim.confirmed and now > claim.probe_until):
                    raise ProbeFailed(
                        f"USB port {path}: no valid {self.driver.name} frame in "
                        f"{now - started:.0f} s")
        except (PortGone, ProbeFailed) as exc:
            outcome.error = exc
        except Exception as exc:  # SerialException and OSError: the port went away
            outcome.error = PortGone(f"{path}: {exc}")
        finally:
            flush = getattr(framer, "flush", None)
            if flush is not None:
                try:
                    self._handle(flush(), path)
                except Exception:
                    log.exception("%s: flushing the framer failed", self.name)
            self._update_framer_stats()
            self._framer_totals = dict(self.counters.framer)
            self._framer = None
            with contextlib.suppress(Exception):
                ser.close()
        outcome.stable = (self._good > good_before
                          or time.monotonic() - started >= self.stable_after)
        return outcome

    def _write(self, ser: SerialLike, data: bytes) -> None:
        try:
            ser.write(data)
            ser.flush()
        except Exception as exc:
            if type(exc).__name__ == "SerialTimeoutException":  # the device does not read
                log.warning("%s: writing %d byte(s) to the device timed out", self.name,
                            len(data))
                return
            raise

    def _update_framer_stats(self) -> None:
        stats = getattr(self._framer, "stats", None)
        if not isinstance(stats, dict):
            return
        merged = dict(self._framer_totals)
        for key, value in stats.items():
            if isinstance(value, int):
                merged[key] = merged.get(key, 0) + value
        self.counters.framer = merged

    # -- frames ------------------------------------------------------------------------------

    def _handle(self, items: list[bytes | FrameError], source: str) -> None:
        for item in items:
            if isinstance(item, FrameError):
                self._reject(source, str(item), item.raw)
            else:
                self.handle_frame(source, bytes(item))

    def handle_frame(self, source: str, frame: bytes) -> None:
        """Parse one frame from `source`; never raises."""
        self.counters.frames += 1
        received = self.clock()
        if self.tz is not None:
            received = received.astimezone(self.tz)
        ctx = ParseContext(patient=self.device.patient, device=self.device.device,
                           gateway=self.gateway_id, received=received, device_tz=self.tz,
                           source=source)
        try:
            observations = self.driver.parse(frame, ctx)
        except FrameError as exc:
            self._reject(source, str(exc), exc.raw or frame)
            return
        except Exception as exc:  # a parser bug must not stop the gateway
            log.exception("%s: driver %s crashed on %s", self.name, self.driver.name,
                          frame[:64].hex(" "))
            self._reject(source, f"driver {self.driver.name} crashed: "
                                 f"{type(exc).__name__}: {exc}", frame)
            return
        self._good += 1
        if self.claim is not None and not self.claim.confirmed:
            self.claim.confirm()
            if self.status == PROBING:
                self._set_status(CONNECTED, self.reason)
                log.info("%s: %s recognised as a %s device", self.name, source,
                         self.driver.name)
        if not observations:
            return
        try:
            self.submit(observations)
        except Exception as exc:  # keep the raw frame: it goes to quarantine instead
            log.exception("%s: submit failed", self.name)
            self._reject(source, f"submit failed: {type(exc).__name__}: {exc}", frame)
            return
        self.counters.observations += len(observations)

    def _reject(self, source: str, reason: str, raw: bytes) -> None:
        self.counters.rejected += 1
        log.warning("%s: rejected %d byte(s) from %s: %s", self.name, len(raw), source, reason)
        try:
            self.reject(source, reason, raw)
        except Exception:
            log.exception("%s: reject failed; %d byte(s) from %s are only in this log: %s",
                          self.name, len(raw), source, raw.hex())

    # -- status ---------------------------------------------------------------------------

    def _set_status(self, status: str, reason: str = "") -> None:
        self.reason = reason
        if status == self.status:
            return
        self.status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("%s: on_status failed", self.name)

    def _progress(self, status: str) -> None:
        """opening: shown unless a problem is being retried (a port that is gone stays
        "disconnected" / "not-found" while the gateway tries it again)."""
        if self.status in (IDLE, CONNECTED, PROBING, STOPPED, OPENING, WAITING_FOR_USB):
            self._set_status(status, self.reason)

    def _report(self, exc: BaseException, path: str) -> None:
        status, reason = classify(exc, path, was_connected=self._was_connected,
                                  usb=self._usb_ids)
        if status == "error":
            status = f"error: {reason}"
        self._set_status(status, reason)
        if self._logged == (status, reason):  # the same problem again: once is enough
            log.debug("%s: still %s: %s", self.name, status, reason)
            return
        self._logged = (status, reason)
        if status == NO_PERMISSION:
            log.error("%s: NO PERMISSION on %s: %s", self.name, path, reason)
        elif status == DISCONNECTED:
            log.warning("%s: DISCONNECTED: %s", self.name, reason)
        elif status == WAITING_FOR_USB:
            log.info("%s: %s", self.name, reason)
        else:
            log.error("%s: %s: %s", self.name, status.upper(), reason)


__all__ = [
    "BUSY",
    "CONNECTED",
    "DISCONNECTED",
    "NOT_FOUND",
    "NO_PERMISSION",
    "OPENING",
    "PROBING",
    "STOPPED",
    "WAITING_FOR_USB",
    "PortGone",
    "ProbeFailed",
    "SerialCounters",
    "SerialTransport",
    "classify",
    "describe",
    "open_serial",
]
