"""Edge and central configuration: TOML files, checked against one declarative schema.

`check_file(path, registry)` returns every problem in a file, each with its dotted key path
(`broker.url: must be mqtt:// or mqtts://, got "http://broker"`);
`load(path, registry)` returns a frozen `EdgeConfig` or `CentralConfig`, or raises
`ConfigError` with the same list. Both walk the schema `_schema()` builds from the installed
plugins (the registry): unknown keys are errors (with a "did you mean"), never ignored.
Array items are addressed from 0 (`devices[1].driver`); the file as a whole has no key.

Shape (examples/edge.toml and examples/central.toml are complete, commented examples)::

    role = "edge" | "central"         # required; decides which sections are allowed
    organisation = "<id>"             # required; pseudonymous id ([A-Za-z0-9._:-], 1-64)

    [broker]                          # required
    url = "mqtts://host:8883"         # required; mqtt:// or mqtts:// (TLS), port 1-65535,
                                      # no user, password, path or query in the URL
    username = "<text>"               # optional
    password = "env:VAR" | "file:/absolute/path"   # optional; a reference, never the secret
    client_id = "<id>"                # optional
    ca_file = "/absolute/ca.pem"      # optional, mqtts:// only: verify the broker against
                                      # this PEM bundle instead of the system's CAs
    client_cert = "/absolute/gw.pem"  # optional, mqtts:// only, both or neither: log in
    client_key = "/absolute/gw.key"   # with a client certificate (telemon gateway provision)

    [storage]                         # required
    path = "<path>"                   # required; database (central) or outbox (edge) folder

    # edge only
    gateway = "<id>"                  # required
    timezone = "Europe/Copenhagen"    # IANA zone name (the default)
    [outbox]
    max_megabytes = 512               # a number above 0 (the default)
    [[devices]]                       # any number of these
    driver = "<installed driver>"     # required
    patient = "<id>"                  # required; pseudonymous, never a CPR number
    device = "<id>"                   # required; unique among the devices
    address = "A4:C1:38:00:00:01"     # optional; BLE MAC (ble drivers) or serial port
                                      # (/dev/ttyUSB0, COM3; serial drivers)
    user = 1                          # optional; BLE user index 1-254 (ble drivers)
    scenario = "stable"               # optional, sim drivers: the simulated patient's
                                      # scenario (telemon.sim.SCENARIOS)
    seed = 7                          # optional, sim drivers: integer >= 0 (same seed,
                                      # same patient); default from the device id
    speed = 3600                      # optional, sim drivers: simulated time runs this
                                      # many times faster (a number above 0; default 1)

    # central only
    [retention]                       # optional; telemon.retention (`telemon retention run`)
    raw_after_days = 90               # empty observations' raw device bytes received more
                                      # than N days ago (the values are kept); absent: never
    quarantine_after_days = 365       # delete quarantined input older than N days; absent:
                                      # never. Each an integer between 1 and 36500.
    [modules.<installed module>]
    enabled = true                    # required
                                      # (the organisation's default limits are not set
                                      # here but in the database, versioned and by a team
                                      # lead: `telemon limits defaults set`; a
                                      # [modules.<module>.limits] table is refused)
    [exporters.<installed exporter>]
    enabled = true                    # required
    <option> = <value>                # the exporter's own options (Exporter.options)

A section of the other role is an error at its key. When `role` itself is missing or wrong,
only the keys both roles share are checked (which others apply depends on the role).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from telemon.codes import KNOWN
from telemon.models import LimitSet

if TYPE_CHECKING:
    from telemon.drivers import Driver
    from telemon.exporters import Exporter
    from telemon.modules import DiseaseModule
    from telemon.plugin_manager import Registry

ROLES = ("edge", "central")
DEFAULT_TIMEZONE = "Europe/Copenhagen"
DEFAULT_ESCALATE_MINUTES = 30.0
DEFAULT_OUTBOX_MEGABYTES = 512
MAX_RETENTION_DAYS = 36500  # a hundred years: a larger number is a typo
LIMIT_KEYS = ("red_low", "yellow_low", "yellow_high", "red_high")
# The scenarios of simulated patients (telemon.sim.SCENARIOS; tests keep the two equal).
SIM_SCENARIOS = ("stable", "copd-exacerbation", "hf-decompensation", "af")


# --- problems -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigProblem:
    key: str  # dotted key path, "" for the file as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """A config file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


