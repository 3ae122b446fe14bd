"""The COPD module: CAT, mMRC and daily-question scoring and significance, the summary line,
each trend rule on hand-made series (boundaries, gaps, first days without a baseline, NaN),
and the real alarm engine on a real database (readings and answers in, alarms out)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from test_alarms import T0, central_config, enrol, reading, unresolved
from test_alarms import ingest as evaluate

from telemon import alarms, plugin_manager, store
from telemon.codes import KNOWN, TELEMON
from telemon.models import Answer, LimitSet, QuestionnaireResponse, Triage
from telemon.modules import Series
from telemon.plugins.modules.copd import (
    CAT,
    COPD_DAILY,
    MMRC,
    MODULE,
    cat_band,
    cat_worsening,
    past_own_baseline,
    pulse_rising,
)

DAY0 = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)


def series(code, days_and_values):
    """A Series of `code` with readings at DAY0 + the given (fractional) days."""
    times = np.array([(DAY0 + timedelta(days=d)).timestamp() for d, _ in days_and_values])
    values = np.array([v for _, v in days_and_values], dtype=np.float64)
    return Series("p-0001", code, times, values,
                  tuple(f"o{i}" for i in range(len(times))), LimitSet())


def daily(values, start=0):
    """Daily readings from day `start`."""
    return [(start + i, v) for i, v in enumerate(values)]


RULES = {rule.name: rule for rule in MODULE.rules}


def spo2_below(readings):
    return RULES["spo2_below_baseline"].evaluate(series("spo2", readings))


def fev1_below(readings):
    return RULES["fev1_below_baseline"].evaluate(series("fev1", readings))


# --- declaration, scoring, significance, summary ------------------------------------------------

def test_the_declaration_is_valid_and_every_score_is_a_known_measure():
    assert MODULE.problems() == []
    assert {q.id for q in MODULE.questionnaires} == {"cat", "mmrc", "copd_daily"}
    assert KNOWN["mmrc_grade"].code.system == TELEMON
    assert KNOWN["mmrc_grade"].unit == "{grade}" and KNOWN["mmrc_grade"].plausible == (0, 4)
    assert MODULE.default_limits["cat_score"].classify(Decimal(30)) is Triage.GREEN
    assert MODULE.default_limits["cat_score"].classify(Decimal(31)) is Triage.YELLOW
    assert all(item.text == "" for item in CAT.items)  # copyrighted wording is not shipped


@pytest.mark.parametrize("answers, total, band", [
    ([0] * 8, 0, "low"),
    ([1, 1, 1, 1, 1, 1, 1, 2], 9, "low"),
    ([1, 1, 1, 1, 1, 1, 2, 2], 10, "medium"),
    ([1, 2, 3, 4, 0, 1, 2, 3], 16, "medium"),
    ([3, 3, 3, 3, 2, 2, 2, 2], 20, "medium"),
    ([3, 3, 3, 3, 3, 2, 2, 2], 21, "high"),
    ([4, 4, 4, 4, 4, 4, 3, 3], 30, "high"),
    ([4, 4, 4, 4, 4, 4, 4, 3], 31, "very high"),
    ([5] * 8, 40, "very high"),
])
def test_cat_total_is_the_sum_of_the_items_and_falls_in_its_published_band(answers, total, band):
    answered = {f"cat_{i}": value for i, value in enumerate(answers, start=1)}
    assert CAT.problems(answered) == []
    assert CAT.score(answered) == {"total": Decimal(total)}
    assert cat_band(total) == band


@pytest.mark.parametrize("total", [-1, 40.5, 41])
def test_a_cat_total_outside_0_to_40_has_no_band(total):
    with pytest.raises(ValueError, match=f"CAT total {total:g} is outside 0..40"):
        cat_band(total)


@pytest.mark.parametrize("change, problem", [
    ({"cat_3": 6}, "cat_3: 6 is outside 0..5"),
    ({"cat_3": True}, "cat_3: expected a whole number"),
    ({"cat_9": 1}, "cat_9: not an item of cat"),
])
def test_invalid_cat_answers_are_refused_by_item(change, problem):
    answered = {f"cat_{i}": 2 for i in range(1, 9)} | change
    assert CAT.problems(answered) == [problem]
    del answered["cat_8"]
    assert "cat_8: not answered" in CAT.problems(answered)


@pytest.mark.parametrize("grade", [0, 1, 2, 3, 4])
def test_mmrc_grade_is_stored_as_given(grade):
    assert MMRC.problems({"grade": grade}) == []
    assert MMRC.score({"grade": grade}) == {"grade": Decimal(grade)}
    assert MMRC.scores == {"grade": "mmrc_grade"}


def test_mmrc_grade_outside_0_to_4_is_refused():
    assert MMRC.problems({"grade": 5}) == ["grade: 5 is outside 0..4"]
    assert MMRC.problems({"grade": -1}) == ["grade: -1 is outside 0..4"]


QUIET_DAY = {"more_breathless": False, "sputum_colour": "white", "sputum_more": False,
             "fever": False}


@pytest.mark.parametrize("change, flagged", [
    ({}, []),
    ({"sputum_colour": "clear"}, []),
    ({"more_breathless": True}, [("more_breathless", Triage.YELLOW)]),
    ({"sputum_more": True}, [("sputum_more", Triage.YELLOW)]),
    ({"sputum_colour": "yellow"}, [("sputum_colour", Triage.YELLOW)]),
    ({"sputum_colour": "green"}, [("sputum_colour", Triage.RED)]),
    ({"fever": True}, [("fever", Triage.RED)]),
    ({"more_breathless": True, "sputum_more": True, "sputum_colour": "green"},
     [("more_breathless", Triage.YELLOW), ("sputum_more", Triage.YELLOW),
      ("sputum_colour", Triage.RED)]),
])
def test_daily_answers_are_flagged_by_their_significance(change, flagged):
    answers = QUIET_DAY | change
    assert COPD_DAILY.problems(answers) == []
    assert [(item.id, level) for item, level in COPD_DAILY.significance(answers)] == flagged


def test_daily_answers_outside_their_options_are_refused():
    assert COPD_DAILY.problems(QUIET_DAY | {"sputum_colour": "brown"}) == [
        "sputum_colour: 'brown' is not one of clear, white, yellow, green"]
    assert COPD_DAILY.problems(QUIET_DAY | {"fever": "yes"}) == ["fever: expected true or false"]


def test_the_summary_line_gives_units_the_cat_band_and_the_mmrc_grade():
    latest = {"spo2": 93.0, "pulse": 88.0, "temperature": 37.2, "weight": 71.5, "fev1": 1.12,
              "cat_score": 14.0, "mmrc_grade": 2.0}
    assert MODULE.summarise(latest) == (
        "SpO2 93 %, Pulse rate 88 /min, Body temperature 37.2 Cel, Body weight 71.5 kg, "
        "FEV1 1.12 L, CAT 14 (medium impact), mMRC 2")
    assert MODULE.summarise({"cat_score": 45.0}) == "CAT 45"  # not a CAT total: no band
    assert MODULE.summarise({}) == "no measurements yet"


# --- spo2_below_baseline / fev1_below_baseline ---------------------------------------------------

@pytest.mark.parametrize("today, fires", [(94, False), (93, False), (92, True), (85, True)])
def test_spo2_below_a_flat_baseline_needs_a_drop_of_more_than_2_points(today, fires):
    # a flat week has SD 0: the band alone would flag 94; the 2-point floor decides
    found = spo2_below([*daily([95] * 7), (7, today)])
    assert bool(found) is fires
    if fires:
        (finding,) = found
        assert finding.severity is Triage.YELLOW and finding.observations == ("o7",)
        assert finding.message == (f"SpO2 {today} % below the patient's own 7-day baseline: "
                                   "mean 95 %, limit 93 % (7 readings)")


def test_spo2_below_a_variable_baseline_is_judged_by_mean_minus_1_645_sd():
    baseline = [93, 97, 93, 97, 93, 97, 93]
    limit = np.mean(baseline) - 1.645 * np.std(baseline, ddof=1)  # 91.6, wider than the floor
    assert limit < np.mean(baseline) - 2
    assert spo2_below([*daily(baseline), (7, limit + 0.01)]) == []
    assert len(spo2_below([*daily(baseline), (7, limit - 0.01)])) == 1


@pytest.mark.parametrize("earlier, fires", [(4, False), (5, True)])
def test_spo2_baseline_needs_5_earlier_readings_so_the_first_days_are_silent(earlier, fires):
    assert bool(spo2_below([*daily([95] * earlier), (earlier, 86)])) is fires


def test_spo2_baseline_is_the_last_7_days_only_so_a_gap_silences_it():
    # six days measured, a week away, then a low reading: no baseline in the 7 days before
    assert spo2_below([*daily([95] * 6), (13, 86)]) == []
    # the reading of 7 days ago counts, even with today's taken up to 2 h later in the day
    assert len(spo2_below([*daily([95] * 5), (7 + 1.9 / 24, 86)])) == 1
    assert spo2_below([*daily([95] * 5), (7 + 2.1 / 24, 86)]) == []  # 4 readings left
    assert spo2_below([*daily([95] * 5), (7.5, 86)]) == []


def test_spo2_baseline_skips_failed_readings_and_never_judges_one():
    with_nan = daily([95, 95, float("nan"), 95, 95])
    assert spo2_below([*with_nan, (5, 86)]) == []  # 4 usable readings: no baseline yet
    assert len(spo2_below([*with_nan, (5, 95), (6, 86)])) == 1
    assert spo2_below([*daily([95] * 7), (7, float("nan"))]) == []
    assert spo2_below([]) == []


@pytest.mark.parametrize("today, fires", [(1.36, False), (1.30, True)])
def test_fev1_drop_must_exceed_the_spirometry_repeatability_of_0_15_l(today, fires):
    assert bool(fev1_below([*daily([1.5] * 6), (6, today)])) is fires


def test_fev1_below_a_variable_baseline_is_judged_by_mean_minus_1_645_sd():
    baseline = [1.2, 1.6, 1.2, 1.6, 1.2, 1.6]
    limit = np.mean(baseline) - 1.645 * np.std(baseline, ddof=1)
    assert fev1_below([*daily(baseline), (6, limit + 0.005)]) == []
    (finding,) = fev1_below([*daily(baseline), (6, limit - 0.005)])
    assert finding.message == (f"FEV1 {limit - 0.005:g} L below the patient's own 7-day "
                               f"baseline: mean 1.4 L, limit {limit:.4g} L (6 readings)")


def test_the_baseline_rule_also_watches_a_rise():
    readings = series("weight", [*daily([80.0] * 6), (6, 81.5)])
    assert len(past_own_baseline(readings, side=1, margin=1.0)) == 1
    assert past_own_baseline(readings, side=1, margin=2.0) == []
    assert past_own_baseline(readings, side=-1, margin=1.0) == []


# --- pulse_rising ------------------------------------------------------------------------------

@pytest.mark.parametrize("today, fires", [(89, False), (90, True), (91, True)])
def test_pulse_rising_needs_the_smoothed_pulse_10_above_3_days_before(today, fires):
    # EWMA over 3 readings (alpha 0.5): 70 then `today` smooths to (70 + today) / 2, and the
    # level 3 days before is 70: 90 gives exactly +10
    found = pulse_rising(series("pulse", daily([70] * 4 + [today])))
    assert bool(found) is fires
    if fires:
        (finding,) = found
        assert finding.severity is Triage.YELLOW
        assert finding.observations == ("o1", "o4")  # the reference 3 days before, today
        assert finding.message == (f"resting pulse rising: smoothed {(70 + today) / 2:.0f} "
                                   f"/min, {(today - 70) / 2:.0f} /min above 70 /min 3.0 "
                                   "days earlier")


def test_pulse_rising_catches_a_steady_rise_over_days():
    assert pulse_rising(series("pulse", daily([70, 70, 70, 74, 78]))) == []
    assert len(pulse_rising(series("pulse", daily([70, 70, 70, 74, 78, 82, 86])))) == 1


def test_pulse_rising_is_silent_in_the_first_days():
    assert pulse_rising(series("pulse", daily([70, 70, 110]))) == []  # nothing 3 days back
    assert pulse_rising(series("pulse", [])) == []


def test_pulse_rising_tolerates_one_missed_day_but_not_two():
    # the reading 3 days before is missing; the one 4 days before is the reference
    one_missed = [(0, 70), (2, 70), (3, 70), (4, 110)]
    (finding,) = pulse_rising(series("pulse", one_missed))
    assert finding.message.endswith("above 70 /min 4.0 days earlier")
    two_missed = [(0, 70), (3, 70), (4, 70), (5, 110)]  # 3 and 4 days before both missing
    assert pulse_rising(series("pulse", two_missed)) == []


def test_pulse_rising_tolerates_a_reading_taken_a_little_earlier():
    early = [(0, 70), (1, 70), (2, 70), (3, 70), (4 - 1.5 / 24, 110)]  # 90 min earlier
    assert len(pulse_rising(series("pulse", early))) == 1


@pytest.mark.parametrize("first", [27, 28])  # 3 days across the change to summer time
def test_pulse_rising_at_the_same_local_hour_across_summer_time(first):
    copenhagen = ZoneInfo("Europe/Copenhagen")
    mornings = [datetime(2026, 3, first, 8, tzinfo=copenhagen) + timedelta(days=d)
                for d in range(5)]  # aware + timedelta: the same local hour each day
    readings = Series("p-0001", "pulse", np.array([m.timestamp() for m in mornings]),
                      np.array([70.0, 70.0, 70.0, 70.0, 90.0]),
                      tuple(f"o{i}" for i in range(5)), LimitSet())
    (finding,) = pulse_rising(readings)
    assert (readings.times[4] - readings.times[1]) / 3600 == (71 if first == 27 else 72)
    assert finding.observations == ("o1", "o4")  # the same local morning 3 days back


def test_pulse_rising_never_judges_a_failed_reading_nor_compares_with_one():
    nan = float("nan")
    assert pulse_rising(series("pulse", daily([70, 70, 70, 70, nan]))) == []
    # the reading 3 days before failed: the one before it (4 days) is the reference
    assert len(pulse_rising(series("pulse", daily([70, nan, 70, 70, 110])))) == 1


# --- cat_worsening -------------------------------------------------------------------------------

def weekly(values):
    return [(7 * i, v) for i, v in enumerate(values)]


@pytest.mark.parametrize("scores, fires", [
    ([14], False),               # the first score
    ([10, 12], False),           # one earlier score: no baseline yet
    ([10, 10, 11], False),       # +1
    ([10, 10, 12], True),        # +2, the MCID
    ([10, 11, 12], False),       # +1.5 above the mean 10.5
    ([10, 11, 13], True),        # +2.5
    ([20, 20, 14], False),       # better
])
def test_cat_worsening_needs_2_points_above_the_mean_of_the_earlier_scores(scores, fires):
    found = cat_worsening(series("cat_score", weekly(scores)))
    assert bool(found) is fires
    if fires:
        (finding,) = found
        assert finding.severity is Triage.YELLOW
        assert finding.observations == (f"o{len(scores) - 1}",)


def test_cat_worsening_baseline_is_the_last_8_weeks():
    assert cat_worsening(series("cat_score", [(0, 10), (7, 10), (70, 16)])) == []
    assert len(cat_worsening(series("cat_score", [(0, 10), (7, 10), (55, 16)]))) == 1
    assert cat_worsening(series("cat_score", weekly([10, 10, float("nan")]))) == []


# --- the engine on a real database ---------------------------------------------------------------

@pytest.fixture
def engine(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db, modules=("copd",), enrolled=T0 - timedelta(days=30))
    engine = alarms.AlarmEngine(db, central_config(tmp_path), plugin_manager.get()[1].modules)
    yield engine
    db.close()


def response(id_, questionnaire, answers, authored):
    return QuestionnaireResponse(id=id_, patient="p-0001", gateway="gw-1",
                                 questionnaire=questionnaire, version="1", authored=authored,
                                 answers=tuple(Answer(k, v) for k, v in answers.items()))


def rules_alarmed(db):
    return {a.rule: a.severity for a in unresolved(db)}


def test_readings_and_answers_through_the_engine_raise_the_copd_alarms(engine):
    db = engine.db
    days = [T0 + timedelta(days=d) for d in range(9)]
    week = [reading(d, "spo2", v, at=days[d]) for d, v in enumerate(["95", "96"] * 3 + ["95"])]
    week += [reading(d, "pulse", "72", at=days[d]) for d in range(7)]
    evaluate(engine, week)
    assert rules_alarmed(db) == {}  # a stable week: green

    # 92 %: inside the fixed limits (yellow below 90), but 3.4 points below the own baseline
    evaluate(engine, [reading(7, "spo2", "92", at=days[7])])
    (alarm,) = unresolved(db)
    assert (alarm.rule, alarm.severity, alarm.code) == ("spo2_below_baseline", "yellow", "spo2")
    assert alarm.observations == ("p-0001-spo2-7",)
    assert "below the patient's own 7-day baseline" in alarm.message

    # CAT 12, 13, then 15: the derived scores are observations the trend rule judges
    cat = [response(f"qr-cat-{i}", "cat", {f"cat_{k}": v for k, v in
                                          enumerate([2, 2, 2, 2, 1, 1, 1, 1 + i], 1)}, days[i])
           for i in (0, 1)]
    evaluate(engine, responses=cat)
    assert "cat_worsening" not in rules_alarmed(db)
    worse = response("qr-cat-8", "cat", {f"cat_{k}": v for k, v in
                                         enumerate([3, 2, 2, 2, 2, 1, 1, 2], 1)}, days[8])
    evaluate(engine, responses=[worse])
    scores = alarms.load_series(db, "p-0001", "cat_score", since=T0, limits=LimitSet())
    assert scores.values.tolist() == [12.0, 13.0, 15.0]
    found = {a.rule: a for a in unresolved(db)}
    assert found["cat_worsening"].severity == "yellow"
    assert found["cat_worsening"].message.startswith("CAT 15 is 2.5 points above the mean 12.5")

    # green sputum: the daily answers raise at once, at their worst significance
    evaluate(engine, responses=[response("qr-daily-8", "copd_daily",
                                         QUIET_DAY | {"sputum_colour": "green",
                                                      "more_breathless": True}, days[8])])
    found = {a.rule: a for a in unresolved(db)}
    assert found["answers.copd_daily"].severity == "red"
    assert found["answers.copd_daily"].message == (
        "COPD daily questions: more_breathless = True, sputum_colour = green")
    assert alarms.triage(db, ["p-0001"]) == {"p-0001": Triage.RED}


def test_a_very_high_cat_total_is_yellow_by_the_module_limit(engine):
    all_fours = {f"cat_{k}": 4 for k in range(1, 9)}  # 32: "very high impact"
    evaluate(engine, responses=[response("qr-cat-1", "cat", all_fours, T0)])
    assert rules_alarmed(engine.db) == {"limits.cat_score": "yellow"}
