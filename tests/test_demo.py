"""`telemon demo`: the plan of homes, simulated time, and the headless demo as a real process
(embedded broker, central, gateways) whose summary is checked against the database it leaves;
a record lost on the way makes it fail; Ctrl-C stops it cleanly, broker child included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemon import cohorts, plugin_manager, sim
from telemon.config import load
from telemon.demo import ReplayThenLive, Summary, Timeline, demo_command, plan_homes
from telemon.modules import DiseaseModule, Schedule
from telemon.outbox import Outbox, outbox_path

REGISTRY = plugin_manager.get()[1]
SIM_DRIVERS = {n: d for n, d in REGISTRY.drivers.items() if d.transport == "sim"}
DEMO = [sys.executable, "-c", "from telemon.demo import demo_command; demo_command()"]


def module(name: str, *codes: str) -> DiseaseModule:
    return DiseaseModule(name=name, version="1", title=name, codes=codes, default_limits={},
                         schedule=Schedule(codes=()), summarise=lambda _latest: "",
                         sources=("test",))


FOUR = {"copd": module("copd", "spo2", "pulse", "temperature", "weight", "fev1"),
        "heart_failure": module("heart_failure", "weight", "bp", "bp_sys", "pulse_bp",
                                "rr_interval"),
        "back_pain": module("back_pain", "pain_nrs", "steps"),
        "hearing": module("hearing", "hearing_aid_use")}


# --- the plan -----------------------------------------------------------------------------------


def test_the_homes_mix_the_modules_and_every_third_deteriorates():
    homes = plan_homes(12, 7, FOUR, SIM_DRIVERS)
    assert [h.modules for h in homes[:10]] == [
        ("copd",), ("heart_failure",), ("copd",), ("heart_failure",), ("copd", "heart_failure"),
        ("copd",), ("heart_failure",), ("back_pain",), ("copd",), ("hearing",)]
    assert [h.patient for h in homes[:2]] == ["demo-001", "demo-002"]
    assert [h.display_name for h in homes[:2]] == ["Demo Patient 01", "Demo Patient 02"]
    assert len({h.gateway for h in homes}) == 12
    for home in homes:
        if home.index % 3 == 2:
            assert home.scenario in cohorts.EVENTS[home.modules[0]]
        else:
            assert home.scenario == "stable"
    assert homes == plan_homes(12, 7, FOUR, SIM_DRIVERS)  # deterministic
    assert [h.seed for h in plan_homes(12, 8, FOUR, SIM_DRIVERS)] != [h.seed for h in homes]


def test_each_home_has_the_devices_its_modules_need_and_no_others():
    for home in plan_homes(10, 1, FOUR, SIM_DRIVERS):
        wanted = {c for m in home.modules for c in FOUR[m].codes}
        read = [set(SIM_DRIVERS[driver].codes) for driver, _ in home.devices]
        assert all(codes & wanted for codes in read), home  # each device measures something
        simulated = {c for d in SIM_DRIVERS.values() for c in d.codes}
        assert wanted & simulated <= set().union(*read), home  # nothing a device could read
    assert plan_homes(3, 1, {"hearing": FOUR["hearing"]}, SIM_DRIVERS)[0].devices == ()


def test_only_installed_modules_are_used():
    homes = plan_homes(10, 1, {"copd": FOUR["copd"]}, SIM_DRIVERS)
    assert {h.modules for h in homes} == {("copd",)}
    assert [h.scenario for h in homes if h.deteriorates] == ["copd-exacerbation"] * 3


# --- simulated time -----------------------------------------------------------------------------


def test_the_replay_ends_at_the_present_and_time_then_runs_at_real_speed():
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    timeline = Timeline.replay(10, 8640, now=now)
    assert timeline.present == now + timedelta(seconds=10)
    assert timeline.simulated(now) == timeline.start == timeline.present - timedelta(days=1)
    assert timeline.simulated(now + timedelta(seconds=5)) == timeline.start + timedelta(hours=12)
    assert timeline.simulated(timeline.present) == timeline.present
    later = timeline.present + timedelta(hours=1)
    assert timeline.simulated(later) == later


def test_a_deterioration_reaches_its_height_inside_the_replay():
    timeline = Timeline.replay(60, 8640)  # six days
    for home in plan_homes(30, 3, FOUR, SIM_DRIVERS):
        model = home.model(timeline)
        if not home.deteriorates:
            assert model.events == ()
            continue
        (event,) = model.events
        assert event.kind == home.scenario
        assert timeline.start < event.start
        assert event.start + event.onset <= timeline.present - timedelta(hours=12)


def test_a_device_replays_up_to_the_present_then_goes_on_at_real_time():
    timeline = Timeline.replay(1.0, 3 * 86400)  # three days in a second
    device = load_device("sim_weight_scale")  # one reading a day, 07:30 local
    readings = []

    async def scenario():
        transport = ReplayThenLive(
            SIM_DRIVERS["sim_weight_scale"], device, gateway_id="gw-demo-001", tz=sim.HOME,
            submit=readings.extend, reject=lambda *args: pytest.fail(f"rejected {args}"),
            timeline=timeline, model=sim.PatientModel(5))
        running = asyncio.ensure_future(transport.run())
        await asyncio.sleep(1.5)
        assert transport.current == 1 and transport.status == sim.CONNECTED  # live now
        transport.stop()
        await asyncio.wait_for(running, 5)
        return transport

    transport = asyncio.run(scenario())
    assert len(readings) in (2, 3)  # a 07:30 in each of the three days, bar the edges
    assert all(timeline.start <= r.effective <= timeline.present for r in readings)
    assert transport.counters.observations == len(readings)


def load_device(driver: str):
    from telemon.config import DeviceConfig

    return DeviceConfig(driver=driver, patient="demo-001", device="scale-1", address=None,
                        user=None)


# --- the summary and the command line -----------------------------------------------------------


def summary(**changes) -> Summary:
    now = datetime.now(UTC)
    fields = dict(homes=2, deteriorating=1, seconds=10.0, simulated_from=now, simulated_to=now,
                  generated=100, sent=100, waiting=0, refused=0, stored=100, alarms={},
                  triage={}, quarantined_homes=0, quarantined_central=0)
    return Summary(**(fields | changes))


def test_the_summary_names_every_kind_of_loss():
    assert summary().problems == []
    assert summary(stored=97).problems == [
        "LOST: 3 record(s) acknowledged by the broker are not in the central's database"]
    assert summary(sent=90, waiting=10, stored=90).problems == [
        "10 record(s) still waiting in the homes' outboxes (not delivered in time; kept there)"]
    assert summary(refused=4).problems == ["LOST: 4 reading(s) refused by a full outbox"]
    assert summary(quarantined_central=1).problems == [
        "1 item(s) quarantined at the central (the homes send only valid records)"]
    assert "nothing lost" in summary().lines()[-1]
    assert summary(stored=99).lines()[-1].startswith("  LOST: 1 record(s)")


def test_the_demo_will_not_use_a_folder_that_holds_something(tmp_path):
    (tmp_path / "central.db").write_text("someone's data")
    result = CliRunner().invoke(demo_command, ["--headless", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an empty folder" in result.output
    assert (tmp_path / "central.db").read_text() == "someone's data"


# --- the demo as a process ------------------------------------------------------------------------


def run_demo(data: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([*DEMO, "--headless", "--json", "--data", str(data), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def count(db: sqlite3.Connection, sql: str, *params) -> int:
    return db.execute(sql, params).fetchone()[0]


def test_a_headless_demo_stores_everything_its_homes_sent(tmp_path):
    data = tmp_path / "demo"
    process = run_demo(data, "--homes", "4", "--duration", "10", "--speed", "51840")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["ok"] and report["problems"] == []
    assert report["sent"] == report["stored"] == report["generated"] > 200

    db = sqlite3.connect(data / "central" / "central.db")
    readings = count(db, "SELECT COUNT(*) FROM observations "
                         "WHERE driver NOT LIKE 'questionnaire:%'")
    responses = count(db, "SELECT COUNT(*) FROM questionnaire_responses")
    assert readings + responses == report["stored"]
    assert dict(db.execute("SELECT severity, COUNT(*) FROM alarms GROUP BY severity")) \
        == report["alarms"]
    assert count(db, "SELECT COUNT(*) FROM quarantine") == report["quarantined_central"] == 0
    assert count(db, "SELECT COUNT(*) FROM patients") == 4
    assert count(db, "SELECT COUNT(*) FROM audit WHERE action = 'patient.add' "
                     "AND actor = 'demo'") == 4

    # six simulated days, ending at the present: nothing dated after it was received
    first, last = db.execute("SELECT MIN(effective), MAX(effective) FROM observations "
                             "WHERE driver NOT LIKE 'questionnaire:%'").fetchone()
    span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
    assert timedelta(days=5) < span <= timedelta(days=6)
    assert count(db, "SELECT COUNT(*) FROM observations WHERE effective > received") == 0

    # the deteriorating patient raised alarms of a module rule or limit
    deteriorating = [p["patient"] for p in report["patients"] if p["scenario"] != "stable"]
    assert deteriorating == ["demo-002"]
    rules = {r for (r,) in db.execute("SELECT rule FROM alarms WHERE patient = 'demo-002'")}
    assert rules - {"missing"} and not all(r.startswith("answers.") for r in rules), rules
    for patient in report["patients"]:
        assert patient["alarms"] == count(db, "SELECT COUNT(*) FROM alarms WHERE patient = ? "
                                              "AND rule != 'missing'", patient["patient"])

    # the configs it wrote are valid, and every outbox is empty
    for home in report["patients"]:
        folder = data / "homes" / home["gateway"]
        edge = load(folder / "edge.toml", REGISTRY)
        assert [d.driver for d in edge.devices] == home["devices"]
        with Outbox(outbox_path(folder), readonly=True) as outbox:
            assert outbox.stats().depth == 0
    assert load(data / "central.toml", REGISTRY).modules.keys() == REGISTRY.modules.keys()


def test_a_record_lost_after_it_was_stored_makes_the_demo_fail(tmp_path):
    data = tmp_path / "demo"
    process = run_demo(data, "--homes", "2", "--duration", "10", "--speed", "51840")
    database = data / "central" / "central.db"
    deadline = time.monotonic() + 60
    lost = None
    while lost is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        if not database.exists():
            continue
        with sqlite3.connect(database, timeout=10) as db:  # one transaction
            try:
                row = db.execute("SELECT id FROM observations WHERE driver LIKE 'ble_%' "
                                 "LIMIT 1").fetchone()
            except sqlite3.OperationalError:  # not created yet
                continue
            if row is not None:
                lost = row[0]
                db.execute("DELETE FROM evaluations WHERE observation = ?", [lost])
                db.execute("DELETE FROM observations WHERE id = ?", [lost])
    assert lost is not None, "no reading was stored to lose"
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    report = json.loads(out)
    assert report["sent"] - report["stored"] == 1
    assert report["problems"] == [
        "LOST: 1 record(s) acknowledged by the broker are not in the central's database"]
    with sqlite3.connect(database) as db:
        assert count(db, "SELECT COUNT(*) FROM observations WHERE id = ?", lost) == 0


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_everything_cleanly(tmp_path):
    data = tmp_path / "demo"
    process = run_demo(data, "--homes", "2", "--duration", "600")
    for line in process.stderr:
        if line.startswith("running:"):
            break
    else:
        pytest.fail(f"the demo did not start: {process.communicate()}")
    broker = children(process.pid)
    assert len(broker) == 1  # the embedded broker's child process
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] and report["ok"]
    assert report["sent"] == report["stored"]
    (pid,) = broker
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped


def test_edge_configs_say_the_scenario_the_home_lives(tmp_path):
    """The files alone run a home (`telemon edge --config`): each device's scenario and the
    home's seed are in them."""
    from telemon.demo import write_edge_config

    home = next(h for h in plan_homes(3, 1, {"copd": FOUR["copd"]}, SIM_DRIVERS)
                if h.deteriorates)
    path = write_edge_config(tmp_path, "mqtt://127.0.0.1:1883", home, 8640)
    document = tomllib.loads(path.read_text())
    assert {d["scenario"] for d in document["devices"]} == {"copd-exacerbation"}
    assert {d["seed"] for d in document["devices"]} == {home.seed}
    assert load(path, REGISTRY).gateway == home.gateway


