"""USB discovery and hot-plug. There is no USB bus in a test: `comports` is injected (real
pyserial `ListPortInfo` records with a VID:PID) and each port's `.device` is a real pty, so
what happens after discovery (open, read, frame, parse) is the real serial transport.
`os.access` is injected for the permission case (as root it is always true)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from decimal import Decimal

import pytest
from serial.tools.list_ports_common import ListPortInfo
from test_serial_parsers import legacy, nonin_packet, registered, v2
from test_serial_transport import SPO2, Pty, Sink, device, wait_until

from telemon.backoff import Backoff
from telemon.serial_port import (
    CONNECTED,
    DISCONNECTED,
    NO_PERMISSION,
    PROBING,
    WAITING_FOR_USB,
    SerialTransport,
)
from telemon.usb import (
    Port,
    UsbDiscovery,
    drivers_for,
    list_ports,
    permission_message,
    permission_problem,
)

DRIVERS = registered()
LEGACY = DRIVERS["serial_contec_cms50d_legacy"]
V2 = DRIVERS["serial_contec_cms50d_v2"]
NONIN2 = DRIVERS["serial_nonin_format2"]
CP210X = (0x10C4, 0xEA60)
FTDI = (0x0403, 0x6001)


def info(path: str, ids: tuple[int, int] | None, serial_number: str | None = None):
    """What pyserial's comports() returns for a USB serial adapter."""
    port = ListPortInfo(path, skip_link_detection=True)
    if ids is not None:
        port.vid, port.pid = ids
        port.serial_number = serial_number
        port.description = "CP2102 USB to UART Bridge Controller"
    return port


def port(path: str, ids=CP210X) -> Port:
    return Port(device=path, vid=ids[0], pid=ids[1])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- listing and matching (no transports) ---------------------------------------------------

def test_list_ports_keeps_usb_ports_sorted():
    found = list_ports(lambda: [info("/dev/ttyUSB1", FTDI, "A9X"), info("/dev/ttyS0", None),
                                info("/dev/ttyUSB0", CP210X, "0001")])
    assert [(p.device, p.usb_id, p.serial_number) for p in found] == [
        ("/dev/ttyUSB0", "10c4:ea60", "0001"), ("/dev/ttyUSB1", "0403:6001", "A9X")]
    assert str(found[0]) == ("/dev/ttyUSB0 (10c4:ea60, CP2102 USB to UART Bridge Controller, "
                             "serial 0001)")
    assert [d.name for d in drivers_for(found[0], DRIVERS.values())] == [
        "serial_contec_cms50d_legacy", "serial_contec_cms50d_v2"]
    assert [d.name for d in drivers_for(found[1], DRIVERS.values())] == [
        "serial_nonin_format2"]


def test_candidates_are_tried_in_config_order_with_a_probe_deadline():
    clock = Clock()
    usb = UsbDiscovery(comports=lambda: [], probe_timeout=10, access=lambda *_: True,
                       clock=clock)
    new = usb.claim("oxi-new", V2)  # config order: the new firmware first
    old = usb.claim("oxi-old", LEGACY)
    nonin = usb.claim("spo2-x", NONIN2)
    usb.update([port("/dev/ttyUSB0")])
    assert new.port == port("/dev/ttyUSB0") and new.probe_until == 110.0  # two candidates
    assert old.port is None and nonin.port is None
    assert new.changed.is_set() and not old.changed.is_set()

    new.release(failed_probe=True)  # no v2 frame in time: the next candidate
    assert new.port is None and old.port == port("/dev/ttyUSB0") and old.probe_until == 110.0
    old.release(failed_probe=True)  # neither: the round starts again (device switched off?)
    assert new.port == port("/dev/ttyUSB0") and old.port is None

    new.confirm()  # a valid frame: the port is its own, no deadline
    assert new.probe_until is None
    new.release()  # the session ended: the ports are listed again before any offer
    assert new.port is None
    usb.update([port("/dev/ttyUSB0")])  # still there: back to the claim that knew it
    assert new.port == port("/dev/ttyUSB0") and new.probe_until is None

    usb.update([port("/dev/ttyUSB0"), port("/dev/ttyUSB1", FTDI)])  # a sole candidate
    assert nonin.port == port("/dev/ttyUSB1", FTDI) and nonin.probe_until is None
    usb.update([port("/dev/ttyUSB0")])  # unplugged
    assert nonin.revoked and nonin.changed.is_set()
    nonin.release()
    assert nonin.port is None and usb._wake.is_set()
    usb.update([port("/dev/ttyUSB0"), port("/dev/ttyUSB2", FTDI)])
    assert nonin.port == port("/dev/ttyUSB2", FTDI) and not nonin.revoked


