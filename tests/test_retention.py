"""Retention (telemon.retention) on real central databases: a dry run changes nothing, a run
empties only the raw bytes older than the cut-off and deletes only old quarantine, keeps
every value, is audited and idempotent, leaves the exporters' cursors alone, and leaves no
copy of the removed bytes in the database file or its log."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from click.testing import CliRunner
from conftest import write_central_toml

from telemon import admin, config, plugin_manager, retention, store
from telemon.codes import KNOWN
from telemon.config import RetentionConfig
from telemon.export import cursor_positions, export_one
from telemon.models import Evaluation, LimitSet, Observation
from telemon.plugins.exporters.csv import EXPORTER as CSV

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionConfig(raw_after_days=30, quarantine_after_days=365)
REGISTRY = plugin_manager.get()[1]


def waveform(n: int) -> bytes:
    """Raw bytes as large as a pulse oximeter's second of pleth frames, unique per reading."""
    return f"WAVEFORM-{n:04d}|".encode() + random.Random(n).randbytes(3000)


def observation(n: int, received: datetime, raw: bytes | None = None) -> Observation:
    return Observation(id=f"obs-{n}", patient="p-0001", device="ox-1", gateway="gw-0001",
                       code=KNOWN["spo2"].code, unit="%", effective=received - timedelta(
                           minutes=1), value=Decimal(f"9{n % 10}.0"), flags=("artifact",),
                       context={"time_source": "gateway"},
                       raw=waveform(n) if raw is None else raw, driver="serial_nonin",
                       driver_version="1.0", received=received)


@pytest.fixture
def db(tmp_path):
    database = store.open_database(store.central_database_path(tmp_path / "central"))
    yield database
    database.close()


def fill(db) -> dict[str, Observation]:
    """Readings received 100, 31 and exactly 30 days, 10 days and now before NOW (one of them
    old but without raw bytes), their evaluations, and quarantine 400 and 10 days old."""
    ages = {0: 100, 1: 31, 2: 30, 3: 10, 4: 0}
    stored = {f"obs-{n}": observation(n, NOW - timedelta(days=age)) for n, age in ages.items()}
    stored["obs-5"] = observation(5, NOW - timedelta(days=90), raw=b"")
    store.store_observations(db, stored.values())
    store.store_evaluations(db, [Evaluation(
        observation=obs_id, patient="p-0001", module="copd", code="spo2", severity="green",
        limits=LimitSet(red_low=Decimal(88)), limits_source="module", evaluated=NOW)
        for obs_id in stored])
    for age, payload in ((400, b"\x00bad frame old"), (10, b"\x00bad frame new")):
        row_id = store.quarantine(db, source="mqtt:telemon/v1/org/gw-0001/obs",
                                  reason="bad checksum", payload=payload)
        with store.transaction(db):  # as if it had come in `age` days before NOW
            db.execute("UPDATE quarantine SET received = ? WHERE id = ?",
                       [store.utc_text(NOW - timedelta(days=age)), row_id])
    return stored


def dump(db) -> list[str]:
    return list(db.conn.iterdump())


def retention_audit(db) -> list[admin.AuditEntry]:
    return [e for e in admin.audit_entries(db) if e.action == "retention.run"]


# --- library ----------------------------------------------------------------------------------


def test_a_dry_run_says_what_would_go_and_changes_nothing(db):
    fill(db)
    before = dump(db)
    raw, quarantine = retention.plan(db, POLICY, now=NOW)
    assert (raw.kind, raw.cutoff, raw.rows) == (retention.RAW, NOW - timedelta(days=30), 2)
    assert raw.bytes == len(waveform(0)) + len(waveform(1))
    assert (raw.oldest, raw.newest) == (NOW - timedelta(days=100), NOW - timedelta(days=31))
    assert (quarantine.kind, quarantine.rows, quarantine.bytes) == (
        retention.QUARANTINE, 1, len(b"\x00bad frame old"))
    assert quarantine.oldest == quarantine.newest == NOW - timedelta(days=400)
    assert dump(db) == before


