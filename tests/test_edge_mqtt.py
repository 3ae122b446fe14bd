"""The edge gateway against a real Mosquitto: outbox -> broker -> subscriber, outages,
status and last will, kills at random moments, and `telemon edge status`.

Run as a script (`python tests/test_edge_mqtt.py feed ...`) this file is the kill test's
gateway process: simulated blood-pressure monitors -> the ble_blood_pressure driver ->
Gateway.submit -> outbox -> broker.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemon import mqtt, plugin_manager, wire
from telemon.backoff import Backoff
from telemon.codes import KNOWN
from telemon.config import BrokerConfig, SecretRef
from telemon.drivers import ParseContext
from telemon.edge import Gateway, edge
from telemon.models import Observation
from telemon.outbox import Outbox, outbox_path

pytest_plugins = ["mosquitto"]

ORG, GW = "kommune-0999", "gw-test"
T0 = datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
HERE = Path(__file__).resolve()


def obs(i: int, device: str = "dev-1", raw: bytes = b"") -> Observation:
    return Observation(id=f"obs-{device}-{i}", patient="pt-1", device=device, gateway=GW,
                       code=KNOWN["spo2"].code, unit="%", value=Decimal(90 + i % 10),
                       effective=T0 + timedelta(minutes=i), raw=raw)


def broker_config(url: str, **kw) -> BrokerConfig:
    return BrokerConfig(url=url, username=kw.get("username"), password=kw.get("password"),
                        client_id=None)


def make_gateway(tmp_path: Path, url: str, **options) -> Gateway:
    options.setdefault("backoff", Backoff(0.05, 0.3, random.Random(1)))
    outbox = Outbox(tmp_path / "outbox.sqlite", max_megabytes=options.pop("max_megabytes", 64))
    return Gateway(organisation=ORG, gateway=GW, broker=broker_config(url), outbox=outbox,
                   **options)


def ids_in(messages) -> list[str]:
    out = []
    for message in messages:
        if message.topic.endswith("/obs"):
            decoded = wire.decode_message(message.payload)
            assert not decoded.errors
            out += [r.id for r in decoded.records]
    return out


def states(messages) -> list[str]:
    return [json.loads(m.payload)["state"] for m in messages if m.topic.endswith("/status")]


# --- topics, payloads, backoff, client factory ---------------------------------------------

def test_topics():
    assert mqtt.obs_topic(ORG, GW) == "telemon/v1/kommune-0999/gw-test/obs"
    assert mqtt.status_topic(ORG, GW) == "telemon/v1/kommune-0999/gw-test/status"
    assert mqtt.alarms_topic(ORG) == "telemon/v1/kommune-0999/alarms"
    assert mqtt.central_subscription(ORG) == \
        "$share/central-kommune-0999/telemon/v1/kommune-0999/+/obs"
    assert mqtt.status_subscription(ORG) == "telemon/v1/kommune-0999/+/status"
    for bad in ("a/b", "+", "#", "", "x" * 65, "Jens Hansen"):
        with pytest.raises(ValueError, match="pseudonymous id"):
            mqtt.obs_topic(ORG, bad)


def test_parse_topic():
    assert mqtt.parse_topic("telemon/v1/kommune-0999/gw-test/obs") == mqtt.Topic(
        ORG, GW, "obs")
    assert mqtt.parse_topic("telemon/v1/kommune-0999/alarms") == mqtt.Topic(ORG, None, "alarms")
    for other in ("telemon/v2/o/g/obs", "telemon/v1/o/g/other", "x/v1/o/g/obs",
                  "telemon/v1/o/g/obs/extra", "telemon/v1/o g/g/obs"):
        assert mqtt.parse_topic(other) is None


def test_backoff_has_full_jitter_and_a_cap():
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(5))
    ceilings, delays = [], []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next())
    assert ceilings == [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == 10  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.attempts == 0 and backoff.ceiling() == 0.5
    many = [Backoff(1, 60, random.Random(s)) for s in range(200)]
    firsts = [b.next() for b in many]
    assert min(firsts) < 0.1 and max(firsts) > 0.9  # spread over [0, base]
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_status_payload():
    status = json.loads(mqtt.status_payload("outbox-full", GW, outbox=12))
    assert status["v"] == 1 and status["state"] == "outbox-full" and status["outbox"] == 12
    assert status["gateway"] == GW and datetime.fromisoformat(status["at"]).tzinfo


def test_client_factory_credentials_and_session(monkeypatch):
    monkeypatch.setenv("TELEMON_TEST_PW", "s3cret")
    config = broker_config("mqtts://broker.example:8883", username="gw-test",
                           password=SecretRef.parse("env:TELEMON_TEST_PW"))
    client = mqtt.make_client(config, GW, will=("t/status", b"offline"))
    assert (client.username, client.password) == ("gw-test", "s3cret")
    arguments = mqtt.connect_arguments(config)
    assert (arguments["host"], arguments["port"], arguments["clean_start"]) == (
        "broker.example", 8883, False)
    assert arguments["properties"].SessionExpiryInterval == mqtt.SESSION_EXPIRY
    assert "clean_start" not in mqtt.connect_arguments(config, mqtt.MQTTv311)
    monkeypatch.delenv("TELEMON_TEST_PW")
    with pytest.raises(LookupError, match="TELEMON_TEST_PW"):
        mqtt.make_client(config, GW)


# --- against Mosquitto ------------------------------------------------------------------------

@pytest.fixture
def subscriber(mosquitto):
    from mosquitto import Subscriber

    sub = Subscriber(mosquitto.port, [f"telemon/v1/{ORG}/#"]).start()
    yield sub
    sub.stop()


def test_publish_and_receive_in_order(tmp_path, mosquitto, subscriber):
    records = [obs(i, device=f"dev-{i % 3}") for i in range(250)]
    with make_gateway(tmp_path, mosquitto.url) as gateway:
        assert gateway.submit(records).accepted
        gateway.start()
        assert gateway.wait_drained(10)
        assert subscriber.wait_for(lambda ms: len(ids_in(ms)) >= 250, 10)
        assert gateway.delivered == 250
    # the "offline" of a graceful stop is published as the gateway stops: wait for it to land
    assert subscriber.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 5)
    received = ids_in(subscriber.messages)
    assert received == [r.id for r in records]  # every one, once, in order
    batches = [len(wire.decode_message(m.payload).records) for m in subscriber.messages
               if m.topic.endswith("/obs")]
    assert max(batches) <= 100 and len(batches) >= 3
    assert "online" in states(subscriber.messages)
    assert states(subscriber.messages)[-1] == "offline"  # graceful stop


def test_broker_down_outbox_grows_then_drains(tmp_path, mosquitto, subscriber):
    with make_gateway(tmp_path, mosquitto.url) as gateway:
        gateway.start()
        assert gateway.wait_connected(5)
        mosquitto.kill()
        for i in range(0, 300, 30):
            gateway.submit([obs(j) for j in range(i, i + 30)])
            time.sleep(0.05)
        assert not gateway.connected
        assert gateway.outbox.stats().depth == 300  # nothing deleted without an ack
        time.sleep(0.5)
        assert gateway.outbox.stats().depth == 300
        mosquitto.start()
        assert gateway.wait_drained(15)
        assert subscriber.wait_for(lambda ms: len(set(ids_in(ms))) == 300, 15)
    assert set(ids_in(subscriber.messages)) == {f"obs-dev-1-{i}" for i in range(300)}


def test_a_refused_publish_keeps_its_records(tmp_path, mosquitto, subscriber):
    """A PUBACK with an error code (here 0x87, not authorised) is not a delivery."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic read telemon/#\ntopic write telemon/v1/{ORG}/{GW}/status\n")
    mosquitto.stop()
    mosquitto.configure(f"acl_file {acl}")
    mosquitto.start()
    assert subscriber.connected.wait(5)
    with make_gateway(tmp_path, mosquitto.url, backoff=Backoff(0.2, 0.2)) as gateway:
        gateway.submit([obs(i) for i in range(20)])
        gateway.start()
        assert gateway.wait_connected(5)
        time.sleep(1.0)  # several refusals and retries
        assert gateway.outbox.stats().depth == 20
        assert ids_in(subscriber.messages) == []
        mosquitto.stop()
        mosquitto.configure()  # no ACL (with one, Mosquitto 2.0 does not queue messages for a
        mosquitto.start()      # restored session until its client is back: a broker quirk)
        assert gateway.wait_drained(10)
    assert subscriber.wait_for(lambda ms: len(set(ids_in(ms))) == 20, 10)


