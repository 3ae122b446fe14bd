"""USB serial devices: discovery by VID:PID, hot-plug by polling, and permission help.

A configured device whose driver declares `usb` matches (`UsbMatch(vid, pid)`) and whose
config gives no `address` is found here instead of at a fixed port: `UsbDiscovery` polls
`serial.tools.list_ports.comports()` (every 2 s; sysfs on Linux, no udev or D-Bus needed),
notices ports that appear and disappear, and offers each new port to a device that wants it.

**The matching rule.** The candidates for a port are the discovered devices whose driver
lists the port's VID:PID and which have no port yet, in the order they were claimed — the
order of `[[devices]]` in the edge config. The port is offered to the first candidate. When
there is more than one candidate, the offer is a probe: the candidate's transport must get
one frame through its driver's framer and parser within `probe_timeout` seconds (a whole
second of valid packets: noise at a wrong baud rate does not pass), or it gives the port back
and the next candidate gets it; after the last, the round starts again (a device switched off
behind a USB cable that is plugged in sends nothing to any of them). A sole candidate keeps
the port without a deadline (it may simply be switched off). A candidate that got a frame
keeps the port until it goes away.

So both firmware generations of the Contec CMS50D+ (one CP210x cable, 10c4:ea60) can be
configured as two devices for one patient, and whichever firmware is plugged in gets its
data through the right parser. Two devices with the *same* driver found by discovery cannot
be told apart (which patient gets which port would be chance): pin them with `address =
"/dev/serial/by-id/..."` (stable, unique per cable serial number); `ambiguous()` says which.

A port the gateway may not open (`os.access(port, R_OK | W_OK)` is false) is not offered:
its candidates get status "no-permission" and `permission_message()` says exactly what to
do (add the gateway's user to the port's group, or a udev rule for the VID:PID).

Tests inject `comports` (there is no USB bus in a test: fake port records whose `.device` is
a real pty) and `access`.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from telemon.drivers import Driver, UsbMatch

log = logging.getLogger("telemon.usb")

POLL_EVERY = 2.0
PROBE_TIMEOUT = 10.0
SERIAL_GROUP = "dialout"  # the group that owns USB serial ports on Debian, Ubuntu, Raspberry Pi OS


@dataclass(frozen=True)
class Port:
    """A USB serial port as comports() lists it."""

    device: str  # /dev/ttyUSB0, /dev/ttyACM0, COM3
    vid: int
    pid: int
    serial_number: str | None = None
    description: str = ""

    @property
    def usb_id(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"

    def __str__(self) -> str:
        about = [self.usb_id]
        if self.description and self.description != "n/a":
            about.append(self.description)
        if self.serial_number:
            about.append(f"serial {self.serial_number}")
        return f"{self.device} ({', '.join(about)})"

    def matches(self, usb: Iterable[UsbMatch]) -> bool:
        return any(m.vid == self.vid and m.pid == self.pid for m in usb)


def list_ports(comports: Callable[[], Iterable[Any]] | None = None) -> list[Port]:
    """The USB serial ports present now (ports without a VID:PID, e.g. built-in UARTs, are
    left out), sorted by device path."""
    if comports is None:
        from serial.tools.list_ports import comports
    ports = []
    for info in comports():
        vid, pid = getattr(info, "vid", None), getattr(info, "pid", None)
        if vid is None or pid is None:
            continue
        ports.append(Port(device=info.device, vid=vid, pid=pid,
                          serial_number=getattr(info, "serial_number", None),
                          description=getattr(info, "description", "") or ""))
    return sorted(ports, key=lambda p: p.device)


def drivers_for(port: Port, drivers: Iterable[Driver]) -> list[Driver]:
    """The drivers that declare the port's VID:PID, in the order given."""
    return [d for d in drivers if port.matches(d.usb)]


# --- permissions --------------------------------------------------------------------------

def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group_of(path: str) -> str | None:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def permission_message(path: str, *, usb: tuple[int, int] | None = None,
                       user: str | None = None, group: str | None = None) -> str:
    """What to tell the person installing the gateway when it may not open `path`.

    `group` is the port's group (None: unknown). A port owned by group root (a udev default
    for unknown devices) gets the dialout advice plus a udev rule that hands it to dialout."""
    user = user or _user()
    target = group if group and group not in ("root", "0") else SERIAL_GROUP
    if usb is not None:
        match = f'ATTRS{{idVendor}}=="{usb[0]:04x}", ATTRS{{idProduct}}=="{usb[1]:04x}"'
    else:
        match = f'KERNEL=="{os.path.basename(path)}"'
    owned = f" (owned by group {group})" if group else ""
    return (f"permission denied: user {user} may not read and write {path}{owned}. "
            f"Fix: add the gateway's user to the {target} group "
            f"(sudo usermod -aG {target} {user}, then restart the gateway service; a login "
            f"shell needs a new login), or give the port to that group with a udev rule in "
            f"/etc/udev/rules.d/99-telemon.rules: "
            f'SUBSYSTEM=="tty", {match}, GROUP="{target}", MODE="0660" '
            f"(then sudo udevadm control --reload && sudo udevadm trigger)")


