"""What every input boundary of telemon must do with ANY input, as checks that raise on a
violation: a parser's FrameError, a framer's FrameError items, the wire decoder's WireErrors,
the config loader's ConfigError, the central's quarantine. Anything else — another exception,
an error without a reason, bytes silently lost, memory growing without bound, a rejection not
kept in quarantine — is a crash.

Each check returns the reasons it rejected the input for (empty: accepted), so a run can
count rejections by reason. Two drivers use these checks: tests/test_fuzz.py (hypothesis,
structured inputs, in the normal suite) and fuzz/run.py (atheris, coverage-guided, on bytes;
the `*_from_bytes` adapters below give the bytes their structure).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from telemon import admin, config, mqtt, plugin_manager, sim, store, wire
from telemon.alarms import AlarmEngine
from telemon.central import Central, Message, decode_payload
from telemon.codes import KNOWN
from telemon.config import ConfigError
from telemon.drivers import Driver, FrameError, ParseContext
from telemon.gatt import uuid128
from telemon.models import Answer, Observation, QuestionnaireResponse

ORG = "kommune-0999"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
CONTEXT = ParseContext(patient="p-0001", device="dev-1", gateway="gw-1", received=T0)

# Characteristics read at connect that parsers look at (ParseContext.features): PLX features,
# body sensor location, temperature type, weight scale feature.
FEATURE_UUIDS = tuple(uuid128(short) for short in (0x2A60, 0x2A38, 0x2A1D, 0x2A9E))

# A framer holds at most this many bytes between feeds. The framers' own bound is about
# 1 KiB of lost sync plus one group of packets (Contec: 60 x 9 bytes; Nonin: 3 x 125), plus
# the bytes of one feed still being examined; a chunk is at most MAX_CHUNK bytes.
MAX_CHUNK = 4096
MAX_PENDING = 4 * 1024 + MAX_CHUNK


class Violation(AssertionError):
    """An input boundary did something other than accept or reject with a reason."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


# --- driver parsers ---------------------------------------------------------------------------

def parsers() -> dict[str, Driver]:
    """One registered driver per distinct parse function (the sim drivers hand their frames
    to the real drivers' parsers: fuzzing those covers them)."""
    unique: dict[Any, Driver] = {}
    for driver in plugin_manager.get()[1].drivers.values():
        unique.setdefault(driver.parse, driver)
    return {driver.name: driver for driver in unique.values()}


def sources(driver: Driver) -> tuple[str, ...]:
    """The ParseContext.source values a transport would give this driver, plus wrong ones."""
    own = driver.ble.characteristics if driver.ble else ()
    return (*own, "", "2a37", "0x2A5F", "not-a-uuid", "/dev/ttyUSB0")


def check_parser(driver: Driver, frame: bytes, ctx: ParseContext) -> list[str]:
    """A parser returns observations or raises FrameError with a reason. Every observation it
    returns is the context's patient's and survives the wire form unchanged."""
    try:
        observations = driver.parse(frame, ctx)
    except FrameError as exc:
        _require(bool(str(exc).strip()), f"{driver.name}: FrameError without a reason")
        return [str(exc)]
    _require(isinstance(observations, list), f"{driver.name} returned {type(observations)}")
    for observation in observations:
        _require(isinstance(observation, Observation),
                 f"{driver.name} returned a {type(observation).__name__}")
        _require(observation.patient == ctx.patient and observation.gateway == ctx.gateway,
                 f"{driver.name}: observation not for the context's patient and gateway")
        _require(wire.decode(wire.encode(observation)) == observation,
                 f"{driver.name}: observation does not survive the wire form: {observation}")
    return []