def test_without_a_terminal_the_dashboard_is_refused_before_anything_starts(tmp_path):
    result = CliRunner().invoke(demo_command, ["--data", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "the dashboard needs a terminal" in result.output
    assert not (tmp_path / "demo").exists()


def dashboard_loads() -> bool:
    try:
        import telemon.tui.app  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not dashboard_loads(), reason="the dashboard (telemon.tui) cannot be "
                                                  "imported in this installation")
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_in_the_dashboard_stops_the_demo_cleanly(tmp_path):
    import fcntl
    import pty
    import select
    import struct
    import termios

    data = tmp_path / "demo"
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([*DEMO, "--homes", "2", "--duration", "5", "--data", str(data)],
                               stdin=child_end, stdout=child_end, stderr=child_end,
                               env={**os.environ, "TERM": "xterm-256color",
                                    "TELEMON_USER": "Nurse Test"})
    os.close(child_end)
    screen = b""

    def read_until(done, seconds: float) -> bool:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    screen += os.read(terminal, 65536)
                except OSError:  # the child closed the terminal
                    return done()
        return done()

    try:
        assert read_until(lambda: b"demo-001" in screen, 60), screen[-2000:]  # the overview
        broker = children(process.pid)
        assert len(broker) == 1  # the embedded broker's child process
        os.write(terminal, b"\x03")
        read_until(lambda: process.poll() is not None, 60)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(terminal)
    assert b"nothing lost" in screen
    for pid in broker:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
