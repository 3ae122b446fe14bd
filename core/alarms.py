"""The alarm engine: each stored observation against the patient's limits, the modules' trend
rules, debounced alarms, escalation, missing measurements and per-patient triage.

Limits in force for a patient, module and code (the first that exists):
1. the patient's own version valid at the observation's time ("patient v<N>"; versions are set
   by the referring doctor and kept forever, `telemon limits set`),
2. the organisation's default version for that module and code valid at the observation's
   time ("organisation v<N>"; set by a team lead, kept forever, `telemon limits defaults set`),
3. the module's defaults ("module").
Each check is kept as an `Evaluation` with the limits it used, so a reading judged today is
still explained after the limits change. A reading in another unit than the code's canonical
one is not compared (it is stored and counted, never mis-judged).

Alarms are debounced: at most one unresolved alarm per patient, module and rule (a unique
index in the database enforces it, even with several ingest processes). A further finding of
the same rule is folded into it (`repeats`, the observations behind it); a worse one raises
it again at the higher severity. So a value flapping around a limit raises one alarm, not
fifty. Alarms stay until a nurse resolves them, except "missing", which resolves itself when
the measurement arrives. An open (unacknowledged) red alarm is escalated once after the
configured time. Every alarm event goes, by a database trigger, into `alarm_outbox`, from
which the central publishes it (telemon.central).

Triage per patient: the worst severity among its unresolved alarms (red > yellow > missing),
green when there is none (OpenTele's overview order; shared/CLINICAL.md).
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import sqlite_utils

from telemon import admin, dsp, store, wire
from telemon.codes import BY_CODE, KNOWN, MeasureCode, lookup
from telemon.config import CentralConfig
from telemon.models import (
    BAND_TRIAGE,
    Alarm,
    AlarmEvent,
    Evaluation,
    LimitSet,
    Observation,
    QuestionnaireResponse,
    Triage,
    new_id,
    reading_id,
)
from telemon.modules import DiseaseModule, Finding, Questionnaire, Rule, Series

logger = logging.getLogger(__name__)

ACTOR = "central"
"""Who the engine's own alarm events are by."""
MISSING_RULE = "missing"
BAND_WORDS = {-2: "below the red limit", -1: "below the yellow limit",
              1: "above the yellow limit", 2: "above the red limit"}
BAND_LIMIT = {-2: "red_low", -1: "yellow_low", 1: "yellow_high", 2: "red_high"}
SEVERITY = {Triage.RED: "red", Triage.YELLOW: "yellow", Triage.MISSING: "missing"}
RANK = {"missing": Triage.MISSING, "yellow": Triage.YELLOW, "red": Triage.RED}
LABEL = {t: t.label for t in Triage}
MAX_SERIES = 5000
"""Most readings a trend rule is given (the newest): bounds the work per new reading for a
device that streams (a 1 Hz oximeter fills a 7-day window with 600,000)."""


def limits_rule(key: str) -> str:
    """The rule name of the limits check of one code: one alarm per code and module."""
    return f"limits.{key}"


@dataclass(frozen=True)
class Patient:
    """What the engine knows of an enrolled patient (no personal data)."""

    id: str
    modules: tuple[str, ...]
    gateways: frozenset[str]
    timezone: ZoneInfo
    enrolled: datetime | None


Versions = dict[tuple[str, str], list[tuple[datetime, int, LimitSet]]]
"""Limit versions by (patient or module, measure key): (valid_from, version, limits), in
version order (a version never starts before the one it follows)."""