def test_a_run_empties_only_old_raw_bytes_and_keeps_every_value(db):
    stored = fill(db)
    counts = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
              for table in ("observations", "evaluations")}
    removals, _ = retention.run(db, POLICY, actor="admin-a", now=NOW)
    assert [(r.kind, r.rows) for r in removals] == [(retention.RAW, 2), (retention.QUARANTINE, 1)]
    for obs_id in ("obs-0", "obs-1"):
        now_stored = store.get_observation(db, obs_id)  # still decodes
        original = stored[obs_id]
        assert now_stored.raw == b""
        assert now_stored.context == {**original.context,
                                      "raw_removed": store.utc_text(NOW)}
        assert msgspec.structs.replace(now_stored, raw=original.raw,
                                       context=original.context) == original
        raw, context = db.execute("SELECT raw, context FROM observations WHERE id = ?",
                                  [obs_id]).fetchone()
        assert (raw, json.loads(context)) == (b"", now_stored.context)  # columns agree
    # younger than the cut-off (exactly 30 days is not older), or no raw bytes: untouched
    for obs_id in ("obs-2", "obs-3", "obs-4", "obs-5"):
        assert store.get_observation(db, obs_id) == stored[obs_id]
    assert [r[0] for r in db.execute("SELECT payload FROM quarantine")] == [b"\x00bad frame new"]
    assert counts == {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                      for table in counts}


def test_each_transaction_is_audited_without_personal_data(db):
    fill(db)
    retention.run(db, POLICY, actor="admin-a", now=NOW, batch_size=1)
    entries = retention_audit(db)
    assert [(e.actor, e.patient, e.detail["kind"], e.detail["rows"]) for e in entries] == [
        ("admin-a", None, retention.RAW, 1), ("admin-a", None, retention.RAW, 1),
        ("admin-a", None, retention.QUARANTINE, 1)]
    assert entries[0].detail["cutoff"] == store.utc_text(NOW - timedelta(days=30))
    assert entries[0].detail["oldest"] == store.utc_text(NOW - timedelta(days=100))
    assert entries[0].detail["bytes"] == len(waveform(0))
    assert "p-0001" not in json.dumps([e.detail for e in entries])


def test_a_second_run_removes_nothing_and_changes_nothing(db):
    fill(db)
    retention.run(db, POLICY, actor="admin-a", now=NOW)
    after_first = dump(db)
    removals, _ = retention.run(db, POLICY, actor="admin-a", now=NOW)
    assert [r.rows for r in removals] == [0, 0]
    assert dump(db) == after_first


def test_the_exporters_cursors_stay_and_exports_still_work(db, tmp_path):
    stored = fill(db)
    options = {"directory": str(tmp_path / "csv-early")}
    assert export_one(db, CSV, options).delivered == len(stored)
    positions = cursor_positions(db, CSV.name)
    retention.run(db, POLICY, actor="admin-a", now=NOW)
    assert cursor_positions(db, CSV.name) == positions
    assert export_one(db, CSV, options).delivered == 0  # stripped rows are not new rows
    # an exporter that is behind delivers the stripped readings with their values
    behind = dataclasses.replace(CSV, name="csv_behind")  # a cursor of its own, still at 0
    late = export_one(db, behind, {"directory": str(tmp_path / "csv-late")})
    assert (late.delivered, late.error) == (len(stored), None)
    text = (tmp_path / "csv-late" / "p-0001" / "spo2.csv").read_text()
    assert all(f"obs-{n},{stored[f'obs-{n}'].effective.isoformat()}" in text for n in range(6))
    assert "90.0" in text and "91.0" in text  # obs-0 and obs-1, stripped, keep their values


def pieces(data: bytes, size: int = 40) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data) - size + 1, size)]


