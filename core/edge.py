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

`telemon edge --config edge.toml` runs a gateway; `telemon edge status --config edge.toml`
reads the outbox file (no broker needed): devices, last readings, depth, last delivery.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sqlite3
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as paho

from telemon import mqtt, plugin_manager
from telemon.backoff import Backoff
from telemon.config import BrokerConfig, ConfigError, EdgeConfig
from telemon.drivers import Driver, ParseContext
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

    def stop(self, grace: float = 2.0) -> None:
        """Stop publishing: wait up to `grace` seconds for outstanding acknowledgements, say
        "offline" on the status topic and disconnect. Unacknowledged records stay in the
        outbox for the next start."""
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
                signal.signal(signum, lambda *_: self._stop.set())
        self.start()
        logger.info("gateway %s publishing to %s:%d as %s", self.gateway, self.broker.host,
                    self.broker.port, self.obs_topic)
        try:
            while not self._stop.wait(0.5):
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
        try:
            if self._client is None:
                will = (self.status_topic, mqtt.status_payload("offline", self.gateway))
                self._client = mqtt.make_client(self.broker, self.client_id,
                                                protocol=self.protocol, will=will)
                self._client.max_inflight_messages_set(0)  # bounded here, by self._window
                self._client.on_connect = self._on_connect
                self._client.on_disconnect = self._on_disconnect
                self._client.on_publish = self._on_publish
                self._client.connect(**mqtt.connect_arguments(self.broker, self.protocol))
            else:
                self._client.reconnect()  # paho resends unacknowledged messages on CONNACK
            return True
        except ssl.SSLError as exc:  # a configuration problem, not an outage: say so
            logger.error("TLS with broker %s:%d failed (the broker's certificate must be "
                         "signed by a CA the system trusts): %s", self.broker.host,
                         self.broker.port, exc)
            return False
        except OSError as exc:
            logger.info("broker %s:%d unreachable: %s", self.broker.host, self.broker.port, exc)
            return False
        except LookupError as exc:  # the password's environment variable went away
            logger.error("broker password: %s", exc)
            return False

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
        if state != self._state or now >= self._status_due:
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
        info = self._client.publish(self.status_topic, mqtt.status_payload(
            state, self.gateway, outbox=stats.depth, outbox_bytes=stats.used_bytes,
            outbox_max_bytes=stats.max_bytes, refused=stats.refused,
            quarantined=stats.quarantined), qos=1, retain=True)
        self._status_mids.add(info.mid)
        self._state = state
        self._status_due = now + self.status_every

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


# --- the command line ---------------------------------------------------------------------

def _load_config(path: str) -> EdgeConfig:
    from telemon.config import load

    _, registry = plugin_manager.get()
    try:
        config = load(path, registry)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{path}: {len(exc.problems)} problem(s)", err=True)
        sys.exit(2)
    if not isinstance(config, EdgeConfig):
        click.echo(f'{path}: role is "{config.role}", not "edge"', err=True)
        sys.exit(2)
    return config


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
    if as_json:
        click.echo(json.dumps(_status_json(config, path, stats, by_device), indent=2))
    else:
        _print_status(config, path, stats, by_device, now)
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