@dataclass
class Directory:
    """Enrolments, patients' limit versions and the organisation's default limits of one
    organisation, read once and again whenever the audit log has grown (every
    administrative change is audited in the same transaction)."""

    db: sqlite_utils.Database
    organisation: str
    default_timezone: ZoneInfo
    patients: dict[str, Patient] = field(default_factory=dict)
    limit_versions: Versions = field(default_factory=dict)  # by (patient, key)
    default_versions: Versions = field(default_factory=dict)  # by (module, key)
    _seen: int | None = None

    @staticmethod
    def organisation_defaults(db: sqlite_utils.Database, organisation: str) -> Versions:
        """Every version of the organisation's default limits, by (module, measure key)."""
        versions: Versions = defaultdict(list)
        for module, system, code, version, limits, valid_from in db.execute(
                "SELECT module, code_system, code, version, limits, valid_from "
                "FROM default_limits WHERE organisation = ? ORDER BY version", [organisation]):
            known = BY_CODE.get((system, code))
            if known is not None:
                versions[(module, known.key)].append(
                    (datetime.fromisoformat(valid_from), version,
                     msgspec.json.decode(limits, type=LimitSet)))
        return dict(versions)

    def refresh(self) -> bool:
        """Reload if anything was changed since the last load; True if it reloaded."""
        last = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]
        if last == self._seen:
            return False
        self._seen = last
        zones = dict(self.db.execute("SELECT id, timezone FROM patients "
                                     "WHERE organisation = ?", [self.organisation]).fetchall())
        patients = {}
        for patient, modules, gateways, enrolled in self.db.execute(
                "SELECT patient, modules, gateways, enrolled FROM enrolments "
                "WHERE organisation = ?", [self.organisation]):
            zone = zones.get(patient)
            patients[patient] = Patient(
                patient, tuple(msgspec.json.decode(modules)),
                frozenset(msgspec.json.decode(gateways)),
                ZoneInfo(zone) if zone else self.default_timezone,
                datetime.fromisoformat(enrolled) if enrolled else None)
        versions: dict[tuple[str, str], list[tuple[datetime, int, LimitSet]]] = defaultdict(list)
        for patient, system, code, version, limits, valid_from in self.db.execute(
                "SELECT patient, code_system, code, version, limits, valid_from FROM limits "
                "ORDER BY version"):
            known = BY_CODE.get((system, code))
            if patient in patients and known is not None:
                versions[(patient, known.key)].append(
                    (datetime.fromisoformat(valid_from), version,
                     msgspec.json.decode(limits, type=LimitSet)))
        self.patients, self.limit_versions = patients, dict(versions)
        self.default_versions = self.organisation_defaults(self.db, self.organisation)
        return True

    def refusal(self, patient: str, gateway: str) -> str | None:
        """Why a reading for `patient` from `gateway` is not accepted, or None."""
        enrolled = self.patients.get(patient)
        if enrolled is None:
            return f"patient {patient} is not enrolled in organisation {self.organisation}"
        if gateway not in enrolled.gateways:
            return (f"patient {patient} is not bound to gateway {gateway} in organisation "
                    f"{self.organisation}")
        return None

    def patient_limits(self, patient: str, key: str, at: datetime) -> tuple[LimitSet, str] | None:
        """The patient's own limits for a code valid at `at`, with their source."""
        return _version_at(self.limit_versions.get((patient, key), ()), at, "patient")


@dataclass
class Outcome:
    """What one evaluation pass did, for counters and the caller's log."""

    evaluations: int = 0
    raised: int = 0  # new alarms
    folded: int = 0  # findings folded into an unresolved alarm
    resolved: int = 0
    escalated: int = 0
    not_compared: int = 0  # readings in a unit other than the code's own


