"""Heart failure: daily weight and blood pressure, pulse, a symptom check, and AF screening
from the RR intervals of a heart-rate strap.

Default limits (every one is overridden per patient by the referring doctor; no national
defaults are published in Denmark, TeleCare Nord): the fixed thresholds of the TELBIL
telemonitoring trial, yellow outside them: systolic < 100 or > 160 mm[Hg], diastolic < 60 or
> 95 mm[Hg], pulse < 50 or > 100 /min (from the oximeter or the blood pressure monitor).
Weight has no fixed limit: only its change says something.

Trend rules (all judge the newest reading of their code, as the COPD module's do; made for
a daily weighing, as the schedule asks):
- weight_gain_3_days (yellow): more than 2 kg gained in 3 days, the rule of thumb of the ESC
  heart failure guidelines' self-care advice, up to one missing day tolerated.
- weight_gain_1_day (yellow): more than 1.36 kg (3 lb) gained since yesterday's weighing, the
  other rule of thumb Zhang et al. 2009 compared (TEN-HMS).
  Both rules of thumb alarm often and catch few decompensations (Zhang 2009: false-alert rate
  54-58 %; Gyllensten 2016: sensitivity 20 %), so they are yellow, not red.
- weight_macd (yellow): MACD of the daily weights above 0.5 kg (Zhang et al. 2009, Gyllensten
  et al. 2016: the better of the weight algorithms, sensitivity 33 %). Both papers tuned the
  spans and the threshold on their own cohorts; telemon's defaults (spans 3 and 10 readings,
  signal 5, theta 0.5 kg) are its own, unverified against them: a sustained step of 1.3 kg
  alarms on its second day, a steady gain of 2 kg a week on its fifth; 1 kg a week never
  does (the slow average keeps up), which the personalised band below is for.
- weight_above_baseline (yellow): the weight is above the patient's own 7-day mean + 1.645 SD
  and more than 1 kg above that mean: the personalised band approach (Ledwidge et al. 2013:
  82 % sensitivity vs 21 % for "2 kg in 2-3 days") with the statistical-process-control band
  of Cooper et al. 2020, never narrower than TELBIL's 1 kg. Silent until 5 readings are in
  the 7 days before.
- af_screen (yellow): the newest window of 128 RR intervals is irregular by all three of Dash
  et al. 2009's criteria (normalised RMSSD, turning-point ratio, Shannon entropy;
  telemon.dsp.af_features, with premature/compensatory pairs left out first because
  ectopic beats ruin the positive predictive value). Silent with fewer than 128 usable
  intervals. The coefficient of variation (Tateno & Glass 2001) is reported with them. A
  screening flag for the nurse and the doctor, not a diagnosis.

Symptom answers (hf_daily) with their significance: see HF_DAILY.
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
from telemon.modules import DiseaseModule, Finding, Item, Questionnaire, Rule, Schedule, Series
from telemon.plugins.modules.copd import BASELINE, JITTER, MISSED_DAY, past_own_baseline

CODES = ("weight", "bp", "bp_sys", "bp_dia", "pulse", "pulse_bp", "rr_interval")
PULSE_LIMITS = LimitSet(yellow_low=Decimal(50), yellow_high=Decimal(100))  # TELBIL


# --- symptoms -----------------------------------------------------------------------------------

HF_DAILY = Questionnaire(
    id="hf_daily", version="1", title="Heart failure daily questions",
    items=(
        # Breathlessness at rest is NYHA class IV: red. Breathlessness on exertion is what
        # NYHA class II-III means, the patients telemonitored, so it is not flagged (ESC 2021
        # heart failure guidelines, McDonagh et al., Eur Heart J 42:3599).
        Item("breathless", "choice", options=("none", "exertion", "rest"),
             significance={"rest": Triage.RED}),
        # Ankle swelling is peripheral oedema, a sign of congestion (ESC 2021): the treated
        # patient's target is no oedema, so any is worth a look (yellow, with the weight), and
        # marked oedema needs the diuretic reviewed the same day (red; a conservative choice).
        Item("ankle_swelling", "choice", options=("none", "mild", "marked"),
             significance={"mild": Triage.YELLOW, "marked": Triage.RED}),
        # Orthopnoea is among the more specific symptoms of congestion (ESC 2021): red, the
        # conservative choice.
        Item("orthopnoea", "boolean", significance={True: Triage.RED}),
    ),
    score=lambda answers: {}, scores={},
    source="telemon's own items (ids and options only; the municipality supplies the "
           "wording) after the symptoms of congestion in the ESC 2021 heart failure "
           "guidelines (McDonagh TA et al., Eur Heart J 2021;42:3599-726)")


# --- summary ------------------------------------------------------------------------------------

def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: weight, blood pressure as systolic/diastolic, pulse, with units."""
    parts = []
    if "weight" in latest:
        parts.append(f"{KNOWN['weight'].display} {latest['weight']:g} {KNOWN['weight'].unit}")
    if "bp_sys" in latest and "bp_dia" in latest:
        parts.append(f"BP {latest['bp_sys']:g}/{latest['bp_dia']:g} {KNOWN['bp_sys'].unit}")
    else:
        parts += [f"{KNOWN[c].display} {latest[c]:g} {KNOWN[c].unit}"
                  for c in ("bp_sys", "bp_dia") if c in latest]
    parts += [f"{KNOWN[c].display} {latest[c]:g} {KNOWN[c].unit}"
              for c in ("pulse", "pulse_bp") if c in latest]
    return ", ".join(parts) or "no measurements yet"


