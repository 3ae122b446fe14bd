"""The hearing module: its declaration, the audiogram measures (PTA4, WHO 2021 grade,
unilateral loss, NICE NG98 asymmetry), the loss rules on hand-made audiograms
(boundaries, contiguity, untested frequencies, the 3-day and 90-day edges), the hearing-aid
use rule (no baseline yet, a single bad day, stopping, recovery), the assessment report and
its recommendations, the real alarm engine on a real database, and `telemon hearing-report`
on a real central."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import click
import msgspec
import numpy as np
import pluggy
import pytest
from click.testing import CliRunner
from conftest import write_central_toml
from test_alarms import ingest

from telemon import admin, alarms, config, hookspecs, plugin_manager, store
from telemon.codes import KNOWN
from telemon.models import Component, Enrolment, LimitSet, Observation, Triage
from telemon.modules import Series
from telemon.plugin_manager import PluginError, call_each
from telemon.plugins.modules import hearing
from telemon.plugins.modules.hearing import (
    FREQUENCIES,
    MODULE,
    assessment,
    asymmetry,
    hearing_aid_drop,
    hearing_worsening,
    pta4,
    sudden_loss,
    thresholds,
    who_grade,
)

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
FLAT = dict.fromkeys(FREQUENCIES, 20)  # dB HL at every frequency


def audiogram(id_, ear, levels, at, patient="p-0001"):
    """One audiogram of one ear: a panel whose components are the thresholds (dB HL)."""
    key = f"audiogram_{ear}"
    parts = tuple(Component(KNOWN[f"hl_{hz}"].code, "dB", Decimal(db))
                  for hz, db in levels.items())
    return Observation(id=id_, patient=patient, device="audiometer-1", gateway="gw-1",
                       code=KNOWN[key].code, unit="dB", effective=at, components=parts)


def changed(base, **by_hz):
    """`base` with some frequencies changed: changed(FLAT, hz1000=55)."""
    return base | {int(k[2:]): v for k, v in by_hz.items()}


def ear_series(audiograms, ear="left"):
    """The series a records=True rule gets for one ear."""
    return Series(patient="p-0001", code=f"audiogram_{ear}",
                  times=np.array([a.effective.timestamp() for a in audiograms]),
                  values=np.full(len(audiograms), np.nan), ids=tuple(a.id for a in audiograms),
                  limits=LimitSet(), observations=tuple(audiograms))


# --- the declaration ------------------------------------------------------------------------

def test_the_declaration_is_valid_and_cites_its_sources():
    assert MODULE.problems() == []
    assert MODULE.codes == ("audiogram_left", "audiogram_right", "hearing_aid_use")
    assert {r.name: r.records for r in MODULE.rules} == {
        "sudden_loss": True, "hearing_worsening": True, "hearing_aid_drop": False}
    assert any("NG98" in s for s in MODULE.sources) and any("WHO" in s for s in MODULE.sources)


def test_the_plugin_registers_the_module_and_the_report_command_through_its_hooks():
    pm = pluggy.PluginManager("telemon")
    pm.add_hookspecs(hookspecs)
    pm.register(hearing, name="hearing")
    registered = []
    pm.hook.register_modules(register=registered.append)
    assert registered == [MODULE]
    assert "hearing-report" in report_cli(pm).commands


def test_audiogram_codes_and_units():
    assert [KNOWN[f"hl_{hz}"].unit for hz in FREQUENCIES] == ["dB"] * 8
    assert KNOWN["hl_4000"].code.system == "urn:telemon:measure"
    assert KNOWN["hearing_aid_use"].unit == "h"


def test_summary_line_has_units():
    assert MODULE.summarise({"hearing_aid_use": 9.5}) == "hearing-aid use 9.5 h/day"
    assert MODULE.summarise({}) == "no hearing-aid use logged yet"


# --- audiogram measures -----------------------------------------------------------------------

def test_thresholds_keep_tested_frequencies_in_db_only():
    parts = (Component(KNOWN["hl_500"].code, "dB", Decimal(25)),
             Component(KNOWN["hl_1000"].code, "dB", None, absent="not-a-number"),
             Component(KNOWN["hl_2000"].code, "%", Decimal(30)),
             Component(KNOWN["spo2"].code, "%", Decimal(97)))
    odd = Observation(id="a-odd", patient="p-0001", device="d", gateway="gw-1",
                      code=KNOWN["audiogram_left"].code, unit="dB", effective=T0,
                      components=parts)
    assert thresholds(odd) == {500: 25.0}


def test_pta4_is_the_mean_of_half_one_two_and_four_khz():
    levels = {250: 90, 500: 20, 1000: 30, 2000: 40, 3000: 90, 4000: 55, 8000: 90}
    assert pta4(levels) == 36.25
    assert pta4({500: 20, 1000: 30, 2000: 40}) is None  # 4 kHz not tested


@pytest.mark.parametrize("average, grade", [
    (-5, "normal"), (19.9, "normal"), (20, "mild"), (34.9, "mild"), (35, "moderate"),
    (49.9, "moderate"), (50, "moderately severe"), (64.9, "moderately severe"),
    (65, "severe"), (79.9, "severe"), (80, "profound"), (94.9, "profound"),
    (95, "complete"), (120, "complete")])
def test_who_2021_grades_at_their_boundaries(average, grade):
    assert who_grade(average) == grade


@pytest.mark.parametrize("left_by, pairs", [
    ({2000: 35, 4000: 35}, [(2000, 4000)]),  # 15 dB at two adjacent: asymmetric
    ({2000: 35, 4000: 34}, []),  # 14 dB at one of them
    ({1000: 40, 4000: 40}, []),  # not adjacent (2 kHz between)
    ({2000: 40, 3000: 40}, []),  # 3 kHz is not among NICE's frequencies
    ({4000: 40, 8000: 40}, [(4000, 8000)]),
    ({500: 5, 1000: 5, 2000: 5}, [(500, 1000), (1000, 2000)]),  # the right ear worse
])
def test_asymmetry_is_15_db_at_two_adjacent_nice_frequencies(left_by, pairs):
    assert asymmetry(FLAT | left_by, FLAT) == pairs


def test_asymmetry_needs_both_ears_tested_at_both_frequencies():
    left = {hz: db for hz, db in (FLAT | {2000: 50, 4000: 50}).items() if hz != 4000}
    assert asymmetry(left, FLAT) == []


# --- sudden_loss and hearing_worsening ------------------------------------------------------

def two(before, after, apart=timedelta(days=2)):
    return [audiogram("a-1", "left", before, T0), audiogram("a-2", "left", after, T0 + apart)]


def test_30_db_at_three_contiguous_frequencies_within_3_days_is_red():
    (finding,) = sudden_loss(ear_series(two(FLAT, changed(FLAT, hz1000=50, hz2000=55,
                                                          hz3000=60))))
    assert finding.severity == Triage.RED
    assert finding.observations == ("a-1", "a-2")
    assert finding.message == ("sudden hearing loss, left ear: 30, 35, 40 dB worse at 1, 2, 3 "
                               "kHz within 2.0 days: refer to be seen within 24 hours (NICE "
                               "NG98)")


@pytest.mark.parametrize("after", [
    changed(FLAT, hz1000=50, hz2000=55, hz3000=49),  # 29 dB at one of the three
    changed(FLAT, hz1000=50, hz2000=55),  # two contiguous only
    changed(FLAT, hz2000=50, hz4000=55, hz6000=60),  # 3 kHz between is not worse
])
def test_sudden_loss_needs_30_db_at_each_of_three_contiguous_frequencies(after):
    assert sudden_loss(ear_series(two(FLAT, after))) == []


def test_a_frequency_not_tested_ends_a_run():
    after = changed(FLAT, hz2000=60, hz3000=60, hz4000=60)
    untested = {hz: db for hz, db in FLAT.items() if hz != 3000}
    assert sudden_loss(ear_series(two(untested, after))) == []
    assert len(sudden_loss(ear_series(two(FLAT, after)))) == 1


def test_the_first_audiogram_and_an_improvement_are_quiet():
    assert sudden_loss(ear_series([audiogram("a-1", "left", FLAT, T0)])) == []
    assert sudden_loss(ear_series(two(changed(FLAT, hz1000=70, hz2000=70, hz3000=70),
                                      FLAT))) == []


def test_three_days_apart_is_sudden_and_longer_is_rapid_worsening():
    loss = changed(FLAT, hz4000=60, hz6000=60, hz8000=60)
    at_3_days = ear_series(two(FLAT, loss, apart=timedelta(days=3)))
    assert len(sudden_loss(at_3_days)) == 1 and hearing_worsening(at_3_days) == []
    later = ear_series(two(FLAT, loss, apart=timedelta(days=3, hours=1)))
    assert sudden_loss(later) == []
    (finding,) = hearing_worsening(later)
    assert finding.severity == Triage.YELLOW
    assert "within 3.0 days" in finding.message and "within 2 weeks" in finding.message
    assert len(hearing_worsening(ear_series(two(FLAT, loss, apart=timedelta(days=90))))) == 1
    assert hearing_worsening(ear_series(two(FLAT, loss, apart=timedelta(days=91)))) == []


def test_the_loss_is_judged_against_the_latest_earlier_audiogram():
    loss = changed(FLAT, hz500=60, hz1000=60, hz2000=60)
    # normal 10 days ago, the loss already 2 days ago: no new sudden loss today; the rapid
    # worsening rule compares with the audiogram at least 3 days older
    audiograms = [audiogram("a-1", "left", FLAT, T0),
                  audiogram("a-2", "left", loss, T0 + timedelta(days=8)),
                  audiogram("a-3", "left", loss, T0 + timedelta(days=10))]
    assert sudden_loss(ear_series(audiograms)) == []
    (finding,) = hearing_worsening(ear_series(audiograms))
    assert finding.observations == ("a-1", "a-3")


# --- hearing_aid_drop -----------------------------------------------------------------------

def use_series(hours):
    times = T0.timestamp() + np.arange(len(hours)) * 86400.0
    return Series(patient="p-0001", code="hearing_aid_use", times=times,
                  values=np.array(hours, dtype=np.float64),
                  ids=tuple(f"use-{i}" for i in range(len(hours))), limits=LimitSet())


USUAL = [8.0, 12.0] * 14  # 28 days: 10 h/day, SD 2.04 h


def test_stopping_the_aid_alarms_on_the_second_day_not_the_first():
    assert hearing_aid_drop(use_series(USUAL + [10.0] * 12 + [0.0])) == []
    (finding,) = hearing_aid_drop(use_series(USUAL + [10.0] * 12 + [0.0, 0.0]))
    assert finding.severity == Triage.YELLOW
    assert finding.observations == ("use-40", "use-41")
    assert finding.message == ("hearing-aid use 0.0 h/day on average over the last 2 logs, "
                               "below the user's usual 10.0 h/day (SD 2.0 h, 28 logs before)")


def test_use_back_to_normal_ends_the_episode():
    assert hearing_aid_drop(use_series(USUAL + [10.0] * 10 + [0.0, 0.0, 12.0, 12.0])) == []


def test_a_long_moderate_fall_alarms_once_it_has_lasted():
    fallen = [7.0] * 14  # 1.47 SD below the mean: +0.97 a day to the lower CUSUM
    found = [bool(hearing_aid_drop(use_series(USUAL + fallen[:n]))) for n in range(1, 15)]
    assert found.index(True) == 5  # 6 days: 6.0 > h = 5
    assert all(found[5:])


def test_no_baseline_yet_no_alarm_and_a_very_regular_user_has_a_floor_under_the_sd():
    assert hearing_aid_drop(use_series([])) == []
    assert hearing_aid_drop(use_series([10.0] * 13 + [0.0] * 14)) == []  # 13 days of logs
    # SD 0: sigma is the 1 h floor, so an hour less a day is z = -1: +0.5 a day to the
    # lower CUSUM, which must exceed h = 5
    assert hearing_aid_drop(use_series([10.0] * 28 + [9.0] * 10)) == []  # 5.0
    assert len(hearing_aid_drop(use_series([10.0] * 28 + [9.0] * 11))) == 1  # 5.5
    assert len(hearing_aid_drop(use_series([10.0] * 28 + [7.0] * 3))) == 1


def test_demant_like_use_with_a_7_hour_fall_is_found_within_a_week():
    # ~10 h/day, within-user SD 3.9 h (Demant 2021), then 7 h less a day
    rng = np.random.default_rng(2021)
    usual = np.clip(rng.normal(10, 3.9, 60), 0, 24)
    assert hearing_aid_drop(use_series(usual)) == []
    fallen = np.clip(rng.normal(3, 3.9, 7), 0, 24)
    days = [n for n in range(1, 8)
            if hearing_aid_drop(use_series(np.concatenate([usual, fallen[:n]])))]
    assert days and days[0] <= 7


# --- the assessment report ------------------------------------------------------------------

def report(left=None, right=None, earlier=(), now=T0 + timedelta(days=1)):
    given = [*earlier]
    if left is not None:
        given.append(audiogram("a-left", "left", left, T0))
    if right is not None:
        given.append(audiogram("a-right", "right", right, T0))
    return assessment(given, now)


def test_normal_hearing_needs_no_referral():
    found = report(FLAT | {500: 10}, FLAT | {500: 10})
    assert found["who_grade"] == {"better_ear": "left", "pta4": 17.5, "grade": "normal",
                                  "unilateral": False}
    assert found["recommendation"] == "no referral"
    assert found["ears"]["left"] == {
        "audiogram": "a-left", "tested": "2026-03-02T08:00:00+00:00", "pta4": 17.5,
        "thresholds": {str(hz): 10.0 if hz == 500 else 20.0 for hz in FREQUENCIES}}


def test_symmetric_loss_goes_to_direct_hearing_aid_fitting():
    found = report(dict.fromkeys(FREQUENCIES, 45), dict.fromkeys(FREQUENCIES, 40))
    assert found["who_grade"]["grade"] == "moderate"
    assert found["who_grade"]["better_ear"] == "right"
    assert found["recommendation"] == "direct hearing-aid fitting"
    assert found["asymmetry"] == {"found": False, "frequency_pairs": []}


def test_asymmetric_loss_is_a_routine_specialist_referral():
    found = report(FLAT | {2000: 40, 4000: 50}, FLAT)
    assert found["asymmetry"] == {"found": True, "frequency_pairs": [[2000, 4000]]}
    assert found["recommendation"] == "specialist referral (routine)"
    assert found["rule"].startswith("NICE NG98 1.1: unilateral or asymmetric")


def test_unilateral_loss_without_adjacent_asymmetry_is_a_routine_referral():
    # PTA4 35 in the left ear, 10 in the right: unilateral (WHO 2021), yet no two adjacent
    # NICE frequencies differ by 15 dB
    left = dict.fromkeys(FREQUENCIES, 10) | {500: 60, 2000: 60}
    found = report(left, dict.fromkeys(FREQUENCIES, 10))
    assert found["asymmetry"]["found"] is False
    assert found["who_grade"]["unilateral"] is True
    assert found["recommendation"] == "specialist referral (routine)"


def test_a_recent_sudden_loss_is_urgent_an_older_one_two_weeks():
    loss = dict.fromkeys(FREQUENCIES, 60)
    earlier = [audiogram("a-before", "left", FLAT, T0 - timedelta(days=2))]
    found = report(loss, FLAT, earlier, now=T0 + timedelta(days=30))
    assert found["recommendation"] == "specialist referral (urgent)"
    assert found["rule"].startswith("NICE NG98 1.1.2: hearing loss that developed suddenly "
                                    "(over 3 days or less) within the past 30 days")
    (loss_found,) = found["losses"]
    assert loss_found == {"ear": "left", "kind": "sudden", "found": "2026-03-02T08:00:00+00:00",
                          "over_days": 2.0, "frequencies": list(FREQUENCIES),
                          "drop_db": [40.0] * 8, "audiograms": ["a-before", "a-left"]}
    older = report(loss, FLAT, earlier, now=T0 + timedelta(days=31))
    assert older["recommendation"] == "specialist referral (2 weeks)"
    assert "more than 30 days ago" in older["rule"]


def test_rapid_worsening_is_two_weeks_and_a_loss_before_90_days_is_not_reported():
    loss = dict.fromkeys(FREQUENCIES, 60)
    earlier = [audiogram("a-before", "left", FLAT, T0 - timedelta(days=20))]
    found = report(loss, loss, earlier)
    assert [x["kind"] for x in found["losses"]] == ["rapid"]
    assert found["recommendation"] == "specialist referral (2 weeks)"
    assert "worsened rapidly (over 4 to 90 days)" in found["rule"]
    assert report(loss, loss, earlier, now=T0 + timedelta(days=91))["losses"] == []


def test_a_loss_found_earlier_is_still_reported_when_a_later_audiogram_shows_no_change():
    loss = dict.fromkeys(FREQUENCIES, 60)
    earlier = [audiogram("a-0", "left", FLAT, T0 - timedelta(days=12)),
               audiogram("a-1", "left", loss, T0 - timedelta(days=10))]
    found = report(loss, loss, earlier)
    assert [(x["kind"], x["audiograms"]) for x in found["losses"]] == [
        ("sudden", ["a-0", "a-1"])]
    assert found["recommendation"] == "specialist referral (urgent)"


def test_one_ear_only_is_incomplete_unless_it_shows_a_red_flag():
    found = report(left=dict.fromkeys(FREQUENCIES, 40))
    assert (found["ears"]["right"], found["who_grade"]) == (None, None)
    assert found["recommendation"] == "incomplete"
    assert assessment([], T0)["recommendation"] == "incomplete"
    earlier = [audiogram("a-before", "left", FLAT, T0 - timedelta(days=1))]
    assert report(left=dict.fromkeys(FREQUENCIES, 60), earlier=earlier)[
        "recommendation"] == "specialist referral (urgent)"


def test_the_report_is_plain_json():
    found = report(FLAT, FLAT | {2000: 40, 4000: 40})
    assert json.loads(msgspec.json.encode(found)) == found


# --- the engine -------------------------------------------------------------------------------

@pytest.fixture
def engine(tmp_path):
    registry = plugin_manager.Registry(modules={"hearing": MODULE})
    loaded, problems = config.validate(
        {"role": "central", "organisation": ORG, "broker": {"url": "mqtt://127.0.0.1:1"},
         "storage": {"path": str(tmp_path)}, "modules": {"hearing": {"enabled": True}}},
        registry)
    assert problems == []
    db = store.open_database(tmp_path / "central.db")
    with store.transaction(db):
        db["patients"].insert({"id": "p-0001", "organisation": ORG,
                               "display_name": "Test Patient 1",
                               "timezone": "Europe/Copenhagen",
                               "created": store.utc_text(T0 - timedelta(days=60))})
        store.store_record(db, Enrolment(patient="p-0001", organisation=ORG,
                                         modules=("hearing",), gateways=("gw-1",),
                                         enrolled=T0 - timedelta(days=60)))
        store.audit(db, actor="test", action="patient.add", patient="p-0001")
    engine = alarms.AlarmEngine(db, loaded, registry.modules)
    yield engine
    db.close()


def unresolved(db):
    return {a.rule: a for a in (store.get_alarm(db, r[0]) for r in db.execute(
        "SELECT id FROM alarms WHERE state != 'resolved'"))}


def test_engine_raises_hearing_aid_drop_from_the_daily_logs(engine):
    hours = [*USUAL, 10.0, 10.0, 0.0, 0.0]
    for day, used in enumerate(hours):
        ingest(engine, [Observation(
            id=f"use-{day}", patient="p-0001", device="aid-1", gateway="gw-1",
            code=KNOWN["hearing_aid_use"].code, unit="h", value=Decimal(str(used)),
            effective=T0 - timedelta(days=len(hours) - day))])
        if day == len(hours) - 2:
            assert unresolved(engine.db) == {}  # one day without the aid: quiet
    alarm = unresolved(engine.db)["hearing_aid_drop"]
    assert (alarm.severity, alarm.code) == ("yellow", "hearing_aid_use")
    assert alarm.observations == ("use-30", "use-31")


def test_engine_raises_sudden_loss_red_from_two_audiograms(engine):
    ingest(engine, [audiogram("a-1", "right", FLAT, T0)])
    assert unresolved(engine.db) == {}
    ingest(engine, [audiogram("a-2", "right", dict.fromkeys(FREQUENCIES, 55),
                              T0 + timedelta(days=1))])
    alarm = unresolved(engine.db)["sudden_loss"]
    assert (alarm.severity, alarm.code) == ("red", "audiogram_right")
    assert alarm.observations == ("a-1", "a-2")
    assert alarm.message.startswith("sudden hearing loss, right ear: 35, 35, 35")


# --- telemon hearing-report -------------------------------------------------------------------

def report_cli(pm=None) -> click.Group:
    """A command line with the plugin's commands, registered through a real plugin manager."""
    if pm is None:
        pm = pluggy.PluginManager("telemon")
        pm.add_hookspecs(hookspecs)
        pm.register(hearing, name="hearing")
    group = click.Group(name="telemon")
    errors: list[PluginError] = []
    call_each(pm, "register_commands", errors, lambda _plugin: {"cli": group})
    assert errors == []
    return group


