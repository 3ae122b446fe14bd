"""`telemon demo`: the whole system on one machine, with simulated homes.

    telemon demo [--homes 50] [--seed S] [--speed X] [--data DIR] [--duration SECONDS]
    telemon demo --headless --duration SECONDS [--json]

One process runs everything on the production code paths: the embedded MQTT broker
(`telemon.broker.EmbeddedBroker`, a child process), a `Central` (a thread) with every
installed disease module, and one edge `Gateway` per home (its own outbox file and MQTT
connection) whose devices are the `sim_*` drivers: frames from a physiological patient model
(`telemon.sim`) through the real parsers. The configs it writes into the data folder
(central.toml, homes/<gateway>/edge.toml) are ordinary ones; patients are enrolled with the
admin library (`telemon.admin`), so the audit log shows who did what.

Time. A simulated device stamps its readings with simulated time, which runs `speed` times
faster than the wall clock. Started now, that would put readings in the future; so the demo
replays: simulated time starts `speed x duration` before now and catches up with the present
when `--duration` seconds have passed (the default speed, 8640, shows a day every 10 s). The
central sees readings that are days old arriving quickly, like a gateway catching up, and
at the end the newest reading is from about now. Headless, the demo then stops; with the
dashboard, the homes go on at real time (`ReplayThenLive`), so no reading is ever dated after
the moment it is sent.

Homes. Home i has patient demo-<i> ("Demo Patient <i>") on gateway gw-demo-<i>, enrolled in
a mix of the installed modules (COPD and heart failure mostly, some back pain and hearing:
MODULE_MIX). Its devices are the simulated ones measuring its modules' codes. Every third
home deteriorates during the replay: one of the events its first module is meant to catch
(telemon.cohorts.EVENTS: a COPD exacerbation, a heart-failure decompensation, an AF episode,
a back-pain flare, sudden hearing loss, hearing-aid non-use; effects and time courses with
their sources in telemon.sim), placed so that it reaches its height before the replay ends.
What no simulated device measures - questionnaire answers, pain scores, steps, hearing-aid
use, audiograms - the home's gateway gets from `Diary`, as telemon.cohorts makes it from the
same patient model (answers that need the nurse grow likelier as the patient deteriorates).

One process, 50 homes: each gateway has a publisher thread, an outbox writer thread and an
asyncio device thread (`Gateway.run_devices`), some 150 threads in all; measured to keep up
(docs/demo.md), so no subprocess groups.

At the end (headless, or when the dashboard is closed): the devices stop, every outbox is
drained (bounded wait), the central is given time to store everything (bounded), then the
counts are reconciled - records the broker acknowledged to the homes against records in the
central's database, readings the outboxes refused, frames quarantined at the homes or the
central. Exit status 0 only when nothing was lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import logging
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import numpy as np

from telemon import admin, alarms, cohorts, plugin_manager, sim, store
from telemon.broker import BrokerError, EmbeddedBroker
from telemon.central import Central
from telemon.config import ConfigError, load
from telemon.drivers import Driver
from telemon.edge import Gateway
from telemon.models import LimitSet, Observation, QuestionnaireResponse, Triage
from telemon.modules import DiseaseModule

logger = logging.getLogger(__name__)

ORGANISATION = "demo-kommune"
ZONE = ZoneInfo("Europe/Copenhagen")
ACTOR = "demo"  # who enrols the demo's patients (the audit log says so)
DOCTOR = "demo-doctor"  # who sets a patient's own limits
DEFAULT_SPEED = 8640.0  # simulated seconds per second: a day every 10 s
DEFAULT_DURATION = 60.0  # seconds of replay
DRAIN_SECONDS = 60.0  # the most the end waits for the outboxes, and again for the central
PROGRESS_EVERY = 5.0  # seconds between progress lines

MODULE_MIX: tuple[tuple[str, ...], ...] = (
    ("copd",), ("heart_failure",), ("copd",), ("heart_failure",), ("copd", "heart_failure"),
    ("copd",), ("heart_failure",), ("back_pain",), ("copd",), ("hearing",))
"""Home i (from 1) is enrolled in the installed ones of MODULE_MIX[(i - 1) % 10]; in the
first installed of PREFERRED_MODULES when none of those is."""
PREFERRED_MODULES = ("copd", "heart_failure", "back_pain", "hearing")

DEVICE_PROFILES = ("sim_blood_pressure", "sim_weight_scale", "sim_pulse_oximeter",
                   "sim_thermometer", "sim_glucose", "sim_heart_rate")
"""A home gets each of these that measures a code of its modules not yet measured."""
SERIAL_OXIMETER = "sim_nonin_format2"  # every fourth home's oximeter: a minute at 1 Hz


# --- the plan: who lives in each home ---------------------------------------------------------


@dataclass(frozen=True)
class Home:
    """One simulated home: its patient, gateway, devices and what will happen to them."""

    index: int
    patient: str
    display_name: str
    gateway: str
    modules: tuple[str, ...]
    devices: tuple[tuple[str, str], ...]  # (driver, device id)
    seed: int
    baseline: sim.Baseline
    scenario: str  # "stable" or a telemon.sim event kind
    severity: float
    event_share: float  # where in the replay the event starts (0 = its start, 1 = its end)

    @property
    def deteriorates(self) -> bool:
        return self.scenario != "stable"

    def model(self, timeline: Timeline) -> sim.PatientModel:
        """The patient, with the event placed so that its height falls inside the replay."""
        events = ()
        if self.deteriorates:
            onset = timedelta(days=sim.TIME_COURSE[self.scenario][0])
            earliest = timeline.start + 0.25 * (timeline.present - timeline.start)
            latest = timeline.present - onset - timedelta(hours=12)
            begin = earliest + self.event_share * max(latest - earliest, timedelta(0))
            events = (sim.Event(self.scenario, begin, severity=self.severity),)
        return sim.PatientModel(self.seed, baseline=self.baseline, events=events, tz=ZONE)


def plan_homes(count: int, seed: int, modules: Mapping[str, DiseaseModule],
               drivers: Mapping[str, Driver]) -> list[Home]:
    """`count` homes, deterministic for `seed`, using the installed modules and sim drivers."""
    if not modules:
        raise click.ClickException("no disease modules are installed: the demo needs at "
                                   "least one (telemon plugins lists them)")
    fallback = next((m for m in PREFERRED_MODULES if m in modules), sorted(modules)[0])
    width = max(2, len(str(count)))
    homes = []
    for index in range(1, count + 1):
        rng = np.random.default_rng((seed, index))
        chosen = tuple(m for m in MODULE_MIX[(index - 1) % len(MODULE_MIX)] if m in modules)
        chosen = chosen or (fallback,)
        events = cohorts.EVENTS.get(chosen[0], ())
        scenario = "stable"
        if index % 3 == 2 and events:  # every third home, from the second
            scenario = events[(index // 3) % len(events)]
        homes.append(Home(
            index=index, patient=f"demo-{index:03d}", gateway=f"gw-demo-{index:03d}",
            display_name=f"Demo Patient {index:0{width}d}", modules=chosen,
            devices=_devices(index, chosen, modules, drivers),
            seed=int(rng.integers(0, 2**31)),
            # the evaluation cohorts' spread of patients around the model's defaults
            baseline=cohorts.baseline(rng),
            scenario=scenario,
            # severity 1 is the documented size of each effect (telemon.sim.EFFECTS); some
            # episodes are worse than that mean (assumption)
            severity=round(float(rng.uniform(1.0, 1.5)), 2),
            event_share=float(rng.uniform(0, 1))))
    return homes


def _devices(index: int, modules: Sequence[str], installed: Mapping[str, DiseaseModule],
             drivers: Mapping[str, Driver]) -> tuple[tuple[str, str], ...]:
    wanted = {code for m in modules for code in installed[m].codes}
    chosen = []
    for name in DEVICE_PROFILES:
        driver = drivers.get(name)
        if driver is None or not wanted & set(driver.codes):
            continue
        wanted -= set(driver.codes)
        if name == "sim_pulse_oximeter" and index % 4 == 0 and SERIAL_OXIMETER in drivers:
            name = SERIAL_OXIMETER
        chosen.append((name, f"{name.removeprefix('sim_').replace('_', '-')}-{index:03d}"))
    return tuple(chosen)


# --- time -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Simulated time: from `start` it runs `speed` times faster than the wall clock until it
    meets it at `present`; from then on it is the wall clock."""

    start: datetime
    present: datetime
    speed: float

    @classmethod
    def replay(cls, seconds: float, speed: float, now: datetime | None = None) -> Timeline:
        """A replay of `speed x seconds` of simulated time that ends `seconds` from now."""
        now = now or datetime.now(UTC)
        present = now + timedelta(seconds=seconds)
        return cls(start=now - timedelta(seconds=seconds * (speed - 1)), present=present,
                   speed=speed)

    def simulated(self, real: datetime) -> datetime:
        if real >= self.present:
            return real
        return self.present - (self.present - real) * self.speed