# --- the loaded configuration ---------------------------------------------------------------

@dataclass(frozen=True)
class SecretRef:
    """Where a secret is kept: `env:NAME` (an environment variable) or `file:/path`."""

    scheme: Literal["env", "file"]
    target: str

    @classmethod
    def parse(cls, reference: str) -> SecretRef:
        scheme, _, target = reference.partition(":")
        return cls(scheme, target)  # type: ignore[arg-type]  # checked by _secret_ref

    def resolve(self) -> str:
        """The secret itself; LookupError or OSError says why it is not there."""
        if self.scheme == "env":
            if (value := os.environ.get(self.target)) is None:
                raise LookupError(f"environment variable {self.target} is not set")
            return value
        return Path(self.target).read_text(encoding="utf-8").rstrip("\r\n")

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    username: str | None
    password: SecretRef | None
    client_id: str | None
    ca_file: Path | None = None  # PEM CAs the broker is verified with; None: the system's
    client_cert: Path | None = None  # PEM client certificate and its (unencrypted) key
    client_key: Path | None = None

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


@dataclass(frozen=True)
class StorageConfig:
    path: Path


@dataclass(frozen=True)
class OutboxConfig:
    max_megabytes: float


@dataclass(frozen=True)
class DeviceConfig:
    driver: str
    patient: str
    device: str
    address: str | None
    user: int | None
    scenario: str | None = None  # sim drivers only (telemon.sim)
    seed: int | None = None
    speed: float | None = None


@dataclass(frozen=True)
class ModuleConfig:
    enabled: bool


@dataclass(frozen=True)
class ExporterConfig:
    enabled: bool
    options: Mapping[str, Any]  # what Exporter.open is given


@dataclass(frozen=True)
class EdgeConfig:
    role: Literal["edge"]
    organisation: str
    broker: BrokerConfig
    storage: StorageConfig
    gateway: str
    timezone: ZoneInfo
    outbox: OutboxConfig
    devices: tuple[DeviceConfig, ...]


@dataclass(frozen=True)
class AlarmsConfig:
    escalate_red_after_minutes: float  # an unacknowledged red alarm escalates after this


@dataclass(frozen=True)
class RetentionConfig:
    """How long the central keeps what it may drop (telemon.retention); None: forever."""

    raw_after_days: int | None = None  # observations' raw device bytes (values are kept)
    quarantine_after_days: int | None = None  # rows of the quarantine table


@dataclass(frozen=True)
class CentralConfig:
    role: Literal["central"]
    organisation: str
    broker: BrokerConfig
    storage: StorageConfig
    timezone: ZoneInfo  # patients' default: measuring deadlines are local times
    alarms: AlarmsConfig
    modules: Mapping[str, ModuleConfig]
    exporters: Mapping[str, ExporterConfig]
    retention: RetentionConfig = RetentionConfig()


RoleConfig = TypeVar("RoleConfig", EdgeConfig, CentralConfig)


# --- schema nodes and the one validator that walks them ------------------------------------

Check = Callable[[Any], str | None]  # a value -> why it is wrong, or None


@dataclass(frozen=True)
class Value:
    """A leaf. An absent optional key takes `default` (checked and converted like a value)."""

    check: Check
    required: bool = False
    default: Any = None
    convert: Callable[[Any], Any] = lambda value: value


@dataclass(frozen=True)
class Table:
    """A table with known keys. Absent optional sub-tables are built from their defaults,
    unless `omit_absent` (tables keyed by plugin or code names: only the given ones)."""

    fields: Mapping[str, Node]
    build: Callable[..., Any] = dict
    required: bool = False
    omit_absent: bool = False
    unknown: Callable[[str], str] | None = None  # the message for a key not in fields
    check: Callable[[dict], Iterator[tuple[str, str]]] | None = None  # (key, message) on
    # the table's valid values; build may also raise ValueError (a problem at the table)