class AlarmEngine:
    """Evaluates observations and raises alarms. Call `evaluate` inside the transaction that
    stored the observations, so readings, evaluations and alarms are committed together."""

    def __init__(self, db: sqlite_utils.Database, config: CentralConfig,
                 modules: Mapping[str, DiseaseModule]) -> None:
        self.db = db
        self.config = config
        self.modules = {name: module for name, module in modules.items()
                        if name in config.modules and config.modules[name].enabled}
        self.directory = Directory(db, config.organisation, config.timezone)
        self.series = SeriesCache()
        self.escalate_after = timedelta(minutes=config.alarms.escalate_red_after_minutes)

    # --- limits -----------------------------------------------------------------------------

    def limits_in_force(self, patient: str, module: str, key: str,
                        at: datetime) -> tuple[LimitSet, str] | None:
        """The limits a reading of `key` at `at` is checked against, with their source."""
        return (self.directory.patient_limits(patient, key, at)
                or shared_limits(self.directory.default_versions, self.modules[module], key,
                                 at))

    def evaluate_new(self, observations: Sequence[Observation],
                     responses: Sequence[QuestionnaireResponse], now: datetime) -> Outcome:
        """Evaluate newly stored readings and questionnaire responses: the answers, then the
        scores they give (stored here as observations), then every reading. Call it inside
        the transaction that stored them."""
        outcome = Outcome()
        scores = self.evaluate_responses(outcome, responses, now)
        new = [*observations, *store.store_observations(self.db, scores, received=now)]
        return self.evaluate(new, now, outcome)

    # --- observations -----------------------------------------------------------------------

    def evaluate(self, observations: Sequence[Observation], now: datetime,
                 outcome: Outcome | None = None) -> Outcome:
        """Check new observations (already stored) and raise what they show."""
        outcome = outcome or Outcome()
        checks: list[tuple[Observation, str, str, MeasureCode, float, LimitSet, str]] = []
        touched: set[tuple[str, str, str]] = set()  # (patient, module, key)
        for obs in observations:
            patient = self.directory.patients.get(obs.patient)
            if patient is None:
                continue
            for key, value, unit in _values(obs):
                known = KNOWN[key]
                for module in patient.modules:
                    if module not in self.modules or key not in self.modules[module].codes:
                        continue
                    touched.add((obs.patient, module, key))
                    if value is None:
                        continue
                    if unit != known.unit:
                        outcome.not_compared += 1
                        continue
                    found = self.limits_in_force(obs.patient, module, key, obs.effective)
                    if found is not None:
                        checks.append((obs, module, key, known, value, *found))
        bands = _bands([(c[4], c[5]) for c in checks])
        evaluations = []
        for (obs, module, key, known, value, limits, source), band in zip(checks, bands,
                                                                           strict=True):
            severity = BAND_TRIAGE[band]
            evaluations.append(Evaluation(
                observation=obs.id, patient=obs.patient, module=module, code=key,
                severity=LABEL[severity], limits=limits, limits_source=source, evaluated=now))
            if severity > Triage.GREEN:
                limit = getattr(limits, BAND_LIMIT[band])
                message = (f"{known.display} {value:g} {known.unit} {BAND_WORDS[band]} "
                           f"{limit} {known.unit} ({source} limits)")
                self._finding(outcome, obs.patient, module, limits_rule(key), key,
                              Finding(severity, message, (obs.id,)), limits, now)
        store.store_evaluations(self.db, evaluations)
        outcome.evaluations = len(evaluations)
        self._trend_rules(outcome, touched, now)
        self._resolve_missing(outcome, touched, now)
        return outcome

    def _trend_rules(self, outcome: Outcome, touched: set[tuple[str, str, str]],
                     now: datetime) -> None:
        # one query per patient and code, over the widest window any of its rules needs:
        # each rule then gets the tail of it that its own window covers
        wanted: dict[tuple[str, str], list[tuple[str, Rule]]] = defaultdict(list)
        for patient, module_name, key in sorted(touched):
            for rule in self.modules[module_name].rules:
                if key in rule.codes:
                    wanted[(patient, key)].append((module_name, rule))
        for (patient, key), rules in wanted.items():
            since = now - max(rule.window for _, rule in rules)
            if any(rule.records for _, rule in rules):  # whole readings: not kept in memory
                rows = _series_rows(self.db, patient, key, since=since, most=MAX_SERIES,
                                    records=True)
            else:
                rows = self.series.rows(self.db, patient, key, since=since, most=MAX_SERIES)
            for module_name, rule in rules:
                found = self.limits_in_force(patient, module_name, key, now)
                start = bisect.bisect_left(rows, store.utc_text(now - rule.window),
                                           key=_effective)
                series = _series(patient, key, rows[start:], found[0] if found else LimitSet(),
                                 records=rule.records)
                try:
                    findings = rule.evaluate(series)
                except Exception:  # a module's bug must not stop ingest: say which rule
                    logger.exception("module %s rule %s failed on patient %s %s; skipped",
                                     module_name, rule.name, patient, key)
                    continue
                for finding in findings:
                    if finding.severity > Triage.GREEN:
                        self._finding(outcome, patient, module_name, rule.name, key, finding,
                                      found[0] if found else None, now)

    def _finding(self, outcome: Outcome, patient: str, module: str, rule: str,
                 key: str | None, finding: Finding, limits: LimitSet | None,
                 now: datetime) -> None:
        """Raise an alarm for a finding, or fold it into the unresolved one of its rule."""
        severity = SEVERITY[finding.severity]
        current = store.unresolved_alarm(self.db, patient, module, rule)
        if current is None:
            store.store_record(self.db, Alarm(
                id=new_id(), patient=patient, module=module, rule=rule, severity=severity,
                raised=now, message=finding.message, observations=finding.observations,
                limits=limits, code=key,
                events=(AlarmEvent(at=now, action="raised", by=ACTOR, note=finding.message),)))
            outcome.raised += 1
            return
        observations = tuple(dict.fromkeys(current.observations + finding.observations))
        changes: dict = {"repeats": current.repeats + 1, "observations": observations}
        if RANK[severity] > RANK[current.severity]:  # worse: raised again, at the new level
            add_event(self.db, current, "raised", ACTOR, f"now {severity}: {finding.message}",
                      now, severity=severity, message=finding.message, limits=limits,
                      **changes)
            outcome.raised += 1
        else:
            store.store_record(self.db, msgspec.structs.replace(current, **changes))
            outcome.folded += 1

    def _resolve_missing(self, outcome: Outcome, touched: set[tuple[str, str, str]],
                         now: datetime) -> None:
        for patient, module in {(p, m) for p, m, _ in touched}:
            current = store.unresolved_alarm(self.db, patient, module, MISSING_RULE)
            if current is None:
                continue
            schedule = self.modules[module].schedule.codes
            if self._measured(patient, schedule, self._period(patient, module, now)[0]):
                add_event(self.db, current, "resolved", ACTOR, "measurement received", now,
                          state="resolved")
                outcome.resolved += 1

    # --- questionnaires ----------------------------------------------------------------------

    def questionnaires(self, patient: str, questionnaire: str) -> list[tuple[str, Questionnaire]]:
        """The (module, questionnaire) pairs of the patient's modules that use this one."""
        enrolled = self.directory.patients.get(patient)
        return [(name, q) for name in (enrolled.modules if enrolled else ())
                if name in self.modules for q in self.modules[name].questionnaires
                if q.id == questionnaire]

    def response_problem(self, response: QuestionnaireResponse) -> str | None:
        """Why a questionnaire response cannot be used, or None (a questionnaire no module
        of the patient uses is kept, not evaluated)."""
        answers = {a.item: a.value for a in response.answers}
        if len(answers) != len(response.answers):
            return f"questionnaire response {response.id}: an item is answered twice"
        for _, questionnaire in self.questionnaires(response.patient, response.questionnaire):
            if problems := questionnaire.problems(answers):
                return (f"questionnaire response {response.id} ({response.questionnaire}): "
                        + "; ".join(problems))
        return None

    def evaluate_responses(self, outcome: Outcome, responses: Sequence[QuestionnaireResponse],
                           now: datetime) -> list[Observation]:
        """Raise what the answers themselves say (answer significance), and return one
        observation per score for the caller to store and evaluate like any reading."""
        derived = []
        for response in responses:
            answers = {a.item: a.value for a in response.answers}
            for module, questionnaire in self.questionnaires(response.patient,
                                                             response.questionnaire):
                flagged = questionnaire.significance(answers)
                if flagged:
                    worst = max(level for _, level in flagged)
                    said = ", ".join(f"{item.id} = {answers[item.id]}" for item, _ in flagged)
                    self._finding(outcome, response.patient, module,
                                  f"answers.{questionnaire.id}", None,
                                  Finding(worst, f"{questionnaire.title}: {said}",
                                          (response.id,)), None, now)
                for name, value in questionnaire.score(answers).items():
                    derived.append(score_observation(response, questionnaire, name, value))
        return list({obs.id: obs for obs in derived}.values())  # two modules, one score

    # --- the clock: escalation and missing measurements ---------------------------------------

    def tick(self, now: datetime) -> Outcome:
        """Escalate overdue red alarms and raise "missing" where a deadline passed without
        the scheduled measurements. Call it inside a transaction, every few seconds."""
        outcome = Outcome()
        overdue = store.utc_text(now - self.escalate_after)
        for (alarm_id,) in self.db.execute(
                "SELECT a.id FROM alarms a WHERE a.state = 'open' AND a.severity = 'red' "
                "AND (SELECT MAX(at) FROM alarm_events e WHERE e.alarm_id = a.id "
                "     AND e.action = 'raised') <= ? "
                "AND NOT EXISTS (SELECT 1 FROM alarm_events e WHERE e.alarm_id = a.id "
                "                AND e.action = 'escalated')", [overdue]).fetchall():
            alarm = store.get_alarm(self.db, alarm_id)
            minutes = self.escalate_after.total_seconds() / 60
            add_event(self.db, alarm, "escalated", ACTOR,
                      f"red alarm not acknowledged within {minutes:g} min", now)
            outcome.escalated += 1
        for patient in self.directory.patients.values():
            for module in patient.modules:
                if module not in self.modules or not self.modules[module].schedule.codes:
                    continue
                start, deadline = self._period(patient.id, module, now)
                if patient.enrolled is not None and patient.enrolled > start:
                    continue  # enrolled during this period: not expected yet
                if (self._measured(patient.id, self.modules[module].schedule.codes, start)
                        or self._missing_raised_since(patient.id, module, deadline)):
                    continue
                wanted = ", ".join(KNOWN[c].display for c in self.modules[module].schedule.codes)
                local = deadline.astimezone(patient.timezone)
                self._finding(outcome, patient.id, module, MISSING_RULE, None, Finding(
                    Triage.MISSING, f"no {wanted} by the deadline "
                    f"{local:%Y-%m-%d %H:%M} {local.tzname()}"), None, now)
        return outcome

    def _period(self, patient: str, module: str, now: datetime) -> tuple[datetime, datetime]:
        """The last measuring period whose deadline has passed: (start, deadline), UTC."""
        schedule = self.modules[module].schedule
        zone = self.directory.patients[patient].timezone
        local = now.astimezone(zone)
        deadline = datetime.combine(local.date(), schedule.deadline, zone)
        if deadline > local:
            deadline -= timedelta(days=1)
        return (deadline - schedule.every).astimezone(UTC), deadline.astimezone(UTC)

    def _missing_raised_since(self, patient: str, module: str, deadline: datetime) -> bool:
        """Whether this deadline was already alarmed (a nurse may have resolved it since)."""
        return self.db.execute(
            "SELECT 1 FROM alarms WHERE patient = ? AND module = ? AND rule = ? AND raised >= ?",
            [patient, module, MISSING_RULE, store.utc_text(deadline)]).fetchone() is not None

    def _measured(self, patient: str, keys: Iterable[str], since: datetime) -> bool:
        """Whether every one of `keys` has a reading since `since` (device time)."""
        for key in keys:
            code = _stored_code(key)
            if self.db.execute(
                    "SELECT 1 FROM observations WHERE patient = ? AND code_system = ? "
                    "AND code = ? AND effective >= ? LIMIT 1",
                    [patient, code.system, code.code, store.utc_text(since)]).fetchone() is None:
                return False
        return True


