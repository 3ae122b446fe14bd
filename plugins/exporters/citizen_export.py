"""The citizen export (GDPR art. 20, the right to data portability): everything the central
holds about one citizen, as one zip archive a machine can read and a person can follow.

    telemon export citizen p-0001 --config central.toml --output p-0001.zip

The archive holds README.md (what each file is, its fields, units and times), manifest.json
(format version, pseudonym, creation time, each file's sha256 and record count) and the data:
patient.json, observations.json and .csv, questionnaire_responses.json, alarms.json,
evaluations.json, limits.json, consent.json and audit.json. The record files are telemon's
one JSON wire form (a v1 batch, telemon.wire), raw device bytes included as base64, so what
went in can be read back exactly. All of it is read in one snapshot of the database; the
archive is written beside its destination and renamed into place, so a reader never sees
half an archive, and the export is audited ("export.citizen", with the archive's sha256).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo

import click
import msgspec
import sqlite_utils

from telemon import __version__, admin, store, wire
from telemon.codes import MDC
from telemon.export import observation_parts
from telemon.hookspecs import hookimpl
from telemon.models import (
    Evaluation,
    LimitSet,
    Observation,
    QuestionnaireResponse,
)
from telemon.plugins.exporters.csv import COLUMNS, rows

FORMAT = "telemon-citizen-export"
FORMAT_VERSION = 1


@contextlib.contextmanager
def _snapshot(db: sqlite_utils.Database) -> Iterator[None]:
    """One read transaction, so every file shows the database at the same moment. A read
    takes no lock in WAL mode: a long export never makes ingest wait."""
    if db.conn.in_transaction:
        yield
        return
    db.conn.execute("BEGIN")
    try:
        yield
    finally:
        db.conn.execute("COMMIT")


def _evaluations(db: sqlite_utils.Database, patient: str) -> list[Evaluation]:
    rows_ = db.execute(
        "SELECT e.observation, e.module, e.code, e.severity, e.limits, e.limits_source, "
        "e.evaluated FROM evaluations e JOIN observations o ON o.id = e.observation "
        "WHERE o.patient = ? ORDER BY e.evaluated, e.observation, e.module, e.code", [patient])
    return [Evaluation(observation=obs, patient=patient, module=module, code=code,
                       severity=severity, limits=msgspec.json.decode(limits, type=LimitSet),
                       limits_source=source, evaluated=datetime.fromisoformat(evaluated))
            for obs, module, code, severity, limits, source, evaluated in rows_]


def _wire_records(db: sqlite_utils.Database, table: str, patient: str, order: str) -> list:
    """The records of a table that keeps each one's wire form, decoded."""
    return [wire.decode(text.encode()) for (text,) in db.execute(
        f"SELECT wire FROM {table} WHERE patient = ? ORDER BY {order}, id", [patient])]


def _json(value: object) -> bytes:
    return msgspec.json.format(admin.JSON.encode(value), indent=2) + b"\n"


def _batch(records: list) -> bytes:
    return msgspec.json.format(wire.encode_batch(records), indent=2) + b"\n"


def export_citizen(db: sqlite_utils.Database, *, patient: str, output: str | os.PathLike[str],
                   actor: str) -> dict:
    """Write everything held about `patient` to the zip archive `output` (replacing it);
    return its manifest. AdminError for an unknown patient or an unusable output path;
    Refused (audited) when the actor's role lacks the right citizen.export."""
    output = Path(output)
    if output.is_dir():
        raise admin.AdminError(f"{output} is a folder: give the archive's file name")
    if not output.parent.is_dir():
        raise admin.AdminError(f"folder {output.parent} does not exist")
    admin.require(db, actor, "citizen.export", "export.citizen", patient)
    person, files = _files(db, patient)
    manifest = msgspec.json.decode(files["manifest.json"][0])
    # Not telemon.files.write_atomically: the archive may only appear together with its
    # audit entry (and, like every file telemon writes, owner-only from its first byte).
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_zip(f, files, stamp=datetime.fromisoformat(manifest["created"]),
                       zone=person.timezone)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        with store.transaction(db):
            admin.audit(db, actor=actor, action="export.citizen", patient=patient,
                        output=str(output.resolve()), sha256=digest,
                        records={f["name"]: f["records"] for f in manifest["files"]
                                 if f["records"] is not None})
            os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return manifest


