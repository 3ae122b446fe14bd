"""telemon.export: the runner with durable cursors, on real SQLite files and real processes."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from conftest import write_central_toml

from telemon import config, store
from telemon.codes import KNOWN
from telemon.export import (
    FEEDS,
    cursor_positions,
    export_all,
    export_group,
    export_one,
    run_exports,
)
from telemon.exporters import Exporter, Option
from telemon.models import (
    Answer,
    ConsentEvent,
    Evaluation,
    LimitSet,
    Observation,
    QuestionnaireResponse,
)
from telemon.plugin_manager import Registry
from telemon.plugins.exporters.csv import EXPORTER as CSV

T0 = datetime(2026, 3, 1, 7, 45, tzinfo=UTC)


def observation(n: int, patient: str = "p-0001") -> Observation:
    return Observation(id=f"obs-{n}", patient=patient, device="ox-1", gateway="gw-0001",
                       code=KNOWN["spo2"].code, unit="%", effective=T0 + timedelta(minutes=n),
                       value=Decimal(90 + n % 10), driver="sim",
                       context={"method": "self-measured"})


def questionnaire(n: int) -> QuestionnaireResponse:
    return QuestionnaireResponse(id=f"qr-{n}", patient="p-0001", gateway="gw-0001",
                                 questionnaire="cat", version="1", authored=T0,
                                 answers=(Answer("q1", n),), scores={"total": Decimal(n)})


def add_evaluation(db, obs_id: str, module: str, severity: str, limits: LimitSet) -> None:
    store.store_evaluations(db, [Evaluation(
        observation=obs_id, patient="p-0001", module=module, code="spo2", severity=severity,
        limits=limits, limits_source="module", evaluated=T0)])


class RecordingTarget:
    """A target that keeps what it was given, and can be told to fail on one delivery."""

    def __init__(self, fail_on_batch: int | None = None) -> None:
        self.batches: list[list] = []
        self.fail_on_batch = fail_on_batch
        self.closed = False

    def deliver(self, records) -> None:
        if self.fail_on_batch == len(self.batches) + 1:
            raise ConnectionError("target down")
        self.batches.append(list(records))

    def close(self) -> None:
        self.closed = True


def recording_exporter(name: str, target: RecordingTarget) -> Exporter:
    return Exporter(name=name, version="1", description="records deliveries",
                    open=lambda options: target,
                    options={"label": Option("str", "anything")})


@pytest.fixture
def db(tmp_path):
    return store.open_database(store.central_database_path(tmp_path / "central"))


def central_config(tmp_path, registry: Registry, exporters: str):
    path = write_central_toml(tmp_path, exporters, storage="central")
    return path, config.load(path, registry)


def max_rowid(db, feed: str) -> int:
    return db.execute(f"SELECT max(rowid) FROM {feed}").fetchone()[0]


def test_each_feed_is_delivered_in_order_and_the_cursors_move(db, tmp_path):
    store.store_observations(db, [observation(n) for n in range(3)])
    for n in range(2):
        store.store_record(db, questionnaire(n))
    target = RecordingTarget()
    registry = Registry(exporters={"rec": recording_exporter("rec", target)})
    _, cfg = central_config(tmp_path, registry, "[exporters.rec]\nenabled = true\n")

    assert run_exports(db, cfg, registry) == {"rec": 5}
    assert [[r.id for r in batch] for batch in target.batches] == [
        ["obs-0", "obs-1", "obs-2"], ["qr-0", "qr-1"]]
    assert target.batches[0][0].received is not None  # as stored, not as sent
    assert cursor_positions(db, "rec") == {feed: max_rowid(db, feed) for feed in FEEDS}
    assert target.closed

    assert run_exports(db, cfg, registry) == {"rec": 0}  # nothing new
    assert len(target.batches) == 2
    store.store_observations(db, [observation(9)])
    assert run_exports(db, cfg, registry) == {"rec": 1}
    assert [r.id for r in target.batches[-1]] == ["obs-9"]


def test_batches_are_at_most_batch_size(db):
    store.store_observations(db, [observation(n) for n in range(5)])
    target = RecordingTarget()
    result = export_one(db, recording_exporter("rec", target), {}, batch_size=2)
    assert result.delivered == 5 and result.error is None
    assert [len(batch) for batch in target.batches] == [2, 2, 1]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        export_one(db, recording_exporter("rec", target), {}, batch_size=0)


def test_each_observation_is_followed_by_its_evaluations(db):
    store.store_observations(db, [observation(1), observation(2)])
    copd = LimitSet(red_low=Decimal(88), yellow_low=Decimal(90))
    heart = LimitSet(red_low=Decimal(85))
    add_evaluation(db, "obs-1", "copd", "yellow", copd)
    add_evaluation(db, "obs-1", "heart_failure", "green", heart)
    target = RecordingTarget()
    assert export_one(db, recording_exporter("rec", target), {}).delivered == 2  # not counted
    [batch] = target.batches
    assert [type(r).__name__ for r in batch] == ["Observation", "Evaluation", "Evaluation",
                                                 "Observation"]
    first, second = batch[1], batch[2]
    assert isinstance(first, Evaluation)
    assert (first.observation, first.patient, first.module, first.severity, first.limits) == (
        "obs-1", "p-0001", "copd", "yellow", copd)
    assert (second.module, second.limits) == ("heart_failure", heart)


def test_a_failing_exporter_keeps_its_cursor_and_the_others_still_run(db, tmp_path, caplog):
    store.store_observations(db, [observation(n) for n in range(4)])
    bad, good = RecordingTarget(fail_on_batch=2), RecordingTarget()
    registry = Registry(exporters={"bad": recording_exporter("bad", bad),
                                   "good": recording_exporter("good", good)})
    _, cfg = central_config(tmp_path, registry,
                            "[exporters.bad]\nenabled = true\n[exporters.good]\nenabled = true\n")
    with caplog.at_level(logging.ERROR, logger="telemon.export"):
        results = export_all(db, cfg, registry, batch_size=2)
    assert results["bad"].delivered == 2
    assert results["bad"].error == "ConnectionError: target down"
    assert results["good"].delivered == 4 and results["good"].error is None
    assert "'bad'" in caplog.text and "target down" in caplog.text
    second_rowid = db.execute("SELECT rowid FROM observations WHERE id = 'obs-1'").fetchone()[0]
    assert cursor_positions(db, "bad")["observations"] == second_rowid
    assert bad.closed

    bad.fail_on_batch = None  # the target is back: it resumes after its cursor
    assert export_all(db, cfg, registry, batch_size=2)["bad"].delivered == 2
    assert [r.id for r in bad.batches[-1]] == ["obs-2", "obs-3"]


def test_an_exporter_that_cannot_open_is_reported_and_others_run(db, tmp_path):
    store.store_observations(db, [observation(1)])

    def refuse(options):
        raise ValueError("the exporter needs `directory`")

    good = RecordingTarget()
    registry = Registry(exporters={
        "broken": Exporter(name="broken", version="1", description="d", open=refuse),
        "good": recording_exporter("good", good)})
    _, cfg = central_config(tmp_path, registry,
                            "[exporters.broken]\nenabled = true\n"
                            "[exporters.good]\nenabled = true\n")
    results = export_all(db, cfg, registry)
    assert results["broken"].error == "cannot open: ValueError: the exporter needs `directory`"
    assert cursor_positions(db, "broken") == {"observations": 0, "questionnaire_responses": 0}
    assert results["good"].delivered == 1


def test_disabled_and_uninstalled_exporters(db, tmp_path):
    store.store_observations(db, [observation(1)])
    target = RecordingTarget()
    registry = Registry(exporters={"rec": recording_exporter("rec", target)})
    _, cfg = central_config(tmp_path, registry, "[exporters.rec]\nenabled = false\n")
    assert run_exports(db, cfg, registry) == {}
    assert target.batches == []
    # the config was checked against a registry that had "rec"; this one does not
    _, enabled = central_config(tmp_path, registry, "[exporters.rec]\nenabled = true\n")
    assert export_all(db, enabled, Registry())["rec"].error == (
        "is enabled in the config but not installed")


def test_a_stored_row_that_cannot_be_decoded_stops_the_exporter_at_that_row(db):
    store.store_observations(db, [observation(1)])
    with store.transaction(db):
        db.execute("INSERT INTO observations (id, patient, device, gateway, code_system, code, "
                   "unit, components, flags, context, raw, driver, driver_version, effective, "
                   "received, wire) SELECT 'obs-bad', patient, device, gateway, code_system, "
                   "code, unit, components, flags, context, raw, driver, driver_version, "
                   "effective, received, '{\"type\": \"observation\"}' FROM observations")
    store.store_observations(db, [observation(3)])
    target = RecordingTarget()
    result = export_one(db, recording_exporter("rec", target), {}, batch_size=1)
    bad_rowid = db.execute("SELECT rowid FROM observations WHERE id = 'obs-bad'").fetchone()[0]
    assert result.delivered == 1
    assert result.error.startswith(f"ExportError: observations row {bad_rowid}: its stored "
                                   "wire form cannot be decoded")
    assert cursor_positions(db, "rec")["observations"] == bad_rowid - 1


CRASH_BETWEEN_DELIVERY_AND_CURSOR = """
import os, sys
from telemon import export, store
from telemon.exporters import Exporter
from telemon.plugins.exporters.csv import CsvTarget
from pathlib import Path