def score_observation(response: QuestionnaireResponse, questionnaire: Questionnaire,
                      name: str, value: Decimal) -> Observation:
    """A questionnaire score as an observation of its measure, derived deterministically
    (the same response always gives the same id), with the response it came from."""
    key = questionnaire.scores[name]
    known = KNOWN[key]
    return Observation(
        id=reading_id(device=f"questionnaire:{questionnaire.id}", patient=response.patient,
                      code=key, effective=response.authored, raw=response.id.encode()),
        patient=response.patient, device=f"questionnaire.{questionnaire.id}",
        gateway=response.gateway, code=known.code, unit=known.unit, value=value,
        effective=response.authored,
        context={"questionnaire": questionnaire.id, "version": questionnaire.version,
                 "response": response.id, "score": name},
        driver=f"questionnaire:{questionnaire.id}", driver_version=questionnaire.version)


# --- the alarm lifecycle ---------------------------------------------------------------------

class AlarmConflict(Exception):
    """The alarm is not in the state the action needs (another nurse got there first)."""


def add_event(db: sqlite_utils.Database, alarm: Alarm, action: str, by: str, note: str,
              at: datetime, **changes: object) -> Alarm:
    """Append one event to an alarm's trail (with any state changes) and store it."""
    event = AlarmEvent(at=at, action=action, by=by, note=note)  # type: ignore[arg-type]
    updated = msgspec.structs.replace(alarm, events=(*alarm.events, event), **changes)
    store.store_record(db, updated)
    return updated


