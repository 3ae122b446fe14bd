"""Hearing: pure-tone audiograms and hearing-aid use at home, with a standardised assessment
report for remote triage by an audiologist ("digital fjernvisitation": found patient-safe
and effective from a standardised examination report, InHEAR, North Denmark 2020-22).

Readings:
- audiogram_left / audiogram_right: one observation per ear and test, whose components are
  the pure-tone thresholds by frequency (hl_250 ... hl_8000, dB HL).
- hearing_aid_use: hours per day the aid was on, from its data log.

Measures of an audiogram (the report, `assessment`):
- PTA4: the mean threshold at 0.5, 1, 2 and 4 kHz, per ear.
- WHO 2021 grade (World report on hearing) on the better ear's PTA4: < 20 dB normal,
  20-<35 mild, 35-<50 moderate, 50-<65 moderately severe, 65-<80 severe, 80-<95 profound,
  >= 95 complete; unilateral when the better ear is < 20 and the worse >= 35.
- Asymmetry (NICE NG98's definition): a difference between the ears of >= 15 dB at two
  adjacent frequencies among 0.5, 1, 2, 4 and 8 kHz.
- Loss between two audiograms of one ear: >= 30 dB worse at each of >= 3 contiguous test
  frequencies, the usual definition of sudden sensorineural hearing loss (Stachler et al.
  2012 and Chandrasekhar et al. 2019, AAO-HNS clinical practice guideline, Otolaryngol Head
  Neck Surg). Contiguous on the audiometric list 0.25, 0.5, 1, 2, 3, 4, 6, 8 kHz; a
  frequency not tested in either audiogram ends a run.

Trend rules:
- sudden_loss (red): the new audiogram shows a loss against one of the same ear <= 3 days
  older: sudden loss, refer to be seen within 24 hours (NICE NG98 1.1.2).
- hearing_worsening (yellow): a loss against the latest audiogram of that ear 3 to 90 days
  older: rapid worsening, refer to be seen within 2 weeks (NICE NG98 1.1.2); the nurse asks
  when it began, since a sudden loss within 30 days needs 24 hours.
- hearing_aid_drop (yellow): daily use falling from the user's own level. Data-logged use
  averages ~10 h/day with a within-user day-to-day SD of 3.9 h (Demant 2021, 15,905
  users) and there is no standard non-use cut-off, so the rule is a lower-side CUSUM
  (Page 1954; k = 0.5, h = 5, Montgomery, Introduction to Statistical Quality Control) on
  the last 14 days, with mean and SD from the user's 28 days before them (at least 14 days
  of logs; the SD at least 1 h, so a very regular user is not alarmed by an hour's dip). A
  single day without the aid does not alarm; stopping altogether does within about 3
  days, a 1-SD fall within about 10.

No default limits: audiograms are judged by the rules and the report, hearing-aid use
against the user's own baseline. No schedule: audiograms are taken when the clinic asks,
and not every citizen monitored has an aid yet ("missing" would be wrong for them).
Asymmetry and the WHO grade need both ears, so they are in the report, not rules (a rule
sees one code's series).

The report: `telemon hearing-report PATIENT --config central.toml [--json]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
import numpy as np

from telemon import __version__, admin, alarms, dsp, store
from telemon.codes import KNOWN, lookup
from telemon.hookspecs import hookimpl
from telemon.models import LimitSet, Observation, Triage
from telemon.modules import DiseaseModule, Finding, Rule, Schedule, Series

EARS = {"audiogram_left": "left", "audiogram_right": "right"}
CODES = (*EARS, "hearing_aid_use")
FREQUENCIES = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)  # Hz, the audiometric list
FREQUENCY_OF = {(KNOWN[f"hl_{hz}"].code.system, KNOWN[f"hl_{hz}"].code.code): hz
                for hz in FREQUENCIES}
UNIT = KNOWN["hl_1000"].unit  # dB (hearing level)

PTA_FREQUENCIES = (500, 1000, 2000, 4000)
WHO_GRADES = ((20, "normal"), (35, "mild"), (50, "moderate"), (65, "moderately severe"),
              (80, "severe"), (95, "profound"), (math.inf, "complete"))  # (below, grade)
UNILATERAL_BETTER, UNILATERAL_WORSE = 20.0, 35.0  # WHO 2021
ASYMMETRY_FREQUENCIES = (500, 1000, 2000, 4000, 8000)  # NICE NG98
ASYMMETRY_DB = 15.0
LOSS_DB = 30.0  # worse at each of LOSS_RUN contiguous frequencies (AAO-HNS)
LOSS_RUN = 3
SUDDEN = timedelta(days=3)  # NICE NG98 1.1.2: "over a period of 3 days or less"
RAPID = timedelta(days=90)  # NICE NG98 1.1.2: "over a period of 4 to 90 days"
RECENT_SUDDEN = timedelta(days=30)  # within the past 30 days: seen within 24 hours
_SECOND = 1.0  # s: makes "more than `after` older" a lag for dsp.change (at or before)


# --- audiograms -------------------------------------------------------------------------------

def thresholds(audiogram: Observation) -> dict[int, float]:
    """The thresholds of an audiogram by frequency (Hz), in dB HL; frequencies not tested
    (no value, or a unit other than dB) are left out."""
    found = {}
    for part in audiogram.components:
        hz = FREQUENCY_OF.get((part.code.system, part.code.code))
        if hz is not None and part.value is not None and part.unit == UNIT:
            found[hz] = float(part.value)
    return found


def pta4(levels: Mapping[int, float]) -> float | None:
    """The pure-tone average of 0.5, 1, 2 and 4 kHz, or None if one was not tested."""
    if not all(hz in levels for hz in PTA_FREQUENCIES):
        return None
    return sum(levels[hz] for hz in PTA_FREQUENCIES) / len(PTA_FREQUENCIES)


def who_grade(better_ear_pta: float) -> str:
    """The WHO 2021 grade of hearing loss for the better ear's PTA4."""
    return next(grade for below, grade in WHO_GRADES if better_ear_pta < below)


