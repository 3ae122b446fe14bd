"""The edge gateway's BLE transport: find a device, connect, read, subscribe, parse, reconnect.

One `BleTransport` per configured device, on asyncio, over bleak. It finds the device by a
scan for the driver's service UUIDs (or its local-name pattern; narrowed to one address when
the device is pinned), connects, reads the driver's `reads` characteristics once into
`ParseContext.features`, subscribes to the driver's `characteristics`, and hands every value
to the driver's pure parser. Observations go to `submit`; a frame the parser refuses goes to
`reject` with the reason and the raw bytes (quarantine), and the transport carries on. When
the device is not found or the link drops it tries again after an exponential backoff with
full jitter.

`status` (and `on_status`) says where it stands, and the log says the same in words:

* ``scanning`` / ``connecting`` / ``connected`` (while a problem below is retried, its
  status stays until the device is connected again)
* ``out-of-range`` – not found by a scan, the connection attempt timed out, or the link was
  lost: bring the device closer / switch it on.
* ``needs-pairing`` – the device refused a read or a subscription for insufficient
  authentication or encryption: pair it with this gateway (or configure ``pair=True``).
* ``error: <reason>`` – anything else (a missing characteristic, a Bluetooth adapter error).
* ``stopped`` – after `stop()`.

bleak is the only radio dependency. Tests inject a bleak backend (`BleBackend`, e.g.
`telemon.testing.ble.VirtualRadio().backend`); `backend=None` is bleak's own for the
platform (BlueZ on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import (
    BleakCharacteristicNotFoundError,
    BleakDBusError,
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bleak.uuids import normalize_uuid_str

from telemon.backoff import Backoff
from telemon.drivers import Driver, FrameError, ParseContext
from telemon.models import Observation

log = logging.getLogger("telemon.ble")

Submit = Callable[[list[Observation]], None]
Reject = Callable[[str, str, bytes], None]  # (source, reason, raw)

SCANNING, CONNECTING, CONNECTED = "scanning", "connecting", "connected"
OUT_OF_RANGE, NEEDS_PAIRING, STOPPED, IDLE = "out-of-range", "needs-pairing", "stopped", "idle"

# ATT errors that pairing (an encrypted, authenticated link) cures.
PAIRING_ERRORS = frozenset({
    BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
    BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
})
# BlueZ reports some of them (and failed pairing) as D-Bus errors instead.
_BLUEZ_PAIRING_ERRORS = frozenset({
    "org.bluez.Error.AuthenticationFailed", "org.bluez.Error.AuthenticationRejected",
    "org.bluez.Error.AuthenticationCanceled", "org.bluez.Error.AuthenticationTimeout",
})


@dataclass(frozen=True)
class BleBackend:
    """A bleak backend: the scanner and client classes passed as `backend=` to bleak."""

    scanner: type[BaseBleakScanner]
    client: type[BaseBleakClient]


@dataclass(frozen=True)
class BleDeviceConfig:
    """One device of one patient, read by one gateway.

    `address` pins the device (its Bluetooth address as the OS shows it); None finds it by
    the driver's service UUIDs / local-name pattern (the first match wins). `pair` asks the
    OS to pair before using the device (for devices that need an encrypted link). `user`
    is the patient's user index on a monitor shared in the household: a reading the device
    attributes to another (or an unknown) user is not this patient's and goes to quarantine.
    """

    device: str
    patient: str
    gateway: str
    address: str | None = None
    pair: bool = False
    device_tz: tzinfo | None = None
    user: int | None = None


class OutOfRange(Exception):
    """The device was not found, did not answer, or the link was lost."""


@dataclass
class Counters:
    connections: int = 0
    frames: int = 0
    observations: int = 0
    rejected: int = 0


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception met while finding, connecting or setting up."""
    if isinstance(exc, BleakGATTProtocolError) and exc.code in PAIRING_ERRORS:
        return NEEDS_PAIRING, f"{exc.code.name.lower().replace('_', ' ')} (ATT 0x{exc.code:02x})"
    if isinstance(exc, BleakDBusError):
        details = (exc.dbus_error_details or "").lower()
        if exc.dbus_error in _BLUEZ_PAIRING_ERRORS:
            return NEEDS_PAIRING, str(exc)
        if exc.dbus_error == "org.bluez.Error.NotPermitted" and "pair" in details:
            return NEEDS_PAIRING, str(exc)
    if isinstance(exc, OutOfRange):
        return OUT_OF_RANGE, str(exc)
    if isinstance(exc, TimeoutError):
        return OUT_OF_RANGE, f"no answer ({exc or 'timeout'})"
    if isinstance(exc, BleakDeviceNotFoundError):
        return OUT_OF_RANGE, f"device {exc.identifier} not found"
    if isinstance(exc, BleakCharacteristicNotFoundError):
        return "error", f"the device has no characteristic {exc.char_specifier}"
    return "error", f"{type(exc).__name__}: {exc}"


