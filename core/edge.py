"""The edge gateway runtime: readings into the outbox, from the outbox to the broker.

    device transport --submit()--> Outbox (SQLite, fsynced) --publisher--> broker (QoS 1)
                     --reject()--> quarantine                 <--PUBACK-- delete

`Gateway.submit(records)` stores readings durably and returns; a publisher thread sends them,
oldest first, in batches (`wire` batch messages of up to `batch_size` records and
`max_batch_bytes`, consecutive in outbox order, so each device's order is kept) at QoS 1 to
`telemon/v1/<org>/<gateway>/obs`, with at most `max_inflight` unacknowledged messages (and
never more than the broker's MQTT 5 Receive Maximum). A record leaves the outbox only when the
broker's PUBACK for the message that carried it arrives with a success code; a PUBACK with an
error code (e.g. 0x87 not authorised) keeps the records and retries them after a backoff.

Reconnects: the same paho client reconnects with clean_start = False and a session expiry,
and paho resends the messages still unacknowledged (same packet ids, DUP set), so the
message -> records map stays valid. After a gateway restart (a crash loses paho's memory but
not the outbox) every record in the outbox is published again from the oldest: the outbox is
the source of truth; the central de-duplicates by observation id. Delays between connection
attempts: exponential backoff with full jitter (`telemon.backoff.Backoff`, cap 60 s), reset once
a connection has delivered something or stayed up for `stable_after` seconds.

Status: a retained JSON message on `telemon/v1/<org>/<gateway>/status` ("online", or
"outbox-full" while the outbox refuses readings), refreshed every `status_every` seconds with
the outbox depth; the last will (retained) says "offline", and so does a graceful stop
(SIGTERM/SIGINT), which first waits briefly for outstanding acknowledgements.

MQTT 5 is asked for first; a broker that refuses it gets MQTT 3.1.1 (clean_session = False).
Prefer 5: a 3.1.1 PUBACK carries no reason code, so a broker that drops a message it may not
accept (Mosquitto with an ACL) still acknowledges it, and the records are gone.

`submit` and `reject` commit (fsync) before they return, a few milliseconds: an asyncio
transport may want to call them through `loop.run_in_executor`.

Devices: `Gateway.run_devices(devices, drivers, tz=...)` starts a `DeviceRunner`: one
transport per configured device (`telemon.transports.make_transport`: BLE, serial/USB,
simulated), all in one asyncio event-loop thread next to the publisher thread, with one USB
discovery (`telemon.usb`) shared by the devices found by VID:PID. Transports hand readings
and rejected frames to an outbox writer thread (the outbox fsyncs: never on the event loop);
readings the outbox refuses (full) are counted per device and logged as errors (a serial
stream cannot be asked to send them again). A transport that crashes is restarted after a
backoff. Every device's transport status and counters go into the retained status message
(`devices`) and, every 2 s and at every status change, into `devices.json` next to the
outbox (written atomically, owner-only), which `telemon edge status` reads from its own
process. (A file, not an outbox table: the status is rewritten every few seconds and needs
no fsync, no share of the outbox's disk bound and no turn at its write lock.)

`telemon edge --config edge.toml` runs a gateway with its configured devices until SIGTERM
or SIGINT (devices stop first, so their last readings reach the outbox; what the broker has
not acknowledged stays there for the next start); `telemon edge status --config edge.toml`
reads the outbox file and `devices.json` (no broker needed): devices, their transports'
status and counters, last readings, depth, last delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as paho

from telemon import mqtt, plugin_manager
from telemon.backoff import Backoff
from telemon.config import BrokerConfig, DeviceConfig, EdgeConfig, load_or_exit
from telemon.drivers import Driver, ParseContext
from telemon.files import write_atomically
from telemon.models import Record
from telemon.outbox import Entry, LastReading, Outbox, OutboxStats, PutResult, outbox_path

logger = logging.getLogger(__name__)


class Gateway:
    """One home's gateway: an outbox and the publisher that empties it into the broker."""

    def __init__(self, *, organisation: str, gateway: str, broker: BrokerConfig,
                 outbox: Outbox, client_id: str | None = None, batch_size: int = 100,
                 max_batch_bytes: int = 128 * 1024, max_inflight: int = 16,
                 backoff: Backoff | None = None, status_every: float = 60.0,
                 stable_after: float = 10.0, poll: float = 0.05) -> None:
        if batch_size < 1 or max_inflight < 1 or max_batch_bytes < 1:
            raise ValueError("batch_size, max_batch_bytes and max_inflight must be positive")
        if broker.password is not None:
            try:  # fail now, not at each connection attempt
                broker.password.resolve()
            except (LookupError, OSError) as exc:
                raise LookupError(f"broker.password ({broker.password}): {exc}") from None
        self.organisation, self.gateway, self.broker = organisation, gateway, broker
        self.outbox = outbox
        self.client_id = client_id or gateway
        self.obs_topic = mqtt.obs_topic(organisation, gateway)
        self.status_topic = mqtt.status_topic(organisation, gateway)
        self.batch_size, self.max_batch_bytes = batch_size, max_batch_bytes
        self.max_inflight = max_inflight
        self.backoff = backoff or Backoff()
        self._refusals = Backoff(self.backoff.base, self.backoff.cap)  # refused PUBACKs
        self.status_every, self.stable_after, self.poll = status_every, stable_after, poll
        self.protocol = mqtt.MQTTv5
        self.published = 0  # messages handed to the broker (resends by paho not counted)
        self.delivered = 0  # records acknowledged and deleted, this process
        self._owns_outbox = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._connected_at = 0.0
        self._window = max_inflight
        self._inflight: dict[int, list[int]] = {}  # message id -> outbox seqs it carries
        self._cursor = 0  # highest seq handed to paho by this process
        self._acked: list[int] = []  # seqs acknowledged during the current loop pass
        self._retry: deque[tuple[float, int, int]] = deque()  # (not before, first seq, n)
        self._status_mids: set[int] = set()
        self._state = ""
        self._status_due = 0.0
        self._full_logged = 0.0
        self._grace = 2.0
        self.devices: DeviceRunner | None = None
        self._quit = threading.Event()  # SIGTERM/SIGINT: stop the devices, then publishing
        self._devices_changed = False
        self._status_at = 0.0

    @classmethod
    def from_config(cls, config: EdgeConfig, **options: Any) -> Gateway:
        """A gateway for an edge config, with its outbox in the storage folder."""
        outbox = Outbox(outbox_path(config.storage.path),
                        max_megabytes=config.outbox.max_megabytes)
        try:
            gateway = cls(organisation=config.organisation, gateway=config.gateway,
                          broker=config.broker, outbox=outbox,
                          client_id=config.broker.client_id, **options)
        except BaseException:
            outbox.close()
            raise
        gateway._owns_outbox = True
        return gateway

    # --- what device transports call -------------------------------------------------------

    def submit(self, records: Iterable[Record]) -> PutResult:
        """Store readings in the outbox (durable when this returns). Readings in
        `PutResult.refused` were not stored (the outbox is full): do not confirm them to the
        device, which then keeps them."""
        return self.outbox.put(records)

    def reject(self, source: str, reason: str, raw: bytes) -> int | None:
        """Keep a frame that could not be used, with where it came from and why."""
        logger.warning("quarantined a frame from %s: %s", source, reason)
        return self.outbox.quarantine(source=source, reason=reason, raw=raw)

    def ingest(self, driver: Driver, frame: bytes, ctx: ParseContext) -> PutResult | None:
        """Parse one frame with a driver and submit its readings; a frame the parser
        rejects goes to quarantine (None is returned)."""
        try:
            observations = driver.parse(frame, ctx)
        except ValueError as exc:  # FrameError, or a value the model refuses
            source = f"driver:{driver.name}:{ctx.device}" + (f":{ctx.source}" if ctx.source
                                                            else "")
            self.reject(source, str(exc), frame)
            return None
        return self.submit(observations)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing in a background thread."""
        if self._thread is not None:
            raise RuntimeError("gateway already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{self.gateway}",
                                        daemon=True)
        self._thread.start()

    def run_devices(self, devices: Sequence[DeviceConfig], drivers: Mapping[str, Driver], *,
                    tz: tzinfo | None, **options: Any) -> DeviceRunner:
        """Start reading the configured devices (one transport each, in one event-loop
        thread; see `DeviceRunner` for `options`). `stop()` stops them first."""
        if self.devices is not None:
            raise RuntimeError("devices already running")
        options.setdefault("status_path", self.outbox.path.parent / DEVICE_STATUS_FILE)
        self.devices = DeviceRunner(self, devices, drivers, tz=tz, **options)
        self.devices.start()
        return self.devices

    def devices_changed(self) -> None:
        """A device's transport status changed: say so on the status topic soon."""
        self._devices_changed = True

    def stop(self, grace: float = 2.0) -> None:
        """Stop the devices (their last readings go into the outbox), then publishing: wait
        up to `grace` seconds for outstanding acknowledgements, say "offline" on the status
        topic and disconnect. Unacknowledged records stay in the outbox for the next start."""
        if self.devices is not None:
            self.devices.stop()
        self._grace = grace
        self._stop.set()
        if self._thread is not None:
            self._thread.join(grace + 10)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the outbox if this gateway opened it."""
        self.stop()
        if self._owns_outbox:
            self.outbox.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, *, install_signals: bool = True) -> None:
        """Publish until SIGTERM or SIGINT (or `stop()` from another thread)."""
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self._quit.set())
        self.start()
        logger.info("gateway %s publishing to %s:%d as %s", self.gateway, self.broker.host,
                    self.broker.port, self.obs_topic)
        try:
            while not self._quit.wait(0.5) and not self._stop.is_set():
                pass
        finally:
            self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty; True if it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.outbox.peek(1):
                return True
            time.sleep(0.02)
        return not self.outbox.peek(1)

    # --- the publisher thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._socket_open() and not self._connect():
                    self._stop.wait(self.backoff.next())
                    continue
                assert self._client is not None
                rc = self._client.loop(self.poll)
                self._after_loop(rc)
                if rc != paho.MQTT_ERR_SUCCESS:  # connection lost or refused
                    self._connected.clear()
                    self._stop.wait(self.backoff.next())
            except Exception:  # never die silently: the outbox keeps everything meanwhile
                logger.exception("publisher error; reconnecting")
                self._drop_client()
                self._stop.wait(self.backoff.next())
        self._shutdown()

    def _socket_open(self) -> bool:
        return self._client is not None and self._client.socket() is not None

    def _connect(self) -> bool:
        """Open the connection (its CONNACK comes through the loop); False if that failed."""
        first = self._client is None
        if first:
            will = (self.status_topic, mqtt.status_payload("offline", self.gateway))
            try:
                self._client = mqtt.make_client(self.broker, self.client_id,
                                                protocol=self.protocol, will=will)
            except (LookupError, OSError) as exc:  # password, CA or client certificate missing
                logger.error("broker credentials: %s", exc)
                return False
            self._client.max_inflight_messages_set(0)  # bounded here, by self._window
            self._client.on_connect = self._on_connect
            self._client.on_disconnect = self._on_disconnect
            self._client.on_publish = self._on_publish
        return mqtt.open_connection(self._client, self.broker, self.protocol, first=first)

    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any,
                    reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if mqtt.protocol_refused(reason) and self.protocol == mqtt.MQTTv5:
                logger.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
                self.protocol = mqtt.MQTTv311
                self._drop_client()
            else:
                logger.error("broker refused the connection: %s", reason)
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self._window = max(1, min(self.max_inflight, (receive_maximum or 65535) - 2))
        self._connected_at = time.monotonic()
        self._connected.set()
        logger.info("connected to %s:%d (MQTT %s, session %s, window %d)", self.broker.host,
                    self.broker.port, "5" if self.protocol == mqtt.MQTTv5 else "3.1.1",
                    "resumed" if flags.session_present else "new", self._window)
        self._status_due = 0.0  # say "online" (or "outbox-full") now

    def _on_disconnect(self, client: paho.Client, _userdata: Any, _flags: Any,
                       reason: Any, _properties: Any) -> None:
        if self._connected.is_set():
            logger.warning("disconnected from the broker: %s", reason)
        self._connected.clear()

    def _on_publish(self, client: paho.Client, _userdata: Any, mid: int, reason: Any,
                    _properties: Any) -> None:
        if mid in self._status_mids:
            self._status_mids.discard(mid)
            return
        seqs = self._inflight.pop(mid, None)
        if seqs is None:
            return
        if getattr(reason, "is_failure", False):  # e.g. 0x87 not authorised: keep them
            delay = self._refusals.next()
            logger.error("broker refused a message of %d record(s) (%s); they stay in the "
                         "outbox and are retried in %.0f s", len(seqs), reason, delay)
            self._retry.append((time.monotonic() + delay, seqs[0], len(seqs)))
            return
        self._refusals.reset()
        self._acked.extend(seqs)  # deleted in one transaction after this loop pass

    def _after_loop(self, rc: paho.MQTTErrorCode) -> None:
        if self._acked:
            self.delivered += self.outbox.delete(self._acked)
            self._acked = []
            self.backoff.reset()
        if rc != paho.MQTT_ERR_SUCCESS or not self._connected.is_set():
            return
        now = time.monotonic()
        if self.backoff.attempts and now - self._connected_at > self.stable_after:
            self.backoff.reset()
        self._publish_waiting(now)
        state = "outbox-full" if self.outbox.is_full() else "online"
        if (state != self._state or now >= self._status_due
                or (self._devices_changed and now - self._status_at >= 1.0)):
            self._publish_status(state, now)

    def _publish_waiting(self, now: float) -> None:
        while self._retry and self._retry[0][0] <= now and len(self._inflight) < self._window:
            _, first, count = self._retry.popleft()
            entries = self.outbox.peek(count, after=first - 1)
            if entries:
                self._publish_batch(entries)
        while len(self._inflight) < self._window:
            room = self._window - len(self._inflight)
            entries = self.outbox.peek(room * self.batch_size, after=self._cursor)
            if not entries:
                return
            batch: list[Entry] = []
            size = 0
            for entry in entries:
                if batch and (len(batch) == self.batch_size
                              or size + len(entry.payload) > self.max_batch_bytes):
                    self._publish_batch(batch)
                    batch, size = [], 0
                batch.append(entry)
                size += len(entry.payload) + 1
            self._publish_batch(batch)

    def _publish_batch(self, entries: list[Entry]) -> None:
        assert self._client is not None
        payload = mqtt.batch_message([e.payload for e in entries])
        info = self._client.publish(self.obs_topic, payload, qos=1)
        self._inflight[info.mid] = [e.seq for e in entries]
        self._cursor = max(self._cursor, entries[-1].seq)
        self.published += 1

    def _publish_status(self, state: str, now: float) -> None:
        assert self._client is not None
        stats = self.outbox.stats()
        if state == "outbox-full" and (self._state != state
                                       or now - self._full_logged >= self.status_every):
            logger.error("OUTBOX FULL: %d reading(s) refused so far, %d waiting (%.1f of "
                         "%.1f MB); new readings are refused until the broker takes the "
                         "backlog", stats.refused, stats.depth, stats.used_bytes / 2**20,
                         stats.max_bytes / 2**20)
            self._full_logged = now
        devices = {}
        if self.devices is not None:
            self._devices_changed = False
            devices["devices"] = self.devices.summary()
        info = self._client.publish(self.status_topic, mqtt.status_payload(
            state, self.gateway, outbox=stats.depth, outbox_bytes=stats.used_bytes,
            outbox_max_bytes=stats.max_bytes, refused=stats.refused,
            quarantined=stats.quarantined, **devices), qos=1, retain=True)
        self._status_mids.add(info.mid)
        self._state = state
        self._status_due = now + self.status_every
        self._status_at = now

    def _shutdown(self) -> None:
        """Graceful end: outstanding acknowledgements (briefly), "offline", DISCONNECT."""
        client = self._client
        if client is not None and self._connected.is_set():
            deadline = time.monotonic() + self._grace
            with contextlib.suppress(Exception):
                while self._inflight and time.monotonic() < deadline:
                    rc = client.loop(self.poll)
                    if self._acked:
                        self.delivered += self.outbox.delete(self._acked)
                        self._acked = []
                    if rc != paho.MQTT_ERR_SUCCESS:
                        break
                info = client.publish(self.status_topic, mqtt.status_payload(
                    "offline", self.gateway, outbox=self.outbox.stats().depth),
                    qos=1, retain=True)
                end = time.monotonic() + 1.0
                while not info.is_published() and time.monotonic() < end:
                    if client.loop(self.poll) != paho.MQTT_ERR_SUCCESS:
                        break
                client.disconnect()
                client.loop(self.poll)
        if self._inflight:
            logger.info("%d message(s) unacknowledged at stop: their records stay in the "
                        "outbox", len(self._inflight))
        self._drop_client()

    def _drop_client(self) -> None:
        """Forget the client and what it had in flight (those records are still in the
        outbox: the next connection publishes them again, from the oldest)."""
        self._connected.clear()
        client, self._client = self._client, None
        if client is not None and (sock := client.socket()) is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._inflight.clear()
        self._retry.clear()
        self._status_mids.clear()
        self._cursor = 0


# --- the devices: one transport each, in one event-loop thread ---------------------------

DEVICE_STATUS_FILE = "devices.json"
STATUS_VERSION = 1


@dataclasses.dataclass
class DeviceState:
    """One configured device as the runtime sees it: its transport, and what became of the
    readings it handed on (counted by the outbox writer)."""

    config: DeviceConfig
    driver: Driver | None
    transport: Any = None
    error: str = ""  # why there is no transport (or why it crashed last)
    stored: int = 0  # readings new in the outbox
    duplicates: int = 0  # readings already waiting there
    refused: int = 0  # readings the full outbox refused
    quarantined: int = 0  # frames sent to quarantine
    crashes: int = 0
    status: str = "idle"
    since: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))

    @property
    def kind(self) -> str:
        return self.driver.transport if self.driver is not None else "?"

    def current_status(self) -> str:
        if self.transport is None:
            return f"error: {self.error}" if self.error else "idle"
        return str(getattr(self.transport, "status", "?"))

    def snapshot(self) -> dict[str, Any]:
        transport = self.transport
        port = getattr(transport, "current_port", None) or self.config.address
        return {
            "device": self.config.device, "patient": self.config.patient,
            "driver": self.config.driver, "transport": self.kind,
            "address": port, "status": self.status, "since": self.since.isoformat(),
            "reason": str(getattr(transport, "reason", "") or self.error or ""),
            "counters": _counters(getattr(transport, "counters", None)),
            "outbox": {"stored": self.stored, "duplicates": self.duplicates,
                       "refused": self.refused, "quarantined": self.quarantined},
            "crashes": self.crashes,
        }


def _counters(counters: Any) -> dict[str, Any]:
    """A transport's counters as plain JSON values (a dataclass, a mapping or attributes)."""
    if counters is None:
        return {}
    if dataclasses.is_dataclass(counters) and not isinstance(counters, type):
        raw = dataclasses.asdict(counters)
    elif isinstance(counters, Mapping):
        raw = dict(counters)
    else:
        raw = {k: v for k, v in vars(counters).items() if not k.startswith("_")}
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()
            if isinstance(v, int | float | str | Mapping) and not isinstance(v, bool)}