# --- weight rules -------------------------------------------------------------------------------

def weight_gain(series: Series, *, days: int, gain: float, tolerance: timedelta) -> list[Finding]:
    """Yellow when the newest weight is more than `gain` kg above the weight `days` days
    before it (telemon.dsp.change; the reference may be up to `tolerance` older, else there is
    no reference and no judgement)."""
    if not len(series.values) or np.isnan(series.values[-1]):
        return []
    lag = timedelta(days=days) - JITTER
    found = dsp.change(series.times, series.values, lag=lag.total_seconds(),
                       tolerance=tolerance.total_seconds())
    delta = found.delta[-1]
    # to the gram: scales report 5 g steps, and 74.1 - 72.1 must not come out as 2.0000000001
    if not round(float(delta), 3) > gain:  # NaN: no reference
        return []
    reference = int(np.flatnonzero((series.times == found.reference_time[-1])
                                   & ~np.isnan(series.values))[-1])
    span = (series.times[-1] - series.times[reference]) / dsp.DAY
    return [Finding(Triage.YELLOW, (
        f"weight up {delta:.2f} kg in {span:.1f} days ({series.values[reference]:g} -> "
        f"{series.values[-1]:g} kg; rule: more than {gain:g} kg in {days} "
        f"day{'s' if days > 1 else ''})"), (series.ids[reference], series.ids[-1]))]


MACD_FAST = 3  # readings (daily weights)
MACD_SLOW = 10
MACD_SIGNAL = 5
MACD_THETA = 0.5  # kg


def weight_macd(series: Series, *, fast: int = MACD_FAST, slow: int = MACD_SLOW,
                signal: int = MACD_SIGNAL, theta: float = MACD_THETA) -> list[Finding]:
    """Yellow when MACD = EWMA(span fast) - EWMA(span slow) of the weights exceeds `theta`
    kg at the newest reading (telemon.dsp.macd). Silent until `slow` weights are there: the
    slow average needs them to be a baseline."""
    values = series.values
    if not len(values) or np.isnan(values[-1]) or np.count_nonzero(~np.isnan(values)) < slow:
        return []
    lines = dsp.macd(series.times, values, fast=fast, slow=slow, signal=signal)
    if not lines.macd[-1] > theta:
        return []
    return [Finding(Triage.YELLOW, (
        f"weight trending up: MACD {lines.macd[-1]:.2f} kg above {theta:g} kg (averages over "
        f"{fast} and {slow} readings; newest {values[-1]:g} kg)"), series.ids[-1:])]


WEIGHT_MARGIN = 1.0  # kg: TELBIL's alarm was +1 kg (in 3 days)


# --- AF screening -------------------------------------------------------------------------------

AF_BEATS = 128  # RR intervals per window (Dash et al. 2009; shared/CLINICAL.md)
AF_STEP = 16  # windows start every 16 intervals, so the newest ends near the newest beat


