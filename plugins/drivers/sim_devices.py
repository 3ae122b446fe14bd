"""Simulated devices: one `sim` driver per device profile, for demos and tests without
hardware. Each reads a simulated patient (telemon.sim.PatientModel) at the citizen's
schedule and hands the frames to the REAL parser of its profile (and, for serial devices,
the real framer), so a sim device exercises exactly the code a real one does.

Drivers: sim_blood_pressure, sim_weight_scale, sim_pulse_oximeter, sim_heart_rate,
sim_thermometer, sim_glucose (Bluetooth SIG health profiles) and sim_nonin_format2,
sim_contec_legacy (serial pulse oximeters). Device config keys (all optional):
`scenario` ("stable", "copd-exacerbation", "hf-decompensation", "af"), `seed` (an integer;
default: from the device id) and `speed` (simulated time runs this many times faster)::

    [[devices]]
    driver = "sim_weight_scale"
    patient = "pt-demo-1"
    device = "scale-sim-1"
    scenario = "hf-decompensation"
    seed = 7
    speed = 3600          # an hour a second: the decompensation shows within minutes
"""

from __future__ import annotations

from telemon import __version__, sim
from telemon.drivers import Driver
from telemon.hookspecs import hookimpl
from telemon.plugins.drivers import (
    ble_blood_pressure,
    ble_glucose,
    ble_heart_rate,
    ble_pulse_oximeter,
    ble_thermometer,
    ble_weight_scale,
    serial_contec,
    serial_nonin,
)

_REAL = {driver.name: driver for driver in (
    ble_blood_pressure.DRIVER, ble_glucose.DRIVER, ble_heart_rate.DRIVER,
    ble_pulse_oximeter.DRIVER, ble_thermometer.DRIVER, ble_weight_scale.DRIVER,
    *serial_contec.DRIVERS, *serial_nonin.DRIVERS)}


def simulated(profile: str) -> Driver:
    """The sim driver of `profile` (a key of telemon.sim.SIMULATORS)."""
    real = _REAL[sim.REAL_DRIVERS[profile]]
    simulator = sim.SIMULATORS[profile]
    when = ", ".join(simulator.schedule)
    return Driver(
        name=f"sim_{profile}", version=__version__, transport="sim", parse=real.parse,
        description=f"Simulated device for {real.name} (physiological model; readings at "
                    f"{when}): {real.description}",
        codes=real.codes, stream=real.stream, simulate=simulator)


DRIVERS = tuple(simulated(profile) for profile in sim.SIMULATORS)


@hookimpl
def register_drivers(register):
    for driver in DRIVERS:
        register(driver)
