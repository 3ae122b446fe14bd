"""The monitoring nurse's work over the central database: the triage overview, one patient's
record, and the dashboard's own actions (assign to me, contacted, green readings reviewed).

Plain functions: the Textual dashboard (telemon.tui) calls them in worker threads, and the
core never imports Textual. Acknowledging and resolving alarms are telemon.alarms'
`acknowledge` / `resolve`, and new limits are telemon.admin's `set_limits`: one way each.
Every change here is one transaction together with its audit entry, by the nurse's name, and
needs the right alarm.handle (telemon.roles; as acknowledge and resolve do): a refusal is
audited and raised as admin.Refused, which the dashboard shows like any AdminError.

The overview is one query: every patient with the worst of its unresolved alarms (red >
yellow > missing; OpenTele's overview order, shared/CLINICAL.md), picked by a window function
over the partial index `alarms_unresolved` (migration m004_nursing). A running dashboard then
follows the database cheaply (`OverviewFeed`): `PRAGMA data_version` says whether anyone else
committed, and three MAX() lookups say which patients the new alarm events, audit entries and
readings concern; only those patients' rows are read again.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec
import numpy as np
import sqlite_utils

from telemon import admin, alarms, store, wire
from telemon.admin import AdminError
from telemon.codes import KNOWN
from telemon.config import CentralConfig
from telemon.models import (
    Alarm,
    Component,
    ConsentEvent,
    LimitSet,
    LimitVersion,
    Observation,
    QuestionnaireResponse,
    Triage,
)
from telemon.modules import DiseaseModule

TRIAGE_OF_SEVERITY = alarms.RANK
"""An alarm severity's triage ("red" -> Triage.RED)."""
_Record = TypeVar("_Record", Observation, QuestionnaireResponse)
MOST_RESPONSES = 20  # questionnaire responses a patient record shows, newest first
MOST_ALARMS = 50  # resolved alarms a patient record shows (all unresolved ones always)
MOST_READINGS = 2000  # readings per measure a patient record's plot gets (the newest)


class NursingConflict(AdminError):
    """Another nurse got there first (the patient is assigned to someone else); the message
    names them."""


# --- the overview ---------------------------------------------------------------------------


class OverviewRow(msgspec.Struct, frozen=True, kw_only=True):
    """One patient in the triage overview (a Struct: 10,000 of them are made in a blink)."""

    patient: str
    display_name: str  # personal data: shown to the nurse, never logged
    organisation: str
    modules: tuple[str, ...]
    triage: Triage
    unresolved: int  # unresolved alarms
    alarm: str | None  # the worst unresolved alarm (worst, then open before acknowledged,
    state: str | None  # then waiting longest), its state,
    rule: str | None  # rule,
    message: str  # and what triggered it: the engine's sentence with value, unit and limit
    raised: datetime | None
    acknowledged_by: str | None
    escalated: bool
    assigned_to: str | None  # who is on the patient ("assign to me")
    contacted: datetime | None  # the latest "contacted" mark
    latest_reading: int  # the newest observation's rowid (0: none yet)
    latest_reading_at: datetime | None  # ... and its (device) time
    reviewed_upto: int  # the newest observation a nurse has reviewed (0: none)
    reviewed_by: str | None
    reviewed_at: datetime | None
    sort_key: tuple = ()
    """Worst first (red, yellow, missing, green), then by time waiting: open alarms before
    acknowledged ones (somebody is on those) and green patients with unreviewed readings
    before reviewed ones, each oldest first. Set when the row is read (`overview`)."""

    @property
    def unreviewed(self) -> bool:
        """Readings have arrived since a nurse last reviewed this patient."""
        return self.latest_reading > self.reviewed_upto

    @property
    def who(self) -> str:
        """Who is on it: the nurse assigned, else the one who acknowledged the alarm."""
        return self.assigned_to or self.acknowledged_by or ""

    @property
    def when(self) -> datetime | None:
        """The time the row is about: the alarm's, or for a green patient the latest reading."""
        return self.raised if self.alarm is not None else self.latest_reading_at


