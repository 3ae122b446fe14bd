"""Storage: one SQLite database through sqlite-utils.

The file is created owner-only (0600) and opened in WAL mode with foreign keys on. Its schema
is built by an ordered list of migrations (`MIGRATIONS`), each applied once, in its own
transaction together with its row in `_migrations`, so a crash part-way leaves nothing half
applied. Times are stored as fixed-width UTC ISO 8601 text (so text order is time order),
decimals as text (so 2.0 stays 2.0), structures as JSON, and every observation also keeps
its full wire form and its raw device bytes: nothing that arrived is ever lost.

Every write function is one transaction. To make several of them one transaction, wrap
them in `transaction(db)`; the inner ones then join the outer one, and `savepoint(db)` marks
a part that may fail alone.
Audit trails (alarm events, consent events, limit versions) are append-only: triggers
refuse to change or delete them.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pluggy
import sqlite_utils

from telemon import wire
from telemon.models import (
    Alarm,
    AlarmEvent,
    Code,
    ConsentEvent,
    Enrolment,
    Evaluation,
    LimitSet,
    LimitVersion,
    Observation,
    QuestionnaireResponse,
    Record,
)
from telemon.plugin_manager import PluginError, call_each

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
CENTRAL_DATABASE = "central.db"
"""The central's database file, in its config's storage.path folder."""

_json_encoder = msgspec.json.Encoder(decimal_format="number")  # as the wire: 2.0 stays 2.0


# --- opening ------------------------------------------------------------------------------


def open_database(path: str | os.PathLike[str], *,
                  pm: pluggy.PluginManager | None = None) -> sqlite_utils.Database:
    """Open (or create, owner-only) the database at `path`, bring its schema up to date and
    let the plugins of `pm` prepare their own tables. A plugin that fails is logged with its
    name; the database still opens."""
    if os.fspath(path) != ":memory:":
        with contextlib.suppress(FileExistsError):  # O_EXCL: never loosen an existing file
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite_utils.Database(path)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # wait for a concurrent writer
    db.execute("PRAGMA foreign_keys = ON")
    if db.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
        raise RuntimeError("this SQLite cannot enforce foreign keys")
    db.enable_wal()  # readers (the dashboard) never block the writer (ingest), and vice versa
    if db.journal_mode != "wal" and not db.memory:
        logger.warning("%s: WAL mode is not available here (journal mode %s)",
                       path, db.journal_mode)
    # FULL, not NORMAL: with WAL, NORMAL survives a killed process but may lose the last
    # commits on power loss, and the central acknowledges a message to the broker as soon as
    # it has committed it — a commit must therefore be on disk. WAL keeps FULL cheap: one
    # sync of the log per transaction, and writes are batched into transactions.
    db.execute("PRAGMA synchronous = FULL")
    # 64 MiB of page cache (SQLite's default is 2 MiB), taken only as pages are read: the
    # central inserts readings whose ids are random to the id index, so each commit touches
    # index pages all over the file; inserting 200,000 such rows 1,000 per commit went from
    # 12k to 15k rows/s with it here
    db.execute("PRAGMA cache_size = -65536")
    migrate(db)
    if pm is not None:
        _prepare_plugins(db, pm)
    return db


def central_database_path(storage_path: str | os.PathLike[str]) -> str:
    """The central's database file in a storage folder (the folder is made owner-only)."""
    os.makedirs(storage_path, mode=0o700, exist_ok=True)
    return os.path.join(storage_path, CENTRAL_DATABASE)


def _prepare_plugins(db: sqlite_utils.Database, pm: pluggy.PluginManager) -> None:
    """Call each plugin's prepare_database; log each failure with the plugin's name. A
    transaction a plugin leaves open is rolled back before the next plugin gets the database,
    so it can neither swallow the next plugin's tables nor every later write."""
    errors: list[PluginError] = []
    previous: str | None = None

    def offer(plugin: str) -> dict[str, sqlite_utils.Database]:
        nonlocal previous
        _roll_back_leftover(db, previous)
        previous = plugin
        return {"db": db}

    call_each(pm, "prepare_database", errors, offer)
    _roll_back_leftover(db, previous)
    for error in errors:
        logger.error("%s", error)


