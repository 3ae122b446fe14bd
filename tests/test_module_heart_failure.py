"""The heart-failure module: limits, symptom significance, the summary line, each weight rule
on hand-made series (boundaries, missing days, summer time, first days, NaN), AF screening on
synthetic and real RR intervals, and the real alarm engine on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import SHARED_DATA
from test_alarms import ORG, T0, central_config, enrol, reading, unresolved
from test_alarms import ingest as evaluate

from telemon import alarms, dsp, plugin_manager, store
from telemon.codes import KNOWN
from telemon.models import Answer, Component, LimitSet, Observation, QuestionnaireResponse, Triage
from telemon.modules import Series
from telemon.plugins.modules.heart_failure import HF_DAILY, MODULE, af_screen, weight_macd

COPENHAGEN = ZoneInfo("Europe/Copenhagen")
DAY0 = datetime(2026, 3, 2, 7, 0, tzinfo=COPENHAGEN)
RULES = {rule.name: rule for rule in MODULE.rules}


def series(code, times, values):
    return Series("p-0001", code, np.array([t.timestamp() for t in times], dtype=np.float64),
                  np.array(values, dtype=np.float64), tuple(f"o{i}" for i in range(len(times))),
                  LimitSet())


def weights(days_and_kg, start=DAY0):
    """Weighings at `start` + the given (fractional) days."""
    return series("weight", [start + timedelta(days=d) for d, _ in days_and_kg],
                  [kg for _, kg in days_and_kg])


def each_morning(kgs, first=None):
    """One weighing a day at 07:00 local time, Copenhagen (so across summer time too), from
    the day `first` (default DAY0's)."""
    first = first or DAY0.date()
    times = [datetime.combine(first + timedelta(days=i), time(7), COPENHAGEN)
             for i in range(len(kgs))]
    return series("weight", times, kgs)


def gain_3(s):
    return RULES["weight_gain_3_days"].evaluate(s)


def gain_1(s):
    return RULES["weight_gain_1_day"].evaluate(s)


def above_baseline(s):
    return RULES["weight_above_baseline"].evaluate(s)


# --- declaration, limits, symptoms, summary -----------------------------------------------------

def test_the_declaration_is_valid():
    assert MODULE.problems() == []
    assert MODULE.name == "heart_failure"
    assert MODULE.schedule.codes == ("weight", "bp")


@pytest.mark.parametrize("code, value, triage", [
    ("bp_sys", 99, Triage.YELLOW), ("bp_sys", 100, Triage.GREEN),
    ("bp_sys", 160, Triage.GREEN), ("bp_sys", 161, Triage.YELLOW),
    ("bp_dia", 59, Triage.YELLOW), ("bp_dia", 60, Triage.GREEN),
    ("bp_dia", 95, Triage.GREEN), ("bp_dia", 96, Triage.YELLOW),
    ("pulse", 49, Triage.YELLOW), ("pulse", 50, Triage.GREEN),
    ("pulse_bp", 100, Triage.GREEN), ("pulse_bp", 101, Triage.YELLOW),
])
def test_default_limits_are_the_telbil_thresholds(code, value, triage):
    assert MODULE.default_limits[code].classify(Decimal(value)) is triage


QUIET_DAY = {"breathless": "none", "ankle_swelling": "none", "orthopnoea": False}


@pytest.mark.parametrize("change, flagged", [
    ({}, []),
    ({"breathless": "exertion"}, []),
    ({"breathless": "rest"}, [("breathless", Triage.RED)]),
    ({"ankle_swelling": "mild"}, [("ankle_swelling", Triage.YELLOW)]),
    ({"ankle_swelling": "marked"}, [("ankle_swelling", Triage.RED)]),
    ({"orthopnoea": True}, [("orthopnoea", Triage.RED)]),
])
def test_symptom_answers_are_flagged_by_their_significance(change, flagged):
    answers = QUIET_DAY | change
    assert HF_DAILY.problems(answers) == []
    assert [(item.id, level) for item, level in HF_DAILY.significance(answers)] == flagged
    assert HF_DAILY.score(answers) == {}


def test_symptom_answers_outside_their_options_are_refused():
    assert HF_DAILY.problems(QUIET_DAY | {"breathless": "lying"}) == [
        "breathless: 'lying' is not one of none, exertion, rest"]
    assert HF_DAILY.problems({"breathless": "none"}) == ["ankle_swelling: not answered",
                                                        "orthopnoea: not answered"]


def test_the_summary_line_gives_weight_blood_pressure_and_pulse_with_units():
    assert MODULE.summarise({"weight": 82.4, "bp_sys": 128.0, "bp_dia": 76.0,
                             "pulse_bp": 72.0}) == (
        "Body weight 82.4 kg, BP 128/76 mm[Hg], Pulse rate (BP monitor) 72 /min")
    assert MODULE.summarise({"bp_sys": 128.0, "pulse": 64.0}) == (
        "Systolic blood pressure 128 mm[Hg], Pulse rate 64 /min")
    assert MODULE.summarise({}) == "no measurements yet"


# --- the rules of thumb -------------------------------------------------------------------------

@pytest.mark.parametrize("today, fires", [(81.99, False), (82.0, False), (82.01, True)])
def test_more_than_2_kg_in_3_days(today, fires):
    found = gain_3(each_morning([80.0, 80.5, 81.0, today]))
    assert bool(found) is fires
    if fires:
        (finding,) = found
        assert finding.severity is Triage.YELLOW and finding.observations == ("o0", "o3")
        assert finding.message == ("weight up 2.01 kg in 3.0 days (80 -> 82.01 kg; rule: more "
                                   "than 2 kg in 3 days)")


def test_weighings_in_5_gram_steps_on_the_boundary_do_not_alarm():
    # 74.1 - 72.1 is 2.0000000000000057 in binary floating point
    assert gain_3(each_morning([72.1, 72.1, 72.1, 74.1])) == []


def test_3_day_rule_tolerates_one_missed_weighing_but_not_two():
    one_missed = weights([(0, 80.0), (2, 80.0), (3, 80.0), (4, 82.5)])
    (finding,) = gain_3(one_missed)
    assert finding.observations == ("o0", "o3")  # 4 days back: the 3-day reference is missing
    two_missed = weights([(0, 80.0), (3, 80.0), (4, 80.0), (5, 82.5)])
    assert gain_3(two_missed) == []


def test_3_day_rule_tolerates_a_weighing_up_to_2_hours_earlier():
    assert len(gain_3(weights([(0, 80.0), (1, 80.0), (2, 80.0), (3 - 1.9 / 24, 82.5)]))) == 1


@pytest.mark.parametrize("first", [
    datetime(2026, 3, 27).date(),   # 07:00 CET -> 07:00 CEST on the 30th: 71 h apart
    datetime(2026, 10, 22).date(),  # 07:00 CEST -> 07:00 CET on the 25th: 73 h apart
])
def test_the_rules_of_thumb_hold_across_summer_time(first):
    gained = each_morning([80.0, 80.0, 80.0, 82.5], first=first)
    hours = (gained.times[3] - gained.times[0]) / 3600
    assert hours in (71, 73)
    assert len(gain_3(gained)) == 1
    overnight = each_morning([80.0, 80.0, 80.0, 81.5], first=first)
    assert len(gain_1(overnight)) == 1  # a 23 h or 25 h "day" is still a day


@pytest.mark.parametrize("today, fires", [(81.35, False), (81.36, False), (81.37, True)])
def test_more_than_1_36_kg_in_1_day(today, fires):
    assert bool(gain_1(each_morning([80.0, today]))) is fires


def test_1_day_rule_does_not_stretch_over_a_missed_day():
    assert gain_1(weights([(0, 80.0), (2, 82.0)])) == []
    assert len(gain_1(weights([(0, 80.0), (1, 82.0)]))) == 1


def test_the_rules_of_thumb_are_silent_on_the_first_day_and_never_judge_a_failed_weighing():
    assert gain_3(each_morning([80.0])) == gain_1(each_morning([80.0])) == []
    assert gain_3(each_morning([])) == []
    nan = float("nan")
    assert gain_3(each_morning([80.0, 80.0, 80.0, nan])) == []
    # a failed weighing 3 days back: the one before it is the reference
    (finding,) = gain_3(each_morning([80.0, nan, 80.0, 80.0, 82.5]))
    assert finding.observations == ("o0", "o4")


# --- MACD -------------------------------------------------------------------------------------

def step(before, gain, days_after):
    return each_morning([80.0] * before + [80.0 + gain] * days_after)


def test_macd_catches_a_sustained_step_of_1_3_kg_within_2_days_but_not_1_kg():
    assert weight_macd(step(12, 1.3, 1)) == []
    (finding,) = weight_macd(step(12, 1.3, 2))
    assert finding.severity is Triage.YELLOW and finding.observations == ("o13",)
    assert finding.message.startswith("weight trending up: MACD 0.55 kg above 0.5 kg")
    assert all(weight_macd(step(12, 1.0, n)) == [] for n in range(1, 15))


def first_alarm_day(kg_per_week, weeks=3):
    """The day of a steady gain on which MACD first alarms, or None."""
    kgs = [80.0] * 12 + [80.0 + day * kg_per_week / 7 for day in range(1, 7 * weeks + 1)]
    firing = [bool(weight_macd(each_morning(kgs[:12 + day]))) for day in range(1, 7 * weeks)]
    return firing.index(True) + 1 if any(firing) else None


def test_macd_catches_a_steady_gain_of_2_kg_a_week_on_its_fifth_day():
    assert first_alarm_day(2.0) == 5
    assert first_alarm_day(1.0) is None  # the slow average keeps up: the band's job


def test_macd_threshold_is_strict():
    s = step(12, 1.3, 2)
    m = dsp.macd(s.times, s.values, fast=3, slow=10, signal=5).macd[-1]
    assert len(weight_macd(s, theta=m - 1e-9)) == 1
    assert weight_macd(s, theta=m) == []


def test_macd_is_silent_until_10_weights_and_skips_failed_ones():
    assert weight_macd(step(5, 5.0, 2)) == []  # 7 weighings: no long average yet
    nan = float("nan")
    eleven = [80.0] * 4 + [nan] * 3 + [80.0] * 4 + [86.0]  # 9 usable weighings
    assert weight_macd(each_morning(eleven)) == []
    assert len(weight_macd(each_morning([80.0] * 9 + [86.0]))) == 1
    assert weight_macd(each_morning([80.0] * 12 + [nan])) == []


# --- personalised band --------------------------------------------------------------------------

@pytest.mark.parametrize("today, fires", [(80.9, False), (81.0, False), (81.1, True)])
def test_weight_above_a_flat_baseline_needs_more_than_1_kg(today, fires):
    assert bool(above_baseline(each_morning([80.0] * 7 + [today]))) is fires


def test_weight_above_a_variable_baseline_is_judged_by_mean_plus_1_645_sd():
    baseline = [79.0, 81.0] * 3 + [79.0]
    limit = np.mean(baseline) + 1.645 * np.std(baseline, ddof=1)
    assert limit > np.mean(baseline) + 1.0
    assert above_baseline(each_morning([*baseline, limit - 0.01])) == []
    (finding,) = above_baseline(each_morning([*baseline, limit + 0.01]))
    assert "above the patient's own 7-day baseline" in finding.message


def test_weight_baseline_is_silent_in_the_first_days():
    assert above_baseline(each_morning([80.0] * 4 + [85.0])) == []
    assert len(above_baseline(each_morning([80.0] * 5 + [85.0]))) == 1


# --- AF screening -------------------------------------------------------------------------------

def rr_series(rr):
    """RR intervals as the strap driver delivers them: one reading per beat, at its end."""
    rr = np.asarray(rr, dtype=np.float64)
    ends = np.cumsum(np.nan_to_num(rr, nan=0.8))
    return Series("p-0001", "rr_interval", T0.timestamp() + ends, rr,
                  tuple(f"b{i}" for i in range(len(rr))), LimitSet())


def sinus(n, seed=0):
    """Regular rhythm around 70 /min with respiratory variation."""
    rng = np.random.default_rng(seed)
    return 0.85 + 0.04 * np.sin(2 * np.pi * np.arange(n) / 4.3) + rng.normal(0, 0.006, n)


def irregular(n, seed=0):
    """Irregularly irregular intervals, as in atrial fibrillation."""
    return np.random.default_rng(seed).uniform(0.35, 1.1, n)


def test_irregular_rr_intervals_raise_a_yellow_af_flag():
    (finding,) = af_screen(rr_series(irregular(300)))
    assert finding.severity is Triage.YELLOW
    assert finding.message.startswith("irregular RR intervals, possible atrial fibrillation, "
                                      "over 128 beats: nRMSSD")
    assert finding.observations[-1] == "b299"  # the window ends at the newest beat


def test_regular_rhythm_raises_nothing():
    assert af_screen(rr_series(sinus(300))) == []


def test_af_flag_follows_the_newest_window():
    assert af_screen(rr_series(np.r_[irregular(300), sinus(300)])) == []
    assert len(af_screen(rr_series(np.r_[sinus(300), irregular(300)]))) == 1


def test_af_screening_needs_128_usable_beats():
    assert af_screen(rr_series(irregular(127))) == []
    assert af_screen(rr_series([])) == []
    # NaN and implausible intervals (0.1 s, 4 s: artefact) are not beats: left out
    spoiled = irregular(300)
    spoiled[[50, 120, 250]] = np.nan, 0.1, 4.0
    (finding,) = af_screen(rr_series(spoiled))
    assert finding.observations[-1] == "b299"
    assert af_screen(rr_series(np.r_[irregular(126), [np.nan, 0.1, 4.0]])) == []


def test_ectopic_beats_in_a_regular_rhythm_are_gated_out():
    rr = sinus(300, seed=1)
    rr[7::8] *= 0.65  # a premature beat every 8th...
    rr[8::8] *= 1.35  # ...and its compensatory pause
    assert dsp.af_features(rr, window=128, ectopy=False).nrmssd.min() > 0.1  # looks irregular
    assert af_screen(rr_series(rr)) == []


@pytest.mark.skipif(not (SHARED_DATA / "physionet" / "100.atr").exists(),
                    reason="shared/data/physionet/100.atr (MIT-BIH record 100) is not here")
def test_no_af_flag_on_a_real_sinus_rhythm_record_with_ectopic_beats():
    from telemon.recordings import read_annotations

    beats = read_annotations(SHARED_DATA / "physionet" / "100").beats()
    rr = np.diff(beats) / 360.0  # MIT-BIH record 100: 360 Hz, sinus rhythm with APCs
    assert rr.size > 2000
    flagged = [end for end in range(128, rr.size + 1, 64) if af_screen(rr_series(rr[:end]))]
    assert flagged == []


# --- the engine on a real database ---------------------------------------------------------------

@pytest.fixture
def engine(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db, modules=("heart_failure",), enrolled=T0 - timedelta(days=30))
    registry = plugin_manager.Registry(modules={"heart_failure": MODULE})
    cfg = central_config(tmp_path, registry, modules={"heart_failure": {"enabled": True}})
    assert cfg.organisation == ORG
    engine = alarms.AlarmEngine(db, cfg, {"heart_failure": MODULE})
    yield engine
    db.close()


def blood_pressure(i, systolic, diastolic, at):
    mmhg = KNOWN["bp"].unit
    return Observation(id=f"p-0001-bp-{i}", patient="p-0001", device="dev-2", gateway="gw-1",
                       code=KNOWN["bp"].code, unit=mmhg, effective=at, components=(
                           Component(KNOWN["bp_sys"].code, mmhg, Decimal(systolic)),
                           Component(KNOWN["bp_dia"].code, mmhg, Decimal(diastolic))))


def test_readings_and_answers_through_the_engine_raise_the_heart_failure_alarms(engine):
    db = engine.db
    days = [T0 + timedelta(days=d) for d in range(5)]
    evaluate(engine, [reading(d, "weight", "80.0", at=days[d]) for d in range(4)]
             + [blood_pressure(d, 130, 80, days[d]) for d in range(4)])
    assert unresolved(db) == []

    # +2.5 kg overnight: both rules of thumb; too few weighings yet for the band and MACD
    evaluate(engine, [reading(4, "weight", "82.5", at=days[4]),
                      blood_pressure(4, 170, 80, days[4])])
    found = {a.rule: a for a in unresolved(db)}
    assert {rule: a.severity for rule, a in found.items()} == {
        "weight_gain_3_days": "yellow", "weight_gain_1_day": "yellow",
        "limits.bp_sys": "yellow"}
    assert found["weight_gain_3_days"].observations == ("p-0001-weight-1", "p-0001-weight-4")
    assert found["limits.bp_sys"].message == (
        "Systolic blood pressure 170 mm[Hg] above the yellow limit 160 mm[Hg] (module limits)")

    evaluate(engine, responses=[QuestionnaireResponse(
        id="qr-hf-4", patient="p-0001", gateway="gw-1", questionnaire="hf_daily", version="1",
        authored=days[4], answers=tuple(Answer(k, v) for k, v in (
            QUIET_DAY | {"orthopnoea": True, "ankle_swelling": "mild"}).items()))])
    answers = store.unresolved_alarm(db, "p-0001", "heart_failure", "answers.hf_daily")
    assert answers.severity == "red"
    assert answers.message == ("Heart failure daily questions: ankle_swelling = mild, "
                               "orthopnoea = True")

    # a strap session of irregular beats, delivered as it is measured
    rr = irregular(200)
    ends = days[4] + timedelta(hours=2) + timedelta(seconds=1) * np.cumsum(rr)
    beats = [reading(i, "rr_interval", f"{interval:.3f}", at=end)
             for i, (interval, end) in enumerate(zip(rr, ends, strict=True))]
    evaluate(engine, beats[:100])
    assert store.unresolved_alarm(db, "p-0001", "heart_failure", "af_screen") is None
    evaluate(engine, beats[100:])
    af = store.unresolved_alarm(db, "p-0001", "heart_failure", "af_screen")
    assert af.severity == "yellow" and af.observations[-1] == "p-0001-rr_interval-199"


def test_missing_weight_or_blood_pressure_is_raised_and_resolves_itself(engine):
    # 2026-03-03 12:00 Copenhagen is the deadline; only the weight came that morning
    morning = datetime(2026, 3, 3, 6, 30, tzinfo=UTC)
    evaluate(engine, [reading(1, "weight", "80.0", at=morning)])
    after_deadline = datetime(2026, 3, 3, 11, 5, tzinfo=UTC)
    with store.transaction(engine.db):
        engine.directory.refresh()
        assert engine.tick(after_deadline).raised == 1
    (missing,) = unresolved(engine.db)
    assert missing.rule == "missing"
    assert missing.message == ("no Body weight, Blood pressure by the deadline "
                               "2026-03-03 12:00 CET")
    outcome = evaluate(engine, [blood_pressure(1, 130, 80, after_deadline)])
    assert outcome.resolved == 1 and unresolved(engine.db) == []
