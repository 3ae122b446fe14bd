"""The low-back-pain module: its declaration, questionnaire scoring against the published
scoring (STarT Back, Hill et al. 2008; Roland-Morris, Roland & Morris 1983), answer
significance, each trend rule on hand-made series (boundaries, gaps, the first days with no
baseline, time zones), and the real alarm engine on a real database."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pluggy
import pytest
from test_alarms import ingest

from telemon import alarms, config, hookspecs, plugin_manager, store
from telemon.codes import KNOWN
from telemon.models import (
    Answer,
    Enrolment,
    LimitSet,
    Observation,
    QuestionnaireResponse,
    Triage,
)
from telemon.modules import Series
from telemon.plugins.modules import back_pain
from telemon.plugins.modules.back_pain import (
    LBP_DAILY,
    MODULE,
    RMDQ,
    STARTBACK,
    exercise_low,
    pain_worsening,
    rmdq_worsening,
    steps_drop,
)

ORG = "kommune-0999"
CPH = ZoneInfo("Europe/Copenhagen")
DAY = 86400.0


def series(code, values, times=None, limits=None):
    """A hand-made daily series (08:00 UTC from 2026-03-02 unless times are given)."""
    limits = limits or LimitSet()
    if times is None:
        start = datetime(2026, 3, 2, 8, tzinfo=UTC).timestamp()
        times = [start + i * DAY for i in range(len(values))]
    return Series(patient="p-0001", code=code, times=np.array(times, dtype=np.float64),
                  values=np.array(values, dtype=np.float64),
                  ids=tuple(f"{code}-{i}" for i in range(len(values))), limits=limits)


# --- the declaration ------------------------------------------------------------------------

def test_the_declaration_is_valid_and_cites_its_sources():
    assert MODULE.problems() == []
    assert MODULE.schedule.codes == ("pain_nrs",)
    assert MODULE.schedule.deadline == time(20, 0)
    assert {q.id for q in MODULE.questionnaires} == {"lbp_daily", "startback", "rmdq"}
    assert any("Hill" in s for s in MODULE.sources) and any("Ostelo" in s for s in MODULE.sources)
    assert all(rule.description for rule in MODULE.rules)


def test_the_plugin_registers_the_module_through_its_hook():
    pm = pluggy.PluginManager("telemon")
    pm.add_hookspecs(hookspecs)
    pm.register(back_pain, name="back_pain")
    registered = []
    pm.hook.register_modules(register=registered.append)
    assert registered == [MODULE]


def test_new_measures_have_telemon_or_cited_codes_and_ucum_units():
    assert KNOWN["pain_nrs"].code.code == "72514-3" and not KNOWN["pain_nrs"].verified
    assert KNOWN["steps"].danish == ("urn:oid:1.2.208.184.100.8", "MCS88192")
    assert KNOWN["steps"].unit == "/d"  # the eHealth obs-code-to-ucum concept map
    assert KNOWN["rmdq_score"].code.system == "urn:telemon:measure"
    assert {KNOWN[c].unit for c in ("rmdq_score", "startback_total", "startback_risk")} == {
        "{score}"}


# --- questionnaires -----------------------------------------------------------------------

def startback_answers(agree=(), bothersome="slightly"):
    """STarT Back answers: the items (1-8) agreed with, and item 9."""
    return {f"sb_{n}": n in agree for n in range(1, 9)} | {"sb_9": bothersome}


@pytest.mark.parametrize("agree, bothersome, total, psychosocial, group", [
    ((), "not_at_all", 0, 0, 0),
    ((1, 2, 3), "moderately", 3, 0, 0),  # total 3: low (<= 3); "moderately" scores 0
    ((1, 2), "very_much", 3, 1, 0),  # item 9 "very much" scores 1
    ((1, 2, 3, 4), "slightly", 4, 0, 1),  # total 4, subscale 0: medium
    ((1, 5, 6, 7), "not_at_all", 4, 3, 1),  # total 4, subscale 3: medium
    ((1, 2, 3, 4, 5, 6, 7), "slightly", 7, 3, 1),  # high total, subscale 3: still medium
    ((5, 6, 7), "extremely", 4, 4, 2),  # subscale 4 (items 5-7 + 9): high
    ((5, 6, 7, 8), "moderately", 4, 4, 2),
    (range(1, 9), "extremely", 9, 5, 2),
])
def test_startback_scores_and_risk_groups_follow_hill_2008(agree, bothersome, total,
                                                           psychosocial, group):
    answers = startback_answers(agree, bothersome)
    assert STARTBACK.problems(answers) == []
    assert STARTBACK.score(answers) == {"total": Decimal(total),
                                        "psychosocial": Decimal(psychosocial),
                                        "risk": Decimal(group)}


def test_startback_refuses_answers_outside_its_options():
    answers = startback_answers() | {"sb_9": "very", "sb_1": "yes"}
    assert STARTBACK.problems(answers) == [
        "sb_1: expected true or false",
        "sb_9: 'very' is not one of not_at_all, slightly, moderately, very_much, extremely"]
    assert all(item.text == "" for item in STARTBACK.items)  # licensed wording not shipped


@pytest.mark.parametrize("yes, score", [((), 0), ((1, 5, 9, 24), 4), (range(1, 25), 24)])
def test_roland_morris_counts_the_yes_answers(yes, score):
    answers = {f"rmdq_{n}": n in yes for n in range(1, 25)}
    assert RMDQ.problems(answers) == []
    assert RMDQ.score(answers) == {"total": Decimal(score)}


def test_roland_morris_needs_all_24_answers():
    answers = {f"rmdq_{n}": False for n in range(1, 24)}
    assert RMDQ.problems(answers) == ["rmdq_24: not answered"]


def daily(pain=3, **flags):
    return {"pain_nrs": pain, "exercise_done": True, "bladder_bowel_new": False,
            "saddle_numbness": False, "leg_weakness_progressive": False, "fever": False} | flags


@pytest.mark.parametrize("flag", ["bladder_bowel_new", "saddle_numbness",
                                  "leg_weakness_progressive", "fever"])
def test_each_red_flag_answer_is_red(flag):
    answers = daily(**{flag: True})
    assert [(item.id, level) for item, level in LBP_DAILY.significance(answers)] == [
        (flag, Triage.RED)]


def test_an_ordinary_day_has_no_significant_answer_and_scores_the_pain():
    assert LBP_DAILY.significance(daily(pain=8, exercise_done=False)) == []
    assert LBP_DAILY.score(daily(pain=8)) == {"pain": Decimal(8)}
    assert LBP_DAILY.problems(daily(pain=11)) == ["pain_nrs: 11 is outside 0..10"]
    assert all(item.text for item in LBP_DAILY.items)  # telemon's own wording


def test_summary_line_has_units():
    assert MODULE.summarise({"pain_nrs": 6, "rmdq_score": 11, "startback_risk": 2,
                             "startback_total": 6, "steps": 4210.0,
                             "exercise_adherence": 40}) == (
        "pain NRS 6/10, Roland-Morris 11/24, STarT Back high risk (total 6/9), "
        "4210 steps/day, exercise 40 %")
    assert MODULE.summarise({}) == "no measurements yet"


def test_default_limits_flag_only_the_high_risk_group():
    limits = MODULE.default_limits["startback_risk"]
    assert [limits.classify(Decimal(g)) for g in (0, 1, 2)] == [
        Triage.GREEN, Triage.GREEN, Triage.YELLOW]
    assert set(MODULE.default_limits) == {"startback_risk"}


# --- pain_worsening ----------------------------------------------------------------------------

def test_pain_two_points_above_baseline_for_three_days_is_yellow():
    (finding,) = pain_worsening(series("pain_nrs", [3] * 7 + [5, 5, 5]))
    assert finding.severity == Triage.YELLOW
    assert finding.observations == ("pain_nrs-7", "pain_nrs-8", "pain_nrs-9")
    assert finding.message == ("pain NRS 5 on every answer for 48 h (3 answers), at least 2 "
                               "points above the baseline 3.0 (mean of 7 answers in the week "
                               "before)")


@pytest.mark.parametrize("values", [
    [3] * 7 + [4, 4, 4],  # +1: below the minimal important change
    [3, 4, 3, 4, 3, 4, 4, 5, 5, 5],  # baseline 25/7 = 3.57: +1.43
    [3] * 7 + [5, 5],  # 24 h: not sustained yet
    [3] * 7 + [5, 4, 5],  # one answer in between below baseline + 2 ends the run
])
def test_pain_rule_is_quiet_below_the_change_or_before_it_is_sustained(values):
    assert pain_worsening(series("pain_nrs", values)) == []


def test_pain_rule_judges_fractional_baselines_at_or_above_two_points():
    week = [3, 4, 3, 4, 3, 4, 3]  # the 7 answers before the last 3 days: 24/7 = 3.43
    assert pain_worsening(series("pain_nrs", [*week, 5, 5, 5])) == []  # +1.57
    (finding,) = pain_worsening(series("pain_nrs", [*week, 6, 6, 6]))  # +2.57
    assert "baseline 3.4 " in finding.message
    # only the week before counts: the answer 8 days before the last is outside it
    assert len(pain_worsening(series("pain_nrs", [9, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6]))) == 1


def test_pain_rule_needs_a_baseline_week_first():
    assert pain_worsening(series("pain_nrs", [])) == []
    assert pain_worsening(series("pain_nrs", [7, 7, 7])) == []  # the first days
    assert pain_worsening(series("pain_nrs", [2, 2, 2, 7, 7, 7])) == []  # 3 < 4 answers
    assert len(pain_worsening(series("pain_nrs", [2, 2, 2, 2, 7, 7, 7]))) == 1


def test_pain_rule_bridges_a_missed_day_and_a_failed_answer():
    start = datetime(2026, 3, 2, 8, tzinfo=UTC).timestamp()
    times = [start + i * DAY for i in range(7)] + [start + 8 * DAY, start + 10 * DAY]
    (finding,) = pain_worsening(series("pain_nrs", [3] * 7 + [6, 6], times))  # a day missed
    assert finding.observations == ("pain_nrs-7", "pain_nrs-8")
    (finding,) = pain_worsening(series("pain_nrs", [3] * 7 + [6, np.nan, 6]))
    assert finding.observations == ("pain_nrs-7", "pain_nrs-9")  # the NaN is not a reading


@pytest.mark.parametrize("zone", ["Europe/Copenhagen", "America/New_York", "Asia/Tokyo"])
def test_pain_rule_over_a_daylight_saving_change_in_the_patients_zone(zone):
    # answers at 20:00 local time; Europe moves its clocks on 29 March 2026 and New York on
    # 8 March: a 23-hour day in the sustained run must not change the outcome
    local = ZoneInfo(zone)
    first = datetime(2026, 3, 1 if zone == "America/New_York" else 20, 20, 0, tzinfo=local)
    times = [(first + timedelta(days=i)).timestamp() for i in range(10)]
    (finding,) = pain_worsening(series("pain_nrs", [2] * 7 + [5, 5, 5], times))
    assert finding.observations == ("pain_nrs-7", "pain_nrs-8", "pain_nrs-9")


# --- rmdq_worsening -------------------------------------------------------------------------

def test_roland_morris_five_points_above_the_best_earlier_score_is_yellow():
    (finding,) = rmdq_worsening(series("rmdq_score", [12, 8, 11, 13]))
    assert finding.severity == Triage.YELLOW
    assert finding.observations == ("rmdq_score-1", "rmdq_score-3")  # the best, the latest
    assert finding.message.startswith("Roland-Morris 13, 5 points worse than the best earlier "
                                      "score 8 (of 3 in 90 days)")


@pytest.mark.parametrize("values", [[], [20], [8, 12], [8, 12, 12.0], [8, np.nan], [14, 9]])
def test_roland_morris_rule_is_quiet_otherwise(values):
    assert rmdq_worsening(series("rmdq_score", values)) == []


# --- steps_drop ---------------------------------------------------------------------------------

BASELINE_STEPS = [5500.0, 4500.0] * 4 + [5000.0]  # 9 days: mean 5000, SD exactly 500
LOWER = statistics.mean(BASELINE_STEPS) - 2 * statistics.stdev(BASELINE_STEPS)  # 4000


def test_three_days_below_the_own_control_band_is_yellow():
    (finding,) = steps_drop(series("steps", [*BASELINE_STEPS, 3000, 2500, 3100]))
    assert finding.severity == Triage.YELLOW
    assert finding.observations == ("steps-9", "steps-10", "steps-11")
    assert finding.message == ("steps per day 3000, 2500, 3100: 3 counts in a row below the "
                               "patient's usual range (mean 5000 - 2 SD = 4000, 9 days)")


def test_steps_on_the_lower_limit_are_not_below_it():
    assert LOWER == 4000
    assert steps_drop(series("steps", [*BASELINE_STEPS, 3999, 3999, 4000])) == []
    assert len(steps_drop(series("steps", BASELINE_STEPS + [3999] * 3))) == 1


@pytest.mark.parametrize("recent", [[3000, 3000, 5000], [3000, 3000]])
def test_steps_rule_needs_three_low_days_in_a_row(recent):
    assert steps_drop(series("steps", BASELINE_STEPS + recent)) == []


def test_steps_rule_needs_a_week_of_counts_and_skips_failed_ones():
    assert steps_drop(series("steps", [5000.0] * 6 + [1000, 1000, 1000])) == []
    (finding,) = steps_drop(series("steps", [4800.0, 5200] * 4 + [1000, np.nan, 1000, 1000]))
    assert finding.observations == ("steps-8", "steps-10", "steps-11")


# --- exercise_low -----------------------------------------------------------------------------

def test_exercise_adherence_below_half_for_three_days_is_yellow():
    (finding,) = exercise_low(series("exercise_adherence", [90, 100, 40, 20, 0]))
    assert finding.observations == ("exercise_adherence-2", "exercise_adherence-3",
                                    "exercise_adherence-4")
    assert finding.message == ("exercise adherence below 50 % on every reading for 48 h "
                               "(3 readings)")


@pytest.mark.parametrize("values", [[], [40, 40], [40, 50, 40], [50, 50, 50], [40, 60, 40, 40]])
def test_exercise_rule_is_quiet_on_or_above_the_threshold_or_for_fewer_days(values):
    assert exercise_low(series("exercise_adherence", values)) == []


def test_exercise_rule_uses_the_patients_own_yellow_low_limit():
    own = LimitSet(yellow_low=Decimal(70))
    assert len(exercise_low(series("exercise_adherence", [60, 60, 60], limits=own))) == 1
    assert exercise_low(series("exercise_adherence", [60, 60, 60])) == []


# --- the engine -------------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def enrol(db, patient, timezone="Europe/Copenhagen", enrolled=T0 - timedelta(days=30)):
    """A patient of the organisation monitored with back_pain (no personal data)."""
    with store.transaction(db):
        db["patients"].insert({"id": patient, "organisation": ORG,
                               "display_name": f"Test Patient {patient[-1]}",
                               "timezone": timezone, "created": store.utc_text(enrolled)})
        store.store_record(db, Enrolment(patient=patient, organisation=ORG,
                                         modules=("back_pain",), gateways=("gw-1",),
                                         enrolled=enrolled))
        store.audit(db, actor="test", action="patient.add", patient=patient)


@pytest.fixture
def engine(tmp_path):
    registry = plugin_manager.Registry(modules={"back_pain": MODULE})
    loaded, problems = config.validate(
        {"role": "central", "organisation": ORG, "broker": {"url": "mqtt://127.0.0.1:1"},
         "storage": {"path": str(tmp_path)}, "modules": {"back_pain": {"enabled": True}}},
        registry)
    assert problems == []
    db = store.open_database(tmp_path / "central.db")
    engine = alarms.AlarmEngine(db, loaded, registry.modules)
    yield engine
    db.close()


def response(id_, questionnaire, answers, at, patient="p-0001"):
    return QuestionnaireResponse(id=id_, patient=patient, gateway="gw-1",
                                 questionnaire=questionnaire, version="1", authored=at,
                                 answers=tuple(Answer(k, v) for k, v in answers.items()))


def submit(engine, responses=(), observations=(), now=None):
    """Store and evaluate as the central does: one transaction per group."""
    return ingest(engine, observations, responses, now)


def unresolved(db):
    return {(a.patient, a.rule): a for a in (store.get_alarm(db, r[0]) for r in db.execute(
        "SELECT id FROM alarms WHERE state != 'resolved' ORDER BY raised"))}


def test_a_red_flag_answer_raises_red_at_once_and_the_pain_is_stored(engine):
    enrol(engine.db, "p-0001")
    submit(engine, [response("qr-1", "lbp_daily", daily(pain=4, saddle_numbness=True), T0)])
    found = unresolved(engine.db)
    alarm = found[("p-0001", "answers.lbp_daily")]
    assert (alarm.severity, alarm.observations) == ("red", ("qr-1",))
    assert alarm.message == "Back pain today: saddle_numbness = True"
    (pain,) = alarms.load_series(engine.db, "p-0001", "pain_nrs", since=T0 - timedelta(1),
                                 limits=LimitSet()).values
    assert pain == 4.0


def test_a_pain_diary_worsening_by_two_points_raises_pain_worsening(engine):
    enrol(engine.db, "p-0001")
    evening = datetime(2026, 3, 2, 19, 0, tzinfo=UTC)  # 20:00 in Copenhagen
    diary = [response(f"qr-{d}", "lbp_daily", daily(pain=3 if d < 7 else 6),
                      evening + timedelta(days=d)) for d in range(10)]
    for answered in diary[:9]:
        submit(engine, [answered])
    assert ("p-0001", "pain_worsening") not in unresolved(engine.db)  # two high days
    submit(engine, diary[9:])
    alarm = unresolved(engine.db)[("p-0001", "pain_worsening")]
    assert alarm.severity == "yellow" and alarm.code == "pain_nrs"
    assert len(alarm.observations) == 3  # the three derived pain observations
    assert "above the baseline 3.0" in alarm.message


def test_a_high_risk_startback_is_yellow_by_the_module_default(engine):
    enrol(engine.db, "p-0001")
    answers = startback_answers((5, 6, 7, 8), "extremely")
    submit(engine, [response("qr-sb", "startback", answers, T0)])
    alarm = unresolved(engine.db)[("p-0001", "limits.startback_risk")]
    assert alarm.severity == "yellow"
    assert alarm.message == ("STarT Back risk group (0 low, 1 medium, 2 high) 2 {score} above "
                             "the yellow limit 1 {score} (module limits)")


def test_steps_and_exercise_readings_drive_their_rules(engine):
    enrol(engine.db, "p-0001")
    def reading(key, i, value):
        return Observation(id=f"{key}-{i}", patient="p-0001", device="dev-1", gateway="gw-1",
                           code=KNOWN[key].code, unit=KNOWN[key].unit, value=Decimal(value),
                           effective=T0 + timedelta(days=i))
    steps = [reading("steps", i, v) for i, v in enumerate([4600, 5400] * 7 + [2000] * 3)]
    adherence = [reading("exercise_adherence", i, v) for i, v in enumerate([80, 30, 20, 10])]
    for day in range(17):
        now = T0 + timedelta(days=day, minutes=1)
        submit(engine, observations=[o for o in steps + adherence
                                     if o.effective == T0 + timedelta(days=day)], now=now)
    found = unresolved(engine.db)
    assert found[("p-0001", "steps_drop")].observations == ("steps-14", "steps-15", "steps-16")
    assert found[("p-0001", "exercise_low")].observations == (
        "exercise_adherence-1", "exercise_adherence-2", "exercise_adherence-3")


def test_the_daily_questionnaire_is_due_by_20_00_in_the_patients_own_zone(engine):
    # Monday 2 March: p-0001 (Copenhagen) and p-0003 (New York) do not answer; p-0002
    # (New York) answers at 19:30 local, which is already Tuesday 00:30 UTC. Enrolled on
    # Sunday, so Monday's is the first daily answer due.
    enrolled = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    enrol(engine.db, "p-0001", enrolled=enrolled)
    enrol(engine.db, "p-0002", timezone="America/New_York", enrolled=enrolled)
    enrol(engine.db, "p-0003", timezone="America/New_York", enrolled=enrolled)
    answered_ny = datetime(2026, 3, 2, 19, 30, tzinfo=ZoneInfo("America/New_York"))
    submit(engine, [response("qr-ny", "lbp_daily", daily(), answered_ny, patient="p-0002")])
    cph_deadline = datetime(2026, 3, 2, 20, 0, tzinfo=CPH)
    with store.transaction(engine.db):
        engine.directory.refresh()
        engine.tick(cph_deadline - timedelta(minutes=1))
        assert unresolved(engine.db) == {}  # before the deadline
        engine.tick(cph_deadline + timedelta(minutes=1))
    (missing,) = unresolved(engine.db).values()
    assert (missing.patient, missing.rule) == ("p-0001", "missing")
    assert missing.message == "no Pain (NRS 0-10) by the deadline 2026-03-02 20:00 CET"
    ny_deadline = datetime(2026, 3, 2, 20, 0, tzinfo=ZoneInfo("America/New_York"))
    with store.transaction(engine.db):
        engine.tick(ny_deadline - timedelta(minutes=1))
        assert ("p-0003", "missing") not in unresolved(engine.db)
        engine.tick(ny_deadline + timedelta(minutes=1))
    found = unresolved(engine.db)
    assert found[("p-0003", "missing")].message == (
        "no Pain (NRS 0-10) by the deadline 2026-03-02 20:00 EST")
    assert ("p-0002", "missing") not in found  # answered in time, locally
