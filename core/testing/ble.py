"""A virtual BLE radio for tests: bleak over a bumble virtual link, and virtual peripherals.

No Bluetooth hardware, kernel module, BlueZ or D-Bus: a bumble `LocalLink` joins one bumble
Controller+Host for the gateway (the central) and one per virtual peripheral, all in this
process and event loop. A custom bleak backend drives the central, so driver and transport
code runs through the real bleak API (`BleakScanner(backend=...)`,
`BleakClient(device, backend=...)`) against a real GATT server (bumble's)::

    async def test_my_scale():
        async with VirtualRadio() as radio:
            scale = await health_peripheral(radio, "weight_scale", [frame]).start()
            transport = BleTransport(DRIVER, config, submit=..., reject=...,
                                     backend=radio.backend)
            ...

Build the radio inside the running event loop (bumble objects stay bound to the loop they
were made in): one per test.

What it covers: advertising (service UUIDs, local name, manufacturer and service data),
scanning with bleak's service-UUID filter, connect (with a timeout that clears the virtual
controller's pending connection), service/characteristic/descriptor discovery, MTU exchange
(517 requested, as BlueZ does), read (long reads too), write with and without response,
notifications, indications (confirmed by bumble), Just-Works pairing (SMP over the virtual
link), disconnection in both directions, a peripheral going out of range and back, ATT
errors as `BleakGATTProtocolError` (insufficient authentication/encryption on read and
subscribe included).

What it does not: radio timing, RSSI, interference, connection parameters, the OS pairing UI,
passkey / numeric-comparison pairing (the virtual pairing is always Just Works), bonding
across connections (pass `pair=True` to pair on each connection), and BlueZ / CoreBluetooth /
WinRT quirks. It is a protocol-level check, not a radio check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypeVar

from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import hci
from bumble.att import ATT_Error, Attribute, AttributeValue, ErrorCode
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData, BaseBumbleError
from bumble.core import TimeoutError as BumbleTimeoutError
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import (
    GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
    Characteristic,
    Descriptor,
    Service,
)
from bumble.gatt_client import CharacteristicProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from telemon.ble import BleBackend

log = logging.getLogger("telemon.testing.ble")

DEFAULT_MTU = 23  # ATT_MTU before an exchange: values longer than 20 bytes are cut
BLUEZ_MTU = 517  # what BlueZ asks for on every connection
_CCCD = GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR
_T = TypeVar("_T")

Security = Literal["none", "encryption", "authentication"]


def uuid_str(value: str | int | UUID) -> str:
    """A UUID as bleak spells it (128-bit, lower case): "2A35", "0x2a35", 0x2A35 or a
    bumble UUID all give "00002a35-0000-1000-8000-00805f9b34fb"."""
    if isinstance(value, UUID):
        return str(uuid_module.UUID(bytes=bytes(reversed(value.to_bytes(force_128=True)))))
    if isinstance(value, int):
        value = f"{value:04x}"
    text = value.lower()
    return normalize_uuid_str(text[2:] if text.startswith("0x") else text)


async def _finish(operation: Coroutine[Any, Any, _T]) -> _T:
    """Run a bumble operation to its end even when the caller is cancelled, then let the
    cancellation through. bumble's host breaks when an HCI command is cancelled halfway
    (the controller's answer finds no pending request), so scan start/stop, power-on and
    disconnect are never cut short."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


_SIG_BASE = "-0000-1000-8000-00805f9b34fb"


def _bumble_uuid(value: str) -> UUID:
    """bumble's UUID, 16- or 32-bit when it is on the Bluetooth SIG base (as devices send
    them: 2 bytes in advertising data and attribute types, not 16)."""
    full = uuid_str(value)
    if full.endswith(_SIG_BASE):
        short = int(full[:8], 16)
        return UUID.from_16_bits(short) if short <= 0xFFFF else UUID.from_32_bits(short)
    return UUID(full)


# =========================================================================================
# The radio
# =========================================================================================


class VirtualRadio:
    """One virtual BLE world: a bumble LocalLink, the gateway's central, the peripherals.

    `backend` is what the transport takes (`BleTransport(..., backend=radio.backend)`);
    `backend.scanner` and `backend.client` are the classes to pass as bleak's `backend=`.
    `mtu` is what the central asks for after connecting (None: no MTU exchange, so the
    default 23 stays). Use it as `async with VirtualRadio() as radio:` (or `await start()`
    and `await close()`); scanners and clients start it on first use.
    """

    def __init__(self, *, mtu: int | None = BLUEZ_MTU, name: str = "telemon-gateway") -> None:
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("create the VirtualRadio inside the running event loop (one "
                               "per test): bumble objects stay bound to their loop") from None
        self.mtu = mtu
        self.link = LocalLink()
        self._addresses = (f"C0:00:00:00:{i >> 8:02X}:{i & 0xFF:02X}" for i in itertools.count(1))
        self.central = self.make_device(name)
        self.peripherals: list[VirtualPeripheral] = []
        self.seen: dict[str, hci.Address] = {}  # typed addresses of advertisers, by string
        self.names: dict[str, str] = {}
        self._scanners: list[VirtualBleakScanner] = []
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._powering: asyncio.Future[None] | None = None
        self._closed = False
        radio = self
        self.backend = BleBackend(
            scanner=type("VirtualBleakScanner", (VirtualBleakScanner,), {"radio": radio}),
            client=type("VirtualBleakClient", (VirtualBleakClient,), {"radio": radio}))

    def next_address(self) -> hci.Address:
        """A fresh random static address (top two bits set): with a public address the
        virtual link connects but carries no data."""
        return hci.Address(next(self._addresses), hci.Address.RANDOM_DEVICE_ADDRESS)

    def make_device(self, name: str, address: hci.Address | None = None) -> Device:
        """A bumble Device with its own Controller on this radio's link."""
        controller = Controller(name, link=self.link)
        device = Device(name=name, address=address or self.next_address(),
                        host=Host(controller, AsyncPipeSink(controller)))
        device.controller = controller  # kept for going out of range (off the link)
        return device

    async def start(self) -> Self:
        if self._powering is None:
            self.central.on("advertisement", self._on_advertisement)
            self._powering = asyncio.ensure_future(self.central.power_on())
        await asyncio.shield(self._powering)
        return self

    async def close(self) -> None:
        """Stop every peripheral and the central."""
        if self._closed:
            return
        self._closed = True
        for peripheral in list(self.peripherals):
            await peripheral.close()
        if self._powering is not None:
            with contextlib.suppress(Exception):
                if self.central.scanning:
                    await self.central.stop_scanning()
            for connection in list(self.central.connections.values()):
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            await self.central.power_off()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- scanning, shared by every bleak scanner on this radio -----------------------------

    async def _add_scanner(self, scanner: VirtualBleakScanner) -> None:
        try:
            await self.start()
            async with self._scan_lock:
                if scanner not in self._scanners:
                    self._scanners.append(scanner)
                if not self.central.scanning:
                    await _finish(self.central.start_scanning(filter_duplicates=False))
        except asyncio.CancelledError:  # bleak will not call stop(): undo
            await _finish(self._remove_scanner(scanner))
            raise

    async def _remove_scanner(self, scanner: VirtualBleakScanner) -> None:
        async with self._scan_lock:
            with contextlib.suppress(ValueError):
                self._scanners.remove(scanner)
            if not self._scanners and self.central.scanning:
                await _finish(self.central.stop_scanning())

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        address = advertisement.address.to_string(False)
        self.seen[address] = advertisement.address
        for scanner in list(self._scanners):
            scanner._on_advertisement(advertisement)


@dataclass(frozen=True)
class VirtualDeviceDetails:
    """`BLEDevice.details` of a virtual device: bumble's typed address (random or public),
    which the client needs to connect."""

    address: hci.Address


# =========================================================================================
# The bleak backend
# =========================================================================================


def _advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    data = advertisement.data
    uuids: list[str] = []
    for kind in (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                 AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                 AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
                 AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
                 AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                 AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS):
        for group in data.get_all(kind):
            uuids.extend(uuid_str(u) for u in group)
    # the virtual controller repeats the advertising data as the scan response: de-duplicate
    service_uuids = list(dict.fromkeys(uuids))
    name = (data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
            or data.get(AdvertisingData.SHORTENED_LOCAL_NAME))
    manufacturer = {company: bytes(payload) for company, payload
                    in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA)}
    service_data: dict[str, bytes] = {}
    for kind in (AdvertisingData.SERVICE_DATA_16_BIT_UUID,
                 AdvertisingData.SERVICE_DATA_32_BIT_UUID,
                 AdvertisingData.SERVICE_DATA_128_BIT_UUID):
        for service, payload in data.get_all(kind):
            service_data[uuid_str(service)] = bytes(payload)
    tx_power = data.get(AdvertisingData.TX_POWER_LEVEL)
    if isinstance(tx_power, int) and tx_power > 127:
        tx_power -= 256
    return AdvertisementData(
        local_name=name if isinstance(name, str) else None, manufacturer_data=manufacturer,
        service_data=service_data, service_uuids=service_uuids,
        tx_power=tx_power if isinstance(tx_power, int) else None, rssi=advertisement.rssi,
        platform_data=(advertisement,))


