"""The central against a real Mosquitto: simulated gateways and an external client
(`mosquitto_pub`) publish; the database and the alarm topic are checked. Also: what is
refused and why, re-delivery, `telemon central` as a process, and the kill test with two
ingest processes sharing the subscription.

Run as a script (`python tests/test_central.py feed ...`) this file is the kill test's
gateway process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import write_central_toml

from telemon import config, mqtt, plugin_manager, store, wire
from telemon.backoff import Backoff
from telemon.central import Central, Message
from telemon.codes import KNOWN
from telemon.config import BrokerConfig
from telemon.edge import Gateway
from telemon.models import Alarm, Answer, Enrolment, Observation, QuestionnaireResponse
from telemon.outbox import Outbox

pytest_plugins = ["mosquitto"]

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
HERE = Path(__file__).resolve()
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def write_config(folder: Path, url: str, extra: str = "") -> Path:
    return write_central_toml(folder, f"[modules.copd]\nenabled = true\n{extra}", broker=url)


def load(path: Path):
    return config.load(path, plugin_manager.get()[1])


def enrol(db, patient: str, gateways: tuple[str, ...]) -> None:
    with store.transaction(db):
        db["patients"].insert({"id": patient, "organisation": ORG, "display_name": "Test",
                               "timezone": "Europe/Copenhagen",
                               "created": store.utc_text(T0 - timedelta(days=30))})
        store.store_record(db, Enrolment(patient=patient, organisation=ORG, modules=("copd",),
                                         gateways=gateways, enrolled=T0 - timedelta(days=30)))
        store.audit(db, actor="test", action="patient.add", patient=patient)


def reading(i: int, patient: str, gateway: str, value: str = "95",
            key: str = "spo2") -> Observation:
    known = KNOWN[key]
    return Observation(id=f"{gateway}-{patient}-{key}-{i}", patient=patient, device="dev-1",
                       gateway=gateway, code=known.code, unit=known.unit, value=Decimal(value),
                       effective=T0 + timedelta(minutes=i), raw=bytes([i % 256]))


def gateway(tmp_path: Path, url: str, name: str) -> Gateway:
    outbox = Outbox(tmp_path / f"{name}.outbox", max_megabytes=64)
    return Gateway(organisation=ORG, gateway=name, outbox=outbox,
                   broker=BrokerConfig(url=url, username=None, password=None, client_id=None),
                   backoff=Backoff(0.05, 0.3, random.Random(1)))


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def count(db, table: str) -> int:
    return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.fixture
def central(tmp_path, mosquitto):
    cfg = load(write_config(tmp_path, mosquitto.url))
    db = store.open_database(store.central_database_path(cfg.storage.path))
    enrol(db, "p-0001", ("gw-1",))
    enrol(db, "p-0002", ("gw-2",))
    running = Central(cfg, plugin_manager.get()[1].modules, client_id="central-test-1",
                      backoff=Backoff(0.05, 0.3, random.Random(2)))
    running.start()
    assert running.wait_connected(10)
    yield running, db
    running.close()
    db.close()


def test_end_to_end_gateways_and_an_external_client(tmp_path, mosquitto, central):
    from mosquitto import Subscriber

    _running, db = central
    nurse = Subscriber(mosquitto.port, [mqtt.alarms_topic(ORG)], client_id="nurse").start()
    homes = [gateway(tmp_path, mosquitto.url, "gw-1"), gateway(tmp_path, mosquitto.url, "gw-2")]
    for home in homes:
        home.start()
    homes[0].submit([reading(i, "p-0001", "gw-1") for i in range(50)])
    homes[1].submit([reading(i, "p-0002", "gw-2", value="84" if i == 7 else "96")
                     for i in range(50)])

    # an external client, not our code: one hand-written valid reading, one broken payload
    topic = mqtt.obs_topic(ORG, "gw-1")
    handwritten = (
        '{"type":"observation","v":1,"id":"hand-1","patient":"p-0001","device":"dev-9",'
        '"gateway":"gw-1","code":{"system":"urn:iso:std:iso:11073:10101","code":"150456",'
        '"display":"SpO2"},"unit":"%","value":97.0,"effective":"2026-03-02T09:30:00+01:00"}')
    broken = '{"type":"observation","v":1,"id":"hand-2","patient":'
    for payload in (handwritten, broken):
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5",
                        "-q", "1", "-t", topic, "-m", payload], check=True, timeout=10)

    assert wait_until(lambda: count(db, "observations") == 101 and count(db, "quarantine") == 1)
    for home in homes:
        assert home.wait_drained(10)
        home.close()

    stored = store.get_observation(db, "hand-1")
    assert stored.value == Decimal("97.0")  # the sender's precision kept
    assert stored.effective == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)  # device time, as UTC
    assert stored.received is not None and stored.received > stored.effective
    (source, reason, payload), = db.execute("SELECT source, reason, payload FROM quarantine")
    assert (source, payload) == (f"mqtt:{topic}", broken.encode())
    assert reason.startswith("invalid wire form: Input data was truncated")
    assert count(db, "evaluations") == 101 * 1  # SpO2 checked by the COPD module, once each

    # the one red reading raised one alarm, published on the organisation's alarm topic;
    # so were the "missing" alarms of the clock's first pass (no pulse by the last deadline)
    def published():
        return {(a.patient, a.rule): a for a in map(wire.decode, (m.payload for m in
                                                                 nurse.messages))}
    assert nurse.wait_for(lambda _: ("p-0002", "limits.spo2") in published())
    assert set(published()) <= {("p-0002", "limits.spo2"), ("p-0001", "missing"),
                                ("p-0002", "missing")}  # the first missing may precede us
    assert sorted(db.execute("SELECT patient FROM alarms WHERE rule = 'missing'")) == [
        ("p-0001",), ("p-0002",)]
    red = published()[("p-0002", "limits.spo2")]
    assert isinstance(red, Alarm) and red.severity == "red"
    assert red.observations == ("gw-2-p-0002-spo2-7",)
    assert red.message == "SpO2 84 % below the red limit 88 % (module limits)"
    assert wait_until(lambda: count(db, "alarm_outbox") == 0, 5)  # PUBACK came
    nurse.stop()


def test_what_a_gateway_may_not_send_is_quarantined_with_the_reason(tmp_path, mosquitto,
                                                                      central):
    _running, db = central
    home = gateway(tmp_path, mosquitto.url, "gw-1")
    home.start()
    alarm = Alarm(id="a-1", patient="p-0001", module="copd", rule="x", severity="red",
                  raised=T0, message="forged")
    home.submit([
        reading(1, "p-0001", "gw-1"),
        reading(2, "p-0002", "gw-1"),  # enrolled, but bound to gw-2
        reading(3, "p-0003", "gw-1"),  # not enrolled here at all
        reading(4, "p-0001", "gw-2"),  # names another gateway than its topic
        alarm,                          # gateways do not raise alarms
        QuestionnaireResponse(id="qr-1", patient="p-0001", gateway="gw-1",
                              questionnaire="copd-daily", version="1", authored=T0,
                              answers=(Answer("more_breathless", False),)),
    ])
    assert home.wait_drained(10)
    home.close()
    assert wait_until(lambda: count(db, "quarantine") == 4)
    reasons = [r[0] for r in db.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons == [
        "patient p-0002 is not bound to gateway gw-1 in organisation kommune-0999",
        "patient p-0003 is not enrolled in organisation kommune-0999",
        "record gw-2-p-0001-spo2-4 names gateway gw-2 but came on the topic of gateway gw-1",
        "a gateway may send observations and questionnaire responses, not Alarm records",
    ]
    kept = wire.decode(db.execute("SELECT payload FROM quarantine WHERE id = 2").fetchone()[0])
    assert kept == reading(3, "p-0003", "gw-1")  # the refused record itself, for inspection
    assert [r[0] for r in db.execute("SELECT id FROM observations")] == ["gw-1-p-0001-spo2-1"]
    assert count(db, "questionnaire_responses") == 1
    assert {r[0] for r in db.execute("SELECT rule FROM alarms")} <= {"missing"}  # not forged


def test_a_message_that_breaks_the_decoder_is_quarantined_alone(tmp_path, mosquitto, central,
                                                                monkeypatch):
    running, db = central
    real = wire.decode_message

    def decode_message(payload: bytes):
        if b"gw-1-p-0001-spo2-2" in payload:
            raise RuntimeError("decoder bug")
        return real(payload)

    monkeypatch.setattr(wire, "decode_message", decode_message)
    topic = mqtt.obs_topic(ORG, "gw-1")
    for i in range(1, 4):
        subprocess.run([MOSQUITTO_PUB, "-p", str(mosquitto.port), "-V", "5", "-q", "1",
                        "-t", topic, "-m", wire.encode(reading(i, "p-0001", "gw-1")).decode()],
                       check=True, timeout=10)
    assert wait_until(lambda: running.counters.messages == 3)
    assert [r[0] for r in db.execute("SELECT id FROM observations ORDER BY id")] == [
        "gw-1-p-0001-spo2-1", "gw-1-p-0001-spo2-3"]
    (reason, payload), = db.execute("SELECT reason, payload FROM quarantine").fetchall()
    assert reason == "could not be processed: RuntimeError('decoder bug')"
    assert real(payload).records == [reading(2, "p-0001", "gw-1")]  # the bytes as they came


def test_a_group_that_fails_to_commit_is_not_acknowledged_and_its_readings_forgotten(
        tmp_path, monkeypatch):
    """The engine keeps each patient's recent series between groups; a group rolled back
    must not leave its readings there (they come again, from the broker)."""
    sys.path.insert(0, str(HERE.parent.parent))
    from fuzz.targets import Ingest  # a central's ingest on a real file, without a broker

    ingest = Ingest.open(tmp_path)
    central, acked = ingest.central, []
    central._client = type("Client", (), {"ack": lambda self, mid, qos: acked.append(mid)})()
    topic = mqtt.obs_topic(ORG, "gw-1")
    central._handle([Message(topic, wire.encode(reading(1, "p-0001", "gw-1")), 1, 1)])
    assert acked == [1] and central.engine.series._kept  # the series is kept

    real = store.store_evaluations

    def disk_full(*args, **kwargs):  # after the group's series were read and kept
        real(*args, **kwargs)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "store_evaluations", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        central._handle([Message(topic, wire.encode(reading(2, "p-0001", "gw-1")), 2, 1)])
    assert acked == [1] and not central.engine.series._kept
    monkeypatch.setattr(store, "store_evaluations", real)
    central._handle([Message(topic, wire.encode(reading(2, "p-0001", "gw-1")), 3, 1)])
    assert acked == [1, 3]
    assert [r[0] for r in ingest.db.execute("SELECT id FROM observations ORDER BY id")] == [
        "gw-1-p-0001-spo2-1", "gw-1-p-0001-spo2-2"]
    ingest.close()


def test_a_message_whose_records_break_the_group_insert_is_quarantined_alone(
        tmp_path, monkeypatch):
    """A group's readings are stored with one statement; if that fails, the group is stored
    again message by message, so only the message at fault is quarantined."""
    from fuzz.targets import Ingest  # a central's ingest on a real file, without a broker

    ingest = Ingest.open(tmp_path)
    central, acked = ingest.central, []
    central._client = type("Client", (), {"ack": lambda self, mid, qos: acked.append(mid)})()
    real = store._observation_row

    def observation_row(obs, *args):
        if obs.id == "gw-1-p-0001-spo2-2":
            raise RuntimeError("row bug")
        return real(obs, *args)

    monkeypatch.setattr(store, "_observation_row", observation_row)
    topic = mqtt.obs_topic(ORG, "gw-1")
    central._handle([Message(topic, wire.encode_batch([reading(i, "p-0001", "gw-1")]), i, 1)
                     for i in (1, 2, 3)])
    assert acked == [1, 2, 3]
    assert [r[0] for r in ingest.db.execute("SELECT id FROM observations ORDER BY id")] == [
        "gw-1-p-0001-spo2-1", "gw-1-p-0001-spo2-3"]
    assert count(ingest.db, "evaluations") == 2  # the stored ones, evaluated once
    (reason, payload), = ingest.db.execute("SELECT reason, payload FROM quarantine").fetchall()
    assert reason == "could not be processed: RuntimeError('row bug')"
    assert wire.decode_message(payload).records == [reading(2, "p-0001", "gw-1")]
    assert (central.counters.stored, central.counters.duplicates) == (2, 0)
    ingest.close()


def test_a_reading_delivered_again_is_stored_and_evaluated_once(tmp_path, mosquitto, central):
    running, db = central
    topic = mqtt.obs_topic(ORG, "gw-1")
    payload = wire.encode_batch([reading(i, "p-0001", "gw-1", value="85") for i in range(3)])
    for _ in range(3):
        subprocess.run([MOSQUITTO_PUB, "-p", str(mosquitto.port), "-V", "5", "-q", "1",
                        "-t", topic, "-m", payload.decode()], check=True, timeout=10)
    assert wait_until(lambda: running.counters.messages == 3)
    assert count(db, "observations") == 3
    assert count(db, "evaluations") == 3
    (repeats,), = db.execute("SELECT repeats FROM alarms WHERE rule != 'missing'").fetchall()
    assert repeats == 2  # one alarm; its 2 later readings folded in, none of the re-sends
    assert running.counters.duplicates == 6


def test_readings_sent_while_the_central_is_down_arrive_when_it_is_back(tmp_path, mosquitto):
    cfg = load(write_config(tmp_path, mosquitto.url))
    db = store.open_database(store.central_database_path(cfg.storage.path))
    enrol(db, "p-0001", ("gw-1",))
    modules = plugin_manager.get()[1].modules
    first = Central(cfg, modules, client_id="central-a")
    first.start()
    assert first.wait_connected(10)
    first.close()  # its persistent session keeps the shared subscription
    home = gateway(tmp_path, mosquitto.url, "gw-1")
    home.start()
    home.submit([reading(i, "p-0001", "gw-1") for i in range(20)])
    assert home.wait_drained(10)  # the broker has them; nobody has stored them yet
    home.close()
    assert count(db, "observations") == 0
    with Central(cfg, modules, client_id="central-a") as second:
        second.start()
        assert wait_until(lambda: count(db, "observations") == 20)
    db.close()


def test_the_central_runs_the_enabled_exporters(tmp_path, mosquitto):
    exported = tmp_path / "csv"
    cfg = load(write_config(tmp_path, mosquitto.url,
                            f'[exporters.csv]\nenabled = true\ndirectory = "{exported}"\n'))
    db = store.open_database(store.central_database_path(cfg.storage.path))
    enrol(db, "p-0001", ("gw-1",))
    registry = plugin_manager.get()[1]
    with Central(cfg, registry.modules, client_id="central-export", registry=registry,
                 export_every=0.2) as running:
        running.start()
        assert running.wait_connected(10)
        home = gateway(tmp_path, mosquitto.url, "gw-1")
        home.start()
        home.submit([reading(i, "p-0001", "gw-1") for i in range(5)])
        csv_file = exported / "p-0001" / "spo2.csv"
        assert wait_until(lambda: csv_file.exists()
                          and len(csv_file.read_text().splitlines()) == 6)
        home.close()
    (position,), = db.execute("SELECT position FROM export_cursors WHERE exporter = 'csv' "
                              "AND feed = 'observations'")
    assert position == db.execute("SELECT MAX(rowid) FROM observations").fetchone()[0]
    db.close()


def test_two_centrals_share_the_gateways_on_the_embedded_broker(tmp_path):
    """The demo's path: the pip-installed broker, a shared subscription split between two
    ingest processes, acknowledgements only after commit."""
    from telemon.broker import EmbeddedBroker

    with EmbeddedBroker(data=tmp_path / "broker") as broker:
        cfg = load(write_config(tmp_path, broker.url))
        db = store.open_database(store.central_database_path(cfg.storage.path))
        for g in range(4):
            enrol(db, f"p-{g}", (f"gw-{g}",))
        modules = plugin_manager.get()[1].modules
        centrals = [Central(cfg, modules, client_id=f"central-{n}") for n in range(2)]
        for running in centrals:
            running.start()
            assert running.wait_connected(10)
        homes = [gateway(tmp_path, broker.url, f"gw-{g}") for g in range(4)]
        for g, home in enumerate(homes):
            home.start()
            home.submit([reading(i, f"p-{g}", f"gw-{g}") for i in range(100)])
        assert wait_until(lambda: count(db, "observations") == 400)
        for home in homes:
            home.close()
        shares = [running.counters.messages for running in centrals]
        for running in centrals:
            running.close()
    assert all(shares) and sum(c.counters.stored for c in centrals) == 400, shares
    db.close()


def test_the_clock_runs_while_the_broker_is_down(tmp_path):
    """Missing measurements are raised (for the dashboard, which reads the database) even
    when the central cannot reach the broker; their events wait in the alarm outbox."""
    from mosquitto import free_port

    cfg = load(write_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}"))
    db = store.open_database(store.central_database_path(cfg.storage.path))
    enrol(db, "p-0001", ("gw-1",))
    with Central(cfg, plugin_manager.get()[1].modules, client_id="central-offline",
                 backoff=Backoff(0.05, 0.2, random.Random(3))) as running:
        running.start()
        assert wait_until(lambda: count(db, "alarms") == 1, 10)
        assert not running.wait_connected(0.1)
    assert db.execute("SELECT rule, severity FROM alarms").fetchall() == [("missing", "missing")]
    assert count(db, "alarm_outbox") == 1  # published once a broker is there
    db.close()


def test_central_command_runs_until_sigterm(tmp_path, mosquitto):
    cfg_path = write_config(tmp_path, mosquitto.url)
    db = store.open_database(store.central_database_path(load(cfg_path).storage.path))
    enrol(db, "p-0001", ("gw-1",))
    log = tmp_path / "central.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "telemon.cli", "central", "--config",
                                    str(cfg_path)], stderr=stderr)
    try:
        assert wait_until(lambda: "subscribed to" in log.read_text()), log.read_text()
        home = gateway(tmp_path, mosquitto.url, "gw-1")
        home.start()
        home.submit([reading(i, "p-0001", "gw-1") for i in range(10)])
        assert wait_until(lambda: count(db, "observations") == 10), log.read_text()
        home.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    text = log.read_text()
    assert "connected to 127.0.0.1" in text and "stopped" in text
    db.close()


def test_central_command_refuses_an_edge_config(tmp_path):
    edge_config = tmp_path / "edge.toml"
    edge_config.write_text('role = "edge"\norganisation = "o"\ngateway = "g"\n'
                           '[broker]\nurl = "mqtt://127.0.0.1"\n[storage]\npath = "/tmp/x"\n')
    done = subprocess.run([sys.executable, "-m", "telemon.cli", "central", "--config",
                           str(edge_config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert 'role is "edge", not "central"' in done.stderr


# --- the kill test -----------------------------------------------------------------------------

KILL_GATEWAYS = 4
KILL_PER_GATEWAY = 5000  # 20,000 observations


def kill_reading(i: int, g: int) -> Observation:
    value = "86" if i % 997 == 0 else str(92 + i % 7)
    return reading(i, f"p-{g}", f"gw-{g}", value=value)


def feed(url: str, g: int, folder: Path, batch: int) -> int:
    """A gateway process of the kill test: submits its readings, then waits for the broker
    to take them all."""
    home = gateway(folder, url, f"gw-{g}")
    home.start()
    for start in range(0, KILL_PER_GATEWAY, batch):
        home.submit([kill_reading(i, g) for i in range(start, start + batch)])
        time.sleep(0.01)
    drained = home.wait_drained(300)
    home.close()
    return 0 if drained else 3


@pytest.mark.slow
def test_kill_two_ingest_processes_at_random_moments(tmp_path, mosquitto):
    """20,000 observations from 4 gateway processes; two `telemon central` processes share
    the subscription and are SIGKILLed at random moments (fixed seed) and restarted with
    their client ids; in the end every observation is stored exactly once and evaluated
    exactly once, and nothing was quarantined."""
    rng = random.Random(int(os.environ.get("TELEMON_KILL_SEED", "20261122")))
    cfg_path = write_config(tmp_path, mosquitto.url)
    db = store.open_database(store.central_database_path(load(cfg_path).storage.path))
    for g in range(KILL_GATEWAYS):
        enrol(db, f"p-{g}", (f"gw-{g}",))
    logs = tmp_path / "logs"
    logs.mkdir()

    def start_central(n: int) -> subprocess.Popen:
        with (logs / f"central-{n}.log").open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "telemon.cli", "central", "--config", str(cfg_path),
                 "--client-id", f"central-kill-{n}"], stderr=stderr)

    centrals = [start_central(0), start_central(1)]
    assert wait_until(lambda: all("subscribed to" in (logs / f"central-{n}.log").read_text()
                                  for n in range(2)))  # subscribed before the gateways start
    feeders = [subprocess.Popen([sys.executable, str(HERE), "feed", mosquitto.url, str(g),
                                 str(tmp_path), "50"], stderr=subprocess.DEVNULL)
               for g in range(KILL_GATEWAYS)]
    kills = Counter()
    started = time.monotonic()
    try:
        # kill while the gateways publish, and on (at least 8 kills) while the backlog drains
        while ((any(f.poll() is None for f in feeders) or sum(kills.values()) < 8)
               and time.monotonic() - started < 240):
            time.sleep(rng.uniform(0.2, 0.8))
            n = rng.randrange(2)
            centrals[n].send_signal(signal.SIGKILL)
            centrals[n].wait(10)
            kills[n] += 1
            time.sleep(rng.uniform(0, 0.5))
            centrals[n] = start_central(n)
        assert [f.wait(120) for f in feeders] == [0] * KILL_GATEWAYS
        total = KILL_GATEWAYS * KILL_PER_GATEWAY
        complete = wait_until(lambda: count(db, "observations") >= total, 120)
    finally:
        for process in centrals + feeders:
            process.kill()
            process.wait(10)
    report = {"observations": count(db, "observations"), "kills": sum(kills.values()),
              "seconds": round(time.monotonic() - started, 1),
              "evaluations": count(db, "evaluations"), "quarantined": count(db, "quarantine")}
    print("\ncentral kill test:", json.dumps(report))
    assert complete, report
    expected = {kill_reading(i, g).id for g in range(KILL_GATEWAYS)
                for i in range(KILL_PER_GATEWAY)}
    stored = [r[0] for r in db.execute("SELECT id FROM observations")]
    assert len(stored) == len(expected) and set(stored) == expected
    assert report["evaluations"] == total  # each new reading evaluated once, re-sends never
    assert report["quarantined"] == 0
    assert sum(kills.values()) >= 8, f"too few kills landed during the run: {report}"
    db.close()


if __name__ == "__main__" and sys.argv[1:2] == ["feed"]:
    _, _, url_arg, g_arg, folder_arg, batch_arg = sys.argv
    sys.exit(feed(url_arg, int(g_arg), Path(folder_arg), int(batch_arg)))
