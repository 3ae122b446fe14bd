"""Check a disease module's rules before enabling them.

`telemon evaluate --module NAME --observations FILE.jsonl` replays recorded readings and
questionnaire responses through the real alarm engine (`replay`) and prints every alarm it
raised, with the observations behind it, so a clinician can see what a rule would have done
on a patient's series.

`telemon evaluate cohort --module NAME` runs the same replay on a simulated cohort
(telemon.cohorts): patients living labelled events and controls. Per rule it prints the
share of events caught, how early, and the false alarms per patient-year (`score`).

The replay is the central's path, on a temporary SQLite database: patients enrolled with
the module on the gateways their records name, from their first record; the records stored
and evaluated in time order with `AlarmEngine.evaluate_new`, the time of each record being
"now"; `AlarmEngine.tick` at each measuring deadline, so "missing" is judged too. A central
keeps an alarm open until a nurse resolves it, folding further findings of the same rule
into it; the replay has a simulated nurse resolve every open alarm at a daily review
(REVIEW, local time), so a rule that keeps finding something raises again the next day, as
it would on a worked central. Without the review (`review=None`) each rule raises at most
once per patient ("missing" apart: it resolves itself when the measurement comes).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import sqlite_utils

from telemon import admin, alarms, cohorts, config, plugin_manager, store, wire
from telemon.models import (
    Alarm,
    AlarmEvent,
    Enrolment,
    LimitSet,
    Observation,
    QuestionnaireResponse,
)
from telemon.modules import DiseaseModule

ORGANISATION = "evaluate"
ACTOR = "evaluate"
REVIEW = time(14, 0)
"""When the simulated nurse resolves the open alarms each day (local time): after the
default noon measuring deadline, so a day's "missing" alarms are raised before it."""
BEFORE = timedelta(days=3)
"""An alarm up to this long before an event's onset counts as catching it (early warning)."""
SESSION = timedelta(minutes=10)
"""A cohort's records within this of each other are one batch (a measuring session)."""
ANY_RULE = "any rule"
HOME = ZoneInfo(config.DEFAULT_TIMEZONE)
DAY = timedelta(days=1)

Replayable = Observation | QuestionnaireResponse


@dataclass(frozen=True)
class AlarmResult:
    """An alarm the replay raised: when, why, the readings behind it and what became of it."""

    patient: str
    module: str
    rule: str
    code: str | None
    severity: str  # the highest it reached
    raised: datetime  # first raised (UTC)
    message: str
    observations: tuple[str, ...]
    repeats: int
    state: str
    events: tuple[AlarmEvent, ...]

    def as_json(self, zone: ZoneInfo) -> dict[str, Any]:
        """The alarm as `telemon evaluate` prints it (times local to `zone`)."""
        return {"patient": self.patient, "module": self.module, "rule": self.rule,
                "code": self.code, "severity": self.severity,
                "time": self.raised.astimezone(zone).isoformat(), "message": self.message,
                "observations": list(self.observations), "repeats": self.repeats,
                "state": self.state,
                "events": [{"time": e.at.astimezone(zone).isoformat(), "action": e.action,
                            "by": e.by, "note": e.note} for e in self.events]}


@dataclass(frozen=True)
class Replay:
    alarms: list[AlarmResult]
    evaluated: int  # records stored and evaluated
    refused: list[tuple[str, str]]  # (record id, why the central would refuse it)


def _time(record: Replayable) -> datetime:
    return record.effective if isinstance(record, Observation) else record.authored


def central_config(module: DiseaseModule, *, timezone: ZoneInfo,
                   ) -> tuple[config.CentralConfig | None, list[config.ConfigProblem]]:
    """The config of a central with only `module` enabled, checked as central.toml is."""
    data = {"role": "central", "organisation": ORGANISATION, "timezone": timezone.key,
            "broker": {"url": "mqtt://127.0.0.1:1"}, "storage": {"path": "unused"},
            "modules": {module.name: {"enabled": True}}}
    found, problems = config.validate(data, plugin_manager.Registry(modules={
        module.name: module}))
    return found, problems  # type: ignore[return-value]


def load_limits(path: str | Path, module: DiseaseModule) -> dict[str, LimitSet]:
    """Per-code limits from a TOML file (`[spo2]` red_low = 85 ...), each checked in its
    code's plausible range and order (config.validate_limits: a file of its own, not the
    central's config); ConfigError with every problem."""
    data = config.read(path)
    problems = [config.ConfigProblem(code, "no limits given: set at least one of "
                                           + ", ".join(config.LIMIT_KEYS))
                for code, given in data.items() if given == {}]
    found, more = config.validate_limits(data, module)
    problems += more
    if problems or found is None:  # each as "FILE: spo2.red_low: why"
        raise config.ConfigError([config.ConfigProblem("", f"{path}: {p}") for p in problems])
    return dict(found)