@dataclass(frozen=True)
class Array:
    """An array of tables (`[[devices]]`) whose `unique` key differs between items."""

    item: Table
    unique: str | None = None
    required: bool = False


@dataclass(frozen=True)
class Forbidden:
    """A key that is an error wherever it is given (a section of the other role)."""

    message: str
    required: bool = False


Node = Value | Table | Array | Forbidden


def _walk(node: Node, value: Any, key: str, problems: list[ConfigProblem]) -> Any:
    """Check `value` against `node`, adding every problem; its loaded form, or None."""
    before = len(problems)

    def fail(at: str, message: str) -> None:
        problems.append(ConfigProblem(at, message))

    if isinstance(node, Forbidden):
        fail(key, node.message)
    elif isinstance(node, Value):
        if (why := node.check(value)) is None:
            return node.convert(value)
        fail(key, why)
    elif isinstance(node, Array):
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            fail(key, _must(f"an array of tables ([[{key}]])", value))
            return None
        items = tuple(_walk(node.item, item, f"{key}[{i}]", problems)
                      for i, item in enumerate(value))
        first: dict[str, int] = {}
        for i, item in enumerate(value):
            if not isinstance(mark := item.get(node.unique), str):
                continue
            if mark in first:
                fail(f"{key}[{i}].{node.unique}", f"{_show(mark)} is already used by "
                                                  f"{key}[{first[mark]}]")
            first.setdefault(mark, i)
        return items if len(problems) == before else None
    elif not isinstance(value, dict):
        fail(key, _must("a table", value))
    else:
        out = {}
        for name, given in value.items():
            sub = node.fields.get(name)
            if sub is None:
                allowed = [k for k, v in node.fields.items() if not isinstance(v, Forbidden)]
                fail(_join(key, name), (node.unknown or _unknown("key", allowed))(name))
            else:
                out[name] = _walk(sub, given, _join(key, name), problems)
        for name, sub in node.fields.items():
            if name in value or isinstance(sub, Forbidden):
                continue
            if sub.required:
                fail(_join(key, name), "is required but missing")
            elif isinstance(sub, Value):
                out[name] = None if sub.default is None else _walk(sub, sub.default,
                                                                   _join(key, name), problems)
            elif isinstance(sub, Array):
                out[name] = ()
            elif not node.omit_absent:
                out[name] = _walk(sub, {}, _join(key, name), problems)
        if len(problems) == before and node.check:
            for at, message in node.check(out):
                fail(_join(key, at), message)
        if len(problems) == before:
            try:
                return node.build(**out)
            except ValueError as exc:
                fail(key, str(exc))
    return None


