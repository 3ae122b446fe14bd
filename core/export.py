"""The export runner: hands stored records to each enabled exporter, batch by batch, and keeps
a durable cursor per exporter and feed in the `export_cursors` table.

A feed is a table followed in rowid order: "observations", then "questionnaire_responses".
Rowid order is commit order: SQLite has one writer at a time, so a row with a higher rowid is
never committed before one with a lower rowid (rows of these tables are never deleted, so a
rowid is never reused). Each batch is delivered first and its cursor saved after, in its own
transaction: a crash in between repeats the batch on the next run (at least once), so every
target must be idempotent. An exporter that fails to open or deliver is logged with its name
and the reason; its cursor stays where it was, and the other exporters still run.

Consent: an exporter that declares a purpose (Exporter.purpose, e.g. "national-export") gets
only the records of patients whose latest consent event for that purpose, at the time of the
export, is a grant (telemon.admin.consent_in_force). The others are skipped, not held back:
the cursor moves past them as past the rest of the batch, so a record collected without
consent is never sent, even after a later grant (consent is given for what comes after; the
cursor is one position per feed and could not wait on them anyway). Each skip is audited once
per patient and batch ("export.skipped": exporter, purpose, count), in the transaction that
saves the cursor, so a repeated batch is audited again only when it is skipped again.

Also here, because more than one exporter needs them: the pseudonymous identifier namespaces
telemon mints, and the alarm ranges the Danish national infrastructure copies into every
observation.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import click
import msgspec
import sqlite_utils

from telemon import admin, store, wire
from telemon.codes import MeasureCode, lookup
from telemon.config import CentralConfig
from telemon.exporters import Exporter
from telemon.models import Component, Evaluation, LimitSet, Observation, Record, Triage
from telemon.plugin_manager import Registry

logger = logging.getLogger(__name__)

FEEDS = ("observations", "questionnaire_responses")
"""The tables exporters follow, in the order they are exported."""


class ExportError(RuntimeError):
    """A target could not take a batch (a server refused it, a file could not be merged)."""


# --- the runner -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    delivered: int  # records of the feeds (not counting the evaluations sent with them)
    error: str | None = None  # why the exporter stopped, if it did
    skipped: int = 0  # records of the feeds left out: no consent to the exporter's purpose


def run_exports(db: sqlite_utils.Database, config: CentralConfig, registry: Registry, *,
                batch_size: int = 500) -> dict[str, int]:
    """Run every exporter enabled in `config` once; return the records each delivered."""
    return {name: result.delivered
            for name, result in export_all(db, config, registry, batch_size=batch_size).items()}


def export_all(db: sqlite_utils.Database, config: CentralConfig, registry: Registry, *,
               batch_size: int = 500) -> dict[str, ExportResult]:
    """Run every exporter enabled in `config` once; what each delivered and why it stopped."""
    results = {}
    for name, exporter_config in config.exporters.items():
        if not exporter_config.enabled:
            continue
        exporter = registry.exporters.get(name)
        if exporter is None:
            reason = "is enabled in the config but not installed"
            logger.error("exporter %r %s", name, reason)
            results[name] = ExportResult(0, reason)
            continue
        results[name] = export_one(db, exporter, exporter_config.options, batch_size=batch_size)
    return results


def export_one(db: sqlite_utils.Database, exporter: Exporter, options: Mapping[str, Any], *,
               batch_size: int = 500) -> ExportResult:
    """Deliver everything past this exporter's cursors, feed by feed, in batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    try:
        target = exporter.open(options)
    except Exception as exc:  # a broken exporter must not stop the others
        return _failed(exporter.name, 0, f"cannot open: {type(exc).__name__}: {exc}")
    delivered = skipped = 0
    try:
        for feed in FEEDS:
            while batch := _next_batch(db, exporter.name, feed, batch_size):
                last_rowid, records = batch
                without_consent = _without_consent(db, exporter.purpose, records)
                records = [r for r in records if r.patient not in without_consent]
                if records:
                    target.deliver(records)
                with store.transaction(db):
                    _audit_skipped(db, exporter, without_consent)
                    _save_position(db, exporter.name, feed, last_rowid)
                delivered += sum(not isinstance(r, Evaluation) for r in records)
                skipped += sum(without_consent.values())
    except Exception as exc:
        return _failed(exporter.name, delivered, f"{type(exc).__name__}: {exc}", skipped)
    finally:
        try:
            target.close()
        except Exception as exc:
            logger.error("exporter %r: close failed: %s: %s", exporter.name,
                         type(exc).__name__, exc)
    return ExportResult(delivered, skipped=skipped)


def _failed(name: str, delivered: int, reason: str, skipped: int = 0) -> ExportResult:
    logger.error("exporter %r stopped after %d record(s): %s", name, delivered, reason)
    return ExportResult(delivered, reason, skipped)