def parser_seeds(driver: Driver) -> list[bytes]:
    """Valid inputs for `context_from_bytes`: context bytes (source 0 or 1 of `sources`, no
    features) then a frame from telemon.sim's encoders, or one second of a serial stream."""
    frames = {
        "ble_blood_pressure": [(0, sim.blood_pressure(120, 80, 93, time=T0, pulse=70, user=1,
                                                      status=0))],
        "ble_weight_scale": [(0, sim.weight_measurement(Decimal("80.5"), time=T0, user=1))],
        "ble_heart_rate": [(0, sim.heart_rate_measurement(70, rr=(Decimal("0.8"),), energy=9,
                                                          contact=True))],
        "ble_thermometer": [(0, sim.temperature_measurement(Decimal("36.8"), time=T0,
                                                            site=2))],
        "ble_glucose": [(0, sim.glucose_measurement(1, T0, Decimal("5.6"), time_offset=0,
                                                    status=0))],
        "ble_pulse_oximeter": [(0, sim.plx_spot_check(95, 70, time=T0, pai=Decimal("2.5"))),
                               (1, sim.plx_continuous(95, 70, fast=(94, 71)))],
    }.get(driver.name, [])
    frames += [(0, frame) for stream in stream_seeds(driver)
               for frame in driver.stream.framer().feed(stream) if isinstance(frame, bytes)]
    return [bytes([source, 0]) + frame for source, frame in frames]


def context_from_bytes(driver: Driver, data: bytes) -> tuple[ParseContext, bytes]:
    """Byte 0 picks the source; byte 1's bits say which features were read, each taking
    the next byte's count of bytes. The rest is the frame."""
    if len(data) < 2:
        return CONTEXT, data
    choices = sources(driver)
    source, present, rest = choices[data[0] % len(choices)], data[1], data[2:]
    features = {}
    for bit, uuid in enumerate(FEATURE_UUIDS):
        if present >> bit & 1 and rest:
            size, rest = rest[0] % 8, rest[1:]
            features[uuid], rest = rest[:size], rest[size:]
    ctx = ParseContext(patient=CONTEXT.patient, device=CONTEXT.device, gateway=CONTEXT.gateway,
                       received=T0, source=source, features=features)
    return ctx, rest


# --- stream framers ---------------------------------------------------------------------------

def framers() -> dict[str, Driver]:
    """Every registered driver with a serial stream, one per framer."""
    unique: dict[Any, Driver] = {}
    for driver in plugin_manager.get()[1].drivers.values():
        if driver.stream is not None:
            unique.setdefault(driver.parse, driver)
    return {driver.name: driver for driver in unique.values()}


def check_framer(driver: Driver, chunks: Iterable[bytes]) -> list[str]:
    """Fed any chunks, a framer gives frames and FrameErrors (with a reason), never raises,
    never holds more than MAX_PENDING bytes, and loses no byte: what came in is what went out
    as frames, as FrameError.raw, is still pending, or is a command reply the framer counts
    in stats["ignored_bytes"] (Contec v2: documented in serial_contec). Each frame it gives
    goes to the parser, which must keep its own contract (see check_parser)."""
    framer = driver.stream.framer()
    given = taken = 0
    reasons: list[str] = []

    def account(items: list[bytes | FrameError]) -> None:
        nonlocal taken
        for item in items:
            if isinstance(item, FrameError):
                _require(bool(str(item).strip()), f"{driver.name}: FrameError without reason")
                reasons.append(str(item))
                taken += len(item.raw)
            else:
                _require(isinstance(item, bytes), f"{driver.name} framer gave {type(item)}")
                taken += len(item)
                reasons.extend(check_parser(driver, item, CONTEXT))

    def ignored() -> int:
        return framer.stats.get("ignored_bytes", 0)

    for chunk in chunks:
        given += len(chunk)
        account(framer.feed(chunk))
        pending = len(framer.pending())
        _require(pending <= MAX_PENDING, f"{driver.name} framer holds {pending} bytes")
        _require(given == taken + pending + ignored(), f"{driver.name} framer lost bytes: "
                 f"{given} in, {taken} out, {pending} pending, {ignored()} ignored")
    account(framer.flush())
    _require(given == taken + ignored() and not framer.pending(),
             f"{driver.name} framer lost bytes at flush: {given} in, {taken} out")
    return reasons