def replay(module: DiseaseModule, records: Iterable[Replayable], *,
           limits: Mapping[str, LimitSet] | None = None,
           timezone: ZoneInfo = HOME,
           review: time | None = REVIEW, until: datetime | None = None,
           batch: timedelta = timedelta(0)) -> Replay:
    """Run `module` on `records` (any patients) through the real alarm engine and return
    every alarm raised. `limits` become each patient's own limits from their first record;
    `timezone` is every patient's (deadlines and the review are local times). Deadlines are
    checked up to the last record, or up to `until`. Records within `batch` of the first of
    a batch are evaluated together at the time of its last (a gateway forwards a session's
    readings at once); by default only records of the same time are."""
    if problems := module.problems():
        raise ValueError(f"module {module.name}: " + "; ".join(problems))
    central, config_problems = central_config(module, timezone=timezone)
    if central is None:
        raise ValueError("; ".join(map(str, config_problems)))
    ordered = sorted(records, key=_time)
    if not ordered:
        return Replay([], 0, [])
    with tempfile.TemporaryDirectory(prefix="telemon-evaluate-") as folder:
        db = store.open_database(Path(folder) / store.CENTRAL_DATABASE)
        # a throwaway database: nothing in it needs to survive a power cut
        db.execute("PRAGMA synchronous = OFF")
        try:
            _enrol(db, module, ordered, limits or {}, timezone)
            engine = alarms.AlarmEngine(db, central, {module.name: module})
            evaluated, refused = _run(engine, module, ordered, timezone, review,
                                      until or _time(ordered[-1]), batch)
            found = [_result(store.get_alarm(db, alarm_id)) for (alarm_id,) in db.execute(
                "SELECT id FROM alarms ORDER BY raised, patient, rule, id").fetchall()]
        finally:
            db.close()
    return Replay(found, evaluated, refused)


def _enrol(db: sqlite_utils.Database, module: DiseaseModule, ordered: Sequence[Replayable],
           limits: Mapping[str, LimitSet], timezone: ZoneInfo) -> None:
    """Enrol every patient of the records from their first record (not now, as
    admin.add_patient does: the replay's clock is the records'), with `limits` as their own."""
    first: dict[str, datetime] = {}
    gateways: dict[str, dict[str, None]] = defaultdict(dict)
    for record in ordered:
        first.setdefault(record.patient, _time(record))
        gateways[record.patient][record.gateway] = None
    with store.transaction(db):
        for number, (patient, enrolled) in enumerate(first.items(), 1):
            db["patients"].insert({"id": patient, "organisation": ORGANISATION,
                                   "display_name": f"Replay Patient {number}",
                                   "timezone": timezone.key,
                                   "created": store.utc_text(enrolled)})
            store.store_record(db, Enrolment(
                patient=patient, organisation=ORGANISATION, modules=(module.name,),
                gateways=tuple(gateways[patient]), enrolled=enrolled))
            store.audit(db, actor=ACTOR, action="patient.add", patient=patient)
            for key, own in limits.items():
                admin.set_limits(db, patient=patient, code_key=key, limits=own,
                                 reason="evaluate --limits", actor=ACTOR, valid_from=enrolled)


def _clock(module: DiseaseModule, start: datetime, until: datetime, zone: ZoneInfo,
           review: time | None) -> list[tuple[datetime, str]]:
    """The deadlines ("tick") and reviews between start and until, in time order."""
    wanted = ([(module.schedule.deadline, "tick")] if module.schedule.codes else []) + (
        [(review, "review")] if review is not None else [])
    found = []
    day = start.astimezone(zone).date()
    while datetime.combine(day, time(0), zone) <= until:
        for moment, what in wanted:
            at = datetime.combine(day, moment, zone).astimezone(UTC)
            if start <= at <= until:
                found.append((at, what))
        day += DAY
    return sorted(found)