def asymmetry(left: Mapping[int, float], right: Mapping[int, float]) -> list[tuple[int, int]]:
    """The adjacent frequency pairs (of 0.5, 1, 2, 4, 8 kHz) at both of which the ears
    differ by ASYMMETRY_DB or more (NICE NG98)."""
    differs = [hz in left and hz in right and abs(left[hz] - right[hz]) >= ASYMMETRY_DB
               for hz in ASYMMETRY_FREQUENCIES]
    return [(ASYMMETRY_FREQUENCIES[i], ASYMMETRY_FREQUENCIES[i + 1])
            for i in range(len(ASYMMETRY_FREQUENCIES) - 1) if differs[i] and differs[i + 1]]


def _matrix(audiograms: Sequence[Observation]) -> np.ndarray:
    """Thresholds as an array [frequency, audiogram], NaN where not tested."""
    levels = [thresholds(a) for a in audiograms]
    return np.array([[lv.get(hz, np.nan) for lv in levels] for hz in FREQUENCIES],
                    dtype=np.float64).reshape(len(FREQUENCIES), len(audiograms))


@dataclass(frozen=True)
class Loss:
    """A loss of hearing in the newest of a series of one ear's audiograms, against the
    latest earlier audiogram within the window (per frequency, by telemon.dsp.change)."""

    frequencies: tuple[int, ...]  # the longest run of contiguous frequencies
    drops: tuple[float, ...]  # dB worse at each
    references: tuple[int, ...]  # indexes of the earlier audiograms compared with
    days: float  # from the earliest of them to the newest audiogram

    def describe(self) -> str:
        return (f"{_listed(self.drops)} dB worse at {_khz(self.frequencies)} kHz within "
                f"{self.days:.1f} days")