def acknowledge(db: sqlite_utils.Database, alarm_id: str, *, by: str, note: str = "",
                at: datetime | None = None) -> Alarm:
    """A nurse takes an open alarm (who, when, with what note). Read and changed under the
    write lock: of two nurses acknowledging at once, the second gets AlarmConflict naming
    the first, and neither acknowledgement is lost."""
    return _transition(db, alarm_id, "acknowledged", ("open",), by, note, at)


def resolve(db: sqlite_utils.Database, alarm_id: str, *, by: str, note: str = "",
            at: datetime | None = None) -> Alarm:
    """Close an open or acknowledged alarm."""
    return _transition(db, alarm_id, "resolved", ("open", "acknowledged"), by, note, at)


def _transition(db: sqlite_utils.Database, alarm_id: str, state: str, allowed: tuple[str, ...],
                by: str, note: str, at: datetime | None) -> Alarm:
    """The one way a person changes an alarm's state: the right alarm.handle is checked
    first (a refusal is audited and raised as admin.Refused, an AdminError)."""
    at = at or datetime.now(UTC)
    row = db.execute("SELECT patient FROM alarms WHERE id = ?", [alarm_id]).fetchone()
    if row is not None:  # an unknown alarm: KeyError below
        admin.require(db, by, "alarm.handle", f"alarm.{state}", row[0])
    with store.transaction(db):
        alarm = store.get_alarm(db, alarm_id)
        if alarm.state not in allowed:
            last = next((e for e in reversed(alarm.events) if e.action == alarm.state), None)
            who = f" by {last.by} at {last.at.isoformat(timespec='seconds')}" if last else ""
            raise AlarmConflict(f"alarm {alarm_id} is already {alarm.state}{who}")
        updated = add_event(db, alarm, state, by, note, at, state=state)
        admin.audit(db, actor=by, action=f"alarm.{state}", patient=alarm.patient,
                    alarm=alarm_id, note=note)
    return updated


