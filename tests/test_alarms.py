"""The alarm engine on a real database: limits in force and their source, debouncing,
re-raising at a worse severity, the trend rule, escalation, missing measurements in the
patient's time zone, the lifecycle with two nurses, triage and the alarm outbox."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest

from telemon import admin, alarms, config, plugin_manager, store
from telemon.codes import KNOWN
from telemon.models import Component, Enrolment, LimitSet, LimitVersion, Observation, Triage

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Copenhagen


def central_config(tmp_path, registry=None, **extra):
    data = {"role": "central", "organisation": ORG,
            "broker": {"url": "mqtt://127.0.0.1:1"}, "storage": {"path": str(tmp_path)},
            "alarms": {"escalate_red_after_minutes": 30},
            "modules": {"copd": {"enabled": True}}} | extra
    loaded, problems = config.validate(data, registry or plugin_manager.get()[1])
    assert not problems, problems
    return loaded


def enrol(db, patient="p-0001", gateways=("gw-1",), modules=("copd",), timezone="Europe/Copenhagen",
          enrolled=T0 - timedelta(days=10)):
    with store.transaction(db):
        db["patients"].insert({"id": patient, "organisation": ORG,
                               "display_name": "Test Patient", "timezone": timezone,
                               "created": store.utc_text(enrolled)})
        store.store_record(db, Enrolment(patient=patient, organisation=ORG, modules=modules,
                                         gateways=gateways, enrolled=enrolled))
        store.audit(db, actor="test", action="patient.add", patient=patient)


def reading(i, key="spo2", value="95", patient="p-0001", at=None, unit=None):
    known = KNOWN[key]
    return Observation(id=f"{patient}-{key}-{i}", patient=patient, device="dev-1",
                       gateway="gw-1", code=known.code, unit=unit or known.unit,
                       value=Decimal(value), effective=at or T0 + timedelta(minutes=i))


@pytest.fixture
def engine(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db)
    admin.set_default_limits(  # the organisation's pulse limits (a team lead's)
        db, organisation=ORG, module="copd", code_key="pulse",
        limits=LimitSet(yellow_low=Decimal(45), yellow_high=Decimal(110), red_high=Decimal(130)),
        reason="test", actor="lead-test", installed_modules=plugin_manager.get()[1].modules,
        valid_from=T0 - timedelta(days=30))
    engine = alarms.AlarmEngine(db, central_config(tmp_path), plugin_manager.get()[1].modules)
    engine.directory.refresh()
    yield engine
    db.close()


def ingest(engine, observations=(), responses=(), now=None):
    """What the central does with a group of messages: store, then evaluate what was new."""
    now = now or max([o.effective for o in observations]
                     + [r.authored for r in responses]) + timedelta(seconds=5)
    with store.transaction(engine.db):
        engine.directory.refresh()
        new = store.store_observations(engine.db, list(observations), received=now)
        for response in responses:
            assert engine.response_problem(response) is None
            store.store_questionnaire_response(engine.db, response, received=now)
        return engine.evaluate_new(new, list(responses), now)


def unresolved(db):
    return [store.get_alarm(db, r[0]) for r in
            db.execute("SELECT id FROM alarms WHERE state != 'resolved' ORDER BY raised")]


def evaluations(db, observation):
    return db.execute("SELECT module, code, severity, limits, limits_source FROM evaluations "
                      "WHERE observation = ?", [observation]).fetchall()


def test_limits_come_from_the_patient_then_the_organisation_then_the_module(engine):
    db = engine.db
    ingest(engine, [reading(1, "spo2", "89"), reading(2, "pulse", "105")])
    # spo2: module default (yellow_low 90, red_low 88); pulse: the organisation's config
    assert evaluations(db, "p-0001-spo2-1") == [
        ("copd", "spo2", "yellow", '{"red_low":88,"yellow_low":90,"yellow_high":null,'
                                   '"red_high":null}', "module")]
    (_, _, severity, limits, source), = evaluations(db, "p-0001-pulse-2")
    assert (severity, source) == ("green", "organisation v1")  # 105 < the org's yellow_high
    assert msgspec.json.decode(limits, type=LimitSet).yellow_high == Decimal(110)

    valid_from = T0 + timedelta(hours=1)
    with store.transaction(db):
        store.store_record(db, LimitVersion(
            patient="p-0001", code=KNOWN["spo2"].code, limits=LimitSet(red_low=Decimal(85),
            yellow_low=Decimal(87)), valid_from=valid_from, author="dr-test",
            reason="known low baseline"))
        store.audit(db, actor="dr-test", action="limits.set", patient="p-0001")
    ingest(engine, [reading(3, "spo2", "88", at=valid_from - timedelta(minutes=1)),
                    reading(4, "spo2", "88", at=valid_from)])
    # judged by the limits valid at the reading's own time, and the version is recorded
    assert evaluations(db, "p-0001-spo2-3")[0][2:] == (
        "yellow", evaluations(db, "p-0001-spo2-1")[0][3], "module")
    assert evaluations(db, "p-0001-spo2-4")[0][2] == "green"
    assert evaluations(db, "p-0001-spo2-4")[0][4] == "patient v1"


def test_a_value_on_a_limit_is_inside_and_a_value_just_past_it_is_not(engine):
    outcome = ingest(engine, [reading(1, "spo2", "90"), reading(2, "spo2", "88")])
    assert outcome.raised == 1  # 90 is not below 90; 88 is below 90 but not below 88
    (alarm,) = unresolved(engine.db)
    assert (alarm.severity, alarm.rule, alarm.code) == ("yellow", "limits.spo2", "spo2")
    assert alarm.message == "SpO2 88 % below the yellow limit 90 % (module limits)"
    assert alarm.observations == ("p-0001-spo2-2",)
    assert alarm.limits == LimitSet(red_low=Decimal(88), yellow_low=Decimal(90))


def test_a_value_flapping_around_a_limit_raises_one_alarm(engine):
    flapping = [reading(i, "spo2", "89" if i % 2 else "91") for i in range(50)]
    outcome = ingest(engine, flapping[:10])
    outcome2 = ingest(engine, flapping[10:])
    assert (outcome.raised, outcome2.raised) == (1, 0)
    (alarm,) = unresolved(engine.db)
    assert alarm.repeats == 24  # 25 low readings: one raised it, 24 folded into it
    assert len(alarm.observations) == 25
    assert [e.action for e in alarm.events] == ["raised"]
    assert engine.db.execute("SELECT COUNT(*) FROM alarms").fetchone()[0] == 1


def test_a_worse_value_raises_the_open_alarm_again_at_the_new_severity(engine):
    ingest(engine, [reading(1, "spo2", "89")])
    ingest(engine, [reading(2, "spo2", "86")])
    ingest(engine, [reading(3, "spo2", "89")])  # better again: folded, stays red
    (alarm,) = unresolved(engine.db)
    assert alarm.severity == "red"
    assert [(e.action, e.note[:7]) for e in alarm.events] == [("raised", "SpO2 89"),
                                                              ("raised", "now red")]
    assert alarm.repeats == 2


def test_readings_in_another_unit_are_stored_but_not_compared(engine):
    odd = reading(1, "temperature", "99.5", unit="[degF]")
    outcome = ingest(engine, [odd])
    assert outcome.not_compared == 1 and outcome.raised == 0
    assert evaluations(engine.db, odd.id) == []
    assert store.get_observation(engine.db, odd.id).value == Decimal("99.5")


def test_blood_pressure_components_are_checked_against_their_own_codes(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db)
    from telemon.modules import DiseaseModule, Schedule
    module = DiseaseModule(name="bp_watch", version="1", title="test", codes=("bp_sys", "bp_dia"),
                           default_limits={"bp_sys": LimitSet(yellow_high=Decimal(140)),
                                           "bp_dia": LimitSet(yellow_high=Decimal(90))},
                           schedule=Schedule(codes=()), summarise=str, sources=("test",))
    registry = plugin_manager.Registry(modules={"bp_watch": module})
    cfg = central_config(tmp_path, registry, modules={"bp_watch": {"enabled": True}})
    with store.transaction(db):
        store.store_record(db, Enrolment(patient="p-0001", organisation=ORG,
                                         modules=("bp_watch",), gateways=("gw-1",)))
        store.audit(db, actor="test", action="modules.enable", patient="p-0001")
    engine = alarms.AlarmEngine(db, cfg, {"bp_watch": module})
    mmhg = "mm[Hg]"
    bp = Observation(id="bp-1", patient="p-0001", device="dev-1", gateway="gw-1",
                     code=KNOWN["bp"].code, unit=mmhg, effective=T0, components=(
                         Component(KNOWN["bp_sys"].code, mmhg, Decimal(150)),
                         Component(KNOWN["bp_dia"].code, mmhg, Decimal(85))))
    assert ingest(engine, [bp]).raised == 1
    assert sorted(r[1:3] for r in evaluations(db, "bp-1")) == [("bp_dia", "green"),
                                                               ("bp_sys", "yellow")]
    series = alarms.load_series(db, "p-0001", "bp_sys", since=T0 - timedelta(days=1),
                                limits=LimitSet())
    assert series.values.tolist() == [150.0] and series.ids == ("bp-1",)
    db.close()


def test_sustained_low_spo2_rule_goes_red_after_24_hours_of_low_readings(engine):
    twice_daily = [reading(i, "spo2", "89", at=T0 + timedelta(hours=12 * i)) for i in range(3)]
    ingest(engine, twice_daily[:2])  # 12 h of low readings: yellow by the limits only
    assert [(a.rule, a.severity) for a in unresolved(engine.db)] == [("limits.spo2", "yellow")]
    ingest(engine, twice_daily[2:])
    found = {a.rule: a for a in unresolved(engine.db)}
    assert found["spo2_sustained_low"].severity == "red"
    assert found["spo2_sustained_low"].observations == tuple(o.id for o in twice_daily)
    assert "24 h (3 readings)" in found["spo2_sustained_low"].message


def test_an_unacknowledged_red_alarm_escalates_once(engine):
    ingest(engine, [reading(1, "spo2", "85")])
    (alarm,) = unresolved(engine.db)
    raised = alarm.events[0].at
    with store.transaction(engine.db):
        assert engine.tick(raised + timedelta(minutes=29)).escalated == 0
        assert engine.tick(raised + timedelta(minutes=31)).escalated == 1
        assert engine.tick(raised + timedelta(minutes=90)).escalated == 0
    escalated = store.get_alarm(engine.db, alarm.id)
    assert [e.action for e in escalated.events] == ["raised", "escalated"]
    assert escalated.events[1].note == "red alarm not acknowledged within 30 min"


def test_an_acknowledged_red_alarm_does_not_escalate(engine):
    ingest(engine, [reading(1, "spo2", "85")])
    (alarm,) = unresolved(engine.db)
    alarms.acknowledge(engine.db, alarm.id, by="nurse-a", note="called the patient")
    with store.transaction(engine.db):
        assert engine.tick(alarm.raised + timedelta(hours=2)).escalated == 0


def test_two_nurses_acknowledging_at_once_one_wins_and_the_other_is_told_who(engine):
    ingest(engine, [reading(1, "spo2", "85")])
    (alarm,) = unresolved(engine.db)
    first = alarms.acknowledge(engine.db, alarm.id, by="nurse-a", note="on it")
    with pytest.raises(alarms.AlarmConflict, match="already acknowledged by nurse-a"):
        alarms.acknowledge(engine.db, alarm.id, by="nurse-b", note="me too")
    assert store.get_alarm(engine.db, alarm.id) == first
    resolved = alarms.resolve(engine.db, alarm.id, by="nurse-a", note="stable on recheck")
    assert [(e.action, e.by) for e in resolved.events] == [
        ("raised", "central"), ("acknowledged", "nurse-a"), ("resolved", "nurse-a")]
    actions = [r[0] for r in engine.db.execute("SELECT action FROM audit ORDER BY id")]
    assert actions[-2:] == ["alarm.acknowledged", "alarm.resolved"]
    with pytest.raises(alarms.AlarmConflict):
        alarms.resolve(engine.db, alarm.id, by="nurse-b")
    # resolved: the next low reading is a new alarm
    assert ingest(engine, [reading(2, "spo2", "85")]).raised == 1


def test_missing_measurements_are_raised_after_the_local_deadline_and_resolve_themselves(
        tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db, "p-cph", timezone="Europe/Copenhagen")
    enrol(db, "p-nyc", timezone="America/New_York")
    enrol(db, "p-new", enrolled=datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    engine = alarms.AlarmEngine(db, central_config(tmp_path), plugin_manager.get()[1].modules)
    engine.directory.refresh()
    # COPD schedule: SpO2 and pulse daily by 12:00 local time
    noon_cph = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)  # 12:00 CET
    with store.transaction(db):
        # Sunday's deadline: p-cph and p-nyc missed it; p-new was enrolled after it
        assert engine.tick(noon_cph - timedelta(minutes=1)).raised == 2
    db.execute("DELETE FROM alarm_outbox")
    with store.transaction(db):
        for row in db.execute("SELECT id FROM alarms").fetchall():
            alarms.add_event(db, store.get_alarm(db, row[0]), "resolved", "test", "", T0,
                             state="resolved")
    with store.transaction(db):
        # Monday 12:00 in Copenhagen has passed, in New York (06:00) it has not; p-new was
        # enrolled during the period
        outcome = engine.tick(noon_cph + timedelta(minutes=1))
    assert outcome.raised == 1
    (missing,) = unresolved(db)
    assert (missing.patient, missing.severity, missing.rule) == ("p-cph", "missing", "missing")
    assert missing.message == "no SpO2, Pulse rate by the deadline 2026-03-02 12:00 CET"
    assert alarms.triage(db, ["p-cph", "p-nyc"]) == {"p-cph": Triage.MISSING,
                                                     "p-nyc": Triage.GREEN}

    late = noon_cph + timedelta(hours=1)
    ingest(engine, [reading(1, "spo2", "95", "p-cph", at=late)], now=late)
    assert unresolved(db) != []  # pulse still missing
    ingest(engine, [reading(2, "pulse", "70", "p-cph", at=late)], now=late)
    assert unresolved(db) == []
    trail = store.get_alarm(db, missing.id).events
    assert (trail[-1].action, trail[-1].by, trail[-1].note) == (
        "resolved", "central", "measurement received")
    db.close()


def test_triage_is_the_worst_unresolved_alarm(engine):
    enrol(engine.db, "p-0002")
    ingest(engine, [reading(1, "spo2", "89"), reading(2, "pulse", "140"),
                    reading(3, "spo2", "89", patient="p-0002")])
    assert alarms.triage(engine.db, ["p-0001", "p-0002", "p-0003"]) == {
        "p-0001": Triage.RED, "p-0002": Triage.YELLOW, "p-0003": Triage.GREEN}


def test_every_alarm_event_waits_in_the_alarm_outbox(engine):
    ingest(engine, [reading(1, "spo2", "85")])
    (alarm,) = unresolved(engine.db)
    alarms.acknowledge(engine.db, alarm.id, by="nurse-a")
    rows = engine.db.execute("SELECT alarm_id FROM alarm_outbox ORDER BY event").fetchall()
    assert rows == [(alarm.id,), (alarm.id,)]


def test_a_failing_rule_is_logged_and_skipped(engine, caplog):
    from telemon.modules import Rule
    broken = Rule("broken", "test", ("spo2",), lambda series: 1 / 0)
    engine.modules["copd"] = dataclasses.replace(engine.modules["copd"], rules=(broken,))
    outcome = ingest(engine, [reading(1, "spo2", "85")])
    assert outcome.raised == 1  # the limits alarm still comes
    assert "module copd rule broken failed on patient p-0001 spo2" in caplog.text


def test_patients_of_other_organisations_are_refused(engine):
    assert engine.directory.refusal("p-0001", "gw-1") is None
    assert engine.directory.refusal("p-0001", "gw-2") == (
        "patient p-0001 is not bound to gateway gw-2 in organisation kommune-0999")
    assert engine.directory.refusal("p-9999", "gw-1") == (
        "patient p-9999 is not enrolled in organisation kommune-0999")



def questionnaire_module():
    from telemon.modules import DiseaseModule, Item, Questionnaire, Schedule

    daily = Questionnaire(
        id="daily", version="1", title="Daily questions",
        items=(Item("breathless", "boolean", significance={True: Triage.YELLOW}),
               Item("sputum", "choice", options=("clear", "white", "yellow", "green"),
                    significance={"green": Triage.RED, "yellow": Triage.YELLOW}),
               Item("symptoms", "integer", low=0, high=40)),
        score=lambda answers: {"total": Decimal(answers["symptoms"])},
        scores={"total": "cat_score"}, source="test")
    return DiseaseModule(name="qtest", version="1", title="test", codes=("cat_score",),
                         default_limits={"cat_score": LimitSet(yellow_high=Decimal(20))},
                         schedule=Schedule(codes=()), summarise=str, sources=("test",),
                         questionnaires=(daily,))


@pytest.fixture
def q_engine(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    enrol(db, modules=("qtest",))
    module = questionnaire_module()
    registry = plugin_manager.Registry(modules={"qtest": module})
    cfg = central_config(tmp_path, registry, modules={"qtest": {"enabled": True}})
    engine = alarms.AlarmEngine(db, cfg, {"qtest": module})
    engine.directory.refresh()
    yield engine
    db.close()


def response(answers, id_="qr-1"):
    from telemon.models import Answer, QuestionnaireResponse
    return QuestionnaireResponse(id=id_, patient="p-0001", gateway="gw-1",
                                 questionnaire="daily", version="1", authored=T0,
                                 answers=tuple(Answer(k, v) for k, v in answers.items()))


def test_answers_raise_by_their_significance_and_scores_become_observations(q_engine):
    answered = response({"breathless": True, "sputum": "green", "symptoms": 24})
    assert q_engine.response_problem(answered) is None
    outcome = alarms.Outcome()
    with store.transaction(q_engine.db):
        store.store_record(q_engine.db, answered)
        scores = q_engine.evaluate_responses(outcome, [answered], T0)
        new = store.store_observations(q_engine.db, scores, received=T0)
        q_engine.evaluate(new, T0, outcome)
    found = {a.rule: a for a in unresolved(q_engine.db)}
    assert found["answers.daily"].severity == "red"  # the worst flagged answer
    assert found["answers.daily"].message == "Daily questions: breathless = True, sputum = green"
    assert found["answers.daily"].observations == ("qr-1",)
    (score,) = new
    assert (score.code, score.value, score.unit) == (KNOWN["cat_score"].code, Decimal(24),
                                                     "{score}")
    assert score.context == {"questionnaire": "daily", "version": "1", "response": "qr-1",
                             "score": "total"}
    assert found["limits.cat_score"].severity == "yellow"  # 24 > the module's 20
    # the same response again derives the same score id: stored once
    assert q_engine.evaluate_responses(alarms.Outcome(), [answered], T0)[0].id == score.id


@pytest.mark.parametrize("answers, problem", [
    ({"breathless": "yes", "sputum": "clear", "symptoms": 3},
     "breathless: expected true or false"),
    ({"breathless": False, "sputum": "brown", "symptoms": 3},
     "sputum: 'brown' is not one of clear, white, yellow, green"),
    ({"breathless": False, "sputum": "clear", "symptoms": 41}, "symptoms: 41 is outside 0..40"),
    ({"breathless": False, "sputum": "clear"}, "symptoms: not answered"),
    ({"breathless": False, "sputum": "clear", "symptoms": 1, "mood": 2},
     "mood: not an item of daily"),
])
def test_invalid_answers_are_refused_with_the_item_and_the_reason(q_engine, answers, problem):
    found = q_engine.response_problem(response(answers))
    assert found == f"questionnaire response qr-1 (daily): {problem}"


# --- the series kept between evaluations --------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_the_kept_series_is_what_a_fresh_query_gives(tmp_path, seed):
    """Readings written by this connection and by another (a second ingest process), in
    order and late, with and without values, two codes (one read from a blood pressure's
    components), the window moving on, few enough kept to be truncated and a memory bound
    that forces forgetting: after every step the kept series equals a fresh query."""
    rng = random.Random(seed)
    path = tmp_path / "central.db"
    db, other = store.open_database(path), store.open_database(path)
    kept = alarms.SeriesCache(most_rows=40)
    now, n = T0, 0
    for step in range(120):
        writer = rng.choice((db, other))
        batch = []
        for _ in range(rng.randrange(0, 4)):
            n += 1
            late = timedelta(minutes=rng.choice((0, 0, 0, -30, -300)))
            patient = rng.choice(("p-0001", "p-0002"))
            if rng.random() < 0.3:
                batch.append(bp_reading(n, patient, now + late))
            else:
                batch.append(reading(n, patient=patient, at=now + late,
                                     value=rng.choice(("95", "88.5", "91"))))
        store.store_observations(writer, batch)
        now += timedelta(minutes=rng.randrange(1, 40))
        for patient in ("p-0001", "p-0002"):
            for key in ("spo2", "bp_sys"):
                since = now - timedelta(hours=rng.choice((6, 12)))
                most = rng.choice((5, 20))
                fresh = alarms._series_rows(db, patient, key, since=since, most=most,
                                            records=False)
                assert kept.rows(db, patient, key, since=since, most=most) == fresh, step
    assert kept._size == sum(len(k.rows) for k in kept._kept.values()) <= 40
    db.close()
    other.close()


def bp_reading(i, patient, at):
    bp = KNOWN["bp"]
    parts = tuple(Component(code=KNOWN[k].code, unit=KNOWN[k].unit, value=Decimal(v))
                  for k, v in (("bp_sys", "120"), ("bp_dia", "80")))
    return Observation(id=f"{patient}-bp-{i}", patient=patient, device="dev-1",
                       gateway="gw-1", code=bp.code, unit=bp.unit, effective=at,
                       components=parts)


def test_readings_rolled_back_are_forgotten_with_clear(tmp_path):
    db = store.open_database(tmp_path / "central.db")
    kept = alarms.SeriesCache()
    since = T0 - timedelta(days=1)
    store.store_observations(db, [reading(1)])
    with pytest.raises(RuntimeError), store.transaction(db):
        store.store_observations(db, [reading(2)])
        assert [r[0] for r in kept.rows(db, "p-0001", "spo2", since=since, most=10)] == [
            "p-0001-spo2-1", "p-0001-spo2-2"]  # read inside the transaction
        raise RuntimeError("the group failed")
    kept.clear()
    assert kept.rows(db, "p-0001", "spo2", since=since, most=10) == alarms._series_rows(
        db, "p-0001", "spo2", since=since, most=10, records=False)