_SEVERITY_ORDER = "CASE severity WHEN 'red' THEN 3 WHEN 'yellow' THEN 2 ELSE 1 END"

_OVERVIEW = f"""
    WITH worst AS (
        SELECT id, patient, severity, state, rule, message, raised,
               ROW_NUMBER() OVER (PARTITION BY patient ORDER BY {_SEVERITY_ORDER} DESC,
                                  state = 'acknowledged', raised, id) AS n,
               COUNT(*) OVER (PARTITION BY patient) AS unresolved
        FROM alarms WHERE state != 'resolved' {{alarms}}
    ),
    latest AS (
        SELECT patient, MAX(rowid) AS reading FROM observations {{observations}}
        GROUP BY patient
    )
    SELECT p.id, p.display_name, p.organisation, e.modules,
           w.id, w.severity, w.state, w.rule, w.message, w.raised, w.unresolved,
           (SELECT "by" FROM alarm_events WHERE alarm_id = w.id AND action = 'acknowledged'
            ORDER BY id DESC LIMIT 1),
           EXISTS (SELECT 1 FROM alarm_events WHERE alarm_id = w.id AND action = 'escalated'),
           a.nurse, (SELECT MAX(at) FROM contacts WHERE patient = p.id),
           l.reading, o.effective, r.upto, r.nurse, r.at
    FROM patients p
    LEFT JOIN enrolments e ON e.patient = p.id AND e.organisation = p.organisation
    LEFT JOIN worst w ON w.patient = p.id AND w.n = 1
    LEFT JOIN latest l ON l.patient = p.id
    LEFT JOIN observations o ON o.rowid = l.reading
    LEFT JOIN assignments a ON a.patient = p.id
    LEFT JOIN reviews r ON r.patient = p.id
    {{patients}}
"""
_ONLY = "patient IN (SELECT value FROM json_each(?))"


def overview(db: sqlite_utils.Database,
             patients: Collection[str] | None = None) -> list[OverviewRow]:
    """Every patient's overview row (only those of `patients` if given), worst first."""
    if patients is None:
        sql, args = _OVERVIEW.format(alarms="", observations="", patients=""), []
    else:
        only = msgspec.json.encode(list(patients)).decode()
        sql = _OVERVIEW.format(alarms=f"AND {_ONLY}", observations=f"WHERE {_ONLY}",
                               patients="WHERE p.id IN (SELECT value FROM json_each(?))")
        args = [only, only, only]
    modules_of: dict[str, tuple[str, ...]] = {}
    rows = [_overview_row(row, modules_of) for row in db.execute(sql, args)]
    rows.sort(key=lambda row: row.sort_key)
    return rows


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _overview_row(row: tuple, modules_of: dict[str, tuple[str, ...]]) -> OverviewRow:
    (patient, name, organisation, modules, alarm, severity, state, rule, message, raised,
     unresolved, acknowledged_by, escalated, assigned_to, contacted, reading, reading_at,
     reviewed_upto, reviewed_by, reviewed_at) = row
    if alarm is None:
        if not reading:
            message = "no readings yet"
        elif (reviewed_upto or 0) >= reading:
            message = f"reviewed by {reviewed_by}"
        else:
            message = "new readings to review"
    if modules not in modules_of:  # the same few lists, 10,000 times
        modules_of[modules] = tuple(msgspec.json.decode(modules)) if modules else ()
    triage = TRIAGE_OF_SEVERITY[severity] if severity else Triage.GREEN
    raised, reading_at = _time(raised), _time(reading_at)
    # OverviewRow.sort_key: handled = acknowledged, or (green) nothing new to review
    handled = state == "acknowledged" if alarm else (reading or 0) <= (reviewed_upto or 0)
    when = raised if alarm else reading_at
    return OverviewRow(
        patient=patient, display_name=name, organisation=organisation,
        modules=modules_of[modules], triage=triage, unresolved=unresolved or 0, alarm=alarm,
        state=state, rule=rule, message=message, raised=raised,
        acknowledged_by=acknowledged_by, escalated=bool(escalated), assigned_to=assigned_to,
        contacted=_time(contacted), latest_reading=reading or 0, latest_reading_at=reading_at,
        reviewed_upto=reviewed_upto or 0, reviewed_by=reviewed_by,
        reviewed_at=_time(reviewed_at),
        sort_key=(-triage, handled, when.timestamp() if when else float("inf"), patient))