@pytest.fixture
def central(tmp_path):
    """A real central: its config file and database, with two patients (audiograms for
    p-0001 only: an older normal pair and, 2 days ago, a sudden loss in the left ear)."""
    config_path = write_central_toml(tmp_path)
    db = store.open_database(store.central_database_path(tmp_path / "data"))
    installed = {"hearing": MODULE}
    for n in (1, 2):
        admin.add_patient(db, patient=f"p-000{n}", organisation=ORG,
                          display_name=f"Test Patient {n}", timezone="Europe/Copenhagen",
                          modules=("hearing",), gateways=("gw-1",), actor="nurse-a",
                          installed_modules=installed)
    now = datetime.now(UTC)
    store.store_observations(db, [
        audiogram("a-l1", "left", FLAT, now - timedelta(days=4)),
        audiogram("a-r1", "right", FLAT, now - timedelta(days=4)),
        audiogram("a-l2", "left", changed(FLAT, hz2000=55, hz3000=60, hz4000=65),
                  now - timedelta(days=2)),
        audiogram("a-r2", "right", FLAT, now - timedelta(days=2)),
    ])
    yield config_path, db
    db.close()


def run(config_path, *args):
    return CliRunner().invoke(report_cli(), ["hearing-report", *args, "--config",
                                             str(config_path), "--by", "audiologist-a"])