def _join(key: str, name: str) -> str:
    name = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    """A value as TOML would write it (tables and arrays by kind only)."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _must(what: str, value: Any) -> str:
    return f"must be {what}, got {_show(value)}"


def _hint(name: Any, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1) if isinstance(name, str) else []
    return f'; did you mean "{close[0]}"?' if close else ""


def _unknown(what: str, choices: Mapping[str, Any] | tuple[str, ...],
             known: str = "allowed keys") -> Callable[[str], str]:
    listing = ", ".join(choices) or "none"
    return lambda name: f"unknown {what}{_hint(name, choices)} ({known}: {listing})"


# --- leaf checks ----------------------------------------------------------------------------

ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # telemon.models.Id, matched as a whole
CPR = re.compile(r"\d{6}-?\d{4}")  # a Danish civil registration number
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BLE_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
SERIAL_PORT = re.compile(r"/dev/\S+|COM[0-9]+")


def _ident(value: Any) -> str | None:
    if isinstance(value, str) and ID.fullmatch(value):
        return None
    return _must("a pseudonymous id (1 to 64 letters, digits and . _ : -)", value)


def _patient(value: Any) -> str | None:
    if isinstance(value, str) and CPR.fullmatch(value):  # not repeated in the message
        return "looks like a CPR number: use the citizen's pseudonymous id"
    return _ident(value)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else _must("a non-empty string", value)


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else _must("true or false", value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _number(low: float | None = None, high: float | None = None) -> Check:
    what = "a number" if low is None else f"a number between {low:g} and {high:g}"
    return lambda v: (None if _is_number(v) and (low is None or low <= v <= high)
                      else _must(what, v))


def _positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else _must("a number above 0", value)


def _integer(low: int | None = None, high: int | None = None) -> Check:
    what = "an integer" if low is None else f"an integer between {low} and {high}"
    return lambda v: (None if isinstance(v, int) and not isinstance(v, bool)
                      and (low is None or low <= v <= high) else _must(what, v))


def _one_of(values: tuple[str, ...]) -> Check:
    what = " or ".join(f'"{v}"' for v in values)
    return lambda v: None if isinstance(v, str) and v in values else _must(what, v)


def _installed(kind: str, names: Mapping[str, Any]) -> Check:
    listing = ", ".join(names) or "none"
    return lambda v: None if isinstance(v, str) and v in names else (
        f"unknown {kind} {_show(v)}{_hint(v, names)} (installed {kind}s: {listing})")


def _timezone(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
            return None
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return _must('an IANA time zone name such as "Europe/Copenhagen"', value)


def _mqtt_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return _must('a broker URL such as "mqtts://broker.example:8883"', value)
    if "@" in value:  # user:password@host; the value is not repeated
        return "must not hold credentials: set broker.username and broker.password instead"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:  # a port that is not a number or above 65535
        return _must("a URL with a port between 1 and 65535", value)
    if url.scheme not in ("mqtt", "mqtts"):
        return _must("an mqtt:// or mqtts:// (TLS) URL", value)
    if not url.hostname:
        return _must("a URL naming the broker host", value)
    if port == 0:
        return _must("a URL with a port between 1 and 65535", value)
    if url.path not in ("", "/") or url.query or url.fragment:
        return _must("only scheme, host and port (no path or query)", value)
    return None


def _secret_ref(value: Any) -> str | None:
    """A reference to a secret; the value is never repeated (it might be the secret)."""
    scheme, colon, target = value.partition(":") if isinstance(value, str) else ("", "", "")
    if colon and scheme == "env":
        return None if ENV_NAME.fullmatch(target) else (
            'must name an environment variable after "env:" (letters, digits and _)')
    if colon and scheme == "file":
        return None if Path(target).is_absolute() else 'must give an absolute path after "file:"'
    return ('must be a reference, "env:VARNAME" or "file:/absolute/path", not the password '
            "itself: credentials are never written in a config file")


def _absolute_path(value: Any) -> str | None:
    if isinstance(value, str) and Path(value).is_absolute():
        return None
    return _must("an absolute path", value)


def _broker_tls(broker: dict) -> Iterator[tuple[str, str]]:
    """The TLS files are used with mqtts:// only, and a client certificate with its key."""
    for key in ("ca_file", "client_cert", "client_key"):
        if broker[key] is not None and urlsplit(broker["url"]).scheme != "mqtts":
            yield key, "is only used with TLS: the url must be mqtts://"
    for key, other in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if broker[key] is not None and broker[other] is None:
            yield other, f"is required with {key} (a client certificate and its key)"


# --- the schema -----------------------------------------------------------------------------

