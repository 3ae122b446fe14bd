"""The central: ingest from the broker, store, evaluate, publish alarm events.

    broker --$share/central-<org>/telemon/v1/<org>/+/obs--> Central --> SQLite (one commit
    per group of messages) --> PUBACK to the broker; alarm events --> telemon/v1/<org>/alarms

One `Central` is one ingest process; run several (each with its own client id) and the
broker splits the gateways' messages among them (an MQTT 5 shared subscription).

A message is acknowledged (PUBACK, paho's manual ack) only after everything it carried is
committed: its readings, their evaluations, the alarms they raised, and — for what could not
be used — a quarantine row with the reason and the bytes. Messages that arrive together are
handled as one group in one transaction (one fsync), each inside its own savepoint, so one
message that fails in an unexpected way is quarantined alone and the rest of the group is
kept. A database that cannot be written (disk full, locked for longer than the busy timeout)
rolls the group back unacknowledged; the connection is then dropped so the broker delivers
those messages again, after a backoff. Re-delivery is harmless: an observation id is stored
once, and only new readings are evaluated.

Accepted from a gateway's topic: observations and questionnaire responses whose `gateway` is
that topic's gateway, for patients enrolled in this organisation and bound to that gateway.
Anything else is quarantined with the reason. `received` is set here (central clock, UTC)
next to the device's `effective`.

Alarm events (raised, acknowledged, escalated, resolved; by this engine or by a nurse in the
dashboard) reach `alarm_outbox` through a database trigger; the central claims them, publishes
each alarm's current state (a wire `alarm` record with its trail) at QoS 1 on
`telemon/v1/<org>/alarms`, and deletes them when the broker has acknowledged. A claim older
than CLAIM_TIMEOUT (its process died) is taken over, so an event may be published twice but
is never lost. Every `tick_every` seconds the engine escalates overdue red alarms and raises
"missing" for schedules whose deadline passed.

Every `export_every` seconds a thread of its own runs the enabled exporters
(`telemon.export`), each from its durable cursor. Several ingest processes may all do so:
targets are idempotent and a cursor never moves backwards, so the cost is repeated work only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import paho.mqtt.client as paho

from telemon import mqtt, plugin_manager, store, wire
from telemon.alarms import AlarmEngine, Outcome
from telemon.backoff import Backoff
from telemon.config import CentralConfig, load_or_exit
from telemon.export import run_exports
from telemon.models import Observation, QuestionnaireResponse
from telemon.modules import DiseaseModule
from telemon.plugin_manager import Registry

logger = logging.getLogger(__name__)

CLAIM_TIMEOUT = timedelta(seconds=30)
"""An alarm event claimed for publishing longer ago than this is published by another
process (the claimant is taken to have died)."""


@dataclass
class Counters:
    messages: int = 0
    stored: int = 0  # new observations and questionnaire responses
    duplicates: int = 0  # already stored (re-delivery)
    quarantined: int = 0
    alarms_raised: int = 0
    alarms_published: int = 0
    groups: int = 0
    not_compared: int = 0
    first_message_at: float | None = None  # time.perf_counter() when the first arrived
    last_group_at: float | None = None  # ... and when the last group was acknowledged


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass
class Accepted:
    """What of one message may be stored."""

    message: Message
    observations: list[Observation]
    responses: list[QuestionnaireResponse]


class Central:
    """One ingest process of an organisation's central."""

    def __init__(self, config: CentralConfig, modules: Mapping[str, DiseaseModule], *,
                 pm: Any = None, database: str | None = None, client_id: str | None = None,
                 poll: float = 0.05, max_group: int = 500, max_group_seconds: float = 0.05,
                 tick_every: float = 30.0, backoff: Backoff | None = None,
                 registry: Registry | None = None, export_every: float = 60.0) -> None:
        self.config = config
        self.organisation = config.organisation
        self.database = database or store.central_database_path(config.storage.path)
        self.modules, self.pm = modules, pm
        store.open_database(self.database, pm=pm).close()  # schema up to date, or fail now
        self.db: Any = None  # opened by the thread that runs the central (SQLite's rule)
        self.engine: Any = None
        self.client_id = client_id or config.broker.client_id or f"central-{self.organisation}"
        self.claimant = f"{self.client_id}@{socket.gethostname()}:{os.getpid()}"
        self.poll, self.max_group, self.max_group_seconds = poll, max_group, max_group_seconds
        self.tick_every = tick_every
        self.registry, self.export_every = registry, export_every
        self.backoff = backoff or Backoff()
        self.counters = Counters()
        self.protocol = mqtt.MQTTv5
        self.alarms_topic = mqtt.alarms_topic(self.organisation)
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[Message] = []
        self._alarm_mids: dict[int, list[int]] = {}  # message id -> alarm_outbox events
        self._tick_due = 0.0
        self._exporter: threading.Thread | None = None

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread (tests, the demo)."""
        self._thread = threading.Thread(target=self._run, name="central", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._exporter):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._exporter = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Central:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, *, install_signals: bool = True) -> None:
        """Run in this thread until SIGTERM/SIGINT (or stop() from another thread)."""
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        self._run()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and subscribed (the broker has acknowledged the subscription,
        so whatever is published from now on reaches this central's group)."""
        return self._subscribed.wait(timeout)

    def _run(self) -> None:
        logger.info("central %s (%s) starting on %s", self.organisation, self.client_id,
                    self.database)
        self.db = store.open_database(self.database, pm=self.pm)
        self.engine = AlarmEngine(self.db, self.config, self.modules)
        if self.registry is not None and any(e.enabled for e in self.config.exporters.values()):
            self._exporter = threading.Thread(target=self._export, name="central-export",
                                              daemon=True)
            self._exporter.start()
        try:
            self._serve()
        finally:
            self.db.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._tick_due:  # with or without the broker
                    self._tick()
                if not self._socket_open() and not self._connect():
                    self._stop.wait(self.backoff.next())
                    continue
                rc = self._receive()
                if self._pending:
                    self._handle(self._pending)
                    self._pending = []
                if self._connected.is_set():
                    self._publish_alarms()
                if rc != paho.MQTT_ERR_SUCCESS:
                    self._connected.clear()
                    self._stop.wait(self.backoff.next())
            except sqlite3.OperationalError as exc:  # database trouble: nothing acknowledged
                logger.error("database error, %d message(s) not acknowledged; the broker "
                             "delivers them again after reconnecting: %s",
                             len(self._pending), exc)
                self._drop_client()
                self._stop.wait(self.backoff.next())
            except Exception:
                logger.exception("central error; reconnecting")
                self._drop_client()
                self._stop.wait(self.backoff.next())
        self._shutdown()

    def _receive(self) -> paho.MQTTErrorCode:
        """Wait for messages; once one is there, keep reading what is already waiting, up to
        max_group messages or max_group_seconds, so a burst is committed together."""
        assert self._client is not None
        rc = self._client.loop(self.poll)
        deadline = time.monotonic() + self.max_group_seconds
        while (rc == paho.MQTT_ERR_SUCCESS and self._pending
               and len(self._pending) < self.max_group and time.monotonic() < deadline):
            before = len(self._pending)
            rc = self._client.loop(0)
            if len(self._pending) == before:
                break
        return rc

    # --- the broker -----------------------------------------------------------------------------

    def _socket_open(self) -> bool:
        return self._client is not None and self._client.socket() is not None

    def _connect(self) -> bool:
        """Open the connection (its CONNACK comes through the loop); False if that failed."""
        first = self._client is None
        if first:
            try:
                self._client = mqtt.make_client(self.config.broker, self.client_id,
                                                protocol=self.protocol, manual_ack=True)
            except (LookupError, OSError) as exc:  # password, CA or client certificate missing
                logger.error("broker credentials: %s", exc)
                return False
            self._client.max_inflight_messages_set(0)
            self._client.on_connect = self._on_connect
            self._client.on_disconnect = self._on_disconnect
            self._client.on_message = self._on_message
            self._client.on_subscribe = self._on_subscribe
            self._client.on_publish = self._on_publish
        return mqtt.open_connection(self._client, self.config.broker, self.protocol,
                                    first=first)

    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any, reason: Any,
                    _properties: Any) -> None:
        if reason.is_failure:
            if mqtt.protocol_refused(reason) and self.protocol == mqtt.MQTTv5:
                logger.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
                self.protocol = mqtt.MQTTv311
                self._drop_client()
            else:
                logger.error("broker refused the connection: %s", reason)
            return
        client.subscribe(mqtt.central_subscription(self.organisation), qos=1)
        self._connected.set()
        self.backoff.reset()
        logger.info("connected to %s:%d as %s (MQTT %s, session %s)", self.config.broker.host,
                    self.config.broker.port, self.client_id,
                    "5" if self.protocol == mqtt.MQTTv5 else "3.1.1",
                    "resumed" if flags.session_present else "new")

    def _on_subscribe(self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any,
                      _properties: Any) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons):
            logger.error("broker refused the subscription %s: %s",
                         mqtt.central_subscription(self.organisation), reasons)
            return
        logger.info("subscribed to %s", mqtt.central_subscription(self.organisation))
        self._subscribed.set()

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Any) -> None:
        if self._connected.is_set():
            logger.warning("disconnected from the broker: %s", reason)
        self._connected.clear()
        self._subscribed.clear()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: Any) -> None:
        if self.counters.first_message_at is None:
            self.counters.first_message_at = time.perf_counter()
        self._pending.append(Message(message.topic, message.payload, message.mid, message.qos))

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any,
                    _properties: Any) -> None:
        events = self._alarm_mids.pop(mid, None)
        if events is None:
            return
        if getattr(reason, "is_failure", False):
            logger.error("broker refused an alarm message (%s); it is published again", reason)
            return
        with store.transaction(self.db):
            self.db.conn.executemany("DELETE FROM alarm_outbox WHERE event = ?",
                                     [(e,) for e in events])
        self.counters.alarms_published += 1

    def _drop_client(self) -> None:
        self._connected.clear()
        self._subscribed.clear()
        self._pending = []  # not acknowledged: the broker delivers them again
        self._alarm_mids.clear()  # their claims expire; published again
        client, self._client = self._client, None
        if client is not None and (sock := client.socket()) is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _shutdown(self) -> None:
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(Exception):
                end = time.monotonic() + 1.0
                while self._alarm_mids and time.monotonic() < end:
                    if client.loop(self.poll) != paho.MQTT_ERR_SUCCESS:
                        break
                client.disconnect()
                client.loop(self.poll)
        self._drop_client()
        logger.info("central %s stopped: %s", self.client_id, self.counters)

    # --- ingest ------------------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        """Store one group of messages in one transaction, then acknowledge them all."""
        now = datetime.now(UTC)
        # decoding needs no database: done before the write lock is taken, so that several
        # ingest processes decode at the same time and queue only for their writes
        decoded = [decode_payload(message.payload) for message in messages]
        try:
            outcome = self._store_and_evaluate(messages, decoded, now)
        except BaseException:
            self.engine.series.clear()  # it may hold readings now rolled back
            raise
        assert self._client is not None
        for message in messages:
            if message.qos:
                self._client.ack(message.mid, message.qos)
        self.counters.messages += len(messages)
        self.counters.groups += 1
        self.counters.last_group_at = time.perf_counter()
        self.counters.alarms_raised += outcome.raised
        self.counters.not_compared += outcome.not_compared

    def _store_and_evaluate(self, messages: list[Message],
                            decoded: list[wire.Decoded | Exception], now: datetime) -> Outcome:
        """One transaction: each message's records sorted out in its own savepoint (what may
        not be stored is quarantined), the accepted ones stored, then the new ones evaluated;
        the engine's outcome."""
        with store.transaction(self.db):
            self.engine.directory.refresh()
            accepted: list[Accepted] = []
            for message, content in zip(messages, decoded, strict=True):
                try:
                    with store.savepoint(self.db):  # one message fails alone
                        accepted.append(self._sort_out(message, content))
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:  # a bug must not lose the message or stop ingest
                    self._unprocessable(message, exc)
            new, responses = self._store(accepted, now)
            return self.engine.evaluate_new(new, responses, now)

    def _sort_out(self, message: Message, decoded: wire.Decoded | Exception) -> Accepted:
        """What of one message may be stored; the rest is quarantined with the reason."""
        topic = mqtt.parse_topic(message.topic)
        if topic is None or topic.kind != "obs" or topic.org != self.organisation:
            self._quarantine(message.topic, "not a gateway reading topic of organisation "
                             f"{self.organisation}", message.payload)
            return Accepted(message, [], [])
        if isinstance(decoded, Exception):
            raise decoded
        for error in decoded.errors:
            self._quarantine(message.topic, f"invalid wire form: {error}",
                             error.raw or message.payload)
        accepted = Accepted(message, [], [])
        for record in decoded.records:
            reason = self._refusal(record, topic.gateway)
            if reason is not None:
                self._quarantine(message.topic, reason, wire.encode(record))
            elif isinstance(record, Observation):
                accepted.observations.append(record)
            else:
                accepted.responses.append(record)
        return accepted

    def _store(self, accepted: list[Accepted], now: datetime,
               ) -> tuple[list[Observation], list[QuestionnaireResponse]]:
        """Store the group's accepted records with one statement (SQLite then walks the
        indexes once, in id order); if that fails, message by message, so that the message
        at fault is quarantined alone. The new observations and responses."""
        new: list[Observation] = []
        responses: list[QuestionnaireResponse] = []
        try:
            with store.savepoint(self.db):
                new, responses = self._store_records(
                    [o for part in accepted for o in part.observations],
                    [r for part in accepted for r in part.responses], now)
        except sqlite3.OperationalError:
            raise
        except Exception:
            logger.warning("a group's records could not be stored together; storing them "
                           "message by message", exc_info=True)
            for part in accepted:
                try:
                    with store.savepoint(self.db):
                        stored = self._store_records(part.observations, part.responses, now)
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    self._unprocessable(part.message, exc)
                    part.observations, part.responses = [], []  # none of it stored
                    continue
                new += stored[0]
                responses += stored[1]
        offered = sum(len(part.observations) + len(part.responses) for part in accepted)
        self.counters.stored += len(new) + len(responses)
        self.counters.duplicates += offered - len(new) - len(responses)
        return new, responses

    def _store_records(self, observations: list[Observation],
                       responses: list[QuestionnaireResponse], now: datetime,
                       ) -> tuple[list[Observation], list[QuestionnaireResponse]]:
        """The new ones of these (already stored ids are skipped)."""
        new = store.store_observations(self.db, observations, received=now)
        return new, [response for response in responses
                     if store.store_questionnaire_response(self.db, response, received=now)]

    def _unprocessable(self, message: Message, exc: Exception) -> None:
        logger.error("message on %s could not be processed; quarantined", message.topic,
                     exc_info=exc)
        self._quarantine(message.topic, f"could not be processed: {exc!r}", message.payload)

    def _refusal(self, record: Any, gateway: str | None) -> str | None:
        if not isinstance(record, (Observation, QuestionnaireResponse)):
            return (f"a gateway may send observations and questionnaire responses, not "
                    f"{type(record).__name__} records")
        if record.gateway != gateway:
            return (f"record {record.id} names gateway {record.gateway} but came on the topic "
                    f"of gateway {gateway}")
        if refusal := self.engine.directory.refusal(record.patient, record.gateway):
            return refusal
        if isinstance(record, QuestionnaireResponse):
            return self.engine.response_problem(record)
        return None

    def _quarantine(self, topic: str, reason: str, payload: bytes) -> None:
        store.quarantine(self.db, source=f"mqtt:{topic}", reason=reason, payload=payload)
        self.counters.quarantined += 1
        logger.warning("quarantined from %s: %s", topic, reason)

    # --- exports ------------------------------------------------------------------------------

    def _export(self) -> None:
        """Run the enabled exporters every export_every seconds, on a connection of its own
        (exports read a lot and may wait on a remote server: never in the ingest thread)."""
        db = store.open_database(self.database)
        try:
            while not self._stop.wait(self.export_every):
                try:
                    delivered = run_exports(db, self.config, self.registry)
                except Exception:  # keep exporting next time; ingest is unaffected
                    logger.exception("export run failed")
                    continue
                if any(delivered.values()):
                    logger.info("exported: %s", ", ".join(f"{name} {count}" for name, count
                                                          in delivered.items()))
        finally:
            db.close()

    # --- alarms ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._tick_due = time.monotonic() + self.tick_every
        with store.transaction(self.db):
            self.engine.directory.refresh()
            outcome = self.engine.tick(datetime.now(UTC))
        self.counters.alarms_raised += outcome.raised
        if outcome.raised or outcome.escalated:
            logger.info("clock: %d missing alarm(s) raised, %d escalated", outcome.raised,
                        outcome.escalated)

    def _publish_alarms(self) -> None:
        """Claim waiting alarm events and publish each alarm's current state once."""
        if len(self._alarm_mids) >= 16:
            return
        now = datetime.now(UTC)
        waiting = ("SELECT event, alarm_id FROM alarm_outbox WHERE claimed_by IS NULL "
                   "OR claimed_at < ? ORDER BY event LIMIT 100")
        expired = [store.utc_text(now - CLAIM_TIMEOUT)]
        if self.db.execute(waiting, expired).fetchone() is None:
            return  # the usual case: no write lock taken
        with store.transaction(self.db):
            rows = self.db.execute(waiting, expired).fetchall()  # again, under the lock
            if not rows:
                return
            self.db.conn.executemany(
                "UPDATE alarm_outbox SET claimed_by = ?, claimed_at = ? WHERE event = ?",
                [(self.claimant, store.utc_text(now), event) for event, _ in rows])
        by_alarm: dict[str, list[int]] = {}
        for event, alarm_id in rows:
            by_alarm.setdefault(alarm_id, []).append(event)
        assert self._client is not None
        for alarm_id, events in by_alarm.items():
            payload = wire.encode(store.get_alarm(self.db, alarm_id))
            info = self._client.publish(self.alarms_topic, payload, qos=1)
            self._alarm_mids[info.mid] = events