@dataclass(frozen=True)
class OverviewFilter:
    """What the nurse narrowed the overview to (None / "": everything)."""

    module: str | None = None
    triage: Triage | None = None
    organisation: str | None = None
    text: str = ""  # part of the pseudonym or the display name, any case

    def matches(self, row: OverviewRow) -> bool:
        if not self.active:
            return True
        if self.module is not None and self.module not in row.modules:
            return False
        if self.triage is not None and row.triage != self.triage:
            return False
        if self.organisation is not None and row.organisation != self.organisation:
            return False
        text = self.needle
        return not text or text in row.patient.casefold() or text in row.display_name.casefold()

    @functools.cached_property
    def needle(self) -> str:
        return self.text.strip().casefold()

    @functools.cached_property
    def active(self) -> bool:
        return any((self.module, self.triage is not None, self.organisation, self.needle))


@dataclass(frozen=True)
class ChangeCursor:
    """How far the database has been seen: the last alarm event, audit entry and reading."""

    alarm_event: int
    audit: int
    reading: int


def change_cursor(db: sqlite_utils.Database) -> ChangeCursor:
    return ChangeCursor(*db.execute(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM alarm_events), "
        "(SELECT COALESCE(MAX(id), 0) FROM audit), "
        "(SELECT COALESCE(MAX(rowid), 0) FROM observations)").fetchone())


def changed_patients(db: sqlite_utils.Database, since: ChangeCursor,
                     until: ChangeCursor) -> set[str]:
    """The patients that alarm events, audited changes (assignments, contacts, reviews,
    limits, enrolment) and readings between two cursors concern."""
    return {row[0] for row in db.execute(
        "SELECT a.patient FROM alarm_events e JOIN alarms a ON a.id = e.alarm_id "
        "WHERE e.id > ? AND e.id <= ? "
        "UNION SELECT patient FROM audit WHERE id > ? AND id <= ? AND patient IS NOT NULL "
        "UNION SELECT patient FROM observations WHERE rowid > ? AND rowid <= ?",
        [since.alarm_event, until.alarm_event, since.audit, until.audit, since.reading,
         until.reading])}


@dataclass(frozen=True)
class OverviewChange:
    """Rows read again: those of `patients` (a patient missing from `rows` is gone)."""

    patients: frozenset[str]
    rows: list[OverviewRow]