def _schema(role: Any, registry: Registry) -> Table:
    """The schema of a file with this role (any other role: the shared keys only)."""
    common = {
        "role": Value(_one_of(ROLES), required=True),
        "organisation": Value(_ident, required=True),
        "broker": Table({
            "url": Value(_mqtt_url, required=True),
            "username": Value(_text),
            "password": Value(_secret_ref, convert=SecretRef.parse),
            "client_id": Value(_ident),
            "ca_file": Value(_absolute_path, convert=Path),
            "client_cert": Value(_absolute_path, convert=Path),
            "client_key": Value(_absolute_path, convert=Path),
        }, build=BrokerConfig, required=True, check=_broker_tls),
        "storage": Table({"path": Value(_text, required=True, convert=Path)},
                         build=StorageConfig, required=True),
        "timezone": Value(_timezone, default=DEFAULT_TIMEZONE, convert=ZoneInfo),
    }
    edge = {
        "gateway": Value(_ident, required=True),
        "outbox": Table({"max_megabytes": Value(_positive, default=DEFAULT_OUTBOX_MEGABYTES,
                                                convert=float)}, build=OutboxConfig),
        "devices": Array(Table({
            "driver": Value(_installed("driver", registry.drivers), required=True),
            "patient": Value(_patient, required=True),
            "device": Value(_ident, required=True),
            "address": Value(_text),
            "user": Value(_integer(1, 254)),
            "scenario": Value(_one_of(SIM_SCENARIOS)),
            "seed": Value(_integer(0, 2**63 - 1)),
            "speed": Value(_positive, convert=float),
        }, build=DeviceConfig, check=lambda device: _transport(device, registry.drivers)),
            unique="device"),
    }
    central = {
        "alarms": Table({"escalate_red_after_minutes": Value(
            _positive, default=DEFAULT_ESCALATE_MINUTES, convert=float)}, build=AlarmsConfig),
        "retention": Table({key: Value(_integer(1, MAX_RETENTION_DAYS))
                            for key in ("raw_after_days", "quarantine_after_days")},
                           build=RetentionConfig),
        "modules": Table({name: _module(m) for name, m in registry.modules.items()},
                         build=_mapping, omit_absent=True,
                         unknown=_unknown("module", registry.modules, "installed modules")),
        "exporters": Table({name: _exporter(e) for name, e in registry.exporters.items()},
                           build=_mapping, omit_absent=True,
                           unknown=_unknown("exporter", registry.exporters,
                                            "installed exporters")),
    }
    if role == "edge":
        only = 'is only allowed in a central config (this file has role = "edge")'
        return Table(common | edge | dict.fromkeys(central, Forbidden(only)), build=EdgeConfig)
    if role == "central":
        only = 'is only allowed in an edge config (this file has role = "central")'
        return Table(common | central | dict.fromkeys(edge, Forbidden(only)),
                     build=CentralConfig)
    return Table(common | dict.fromkeys(edge | central, Value(lambda _: None)))


def _mapping(**entries: Any) -> Mapping[str, Any]:
    return MappingProxyType(entries)


def _transport(device: dict, drivers: Mapping[str, Driver]) -> Iterator[tuple[str, str]]:
    """What a device's address and user must be for its driver's transport."""
    transport = drivers[device["driver"]].transport
    address = device["address"]
    if address is not None and transport == "ble" and not BLE_ADDRESS.fullmatch(address):
        yield "address", _must('a BLE MAC address like "A4:C1:38:00:00:01" for a ble driver',
                               address)
    elif address is not None and transport == "serial" and not SERIAL_PORT.fullmatch(address):
        yield "address", _must('a serial port like "/dev/ttyUSB0" or "COM3"', address)
    elif address is not None and transport not in ("ble", "serial"):
        yield "address", f"is not used by {transport} drivers"
    if device["user"] is not None and transport != "ble":
        yield "user", f"is only used by ble drivers (driver {device['driver']} is {transport})"
    for key in ("scenario", "seed", "speed"):
        if device.get(key) is not None and transport != "sim":
            yield key, (f"is only used by sim drivers (driver {device['driver']} is "
                        f"{transport})")


LIMITS_MOVED = (
    "the organisation's default limits are no longer read from the config: they are kept "
    "in the central's database, versioned and changed by a team lead with `telemon limits "
    "defaults set {module} CODE --red-low .. --yellow-low .. --yellow-high .. --red-high .. "
    "--reason TEXT --config FILE` (docs/roles-and-consent.md); remove this table")
"""Why a [modules.<module>.limits] table is refused: it used to hold the defaults."""


