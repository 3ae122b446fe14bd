"""The nurse dashboard driven like a nurse drives it (Textual's Pilot, an 80x24 terminal) over
a real central database: every action and what it saved, two dashboards on one alarm, live
updates without losing the cursor, the broker waking it, error states, and snapshots of the
main screens (pytest-textual-snapshot; `pytest --snapshot-update` after a deliberate change).

The ward is test_nursing's: p-0001 RED (escalated), p-0002 YELLOW, p-0004 MISSING, p-0003
GREEN with new readings, p-0005 GREEN and reviewed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import numpy as np
import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from test_nursing import MODULES, NOW, ORG, T0, build_ward, load_config, reading, write_config
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static

from telemon import admin, mqtt, nursing, store, wire
from telemon.central import Central
from telemon.models import LimitSet, Triage
from telemon.tui import app as dashboard_app
from telemon.tui.app import DashboardApp, tui_command
from telemon.tui.screens.dialogs import ConfirmDialog, FilterDialog, LimitsDialog, NoteDialog
from telemon.tui.screens.help import HelpScreen
from telemon.tui.screens.patient import PatientScreen
from telemon.tui.widgets.plot import HistoryPlot, PlotData, plot_lines
from telemon.tui.widgets.status import StatusBar
from telemon.tui.widgets.triage_table import TriageTable, short_message

pytest_plugins = ["mosquitto"]

SIZE = (80, 24)


class Dashboard(DashboardApp):
    """The app as shipped, keeping what it told the nurse (its notifications)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.told: list[str] = []

    def notify(self, message: str, **kwargs) -> None:
        self.told.append(message)
        super().notify(message, **kwargs)


def dashboard(ward, nurse: str = "nurse-a", **kwargs) -> Dashboard:
    kwargs.setdefault("broker", False)
    return Dashboard(ward.config, nurse=nurse, modules=MODULES, database=ward.database,
                     clock=lambda: NOW, **kwargs)


@pytest.fixture
def ward(tmp_path):
    built = build_ward(tmp_path)
    yield built
    built.db.close()