def test_hearing_report_prints_the_assessment_and_audits_the_read(central):
    config_path, db = central
    result = run(config_path, "p-0001")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("hearing assessment of p-0001, ")
    assert lines[1].split() == ["EAR", "TESTED", "PTA4", "0.25k", "0.5k", "1k", "2k", "3k",
                                "4k", "6k", "8k"]
    assert lines[2].split()[0] == "left" and lines[2].split()[-9:] == [
        "40.0", "20", "20", "20", "55", "60", "65", "20", "20"]
    assert "WHO 2021 grade: mild (better ear right, PTA4 20.0 dB HL)\n" in result.output
    assert "asymmetry (NICE NG98, >= 15 dB at two adjacent frequencies): 2, 4 kHz" in (
        result.output)
    assert "  left ear, sudden: 35, 40, 45 dB worse at 2, 3, 4 kHz over 2 days" in (
        result.output)
    assert "recommendation: specialist referral (urgent)" in result.output
    (entry,) = [e for e in admin.audit_entries(db, patient="p-0001")
                if e.action == "hearing.report"]
    assert entry.actor == "audiologist-a"
    assert entry.detail == {"audiograms": ["a-l1", "a-r1", "a-l2", "a-r2"]}


def test_hearing_report_json_is_the_assessment(central):
    config_path, _ = central
    result = run(config_path, "p-0001", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["patient"] == "p-0001"
    assert (found["ears"]["left"]["audiogram"], found["ears"]["right"]["audiogram"]) == (
        "a-l2", "a-r2")
    assert found["recommendation"] == "specialist referral (urgent)"
    assert found["who_grade"]["better_ear"] == "right"


def test_hearing_report_refuses_unknown_patients_and_patients_without_audiograms(central):
    config_path, db = central
    unknown = run(config_path, "p-9999")
    assert (unknown.exit_code, unknown.output) == (1, "Error: unknown patient p-9999\n")
    none = run(config_path, "p-0002")
    assert (none.exit_code, none.output) == (1, "Error: p-0002 has no audiograms\n")
    assert [e.action for e in admin.audit_entries(db, patient="p-0002")][-1] == (
        "hearing.report")  # the attempt to read is audited too


def test_hearing_report_needs_the_right_to_read_the_patient(central):
    config_path, db = central
    admin.add_staff(db, name="admin-a", role="administrator", actor="setup")
    refused = run(config_path, "p-0001")  # as audiologist-a: not on the staff list
    assert refused.exit_code == 1
    assert refused.output == ("Error: refused: audiologist-a is not registered staff (telemon "
                              "staff add); the right patient.read is held by nurse, "
                              "team_lead, administrator\n")
    assert [(e.action, e.detail.get("attempted")) for e in admin.audit_entries(
        db, patient="p-0001")][-1] == ("refused", "hearing.report")
    admin.add_staff(db, name="audiologist-a", role="nurse", actor="admin-a")
    assert run(config_path, "p-0001").exit_code == 0