def _without_consent(db: sqlite_utils.Database, purpose: str | None,
                     records: list[Record]) -> dict[str, int]:
    """The patients of a batch without consent to `purpose` in force now, each with how many
    of their records of the feeds (not evaluations) the batch holds."""
    if purpose is None:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.patient] += not isinstance(record, Evaluation)
    refused = {}
    for patient, count in counts.items():
        event = admin.consent_in_force(db, patient).get(purpose)
        if event is None or not event.granted:
            refused[patient] = count
    return refused


def _audit_skipped(db: sqlite_utils.Database, exporter: Exporter,
                   without_consent: Mapping[str, int]) -> None:
    for patient, count in without_consent.items():
        store.audit(db, actor="central", action="export.skipped", patient=patient,
                    exporter=exporter.name, purpose=exporter.purpose, count=count)


def cursor_positions(db: sqlite_utils.Database, exporter: str) -> dict[str, int]:
    """The last rowid of each feed this exporter has delivered (0: nothing yet)."""
    return {feed: _position(db, exporter, feed) for feed in FEEDS}


def _position(db: sqlite_utils.Database, exporter: str, feed: str) -> int:
    row = db.execute("SELECT position FROM export_cursors WHERE exporter = ? AND feed = ?",
                     [exporter, feed]).fetchone()
    return 0 if row is None else row[0]


def _save_position(db: sqlite_utils.Database, exporter: str, feed: str, position: int) -> None:
    with store.transaction(db):
        db.execute(
            "INSERT INTO export_cursors (exporter, feed, position, updated) VALUES (?, ?, ?, ?) "
            # never backwards: another process running the same exporter may be behind
            "ON CONFLICT (exporter, feed) DO UPDATE SET position = "
            "MAX(position, excluded.position), updated = excluded.updated",
            [exporter, feed, position, store.utc_text(datetime.now(UTC))])