def shared_limits(defaults: Versions, module: DiseaseModule, key: str,
                  at: datetime) -> tuple[LimitSet, str] | None:
    """The limits of a module's code at `at` for patients without their own, with their
    source: the organisation's default version valid then ("organisation v<N>",
    `defaults`: Directory.organisation_defaults), else the module's defaults ("module")."""
    found = _version_at(defaults.get((module.name, key), ()), at, "organisation")
    if found is not None:
        return found
    default = module.default_limits.get(key)
    return None if default is None else (default, "module")


def _version_at(versions: Iterable[tuple[datetime, int, LimitSet]], at: datetime,
                owner: str) -> tuple[LimitSet, str] | None:
    """The version valid at `at` (the last to start by then), as (limits, "<owner> v<N>")."""
    found = None
    for found_version in versions:
        if found_version[0] <= at:
            found = found_version
    return None if found is None else (found[2], f"{owner} v{found[1]}")


# --- triage ----------------------------------------------------------------------------------

def triage(db: sqlite_utils.Database, patients: Iterable[str] | None = None) -> dict[str, Triage]:
    """Each patient's triage: the worst of its unresolved alarms; patients without any (of
    those asked for) are green."""
    worst: dict[str, Triage] = {}
    for patient, severity in db.execute(
            "SELECT patient, severity FROM alarms WHERE state != 'resolved'"):
        worst[patient] = max(worst.get(patient, Triage.GREEN), RANK[severity])
    if patients is None:
        return worst
    return {p: worst.get(p, Triage.GREEN) for p in patients}