def _listed(numbers: Iterable[float]) -> str:
    return ", ".join(f"{n:g}" for n in numbers)


def _khz(frequencies: Iterable[int]) -> str:
    return _listed(hz / 1000 for hz in frequencies)


def loss(times: np.ndarray, audiograms: Sequence[Observation], *, after: timedelta,
         within: timedelta) -> Loss | None:
    """The newest audiogram's loss against the latest earlier one of the same ear that is
    more than `after` and at most `within` older, or None."""
    if len(audiograms) < 2:
        return None
    lag = after.total_seconds() + _SECOND
    tolerance = within.total_seconds() - lag
    deltas, references = [], []
    for row in _matrix(audiograms):
        found = dsp.change(times, row, lag=lag, tolerance=tolerance)
        deltas.append(found.delta[-1])
        references.append(found.reference_time[-1])
    worse = [bool(d >= LOSS_DB) for d in deltas]  # NaN: not tested, not worse
    runs, start = [], None
    for i, flag in enumerate([*worse, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start >= LOSS_RUN:
                runs.append(range(start, i))
            start = None
    if not runs:
        return None
    run = max(runs, key=lambda r: (len(r), sum(deltas[i] for i in r)))
    reference_times = sorted({references[i] for i in run})
    indexes = tuple(int(np.flatnonzero(times == t)[-1]) for t in reference_times)
    return Loss(tuple(FREQUENCIES[i] for i in run), tuple(float(deltas[i]) for i in run),
                indexes, float((times[-1] - reference_times[0]) / 86400))


def sudden_loss(series: Series) -> list[Finding]:
    """Red when the newest audiogram shows a loss against one of the same ear at most
    SUDDEN older."""
    found = loss(series.times, series.observations, after=timedelta(0), within=SUDDEN)
    if found is None:
        return []
    ids = (*(series.ids[i] for i in found.references), series.ids[-1])
    return [Finding(Triage.RED, f"sudden hearing loss, {EARS[series.code]} ear: "
                    f"{found.describe()}: refer to be seen within 24 hours (NICE NG98)", ids)]


def hearing_worsening(series: Series) -> list[Finding]:
    """Yellow when the newest audiogram shows a loss against the latest one of the same ear
    more than SUDDEN and at most RAPID older."""
    found = loss(series.times, series.observations, after=SUDDEN, within=RAPID)
    if found is None:
        return []
    ids = (*(series.ids[i] for i in found.references), series.ids[-1])
    return [Finding(Triage.YELLOW, f"hearing worse, {EARS[series.code]} ear: "
                    f"{found.describe()}: refer to be seen within 2 weeks; ask when it "
                    "began: a sudden loss within 30 days needs 24 hours (NICE NG98)", ids)]


# --- hearing-aid use ----------------------------------------------------------------------------

USE_RECENT = timedelta(days=14)
USE_BASELINE = timedelta(days=28)
USE_MIN_BASELINE = 14  # days of logs
USE_MIN_SD = 1.0  # h
CUSUM_K, CUSUM_H = 0.5, 5.0


def hearing_aid_drop(series: Series) -> list[Finding]:
    """Yellow while the lower CUSUM of the recent daily use, against the user's own
    baseline, is in an episode that crossed CUSUM_H."""
    if not len(series.times):
        return []
    before = np.flatnonzero(series.times <= series.times[-1] - USE_RECENT.total_seconds())
    if not len(before):
        return []  # the first weeks: no baseline yet
    stats = dsp.rolling(series.times, series.values, window=USE_BASELINE.total_seconds())
    count, mean, sd = (stats.count[before[-1]], stats.mean[before[-1]],
                       stats.sd[before[-1]])
    if count < USE_MIN_BASELINE:
        return []
    first = before[-1] + 1
    if first == len(series.times):
        return []
    sigma = max(float(sd), USE_MIN_SD)
    cusum = dsp.cusum(series.times[first:], series.values[first:], mu=float(mean),
                      sigma=sigma, k=CUSUM_K, h=CUSUM_H, side="lower")
    quiet = np.flatnonzero(cusum.lower <= 0)
    episode = int(quiet[-1]) + 1 if len(quiet) else 0  # the current run above 0
    if not np.any(cusum.alarm[episode:] == -1):
        return []
    indexes = range(first + episode, len(series.times))
    used = series.values[first + episode:]
    return [Finding(Triage.YELLOW, f"hearing-aid use {np.nanmean(used):.1f} h/day on average "
                    f"over the last {len(indexes)} logs, below the user's usual "
                    f"{mean:.1f} h/day (SD {sd:.1f} h, {count:.0f} logs before)",
                    tuple(series.ids[i] for i in indexes))]


# --- the assessment report --------------------------------------------------------------------

def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _epoch(audiograms: Sequence[Observation]) -> np.ndarray:
    return np.array([a.effective.timestamp() for a in audiograms], dtype=np.float64)


def _losses(ear: str, audiograms: Sequence[Observation], now: datetime) -> list[dict]:
    """Each loss shown by an audiogram of the last RAPID against its predecessors."""
    times, found = _epoch(audiograms), []
    for k, audiogram in enumerate(audiograms):
        if now - audiogram.effective > RAPID:
            continue
        for kind, after, within in (("sudden", timedelta(0), SUDDEN),
                                    ("rapid", SUDDEN, RAPID)):
            seen = loss(times[:k + 1], audiograms[:k + 1], after=after, within=within)
            if seen is not None:
                found.append({
                    "ear": ear, "kind": kind, "found": _utc(audiogram.effective),
                    "over_days": round(seen.days, 1), "frequencies": list(seen.frequencies),
                    "drop_db": list(seen.drops),
                    "audiograms": [audiograms[i].id for i in seen.references] + [audiogram.id]})
                break  # a sudden loss is not also reported as rapid
    return found


NICE_SUDDEN_RECENT = ("specialist referral (urgent)", "NICE NG98 1.1.2: hearing loss that "
                      "developed suddenly (over 3 days or less) within the past 30 days: "
                      "refer immediately, to be seen within 24 hours")
NICE_SUDDEN_OLDER = ("specialist referral (2 weeks)", "NICE NG98 1.1.2: hearing loss that "
                     "developed suddenly more than 30 days ago: refer urgently, to be seen "
                     "within 2 weeks")
NICE_RAPID = ("specialist referral (2 weeks)", "NICE NG98 1.1.2: hearing loss that worsened "
              "rapidly (over 4 to 90 days): refer urgently, to be seen within 2 weeks")
NICE_ASYMMETRIC = ("specialist referral (routine)", "NICE NG98 1.1: unilateral or asymmetric "
                   "hearing loss: refer for diagnostic investigation (ENT or audiovestibular "
                   "medicine)")
DIRECT_FITTING = ("direct hearing-aid fitting", "NICE NG98 1.1: hearing loss without sudden "
                  "onset, rapid worsening, asymmetry or unilateral loss: refer to audiology "
                  "for hearing aids")
NO_LOSS = ("no referral", "WHO 2021: hearing in the better ear is normal (PTA4 < 20 dB HL), "
           "with no asymmetry and no loss between audiograms")
INCOMPLETE = ("incomplete", "the grade needs both ears' thresholds at 0.5, 1, 2 and 4 kHz "
              "(PTA4): repeat the audiogram")


def assessment(audiograms: Iterable[Observation], now: datetime) -> dict:
    """The standardised report on a patient's audiograms as of `now`: each ear's newest
    audiogram, thresholds and PTA4, the WHO 2021 grade on the better ear, asymmetry (NICE
    NG98), losses between audiograms of the last 90 days, and the recommendation with the
    rule that decided it. Audiograms of other codes are ignored. Plain JSON-ready values,
    times in UTC."""
    by_ear: dict[str, list[Observation]] = {"left": [], "right": []}
    for audiogram in audiograms:
        known = lookup(audiogram.code)
        if known is not None and known.key in EARS:
            by_ear[EARS[known.key]].append(audiogram)
    ears, levels, losses = {}, {}, []
    for ear, found in by_ear.items():
        found.sort(key=lambda a: (a.effective, a.id))
        if not found:
            ears[ear] = None
            continue
        newest = found[-1]
        levels[ear] = thresholds(newest)
        ears[ear] = {"audiogram": newest.id, "tested": _utc(newest.effective),
                     "thresholds": {str(hz): db for hz, db in levels[ear].items()},
                     "pta4": pta4(levels[ear])}
        losses += _losses(ear, found, now)
    averages = {ear: e["pta4"] for ear, e in ears.items() if e and e["pta4"] is not None}
    grade = None
    if len(averages) == 2:
        better = min(averages, key=lambda ear: averages[ear])
        worse = max(averages.values())
        grade = {"better_ear": better, "pta4": averages[better],
                 "grade": who_grade(averages[better]),
                 "unilateral": averages[better] < UNILATERAL_BETTER
                 and worse >= UNILATERAL_WORSE}
    pairs = asymmetry(levels["left"], levels["right"]) if len(levels) == 2 else []
    recent_sudden = [x for x in losses if x["kind"] == "sudden"
                     and now - datetime.fromisoformat(x["found"]) <= RECENT_SUDDEN]
    if recent_sudden:
        recommendation, rule = NICE_SUDDEN_RECENT
    elif any(x["kind"] == "sudden" for x in losses):
        recommendation, rule = NICE_SUDDEN_OLDER
    elif losses:
        recommendation, rule = NICE_RAPID
    elif pairs or (grade and grade["unilateral"]):
        recommendation, rule = NICE_ASYMMETRIC
    elif grade is None:
        recommendation, rule = INCOMPLETE
    elif grade["grade"] == "normal":
        recommendation, rule = NO_LOSS
    else:
        recommendation, rule = DIRECT_FITTING
    return {"assessed": _utc(now), "ears": ears, "who_grade": grade,
            "asymmetry": {"found": bool(pairs), "frequency_pairs": [list(p) for p in pairs]},
            "losses": losses, "recommendation": recommendation, "rule": rule}


# --- the nurse's summary and the module ---------------------------------------------------------

def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: the latest daily hearing-aid use (audiograms: the report)."""
    if "hearing_aid_use" not in latest:
        return "no hearing-aid use logged yet"
    return f"hearing-aid use {latest['hearing_aid_use']:g} h/day"


MODULE = DiseaseModule(
    name="hearing",
    version=__version__,
    title="Hearing loss and hearing-aid use",
    codes=CODES,
    default_limits={},
    schedule=Schedule(codes=()),
    summarise=summarise,
    rules=(
        Rule("sudden_loss", ">= 30 dB worse at 3 contiguous frequencies within 3 days "
             "(AAO-HNS; NICE NG98 1.1.2: seen within 24 h)", tuple(EARS), sudden_loss,
             window=RAPID + timedelta(days=1), records=True),
        Rule("hearing_worsening", ">= 30 dB worse at 3 contiguous frequencies over 4-90 days "
             "(NICE NG98 1.1.2: seen within 2 weeks)", tuple(EARS), hearing_worsening,
             window=RAPID + timedelta(days=1), records=True),
        Rule("hearing_aid_drop", "daily hearing-aid use falling below the user's own level "
             "(lower CUSUM; Demant 2021)", ("hearing_aid_use",), hearing_aid_drop,
             window=USE_RECENT + USE_BASELINE + timedelta(days=1)),
    ),
    sources=(
        "WHO 2021, World report on hearing: grades of hearing loss",
        "NICE NG98 (2018, updated 2019), Hearing loss in adults: assessment and management",
        "Chandrasekhar SS et al. 2019, Clinical practice guideline: sudden hearing loss "
        "(update), Otolaryngol Head Neck Surg 161(1 suppl):S1-S45",
        "Demant 2021, hearing-aid data logging of 15,905 users (shared/CLINICAL.md)",
        "Montgomery DC, Introduction to Statistical Quality Control: tabular CUSUM",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)


# --- command line ---------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def patient_audiograms(db, patient: str) -> list[Observation]:
    """Every audiogram of a patient, both ears, oldest first."""
    found = [obs for key in EARS for obs in alarms.load_series(
        db, patient, key, since=EPOCH, limits=LimitSet(), records=True).observations]
    return sorted(found, key=lambda a: (a.effective, a.id))


@click.command(name="hearing-report")
@click.argument("patient_id", metavar="PATIENT")
@admin.json_option
@admin.config_option
@admin.by_option
@admin.reports_errors
def hearing_report(patient_id: str, as_json: bool, config_path: str, actor: str) -> None:
    """The standardised hearing assessment of PATIENT from their audiograms: PTA4 per ear,
    WHO 2021 grade, asymmetry, losses between audiograms and the NICE NG98 referral
    recommendation (the read is audited)."""
    with admin.open_central(config_path) as central:
        admin.require(central.db, actor, "patient.read", "hearing.report", patient_id)
        with store.transaction(central.db):
            zone = admin.get_patient(central.db, patient_id).timezone
            audiograms = patient_audiograms(central.db, patient_id)
            admin.audit(central.db, actor=actor, action="hearing.report", patient=patient_id,
                        audiograms=[a.id for a in audiograms])
    if not audiograms:
        raise admin.AdminError(f"{patient_id} has no audiograms")
    report = assessment(audiograms, datetime.now(UTC))
    if as_json:
        admin.echo_json({"patient": patient_id, **report})
        return
    click.echo(f"hearing assessment of {patient_id}, "
               f"{admin.local(datetime.fromisoformat(report['assessed']), zone)}")
    rows = []
    for ear, found in report["ears"].items():
        if found is None:
            rows.append((ear, "no audiogram", "", *("" for _ in FREQUENCIES)))
            continue
        tested = admin.local(datetime.fromisoformat(found["tested"]), zone)
        pta = "-" if found["pta4"] is None else f"{found['pta4']:.1f}"
        rows.append((ear, tested, pta, *(f"{found['thresholds'][str(hz)]:g}"
                                         if str(hz) in found["thresholds"] else "-"
                                         for hz in FREQUENCIES)))
    admin.echo_table(("EAR", "TESTED", "PTA4", *(f"{hz / 1000:g}k" for hz in FREQUENCIES)),
                     rows)
    grade = report["who_grade"]
    click.echo("\nWHO 2021 grade: " + (
        "not graded (PTA4 of both ears needed)" if grade is None else
        f"{grade['grade']} (better ear {grade['better_ear']}, PTA4 {grade['pta4']:.1f} dB HL)"
        + ("; unilateral" if grade["unilateral"] else "")))
    pairs = report["asymmetry"]["frequency_pairs"]
    click.echo("asymmetry (NICE NG98, >= 15 dB at two adjacent frequencies): " + (
        "; ".join(f"{_khz(pair)} kHz" for pair in pairs) if pairs else "none"))
    click.echo("losses between audiograms (>= 30 dB at 3 contiguous frequencies):"
               + ("" if report["losses"] else " none"))
    for found in report["losses"]:
        click.echo(f"  {found['ear']} ear, {found['kind']}: {_listed(found['drop_db'])} dB "
                   f"worse at {_khz(found['frequencies'])} kHz over {found['over_days']:g} "
                   f"days, found {admin.local(datetime.fromisoformat(found['found']), zone)}")
    click.echo(f"\nrecommendation: {report['recommendation']}\nrule: {report['rule']}")


@hookimpl
def register_commands(cli):
    cli.add_command(hearing_report)