class OverviewFeed:
    """Follows the central database for a dashboard: `load()` reads the whole overview,
    `poll()` afterwards the rows of the patients changed since (None when nothing was
    committed). Use it from one thread: it keeps its own place in the database."""

    FULL_RELOAD = 2000
    """More changed patients than this: read the whole overview again (one query)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._version: int | None = None
        self._cursor: ChangeCursor | None = None

    def _data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def load(self) -> list[OverviewRow]:
        self._version = self._data_version()
        self._cursor = change_cursor(self.db)  # first: what commits after it is seen again
        return overview(self.db)

    def poll(self) -> OverviewChange | list[OverviewRow] | None:
        """None when nothing changed; else the changed patients' rows, or the whole overview
        again (a list) when very many changed."""
        if self._cursor is None:
            return self.load()
        version = self._data_version()
        if version == self._version:
            return None
        self._version = version
        until = change_cursor(self.db)
        patients = changed_patients(self.db, self._cursor, until)
        self._cursor = until
        if not patients:
            return None
        if len(patients) > self.FULL_RELOAD:
            return overview(self.db)
        return OverviewChange(frozenset(patients), overview(self.db, patients))


# --- the dashboard's own actions ------------------------------------------------------------


def assign(db: sqlite_utils.Database, patient: str, *, nurse: str) -> None:
    """Put `nurse` on a patient. NursingConflict when another nurse is on them already
    (they release the patient first), so two nurses never handle one patient unknowingly."""
    _check_nurse(db, nurse, "patient.assign", patient)
    with store.transaction(db):
        admin.get_patient(db, patient)
        current = db.execute("SELECT nurse, since FROM assignments WHERE patient = ?",
                             [patient]).fetchone()
        if current is not None:
            who = "you" if current[0] == nurse else current[0]
            raise NursingConflict(f"{patient} is already assigned to {who} (since "
                                  f"{current[1][:16].replace('T', ' ')} UTC)")
        db.execute("INSERT INTO assignments (patient, nurse, since) VALUES (?, ?, ?)",
                   [patient, nurse, store.utc_text(datetime.now(UTC))])
        admin.audit(db, actor=nurse, action="patient.assign", patient=patient, nurse=nurse)


def release(db: sqlite_utils.Database, patient: str, *, nurse: str) -> None:
    """Take `nurse` off a patient they are assigned to."""
    _check_nurse(db, nurse, "patient.release", patient)
    with store.transaction(db):
        admin.get_patient(db, patient)
        current = db.execute("SELECT nurse FROM assignments WHERE patient = ?",
                             [patient]).fetchone()
        if current is None or current[0] != nurse:
            whom = f"to {current[0]}" if current else "to anyone"
            raise NursingConflict(f"{patient} is not assigned to you (assigned {whom})")
        db.execute("DELETE FROM assignments WHERE patient = ?", [patient])
        admin.audit(db, actor=nurse, action="patient.release", patient=patient, nurse=nurse)


@dataclass(frozen=True)
class Contact:
    at: datetime
    nurse: str
    note: str


def mark_contacted(db: sqlite_utils.Database, patient: str, *, nurse: str,
                   note: str = "") -> Contact:
    """Record that the nurse has contacted the patient (by phone, video), with a note."""
    _check_nurse(db, nurse, "patient.contacted", patient)
    contact = Contact(datetime.now(UTC), nurse, note.strip())
    with store.transaction(db):
        admin.get_patient(db, patient)
        db.execute("INSERT INTO contacts (patient, at, nurse, note) VALUES (?, ?, ?, ?)",
                   [patient, store.utc_text(contact.at), nurse, contact.note])
        admin.audit(db, actor=nurse, action="patient.contacted", patient=patient,
                    note=contact.note)
    return contact


@dataclass(frozen=True)
class ReviewOutcome:
    reviewed: list[str]
    skipped: dict[str, str]  # patient -> why (no longer green, nothing new)


def review_green(db: sqlite_utils.Database, shown: Mapping[str, int], *,
                 nurse: str) -> ReviewOutcome:
    """Mark green patients' readings as reviewed ("acknowledge all green"), each up to the
    newest reading the nurse was shown (`shown`: patient -> OverviewRow.latest_reading), so a
    reading that arrived since is not marked seen. A patient with an unresolved alarm by now
    is skipped and said why. Two nurses at once: the further review is kept."""
    _check_nurse(db, nurse, "patient.reviewed")
    reviewed, skipped = [], {}
    now = store.utc_text(datetime.now(UTC))
    with store.transaction(db):
        for patient, upto in shown.items():
            if db.execute("SELECT 1 FROM alarms WHERE patient = ? AND state != 'resolved'",
                          [patient]).fetchone():
                skipped[patient] = "no longer green"
                continue
            done = db.execute("SELECT upto FROM reviews WHERE patient = ?",
                              [patient]).fetchone()
            if upto <= 0 or (done is not None and done[0] >= upto):
                skipped[patient] = "nothing new to review"
                continue
            db.execute("INSERT INTO reviews (patient, upto, at, nurse) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (patient) DO UPDATE SET upto = excluded.upto, "
                       "at = excluded.at, nurse = excluded.nurse WHERE excluded.upto > upto",
                       [patient, upto, now, nurse])
            admin.audit(db, actor=nurse, action="patient.reviewed", patient=patient,
                        upto=upto)
            reviewed.append(patient)
    return ReviewOutcome(reviewed, skipped)


def _check_nurse(db: sqlite_utils.Database, nurse: str, attempted: str,
                 patient: str | None = None) -> None:
    """A name is given and (once staff are registered) holds the right alarm.handle."""
    if not nurse.strip():
        raise admin.InvalidInput("say who you are: the dashboard needs the nurse's name")
    admin.require(db, nurse, "alarm.handle", attempted, patient)


# --- one patient ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """One measured code of a patient: its recent history with the limits in force now."""

    key: str
    module: str
    times: np.ndarray  # seconds since the epoch, UTC, oldest first
    values: np.ndarray
    limits: LimitSet | None
    limits_source: str  # "patient v<N>", "organisation v<N>", "module" or "none"
    latest: Observation | None  # the newest reading (its value, time and device)

    @property
    def latest_value(self) -> str:
        """The newest value with its unit ("87 %"; a blood pressure's component's own)."""
        if self.latest is None:
            return "-"
        code = KNOWN[self.key].code
        if self.latest.components and self.latest.code == code:  # a panel: its parts
            return ", ".join(_part_text(part) for part in self.latest.components)
        part = next((c for c in self.latest.components
                     if (c.code.system, c.code.code) == (code.system, code.code)),
                    None) if self.latest.components else self.latest
        return "-" if part is None else _part_text(part)

    @property
    def is_panel(self) -> bool:
        """Readings of this code are panels (a blood pressure, an audiogram): their parts
        are plotted as measures of their own, or not at all."""
        return self.latest is not None and bool(self.latest.components) and (
            self.latest.code == KNOWN[self.key].code)


def _part_text(part: Observation | Component) -> str:
    name = f"{part.code.display} " if isinstance(part, Component) and part.code.display else ""
    return (f"{name}{part.value} {part.unit}" if part.value is not None
            else f"{name}({part.absent})")


@dataclass(frozen=True)
class PatientRecord:
    patient: admin.Patient
    triage: Triage
    measures: list[Measure]
    responses: list[QuestionnaireResponse]  # newest first
    alarms: list[Alarm]  # unresolved first, then the others, newest first
    limits: list[LimitVersion]  # every version of the patient's own limits
    consent: list[ConsentEvent]  # in the order they happened
    contacts: list[Contact]  # newest first
    assigned_to: str | None
    days: int  # the history the measures cover


@dataclass(frozen=True)
class LimitChoice:
    """A code whose limits the nurse may set for a patient, with the limits in force now."""

    key: str
    module: str
    limits: LimitSet | None
    source: str  # "patient v<N>", "organisation v<N>", "module" or "none"


def limit_choices(db: sqlite_utils.Database, config: CentralConfig,
                  modules: Mapping[str, DiseaseModule], patient: str) -> list[LimitChoice]:
    """Each code of the patient's (installed) modules once, with the limits a new reading
    would be checked against: the patient's own version in force, else the organisation's
    default version in force, else the module's (the order of telemon.alarms)."""
    now = datetime.now(UTC)
    own = {admin.code_key(v.code): v for v in admin.limits_in_force(db, patient, now)}
    defaults = alarms.Directory.organisation_defaults(db, config.organisation)
    choices: dict[str, LimitChoice] = {}
    for name in admin.get_patient(db, patient).enrolment.modules:
        module = modules.get(name)
        if module is None:  # a module since uninstalled: its readings stay, not its limits
            continue
        for key in module.codes:
            if key in choices:
                continue
            if key in own:
                found = (own[key].limits, f"patient v{own[key].version}")
            else:
                found = alarms.shared_limits(defaults, module, key, now) or (None, "none")
            choices[key] = LimitChoice(key, name, *found)
    return list(choices.values())