def permission_problem(path: str, *, usb: tuple[int, int] | None = None,
                       access: Callable[[str, int], bool] = os.access,
                       group_of: Callable[[str], str | None] = _group_of) -> str | None:
    """None when this process may read and write `path`; else the message saying what to do.
    (As root `os.access` is always true: root needs no group.)"""
    if access(path, os.R_OK | os.W_OK):
        return None
    return permission_message(path, usb=usb, group=group_of(path))


# --- discovery ------------------------------------------------------------------------------

class UsbClaim:
    """One configured device waiting for a USB port its driver matches. Its transport awaits
    `changed`, then looks at `port` (offered to it) and `problem` (a port it would get exists
    but may not be opened: the message says why)."""

    def __init__(self, discovery: UsbDiscovery, device: str, driver: Driver) -> None:
        self.discovery, self.device, self.driver = discovery, device, driver
        self.port: Port | None = None
        self.probe_until: float | None = None  # monotonic deadline while on probation
        self.confirmed = False  # the transport got a frame through: the port is ours
        self.revoked = False  # the port went away while offered
        self.problem: str | None = None
        self.changed = asyncio.Event()

    def confirm(self) -> None:
        """The transport read a valid frame: keep the port (thread-safe: a flag)."""
        self.confirmed = True
        self.probe_until = None

    def release(self, *, failed_probe: bool = False) -> None:
        """Give the port back: it went away, the session ended, or the probe failed (the
        port is then offered to the next candidate)."""
        self.discovery._release(self, failed_probe)

    def __repr__(self) -> str:
        return f"UsbClaim({self.device}, {self.driver.name}, port={self.port})"


