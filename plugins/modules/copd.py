"""COPD: oxygen saturation, pulse, temperature, weight and FEV1 at home; CAT, mMRC and daily
exacerbation questions.

Default limits (every one is overridden per patient by the referring doctor; in Danish
practice no national defaults are published, TeleCare Nord):
- SpO2 yellow below 90 %: SpO2 < 90 % agreed with exacerbations (Cooper et al. 2020,
  kappa 0.47-0.56). Red below 88 %: the bottom of the 88-92 % target range for patients at
  risk of hypercapnic respiratory failure (BTS guideline for oxygen use in adults,
  O'Driscoll et al., Thorax 2017).
- Pulse yellow below 50 or above 100 /min; temperature yellow above 37 Cel: fixed thresholds
  of the TELBIL telemonitoring trial.
- CAT yellow above 30: the "very high impact" band (CAT user guide; Jones et al. 2009). Lower
  bands are the usual state of this population (TeleCare Nord enrols from CAT >= 10), so a
  fixed limit there would alarm every week; a rise is caught by cat_worsening instead.
- Weight, FEV1 and mMRC have no fixed limits: weight and FEV1 are judged against the
  patient's own baseline, mMRC is shown to the nurse in the summary line.

Trend rules (all judge the newest reading of their code: what the series shows now; they are
made for spot checks, a few readings a day, as the schedule asks):
- spo2_sustained_low (red): every SpO2 reading below the patient's yellow-low limit for at
  least 24 hours. One low reading is a yellow alarm by the limits; a desaturation that
  persists across a day's readings is how exacerbations showed in home SpO2 (Cooper et al.
  2020: SpO2 < 90 % agreed with exacerbations, kappa 0.47-0.56), so it is escalated to red.
- spo2_below_baseline, fev1_below_baseline (yellow): the reading is below the patient's own
  7-day rolling mean - 1.645 SD (statistical process control, Cooper et al. 2020: FEV1 below
  it agreed with exacerbations, kappa 0.475; FVC 0.747). Silent until 5 readings are in the
  7 days before (a choice: an SD of fewer daily readings is mostly noise), so the first days
  after enrolment, or after a gap, never alarm. The band is never narrower than the
  measurement's own noise (see MIN_DROP).
- pulse_rising (yellow): the smoothed resting pulse is at least 10 /min above its level 3
  days earlier. Hurst et al. 2010 (BMC Pulm Med 10:52): heart rate rises at exacerbation
  onset, greatest 2-3 days after symptom onset; its day-to-day SD in stable COPD is about
  5 /min, so 10 /min is 2 SD.
- cat_worsening (yellow): the CAT total is at least 2 points above the mean of the patient's
  earlier scores in the last 8 weeks. 2 points is the minimal clinically important difference
  usually quoted for the CAT (Kon et al., Lancet Respir Med 2014); unverified here
  (shared/CLINICAL.md), so it is a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from functools import partial

import numpy as np

from telemon import __version__, dsp
from telemon.codes import KNOWN
from telemon.hookspecs import hookimpl
from telemon.models import LimitSet, Triage
from telemon.modules import (
    AnswerValue,
    DiseaseModule,
    Finding,
    Item,
    Questionnaire,
    Rule,
    Schedule,
    Series,
)

MEASURED = ("spo2", "pulse", "temperature", "weight", "fev1")
CODES = (*MEASURED, "cat_score", "mmrc_grade")


# --- questionnaires ---------------------------------------------------------------------------

CAT_ITEMS = 8
CAT_BANDS = ((9, "low"), (20, "medium"), (30, "high"), (40, "very high"))
"""Highest total of each impact band: < 10 low, 10-20 medium, 21-30 high, > 30 very high (CAT
user guide; Jones et al. 2009)."""


def cat_band(total: float) -> str:
    """The CAT impact band of a total score (0-40)."""
    for highest, band in CAT_BANDS:
        if 0 <= total <= highest:
            return band
    raise ValueError(f"CAT total {total:g} is outside 0..40")


def score_cat(answers: Mapping[str, AnswerValue]) -> dict[str, Decimal]:
    """The CAT total: the sum of the eight items, each 0-5 (Jones et al. 2009)."""
    return {"total": Decimal(sum(int(answers[f"cat_{i}"]) for i in range(1, CAT_ITEMS + 1)))}


CAT = Questionnaire(
    id="cat", version="1", title="COPD Assessment Test",
    items=tuple(Item(f"cat_{i}", "integer", low=0, high=5) for i in range(1, CAT_ITEMS + 1)),
    score=score_cat, scores={"total": "cat_score"},
    source="Jones PW et al., Development and first validation of the COPD Assessment Test, "
           "Eur Respir J 2009;34:648-54; scoring and bands per the CAT user guide. The wording "
           "is copyrighted (GlaxoSmithKline): not shipped, the municipality supplies it under "
           "its licence")

MMRC = Questionnaire(
    id="mmrc", version="1", title="Modified Medical Research Council dyspnoea scale",
    items=(Item("grade", "integer", low=0, high=4),),
    score=lambda answers: {"grade": Decimal(int(answers["grade"]))},
    scores={"grade": "mmrc_grade"},
    source="mMRC dyspnoea grades 0-4 as used by the GOLD report (Bestall JC et al., Thorax "
           "1999;54:581-6, for the MRC scale it modifies); one answer, the grade itself. "
           "Wording not shipped (its licence was not checked): the municipality supplies it")

COPD_DAILY = Questionnaire(
    id="copd_daily", version="1", title="COPD daily questions",
    items=(
        # Anthonisen et al. 1987 (Ann Intern Med 106:196): the cardinal symptoms of an
        # exacerbation are more breathlessness, more sputum and purulent sputum; one alone
        # is a mild exacerbation at most: yellow, for the nurse to look at with the readings.
        Item("more_breathless", "boolean", significance={True: Triage.YELLOW}),
        Item("sputum_more", "boolean", significance={True: Triage.YELLOW}),
        # Stockley et al. 2000 (Chest 117:1638): green (purulent) sputum was 94 % sensitive
        # and 77 % specific for a high bacterial load, yellow (mucoid-purulent) sputum much
        # less so. Green: red, because it usually means starting the rescue antibiotics the
        # same day (a conservative choice); yellow: yellow.
        Item("sputum_colour", "choice", options=("clear", "white", "yellow", "green"),
             significance={"yellow": Triage.YELLOW, "green": Triage.RED}),
        # Fever is an Anthonisen minor criterion and, with COPD symptoms, a sign of infection
        # or pneumonia: red, the conservative choice (the thermometer's own limit is yellow).
        Item("fever", "boolean", significance={True: Triage.RED}),
    ),
    score=lambda answers: {}, scores={},
    source="telemon's own items (ids and options only; the municipality supplies the "
           "wording) after the exacerbation criteria of Anthonisen NR et al., Ann Intern Med "
           "1987;106:196-204 and sputum colour per Stockley RA et al., Chest 2000;117:1638-45")


# --- summary ------------------------------------------------------------------------------------

def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: the latest value of each measured code with its unit, then the
    latest CAT (with its band) and mMRC grade."""
    parts = [f"{KNOWN[code].display} {latest[code]:g} {KNOWN[code].unit}"
             for code in MEASURED if code in latest]
    if "cat_score" in latest:
        total = latest["cat_score"]
        band = f" ({cat_band(total)} impact)" if 0 <= total <= 40 else ""
        parts.append(f"CAT {total:g}{band}")
    if "mmrc_grade" in latest:
        parts.append(f"mMRC {latest['mmrc_grade']:g}")
    return ", ".join(parts) or "no measurements yet"


