"""The edge runtime: one transport per configured device next to the publisher.

Real here: ptys fed with Nonin/Contec byte streams, pyserial, the outbox (SQLite), the
status file and `telemon edge status` reading it, and at the end `telemon edge --config` as
a subprocess against a real Mosquitto, stopped with SIGTERM. Injected: a transport factory
where a test needs a transport that crashes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from test_serial_parsers import legacy, nonin_packet, registered, v2
from test_serial_transport import PULSE, SPO2, Pty, wait_until

from telemon import mqtt, plugin_manager, wire
from telemon.backoff import Backoff
from telemon.ble import BleTransport
from telemon.codes import KNOWN
from telemon.config import BrokerConfig, DeviceConfig
from telemon.edge import DEVICE_STATUS_FILE, Gateway, edge, read_device_status
from telemon.models import Observation
from telemon.outbox import Outbox, outbox_path
from telemon.serial_port import SerialTransport
from telemon.transports import make_transport, needs_discovery

pytest_plugins = ["mosquitto"]

ORG, GW = "kommune-0999", "gw-dev"
TZ = ZoneInfo("Europe/Copenhagen")
DRIVERS = registered()
NONIN2 = DRIVERS["serial_nonin_format2"]
LEGACY = DRIVERS["serial_contec_cms50d_legacy"]
V2 = DRIVERS["serial_contec_cms50d_v2"]


def device(name: str, driver: str, address: str | None, patient: str = "pt-1"):
    return DeviceConfig(driver=driver, patient=patient, device=name, address=address,
                        user=None)


def nonin_second(spo2: int, hr: int = 72) -> bytes:
    return b"".join(nonin_packet(2, spo2=spo2 - 2 + k, hr=hr) for k in range(3))


def filler_reading(i: int) -> Observation:
    return Observation(id=f"filler-{i}", patient="pt-0", device="other", gateway=GW,
                       code=KNOWN["spo2"].code, unit="%", value=Decimal(95),
                       effective=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=i),
                       raw=os.urandom(2000))


def make_gateway(folder: Path, megabytes: float = 64) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(outbox_path(folder), max_megabytes=megabytes)
    broker = BrokerConfig(url="mqtt://127.0.0.1:1", username=None, password=None,
                          client_id=None)
    return Gateway(organisation=ORG, gateway=GW, broker=broker, outbox=outbox)


def fast() -> Backoff:
    return Backoff(0.02, 0.1, random.Random(1))


@pytest.fixture
def serial_plugins():
    """The serial drivers are in the registry `telemon edge` loads (their entry points are
    installed); the environment for a subprocess."""
    plugin_manager.get.cache_clear()
    assert {NONIN2.name, LEGACY.name, V2.name} <= set(plugin_manager.get()[1].drivers)
    yield dict(os.environ)
    plugin_manager.get.cache_clear()


@pytest.fixture
def ptys():
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for pty in made:
        pty.close()


# --- the factory --------------------------------------------------------------------------

def test_make_transport_chooses_by_the_drivers_transport(tmp_path):
    drivers = plugin_manager.get()[1].drivers
    calls = {"submit": [], "reject": []}
    common = dict(gateway_id=GW, tz=TZ, submit=calls["submit"].append,
                  reject=lambda *a: calls["reject"].append(a))
    ble = make_transport(drivers["ble_blood_pressure"],
                         device("bpm-1", "ble_blood_pressure", "A4:C1:38:00:00:01"), **common)
    assert isinstance(ble, BleTransport)
    assert (ble.device.device, ble.device.patient, ble.device.gateway, ble.device.address,
            ble.device.device_tz) == ("bpm-1", "pt-1", GW, "A4:C1:38:00:00:01", TZ)
    assert ble.clock().tzinfo == TZ  # received time in the gateway's zone

    serial = make_transport(NONIN2, device("oxi-1", NONIN2.name, "/dev/ttyUSB0"), **common)
    assert isinstance(serial, SerialTransport) and serial.port == "/dev/ttyUSB0"
    assert serial.claim is None and not needs_discovery(NONIN2, serial.device)
    found = make_transport(LEGACY, device("oxi-2", LEGACY.name, None), **common)
    assert found.port is None and found.claim is not None  # USB discovery by VID:PID
    assert needs_discovery(LEGACY, found.device)
    with pytest.raises(ValueError, match="not a serial driver"):
        make_transport(replace(drivers["ble_blood_pressure"], transport="serial"),
                       device("x", "x", None), **common)
    with pytest.raises(ValueError, match="unknown transport 'radio'"):
        make_transport(replace(NONIN2, transport="radio"), device("x", "x", None), **common)


def test_make_transport_for_a_simulated_device():
    try:
        from telemon.sim import SimTransport
    except ImportError:
        pytest.skip("telemon.sim (the simulators) is not there yet")
    sims = [d for d in plugin_manager.get()[1].drivers.values() if d.transport == "sim"]
    if not sims:
        from telemon.plugins.drivers import sim_devices
        sims = list(sim_devices.DRIVERS)
    transport = make_transport(sims[0], device("sim-1", sims[0].name, None), gateway_id=GW,
                               tz=TZ, submit=lambda o: None, reject=lambda *a: None)
    assert isinstance(transport, SimTransport)
    assert transport.status == "idle" and transport.counters.frames == 0


# --- the runtime in-process -----------------------------------------------------------------

def test_devices_read_into_the_outbox_with_status_file(tmp_path, ptys):
    nonin, contec = ptys(), ptys()
    gateway = make_gateway(tmp_path / "storage")
    devices = [device("oxi-n", NONIN2.name, nonin.path, "pt-1"),
               device("oxi-c", LEGACY.name, contec.path, "pt-2")]
    runner = gateway.run_devices(devices, DRIVERS, tz=TZ, backoff=fast, status_every=0.2)
    status_file = tmp_path / "storage" / DEVICE_STATUS_FILE
    try:
        wait_until(lambda: [s.current_status() for s in runner.states] == ["connected"] * 2)
        nonin.write(nonin_second(95) + nonin_second(94) + nonin_packet(2)[:7])
        contec.write(b"\xff" + b"".join(legacy(spo2=91) for _ in range(60)) + legacy()[:1])
        wait_until(lambda: gateway.outbox.stats().depth == 6, what="6 readings stored")
        wait_until(lambda: gateway.outbox.stats().quarantined == 1, what="quarantined")
        # the status file is rewritten while it runs
        wait_until(lambda: (read_device_status(status_file) or {}).get("devices", [{}])[0]
                   .get("outbox", {}).get("stored") == 4, what="status file")
        document = read_device_status(status_file)
        assert document["running"] and document["pid"] == os.getpid()
        assert oct(status_file.stat().st_mode & 0o777) == "0o600"
        n, c = document["devices"]
        assert (n["device"], n["transport"], n["status"], n["address"]) == (
            "oxi-n", "serial", "connected", nonin.path)
        assert n["counters"]["frames"] == 2 and n["counters"]["framer"]["packets"] == 6
        assert n["outbox"] == {"stored": 4, "duplicates": 0, "refused": 0, "quarantined": 0}
        assert c["counters"]["rejected"] == 1 and c["outbox"]["quarantined"] == 1
        summary = runner.summary()  # what the retained status message carries
        assert summary[0] == {"device": "oxi-n", "driver": NONIN2.name, "transport": "serial",
                              "status": "connected", "connections": 1, "frames": 2,
                              "observations": 4, "rejected": 0, "refused": 0}
    finally:
        gateway.close()
    # stopped: the framers were flushed into the outbox, the file says so
    with Outbox(outbox_path(tmp_path / "storage")) as box:
        quarantined = {q.source: q for q in box.quarantined()}
        readings = [wire.decode(e.payload) for e in box.peek(100)]
    assert quarantined[f"driver:{LEGACY.name}:oxi-c:{contec.path}"].raw == b"\xff"
    assert quarantined[f"driver:{NONIN2.name}:oxi-n:{nonin.path}"].reason == (
        "stream ended inside a packet: 7 byte(s) dropped")
    assert sorted((r.device, r.value) for r in readings if r.code.code == SPO2) == [
        ("oxi-c", Decimal(91)), ("oxi-n", Decimal(94)), ("oxi-n", Decimal(95))]
    assert {r.effective.utcoffset() for r in readings} == {TZ.utcoffset(readings[0].effective)}
    document = read_device_status(status_file)
    assert not document["running"]
    assert [d["status"] for d in document["devices"]] == ["stopped", "stopped"]
    assert document["devices"][0]["outbox"]["quarantined"] == 1  # the flush, counted


def test_a_full_outbox_refuses_and_counts_per_device(tmp_path, ptys):
    storage = tmp_path / "storage"
    gateway = make_gateway(storage, megabytes=0.25)
    filler = 0
    while gateway.submit([filler_reading(j) for j in range(filler, filler + 10)]).accepted:
        filler += 10
    pty = ptys()
    runner = gateway.run_devices([device("oxi-n", NONIN2.name, pty.path)], DRIVERS, tz=TZ,
                                 backoff=fast)
    try:
        wait_until(lambda: runner.states[0].current_status() == "connected")
        pty.write(nonin_second(95) + nonin_second(96) + nonin_packet(2)[:5])
        wait_until(lambda: runner.states[0].refused == 4, what="refused")
        assert runner.states[0].transport.counters.observations == 4
        assert runner.summary()[0]["refused"] == 4
    finally:
        gateway.close()


class Crashing:
    """A transport whose run() fails the first time (a bug in a third-party transport)."""

    def __init__(self) -> None:
        self.status, self.runs = "idle", 0
        self.counters = {"connections": 0, "frames": 0, "observations": 0, "rejected": 0}
        self.stopped = False

    async def run(self) -> None:
        import asyncio

        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("boom")
        self.status = "connected"
        while not self.stopped:
            await asyncio.sleep(0.01)
        self.status = "stopped"

    def stop(self) -> None:
        self.stopped = True


def test_a_crashed_transport_is_restarted_and_a_bad_device_does_not_stop_the_others(
        tmp_path, monkeypatch):
    import telemon.edge as edge_module

    crashing = Crashing()

    def factory(driver, config, **_options):
        if config.device == "bad":
            raise ValueError("cannot open the thing")
        return crashing

    monkeypatch.setattr(edge_module.Backoff, "next", lambda self: 0.05)
    gateway = make_gateway(tmp_path / "storage")
    runner = gateway.run_devices(
        [device("flaky", NONIN2.name, "/dev/null"), device("bad", NONIN2.name, "/dev/null"),
         device("ghost", "no_such_driver", None)], DRIVERS, tz=TZ, factory=factory)
    try:
        wait_until(lambda: crashing.status == "connected" and crashing.runs == 2)
        statuses = [s.current_status() for s in runner.states]
        assert statuses == ["connected", "error: cannot start its serial transport: cannot "
                            "open the thing", "error: driver no_such_driver is not installed"]
        assert runner.states[0].crashes == 1
    finally:
        gateway.close()
    assert crashing.status == "stopped"


def test_edge_status_shows_each_devices_transport(tmp_path, ptys, serial_plugins):
    pty = ptys()
    config = tmp_path / "edge.toml"
    config.write_text("\n".join([
        'role = "edge"', f'organisation = "{ORG}"', f'gateway = "{GW}"',
        "[broker]", 'url = "mqtt://127.0.0.1:1"', "[storage]",
        f'path = "{tmp_path / "storage"}"',
        "[[devices]]", f'driver = "{NONIN2.name}"', 'patient = "pt-1"', 'device = "oxi-n"',
        f'address = "{pty.path}"',
        "[[devices]]", f'driver = "{LEGACY.name}"', 'patient = "pt-1"', 'device = "oxi-usb"',
    ]) + "\n")
    runner_cli = CliRunner()
    result = runner_cli.invoke(edge, ["status", "--config", str(config)])
    assert "no device status yet" in result.output

    gateway = make_gateway(tmp_path / "storage")
    runner = gateway.run_devices(
        [device("oxi-n", NONIN2.name, pty.path), device("oxi-usb", LEGACY.name, None)],
        DRIVERS, tz=TZ, backoff=fast, comports=lambda: [], usb_interval=0.05,
        status_every=0.1)
    try:
        wait_until(lambda: [s.current_status() for s in runner.states]
                   == ["connected", "waiting-for-usb"])
        pty.write(nonin_second(95) + nonin_packet(2)[:1] + b"\x00" * 4 + nonin_second(97)
                  + nonin_packet(2)[:5])
        wait_until(lambda: runner.states[0].transport.counters.observations == 4)
        time.sleep(0.3)  # a status file write
        result = runner_cli.invoke(edge, ["status", "--config", str(config)])
        assert result.exit_code == 0, result.output
        out = result.output
        assert f"gateway running (pid {os.getpid()})" in out
        section = out[out.index("transports (as of"):].splitlines()
        row = next(line for line in section if line.startswith("  oxi-n "))
        assert row.split()[1:3] == ["serial", "connected"]
        assert row.split()[-5:] == ["1", "2", "4", "1", "0"]  # conn frames obs rej refused
        assert f"  oxi-n: {pty.path} at 9600 8N1\n" in out
        assert ("  oxi-n: framer frames 151, packets 6, emitted 2, lost_sync 1, resyncs 1, "
                "dropped_bytes 5\n") in out
        usb = next(line for line in section if line.startswith("  oxi-usb "))
        assert "waiting-for-usb" in usb
        assert "oxi-usb: no USB serial port 10c4:ea60 plugged in" in out
        result = runner_cli.invoke(edge, ["status", "--config", str(config), "--json"])
        document = json.loads(result.output)
        assert document["transports"]["gateway_running"] is True
        first = document["devices"][0]["transport"]
        assert first["status"] == "connected" and first["counters"]["observations"] == 4
    finally:
        gateway.close()
    result = runner_cli.invoke(edge, ["status", "--config", str(config)])
    section = result.output[result.output.index("transports (as of"):].splitlines()
    assert "gateway stopped" in section[0]
    assert next(line for line in section if line.startswith("  oxi-n ")).split()[2] == \
        "stopped"


# --- `telemon edge --config` end to end -----------------------------------------------------

def test_edge_cli_reads_serial_devices_into_the_broker_and_stops_on_sigterm(
        tmp_path, mosquitto, ptys, serial_plugins):
    from mosquitto import Subscriber

    contec, nonin = ptys(), ptys()
    storage = tmp_path / "storage"
    config = tmp_path / "edge.toml"
    config.write_text("\n".join([
        'role = "edge"', f'organisation = "{ORG}"', f'gateway = "{GW}"',
        'timezone = "Europe/Copenhagen"',
        "[broker]", f'url = "{mosquitto.url}"', "[storage]", f'path = "{storage}"',
        "[[devices]]", f'driver = "{V2.name}"', 'patient = "pt-1"', 'device = "oxi-c"',
        f'address = "{contec.path}"',
        "[[devices]]", f'driver = "{NONIN2.name}"', 'patient = "pt-2"', 'device = "oxi-n"',
        f'address = "{nonin.path}"',
    ]) + "\n")
    subscriber = Subscriber(mosquitto.port, [f"telemon/v1/{ORG}/#"]).start()
    log = tmp_path / "gateway.log"
    with log.open("ab") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "telemon", "edge", "--config",
                                    str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=serial_plugins)
    status_file = storage / DEVICE_STATUS_FILE

    def statuses() -> list[str]:
        return [d["status"] for d in (read_device_status(status_file) or {}).get(
            "devices", [])]

    def received() -> list:
        out = []
        for message in list(subscriber.messages):
            if message.topic == mqtt.obs_topic(ORG, GW):
                decoded = wire.decode_message(message.payload)
                assert not decoded.errors
                out += decoded.records
        return out

    try:
        # the v2 oximeter is told to start streaming once its port is open
        assert contec.read(9, timeout=15) == bytes.fromhex("7d81a1808080808080"), \
            log.read_text()
        wait_until(lambda: statuses() == ["connected", "connected"], 15, "both connected")
        contec.write(bytes.fromhex("0c80") + v2(spo2=96, pulse=61) * 60
                     + v2(spo2=95, pulse=62) * 60 + v2()[:3])
        nonin.write(nonin_second(93, hr=130) + nonin_packet(2)[:5])
        assert subscriber.wait_for(lambda _: len(received()) == 6, 15), log.read_text()
        values = {(r.device, r.code.code, r.value, r.patient) for r in received()
                  if r.code.code == SPO2}
        assert values == {("oxi-c", SPO2, Decimal(96), "pt-1"),
                          ("oxi-c", SPO2, Decimal(95), "pt-1"),
                          ("oxi-n", SPO2, Decimal(93), "pt-2")}
        pulses = {(r.device, r.value) for r in received() if r.code.code == PULSE}
        assert pulses == {("oxi-c", Decimal(61)), ("oxi-c", Decimal(62)),
                          ("oxi-n", Decimal(130))}
        assert {r.gateway for r in received()} == {GW}
        assert all(r.received is None or r.received.tzinfo for r in received())
        # the retained status message carries each device's transport status
        assert subscriber.wait_for(lambda ms: any(
            m.topic.endswith("/status") and [d["status"] for d in json.loads(m.payload)
                                              .get("devices", [])] == ["connected"] * 2
            for m in ms), 10)

        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        subscriber.stop()
    document = read_device_status(status_file)
    assert not document["running"] and statuses() == ["stopped", "stopped"]
    stored = sum(d["outbox"]["stored"] for d in document["devices"])
    with Outbox(outbox_path(storage), readonly=True) as box:
        waiting = {e.id for e in box.peek(1000)}
        quarantined = box.quarantined()
    # the flushed partial packets: kept with why, not lost
    assert {q.source for q in quarantined} == {f"driver:{V2.name}:oxi-c:{contec.path}",
                                               f"driver:{NONIN2.name}:oxi-n:{nonin.path}"}
    # nothing lost: every stored reading was delivered or is still in the outbox
    delivered = {r.id for r in received()}
    assert stored == len(delivered | waiting) >= 6