class _OutboxWriter:
    """The one thread that writes transports' readings and rejects into the outbox, in the
    order they came (per device, and overall)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, work: Callable[..., None], *args: Any) -> None:
        self._queue.put((work, args))

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then end."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the outbox writer did not finish in %.0f s: %d item(s) not "
                         "written", timeout, self._queue.qsize())

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            work, args = item
            try:
                work(*args)
            except Exception:
                logger.exception("writing to the outbox failed")


class DeviceRunner:
    """Reads every configured device: one transport per device, in one event-loop thread.

    `drivers` is the registry's (`registry.drivers[device.driver]`); `factory` is
    `telemon.transports.make_transport` unless a test injects one; `comports`,
    `usb_interval` and `probe_timeout` go to the shared USB discovery; `clock` is put on
    every reading as its received time. Statuses are written to `status_path` (JSON) every
    `status_every` seconds and whenever one changes.
    """

    def __init__(self, gateway: Gateway, devices: Sequence[DeviceConfig],
                 drivers: Mapping[str, Driver], *, tz: tzinfo | None,
                 clock: Callable[[], datetime] | None = None,
                 factory: Callable[..., Any] | None = None,
                 comports: Callable[[], Iterable[Any]] | None = None,
                 usb_interval: float = 2.0, probe_timeout: float = 10.0,
                 backoff: Callable[[], Backoff] | None = None,
                 status_path: Path | None = None, status_every: float = 2.0,
                 watch_every: float = 0.25) -> None:
        self.gateway, self.tz = gateway, tz
        self.clock = clock or (lambda: datetime.now(UTC))
        self.drivers = dict(drivers)
        self.states = [DeviceState(config=d, driver=drivers.get(d.driver)) for d in devices]
        self.factory = factory
        self.comports, self.usb_interval = comports, usb_interval
        self.probe_timeout = probe_timeout
        self.backoff = backoff
        self.status_path, self.status_every = status_path, status_every
        self.watch_every = watch_every
        self.usb: Any = None
        self._writer: _OutboxWriter | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quit: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._final_written = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("devices already started")
        self._writer = _OutboxWriter(f"outbox-writer-{self.gateway.gateway}")
        self._thread = threading.Thread(target=self._main, name=f"devices-{self.gateway.gateway}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every transport (each flushes what it holds), write what is queued into the
        outbox, and write the final statuses. Safe to call twice."""
        with self._lock:
            if self._stopped or self._thread is None:
                return
            self._stopped = True
        loop, quit_ = self._loop, self._quit
        if loop is not None and quit_ is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(quit_.set)
        logger.info("stopping %d device transport(s)", len(self.states))
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("device transports did not stop in %.0f s", timeout)
        if self._writer is not None:
            self._writer.close()
        logger.info("devices stopped: %s", ", ".join(
            f"{s.config.device} {s.stored} stored, {s.refused} refused, "
            f"{s.quarantined} quarantined" for s in self.states) or "none")
        for state in self.states:
            self._note(state)
        self._write_status(running=False)

    def summary(self) -> list[dict[str, Any]]:
        """A short form of each device's status, for the retained status message."""
        out = []
        for state in self.states:
            counters = _counters(getattr(state.transport, "counters", None))
            out.append({"device": state.config.device, "driver": state.config.driver,
                        "transport": state.kind, "status": state.current_status(),
                        **{k: counters[k] for k in ("connections", "frames", "observations",
                                                    "rejected") if k in counters},
                        "refused": state.refused})
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        for state in self.states:
            self._note(state)
        return [state.snapshot() for state in self.states]

    # -- the event loop -------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:
            logger.exception("the device runtime failed")
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from telemon.transports import make_transport, needs_discovery
        from telemon.usb import UsbDiscovery

        self._loop = asyncio.get_running_loop()
        self._quit = asyncio.Event()
        factory = self.factory or make_transport
        if self._stopped:
            self._quit.set()
        if any(s.driver is not None and needs_discovery(s.driver, s.config)
               for s in self.states):
            self.usb = UsbDiscovery(comports=self.comports, interval=self.usb_interval,
                                    probe_timeout=self.probe_timeout,
                                    drivers=tuple(self.drivers.values()))
        for state in self.states:
            if state.driver is None:
                state.error = f"driver {state.config.driver} is not installed"
                logger.error("device %s: %s", state.config.device, state.error)
                continue
            try:
                state.transport = factory(
                    state.driver, state.config, gateway_id=self.gateway.gateway, tz=self.tz,
                    submit=self._submitter(state), reject=self._rejecter(state),
                    clock=self.clock, usb=self.usb,
                    backoff=self.backoff() if self.backoff else None)
            except Exception as exc:  # one device's problem must not stop the others
                state.error = f"cannot start its {state.kind} transport: {exc}"
                logger.exception("device %s: %s", state.config.device, state.error)
        tasks = [asyncio.ensure_future(self._supervise(s)) for s in self.states
                 if s.transport is not None]
        if self.usb is not None:
            tasks.append(asyncio.ensure_future(self.usb.run()))
        watcher = asyncio.ensure_future(self._watch())
        started = [s.config.device for s in self.states if s.transport is not None]
        logger.info("reading %d device(s): %s", len(started), ", ".join(started) or "none")
        self._ready.set()
        try:
            await self._quit.wait()
        finally:
            for state in self.states:
                if state.transport is not None:
                    with contextlib.suppress(Exception):
                        state.transport.stop()
            if self.usb is not None:
                self.usb.stop()
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=5.0)
                for task in late:
                    task.cancel()
                if late:
                    logger.error("%d transport(s) did not stop in 5 s: cancelled", len(late))
                    await asyncio.wait(late, timeout=2.0)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _supervise(self, state: DeviceState) -> None:
        """Run a transport; one that crashes or ends by itself is restarted after a
        backoff."""
        assert self._quit is not None
        retry = Backoff(base=1.0, cap=60.0)
        while not self._quit.is_set():
            try:
                await state.transport.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.crashes += 1
                state.error = f"crashed: {type(exc).__name__}: {exc}"
                logger.exception("device %s: its %s transport crashed; restarting",
                                 state.config.device, state.kind)
            else:
                if self._quit.is_set():
                    return
                logger.error("device %s: its %s transport ended by itself; restarting",
                             state.config.device, state.kind)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quit.wait(), retry.next())

    async def _watch(self) -> None:
        """Notice status changes (tell the publisher; write the file) and write the file
        every `status_every` seconds anyway."""
        due = 0.0
        while True:
            changed = False
            for state in self.states:
                changed |= self._note(state)
            now = time.monotonic()
            if changed:
                self.gateway.devices_changed()
            if changed or now >= due:
                await asyncio.get_running_loop().run_in_executor(None, self._write_status,
                                                                 True)
                due = now + self.status_every
            await asyncio.sleep(self.watch_every)

    def _note(self, state: DeviceState) -> bool:
        status = state.current_status()
        if status == state.status:
            return False
        state.status, state.since = status, datetime.now(UTC)
        return True

    # -- what transports call ---------------------------------------------------------------

    def _submitter(self, state: DeviceState) -> Callable[[list[Any]], None]:
        def submit(observations: list[Any]) -> None:
            assert self._writer is not None
            self._writer.put(self._store, state, list(observations))
        return submit

    def _rejecter(self, state: DeviceState) -> Callable[[str, str, bytes], None]:
        def reject(source: str, reason: str, raw: bytes) -> None:
            assert self._writer is not None
            self._writer.put(self._quarantine, state, source, reason, bytes(raw))
        return reject

    def _store(self, state: DeviceState, observations: list[Any]) -> None:
        result = self.gateway.submit(observations)
        state.stored += len(result.stored)
        state.duplicates += len(result.duplicates)
        if result.refused:
            state.refused += len(result.refused)
            logger.error("OUTBOX FULL: %d reading(s) from device %s (%s) refused and lost "
                         "(%d from it so far): the device cannot be asked to send them again; "
                         "the outbox empties when the broker is reachable",
                         len(result.refused), state.config.device, state.config.driver,
                         state.refused)

    def _quarantine(self, state: DeviceState, source: str, reason: str, raw: bytes) -> None:
        where = f"driver:{state.config.driver}:{state.config.device}" + (
            f":{source}" if source else "")
        self.gateway.reject(where, reason, raw)
        state.quarantined += 1

    # -- the status file ----------------------------------------------------------------------

    def _write_status(self, running: bool) -> None:
        with self._status_lock:  # the final write (running false) is the last one
            if self.status_path is None or self._final_written:
                return
            self._final_written = not running
            document = {"v": STATUS_VERSION, "gateway": self.gateway.gateway,
                        "pid": os.getpid(), "running": running,
                        "updated": datetime.now(UTC).isoformat(),
                        "devices": [state.snapshot() for state in self.states]}
            try:
                write_atomically(self.status_path, json.dumps(document, indent=1).encode(),
                                 durable=False)
            except OSError as exc:
                logger.warning("cannot write the device status file %s: %s",
                               self.status_path, exc)


