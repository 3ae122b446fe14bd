"""Simulated cohorts for the evaluation harness (telemon.evaluate): patients of one disease
module, some living a labelled event, the others controls, and the readings and
questionnaire responses each yields on the module's schedule.

Every patient is a `telemon.sim.PatientModel` with a baseline of their own and at most one
injected `Event` (the module's kinds: EVENTS). A day's measuring session is at about 08:00
local time, before the module's deadline; some days are missed (MISSED_DAYS). Each measure
the module declares is read on the module's schedule (its `every`) or, for a measure not in
the schedule, at CADENCE; each questionnaire at QUESTIONNAIRE_CADENCE. Values carry the
model's measurement noise and are rounded to what a device or form reports. Answers are
drawn from the patient's state at the time: symptom items from how far into an event the
patient is (SYMPTOMS), sum-scored questionnaires item by item around a share of their
maximum (LATENT), so their scores follow the state.

Deterministic: the same (module, patients, days, seed) gives the same records. Every
record is marked simulated (context["simulated"] = "cohort"). The probabilities below are
modelling choices (assumptions), not clinical data: a cohort shows how rules behave on
plausible series, not how they perform on patients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np

from telemon import sim
from telemon.alarms import COMPONENT_OF
from telemon.codes import KNOWN, TELEMON
from telemon.models import Answer, Code, Component, Observation, QuestionnaireResponse, reading_id
from telemon.modules import DiseaseModule, Item, Questionnaire
from telemon.sim import Baseline, Event, PatientModel

START = datetime(2026, 1, 5, tzinfo=UTC)
"""Where simulated time starts unless told (a Monday; any date works)."""

EVENTS: dict[str, tuple[str, ...]] = {
    "copd": ("copd-exacerbation",),
    "heart_failure": ("hf-decompensation", "af"),
    "back_pain": ("back-pain-flare",),
    "hearing": ("sudden-hearing-loss-left", "sudden-hearing-loss-right",
                "hearing-aid-non-use"),
}
"""The event kinds (telemon.sim.EVENT_KINDS) a module is meant to catch, by module name."""

SESSION = time(8, 0)  # the morning session, local time, +- JITTER
JITTER = timedelta(minutes=45)
# Missed days (assumptions; adherence to daily home measuring is high but not complete):
# each patient misses a share of days drawn from MISSED_DAYS, and with probability
# GAP_CHANCE on any day starts a gap (a trip, a hospital stay) of GAP_DAYS days.
MISSED_DAYS = (0.02, 0.12)
GAP_CHANCE = 1 / 90
GAP_DAYS = (2, 6)

CADENCE: dict[str, int] = {"audiogram_left": 7, "audiogram_right": 7, "rr_interval": 3}
"""Days between readings of a measure that is not in the module's schedule (default 1).
Assumptions: a home audiometry test once a week; a heart-rate strap recording every third
day (also the cost: the beat-to-beat model takes ~50 ms per simulated day)."""
QUESTIONNAIRE_CADENCE: dict[str, int] = {"cat": 7, "mmrc": 28, "rmdq": 7, "startback": 28}
"""Days between responses; a questionnaire not listed here is daily."""

STEP = {"spo2": "1", "pulse": "1", "heart_rate": "1", "pulse_bp": "1", "weight": "0.1",
        "temperature": "0.1", "glucose": "0.1", "resp_rate": "1", "fev1": "0.01",
        "pain_nrs": "1", "steps": "1", "exercise_adherence": "1", "hearing_aid_use": "0.1",
        "bp_sys": "1", "bp_dia": "1", "bp_mean": "1", "rr_interval": "0.001"}
"""The resolution each measure is reported at (devices' displays, forms, logs)."""

EARS = {"audiogram_left": "hearing_left", "audiogram_right": "hearing_right"}
FREQUENCIES = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)  # Hz: the "hl_<f>" components
# An age-related (sloping) audiogram: each frequency's threshold relative to the ear's
# pure-tone average of 0.5, 1, 2 and 4 kHz (PTA4, CLINICAL.md; offsets there average 0).
# Thresholds are given in 5 dB steps, as audiometers present tones (ISO 8253-1).
# The shape is an assumption.
SHAPE = {250: -10.0, 500: -10.0, 1000: -5.0, 2000: 0.0, 3000: 10.0, 4000: 15.0,
         6000: 20.0, 8000: 25.0}
