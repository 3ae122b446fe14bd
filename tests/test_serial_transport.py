"""The serial transport over real pty pairs (os.openpty): pyserial opens the slave at the
driver's settings, the test writes the device's byte stream on the master side.

What is real here: the pty, pyserial's open/read/write/flock at each driver's settings (read
back from the slave's termios), the framers and parsers, the port vanishing (the master
closed: reads fail with EIO, as after a USB unplug) and a port path that comes back (a
symlink re-pointed at a new pty), permission denied (the transport runs in a forked child
without the rights to the pty: as root, after setuid to nobody; as another user, on a pty
chmod 000), and another program holding the port (flock).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import json
import os
import select
import termios
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import serial
from test_serial_parsers import (
    RECORDED_FORMAT2,
    legacy,
    nonin_packet,
    registered,
    v2,
)

from telemon.backoff import Backoff
from telemon.codes import KNOWN
from telemon.config import DeviceConfig
from telemon.drivers import ParseContext
from telemon.serial_port import (
    BUSY,
    CONNECTED,
    DISCONNECTED,
    NO_PERMISSION,
    NOT_FOUND,
    STOPPED,
    PortGone,
    SerialTransport,
    classify,
    open_serial,
)

TZ = ZoneInfo("Europe/Copenhagen")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DRIVERS = registered()
NONIN2 = DRIVERS["serial_nonin_format2"]
LEGACY = DRIVERS["serial_contec_cms50d_legacy"]
V2 = DRIVERS["serial_contec_cms50d_v2"]


def wait_until(predicate, timeout: float = 5.0, what=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    assert predicate(), f"timed out waiting for {what() if callable(what) else what or predicate}"


class Pty:
    """A pty pair: the test is the device on `master`; the gateway opens `path`."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)  # the gateway opens the slave by its path, as it would /dev/ttyUSB0
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def read(self, size: int, timeout: float = 2.0) -> bytes:
        """Exactly `size` bytes the gateway wrote (or fewer at the timeout)."""
        out, deadline = b"", time.monotonic() + timeout
        while len(out) < size and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    out += os.read(self.master, size - len(out))
                except OSError as exc:  # EIO while no one has the slave open
                    if exc.errno != errno.EIO:
                        raise
                    time.sleep(0.01)
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.master)


@pytest.fixture
def ptys():
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for pty in made:
        pty.close()


class Sink:
    """submit/reject as the runtime's outbox writer would take them (thread-safe lists)."""

    def __init__(self) -> None:
        self.observations: list = []
        self.rejected: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def submit(self, observations) -> None:
        with self.lock:
            self.observations += observations

    def reject(self, source: str, reason: str, raw: bytes) -> None:
        with self.lock:
            self.rejected.append((source, reason, raw))

    def values(self, code: str) -> list[Decimal | None]:
        with self.lock:
            return [o.value for o in self.observations if o.code.code == code]


class Running:
    """Runs a transport in its own thread and event loop (like the edge runtime);
    `stop()` is called from the test's thread."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.transport.run())
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self.transport

    def __exit__(self, *exc) -> None:
        self.transport.stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "run() did not return after stop()"
        assert self.error is None, self.error


def termios_of(path: str) -> list:
    """The slave's settings as pyserial left them."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        return termios.tcgetattr(fd)
    finally:
        os.close(fd)


def device(address: str | None, name: str = "oxi-1") -> DeviceConfig:
    return DeviceConfig(driver="x", patient="pt-0001", device=name, address=address, user=None)


def transport(driver, address, sink: Sink, **options) -> SerialTransport:
    options.setdefault("backoff", Backoff(0.02, 0.1))
    clock = iter(T0 + timedelta(seconds=i) for i in range(10_000))
    return SerialTransport(driver, device(address), gateway_id="gw-1", tz=TZ,
                           submit=sink.submit, reject=sink.reject,
                           clock=lambda: next(clock), **options)


SPO2 = KNOWN["spo2"].code.code
PULSE = KNOWN["pulse"].code.code


