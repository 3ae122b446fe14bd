"""Low back pain: a daily pain diary with red-flag questions, STarT Back screening,
Roland-Morris disability, activity (steps) and exercise adherence at home.

Questionnaires (ids, response options and scoring; the wording of licensed instruments is
supplied by the municipality):
- lbp_daily: pain NRS 0-10 (stored as "pain_nrs"), whether the day's exercises were done,
  and four red-flag questions. Its wording is telemon's own (Apache-2.0, as the code).
  A yes to any red flag is red at once: new bladder or bowel dysfunction, saddle
  anaesthesia and progressive leg weakness (cauda equina syndrome), fever with back pain
  (spinal infection) need same-day action (Finucane et al. 2020, international framework
  for red flags for potential serious spinal pathologies, JOSPT 50(7):350-372).
- startback: STarT Back Screening Tool, 9 items (Hill et al. 2008, Arthritis Rheum
  59(5):632-641). Items 1-8 agree (true, 1 point) / disagree (false, 0). Item 9, how
  bothersome the pain was in the last 2 weeks, is rated not at all / slightly /
  moderately / very much / extremely and dichotomised: "very much" and "extremely" score 1
  (Hill 2008; Keele University's scoring guide). Total <= 3: low risk; total >= 4 and
  psychosocial subscale (items 5-9) <= 3: medium; subscale >= 4: high. Stored as
  startback_total, startback_psychosocial and startback_risk (0 low, 1 medium, 2 high).
  Copyright Keele University, free for clinical use: no wording shipped.
- rmdq: Roland-Morris Disability Questionnaire, 24 yes/no items, score = the number of yes
  answers, 0-24 (Roland & Morris 1983, Spine 8(2):141-144); stored as rmdq_score.
  Copyrighted wording: not shipped.

Default limits (overridable per patient and per organisation): only startback_risk, yellow
above 1 (the high-risk group, whom Hill et al. 2011, STarT Back trial, Lancet 378:1560-71,
treat differently: psychologically informed physiotherapy). Pain, disability, steps and
adherence have no fixed limits: they are judged against the patient's own baseline.

Trend rules (each yellow; the minimal important changes from the Ostelo et al. 2008
consensus, Spine 33(1):90-94: pain NRS 2 points, Roland-Morris 5 points):
- pain_worsening: every pain answer of the last 3 days at least 2 points above the mean of
  the 7 days before them, for at least 36 h (three daily answers in a row, or two with a
  day missed between).
- rmdq_worsening: a Roland-Morris score at least 5 points above the best (lowest) of the
  patient's earlier scores of the last 90 days.
- steps_drop: three daily step counts in a row below the patient's own control band,
  mean - 2 SD of the 14 days before them (statistical process control; Shewhart's 2-sigma
  warning limit). At least 7 days of counts are needed first.
- exercise_low: exercise adherence below the threshold on every reading for at least 36 h
  (three days in a row). The threshold is the yellow-low limit in force for
  exercise_adherence when one is set (the patient's, else the organisation's), else 50 %
  (half the prescribed exercise; a telemon choice, no published cut-off).

Schedule: the daily questionnaire (its pain_nrs) by 20:00 local time: the day's pain is
rated in the evening, before bed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time, timedelta
from decimal import Decimal

import numpy as np

from telemon import __version__, dsp
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

CODES = ("pain_nrs", "rmdq_score", "startback_total", "startback_psychosocial",
         "startback_risk", "steps", "exercise_adherence")

# --- questionnaires -----------------------------------------------------------------------

RED_FLAG = {True: Triage.RED}

LBP_DAILY = Questionnaire(
    id="lbp_daily", version="1", title="Back pain today",
    items=(
        Item("pain_nrs", "integer", low=0, high=10,
             text="How bad was your back pain today, from 0 (no pain) to 10 (the worst pain "
                  "imaginable)?"),
        Item("exercise_done", "boolean", text="Did you do today's exercises?"),
        Item("bladder_bowel_new", "boolean", significance=RED_FLAG,
             text="Have you had new problems holding or passing urine or stools?"),
        Item("saddle_numbness", "boolean", significance=RED_FLAG,
             text="Is there new numbness around your bottom or genitals?"),
        Item("leg_weakness_progressive", "boolean", significance=RED_FLAG,
             text="Is weakness in one or both legs getting worse?"),
        Item("fever", "boolean", significance=RED_FLAG,
             text="Have you had a fever (38 °C or more) today?"),
    ),
    score=lambda answers: {"pain": Decimal(answers["pain_nrs"])},
    scores={"pain": "pain_nrs"},
    source="telemon's own items (Apache-2.0); red flags: Finucane et al. 2020, JOSPT "
           "50(7):350-372",
)

STARTBACK_ITEMS = tuple(f"sb_{n}" for n in range(1, 10))
PSYCHOSOCIAL_ITEMS = STARTBACK_ITEMS[4:]  # items 5-9 (Hill et al. 2008)
BOTHERSOME = ("not_at_all", "slightly", "moderately", "very_much", "extremely")
BOTHERSOME_SCORING = ("very_much", "extremely")  # item 9 dichotomised (Hill et al. 2008)
LOW, MEDIUM, HIGH = 0, 1, 2  # startback_risk


def startback_points(answers: Mapping[str, AnswerValue]) -> dict[str, int]:
    """Each item's 0 or 1 point: agree scores 1 on items 1-8; item 9 scores 1 when "very
    much" or "extremely" bothersome."""
    points = {item: int(answers[item] is True) for item in STARTBACK_ITEMS[:8]}
    points["sb_9"] = int(answers["sb_9"] in BOTHERSOME_SCORING)
    return points


