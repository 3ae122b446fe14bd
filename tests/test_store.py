"""telemon.store on real SQLite files."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pluggy
import pytest
import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from telemon import hookspecs, store
from telemon.hookspecs import hookimpl
from telemon.models import (
    AbsentReason,
    Alarm,
    AlarmEvent,
    Answer,
    Code,
    Component,
    ConsentEvent,
    Enrolment,
    Evaluation,
    LimitSet,
    LimitVersion,
    Observation,
    QuestionnaireResponse,
)

MDC = "urn:iso:std:iso:11073:10101"
SPO2 = Code(MDC, "150456", "SpO2")
BP = Code(MDC, "150020", "Blood pressure")
CPH = timezone(timedelta(hours=2))
T0 = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=CPH)


def obs(id: str = "obs-1", **changes) -> Observation:
    fields = dict(id=id, patient="p1", device="dev-1", gateway="gw-1", code=SPO2, unit="%",
                  effective=T0, value=Decimal("97"), raw=b"\x00\x61\xff", driver="sim",
                  driver_version="1.0")
    return Observation(**(fields | changes))


def committed(path, sql: str, params=()) -> list[tuple]:
    """Rows as another connection sees them: only what was committed."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "central.db"


@pytest.fixture
def db(path):
    db = store.open_database(path)
    yield db
    db.close()