CTX_ANY = ParseContext(patient="p", device="d", gateway="g", received=T0)


def nonin_second(spo2: int, hr: int = 72) -> bytes:
    return b"".join(nonin_packet(2, spo2=spo2 - 2 + k, hr=hr) for k in range(3))


# --- data arrives ------------------------------------------------------------------------------

def test_nonin_format2_stream_arrives_as_observations(ptys):
    pty, sink = ptys(), Sink()
    with Running(transport(NONIN2, pty.path, sink)) as t:
        wait_until(lambda: t.status == CONNECTED, what="connected")
        attrs = termios_of(pty.path)
        assert attrs[4] == attrs[5] == termios.B9600  # ispeed, ospeed: 9600
        assert attrs[2] & termios.CSIZE == termios.CS8 and not attrs[2] & termios.PARENB
        assert not attrs[2] & termios.CSTOPB  # 8N1
        # the recorded capture's packet three times (74/min, 96 %), then a second of ours
        pty.write(RECORDED_FORMAT2[20:145] * 3 + nonin_second(95, hr=130)
                  + nonin_packet(2)[:50])
        wait_until(lambda: len(sink.observations) == 4, what="4 observations")
        assert t.counters.frames == 2 and t.counters.observations == 4
        assert t.counters.bytes == 375 * 2 + 50
        assert t.counters.framer["packets"] == 6 and t.counters.framer["emitted"] == 2
    assert t.status == STOPPED
    spo2 = [o for o in sink.observations if o.code.code == SPO2]
    pulse = [o for o in sink.observations if o.code.code == PULSE]
    assert [o.value for o in spo2] == [Decimal(96), Decimal(95)]
    assert [o.value for o in pulse] == [Decimal(74), Decimal(130)]
    first = spo2[0]
    assert (first.patient, first.device, first.gateway) == ("pt-0001", "oxi-1", "gw-1")
    assert first.effective == T0 and first.effective.utcoffset() == timedelta(hours=1)
    assert first.driver == "serial_nonin_format2" and first.raw == RECORDED_FORMAT2[20:145] * 3
    # at stop the framer is flushed: the 50 bytes of an unfinished packet are kept, with why
    assert sink.rejected == [(pty.path, "stream ended inside a packet: 50 byte(s) dropped",
                              nonin_packet(2)[:50])]


def test_contec_legacy_at_19200_8o1(ptys):
    pty, sink = ptys(), Sink()
    seen = []

    def recording_open(path, settings, timeout):
        port = open_serial(path, settings, timeout)
        seen.append((port.baudrate, port.bytesize, port.parity, port.stopbits, port.exclusive))
        return port

    with Running(transport(LEGACY, pty.path, sink, open_port=recording_open)) as t:
        wait_until(lambda: t.status == CONNECTED)
        attrs = termios_of(pty.path)
        assert attrs[5] == termios.B19200  # (Linux ptys clear PARENB: parity from pyserial)
        pty.write(b"\x03\x7f" + b"".join(legacy(spo2=94, pulse=80 + i % 3) for i in range(60))
                  + legacy(spo2=127, pulse=255, first=0x10) * 60 + legacy()[:1])
        wait_until(lambda: len(sink.observations) == 4)
    assert seen == [(19200, 8, "O", 1, True)]
    assert sink.values(SPO2) == [Decimal(94), None]
    assert [o.flags for o in sink.observations[2:]] == [("missing-data", "finger-out")] * 2
    assert sink.rejected[0] == (
        pty.path, "bytes before the first packet start; synchronised after dropping 2 byte(s)",
        b"\x03\x7f")