def _roll_back_leftover(db: sqlite_utils.Database, plugin: str | None) -> None:
    if plugin is not None and db.conn.in_transaction:
        logger.error("plugin %r: prepare_database left a transaction open; rolled it back",
                     plugin)
        db.rollback()


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One write transaction: commit if the block succeeds, roll back if anything raises.

    It starts with BEGIN IMMEDIATE, taking the write lock up front (waiting up to the busy
    timeout), so a transaction that reads and then writes (the next limit version) cannot
    fail half-way on a concurrent writer. Inside another transaction it simply joins it (the
    outer one commits or rolls back everything; `savepoint` marks a part that may fail
    alone). (Not `with db.conn:`: sqlite-utils commits a statement that opened an implicit
    transaction, which would split the block into several transactions.)
    """
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise



@contextlib.contextmanager
def savepoint(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Inside a transaction, a part that may fail alone: if the block raises, what it wrote
    is undone and the exception goes on; the rest of the transaction is kept."""
    if not db.conn.in_transaction:
        raise RuntimeError("a savepoint belongs inside a transaction")
    # one name for all: savepoints nest strictly here, and SQLite's RELEASE and ROLLBACK TO
    # act on the innermost of that name; a fixed statement stays in the statement cache
    # (the central takes one per message)
    db.conn.execute("SAVEPOINT part")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK TO part")
        db.conn.execute("RELEASE part")
        raise
    db.conn.execute("RELEASE part")


# --- migrations ---------------------------------------------------------------------------


def _append_only(table: str, columns: str = "") -> str:
    """Triggers refusing to update (the given columns of) or delete rows of `table`."""
    of = f" OF {columns}" if columns else ""
    return f"""
        CREATE TRIGGER {table}_no_update BEFORE UPDATE{of} ON {table}
        BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
        CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
        BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
    """


def m001_initial(db: sqlite_utils.Database) -> None:
    """The initial schema."""
    db.executescript("""
        CREATE TABLE observations (
            id TEXT PRIMARY KEY,
            patient TEXT NOT NULL,
            device TEXT NOT NULL,
            gateway TEXT NOT NULL,
            code_system TEXT NOT NULL,
            code TEXT NOT NULL,
            unit TEXT NOT NULL,
            value TEXT,                    -- the Decimal as text: the device's precision
            absent TEXT,                   -- why there is no value (AbsentReason)
            components TEXT NOT NULL,      -- JSON
            flags TEXT NOT NULL,           -- JSON
            context TEXT NOT NULL,         -- JSON
            raw BLOB NOT NULL,             -- the device's bytes
            driver TEXT NOT NULL,
            driver_version TEXT NOT NULL,
            effective TEXT NOT NULL,       -- device clock, UTC
            received TEXT NOT NULL,        -- central clock, UTC
            wire TEXT NOT NULL             -- the whole record, telemon.wire JSON
        );
        CREATE INDEX observations_patient_code_effective
            ON observations (patient, code, effective);

        CREATE TABLE questionnaire_responses (
            id TEXT PRIMARY KEY,
            patient TEXT NOT NULL,
            gateway TEXT NOT NULL,
            questionnaire TEXT NOT NULL,
            version TEXT NOT NULL,
            authored TEXT NOT NULL,
            received TEXT NOT NULL,
            answers TEXT NOT NULL,         -- JSON
            scores TEXT NOT NULL,          -- JSON
            wire TEXT NOT NULL
        );
        CREATE INDEX questionnaire_responses_patient_authored
            ON questionnaire_responses (patient, authored);

        CREATE TABLE alarms (
            id TEXT PRIMARY KEY,
            patient TEXT NOT NULL,
            module TEXT NOT NULL,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL CHECK (severity IN ('red', 'yellow', 'missing')),
            state TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
            raised TEXT NOT NULL,
            message TEXT NOT NULL,
            observations TEXT NOT NULL,    -- JSON: ids
            limits TEXT                    -- JSON: the LimitSet applied, if any
        );
        CREATE INDEX alarms_patient_raised ON alarms (patient, raised);

        CREATE TABLE alarm_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL REFERENCES alarms (id),
            at TEXT NOT NULL,
            action TEXT NOT NULL
                CHECK (action IN ('raised', 'acknowledged', 'resolved', 'escalated', 'note')),
            "by" TEXT NOT NULL,
            note TEXT NOT NULL
        );
        CREATE INDEX alarm_events_alarm_id ON alarm_events (alarm_id);

        CREATE TABLE enrolments (
            patient TEXT NOT NULL,
            organisation TEXT NOT NULL,
            modules TEXT NOT NULL,         -- JSON
            gateways TEXT NOT NULL,        -- JSON
            enrolled TEXT,
            PRIMARY KEY (patient, organisation)
        );

        CREATE TABLE limits (
            patient TEXT NOT NULL,
            code_system TEXT NOT NULL,
            code TEXT NOT NULL,
            code_display TEXT NOT NULL,
            version INTEGER NOT NULL,
            limits TEXT NOT NULL,          -- JSON: LimitSet
            valid_from TEXT NOT NULL,
            valid_to TEXT,                 -- set when the next version starts
            author TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (patient, code_system, code, version)
        );

        CREATE TABLE consent_events (
            id TEXT PRIMARY KEY,
            patient TEXT NOT NULL,
            purpose TEXT NOT NULL,
            granted INTEGER NOT NULL CHECK (granted IN (0, 1)),
            at TEXT NOT NULL,
            recorded_by TEXT NOT NULL
        );
        CREATE INDEX consent_events_patient_at ON consent_events (patient, at);

        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            received TEXT NOT NULL,
            reason TEXT NOT NULL,
            payload BLOB NOT NULL          -- the exact bytes, kept for inspection
        );
    """ + _append_only("alarm_events") + _append_only("consent_events")
        + _append_only("limits", "patient, code_system, code, code_display, version, limits, "
                                 "valid_from, author, reason"))