def test_full_outbox_is_announced_on_the_status_topic(tmp_path, mosquitto, subscriber):
    with make_gateway(tmp_path, mosquitto.url, max_megabytes=0.25) as gateway:
        gateway.start()
        assert gateway.wait_connected(5)
        mosquitto.kill()
        refused, i = 0, 0
        while not refused:
            refused = len(gateway.submit([obs(j, raw=os.urandom(1500))
                                          for j in range(i, i + 20)]).refused)
            i += 20
        assert gateway.outbox.is_full()
        mosquitto.start()
        assert gateway.wait_drained(15)
        assert subscriber.wait_for(lambda ms: states(ms)[-1:] == ["online"]
                                   and "outbox-full" in states(ms), 10)
    seen = states(subscriber.messages)
    assert seen.index("outbox-full") < len(seen) - 1 - seen[::-1].index("online")
    full = next(json.loads(m.payload) for m in subscriber.messages
                if m.topic.endswith("/status") and b"outbox-full" in m.payload)
    assert full["refused"] >= refused and full["outbox"] > 0


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True,  # noqa: E731
                                       capture_output=True)
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=telemon test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_mqtts_verifies_the_broker_against_the_system_cas(tmp_path, monkeypatch):
    """mqtts:// uses TLS with the system's CAs: a broker whose CA is not trusted is never
    given a reading; once the CA is trusted (SSL_CERT_FILE points OpenSSL's default CA
    file at it) the outbox drains."""
    from mosquitto import Mosquitto

    ca, cert, key = make_certificates(tmp_path)
    broker = Mosquitto(tmp_path / "broker", extra=f"certfile {cert}\nkeyfile {key}").start()
    try:
        url = f"mqtts://localhost:{broker.port}"
        with make_gateway(tmp_path, url) as gateway:
            gateway.submit([obs(i) for i in range(10)])
            gateway.start()
            assert not gateway.wait_connected(1.5)  # certificate not trusted
            assert gateway.outbox.stats().depth == 10
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with make_gateway(tmp_path, url) as gateway:
            gateway.start()
            assert gateway.wait_connected(5)
            assert gateway.wait_drained(5)
            assert gateway.delivered == 10
    finally:
        broker.stop()


