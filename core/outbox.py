"""The edge gateway's outbox: every reading, durably, until the broker has acknowledged it.

One SQLite file of its own (`outbox.sqlite` in the edge's storage folder), created owner-only
(0600; SQLite gives its -wal and -shm files the same mode), in WAL mode with
`synchronous = FULL`: when `put` returns, the readings it accepted are in the fsynced log and
survive a killed process and a power cut. The gateway deletes a reading only when the broker
has acknowledged (MQTT PUBACK) the message that carried it.

Tables:

* `outbox`: one row per record, `seq` (AUTOINCREMENT, so never reused even after the outbox
  empties: the publisher's cursor relies on it), the record's `id` (UNIQUE: a reading a
  device sends again, as meters re-send their memory on every connection, is stored once
  while it waits), its `device` (the order key), its telemon.wire JSON and size, and when it
  was stored. Readings leave in `seq` order, which keeps the order of each device.
* `quarantine`: frames a driver rejected, with their source, the reason and the exact bytes,
  kept for inspection (never sent anywhere by the outbox).
* `last_readings`: the last reading stored per device and code, for `telemon edge status`.
* `counters`: refused readings, deliveries, when the outbox became full, the last delivery.

Disk bound (`[outbox] max_megabytes`). Measured as the pages SQLite actually uses
(page_count - freelist_count), so it covers rows, indexes, quarantine and bookkeeping; the
file never grows past the bound by more than a page or two, plus the write-ahead log, which
`journal_size_limit` truncates to 4 MiB after each checkpoint. Policy when a reading does not
fit: **keep what is stored, refuse the new reading, loudly.** The oldest readings are the
clinical history the central lacks; dropping them silently (or evicting "less important"
data) would turn an outage into an invisible gap in a patient's record. So:

* `put` stores records in order until the next one does not fit, and refuses that one and
  every later one of the call (a later, smaller one must not overtake it: order per device).
  `PutResult.refused` names them, so the device transport can leave them on the device (a
  meter keeps its memory until it is told the readings were taken; re-sent readings have
  the same id) instead of confirming them.
* The refusals are counted (persisted), the outbox is marked full (`full_since`), the
  gateway's retained MQTT status becomes `"outbox-full"`, it logs an error, and
  `telemon edge status` shows it (and exits 1).
* The mark clears once deliveries bring the use below 90 % of the bound (hysteresis, so the
  status does not flap), or when the outbox is opened with a larger bound.
* Quarantine shares the bound: when full, a rejected frame is counted but not stored.

Thread-safe: one connection, every method under one lock (device transports call `put`
from their threads while the publisher thread peeks and deletes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from telemon import wire
from telemon.models import Observation, Record

logger = logging.getLogger(__name__)

FILENAME = "outbox.sqlite"
BUSY_TIMEOUT_MS = 5000
WAL_LIMIT_BYTES = 4 * 1024 * 1024
LOW_WATER = 0.9
"""The full mark clears when use drops below this share of the bound."""
ROW_SLACK = 256
"""Bytes a row costs on top of its payload (key, index entry, cell header), as a margin."""

_SCHEMA = [
    # version 1
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        device TEXT NOT NULL,          -- the order key ('' for records without a device)
        kind TEXT NOT NULL,            -- the wire record type
        stored TEXT NOT NULL,          -- gateway clock, UTC ISO 8601
        payload BLOB NOT NULL,         -- the record's telemon.wire JSON
        size INTEGER NOT NULL
    );
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received TEXT NOT NULL,
        source TEXT NOT NULL,          -- "driver:<name>:<device>", "ble:<uuid>", ...
        reason TEXT NOT NULL,
        raw BLOB NOT NULL,             -- the exact bytes, kept for inspection
        size INTEGER NOT NULL
    );
    CREATE TABLE last_readings (
        device TEXT NOT NULL,
        code TEXT NOT NULL,            -- system|code
        display TEXT NOT NULL,         -- "Blood pressure"
        patient TEXT NOT NULL,
        last_id TEXT NOT NULL,
        summary TEXT NOT NULL,         -- "120/80/93 mm[Hg]", "97 %"
        effective TEXT NOT NULL,       -- device clock, UTC
        stored TEXT NOT NULL,          -- gateway clock, UTC
        readings INTEGER NOT NULL,     -- stored since the outbox was created
        PRIMARY KEY (device, code)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value);
    """,
]


class Entry(NamedTuple):
    """One waiting record as the publisher sees it."""

    seq: int
    id: str
    device: str
    payload: bytes