class ReplayThenLive:
    """A simulated device's transport: a `SimTransport` over the replay (at the timeline's
    speed, until the present), then one at real time. Both read the home's one patient
    model, so every device of a home measures the same person."""

    def __init__(self, driver: Driver, device: Any, *, gateway_id: str, tz: Any,
                 submit: Callable, reject: Callable, timeline: Timeline,
                 model: sim.PatientModel) -> None:
        common = {"gateway_id": gateway_id, "tz": tz, "submit": submit, "reject": reject,
                  "model": model}
        self.phases = (
            sim.SimTransport(driver, device, start=timeline.start, until=timeline.present,
                             speed=timeline.speed, **common),
            sim.SimTransport(driver, device, start=timeline.present, speed=1.0, **common))
        self.current = 0
        self._stopping = False

    @property
    def status(self) -> str:
        return self.phases[self.current].status

    @property
    def reason(self) -> str:
        return self.phases[self.current].reason

    @property
    def counters(self) -> sim.Counters:
        return sim.Counters(**{f.name: sum(getattr(p.counters, f.name) for p in self.phases)
                               for f in dataclasses.fields(sim.Counters)})

    async def run(self) -> None:
        while not self._stopping:
            await self.phases[self.current].run()
            if self._stopping or self.current == len(self.phases) - 1:
                return
            self.current += 1

    def stop(self) -> None:
        self._stopping = True
        for phase in self.phases:
            phase.stop()