def _files(db: sqlite_utils.Database, patient: str,
           ) -> tuple[admin.Patient, dict[str, tuple[bytes, int | None]]]:
    """The patient and the archive's files: name -> (content, record count or None)."""
    with _snapshot(db):
        person = admin.get_patient(db, patient)
        observations: list[Observation] = _wire_records(db, "observations", patient,
                                                        "effective")
        responses: list[QuestionnaireResponse] = _wire_records(
            db, "questionnaire_responses", patient, "authored")
        alarms = [store.get_alarm(db, id_) for (id_,) in db.execute(
            "SELECT id FROM alarms WHERE patient = ? ORDER BY raised, id", [patient])]
        evaluations = _evaluations(db, patient)
        limits = admin.limit_versions(db, patient)
        consent = store.consent_history(db, patient)
        audit = admin.audit_entries(db, patient=patient)
    created = datetime.now(UTC)

    csv_rows = [row for obs in observations for row in rows(obs)]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    data = {
        "patient.json": (_json({
            "id": person.id, "display_name": person.display_name,
            "organisation": person.organisation, "timezone": person.timezone.key,
            "created": person.created, "enrolment": person.enrolment}), 1),
        "observations.json": (_batch(observations), len(observations)),
        "observations.csv": (table.getvalue().encode(), len(csv_rows)),
        "questionnaire_responses.json": (_batch(responses), len(responses)),
        "alarms.json": (_batch(alarms), len(alarms)),
        "evaluations.json": (_batch(evaluations), len(evaluations)),
        "limits.json": (_batch(limits), len(limits)),
        "consent.json": (_batch(consent), len(consent)),
        "audit.json": (_json(audit), len(audit)),
    }
    readme = _readme(person, created, observations, {n: c for n, (_, c) in data.items()})
    files: dict[str, tuple[bytes, int | None]] = {"README.md": (readme.encode(), None), **data}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "generator": f"telemon {__version__}",
        "patient": person.id, "created": created, "timezone": person.timezone.key,
        "files": [{"name": name, "sha256": hashlib.sha256(content).hexdigest(),
                   "bytes": len(content), "records": count}
                  for name, (content, count) in files.items()],
    }
    files["manifest.json"] = (_json(manifest), None)
    return person, files


