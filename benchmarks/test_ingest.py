"""Central ingest end to end (broker -> validated -> stored -> evaluated), against a bare
subscriber on the same Mosquitto with the same payloads, in the same run.

Each round drains a backlog: the messages are published while the consumer is offline (its
persistent session queues them; Mosquitto is configured with no queue limit), then the
consumer connects. The rates and ratios come from each consumer's own clock, from the first
message it takes to the last it has handled (the central and the durable peer: to the
acknowledgement of the last group, after its commit). So the figure is the consumer's steady
rate, not the publisher's, and not start-up time. pytest-benchmark's table times the round
without the publishing (its setup) but with the consumer's start and stop (the central opens
its database and loads its enrolments first: ~0.3 s), so its times are longer than the
drains; the drains are in each benchmark's extra_info. Peers:

* `bare`: a paho-mqtt subscriber in its own shared-subscription group that counts messages
  (paho acknowledges each after the callback): the ceiling of a Python MQTT consumer here.
* `durable`: the least any ingest that keeps every reading must do: a paho subscriber with
  manual acks that takes each reading's id, patient, code and time out of the batch (msgspec,
  no validation), inserts it with its bytes into SQLite (the id as primary key, one index
  per patient, code and time; WAL, synchronous=FULL, one commit per group as the central)
  and acknowledges after the commit. No enrolment check, no evaluation: the floor under the
  central, so the ratios show how much of the gap is durable storage itself.
* `central`: `telemon.central.Central` with the COPD module: decode, check the enrolment,
  store, evaluate every reading against its limits, commit, then acknowledge.

Two payload shapes: `batched` (gateways send 100 readings per message, as the edge does) and
`single` (one reading per message). The ratio central/bare per shape is printed by the last
test (run with `-s`), with the observations per second.

`test_alarm_latency` publishes single readings at 1,000 per second, one in ten a red SpO2 of
a patient without an open alarm, and measures publish -> alarm event on the alarms topic
(p50/p99).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from telemon import config, mqtt, plugin_manager, store, wire
from telemon.backoff import Backoff
from telemon.central import Central
from telemon.codes import KNOWN
from telemon.models import Enrolment, Observation, reading_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mosquitto import Mosquitto  # the tests' broker fixture class

ORG = "kommune-0999"
PATIENTS = 1000
GATEWAYS = PATIENTS  # one home, one patient: a message carries one patient's readings
BACKLOG = {"batched": (200, 100), "single": (2000, 1)}  # shape -> (messages, per message)
ROUNDS = 3
SESSIONS = {peer: f"bench-{peer}" for peer in ("bare", "durable", "central")}
SUBSCRIPTIONS = {"central": mqtt.central_subscription(ORG),
                 **{peer: f"$share/{peer}-{ORG}/{mqtt.ROOT}/{ORG}/+/obs"
                    for peer in ("bare", "durable")}}
RESULTS: dict[tuple[str, str], float] = {}  # (shape, peer) -> best observations/s
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
_numbers = itertools.count()


def reading(patient: int, value: str = "95") -> Observation:
    """A reading with its id made as the edge makes it (a UUIDv5 of what identifies it):
    random to the database's index, as in production."""
    n = next(_numbers)
    effective = T0 + timedelta(seconds=n % 80000)
    raw = n.to_bytes(8, "big")
    return Observation(id=reading_id(device="dev-1", patient=f"p-{patient:04d}",
                                     code=KNOWN["spo2"].code.code, effective=effective, raw=raw),
                       patient=f"p-{patient:04d}", device="dev-1",
                       gateway=f"gw-{patient % GATEWAYS}", code=KNOWN["spo2"].code, unit="%",
                       value=Decimal(value), effective=effective, raw=raw)