def pm_with(*plugins: tuple[str, object]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("telemon")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return pm


# --- opening ------------------------------------------------------------------------------


def test_database_is_in_wal_mode_with_foreign_keys_on(db, path):
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert committed(path, "PRAGMA journal_mode") == [("wal",)]  # persistent in the file


def test_database_file_is_owner_only(db, path):
    store.store_observations(db, [obs()])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(os.stat(wal).st_mode) == 0o600  # SQLite copies the file's mode


def test_reopening_keeps_data_and_applies_nothing_again(path):
    db = store.open_database(path)
    store.store_observations(db, [obs()])
    db.close()
    db = store.open_database(path)
    assert store.migrate(db) == []
    assert store.get_observation(db, "obs-1").value == Decimal("97")


# --- observations -------------------------------------------------------------------------


def test_observation_round_trips_exactly(db, path):
    received = datetime(2025, 3, 1, 6, 31, tzinfo=UTC)
    bp = obs("bp-1", code=BP, unit="mm[Hg]", value=None, raw=bytes(range(256)),
             components=(Component(Code(MDC, "150021"), "mm[Hg]", Decimal("120.0")),
                         Component(Code(MDC, "150022"), "mm[Hg]", Decimal("80")),
                         Component(Code(MDC, "150023"), "mm[Hg]",
                                   absent=AbsentReason.NOT_A_NUMBER)),
             flags=("cuff-loose",), context={"time_source": "device", "position": "sitting"})
    weight = obs("w-1", value=Decimal("2.0"), unit="kg")
    special = obs("s-1", value=None, absent=AbsentReason.ERROR)
    assert len(store.store_observations(db, [bp, weight, special], received=received)) == 3

    for original in (bp, weight, special):
        expected = msgspec.structs.replace(original, received=received)
        assert store.get_observation(db, original.id) == expected
    back = store.get_observation(db, "bp-1")
    assert back.raw == bytes(range(256))
    assert str(back.components[0].value) == "120.0"
    assert back.effective.utcoffset() == timedelta(hours=2)  # aware, offset kept
    assert str(store.get_observation(db, "w-1").value) == "2.0"  # Decimal("2") would be "2"

    row = db["observations"].get("w-1")
    assert row["value"] == "2.0"
    assert row["raw"] == b"\x00\x61\xff"
    assert row["effective"] == "2025-03-01T06:30:15.123456+00:00"  # UTC text
    assert row["received"] == "2025-03-01T06:31:00.000000+00:00"
    assert db["observations"].get("s-1")["value"] is None
    assert db["observations"].get("s-1")["absent"] == "error"
    bp_row = db["observations"].get("bp-1")
    assert json.loads(bp_row["components"])[2]["absent"] == "not-a-number"
    assert json.loads(bp_row["context"])["position"] == "sitting"
    assert committed(path, "SELECT count(*) FROM observations") == [(3,)]


@given(st.datetimes(timezones=st.timezones()))
def test_utc_text_is_fixed_width_utc_isoformat(moment):
    """The fast formatter gives exactly isoformat's text, so text order stays time order."""
    assert store.utc_text(moment) == moment.astimezone(UTC).isoformat(timespec="microseconds")


def test_utc_text_refuses_a_naive_time():
    with pytest.raises(ValueError, match="naive time cannot be stored"):
        store.utc_text(datetime(2026, 1, 1))


def test_unknown_observation_is_a_key_error(db):
    with pytest.raises(KeyError):
        store.get_observation(db, "nope")


def test_storing_the_same_observation_twice_stores_it_once(db):
    first = datetime(2025, 3, 1, 7, 0, tzinfo=UTC)
    assert len(store.store_observations(db, [obs()], received=first)) == 1
    assert len(store.store_observations(db, [obs()], received=first + timedelta(hours=1))) == 0
    assert len(store.store_observations(db, [obs("obs-2"), obs("obs-2"), obs()])) == 1
    assert db["observations"].count == 2
    assert store.get_observation(db, "obs-1").received == first  # the first delivery's


def test_received_is_kept_when_the_record_has_one(db):
    own = datetime(2025, 1, 1, tzinfo=UTC)
    store.store_observations(db, [obs(received=own)], received=own + timedelta(days=1))
    assert store.get_observation(db, "obs-1").received == own
    store.store_observations(db, [obs("obs-2")])
    now = datetime.now(UTC)
    assert now - store.get_observation(db, "obs-2").received < timedelta(minutes=1)


def test_a_bad_observation_leaves_nothing_of_its_batch(db, path):
    naive = obs("obs-2", effective=datetime(2025, 3, 1, 8, 0))
    with pytest.raises(ValueError, match="naive"):
        store.store_observations(db, [obs("obs-1"), naive, obs("obs-3")])
    assert committed(path, "SELECT count(*) FROM observations") == [(0,)]
    assert not db.conn.in_transaction


def test_a_failing_write_leaves_nothing_of_its_transaction(db, path):
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store.transaction(db):
        assert len(store.store_observations(db, [obs()])) == 1
        store.quarantine(db, source="config", reason="test", payload=b"x")
        db.execute('INSERT INTO alarm_events (alarm_id, at, action, "by", note) '
                   "VALUES ('no-such-alarm', '2025-01-01', 'note', 'nurse', '')")
    assert committed(path, "SELECT count(*) FROM observations") == [(0,)]
    assert committed(path, "SELECT count(*) FROM quarantine") == [(0,)]
    assert db["observations"].count == 0
    # and the connection is usable again
    assert len(store.store_observations(db, [obs()])) == 1
    assert committed(path, "SELECT count(*) FROM observations") == [(1,)]


# --- other records ------------------------------------------------------------------------


def alarm(*events: AlarmEvent, state="open", id="a-1") -> Alarm:
    return Alarm(id=id, patient="p1", module="copd", rule="spo2-red", severity="red",
                 raised=T0, message="SpO2 87 % below red limit 88 %", observations=("obs-1",),
                 limits=LimitSet(red_low=Decimal("88"), yellow_low=Decimal("90.0")),
                 state=state, events=events)


RAISED = AlarmEvent(at=T0, action="raised", by="module:copd")
ACKED = AlarmEvent(at=T0 + timedelta(minutes=5), action="acknowledged", by="nurse-7",
                   note="called, feels fine")


def test_alarm_trail_is_appended_and_never_rewritten(db):
    store.store_record(db, alarm(RAISED))
    store.store_record(db, alarm(RAISED, ACKED, state="acknowledged"))
    store.store_record(db, alarm(RAISED, ACKED, state="acknowledged"))  # re-delivery
    assert db["alarms"].get("a-1")["state"] == "acknowledged"
    assert json.loads(db["alarms"].get("a-1")["limits"])["yellow_low"] == 90.0
    trail = db.execute('SELECT action, "by", note FROM alarm_events ORDER BY id').fetchall()
    assert trail == [("raised", "module:copd", ""), ("acknowledged", "nurse-7",
                                                     "called, feels fine")]

    with pytest.raises(ValueError, match="append-only"):
        store.store_record(db, alarm(ACKED, state="resolved"))
    assert db["alarms"].get("a-1")["state"] == "acknowledged"  # nothing of it stored
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE alarm_events SET note = 'edited'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM alarm_events")


def test_an_alarm_with_a_bad_event_is_not_stored_at_all(db, path):
    bad = AlarmEvent(at=T0, action="deleted", by="someone")  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.store_record(db, alarm(RAISED, bad))
    assert committed(path, "SELECT count(*) FROM alarms") == [(0,)]
    assert committed(path, "SELECT count(*) FROM alarm_events") == [(0,)]


def limits(author: str, at: datetime, **values: str) -> LimitVersion:
    return LimitVersion(patient="p1", code=SPO2, author=author, reason=f"set by {author}",
                        valid_from=at, limits=LimitSet(**{k: Decimal(v)
                                                          for k, v in values.items()}))


def test_limit_versions_accumulate_and_end_each_other(db):
    t1, t2, t3 = T0, T0 + timedelta(days=10), T0 + timedelta(days=30)
    first = store.store_record(db, limits("dr-a", t1, red_low="88", yellow_low="90.0"))
    second = store.store_record(db, limits("dr-b", t2, red_low="85", yellow_low="88"))
    store.store_record(db, limits("dr-c", t3, red_low="86.5"))
    assert (first.version, second.version) == (1, 2)

    history = store.limit_history(db, "p1", SPO2)
    assert [v.version for v in history] == [1, 2, 3]
    assert [v.author for v in history] == ["dr-a", "dr-b", "dr-c"]
    assert [v.valid_from for v in history] == [t1, t2, t3]
    assert [v.valid_to for v in history] == [t2, t3, None]
    assert history[0].limits == LimitSet(red_low=Decimal("88"), yellow_low=Decimal("90.0"))
    assert str(history[0].limits.yellow_low) == "90.0"
    assert history[0].code == SPO2
    assert store.limit_history(db, "p1", BP) == []
    assert store.limit_history(db, "p2", SPO2) == []

    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE limits SET limits = '{}' WHERE version = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM limits")


def test_a_limit_version_cannot_start_before_the_current_one(db):
    store.store_record(db, limits("dr-a", T0, red_low="88"))
    with pytest.raises(ValueError, match="before the current version"):
        store.store_record(db, limits("dr-b", T0 - timedelta(days=1), red_low="85"))
    assert [v.valid_to for v in store.limit_history(db, "p1", SPO2)] == [None]


def test_consent_is_an_event_stream(db):
    def consent(id, granted, at):
        return ConsentEvent(id=id, patient="p1", purpose="share-gp", granted=granted,
                            at=at, recorded_by="nurse-7")

    later = consent("c-2", False, T0 + timedelta(days=3))
    earlier = consent("c-1", True, T0)
    for event in (later, earlier, later):
        store.store_record(db, event)
    assert store.consent_history(db, "p1") == [earlier, later]
    assert store.consent_history(db, "p2") == []
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE consent_events SET granted = 1")


def test_enrolment_and_questionnaire_response_are_stored(db):
    store.store_record(db, Enrolment(patient="p1", organisation="aarhus", modules=("copd",),
                                     enrolled=T0))
    store.store_record(db, Enrolment(patient="p1", organisation="aarhus",
                                     modules=("copd", "heart_failure"), gateways=("gw-1",)))
    row = db["enrolments"].get(("p1", "aarhus"))
    assert json.loads(row["modules"]) == ["copd", "heart_failure"]
    assert json.loads(row["gateways"]) == ["gw-1"]
    assert row["enrolled"] == "2025-03-01T06:30:15.123456+00:00"  # kept

    qr = QuestionnaireResponse(id="q-1", patient="p1", gateway="gw-1", questionnaire="cat",
                               version="1", authored=T0, answers=(Answer("q1", 3),),
                               scores={"total": Decimal("12.0")})
    stored = store.store_record(db, qr)
    assert stored.received is not None
    store.store_record(db, qr)
    assert db["questionnaire_responses"].count == 1
    assert json.loads(db["questionnaire_responses"].get("q-1")["wire"])["scores"] == {
        "total": 12.0}

    assert store.store_record(db, obs()) == obs()
    assert db["observations"].count == 1
    with pytest.raises(TypeError):
        store.store_record(db, LimitSet())  # type: ignore[arg-type]


def test_quarantine_keeps_the_exact_bytes_and_the_reason(db, path):
    payload = b'\xff\xfe{"type": "observation", \x00 broken'
    qid = store.quarantine(db, source="mqtt:telemon/v1/aarhus/gw-1/obs",
                           reason="malformed JSON at byte 0", payload=payload)
    assert committed(path, "SELECT source, reason, payload FROM quarantine WHERE id = ?",
                     (qid,)) == [("mqtt:telemon/v1/aarhus/gw-1/obs", "malformed JSON at byte 0",
                                  payload)]
    received = datetime.fromisoformat(db["quarantine"].get(qid)["received"])
    assert received.utcoffset() == timedelta(0)
    assert store.quarantine(db, source="config", reason="x", payload=b"") == qid + 1


def test_savepoints_nest_and_each_fails_alone(db, path):
    with store.transaction(db):
        with store.savepoint(db):
            store.store_observations(db, [obs("kept-1")])
            with pytest.raises(RuntimeError), store.savepoint(db):
                store.store_observations(db, [obs("undone-1")])
                raise RuntimeError("inner part fails")
            store.store_observations(db, [obs("kept-2")])
        with pytest.raises(RuntimeError), store.savepoint(db):
            with store.savepoint(db):
                store.store_observations(db, [obs("undone-2")])  # its own part succeeded
            raise RuntimeError("outer part fails")
        store.store_observations(db, [obs("kept-3")])
    assert committed(path, "SELECT id FROM observations ORDER BY id") == [
        ("kept-1",), ("kept-2",), ("kept-3",)]
    with pytest.raises(RuntimeError, match="inside a transaction"), store.savepoint(db):
        pass


# --- migrations ---------------------------------------------------------------------------


def test_migrations_run_on_an_old_database(path):
    old = sqlite_utils.Database(path)  # as telemon left it when only m001 existed
    old.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    with store.transaction(old):
        store.m001_initial(old)
        old.execute("INSERT INTO _migrations VALUES ('m001_initial', '2024-01-01')")
    store.store_observations(old, [obs()])
    old.execute("INSERT INTO quarantine (received, reason, payload) VALUES (?, ?, ?)",
                ["2024-01-01T00:00:00.000000+00:00", "bad frame", b"\x01\x02"])
    assert "source" not in old["quarantine"].columns_dict

    assert store.migrate(old) == [m.__name__ for m in store.MIGRATIONS[1:]]
    assert "source" in old["quarantine"].columns_dict
    assert list(old["quarantine"].rows) == [{
        "id": 1, "received": "2024-01-01T00:00:00.000000+00:00", "reason": "bad frame",
        "payload": b"\x01\x02", "source": "unknown"}]
    survivor = store.get_observation(old, "obs-1")
    assert msgspec.structs.replace(survivor, received=None) == obs()
    assert store.migrate(old) == []
    applied = [r[0] for r in old.execute("SELECT name FROM _migrations ORDER BY name")]
    assert applied == sorted(m.__name__ for m in store.MIGRATIONS)
    assert {"patients", "audit", "evaluations", "export_cursors"} <= set(old.table_names())
    old.close()

    db = store.open_database(path)
    store.quarantine(db, source="config", reason="r", payload=b"p")
    assert db["quarantine"].get(2)["source"] == "config"
    assert db["observations"].count == 1


def test_a_fresh_database_gets_every_migration(tmp_path):
    db = sqlite_utils.Database(tmp_path / "fresh.db")
    assert store.migrate(db) == [m.__name__ for m in store.MIGRATIONS]
    assert {"observations", "questionnaire_responses", "alarms", "alarm_events", "enrolments",
            "limits", "consent_events", "quarantine", "_migrations"} <= set(db.table_names())
    indexed = {tuple(i.columns) for i in db["observations"].indexes}
    assert ("patient", "code", "effective", "id", "code_system", "value") in indexed


def test_evaluations_survive_their_move_to_a_table_in_arrival_order(tmp_path):
    db = sqlite_utils.Database(tmp_path / "m006.db")
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for migration in store.MIGRATIONS[:store.MIGRATIONS.index(store.m007_ingest_speed)]:
        with store.transaction(db):
            migration(db)
            db.execute("INSERT INTO _migrations VALUES (?, '2026-01-01')",
                       [migration.__name__])
    store.store_observations(db, [obs("obs-1"), obs("obs-2", effective=T0 + timedelta(1))])
    limits = LimitSet(red_low=Decimal(85), yellow_low=Decimal(90))
    evaluation = Evaluation(observation="obs-1", patient="p1", module="copd", code="spo2",
                            severity="yellow", limits=limits, limits_source="patient v2",
                            evaluated=T0)
    store.store_evaluations(db, [evaluation])
    before = db.execute("SELECT * FROM evaluations").fetchall()

    db.close()

    db = store.open_database(tmp_path / "m006.db")  # migrates, as the central does
    assert db.execute("SELECT name FROM _migrations WHERE name = 'm007_ingest_speed'").fetchone()
    assert db.execute("SELECT * FROM evaluations").fetchall() == before
    store.store_evaluations(db, [evaluation, msgspec.structs.replace(
        evaluation, observation="obs-2", severity="green")])  # obs-1's again: kept once
    assert db.execute("SELECT observation, severity FROM evaluations ORDER BY rowid"
                      ).fetchall() == [("obs-1", "yellow"), ("obs-2", "green")]
    with pytest.raises(sqlite3.IntegrityError):  # still only for stored observations
        store.store_evaluations(db, [msgspec.structs.replace(evaluation, observation="nope")])
    # the trend rules' query reads the index alone, already in the order it asks for
    plan = " ".join(row[3] for row in db.execute(
        "EXPLAIN QUERY PLAN SELECT id, effective, value FROM observations WHERE patient = ? "
        "AND code_system = ? AND code = ? AND effective >= ? ORDER BY effective DESC, "
        "id DESC LIMIT 10", ["p1", MDC, "150456", "2025"]))
    assert "COVERING INDEX observations_series" in plan and "TEMP B-TREE" not in plan


def test_a_failing_migration_leaves_nothing_half_applied(db, monkeypatch):
    def m003_broken(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("ALTER TABLE observations ADD COLUMN extra TEXT")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, m003_broken])
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.migrate(db)
    assert "half_done" not in db.table_names()
    assert "extra" not in db["observations"].columns_dict
    assert db.execute("SELECT 1 FROM _migrations WHERE name = 'm003_broken'").fetchone() is None
    assert not db.conn.in_transaction