def write_config(folder: Path, url: str, devices: int = 1) -> Path:
    lines = [
        'role = "edge"', f'organisation = "{ORG}"', f'gateway = "{GW}"',
        "[broker]", f'url = "{url}"', "[storage]", f'path = "{folder / "storage"}"',
        "[outbox]", "max_megabytes = 64",
    ]
    for d in range(devices):
        lines += ["[[devices]]", 'driver = "ble_blood_pressure"', f'patient = "pt-{d}"',
                  f'device = "bpm-{d}"']
    path = folder / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_edge_cli(config: Path, log: Path) -> subprocess.Popen:
    code = "import sys; from telemon.edge import edge; edge(sys.argv[1:])"
    with log.open("ab") as stderr:
        return subprocess.Popen([sys.executable, "-c", code, "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=stderr)


def test_status_is_retained_and_the_last_will_says_offline(tmp_path, mosquitto):
    from mosquitto import Subscriber

    config = write_config(tmp_path, mosquitto.url)
    topic = mqtt.status_topic(ORG, GW)

    def retained_state() -> str | None:
        late = Subscriber(mosquitto.port, [topic], client_id=f"late-{time.monotonic_ns()}",
                          clean=True).start()
        try:
            late.wait_for(lambda ms: ms, 3)
            return next((json.loads(m.payload)["state"] for m in late.messages if m.retain),
                        None)
        finally:
            late.stop()

    watcher = Subscriber(mosquitto.port, [topic], client_id="watcher").start()
    gateway = run_edge_cli(config, tmp_path / "gateway.log")
    try:
        assert watcher.wait_for(lambda ms: "online" in states(ms), 15), \
            (tmp_path / "gateway.log").read_text()
        assert retained_state() == "online"
        gateway.send_signal(signal.SIGKILL)  # no goodbye: the broker sends the will
        gateway.wait(5)
        assert watcher.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 10)
        assert retained_state() == "offline"

        gateway = run_edge_cli(config, tmp_path / "gateway.log")
        assert watcher.wait_for(lambda ms: states(ms)[-1:] == ["online"], 15)
        gateway.send_signal(signal.SIGTERM)  # graceful: says offline itself, exits 0
        assert gateway.wait(10) == 0
        assert watcher.wait_for(lambda ms: states(ms)[-1:] == ["offline"], 10)
        assert retained_state() == "offline"
    finally:
        gateway.kill()
        watcher.stop()


def test_ingest_quarantines_a_bad_frame(tmp_path):
    driver = plugin_manager.get()[1].drivers["ble_blood_pressure"]
    ctx = ParseContext(patient="pt-0", device="bpm-0", gateway=GW, received=T0,
                       source="2a35")
    with make_gateway(tmp_path, "mqtt://127.0.0.1:1") as gateway:
        assert gateway.ingest(driver, bp_frame(0), ctx).stored
        assert gateway.ingest(driver, b"\x1e\x01", ctx) is None
        [kept] = gateway.outbox.quarantined()
        assert kept.raw == b"\x1e\x01" and kept.source == "driver:ble_blood_pressure:bpm-0:2a35"
        assert "frame ends before" in kept.reason
        assert gateway.outbox.stats().depth == 2  # the good frame: BP and pulse


# --- telemon edge status ----------------------------------------------------------------------

def test_edge_status_command(tmp_path):
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883", devices=2)
    runner = CliRunner()
    result = runner.invoke(edge, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "no outbox yet" in result.output and "bpm-1" in result.output

    driver = plugin_manager.get()[1].drivers["ble_blood_pressure"]
    ctx = ParseContext(patient="pt-0", device="bpm-0", gateway=GW, received=T0)
    with Outbox(outbox_path(tmp_path / "storage")) as box:
        box.put(driver.parse(bp_frame(0), ctx))
        box.delete([box.peek(1)[0].seq])
        box.quarantine(source="driver:x", reason="bad", raw=b"\x00")
    result = runner.invoke(edge, ["--config", str(config), "status"])  # group's --config
    assert result.exit_code == 0, result.output
    out = result.output
    assert "state          ok" in out
    assert "waiting        1 reading(s)" in out
    assert "delivered      1 reading(s), last delivery 20" in out
    assert "quarantine     1 frame(s)" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("bpm-0"))
    bpm0 = lines[at] + "\n" + lines[at + 1]
    assert "pt-0" in lines[at]
    assert "Blood pressure 110/70/85 mm[Hg] at 2026-03-01 08:00 +0100, stored" in bpm0
    assert "Pulse rate (BP monitor) 60 /min at 2026-03-01 08:00 +0100, stored" in bpm0
    bpm1 = next(line for line in lines if line.strip().startswith("bpm-1"))
    assert "none yet" in bpm1

    result = runner.invoke(edge, ["status", "--config", str(config), "--json"])
    status = json.loads(result.output)
    assert status["outbox"]["depth"] == 1 and status["outbox"]["state"] == "ok"
    assert [r["value"] for r in status["devices"][0]["last_readings"]] == [
        "110/70/85 mm[Hg]", "60 /min"]
    assert status["devices"][1]["last_readings"] == []


def test_edge_status_exits_1_when_the_outbox_is_full(tmp_path):
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    config.write_text(config.read_text().replace("max_megabytes = 64", "max_megabytes = 0.25"))
    with Outbox(outbox_path(tmp_path / "storage"), max_megabytes=0.25) as box:
        i = 0
        while box.put([obs(j, raw=os.urandom(2000)) for j in range(i, i + 10)]).accepted:
            i += 10
    result = CliRunner().invoke(edge, ["status", "--config", str(config)])
    assert result.exit_code == 1
    assert "OUTBOX FULL since" in result.output and "refused" in result.output


def test_edge_command_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(edge, [])
    assert result.exit_code == 2 and "--config" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "edge"\norganisation = "o"\n')
    result = runner.invoke(edge, ["status", "--config", str(bad)])
    assert result.exit_code == 2 and "broker: is required but missing" in result.output
    result = runner.invoke(edge, ["--config", str(bad)])
    assert result.exit_code == 2 and "gateway: is required but missing" in result.output
    assert "Usage" in runner.invoke(edge, ["--help"]).output
    good = write_config(tmp_path, "mqtt://127.0.0.1:1")
    good.write_text(good.read_text().replace(
        "[storage]", 'username = "gw"\npassword = "env:TELEMON_TEST_NO_SUCH_VAR"\n[storage]'))
    result = runner.invoke(edge, ["--config", str(good)])
    assert result.exit_code == 2
    assert "broker.password (env:TELEMON_TEST_NO_SUCH_VAR): environment variable" in \
        result.output


# --- the kill test ----------------------------------------------------------------------------

DEVICES = 4
FRAMES = 6000  # two observations each (blood pressure and pulse): 12,000 observations


def bp_frame(i: int) -> bytes:
    """A Blood Pressure Measurement with time stamp and pulse (flags 0x06), unique per i."""
    at = T0 + timedelta(minutes=i)
    return (bytes([0x06]) + (110 + i % 50).to_bytes(2, "little")
            + (70 + i % 25).to_bytes(2, "little") + (85 + i % 20).to_bytes(2, "little")
            + at.year.to_bytes(2, "little") + bytes([at.month, at.day, at.hour, at.minute,
                                                     at.second])
            + (60 + i % 40).to_bytes(2, "little"))


def device_frames(i: int) -> tuple[bytes, ParseContext]:
    d = i % DEVICES
    return bp_frame(i), ParseContext(patient=f"pt-{d}", device=f"bpm-{d}", gateway=GW,
                                     received=T0, device_tz=UTC, source="2a35")


def produced(frames: int) -> list[Observation]:
    driver = plugin_manager.get()[1].drivers["ble_blood_pressure"]
    return [o for i in range(frames) for o in driver.parse(*device_frames(i))]


def feed(config_path: str, frames: int, progress: Path, batch: int, pause: float) -> int:
    """The kill test's gateway process: simulated devices -> driver -> outbox -> broker.

    Like a meter that keeps its memory until the gateway has taken the readings, it resumes
    from the last batch `submit` acknowledged (written to `progress` after each)."""
    import logging

    from telemon.config import load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    registry = plugin_manager.get()[1]
    driver = registry.drivers["ble_blood_pressure"]
    gateway = Gateway.from_config(load(config_path, registry),
                                  backoff=Backoff(0.05, 0.5), status_every=5)
    gateway.start()
    done = int(progress.read_text()) if progress.exists() else 0
    while done < frames:
        upto = min(frames, done + batch)
        result = gateway.submit([o for i in range(done, upto)
                                 for o in driver.parse(*device_frames(i))])
        if result.accepted:
            done = upto
            progress.with_suffix(".tmp").write_text(str(done))
            progress.with_suffix(".tmp").replace(progress)
        time.sleep(pause)
    drained = gateway.wait_drained(120)
    gateway.close()
    return 0 if drained else 3


class Collector:
    """The central's side of the kill test: every id received, in order of arrival."""

    def __init__(self, port: int) -> None:
        from mosquitto import Subscriber

        self.ids: list[str] = []
        self.errors: list[str] = []
        self.messages = 0
        self.lock = threading.Lock()
        self.subscriber = Subscriber(port, [mqtt.obs_topic(ORG, GW)],
                                     client_id="kill-test-central", on_message=self.take,
                                     keep=False)

    def take(self, message) -> None:
        decoded = wire.decode_message(message.payload)
        with self.lock:
            self.messages += 1
            self.ids += [r.id for r in decoded.records]
            self.errors += [str(e) for e in decoded.errors]


@pytest.mark.slow
def test_kill_gateway_and_broker_at_random_moments(tmp_path, mosquitto):
    """12,000 observations from 4 simulated BP monitors; the gateway process and the broker
    are SIGKILLed at random moments (fixed seed) while it runs, the broker sometimes after
    hanging; every observation arrives, and once de-duplicated by id none is missing or
    extra; each device's order is kept.

    Mosquitto acknowledges a QoS 1 PUBLISH before it saves its state, so a broker killed in
    the instant after a PUBACK could lose a message not yet handed to the (connected)
    subscriber; `autosave_on_changes` (tests/mosquitto.py) shrinks that to one event-loop
    pass. The edge's own guarantee (delete only after PUBACK) is what this test checks."""
    rng = random.Random(20260301)
    expected = produced(FRAMES)
    expected_ids = [o.id for o in expected]
    assert len(set(expected_ids)) == len(expected_ids) == 2 * FRAMES

    collector = Collector(mosquitto.port)
    collector.subscriber.start()
    config = write_config(tmp_path, mosquitto.url, devices=DEVICES)
    progress = tmp_path / "progress"
    log = tmp_path / "gateway.log"

    def start_gateway() -> subprocess.Popen:
        with log.open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, str(HERE), "feed", str(config), str(FRAMES), str(progress),
                 "3", "0.004"], stdout=subprocess.DEVNULL, stderr=stderr)

    def made() -> int:
        return int(progress.read_text()) if progress.exists() else 0

    started = time.monotonic()
    gateway = start_gateway()
    kills = Counter()
    # "broker-hang": the broker stops reading (SIGSTOP) while the gateway keeps publishing
    # into the connection, then is killed: what it had not processed is lost (paho resends
    # it after reconnecting). "both-hang": the same, but the gateway is killed too before
    # the broker, so paho's memory is gone as well and only the outbox can resend: it must
    # still hold every record whose PUBACK had not arrived.
    actions = ["gateway"] * 4 + ["broker"] * 3 + ["broker-hang"] * 2 + ["both-hang"] * 3
    rng.shuffle(actions)
    try:
        for action in actions:
            time.sleep(rng.uniform(0.2, 1.2))
            if made() >= FRAMES:
                break
            if action in ("broker-hang", "both-hang"):
                mosquitto.pause()
                time.sleep(rng.uniform(0.2, 0.8))
            if action in ("gateway", "both-hang"):
                gateway.send_signal(signal.SIGKILL)
                gateway.wait(10)
            if action != "gateway":
                mosquitto.kill()
                time.sleep(rng.uniform(0, 0.5))
                mosquitto.start()
            if action in ("gateway", "both-hang"):
                time.sleep(rng.uniform(0, 0.3))
                gateway = start_gateway()
            kills[action] += 1
        code = gateway.wait(60)  # it ends once everything is made and acknowledged
        assert code == 0, f"gateway exited {code}:\n{log.read_text()[-3000:]}"
        complete = collector.subscriber.wait_for(
            lambda _: len(set(collector.ids)) >= len(expected_ids), 30)
    finally:
        gateway.kill()
        collector.subscriber.stop()
    duration = time.monotonic() - started

    with collector.lock:
        received = list(collector.ids)
    unique = set(received)
    missing = set(expected_ids) - unique
    report = {"observations": len(expected_ids), "kills": dict(kills),
              "messages": collector.messages, "received": len(received),
              "duplicates": len(received) - len(unique), "missing": len(missing),
              "seconds": round(duration, 1), "broker_starts": mosquitto.starts}
    print("\nkill test:", json.dumps(report))
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert not collector.errors
    assert complete and not missing, report
    assert unique == set(expected_ids), report
    assert sum(kills.values()) >= 10, f"too few kills landed during the run: {report}"
    first: dict[str, int] = {}
    for position, id_ in enumerate(received):
        first.setdefault(id_, position)
    for d in range(DEVICES):
        mine = [o.id for o in expected if o.device == f"bpm-{d}"]
        assert sorted(mine, key=first.__getitem__) == mine, f"order of bpm-{d} not kept"


if __name__ == "__main__" and sys.argv[1:2] == ["feed"]:
    _, _, config_arg, frames_arg, progress_arg, batch_arg, pause_arg = sys.argv
    sys.exit(feed(config_arg, int(frames_arg), Path(progress_arg), int(batch_arg),
                  float(pause_arg)))
