"""The nurse's work over a real central database (telemon.nursing): the triage overview and
its order, following the database for changes, assign / release, contacted, reviewing green
patients, one patient's record, and opening the database.

The ward here is built with the library (admin.add_patient, store.store_observations, the
AlarmEngine raising the alarms) and a small disease module of the test's own, so that what
is asserted does not move when the built-in modules' rules are tuned. test_tui.py uses the
same ward.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import write_central_toml

from telemon import admin, alarms, config, nursing, plugin_manager, store
from telemon.codes import KNOWN
from telemon.config import CentralConfig
from telemon.models import Enrolment, LimitSet, Observation, Triage
from telemon.modules import DiseaseModule, Schedule

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Copenhagen
NOW = T0 + timedelta(hours=3, minutes=30)  # 12:30 local: the 12:00 deadline has passed

# A test module shaped like COPD's (limits as copd.py's defaults: BTS 2017 / Cooper 2020 for
# SpO2, TELBIL for pulse), measured daily by 12:00 local time.
WARD = DiseaseModule(
    name="ward", version="1", title="Test ward", codes=("spo2", "pulse", "weight"),
    default_limits={"spo2": LimitSet(red_low=Decimal(88), yellow_low=Decimal(90)),
                    "pulse": LimitSet(yellow_low=Decimal(50), yellow_high=Decimal(100))},
    schedule=Schedule(codes=("spo2",), deadline=time(12, 0)), summarise=str,
    sources=("test module: copd.py's default limits",))
MODULES = {"ward": WARD}
ORG_PULSE = LimitSet(yellow_low=Decimal(50), yellow_high=Decimal(100), red_high=Decimal(130))


def write_config(folder: Path, broker: str = "mqtt://127.0.0.1:1", module: str = "ward") -> Path:
    """A central.toml for the ward (the broker: a port nobody listens on, unless given)."""
    return write_central_toml(folder, f"[modules.{module}]\nenabled = true\n", broker=broker)


def load_config(path: Path) -> CentralConfig:
    loaded = config.load(path, plugin_manager.Registry(modules=MODULES))
    assert isinstance(loaded, CentralConfig)
    return loaded


def reading(patient: str, key: str, value: str, at: datetime, n: int = 0) -> Observation:
    known = KNOWN[key]
    return Observation(id=f"{patient}-{key}-{at:%m%d%H%M}-{n}", patient=patient,
                       device=f"{key}-meter-1", gateway=f"gw-{patient}", code=known.code,
                       unit=known.unit, value=Decimal(value), effective=at,
                       raw=value.encode())


@dataclass
class Ward:
    """A central with five patients: one of each triage, and a green one already reviewed."""

    folder: Path
    config_path: Path
    config: CentralConfig
    database: str
    db: object

    def engine(self) -> alarms.AlarmEngine:
        engine = alarms.AlarmEngine(self.db, self.config, MODULES)
        engine.directory.refresh()
        return engine

    def ingest(self, observations: list[Observation], now: datetime) -> alarms.Outcome:
        """As the central does: store and evaluate in one transaction."""
        engine = self.engine()
        with store.transaction(self.db):
            engine.directory.refresh()
            new = store.store_observations(self.db, observations, received=now)
            return engine.evaluate(new, now)

    def enrol(self, patient: str, name: str) -> None:
        admin.add_patient(self.db, patient=patient, organisation=ORG, display_name=name,
                          timezone="Europe/Copenhagen", modules=("ward",),
                          gateways=(f"gw-{patient}",), actor="admin-test",
                          installed_modules=MODULES)
        # enrolled well before the day the ward is looked at, so deadlines apply to them
        with store.transaction(self.db):
            store.store_record(self.db, Enrolment(
                patient=patient, organisation=ORG, modules=("ward",),
                gateways=(f"gw-{patient}",), enrolled=T0 - timedelta(days=10)))
            store.audit(self.db, actor="admin-test", action="test.backdate", patient=patient)

    def alarm_of(self, patient: str) -> str:
        """The patient's first alarm (the ward's patients have one each)."""
        return self.db.execute("SELECT id FROM alarms WHERE patient = ? ORDER BY raised, id "
                               "LIMIT 1", [patient]).fetchone()[0]


def build_ward(folder: Path, broker: str = "mqtt://127.0.0.1:1") -> Ward:
    """p-0001 red (SpO2 86 %, escalated: open since 10:01), p-0002 yellow (SpO2 89 %),
    p-0004 missing (nothing by the deadline), p-0003 green with new readings, p-0005 green
    and reviewed."""
    config_path = write_config(folder, broker)
    cfg = load_config(config_path)
    database = store.central_database_path(cfg.storage.path)
    ward = Ward(folder, config_path, cfg, database, store.open_database(database))
    # the organisation's own pulse limits, a team lead's, from well before the ward's day
    admin.set_default_limits(ward.db, organisation=ORG, module="ward", code_key="pulse",
                             limits=ORG_PULSE, reason="team conference", actor="lead-test",
                             installed_modules=MODULES, valid_from=T0 - timedelta(days=30))
    for n in range(1, 6):
        ward.enrol(f"p-{n:04d}", f"Test Patient {n}")
    ward.ingest([
        reading("p-0001", "spo2", "86", T0 + timedelta(hours=1)),
        reading("p-0001", "pulse", "92", T0 + timedelta(hours=1)),
        reading("p-0002", "spo2", "89", T0 + timedelta(minutes=30)),
        reading("p-0003", "spo2", "95", T0 + timedelta(minutes=10)),
        reading("p-0003", "pulse", "70", T0 + timedelta(minutes=10)),
        reading("p-0005", "spo2", "97", T0 - timedelta(days=1)),
        reading("p-0005", "spo2", "96", T0 + timedelta(minutes=5)),
    ], now=T0 + timedelta(hours=1, minutes=1))
    engine = ward.engine()
    with store.transaction(ward.db):
        assert engine.tick(NOW).raised == 1  # p-0004: the only one with nothing today
    latest = ward.db.execute("SELECT MAX(rowid) FROM observations WHERE patient = 'p-0005'"
                             ).fetchone()[0]
    nursing.review_green(ward.db, {"p-0005": latest}, nurse="nurse-b")
    return ward


@pytest.fixture
def ward(tmp_path):
    built = build_ward(tmp_path)
    yield built
    built.db.close()


def audit_actions(db, patient: str) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in admin.audit_entries(db, patient=patient)
            if e.actor != "admin-test"]


# --- the overview -----------------------------------------------------------------------------


def test_the_overview_lists_every_patient_worst_first_with_what_triggered(ward):
    rows = nursing.overview(ward.db)
    assert [(r.patient, r.triage) for r in rows] == [
        ("p-0001", Triage.RED), ("p-0002", Triage.YELLOW), ("p-0004", Triage.MISSING),
        ("p-0003", Triage.GREEN), ("p-0005", Triage.GREEN)]
    red = rows[0]
    assert red.display_name == "Test Patient 1" and red.modules == ("ward",)
    assert red.rule == "limits.spo2" and red.state == "open"
    # what triggered: value, unit and limit, in the engine's words
    assert red.message == "SpO2 86 % below the red limit 88 % (module limits)"
    assert red.raised == T0 + timedelta(hours=1, minutes=1)
    assert red.escalated  # the clock found it open for more than 30 minutes
    assert rows[2].message.startswith("no SpO2 by the deadline 2026-03-02 12:00")
    green_new, green_seen = rows[3], rows[4]
    assert green_new.unreviewed and green_new.message == "new readings to review"
    assert green_new.when == T0 + timedelta(minutes=10)  # the latest reading
    assert not green_seen.unreviewed and green_seen.message == "reviewed by nurse-b"


def test_a_patient_shows_its_worst_alarm_and_open_alarms_come_before_acknowledged(ward):
    # p-0002 gets a red pulse on top of its yellow SpO2; p-0001's red is acknowledged
    ward.ingest([reading("p-0002", "pulse", "140", T0 + timedelta(hours=2))],
                now=T0 + timedelta(hours=2))
    alarms.acknowledge(ward.db, ward.alarm_of("p-0001"), by="nurse-a", note="phoned")
    rows = {r.patient: r for r in nursing.overview(ward.db)}
    assert rows["p-0002"].triage == Triage.RED and rows["p-0002"].unresolved == 2
    assert rows["p-0002"].rule == "limits.pulse"
    assert rows["p-0001"].state == "acknowledged" and rows["p-0001"].who == "nurse-a"
    order = [r.patient for r in nursing.overview(ward.db)]
    # both red: the open one first, though the acknowledged one has waited longer
    assert order[:2] == ["p-0002", "p-0001"]


def test_the_filter_narrows_by_module_triage_organisation_and_text(ward):
    rows = nursing.overview(ward.db)

    def shown(**given) -> list[str]:
        chosen = nursing.OverviewFilter(**given)
        return [r.patient for r in rows if chosen.matches(r)]

    assert shown() == [r.patient for r in rows]
    assert shown(triage=Triage.GREEN) == ["p-0003", "p-0005"]
    assert shown(text="patient 4") == ["p-0004"]  # the display name, any case
    assert shown(text="0002") == ["p-0002"]  # the pseudonym
    assert shown(module="copd") == []
    assert shown(organisation="kommune-0101") == []
    assert shown(module="ward", organisation=ORG, triage=Triage.RED) == ["p-0001"]


def test_the_feed_reads_only_the_patients_something_was_committed_about(ward):
    follower = store.open_database(ward.database)  # the dashboard's own connection
    feed = nursing.OverviewFeed(follower)
    assert len(feed.load()) == 5
    assert feed.poll() is None  # nothing committed since
    # another connection (the central) raises a red for a green patient
    ward.ingest([reading("p-0003", "spo2", "85", T0 + timedelta(hours=2))],
                now=T0 + timedelta(hours=2))
    change = feed.poll()
    assert isinstance(change, nursing.OverviewChange)
    assert change.patients == {"p-0003"}
    (row,) = change.rows
    assert row.triage == Triage.RED and "SpO2 85 %" in row.message
    assert feed.poll() is None
    # a nurse's action elsewhere, and a plain green reading, are seen too
    nursing.assign(ward.db, "p-0002", nurse="nurse-a")
    ward.ingest([reading("p-0005", "spo2", "95", T0 + timedelta(hours=3))],
                now=T0 + timedelta(hours=3))
    change = feed.poll()
    assert change.patients == {"p-0002", "p-0005"}
    rows = {r.patient: r for r in change.rows}
    assert rows["p-0002"].assigned_to == "nurse-a"
    assert rows["p-0005"].unreviewed  # a reading since nurse-b's review
    follower.close()


# --- the dashboard's actions ------------------------------------------------------------------


def test_assign_to_me_is_refused_while_another_nurse_is_on_the_patient(ward):
    nursing.assign(ward.db, "p-0001", nurse="nurse-a")
    with pytest.raises(nursing.NursingConflict, match="already assigned to nurse-a"):
        nursing.assign(ward.db, "p-0001", nurse="nurse-b")
    with pytest.raises(nursing.NursingConflict, match="not assigned to you"):
        nursing.release(ward.db, "p-0001", nurse="nurse-b")
    assert nursing.assigned_to(ward.db, "p-0001") == "nurse-a"
    nursing.release(ward.db, "p-0001", nurse="nurse-a")
    nursing.assign(ward.db, "p-0001", nurse="nurse-b")
    assert nursing.assigned_to(ward.db, "p-0001") == "nurse-b"
    assert audit_actions(ward.db, "p-0001") == [
        ("nurse-a", "patient.assign"), ("nurse-a", "patient.release"),
        ("nurse-b", "patient.assign")]
    with pytest.raises(admin.AdminError, match="unknown patient p-9999"):
        nursing.assign(ward.db, "p-9999", nurse="nurse-a")
    with pytest.raises(admin.InvalidInput, match="nurse's name"):
        nursing.assign(ward.db, "p-0002", nurse=" ")


def test_contacted_marks_are_kept_audited_and_append_only(ward):
    nursing.mark_contacted(ward.db, "p-0002", nurse="nurse-a", note="phoned, feels fine")
    nursing.mark_contacted(ward.db, "p-0002", nurse="nurse-b")
    marks = nursing.contacts(ward.db, "p-0002")
    assert [(c.nurse, c.note) for c in marks] == [("nurse-b", ""),
                                                  ("nurse-a", "phoned, feels fine")]
    row = {r.patient: r for r in nursing.overview(ward.db)}["p-0002"]
    assert row.contacted == marks[0].at
    assert audit_actions(ward.db, "p-0002") == [("nurse-a", "patient.contacted"),
                                                ("nurse-b", "patient.contacted")]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ward.db.execute("DELETE FROM contacts")


def test_reviewing_greens_marks_only_what_the_nurse_was_shown(ward):
    rows = {r.patient: r for r in nursing.overview(ward.db)}
    shown = {p: rows[p].latest_reading for p in ("p-0003", "p-0005", "p-0001")}
    # after the nurse's screen was drawn: a new reading for p-0003
    ward.ingest([reading("p-0003", "spo2", "96", T0 + timedelta(hours=2))],
                now=T0 + timedelta(hours=2))
    outcome = nursing.review_green(ward.db, shown, nurse="nurse-a")
    assert outcome.reviewed == ["p-0003"]
    assert outcome.skipped == {"p-0005": "nothing new to review",
                               "p-0001": "no longer green"}
    after = {r.patient: r for r in nursing.overview(ward.db)}
    assert after["p-0003"].reviewed_by == "nurse-a"
    assert after["p-0003"].unreviewed  # the reading it was not shown is still new
    # a second nurse who saw less does not move the review back
    nursing.review_green(ward.db, {"p-0003": shown["p-0003"] - 1}, nurse="nurse-b")
    assert nursing.overview(ward.db, ["p-0003"])[0].reviewed_upto == shown["p-0003"]
    assert ("nurse-a", "patient.reviewed") in audit_actions(ward.db, "p-0003")


# --- one patient ------------------------------------------------------------------------------


def test_the_patient_record_has_history_limits_alarms_and_its_read_is_audited(ward):
    admin.set_limits(ward.db, patient="p-0001", code_key="spo2",
                     limits=LimitSet(red_low=Decimal(85), yellow_low=Decimal(87)),
                     reason="known low baseline", actor="dr-test")
    admin.record_consent(ward.db, patient="p-0001", purpose="monitoring", granted=True,
                         actor="admin-test")
    nursing.mark_contacted(ward.db, "p-0001", nurse="nurse-a", note="phoned")
    alarms.acknowledge(ward.db, ward.alarm_of("p-0001"), by="nurse-a", note="on it")
    record = nursing.patient_record(ward.db, "p-0001", nurse="nurse-a", config=ward.config,
                                    modules=MODULES, days=7, now=NOW)
    measures = {m.key: m for m in record.measures}
    assert list(measures) == ["spo2", "pulse", "weight"]
    spo2 = measures["spo2"]
    assert spo2.values.tolist() == [86.0]
    assert spo2.limits_source == "patient v1" and spo2.limits.red_low == Decimal(85)
    assert spo2.latest_value == "86 %" and spo2.latest.device == "spo2-meter-1"
    # pulse: the organisation's default version (telemon limits defaults), weight: none
    assert measures["pulse"].limits_source == "organisation v1"
    assert measures["pulse"].limits.red_high == Decimal(130)
    assert (measures["weight"].limits, measures["weight"].latest_value) == (None, "-")
    assert record.triage == Triage.RED
    (alarm,) = record.alarms
    assert [(e.action, e.by) for e in alarm.events] == [
        ("raised", "central"), ("escalated", "central"), ("acknowledged", "nurse-a")]
    assert alarm.events[-1].note == "on it"
    assert [v.reason for v in record.limits] == ["known low baseline"]
    assert [e.purpose for e in record.consent] == ["monitoring"]
    assert [c.note for c in record.contacts] == ["phoned"]
    assert ("nurse-a", "patient.show") in audit_actions(ward.db, "p-0001")
    before = len(admin.audit_entries(ward.db, patient="p-0001"))
    nursing.patient_record(ward.db, "p-0001", nurse="nurse-a", config=ward.config,
                           modules=MODULES, audited=False)
    assert len(admin.audit_entries(ward.db, patient="p-0001")) == before


def test_limit_choices_name_where_the_limits_in_force_come_from(ward):
    choices = {c.key: c for c in nursing.limit_choices(ward.db, ward.config, MODULES,
                                                       "p-0002")}
    assert {k: c.source for k, c in choices.items()} == {
        "spo2": "module", "pulse": "organisation v1", "weight": "none"}
    # a module no longer installed is left out rather than failing
    assert nursing.limit_choices(ward.db, ward.config, {}, "p-0002") == []


# --- opening the database ---------------------------------------------------------------------


def test_opening_says_what_is_wrong_with_the_database(tmp_path):
    with pytest.raises(nursing.DatabaseMissing, match=r"no central database at .*start the"):
        nursing.open_existing(str(tmp_path / "central.db"))
    assert not (tmp_path / "central.db").exists()  # a wrong path never makes an empty one
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        nursing.open_existing(str(garbage))
    assert nursing.readable_error(caught.value).startswith("database unreadable: file is not")
    locked = sqlite3.OperationalError("database is locked")
    assert nursing.readable_error(locked) == "database locked by another program"