def m002_quarantine_source(db: sqlite_utils.Database) -> None:
    """Say where quarantined input came from ("mqtt:<topic>", "driver:<name>", "config")."""
    db.execute("ALTER TABLE quarantine ADD COLUMN source TEXT NOT NULL DEFAULT 'unknown'")


def m003_central(db: sqlite_utils.Database) -> None:
    """The central: patients (the only personal data), the audit log, each observation's
    evaluations with the limits in force, debounced alarms and exporters' cursors."""
    db.executescript("""
        CREATE TABLE patients (
            id TEXT PRIMARY KEY,           -- the pseudonym used on the wire
            organisation TEXT NOT NULL,
            display_name TEXT NOT NULL,    -- personal data: only ever in this database
            timezone TEXT NOT NULL,        -- IANA name: deadlines and display are local
            created TEXT NOT NULL
        );

        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,           -- who (a nurse, an administrator, "central")
            action TEXT NOT NULL,          -- what, e.g. "patient.add", "limits.set"
            patient TEXT,                  -- whom it concerns, if anyone
            detail TEXT NOT NULL           -- JSON: the change (before/after, reason)
        );
        CREATE INDEX audit_patient_at ON audit (patient, at);

        CREATE TABLE evaluations (
            observation TEXT NOT NULL REFERENCES observations (id),
            module TEXT NOT NULL,
            code TEXT NOT NULL,            -- measure key, e.g. "spo2", "bp_sys"
            severity TEXT NOT NULL CHECK (severity IN ('red', 'yellow', 'green')),
            limits TEXT NOT NULL,          -- JSON: the LimitSet in force
            limits_source TEXT NOT NULL,   -- "patient v<N>", "organisation" or "module"
            evaluated TEXT NOT NULL,
            PRIMARY KEY (observation, module, code)
        ) WITHOUT ROWID;

        ALTER TABLE alarms ADD COLUMN code TEXT;
        ALTER TABLE alarms ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
        -- debouncing: at most one unresolved alarm per patient, module and rule, even with
        -- several ingest processes writing at once
        CREATE UNIQUE INDEX alarms_one_unresolved ON alarms (patient, module, rule)
            WHERE state != 'resolved';
        CREATE INDEX alarms_state_severity ON alarms (state, severity);

        -- every alarm event, whoever made it (the central, a nurse's dashboard), waits here
        -- until the central has published it on the alarms topic and the broker took it
        CREATE TABLE alarm_outbox (
            event INTEGER PRIMARY KEY REFERENCES alarm_events (id),
            alarm_id TEXT NOT NULL,
            claimed_by TEXT,               -- the central process publishing it
            claimed_at TEXT
        );
        CREATE TRIGGER alarm_events_to_outbox AFTER INSERT ON alarm_events
        BEGIN INSERT INTO alarm_outbox (event, alarm_id) VALUES (new.id, new.alarm_id); END;

        CREATE TABLE export_cursors (
            exporter TEXT NOT NULL,
            feed TEXT NOT NULL,            -- the table it follows, e.g. "observations"
            position INTEGER NOT NULL,     -- the last rowid delivered
            updated TEXT NOT NULL,
            PRIMARY KEY (exporter, feed)
        );
    """ + _append_only("audit"))