FREQUENCY_NOISE = 2.5  # dB, per frequency on top of the model's per-test noise (assumption)
STRAP = timedelta(minutes=2, seconds=30)  # a heart-rate strap recording: > 128 beats (AF
STRAP_AFTER = timedelta(minutes=5)  # screening windows, CLINICAL.md), after the session


@dataclass(frozen=True)
class SimPatient:
    """One simulated patient: the model, the labelled events, and how they measure."""

    id: str
    model: PatientModel
    missed: frozenset[date] = frozenset()  # local days without a session
    cat: float = 15.0  # CAT total on a stable day (TeleCare Nord enrols from CAT >= 10)
    mmrc: float = 2.0  # mMRC grade on a stable day
    jitter: timedelta = JITTER

    @property
    def events(self) -> tuple[Event, ...]:
        return self.model.events

    @property
    def gateway(self) -> str:
        return f"gw-{self.id}"


@dataclass(frozen=True)
class Cohort:
    module: str
    start: datetime
    days: int
    patients: tuple[SimPatient, ...]
    tz: ZoneInfo = sim.HOME
    seed: int = 0

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


def build(module: str, *, patients: int, days: int, seed: int = 0,
          start: datetime = START, tz: ZoneInfo = sim.HOME) -> Cohort:
    """`patients` simulated patients of `module` over `days`: the first half (rounded up)
    each live one event of the module's kinds (EVENTS, taken in turn), the rest are
    controls. Raises ValueError for a cohort too small to have a baseline before events."""
    if patients < 1:
        raise ValueError("a cohort needs at least 1 patient")
    if days < 21:
        raise ValueError("a cohort needs at least 21 days (two weeks of baseline before an "
                         "event, and the event)")
    kinds = EVENTS.get(module, ())
    cases = math.ceil(patients / 2) if kinds else 0
    members = []
    for number in range(patients):
        rng = np.random.default_rng((seed, number, 1))
        events = ()
        if number < cases:
            kind = kinds[number % len(kinds)]
            # after two weeks of baseline (a third of the period if shorter), at least 10
            # days before the end; severities from milder to marked (assumption)
            first = min(14, days // 3)
            day = int(rng.integers(first, max(first, days - 10) + 1))
            onset = start + timedelta(days=day, hours=float(rng.uniform(0, 24)))
            events = (Event(kind, onset, severity=float(rng.uniform(0.6, 1.2))),)
        model = PatientModel(seed * 100_003 + number, baseline=baseline(rng), events=events,
                             tz=tz)
        members.append(SimPatient(
            id=f"p-{number + 1:04d}", model=model,
            missed=_missed_days(rng, start.astimezone(tz).date(), days),
            cat=float(rng.uniform(10, 25)), mmrc=float(rng.uniform(1.5, 3.0))))
    return Cohort(module, start, days, tuple(members), tz, seed)


def baseline(rng: np.random.Generator) -> Baseline:
    """A patient's own usual values around the model's defaults (between-patient spread:
    hearing-aid use SD 2.8 h, Demant 2021, CLINICAL.md; the others assumptions, kept narrow
    where the module's default limits assume a typical patient - a patient far from them
    gets limits of their own)."""
    def around(mean: float, sd: float, low: float, high: float) -> float:
        return float(np.clip(rng.normal(mean, sd), low, high))

    left = around(42, 8, 25, 70)
    return Baseline(
        spo2=around(94.5, 1.0, 92.5, 97), pulse=around(74, 7, 58, 90),
        weight=around(82, 14, 50, 130), bp_sys=around(132, 10, 110, 155),
        bp_dia=around(79, 6, 65, 92), fev1=around(1.5, 0.3, 0.8, 2.4),
        pain_nrs=around(3, 1, 1, 5), rmdq_score=around(8, 3, 2, 14),
        steps=around(5000, 1500, 2000, 10000), exercise_adherence=around(80, 8, 60, 95),
        hearing_aid_use=around(10, 2.8, 4, 16), hearing_left=left,
        hearing_right=float(np.clip(left + rng.normal(0, 4), 20, 75)))


def _missed_days(rng: np.random.Generator, first: date, days: int) -> frozenset[date]:
    share = rng.uniform(*MISSED_DAYS)
    missed, gap = set(), 0
    for offset in range(days + 1):
        day = first + timedelta(days=offset)
        if gap == 0 and rng.random() < GAP_CHANCE:
            gap = int(rng.integers(GAP_DAYS[0], GAP_DAYS[1] + 1))
        if gap > 0 or rng.random() < share:
            missed.add(day)
        gap = max(0, gap - 1)
    return frozenset(missed)


# --- what the patient answers -----------------------------------------------------------------

StateShare = Callable[[SimPatient, datetime], float]


def _level(kind: str) -> Callable[[SimPatient, datetime], float]:
    return lambda patient, at: min(1.0, patient.model.level(kind, at))


_copd, _hf = _level("copd-exacerbation"), _level("hf-decompensation")

# The chance of each answer that matters, by the patient's state (assumptions: symptoms
# rare on a stable day and common at the height of an event). A red-flag item of the
# back-pain diary is answered "yes" by mistake once in 500 answers.
MISTAKE = 0.002
SYMPTOMS: dict[tuple[str, str], StateShare] = {
    ("copd_daily", "more_breathless"): lambda p, t: 0.05 + 0.75 * _copd(p, t),
    ("copd_daily", "sputum_colour"): lambda p, t: 0.1 + 0.6 * _copd(p, t),  # of 4 colours
    ("copd_daily", "sputum_more"): lambda p, t: 0.05 + 0.65 * _copd(p, t),
    ("copd_daily", "fever"): lambda p, t: 0.01 + 0.3 * _copd(p, t),
    ("hf_daily", "breathless"): lambda p, t: 0.1 + 0.5 * _hf(p, t),  # none/exertion/rest
    ("hf_daily", "ankle_swelling"): lambda p, t: 0.08 + 0.55 * _hf(p, t),
    ("hf_daily", "orthopnoea"): lambda p, t: 0.03 + 0.55 * _hf(p, t),
    ("lbp_daily", "exercise_done"): lambda p, t: p.model.true_value(
        "exercise_adherence", t) / 100,
    ("lbp_daily", "bladder_bowel_new"): lambda p, t: MISTAKE,
    ("lbp_daily", "saddle_numbness"): lambda p, t: MISTAKE,
    ("lbp_daily", "leg_weakness_progressive"): lambda p, t: MISTAKE,
    ("lbp_daily", "fever"): lambda p, t: MISTAKE,
}
# Sum-scored questionnaires: each item is answered around this share of its range, so the
# total follows the state. CAT rises ~8 points at the height of an exacerbation and mMRC one
# grade (assumptions; the CAT's minimal important difference is ~2, CLINICAL.md);
# Roland-Morris follows the model's disability score, STarT Back its pain.
LATENT: dict[str, StateShare] = {
    "cat": lambda p, t: (p.cat + 8 * _copd(p, t)) / 40,
    "mmrc": lambda p, t: (p.mmrc + _copd(p, t)) / 4,
    "rmdq": lambda p, t: p.model.true_value("rmdq_score", t) / 24,
    "startback": lambda p, t: p.model.true_value("pain_nrs", t) / 10,
}
UNKNOWN_SHARE = 0.1  # a questionnaire this file does not know: low, steady answers


def answer(item: Item, share: float, rng: np.random.Generator) -> bool | int | str:
    """An answer to `item` around `share` (0..1) of its range: yes with that chance; a
    number or option binomially around that share of the way from the first to the last."""
    share = float(np.clip(share, 0.0, 1.0))
    if item.kind == "boolean":
        return bool(rng.random() < share)
    if item.kind == "choice":
        return item.options[int(rng.binomial(len(item.options) - 1, share))]
    low = 0 if item.low is None else item.low
    high = low + 10 if item.high is None else item.high
    return low + int(rng.binomial(high - low, share))


def response(questionnaire: Questionnaire, patient: SimPatient,
             at: datetime) -> QuestionnaireResponse:
    """The patient's answers to `questionnaire` at `at`."""
    rng = np.random.default_rng((patient.model.seed, 11, round(at.timestamp())))
    answers = []
    for item in questionnaire.items:
        if item.kind == "integer" and item.id in sim.CODES:  # a measure the model has
            value = _rounded(item.id, patient.model.sample(item.id, at))
            low = 0 if item.low is None else item.low
            high = int(value) if item.high is None else item.high
            answers.append(Answer(item.id, min(max(int(value), low), high)))
            continue
        share = SYMPTOMS.get((questionnaire.id, item.id),
                             LATENT.get(questionnaire.id, lambda p, t: UNKNOWN_SHARE))
        answers.append(Answer(item.id, answer(item, share(patient, at), rng)))
    return QuestionnaireResponse(
        id=reading_id(device=f"questionnaire:{questionnaire.id}", patient=patient.id,
                      code=questionnaire.id, effective=at, raw=b""),
        patient=patient.id, gateway=patient.gateway, questionnaire=questionnaire.id,
        version=questionnaire.version, authored=at, answers=tuple(answers))


# --- what the patient measures ------------------------------------------------------------------


def measured(module: DiseaseModule) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the measures of `module` a cohort reads, those it cannot simulate). A component
    (bp_sys) is read as its panel (bp); a questionnaire's score comes from the answers."""
    scores = {key for q in module.questionnaires for key in q.scores.values()}
    read, missing = [], []
    for code in module.codes:
        if code in scores:
            continue
        key = COMPONENT_OF.get(code, code)
        if key in STEP or key in EARS or key == "bp" or key == "rr_interval":
            if key not in read:
                read.append(key)
        elif code not in missing:
            missing.append(code)
    return tuple(read), tuple(missing)