def patient_record(db: sqlite_utils.Database, patient: str, *, nurse: str,
                   config: CentralConfig, modules: Mapping[str, DiseaseModule], days: int = 30,
                   now: datetime | None = None, audited: bool = True) -> PatientRecord:
    """Everything the patient view shows. The nurse opening it is audited ("patient.show",
    as admin.show_patient); reading it again while it is open (`audited=False`) is not."""
    if not nurse.strip():
        raise admin.InvalidInput("say who you are: the dashboard needs the nurse's name")
    now = now or datetime.now(UTC)
    if audited:
        found = admin.show_patient(db, patient, actor=nurse).patient
    else:
        found = admin.get_patient(db, patient)
    measures = []
    for choice in limit_choices(db, config, modules, patient):
        series = alarms.load_series(db, patient, choice.key, since=now - timedelta(days=days),
                                    limits=choice.limits or LimitSet(), most=MOST_READINGS)
        measures.append(Measure(choice.key, choice.module, series.times, series.values,
                                choice.limits, choice.source,
                                latest_reading(db, patient, choice.key)))
    return PatientRecord(
        patient=found, triage=alarms.triage(db, [patient])[patient], measures=measures,
        responses=_responses(db, patient), alarms=_alarms(db, patient),
        limits=admin.limit_versions(db, patient), consent=store.consent_history(db, patient),
        contacts=contacts(db, patient), assigned_to=assigned_to(db, patient), days=days)