def test_corrupt_bytes_are_rejected_with_the_reason_and_later_frames_arrive(ptys):
    pty, sink = ptys(), Sink()
    bad = bytearray(nonin_second(90))
    bad[125 + 5 * 4 + 4] ^= 0xFF  # checksum of frame 5 of the second packet
    stream = nonin_second(80) + bytes(bad) + nonin_second(85) + nonin_second(99)
    with Running(transport(NONIN2, pty.path, sink)) as t:
        wait_until(lambda: t.status == CONNECTED)
        pty.write(stream)
        wait_until(lambda: t.counters.bytes == len(stream), what="all bytes read")
        wait_until(lambda: sink.rejected)
        assert t.counters.framer["bad_checksum"] == 1 and t.counters.framer["resyncs"] == 1
    # the damaged packet is dropped (kept in quarantine, with the reason) ...
    [(source, reason, raw)] = sink.rejected
    assert source == pty.path and raw == bytes(bad[125:250]) and t.counters.rejected == 1
    assert reason == ("frame 5 of a packet: checksum 0x22, but bytes 0-3 sum to 0xdd; "
                      "resynchronised after dropping 125 byte(s)")
    # ... the packet before it is handed on alone (88), and every packet after it decodes
    # (the rest at stop, when the framer is flushed): 1 s groups restart after the resync
    assert sink.values(SPO2) == [Decimal(80), Decimal(88), Decimal(84), Decimal(98),
                                 Decimal(99)]
    offline = NONIN2.stream.framer()
    frames = [f for f in offline.feed(stream) + offline.flush() if isinstance(f, bytes)]
    assert [o.value for f in frames for o in NONIN2.parse(f, CTX_ANY)
            if o.code.code == SPO2] == sink.values(SPO2)


def test_a_frame_the_parser_refuses_is_rejected_with_the_frame(ptys):
    pty, sink = ptys(), Sink()
    good = b"".join(legacy(spo2=95) for _ in range(60))
    refused = b"".join(legacy(spo2=120) for _ in range(60))  # well framed, SpO2 impossible
    with Running(transport(LEGACY, pty.path, sink)) as t:
        wait_until(lambda: t.status == CONNECTED)
        pty.write(good + refused + good + legacy()[:1])
        wait_until(lambda: len(sink.observations) == 4 and sink.rejected)
    assert sink.rejected == [
        (pty.path, "SpO2 120 is neither 0-100 % nor the no-value code 127", refused),
        (pty.path, "stream ended inside a packet: 1 byte(s) dropped", legacy()[:1])]  # stop
    assert sink.values(SPO2) == [Decimal(95), Decimal(95)] and t.counters.frames == 3


def test_a_failing_submit_sends_the_frame_to_quarantine_and_reading_goes_on(ptys):
    pty, sink = ptys(), Sink()
    calls = []

    def submit(observations):
        calls.append(observations)
        if len(calls) == 1:
            raise OSError("disk full")
        sink.submit(observations)

    t = transport(LEGACY, pty.path, sink)
    t.submit = submit
    with Running(t):
        wait_until(lambda: t.status == CONNECTED)
        pty.write(b"".join(legacy(spo2=90 + k % 10) for k in range(120)) + legacy()[:1])
        wait_until(lambda: len(calls) == 2)
    (_, reason, raw), _flushed = sink.rejected
    assert reason == "submit failed: OSError: disk full" and len(raw) == 300
    assert t.counters.observations == 2


# --- writing to the device ----------------------------------------------------------------------

def test_on_open_then_keep_alive_every_interval(ptys):
    pty, sink = ptys(), Sink()
    driver = replace(V2, stream=replace(V2.stream, keep_alive_every=0.2))
    keep = driver.stream.keep_alive
    with Running(transport(driver, pty.path, sink)) as t:
        assert pty.read(9) == bytes.fromhex("7d81a1808080808080")  # start live data
        pty.write(bytes.fromhex("0c80") + v2(spo2=96, pulse=61) * 60 + v2()[:3])
        arrivals = []
        for _ in range(3):
            assert pty.read(len(keep)) == keep
            arrivals.append(time.monotonic())
        wait_until(lambda: len(sink.observations) == 2)
        wait_until(lambda: t.counters.keep_alives >= 3)  # counted once written
    assert sink.values(SPO2) == [Decimal(96)] and sink.values(PULSE) == [Decimal(61)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.12 < gap < 0.6 for gap in gaps), gaps
    assert t.counters.framer["ignored_packages"] == 1