def _next_batch(db: sqlite_utils.Database, exporter: str, feed: str,
                batch_size: int) -> tuple[int, list[Record]] | None:
    """The next rows of a feed past the exporter's cursor, decoded, and the last rowid.
    Observations come each followed by the evaluations stored for them."""
    position = _position(db, exporter, feed)
    rows = db.execute(f"SELECT rowid, wire FROM {feed} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                      [position, batch_size]).fetchall()
    if not rows:
        return None
    records = [_decode(feed, rowid, text) for rowid, text in rows]
    last_rowid = rows[-1][0]
    if feed == "observations":
        evaluations = _evaluations(db, position, last_rowid)
        records = [part for record in records
                   for part in (record, *evaluations.get(record.id, ()))]
    return last_rowid, records


def _decode(feed: str, rowid: int, text: str) -> Record:
    try:
        return wire.decode(text.encode())
    except wire.WireError as exc:
        raise ExportError(f"{feed} row {rowid}: its stored wire form cannot be decoded: "
                          f"{exc}") from None


def _evaluations(db: sqlite_utils.Database, after: int,
                 last: int) -> dict[str, list[Evaluation]]:
    """The evaluations of the observations with rowid in (after, last], by observation."""
    rows = db.execute(
        "SELECT e.observation, o.patient, e.module, e.code, e.severity, e.limits, "
        "e.limits_source, e.evaluated FROM evaluations e JOIN observations o "
        "ON o.id = e.observation WHERE o.rowid > ? AND o.rowid <= ? "
        "ORDER BY e.observation, e.module, e.code", [after, last])
    found: dict[str, list[Evaluation]] = defaultdict(list)
    for observation, patient, module, code, severity, limits, source, evaluated in rows:
        try:
            evaluation = Evaluation(
                observation=observation, patient=patient, module=module, code=code,
                severity=severity, limits=msgspec.json.decode(limits, type=LimitSet),
                limits_source=source, evaluated=datetime.fromisoformat(evaluated))
        except (msgspec.DecodeError, ValueError) as exc:
            raise ExportError(f"evaluation of observation {observation} by {module} for "
                              f"{code} cannot be read: {exc}") from None
        found[observation].append(evaluation)
    return found


# --- shared by the exporters ----------------------------------------------------------------


def id_system(kind: str) -> str:
    """The namespace of telemon's pseudonymous ids of one kind ("patient", "device", ...),
    as a URI (FHIR Identifier.system). A receiver maps them to its own (CPR, device
    registry); telemon never holds a CPR number."""
    return f"urn:telemon:{kind}"


def id_root(kind: str) -> str:
    """The same namespace as a UUID (a CDA II root must be an OID or a UUID; a name-based
    UUID needs no registration)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, id_system(kind)))


# The LOINC codes of the FHIR R4 Vital Signs profile (hl7.org/fhir/R4/observation-vitalsigns):
# measures coded with one of them are vital signs (FHIR category, CDA Vital Signs section).
VITAL_SIGNS_LOINC = frozenset({
    "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4",
    "29463-7", "39156-5", "85354-9", "8480-6", "8462-4",
})


def is_vital_sign(measure: MeasureCode | None) -> bool:
    return measure is not None and measure.loinc in VITAL_SIGNS_LOINC


INTERPRETATIONS = {"red": ("AA", "Critical abnormal"), "yellow": ("A", "Abnormal"),
                   "green": ("N", "Normal")}
"""A severity as an HL7 v3 ObservationInterpretation code (FHIR and CDA alike)."""

MEDCOM_MESSAGE_CODES = "1.2.208.184.100.1"
"""OID of MedCom's message code system: alarm range types RAL / GAL, method codes."""


@dataclass(frozen=True)
class AlarmRange:
    """Values in [low, high] raise an alarm of this colour (an open end when None).

    The Danish national infrastructure copies each patient's ranges into every observation as
    regions of this kind, typed with MedCom message codes "RAL" (red) and "GAL" (yellow): its
    ServiceRequest examples give SpO2 a RAL range with high 88 and a GAL range 88-92
    (eHealth Infrastructure IG, ValueSet reference-range-type; RELRAL / RELGAL there are the
    *relative* ranges, which telemon does not keep). At the limit itself telemon counts a
    value as inside (telemon.dsp.limit_bands), which the end points cannot say.
    """

    code: Literal["RAL", "GAL"]
    low: Decimal | None
    high: Decimal | None

    @property
    def display(self) -> str:
        colour = "RØD" if self.code == "RAL" else "GUL"
        return f"Terapeutiske grænseværdier for {colour} alarm"  # the code system's display


def alarm_ranges(limits: LimitSet) -> list[AlarmRange]:
    """The red and yellow regions of a patient's four limits, lowest first."""
    regions = []
    if limits.red_low is not None:
        regions.append(AlarmRange("RAL", None, limits.red_low))
    if limits.yellow_low is not None:
        regions.append(AlarmRange("GAL", limits.red_low, limits.yellow_low))
    if limits.yellow_high is not None:
        regions.append(AlarmRange("GAL", limits.yellow_high, limits.red_high))
    if limits.red_high is not None:
        regions.append(AlarmRange("RAL", limits.red_high, None))
    return regions


@dataclass(frozen=True)
class PartAssessment:
    """What the evaluations say about one measured part (a measure key) of an observation."""

    severity: str  # the worst found by any module: "red", "yellow" or "green"
    ranges: tuple[AlarmRange, ...]  # of every distinct limit set in force


def assessments(records: Iterable[Record]) -> dict[str, dict[str, PartAssessment]]:
    """The evaluations in a batch, by observation id and measure key."""
    grouped: dict[str, dict[str, list[Evaluation]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if isinstance(record, Evaluation):
            grouped[record.observation][record.code].append(record)
    result: dict[str, dict[str, PartAssessment]] = {}
    for observation, by_key in grouped.items():
        result[observation] = {}
        for key, evaluations in by_key.items():
            worst = max(Triage[e.severity.upper()] for e in evaluations)
            limit_sets = list(dict.fromkeys(e.limits for e in evaluations))  # keeps order
            result[observation][key] = PartAssessment(
                worst.label, tuple(r for limits in limit_sets for r in alarm_ranges(limits)))
    return result


def observation_parts(obs: Observation) -> list[tuple[MeasureCode | None, Observation | Component]]:
    """The measured parts of an observation, each with its known measure (None: a code
    telemon does not know): the observation itself, or each component of a compound one."""
    return [(lookup(part.code), part) for part in obs.components or (obs,)]


# --- the command line -----------------------------------------------------------------------


@click.group(name="export")
def export_group() -> None:
    """Hand stored data on to the export targets (FHIR, PHMR, CSV, ...)."""


@export_group.command(name="run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The central's TOML config file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Records handed to a target at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export_run(config_path: str, batch_size: int, as_json: bool) -> None:
    """Run every enabled exporter once: deliver what is past its cursors.

    Prints per exporter how many records went out and where its cursors now stand. Exit
    code 1 when an exporter failed (the others still ran), 2 when the config is unusable.
    """
    from telemon import plugin_manager
    from telemon.config import ConfigError, load

    pm, registry = plugin_manager.get()
    try:
        config = load(config_path, registry)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    if not isinstance(config, CentralConfig):
        click.echo(f"{config_path}: exports run on the central; this is an edge config",
                   err=True)
        sys.exit(2)
    db = store.open_database(store.central_database_path(config.storage.path), pm=pm)
    results = export_all(db, config, registry, batch_size=batch_size)
    report = {name: {"delivered": result.delivered, "skipped": result.skipped,
                     "error": result.error, "cursors": cursor_positions(db, name)}
              for name, result in results.items()}
    if as_json:
        click.echo(json.dumps({"exporters": report}, indent=2))
    elif not report:
        click.echo("no exporter is enabled")
    else:
        for name, line in report.items():
            cursors = ", ".join(f"{feed} at {position}"
                                for feed, position in line["cursors"].items())
            status = f"failed: {line['error']}" if line["error"] else "ok"
            skipped = (f"{line['skipped']} skipped without consent, " if line["skipped"]
                       else "")
            click.echo(f"{name}: {line['delivered']} record(s) delivered, {skipped}{status} "
                       f"({cursors})")
    if any(result.error for result in results.values()):
        sys.exit(1)