def latest_reading(db: sqlite_utils.Database, patient: str, key: str) -> Observation | None:
    """The newest reading of a measure (of its panel, for a blood-pressure component)."""
    code = KNOWN[alarms.COMPONENT_OF.get(key, key)].code
    row = db.execute("SELECT wire FROM observations WHERE patient = ? AND code_system = ? "
                     "AND code = ? ORDER BY effective DESC LIMIT 1",
                     [patient, code.system, code.code]).fetchone()
    return None if row is None else _decoded(row[0], Observation)


def _decoded(text: str, kind: type[_Record]) -> _Record:
    record = wire.decode(text.encode())
    assert isinstance(record, kind)
    return record


def _responses(db: sqlite_utils.Database, patient: str) -> list[QuestionnaireResponse]:
    return [_decoded(row[0], QuestionnaireResponse) for row in db.execute(
        "SELECT wire FROM questionnaire_responses WHERE patient = ? "
        "ORDER BY authored DESC LIMIT ?", [patient, MOST_RESPONSES])]


def _alarms(db: sqlite_utils.Database, patient: str) -> list[Alarm]:
    ids = db.execute(
        "SELECT id FROM alarms WHERE patient = ? AND state != 'resolved' "
        f"ORDER BY {_SEVERITY_ORDER} DESC, raised", [patient]).fetchall()
    ids += db.execute("SELECT id FROM alarms WHERE patient = ? AND state = 'resolved' "
                      "ORDER BY raised DESC LIMIT ?", [patient, MOST_ALARMS]).fetchall()
    return [store.get_alarm(db, alarm_id) for (alarm_id,) in ids]


def contacts(db: sqlite_utils.Database, patient: str) -> list[Contact]:
    """A patient's "contacted" marks, newest first."""
    return [Contact(datetime.fromisoformat(at), nurse, note) for at, nurse, note in db.execute(
        "SELECT at, nurse, note FROM contacts WHERE patient = ? ORDER BY at DESC, id DESC",
        [patient])]


def assigned_to(db: sqlite_utils.Database, patient: str) -> str | None:
    row = db.execute("SELECT nurse FROM assignments WHERE patient = ?", [patient]).fetchone()
    return None if row is None else row[0]


# --- opening the database for the dashboard -------------------------------------------------


class DatabaseMissing(AdminError):
    """There is no central database where the config says (the dashboard never makes one)."""


def open_existing(path: str) -> sqlite_utils.Database:
    """The central's database at `path`, brought up to date; DatabaseMissing if there is no
    file (a wrong storage.path must not quietly give an empty dashboard), sqlite3.Error if
    it cannot be read."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DatabaseMissing(f"no central database at {path}: start the central "
                              "(telemon central) or check storage.path in the config") from None
    return store.open_database(path)


def readable_error(exc: BaseException) -> str:
    """A database problem in words a nurse can pass on (locked, unreadable, missing)."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return "database locked by another program"
    if isinstance(exc, sqlite3.DatabaseError):
        return f"database unreadable: {exc}"
    if isinstance(exc, AdminError):
        return str(exc)
    return f"unexpected error: {exc!r}"