def test_two_ports_of_one_vid_pid_go_to_two_claims():
    usb = UsbDiscovery(comports=lambda: [], access=lambda *_: True)
    first, second = usb.claim("oxi-a", V2), usb.claim("oxi-b", V2)
    usb.update([port("/dev/ttyUSB0"), port("/dev/ttyUSB1")])
    assert (first.port.device, second.port.device) == ("/dev/ttyUSB0", "/dev/ttyUSB1")
    assert usb.ambiguous() == [("serial_contec_cms50d_v2", ["oxi-a", "oxi-b"])]
    with pytest.raises(ValueError, match="declares no USB"):
        usb.claim("x", DRIVERS["serial_nonin_format8"])


def test_a_port_without_permission_is_not_offered_and_says_what_to_do():
    allowed = {"/dev/ttyUSB0": False}
    usb = UsbDiscovery(comports=lambda: [], access=lambda path, mode: allowed[path],
                       group_of=lambda path: "dialout")
    claim = usb.claim("oxi-1", LEGACY)
    usb.update([port("/dev/ttyUSB0")])
    assert claim.port is None
    problem = claim.problem
    assert problem.startswith("permission denied: user ")
    assert "may not read and write /dev/ttyUSB0 (owned by group dialout)" in problem
    assert "sudo usermod -aG dialout " in problem
    assert ('SUBSYSTEM=="tty", ATTRS{idVendor}=="10c4", ATTRS{idProduct}=="ea60", '
            'GROUP="dialout", MODE="0660"') in problem
    allowed["/dev/ttyUSB0"] = True  # fixed (group added, service restarted, or udev rule)
    usb.update([port("/dev/ttyUSB0")])
    assert claim.problem is None and claim.port == port("/dev/ttyUSB0")


def test_permission_message_builder():
    assert permission_problem("/dev/ttyUSB0", access=lambda *_: True) is None
    checked = []
    permission_problem("/dev/ttyUSB0", access=lambda p, m: checked.append((p, m)) or True)
    assert checked == [("/dev/ttyUSB0", os.R_OK | os.W_OK)]
    # Arch and others give serial ports to uucp: that group is named
    text = permission_message("/dev/ttyACM0", usb=FTDI, user="telemon", group="uucp")
    assert "user telemon may not read and write /dev/ttyACM0 (owned by group uucp)" in text
    assert "sudo usermod -aG uucp telemon" in text and 'ATTRS{idProduct}=="6001"' in text
    # a port left to group root (no udev rule yet): dialout, and a rule that hands it over
    text = permission_message("/dev/ttyUSB3", user="telemon", group="root")
    assert "sudo usermod -aG dialout telemon" in text
    assert 'KERNEL=="ttyUSB3", GROUP="dialout"' in text


# --- discovery driving real serial transports on ptys ---------------------------------------

class Loop:
    """Runs coroutines (transports, discovery) in one event loop thread, as the edge
    runtime does; leaving stops them."""

    def __init__(self, *runners) -> None:
        self.runners = runners
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main():
            await asyncio.gather(*(r.run() for r in self.runners))

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for runner in self.runners:
            runner.stop()
        self.thread.join(5)
        assert not self.thread.is_alive() and self.error is None, self.error


class Device:
    """A device streaming on a pty's master side, like a UART: bytes nobody reads are
    lost (non-blocking writes); what the gateway writes is collected in `heard`."""

    def __init__(self, chunk: bytes, every: float = 0.01) -> None:
        self.pty = Pty()
        os.set_blocking(self.pty.master, False)
        self.chunk, self.every = chunk, every
        self.heard = b""
        self.running = True
        self.thread = threading.Thread(target=self._stream, daemon=True)
        self.thread.start()

    def _stream(self) -> None:
        while self.running:
            try:
                os.write(self.pty.master, self.chunk)
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EAGAIN):  # no reader / buffer full
                    return
            with contextlib.suppress(OSError):
                self.heard += os.read(self.pty.master, 4096)
            time.sleep(self.every)

    def unplug(self) -> None:
        self.running = False
        self.thread.join(2)
        self.pty.close()


def serial_transport(driver, name: str, sink: Sink, usb: UsbDiscovery) -> SerialTransport:
    return SerialTransport(driver, device(None, name), gateway_id="gw-1", tz=None,
                           submit=sink.submit, reject=sink.reject, usb=usb,
                           backoff=Backoff(0.02, 0.1))


@pytest.fixture
def devices():
    made: list[Device] = []

    def make(chunk: bytes) -> Device:
        made.append(Device(chunk))
        return made[-1]

    yield make
    for d in made:
        d.unplug()