# --- series for trend rules --------------------------------------------------------------------

def load_series(db: sqlite_utils.Database, patient: str, key: str, *, since: datetime,
                limits: LimitSet, most: int = MAX_SERIES, records: bool = False) -> Series:
    """A patient's readings of one code since `since`, oldest first, at most the newest
    `most` (components such as the systolic of a blood pressure are read from their panel);
    with `records`, the whole observations too."""
    rows = _series_rows(db, patient, key, since=since, most=most, records=records)
    return _series(patient, key, rows, limits, records=records)


def _series_rows(db: sqlite_utils.Database, patient: str, key: str, *, since: datetime,
                 most: int, records: bool, after: int = 0) -> list[tuple]:
    """(id, effective as stored, seconds, value, rowid[, wire]) of load_series' readings,
    oldest first (only those with a rowid above `after`); the stored effective text orders
    exactly as the query's `>= since` does."""
    code = _stored_code(key)
    component = KNOWN[key].code if code != KNOWN[key].code else None
    # seconds since the epoch computed by SQLite (julianday: ~50 us resolution, plenty for
    # trends); the value as REAL unless it must be taken out of the components
    rows = db.execute(
        "SELECT id, effective, (julianday(effective) - 2440587.5) * 86400.0, "
        f"{'components' if component else 'CAST(value AS REAL)'}, rowid"
        f"{', wire' if records else ''} FROM observations "
        "WHERE patient = ? AND code_system = ? AND code = ? AND effective >= ? "
        f"{'AND rowid > ? ' if after else ''}ORDER BY effective DESC, id DESC LIMIT ?",
        [patient, code.system, code.code, store.utc_text(since), *([after] if after else []),
         most]).fetchall()
    rows.reverse()
    if component is not None:
        rows = [(*row[:3], next((float(c["value"]) for c in msgspec.json.decode(row[3])
                                 if c["code"]["code"] == component.code
                                 and c["value"] is not None), None), *row[4:])
                for row in rows]
    return rows


SERIES_CACHE_ROWS = 200_000
"""Readings the engine keeps in memory between evaluations (~330 bytes each: ~65 MB)."""


@dataclass
class _Kept:
    since: str  # the rows hold every reading from this time (stored text) on ...
    most: int  # ... up to this many of the newest, as _series_rows gives them
    rows: list[tuple]
    last: int  # the highest rowid read