def m004_nursing(db: sqlite_utils.Database) -> None:
    """The nurse dashboard (telemon.nursing): who is on a patient, when a patient was
    contacted, how far a green patient's readings have been reviewed, and an index that
    finds each patient's unresolved alarms for the overview without reading resolved ones."""
    db.executescript("""
        CREATE TABLE assignments (
            patient TEXT PRIMARY KEY REFERENCES patients (id),
            nurse TEXT NOT NULL,
            since TEXT NOT NULL
        );

        CREATE TABLE contacts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            patient TEXT NOT NULL REFERENCES patients (id),
            at TEXT NOT NULL,
            nurse TEXT NOT NULL,
            note TEXT NOT NULL
        );
        CREATE INDEX contacts_patient_at ON contacts (patient, at);

        CREATE TABLE reviews (
            patient TEXT PRIMARY KEY REFERENCES patients (id),
            upto INTEGER NOT NULL,         -- the last observation (rowid) reviewed
            at TEXT NOT NULL,
            nurse TEXT NOT NULL
        );

        CREATE INDEX alarms_unresolved ON alarms (patient, severity, raised)
            WHERE state != 'resolved';
    """ + _append_only("contacts"))


def m005_security(db: sqlite_utils.Database) -> None:
    """Staff and their roles (telemon.roles): who may change what. A member leaving is
    deleted; the audit log keeps who added and removed them, and when."""
    db.executescript("""
        CREATE TABLE staff (
            name TEXT PRIMARY KEY,         -- as they sign changes (--by, TELEMON_USER)
            role TEXT NOT NULL CHECK (role IN ('nurse', 'team_lead', 'administrator')),
            added TEXT NOT NULL,
            added_by TEXT NOT NULL
        );
    """)


def m006_default_limits(db: sqlite_utils.Database) -> None:
    """The organisation's default limits per module and code (telemon limits defaults set,
    a team lead's right), versioned like a patient's own limits: a version is never
    overwritten, the current one ends when the next starts."""
    db.executescript("""
        CREATE TABLE default_limits (
            organisation TEXT NOT NULL,
            module TEXT NOT NULL,
            code_system TEXT NOT NULL,
            code TEXT NOT NULL,
            code_display TEXT NOT NULL,
            version INTEGER NOT NULL,
            limits TEXT NOT NULL,          -- JSON: LimitSet
            valid_from TEXT NOT NULL,
            valid_to TEXT,                 -- set when the next version starts
            author TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (organisation, module, code_system, code, version)
        );
    """ + _append_only("default_limits", "organisation, module, code_system, code, "
                                         "code_display, version, limits, valid_from, author, "
                                         "reason"))


def m007_ingest_speed(db: sqlite_utils.Database) -> None:
    """Faster ingest (benchmarks/test_ingest.py). The trend rules' series query reads only
    an index that holds everything it needs, in the order it asks for (no visit to each
    600-byte row, no sort). Evaluations become a plain table appended in arrival order with
    their key as a unique index, instead of a table clustered on the observation's random
    id, where every row (limits JSON included) was inserted at a random place."""
    db.executescript("""
        DROP INDEX observations_patient_code_effective;
        CREATE INDEX observations_series
            ON observations (patient, code, effective, id, code_system, value);

        CREATE TABLE evaluations_by_arrival (
            observation TEXT NOT NULL REFERENCES observations (id),
            module TEXT NOT NULL,
            code TEXT NOT NULL,            -- measure key, e.g. "spo2", "bp_sys"
            severity TEXT NOT NULL CHECK (severity IN ('red', 'yellow', 'green')),
            limits TEXT NOT NULL,          -- JSON: the LimitSet in force
            limits_source TEXT NOT NULL,   -- "patient v<N>", "organisation v<N>", "module"
            evaluated TEXT NOT NULL,
            UNIQUE (observation, module, code)
        );
        INSERT INTO evaluations_by_arrival
            SELECT observation, module, code, severity, limits, limits_source, evaluated
            FROM evaluations;
        DROP TABLE evaluations;
        ALTER TABLE evaluations_by_arrival RENAME TO evaluations;
    """)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    m001_initial,
    m002_quarantine_source,
    m003_central,
    m004_nursing,
    m005_security,
    m006_default_limits,
    m007_ingest_speed,
]
"""Applied in this order, each once. Append only; never edit one that has been released.
A migration runs inside a transaction, so it uses statements valid there (plain SQL DDL)."""


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations this database has not had yet, in order; return their names."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = []
    for migration in MIGRATIONS:
        name = migration.__name__
        with transaction(db):  # re-checked under the write lock: two processes may race
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                       [name, utc_text(datetime.now(UTC))])
        logger.info("database migration %s applied", name)
        applied.append(name)
    known = {m.__name__ for m in MIGRATIONS}
    unknown = [r[0] for r in db.execute("SELECT name FROM _migrations") if r[0] not in known]
    if unknown:
        logger.warning("database has migrations this telemon does not know (newer version?): "
                       "%s", ", ".join(sorted(unknown)))
    return applied