# --- the port goes away and comes back -------------------------------------------------

def test_port_vanishes_then_reconnects_when_its_path_comes_back(ptys, tmp_path):
    link = tmp_path / "ttyOXI"  # like /dev/serial/by-id/...: a link udev re-points
    first = ptys()
    link.symlink_to(first.path)
    sink = Sink()
    statuses: list[str] = []
    t = transport(NONIN2, str(link), sink, on_status=statuses.append)
    with Running(t):
        wait_until(lambda: t.status == CONNECTED)
        first.write(nonin_second(91) + nonin_packet(2)[:60])
        wait_until(lambda: t.counters.bytes == 435, what="all bytes read")
        first.close()  # unplugged: the open port fails (EIO) ...
        link.unlink()  # ... and udev removes its /dev/serial/by-id link
        wait_until(lambda: t.status == DISCONNECTED, what="disconnected")
        # what the framer held is flushed, never dropped silently
        wait_until(lambda: sink.rejected)
        assert sink.rejected == [(str(link), "stream ended inside a packet: 60 byte(s) "
                                             "dropped", nonin_packet(2)[:60])]
        assert str(link) in t.reason  # (read failed: EIO; or, retried: the link is gone)
        time.sleep(0.3)  # retried meanwhile: the path leads nowhere, still "disconnected"
        assert t.status == DISCONNECTED and t.counters.connections == 1

        second = ptys()
        link.symlink_to(second.path)  # plugged in again
        wait_until(lambda: t.status == CONNECTED and t.counters.connections == 2,
                   what="reconnected")
        second.write(nonin_second(97) + nonin_packet(2)[:5])
        wait_until(lambda: sink.values(SPO2) == [Decimal(91), Decimal(97)])
    assert statuses[:4] == ["opening", CONNECTED, DISCONNECTED, CONNECTED]
    assert t.counters.framer["emitted"] == 2  # summed over both connections


def test_a_port_that_does_not_exist_is_not_found(tmp_path):
    sink = Sink()
    t = transport(NONIN2, str(tmp_path / "ttyUSB9"), sink)
    with Running(t):
        wait_until(lambda: t.status == NOT_FOUND)
        assert "no such port" in t.reason and "ttyUSB9" in t.reason
        wait_until(lambda: t.backoff.attempts >= 2, what="retries")
    assert t.counters.connections == 0


def test_a_port_held_by_another_program_is_busy(ptys):
    pty, sink = ptys(), Sink()
    other = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        t = transport(NONIN2, pty.path, sink)
        with Running(t):
            wait_until(lambda: t.status == BUSY)
            assert "in use by another program" in t.reason
            fcntl.flock(other, fcntl.LOCK_UN)  # the other program lets go
            wait_until(lambda: t.status == CONNECTED)
    finally:
        os.close(other)
    # after stop() the transport has let go of its lock as well
    again = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(again)


# --- permission denied --------------------------------------------------------------------------