class VirtualBleakScanner(BaseBleakScanner):
    """bleak scanner backend on a VirtualRadio (get the bound class from `radio.backend`).
    The base class filters by service UUID; every scanner on a radio shares the central's
    scan (always active: the virtual controller answers scan requests)."""

    radio: ClassVar[VirtualRadio]

    def __init__(self, detection_callback: AdvertisementDataCallback | None,
                 service_uuids: list[str] | None, scanning_mode: str = "active",
                 **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode

    async def start(self) -> None:
        self.seen_devices = {}
        await self.radio._add_scanner(self)

    async def stop(self) -> None:
        await _finish(self.radio._remove_scanner(self))

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = _advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address.to_string(False)
        if adv.local_name:
            self.radio.names[address] = adv.local_name
        device = self.create_or_update_device(
            address, address, adv.local_name or self.radio.names.get(address),
            VirtualDeviceDetails(advertisement.address), adv)
        self.call_detection_callbacks(device, adv)


def _bleak_error(what: str, exc: BaseException) -> BaseException:
    """bumble's exception as bleak's: ATT errors become BleakGATTProtocolError (code kept)."""
    if isinstance(exc, ATT_Error):
        error = BleakGATTProtocolError(exc.error_code)
    elif isinstance(exc, BumbleTimeoutError | TimeoutError):
        error = TimeoutError(f"{what}: GATT timeout")
    else:
        error = BleakError(f"{what}: {exc}")
    error.__cause__ = exc
    return error


class VirtualBleakClient(BaseBleakClient):
    """bleak client backend on a VirtualRadio (get the bound class from `radio.backend`)."""

    radio: ClassVar[VirtualRadio]

    def __init__(self, address_or_ble_device: BLEDevice | str, *,
                 disconnected_callback: Callable[[], None] | None = None,
                 timeout: float = 10.0, services: set[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback,
                         timeout=timeout)
        details = getattr(address_or_ble_device, "details", None)
        if isinstance(details, VirtualDeviceDetails):
            self._peer_address = details.address
        else:  # a bare address string: the type it was advertised with, else random
            self._peer_address = self.radio.seen.get(self.address.upper()) or hci.Address(
                self.address, hci.Address.RANDOM_DEVICE_ADDRESS)
        self._service_filter = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._lost: asyncio.Future[None] | None = None
        self._closing = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    # -- connection -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.radio.names.get(self.address.upper(), self.address)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        radio = self.radio
        await radio.start()
        async with radio._connect_lock:  # one pending LE connection per controller
            connection = await self._connect_le()
        self._connection = connection
        self._lost = radio.loop.create_future()
        connection.on("disconnection", self._on_disconnection)
        self._peer = Peer(connection)
        try:
            if radio.mtu:
                await self._gatt("MTU exchange", self._peer.request_mtu(radio.mtu))
            if pair:
                await self.pair()
            await self._gatt("service discovery", self._peer.discover_all())
            self.services = self._collection()
        except BaseException:
            await self.disconnect()
            raise

    async def _connect_le(self) -> Connection:
        central = self.radio.central
        attempt = asyncio.ensure_future(central.connect(self._peer_address, timeout=None))
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(attempt)
        except BaseBumbleError as exc:
            raise BleakError(f"connection to {self.address} failed: {exc}") from exc
        except BaseException as exc:  # timed out, or the caller was cancelled
            await self._abandon(attempt)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"connection to {self.address} timed out after "
                                   f"{self._timeout:g} s") from None
            raise

    async def _abandon(self, attempt: asyncio.Future[Connection]) -> None:
        """Give up a connection attempt without leaving the virtual controller stuck.

        The virtual controller answers LE Create Connection Cancel with success but keeps
        the pending connection: every later connect would fail with COMMAND_DISALLOWED and
        the stale one would complete when the device comes back. And a connection that
        completes just as bumble's connect is cancelled crashes bumble's event handler and
        is left open. So: send the cancel (as to a real controller), clear the pending
        connection ourselves, let an attempt already completing finish, and drop it.
        """
        central = self.radio.central
        with contextlib.suppress(Exception):
            await _finish(central.send_command(hci.HCI_LE_Create_Connection_Cancel_Command()))
        central.controller.pending_le_connection = None
        try:
            async with asyncio.timeout(0.1):
                connection = await asyncio.shield(attempt)
        except BaseException:
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await connection.disconnect()

    def _collection(self) -> BleakGATTServiceCollection:
        assert self._peer is not None
        collection = BleakGATTServiceCollection()
        for proxy in self._peer.services:
            service_uuid = uuid_str(proxy.uuid)
            if self._service_filter and service_uuid not in self._service_filter:
                continue
            service = BleakGATTService(proxy, proxy.handle, service_uuid)
            collection.add_service(service)
            for char in proxy.characteristics:
                properties = [name for bit, name in CHARACTERISTIC_PROPERTIES.items()
                              if char.properties & bit]
                characteristic = BleakGATTCharacteristic(
                    char, char.handle, uuid_str(char.uuid), properties,
                    lambda: self.mtu_size - 3, service)
                collection.add_characteristic(characteristic)
                for desc in char.descriptors:
                    collection.add_descriptor(BleakGATTDescriptor(
                        desc, desc.handle, uuid_str(desc.type), characteristic))
        return collection

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self._peer = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        log.debug("%s disconnected: %s", self.address, hci.HCI_Constant.error_name(reason))
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._closing = True
        try:
            with contextlib.suppress(BaseBumbleError, TimeoutError):
                async with asyncio.timeout(5):
                    await _finish(connection.disconnect())
        finally:
            self._closing = False
            self._connection = None
            self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        connection = self._require()
        await self._gatt(f"pairing with {self.address}", connection.pair())

    async def unpair(self) -> None:
        keystore = self.radio.central.keystore
        if keystore is not None:
            with contextlib.suppress(KeyError):
                await keystore.delete(str(self._peer_address))

    # -- GATT -----------------------------------------------------------------------------

    def _require(self) -> Connection:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection

    async def _gatt(self, what: str, operation: Coroutine[Any, Any, _T]) -> _T:
        """Run one bumble GATT operation as bleak would: bleak's errors, and a prompt error
        when the link drops (bumble would wait for its 30 s GATT timeout)."""
        self._require()
        lost = self._lost
        task = asyncio.ensure_future(operation)
        try:
            waits: set[asyncio.Future[Any]] = {task} if lost is None else {task, lost}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            raise BleakError(f"{what}: disconnected from {self.address}")
        exc = task.exception()
        if exc is not None:
            raise _bleak_error(what, exc)
        return task.result()

    @staticmethod
    def _proxy(characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
        return characteristic.obj

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *,
                             use_cached: bool = False, **kwargs: Any) -> bytearray:
        client = self._require().gatt_client
        if use_cached and characteristic.handle in client.cached_values:
            return bytearray(client.cached_values[characteristic.handle][1])
        value = await self._gatt(f"read {characteristic.uuid}",
                                 client.read_value(characteristic.handle))
        return bytearray(value)

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *,
                                   use_cached: bool = False, **kwargs: Any) -> bytearray:
        client = self._require().gatt_client
        value = await self._gatt(f"read descriptor {descriptor.handle}",
                                 client.read_value(descriptor.handle))
        return bytearray(value)

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any,
                              response: bool) -> None:
        client = self._require().gatt_client
        await self._gatt(f"write {characteristic.uuid}",
                         client.write_value(characteristic.handle, bytes(data), response))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        client = self._require().gatt_client
        await self._gatt(f"write descriptor {descriptor.handle}",
                         client.write_value(descriptor.handle, bytes(data), True))

    async def start_notify(self, characteristic: BleakGATTCharacteristic,
                           callback: NotifyCallback, **kwargs: Any) -> None:
        client = self._require().gatt_client
        proxy = self._proxy(characteristic)

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        try:  # bleak prefers notifications when a characteristic has both
            await self._gatt(f"subscribe {characteristic.uuid}",
                             client.subscribe(proxy, subscriber, prefer_notify=True))
        except BaseException:
            # bumble registers the subscriber before writing the CCCD: undo on failure,
            # or a later subscription delivers every value twice
            for table in (client.notification_subscribers, client.indication_subscribers):
                table.pop(characteristic.handle, None)
            raise
        self._subscribers[characteristic.handle] = subscriber

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        client = self._require().gatt_client
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._gatt(f"unsubscribe {characteristic.uuid}",
                         client.unsubscribe(self._proxy(characteristic), subscriber))