def _rounded(key: str, value: float) -> Decimal:
    return sim.rounded(value, STEP[key])


def _code(key: str) -> Code:
    """A measure's coding; a key not (yet) in telemon.codes gets telemon's own system, as
    telemon.codes gives any measure with neither an MDC nor a LOINC code."""
    return KNOWN[key].code if key in KNOWN else Code(system=TELEMON, code=key, display=key)


def observation(key: str, patient: SimPatient, at: datetime) -> Observation:
    """A reading of measure `key` (a model measure, "bp" or an audiogram) at `at`."""
    model = patient.model
    components: tuple[Component, ...] = ()
    value = None
    unit = KNOWN[key].unit
    if key == "bp":
        components = tuple(Component(_code(part), unit, _rounded(part, model.sample(part, at)))
                           for part in ("bp_sys", "bp_dia", "bp_mean"))
    elif key in EARS:
        rng = np.random.default_rng((model.seed, 12, round(at.timestamp()), len(key)))
        level = model.sample(EARS[key], at)
        components = tuple(
            Component(_code(f"hl_{f}"), KNOWN[f"hl_{f}"].unit if f"hl_{f}" in KNOWN else unit,
                      Decimal(int(np.clip(5 * round((level + SHAPE[f] + FREQUENCY_NOISE
                                                     * rng.standard_normal()) / 5), -10, 120))))
            for f in FREQUENCIES)
    else:
        value = _rounded(key, model.sample(key, at))
    return Observation(
        id=reading_id(device=f"sim-{key}", patient=patient.id, code=key, effective=at, raw=b""),
        patient=patient.id, device=f"sim-{key}", gateway=patient.gateway, code=_code(key),
        unit=unit, effective=at, value=value, components=components,
        context={"simulated": "cohort"}, driver="telemon.cohorts")