class UsbDiscovery:
    """Polls the USB serial ports and offers new ones to the claims that match them.

    `comports` is pyserial's `serial.tools.list_ports.comports` unless a test injects one;
    `drivers` (all installed ones) only serves the log: a known device plugged in that no
    configured device uses is mentioned. Use `scan()` for one poll, or `run()` until `stop()`.
    """

    def __init__(self, *, comports: Callable[[], Iterable[Any]] | None = None,
                 interval: float = POLL_EVERY, probe_timeout: float = PROBE_TIMEOUT,
                 access: Callable[[str, int], bool] = os.access,
                 group_of: Callable[[str], str | None] = _group_of,
                 drivers: Sequence[Driver] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.comports = comports
        self.interval, self.probe_timeout = interval, probe_timeout
        self.access, self.group_of = access, group_of
        self.drivers = tuple(drivers)
        self.clock = clock
        self.claims: list[UsbClaim] = []
        self.present: dict[str, Port] = {}
        self.tried: dict[str, set[int]] = {}  # port -> indices of claims whose probe failed
        self.owner: dict[str, int] = {}  # port -> index of the claim that recognised it
        self._problems: dict[str, str] = {}  # port -> permission message (logged once)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.scans = 0

    def claim(self, device: str, driver: Driver) -> UsbClaim:
        """Register a device that wants a port of its driver's VID:PIDs (call in config
        order: earlier claims are offered a port first)."""
        if not driver.usb:
            raise ValueError(f"driver {driver.name} declares no USB VID:PID to discover by")
        claim = UsbClaim(self, device, driver)
        self.claims.append(claim)
        return claim

    def ambiguous(self) -> list[tuple[str, list[str]]]:
        """(driver, devices) for drivers claimed by more than one device: which of those
        devices gets which port is chance; they need a pinned address."""
        by_driver: dict[str, list[str]] = {}
        for claim in self.claims:
            by_driver.setdefault(claim.driver.name, []).append(claim.device)
        return [(name, devices) for name, devices in by_driver.items() if len(devices) > 1]

    # -- polling --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Poll now instead of at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Poll every `interval` seconds until `stop()`."""
        self._stop.clear()
        for driver, devices in self.ambiguous():
            log.warning("devices %s all use driver %s by USB discovery: which port goes to "
                        "which patient is chance; pin each with address = "
                        '"/dev/serial/by-id/..." in the edge config', ", ".join(devices),
                        driver)
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                ports = await loop.run_in_executor(None, list_ports, self.comports)
                self.update(ports)
            except Exception:  # a flaky sysfs read must not end discovery
                log.exception("listing the USB serial ports failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def scan(self) -> None:
        """One poll, synchronously."""
        self.update(list_ports(self.comports))

    def update(self, ports: Iterable[Port]) -> None:
        """Take a new list of the ports present: note what came and went, and offer ports
        to claims."""
        self.scans += 1
        now = {p.device: p for p in ports}
        for path in sorted(set(self.present) - set(now)):
            log.info("USB serial port removed: %s", self.present[path])
            self.tried.pop(path, None)
            self.owner.pop(path, None)
            self._problems.pop(path, None)
            for claim in self.claims:
                if claim.port is not None and claim.port.device == path:
                    claim.revoked = True
                    claim.changed.set()
        for path in sorted(set(now) - set(self.present)):
            port = now[path]
            wanted = [c.device for c in self.claims if port.matches(c.driver.usb)]
            known = [d.name for d in drivers_for(port, self.drivers)]
            if wanted:
                log.info("USB serial port added: %s, for device(s) %s", port,
                         ", ".join(wanted))
            elif known:
                log.info("USB serial port added: %s: a device for driver(s) %s, but no "
                         "configured device without an address uses them", port,
                         ", ".join(known))
            else:
                log.debug("USB serial port added: %s (no driver for it)", port)
        self.present = now
        for path in sorted(now):
            self._offer(now[path])
        self._clear_stale_problems()

    def _offer(self, port: Port) -> None:
        if any(c.port is not None and c.port.device == port.device for c in self.claims):
            return
        matching = [i for i, c in enumerate(self.claims) if port.matches(c.driver.usb)]
        free = [i for i in matching if self.claims[i].port is None]
        if not free:
            return
        tried = self.tried.setdefault(port.device, set())
        untried = [i for i in free if i not in tried]
        if not untried:  # every candidate had its turn: start the round again
            if len(free) > 1:
                log.warning("USB port %s: no configured driver recognised its data (tried "
                            "%s); trying again", port, ", ".join(
                                f"{self.claims[i].device} ({self.claims[i].driver.name})"
                                for i in free))
            tried.clear()
            untried = free
        problem = permission_problem(port.device, usb=(port.vid, port.pid),
                                     access=self.access, group_of=self.group_of)
        if problem is not None:
            if self._problems.get(port.device) != problem:
                log.error("USB port %s, for device(s) %s: %s", port, ", ".join(
                    self.claims[i].device for i in free), problem)
            self._problems[port.device] = problem
            for i in free:
                claim = self.claims[i]
                if claim.problem != problem:
                    claim.problem = problem
                    claim.changed.set()
            return
        if self._problems.pop(port.device, None) is not None:
            log.info("USB port %s may be opened now", port)
        owner = self.owner.get(port.device)
        if owner in free:  # it recognised this port before: no new probe
            claim, probation = self.claims[owner], False
        else:
            claim, probation = self.claims[untried[0]], len(free) > 1
        claim.port, claim.problem = port, None
        claim.confirmed = claim.revoked = False
        claim.probe_until = (self.clock() + self.probe_timeout) if probation else None
        log.info("USB port %s offered to device %s (driver %s)%s", port, claim.device,
                 claim.driver.name, f", {self.probe_timeout:g} s to recognise its data"
                 if claim.probe_until is not None else "")
        claim.changed.set()

    def _clear_stale_problems(self) -> None:
        """A claim whose permission problem was about a port that went (or got fixed) has
        no problem any more."""
        for claim in self.claims:
            if claim.problem is not None and claim.problem not in self._problems.values():
                claim.problem = None
                claim.changed.set()

    def _release(self, claim: UsbClaim, failed_probe: bool) -> None:
        port = claim.port
        if port is not None and claim.confirmed and not failed_probe:
            self.owner[port.device] = self.claims.index(claim)
        claim.port, claim.probe_until = None, None
        claim.confirmed = claim.revoked = False
        if port is None:
            return
        if failed_probe:
            self.tried.setdefault(port.device, set()).add(self.claims.index(claim))
            log.info("USB port %s: device %s (driver %s) did not recognise its data; "
                     "offering it to the next candidate", port, claim.device,
                     claim.driver.name)
            if port.device in self.present:
                self._offer(self.present[port.device])
        else:  # the port failed: list the ports again before offering it to anyone
            self.wake()


__all__ = [
    "POLL_EVERY",
    "PROBE_TIMEOUT",
    "Port",
    "UsbClaim",
    "UsbDiscovery",
    "drivers_for",
    "list_ports",
    "permission_message",
    "permission_problem",
]