def chunks_from_bytes(data: bytes) -> list[bytes]:
    """Byte 0 is the chunk size (1..256); the rest is the stream."""
    if not data:
        return []
    size, stream = data[0] + 1, data[1:]
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def stream_seeds(driver: Driver) -> list[bytes]:
    """A second of valid stream for each serial format (telemon.sim's encoders)."""
    packets = {
        "serial_nonin_format2": b"".join(sim.nonin_packet(95, 70) for _ in range(3)),
        "serial_nonin_format7": b"".join(sim.nonin_packet(95, 70, data_format=7)
                                         for _ in range(3)),
        "serial_nonin_format8": sim.nonin_format8(95, 70) * 3,
        "serial_contec_cms50d_legacy": sim.contec_legacy_packet(95, 70) * 61,
        "serial_contec_cms50d_v2": sim.contec_v2_package(95, 70) * 61,
    }
    return [packets[driver.name]] if driver.name in packets else []


# --- the wire form ----------------------------------------------------------------------------

def check_wire(payload: bytes) -> list[str]:
    """decode_message never raises; each error is a WireError with a reason and a JSON path;
    each record it decodes encodes and decodes back to itself."""
    decoded = wire.decode_message(payload)
    for error in decoded.errors:
        _require(isinstance(error, wire.WireError), f"decode_message gave {type(error)}")
        _require(bool(error.reason.strip()), "WireError without a reason")
        _require(error.path.startswith("$"), f"WireError path {error.path!r} is not a path")
    for record in decoded.records:
        _require(wire.decode(wire.encode(record)) == record,
                 f"record does not survive a second trip: {record!r}")
    return [error.reason for error in decoded.errors]


def observation(patient: str = "p-0001", gateway: str = "gw-1", number: int = 0,
                value: str = "95") -> Observation:
    spo2 = KNOWN["spo2"]
    return Observation(id=f"obs-{gateway}-{number}", patient=patient, device="dev-1",
                       gateway=gateway, code=spo2.code, unit=spo2.unit, value=Decimal(value),
                       effective=T0 + timedelta(minutes=number), raw=b"\x01")


def wire_seeds() -> list[bytes]:
    """Valid messages of each kind a gateway sends: the start points for mutation."""
    response = QuestionnaireResponse(id="qr-1", patient="p-0001", gateway="gw-1",
                                     questionnaire="cat", version="1", authored=T0,
                                     answers=tuple(Answer(item=f"cat_{n}", value=2)
                                                   for n in range(1, 9)))
    return [wire.encode(observation()), wire.encode(response),
            wire.encode_batch([observation(number=1), observation("p-0002", "gw-1", 2)])]


# --- the config loader ------------------------------------------------------------------------

def config_seeds(folder: Path) -> list[bytes]:
    """A valid central and a valid edge config (TOML)."""
    central = (f'role = "central"\norganisation = "{ORG}"\n[broker]\n'
               f'url = "mqtts://broker.example:8883"\n[storage]\npath = "{folder}"\n'
               '[modules.copd]\nenabled = true\n[alarms]\n')
    edge = (f'role = "edge"\norganisation = "{ORG}"\ngateway = "gw-1"\n[broker]\n'
            'url = "mqtt://127.0.0.1:1883"\n[storage]\npath = "/var/lib/telemon"\n'
            '[[devices]]\ndriver = "ble_weight_scale"\npatient = "p-0001"\n'
            'device = "scale-1"\naddress = "AA:BB:CC:DD:EE:FF"\n')
    return [central.encode(), edge.encode()]


def check_validate(data: dict[str, Any]) -> list[str]:
    """validate never raises; a config comes back exactly when there are no problems, and
    every problem names the key it is about and says what is wrong."""
    loaded, problems = config.validate(data, plugin_manager.get()[1])
    _require((loaded is None) == bool(problems), "config and problems disagree")
    for problem in problems:
        _require(bool(problem.key) and bool(problem.message.strip()),
                 f"problem without a key path or message: {problem!r}")
    return [problem.message for problem in problems]


def check_read(path: Path, content: bytes) -> list[str]:
    """config.read of a file with these bytes gives a dict or a ConfigError with one problem
    naming the file; a dict then goes through check_validate."""
    path.write_bytes(content)
    try:
        data = config.read(path)
    except ConfigError as exc:
        _require(len(exc.problems) == 1 and str(path) in exc.problems[0].message,
                 f"read's ConfigError does not name the file: {exc.problems}")
        return [exc.problems[0].message.removeprefix(f"{path}: ")]
    _require(isinstance(data, dict), f"read gave {type(data)}")
    return check_validate(data)


# --- the central's ingest ---------------------------------------------------------------------

