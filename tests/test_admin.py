"""Enrolment and administration (telemon.admin) on a real central database: every change
audited in its own transaction, limits versioned, consent as events, and the commands'
tables, JSON and one-line errors."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from conftest import admin_cli, write_central_toml

from telemon import admin, alarms, plugin_manager, store
from telemon.codes import KNOWN
from telemon.models import LimitSet

ORG = "kommune-0999"
NAME = "Test Patient 1"  # personal data: must never show up in errors
INSTALLED = plugin_manager.get()[1].modules
CPH = ZoneInfo("Europe/Copenhagen")


@pytest.fixture
def db(tmp_path):
    database = store.open_database(tmp_path / "central.db")
    yield database
    database.close()


def add(db, patient="p-0001", **changes):
    fields = dict(patient=patient, organisation=ORG, display_name=NAME,
                  timezone="Europe/Copenhagen", modules=("copd",), gateways=("gw-1",),
                  actor="nurse-a", installed_modules=INSTALLED)
    return admin.add_patient(db, **(fields | changes))


def actions(db, patient=None):
    return [e.action for e in admin.audit_entries(db, patient=patient)]


# --- library --------------------------------------------------------------------------------


def test_add_patient_stores_the_person_the_enrolment_and_the_audit_entry(db):
    patient = add(db, gateways=("gw-1", "gw-2"))
    assert (patient.id, patient.display_name, patient.timezone.key) == (
        "p-0001", NAME, "Europe/Copenhagen")
    assert patient.enrolment.modules == ("copd",)
    assert patient.enrolment.gateways == ("gw-1", "gw-2")
    assert admin.get_patient(db, "p-0001") == patient
    (entry,) = admin.audit_entries(db)
    assert (entry.actor, entry.action, entry.patient) == ("nurse-a", "patient.add", "p-0001")
    assert entry.detail["modules"] == ["copd"]
    # the name stays in `patients`: neither the audit log nor a repr carries it
    assert NAME not in json.dumps(entry.detail) and NAME not in repr(patient)


def test_a_duplicate_patient_is_refused_and_nothing_changes(db):
    add(db)
    with pytest.raises(admin.AdminError, match="patient p-0001 already exists") as caught:
        add(db, display_name="Test Patient 2", modules=("copd",))
    assert "Test Patient" not in str(caught.value)
    assert actions(db) == ["patient.add"]
    assert admin.get_patient(db, "p-0001").display_name == NAME


@pytest.mark.parametrize("changes, message", [
    ({"modules": ("heartfailure",)}, "unknown module 'heartfailure' (installed modules: "
                                     + ", ".join(sorted(INSTALLED))),
    ({"modules": ()}, "at least one module"),
    ({"timezone": "Europe/Kobenhavn"}, "unknown time zone 'Europe/Kobenhavn'"),
    ({"patient": "010203-1234"}, "looks like a CPR number"),
    ({"patient": "p 0001"}, "patient id 'p 0001' must be"),
    ({"gateways": ("gw/1",)}, "gateway id 'gw/1' must be"),
    ({"display_name": "  "}, "a display name is required"),
])
def test_bad_enrolments_are_refused_with_the_reason(db, changes, message):
    with pytest.raises(admin.InvalidInput, match=message.replace("(", r"\(")) as caught:
        add(db, **changes)
    assert "010203-1234" not in str(caught.value)  # a CPR number is never repeated
    assert db.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == 0


def test_a_change_without_an_actor_is_not_kept(db):
    with pytest.raises(ValueError, match="needs the name of who made it"):
        add(db, actor=" ")
    assert db.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM enrolments").fetchone()[0] == 0


def test_limits_are_versioned_and_audited_with_before_and_after(db):
    add(db)
    start = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
    first = admin.set_limits(db, patient="p-0001", code_key="spo2",
                             limits=LimitSet(red_low=Decimal(86), yellow_low=Decimal(89)),
                             reason="referral", actor="doctor-a", valid_from=start)
    second = admin.set_limits(db, patient="p-0001", code_key="spo2",
                              limits=LimitSet(red_low=Decimal(85)), reason="review",
                              actor="doctor-b", valid_from=start + timedelta(days=7))
    assert (first.version, second.version) == (1, 2)
    history = store.limit_history(db, "p-0001", KNOWN["spo2"].code)
    assert [v.valid_to for v in history] == [start + timedelta(days=7), None]
    assert [v.author for v in history] == ["doctor-a", "doctor-b"]
    entry = admin.audit_entries(db, patient="p-0001")[-1]
    assert (entry.action, entry.actor) == ("limits.set", "doctor-b")
    assert entry.detail["before"] == {"red_low": 86, "yellow_low": 89, "yellow_high": None,
                                      "red_high": None}
    assert entry.detail["after"]["red_low"] == 85
    assert (entry.detail["version"], entry.detail["reason"]) == (2, "review")
    # what is in force depends on when you ask
    assert [v.version for v in admin.limits_in_force(db, "p-0001", start + timedelta(days=1))
            ] == [1]
    assert [v.version for v in admin.limits_in_force(db, "p-0001", start + timedelta(days=8))
            ] == [2]


@pytest.mark.parametrize("code, limits, message", [
    ("spo2", LimitSet(red_low=Decimal(900)), "spo2 red_low 900 is outside the plausible range "
                                             "50 to 100 %"),
    ("spox", LimitSet(red_low=Decimal(90)), "unknown code 'spox'; did you mean spo2?"),
    ("spo2", LimitSet(), "no limits given for spo2"),
])
def test_bad_limits_are_refused(db, code, limits, message):
    add(db)
    with pytest.raises(admin.InvalidInput, match=message.replace("?", r"\?")):
        admin.set_limits(db, patient="p-0001", code_key=code, limits=limits, reason="x",
                         actor="doctor-a")
    assert db.execute("SELECT COUNT(*) FROM limits").fetchone()[0] == 0


def test_limits_may_not_start_before_the_current_version(db):
    add(db)
    start = datetime(2026, 1, 10, tzinfo=UTC)
    admin.set_limits(db, patient="p-0001", code_key="pulse", limits=LimitSet(
        yellow_high=Decimal(100)), reason="referral", actor="doctor-a", valid_from=start)
    with pytest.raises(admin.AdminError, match="would start before the current version"):
        admin.set_limits(db, patient="p-0001", code_key="pulse", limits=LimitSet(
            yellow_high=Decimal(105)), reason="x", actor="doctor-a",
            valid_from=start - timedelta(days=1))
    assert actions(db, "p-0001") == ["patient.add", "limits.set"]


def test_modules_are_enabled_and_disabled_with_audit(db):
    add(db)
    enrolment = admin.disable_module(db, patient="p-0001", module="copd", actor="nurse-a")
    assert enrolment.modules == ()
    with pytest.raises(admin.AdminError, match="module copd is not enabled for p-0001"):
        admin.disable_module(db, patient="p-0001", module="copd", actor="nurse-a")
    enrolment = admin.enable_module(db, patient="p-0001", module="copd", actor="nurse-a",
                                    installed_modules=INSTALLED)
    assert admin.get_patient(db, "p-0001").enrolment.modules == ("copd",) == enrolment.modules
    with pytest.raises(admin.AdminError, match="already enabled"):
        admin.enable_module(db, patient="p-0001", module="copd", actor="nurse-a",
                            installed_modules=INSTALLED)
    with pytest.raises(admin.InvalidInput, match="unknown module 'hf'"):
        admin.enable_module(db, patient="p-0001", module="hf", actor="nurse-a",
                            installed_modules=INSTALLED)
    entry = admin.audit_entries(db)[-1]
    assert entry.action == "module.enable"
    assert (entry.detail["before"]["modules"], entry.detail["after"]["modules"]) == ([],
                                                                                     ["copd"])


def test_one_gateway_serves_two_patients_and_a_patient_has_two_gateways(db):
    add(db, "p-0001", gateways=("gw-home",))
    add(db, "p-0002", gateways=("gw-home",), display_name="Test Patient 2")
    admin.bind_gateway(db, patient="p-0001", gateway="gw-cabin", actor="nurse-a")
    assert admin.get_patient(db, "p-0001").enrolment.gateways == ("gw-home", "gw-cabin")
    assert admin.get_patient(db, "p-0002").enrolment.gateways == ("gw-home",)
    with pytest.raises(admin.AdminError, match="gateway gw-cabin is already bound to p-0001"):
        admin.bind_gateway(db, patient="p-0001", gateway="gw-cabin", actor="nurse-a")
    admin.unbind_gateway(db, patient="p-0001", gateway="gw-home", actor="nurse-a")
    assert admin.get_patient(db, "p-0001").enrolment.gateways == ("gw-cabin",)
    with pytest.raises(admin.AdminError, match="gateway gw-home is not bound to p-0001"):
        admin.unbind_gateway(db, patient="p-0001", gateway="gw-home", actor="nurse-a")
    assert actions(db, "p-0001") == ["patient.add", "gateway.bind", "gateway.unbind"]


def test_the_alarm_engine_follows_a_gateway_binding(db):
    add(db, gateways=())
    directory = alarms.Directory(db, ORG, CPH)
    directory.refresh()
    assert "not bound to gateway gw-1" in directory.refusal("p-0001", "gw-1")
    admin.bind_gateway(db, patient="p-0001", gateway="gw-1", actor="nurse-a")
    assert directory.refresh()  # the audit entry tells it something changed
    assert directory.refusal("p-0001", "gw-1") is None


def test_consent_is_a_stream_of_events(db):
    add(db)
    admin.record_consent(db, patient="p-0001", purpose="monitoring", granted=True,
                         actor="nurse-a")
    admin.record_consent(db, patient="p-0001", purpose="research", granted=True,
                         actor="nurse-a")
    withdrawn = admin.record_consent(db, patient="p-0001", purpose="research", granted=False,
                                     actor="nurse-b")
    assert [(e.purpose, e.granted) for e in store.consent_history(db, "p-0001")] == [
        ("monitoring", True), ("research", True), ("research", False)]
    in_force = admin.consent_in_force(db, "p-0001")
    assert in_force["research"] == withdrawn and in_force["monitoring"].granted
    assert actions(db, "p-0001")[-1] == "consent.withdraw"
    with pytest.raises(admin.InvalidInput, match="unknown consent purpose 'marketing'"):
        admin.record_consent(db, patient="p-0001", purpose="marketing", granted=True,
                             actor="nurse-a")
    with pytest.raises(admin.AdminError, match="unknown patient p-0404"):
        admin.record_consent(db, patient="p-0404", purpose="monitoring", granted=True,
                             actor="nurse-a")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM consent_events")


def test_show_patient_is_an_audited_read(db):
    add(db)
    overview = admin.show_patient(db, "p-0001", actor="nurse-b")
    assert overview.patient.id == "p-0001" and overview.limits == []
    entry = admin.audit_entries(db)[-1]
    assert (entry.action, entry.actor, entry.patient) == ("patient.show", "nurse-b", "p-0001")
    with pytest.raises(admin.AdminError, match="unknown patient p-0404"):
        admin.show_patient(db, "p-0404", actor="nurse-b")
    assert actions(db) == ["patient.add", "patient.show"]


def test_list_patients_by_organisation_and_module(db):
    add(db, "p-0002", display_name="Test Patient 2")
    add(db, "p-0001")
    add(db, "p-0003", organisation="region-0001", display_name="Test Patient 3")
    admin.disable_module(db, patient="p-0002", module="copd", actor="nurse-a")
    assert [p.id for p in admin.list_patients(db, ORG)] == ["p-0001", "p-0002"]
    assert [p.id for p in admin.list_patients(db, ORG, module="copd")] == ["p-0001"]


def test_audit_entries_by_patient_and_time(db):
    add(db, "p-0001")
    add(db, "p-0002", display_name="Test Patient 2")
    first_two = admin.audit_entries(db)
    later = first_two[-1].at + timedelta(microseconds=1)
    admin.bind_gateway(db, patient="p-0001", gateway="gw-2", actor="nurse-a")
    assert [e.patient for e in first_two] == ["p-0001", "p-0002"]
    assert [e.action for e in admin.audit_entries(db, patient="p-0001")] == [
        "patient.add", "gateway.bind"]
    assert [e.action for e in admin.audit_entries(db, since=later)] == ["gateway.bind"]


# --- command line ---------------------------------------------------------------------------


@pytest.fixture
def cli():
    return admin_cli()


@pytest.fixture
def central(tmp_path):
    return str(write_central_toml(tmp_path, "[modules.copd]\nenabled = true\n"))


@pytest.fixture
def run(cli, central, monkeypatch):
    monkeypatch.setenv("TELEMON_USER", "nurse-env")

    def invoke(*args: str, config: str | None = central):
        tail = ["--config", config] if config else []
        return CliRunner().invoke(cli, [*args, *tail])
    return invoke


def audit_log(central) -> list[admin.AuditEntry]:
    """The audit log of the database the commands used (storage.path of the config)."""
    db = store.open_database(Path(central).parent / "data" / store.CENTRAL_DATABASE)
    try:
        return admin.audit_entries(db)
    finally:
        db.close()


def one_line_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.output.strip().splitlines() == [f"Error: {message}"]


def test_cli_enrols_and_shows_a_patient_in_their_time_zone(run, central):
    result = run("patient", "add", "p-0001", "--name", NAME, "--module", "copd",
                 "--gateway", "gw-1", "--gateway", "gw-2", "--reason", "referral")
    assert result.exit_code == 0, result.output
    assert result.output == "added patient p-0001 (modules: copd; gateways: gw-1, gw-2)\n"
    assert NAME not in result.output
    # 12:00 UTC on 15 January is 13:00 in Copenhagen (CET)
    result = run("limits", "set", "p-0001", "spo2", "--red-low", "86", "--yellow-low", "89.5",
                 "--reason", "referral", "--valid-from", "2026-01-15T12:00:00+00:00",
                 "--by", "doctor-a")
    assert result.exit_code == 0, result.output
    assert result.output == ("p-0001 spo2: version 1 from 2026-01-15 13:00 CET: "
                             "red < 86, yellow < 89.5\n")
    assert run("consent", "grant", "p-0001", "monitoring", "--reason", "signed form"
               ).exit_code == 0

    result = run("patient", "show", "p-0001")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["patient", "p-0001"]
    assert ["name", "Test", "Patient", "1"] in [line.split() for line in lines]
    assert "gateways      gw-1, gw-2" in lines
    spo2 = next(line for line in lines if line.startswith("spo2"))
    assert "red < 86, yellow < 89.5" in spo2 and "2026-01-15 13:00 CET" in spo2
    assert "doctor-a" in spo2 and "referral" in spo2
    assert next(line for line in lines if line.startswith("monitoring")).split()[1] == "granted"

    shown = json.loads(run("patient", "show", "p-0001", "--json").output)
    assert shown["display_name"] == NAME and shown["enrolment"]["gateways"] == ["gw-1", "gw-2"]
    assert shown["limits"][0]["limits"]["yellow_low"] == 89.5
    assert shown["consent"][0]["purpose"] == "monitoring"

    assert [(e.action, e.actor) for e in audit_log(central)] == [
        ("patient.add", "nurse-env"), ("limits.set", "doctor-a"),
        ("consent.grant", "nurse-env"), ("patient.show", "nurse-env"),
        ("patient.show", "nurse-env")]


def test_cli_lists_patients_and_audits_the_read(run, central):
    run("patient", "add", "p-0002", "--name", "Test Patient 2", "--module", "copd",
        "--timezone", "America/Godthab", "--reason", "referral")
    run("patient", "add", "p-0001", "--name", NAME, "--module", "copd", "--reason", "referral")
    result = run("patient", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["PATIENT", "NAME", "MODULES", "GATEWAYS", "ENROLLED"]
    assert [line.split()[0] for line in lines[1:]] == ["p-0001", "p-0002"]
    assert lines[1].rstrip().endswith(("CET", "CEST"))
    assert lines[2].rstrip().endswith(("-01", "-02"))  # Nuuk's local time
    listed = json.loads(run("patient", "list", "--json").output)
    assert [p["id"] for p in listed] == ["p-0001", "p-0002"]
    entry = audit_log(central)[-1]
    assert (entry.action, entry.detail["patients"]) == ("patient.list", ["p-0001", "p-0002"])


def test_cli_limits_history_and_audit_query(run, central):
    run("patient", "add", "p-0001", "--name", NAME, "--module", "copd", "--reason", "referral")
    for day, red_low in (("2026-01-10", "86"), ("2026-02-10", "85")):
        result = run("limits", "set", "p-0001", "spo2", "--red-low", red_low,
                     "--reason", f"review {day}", "--valid-from", f"{day}T09:00")
        assert result.exit_code == 0, result.output
    result = run("limits", "history", "p-0001", "--code", "spo2")
    rows = [line for line in result.output.splitlines() if line.startswith("spo2")]
    assert [row.split()[1] for row in rows] == ["1", "2"]
    assert "2026-01-10 09:00 CET" in rows[0] and "2026-02-10 09:00 CET" in rows[0]  # from, to
    versions = json.loads(run("limits", "history", "p-0001", "--json").output)
    assert [v["limits"]["red_low"] for v in versions] == [86, 85]
    assert versions[0]["valid_from"] == "2026-01-10T08:00:00Z"  # JSON keeps UTC

    entries = json.loads(run("audit", "--patient", "p-0001", "--json").output)
    assert [e["action"] for e in entries] == ["patient.add", "limits.set", "limits.set",
                                              "limits.history", "limits.history"]
    assert entries[2]["detail"]["before"]["red_low"] == 86
    assert [e["why"] for e in entries[:3]] == ["referral", "review 2026-01-10",
                                               "review 2026-02-10"]
    tomorrow = (datetime.now(CPH) + timedelta(days=1)).date().isoformat()
    assert json.loads(run("audit", "--since", tomorrow, "--json").output) == []
    table = run("audit", "--patient", "p-0001", "--purpose", "quarterly check").output
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "PATIENT", "WHY", "DETAIL"]
    # the first query of the patient's entries is among them now: reading is audited
    assert len(lines) == 1 + len(entries) + 1
    set_row = next(line for line in lines if "review 2026-02-10" in line)
    assert set_row.split()[3:7] == ["nurse-env", "limits.set", "p-0001", "review"]
    assert '"reason"' not in set_row  # the reason is shown once, in WHY
    reads = [e for e in audit_log(central) if e.action == "audit.read"]
    assert [(e.actor, e.patient, e.detail.get("purpose"), e.detail["entries"])
            for e in reads] == [("nurse-env", "p-0001", None, 5), ("nurse-env", None, None, 0),
                                ("nurse-env", "p-0001", "quarterly check", 6)]


def test_cli_modules_gateways_and_consent(run, central):
    run("patient", "add", "p-0001", "--name", NAME, "--module", "copd", "--gateway", "gw-1",
        "--reason", "referral")
    assert run("gateway", "bind", "p-0001", "gw-2", "--reason", "second home"
               ).output == "p-0001: gateways gw-1, gw-2\n"
    assert run("gateway", "unbind", "p-0001", "gw-1", "--reason", "returned"
               ).output == "p-0001: gateways gw-2\n"
    assert run("modules", "disable", "p-0001", "copd", "--reason", "paused"
               ).output == "p-0001: modules none\n"
    assert run("modules", "enable", "p-0001", "copd", "--reason", "resumed"
               ).output == "p-0001: modules copd\n"
    result = run("consent", "withdraw", "p-0001", "research", "--reason", "by phone")
    assert result.output.startswith("p-0001: consent to research withdrawn at ")
    entries = audit_log(central)
    assert [(e.action, e.why) for e in entries] == [
        ("patient.add", "referral"), ("gateway.bind", "second home"),
        ("gateway.unbind", "returned"), ("module.disable", "paused"),
        ("module.enable", "resumed"), ("consent.withdraw", "by phone")]
    assert entries[-1].detail["purpose"] == "research"
    assert entries[-1].detail["reason"] == "by phone"


@pytest.mark.parametrize("args", [
    ["patient", "add", "p-0002", "--name", "Test Patient 2", "--module", "copd"],
    ["gateway", "bind", "p-0001", "gw-2"],
    ["gateway", "unbind", "p-0001", "gw-1"],
    ["modules", "disable", "p-0001", "copd"],
    ["modules", "enable", "p-0001", "copd"],
    ["consent", "grant", "p-0001", "research"],
    ["consent", "withdraw", "p-0001", "research"],
    ["staff", "add", "admin-a", "--role", "administrator"],
    ["staff", "remove", "admin-a"],
    ["limits", "set", "p-0001", "spo2", "--red-low", "85"],
    ["limits", "defaults", "set", "copd", "spo2", "--red-low", "85"],
])
def test_cli_changes_need_a_reason_and_nothing_is_changed_without_one(run, central, args):
    run("patient", "add", "p-0001", "--name", NAME, "--module", "copd", "--gateway", "gw-1",
        "--reason", "referral")
    missing = run(*args)
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.output
    blank = run(*args, "--reason", "  ")
    assert blank.exit_code == 2 and "say why: it is kept in the audit log" in blank.output
    assert [e.action for e in audit_log(central)] == ["patient.add"]


def test_modules_alone_lists_installed_modules_with_default_limits(run):
    result = run("modules", config=None)
    assert result.exit_code == 0, result.output
    blocks = result.output.split("\n\n")  # modules are apart by a blank line, by name
    assert [b.split()[0] for b in blocks] == sorted(INSTALLED)
    (copd,) = [b.splitlines() for b in blocks if b.startswith("copd ")]
    table_end = copd.index("  rules (each on the watched code's readings of its window, at "
                           "every new one):")
    rows = {line.split()[0]: line for line in copd[2:table_end]}
    assert set(rows) == set(INSTALLED["copd"].codes)
    assert rows["spo2"].rstrip().endswith("red < 88, yellow < 90")
    assert rows["weight"].rstrip().endswith("no default limits")
    module = INSTALLED["copd"]
    rule = module.rules[0]
    assert f"    {rule.name} [{', '.join(rule.codes)}; 7 d]: {rule.description}" in copd
    assert "  schedule: spo2, pulse every 1 d by 12:00 local time" in copd
    assert copd[copd.index("  sources:") + 1:] == [f"    {s}" for s in module.sources]


def test_modules_list_questionnaire_items_with_their_significant_answers():
    from telemon.models import Triage
    from telemon.modules import Item, Questionnaire

    daily = Questionnaire(
        id="daily", version="1", title="Daily", score=lambda answers: {}, scores={},
        source="test", optional=("note",), items=(
            Item("breathless", "boolean", significance={True: Triage.YELLOW}),
            Item("cough", "boolean", significance={True: Triage.YELLOW}),
            Item("colour", "choice", options=("clear", "green"),
                 significance={"green": Triage.RED}),
            *(Item(f"q_{n}", "integer", low=0, high=5) for n in range(1, 9)),
            Item("note", "integer", low=0, high=5), Item("q_10", "boolean"),
            Item("q_11", "boolean")))
    assert admin._item_lines(daily) == [
        "breathless, cough: yes/no (yes: yellow)",
        "colour: clear|green (green: red)",
        "q_1..q_8: 0-5",  # three or more numbered on are shortened
        "note: 0-5; optional",
        "q_10, q_11: yes/no",  # two are not
    ]


def test_modules_json_describes_codes_rules_schedule_and_questionnaires(run):
    result = run("modules", "--json", config=None)
    assert result.exit_code == 0, result.output
    (copd,) = [m for m in json.loads(result.output)["modules"] if m["name"] == "copd"]
    module = INSTALLED["copd"]
    codes = {c["key"]: c for c in copd["codes"]}
    assert list(codes) == list(module.codes)
    assert codes["spo2"]["default_limits"] == {"red_low": 88, "yellow_low": 90,
                                               "yellow_high": None, "red_high": None}
    assert codes["spo2"]["unit"] == "%" and codes["spo2"]["code"]["code"] == "150456"
    assert codes["weight"]["default_limits"] is None
    assert copd["rules"][0] == {"name": "spo2_sustained_low",
                                "description": module.rules[0].description,
                                "codes": ["spo2"], "window_seconds": 7 * 86400,
                                "records": False}
    assert copd["schedule"] == {"codes": ["spo2", "pulse"], "every_seconds": 86400,
                                "deadline": "12:00"}
    for described, questionnaire in zip(copd["questionnaires"], module.questionnaires,
                                        strict=True):
        assert described["id"] == questionnaire.id
        assert [i["id"] for i in described["items"]] == [i.id for i in questionnaire.items]
        assert described["scores"] == dict(questionnaire.scores)
        for item, declared in zip(described["items"], questionnaire.items, strict=True):
            assert item["significance"] == [{"answer": a, "severity": t.label}
                                            for a, t in declared.significance.items()]
    assert copd["sources"] == list(module.sources)


@pytest.mark.parametrize("args, code, message", [
    (["patient", "show", "p-0404"], 1, "unknown patient p-0404"),
    (["patient", "add", "p-0001", "--name", "Test Patient 9", "--module", "copd",
      "--reason", "x"], 1, "patient p-0001 already exists"),
    (["patient", "add", "p-0002", "--name", "Test Patient 2", "--module", "hf",
      "--reason", "x"], 2,
     f"unknown module 'hf' (installed modules: {', '.join(sorted(INSTALLED))})"),
    (["modules", "enable", "p-0001", "hf", "--reason", "x"], 2,
     f"unknown module 'hf' (installed modules: {', '.join(sorted(INSTALLED))})"),
    (["limits", "set", "p-0001", "spox", "--red-low", "90", "--reason", "x"], 2,
     "unknown code 'spox'; did you mean spo2? (known codes: " + ", ".join(KNOWN) + ")"),
    (["limits", "set", "p-0001", "spo2", "--red-low", "92", "--yellow-low", "90",
      "--reason", "x"], 2, "spo2: limits out of order: red_low=92 > yellow_low=90"),
    (["limits", "defaults", "set", "copd", "spo2", "--red-low", "92", "--yellow-low", "90",
      "--reason", "x"], 2, "spo2: limits out of order: red_low=92 > yellow_low=90"),
    (["limits", "set", "p-0001", "spo2", "--red-low", "900", "--reason", "x"], 2,
     "spo2 red_low 900 is outside the plausible range 50 to 100 %"),
    (["limits", "set", "p-0001", "spo2", "--red-low", "88", "--reason", "x",
      "--valid-from", "soon"], 2, "--valid-from: 'soon' is not an ISO 8601 date or time"),
    (["gateway", "bind", "p-0001", "gw-1", "--reason", "x"], 1,
     "gateway gw-1 is already bound to p-0001"),
    (["consent", "grant", "p-0404", "monitoring", "--reason", "x"], 1,
     "unknown patient p-0404"),
])
def test_cli_errors_are_one_line_with_an_exit_code(run, central, args, code, message):
    assert run("patient", "add", "p-0001", "--name", NAME, "--module", "copd",
               "--gateway", "gw-1", "--reason", "referral").exit_code == 0
    result = run(*args)
    one_line_error(result, code, message)
    assert NAME not in result.output
    assert [e.action for e in audit_log(central)] == ["patient.add"]


def test_cli_needs_a_central_config_and_an_actor(run, tmp_path, monkeypatch):
    result = run("patient", "list", config=str(tmp_path / "missing.toml"))
    assert result.exit_code == 2 and "missing.toml: no such file" in result.output
    edge = tmp_path / "edge.toml"
    edge.write_text('role = "edge"\norganisation = "kommune-0999"\ngateway = "gw-1"\n'
                    '[broker]\nurl = "mqtt://127.0.0.1:1"\n'
                    f'[storage]\npath = "{tmp_path / "outbox"}"\n')
    result = run("patient", "list", config=str(edge))
    assert result.exit_code == 2 and 'role is "edge", not "central"' in result.output
    result = run("patient", "list", "--by", " ")
    assert result.exit_code == 2 and "--by NAME or set TELEMON_USER" in result.output


def test_quarantine_lists_what_was_refused_and_shows_the_exact_bytes(run, central):
    from telemon import config as config_module
    from telemon import plugin_manager

    cfg = config_module.load(central, plugin_manager.get()[1])
    db = store.open_database(store.central_database_path(cfg.storage.path))
    store.quarantine(db, source="mqtt:telemon/v1/o/gw-1/obs", reason="invalid wire form: x",
                     payload=b'{"type":')
    binary = store.quarantine(db, source="mqtt:telemon/v1/o/gw-1/obs", reason="not UTF-8",
                              payload=b"\xff\x00")
    db.close()
    table = run("quarantine").output.splitlines()
    assert table[0].split() == ["ID", "RECEIVED", "SOURCE", "BYTES", "REASON"]
    assert [line.split()[0] for line in table[1:]] == [str(binary), str(binary - 1)]
    entries = json.loads(run("quarantine", "--json", "--limit", "1").output)
    assert [(e["id"], e["payload_hex"], e["bytes"]) for e in entries] == [(binary, "ff00", 2)]
    assert "text      {\"type\":" in run("quarantine", "--id", str(binary - 1)).output
    assert "hex       ff00" in run("quarantine", "--id", str(binary)).output
    missing = run("quarantine", "--id", "999")
    assert missing.exit_code == 1 and "no quarantine entry 999" in missing.output
