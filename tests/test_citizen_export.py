"""The citizen export (GDPR art. 20) from a real central database: every file checked against
what went in, the manifest's hashes and counts, raw bytes round-trip, nothing of another
citizen, written atomically and audited."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import click
import pluggy
import pytest
from click.testing import CliRunner
from conftest import write_central_toml

from telemon import admin, hookspecs, plugin_manager, store, wire
from telemon.codes import KNOWN
from telemon.models import (
    AbsentReason,
    Alarm,
    AlarmEvent,
    Answer,
    Component,
    Evaluation,
    LimitSet,
    Observation,
    QuestionnaireResponse,
)
from telemon.plugin_manager import PluginError, call_each
from telemon.plugins.exporters import citizen_export
from telemon.plugins.exporters.csv import COLUMNS

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DATA_FILES = ("patient.json", "observations.json", "observations.csv",
              "questionnaire_responses.json", "alarms.json", "evaluations.json", "limits.json",
              "consent.json", "audit.json")


def reading(id_: str, patient: str, key: str, **fields) -> Observation:
    known = KNOWN[key]
    return Observation(id=id_, patient=patient, device="dev-1", gateway="gw-1", code=known.code,
                       unit=known.unit, effective=fields.pop("effective", T0), driver="sim",
                       driver_version="1.0", **fields)


def blood_pressure(id_: str, patient: str) -> Observation:
    parts = [Component(code=KNOWN[key].code, unit="mm[Hg]", value=Decimal(value))
             for key, value in (("bp_sys", "142"), ("bp_dia", "91"), ("bp_mean", "108"))]
    return reading(id_, patient, "bp", components=tuple(parts), raw=b"\x1e\x8e\x00\x5b\x00",
                   effective=T0 + timedelta(minutes=5))


def fill(db, patient: str, number: int) -> dict:
    """One citizen's data, every kind the central keeps; what went in, by kind."""
    admin.add_patient(db, patient=patient, organisation=ORG,
                      display_name=f"Test Patient {number}", timezone="Europe/Copenhagen",
                      modules=("copd",), gateways=("gw-1",), actor="nurse-a",
                      installed_modules=plugin_manager.get()[1].modules)
    observations = [
        reading(f"{patient}-spo2", patient, "spo2", value=Decimal("97.0"),
                raw=bytes(range(256))),  # every byte value: base64 must carry them all
        blood_pressure(f"{patient}-bp", patient),
        reading(f"{patient}-nan", patient, "spo2", absent=AbsentReason.NOT_A_NUMBER,
                raw=b"\xff\x07\xff\xff", effective=T0 + timedelta(minutes=9)),
    ]
    store.store_observations(db, observations, received=T0 + timedelta(minutes=10))
    store.store_record(db, QuestionnaireResponse(
        id=f"{patient}-qr", patient=patient, gateway="gw-1", questionnaire="copd-daily",
        version="1", authored=T0, answers=(Answer("breathless", "more"), Answer("sputum", 2)),
        scores={"total": Decimal("3.5")}))
    raised = AlarmEvent(at=T0 + timedelta(minutes=10), action="raised", by="central")
    alarm = Alarm(id=f"{patient}-alarm", patient=patient, module="copd", rule="limits.spo2",
                  severity="yellow", raised=raised.at, message="SpO2 below the yellow limit",
                  observations=(f"{patient}-spo2",), limits=LimitSet(yellow_low=Decimal(98)),
                  events=(raised,), code="spo2")
    store.store_record(db, alarm)
    store.store_record(db, Alarm(**{f: getattr(alarm, f) for f in alarm.__struct_fields__}
                                 | {"state": "acknowledged", "events": (raised, AlarmEvent(
                                     at=T0 + timedelta(minutes=30), action="acknowledged",
                                     by="nurse-b", note="called the citizen"))}))
    store.store_evaluations(db, [Evaluation(
        observation=f"{patient}-spo2", patient=patient, module="copd", code="spo2",
        severity="yellow", limits=LimitSet(yellow_low=Decimal(98)), limits_source="patient v1",
        evaluated=T0 + timedelta(minutes=10))])
    for days, red_low in ((-30, 86), (-10, 85)):
        admin.set_limits(db, patient=patient, code_key="spo2",
                         limits=LimitSet(red_low=Decimal(red_low)), reason="referral",
                         actor="doctor-a", valid_from=T0 + timedelta(days=days))
    admin.set_limits(db, patient=patient, code_key="pulse",
                     limits=LimitSet(yellow_high=Decimal(110)), reason="referral",
                     actor="doctor-a", valid_from=T0 - timedelta(days=30))
    admin.record_consent(db, patient=patient, purpose="monitoring", granted=True,
                         actor="nurse-a")
    admin.record_consent(db, patient=patient, purpose="research", granted=False,
                         actor="nurse-a")
    return {"observations": observations, "alarm": f"{patient}-alarm"}