TOPICS = (mqtt.obs_topic(ORG, "gw-1"), mqtt.obs_topic(ORG, "gw-2"),
          mqtt.obs_topic(ORG, "gw-unbound"), mqtt.obs_topic("kommune-0001", "gw-1"),
          mqtt.status_topic(ORG, "gw-1"), "telemon/v1", "", "#/+/\x00")


@dataclass
class Ingest:
    """A central's ingest on a real SQLite file, without a broker: p-0001 is bound to gw-1,
    p-0002 to gw-2. `keep=False` rolls each message back after checking it (long runs)."""

    central: Central
    db: Any

    @classmethod
    def open(cls, folder: Path) -> Ingest:
        registry = plugin_manager.get()[1]
        loaded, problems = config.validate(tomllib.loads(
            config_seeds(folder)[0].decode()), registry)
        assert loaded is not None, problems
        central = Central(loaded, registry.modules)
        db = store.open_database(central.database)
        for patient, gateway in (("p-0001", "gw-1"), ("p-0002", "gw-2")):
            admin.add_patient(db, patient=patient, organisation=ORG,
                              display_name=f"Test Patient {patient[-1]}",
                              timezone="Europe/Copenhagen", modules=("copd",),
                              gateways=(gateway,), actor="fuzz",
                              installed_modules=registry.modules)
        central.db, central.engine = db, AlarmEngine(db, loaded, registry.modules)
        central.engine.directory.refresh()
        return cls(central, db)

    def close(self) -> None:
        self.db.close()


def check_ingest(ingest: Ingest, topic: str, payload: bytes, keep: bool = True) -> list[str]:
    """The central stores what it accepts and quarantines every rejection — one quarantine
    row per bad item, with the reason, and nothing else written for it."""
    central, db = ingest.central, ingest.db
    counters = central.counters
    before = (counters.quarantined, counters.stored, counters.duplicates)
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        last_row = db.execute("SELECT COALESCE(MAX(id), 0) FROM quarantine").fetchone()[0]
        changes = db.conn.total_changes
        message = Message(topic, payload, 0, 1)
        central._store([central._sort_out(message, decode_payload(payload))], T0)
        rows = db.execute("SELECT source, reason FROM quarantine WHERE id > ?",
                          [last_row]).fetchall()
        written = db.conn.total_changes - changes
    finally:
        db.conn.execute("COMMIT" if keep else "ROLLBACK")
    quarantined = counters.quarantined - before[0]
    accepted = counters.stored - before[1] + counters.duplicates - before[2]
    _require(len(rows) == quarantined, f"{quarantined} rejections, {len(rows)} kept")
    for source, reason in rows:
        _require(source == f"mqtt:{topic}" and bool(reason.strip()),
                 f"quarantine row without its source or reason: {source!r}, {reason!r}")
    decoded = wire.decode_message(payload)
    parsed = mqtt.parse_topic(topic)
    if parsed is None or parsed.kind != "obs" or parsed.org != ORG:
        _require(quarantined == 1 and accepted == 0, "a message off the reading topics "
                 "was not quarantined whole")
    else:
        _require(quarantined + accepted == len(decoded.errors) + len(decoded.records),
                 f"{len(decoded.errors) + len(decoded.records)} items: {accepted} accepted, "
                 f"{quarantined} quarantined")
    if accepted == 0:
        _require(written == quarantined, f"{written - quarantined} rows written besides "
                                         "the quarantine for a message with nothing accepted")
    return [reason for _source, reason in rows]


def ingest_from_bytes(data: bytes) -> tuple[str, bytes]:
    """Byte 0 picks the topic; the rest is the payload."""
    if not data:
        return TOPICS[0], b""
    return TOPICS[data[0] % len(TOPICS)], data[1:]


# --- reasons, for counting ---------------------------------------------------------------------

_VARYING = re.compile(r"0x[0-9a-fA-F]+|(?<![\w-])\d+(\.\d+)?|'[^']*'|\"[^\"]*\"|`[^`]*`|\S*/\S*")


def reason_kind(reason: str) -> str:
    """A reason with its varying parts (numbers, quoted values, paths) masked, for counting."""
    return _VARYING.sub("…", reason.splitlines()[0])[:90]