def rr_observations(patient: SimPatient, start: datetime) -> list[Observation]:
    """A heart-rate strap recording from `start`: one observation per RR interval, at the
    beat that ends it (as telemon.plugins.drivers.ble_heart_rate gives them)."""
    beats = patient.model.beats(start - timedelta(seconds=3), start + STRAP)
    unit = KNOWN["rr_interval"].unit
    found = []
    for before, beat in itertools.pairwise(beats):
        if beat < start.timestamp():
            continue
        at = datetime.fromtimestamp(round(beat, 3), UTC)
        found.append(Observation(
            id=reading_id(device="sim-strap", patient=patient.id, code="rr_interval",
                          effective=at, raw=b""),
            patient=patient.id, device="sim-strap", gateway=patient.gateway,
            code=_code("rr_interval"), unit=unit, effective=at,
            value=_rounded("rr_interval", beat - before),
            context={"simulated": "cohort"}, driver="telemon.cohorts"))
    return found


def session_time(patient: SimPatient, day: date, module: DiseaseModule,
                 tz: tzinfo) -> datetime:
    """When the patient measures on `day`: about 08:00 local, and before the deadline."""
    deadline = datetime.combine(day, module.schedule.deadline, tz)
    usual = datetime.combine(day, SESSION, tz)
    if usual + patient.jitter >= deadline:
        usual = deadline - timedelta(hours=1) - patient.jitter
    rng = np.random.default_rng((patient.model.seed, 13, day.toordinal()))
    shift = patient.jitter.total_seconds() * float(rng.uniform(-1, 1))
    return (usual + timedelta(seconds=round(shift))).astimezone(UTC)