# --- rules --------------------------------------------------------------------------------------

SUSTAINED = timedelta(hours=24)


def spo2_sustained_low(series: Series) -> list[Finding]:
    """Red when the latest SpO2 readings have all been below the yellow-low limit for at
    least SUSTAINED (telemon.dsp.threshold, low side, sustained)."""
    low = series.limits.yellow_low
    if low is None or not len(series.times):
        return []
    state = dsp.threshold(series.times, series.values, low=float(low),
                          sustain=SUSTAINED.total_seconds())
    if state[-1] != -1:
        return []
    not_low = np.flatnonzero(series.values >= float(low))  # NaN readings are neither
    run = int(not_low[-1]) + 1 if len(not_low) else 0  # this episode's first low reading
    hours = (series.times[-1] - series.times[run]) / 3600
    return [Finding(Triage.RED, f"SpO2 below {low} % on every reading for {hours:.0f} h "
                    f"({len(state) - run} readings)", series.ids[run:])]


JITTER = timedelta(hours=2)
"""Daily readings are not taken at the same minute (nor the same UTC hour across a change to
or from summer time): a lag this much shorter than the nominal one keeps the reading of 3 days
ago eligible when today's is a little earlier."""
MISSED_DAY = timedelta(days=1) + 2 * JITTER
"""Tolerance of a daily rule for one missed reading: the one a day before the reference."""