# =========================================================================================
# Virtual peripherals
# =========================================================================================


@dataclass
class GattCharacteristic:
    """A characteristic of a virtual peripheral.

    `properties`: any of "read", "write", "write-without-response", "notify", "indicate".
    `value`: what a read returns. `frames`: values queued for delivery by notification or
    indication; they are sent, in order, once the central subscribes, and each leaves the
    queue when delivered (an indication when confirmed), as a device's stored readings do.
    `security`: "encryption" / "authentication" makes reads and subscribing fail with ATT
    Insufficient Encryption / Authentication until the link is paired (the needs-pairing
    case). `read_error`: an ATT error code every read returns. `on_write`: called with
    every value written.
    """

    uuid: str
    properties: tuple[str, ...] = ("notify",)
    value: bytes = b""
    frames: Sequence[bytes] = ()
    security: Security = "none"
    read_error: int | None = None
    on_write: Callable[[bytes], None] | None = None

    def __post_init__(self) -> None:
        self.uuid = uuid_str(self.uuid)
        unknown = set(self.properties) - set(_PROPERTIES)
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}; use {sorted(_PROPERTIES)}")
        if self.security not in ("none", "encryption", "authentication"):
            raise ValueError(f"security must be none, encryption or authentication, "
                             f"not {self.security!r}")
        self.frames = tuple(self.frames)

    @property
    def subscribable(self) -> bool:
        return "notify" in self.properties or "indicate" in self.properties