def af_screen(series: Series) -> list[Finding]:
    """Yellow when the newest window of AF_BEATS RR intervals is AF-suspect by Dash et al.
    2009's three criteria (telemon.dsp.af_features with the ectopy gate). Intervals outside
    the plausible 0.2-3 s (artefact: a missed or doubled beat) and NaN are left out; fewer
    than AF_BEATS usable intervals (too short a recording) judge nothing."""
    low, high = KNOWN["rr_interval"].plausible
    usable = np.flatnonzero((series.values >= low) & (series.values <= high))
    if usable.size < AF_BEATS:
        return []
    recent = usable[-2 * AF_BEATS:]
    features = dsp.af_features(series.values[recent], window=AF_BEATS, step=AF_STEP)
    if not features.start.size or not features.af_suspect[-1]:
        return []  # no window once ectopic pairs are left out, or a regular one
    first = int(recent[features.start[-1]])
    return [Finding(Triage.YELLOW, (
        f"irregular RR intervals, possible atrial fibrillation, over {AF_BEATS} beats: "
        f"nRMSSD {features.nrmssd[-1]:.2f}, TPR {features.tpr[-1]:.2f}, ShEn "
        f"{features.shannon[-1]:.2f}, CV {features.cv[-1]:.2f}; "
        f"{features.ectopic[-1]:.0%} ectopic left out"),
        (series.ids[first], series.ids[int(recent[-1])]))]


MODULE = DiseaseModule(
    name="heart_failure",
    version=__version__,
    title="Heart failure",
    codes=CODES,
    default_limits={
        "bp_sys": LimitSet(yellow_low=Decimal(100), yellow_high=Decimal(160)),
        "bp_dia": LimitSet(yellow_low=Decimal(60), yellow_high=Decimal(95)),
        "pulse": PULSE_LIMITS,
        "pulse_bp": PULSE_LIMITS,
    },
    # daily weighing and blood pressure (ESC 2021 self-care; TELBIL measured daily)
    schedule=Schedule(codes=("weight", "bp")),
    summarise=summarise,
    rules=(
        Rule("weight_gain_3_days", "weight gain > 2 kg in 3 days (ESC rule of thumb)",
             ("weight",), partial(weight_gain, days=3, gain=2.0, tolerance=MISSED_DAY),
             window=timedelta(days=5)),
        # tolerance: the jitter of a daily weighing either way, not a missing day (that would
        # make it a 2-day rule; the 3-day rule covers it)
        Rule("weight_gain_1_day", "weight gain > 1.36 kg in 1 day (Zhang 2009)",
             ("weight",), partial(weight_gain, days=1, gain=1.36, tolerance=2 * JITTER),
             window=timedelta(days=2)),
        Rule("weight_macd", "MACD of daily weights > 0.5 kg (Zhang 2009; Gyllensten 2016; "
             "spans and threshold telemon's own)", ("weight",), weight_macd,
             window=timedelta(days=60)),
        Rule("weight_above_baseline",
             "weight above its own 7-day mean + 1.645 SD and more than 1 kg above the mean "
             "(Ledwidge 2013; Cooper 2020; TELBIL)",
             ("weight",), partial(past_own_baseline, side=1, margin=WEIGHT_MARGIN),
             window=BASELINE + timedelta(days=1)),
        Rule("af_screen", "RR intervals irregular by nRMSSD, TPR and ShEn over 128 beats "
             "(Dash 2009)", ("rr_interval",), af_screen,
             window=timedelta(hours=1)),
    ),
    questionnaires=(HF_DAILY,),
    sources=(
        "TELBIL telemonitoring trial fixed thresholds",
        "McDonagh TA et al. 2021, ESC guidelines for heart failure, Eur Heart J 42:3599 "
        "(self-care: weight gain > 2 kg in 3 days; symptoms of congestion)",
        "Zhang J et al. 2009, daily weight and hospitalisation for heart failure (TEN-HMS), "
        "Eur J Heart Fail 11:420",
        "Gyllensten IC et al. 2016, JMIR Med Inform 4:e3",
        "Ledwidge MT et al. 2013, HeartPhone individualised weight monitoring, "
        "Eur J Heart Fail 15:447",
        "Cooper CB et al. 2020, statistical process control, Int J COPD 15:2005",
        "Dash S et al. 2009, AF detection from RR intervals, Ann Biomed Eng 37:1701",
        "Tateno K, Glass L 2001, AF from RR intervals, Med Biol Eng Comput 39:664",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)