def decode_payload(payload: bytes) -> wire.Decoded | Exception:
    """The message's records, or the exception of a decoder bug (quarantined with the
    message's group, in its transaction)."""
    try:
        return wire.decode_message(payload)
    except Exception as exc:
        return exc


# --- the command ---------------------------------------------------------------------------------

@click.command(name="central")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The central's TOML config.")
@click.option("--client-id", default=None,
              help="MQTT client id of this ingest process (each process needs its own; "
                   "default: broker.client_id, else central-<organisation>).")
@click.option("--tick", "tick_every", type=float, default=30.0, show_default=True,
              help="Seconds between checks for escalation and missed deadlines.")
@click.option("--export-every", type=float, default=60.0, show_default=True,
              help="Seconds between runs of the enabled exporters (also: telemon export run).")
def central_command(config_path: str, client_id: str | None, tick_every: float,
                    export_every: float) -> None:
    """Run an ingest process of the central until SIGTERM or SIGINT."""
    config = load_or_exit(config_path, CentralConfig)
    pm, registry = plugin_manager.get()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pm.hook.startup(config=config)
    try:
        with Central(config, registry.modules, pm=pm, client_id=client_id,
                     tick_every=tick_every, registry=registry,
                     export_every=export_every) as central:
            central.run()
    finally:
        pm.hook.shutdown(config=config)

