"""One transport per configured device: the factory the edge runtime uses.

`make_transport(driver, device, ...)` picks the transport by `driver.transport`:

* ``ble`` -> `telemon.ble.BleTransport` (the device's `address` pins it; the gateway's time
  zone is the device clock's zone);
* ``serial`` / ``usb`` -> `telemon.serial_port.SerialTransport` (the device's `address` is
  its port; without one, USB discovery by the driver's VID:PIDs through `usb`, the
  gateway's shared `telemon.usb.UsbDiscovery`);
* ``sim`` -> `telemon.sim.SimTransport` (imported only when a simulated device is
  configured).

Every transport has `status` (a string), `counters` (connections, frames, observations,
rejected, and what else it counts), `async run()` (until `stop()`) and `stop()` (safe from
any thread). `submit(observations)` and `reject(source, reason, raw)` must not block: the
edge runtime hands them to its outbox writer thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from telemon.backoff import Backoff
from telemon.drivers import Driver
from telemon.models import Observation
from telemon.usb import UsbDiscovery

log = logging.getLogger("telemon.transports")

Submit = Callable[[list[Observation]], None]
Reject = Callable[[str, str, bytes], None]


def _now() -> datetime:
    return datetime.now(UTC)


def make_transport(driver: Driver, device: Any, *, gateway_id: str, tz: tzinfo | None,
                   submit: Submit, reject: Reject, clock: Callable[[], datetime] = _now,
                   usb: UsbDiscovery | None = None, backoff: Backoff | None = None) -> Any:
    """The transport that reads `device` (a `telemon.config.DeviceConfig`) with `driver`."""
    if driver.transport == "ble":
        from telemon.ble import BleDeviceConfig, BleTransport

        def ble_clock() -> datetime:
            return clock().astimezone(tz) if tz is not None else clock()

        config = BleDeviceConfig(device=device.device, patient=device.patient,
                                 gateway=gateway_id, address=device.address, device_tz=tz,
                                 user=device.user)
        return BleTransport(driver, config, submit=submit, reject=reject, clock=ble_clock,
                            **({"backoff": backoff} if backoff is not None else {}))
    if driver.transport in ("serial", "usb"):
        from telemon.serial_port import SerialTransport

        return SerialTransport(driver, device, gateway_id=gateway_id, tz=tz, submit=submit,
                               reject=reject, clock=clock, usb=usb, backoff=backoff)
    if driver.transport == "sim":
        from telemon.sim import SimTransport

        return SimTransport(driver, device, gateway_id=gateway_id, tz=tz, submit=submit,
                            reject=reject, clock=clock)
    raise ValueError(f"driver {driver.name}: unknown transport {driver.transport!r}")


def needs_discovery(driver: Driver, device: Any) -> bool:
    """Whether a device is found by USB discovery (a serial/usb driver with VID:PIDs and no
    address in the config)."""
    return (driver.transport in ("serial", "usb") and bool(driver.usb)
            and getattr(device, "address", None) is None)


__all__ = ["make_transport", "needs_discovery"]