def read_device_status(path: Path) -> dict[str, Any] | None:
    """The last device status file a gateway wrote (None when there is none, or it cannot
    be read)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("v") == STATUS_VERSION \
        else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the command line ---------------------------------------------------------------------

def _load_config(path: str) -> EdgeConfig:
    return load_or_exit(path, EdgeConfig)


@click.group(name="edge", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The edge config file (TOML; see examples/edge.toml).")
@click.pass_context
def edge(ctx: click.Context, config_path: str | None) -> None:
    """Run the edge gateway: keep every reading in the outbox and forward it to the broker.

    With --config and no command, the gateway runs until SIGTERM or Ctrl-C. Readings are
    deleted from the outbox only after the broker has acknowledged them.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("give the edge config: telemon edge --config edge.toml")
    config = _load_config(config_path)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gateway = Gateway.from_config(config)
    except (LookupError, OSError, sqlite3.Error) as exc:
        click.echo(f"{config_path}: cannot start the gateway: {exc}", err=True)
        sys.exit(2)
    with gateway:
        gateway.run_devices(config.devices, plugin_manager.get()[1].drivers,
                            tz=config.timezone)
        gateway.run()


@edge.command(name="status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The edge config file (TOML).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def edge_status(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Show the gateway's devices, their last readings and the outbox (depth, use of its
    disk bound, refused readings, last delivery). Reads the outbox file; needs no broker.

    Exit code 1 while the outbox is full (readings are being refused).
    """
    config_path = config_path or (ctx.parent.params.get("config_path") if ctx.parent else None)
    if config_path is None:
        raise click.UsageError("give the edge config: telemon edge status --config edge.toml")
    config = _load_config(config_path)
    path = outbox_path(config.storage.path)
    try:
        outbox = Outbox(path, max_megabytes=config.outbox.max_megabytes, readonly=True)
    except FileNotFoundError:
        stats, readings = None, []
    else:
        with outbox:
            stats, readings = outbox.stats(), outbox.last_readings()
    by_device: dict[str, list[LastReading]] = {}
    for reading in readings:
        by_device.setdefault(reading.device, []).append(reading)
    now = datetime.now(UTC)
    transports = read_device_status(path.parent / DEVICE_STATUS_FILE)
    if as_json:
        document = _status_json(config, path, stats, by_device)
        document["transports"] = _transports_json(config, transports)
        for device, entry in zip(config.devices, document["devices"], strict=True):
            entry["transport"] = _device_transport(transports, device.device)
        click.echo(json.dumps(document, indent=2))
    else:
        _print_status(config, path, stats, by_device, now)
        _print_transports(config, transports, now)
    if stats is not None and stats.full:
        sys.exit(1)


def _status_json(config: EdgeConfig, path: Path, stats: OutboxStats | None,
                 by_device: dict) -> dict[str, Any]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "gateway": config.gateway, "organisation": config.organisation,
        "broker": config.broker.url, "outbox_file": str(path),
        "outbox": None if stats is None else {
            "state": "outbox-full" if stats.full else "ok", "depth": stats.depth,
            "used_bytes": stats.used_bytes, "max_bytes": stats.max_bytes,
            "oldest_stored": iso(stats.oldest_stored), "full_since": iso(stats.full_since),
            "refused": stats.refused, "delivered": stats.delivered,
            "last_delivery": iso(stats.last_delivery), "quarantined": stats.quarantined,
            "quarantine_refused": stats.quarantine_refused},
        "devices": [{
            "device": d.device, "patient": d.patient, "driver": d.driver,
            "last_readings": [{
                "id": r.last_id, "code": r.code, "display": r.display, "value": r.summary,
                "effective": iso(r.effective), "stored": iso(r.stored),
                "readings": r.readings} for r in by_device.get(d.device, [])]}
            for d in config.devices],
    }


def _print_status(config: EdgeConfig, path: Path, stats: OutboxStats | None,
                  by_device: dict, now: datetime) -> None:
    echo = click.echo
    echo(f"gateway   {config.gateway} (organisation {config.organisation})")
    echo(f"broker    {config.broker.url}")
    echo(f"outbox    {path}")
    if stats is None:
        echo("  no outbox yet: the gateway has not run with this storage path")
    else:
        if stats.full:
            click.secho(f"  state          OUTBOX FULL since {_when(stats.full_since, now)}: "
                        "new readings are being refused", fg="red", bold=True)
        else:
            echo("  state          ok")
        echo(f"  waiting        {stats.depth:,} reading(s)"
             + (f", oldest stored {_when(stats.oldest_stored, now)}" if stats.depth else ""))
        echo(f"  disk           {_size(stats.used_bytes)} of {_size(stats.max_bytes)} "
             f"({100 * stats.used_share:.1f} % of the bound)")
        echo(f"  refused        {stats.refused:,} reading(s)")
        echo(f"  delivered      {stats.delivered:,} reading(s), last delivery "
             f"{_when(stats.last_delivery, now)}")
        echo(f"  quarantine     {stats.quarantined:,} frame(s)"
             + (f" (+{stats.quarantine_refused:,} not kept: outbox full)"
                if stats.quarantine_refused else ""))
    echo("devices")
    if not config.devices:
        echo("  none configured")
    rows = [("DEVICE", "PATIENT", "DRIVER", "LAST READINGS (device clock)")]
    for d in config.devices:
        lines = [f"{r.display} {r.summary} at "
                 f"{r.effective.astimezone(config.timezone):%Y-%m-%d %H:%M %z}, stored "
                 f"{_ago(r.stored, now)}" for r in by_device.get(d.device, [])]
        rows.append((d.device, d.patient, d.driver, lines[0] if lines else "none yet"))
        rows += [("", "", "", line) for line in lines[1:]]
    if config.devices:
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            echo("  " + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
                 + "  " + row[3])


def _device_transport(transports: dict[str, Any] | None, device: str) -> dict | None:
    if transports is None:
        return None
    return next((d for d in transports.get("devices", []) if d.get("device") == device), None)


def _transports_json(config: EdgeConfig, transports: dict[str, Any] | None) -> dict | None:
    if transports is None:
        return None
    return {"file": str(outbox_path(config.storage.path).parent / DEVICE_STATUS_FILE),
            "updated": transports.get("updated"), "pid": transports.get("pid"),
            "gateway_running": bool(transports.get("running"))
            and _alive(transports.get("pid"))}


def _print_transports(config: EdgeConfig, transports: dict[str, Any] | None,
                      now: datetime) -> None:
    """Each device's transport: status since when, why, and its counters."""
    echo = click.echo
    if transports is None:
        echo("transports")
        echo("  no device status yet: the gateway has not run its devices with this storage "
             "path")
        return
    updated = _time_or_none(transports.get("updated"))
    if transports.get("running") and _alive(transports.get("pid")):
        state = f"gateway running (pid {transports.get('pid')})"
    elif transports.get("running"):
        state = "gateway NOT running: it ended without a clean stop"
    else:
        state = "gateway stopped"
    echo(f"transports (as of {_when(updated, now)}; {state})")
    if not config.devices:
        echo("  none configured")
        return
    rows = [("DEVICE", "TRANSPORT", "STATUS", "CONN", "FRAMES", "OBS", "REJECTED",
             "REFUSED")]
    notes: list[tuple[str, str]] = []
    for d in config.devices:
        entry = _device_transport(transports, d.device)
        if entry is None:
            rows.append((d.device, "?", "unknown (not run yet)", "", "", "", "", ""))
            continue
        counters, outbox = entry.get("counters") or {}, entry.get("outbox") or {}
        status = str(entry.get("status", "?"))
        since = _time_or_none(entry.get("since"))
        rows.append((d.device, f"{entry.get('transport', '?')}", f"{status}"
                     + (f" ({_ago(since, now)})" if since else ""),
                     *(str(counters.get(k, "-")) for k in ("connections", "frames",
                                                          "observations", "rejected")),
                     str(outbox.get("refused", 0))))
        address = entry.get("address")
        reason = entry.get("reason") or ""
        if address and not reason.startswith(str(address)):
            reason = f"{address}: {reason}" if reason else str(address)
        if reason:
            notes.append((d.device, reason))
        framer = {k: v for k, v in (counters.get("framer") or {}).items() if v}
        if framer:
            notes.append((d.device, "framer " + ", ".join(f"{k} {v:,}" for k, v in
                                                            framer.items())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        echo("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for device, note in notes:
        echo(f"  {device}: {note}")


def _time_or_none(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _size(size: int) -> str:
    return f"{size / 1024:.0f} kB" if size < 2**20 else f"{size / 2**20:.1f} MB"


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} days ago"


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_ago(moment, now)})"