def score_startback(answers: Mapping[str, AnswerValue]) -> dict[str, Decimal]:
    """Total, psychosocial subscale and risk group (Hill et al. 2008): total <= 3 low;
    otherwise subscale <= 3 medium, >= 4 high."""
    points = startback_points(answers)
    total = sum(points.values())
    psychosocial = sum(points[item] for item in PSYCHOSOCIAL_ITEMS)
    risk = LOW if total <= 3 else MEDIUM if psychosocial <= 3 else HIGH
    return {"total": Decimal(total), "psychosocial": Decimal(psychosocial),
            "risk": Decimal(risk)}


STARTBACK = Questionnaire(
    id="startback", version="1", title="STarT Back Screening Tool",
    items=(*(Item(item, "boolean") for item in STARTBACK_ITEMS[:8]),
           Item("sb_9", "choice", options=BOTHERSOME)),
    score=score_startback,
    scores={"total": "startback_total", "psychosocial": "startback_psychosocial",
            "risk": "startback_risk"},
    source="Hill JC et al. 2008, Arthritis Rheum 59(5):632-641; wording copyright Keele "
           "University, free for clinical use: supplied by the municipality",
)

RMDQ_ITEMS = tuple(f"rmdq_{n}" for n in range(1, 25))

RMDQ = Questionnaire(
    id="rmdq", version="1", title="Roland-Morris Disability Questionnaire",
    items=tuple(Item(item, "boolean") for item in RMDQ_ITEMS),
    score=lambda answers: {"total": Decimal(sum(answers[item] is True
                                                for item in RMDQ_ITEMS))},
    scores={"total": "rmdq_score"},
    source="Roland M, Morris R 1983, Spine 8(2):141-144; wording copyrighted: supplied by "
           "the municipality",
)

# --- trend rules ----------------------------------------------------------------------------

PAIN_MIC = 2.0  # NRS points (Ostelo et al. 2008)
RMDQ_MIC = 5.0  # Roland-Morris points (Ostelo et al. 2008)
RMDQ_WINDOW = timedelta(days=90)  # the earlier scores compared with
RECENT = timedelta(days=3)
BASELINE = timedelta(days=7)
MIN_BASELINE = 4  # answers in the baseline week before the pain rule judges anything
SUSTAIN = timedelta(hours=36)  # three daily readings in a row (or two a day apart)
STEPS_BASELINE = timedelta(days=14)
STEPS_K = 2.0  # SD below the mean: a 2-sigma warning limit
STEPS_MIN_BASELINE = 7
STEPS_DAYS = 3
EXERCISE_LOW = 50.0  # % of the prescribed exercise, unless a yellow-low limit is in force