@dataclass(frozen=True)
class PutResult:
    """What `put` did with each record it was given."""

    stored: tuple[str, ...]  # new in the outbox
    duplicates: tuple[str, ...]  # already waiting in the outbox (stored once)
    refused: tuple[str, ...]  # not stored: the outbox is full (see the module docstring)

    @property
    def accepted(self) -> bool:
        """Every record is safe in the outbox (stored now or before)."""
        return not self.refused


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # records waiting
    payload_bytes: int  # their wire size
    used_bytes: int  # what the file uses (the bound applies to this)
    max_bytes: int
    oldest_stored: datetime | None  # when the oldest waiting record was stored
    full_since: datetime | None  # set while the outbox is full
    refused: int  # records refused since the outbox was created
    delivered: int  # records acknowledged by the broker since then
    last_delivery: datetime | None
    quarantined: int  # frames kept in quarantine
    quarantine_refused: int  # rejected frames not kept because the outbox was full

    @property
    def full(self) -> bool:
        return self.full_since is not None

    @property
    def used_share(self) -> float:
        return self.used_bytes / self.max_bytes if self.max_bytes else 0.0


@dataclass(frozen=True)
class LastReading:
    device: str
    code: str  # "system|code"
    display: str
    patient: str
    last_id: str
    summary: str
    effective: datetime
    stored: datetime
    readings: int


@dataclass(frozen=True)
class Quarantined:
    id: int
    received: datetime
    source: str
    reason: str
    raw: bytes