class SeriesCache:
    """Each patient's recent series of a code as the trend rules last read it, completed
    next time with only what is new. SQLite gives a new row a rowid above every rowid in
    the table, whichever process writes it, so the readings stored since are those with a
    rowid above the highest one read (nothing is deleted from observations). What was read
    inside a transaction that is then rolled back must be forgotten: `clear()`."""

    def __init__(self, most_rows: int = SERIES_CACHE_ROWS) -> None:
        self.most_rows = most_rows
        self._kept: dict[tuple[str, str], _Kept] = {}  # oldest use first
        self._size = 0

    def rows(self, db: sqlite_utils.Database, patient: str, key: str, *, since: datetime,
             most: int) -> list[tuple]:
        """What _series_rows(..., records=False) gives now."""
        since_text = store.utc_text(since)
        kept = self._kept.pop((patient, key), None)
        if kept is not None:
            self._size -= len(kept.rows)
        if kept is None or since_text < kept.since or most != kept.most:
            rows = _series_rows(db, patient, key, since=since, most=most, records=False)
            last = max((row[4] for row in rows), default=0)
        else:
            rows, last = kept.rows, kept.last
            if new := _series_rows(db, patient, key, since=since, most=most, records=False,
                                   after=last):
                last = max(last, max(row[4] for row in new))
                if rows and _reading_order(new[0]) < _reading_order(rows[-1]):
                    rows = sorted(rows + new, key=_reading_order)  # a late reading
                else:
                    rows = rows + new
            # the window's start has moved on; the newest `most` (a reading left out for
            # being older than `most` newer ones is never among them again)
            rows = rows[bisect.bisect_left(rows, since_text, key=_effective):][-most:]
        self._kept[(patient, key)] = _Kept(since_text, most, rows, last)
        self._size += len(rows)
        while self._size > self.most_rows:  # forget the least recently used
            self._size -= len(self._kept.pop(next(iter(self._kept))).rows)
        return rows

    def clear(self) -> None:
        self._kept.clear()
        self._size = 0


def _reading_order(row: tuple) -> tuple[str, str]:
    return row[1], row[0]


def _effective(row: tuple) -> str:
    return row[1]


def _series(patient: str, key: str, rows: list[tuple], limits: LimitSet, *,
            records: bool) -> Series:
    columns = list(zip(*rows, strict=True)) or [()] * 4
    return Series(patient=patient, code=key,
                  times=np.array(columns[2], dtype=np.float64),
                  values=np.array(columns[3], dtype=np.float64),  # None -> NaN
                  ids=columns[0], limits=limits,
                  observations=tuple(wire.decode(r[5].encode()) for r in rows) if records
                  else ())


COMPONENT_OF = {"bp_sys": "bp", "bp_dia": "bp", "bp_mean": "bp"}
"""Codes that arrive as components of another code's observation."""


def _stored_code(key: str):
    return KNOWN[COMPONENT_OF.get(key, key)].code


def _values(obs: Observation) -> list[tuple[str, float | None, str]]:
    """(measure key, value, unit) of each part of an observation telemon knows the code of:
    a panel's own code too (no value), so rules watching it (audiograms) are evaluated."""
    parts = (obs, *obs.components)
    found = []
    for part in parts:
        known = lookup(part.code)
        if known is not None:
            found.append((known.key, None if part.value is None else float(part.value),
                          part.unit))
    return found


def _bands(checks: list[tuple[float, LimitSet]]) -> list[int]:
    """limit_bands for many (value, limits) pairs: one call per distinct LimitSet."""
    by_limits: dict[LimitSet, list[int]] = defaultdict(list)
    for index, (_, limits) in enumerate(checks):
        by_limits[limits].append(index)
    bands = [0] * len(checks)
    for limits, indexes in by_limits.items():
        found = dsp.limit_bands([checks[i][0] for i in indexes], **limits.as_floats())
        for i, band in zip(indexes, found, strict=True):
            bands[i] = int(band)
    return bands