def _at_or_above(limit: float) -> float:
    """The `high` that makes dsp.threshold's strict "above" mean "at or above" `limit`."""
    return float(np.nextafter(limit, -np.inf))


def _run_start(breaks: np.ndarray) -> int:
    """Where the current run begins: the index after the last reading that broke it (NaN
    readings compare False, so they neither break nor extend a run)."""
    found = np.flatnonzero(breaks)
    return int(found[-1]) + 1 if len(found) else 0


def pain_worsening(series: Series) -> list[Finding]:
    """Yellow when the pain answers of the last RECENT days have been at least PAIN_MIC
    above the patient's baseline (the mean of the BASELINE before them) for at least
    SUSTAIN."""
    if not len(series.times):
        return []
    before = np.flatnonzero(series.times <= series.times[-1] - RECENT.total_seconds())
    if not len(before):
        return []  # the first days: no baseline yet
    stats = dsp.rolling(series.times, series.values, window=BASELINE.total_seconds())
    count, baseline = stats.count[before[-1]], stats.mean[before[-1]]
    if count < MIN_BASELINE:
        return []
    first = before[-1] + 1  # the first answer of the recent days
    worse = baseline + PAIN_MIC
    state = dsp.threshold(series.times[first:], series.values[first:],
                          high=_at_or_above(worse), sustain=SUSTAIN.total_seconds())
    if not len(state) or state[-1] != 1:
        return []
    run = first + _run_start(series.values[first:] < worse)
    answered = [i for i in range(run, len(series.times)) if not np.isnan(series.values[i])]
    pain = series.values[answered]
    shown = f"{pain.min():g}" if pain.min() == pain.max() else f"{pain.min():g}-{pain.max():g}"
    hours = (series.times[-1] - series.times[run]) / 3600
    return [Finding(Triage.YELLOW, f"pain NRS {shown} on every answer for {hours:.0f} h "
                    f"({len(answered)} answers), at least {PAIN_MIC:g} points above the "
                    f"baseline {baseline:.1f} (mean of {count:.0f} answers in the week "
                    "before)", tuple(series.ids[i] for i in answered))]


def rmdq_worsening(series: Series) -> list[Finding]:
    """Yellow when the latest Roland-Morris score is at least RMDQ_MIC above the best
    (lowest) earlier score in the rule's window."""
    if len(series.times) < 2 or np.isnan(series.values[-1]):
        return []
    earlier = dsp.rolling(series.times[:-1], series.values[:-1], window=np.inf)
    if earlier.count[-1] == 0:
        return []  # the first score: nothing to compare with
    best = earlier.min[-1]
    latest = series.values[-1]
    if latest - best < RMDQ_MIC:
        return []
    best_id = series.ids[int(np.flatnonzero(series.values[:-1] == best)[-1])]
    return [Finding(Triage.YELLOW, f"Roland-Morris {latest:g}, {latest - best:g} points "
                    f"worse than the best earlier score {best:g} (of {earlier.count[-1]:.0f} "
                    f"in {RMDQ_WINDOW.days} days); the minimal important change is "
                    f"{RMDQ_MIC:g}",
                    (best_id, series.ids[-1]))]


def steps_drop(series: Series) -> list[Finding]:
    """Yellow when the last STEPS_DAYS daily counts are all below the lower limit of the
    patient's own control band (mean - STEPS_K SD of the STEPS_BASELINE before the first
    of them)."""
    counted = np.flatnonzero(~np.isnan(series.values))
    if len(counted) < STEPS_DAYS + STEPS_MIN_BASELINE:
        return []
    band = dsp.spc_band(series.times, series.values, window=STEPS_BASELINE.total_seconds(),
                        k=STEPS_K, min_count=STEPS_MIN_BASELINE)
    last = counted[-STEPS_DAYS:]
    lower = band.lower[last[0]]
    if np.isnan(lower) or not np.all(series.values[last] < lower):
        return []
    steps = ", ".join(f"{v:.0f}" for v in series.values[last])
    return [Finding(Triage.YELLOW, f"steps per day {steps}: {STEPS_DAYS} counts in a row below "
                    f"the patient's usual range (mean {band.mean[last[0]]:.0f} - "
                    f"{STEPS_K:g} SD = {lower:.0f}, {band.count[last[0]]:.0f} days)",
                    tuple(series.ids[i] for i in last))]


