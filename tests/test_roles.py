"""Staff roles (telemon.roles, telemon.admin): once staff are registered, each change and
audited read needs a role holding its right; a refusal is one line naming the right, and is
audited. Real central databases and the real command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import admin_cli, write_central_toml

from telemon import admin, alarms, config, nursing, plugin_manager, roles, store
from telemon.models import Alarm, AlarmEvent, LimitSet

ORG = "kommune-0999"
INSTALLED = plugin_manager.get()[1].modules


@pytest.fixture
def db(tmp_path):
    database = store.open_database(tmp_path / "central.db")
    admin.add_patient(database, patient="p-0001", organisation=ORG,
                      display_name="Test Patient 1", timezone="Europe/Copenhagen",
                      modules=("copd",), actor="setup", installed_modules=INSTALLED)
    raised = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    store.store_record(database, Alarm(
        id="a-1", patient="p-0001", module="copd", rule="limits.spo2", severity="red",
        raised=raised, message="SpO2 85 % below the red limit 88 % (module limits)",
        events=(AlarmEvent(at=raised, action="raised", by="central", note=""),)))
    yield database
    database.close()


@pytest.fixture
def staffed(db):
    """A central with one member of each role."""
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    admin.add_staff(db, name="lead-a", role="team_lead", actor="admin-a")
    admin.add_staff(db, name="nurse-a", role="nurse", actor="admin-a")
    return db


def refusals(db) -> list[tuple[str, str | None, dict]]:
    return [(e.actor, e.patient, e.detail) for e in admin.audit_entries(db)
            if e.action == "refused"]


# What each operation does, by an actor; the rights it needs are in the table below.
OPERATIONS = {
    "enrol": lambda db, actor: admin.add_patient(
        db, patient="p-0002", organisation=ORG, display_name="Test Patient 2",
        timezone="Europe/Copenhagen", modules=("copd",), actor=actor,
        installed_modules=INSTALLED),
    "bind gateway": lambda db, actor: admin.bind_gateway(db, patient="p-0001",
                                                         gateway="gw-9", actor=actor),
    "set limits": lambda db, actor: admin.set_limits(
        db, patient="p-0001", code_key="spo2", limits=LimitSet(red_low=Decimal(88)),
        reason="order from the GP", actor=actor),
    "record consent": lambda db, actor: admin.record_consent(
        db, patient="p-0001", purpose="research", granted=True, actor=actor),
    "show patient": lambda db, actor: admin.show_patient(db, "p-0001", actor=actor),
    "add staff": lambda db, actor: admin.add_staff(db, name="nurse-b", role="nurse",
                                                   actor=actor),
    "set default limits": lambda db, actor: admin.set_default_limits(
        db, organisation=ORG, module="copd", code_key="spo2",
        limits=LimitSet(red_low=Decimal(86), yellow_low=Decimal(88)),
        reason="team conference", actor=actor, installed_modules=INSTALLED),
    "acknowledge alarm": lambda db, actor: alarms.acknowledge(db, "a-1", by=actor,
                                                              note="phoned"),
    "resolve alarm": lambda db, actor: alarms.resolve(db, "a-1", by=actor, note="stable"),
    "assign": lambda db, actor: nursing.assign(db, "p-0001", nurse=actor),
    "mark contacted": lambda db, actor: nursing.mark_contacted(db, "p-0001", nurse=actor,
                                                               note="phoned"),
    "review greens": lambda db, actor: nursing.review_green(db, {"p-0001": 1}, nurse=actor),
    "read audit": lambda db, actor: admin.read_audit(db, actor=actor),
}

# The issue's division of work: nurses follow patients (limits, consent, reads); team leads
# too; administrators enrol and manage staff, and set no clinical limits.
# Only team leads change the organisation's default limits; nurses and team leads handle
# alarms in the dashboard; team leads and administrators read the audit log.
HANDLING = {"acknowledge alarm", "resolve alarm", "assign", "mark contacted", "review greens"}
ALLOWED = {
    "nurse-a": {"set limits", "record consent", "show patient"} | HANDLING,
    "lead-a": {"set limits", "record consent", "show patient", "set default limits",
               "read audit"} | HANDLING,
    "admin-a": {"enrol", "bind gateway", "record consent", "show patient", "add staff",
                "read audit"},
}


@pytest.mark.parametrize("actor", sorted(ALLOWED))
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_role_may_do_what_its_rights_allow_and_nothing_else(staffed, actor, operation):
    if operation in ALLOWED[actor]:
        OPERATIONS[operation](staffed, actor)
        assert refusals(staffed) == []
        return
    entries_before = len(admin.audit_entries(staffed))
    with pytest.raises(admin.Refused, match=r"^refused: \S+ \((nurse|team_lead|administrator)"
                                             r"\) lacks the right [a-z.]+: the right"):
        OPERATIONS[operation](staffed, actor)
    # nothing changed but the refusal, which is audited with the right it lacked
    assert len(admin.audit_entries(staffed)) == entries_before + 1
    ((who, _, detail),) = refusals(staffed)
    assert who == actor and detail["right"] in roles.RIGHTS
    assert roles.role_of(staffed, actor) not in roles.RIGHTS[detail["right"]]


def test_every_right_is_held_by_the_roles_the_issue_gives_it():
    assert {right: roles.holders(right) for right in roles.RIGHTS} == {
        "patient.read": ["nurse", "team_lead", "administrator"],
        "consent.record": ["nurse", "team_lead", "administrator"],
        "limits.set": ["nurse", "team_lead"],
        "limits.defaults": ["team_lead"],
        "alarm.handle": ["nurse", "team_lead"],
        "audit.read": ["team_lead", "administrator"],
        "enrolment.change": ["administrator"],
        "staff.manage": ["administrator"],
        "citizen.export": ["team_lead", "administrator"],
        "retention.run": ["administrator"],
    }


def test_a_refused_alarm_action_is_audited_and_changes_nothing(staffed):
    with pytest.raises(admin.Refused) as caught:
        alarms.acknowledge(staffed, "a-1", by="admin-a", note="on it")
    assert str(caught.value) == ("refused: admin-a (administrator) lacks the right "
                                 "alarm.handle: the right alarm.handle is held by nurse, "
                                 "team_lead")
    assert refusals(staffed) == [("admin-a", "p-0001", {"right": "alarm.handle",
                                                       "attempted": "alarm.acknowledged"})]
    alarm = store.get_alarm(staffed, "a-1")
    assert alarm.state == "open" and [e.action for e in alarm.events] == ["raised"]
    # a nurse may; her acknowledgement carries her note as its why
    alarms.acknowledge(staffed, "a-1", by="nurse-a", note="phoned, on rescue pack")
    entry = admin.audit_entries(staffed)[-1]
    assert (entry.action, entry.actor, entry.why) == ("alarm.acknowledged", "nurse-a",
                                                      "phoned, on rescue pack")


def test_reading_the_audit_log_needs_the_right_and_is_audited_itself(staffed):
    with pytest.raises(admin.Refused, match=r"nurse-a \(nurse\) lacks the right audit\.read"):
        admin.read_audit(staffed, actor="nurse-a", patient="p-0001")
    before = admin.audit_entries(staffed)
    read = admin.read_audit(staffed, actor="lead-a", patient="p-0001",
                            purpose="complaint 2026-17")
    assert read == [e for e in before if e.patient == "p-0001"]
    last = admin.audit_entries(staffed)[-1]
    assert (last.actor, last.action, last.patient, last.why, last.detail["entries"]) == (
        "lead-a", "audit.read", "p-0001", "complaint 2026-17", len(read))
    assert [e.detail["attempted"] for e in read if e.action == "refused"] == ["audit.read"]


def test_a_refusal_names_the_right_and_who_holds_it(staffed):
    with pytest.raises(admin.Refused) as caught:
        OPERATIONS["enrol"](staffed, "nurse-a")
    assert str(caught.value) == ("refused: nurse-a (nurse) lacks the right enrolment.change: "
                                 "the right enrolment.change is held by administrator")
    assert refusals(staffed) == [("nurse-a", "p-0002", {"right": "enrolment.change",
                                                        "attempted": "patient.add"})]
    assert admin.list_patients(staffed, ORG)[-1].id == "p-0001"  # not enrolled


def test_without_staff_nothing_is_checked_and_with_staff_strangers_are_refused(db):
    assert not roles.enforced(db)
    OPERATIONS["set limits"](db, "anyone")  # as before staff existed
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    assert roles.enforced(db)
    with pytest.raises(admin.Refused, match="refused: anyone is not registered staff "
                                            r"\(telemon staff add\); the right limits.set is "
                                            "held by nurse, team_lead"):
        OPERATIONS["set limits"](db, "anyone")


def test_the_first_staff_member_must_be_an_administrator(db):
    with pytest.raises(admin.AdminError, match="the first staff member must be an "
                                               "administrator"):
        admin.add_staff(db, name="nurse-a", role="nurse", actor="setup")
    assert roles.staff(db) == []


@pytest.mark.parametrize("name, role, message", [
    ("", "nurse", "a staff name is 1 to 64 printable characters"),
    ("x" * 65, "nurse", "a staff name is 1 to 64 printable characters"),
    ("nurse\nb", "nurse", "a staff name is 1 to 64 printable characters"),
    ("nurse-b", "doctor", "unknown role 'doctor' (roles: nurse, team_lead, administrator)"),
])
def test_bad_staff_are_refused_with_the_reason(staffed, name, role, message):
    with pytest.raises(admin.InvalidInput) as caught:
        admin.add_staff(staffed, name=name, role=role, actor="admin-a")
    assert str(caught.value) == message


def test_staff_are_added_once_and_removed_with_audit_but_not_the_last_administrator(staffed):
    with pytest.raises(admin.AdminError, match="nurse-a is already registered as nurse"):
        admin.add_staff(staffed, name="nurse-a", role="team_lead", actor="admin-a")
    with pytest.raises(admin.AdminError, match="admin-a is the last administrator"):
        admin.remove_staff(staffed, name="admin-a", actor="admin-a")
    admin.remove_staff(staffed, name="nurse-a", actor="admin-a", reason="left the team")
    assert [(m.name, m.role) for m in roles.staff(staffed)] == [
        ("admin-a", "administrator"), ("lead-a", "team_lead")]
    with pytest.raises(admin.Refused, match="nurse-a is not registered staff"):
        OPERATIONS["show patient"](staffed, "nurse-a")
    staff_actions = [(e.actor, e.action, e.detail) for e in admin.audit_entries(staffed)
                     if e.action.startswith("staff.")]
    assert staff_actions[-1] == ("admin-a", "staff.remove", {
        "name": "nurse-a", "role": "nurse", "reason": "left the team"})
    assert [a for _, a, _ in staff_actions] == ["staff.add"] * 3 + ["staff.remove"]


def test_a_cpr_number_typed_as_patient_is_refused_before_it_could_be_audited(staffed):
    with pytest.raises(admin.InvalidInput, match="looks like a CPR number"):
        admin.show_patient(staffed, "010203-1234", actor="stranger")
    assert "010203-1234" not in json.dumps([e.patient for e in admin.audit_entries(staffed)])


def test_the_dashboard_shows_a_refusal_in_one_line(staffed, tmp_path):
    path = write_central_toml(tmp_path)
    _, registry = plugin_manager.get()
    central = config.load(path, registry)
    with pytest.raises(admin.AdminError) as caught:  # the dashboard shows AdminErrors
        nursing.patient_record(staffed, "p-0001", nurse="temp-nurse", config=central,
                               modules=registry.modules)
    assert nursing.readable_error(caught.value) == (
        "refused: temp-nurse is not registered staff (telemon staff add); the right "
        "patient.read is held by nurse, team_lead, administrator")


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    cli = admin_cli()
    central_toml = write_central_toml(tmp_path, "[modules.copd]\nenabled = true\n")

    def invoke(*args: str, by: str):
        return CliRunner().invoke(cli, [*args, "--config", str(central_toml), "--by", by])
    return invoke


def test_cli_staff_add_list_remove_and_a_refusal(run, tmp_path):
    result = CliRunner().invoke(admin.staff_group, [
        "list", "--config", str(tmp_path / "central.toml")])
    assert "no staff registered: rights are not checked" in result.output  # nobody registered yet
    assert run("staff", "add", "nurse-a", "--role", "nurse", "--reason", "hired",
               by="setup").output == (
        "Error: the first staff member must be an administrator (who can then add the "
        "others)\n")
    assert run("staff", "add", "admin-a", "--role", "administrator", "--reason", "installation",
               by="setup").output == "added admin-a as administrator\n"
    assert run("staff", "add", "nurse-a", "--role", "nurse", "--reason", "hired",
               by="admin-a").exit_code == 0
    assert run("patient", "add", "p-0001", "--name", "Test Patient 1", "--module", "copd",
               "--reason", "referral", by="admin-a").exit_code == 0

    refused = run("limits", "history", "p-0001", by="stranger")
    assert refused.exit_code == 1
    assert refused.output.splitlines() == [
        "Error: refused: stranger is not registered staff (telemon staff add); the right "
        "patient.read is held by nurse, team_lead, administrator"]
    refused = run("patient", "add", "p-0002", "--name", "Test Patient 2", "--module", "copd",
                  "--reason", "referral", by="nurse-a")
    assert refused.exit_code == 1 and "lacks the right enrolment.change" in refused.output

    central_toml = str(tmp_path / "central.toml")
    listed = CliRunner().invoke(admin.staff_group, ["list", "--json", "--config", central_toml])
    assert [(m["name"], m["role"], m["added_by"]) for m in json.loads(listed.output)] == [
        ("admin-a", "administrator", "setup"), ("nurse-a", "nurse", "admin-a")]
    assert run("staff", "remove", "nurse-a", "--reason", "left", by="admin-a").output == (
        "removed nurse-a\n")
    table = CliRunner().invoke(admin.staff_group, ["list", "--config", central_toml]).output
    assert table.splitlines()[0].split() == ["NAME", "ROLE", "ADDED", "ADDED", "BY"]
    assert "nurse-a" not in table

    # every refusal is in the audit log, which `telemon audit` shows
    db = store.open_database(Path(tmp_path) / "data" / store.CENTRAL_DATABASE)
    assert [(e.actor, e.detail["attempted"]) for e in admin.audit_entries(db)
            if e.action == "refused"] == [("stranger", "limits.history"),
                                          ("nurse-a", "patient.add")]
    db.close()