BASELINE = timedelta(days=7)  # Cooper et al. 2020: the 7-day rolling mean
BASELINE_K = 1.645  # one-sided 95 % (Cooper et al. 2020: mean - 1.645 SD)
BASELINE_READINGS = 5  # earlier readings needed in those 7 days before the band may judge
MIN_DROP = {
    # A finger oximeter reads in whole percent and a week of identical readings has SD 0;
    # Hurst et al. 2010 found a day-to-day SD of about 1 % in stable COPD, so a drop of less
    # than 2 points is not judged a drop.
    "spo2": 2.0,
    # ATS/ERS spirometry standard (Graham et al., Am J Respir Crit Care Med 2019;200:e70):
    # repeatable FEV1 manoeuvres differ by up to 0.150 L; a smaller drop is measurement noise.
    "fev1": 0.15,
}


def past_own_baseline(series: Series, *, side: int, margin: float,
                      window: timedelta = BASELINE, k: float = BASELINE_K,
                      min_count: int = BASELINE_READINGS) -> list[Finding]:
    """Yellow when the newest reading is beyond the patient's own control band of the
    readings in the `window` before it (telemon.dsp.spc_band, the reading itself excluded):
    below mean - k SD for side -1, above mean + k SD for side +1, and more than `margin` from
    the mean. Silent until `min_count` earlier readings are in the window."""
    if not len(series.values) or np.isnan(series.values[-1]):
        return []
    # the previous `window` of daily readings, the one taken a little later `window` ago too
    band = dsp.spc_band(series.times, series.values, window=(window + JITTER).total_seconds(),
                        k=k, min_count=min_count)
    mean = band.mean[-1]
    if np.isnan(mean):
        return []  # not enough baseline yet
    if side < 0:
        bound, beyond, word = min(band.lower[-1], mean - margin), np.less, "below"
    else:
        bound, beyond, word = max(band.upper[-1], mean + margin), np.greater, "above"
    value = series.values[-1]
    if not beyond(value, bound):
        return []
    known = KNOWN[series.code]
    days = window.total_seconds() / dsp.DAY
    return [Finding(Triage.YELLOW, (
        f"{known.display} {value:g} {known.unit} {word} the patient's own {days:g}-day "
        f"baseline: mean {mean:.4g} {known.unit}, limit {bound:.4g} {known.unit} "
        f"({int(band.count[-1])} readings)"), series.ids[-1:])]


PULSE_SPAN = 3  # readings: a single reading after exertion moves the smoothed pulse by half
PULSE_LAG = timedelta(days=3)  # Hurst et al. 2010: the rise is greatest 2-3 days after onset
PULSE_RISE = 10.0  # /min: 2 x the day-to-day SD of about 5 /min in stable COPD (Hurst 2010)


def pulse_rising(series: Series) -> list[Finding]:
    """Yellow when the pulse, smoothed over PULSE_SPAN readings (telemon.dsp.ewma), is at
    least PULSE_RISE above its smoothed level PULSE_LAG earlier (telemon.dsp.change; one
    missed daily reading tolerated, more is silent: no reference, no judgement)."""
    values = series.values
    if not len(values) or np.isnan(values[-1]):
        return []
    smoothed = dsp.ewma(series.times, values, span=PULSE_SPAN)
    smoothed[np.isnan(values)] = np.nan  # a failed reading is no level to compare with
    rise = dsp.change(series.times, smoothed, lag=(PULSE_LAG - JITTER).total_seconds(),
                      tolerance=MISSED_DAY.total_seconds())
    delta = rise.delta[-1]
    if not delta >= PULSE_RISE:  # NaN: no reference
        return []
    reference = int(np.flatnonzero((series.times == rise.reference_time[-1])
                                   & ~np.isnan(smoothed))[-1])
    days = (series.times[-1] - series.times[reference]) / dsp.DAY
    return [Finding(Triage.YELLOW, (
        f"resting pulse rising: smoothed {smoothed[-1]:.0f} /min, {delta:.0f} /min above "
        f"{smoothed[reference]:.0f} /min {days:.1f} days earlier"),
        (series.ids[reference], series.ids[-1]))]