def exercise_low(series: Series) -> list[Finding]:
    """Yellow when exercise adherence has been below the threshold (the yellow-low limit in
    force, else EXERCISE_LOW) on every reading for at least SUSTAIN."""
    if not len(series.times):
        return []
    own = series.limits.yellow_low
    low = EXERCISE_LOW if own is None else float(own)
    state = dsp.threshold(series.times, series.values, low=low,
                          sustain=SUSTAIN.total_seconds())
    if state[-1] != -1:
        return []
    run = _run_start(series.values >= low)
    hours = (series.times[-1] - series.times[run]) / 3600
    return [Finding(Triage.YELLOW, f"exercise adherence below {low:g} % on every reading for "
                    f"{hours:.0f} h ({len(series.times) - run} readings)", series.ids[run:])]


# --- the nurse's summary ------------------------------------------------------------------

RISK_GROUPS = {LOW: "low", MEDIUM: "medium", HIGH: "high"}


def summarise(latest: Mapping[str, float]) -> str:
    """One line for the nurse: the latest pain, disability, screening, steps and exercise."""
    parts = []
    if "pain_nrs" in latest:
        parts.append(f"pain NRS {latest['pain_nrs']:g}/10")
    if "rmdq_score" in latest:
        parts.append(f"Roland-Morris {latest['rmdq_score']:g}/24")
    if "startback_risk" in latest:
        group = RISK_GROUPS.get(int(latest["startback_risk"]), f"{latest['startback_risk']:g}")
        total = (f" (total {latest['startback_total']:g}/9)" if "startback_total" in latest
                 else "")
        parts.append(f"STarT Back {group} risk{total}")
    if "steps" in latest:
        parts.append(f"{latest['steps']:.0f} steps/day")
    if "exercise_adherence" in latest:
        parts.append(f"exercise {latest['exercise_adherence']:g} %")
    return ", ".join(parts) or "no measurements yet"


MODULE = DiseaseModule(
    name="back_pain",
    version=__version__,
    title="Low back pain",
    codes=CODES,
    default_limits={"startback_risk": LimitSet(yellow_high=Decimal(MEDIUM))},
    schedule=Schedule(codes=("pain_nrs",), deadline=time(20, 0)),
    summarise=summarise,
    rules=(
        Rule("pain_worsening", "pain NRS >= 2 points above the own baseline on every answer "
             "for 3 days (minimal important change, Ostelo 2008)", ("pain_nrs",),
             pain_worsening, window=RECENT + BASELINE + timedelta(days=1)),
        Rule("rmdq_worsening", "Roland-Morris >= 5 points above the best score of 90 days "
             "(minimal important change, Ostelo 2008)", ("rmdq_score",), rmdq_worsening,
             window=RMDQ_WINDOW),
        Rule("steps_drop", "3 daily step counts below the own 14-day mean - 2 SD "
             "(statistical process control)", ("steps",), steps_drop,
             window=STEPS_BASELINE + timedelta(days=STEPS_DAYS + 1)),
        Rule("exercise_low", "exercise adherence below 50 % (or the patient's limit) for 3 "
             "days in a row", ("exercise_adherence",), exercise_low,
             window=timedelta(days=7)),
    ),
    questionnaires=(LBP_DAILY, STARTBACK, RMDQ),
    sources=(
        "Hill JC et al. 2008, STarT Back Screening Tool, Arthritis Rheum 59(5):632-641",
        "Hill JC et al. 2011, STarT Back trial, Lancet 378:1560-1571",
        "Roland M, Morris R 1983, Roland-Morris Disability Questionnaire, Spine 8(2):141-144",
        "Ostelo RW et al. 2008, minimal important change for pain and function in low back "
        "pain, Spine 33(1):90-94",
        "Finucane LM et al. 2020, international framework for red flags for potential "
        "serious spinal pathologies, JOSPT 50(7):350-372",
    ),
)


@hookimpl
def register_modules(register):
    register(MODULE)