# --- what no simulated device measures -------------------------------------------------------


CHUNK_DAYS = 84
"""The diary is planned this many days at a time: a multiple of every cadence in
telemon.cohorts (3, 7 and 28 days), so each chunk keeps the previous one's rhythm."""


@dataclass
class _Diary:
    home: Home
    gateway: Gateway
    patient: cohorts.SimPatient
    modules: tuple[DiseaseModule, ...]  # what of the home's modules no device measures
    planned_to: datetime  # local midnight: records before it are planned
    pending: list[Observation | QuestionnaireResponse] = field(default_factory=list)


class Diary(threading.Thread):
    """What each patient reports and measures without a simulated device, handed to the
    home's gateway as simulated time passes: questionnaire answers, and measures such as
    FEV1, steps, hearing-aid use and audiograms - as `telemon.cohorts` makes them from the
    patient's model, on its schedules (a morning session; weekly and monthly
    questionnaires)."""

    def __init__(self, homes: Sequence[tuple[Home, Gateway, sim.PatientModel]],
                 modules: Mapping[str, DiseaseModule], drivers: Mapping[str, Driver],
                 timeline: Timeline) -> None:
        super().__init__(name="demo-diary", daemon=True)
        self.timeline = timeline
        self.submitted = 0  # records new in the outboxes
        self._stop_event = threading.Event()
        first = datetime.combine(timeline.start.astimezone(ZONE).date(), clock_time(0), ZONE)
        self.diaries = []
        for home, gateway, model in homes:
            measured = {code for name, _ in home.devices for code in drivers[name].codes}
            self.diaries.append(_Diary(
                home, gateway, cohorts.SimPatient(home.patient, model),
                tuple(dataclasses.replace(modules[m], codes=tuple(
                    c for c in modules[m].codes if c not in measured)) for m in home.modules),
                first))
        for diary in self.diaries:  # the first chunk now: the replay starts at once
            self._plan(diary, timeline.start)

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            now = self.timeline.simulated(datetime.now(UTC))
            for diary in self.diaries:
                self._plan(diary, now)
                due = [r for r in diary.pending if _time(r) <= now]
                if due:
                    diary.pending = diary.pending[len(due):]
                    self._submit(diary, due)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(10)

    def _plan(self, diary: _Diary, now: datetime) -> None:
        while diary.planned_to <= now:
            for module in diary.modules:
                diary.pending += [r for r in cohorts.records(module, diary.patient,
                                                             diary.planned_to, CHUNK_DAYS,
                                                             tz=ZONE)
                                  if _time(r) >= self.timeline.start]
            diary.pending.sort(key=_time)
            diary.planned_to += timedelta(days=CHUNK_DAYS)

    def _submit(self, diary: _Diary, records: list[Any]) -> None:
        try:
            result = diary.gateway.submit(records)
        except Exception:  # one home's outbox trouble must not stop the others' diaries
            logger.exception("%s: %d diary record(s) not stored", diary.home.gateway,
                             len(records))
            return
        self.submitted += len(result.stored)