CAT_BASELINE = timedelta(weeks=8)
CAT_MCID = 2.0  # points (Kon et al. 2014; unverified, shared/CLINICAL.md)


def cat_worsening(series: Series) -> list[Finding]:
    """Yellow when the newest CAT total is at least CAT_MCID above the mean of the patient's
    earlier totals in CAT_BASELINE (telemon.dsp.spc_band's mean; silent until 2 are there)."""
    if not len(series.values) or np.isnan(series.values[-1]):
        return []
    band = dsp.spc_band(series.times, series.values, window=CAT_BASELINE.total_seconds(),
                        k=0.0, min_count=2)
    total, mean = series.values[-1], band.mean[-1]
    if not total - mean >= CAT_MCID:  # NaN: no baseline yet
        return []
    return [Finding(Triage.YELLOW, (
        f"CAT {total:g} is {total - mean:.1f} points above the mean {mean:.1f} of the "
        f"{int(band.count[-1])} earlier scores in {CAT_BASELINE.days // 7} weeks "
        f"(clinically important: {CAT_MCID:g})"), series.ids[-1:])]


MODULE = DiseaseModule(
    name="copd",
    version=__version__,
    title="Chronic obstructive pulmonary disease",
    codes=CODES,
    default_limits={
        "spo2": LimitSet(red_low=Decimal(88), yellow_low=Decimal(90)),
        "pulse": LimitSet(yellow_low=Decimal(50), yellow_high=Decimal(100)),
        "temperature": LimitSet(yellow_high=Decimal(37)),
        "cat_score": LimitSet(yellow_high=Decimal(30)),
    },
    schedule=Schedule(codes=("spo2", "pulse")),
    summarise=summarise,
    rules=(
        Rule("spo2_sustained_low",
             "SpO2 below the yellow-low limit on every reading for 24 h (Cooper 2020)",
             ("spo2",), spo2_sustained_low, window=timedelta(days=7)),
        Rule("spo2_below_baseline",
             "SpO2 below its own 7-day mean - 1.645 SD and more than 2 points below the mean "
             "(Cooper 2020; Hurst 2010)",
             ("spo2",), partial(past_own_baseline, side=-1, margin=MIN_DROP["spo2"]),
             window=BASELINE + timedelta(days=1)),
        Rule("fev1_below_baseline",
             "FEV1 below its own 7-day mean - 1.645 SD and more than 0.15 L below the mean "
             "(Cooper 2020; ATS/ERS 2019)",
             ("fev1",), partial(past_own_baseline, side=-1, margin=MIN_DROP["fev1"]),
             window=BASELINE + timedelta(days=1)),
        Rule("pulse_rising",
             "smoothed resting pulse 10 /min above its level 3 days earlier (Hurst 2010)",
             ("pulse",), pulse_rising, window=timedelta(days=14)),
        Rule("cat_worsening",
             "CAT at least 2 points above the mean of the last 8 weeks' scores (Kon 2014, "
             "unverified)",
             ("cat_score",), cat_worsening, window=CAT_BASELINE + timedelta(days=1)),
    ),
    questionnaires=(CAT, MMRC, COPD_DAILY),
    sources=(
        "Cooper CB et al. 2020, Remote patient monitoring for the detection of COPD "
        "exacerbations, Int J COPD 15:2005 (SpO2 < 90 %; FEV1 < 7-day mean - 1.645 SD)",
        "O'Driscoll BR et al., BTS guideline for oxygen use in adults, Thorax 2017",
        "TELBIL telemonitoring trial fixed thresholds",
        "Hurst JR et al. 2010, Domiciliary pulse-oximetry at exacerbation of COPD, "
        "BMC Pulm Med 10:52",
        "Graham BL et al. 2019, Standardization of spirometry, Am J Respir Crit Care Med "
        "200:e70",
        "Jones PW et al. 2009, COPD Assessment Test, Eur Respir J 34:648; CAT user guide",
        "Kon SSC et al. 2014, minimum clinically important difference of the CAT, "
        "Lancet Respir Med 2:195 (unverified here)",
        "Bestall JC et al. 1999, MRC dyspnoea scale, Thorax 54:581",
        "Anthonisen NR et al. 1987, Ann Intern Med 106:196",
        "Stockley RA et al. 2000, sputum colour and bacterial load, Chest 117:1638",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)