# --- writing ------------------------------------------------------------------------------


def store_observations(db: sqlite_utils.Database, observations: Iterable[Observation], *,
                       received: datetime | None = None) -> list[Observation]:
    """Store observations in one transaction; an id already stored is skipped (re-delivery
    is harmless). A record without a received time gets `received` (default: now, UTC).
    Return the new ones, as stored."""
    received = received or datetime.now(UTC)
    given = [obs if obs.received is not None else msgspec.structs.replace(obs, received=received)
             for obs in observations]
    if not given:
        return []
    with transaction(db):
        # one query for the ids already stored, one statement for the new rows: the write
        # lock is held, so nothing can be stored in between
        stored = set()
        ids = list({obs.id for obs in given})
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            stored.update(row[0] for row in db.execute(
                f"SELECT id FROM observations WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk))
        new = []
        for obs in given:
            if obs.id not in stored:
                stored.add(obs.id)  # the same id twice in one call: the first is kept
                new.append(obs)
        received_text = utc_text(received)  # the same for most: format it once
        rows = [_observation_row(obs, received_text if obs.received is received else None)
                for obs in new]
        # in id order, the primary key's index is walked once instead of entered at random
        # per row (the edge's ids are random)
        rows.sort(key=_row_id)
        db.conn.executemany(_OBSERVATION_INSERT, rows)
    return new


def store_questionnaire_response(db: sqlite_utils.Database, response: QuestionnaireResponse, *,
                                 received: datetime | None = None) -> bool:
    """Store a questionnaire response once per id (received: as store_observations); True if
    it was new."""
    if response.received is None:
        response = msgspec.structs.replace(response, received=received or datetime.now(UTC))
    with transaction(db):
        return bool(_insert(db, "questionnaire_responses", _questionnaire_row(response),
                            "ON CONFLICT (id) DO NOTHING"))


def store_record(db: sqlite_utils.Database, record: Record) -> Record:
    """Store any record in one transaction and return it as stored.

    Observations, questionnaire responses and consent events are kept once per id. An alarm
    is inserted or has its state updated, and the events of its trail not yet stored are
    appended (the stored trail must be the start of the given one). An enrolment replaces
    the modules and gateways of the same patient and organisation. A limit version gets the
    next version number for its patient and code, and ends the current version.
    """
    with transaction(db):
        match record:
            case Observation():
                store_observations(db, [record])
            case QuestionnaireResponse():
                if record.received is None:
                    record = msgspec.structs.replace(record, received=datetime.now(UTC))
                store_questionnaire_response(db, record)
            case Alarm():
                _store_alarm(db, record)
            case Enrolment():
                _insert(db, "enrolments", _enrolment_row(record),
                        "ON CONFLICT (patient, organisation) DO UPDATE SET modules = "
                        "excluded.modules, gateways = excluded.gateways, "
                        "enrolled = COALESCE(excluded.enrolled, enrolments.enrolled)")
            case LimitVersion():
                record = _store_limit_version(db, record)
            case ConsentEvent():
                _insert(db, "consent_events", _consent_row(record), "ON CONFLICT (id) DO NOTHING")
            case _:
                raise TypeError(f"cannot store a {type(record).__name__}")
    return record


def audit(db: sqlite_utils.Database, *, actor: str, action: str, patient: str | None = None,
          **detail: object) -> int:
    """Append one entry to the audit log (who, what, about whom, the change); return its id.
    Call it inside the transaction that makes the change, so both or neither are kept."""
    if not actor.strip():
        raise ValueError("an audited change needs the name of who made it")
    with transaction(db):
        cursor = db.execute(
            "INSERT INTO audit (at, actor, action, patient, detail) VALUES (?, ?, ?, ?, ?)",
            [utc_text(datetime.now(UTC)), actor, action, patient, _json(detail)])
    return cursor.lastrowid


def quarantine(db: sqlite_utils.Database, *, source: str, reason: str, payload: bytes) -> int:
    """Keep input that could not be used, with where it came from and why; return its id."""
    with transaction(db):
        cursor = db.execute(
            "INSERT INTO quarantine (received, source, reason, payload) VALUES (?, ?, ?, ?)",
            [utc_text(datetime.now(UTC)), source, reason, bytes(payload)])
    return cursor.lastrowid


def _store_alarm(db: sqlite_utils.Database, alarm: Alarm) -> None:
    _insert(db, "alarms", _alarm_row(alarm),
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, severity = "
            "excluded.severity, message = excluded.message, observations = "
            "excluded.observations, limits = excluded.limits, repeats = excluded.repeats")
    stored = db.execute('SELECT at, action, "by", note FROM alarm_events WHERE alarm_id = ? '
                        "ORDER BY id", [alarm.id]).fetchall()
    given = [(utc_text(e.at), e.action, e.by, e.note) for e in alarm.events]
    if given[:len(stored)] != stored:
        raise ValueError(f"alarm {alarm.id}: its stored audit trail ({len(stored)} events) is "
                         "not the start of the given one; the trail is append-only")
    for at, action, by, note in given[len(stored):]:
        _insert(db, "alarm_events", {"alarm_id": alarm.id, "at": at, "action": action,
                                     "by": by, "note": note})


def _store_limit_version(db: sqlite_utils.Database, new: LimitVersion) -> LimitVersion:
    key = [new.patient, new.code.system, new.code.code]
    where = "patient = ? AND code_system = ? AND code = ?"
    current = db.execute(f"SELECT version, valid_from FROM limits WHERE {where} "
                         "ORDER BY version DESC LIMIT 1", key).fetchone()
    valid_from = utc_text(new.valid_from)
    version = 1
    if current is not None:
        version = current[0] + 1
        if valid_from < current[1]:
            raise ValueError(f"limits for {new.patient} {new.code.code} valid from {valid_from} "
                             f"would start before the current version (from {current[1]})")
        # the current version ends when the new one starts (or earlier, if it already ended)
        db.execute(f"UPDATE limits SET valid_to = MIN(COALESCE(valid_to, ?), ?) "
                   f"WHERE {where} AND version = ?", [valid_from, valid_from, *key, current[0]])
    new = msgspec.structs.replace(new, version=version)
    _insert(db, "limits", {
        "patient": new.patient, "code_system": new.code.system, "code": new.code.code,
        "code_display": new.code.display, "version": version, "limits": _json(new.limits),
        "valid_from": valid_from, "valid_to": utc_text(new.valid_to) if new.valid_to else None,
        "author": new.author, "reason": new.reason,
    })
    return new


class DefaultLimits(msgspec.Struct, frozen=True, kw_only=True):
    """One version of an organisation's default limits for a module's code: what a patient
    without limits of their own is checked against (telemon.alarms.shared_limits)."""

    organisation: str
    module: str
    code: Code
    limits: LimitSet
    valid_from: datetime
    author: str
    reason: str
    version: int = 1
    valid_to: datetime | None = None


def store_default_limits(db: sqlite_utils.Database, new: DefaultLimits) -> DefaultLimits:
    """Add the next version of an organisation's default limits for one module and code, in
    one transaction: it gets the next version number and ends the current version (never
    overwritten). ValueError if it would start before the current version."""
    key = [new.organisation, new.module, new.code.system, new.code.code]
    where = "organisation = ? AND module = ? AND code_system = ? AND code = ?"
    valid_from = utc_text(new.valid_from)
    with transaction(db):
        current = db.execute(f"SELECT version, valid_from FROM default_limits WHERE {where} "
                             "ORDER BY version DESC LIMIT 1", key).fetchone()
        version = 1
        if current is not None:
            version = current[0] + 1
            if valid_from < current[1]:
                raise ValueError(f"default limits for {new.module} {new.code.code} valid from "
                                 f"{valid_from} would start before the current version "
                                 f"(from {current[1]})")
            db.execute("UPDATE default_limits SET valid_to = MIN(COALESCE(valid_to, ?), ?) "
                       f"WHERE {where} AND version = ?",
                       [valid_from, valid_from, *key, current[0]])
        new = msgspec.structs.replace(new, version=version)
        _insert(db, "default_limits", {
            "organisation": new.organisation, "module": new.module,
            "code_system": new.code.system, "code": new.code.code,
            "code_display": new.code.display, "version": version, "limits": _json(new.limits),
            "valid_from": valid_from,
            "valid_to": utc_text(new.valid_to) if new.valid_to else None,
            "author": new.author, "reason": new.reason,
        })
    return new


def store_evaluations(db: sqlite_utils.Database, evaluations: Iterable[Evaluation]) -> None:
    """Keep what each observation was checked against (once per observation, module, code)."""
    texts: dict[object, str] = {}  # the same few limit sets and one time, over and over

    def text(value: object, convert: Callable[[Any], str]) -> str:
        if value not in texts:
            texts[value] = convert(value)
        return texts[value]

    rows = [(e.observation, e.module, e.code, e.severity, text(e.limits, _json),
             e.limits_source, text(e.evaluated, utc_text)) for e in evaluations]
    # in key order, the unique index is walked once instead of entered at random per row
    # (the observation ids are random): about a third less time for a group of 10,000
    rows.sort()
    with transaction(db):
        db.conn.executemany(
            "INSERT INTO evaluations (observation, module, code, severity, limits, "
            "limits_source, evaluated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows)


# --- reading ------------------------------------------------------------------------------


_ALARM_COLUMNS = ("id, patient, module, rule, severity, state, raised, message, observations, "
                  "limits, code, repeats")


def get_alarm(db: sqlite_utils.Database, id: str) -> Alarm:
    """The alarm with this id and its whole audit trail; KeyError if there is none."""
    row = db.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE id = ?", [id]).fetchone()
    if row is None:
        raise KeyError(id)
    return _alarm(db, row)


def unresolved_alarm(db: sqlite_utils.Database, patient: str, module: str,
                     rule: str) -> Alarm | None:
    """The one alarm of this rule for this patient that is not resolved yet, if any."""
    row = db.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE patient = ? AND module = ? "
                     "AND rule = ? AND state != 'resolved'", [patient, module, rule]).fetchone()
    return None if row is None else _alarm(db, row)


def _alarm(db: sqlite_utils.Database, row: tuple) -> Alarm:
    (id_, patient, module, rule, severity, state, raised, message, observations, limits,
     code, repeats) = row
    events = tuple(
        AlarmEvent(at=datetime.fromisoformat(at), action=action, by=by, note=note)
        for at, action, by, note in db.execute(
            'SELECT at, action, "by", note FROM alarm_events WHERE alarm_id = ? ORDER BY id',
            [id_]))
    return Alarm(id=id_, patient=patient, module=module, rule=rule, severity=severity,
                 state=state, raised=datetime.fromisoformat(raised), message=message,
                 observations=tuple(msgspec.json.decode(observations)),
                 limits=None if limits is None else msgspec.json.decode(limits, type=LimitSet),
                 code=code, repeats=repeats, events=events)



def get_observation(db: sqlite_utils.Database, id: str) -> Observation:
    """The stored observation with this id, exactly as stored; KeyError if there is none."""
    row = db.execute("SELECT wire FROM observations WHERE id = ?", [id]).fetchone()
    if row is None:
        raise KeyError(id)
    record = wire.decode(row[0].encode())
    assert isinstance(record, Observation)
    return record


def limit_history(db: sqlite_utils.Database, patient: str, code: Code) -> list[LimitVersion]:
    """Every version of a patient's limits for one code, oldest first."""
    rows = db.execute(
        "SELECT code_display, version, limits, valid_from, valid_to, author, reason FROM limits "
        "WHERE patient = ? AND code_system = ? AND code = ? ORDER BY version",
        [patient, code.system, code.code])
    return [
        LimitVersion(patient=patient, code=Code(code.system, code.code, display),
                     limits=msgspec.json.decode(limits, type=LimitSet),
                     valid_from=datetime.fromisoformat(valid_from),
                     valid_to=datetime.fromisoformat(valid_to) if valid_to else None,
                     author=author, reason=reason, version=version)
        for display, version, limits, valid_from, valid_to, author, reason in rows
    ]


def default_limit_history(db: sqlite_utils.Database, organisation: str,
                          module: str | None = None) -> list[DefaultLimits]:
    """Every version of an organisation's default limits (of one module if given), by
    module and code, oldest first."""
    rows = db.execute(
        "SELECT module, code_system, code, code_display, version, limits, valid_from, "
        "valid_to, author, reason FROM default_limits WHERE organisation = ? "
        "AND (? IS NULL OR module = ?) ORDER BY module, code_system, code, version",
        [organisation, module, module])
    return [
        DefaultLimits(organisation=organisation, module=module_,
                      code=Code(system, code, display),
                      limits=msgspec.json.decode(limits, type=LimitSet),
                      valid_from=datetime.fromisoformat(valid_from),
                      valid_to=datetime.fromisoformat(valid_to) if valid_to else None,
                      author=author, reason=reason, version=version)
        for module_, system, code, display, version, limits, valid_from, valid_to, author,
        reason in rows
    ]


def consent_history(db: sqlite_utils.Database, patient: str) -> list[ConsentEvent]:
    """A patient's consent events in the order they happened."""
    rows = db.execute("SELECT id, purpose, granted, at, recorded_by FROM consent_events "
                      "WHERE patient = ? ORDER BY at, rowid", [patient])
    return [ConsentEvent(id=id_, patient=patient, purpose=purpose, granted=bool(granted),
                         at=datetime.fromisoformat(at), recorded_by=recorded_by)
            for id_, purpose, granted, at, recorded_by in rows]


# --- rows ---------------------------------------------------------------------------------


def _insert(db: sqlite_utils.Database, table: str, row: dict, conflict: str = "") -> int:
    """INSERT one row (with an optional ON CONFLICT clause); return the rows changed."""
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    return db.execute(f"INSERT INTO {table} ({columns}) VALUES ({values}) {conflict}",
                      row).rowcount


def utc_text(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601 (`moment.astimezone(UTC).isoformat(timespec="microseconds")`),
    so that text order is time order."""
    if moment.tzinfo is None:
        raise ValueError(f"a naive time cannot be stored: {moment.isoformat()}")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # msgspec writes a UTC time as "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (six digits, or none for
    # a whole second) in a seventh of isoformat's time, which was a tenth of the central's
    text = _json_encoder.encode(moment)
    if len(text) == 22:
        return text[1:20].decode() + ".000000+00:00"
    return text[1:27].decode() + "+00:00"


def _json(value: object) -> str:
    return _json_encoder.encode(value).decode()


_OBSERVATION_COLUMNS = ("id", "patient", "device", "gateway", "code_system", "code", "unit",
                        "value", "absent", "components", "flags", "context", "raw", "driver",
                        "driver_version", "effective", "received", "wire")
_OBSERVATION_INSERT = (f"INSERT INTO observations ({', '.join(_OBSERVATION_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(_OBSERVATION_COLUMNS))})")


_row_id = operator.itemgetter(0)  # of an _observation_row


def _observation_row(obs: Observation, received_text: str | None = None) -> tuple:
    """The values of _OBSERVATION_COLUMNS (`received_text`: obs.received, formatted)."""
    assert obs.received is not None
    return (obs.id, obs.patient, obs.device, obs.gateway, obs.code.system, obs.code.code,
            obs.unit, None if obs.value is None else str(obs.value),
            None if obs.absent is None else str(obs.absent),
            _json(obs.components) if obs.components else "[]",  # most readings: no parts,
            _json(obs.flags) if obs.flags else "[]",  # no flags, no context
            _json(obs.context) if obs.context else "{}", obs.raw, obs.driver, obs.driver_version,
            utc_text(obs.effective), received_text or utc_text(obs.received),
            wire.encode(obs).decode())


def _questionnaire_row(qr: QuestionnaireResponse) -> dict:
    assert qr.received is not None
    return {
        "id": qr.id, "patient": qr.patient, "gateway": qr.gateway,
        "questionnaire": qr.questionnaire, "version": qr.version,
        "authored": utc_text(qr.authored), "received": utc_text(qr.received),
        "answers": _json(qr.answers), "scores": _json(qr.scores),
        "wire": wire.encode(qr).decode(),
    }


def _alarm_row(alarm: Alarm) -> dict:
    return {
        "id": alarm.id, "patient": alarm.patient, "module": alarm.module, "rule": alarm.rule,
        "severity": alarm.severity, "state": alarm.state, "raised": utc_text(alarm.raised),
        "message": alarm.message, "observations": _json(alarm.observations),
        "limits": None if alarm.limits is None else _json(alarm.limits),
        "code": alarm.code, "repeats": alarm.repeats,
    }


def _enrolment_row(enrolment: Enrolment) -> dict:
    return {
        "patient": enrolment.patient, "organisation": enrolment.organisation,
        "modules": _json(enrolment.modules), "gateways": _json(enrolment.gateways),
        "enrolled": utc_text(enrolment.enrolled) if enrolment.enrolled else None,
    }


def _consent_row(event: ConsentEvent) -> dict:
    return {
        "id": event.id, "patient": event.patient, "purpose": event.purpose,
        "granted": int(event.granted), "at": utc_text(event.at), "recorded_by": event.recorded_by,
    }