async def until(pilot: Pilot, condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the app run until `condition()` holds (fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the dashboard did not get there in time"
        await pilot.pause(0.02)


async def opened(pilot: Pilot) -> TriageTable:
    await until(pilot, pilot.app.loaded.is_set)
    await pilot.pause()
    return pilot.app.screen.query_one(TriageTable)


def run(scenario) -> None:
    asyncio.run(scenario())


def status(app) -> str:
    return str(app.screen.query_one(StatusBar).render())


def texts(screen, selector: str = "Static") -> str:
    """The text of the screen's widgets (of `selector`), one per line."""
    return "\n".join(str(widget.render()) for widget in screen.query(selector))


def table_lines(table: TriageTable) -> list[str]:
    return [table.render_line(y).text.rstrip() for y in range(table.size.height)]


def alarm_events(ward, patient: str) -> list[tuple[str, str, str]]:
    alarm = store.get_alarm(ward.db, ward.alarm_of(patient))
    return [(e.action, e.by, e.note) for e in alarm.events]


async def type_text(pilot: Pilot, text: str) -> None:
    await pilot.press(*[{" ": "space", "'": "apostrophe", ",": "comma", ".": "full_stop"}
                        .get(c, c) for c in text])


# --- the overview ------------------------------------------------------------------------------


def test_the_overview_shows_every_patient_worst_first_in_words(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            lines = table_lines(table)
            assert lines[0].split() == ["TRIAGE", "PATIENT", "WHAT", "WHEN", "WHO"]
            assert [line.split()[:2] for line in lines[1:6]] == [
                ["RED!", "p-0001"], ["YELLOW", "p-0002"], ["MISSING", "p-0004"],
                ["GREEN", "p-0003"], ["GREEN", "p-0005"]]
            assert "SpO2 86 % < red 88 %" in lines[1] and "10:01" in lines[1]
            detail = str(app.screen.query_one("#detail", Static).render())
            assert "SpO2 86 % below the red limit 88 % (module limits)" in detail
            assert "1 red 1 yellow 1 missing 2 green" in app.counts_text
    run(scenario)
    # showing every patient's name is a read of personal data: audited
    assert [(e.actor, e.detail) for e in admin.audit_entries(ward.db)
            if e.action == "dashboard.open"] == [("nurse-a", {"patients": 5})]


def test_acknowledge_with_a_note_is_saved_audited_and_shown(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await type_text(pilot, "phoned")
            await pilot.press("enter")
            await until(pilot, lambda: table.current.state == "acknowledged")
            assert table.current.patient == "p-0001" and table.current.who == "nurse-a"
    run(scenario)
    assert alarm_events(ward, "p-0001")[-1] == ("acknowledged", "nurse-a", "phoned")
    assert [(e.actor, e.action) for e in admin.audit_entries(ward.db, patient="p-0001")][-1] \
        == ("nurse-a", "alarm.acknowledged")


def test_two_dashboards_acknowledging_one_alarm_keep_one_and_tell_the_other(ward):
    async def scenario():
        first, second = dashboard(ward, "nurse-a"), dashboard(ward, "nurse-b")
        async with first.run_test(size=SIZE) as a, second.run_test(size=SIZE) as b:
            await opened(a)
            await opened(b)
            for pilot in (a, b):  # both open the dialog on the same red alarm
                await pilot.press("a")
                await until(pilot, lambda p=pilot: isinstance(p.app.screen, NoteDialog))
                await type_text(pilot, pilot.app.nurse[-1])
            await asyncio.gather(a.press("enter"), b.press("enter"))
            await until(a, lambda: len(first.told) + len(second.told) >= 2)
            return first.told + second.told
    told = asyncio.run(scenario())
    events = alarm_events(ward, "p-0001")
    acknowledged = [e for e in events if e[0] == "acknowledged"]
    assert len(acknowledged) == 1  # one kept, neither lost silently
    winner = acknowledged[0][1]
    assert acknowledged[0][2] == winner[-1]  # with its own note
    assert "acknowledged p-0001's alarm" in told
    assert any(f"already acknowledged by {winner}" in text for text in told)


def test_resolve_turns_the_patient_green(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await pilot.press("enter")  # no note: asked again, nothing saved
            await pilot.pause(0.1)
            assert isinstance(app.screen, NoteDialog)
            assert NoteDialog.REQUIRED_HINT in texts(app.screen)
            assert alarm_events(ward, "p-0001")[-1][0] != "resolved"
            await type_text(pilot, "stable on recheck")
            await pilot.press("enter")
            await until(pilot, lambda: table.rows["p-0001"].triage == Triage.GREEN)
            assert [r.patient for r in table.shown][:2] == ["p-0002", "p-0004"]
            # the nurse has not moved the cursor: it stays on the worst patient
            assert table.current.patient == "p-0002"
    run(scenario)
    assert alarm_events(ward, "p-0001")[-1] == ("resolved", "nurse-a", "stable on recheck")
    entry = admin.audit_entries(ward.db, patient="p-0001")[-1]
    assert (entry.action, entry.why) == ("alarm.resolved", "stable on recheck")


def test_an_alarm_action_the_role_lacks_is_refused_in_one_line_and_audited(ward):
    admin.add_staff(ward.db, name="admin-a", role="administrator", actor="setup")
    admin.add_staff(ward.db, name="nurse-a", role="nurse", actor="admin-a")

    async def scenario():
        app = dashboard(ward, "admin-a")
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await type_text(pilot, "on it")
            await pilot.press("enter")
            await until(pilot, lambda: app.told)
            await pilot.press("m")  # assign to me: the same right
            await until(pilot, lambda: len(app.told) >= 2)
            return app.told
    told = asyncio.run(scenario())
    assert told == [
        "refused: admin-a (administrator) lacks the right alarm.handle: the right "
        "alarm.handle is held by nurse, team_lead"] * 2
    assert alarm_events(ward, "p-0001")[-1][0] == "escalated"  # not acknowledged
    assert [(e.actor, e.detail["attempted"]) for e in admin.audit_entries(ward.db)
            if e.action == "refused"] == [("admin-a", "alarm.acknowledged"),
                                          ("admin-a", "patient.assign")]


def test_someone_not_on_the_staff_list_is_refused_the_overview_and_audited(ward, monkeypatch):
    admin.add_staff(ward.db, name="admin-a", role="administrator", actor="setup")
    monkeypatch.setattr(dashboard_app, "RETRY_SECONDS", 0.02)  # a retry would show at once

    async def scenario():
        app = dashboard(ward, "visitor")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.database_problem)
            await pilot.pause(0.3)  # not tried again: one refusal, one audit entry
            return table_lines(app.screen.query_one(TriageTable)), app.loaded.is_set()
    lines, loaded = asyncio.run(scenario())
    assert not loaded
    assert "refused: visitor is not registered staff" in "".join(lines)
    assert not any("p-0001" in line for line in lines)  # no patient shown
    assert [(e.actor, e.detail["right"], e.detail["attempted"])
            for e in admin.audit_entries(ward.db) if e.action == "refused"] == [
        ("visitor", "patient.read", "dashboard.open")]
    assert not [e for e in admin.audit_entries(ward.db) if e.action == "dashboard.open"]


def test_assign_to_me_shows_who_is_on_it_and_another_nurse_is_refused(ward):
    async def scenario():
        mine, theirs = dashboard(ward, "nurse-a"), dashboard(ward, "nurse-b")
        async with mine.run_test(size=SIZE) as a, theirs.run_test(size=SIZE) as b:
            table = await opened(a)
            other = await opened(b)
            await a.press("down", "m")  # p-0002
            await until(a, lambda: table.rows["p-0002"].assigned_to == "nurse-a")
            assert "nurse-a" in table_lines(table)[2]
            await until(b, lambda: other.rows["p-0002"].assigned_to == "nurse-a")
            await b.press("down", "m")
            await until(b, lambda: theirs.told)
            assert theirs.told == ["p-0002 is already assigned to nurse-a (since "
                                   f"{nursing_since(ward)} UTC)"]
            await a.press("m")  # again: released
            await until(a, lambda: table.rows["p-0002"].assigned_to is None)
    run(scenario)
    assert [(e.actor, e.action) for e in admin.audit_entries(ward.db, patient="p-0002")
            if e.action.startswith("patient.")][-2:] == [("nurse-a", "patient.assign"),
                                                         ("nurse-a", "patient.release")]


def nursing_since(ward) -> str:
    row = ward.db.execute("SELECT at FROM audit WHERE action = 'patient.assign' "
                          "ORDER BY id DESC LIMIT 1").fetchone()
    return row[0][:16].replace("T", " ")


def test_contacted_is_kept_with_its_note(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("down", "down", "c")  # p-0004, missing
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await type_text(pilot, "phoned")
            await pilot.press("enter")
            await until(pilot, lambda: table.rows["p-0004"].contacted is not None)
            detail = str(app.screen.query_one("#detail", Static).render())
            assert "contacted" in detail
    run(scenario)
    (contact,) = nursing.contacts(ward.db, "p-0004")
    assert (contact.nurse, contact.note) == ("nurse-a", "phoned")


def test_cancelling_a_dialog_saves_nothing(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await type_text(pilot, "no")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, NoteDialog))
            await pilot.pause(0.2)
    run(scenario)
    assert [e[0] for e in alarm_events(ward, "p-0001")] == ["raised", "escalated"]


def test_edit_limits_shows_before_and_after_and_needs_a_reason(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LimitsDialog))
            dialog = app.screen
            await pilot.press("enter", "down", "enter")  # the measure: SpO2
            await until(pilot, lambda: dialog.query_one("#red_low", Input).value == "88")
            await pilot.click("#red_low")
            await pilot.press("end", "backspace", "backspace", "8", "5")
            preview = dialog.query_one("#preview", Static)
            assert str(preview.render()) == ("before (module): red < 88, yellow < 90\n"
                                             "after: red < 85, yellow < 90")
            await pilot.press("enter")  # no reason yet
            assert "cannot save: a reason is required" in str(preview.render())
            await pilot.click("#red_low")
            await pilot.press("end", "backspace", "backspace", "9", "5")  # above yellow low
            assert "red_low" in str(preview.render())
            await pilot.press("backspace", "backspace", "8", "5")
            await pilot.click("#reason")
            await type_text(pilot, "order")
            await pilot.press("enter")
            await until(pilot, lambda: any("limits version 1" in t for t in app.told))
    run(scenario)
    (version,) = admin.limit_versions(ward.db, "p-0001")
    assert (version.limits.red_low, version.limits.yellow_low) == (Decimal(85), Decimal(90))
    assert (version.author, version.reason) == ("nurse-a", "order")
    (entry,) = [e for e in admin.audit_entries(ward.db, patient="p-0001")
                if e.action == "limits.set"]
    assert entry.detail["before"] is None and entry.detail["after"]["red_low"] == 85


def test_bulk_acknowledge_greens_marks_the_unreviewed_ones(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("g")
            await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")
            await until(pilot, lambda: table.rows["p-0003"].reviewed_by == "nurse-a")
            assert "1 green patient(s) reviewed" in app.told
            assert "reviewed by nurse-a" in next(
                line for line in table_lines(table) if "p-0003" in line)
            await pilot.press("g")  # nothing new now
            await until(pilot, lambda: len(app.told) == 2)
            assert app.told[-1] == "no green patient here has new readings to review"
    run(scenario)
    assert ("nurse-a", "patient.reviewed") in [
        (e.actor, e.action) for e in admin.audit_entries(ward.db, patient="p-0003")]


def test_search_and_filter_narrow_the_overview_and_escape_clears_them(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("slash")
            await type_text(pilot, "patient 4")
            assert [r.patient for r in table.shown] == ["p-0004"]
            await pilot.press("enter")  # back to the table
            assert app.focused is table
            await pilot.press("escape")
            assert len(table.shown) == 5
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, FilterDialog))
            app.screen.query_one("#triage", Select).value = "green"
            await pilot.click("#apply")
            await until(pilot, lambda: [r.patient for r in table.shown] == ["p-0003", "p-0005"])
            assert "filter: GREEN (2)" in str(app.screen.query_one("#filter-text").render())
            await pilot.press("slash")
            await type_text(pilot, "zzz")
            assert "No patient matches the filter" in table_lines(table)[2]
            await pilot.press("escape")
            assert len(table.shown) == 5
    run(scenario)


# --- the patient view ----------------------------------------------------------------------------


def test_the_patient_view_shows_history_alarms_and_acts_on_the_chosen_alarm(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, PatientScreen)
                        and app.screen.record is not None)
            screen = app.screen
            title = str(screen.query_one("#patient-title", Static).render())
            assert title == "p-0001 Test Patient 1 | RED | ward"
            assert len(screen.query(HistoryPlot)) == 2  # SpO2 and pulse; weight: none
            assert "86 % at 10:00 (spo2-meter-1)" in texts(screen, ".measure-title")
            await pilot.press("2")
            trail = str(screen.query_one("#alarm-trail", Static).render())
            assert "escalated by central" in trail
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await type_text(pilot, "seen")
            await pilot.press("enter")
            await until(pilot, lambda: screen.record.alarms[0].state == "acknowledged")
            await until(pilot, lambda: "acknowledged by nurse-a" in str(
                screen.query_one("#alarm-trail", Static).render()))
            await pilot.press("escape")
            assert table.current.patient == "p-0001"
    run(scenario)
    assert ("nurse-a", "patient.show") in [
        (e.actor, e.action) for e in admin.audit_entries(ward.db, patient="p-0001")]


def test_the_patient_view_marks_contacted_assigns_and_changes_the_period(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            await pilot.press("down", "enter")  # p-0002
            await until(pilot, lambda: isinstance(app.screen, PatientScreen)
                        and app.screen.record is not None)
            screen = app.screen
            await pilot.press("m")
            await until(pilot, lambda: screen.record.assigned_to == "nurse-a")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, NoteDialog))
            await pilot.press("enter")
            await until(pilot, lambda: screen.record.contacts)
            await pilot.press("5")
            assert screen.query_one("#consent-table", DataTable).row_count == 1
            await pilot.press("d")
            await until(pilot, lambda: screen.record.days == 90)
    run(scenario)


def test_help_lists_every_key(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            shown = texts(app.screen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            return shown
    shown = asyncio.run(scenario())
    for text in ("acknowledge worst alarm", "assign to me / release", "greens shown: reviewed",
                 "search name or id", "filter module/triage/org", "plot 7, 30 or 90 days",
                 "show that tab", "back to the overview", "Quit"):
        assert text in shown


# --- live ----------------------------------------------------------------------------------------


def test_a_new_red_appears_within_a_second_and_the_cursor_stays_put(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await pilot.press("down", "down", "down")
            assert table.current.patient == "p-0003"
            committed = time.monotonic()
            ward.ingest([reading("p-0005", "spo2", "84", T0 + timedelta(hours=2))],
                        now=T0 + timedelta(hours=2))  # another process, the central
            await until(pilot, lambda: table.rows["p-0005"].triage == Triage.RED, 1.0)
            took = time.monotonic() - committed
            assert [r.patient for r in table.shown][:2] == ["p-0001", "p-0005"]
            assert table.current.patient == "p-0003"  # moved down a line with its patient
            assert any("p-0005 Test Patient 5" in text for text in app.told)
            return took
    took = asyncio.run(scenario())
    assert took < 1.0


def test_the_broker_wakes_the_dashboard_and_its_loss_is_shown(tmp_path, mosquitto):
    ward = build_ward(tmp_path, broker=mosquitto.url)
    central = Central(ward.config, MODULES, client_id="central-tui-test")
    central.start()
    assert central.wait_connected(10)

    async def scenario():
        # polling only every 30 s: what arrives within seconds came by the broker
        app = dashboard(ward, broker=True, poll=30.0)
        async with app.run_test(size=SIZE) as pilot:
            table = await opened(pilot)
            await until(pilot, lambda: app.broker_connected, 10)
            assert status(app).endswith("| live")
            publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-test")
            publisher.connect("127.0.0.1", mosquitto.port)
            publisher.loop_start()
            low = reading("p-0003", "spo2", "83", NOW)
            publisher.publish(mqtt.obs_topic(ORG, "gw-p-0003"),
                              mqtt.batch_message([wire.encode(low)]), qos=1).wait_for_publish(5)
            await until(pilot, lambda: table.rows["p-0003"].triage == Triage.RED, 5)
            publisher.loop_stop()
            publisher.disconnect()
            mosquitto.kill()
            await until(pilot, lambda: not app.broker_connected, 10)
            assert status(app).endswith("| no broker: database only")
    try:
        run(scenario)
    finally:
        central.close()
        ward.db.close()


def test_an_unreadable_database_is_said_and_the_app_keeps_running(tmp_path):
    config = load_config(write_config(tmp_path))
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / "central.db"
    database.write_bytes(b"not a database " * 200)

    async def scenario():
        app = Dashboard(config, nurse="nurse-a", modules=MODULES, broker=False,
                        clock=lambda: NOW)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.database_problem)
            table = app.screen.query_one(TriageTable)
            assert "Cannot read the central database: database unreadable: file is not a " \
                   "database" in table_lines(table)[2]
            assert "DATABASE: database unreadable" in status(app)
            database.unlink()  # then the central makes a good one: the dashboard recovers
            store.open_database(database).close()
            await until(pilot, lambda: app.loaded.is_set(), 5)
            assert app.database_problem is None
    run(scenario)


def test_an_action_on_a_locked_database_says_so_and_saves_nothing(ward):
    async def scenario():
        app = dashboard(ward)
        async with app.run_test(size=SIZE) as pilot:
            await opened(pilot)
            ward.db.execute("BEGIN IMMEDIATE")  # another program holds the write lock
            await pilot.press("m")
            await until(pilot, lambda: app.told, 8)
            ward.db.execute("ROLLBACK")
            return app.told
    told = asyncio.run(scenario())
    assert told == ["not saved: database locked by another program; try again"]
    assert nursing.assigned_to(ward.db, "p-0001") is None


# --- the command ---------------------------------------------------------------------------------


def test_the_command_refuses_a_missing_database_and_a_bad_config(tmp_path):
    runner = CliRunner()
    config = write_config(tmp_path, module="copd")  # the command uses the installed modules
    result = runner.invoke(tui_command, ["--config", str(config), "--as", "nurse-a"])
    assert result.exit_code == 1
    assert "no central database at" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('role = "central"\n')
    result = runner.invoke(tui_command, ["--config", str(bad), "--as", "nurse-a"])
    assert result.exit_code == 2 and "organisation: is required" in result.output
    result = runner.invoke(tui_command, ["--config", str(config), "--as", " "])
    assert result.exit_code == 2 and "say who you are" in result.output


# --- snapshots (80x24) ---------------------------------------------------------------------------


async def settled(pilot: Pilot) -> None:
    await opened(pilot)
    await pilot.pause(0.1)


def test_snapshot_overview(ward, snap_compare):
    assert snap_compare(dashboard(ward), terminal_size=SIZE, run_before=settled)


def test_snapshot_patient_view(ward, snap_compare):
    async def patient(pilot: Pilot) -> None:
        await settled(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, PatientScreen)
                    and pilot.app.screen.record is not None)
        await pilot.pause(0.1)
    assert snap_compare(dashboard(ward), terminal_size=SIZE, run_before=patient)


def test_snapshot_help(ward, snap_compare):
    assert snap_compare(dashboard(ward), terminal_size=SIZE, run_before=settled,
                        press=["question_mark"])


def test_snapshot_empty_central(tmp_path, snap_compare):
    config = load_config(write_config(tmp_path))
    store.open_database(store.central_database_path(config.storage.path)).close()
    app = Dashboard(config, nurse="nurse-a", modules=MODULES, broker=False, clock=lambda: NOW)
    assert snap_compare(app, terminal_size=SIZE, run_before=settled)



# --- the widgets' drawing ------------------------------------------------------------------------


def test_the_plot_draws_readings_on_their_side_of_the_limit_lines():
    start = NOW - timedelta(days=1)
    times = np.array([start.timestamp() + 3600, start.timestamp() + 7200])
    spo2 = LimitSet(red_low=Decimal(88), yellow_low=Decimal(90))
    lines = [line.plain for line in plot_lines(
        PlotData(times, np.array([86.0, 95.0]), spo2, start, NOW), 60, 10)]
    red = next(i for i, line in enumerate(lines) if "=" in line)
    yellow = next(i for i, line in enumerate(lines) if "-" in line)
    high, low = [i for i, line in enumerate(lines) if "o" in line]
    assert high < yellow < red < low  # 95 above the yellow line, 86 below the red one
    assert lines[red].startswith("    88┤") and lines[yellow].startswith("    90┤")
    # a pulse red-high of 130 far above readings around 70 is left off (named in the title)
    pulse = LimitSet(yellow_high=Decimal(100), red_high=Decimal(130))
    drawn = plot_lines(PlotData(times, np.array([68.0, 72.0]), pulse, start, NOW), 60, 10)
    assert not any("=" in line.plain for line in drawn)


def test_the_what_column_shortens_the_engines_sentence():
    assert short_message("SpO2 86 % below the red limit 88 % (module limits)") == \
        "SpO2 86 % < red 88 %"
    assert short_message("Pulse rate 140 /min above the yellow limit 100 /min (patient v2 "
                         "limits)") == "Pulse rate 140 /min > yellow 100 /min"
    assert short_message("no SpO2 by the deadline") == "no SpO2 by the deadline"