# --- plugins ------------------------------------------------------------------------------


class TablePlugin:
    @hookimpl
    def prepare_database(self, db):
        db["plugin_notes"].create({"id": str, "text": str}, pk="id", if_not_exists=True)


class BrokenPlugin:
    @hookimpl
    def prepare_database(self, db):
        db.conn.execute("BEGIN")
        db.conn.execute("CREATE TABLE half_prepared (x)")
        raise RuntimeError("cannot prepare")


def test_prepare_database_hook_creates_the_plugins_table(path):
    db = store.open_database(path, pm=pm_with(("notes", TablePlugin())))
    assert "plugin_notes" in db.table_names()
    db.close()
    db = store.open_database(path, pm=pm_with(("notes", TablePlugin())))  # idempotent
    assert "plugin_notes" in db.table_names()


def test_a_failing_plugin_is_logged_and_the_database_still_opens(path, caplog):
    pm = pm_with(("broken", BrokenPlugin()), ("notes", TablePlugin()))
    with caplog.at_level(logging.ERROR, logger="telemon.store"):
        db = store.open_database(path, pm=pm)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("'broken'" in m and "cannot prepare" in m for m in messages)
    assert "plugin_notes" in db.table_names()
    assert "half_prepared" not in db.table_names()  # its open transaction was rolled back
    assert not db.conn.in_transaction
    assert len(store.store_observations(db, [obs()])) == 1
    assert committed(path, "SELECT count(*) FROM observations") == [(1,)]