def _run(engine: alarms.AlarmEngine, module: DiseaseModule, ordered: Sequence[Replayable],
         zone: ZoneInfo, review: time | None, until: datetime,
         window: timedelta) -> tuple[int, list[tuple[str, str]]]:
    """Feed the records to the engine in batches, with the clock's deadlines and reviews
    between them; (records evaluated, records refused with why)."""
    db = engine.db
    clock = _clock(module, _time(ordered[0]), until, zone, review)
    evaluated, refused = 0, []
    index = 0
    while index < len(ordered) or clock:
        if index == len(ordered) or (clock and clock[0][0] < _time(ordered[index])):
            at, what = clock.pop(0)  # (a record at the very deadline is in time for it)
            if what == "tick":
                with store.transaction(db):
                    engine.directory.refresh()
                    engine.tick(at)
            else:
                for (alarm_id,) in db.execute(
                        "SELECT id FROM alarms WHERE state != 'resolved'").fetchall():
                    alarms.resolve(db, alarm_id, by=ACTOR, note="daily review", at=at)
            continue
        last = _time(ordered[index]) + window
        if clock:  # a deadline or review between records splits their batch
            last = min(last, clock[0][0])
        batch = []
        while index < len(ordered) and _time(ordered[index]) <= last:
            batch.append(ordered[index])
            index += 1
        now = _time(batch[-1])
        with store.transaction(db):
            engine.directory.refresh()
            answered = []
            for record in batch:
                if isinstance(record, QuestionnaireResponse):
                    if why := engine.response_problem(record):
                        refused.append((record.id, why))
                    elif store.store_questionnaire_response(db, record, received=now):
                        answered.append(record)
            new = store.store_observations(
                db, [r for r in batch if isinstance(r, Observation)], received=now)
            engine.evaluate_new(new, answered, now)
            evaluated += len(new) + len(answered)
    return evaluated, refused


def _result(alarm: Alarm) -> AlarmResult:
    return AlarmResult(patient=alarm.patient, module=alarm.module, rule=alarm.rule,
                       code=alarm.code, severity=alarm.severity, raised=alarm.raised,
                       message=alarm.message, observations=alarm.observations,
                       repeats=alarm.repeats, state=alarm.state, events=alarm.events)


# --- scoring rules on a simulated cohort ---------------------------------------------------------


@dataclass(frozen=True)
class RuleScore:
    """How one rule (or ANY_RULE) did on a cohort."""

    rule: str
    events: int  # labelled events
    caught: int  # events with an alarm of this rule from BEFORE their onset to their end
    warning_days: tuple[float, ...]  # per caught event: onset - its first such alarm, days
    false_alarms: int  # alarms outside every event window of their patient
    patient_years: float

    @property
    def sensitivity(self) -> float | None:
        return self.caught / self.events if self.events else None

    @property
    def median_warning_days(self) -> float | None:
        return statistics.median(self.warning_days) if self.warning_days else None

    @property
    def false_alarms_per_patient_year(self) -> float:
        return self.false_alarms / self.patient_years if self.patient_years else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "events": self.events, "caught": self.caught,
                "sensitivity": self.sensitivity,
                "median_warning_days": self.median_warning_days,
                "false_alarms": self.false_alarms,
                "false_alarms_per_patient_year": self.false_alarms_per_patient_year}


def score(found: Sequence[AlarmResult], events: Sequence[cohorts.Labelled], *,
          rules: Sequence[str], patient_years: float,
          before: timedelta = BEFORE) -> list[RuleScore]:
    """Per rule (those given, then any other that raised, then ANY_RULE, which leaves out
    "missing": a missed measurement is not a finding): events caught, warning, false alarms.
    An event's window runs from `before` its onset to its end; an alarm counts by the time
    it was first raised."""
    windows = defaultdict(list)
    for event in events:
        windows[event.patient].append((event.start - before, event.end))

    def in_window(alarm: AlarmResult) -> bool:
        return any(low <= alarm.raised <= high for low, high in windows[alarm.patient])

    names = list(dict.fromkeys([*rules, *(a.rule for a in found)]))
    groups = {name: [a for a in found if a.rule == name] for name in names}
    groups[ANY_RULE] = [a for a in found if a.rule != alarms.MISSING_RULE]
    scores = []
    for name, group in groups.items():
        warnings = []
        for event in events:
            times = [a.raised for a in group if a.patient == event.patient
                     and event.start - before <= a.raised <= event.end]
            if times:
                warnings.append((event.start - min(times)) / DAY)
        scores.append(RuleScore(name, len(events), len(warnings), tuple(warnings),
                                sum(not in_window(a) for a in group), patient_years))
    return scores