def payloads(shape: str) -> list[tuple[str, bytes]]:
    messages, per = BACKLOG[shape]
    out = []
    for m in range(messages):
        g = m % GATEWAYS
        patients = [g + GATEWAYS * ((m * per + k) % (PATIENTS // GATEWAYS)) for k in range(per)]
        out.append((mqtt.obs_topic(ORG, f"gw-{g}"),
                    wire.encode_batch([reading(p) for p in patients])))
    return out


def client(client_id: str, port: int, *, expiry: int = 3600, inflight: int = 20,
           manual_ack: bool = False) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=MQTTProtocolVersion.MQTTv5, manual_ack=manual_ack)
    c.max_inflight_messages_set(inflight)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, clean_start=expiry == 0, properties=properties)
    return c


def forget_session(client_id: str, port: int) -> None:
    """End a persistent session (and so its share of the subscription) at the broker."""
    c = client(client_id, port, expiry=0)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.loop_start()
    assert connected.wait(10)
    c.disconnect()
    c.loop_stop()


def open_session(client_id: str, port: int, topic: str) -> None:
    """Create a persistent session subscribed to `topic`, then go offline."""
    c = client(client_id, port)
    done = threading.Event()
    c.on_subscribe = lambda *_: done.set()
    c.loop_start()
    c.subscribe(topic, qos=1)
    assert done.wait(10)
    c.disconnect()
    c.loop_stop()


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    c = client(f"bench-pub-{random.randrange(10**9)}", port, expiry=0, inflight=200)
    c.loop_start()
    infos = [c.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    # saving after every change (the kill tests' setting) would rewrite the whole queued
    # backlog to disk per message: Mosquitto's default autosave here
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"), max_inflight=1000,
                  save_every_change=False).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def central_config(broker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("central")
    data = {"role": "central", "organisation": ORG, "broker": {"url": broker.url},
            "storage": {"path": str(folder)}, "modules": {"copd": {"enabled": True}}}
    cfg, problems = config.validate(data, plugin_manager.get()[1])
    assert not problems
    db = store.open_database(store.central_database_path(cfg.storage.path))
    with store.transaction(db):
        for p in range(PATIENTS):
            store.store_record(db, Enrolment(patient=f"p-{p:04d}", organisation=ORG,
                                             modules=("copd",), gateways=(f"gw-{p % GATEWAYS}",),
                                             enrolled=T0))
        store.audit(db, actor="bench", action="patient.add")
    db.close()
    return cfg


def stored(cfg) -> int:
    db = store.open_database(store.central_database_path(cfg.storage.path))
    try:
        return db.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
    finally:
        db.close()


def drain_with_central(cfg, port: int, messages: list) -> float:
    """Seconds from the central's first message to its acknowledgement of the last."""
    before = stored(cfg)
    expected = before + sum(len(wire.decode_message(p).records) for _, p in messages)
    central = Central(cfg, plugin_manager.get()[1].modules, client_id=SESSIONS["central"],
                      tick_every=3600, backoff=Backoff(0.05, 0.3))
    central.start()
    while central.counters.messages < len(messages):
        time.sleep(0.002)
    elapsed = central.counters.last_group_at - central.counters.first_message_at
    central.close()
    assert stored(cfg) == expected
    return elapsed


def drain_with_bare(port: int, messages: list) -> float:
    """Seconds from the first message to the last."""
    received = 0
    first = 0.0
    done = threading.Event()

    def on_message(*_):
        nonlocal received, first
        received += 1
        if received == 1:
            first = time.perf_counter()
        if received == len(messages):
            done.set()

    c = client(SESSIONS["bare"], port)
    c.on_message = on_message
    c.loop_start()
    assert done.wait(120)
    elapsed = time.perf_counter() - first
    c.disconnect()
    c.loop_stop()
    return elapsed


class _Code(msgspec.Struct):
    code: str


class _Reading(msgspec.Struct):
    """What the durable peer takes out of a reading (the rest is kept as bytes)."""

    id: str
    patient: str
    code: _Code
    effective: str


class _Batch(msgspec.Struct):
    items: list[msgspec.Raw]


_batch = msgspec.json.Decoder(_Batch)
_reading = msgspec.json.Decoder(_Reading)


def drain_with_durable(port: int, messages: list, path: Path) -> float:
    """Seconds from the first message to the acknowledgement of the last group."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = FULL", "cache_size = -65536"):
        db.execute(f"PRAGMA {pragma}")
    db.executescript("""
        CREATE TABLE IF NOT EXISTS readings (id TEXT PRIMARY KEY, patient TEXT NOT NULL,
            code TEXT NOT NULL, effective TEXT NOT NULL, item BLOB NOT NULL);
        CREATE INDEX IF NOT EXISTS readings_series ON readings (patient, code, effective);
    """)
    pending: list = []
    first = None

    def on_message(_c, _u, message):
        nonlocal first
        first = first or time.perf_counter()
        pending.append(message)

    c = client(SESSIONS["durable"], port, manual_ack=True)
    c.on_message = on_message
    handled = 0
    while handled < len(messages):
        c.loop(0.05)
        while pending and len(pending) < 500:  # a group: what is already waiting
            before = len(pending)
            c.loop(0)
            if len(pending) == before:
                break
        if not pending:
            continue
        rows = []
        for message in pending:
            for item in _batch.decode(message.payload).items:
                r = _reading.decode(item)
                rows.append((r.id, r.patient, r.code.code, r.effective, bytes(item)))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       rows)
        db.execute("COMMIT")
        for message in pending:
            c.ack(message.mid, message.qos)
        handled += len(pending)
        pending.clear()
    elapsed = time.perf_counter() - first
    c.loop(0.05)  # the last acknowledgements out
    c.disconnect()
    db.close()
    return elapsed


def observations_per_second(shape: str, seconds: float) -> float:
    messages, per = BACKLOG[shape]
    return messages * per / seconds


def backlog(port: int, shape: str, peer: str) -> tuple[tuple[list], dict]:
    """Queue a backlog for `peer` alone (the other peers' sessions ended) while it is
    offline; pytest-benchmark's setup, so not timed."""
    for other in SESSIONS.values():
        forget_session(other, port)
    open_session(SESSIONS[peer], port, SUBSCRIPTIONS[peer])
    messages = payloads(shape)
    publish(port, messages)
    return (messages,), {}


@pytest.mark.parametrize("shape", ["batched", "single"])
@pytest.mark.parametrize("peer", ["bare", "durable", "central"])
def test_ingest(benchmark, broker, central_config, tmp_path_factory, shape, peer):
    benchmark.group = f"ingest-{shape}"
    benchmark.extra_info["observations"] = BACKLOG[shape][0] * BACKLOG[shape][1]
    path = tmp_path_factory.mktemp("durable") / "durable.db"
    drain = {"central": lambda messages: drain_with_central(central_config, broker.port, messages),
             "durable": lambda messages: drain_with_durable(broker.port, messages, path),
             "bare": lambda messages: drain_with_bare(broker.port, messages)}[peer]
    drains: list[float] = []
    benchmark.pedantic(lambda messages: drains.append(drain(messages)), rounds=ROUNDS,
                       iterations=1, setup=lambda: backlog(broker.port, shape, peer))
    forget_session(SESSIONS[peer], broker.port)
    benchmark.extra_info["drain_seconds"] = drains
    assert drains and min(drains) > 0  # one round when benchmarks are disabled
    if not benchmark.disabled:
        RESULTS[(shape, peer)] = observations_per_second(shape, min(drains))


def test_alarm_latency(broker, central_config, request):
    """p50/p99 from publish to alarm event at 1,000 readings per second."""
    disabled = request.config.getoption("benchmark_disable", False)
    seconds = 1.0 if disabled else 5.0
    rate = int(os.environ.get("TELEMON_LATENCY_RATE", "1000"))
    for peer in SESSIONS.values():
        forget_session(peer, broker.port)
    arrived: dict[str, float] = {}
    watcher = client("bench-nurse", broker.port, expiry=0)
    watcher.on_message = lambda _c, _u, m: arrived.setdefault(
        wire.decode(m.payload).observations[0], time.perf_counter())
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.loop_start()
    watcher.subscribe(mqtt.alarms_topic(ORG), qos=1)
    assert subscribed.wait(10)
    central = Central(central_config, plugin_manager.get()[1].modules,
                      client_id=SESSIONS["central"], tick_every=3600, max_group_seconds=0.005)
    central.start()
    assert central.wait_connected(10)
    # red readings go to patients in turn; each patient's earlier alarm is resolved first
    # by the debounce rule (one unresolved alarm per rule), so every red one is a new alarm:
    # resolve them all before the run
    db = store.open_database(store.central_database_path(central_config.storage.path))
    with store.transaction(db):
        db.execute("UPDATE alarms SET state = 'resolved'")
    db.close()
    # the gateways are another process, as in production: a publisher in this one would
    # take the central's turns at the interpreter lock (perf_counter is the same monotonic
    # clock in both processes)
    feed = subprocess.run([sys.executable, __file__, "publish", str(broker.port), str(rate),
                           str(seconds), str(next(_numbers) + 10**6)],
                          capture_output=True, check=True, timeout=seconds + 60)
    published = json.loads(feed.stdout)
    deadline = time.perf_counter() + 30
    while len(arrived.keys() & published.keys()) < len(published) and \
            time.perf_counter() < deadline:
        time.sleep(0.01)
    central.close()
    watcher.disconnect()
    watcher.loop_stop()
    latencies = sorted(arrived[k] - published[k] for k in published if k in arrived)
    assert len(latencies) == len(published), f"{len(published) - len(latencies)} alarms lost"
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"\nalarm latency at {rate} readings/s for {seconds:g} s: {len(latencies)} alarms, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] * 1000:.1f} ms")


def test_report_ratios():
    if not RESULTS:
        pytest.skip("benchmarks disabled: no timings to compare")
    for shape in BACKLOG:
        bare, durable, central = (RESULTS.get((shape, peer))
                                  for peer in ("bare", "durable", "central"))
        if bare and durable and central:
            print(f"\ningest {shape}: central {central:,.0f} obs/s, durable-storage floor "
                  f"{durable:,.0f} obs/s, bare subscriber {bare:,.0f} obs/s; central/bare "
                  f"{central / bare:.2f}, durable/bare {durable / bare:.2f}, central/durable "
                  f"{central / durable:.2f}")


def publish_at_rate(port: int, rate: int, seconds: float) -> dict[str, float]:
    """Single readings at `rate` per second, one in ten red (patients in turn); the publish
    time of each red one, by observation id."""
    publisher = client(f"bench-latency-pub-{os.getpid()}", port, expiry=0, inflight=1000)
    publisher.loop_start()
    published = {}
    start = time.perf_counter()
    for i in range(int(seconds * rate)):
        due = start + i / rate
        while time.perf_counter() < due:
            time.sleep(0.0002)
        red = i % 10 == 0
        obs = reading((i // 10) % PATIENTS if red else i % PATIENTS, "80" if red else "95")
        if red:
            published[obs.id] = time.perf_counter()
        publisher.publish(mqtt.obs_topic(ORG, obs.gateway), wire.encode_batch([obs]), qos=1)
    publisher.disconnect()
    publisher.loop_stop()
    return published


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    # python benchmarks/test_ingest.py publish PORT RATE SECONDS FIRST_NUMBER: the latency
    # test's gateways (FIRST_NUMBER keeps the reading ids apart from earlier rounds')
    _numbers = itertools.count(int(sys.argv[5]))
    print(json.dumps(publish_at_rate(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))))
