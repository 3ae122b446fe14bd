"""`telemon evaluate` and the evaluation harness (telemon.evaluate): recorded series replayed
through the real alarm engine on a real (temporary) SQLite database, deadlines in the
patients' time zone, per-patient limits from a file, bad lines reported by number, and the
cohort table checked against hand-counted cohorts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from telemon import cohorts, config, dsp, evaluate, plugin_manager, sim, wire
from telemon.codes import KNOWN
from telemon.models import (
    Answer,
    Enrolment,
    LimitSet,
    Observation,
    QuestionnaireResponse,
    Triage,
)
from telemon.modules import DiseaseModule, Finding, Item, Questionnaire, Rule, Schedule, Series

CPH = ZoneInfo("Europe/Copenhagen")
T0 = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)  # a Monday, 08:00 in Copenhagen (CET)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
INSTALLED = plugin_manager.get()[1].modules


def reading(key: str, value: str, at: datetime, patient: str = "p-0001",
            gateway: str = "gw-1") -> Observation:
    known = KNOWN[key]
    return Observation(id=f"{patient}-{key}-{at:%m%d%H%M}", patient=patient, device="dev-1",
                       gateway=gateway, code=known.code, unit=known.unit,
                       value=Decimal(value), effective=at)


def two_low(series: Series) -> list[Finding]:
    """Yellow when the two newest SpO2 readings are below the yellow-low limit."""
    low = series.limits.yellow_low
    if low is None or len(series.times) < 2:
        return []
    state = dsp.threshold(series.times, series.values, low=float(low))
    if list(state[-2:]) != [-1, -1]:
        return []
    return [Finding(Triage.YELLOW, "two readings in a row below the limit", series.ids[-2:])]


MINI = Questionnaire(
    id="mini", version="1", title="Mini check", source="test",
    items=(*(Item(f"q_{n}", "integer", low=0, high=5) for n in (1, 2, 3)),
           Item("fever", "boolean", significance={True: Triage.RED})),
    score=lambda answers: {"total": Decimal(sum(answers[f"q_{n}"] for n in (1, 2, 3)))},
    scores={"total": "cat_score"})
WATCH = DiseaseModule(
    name="watch", version="1", title="Test module", codes=("spo2", "cat_score"),
    default_limits={"spo2": LimitSet(red_low=Decimal(85), yellow_low=Decimal(90)),
                    "cat_score": LimitSet(yellow_high=Decimal(10))},
    schedule=Schedule(codes=("spo2",)), summarise=str, sources=("test",),
    rules=(Rule("two_low", "test", ("spo2",), two_low, window=3 * DAY),),
    questionnaires=(MINI,))


def answers(at: datetime, fever: bool = False, q_1: int = 2, response_id: str = "qr-1"):
    return QuestionnaireResponse(
        id=response_id, patient="p-0001", gateway="gw-1", questionnaire="mini", version="1",
        authored=at, answers=(Answer("q_1", q_1), Answer("q_2", 4), Answer("q_3", 5),
                              Answer("fever", fever)))


def by_rule(found):
    grouped = {}
    for alarm in found:
        grouped.setdefault(alarm.rule, []).append(alarm)
    return grouped


# --- the replay --------------------------------------------------------------------------------

SPO2_DAYS = [reading("spo2", "95", T0), reading("spo2", "89", T0 + 12 * HOUR),
             reading("spo2", "84", T0 + DAY), reading("spo2", "83", T0 + 2 * DAY)]


def test_without_a_review_each_rule_raises_once_and_folds_what_follows():
    result = evaluate.replay(WATCH, SPO2_DAYS, review=None)
    found = by_rule(result.alarms)
    assert set(found) == {"limits.spo2", "two_low"} and result.evaluated == 4
    (limits,) = found["limits.spo2"]
    assert limits.raised == T0 + 12 * HOUR  # the 89, evening of day 1
    assert (limits.severity, limits.repeats, limits.state) == ("red", 2, "open")
    assert [(e.action, e.at) for e in limits.events] == [
        ("raised", T0 + 12 * HOUR), ("raised", T0 + DAY),  # raised again: now red
        ("escalated", T0 + DAY + 4 * HOUR)]  # red, unacknowledged at the noon tick
    assert limits.observations == tuple(o.id for o in SPO2_DAYS[1:])
    (rule,) = found["two_low"]
    assert (rule.raised, rule.severity, rule.code) == (T0 + DAY, "yellow", "spo2")
    assert rule.observations == tuple(o.id for o in SPO2_DAYS[1:])


def test_the_daily_review_resolves_alarms_so_a_rule_raises_again_the_next_day():
    result = evaluate.replay(WATCH, SPO2_DAYS)  # review at 14:00 local
    found = by_rule(result.alarms)
    assert [a.raised for a in found["limits.spo2"]] == [T0 + 12 * HOUR, T0 + 2 * DAY]
    assert [a.raised for a in found["two_low"]] == [T0 + DAY, T0 + 2 * DAY]
    first = found["limits.spo2"][0]
    review = datetime(2026, 3, 3, 14, 0, tzinfo=CPH)
    assert [(e.action, e.by, e.at) for e in first.events][-1] == ("resolved", "evaluate",
                                                                  review)
    assert first.state == "resolved" and found["two_low"][-1].state == "open"
    line = found["two_low"][0].as_json(CPH)
    assert line["time"] == "2026-03-03T08:00:00+01:00"  # shown local
    assert line["observations"] == [o.id for o in SPO2_DAYS[1:3]]
    assert line["events"][0] == {"time": "2026-03-03T08:00:00+01:00", "action": "raised",
                                 "by": "central",
                                 "note": "two readings in a row below the limit"}


@pytest.mark.parametrize("zone, deadlines_utc", [
    # 12:00 local: 11:00 UTC in winter, 10:00 once summer time starts (29 March)
    ("Europe/Copenhagen", ["2026-03-28 11:00", "2026-03-29 10:00", "2026-03-30 10:00",
                           "2026-03-31 10:00"]),
    ("America/New_York", ["2026-03-28 16:00", "2026-03-29 16:00", "2026-03-30 16:00",
                          "2026-03-31 16:00"]),
])
def test_missing_is_judged_at_each_local_deadline(zone, deadlines_utc):
    tz = ZoneInfo(zone)
    first = datetime(2026, 3, 27, 8, 0, tzinfo=tz)  # enrolled: that day is not expected
    late = datetime(2026, 3, 31, 13, 0, tzinfo=tz)  # after that day's deadline
    records = [reading("spo2", "95", first), reading("spo2", "96", late)]
    result = evaluate.replay(WATCH, records, timezone=tz)
    missing = by_rule(result.alarms)["missing"]
    assert [f"{a.raised.astimezone(UTC):%Y-%m-%d %H:%M}" for a in missing] == deadlines_utc
    assert missing[0].message == f"no SpO2 by the deadline 2026-03-28 12:00 " \
                                 f"{datetime(2026, 3, 28, 12, tzinfo=tz):%Z}"
    assert missing[-1].events[-1].note == "measurement received"  # resolved by the 13:00
    assert missing[-1].events[-1].at == late
    assert all(a.events[-1].note == "daily review" for a in missing[:-1])


def test_limits_become_each_patients_own_from_their_first_reading():
    own = {"spo2": LimitSet(red_low=Decimal(83), yellow_low=Decimal(86))}
    records = [reading("spo2", "88", T0), reading("spo2", "85", T0 + HOUR),
               reading("spo2", "85", T0 + 2 * HOUR, patient="p-0002", gateway="gw-2")]
    found = evaluate.replay(WATCH, records, limits=own).alarms
    assert [(a.patient, a.rule, a.severity) for a in found] == [
        ("p-0001", "limits.spo2", "yellow"), ("p-0002", "limits.spo2", "yellow")]
    assert found[0].message == "SpO2 85 % below the yellow limit 86 % (patient v1 limits)"


def test_answers_raise_at_once_and_scores_are_judged_as_readings():
    records = [reading("spo2", "95", T0), answers(T0 + HOUR, fever=True),
               answers(T0 + 2 * HOUR, q_1=7, response_id="qr-2")]
    result = evaluate.replay(WATCH, records, review=None)
    found = by_rule(result.alarms)
    (said,) = found["answers.mini"]
    assert (said.severity, said.message, said.observations) == (
        "red", "Mini check: fever = True", ("qr-1",))
    (score,) = found["limits.cat_score"]  # the score, 2 + 4 + 5, as an observation
    assert (score.severity, score.message) == (
        "yellow", "COPD Assessment Test score 11 {score} above the yellow limit 10 {score} "
                  "(module limits)")
    assert score.raised == T0 + HOUR and len(score.observations) == 1
    assert result.refused == [("qr-2", "questionnaire response qr-2 (mini): q_1: 7 is "
                                       "outside 0..5")]
    assert result.evaluated == 2  # the reading and the valid response


def test_a_module_with_problems_is_refused():
    broken = DiseaseModule(name="Broken", version="1", title="t", codes=("spo2",),
                           default_limits={}, schedule=Schedule(codes=()), summarise=str)
    with pytest.raises(ValueError, match="module Broken: name 'Broken' must be lower-case"):
        evaluate.replay(broken, [reading("spo2", "95", T0)])
    assert evaluate.replay(WATCH, []).alarms == []


@pytest.mark.parametrize("text, problem", [
    ("[spox]\nred_low = 85\n", 'spox: unknown code for module watch; did you mean "spo2"? '
                               "(its codes: spo2, cat_score)"),
    ("[spo2]\nred_low = 92\nyellow_low = 90\n",
     "spo2: limits out of order: red_low=92 > yellow_low=90"),
    ("[spo2]\nred_low = 900\n", "spo2.red_low: must be a number between 50 and 100, got 900"),
    ("[spo2]\n", "spo2: no limits given: set at least one of red_low, yellow_low, "
                 "yellow_high, red_high"),
    ("spo2 = 5\n", "spo2: must be a table, got 5"),
])
def test_a_bad_limits_file_names_the_key_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "limits.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        evaluate.load_limits(path, WATCH)
    assert str(caught.value) == f"{path}: {problem}"


def test_a_limits_file_loads_as_limit_sets(tmp_path):
    path = tmp_path / "limits.toml"
    path.write_text("[spo2]\nred_low = 85\nyellow_low = 87.5\n")
    assert evaluate.load_limits(path, WATCH) == {
        "spo2": LimitSet(red_low=Decimal(85), yellow_low=Decimal("87.5"))}


# --- the command ---------------------------------------------------------------------------------


def write_lines(path, *lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else wire.encode(line)) + b"\n"
                              for line in lines))
    return str(path)


def run(*args):
    return CliRunner().invoke(evaluate.evaluate_group, list(args))


def copd_day(at, spo2, patient="p-0001"):
    gateway = "gw-" + patient[-1]
    return [reading("spo2", spo2, at, patient, gateway),
            reading("pulse", "72", at, patient, gateway)]


def test_cli_prints_each_alarm_as_a_json_line(tmp_path):
    path = write_lines(tmp_path / "series.jsonl",
                       *copd_day(T0, "89"), *copd_day(T0 + 12 * HOUR, "89"),
                       *copd_day(T0 + DAY, "89"), *copd_day(T0, "97", "p-0002"))
    result = run("--module", "copd", "--observations", path, "--review", "none")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {line["patient"] for line in lines} == {"p-0001"}
    found = {line["rule"]: line for line in lines}
    assert found["limits.spo2"]["severity"] == "yellow"
    assert found["limits.spo2"]["time"] == "2026-03-02T08:00:00+01:00"
    assert found["limits.spo2"]["repeats"] == 2
    sustained = found["spo2_sustained_low"]
    assert (sustained["severity"], sustained["time"]) == ("red", "2026-03-03T08:00:00+01:00")
    assert sustained["observations"] == ["p-0001-spo2-03020700", "p-0001-spo2-03021900",
                                         "p-0001-spo2-03030700"]
    assert sustained["module"] == "copd" and sustained["code"] == "spo2"
    assert result.stderr.startswith("8 record(s) evaluated, ")


def test_cli_reports_bad_lines_by_number_and_evaluates_the_rest(tmp_path):
    cat = QuestionnaireResponse(
        id="qr-cat", patient="p-0001", gateway="gw-1", questionnaire="cat", version="1",
        authored=T0 + HOUR, answers=tuple(Answer(f"cat_{n}", 7 if n == 1 else 1)
                                          for n in range(1, 9)))
    path = write_lines(
        tmp_path / "series.jsonl", reading("spo2", "84", T0), b"not json",
        Enrolment(patient="p-0001", organisation="x", modules=("copd",)),
        b'{"type": "observation", "v": 2}', b"", cat, reading("spo2", "86", T0 + 2 * HOUR))
    result = run("--module", "copd", "--observations", path, "--review", "none")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: line 2: JSON is malformed: invalid character (byte 4)",
        "error: line 3: a enrolment record; only observations and questionnaire responses "
        "are evaluated",
        "error: line 4: unsupported wire version 2 (this telemon speaks 1) - at `$.v`",
        "error: line 6: questionnaire response qr-cat (cat): cat_1: 7 is outside 0..5",
    ]
    assert result.stderr.splitlines()[-1].endswith("; 4 bad line(s) skipped")
    (alarm,) = [json.loads(line) for line in result.stdout.splitlines()
                if json.loads(line)["rule"] == "limits.spo2"]
    assert alarm["severity"] == "red" and alarm["observations"] == [
        "p-0001-spo2-03020700", "p-0001-spo2-03020900"]


def test_cli_applies_a_limits_file_and_the_time_zone(tmp_path):
    path = write_lines(tmp_path / "series.jsonl", *copd_day(T0, "87"))
    limits = tmp_path / "limits.toml"
    limits.write_text("[spo2]\nred_low = 84\nyellow_low = 88\n")
    result = run("--module", "copd", "--observations", path, "--limits", str(limits),
                 "--timezone", "America/Godthab")
    assert result.exit_code == 0, result.output
    (alarm,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert alarm["message"].endswith("(patient v1 limits)")
    assert alarm["time"] == "2026-03-02T05:00:00-02:00"  # Nuuk


@pytest.mark.parametrize("args, message", [
    (["--module", "nope", "--observations", "{path}"], "Invalid value for --module: unknown "
     "module 'nope' (installed modules: "),
    (["--module", "copd"], "give --module and --observations (or the cohort command)"),
    (["--module", "copd", "--observations", "{path}", "--timezone", "Mars/Olympus"],
     "unknown time zone 'Mars/Olympus'"),
    (["--module", "copd", "--observations", "{path}", "--review", "noon"],
     "'noon' is not a time HH:MM or none"),
    (["--module", "copd", "--observations", "{path}", "--limits", "{limits}"],
     "limits.toml: spo2.red_low: must be a number between 50 and 100, got 900"),
])
def test_cli_usage_errors_exit_2_with_one_message(tmp_path, args, message):
    path = write_lines(tmp_path / "series.jsonl", reading("spo2", "95", T0))
    (tmp_path / "limits.toml").write_text("[spo2]\nred_low = 900\n")
    result = run(*(a.format(path=path, limits=tmp_path / "limits.toml") for a in args))
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


# --- the harness ---------------------------------------------------------------------------------


def alarm(patient, rule, day):
    return evaluate.AlarmResult(patient=patient, module="m", rule=rule, code=None,
                                severity="yellow", raised=T0 + day * DAY, message="",
                                observations=(), repeats=0, state="resolved", events=())


def test_scores_count_events_warning_and_false_alarms_by_hand():
    events = [cohorts.Labelled("p-a", "kind", T0 + 10 * DAY, T0 + 20 * DAY, 1.0),
              cohorts.Labelled("p-c", "kind", T0 + 30 * DAY, T0 + 35 * DAY, 1.0)]
    found = [alarm("p-a", "r1", 8),  # 2 days before onset: caught, 2 days of warning
             alarm("p-a", "r1", 12),  # the same event again
             alarm("p-a", "r2", 6.9),  # before the window (onset - 3 days): false
             alarm("p-a", "r2", 25),  # after the event's end: false
             alarm("p-b", "r1", 11),  # a control: false
             alarm("p-c", "missing", 31),  # inside, but missing is no finding
             alarm("p-c", "r2", 35)]  # on the event's last moment: caught, 5 days late
    scores = {s.rule: s for s in evaluate.score(found, events, rules=["r1", "r2", "r3"],
                                                patient_years=2.0)}
    assert list(scores) == ["r1", "r2", "r3", "missing", "any rule"]
    r1, r2, r3, missing, any_rule = scores.values()
    assert (r1.caught, r1.events, r1.warning_days, r1.false_alarms) == (1, 2, (2.0,), 1)
    assert (r1.sensitivity, r1.false_alarms_per_patient_year) == (0.5, 0.5)
    assert (r2.caught, r2.warning_days, r2.false_alarms) == (1, (-5.0,), 2)
    assert (r3.caught, r3.median_warning_days, r3.false_alarms) == (0, None, 0)
    assert (missing.caught, missing.false_alarms) == (1, 0)
    assert (any_rule.caught, any_rule.warning_days, any_rule.false_alarms) == (
        2, (2.0, -5.0), 3)
    assert any_rule.median_warning_days == -1.5


STEPS = DiseaseModule(
    name="steps_watch", version="1", title="Test module", codes=("steps",),
    default_limits={"steps": LimitSet(yellow_low=Decimal(4000))},
    schedule=Schedule(codes=("steps",)), summarise=str, sources=("test",))


def test_a_hand_counted_cohort_gives_its_table():
    """Four patients, 20 days, no noise, no missed days, sessions at 08:00 sharp: steps are
    5000 +- 500 (the model's drift), 3000 +- 500 during a 5-day box-shaped flare from day 10
    00:00 (-40 %), 3000 +- 500 every day for a patient whose usual is 3000; the fourth
    patient stops using a hearing aid (an event this module cannot see). Limit 4000."""
    start = datetime(2026, 1, 5, tzinfo=CPH)
    flare = sim.Event("back-pain-flare", start + 10 * DAY, duration=5 * DAY,
                      onset=timedelta(0), recovery=timedelta(0))
    non_use = sim.Event("hearing-aid-non-use", start + 5 * DAY)

    def patient(name, usual, events=()):
        return cohorts.SimPatient(name, sim.PatientModel(
            len(name), baseline=sim.Baseline(steps=usual), events=events, noise=False),
            jitter=timedelta(0))

    cohort = cohorts.Cohort("steps_watch", start, 20, (
        patient("p-case", 5000, (flare,)), patient("p-low", 3000), patient("p-quiet", 5000),
        patient("p-aid", 5000, (non_use,))), tz=CPH)
    result = evaluate.evaluate_cohort(STEPS, cohort)
    scores = {s.rule: s for s in result.scores}
    assert list(scores) == ["limits.steps", "missing", "any rule"]
    # the case: one alarm each flare day (10-14), each resolved by the 14:00 review, the
    # first 8 hours after onset; the low patient: one every day, all 20 false
    limits = scores["limits.steps"]
    assert (limits.events, limits.caught) == (2, 1)
    assert limits.warning_days == (-8 / 24,)
    assert limits.false_alarms == 20
    assert limits.patient_years == 4 * 20 / 365.25
    assert limits.false_alarms_per_patient_year == pytest.approx(20 / (80 / 365.25))
    assert result.alarms == 25
    assert (scores["missing"].caught, scores["missing"].false_alarms) == (0, 0)
    assert scores["any rule"] == evaluate.RuleScore("any rule", 2, 1, (-8 / 24,), 20,
                                                    80 / 365.25)
    assert evaluate.rows(result)[0] == ("limits.steps", "1/2 (50 %)", "-0.3 d", "91.3")
    assert evaluate.kind_table(result) == (
        ("RULE", "BACK-PAIN-FLARE", "HEARING-AID-NON-USE"),
        [("limits.steps", "1/1 (100 %) -0.3 d", "0/1 (0 %)"),
         ("missing", "0/1 (0 %)", "0/1 (0 %)"),
         ("any rule", "1/1 (100 %) -0.3 d", "0/1 (0 %)")])


def test_jobs_do_not_change_the_result():
    copd = INSTALLED["copd"]
    cohort = cohorts.build("copd", patients=3, days=30, seed=2)
    one = evaluate.evaluate_cohort(copd, cohort)
    two = evaluate.evaluate_cohort(copd, cohort, jobs=2)
    assert one.scores == two.scores and one.alarms == two.alarms > 0


def test_cli_cohort_table_is_deterministic_and_skips_modules_not_installed():
    args = ["cohort", "--module", "copd", "--module", "not_installed", "--patients", "4",
            "--days", "30", "--seed", "3"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("skipped: module 'not_installed' is not installed (installed "
                             f"modules: {', '.join(sorted(INSTALLED))})\n")
    (copd,) = json.loads(result.stdout)["modules"]
    assert run(*args, "--json").stdout == result.stdout  # seeded
    assert (copd["module"], copd["patients"], copd["days"], copd["seed"]) == (
        "copd", 4, 30, 3)
    assert copd["events"] == {"copd-exacerbation": 2}
    rules = {r["rule"]: r for r in copd["rules"]}
    assert list(rules)[-1] == "any rule" and "spo2_sustained_low" in rules
    assert rules["any rule"]["caught"] >= max(r["caught"] for r in copd["rules"]
                                              if r["rule"] != "missing")
    text = run(*args)
    assert text.stdout.splitlines()[0] == ("copd: 4 simulated patients (2 with an event, 2 "
                                           "controls) x 30 days = 0.3 patient-years, seed 3")
    header = next(line for line in text.stdout.splitlines() if line.startswith("RULE"))
    assert header.split("  ")[0] == "RULE" and header.endswith("FALSE ALARMS/PATIENT-YEAR")


def test_cli_cohort_with_no_installed_module_exits_2():
    result = run("cohort", "--module", "not_installed", "--days", "21")
    assert result.exit_code == 2
    assert "none of the modules asked for is installed" in result.stderr