def _time(record: Observation | QuestionnaireResponse) -> datetime:
    return record.authored if isinstance(record, QuestionnaireResponse) else record.effective


# --- files ----------------------------------------------------------------------------------


def _toml(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_central_config(folder: Path, broker_url: str, modules: Sequence[str]) -> Path:
    path = folder / "central.toml"
    lines = ["# written by telemon demo", 'role = "central"',
             f"organisation = {_toml(ORGANISATION)}", f"timezone = {_toml(ZONE.key)}", "",
             "[broker]", f"url = {_toml(broker_url)}", 'client_id = "central-demo"', "",
             "[storage]", f"path = {_toml(folder / 'central')}"]
    for module in modules:
        lines += ["", f"[modules.{module}]", "enabled = true"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_edge_config(folder: Path, broker_url: str, home: Home, speed: float) -> Path:
    """The home's edge config (its devices with scenario, seed and speed, so the file also
    runs the home alone: `telemon edge --config ...`, simulated time from then on)."""
    home_folder = folder / "homes" / home.gateway
    home_folder.mkdir(parents=True, exist_ok=True)
    path = home_folder / "edge.toml"
    scenario = home.scenario if home.scenario in sim.SCENARIOS else "stable"
    lines = ["# written by telemon demo", 'role = "edge"',
             f"organisation = {_toml(ORGANISATION)}", f"gateway = {_toml(home.gateway)}",
             f"timezone = {_toml(ZONE.key)}", "", "[broker]", f"url = {_toml(broker_url)}",
             f"client_id = {_toml(home.gateway)}", "", "[storage]",
             f"path = {_toml(home_folder)}"]
    for driver, device in home.devices:
        lines += ["", "[[devices]]", f"driver = {_toml(driver)}",
                  f"patient = {_toml(home.patient)}", f"device = {_toml(device)}",
                  f"scenario = {_toml(scenario)}", f"seed = {home.seed}", f"speed = {speed:g}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def enrol(db: Any, homes: Sequence[Home], installed: Mapping[str, DiseaseModule],
          limits_from: datetime) -> None:
    """Enrol every home's patient (audited, by ACTOR), with consent to monitoring, and lower
    SpO2 limits for stable COPD patients whose usual SpO2 is low."""
    for home in homes:
        admin.add_patient(db, patient=home.patient, organisation=ORGANISATION,
                          display_name=home.display_name, timezone=ZONE.key,
                          modules=home.modules, gateways=(home.gateway,), actor=ACTOR,
                          installed_modules=installed, reason="demo: simulated referral")
        admin.record_consent(db, patient=home.patient, purpose="monitoring", granted=True,
                             actor=ACTOR, reason="demo: simulated consent form")
        if "copd" in home.modules and not home.deteriorates and home.baseline.spo2 < 94:
            # BTS guideline (O'Driscoll et al., Thorax 2017): target 88-92 % for patients at
            # risk of hypercapnic respiratory failure, so the doctor lowers this patient's
            # limits below the module's 90/88 %
            admin.set_limits(db, patient=home.patient, code_key="spo2",
                             limits=LimitSet(red_low=Decimal(85), yellow_low=Decimal(88)),
                             reason="usual SpO2 about 93 %: target 88-92 % (BTS 2017)",
                             actor=DOCTOR, valid_from=limits_from)


# --- the summary ----------------------------------------------------------------------------


@dataclass
class Summary:
    """What the homes sent and what the central holds, and whether anything was lost."""

    homes: int
    deteriorating: int
    seconds: float  # wall clock
    simulated_from: datetime
    simulated_to: datetime
    generated: int  # readings and answers the homes' outboxes took
    sent: int  # records the broker acknowledged (and the outboxes deleted)
    waiting: int  # still in the outboxes
    refused: int  # readings a full outbox refused
    stored: int  # records from the homes in the central's database
    alarms: dict[str, int]  # by severity, every state
    triage: dict[str, int]  # patients by their triage now
    quarantined_homes: int  # frames the homes' drivers could not use
    quarantined_central: int  # messages or records the central refused
    cpu_seconds: float = 0.0
    peak_megabytes: float = 0.0
    interrupted: bool = False
    patients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = []
        if self.stored < self.sent:
            found.append(f"LOST: {self.sent - self.stored} record(s) acknowledged by the "
                         "broker are not in the central's database")
        if self.stored > self.sent:
            found.append(f"the central holds {self.stored - self.sent} record(s) more than "
                         "the homes sent (counted twice?)")
        if self.waiting:
            found.append(f"{self.waiting} record(s) still waiting in the homes' outboxes "
                         f"(not delivered in time; kept there)")
        if self.generated != self.sent + self.waiting:
            found.append(f"{self.generated - self.sent - self.waiting} record(s) the outboxes "
                         "took are neither sent nor waiting")
        if self.refused:
            found.append(f"LOST: {self.refused} reading(s) refused by a full outbox")
        if self.quarantined_homes:
            found.append(f"{self.quarantined_homes} frame(s) quarantined at the homes "
                         "(simulated devices send only valid frames)")
        if self.quarantined_central:
            found.append(f"{self.quarantined_central} item(s) quarantined at the central "
                         "(the homes send only valid records)")
        return found

    def as_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["simulated_from"] = self.simulated_from.isoformat()
        document["simulated_to"] = self.simulated_to.isoformat()
        document["problems"] = self.problems
        document["ok"] = not self.problems
        return document

    def lines(self) -> list[str]:
        days = (self.simulated_to - self.simulated_from).total_seconds() / 86400
        local = f"{self.simulated_from.astimezone(ZONE):%Y-%m-%d %H:%M} to " \
                f"{self.simulated_to.astimezone(ZONE):%Y-%m-%d %H:%M} {ZONE.key}"
        rate = self.stored / self.seconds if self.seconds else 0.0
        out = [
            f"demo: {self.homes} homes ({self.deteriorating} deteriorating), {days:.1f} "
            f"simulated days ({local}) in {self.seconds:.0f} s"
            + (" (interrupted)" if self.interrupted else ""),
            f"  records sent      {self.sent:>9,}  acknowledged by the broker "
            f"(readings and answers; {self.waiting:,} still waiting)",
            f"  stored            {self.stored:>9,}  in the central's database "
            f"({rate:,.0f} /s over the run)",
            f"  refused           {self.refused:>9,}  by a full outbox",
            f"  quarantined       {self.quarantined_homes:>9,}  at the homes, "
            f"{self.quarantined_central:,} at the central",
            "  alarms            " + ", ".join(f"{self.alarms.get(s, 0):,} {s}"
                                               for s in ("red", "yellow", "missing")),
            "  triage now        " + ", ".join(f"{self.triage.get(t, 0):,} {t}"
                                               for t in ("red", "yellow", "missing", "green")),
            f"  this process      {self.cpu_seconds:.0f} s CPU, {self.peak_megabytes:.0f} MB "
            "peak memory",
        ]
        out += [f"  {problem}" for problem in self.problems] or ["  nothing lost"]
        return out


def stored_from_homes(db: Any, gateways: Sequence[str]) -> int:
    """Records from these gateways in the central's database: readings (not the scores the
    central derives from answers, driver "questionnaire:...") and questionnaire responses."""
    marks = ", ".join("?" * len(gateways))
    readings = db.execute(f"SELECT COUNT(*) FROM observations WHERE gateway IN ({marks}) "
                          "AND driver NOT LIKE 'questionnaire:%'", list(gateways)).fetchone()[0]
    responses = db.execute(f"SELECT COUNT(*) FROM questionnaire_responses WHERE gateway IN "
                           f"({marks})", list(gateways)).fetchone()[0]
    return readings + responses


def alarm_counts(db: Any) -> dict[str, int]:
    return dict(db.execute("SELECT severity, COUNT(*) FROM alarms GROUP BY severity"))


def triage_counts(db: Any, patients: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for level in alarms.triage(db, patients).values():
        counts[Triage(level).label] = counts.get(Triage(level).label, 0) + 1
    return counts


@dataclass(frozen=True)
class EdgeCounts:
    """What the homes did, counted when they stopped."""

    generated: int  # readings and answers new in the outboxes
    sent: int  # acknowledged by the broker and deleted from the outboxes
    waiting: int  # still in the outboxes
    refused: int  # readings a full outbox refused
    quarantined: int  # frames kept in the outboxes' quarantine

    @classmethod
    def of(cls, gateways: Sequence[Gateway], diary: Diary | None) -> EdgeCounts:
        states = [s for g in gateways if g.devices is not None for s in g.devices.states]
        stats = [g.outbox.stats() for g in gateways]
        return cls(generated=sum(s.stored for s in states)
                   + (diary.submitted if diary is not None else 0),
                   sent=sum(g.delivered for g in gateways),
                   waiting=sum(s.depth for s in stats), refused=sum(s.refused for s in states),
                   quarantined=sum(s.quarantined for s in stats))


# --- the demo -------------------------------------------------------------------------------


class Demo:
    """Everything the demo runs, started by `start()` and stopped by `close()` (both safe to
    interrupt: whatever was started is stopped, the broker's child process included)."""

    def __init__(self, data: Path, *, homes: int, seed: int, speed: float, duration: float,
                 echo: Callable[[str], None]) -> None:
        self.data, self.speed, self.duration = data, speed, duration
        self.echo = echo
        self.pm, self.registry = plugin_manager.get()
        drivers = {n: d for n, d in self.registry.drivers.items() if d.transport == "sim"}
        self.homes = plan_homes(homes, seed, self.registry.modules, drivers)
        self.broker: EmbeddedBroker | None = None
        self.central: Central | None = None
        self.central_config_path: Path | None = None
        self.config: Any = None
        self.database = ""
        self.db: Any = None
        self.gateways: list[Gateway] = []
        self.diary: Diary | None = None
        self.timeline: Timeline | None = None
        self.started_at = 0.0
        self.edge: EdgeCounts | None = None  # counted by stop_homes

    # -- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        modules = sorted({m for home in self.homes for m in home.modules})
        self.echo("starting the embedded MQTT broker ...")
        self.broker = EmbeddedBroker(data=self.data / "broker").start()
        self.central_config_path = write_central_config(self.data, self.broker.url,
                                                        sorted(self.registry.modules))
        config = self.config = self._load(self.central_config_path)
        self.database = store.central_database_path(config.storage.path)
        self.db = store.open_database(self.database, pm=self.pm)
        self.echo(f"enrolling {len(self.homes)} patients ({', '.join(modules)}) ...")
        limits_from = datetime.now(UTC) - timedelta(seconds=self.duration * self.speed,
                                                    days=1)
        enrol(self.db, self.homes, self.registry.modules, limits_from)
        self.central = Central(config, self.registry.modules, pm=self.pm,
                               registry=self.registry)
        self.central.start()
        if not self.central.wait_connected(30):
            raise click.ClickException("the central did not connect to the embedded broker "
                                       f"within 30 s (see {self.data / 'demo.log'})")
        self.echo(f"starting {len(self.homes)} homes ...")
        edge_configs = [self._load(write_edge_config(self.data, self.broker.url, home,
                                                     self.speed)) for home in self.homes]
        for edge_config in edge_configs:
            gateway = Gateway.from_config(edge_config)
            self.gateways.append(gateway)
            gateway.start()
        for gateway in self.gateways:
            if not gateway.wait_connected(30):
                raise click.ClickException(f"gateway {gateway.gateway} did not connect to "
                                           "the embedded broker within 30 s")
        self.timeline = Timeline.replay(self.duration, self.speed)
        models = [home.model(self.timeline) for home in self.homes]
        for gateway, edge_config, model in zip(self.gateways, edge_configs, models,
                                               strict=True):
            gateway.run_devices(edge_config.devices, self.registry.drivers,
                                tz=edge_config.timezone,
                                factory=self._factory(self.timeline, model))
        self.diary = Diary(list(zip(self.homes, self.gateways, models, strict=True)),
                           self.registry.modules, self.registry.drivers, self.timeline)
        self.diary.start()
        self.echo(f"running: {self.duration * self.speed / 86400:.1f} simulated days in "
                  f"{self.duration:g} s (speed {self.speed:g}), ending now")

    def _load(self, path: Path) -> Any:
        try:
            return load(path, self.registry)
        except ConfigError as exc:  # a bug here: the demo wrote it
            raise click.ClickException(f"{path}: {exc}") from None

    @staticmethod
    def _factory(timeline: Timeline, model: sim.PatientModel) -> Callable[..., Any]:
        def factory(driver: Driver, device: Any, *, gateway_id: str, tz: Any,
                    submit: Callable, reject: Callable, **_options: Any) -> ReplayThenLive:
            return ReplayThenLive(driver, device, gateway_id=gateway_id, tz=tz, submit=submit,
                                  reject=reject, timeline=timeline, model=model)
        return factory

    # -- running ----------------------------------------------------------------------------

    def wait(self, seconds: float | None, stop: threading.Event) -> None:
        """Show progress every few seconds until `seconds` have passed since the replay
        began (None: until `stop` is set)."""
        assert self.timeline is not None
        begun = time.monotonic()
        while not stop.is_set():
            left = None if seconds is None else seconds - (time.monotonic() - begun)
            if left is not None and left <= 0:
                return
            if stop.wait(PROGRESS_EVERY if left is None else min(PROGRESS_EVERY, left)):
                return
            self.echo(self.progress())

    def progress(self) -> str:
        assert self.timeline is not None
        now = self.timeline.simulated(datetime.now(UTC)).astimezone(ZONE)
        stored = stored_from_homes(self.db, [g.gateway for g in self.gateways])
        counts = alarm_counts(self.db)
        return (f"  {time.monotonic() - self.started_at:5.0f} s  simulated {now:%Y-%m-%d %H:%M}"
                f"  {stored:,} records stored, alarms "
                + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("red", "yellow", "missing")))

    # -- stopping ---------------------------------------------------------------------------

    def stop_homes(self) -> None:
        """Stop the devices and the diary, let the outboxes drain (bounded), count what
        the homes did, stop the publishers; then give the central time to store what it was
        sent (bounded)."""
        if self.edge is not None:
            return
        if self.diary is not None:
            self.diary.stop()
        stoppers = [threading.Thread(target=g.devices.stop, daemon=True)
                    for g in self.gateways if g.devices is not None]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(30)
        deadline = time.monotonic() + DRAIN_SECONDS
        for gateway in self.gateways:
            gateway.wait_drained(max(0.0, deadline - time.monotonic()))
        for gateway in self.gateways:
            gateway.stop()  # the last acknowledgements are counted in `delivered`
        self.edge = EdgeCounts.of(self.gateways, self.diary)
        for gateway in self.gateways:
            gateway.close()
        self._wait_for_central(self.edge.sent)

    def _wait_for_central(self, sent: int) -> None:
        """Until the central has stored (or refused) as many records as were sent, or nothing
        has happened there for 5 s, or DRAIN_SECONDS have passed."""
        if self.central is None:
            return
        counters = self.central.counters
        deadline = time.monotonic() + DRAIN_SECONDS
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if counters.stored + counters.quarantined >= sent:
                return
            if counters.messages != last:
                last, quiet_since = counters.messages, time.monotonic()
            elif time.monotonic() - quiet_since > 5:
                return
            time.sleep(0.05)

    def summary(self, interrupted: bool = False) -> Summary:
        """After stop_homes: the homes' counts against the central's database."""
        assert self.timeline is not None and self.edge is not None
        patients = [home.patient for home in self.homes]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        per_patient = dict(self.db.execute(
            "SELECT patient, COUNT(*) FROM alarms WHERE rule != 'missing' GROUP BY patient"))
        return Summary(
            homes=len(self.homes), deteriorating=sum(h.deteriorates for h in self.homes),
            seconds=time.monotonic() - self.started_at,
            simulated_from=self.timeline.start,
            simulated_to=self.timeline.simulated(datetime.now(UTC)),
            generated=self.edge.generated, sent=self.edge.sent, waiting=self.edge.waiting,
            refused=self.edge.refused,
            stored=stored_from_homes(self.db, [g.gateway for g in self.gateways]),
            alarms=alarm_counts(self.db), triage=triage_counts(self.db, patients),
            quarantined_homes=self.edge.quarantined,
            quarantined_central=self.db.execute("SELECT COUNT(*) FROM quarantine")
            .fetchone()[0],
            cpu_seconds=sum(u.ru_utime + u.ru_stime for u in (usage, children)),
            peak_megabytes=usage.ru_maxrss / 1024, interrupted=interrupted,
            patients=[{"patient": h.patient, "gateway": h.gateway, "modules": list(h.modules),
                       "scenario": h.scenario, "devices": [d for d, _ in h.devices],
                       "alarms": per_patient.get(h.patient, 0)} for h in self.homes])

    def close(self) -> None:
        """Stop whatever is running: homes, central, broker (its child process reaped)."""
        if self.diary is not None:
            self.diary.stop()
        for gateway in self.gateways:
            gateway.close()  # safe twice
        if self.central is not None:
            self.central.close()
            self.central = None
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


# --- the command -----------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (and SIGINT, where nobody else takes it) sets `stop`."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _log_to(path: Path) -> logging.Handler:
    """Everything the running parts log goes to the demo's log file, not the terminal (the
    dashboard owns it; headless, progress lines say what matters)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s "
                                           "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _dashboard() -> tuple[type | None, str]:
    """The dashboard's App class (telemon.tui), or None and why it cannot be opened."""
    if importlib.util.find_spec("telemon.tui") is None:
        return None, "the dashboard (telemon.tui) is not in this installation"
    try:
        return importlib.import_module("telemon.tui.app").DashboardApp, ""
    except Exception as exc:  # a broken installation: say why, and run without it
        return None, f"the dashboard cannot be loaded ({type(exc).__name__}: {exc})"


def _run_dashboard(app_class: type, demo: Demo, stop: threading.Event) -> None:
    """The dashboard on the demo's central until the nurse quits it, or `stop` is set (by
    SIGTERM or SIGINT: a Ctrl-C typed in the terminal is a key the dashboard reads)."""
    app = app_class(demo.config, nurse=admin._default_actor() or "demo-nurse",
                        modules=demo.registry.modules, database=demo.database)
    finished = threading.Event()

    def exit_when_stopped() -> None:
        while not stop.wait(0.2):
            if finished.is_set():
                return
        with contextlib.suppress(Exception):  # it may be ending already
            app.call_from_thread(app.exit)

    watcher = threading.Thread(target=exit_when_stopped, name="demo-dashboard-stop",
                               daemon=True)
    watcher.start()
    try:
        app.run()
    finally:
        finished.set()


def _data_folder(data: Path | None) -> tuple[Path, bool]:
    """The folder to use and whether it is a temporary one."""
    if data is None:
        return Path(tempfile.mkdtemp(prefix="telemon-demo-")), True
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise click.BadParameter(f"{data} is not an empty folder (the demo keeps a new "
                                 "central database and outboxes there): choose a new one",
                                 param_hint="--data")
    data.mkdir(parents=True, exist_ok=True)
    return data.resolve(), False


@click.command(name="demo")
@click.option("--homes", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Simulated homes (one patient and gateway each).")
@click.option("--seed", type=click.IntRange(0, 2**31), default=1, show_default=True,
              help="Chooses the patients; the same seed gives the same demo.")
@click.option("--speed", type=click.FloatRange(1, 1_000_000), default=DEFAULT_SPEED,
              show_default=True,
              help="Simulated seconds per second during the replay (8640: a day every 10 s).")
@click.option("--duration", type=click.FloatRange(1, 86400), default=DEFAULT_DURATION,
              show_default=True,
              help="Seconds the replay takes: it shows speed x duration of simulated time, "
                   "ending at the present. Headless, the demo then stops.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Keep everything in this (new or empty) folder: configs, the central's "
                   "database, outboxes, log. Default: a temporary folder, removed at the end.")
@click.option("--headless", is_flag=True,
              help="No dashboard: run for --duration seconds, print a summary, exit 0 only "
                   "if nothing was lost.")
@click.option("--json", "as_json", is_flag=True,
              help="Headless: print the summary as JSON.")
def demo_command(homes: int, seed: int, speed: float, duration: float, data: Path | None,
                 headless: bool, as_json: bool) -> None:
    """Run the whole system on this machine with simulated homes.

    Starts the embedded MQTT broker, a central with every installed disease module and HOMES
    simulated homes (devices read through the real drivers; some patients deteriorate), then
    opens the nurse dashboard. When you quit it, everything stops. Ctrl-C stops at any time.
    """
    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise click.UsageError("the dashboard needs a terminal: without one, run the demo "
                               "with --headless (for --duration seconds)")
    folder, temporary = _data_folder(data)
    handler = _log_to(folder / "demo.log")
    stop = threading.Event()
    dashboard, why_not = (None, "") if headless else _dashboard()

    def echo(text: str) -> None:
        click.echo(text, err=True)

    demo = Demo(folder, homes=homes, seed=seed, speed=speed, duration=duration, echo=echo)
    failed = True
    try:
        with _signals_stop(stop):
            try:
                demo.start()
            except BrokerError as exc:
                raise click.ClickException(str(exc)) from None
            if headless:
                demo.wait(duration, stop)
            elif dashboard is None:
                echo(f"{why_not}: running without it until Ctrl-C")
                demo.wait(None, stop)
            elif not stop.is_set():
                echo(f"opening the dashboard on {demo.central_config_path}")
                _run_dashboard(dashboard, demo, stop)
        echo("stopping the homes and letting the central store what they sent ...")
        with _signals_stop(stop):
            demo.stop_homes()
            summary = demo.summary(interrupted=stop.is_set())
        if as_json:
            click.echo(json.dumps(summary.as_json(), indent=2))
        else:
            for line in summary.lines():
                click.echo(line)
        failed = bool(summary.problems)
    finally:
        demo.close()
        logging.getLogger().removeHandler(handler)
        handler.close()
        if temporary and not failed:
            shutil.rmtree(folder, ignore_errors=True)
        elif temporary:
            click.echo(f"kept for inspection: {folder}", err=True)
    if failed:
        sys.exit(1)
    if stop.is_set():
        sys.exit(130)  # interrupted: the counts above are of the part that ran