def records(module: DiseaseModule, patient: SimPatient, start: datetime, days: int,
            tz: tzinfo = sim.HOME) -> list[Observation | QuestionnaireResponse]:
    """Everything `patient` sends for `module` over `days` from `start`, in time order."""
    read, _ = measured(module)
    every = max(1, round(module.schedule.every / timedelta(days=1)))
    cadence = {key: every if key in _scheduled(module) else CADENCE.get(key, 1)
               for key in read}
    first = start.astimezone(tz).date()
    out: list[Observation | QuestionnaireResponse] = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        if day in patient.missed:
            continue
        at = session_time(patient, day, module, tz)
        if at < start:
            continue
        out += [observation(key, patient, at) for key in read
                if key != "rr_interval" and offset % cadence[key] == 0]
        if "rr_interval" in read and offset % cadence["rr_interval"] == 0:
            out += rr_observations(patient, at + STRAP_AFTER)
        out += [response(q, patient, at + timedelta(minutes=2)) for q in module.questionnaires
                if offset % QUESTIONNAIRE_CADENCE.get(q.id, 1) == 0]
    return sorted(out, key=lambda r: r.effective if isinstance(r, Observation) else r.authored)


def _scheduled(module: DiseaseModule) -> set[str]:
    return {COMPONENT_OF.get(code, code) for code in module.schedule.codes}


@dataclass(frozen=True)
class Labelled:
    """One injected event, as the harness scores it."""

    patient: str
    kind: str
    start: datetime
    end: datetime
    severity: float


def labelled(cohort: Cohort) -> list[Labelled]:
    return [Labelled(p.id, e.kind, e.start, e.end, e.severity)
            for p in cohort.patients for e in p.events]


__all__ = ["CADENCE", "EVENTS", "QUESTIONNAIRE_CADENCE", "START", "Cohort", "Labelled",
           "SimPatient", "answer", "build", "labelled", "measured", "observation", "records",
           "response", "session_time"]