def test_the_removed_bytes_are_gone_from_the_file_and_its_log(db, tmp_path):
    fill(db)
    folder = tmp_path / "central"

    def on_disk(data: bytes) -> int:
        """How many pieces of `data` are in the database's files (a value spans pages)."""
        files = [path.read_bytes() for path in folder.iterdir() if path.is_file()]
        return sum(any(piece in content for content in files) for piece in pieces(data))

    removed = [waveform(0), base64.b64encode(waveform(0))]  # the column, the wire form
    assert all(on_disk(data) > len(pieces(data)) // 2 for data in removed)  # can fail
    db.execute("PRAGMA secure_delete = OFF")  # the run turns it on (some builds default to on)
    _, space = retention.run(db, POLICY, actor="admin-a", now=NOW)
    assert space.log_truncated and not space.incremental_vacuum
    assert space.free_pages > 0  # the waveforms' overflow pages, for new data
    assert [on_disk(data) for data in removed] == [0, 0]
    kept = base64.b64encode(waveform(3))  # a young reading's bytes stay
    assert on_disk(kept) > len(pieces(kept)) // 2
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 0  # the setting is restored


def test_a_database_with_incremental_auto_vacuum_returns_the_space(tmp_path):
    path = store.central_database_path(tmp_path / "central")
    with sqlite3.connect(path) as setup:  # auto_vacuum is chosen before the first table
        setup.execute("PRAGMA auto_vacuum = INCREMENTAL")
        setup.execute("VACUUM")
    db = store.open_database(path)
    try:
        fill(db)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        _, space = retention.run(db, POLICY, actor="admin-a", now=NOW)
        assert space.incremental_vacuum and space.free_pages == 0
        # the two waveforms' overflow pages went back to the file system
        assert db.execute("PRAGMA page_count").fetchone()[0] <= pages - 2
    finally:
        db.close()


def test_a_reading_whose_wire_form_is_corrupt_stops_its_batch_with_the_row(db):
    fill(db)
    with store.transaction(db):
        db.execute("UPDATE observations SET wire = '{\"type\": \"observation\"' "
                   "WHERE id = 'obs-1'")
    rowid = db.execute("SELECT rowid FROM observations WHERE id = 'obs-1'").fetchone()[0]
    before = dump(db)
    with pytest.raises(retention.RetentionError,
                       match=f"observations row {rowid}: its stored wire form cannot be"):
        retention.run(db, POLICY, actor="admin-a", now=NOW)
    assert dump(db) == before  # obs-0 shares the batch: nothing of it was kept


def test_a_policy_that_sets_nothing_removes_nothing(db):
    fill(db)
    before = dump(db)
    assert retention.run(db, RetentionConfig(), actor="admin-a", now=NOW)[0] == []
    assert retention.plan(db, RetentionConfig(), now=NOW) == []
    assert dump(db) == before


@pytest.mark.parametrize("changes, message", [
    ({"actor": " "}, "needs the name of who runs it"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
])
def test_a_run_without_an_actor_or_batch_is_refused(db, changes, message):
    fill(db)
    before = dump(db)
    with pytest.raises(ValueError, match=message):
        retention.run(db, POLICY, **({"actor": "admin-a", "now": NOW} | changes))
    assert dump(db) == before


def test_only_an_administrator_runs_retention_once_staff_are_registered(db, tmp_path):
    fill(db)
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    admin.add_staff(db, name="lead-a", role="team_lead", actor="admin-a")
    def unaudited(rows: list[str]) -> list[str]:  # the dump without the audit log
        return [row for row in rows if "\"audit\"" not in row and "'audit'" not in row]

    before = unaudited(dump(db))
    with pytest.raises(admin.Refused, match=re.escape(
            "lead-a (team_lead) lacks the right retention.run: the right retention.run is "
            "held by administrator")):
        retention.run(db, POLICY, actor="lead-a", now=NOW)
    assert unaudited(dump(db)) == before
    (refusal,) = [e for e in admin.audit_entries(db) if e.action == "refused"]
    assert (refusal.actor, refusal.detail["right"]) == ("lead-a", "retention.run")
    assert retention.plan(db, POLICY, now=NOW)[0].rows == 2  # a dry run needs no right

    sudo = {"SUDO_USER": "anna"}
    with pytest.MonkeyPatch.context() as env:
        for name, value in sudo.items():
            env.setenv(name, value)
        retention.run(db, POLICY, actor="admin-a", now=NOW)
    entries = retention_audit(db)
    assert entries and all(e.detail["identity"]["sudo_user"] == "anna" for e in entries)


# --- config -----------------------------------------------------------------------------------


def central_toml(tmp_path, retention_table: str) -> str:
    return str(write_central_toml(tmp_path, retention_table, storage="central"))


def test_the_retention_table_is_loaded_and_optional(tmp_path):
    loaded = config.load(central_toml(tmp_path, "[retention]\nraw_after_days = 90\n"), REGISTRY)
    assert loaded.retention == RetentionConfig(raw_after_days=90, quarantine_after_days=None)
    assert config.load(central_toml(tmp_path, ""), REGISTRY).retention == RetentionConfig()


@pytest.mark.parametrize("table, problem", [
    ("raw_after_days = 0", "retention.raw_after_days: must be an integer between 1 and 36500, "
                           "got 0"),
    ('raw_after_days = "90"', 'retention.raw_after_days: must be an integer between 1 and '
                              '36500, got "90"'),
    ("quarantine_after_days = 1.5", "retention.quarantine_after_days: must be an integer "
                                    "between 1 and 36500, got 1.5"),
    ("raw_days = 90", 'retention.raw_days: unknown key; did you mean "raw_after_days"?'),
])
def test_bad_retention_values_are_refused_at_their_key(tmp_path, table, problem):
    problems = config.check_file(central_toml(tmp_path, f"[retention]\n{table}\n"), REGISTRY)
    (only,) = problems
    assert str(only).startswith(problem)


def test_retention_is_not_an_edge_setting(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('role = "edge"\norganisation = "kommune-0999"\ngateway = "gw-0001"\n'
                    '[broker]\nurl = "mqtt://127.0.0.1:1"\n[storage]\npath = "x"\n'
                    "[retention]\nraw_after_days = 30\n")
    assert [str(p) for p in config.check_file(path, REGISTRY)] == [
        'retention: is only allowed in a central config (this file has role = "edge")']


# --- command line -----------------------------------------------------------------------------


def test_the_command_dry_runs_then_runs_and_audits_who(tmp_path):
    path = central_toml(tmp_path, "[retention]\nraw_after_days = 30\n"
                                  "quarantine_after_days = 365\n")
    now = datetime.now(UTC)
    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [observation(0, now - timedelta(days=40)),
                                  observation(1, now - timedelta(days=5))])
    before = dump(db)
    invoke = CliRunner().invoke

    dry = invoke(retention.retention_command, ["run", "--config", path, "--dry-run",
                                               "--by", "admin-a"])
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert lines[0].split() == ["KIND", "RECEIVED", "BEFORE", "ROWS", "BYTES", "OLDEST",
                                "NEWEST"]
    assert lines[1].startswith("raw device bytes of observations")
    assert f"  1     {len(waveform(0))}  " in lines[1]
    assert lines[2].startswith("quarantined input") and "  0     0  " in lines[2]
    assert lines[-1] == "dry run: nothing was changed"
    assert dump(db) == before

    done = invoke(retention.retention_command, ["run", "--config", path, "--by", "admin-a"])
    assert done.exit_code == 0, done.output
    assert "free pages, reused by new data" in done.output
    assert store.get_observation(db, "obs-0").raw == b""
    assert store.get_observation(db, "obs-1").raw == waveform(1)
    assert [(e.actor, e.detail["rows"]) for e in retention_audit(db)] == [("admin-a", 1)]
    db.close()


def test_the_command_without_a_policy_says_so(tmp_path):
    path = central_toml(tmp_path, "")
    result = CliRunner().invoke(retention.retention_command,
                                ["run", "--config", path, "--by", "admin-a"])
    assert result.exit_code == 0, result.output
    assert "sets neither raw_after_days nor quarantine_after_days" in result.output