@pytest.fixture
def central(tmp_path):
    config = write_central_toml(tmp_path, "[modules.copd]\nenabled = true\n")
    db = store.open_database(store.central_database_path(tmp_path / "data"))
    went_in = {"p-0001": fill(db, "p-0001", 1), "p-0002": fill(db, "p-0002", 2)}
    yield config, db, went_in
    db.close()


def export_cli() -> click.Group:
    """A command line with the plugin's commands, registered through a real plugin manager."""
    pm = pluggy.PluginManager("telemon")
    pm.add_hookspecs(hookspecs)
    pm.register(citizen_export, name="citizen_export")
    group = click.Group(name="telemon")
    errors: list[PluginError] = []
    call_each(pm, "register_commands", errors, lambda _plugin: {"cli": group})
    assert errors == []
    return group


def run_export(config, output, *extra):
    return CliRunner().invoke(export_cli(), ["export", "citizen", "p-0001", "--config",
                                             str(config), "--output", str(output), *extra])


def read_archive(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_archive_holds_everything_about_the_citizen(central, tmp_path):
    config, db, went_in = central
    output = tmp_path / "p-0001.zip"
    result = run_export(config, output, "--by", "nurse-c")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {output} (records: patient.json 1, "
                                    "observations.json 3, observations.csv 5,")
    files = read_archive(output)
    assert set(files) == {"README.md", "manifest.json", *DATA_FILES}

    records = {name: wire.decode_message(files[name]) for name in DATA_FILES
               if name.endswith(".json") and name not in ("patient.json", "audit.json")}
    assert all(not decoded.errors for decoded in records.values())

    # observations: exactly as stored, raw device bytes included
    observations = records["observations.json"].records
    assert observations == [store.get_observation(db, o.id)
                            for o in went_in["p-0001"]["observations"]]
    assert [o.raw for o in observations] == [o.raw for o in went_in["p-0001"]["observations"]]
    assert observations[1].components[0].value == Decimal("142")
    assert observations[2].absent is AbsentReason.NOT_A_NUMBER
    assert b'"value": 97.0' in files["observations.json"]  # the device's precision kept

    # the CSV: one row per value, the blood pressure as three
    table = list(csv.DictReader(io.StringIO(files["observations.csv"].decode())))
    assert tuple(table[0]) == COLUMNS
    assert [(r["id"], r["code"], r["value"], r["absent"]) for r in table] == [
        ("p-0001-spo2", "150456", "97.0", ""), ("p-0001-bp", "150021", "142", ""),
        ("p-0001-bp", "150022", "91", ""), ("p-0001-bp", "150023", "108", ""),
        ("p-0001-nan", "150456", "", "not-a-number")]

    (response,) = records["questionnaire_responses.json"].records
    assert (response.id, response.answers[1].value, response.scores["total"]) == (
        "p-0001-qr", 2, Decimal("3.5"))
    (alarm,) = records["alarms.json"].records
    assert alarm == store.get_alarm(db, "p-0001-alarm")
    assert [(e.action, e.by, e.note) for e in alarm.events] == [
        ("raised", "central", ""), ("acknowledged", "nurse-b", "called the citizen")]
    (evaluation,) = records["evaluations.json"].records
    assert (evaluation.observation, evaluation.patient, evaluation.limits_source) == (
        "p-0001-spo2", "p-0001", "patient v1")
    limits = records["limits.json"].records
    assert [(v.code.code, v.version, v.limits.red_low) for v in limits] == [
        ("149530", 1, None), ("150456", 1, Decimal(86)), ("150456", 2, Decimal(85))]
    assert limits[1].valid_to == limits[2].valid_from == T0 - timedelta(days=10)
    assert records["consent.json"].records == store.consent_history(db, "p-0001")

    person = json.loads(files["patient.json"])
    assert (person["id"], person["display_name"], person["timezone"]) == (
        "p-0001", "Test Patient 1", "Europe/Copenhagen")
    assert person["enrolment"]["gateways"] == ["gw-1"]
    audit = json.loads(files["audit.json"])
    assert {entry["patient"] for entry in audit} == {"p-0001"}
    assert [entry["action"] for entry in audit] == [
        "patient.add", "limits.set", "limits.set", "limits.set", "consent.grant",
        "consent.withdraw"]

    # the manifest: every other file with its hash, size and record count
    manifest = json.loads(files["manifest.json"])
    assert (manifest["format"], manifest["format_version"], manifest["patient"]) == (
        "telemon-citizen-export", 1, "p-0001")
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for name, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert entry["bytes"] == len(files[name])
    counts = {name: len(decoded.records) for name, decoded in records.items()}
    assert {n: listed[n]["records"] for n in counts} == counts
    assert (listed["observations.csv"]["records"], listed["audit.json"]["records"]) == (5, 6)

    readme = files["README.md"].decode()
    for name in ("manifest.json", *DATA_FILES):
        assert f"**{name}**" in readme
    assert "Europe/Copenhagen" in readme and "| bp_sys: Systolic blood pressure | mm[Hg] |" \
        in readme and "| spo2: SpO2 | % |" in readme


def test_another_citizens_data_never_appears(central, tmp_path):
    config, _, _ = central
    output = tmp_path / "p-0001.zip"
    assert run_export(config, output).exit_code == 0
    for name, content in read_archive(output).items():
        assert b"p-0002" not in content, name
        assert b"Test Patient 2" not in content, name


def test_the_export_is_audited_with_the_archives_hash(central, tmp_path, monkeypatch):
    config, db, _ = central
    monkeypatch.setenv("TELEMON_USER", "nurse-env")
    output = tmp_path / "p-0001.zip"
    assert run_export(config, output).exit_code == 0
    entry = admin.audit_entries(db, patient="p-0001")[-1]
    assert (entry.action, entry.actor) == ("export.citizen", "nurse-env")
    assert entry.detail["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert entry.detail["output"] == str(output.resolve())
    assert entry.detail["records"]["observations.json"] == 3
    assert not [e for e in admin.audit_entries(db, patient="p-0002")
                if e.action == "export.citizen"]


def test_the_archive_is_owner_only_and_replaced_atomically(central, tmp_path):
    config, db, _ = central
    output = tmp_path / "p-0001.zip"
    output.write_bytes(b"an older archive")
    assert run_export(config, output).exit_code == 0
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
        assert {info.external_attr >> 16 for info in archive.infolist()} == {0o600}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["central.toml", "data", "p-0001.zip"]

    # a failure after the archive was written (here: no one to audit it) leaves no trace
    before = output.read_bytes()
    with pytest.raises(ValueError, match="needs the name of who made it"):
        citizen_export.export_citizen(db, patient="p-0001", output=output, actor=" ")
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["central.toml", "data", "p-0001.zip"]
    assert [e.action for e in admin.audit_entries(db)].count("export.citizen") == 1


def test_only_a_team_lead_or_an_administrator_exports_a_citizen(central, tmp_path):
    _config, db, _ = central
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    admin.add_staff(db, name="nurse-b", role="nurse", actor="admin-a")
    output = tmp_path / "p-0001.zip"
    with pytest.raises(admin.Refused, match=re.escape(
            "nurse-b (nurse) lacks the right citizen.export: the right citizen.export is "
            "held by team_lead, administrator")):
        citizen_export.export_citizen(db, patient="p-0001", output=output, actor="nurse-b")
    assert not output.exists() and not list(tmp_path.glob(".*.tmp"))
    (refusal,) = [e for e in admin.audit_entries(db, patient="p-0001")
                  if e.action == "refused"]
    assert (refusal.actor, refusal.detail["attempted"]) == ("nurse-b", "export.citizen")

    citizen_export.export_citizen(db, patient="p-0001", output=output, actor="admin-a")
    assert output.exists()
    assert admin.audit_entries(db, patient="p-0001")[-1].action == "export.citizen"


@pytest.mark.parametrize("patient, output, message", [
    ("p-0404", "p-0404.zip", "unknown patient p-0404"),
    ("p-0001", ".", "is a folder: give the archive's file name"),
    ("p-0001", "no-such-folder/p-0001.zip", "no-such-folder does not exist"),
])
def test_errors_are_one_line_and_write_nothing(central, tmp_path, monkeypatch, patient,
                                               output, message):
    config, db, _ = central
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_cli(), ["export", "citizen", patient, "--config",
                                               str(config), "--output", output])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.tmp"))
    assert "export.citizen" not in [e.action for e in admin.audit_entries(db)]


def test_register_commands_adds_citizen_to_the_export_group():
    existing = click.Group(name="export")
    cli = click.Group(name="telemon", commands=[existing])
    citizen_export.register_commands(cli=cli)
    assert cli.commands["export"] is existing
    assert existing.commands["citizen"] is citizen_export.citizen_command
    # a command line without an export group gets one
    assert export_cli().commands["export"].commands["citizen"] is citizen_export.citizen_command