def test_hot_plug_add_remove_and_add_again(devices):
    ports: list = []
    usb = UsbDiscovery(comports=lambda: list(ports), interval=0.05, access=lambda *_: True)
    sink = Sink()
    t = serial_transport(LEGACY, "oxi-1", sink, usb)
    with Loop(usb, t):
        wait_until(lambda: t.status == WAITING_FOR_USB)
        assert "no USB serial port 10c4:ea60 plugged in" in t.reason
        first = devices(b"".join(legacy(spo2=93) for _ in range(6)))
        ports.append(info(first.pty.path, CP210X, "0001"))  # plugged in
        wait_until(lambda: t.status == CONNECTED, what="connected")
        assert t.current_port == first.pty.path
        wait_until(lambda: Decimal(93) in sink.values(SPO2), what="readings")

        first.unplug()  # pulled out: the port fails, then leaves the list
        ports.clear()
        wait_until(lambda: t.status == DISCONNECTED, what="disconnected")
        time.sleep(0.2)
        assert t.status == DISCONNECTED  # waits for it to come back

        second = devices(b"".join(legacy(spo2=96) for _ in range(6)))
        ports.append(info(second.pty.path, CP210X, "0001"))  # plugged in again, new name
        wait_until(lambda: sink.values(SPO2)[-1:] == [Decimal(96)],
                   what=lambda: f"readings of the new port: {t.status} {t.reason} {t.claim} "
                                f"{usb.present} {t.counters}")
        assert t.status == CONNECTED and t.current_port == second.pty.path
        assert t.counters.connections >= 2
    assert usb.scans >= 5


def test_the_second_firmware_gets_the_port_when_the_first_does_not_recognise_it(devices):
    """Both CMS50D+ firmwares share the CP210x cable (10c4:ea60): configured in the order
    new, old, the new firmware's driver probes first, finds no valid frame in the probe time,
    and the port goes to the old firmware's driver, whose frames then arrive."""
    ports: list = []
    usb = UsbDiscovery(comports=lambda: list(ports), interval=0.05, probe_timeout=0.4,
                       access=lambda *_: True)
    new_sink, old_sink = Sink(), Sink()
    new = serial_transport(V2, "oxi-new", new_sink, usb)
    old = serial_transport(LEGACY, "oxi-old", old_sink, usb)
    statuses: list[str] = []
    new.on_status = statuses.append
    with Loop(usb, new, old):
        wait_until(lambda: new.status == old.status == WAITING_FOR_USB)
        oximeter = devices(b"".join(legacy(spo2=91, pulse=70) for _ in range(6)))
        ports.append(info(oximeter.pty.path, CP210X))
        wait_until(lambda: old.status == CONNECTED, timeout=5, what="old firmware driver")
        wait_until(lambda: old_sink.values(SPO2)[-1:] == [Decimal(91)], what="readings")
        assert new.status == WAITING_FOR_USB
        assert "no valid serial_contec_cms50d_v2 frame in" in new.reason
    assert statuses[:3] == [WAITING_FOR_USB, "opening", PROBING]
    assert new_sink.observations == [] and new.counters.frames == 0
    assert new.counters.connections == 1 and old.counters.connections == 1
    assert bytes.fromhex("7d81a1808080808080") in oximeter.heard  # v2 asked it to start


def test_a_recognised_device_keeps_the_port(devices):
    ports: list = []
    usb = UsbDiscovery(comports=lambda: list(ports), interval=0.05, probe_timeout=0.4,
                       access=lambda *_: True)
    new_sink, old_sink = Sink(), Sink()
    new = serial_transport(V2, "oxi-new", new_sink, usb)
    old = serial_transport(LEGACY, "oxi-old", old_sink, usb)
    with Loop(usb, new, old):
        oximeter = devices(v2(spo2=97) * 60)
        ports.append(info(oximeter.pty.path, CP210X))
        wait_until(lambda: new.status == CONNECTED and new_sink.observations)
        time.sleep(0.6)  # past the probe time: no hand-over
        assert new.status == CONNECTED and new.counters.connections == 1
        assert old.status == WAITING_FOR_USB and old.counters.connections == 0
    assert set(new_sink.values(SPO2)) == {Decimal(97)}


def test_no_permission_on_a_discovered_port_then_fixed(devices):
    ports: list = []
    allowed = [False]
    usb = UsbDiscovery(comports=lambda: list(ports), interval=0.05,
                       access=lambda path, mode: allowed[0])
    sink = Sink()
    t = serial_transport(NONIN2, "spo2-1", sink, usb)
    with Loop(usb, t):
        oximeter = devices(nonin_packet(2))
        ports.append(info(oximeter.pty.path, FTDI))
        wait_until(lambda: t.status == NO_PERMISSION)
        assert f"may not read and write {oximeter.pty.path}" in t.reason
        assert 'ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001"' in t.reason
        assert t.counters.connections == 0
        allowed[0] = True
        wait_until(lambda: t.status == CONNECTED)
        wait_until(lambda: sink.observations)