class DiesAfterDelivery(CsvTarget):
    def deliver(self, records):
        super().deliver(records)
        os._exit(9)  # killed after the target has the batch, before the cursor is saved

db = store.open_database(sys.argv[1])
exporter = Exporter(name="csv", version="1", description="d",
                    open=lambda options: DiesAfterDelivery(Path(options["directory"])))
export.export_one(db, exporter, {"directory": sys.argv[2]})
"""


def test_a_crash_between_delivery_and_cursor_repeats_the_batch_harmlessly(tmp_path):
    path = store.central_database_path(tmp_path / "central")
    db = store.open_database(path)
    store.store_observations(db, [observation(n) for n in range(3)])
    out = tmp_path / "csv"
    crashed = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_DELIVERY_AND_CURSOR,
                              str(path), str(out)], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr
    assert cursor_positions(db, "csv")["observations"] == 0
    written = out / "p-0001" / "spo2.csv"
    assert written.exists()

    result = export_one(db, CSV, {"directory": str(out)})  # the batch again, in full
    assert (result.delivered, result.error) == (3, None)
    with written.open(newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert sorted(ids) == ["obs-0", "obs-1", "obs-2"]  # each once
    assert cursor_positions(db, "csv")["observations"] == max_rowid(db, "observations")


# --- the command ----------------------------------------------------------------------------


def write_central(tmp_path, exporters: str):
    from telemon import plugin_manager

    _, registry = plugin_manager.get()
    return central_config(tmp_path, registry, exporters)[0]


def test_export_run_prints_counts_and_cursors(tmp_path):
    path = write_central(tmp_path, f'[exporters.csv]\nenabled = true\n'
                                   f'directory = "{tmp_path / "out"}"\n')
    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [observation(1), observation(2)])
    obs_rowid = max_rowid(db, "observations")

    result = CliRunner().invoke(export_group, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == (f"csv: 2 record(s) delivered, ok (observations at {obs_rowid}, "
                             "questionnaire_responses at 0)\n")
    assert (tmp_path / "out" / "p-0001" / "spo2.csv").exists()

    result = CliRunner().invoke(export_group, ["run", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"exporters": {"csv": {
        "delivered": 0, "skipped": 0, "error": None,
        "cursors": {"observations": obs_rowid, "questionnaire_responses": 0}}}}


def test_export_run_exits_1_when_an_exporter_fails(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    path = write_central(tmp_path, f'[exporters.csv]\nenabled = true\ndirectory = "{blocker}"\n')
    db = store.open_database(store.central_database_path(tmp_path / "central"))
    store.store_observations(db, [observation(1)])
    result = CliRunner().invoke(export_group, ["run", "--config", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("csv: 0 record(s) delivered, failed: ")
    assert "(observations at 0, questionnaire_responses at 0)" in result.output


def test_export_run_refuses_an_unusable_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "central"\norganisation = "kommune-0999"\n'
                   '[broker]\nurl = "mqtt://127.0.0.1"\n[storage]\npath = "x"\n'
                   '[exporters.fxir]\nenabled = true\n')
    result = CliRunner().invoke(export_group, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "exporters.fxir: unknown exporter" in result.output

    edge = tmp_path / "edge.toml"
    edge.write_text('role = "edge"\norganisation = "kommune-0999"\ngateway = "gw-0001"\n'
                    '[broker]\nurl = "mqtt://127.0.0.1"\n[storage]\npath = "x"\n')
    result = CliRunner().invoke(export_group, ["run", "--config", str(edge)])
    assert result.exit_code == 2
    assert "this is an edge config" in result.output


def test_fhir_and_phmr_run_from_a_central_config(db, tmp_path):
    """Before their entry points exist: the registry is built from the modules' EXPORTERs."""
    from telemon.plugins.exporters.fhir import EXPORTER as FHIR
    from telemon.plugins.exporters.phmr import EXPORTER as PHMR

    store.store_observations(db, [observation(1), observation(2)])
    store.store_record(db, questionnaire(1))
    for purpose in ("national-export", "share-gp"):  # the consents FHIR and PHMR need
        store.store_record(db, ConsentEvent(id=f"consent-{purpose}", patient="p-0001",
                                            purpose=purpose, granted=True, at=T0,
                                            recorded_by="Test Nurse"))
    registry = Registry(exporters={"fhir": FHIR, "phmr": PHMR})
    _, cfg = central_config(tmp_path, registry, f"""
        [exporters.fhir]
        enabled = true
        directory = "{tmp_path / 'fhir'}"
        timeout = 10
        [exporters.phmr]
        enabled = true
        directory = "{tmp_path / 'phmr'}"
        period = "week"
    """)
    assert dict(cfg.exporters["phmr"].options) == {
        "directory": str(tmp_path / "phmr"), "period": "week", "timezone": "Europe/Copenhagen"}
    # records handed over; PHMR takes the questionnaire response and leaves it out
    assert run_exports(db, cfg, registry) == {"fhir": 3, "phmr": 3}
    assert sorted(p.name for p in (tmp_path / "fhir" / "p-0001").iterdir()) == [
        "bundle-obs-1.json", "bundle-qr-1.json"]
    assert [p.name for p in (tmp_path / "phmr" / "p-0001").iterdir()] == ["2026-W09.xml"]