def _module(module: DiseaseModule) -> Table:
    return Table({
        "enabled": Value(_boolean, required=True),
        "limits": Forbidden(LIMITS_MOVED.format(module=module.name)),
    }, build=ModuleConfig)


def _limits_table(module: DiseaseModule) -> Table:
    """Per-code limit tables for a module's codes (`[spo2]` red_low = 85 ...)."""
    def limits(code: str) -> Table:
        low, high = KNOWN[code].plausible
        return Table({key: Value(_number(low, high), convert=lambda v: Decimal(str(v)))
                      for key in LIMIT_KEYS}, build=LimitSet)  # it checks their order

    return Table({code: limits(code) for code in module.codes}, build=_mapping,
                 omit_absent=True, unknown=_unknown(f"code for module {module.name}",
                                                    module.codes, "its codes"))


def validate_limits(data: Mapping[str, Any], module: DiseaseModule,
                    ) -> tuple[Mapping[str, LimitSet] | None, list[ConfigProblem]]:
    """Limits per code of `module` from a parsed document (`{"spo2": {"red_low": 85}}`),
    each checked in its code's plausible range and order, with problems keyed "spo2.red_low"
    (a file of its own, e.g. `telemon evaluate --limits`; never the central's config)."""
    problems: list[ConfigProblem] = []
    found = _walk(_limits_table(module), data, "", problems)
    return (None if problems else found), problems


_OPTION_CHECKS: dict[str, Check] = {"str": _text, "int": _integer(), "float": _number(),
                                    "bool": _boolean}


def _exporter(exporter: Exporter) -> Table:
    options = {name: Value(_OPTION_CHECKS[o.type], required=o.required, default=o.default,
                           convert=float if o.type == "float" else lambda v: v)
               for name, o in exporter.options.items()}

    def build(enabled: bool, **given: Any) -> ExporterConfig:
        return ExporterConfig(enabled, _mapping(**{k: v for k, v in given.items()
                                                   if v is not None}))

    return Table({"enabled": Value(_boolean, required=True), **options}, build=build)


# --- reading files --------------------------------------------------------------------------

def read(path: str | Path) -> dict[str, Any]:
    """The TOML document in a file; ConfigError with one problem when there is none."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        why = "no such file"
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        why = f"not valid TOML: {exc}"
    except UnicodeDecodeError as exc:
        why = f"not valid UTF-8 (byte {exc.start}): TOML files are UTF-8"
    except OSError as exc:
        why = f"cannot be read: {exc.strerror or exc}"
    raise ConfigError([ConfigProblem("", f"{path}: {why}")])


def validate(data: Mapping[str, Any], registry: Registry,
             ) -> tuple[EdgeConfig | CentralConfig | None, list[ConfigProblem]]:
    """A parsed document's config (None when it has problems) and all its problems."""
    problems: list[ConfigProblem] = []
    config = _walk(_schema(data.get("role"), registry), data, "", problems)
    return (None if problems else config), problems


def check_file(path: str | Path, registry: Registry) -> list[ConfigProblem]:
    """Every problem in a config file (empty when it is valid)."""
    try:
        return validate(read(path), registry)[1]
    except ConfigError as exc:
        return exc.problems


def load(path: str | Path, registry: Registry) -> EdgeConfig | CentralConfig:
    """The config in a file; ConfigError with every problem when it has any."""
    config, problems = validate(read(path), registry)
    if problems:
        raise ConfigError(problems)
    return config


def load_or_exit(path: str | Path, kind: type[RoleConfig]) -> RoleConfig:
    """For commands: the config of the given role in a file, with the installed plugins'
    registry; every problem printed to stderr and exit status 2 when it cannot be used."""
    from telemon import plugin_manager  # the plugin manager imports this module

    try:
        config = load(path, plugin_manager.get()[1])
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{path}: {len(exc.problems)} problem(s)", err=True)
        sys.exit(2)
    if not isinstance(config, kind):
        role = "edge" if kind is EdgeConfig else "central"
        click.echo(f'{path}: role is "{config.role}", not "{role}"', err=True)
        sys.exit(2)
    return config