def _in_child_without_rights(path: str) -> dict:
    """Fork; the child loses the right to open `path` (root: setuid nobody; another user:
    the pty is chmod 000 by the parent), runs a transport on it until it reports, and
    sends back its status and reason."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            sink = Sink()
            t = transport(NONIN2, path, sink)

            async def main():
                task = asyncio.ensure_future(t.run())
                for _ in range(300):
                    if t.status not in ("idle", "opening"):
                        break
                    await asyncio.sleep(0.01)
                t.stop()
                await task
                return t

            status, reason = t.status, ""
            asyncio.run(main())
            status, reason = t._logged or (t.status, t.reason)
            os.write(write_end, json.dumps({"status": status, "reason": reason,
                                            "uid": os.geteuid()}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if select.select([read_end], [], [], 0.5)[0]:
                if not (chunk := os.read(read_end, 65536)):
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, 9)  # hung: never leave a child behind
    finally:
        os.close(read_end)
        _, code = os.waitpid(pid, 0)
    assert code == 0, "the child failed"
    return json.loads(b"".join(chunks))


def test_permission_denied_is_no_permission_with_the_fix(ptys):
    pty = ptys()
    if os.geteuid() != 0:
        os.chmod(pty.path, 0)
    result = _in_child_without_rights(pty.path)
    assert result["uid"] != 0
    assert result["status"] == NO_PERMISSION
    reason = result["reason"]
    assert f"may not read and write {pty.path}" in reason
    assert "sudo usermod -aG dialout" in reason  # a pty belongs to root or tty: dialout
    assert 'SUBSYSTEM=="tty"' in reason and 'GROUP="dialout"' in reason
    # not-found reads differently: the two are distinguishable
    assert classify(serial.SerialException(errno.ENOENT, "x"), pty.path)[0] == NOT_FOUND


def test_classify_open_errors():
    gone = serial.SerialException(errno.ENOENT, "could not open port /dev/ttyUSB0: ...")
    assert classify(gone, "/dev/ttyUSB0")[0] == NOT_FOUND
    assert classify(gone, "/dev/ttyUSB0", was_connected=True)[0] == DISCONNECTED
    denied = serial.SerialException(errno.EACCES, "could not open port: Permission denied")
    status, reason = classify(denied, "/dev/ttyUSB0", usb=(0x10C4, 0xEA60))
    assert status == NO_PERMISSION and '"10c4"' in reason and '"ea60"' in reason
    assert classify(PermissionError(errno.EACCES, "x"), "/dev/ttyS0")[0] == NO_PERMISSION
    locked = serial.SerialException(errno.EAGAIN, "Could not exclusively lock port")
    assert classify(locked, "/dev/ttyUSB0")[0] == BUSY
    assert classify(PortGone("read failed"), "/dev/ttyUSB0") == (DISCONNECTED, "read failed")
    status, reason = classify(ValueError("Invalid baud rate"), "/dev/ttyUSB0")
    assert status == "error" and "Invalid baud rate" in reason


# --- stop -----------------------------------------------------------------------------------

def test_stop_before_run_and_from_another_thread(ptys):
    pty, sink = ptys(), Sink()
    t = transport(NONIN2, pty.path, sink)
    t.stop()
    asyncio.run(t.run())  # returns at once
    assert t.status == STOPPED and t.counters.connections == 0

    t = transport(NONIN2, pty.path, sink)
    runner = Running(t)
    with runner:
        wait_until(lambda: t.status == CONNECTED)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0 and t.status == STOPPED


def test_a_device_without_address_or_usb_match_is_an_error():
    driver = DRIVERS["serial_nonin_format7"]  # declares no VID:PID
    t = transport(driver, None, Sink())
    with Running(t):
        wait_until(lambda: t.status.startswith("error"))
        assert "has no address" in t.reason and "serial_nonin_format7" in t.reason
    assert t.status == STOPPED


def test_parse_context_is_put_on_every_observation(ptys):
    """The transport gives the parser the gateway clock in the configured zone."""
    pty, sink = ptys(), Sink()
    contexts: list[ParseContext] = []

    def parse(frame, ctx):
        contexts.append(ctx)
        return NONIN2.parse(frame, ctx)

    with Running(transport(replace(NONIN2, parse=parse), pty.path, sink)) as t:
        wait_until(lambda: t.status == CONNECTED)
        pty.write(nonin_second(95) + nonin_packet(2)[:5])
        wait_until(lambda: contexts)
    [ctx] = contexts
    assert (ctx.patient, ctx.device, ctx.gateway, ctx.source) == (
        "pt-0001", "oxi-1", "gw-1", pty.path)
    assert ctx.received == T0 and ctx.received.tzinfo == TZ and ctx.tz == TZ
