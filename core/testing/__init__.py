"""Test kit for telemon drivers and transports (vendors use it to test their own drivers).

`telemon.testing.ble`: a virtual BLE radio (bleak over a bumble virtual link, no Bluetooth
hardware, BlueZ or D-Bus) with virtual GATT peripherals for the Bluetooth SIG health
profiles. It needs the `bumble` package (the `testing` extra); importing this package does
not, so `telemon.testing` stays importable without it.

`telemon.testing.serial`: simulated serial pulse oximeters (Nonin formats 2/7/8, Contec
CMS50D+ old and new firmware) streaming real bytes at the real rate on a pty.

Both are fed by a simulated patient (telemon.sim.PatientModel):

* `serial_device(profile, model=None, **options)` - a pty device; open `device.port` with
  pyserial at the driver's settings (see telemon.testing.serial).
* `ble_device(radio, profile, model=None, ...)` - a virtual health peripheral whose
  measurement characteristic sends the model's readings (see `ble_device`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telemon.sim import PatientModel
    from telemon.testing.ble import VirtualPeripheral, VirtualRadio
    from telemon.testing.serial import SerialDevice

BLE_PROFILES = {"blood_pressure": "blood_pressure", "weight_scale": "weight_scale",
                "pulse_oximeter": "pulse_oximeter", "heart_rate": "heart_rate",
                "thermometer": "health_thermometer", "glucose": "glucose"}
"""telemon.sim profile -> telemon.testing.ble.PROFILES key."""


def serial_device(profile: str, model: PatientModel | None = None,
                  **options: Any) -> SerialDevice:
    """A simulated serial device of `profile` streaming on a new pty: see
    telemon.testing.serial.SerialDevice (POSIX only: it needs a pseudo-terminal)."""
    from telemon.testing.serial import SerialDevice

    return SerialDevice(profile, model, **options)


def ble_device(radio: VirtualRadio, profile: str, model: PatientModel | None = None, *,
               start: datetime | None = None, days: float = 1.0,
               times: list[datetime] | None = None, seed: int = 0,
               **options: Any) -> VirtualPeripheral:
    """A virtual BLE health device (telemon.testing.ble.health_peripheral) holding the
    readings of `model` (default: a stable patient with `seed`): those taken at its
    schedule (telemon.sim.SIMULATORS) in `days` from `start` (default: now), or at `times`.
    Like a meter with stored readings, it sends them all once the gateway subscribes. The
    features the simulator declares (e.g. the scale's resolution) are its read values.
    `profile`: a telemon.sim profile ("weight_scale"), a sim or BLE driver name, or
    "health_thermometer". Other keywords go to health_peripheral. Call `await .start()`."""
    from telemon import sim
    from telemon.testing.ble import health_peripheral

    name = sim.profile_of(profile)
    if name not in BLE_PROFILES:
        raise ValueError(f"{profile!r} is not a BLE profile; one of {', '.join(BLE_PROFILES)}")
    simulator = sim.SIMULATORS[name]
    start = start or datetime.now(UTC)
    model = model or sim.PatientModel(seed)
    if times is None:
        readings = sim.frames(name, model, start, start + timedelta(days=days))
    else:
        readings = [(t, simulator.frame(model, t.astimezone(model.tz))) for t in times]
    frames = {simulator.source: [frame for _, frame in readings]}
    features = {**simulator.features, **options.pop("features", {})}
    return health_peripheral(radio, BLE_PROFILES[name], frames, features=features, **options)


__all__ = ["BLE_PROFILES", "ble_device", "serial_device"]