class Outbox:
    """The durable queue of records waiting for the broker's acknowledgement."""

    def __init__(self, path: str | os.PathLike[str], *, max_megabytes: float = 512,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_megabytes * 1024 * 1024)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no outbox here (has the gateway run?)")
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._page_size = self._pragma("page_size")
            return
        _create_owner_only(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (journal mode {mode})")
        # FULL: with WAL, NORMAL survives a killed process but may lose the last commits on a
        # power cut; a reading `put` accepted must survive both (the device may have been
        # told it was taken).
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        self._page_size = self._pragma("page_size")
        self._migrate()
        with self._write():
            if self._counter("full_since") and self._used() < LOW_WATER * self.max_bytes:
                self._set_counter("full_since", None)  # opened with a larger bound

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------

    def put(self, records: Iterable[Record]) -> PutResult:
        """Store records (each with an `id`) in one transaction, in the order given.

        A record whose id is already waiting is stored once. When the outbox is full, the
        first record that does not fit and every one after it are refused (see the module
        docstring); the rest are durable when this returns."""
        rows = []
        for record in records:
            payload = wire.encode(record)
            rows.append((record.id, getattr(record, "device", "") or "",
                         type(record).__struct_config__.tag, payload, record))
        if not rows:
            return PutResult((), (), ())
        now = _utc(datetime.now(UTC))
        stored: list[str] = []
        duplicates: list[str] = []
        refused: list[str] = []
        with self._write():
            used = self._used()
            need = sum(len(r[3]) + ROW_SLACK for r in rows)
            checked = used + 2 * need > self.max_bytes  # near the bound: check row by row
            taken = []
            for id_, device, kind, payload, record in rows:
                if checked and (refused or self._used() + len(payload) + ROW_SLACK
                                > self.max_bytes):
                    # once one is refused, so is every later one (order per device); one
                    # already waiting is a duplicate (it costs nothing)
                    (duplicates if self._waiting(id_) else refused).append(id_)
                    continue
                cursor = self._db.execute(
                    "INSERT INTO outbox (id, device, kind, stored, payload, size) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (id_, device, kind, now, payload, len(payload)))
                if cursor.rowcount:
                    stored.append(id_)
                    taken.append(record)
                else:
                    duplicates.append(id_)
            if refused:
                self._add_counter("refused", len(refused))
                if not self._counter("full_since"):
                    self._set_counter("full_since", now)
            self._note_devices(taken, now)
        if refused:
            logger.error("outbox full (%s): refused %d reading(s); keeping the %d waiting",
                         _mb(self.max_bytes), len(refused), self._depth())
        return PutResult(tuple(stored), tuple(duplicates), tuple(refused))

    def delete(self, seqs: Iterable[int]) -> int:
        """Remove delivered records (by seq) in one transaction; return how many went."""
        params = [(seq,) for seq in seqs]
        if not params:
            return 0
        now = _utc(datetime.now(UTC))
        with self._write():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", params)
            gone = self._db.total_changes - before
            self._add_counter("delivered", gone)
            self._set_counter("last_delivery", now)
            if self._counter("full_since") and self._used() < LOW_WATER * self.max_bytes:
                self._set_counter("full_since", None)
                logger.warning("outbox no longer full: %s of %s used",
                               _mb(self._used()), _mb(self.max_bytes))
        return gone

    def quarantine(self, *, source: str, reason: str, raw: bytes) -> int | None:
        """Keep input a driver rejected, with where it came from and why; its id, or None
        when the outbox is full (then it is only counted)."""
        raw = bytes(raw)
        now = _utc(datetime.now(UTC))
        with self._write():
            if self._used() + len(raw) + len(reason) + ROW_SLACK > self.max_bytes:
                self._add_counter("quarantine_refused", 1)
                full = True
            else:
                cursor = self._db.execute(
                    "INSERT INTO quarantine (received, source, reason, raw, size) "
                    "VALUES (?, ?, ?, ?, ?)", (now, source, reason, raw, len(raw)))
                full = False
        if full:
            logger.error("outbox full: quarantined frame from %s not kept (%s)", source, reason)
            return None
        return cursor.lastrowid

    # --- reading ----------------------------------------------------------------------------

    def peek(self, n: int, after: int = 0) -> list[Entry]:
        """Up to `n` waiting records with seq above `after`, oldest first."""
        with self._lock:
            return [Entry(*row) for row in self._db.execute(
                "SELECT seq, id, device, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, n))]

    def stats(self) -> OutboxStats:
        with self._lock:
            depth, payload, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(stored) FROM outbox").fetchone()
            quarantined = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            return OutboxStats(
                depth=depth, payload_bytes=payload, used_bytes=self._used(),
                max_bytes=self.max_bytes, oldest_stored=_time(oldest),
                full_since=_time(self._counter("full_since")),
                refused=self._counter("refused") or 0,
                delivered=self._counter("delivered") or 0,
                last_delivery=_time(self._counter("last_delivery")),
                quarantined=quarantined,
                quarantine_refused=self._counter("quarantine_refused") or 0)

    def is_full(self) -> bool:
        """Whether the outbox is refusing readings (cheap: one counter)."""
        with self._lock:
            return bool(self._counter("full_since"))

    def last_readings(self) -> list[LastReading]:
        """The last reading stored for each device and code: by device, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT device, code, display, patient, last_id, summary, effective, stored, "
                "readings FROM last_readings ORDER BY device, effective DESC, rowid").fetchall()
        return [LastReading(d, c, name, p, i, s, _time(e), _time(st), n)
                for d, c, name, p, i, s, e, st, n in rows]

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """The most recent quarantined frames, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, received, source, reason, raw FROM quarantine ORDER BY id DESC "
                "LIMIT ?", (limit,)).fetchall()
        return [Quarantined(i, _time(r), s, why, raw) for i, r, s, why, raw in rows]

    # --- internals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: the write lock up front), under the lock."""
        if self.readonly:
            raise PermissionError(f"{self.path}: opened read-only")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._write():
            version = self._pragma("user_version")
            if version > len(_SCHEMA):
                raise RuntimeError(f"{self.path}: outbox schema version {version} is newer "
                                   f"than this telemon knows ({len(_SCHEMA)})")
            for number, script in enumerate(_SCHEMA[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    def _pragma(self, name: str) -> int:
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    def _used(self) -> int:
        return (self._pragma("page_count") - self._pragma("freelist_count")) * self._page_size

    def _waiting(self, id_: str) -> bool:
        return bool(self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (id_,)).fetchone())

    def _depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def _counter(self, name: str) -> int | str | None:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _set_counter(self, name: str, value: int | str | None) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                         (name, value))

    def _add_counter(self, name: str, amount: int) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                         (name, amount))

    def _note_devices(self, records: Sequence[Record], now: str) -> None:
        last: dict[tuple[str, str], tuple[Observation, int]] = {}
        for record in records:
            if isinstance(record, Observation):
                key = (record.device, f"{record.code.system}|{record.code.code}")
                last[key] = (record, last[key][1] + 1 if key in last else 1)
        for (device, code), (obs, count) in last.items():
            self._db.execute(
                "INSERT INTO last_readings (device, code, display, patient, last_id, summary, "
                "effective, stored, readings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device, code) DO UPDATE SET display = excluded.display, "
                "patient = excluded.patient, last_id = excluded.last_id, "
                "summary = excluded.summary, effective = excluded.effective, "
                "stored = excluded.stored, readings = readings + excluded.readings",
                (device, code, obs.code.display or obs.code.code, obs.patient, obs.id,
                 summarise(obs), _utc(obs.effective), now, count))


def summarise(obs: Observation) -> str:
    """A reading in a few characters, with its unit: "120/80/93 mm[Hg]", "97 %"."""
    if obs.components:
        values = "/".join(str(c.value) if c.value is not None else str(c.absent)
                          for c in obs.components)
        units = {c.unit for c in obs.components}
        return f"{values} {units.pop()}" if len(units) == 1 else values
    if obs.value is not None:
        return f"{obs.value} {obs.unit}"
    return f"({obs.absent})"


def outbox_path(storage: str | os.PathLike[str]) -> Path:
    """The outbox file in an edge's storage folder."""
    return Path(storage) / FILENAME


def _create_owner_only(path: Path) -> None:
    """Create the file (and its folder) readable by the owner only; never loosen an
    existing one. The folder entry is synced so the new file survives a power cut."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _time(text: object) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