def rule_names(module: DiseaseModule) -> list[str]:
    """Every alarm rule a module can raise: limits per code with default limits, its trend
    rules, answers per questionnaire with significant answers, and "missing"."""
    return ([alarms.limits_rule(code) for code in module.codes if code in module.default_limits]
            + [rule.name for rule in module.rules]
            + [f"answers.{q.id}" for q in module.questionnaires
               if any(item.significance for item in q.items)]
            + ([alarms.MISSING_RULE] if module.schedule.codes else []))


@dataclass(frozen=True)
class CohortResult:
    module: str
    cohort: cohorts.Cohort
    events: list[cohorts.Labelled]
    scores: list[RuleScore]
    alarms: int
    not_simulated: tuple[str, ...]
    before: timedelta
    review: time | None
    by_kind: dict[str, list[RuleScore]]  # events of one kind only (when there are several);
    # their false alarms are not used: an alarm in another kind's window is not false

    def as_json(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for event in self.events:
            kinds[event.kind] += 1
        return {"module": self.module, "patients": len(self.cohort.patients),
                "days": self.cohort.days, "seed": self.cohort.seed,
                "patient_years": self.scores[0].patient_years if self.scores else 0.0,
                "events": dict(kinds), "window_days_before_onset": self.before / DAY,
                "review": None if self.review is None else self.review.strftime("%H:%M"),
                "not_simulated": list(self.not_simulated), "alarms": self.alarms,
                "rules": [s.as_json() | {"by_kind": {
                    kind: {"events": k.events, "caught": k.caught,
                           "median_warning_days": k.median_warning_days}
                    for kind, scores in self.by_kind.items()
                    for k in scores if k.rule == s.rule}} for s in self.scores]}


_WORK: tuple | None = None
"""(module, cohort, replay options) while evaluate_cohort runs: forked workers inherit it,
so a module need not be picklable."""


def _replay_patient(index: int) -> list[AlarmResult]:
    assert _WORK is not None
    module, cohort, options = _WORK
    sent = cohorts.records(module, cohort.patients[index], cohort.start, cohort.days,
                           cohort.tz)
    return replay(module, sent, timezone=cohort.tz, until=cohort.end, **options).alarms


def evaluate_cohort(module: DiseaseModule, cohort: cohorts.Cohort, *,
                    before: timedelta = BEFORE, review: time | None = REVIEW,
                    limits: Mapping[str, LimitSet] | None = None,
                    batch: timedelta = SESSION, jobs: int = 1) -> CohortResult:
    """Replay each patient of `cohort` (a database each: patients do not interact), in
    `jobs` processes, and score the module's rules against the labelled events. The result
    does not depend on `jobs`."""
    global _WORK
    _WORK = (module, cohort, {"limits": limits, "review": review, "batch": batch})
    try:
        indexes = range(len(cohort.patients))
        if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(min(jobs, len(indexes)),
                                     mp_context=multiprocessing.get_context("fork")) as pool:
                per_patient = list(pool.map(_replay_patient, indexes))
        else:
            per_patient = [_replay_patient(index) for index in indexes]
    finally:
        _WORK = None
    found = [alarm for alarms_of_one in per_patient for alarm in alarms_of_one]
    events = cohorts.labelled(cohort)
    patient_years = len(cohort.patients) * cohort.days / 365.25
    kinds = list(dict.fromkeys(event.kind for event in events))
    by_kind = {kind: score(found, [e for e in events if e.kind == kind],
                           rules=rule_names(module), patient_years=patient_years,
                           before=before)
               for kind in kinds} if len(kinds) > 1 else {}
    return CohortResult(module.name, cohort, events,
                        score(found, events, rules=rule_names(module),
                              patient_years=patient_years, before=before),
                        len(found), cohorts.measured(module)[1], before, review, by_kind)


HEADERS = ("RULE", "CAUGHT", "MEDIAN WARNING", "FALSE ALARMS/PATIENT-YEAR")


def heading(result: CohortResult) -> list[str]:
    """What the table is about: the cohort, its events, how alarms were counted."""
    kinds: dict[str, int] = defaultdict(int)
    for event in result.events:
        kinds[event.kind] += 1
    cases = len({event.patient for event in result.events})
    cohort = result.cohort
    lines = [f"{result.module}: {len(cohort.patients)} simulated patients ({cases} with an "
             f"event, {len(cohort.patients) - cases} controls) x {cohort.days} days = "
             f"{len(cohort.patients) * cohort.days / 365.25:.1f} patient-years, "
             f"seed {cohort.seed}",
             "events: " + (", ".join(f"{kind} {count}" for kind, count in kinds.items())
                           or "none (no simulated events for this module: false alarms only)"),
             f"caught: an alarm from {result.before / DAY:g} days before onset to the "
             "event's end; warning: days from the first such alarm to onset (negative: "
             "after onset); open alarms resolved by a daily review"
             + (f" at {result.review:%H:%M}" if result.review else ": none")]
    if result.not_simulated:
        lines.append("not simulated (no readings): " + ", ".join(result.not_simulated))
    return lines


def _caught(s: RuleScore) -> str:
    return "-" if s.sensitivity is None else (
        f"{s.caught}/{s.events} ({100 * s.sensitivity:.0f} %)")


def _warning(s: RuleScore) -> str:
    return "-" if s.median_warning_days is None else f"{s.median_warning_days:+.1f} d"


def rows(result: CohortResult) -> list[tuple[str, str, str, str]]:
    """One row per rule under HEADERS."""
    return [(s.rule, _caught(s), _warning(s), f"{s.false_alarms_per_patient_year:.1f}")
            for s in result.scores]


def _cell(s: RuleScore) -> str:
    """Caught and median warning in one cell: "5/7 (71 %) -2.0 d", "0/7 (0 %)"."""
    return _caught(s) if s.median_warning_days is None else f"{_caught(s)} {_warning(s)}"


def kind_table(result: CohortResult) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows) of events caught and median warning per event kind, for a module
    meant to catch several kinds; no rows for one kind."""
    kinds = list(result.by_kind)
    if not kinds:
        return (), []
    table = {kind: {s.rule: s for s in scores} for kind, scores in result.by_kind.items()}
    found = [(s.rule, *(_cell(table[kind][s.rule]) for kind in kinds)) for s in result.scores]
    return ("RULE", *(k.upper() for k in kinds)), found


# --- command line ----------------------------------------------------------------------------


def _module(name: str) -> DiseaseModule:
    installed = plugin_manager.get()[1].modules
    if name not in installed:
        raise click.BadParameter(f"unknown module {name!r} (installed modules: "
                                 f"{', '.join(sorted(installed)) or 'none'})",
                                 param_hint="--module")
    return installed[name]


def _zone(_ctx: click.Context, _param: click.Parameter, value: str) -> ZoneInfo:
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {value!r} (an IANA name such as "
                                 "Europe/Copenhagen)") from None


def _review(_ctx: click.Context, _param: click.Parameter, value: str) -> time | None:
    if value == "none":
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time HH:MM or none") from None


def read_records(path: str) -> tuple[list[tuple[int, Replayable]], list[str]]:
    """The observations and questionnaire responses of a JSON-lines file (one wire message
    a line: a record or a batch) with their line numbers, and a problem per bad line."""
    found: list[tuple[int, Replayable]] = []
    problems = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            decoded = wire.decode_message(line.strip())
            problems += [f"line {number}: {error}" for error in decoded.errors]
            for record in decoded.records:
                if isinstance(record, Observation | QuestionnaireResponse):
                    found.append((number, record))
                else:
                    problems.append(f"line {number}: a {record.__struct_config__.tag} record; "
                                    "only observations and questionnaire responses are "
                                    "evaluated")
    return found, problems


review_option = click.option(
    "--review", default=REVIEW.strftime("%H:%M"), show_default=True, callback=_review,
    metavar="HH:MM|none",
    help="When a simulated nurse resolves every open alarm each day (local time), so a rule "
         "that keeps finding something raises again the next day; none: alarms stay open "
         "and further findings fold into them, as on a central nobody works.")
zone_option = click.option(
    "--timezone", "zone", default=config.DEFAULT_TIMEZONE, show_default=True, metavar="ZONE",
    callback=_zone, help="The patients' time zone (deadlines and reviews are local times).")


@click.group(name="evaluate", invoke_without_command=True)
@click.option("--module", "module_name", metavar="NAME",
              help="The installed disease module to run (telemon modules lists them).")
@click.option("--observations", "path", metavar="FILE.jsonl",
              type=click.Path(exists=True, dir_okay=False),
              help="Recorded readings and questionnaire responses: one telemon wire "
                   "message (v1 JSON) a line, any patients (a citizen export's files: "
                   "jq -c . observations.json questionnaire_responses.json).")
@click.option("--limits", "limits_path", metavar="FILE.toml",
              type=click.Path(exists=True, dir_okay=False),
              help="Per-code limits ([spo2] red_low = 85 ...), applied as every patient's "
                   "own limits from their first record; default: the module's.")
@zone_option
@review_option
@click.pass_context
def evaluate_group(ctx: click.Context, module_name: str | None, path: str | None,
                   limits_path: str | None, zone: ZoneInfo, review: time | None) -> None:
    """Run a disease module's rules on a recorded series (or, with `cohort`, on a simulated
    cohort) to check them before enabling them.

    Prints each alarm the real alarm engine raised as one JSON object a line: patient,
    module, rule, code, severity (the highest reached), time (first raised, local), message,
    observations (the ids behind it), repeats (findings folded into it), state and events
    (its trail). Bad lines are reported on stderr with their number and skipped; the exit
    status is then 1. Exit status 2 for an unknown module or bad limits.
    """
    if ctx.invoked_subcommand is not None:
        return
    if module_name is None or path is None:
        raise click.UsageError("give --module and --observations (or the cohort command)")
    module = _module(module_name)
    limits = None
    if limits_path is not None:
        try:
            limits = load_limits(limits_path, module)
        except config.ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    numbered, problems = read_records(path)
    try:
        result = replay(module, [record for _, record in numbered], limits=limits,
                        timezone=zone, review=review)
    except (ValueError, admin.InvalidInput) as exc:
        raise click.UsageError(str(exc)) from None
    lines = {record.id: number for number, record in numbered}
    problems += [f"line {lines[record_id]}: {why}" for record_id, why in result.refused]
    for alarm in result.alarms:
        click.echo(json.dumps(alarm.as_json(zone), ensure_ascii=False))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    counts = defaultdict(int)
    for alarm in result.alarms:
        counts[alarm.severity] += 1
    click.echo(f"{result.evaluated} record(s) evaluated, {len(result.alarms)} alarm(s)"
               + "".join(f", {n} {severity}" for severity, n in sorted(counts.items()))
               + (f"; {len(problems)} bad line(s) skipped" if problems else ""), err=True)
    if problems:
        sys.exit(1)


@evaluate_group.command(name="cohort", short_help="Score rules on simulated cohorts.")
@click.option("--module", "module_names", metavar="NAME", multiple=True,
              help="A disease module to score (repeatable); default: every installed one. "
                   "One that is not installed is skipped with a message.")
@click.option("--patients", type=click.IntRange(min=1), default=40, show_default=True,
              help="Simulated patients per module: half live one of the module's events, "
                   "half are controls.")
@click.option("--days", type=click.IntRange(min=21), default=180, show_default=True,
              help="Days each patient is followed.")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="The same seed gives the same cohort and the same table.")
@click.option("--before", "before_days", type=click.FloatRange(min=0), default=BEFORE / DAY,
              show_default=True,
              help="An alarm this many days before an event's onset counts as catching it.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes replaying patients in parallel (the result is the same).")
@zone_option
@review_option
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object, {"modules": [one result per module]}.')
def evaluate_cohort_command(module_names: tuple[str, ...], patients: int, days: int,
                            seed: int, before_days: float, jobs: int, zone: ZoneInfo,
                            review: time | None, as_json: bool) -> None:
    """Score disease modules' rules on simulated cohorts: per rule, the events caught (an
    alarm from --before days before onset to the event's end), the median days of warning
    before onset, and false alarms (outside event windows) per patient-year; "any rule"
    combines them (without "missing"). Simulated patients, not clinical data: see
    docs/evaluation.md. Exit status 2 when none of the modules asked for is installed."""
    installed = plugin_manager.get()[1].modules
    names = list(dict.fromkeys(module_names)) or sorted(installed)
    results = []
    for name in names:
        if name not in installed:
            click.echo(f"skipped: module {name!r} is not installed (installed modules: "
                       f"{', '.join(sorted(installed)) or 'none'})", err=True)
            continue
        cohort = cohorts.build(name, patients=patients, days=days, seed=seed, tz=zone)
        result = evaluate_cohort(installed[name], cohort, before=before_days * DAY,
                                 review=review, jobs=jobs)
        results.append(result)
        if not as_json:
            if len(results) > 1:
                click.echo()
            for line in heading(result):
                click.echo(line)
            admin.echo_table(HEADERS, rows(result))
            headers, by_kind = kind_table(result)
            if by_kind:
                click.echo("by event kind (caught, median warning):")
                admin.echo_table(headers, by_kind)
    if as_json:
        click.echo(json.dumps({"modules": [r.as_json() for r in results]}, indent=2))
    if not results:
        raise click.UsageError("none of the modules asked for is installed")


COMMANDS = (evaluate_group,)
