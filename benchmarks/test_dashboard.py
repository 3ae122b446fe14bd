"""The nurse dashboard with 10,000 patients in the central database (the issue's figure):

* `test_overview_opens`: from starting the app to the overview drawn with every patient
  (the one overview query, sorting, the first screen). Target: under 1.5 s.
* `test_live_update`: a new red alarm committed by another connection (as the central does:
  store, evaluate, commit) until the patient's row is red in the dashboard's table, without
  the broker (the database poll alone). Target: under 100 ms; p50 / p95 / max are printed
  (run with -s) and kept in the benchmark's extra_info.

The database: 10,000 patients enrolled with the COPD module, five SpO2 readings each (50,000
observations), one in ten with an unresolved alarm (red, yellow or missing, some
acknowledged). Building it takes a few seconds; the time is printed.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from telemon import alarms, config, plugin_manager, store
from telemon.codes import KNOWN
from telemon.config import CentralConfig
from telemon.models import Alarm, AlarmEvent, Observation, Triage
from telemon.tui.app import DashboardApp
from telemon.tui.widgets.triage_table import TriageTable

ORG = "kommune-0999"
PATIENTS = 10_000
READINGS = 5
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SIZE = (80, 24)


def central_config(folder) -> CentralConfig:
    loaded, problems = config.validate({
        "role": "central", "organisation": ORG, "broker": {"url": "mqtt://127.0.0.1:1"},
        "storage": {"path": str(folder)}, "modules": {"copd": {"enabled": True}}},
        plugin_manager.get()[1])
    assert not problems, problems
    return loaded


def build(folder) -> tuple[CentralConfig, str, float]:
    """The central database described above; (config, path, seconds it took)."""
    started = time.perf_counter()
    cfg = central_config(folder)
    path = store.central_database_path(cfg.storage.path)
    db = store.open_database(path)
    rng = random.Random(7)
    created = store.utc_text(NOW - timedelta(days=60))
    ids = [f"p-{n:05d}" for n in range(PATIENTS)]
    spo2 = KNOWN["spo2"]
    with store.transaction(db):
        db.conn.executemany(
            "INSERT INTO patients (id, organisation, display_name, timezone, created) "
            "VALUES (?, ?, ?, 'Europe/Copenhagen', ?)",
            [(p, ORG, f"Test Patient {n}", created) for n, p in enumerate(ids)])
        db.conn.executemany(
            "INSERT INTO enrolments (patient, organisation, modules, gateways, enrolled) "
            "VALUES (?, ?, '[\"copd\"]', ?, ?)",
            [(p, ORG, json.dumps([f"gw-{p}"]), created) for p in ids])
        store.audit(db, actor="benchmark", action="patient.add")
        store.store_observations(db, [
            Observation(id=f"{p}-spo2-{i}", patient=p, device="ox-1", gateway=f"gw-{p}",
                        code=spo2.code, unit=spo2.unit, value=Decimal(rng.randint(92, 98)),
                        effective=NOW - timedelta(hours=8 * i))
            for p in ids for i in range(READINGS)], received=NOW)
        for n, p in enumerate(ids[::10]):
            severity = ("red", "yellow", "missing")[n % 3]
            raised = NOW - timedelta(minutes=rng.randint(1, 600))
            events = (AlarmEvent(at=raised, action="raised", by="central", note="test"),)
            state = "open"
            if n % 4 == 0:
                state = "acknowledged"
                events += (AlarmEvent(at=raised, action="acknowledged", by="nurse-b"),)
            store.store_record(db, Alarm(
                id=f"alarm-{p}", patient=p, module="copd",
                rule="missing" if severity == "missing" else "limits.spo2",
                severity=severity, raised=raised, message=f"{severity} finding", state=state,
                events=events, code=None if severity == "missing" else "spo2"))
    db.close()
    return cfg, path, time.perf_counter() - started


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    cfg, path, took = build(tmp_path_factory.mktemp("dashboard"))
    print(f"\nbuilt {PATIENTS} patients, {PATIENTS * READINGS} readings, "
          f"{PATIENTS // 10} alarms in {took:.1f} s")
    return cfg, path


def dashboard(cfg: CentralConfig, path: str) -> DashboardApp:
    return DashboardApp(cfg, nurse="nurse-a", modules=plugin_manager.get()[1].modules,
                        database=path, clock=lambda: NOW, broker=False)


async def open_once(cfg: CentralConfig, path: str) -> float:
    started = time.perf_counter()
    app = dashboard(cfg, path)
    async with app.run_test(size=SIZE) as pilot:
        while not app.loaded.is_set():
            await pilot.pause(0.005)
        await pilot.pause()  # drawn
        took = time.perf_counter() - started
        table = app.screen.query_one(TriageTable)
        assert len(table.shown) == PATIENTS
        assert table.shown[0].triage == Triage.RED
    return took


def test_overview_opens(benchmark, central):
    cfg, path = central
    took = benchmark.pedantic(lambda: asyncio.run(open_once(cfg, path)), rounds=3,
                              iterations=1)
    print(f"\noverview with {PATIENTS} patients opened in {took:.2f} s")
    assert took < 1.5


async def live_updates(cfg: CentralConfig, path: str, count: int) -> list[float]:
    """Raise a red for `count` green patients, one at a time; the seconds each took to
    land in the table."""
    app = dashboard(cfg, path)
    central_db = store.open_database(path)
    engine = alarms.AlarmEngine(central_db, cfg, plugin_manager.get()[1].modules)
    latencies = []
    async with app.run_test(size=SIZE) as pilot:
        while not app.loaded.is_set():
            await pilot.pause(0.005)
        table = app.screen.query_one(TriageTable)
        greens = [r.patient for r in table.shown if r.triage == Triage.GREEN][:count]
        spo2 = KNOWN["spo2"]
        for n, patient in enumerate(greens):
            reading = Observation(
                id=f"{patient}-live-{n}", patient=patient, device="ox-1",
                gateway=f"gw-{patient}", code=spo2.code, unit=spo2.unit, value=Decimal(84),
                effective=NOW + timedelta(minutes=n))
            with store.transaction(central_db):
                engine.directory.refresh()
                new = store.store_observations(central_db, [reading], received=NOW)
                engine.evaluate(new, NOW)
            committed = time.perf_counter()
            while table.rows[patient].triage != Triage.RED:
                assert time.perf_counter() - committed < 5, "the red never arrived"
                await pilot.pause(0.001)
            latencies.append(time.perf_counter() - committed)
    central_db.close()
    return latencies


def test_live_update(benchmark, central):
    cfg, path = central
    latencies = benchmark.pedantic(lambda: asyncio.run(live_updates(cfg, path, 20)), rounds=1,
                                   iterations=1)
    ms = sorted(1000 * t for t in latencies)
    figures = {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
               "max_ms": ms[-1]}
    benchmark.extra_info.update(figures)
    print("\nlive update with {} patients: p50 {p50_ms:.0f} ms, p95 {p95_ms:.0f} ms, "
          "max {max_ms:.0f} ms".format(PATIENTS, **figures))
    assert figures["p50_ms"] < 100