@dataclass
class GattService:
    uuid: str
    characteristics: Sequence[GattCharacteristic]
    advertise: bool = True  # put this service's UUID in the advertising data

    def __post_init__(self) -> None:
        self.uuid = uuid_str(self.uuid)
        self.characteristics = tuple(self.characteristics)


_PROPERTIES = {"read": Characteristic.Properties.READ,
               "write": Characteristic.Properties.WRITE,
               "write-without-response": Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
               "notify": Characteristic.Properties.NOTIFY,
               "indicate": Characteristic.Properties.INDICATE}


@dataclass
class Truncation:
    """A value longer than ATT_MTU - 3 that the radio cut (BLE allows no more in one
    notification or indication)."""

    uuid: str
    length: int
    mtu: int


@dataclass
class _Slot:
    spec: GattCharacteristic
    attribute: Characteristic
    pending: deque[bytes] = field(default_factory=deque)
    subscribers: dict[Any, int] = field(default_factory=dict)  # bearer -> CCCD bits


class VirtualPeripheral:
    """A BLE peripheral on a VirtualRadio: advertises (random static address) and serves
    the given GATT services with bumble's GATT server.

    `await start()` powers it on and advertises; `vanish()` takes it out of range (link
    lost with a supervision timeout, no advertising, off the link) and `reappear()` brings
    it back; `push(uuid, *frames)` queues more values (sent at once when subscribed).
    `delivered` lists (uuid, value) as delivered; `truncated` lists values the radio cut.
    `max_mtu` is the largest ATT_MTU it accepts (23: a device that never raises it).
    """

    def __init__(self, radio: VirtualRadio, name: str,
                 services: Iterable[GattService | Service], *,
                 address: str | None = None,
                 manufacturer_data: Mapping[int, bytes] | None = None,
                 max_mtu: int = BLUEZ_MTU, frame_interval: float = 0.0) -> None:
        self.radio, self.name = radio, name
        if address is not None and int(address[:2], 16) < 0xC0:
            raise ValueError(f"{address} is not a random static address (the top two bits "
                             f"set, C0:..-FF:..): on the virtual link a device with a "
                             f"public address connects but carries no data")
        typed = (hci.Address(address, hci.Address.RANDOM_DEVICE_ADDRESS) if address
                 else radio.next_address())
        self.device = radio.make_device(name, typed)
        self.device.gatt_server.max_mtu = max_mtu
        self.address = typed.to_string(False)
        self.manufacturer_data = dict(manufacturer_data or {})
        self.frame_interval = frame_interval
        self.slots: dict[str, _Slot] = {}
        self.delivered: list[tuple[str, bytes]] = []
        self.truncated: list[Truncation] = []
        self.writes: list[tuple[str, bytes]] = []
        self.in_range = True
        self._advertised: list[str] = []
        self._senders: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._started = False
        for service in services:
            self._add_service(service)
        radio.peripherals.append(self)

    # -- GATT database --------------------------------------------------------------------

    def _add_service(self, service: GattService | Service) -> None:
        if isinstance(service, Service):  # a ready bumble service: served as it is
            self.device.add_service(service)
            self._advertised.append(uuid_str(service.uuid))
            return
        attributes = [self._characteristic(spec) for spec in service.characteristics]
        self.device.add_service(Service(_bumble_uuid(service.uuid), attributes))
        if service.advertise:
            self._advertised.append(service.uuid)

    def _characteristic(self, spec: GattCharacteristic) -> Characteristic:
        properties = Characteristic.Properties(0)
        for name in spec.properties:
            properties |= _PROPERTIES[name]
        permissions = Attribute.Permissions.READABLE | Attribute.Permissions.WRITEABLE
        if spec.security == "encryption":
            permissions |= Attribute.Permissions.READ_REQUIRES_ENCRYPTION
        elif spec.security == "authentication":
            permissions |= Attribute.Permissions.READ_REQUIRES_AUTHENTICATION
        value: AttributeValue[bytes] = AttributeValue(
            read=lambda _connection: self._read(spec),
            write=lambda _connection, data: self._write(spec, data))
        attribute = Characteristic(_bumble_uuid(spec.uuid), properties, permissions, value)
        slot = _Slot(spec, attribute, deque(spec.frames))
        self.slots[spec.uuid] = slot
        if spec.subscribable:
            # our own CCCD, so that subscribing can need a paired link as reading does
            # (bumble's GATT server checks security permissions, not READABLE/WRITEABLE)
            cccd_permissions = Attribute.Permissions.READABLE | Attribute.Permissions.WRITEABLE
            if spec.security == "encryption":
                cccd_permissions |= Attribute.Permissions.WRITE_REQUIRES_ENCRYPTION
            elif spec.security == "authentication":
                cccd_permissions |= Attribute.Permissions.WRITE_REQUIRES_AUTHENTICATION
            attribute.descriptors = [Descriptor(
                _CCCD, cccd_permissions, self.device.gatt_server.make_descriptor_value(attribute))]
            attribute.on("subscription",
                         lambda bearer, notify, indicate: self._on_subscription(
                             slot, bearer, notify, indicate))
        return attribute

    def _read(self, spec: GattCharacteristic) -> bytes:
        if spec.read_error is not None:
            raise ATT_Error(spec.read_error)
        if "read" not in spec.properties:
            raise ATT_Error(ErrorCode.READ_NOT_PERMITTED)
        return spec.value

    def _write(self, spec: GattCharacteristic, data: bytes) -> None:
        if "write" not in spec.properties and "write-without-response" not in spec.properties:
            raise ATT_Error(ErrorCode.WRITE_NOT_PERMITTED)
        self.writes.append((spec.uuid, bytes(data)))
        if spec.on_write is not None:
            spec.on_write(bytes(data))

    # -- advertising and range ------------------------------------------------------------

    def advertising_data(self) -> bytes:
        """Flags, service UUIDs, manufacturer data and the name, in 31 bytes. The virtual
        controller has no scan response (it repeats the advertising data), so a name that
        does not fit is shortened (Shortened Local Name), as devices do."""
        structures: list[tuple[int, bytes]] = [(AdvertisingData.FLAGS, bytes([0x06]))]
        by_size: dict[int, list[bytes]] = {2: [], 4: [], 16: []}
        for service in self._advertised:
            encoded = _bumble_uuid(service).to_bytes()
            by_size[len(encoded)].append(encoded)
        for size, kind in ((2, AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS),
                           (4, AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS),
                           (16, AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)):
            if by_size[size]:
                structures.append((kind, b"".join(by_size[size])))
        for company, payload in self.manufacturer_data.items():
            structures.append((AdvertisingData.MANUFACTURER_SPECIFIC_DATA,
                               company.to_bytes(2, "little") + payload))
        size = len(bytes(AdvertisingData(structures)))
        if size > 31:
            raise ValueError(f"{self.name}: {size} bytes of advertising data; 31 fit")
        name = self.name.encode()
        room = 31 - size - 2
        if len(name) <= room:
            structures.append((AdvertisingData.COMPLETE_LOCAL_NAME, name))
        elif room > 0:
            structures.append((AdvertisingData.SHORTENED_LOCAL_NAME, name[:room]))
        return bytes(AdvertisingData(structures))

    async def start(self) -> Self:
        """Power on and advertise (connectable, 20 ms interval, restarted after each
        disconnection as a device waiting for its gateway does)."""
        if not self._started:
            self._started = True
            await self.radio.start()
            self.device.on("connection", self._on_connection)
            await self.device.power_on()
        await self._advertise()
        return self

    async def _advertise(self) -> None:
        await self.device.start_advertising(
            auto_restart=True, advertising_data=self.advertising_data(),
            advertising_interval_min=20, advertising_interval_max=20)

    async def vanish(self) -> None:
        """Go out of range: stop advertising, drop every link as a supervision timeout
        would (the central sees reason 0x08, Connection Timeout), leave the link."""
        self.in_range = False
        await self.device.stop_advertising()
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(BaseBumbleError, TimeoutError):
                async with asyncio.timeout(5):
                    await connection.disconnect(hci.HCI_CONNECTION_TIMEOUT_ERROR)
        with contextlib.suppress(KeyError):
            self.radio.link.remove_controller(self.device.controller)

    async def reappear(self) -> None:
        """Come back in range and advertise again."""
        self.in_range = True
        self.radio.link.add_controller(self.device.controller)
        await self._advertise()

    async def close(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                await self.device.stop_advertising()
            for connection in list(self.device.connections.values()):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await connection.disconnect()
        for task in self._senders.values():
            task.cancel()
        if self._started:
            await self.device.power_off()
        with contextlib.suppress(ValueError):
            self.radio.peripherals.remove(self)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return bool(self.device.connections)

    # -- values ---------------------------------------------------------------------------

    def push(self, uuid: str, *frames: bytes) -> None:
        """Queue values on characteristic `uuid`; they go out at once to a subscriber."""
        slot = self._slot(uuid)
        slot.pending.extend(frames)
        for bearer, bits in slot.subscribers.items():
            if bits:
                self._kick(slot, bearer)

    def pending(self, uuid: str) -> list[bytes]:
        return list(self._slot(uuid).pending)

    def _slot(self, uuid: str) -> _Slot:
        try:
            return self.slots[uuid_str(uuid)]
        except KeyError:
            raise KeyError(f"{self.name} has no characteristic {uuid}") from None

    def _on_connection(self, connection: Connection) -> None:
        connection.on("disconnection", lambda _reason: self._on_disconnection(connection))

    def _on_disconnection(self, connection: Connection) -> None:
        for slot in self.slots.values():
            slot.subscribers = {b: bits for b, bits in slot.subscribers.items()
                                if b is not connection and getattr(b, "connection", None)
                                is not connection}
        for key in [k for k in self._senders if k[0] == id(connection)]:
            self._senders.pop(key).cancel()

    def _on_subscription(self, slot: _Slot, bearer: Any, notify: bool, indicate: bool) -> None:
        bits = (1 if notify else 0) | (2 if indicate else 0)
        slot.subscribers[bearer] = bits
        if bits:
            # send from a task of its own, after the CCCD write has been answered
            self._kick(slot, bearer)

    async def wait_subscribed(self, uuid: str, timeout: float = 5.0) -> None:
        """Wait until a central has subscribed to `uuid`."""
        slot = self._slot(uuid)
        async with asyncio.timeout(timeout):
            while not any(slot.subscribers.values()):
                await asyncio.sleep(0.005)

    def _kick(self, slot: _Slot, bearer: Any) -> None:
        key = (id(bearer), slot.spec.uuid)
        task = self._senders.get(key)
        if task is None or task.done():
            self._senders[key] = self.radio.loop.create_task(self._send(slot, bearer))

    async def _send(self, slot: _Slot, bearer: Any) -> None:
        await asyncio.sleep(0)
        while slot.pending and slot.subscribers.get(bearer):
            frame = slot.pending[0]
            mtu = bearer.att_mtu
            if len(frame) > mtu - 3:
                self.truncated.append(Truncation(slot.spec.uuid, len(frame), mtu))
                log.warning("%s: %d-byte value on %s cut to %d bytes by ATT_MTU %d",
                            self.name, len(frame), slot.spec.uuid, mtu - 3, mtu)
            bits = slot.subscribers[bearer]
            try:
                if bits & 2 and not bits & 1:
                    await self.device.indicate_subscriber(bearer, slot.attribute, frame)
                else:
                    await self.device.notify_subscriber(bearer, slot.attribute, frame)
            except (BaseBumbleError, TimeoutError) as exc:
                log.info("%s: delivery on %s stopped: %s", self.name, slot.spec.uuid, exc)
                return
            if slot.pending and slot.pending[0] is frame:
                slot.pending.popleft()
            self.delivered.append((slot.spec.uuid, frame))
            if self.frame_interval:
                await asyncio.sleep(self.frame_interval)


# =========================================================================================
# Bluetooth SIG health profiles
# =========================================================================================


@dataclass(frozen=True)
class Profile:
    """A standard health service: its measurement characteristics (in the order frames go
    to them by default) and the characteristics read at connect with a default value."""

    service: str
    measurements: tuple[tuple[str, str], ...]  # (uuid, "notify" | "indicate")
    reads: tuple[tuple[str, bytes], ...] = ()


PROFILES: dict[str, Profile] = {
    # Blood Pressure Measurement (indicate), Blood Pressure Feature
    "blood_pressure": Profile("1810", (("2A35", "indicate"),), (("2A49", b"\x00\x00"),)),
    # Weight Measurement (indicate), Weight Scale Feature
    "weight_scale": Profile("181D", (("2A9D", "indicate"),), (("2A9E", bytes(4)),)),
    # PLX Spot-Check Measurement (indicate), PLX Continuous (notify), PLX Features
    "pulse_oximeter": Profile("1822", (("2A5E", "indicate"), ("2A5F", "notify")),
                              (("2A60", b"\x00\x00"),)),
    # Heart Rate Measurement (notify), Body Sensor Location (1 = chest)
    "heart_rate": Profile("180D", (("2A37", "notify"),), (("2A38", b"\x01"),)),
    # Temperature Measurement (indicate), Temperature Type (2 = body, general)
    "health_thermometer": Profile("1809", (("2A1C", "indicate"),), (("2A1D", b"\x02"),)),
    # Glucose Measurement (notify), Glucose Feature; no Record Access Control Point: the
    # stored records are sent on subscription
    "glucose": Profile("1808", (("2A18", "notify"),), (("2A51", b"\x00\x00"),)),
}


def health_peripheral(radio: VirtualRadio, profile: str,
                      frames: Sequence[bytes] | Mapping[str, Sequence[bytes]] = (), *,
                      name: str | None = None, features: Mapping[str, bytes] | None = None,
                      security: Security = "none", **kwargs: Any) -> VirtualPeripheral:
    """A virtual device with one Bluetooth SIG health service (a key of PROFILES).

    `frames` (raw characteristic values, e.g. from the physiological simulator) go to the
    profile's first measurement characteristic, or give {uuid: frames} per characteristic;
    they are sent when the central subscribes. `features` overrides read values by UUID.
    `security` makes the measurements need a paired link. Other keywords go to
    VirtualPeripheral. Call `await ....start()` (it returns the peripheral).
    """
    try:
        spec = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; one of {sorted(PROFILES)}") from None
    measurement_uuids = [uuid_str(u) for u, _ in spec.measurements]
    if isinstance(frames, Mapping):
        by_uuid = {uuid_str(u): tuple(f) for u, f in frames.items()}
        unknown = set(by_uuid) - set(measurement_uuids)
        if unknown:
            raise ValueError(f"{profile} has no measurement characteristic {sorted(unknown)}")
    else:
        by_uuid = {measurement_uuids[0]: tuple(frames)}
    overrides = {uuid_str(u): v for u, v in (features or {}).items()}
    characteristics = [
        GattCharacteristic(uuid, (kind,), frames=by_uuid.get(uuid_str(uuid), ()),
                           security=security)
        for uuid, kind in spec.measurements]
    characteristics += [
        GattCharacteristic(uuid, ("read",), value=overrides.get(uuid_str(uuid), value))
        for uuid, value in spec.reads]
    return VirtualPeripheral(radio, name or profile.replace("_", "-"),
                             [GattService(spec.service, characteristics)], **kwargs)


__all__ = ["BLUEZ_MTU", "DEFAULT_MTU", "PROFILES", "GattCharacteristic", "GattService",
           "Profile", "Truncation", "VirtualBleakClient", "VirtualBleakScanner",
           "VirtualDeviceDetails", "VirtualPeripheral", "VirtualRadio", "health_peripheral",
           "uuid_str"]