def _write_zip(f: BinaryIO, files: dict[str, tuple[bytes, int | None]], *, stamp: datetime,
               zone: ZoneInfo) -> None:
    """The files as a zip archive, stamped with the local creation time, then on disk."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (content, _) in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp.astimezone(zone).timetuple()[:6])
            info.external_attr = 0o600 << 16  # owner-only when unpacked too
            archive.writestr(info, content, compress_type=zipfile.ZIP_DEFLATED)
    f.flush()
    os.fsync(f.fileno())


# --- README -----------------------------------------------------------------------------------

_FILES = {
    "manifest.json": "Format name and version, the pseudonym, when the archive was made, and "
                     "for every other file its sha256, size in bytes and number of records.",
    "patient.json": "What the central knows about you: pseudonym (`id`), `display_name`, "
                    "`organisation`, `timezone`, `created` (when you were registered) and "
                    "`enrolment` (disease `modules` you are monitored with and the `gateways` "
                    "that send your readings).",
    "observations.json": "Every reading from your devices, exactly as received. Each item: "
                         "`id`, `device`, `gateway`, `code` (`system`, `code`, `display`), "
                         "`unit`, `effective` (when it was measured, the device's clock), "
                         "`value` (with the device's precision) or `absent` (why there is no "
                         "number: a special value such as `not-a-number`), `components` (the "
                         "parts of a blood pressure), `flags` (the device's status), "
                         "`context` (how it was measured), `raw` (the device's own bytes, "
                         "base64), `driver`, `driver_version`, `received` (when the central "
                         "stored it).",
    "observations.csv": "The same readings as a table, one row per value (a blood pressure "
                        "gives a row for each of systolic, diastolic and mean, under one "
                        "`id`). Columns: " + ", ".join(COLUMNS) + ".",
    "questionnaire_responses.json": "Your answers: `questionnaire`, `version`, `authored`, "
                                    "`answers` (`item` and `value`) and the `scores` computed "
                                    "from them.",
    "alarms.json": "What the monitoring found: `module`, `rule`, `severity` (red, yellow, "
                   "missing), `raised`, `message`, the `observations` behind it, the `limits` "
                   "applied, `state` (open, acknowledged, resolved) and `events`, the trail of "
                   "who did what and when (`at`, `action`, `by`, `note`).",
    "evaluations.json": "Each reading checked against limits: `observation`, `module`, `code` "
                        "(the measure's short name, below), `severity`, the `limits` in force "
                        "and `limits_source` (`patient v<N>`: your own limits, version N; "
                        "`organisation`; `module`).",
    "limits.json": "Every version of your own alarm limits: `code`, `limits` (`red_low`, "
                   "`yellow_low`, `yellow_high`, `red_high`: below a low limit or above a high "
                   "one is that colour), `valid_from`, `valid_to` (empty while in force), "
                   "`author`, `reason`, `version`.",
    "consent.json": "Every consent you gave or withdrew: `purpose`, `granted` (true: given, "
                    "false: withdrawn), `at`, `recorded_by`. The latest event per purpose is "
                    "the one in force.",
    "audit.json": "Every change to and read of your data up to this export: `at`, `actor` "
                  "(who), `action` (what, e.g. `patient.show`, `limits.set`), `detail`. The "
                  "export itself is recorded after the archive is made.",
}


def _readme(person: admin.Patient, created: datetime, observations: list[Observation],
            counts: dict[str, int]) -> str:
    def count(name: str) -> str:
        n = counts.get(name)
        return "" if n is None else f" ({n} record{'' if n == 1 else 's'})"

    files = "\n".join(f"- **{name}**{count(name)}: {text}" for name, text in _FILES.items())
    parts = {(part.code.system, part.code.code): (known, part)
             for obs in observations for known, part in observation_parts(obs)}
    measures = []
    for (system, code), (known, part) in sorted(parts.items()):
        name = f"{known.key}: " if known else ""
        loinc = f", LOINC {known.loinc}" if known and known.loinc else ""
        measures.append(f"| {name}{part.code.display} | {part.unit} | {system} {code}{loinc} |")
    units = "\n".join(["| Measure | Unit (UCUM) | Code |", "|---|---|---|", *measures]
                      ) if measures else "There are no readings."
    zone = person.timezone
    return f"""# Your data from telemon

This archive holds everything the telemonitoring central of organisation
`{person.organisation}` keeps about you, pseudonym `{person.id}`, as of
{admin.local(created, zone)}. It is your copy under article 20 of the GDPR (the right
to data portability).

## Files

{files}

observations, questionnaire_responses, alarms, evaluations, limits and consent
(`.json`) are telemon's wire form version 1: a batch
`{{"type": "batch", "v": 1, "items": [...]}}` whose items each carry their `type`.
Other software can read them back exactly (telemon: `telemon.wire.decode_message`).

## Times

Times are ISO 8601 (RFC 3339) in UTC (`Z` or `+00:00`). Your time zone is
`{zone.key}`: convert to it to see local times.

## Units and codes

Units are UCUM (`%`, `/min`, `kg`, `mm[Hg]`, `Cel`). Codes are IEEE 11073 MDC
(`{MDC}`) where one exists, else LOINC.

{units}
"""


# --- command line -----------------------------------------------------------------------------


@click.command(name="citizen")
@click.argument("patient_id", metavar="PATIENT")
@admin.config_option
@click.option("--output", "-o", required=True, type=click.Path(),
              help="The zip archive to write (replaced if it exists).")
@admin.by_option
@admin.reports_errors
def citizen_command(patient_id: str, config_path: str, output: str, actor: str) -> None:
    """Write everything held about PATIENT to one zip archive (GDPR art. 20): README,
    manifest, and JSON and CSV files of readings, answers, alarms, limits, consent and
    audit. The export is audited."""
    with admin.open_central(config_path) as central:
        manifest = export_citizen(central.db, patient=patient_id, output=output, actor=actor)
    counts = ", ".join(f"{f['name']} {f['records']}" for f in manifest["files"]
                       if f["records"] is not None)
    click.echo(f"wrote {output} (records: {counts})")


@hookimpl
def register_commands(cli):
    group = cli.commands.get("export")
    if group is None:  # a command line without the core's export group
        group = click.Group(name="export", help="Export data from the central.")
        cli.add_command(group)
    group.add_command(citizen_command)