class BleTransport:
    """Reads one BLE device for one patient with one driver until `stop()`.

    `submit(observations)` and `reject(source, reason, raw)` are called from the event loop
    for every value the device sends; they must not block. `on_status(status)` is called on
    every status change. `clock` gives the gateway time put on ParseContext.received.
    """

    def __init__(
        self,
        driver: Driver,
        device: BleDeviceConfig,
        *,
        submit: Submit,
        reject: Reject,
        backend: BleBackend | None = None,
        scan_timeout: float = 30.0,
        connect_timeout: float = 20.0,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        if driver.ble is None:
            raise ValueError(f"driver {driver.name} declares no BleMatch: not a BLE driver")
        self.driver, self.device = driver, device
        self.submit, self.reject = submit, reject
        self.backend = backend
        self.scan_timeout, self.connect_timeout = scan_timeout, connect_timeout
        self.backoff, self.clock = backoff or Backoff(base=1.0, cap=60.0), clock
        self.on_status = on_status
        self.status = IDLE
        self.reason = ""
        self.counters = Counters()
        self.features: Mapping[str, bytes] = {}
        self.service_uuids = tuple(normalize_uuid_str(u) for u in driver.ble.service_uuids)
        self.characteristics = tuple(normalize_uuid_str(u) for u in driver.ble.characteristics)
        self.reads = tuple(normalize_uuid_str(u) for u in driver.ble.reads)
        self.name_pattern = re.compile(driver.ble.local_name) if driver.ble.local_name else None
        self._stop = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to disconnect and return (safe to call from any callback)."""
        self._stop.set()

    async def run(self) -> None:
        """Find, connect, receive; on loss retry with backoff; return after `stop()`."""
        self._stop.clear()
        try:
            while not self._stop.is_set():
                session = asyncio.ensure_future(self._session())
                stopper = asyncio.ensure_future(self._stop.wait())
                try:
                    await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
                    if not session.done():
                        session.cancel()
                    # the session's own end (or cancellation) is a result here; a
                    # cancellation of run() itself still propagates
                    await asyncio.gather(session, return_exceptions=True)
                if self._stop.is_set() or session.cancelled():
                    break
                exc = session.exception()
                if exc is None:  # a session that ends normally lost its link
                    exc = OutOfRange("connection lost")
                self._report(exc)
                delay = self.backoff.next()
                self._log_retry(delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._set_status(STOPPED)

    # -- one attempt: find, connect, set up, receive until the link drops ------------------

    async def _session(self) -> None:
        self._progress(SCANNING)
        found = await self._find()
        if found is None:
            what = f"address {self.device.address}" if self.device.address else (
                "services " + ", ".join(self.service_uuids)
                + (f" or name /{self.name_pattern.pattern}/" if self.name_pattern else ""))
            raise OutOfRange(f"not found in a {self.scan_timeout:g} s scan for {what}")
        self._progress(CONNECTING)
        lost = asyncio.Event()
        client = BleakClient(
            found, disconnected_callback=lambda _client: lost.set(),
            timeout=self.connect_timeout, pair=self.device.pair,
            **({"backend": self.backend.client} if self.backend else {}))
        try:
            await client.connect()
        except TimeoutError as exc:
            raise OutOfRange(f"connection attempt to {found.address} timed out") from exc
        try:
            features = {}
            for uuid in self.reads:
                features[uuid] = bytes(await client.read_gatt_char(uuid))
            self.features = features
            for uuid in self.characteristics:
                await client.start_notify(uuid, self._receiver(uuid))
            self.counters.connections += 1
            self.backoff.reset()
            self._set_status(CONNECTED)
            log.info("%s: connected to %s (%s), subscribed to %s", self.device.device,
                     found.address, found.name or "no name", ", ".join(self.characteristics))
            await lost.wait()
        except BleakError as exc:
            if lost.is_set():  # the link went while setting up
                raise OutOfRange("connection lost while setting up") from exc
            raise
        finally:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await client.disconnect()

    async def _find(self) -> BLEDevice | None:
        address = self.device.address.lower() if self.device.address else None

        def ours(device: BLEDevice, adv: AdvertisementData) -> bool:
            if address is not None and device.address.lower() != address:
                return False
            advertised = {u.lower() for u in adv.service_uuids}
            if advertised.intersection(self.service_uuids):
                return True
            name = adv.local_name or device.name
            return bool(self.name_pattern and name and self.name_pattern.search(name))

        kwargs: dict[str, Any] = {}
        if self.name_pattern is None:  # let the OS filter; a name-only device needs no filter
            kwargs["service_uuids"] = list(self.service_uuids)
        if self.backend:
            kwargs["backend"] = self.backend.scanner
        return await BleakScanner.find_device_by_filter(ours, timeout=self.scan_timeout,
                                                        **kwargs)

    # -- values ---------------------------------------------------------------------------

    def _receiver(self, uuid: str) -> Callable[[Any, bytearray], None]:
        def receive(_characteristic: Any, data: bytearray) -> None:
            self.handle_frame(uuid, bytes(data))
        return receive

    def handle_frame(self, source: str, frame: bytes) -> None:
        """Parse one value from characteristic `source`; never raises."""
        self.counters.frames += 1
        ctx = ParseContext(patient=self.device.patient, device=self.device.device,
                           gateway=self.device.gateway, received=self.clock(),
                           device_tz=self.device.device_tz, source=source,
                           features=self.features)
        try:
            observations = self.driver.parse(frame, ctx)
        except FrameError as exc:
            self._reject(source, str(exc), frame)
            return
        except Exception as exc:  # a parser bug must not stop the gateway
            log.exception("%s: driver %s crashed on %s", self.device.device, self.driver.name,
                          frame.hex(" "))
            self._reject(source, f"driver {self.driver.name} crashed: "
                                 f"{type(exc).__name__}: {exc}", frame)
            return
        if not observations:
            return
        if self.device.user is not None:
            users = {o.context.get("user", "none given") for o in observations}
            other = users - {str(self.device.user)}
            if other:
                self._reject(source, f"a reading of device user {', '.join(sorted(other))}, "
                                     f"not this patient's user {self.device.user}", frame)
                return
        try:
            self.submit(observations)
        except Exception as exc:  # keep the raw frame: it goes to quarantine instead
            log.exception("%s: submit failed", self.device.device)
            self._reject(source, f"submit failed: {type(exc).__name__}: {exc}", frame)
            return
        self.counters.observations += len(observations)

    def _reject(self, source: str, reason: str, frame: bytes) -> None:
        self.counters.rejected += 1
        log.warning("%s: rejected frame from %s: %s (%s)", self.device.device, source, reason,
                    frame.hex(" "))
        try:
            self.reject(source, reason, frame)
        except Exception:
            log.exception("%s: reject failed; frame %s from %s is only in this log",
                          self.device.device, frame.hex(), source)

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
                log.exception("%s: on_status failed", self.device.device)

    def _progress(self, status: str) -> None:
        """scanning / connecting: shown unless a problem is being retried (a device out of
        range stays "out-of-range" while the gateway looks for it again)."""
        if self.status in (IDLE, CONNECTED, STOPPED, SCANNING, CONNECTING):
            self._set_status(status)

    def _report(self, exc: BaseException) -> None:
        status, reason = classify(exc)
        if status == NEEDS_PAIRING:
            self._set_status(NEEDS_PAIRING, reason)
            log.warning("%s: NEEDS PAIRING: the device refused access: %s; pair it with this "
                        "gateway", self.device.device, reason)
        elif status == OUT_OF_RANGE:
            self._set_status(OUT_OF_RANGE, reason)
            log.info("%s: OUT OF RANGE: %s", self.device.device, reason)
        else:
            self._set_status(f"error: {reason}", reason)
            log.error("%s: BLE error: %s", self.device.device, reason,
                      exc_info=status == "error" and not isinstance(exc, BleakError))

    def _log_retry(self, delay: float) -> None:
        log.info("%s: %s; next attempt in %.1f s (attempt %d)", self.device.device,
                 self.status, delay, self.backoff.attempts)


__all__ = [
    "CONNECTED",
    "CONNECTING",
    "NEEDS_PAIRING",
    "OUT_OF_RANGE",
    "SCANNING",
    "STOPPED",
    "BleBackend",
    "BleDeviceConfig",
    "BleTransport",
    "Counters",
    "OutOfRange",
    "classify",
]
