"""Exporters and consent (telemon.export): an exporter declaring a purpose gets only the
records of patients whose consent to it is in force at the time of export; the rest are
skipped, audited once per patient and batch, and never retried. Real central databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from conftest import write_central_toml

from telemon import admin, config, plugin_manager, store
from telemon.codes import KNOWN
from telemon.export import cursor_positions, export_group, export_one
from telemon.exporters import Exporter
from telemon.models import Evaluation, LimitSet, Observation

T0 = datetime(2026, 3, 1, 7, 45, tzinfo=UTC)
INSTALLED = plugin_manager.get()[1].modules


class RecordingTarget:
    """A target that keeps what it was given, and can be told to fail."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list] = []
        self.fail = fail

    def deliver(self, records) -> None:
        if self.fail:
            raise ConnectionError("target down")
        self.batches.append(list(records))

    def close(self) -> None:
        pass


def exporter(target: RecordingTarget, purpose: str | None = "national-export") -> Exporter:
    return Exporter(name="rec", version="1", description="records deliveries",
                    open=lambda options: target, purpose=purpose)


def observation(n: int, patient: str) -> Observation:
    return Observation(id=f"obs-{n}", patient=patient, device="ox-1", gateway="gw-0001",
                       code=KNOWN["spo2"].code, unit="%", effective=T0 + timedelta(minutes=n),
                       value=Decimal(95), driver="sim")


@pytest.fixture
def db(tmp_path):
    database = store.open_database(store.central_database_path(tmp_path / "central"))
    for number in (1, 2, 3):
        admin.add_patient(database, patient=f"p-000{number}", organisation="kommune-0999",
                          display_name=f"Test Patient {number}", timezone="Europe/Copenhagen",
                          modules=("copd",), actor="admin-a", installed_modules=INSTALLED)
    yield database
    database.close()


def consent(db, patient: str, *grants: bool, purpose: str = "national-export") -> None:
    for granted in grants:
        admin.record_consent(db, patient=patient, purpose=purpose, granted=granted,
                             actor="nurse-a")


def skips(db) -> list[tuple[str, dict]]:
    return [(e.patient, e.detail) for e in admin.audit_entries(db)
            if e.action == "export.skipped"]


def test_only_patients_consenting_to_the_purpose_are_delivered_and_skips_are_audited(db):
    consent(db, "p-0001", True)  # granted
    consent(db, "p-0003", True, False)  # granted, then withdrawn: the latest is in force
    consent(db, "p-0002", True, purpose="share-gp")  # a consent, but to another purpose
    store.store_observations(db, [observation(n, f"p-000{n % 3 + 1}") for n in range(6)])
    store.store_evaluations(db, [Evaluation(
        observation="obs-0", patient="p-0001", module="copd", code="spo2", severity="green",
        limits=LimitSet(red_low=Decimal(88)), limits_source="module", evaluated=T0)])
    target = RecordingTarget()

    result = export_one(db, exporter(target), {})

    assert (result.delivered, result.skipped, result.error) == (2, 4, None)
    (batch,) = target.batches
    assert [(type(r).__name__, r.id if isinstance(r, Observation) else r.observation)
            for r in batch] == [("Observation", "obs-0"), ("Evaluation", "obs-0"),
                                ("Observation", "obs-3")]
    assert {r.patient for r in batch} == {"p-0001"}
    # skipped, not held back: the cursor is past every row
    last = db.execute("SELECT max(rowid) FROM observations").fetchone()[0]
    assert cursor_positions(db, "rec")["observations"] == last
    assert skips(db) == [
        ("p-0002", {"exporter": "rec", "purpose": "national-export", "count": 2}),
        ("p-0003", {"exporter": "rec", "purpose": "national-export", "count": 2})]
    entries = json.dumps([detail for _, detail in skips(db)])
    assert "Test Patient" not in entries


def test_skipped_records_stay_skipped_after_a_later_grant_but_new_ones_go(db):
    store.store_observations(db, [observation(1, "p-0002")])
    target = RecordingTarget()
    assert export_one(db, exporter(target), {}).skipped == 1

    consent(db, "p-0002", True)
    assert export_one(db, exporter(target), {}).delivered == 0  # obs-1 is not sent late
    store.store_observations(db, [observation(2, "p-0002")])
    assert export_one(db, exporter(target), {}).delivered == 1
    assert [[r.id for r in batch] for batch in target.batches] == [["obs-2"]]


def test_a_skip_is_audited_once_per_patient_and_batch(db):
    store.store_observations(db, [observation(n, "p-0002") for n in range(3)])
    target = RecordingTarget()
    result = export_one(db, exporter(target), {}, batch_size=2)
    assert (result.delivered, result.skipped) == (0, 3)
    assert target.batches == []  # a batch with nothing consented is not handed over
    assert [detail["count"] for _, detail in skips(db)] == [2, 1]


def test_a_failed_delivery_keeps_the_cursor_and_audits_no_skip(db):
    consent(db, "p-0001", True)
    store.store_observations(db, [observation(1, "p-0001"), observation(2, "p-0002")])
    result = export_one(db, exporter(RecordingTarget(fail=True)), {})
    assert result.error == "ConnectionError: target down"
    assert cursor_positions(db, "rec")["observations"] == 0
    assert skips(db) == []  # the skip is kept with the cursor: the batch comes again whole


def test_an_exporter_without_a_purpose_delivers_everyone(db):
    store.store_observations(db, [observation(1, "p-0001"), observation(2, "p-0002")])
    target = RecordingTarget()
    assert export_one(db, exporter(target, purpose=None), {}).delivered == 2
    assert skips(db) == []


def test_an_exporter_must_declare_a_known_purpose():
    bad = exporter(RecordingTarget(), purpose="marketing")
    assert bad.problems() == [
        "purpose 'marketing' is not a consent purpose (one of monitoring, share-hospital, "
        "share-gp, national-export, research)"]
    assert exporter(RecordingTarget()).problems() == []


def test_the_builtin_exporters_declare_their_purposes():
    exporters = plugin_manager.get()[1].exporters
    assert {name: exporters[name].purpose for name in ("fhir", "phmr", "csv")} == {
        "fhir": "national-export", "phmr": "share-gp", "csv": None}


def test_export_run_reports_skips_and_fhir_writes_only_the_consented(db, tmp_path):
    consent(db, "p-0001", True)
    store.store_observations(db, [observation(1, "p-0001"), observation(2, "p-0002")])
    path = write_central_toml(tmp_path, f"""\
        [exporters.fhir]
        enabled = true
        directory = "{tmp_path / 'fhir'}"
    """, storage="central")
    config.load(path, plugin_manager.get()[1])  # a usable config, or this test is wrong

    result = CliRunner().invoke(export_group, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("fhir: 1 record(s) delivered, 1 skipped without consent, "
                                    "ok (")
    assert [p.name for p in (tmp_path / "fhir").iterdir()] == ["p-0001"]
    result = CliRunner().invoke(export_group, ["run", "--config", str(path), "--json"])
    assert json.loads(result.output)["exporters"]["fhir"]["skipped"] == 0  # not retried
