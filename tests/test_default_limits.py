"""The organisation's default limits (issue #8: "only a team lead changes default limits"):
versioned in the central's database and never overwritten, set by `telemon limits defaults
set`, and used by the real alarm engine for readings from each version's valid_from on.
Who did it: what sudo authenticated is recorded beside the claimed name.

The engine tests use test_alarms' helpers (enrol, reading, ingest) on a real database, with a
central config of their own: test_alarms' config still carries the limits table that
central.toml no longer accepts."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from conftest import admin_cli, write_central_toml
from test_alarms import ORG, T0, enrol, evaluations, ingest, reading, unresolved

from telemon import admin, alarms, config, plugin_manager, roles, store
from telemon.codes import KNOWN
from telemon.models import LimitSet, LimitVersion

INSTALLED = plugin_manager.get()[1].modules
HOUR = timedelta(hours=1)


@pytest.fixture
def db(tmp_path):
    database = store.open_database(tmp_path / "central.db")
    yield database
    database.close()


def set_default(db, key="pulse", valid_from=T0, actor="lead-a", reason="team conference",
                **limits):
    return admin.set_default_limits(
        db, organisation=ORG, module="copd", code_key=key,
        limits=LimitSet(**{k: Decimal(str(v)) for k, v in limits.items()}), reason=reason,
        actor=actor, installed_modules=INSTALLED, valid_from=valid_from)


# --- versions ---------------------------------------------------------------------------------


def test_a_new_default_version_ends_the_old_one_which_is_never_overwritten(db):
    first = set_default(db, valid_from=T0, yellow_low=50, yellow_high=110)
    second = set_default(db, valid_from=T0 + HOUR, yellow_low=50, yellow_high=100,
                         reason="too many yellows at night")
    assert (first.version, second.version) == (1, 2)
    history = store.default_limit_history(db, ORG)
    assert [(v.version, v.valid_from, v.valid_to, v.limits.yellow_high, v.reason)
            for v in history] == [
        (1, T0, T0 + HOUR, Decimal(110), "team conference"),
        (2, T0 + HOUR, None, Decimal(100), "too many yellows at night")]
    # the database refuses to change or remove a version
    for statement in ("UPDATE default_limits SET limits = '{}' WHERE version = 1",
                      "UPDATE default_limits SET author = 'someone' WHERE version = 1",
                      "DELETE FROM default_limits"):
        with pytest.raises(sqlite3.DatabaseError, match="default_limits is append-only"):
            db.execute(statement)
    assert store.default_limit_history(db, ORG) == history
    # a version cannot start before the current one: history is not rewritten
    with pytest.raises(admin.AdminError, match="would start before the current version"):
        set_default(db, valid_from=T0 + HOUR / 2, yellow_high=90)
    assert len(store.default_limit_history(db, ORG)) == 2
    # each is audited with before, after and the reason
    entries = [e for e in admin.audit_entries(db) if e.action == "limits.defaults.set"]
    assert [(e.actor, e.detail["version"], e.detail["before_source"], e.why)
            for e in entries] == [("lead-a", 1, "module", "team conference"),
                                  ("lead-a", 2, "organisation v1", "too many yellows at night")]
    assert entries[0].detail["before"]["yellow_high"] == 100  # the module's own
    assert entries[1].detail["before"]["yellow_high"] == 110
    assert entries[1].detail["after"]["yellow_high"] == 100


@pytest.mark.parametrize("change, message", [
    ({"key": "bp_sys"}, r"module copd does not measure bp_sys \(its codes: spo2, pulse"),
    ({"key": "spox"}, "unknown code 'spox'; did you mean spo2?"),
    ({"reason": "  "}, "a reason is required for new default limits"),
    ({"red_high": 900}, "pulse red_high 900 is outside the plausible range 20 to 250"),
])
def test_bad_default_limits_are_refused_and_nothing_is_kept(db, change, message):
    limits = {"red_high": change.pop("red_high", 130)}
    with pytest.raises(admin.InvalidInput, match=message):
        set_default(db, **change, **limits)
    assert store.default_limit_history(db, ORG) == []


def test_only_a_team_lead_sets_default_limits_and_a_refusal_is_audited(db):
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    admin.add_staff(db, name="lead-a", role="team_lead", actor="admin-a")
    admin.add_staff(db, name="nurse-a", role="nurse", actor="admin-a")
    for who in ("nurse-a", "admin-a", "stranger"):
        with pytest.raises(admin.Refused, match=r"the right limits\.defaults is held by "
                                                r"team_lead$"):
            set_default(db, actor=who, yellow_high=110)
    assert store.default_limit_history(db, ORG) == []
    assert [(e.actor, e.detail) for e in admin.audit_entries(db) if e.action == "refused"] == [
        (who, {"right": "limits.defaults", "attempted": "limits.defaults.set"})
        for who in ("nurse-a", "admin-a", "stranger")]
    assert set_default(db, actor="lead-a", yellow_high=110).version == 1


# --- the engine ---------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path, db):
    data = {"role": "central", "organisation": ORG, "broker": {"url": "mqtt://127.0.0.1:1"},
            "storage": {"path": str(tmp_path)}, "modules": {"copd": {"enabled": True}}}
    central, problems = config.validate(data, plugin_manager.get()[1])
    assert not problems, problems
    enrol(db)
    engine = alarms.AlarmEngine(db, central, INSTALLED)
    engine.directory.refresh()
    return engine


def source_of(db, observation):
    (_, _, severity, limits, source), = evaluations(db, observation)
    return severity, source, msgspec.json.decode(limits, type=LimitSet)


def test_the_engine_uses_each_default_version_for_readings_from_its_valid_from(engine, db):
    ingest(engine, [reading(1, "pulse", "105", at=T0 - HOUR)])
    assert source_of(db, "p-0001-pulse-1")[:2] == ("yellow", "module")  # 105 > 100
    set_default(db, valid_from=T0, yellow_low=50, yellow_high=110)
    assert engine.directory.refresh()  # the audit log grew: reloaded
    set_default(db, valid_from=T0 + 2 * HOUR, yellow_low=50, yellow_high=100, red_high=104)
    # readings arriving now, each judged by the version valid at its own time
    ingest(engine, [reading(2, "pulse", "105", at=T0 - timedelta(minutes=1)),
                    reading(3, "pulse", "105", at=T0),
                    reading(4, "pulse", "105", at=T0 + 2 * HOUR - timedelta(seconds=1)),
                    reading(5, "pulse", "105", at=T0 + 2 * HOUR)])
    assert source_of(db, "p-0001-pulse-2")[:2] == ("yellow", "module")  # before v1
    assert source_of(db, "p-0001-pulse-3")[:2] == ("green", "organisation v1")
    assert source_of(db, "p-0001-pulse-4")[:2] == ("green", "organisation v1")
    severity, source, limits = source_of(db, "p-0001-pulse-5")
    assert (severity, source, limits.red_high) == ("red", "organisation v2", Decimal(104))
    (alarm,) = unresolved(db)
    assert alarm.message == "Pulse rate 105 /min above the red limit 104 /min " \
                            "(organisation v2 limits)"
    # the patient's own version still comes first; other codes keep the module's defaults
    with store.transaction(db):
        store.store_record(db, LimitVersion(
            patient="p-0001", code=KNOWN["pulse"].code, limits=LimitSet(yellow_high=Decimal(120)),
            valid_from=T0 + 3 * HOUR, author="dr-test", reason="athlete"))
        store.audit(db, actor="dr-test", action="limits.set", patient="p-0001")
    ingest(engine, [reading(6, "pulse", "105", at=T0 + 3 * HOUR),
                    reading(7, "spo2", "89", at=T0 + 3 * HOUR)])
    assert source_of(db, "p-0001-pulse-6")[:2] == ("green", "patient v1")
    assert source_of(db, "p-0001-spo2-7")[:2] == ("yellow", "module")


def test_another_organisations_defaults_are_not_used(engine, db):
    admin.set_default_limits(db, organisation="kommune-0101", module="copd", code_key="pulse",
                             limits=LimitSet(yellow_high=Decimal(110)), reason="theirs",
                             actor="lead-b", installed_modules=INSTALLED, valid_from=T0)
    ingest(engine, [reading(1, "pulse", "105", at=T0 + HOUR)])
    assert source_of(db, "p-0001-pulse-1")[:2] == ("yellow", "module")


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    cli = admin_cli()
    path = write_central_toml(tmp_path, "[modules.copd]\nenabled = true\n")

    def invoke(*args: str, by: str | None = "lead-a"):
        return CliRunner().invoke(cli, [*args, "--config", str(path),
                                        *(["--by", by] if by else [])])
    return invoke


def test_cli_sets_shows_and_lists_default_limits(run, tmp_path):
    result = run("limits", "defaults", "set", "copd", "spo2", "--red-low", "86",
                 "--yellow-low", "88", "--reason", "team conference: BTS target",
                 "--valid-from", "2026-03-02T09:00")
    assert result.exit_code == 0, result.output
    assert result.output == ("copd spo2: organisation default version 1 from 2026-03-02 "
                             "09:00 CET: red < 86, yellow < 88\n")
    shown = run("limits", "defaults", by=None)
    assert shown.exit_code == 0, shown.output
    rows = {tuple(line.split()[:2]): line for line in shown.output.splitlines()[1:]}
    assert shown.output.splitlines()[0].split() == ["MODULE", "CODE", "LIMITS", "SOURCE",
                                                    "FROM", "BY", "REASON"]
    assert rows[("copd", "spo2")].split()[2:11] == [
        "red", "<", "86,", "yellow", "<", "88", "organisation", "v1", "2026-03-02"]
    assert "team conference: BTS target" in rows[("copd", "spo2")]
    assert rows[("copd", "pulse")].split()[-1] == "module"  # not set: the module's
    as_json = {(r["module"], r["code"]): r for r in json.loads(
        run("limits", "defaults", "--json", by=None).output)}
    assert as_json[("copd", "spo2")]["source"] == "organisation v1"
    assert as_json[("copd", "spo2")]["valid_from"] == "2026-03-02T08:00:00Z"

    run("limits", "defaults", "set", "copd", "spo2", "--red-low", "85", "--reason", "review",
        "--valid-from", "2026-04-01T09:00")
    history = run("limits", "defaults", "history", "--code", "spo2", by=None).output
    lines = history.splitlines()
    assert lines[0].split()[:4] == ["MODULE", "CODE", "VERSION", "LIMITS"]
    assert [line.split()[2] for line in lines[1:]] == ["1", "2"]
    assert "2026-04-01 09:00 CEST" in lines[1]  # version 1 ended when version 2 started
    versions = json.loads(run("limits", "defaults", "history", "--json", by=None).output)
    assert [(v["version"], v["author"]) for v in versions] == [(1, "lead-a"), (2, "lead-a")]


def test_cli_refuses_a_nurse_and_an_unknown_module(run):
    assert run("staff", "add", "admin-a", "--role", "administrator", "--reason", "setup",
               by="setup").exit_code == 0
    assert run("staff", "add", "nurse-a", "--role", "nurse", "--reason", "hired",
               by="admin-a").exit_code == 0
    refused = run("limits", "defaults", "set", "copd", "spo2", "--red-low", "86",
                  "--reason", "x", by="nurse-a")
    assert refused.exit_code == 1
    assert refused.output == ("Error: refused: nurse-a (nurse) lacks the right "
                              "limits.defaults: the right limits.defaults is held by "
                              "team_lead\n")
    assert run("staff", "add", "lead-a", "--role", "team_lead", "--reason", "hired",
               by="admin-a").exit_code == 0
    unknown = run("limits", "defaults", "set", "cpod", "spo2", "--red-low", "86",
                  "--reason", "x", by="lead-a")
    assert unknown.exit_code == 2
    assert unknown.output.startswith("Error: unknown module 'cpod' (installed modules: ")
    assert "no organisation default limits set" in run("limits", "defaults", "history",
                                                       by=None).output
    alone = CliRunner().invoke(admin.limits_group, ["defaults"])
    assert alone.exit_code == 2 and "Missing option '--config'" in alone.output


# --- identity -----------------------------------------------------------------------------------


def test_under_sudo_the_authenticated_account_is_recorded_and_the_default_actor(
        db, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "anna")
    monkeypatch.delenv("TELEMON_USER", raising=False)
    assert admin._default_actor() == "anna"
    monkeypatch.setenv("TELEMON_USER", "nurse-anna")
    assert admin._default_actor() == "nurse-anna"  # a claim given explicitly is kept...
    set_default(db, actor="nurse-anna", yellow_high=110)
    entry = admin.audit_entries(db)[-1]
    # ... and beside it what the operating system authenticated
    assert entry.actor == "nurse-anna"
    assert entry.detail["identity"] == {"sudo_user": "anna", "os_user": roles.os_account()}
    monkeypatch.delenv("SUDO_USER")
    assert roles.identity() == {}
    set_default(db, actor="nurse-anna", yellow_high=100, valid_from=T0 + HOUR)
    assert "identity" not in admin.audit_entries(db)[-1].detail


def test_the_os_account_comes_from_the_user_id_not_the_environment(monkeypatch):
    import os
    import pwd
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert roles.os_account() == pwd.getpwuid(os.getuid()).pw_name != "someone-else"


def test_the_database_of_a_release_without_default_limits_gets_the_table(tmp_path):
    path = Path(tmp_path) / "old.db"
    old = store.open_database(path)
    old.execute("DROP TABLE default_limits")
    old.execute("DELETE FROM _migrations WHERE name = 'm006_default_limits'")
    old.close()
    reopened = store.open_database(path)
    assert "default_limits" in reopened.table_names()
    assert store.default_limit_history(reopened, ORG) == []
    reopened.close()
