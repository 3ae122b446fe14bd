"""Enrolment and administration: patients, their limits, modules, gateways, consent and staff.

Plain functions (the nurse dashboard calls them too) and, below them, the click groups of
the `telemon` command line. Every change is one transaction together with its audit entry
(store.audit: who, when, what, the change), so a change is never kept without its record.
Reads of personal data by a person (`patient show`, `patient list`, `limits history`) are
audited as well.

Personal data (the display name) lives only in the central's `patients` table. Everything
else - the wire, MQTT topics, logs, audit details and error messages - names a citizen by
pseudonym only, so no message here ever contains a display name.

Once staff are registered (telemon.roles), each change and audited read here first checks
that the actor's role holds the right it needs; a refusal is audited ("refused") and raised
as Refused, an AdminError naming the missing right.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import getpass
import os
import re
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import msgspec
import sqlite_utils

from telemon import plugin_manager, provision, roles, store
from telemon.codes import KNOWN, lookup
from telemon.config import CPR, ID, CentralConfig, load_or_exit
from telemon.models import (
    Code,
    ConsentEvent,
    ConsentPurpose,
    Enrolment,
    LimitSet,
    LimitVersion,
    new_id,
)
from telemon.modules import DiseaseModule, Item, Questionnaire

CONSENT_PURPOSES: tuple[str, ...] = get_args(ConsentPurpose)
JSON = msgspec.json.Encoder(decimal_format="number")  # as the wire: 2.0 stays 2.0
_DETAIL = msgspec.json.Decoder(float_hook=Decimal)  # audit details back without rounding


class AdminError(Exception):
    """A change or read that cannot be done: an unknown patient, a duplicate, a gateway
    already bound. The message is one line and names citizens by pseudonym only."""


class InvalidInput(AdminError):
    """Input that can never be right: a malformed id, an unknown module or code, limits out
    of order or outside the code's plausible range."""


class Refused(AdminError):
    """The actor's role does not hold the right a change or read needs (telemon.roles)."""


@dataclass(frozen=True)
class Patient:
    """A patient as the central knows them: pseudonym, personal data and enrolment."""

    id: str
    organisation: str
    display_name: str = field(repr=False)  # personal data: kept out of reprs and tracebacks
    timezone: ZoneInfo
    created: datetime
    enrolment: Enrolment


@dataclass(frozen=True)
class PatientOverview:
    """What `patient show` shows: the patient, the limits and consent in force now."""

    patient: Patient
    limits: list[LimitVersion]
    consent: dict[str, ConsentEvent]  # purpose -> the latest event for it


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    patient: str | None
    detail: dict[str, Any]

    @property
    def why(self) -> str:
        """Why: a change's reason (an alarm's or contact's note), a read's purpose; "" if
        none was given."""
        for key in WHY_KEYS:
            if isinstance(value := self.detail.get(key), str) and value.strip():
                return value.strip()
        return ""


WHY_KEYS = ("reason", "note", "purpose")
"""The audit detail keys that say why, in the order `AuditEntry.why` looks for them."""


# --- checks ---------------------------------------------------------------------------------


def _check_id(value: str, what: str) -> str:
    """A pseudonymous id (telemon.models.Id); a CPR number is refused without repeating it."""
    if what == "patient" and CPR.fullmatch(value):
        raise InvalidInput("the patient id looks like a CPR number: use the citizen's "
                           "pseudonymous id")
    if not ID.fullmatch(value):
        raise InvalidInput(f"{what} id {value!r} must be 1 to 64 letters, digits and . _ : -")
    return value


def audit(db: sqlite_utils.Database, *, actor: str, action: str, patient: str | None = None,
          **detail: object) -> int:
    """store.audit with what the operating system authenticated beside the claimed actor
    (roles.identity: under sudo, who ran it); call it inside the change's transaction."""
    if found := roles.identity():
        detail["identity"] = found
    return store.audit(db, actor=actor, action=action, patient=patient, **detail)


def require(db: sqlite_utils.Database, actor: str, right: str, attempted: str,
            patient: str | None = None) -> None:
    """Refuse, audited, unless the actor's role holds `right` (telemon.roles). Call it before
    the change's transaction: the audit entry of a refusal must outlive the refusal."""
    if patient is not None:
        _check_id(patient, "patient")  # a CPR number typed by mistake is never audited
    reason = roles.missing_right(db, actor, right)
    if reason is not None:
        audit(db, actor=actor, action="refused", patient=patient, right=right,
              attempted=attempted)
        raise Refused(f"refused: {reason}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r} (an IANA name such as "
                           "Europe/Copenhagen)") from None


def _check_module(module: str, installed: Collection[str]) -> str:
    if module not in installed:
        raise InvalidInput(f"unknown module {module!r} (installed modules: "
                           f"{', '.join(sorted(installed)) or 'none'})")
    return module


def _unknown_code(key: str) -> InvalidInput:
    close = difflib.get_close_matches(key, list(KNOWN), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return InvalidInput(f"unknown code {key!r}{hint} (known codes: {', '.join(KNOWN)})")


def _check_limits(code_key: str, limits: LimitSet) -> None:
    """Each set limit within the code's plausible range (its order LimitSet has checked)."""
    measure = KNOWN[code_key]
    low, high = measure.plausible
    given = {f: getattr(limits, f) for f in LimitSet.__struct_fields__}
    if all(value is None for value in given.values()):
        raise InvalidInput(f"no limits given for {code_key}: set at least one of "
                           f"{', '.join(given)}")
    for name, value in given.items():
        if value is not None and not low <= value <= high:
            raise InvalidInput(f"{code_key} {name} {value} is outside the plausible range "
                               f"{low:g} to {high:g} {measure.unit}")


# --- patients -------------------------------------------------------------------------------


def add_patient(db: sqlite_utils.Database, *, patient: str, organisation: str,
                display_name: str, timezone: str, modules: Collection[str],
                gateways: Collection[str] = (), actor: str,
                installed_modules: Collection[str], reason: str = "") -> Patient:
    """Enrol a new patient: their row in `patients` and their Enrolment, audited with the
    reason (the referral)."""
    require(db, actor, "enrolment.change", "patient.add", patient)
    for gateway in gateways:
        _check_id(gateway, "gateway")
    if not display_name.strip():
        raise InvalidInput(f"patient {patient}: a display name is required")
    zone = _zone(timezone)
    modules = tuple(dict.fromkeys(_check_module(m, installed_modules) for m in modules))
    if not modules:
        raise InvalidInput(f"patient {patient}: enrol with at least one module")
    gateways = tuple(dict.fromkeys(gateways))
    now = datetime.now(UTC)
    with store.transaction(db):
        if db.execute("SELECT 1 FROM patients WHERE id = ?", [patient]).fetchone():
            raise AdminError(f"patient {patient} already exists")
        db.execute("INSERT INTO patients (id, organisation, display_name, timezone, created) "
                   "VALUES (?, ?, ?, ?, ?)",
                   [patient, organisation, display_name, zone.key, store.utc_text(now)])
        store.store_record(db, Enrolment(patient=patient, organisation=organisation,
                                         modules=modules, gateways=gateways, enrolled=now))
        # the display name stays in `patients` only: the audit says that it was set
        audit(db, actor=actor, action="patient.add", patient=patient,
              organisation=organisation, timezone=zone.key, modules=modules,
              gateways=gateways, reason=reason.strip())
    return get_patient(db, patient)


_PATIENT_QUERY = """
    SELECT p.id, p.organisation, p.display_name, p.timezone, p.created,
           e.modules, e.gateways, e.enrolled
    FROM patients p LEFT JOIN enrolments e ON e.patient = p.id AND e.organisation = p.organisation
"""


def _patient(row: tuple) -> Patient:
    id_, organisation, display_name, zone, created, modules, gateways, enrolled = row
    enrolment = Enrolment(
        patient=id_, organisation=organisation,
        modules=tuple(msgspec.json.decode(modules)) if modules else (),
        gateways=tuple(msgspec.json.decode(gateways)) if gateways else (),
        enrolled=datetime.fromisoformat(enrolled) if enrolled else None)
    return Patient(id=id_, organisation=organisation, display_name=display_name,
                   timezone=ZoneInfo(zone), created=datetime.fromisoformat(created),
                   enrolment=enrolment)


def get_patient(db: sqlite_utils.Database, patient: str) -> Patient:
    """The patient with this pseudonym; AdminError if there is none. Not audited: a person's
    read goes through show_patient (or audits itself)."""
    row = db.execute(f"{_PATIENT_QUERY} WHERE p.id = ?", [patient]).fetchone()
    if row is None:
        raise AdminError(f"unknown patient {patient}")
    return _patient(row)


def list_patients(db: sqlite_utils.Database, organisation: str,
                  module: str | None = None) -> list[Patient]:
    """The organisation's patients by pseudonym, only those with `module` if given."""
    rows = db.execute(f"{_PATIENT_QUERY} WHERE p.organisation = ? ORDER BY p.id",
                      [organisation])
    patients = [_patient(row) for row in rows]
    return [p for p in patients if module is None or module in p.enrolment.modules]


def show_patient(db: sqlite_utils.Database, patient: str, *, actor: str,
                 at: datetime | None = None, purpose: str = "") -> PatientOverview:
    """The patient with the limits and consent in force at `at` (now), audited as a read
    (with its purpose, when one is given: a read needs none)."""
    require(db, actor, "patient.read", "patient.show", patient)
    with store.transaction(db):
        overview = PatientOverview(get_patient(db, patient), limits_in_force(db, patient, at),
                                   consent_in_force(db, patient))
        audit(db, actor=actor, action="patient.show", patient=patient,
              **({"purpose": purpose.strip()} if purpose.strip() else {}))
    return overview


# --- limits ---------------------------------------------------------------------------------


def set_limits(db: sqlite_utils.Database, *, patient: str, code_key: str, limits: LimitSet,
               reason: str, actor: str, valid_from: datetime | None = None) -> LimitVersion:
    """Add the next version of a patient's limits for one code (versions are never
    overwritten: the current one ends when this one starts); audited with before/after."""
    require(db, actor, "limits.set", "limits.set", patient)
    if code_key not in KNOWN:
        raise _unknown_code(code_key)
    _check_limits(code_key, limits)
    if not reason.strip():
        raise InvalidInput("a reason is required for new limits (it is kept with them)")
    valid_from = valid_from or datetime.now(UTC)
    if valid_from.tzinfo is None:
        raise InvalidInput("valid_from needs a time zone")
    code = KNOWN[code_key].code
    with store.transaction(db):
        get_patient(db, patient)
        history = store.limit_history(db, patient, code)
        try:
            stored = store.store_record(db, LimitVersion(
                patient=patient, code=code, limits=limits, valid_from=valid_from,
                author=actor, reason=reason))
        except ValueError as exc:  # starts before the current version
            raise AdminError(str(exc)) from None
        audit(db, actor=actor, action="limits.set", patient=patient, code=code_key,
              version=stored.version, valid_from=stored.valid_from.astimezone(UTC),
              before=history[-1].limits if history else None, after=limits,
              reason=reason)
    return stored


def limit_versions(db: sqlite_utils.Database, patient: str) -> list[LimitVersion]:
    """Every version of every one of a patient's limits, by code, oldest first."""
    codes = db.execute("SELECT DISTINCT code_system, code FROM limits WHERE patient = ? "
                       "ORDER BY code_system, code", [patient]).fetchall()
    return [version for system, code in codes
            for version in store.limit_history(db, patient, Code(system, code))]


def limits_in_force(db: sqlite_utils.Database, patient: str,
                    at: datetime | None = None) -> list[LimitVersion]:
    """For each code, the version of the patient's limits in force at `at` (now)."""
    at = at or datetime.now(UTC)
    return [v for v in limit_versions(db, patient)
            if v.valid_from <= at and (v.valid_to is None or at < v.valid_to)]


# --- the organisation's default limits ------------------------------------------------------


def set_default_limits(db: sqlite_utils.Database, *, organisation: str, module: str,
                       code_key: str, limits: LimitSet, reason: str, actor: str,
                       installed_modules: Mapping[str, DiseaseModule],
                       valid_from: datetime | None = None) -> store.DefaultLimits:
    """Add the next version of the organisation's default limits for one code of a module:
    what its patients without limits of their own are checked against from `valid_from`
    (now) on, instead of the module's defaults. A team lead's right (limits.defaults);
    versions are never overwritten; audited with before/after and the reason."""
    require(db, actor, "limits.defaults", "limits.defaults.set")
    found = installed_modules.get(_check_module(module, installed_modules))
    if code_key not in KNOWN:
        raise _unknown_code(code_key)
    if found is not None and code_key not in found.codes:
        raise InvalidInput(f"module {module} does not measure {code_key} (its codes: "
                           f"{', '.join(found.codes)})")
    _check_limits(code_key, limits)
    if not reason.strip():
        raise InvalidInput("a reason is required for new default limits (it is kept with "
                           "them)")
    valid_from = valid_from or datetime.now(UTC)
    if valid_from.tzinfo is None:
        raise InvalidInput("valid_from needs a time zone")
    with store.transaction(db):
        history = [v for v in store.default_limit_history(db, organisation, module)
                   if code_key_of(v) == code_key]
        try:
            stored = store.store_default_limits(db, store.DefaultLimits(
                organisation=organisation, module=module, code=KNOWN[code_key].code,
                limits=limits, valid_from=valid_from, author=actor, reason=reason.strip()))
        except ValueError as exc:  # starts before the current version
            raise AdminError(str(exc)) from None
        before = history[-1].limits if history else (
            found.default_limits.get(code_key) if found else None)
        audit(db, actor=actor, action="limits.defaults.set", module=module, code=code_key,
              version=stored.version, valid_from=stored.valid_from.astimezone(UTC),
              before=before, before_source=f"organisation v{history[-1].version}"
              if history else "module", after=limits, reason=reason.strip())
    return stored


def code_key_of(version: store.DefaultLimits | LimitVersion) -> str:
    """The measure key (spo2) of a limits version."""
    return code_key(version.code)


def default_limits_in_force(db: sqlite_utils.Database, organisation: str,
                            modules: Mapping[str, DiseaseModule],
                            at: datetime | None = None) -> list[DefaultRow]:
    """Each code of each of `modules` with the limits a patient without their own is checked
    against at `at` (now): the organisation's version then valid, else the module's."""
    at = at or datetime.now(UTC)
    current: dict[tuple[str, str], store.DefaultLimits] = {}
    for version in store.default_limit_history(db, organisation):
        if version.valid_from <= at and (version.valid_to is None or at < version.valid_to):
            current[(version.module, code_key_of(version))] = version
    rows = []
    for name, module in sorted(modules.items()):
        for key in module.codes:
            version = current.get((name, key))
            if version is not None:
                rows.append(DefaultRow(name, key, version.limits,
                                       f"organisation v{version.version}", version))
            elif key in module.default_limits:
                rows.append(DefaultRow(name, key, module.default_limits[key], "module", None))
    return rows


@dataclass(frozen=True)
class DefaultRow:
    """A module's code with the shared limits in force: the organisation's or the module's."""

    module: str
    code: str
    limits: LimitSet
    source: str  # "organisation v<N>" or "module"
    version: store.DefaultLimits | None


def code_key(code: Code) -> str:
    """The short name (telemon.codes) of a coding, or its code when it is not a known one."""
    known = lookup(code)
    return known.key if known else code.code


def describe_limits(limits: LimitSet) -> str:
    """Limits in a few words: "red < 88, yellow < 90" (a value beyond a limit is that colour)."""
    parts = [f"red < {limits.red_low}" if limits.red_low is not None else "",
             f"yellow < {limits.yellow_low}" if limits.yellow_low is not None else "",
             f"yellow > {limits.yellow_high}" if limits.yellow_high is not None else "",
             f"red > {limits.red_high}" if limits.red_high is not None else ""]
    return ", ".join(p for p in parts if p) or "no limits"


# --- modules and gateways -------------------------------------------------------------------


def _change_enrolment(db: sqlite_utils.Database, *, patient: str, actor: str, action: str,
                      change: Callable[[Enrolment], Enrolment], reason: str,
                      **detail: object) -> Enrolment:
    """Store the enrolment `change` makes of the patient's current one, audited with its
    modules and gateways before and after, and the reason."""
    require(db, actor, "enrolment.change", action, patient)
    with store.transaction(db):
        before = get_patient(db, patient).enrolment
        after = change(before)
        store.store_record(db, after)
        audit(db, actor=actor, action=action, patient=patient, **detail,
              before={"modules": before.modules, "gateways": before.gateways},
              after={"modules": after.modules, "gateways": after.gateways},
              reason=reason.strip())
    return after


def enable_module(db: sqlite_utils.Database, *, patient: str, module: str, actor: str,
                  installed_modules: Collection[str], reason: str = "") -> Enrolment:
    """Monitor the patient with one more disease module."""
    _check_module(module, installed_modules)

    def change(enrolment: Enrolment) -> Enrolment:
        if module in enrolment.modules:
            raise AdminError(f"module {module} is already enabled for {patient}")
        return msgspec.structs.replace(enrolment, modules=(*enrolment.modules, module))

    return _change_enrolment(db, patient=patient, actor=actor, action="module.enable",
                             change=change, module=module, reason=reason)


def disable_module(db: sqlite_utils.Database, *, patient: str, module: str,
                   actor: str, reason: str = "") -> Enrolment:
    """Stop monitoring the patient with a module (no installed check: a module since
    uninstalled can still be switched off)."""
    def change(enrolment: Enrolment) -> Enrolment:
        if module not in enrolment.modules:
            raise AdminError(f"module {module} is not enabled for {patient} (enabled: "
                             f"{', '.join(enrolment.modules) or 'none'})")
        return msgspec.structs.replace(
            enrolment, modules=tuple(m for m in enrolment.modules if m != module))

    return _change_enrolment(db, patient=patient, actor=actor, action="module.disable",
                             change=change, module=module, reason=reason)


def bind_gateway(db: sqlite_utils.Database, *, patient: str, gateway: str,
                 actor: str, reason: str = "") -> Enrolment:
    """Let a gateway report for the patient. A gateway may serve several patients of one
    home, and a patient may have several gateways."""
    _check_id(gateway, "gateway")

    def change(enrolment: Enrolment) -> Enrolment:
        if gateway in enrolment.gateways:
            raise AdminError(f"gateway {gateway} is already bound to {patient}")
        return msgspec.structs.replace(enrolment, gateways=(*enrolment.gateways, gateway))

    return _change_enrolment(db, patient=patient, actor=actor, action="gateway.bind",
                             change=change, gateway=gateway, reason=reason)


def unbind_gateway(db: sqlite_utils.Database, *, patient: str, gateway: str,
                   actor: str, reason: str = "") -> Enrolment:
    """Stop a gateway reporting for the patient."""
    def change(enrolment: Enrolment) -> Enrolment:
        if gateway not in enrolment.gateways:
            raise AdminError(f"gateway {gateway} is not bound to {patient} (bound: "
                             f"{', '.join(enrolment.gateways) or 'none'})")
        return msgspec.structs.replace(
            enrolment, gateways=tuple(g for g in enrolment.gateways if g != gateway))

    return _change_enrolment(db, patient=patient, actor=actor, action="gateway.unbind",
                             change=change, gateway=gateway, reason=reason)


# --- consent and audit ----------------------------------------------------------------------


def record_consent(db: sqlite_utils.Database, *, patient: str, purpose: str, granted: bool,
                   actor: str, reason: str = "") -> ConsentEvent:
    """Append a consent given or withdrawn (consent is this stream of events, not a flag),
    audited with the reason (how it was given: signed form, by phone)."""
    require(db, actor, "consent.record", "consent.record", patient)
    if purpose not in CONSENT_PURPOSES:
        raise InvalidInput(f"unknown consent purpose {purpose!r} (purposes: "
                           f"{', '.join(CONSENT_PURPOSES)})")
    event = ConsentEvent(id=new_id(), patient=patient, purpose=purpose, granted=granted,
                         at=datetime.now(UTC), recorded_by=actor)
    with store.transaction(db):
        get_patient(db, patient)
        store.store_record(db, event)
        audit(db, actor=actor, action="consent.grant" if granted else "consent.withdraw",
              patient=patient, purpose=purpose, event=event.id, reason=reason.strip())
    return event


def consent_in_force(db: sqlite_utils.Database, patient: str) -> dict[str, ConsentEvent]:
    """For each purpose the patient was ever asked about, the latest event: in force when
    it is a grant."""
    return {event.purpose: event for event in store.consent_history(db, patient)}


# --- staff ----------------------------------------------------------------------------------


def add_staff(db: sqlite_utils.Database, *, name: str, role: str,
              actor: str, reason: str = "") -> roles.StaffMember:
    """Register a staff member with a role. The first one must be an administrator: adding
    them switches the rights checks on, and someone must be able to add the others."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise InvalidInput("a staff name is 1 to 64 printable characters")
    if role not in roles.ROLES:
        raise InvalidInput(f"unknown role {role!r} (roles: {', '.join(roles.ROLES)})")
    require(db, actor, "staff.manage", "staff.add")
    now = datetime.now(UTC)
    with store.transaction(db):
        if (current := roles.role_of(db, name)) is not None:
            raise AdminError(f"{name} is already registered as {current}")
        if not roles.enforced(db) and role != "administrator":
            raise AdminError("the first staff member must be an administrator (who can then "
                             "add the others)")
        db.execute("INSERT INTO staff (name, role, added, added_by) VALUES (?, ?, ?, ?)",
                   [name, role, store.utc_text(now), actor])
        audit(db, actor=actor, action="staff.add", name=name, role=role,
              reason=reason.strip())
    return roles.StaffMember(name, role, now, actor)


def remove_staff(db: sqlite_utils.Database, *, name: str, actor: str,
                 reason: str = "") -> None:
    """Unregister a staff member (who added and removed them stays in the audit log). The
    last administrator stays while others are registered: nobody could manage them."""
    require(db, actor, "staff.manage", "staff.remove")
    name = name.strip()
    with store.transaction(db):
        role = roles.role_of(db, name)
        if role is None:
            raise AdminError(f"{name} is not registered staff")
        others = [m for m in roles.staff(db) if m.name != name]
        if role == "administrator" and others and all(
                m.role != "administrator" for m in others):
            raise AdminError(f"{name} is the last administrator: add another before removing "
                             "them")
        db.execute("DELETE FROM staff WHERE name = ?", [name])
        audit(db, actor=actor, action="staff.remove", name=name, role=role,
              reason=reason.strip())


def read_audit(db: sqlite_utils.Database, *, actor: str, patient: str | None = None,
               since: datetime | None = None, purpose: str = "") -> list[AuditEntry]:
    """The audit entries a person asks for (audit_entries), if their role holds audit.read;
    the read is audited itself, with what was asked for."""
    require(db, actor, "audit.read", "audit.read", patient)
    with store.transaction(db):
        entries = audit_entries(db, patient=patient, since=since)
        audit(db, actor=actor, action="audit.read", patient=patient,
              since=None if since is None else since.astimezone(UTC), entries=len(entries),
              **({"purpose": purpose.strip()} if purpose.strip() else {}))
    return entries


def audit_entries(db: sqlite_utils.Database, patient: str | None = None,
                  since: datetime | None = None) -> list[AuditEntry]:
    """Audit entries in the order they were made, about one patient and from `since` if
    given."""
    where, params = [], []
    if patient is not None:
        where.append("patient = ?")
        params.append(patient)
    if since is not None:
        where.append("at >= ?")
        params.append(store.utc_text(since))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute(f"SELECT id, at, actor, action, patient, detail FROM audit {clause} "
                      "ORDER BY id", params)
    return [AuditEntry(id_, datetime.fromisoformat(at), actor, action, who,
                       _DETAIL.decode(detail))
            for id_, at, actor, action, who, detail in rows]


# --- command line: shared pieces ------------------------------------------------------------


class CommandError(click.ClickException):
    """A one-line "Error: ..." on stderr with exit code 2 (bad input) or 1 (refused)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn what the functions above refuse into a one-line error, never a traceback."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InvalidInput as exc:
            raise CommandError(str(exc), 2) from None
        except AdminError as exc:
            raise CommandError(str(exc), 1) from None
        except sqlite3.Error as exc:  # a locked or unreadable database
            raise CommandError(f"database: {exc}", 1) from None
    return run


@dataclass(frozen=True)
class OpenCentral:
    config: CentralConfig
    db: sqlite_utils.Database
    installed_modules: Mapping[str, Any]


@contextlib.contextmanager
def open_central(config_path: str) -> Iterator[OpenCentral]:
    """The central's config and database, for one command."""
    config = load_or_exit(config_path, CentralConfig)  # its problems, exit status 2
    pm, registry = plugin_manager.get()
    db = store.open_database(store.central_database_path(config.storage.path), pm=pm)
    try:
        yield OpenCentral(config, db, registry.modules)
    finally:
        db.close()


def _default_actor() -> str:
    """Who is making the change: $TELEMON_USER, else (under sudo) the account that ran sudo,
    else the login name."""
    if user := os.environ.get("TELEMON_USER", "").strip():
        return user
    if user := roles.sudo_user():
        return user
    with contextlib.suppress(OSError, KeyError):  # no login name in some containers
        return getpass.getuser()
    return ""


def _nonblank_actor(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("say who you are: --by NAME or set TELEMON_USER")
    return value.strip()


config_option = click.option(
    "--config", "config_path", required=True, metavar="CENTRAL_TOML",
    help="The central's config file (its storage.path holds the database).")
by_option = click.option(
    "--by", "actor", metavar="NAME", default=_default_actor, callback=_nonblank_actor,
    show_default="$TELEMON_USER, else $SUDO_USER, else the login name",
    help="Who makes the change or reads the data (recorded in the audit log).")


def _nonblank_reason(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("say why: it is kept in the audit log")
    return value.strip()


def reason_option(example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--reason, required: why a change is made, kept in its audit entry."""
    return click.option("--reason", required=True, callback=_nonblank_reason, metavar="TEXT",
                        help=f"Why (kept in the audit log), e.g. {example}.")


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--red-low, --yellow-low, --yellow-high, --red-high, given to the command as one
    `limits` (a LimitSet: levels out of order are refused, naming the command's CODE, with
    the exit code of any invalid input)."""
    @functools.wraps(command)
    def run(*, red_low: Decimal | None, yellow_low: Decimal | None,
            yellow_high: Decimal | None, red_high: Decimal | None, **kwargs: Any) -> Any:
        try:
            limits = LimitSet(red_low=red_low, yellow_low=yellow_low, yellow_high=yellow_high,
                              red_high=red_high)
        except ValueError as exc:  # out of order
            raise CommandError(f"{kwargs['code']}: {exc}", 2) from None
        return command(limits=limits, **kwargs)
    for name, help_text in reversed((("--red-low", "Below this: red."),
                                     ("--yellow-low", "Below this: yellow."),
                                     ("--yellow-high", "Above this: yellow."),
                                     ("--red-high", "Above this: red."))):
        run = click.option(name, type=_DecimalType(), help=help_text)(run)
    return run


purpose_option = click.option(
    "--purpose", default="", metavar="TEXT",
    help="Why you read it (optional; kept in the audit log with the read).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON (times in UTC) instead of a table.")


class _DecimalType(click.ParamType):
    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Decimal:
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def parse_time(text: str, zone: ZoneInfo, what: str) -> datetime:
    """An ISO 8601 date or time; one without an offset is local time in `zone`."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{what}: {text!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def local(moment: datetime | None, zone: ZoneInfo) -> str:
    """A stored (UTC) time as shown to people: local, to the minute."""
    return "-" if moment is None else moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def echo_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def echo_json(value: object) -> None:
    click.echo(msgspec.json.format(JSON.encode(value), indent=2).decode())


# --- command line: patient ------------------------------------------------------------------


@click.group(name="patient")
def patient_group() -> None:
    """Enrol patients and look them up (personal data stays in the central's database)."""


@patient_group.command(name="add")
@click.argument("patient_id", metavar="PATIENT")
@click.option("--name", "display_name", required=True,
              help="The name nurses see; personal data, kept only in the central's database.")
@click.option("--module", "modules", multiple=True, required=True,
              help="An installed disease module to monitor with; repeatable.")
@click.option("--gateway", "gateways", multiple=True,
              help="A gateway that reports for the patient; repeatable.")
@click.option("--timezone", "zone", default=None,
              help="The patient's IANA time zone (default: the config's timezone).")
@reason_option('"referral from the hospital\'s COPD clinic"')
@config_option
@by_option
@reports_errors
def patient_add(patient_id: str, display_name: str, modules: tuple[str, ...],
                gateways: tuple[str, ...], zone: str | None, reason: str, config_path: str,
                actor: str) -> None:
    """Enrol PATIENT (a pseudonymous id, never a CPR number) with modules and gateways."""
    with open_central(config_path) as central:
        patient = add_patient(
            central.db, patient=patient_id, organisation=central.config.organisation,
            display_name=display_name, timezone=zone or central.config.timezone.key,
            modules=modules, gateways=gateways, actor=actor,
            installed_modules=central.installed_modules, reason=reason)
    click.echo(f"added patient {patient.id} (modules: {', '.join(patient.enrolment.modules)}; "
               f"gateways: {', '.join(patient.enrolment.gateways) or 'none'})")


@patient_group.command(name="show")
@click.argument("patient_id", metavar="PATIENT")
@json_option
@purpose_option
@config_option
@by_option
@reports_errors
def patient_show(patient_id: str, as_json: bool, purpose: str, config_path: str,
                 actor: str) -> None:
    """Show one patient: enrolment, limits and consent in force (the read is audited)."""
    with open_central(config_path) as central:
        overview = show_patient(central.db, patient_id, actor=actor, purpose=purpose)
    patient, zone = overview.patient, overview.patient.timezone
    if as_json:
        echo_json({"id": patient.id, "display_name": patient.display_name,
                   "organisation": patient.organisation, "timezone": zone.key,
                   "created": patient.created, "enrolment": patient.enrolment,
                   "limits": overview.limits, "consent": list(overview.consent.values())})
        return
    echo_table(("patient", patient.id), [
        ("name", patient.display_name), ("organisation", patient.organisation),
        ("time zone", zone.key), ("enrolled", local(patient.enrolment.enrolled, zone)),
        ("modules", ", ".join(patient.enrolment.modules) or "none"),
        ("gateways", ", ".join(patient.enrolment.gateways) or "none")])
    click.echo("\nlimits in force")
    if overview.limits:
        _echo_limits(overview.limits, zone)
    else:
        click.echo("none of the patient's own (the modules' or organisation's apply)")
    click.echo("\nconsent")
    if overview.consent:
        echo_table(("PURPOSE", "STATE", "SINCE", "RECORDED BY"), [
            (e.purpose, "granted" if e.granted else "withdrawn", local(e.at, zone),
             e.recorded_by) for e in overview.consent.values()])
    else:
        click.echo("none recorded")


def _echo_limits(versions: list[LimitVersion], zone: ZoneInfo) -> None:
    echo_table(("CODE", "VERSION", "LIMITS", "FROM", "TO", "BY", "REASON"), [
        (code_key(v.code), str(v.version), describe_limits(v.limits), local(v.valid_from, zone),
         local(v.valid_to, zone) if v.valid_to else "", v.author, v.reason) for v in versions])


@patient_group.command(name="list")
@click.option("--module", default=None, help="Only the patients monitored with this module.")
@json_option
@purpose_option
@config_option
@by_option
@reports_errors
def patient_list(module: str | None, as_json: bool, purpose: str, config_path: str,
                 actor: str) -> None:
    """List the organisation's patients (the read is audited: it shows their names)."""
    with open_central(config_path) as central:
        if module is not None:
            _check_module(module, central.installed_modules)
        require(central.db, actor, "patient.read", "patient.list")
        with store.transaction(central.db):
            patients = list_patients(central.db, central.config.organisation, module)
            audit(central.db, actor=actor, action="patient.list", module=module,
                  patients=[p.id for p in patients],
                  **({"purpose": purpose.strip()} if purpose.strip() else {}))
    if as_json:
        echo_json([{"id": p.id, "display_name": p.display_name, "timezone": p.timezone.key,
                    "enrolment": p.enrolment} for p in patients])
        return
    echo_table(("PATIENT", "NAME", "MODULES", "GATEWAYS", "ENROLLED"), [
        (p.id, p.display_name, ", ".join(p.enrolment.modules),
         ", ".join(p.enrolment.gateways), local(p.enrolment.enrolled, p.timezone))
        for p in patients])


# --- command line: limits -------------------------------------------------------------------


@click.group(name="limits")
def limits_group() -> None:
    """Set a patient's own alarm limits and the organisation's defaults (versioned, never
    overwritten) and see their history."""


@limits_group.command(name="set")
@click.argument("patient_id", metavar="PATIENT")
@click.argument("code", metavar="CODE")
@limit_options
@reason_option("the order, \"referral: COPD, usual SpO2 87-89 %\"")
@click.option("--valid-from", default=None, metavar="TIME",
              help="When the version starts, ISO 8601 (default: now; without an offset: "
                   "the patient's local time).")
@config_option
@by_option
@reports_errors
def limits_set(patient_id: str, code: str, limits: LimitSet, reason: str,
               valid_from: str | None, config_path: str, actor: str) -> None:
    """Give PATIENT a new version of their limits for CODE (a measure such as spo2).

    Limits left out are not checked; set ones must be ordered red-low <= yellow-low <=
    yellow-high <= red-high and lie in the code's plausible range.
    """
    with open_central(config_path) as central:
        zone = get_patient(central.db, patient_id).timezone
        start = parse_time(valid_from, zone, "--valid-from") if valid_from else None
        version = set_limits(central.db, patient=patient_id, code_key=code, limits=limits,
                             reason=reason, actor=actor, valid_from=start)
    click.echo(f"{patient_id} {code}: version {version.version} from "
               f"{local(version.valid_from, zone)}: {describe_limits(version.limits)}")


@limits_group.command(name="history")
@click.argument("patient_id", metavar="PATIENT")
@click.option("--code", default=None, help="Only this code's versions (e.g. spo2).")
@json_option
@config_option
@by_option
@reports_errors
def limits_history(patient_id: str, code: str | None, as_json: bool, config_path: str,
                   actor: str) -> None:
    """Every version of PATIENT's own limits, oldest first (the read is audited)."""
    if code is not None and code not in KNOWN:
        raise _unknown_code(code)
    with open_central(config_path) as central:
        require(central.db, actor, "patient.read", "limits.history", patient_id)
        with store.transaction(central.db):
            zone = get_patient(central.db, patient_id).timezone
            versions = [v for v in limit_versions(central.db, patient_id)
                        if code is None or code_key(v.code) == code]
            audit(central.db, actor=actor, action="limits.history", patient=patient_id,
                  code=code)
    if as_json:
        echo_json(versions)
    elif versions:
        _echo_limits(versions, zone)
    else:
        click.echo(f"{patient_id} has no limits of their own"
                   + (f" for {code}" if code else ""))


@limits_group.group(name="defaults", invoke_without_command=True)
@click.option("--module", default=None, help="Only this module's codes.")
@json_option
@click.option("--config", "config_path", default=None, metavar="CENTRAL_TOML",
              help="The central's config file (its storage.path holds the database).")
@click.pass_context
@reports_errors
def limits_defaults(ctx: click.Context, module: str | None, as_json: bool,
                    config_path: str | None) -> None:
    """The organisation's default limits: what patients without limits of their own are
    checked against, per module and code. Alone, those in force now and where they come
    from (the organisation's version, else the module's defaults); `set` adds a version (a
    team lead's right), `history` lists them all."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("Missing option '--config'.")
    with open_central(config_path) as central:
        modules = _chosen_modules(central, module)
        rows = default_limits_in_force(central.db, central.config.organisation, modules)
        zone = central.config.timezone
    if as_json:
        echo_json([{"module": r.module, "code": r.code, "limits": r.limits, "source": r.source,
                    "valid_from": r.version.valid_from if r.version else None,
                    "author": r.version.author if r.version else None,
                    "reason": r.version.reason if r.version else None} for r in rows])
        return
    echo_table(("MODULE", "CODE", "LIMITS", "SOURCE", "FROM", "BY", "REASON"), [
        (r.module, r.code, describe_limits(r.limits), r.source,
         local(r.version.valid_from, zone) if r.version else "",
         r.version.author if r.version else "", r.version.reason if r.version else "")
        for r in rows])


def _chosen_modules(central: OpenCentral, module: str | None) -> dict[str, DiseaseModule]:
    """The installed modules enabled in the config, or only `module`."""
    if module is not None:
        return {module: central.installed_modules[_check_module(module,
                                                                 central.installed_modules)]}
    return {name: m for name, m in central.installed_modules.items()
            if name in central.config.modules and central.config.modules[name].enabled}


@limits_defaults.command(name="set")
@click.argument("module", metavar="MODULE")
@click.argument("code", metavar="CODE")
@limit_options
@reason_option('"team conference 2026-03-01: BTS target for COPD"')
@click.option("--valid-from", default=None, metavar="TIME",
              help="When the version starts, ISO 8601 (default: now; without an offset: "
                   "the central's time zone).")
@config_option
@by_option
@reports_errors
def limits_defaults_set(module: str, code: str, limits: LimitSet, reason: str,
                        valid_from: str | None, config_path: str, actor: str) -> None:
    """Give the organisation a new version of its default limits for MODULE's CODE.

    They replace the module's defaults as a whole (a limit left out is not checked) for
    every patient without limits of their own for CODE, for readings from --valid-from on;
    earlier readings keep the limits then in force. Needs the right limits.defaults (team
    leads).
    """
    with open_central(config_path) as central:
        zone = central.config.timezone
        start = parse_time(valid_from, zone, "--valid-from") if valid_from else None
        version = set_default_limits(
            central.db, organisation=central.config.organisation, module=module,
            code_key=code, limits=limits, reason=reason, actor=actor,
            installed_modules=central.installed_modules, valid_from=start)
    click.echo(f"{module} {code}: organisation default version {version.version} from "
               f"{local(version.valid_from, zone)}: {describe_limits(version.limits)}")


@limits_defaults.command(name="history")
@click.option("--module", default=None, help="Only this module's versions.")
@click.option("--code", default=None, help="Only this code's versions (e.g. spo2).")
@json_option
@config_option
@reports_errors
def limits_defaults_history(module: str | None, code: str | None, as_json: bool,
                            config_path: str) -> None:
    """Every version of the organisation's default limits, oldest first."""
    if code is not None and code not in KNOWN:
        raise _unknown_code(code)
    with open_central(config_path) as central:
        versions = [v for v in store.default_limit_history(
                        central.db, central.config.organisation, module)
                    if code is None or code_key_of(v) == code]
        zone = central.config.timezone
    if as_json:
        echo_json(versions)
    elif versions:
        echo_table(("MODULE", "CODE", "VERSION", "LIMITS", "FROM", "TO", "BY", "REASON"), [
            (v.module, code_key_of(v), str(v.version), describe_limits(v.limits),
             local(v.valid_from, zone), local(v.valid_to, zone) if v.valid_to else "",
             v.author, v.reason) for v in versions])
    else:
        click.echo("no organisation default limits set: the modules' own apply "
                   "(telemon limits defaults set)")


# --- command line: modules, gateways, consent, audit ----------------------------------------


@click.group(name="modules", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def modules_group(ctx: click.Context, as_json: bool) -> None:
    """Enable or disable a disease module for a patient; alone, list the installed modules:
    codes (unit, default limits), rules, schedule, questionnaires and sources."""
    if ctx.invoked_subcommand is not None:
        return
    _, registry = plugin_manager.get()
    modules = [module for _, module in sorted(registry.modules.items())]
    if as_json:
        echo_json({"modules": [describe_module(module) for module in modules]})
        return
    if not modules:
        click.echo("no disease modules are installed")
    for number, module in enumerate(modules):
        if number:
            click.echo()
        echo_module(module)


def _span(span: timedelta) -> str:
    """A duration in days when whole, else in hours: "7 d", "36 h"."""
    if span % timedelta(days=1) == timedelta(0):
        return f"{span.days} d"
    return f"{span / timedelta(hours=1):g} h"


def _answer(value: Any) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def _item_kind(item: Item, optional: bool) -> str:
    """An item's answers and their significance: "yes/no (yes: red)", "0-5"."""
    if item.kind == "boolean":
        answers = "yes/no"
    elif item.kind == "choice":
        answers = "|".join(item.options)
    else:
        answers = f"{'' if item.low is None else item.low}-{'' if item.high is None else item.high}"
    flagged = ", ".join(f"{_answer(answer)}: {level.label}"
                        for answer, level in item.significance.items())
    return answers + (f" ({flagged})" if flagged else "") + ("; optional" if optional else "")


def _item_lines(questionnaire: Questionnaire) -> list[str]:
    """One line per run of alike items: "rmdq_1..rmdq_24: yes/no", "a, b: yes/no"."""
    runs: list[tuple[str, list[str]]] = []
    for item in questionnaire.items:
        kind = _item_kind(item, item.id in questionnaire.optional)
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(item.id)
        else:
            runs.append((kind, [item.id]))
    return [f"{ids[0]}..{ids[-1]}: {kind}" if _numbered(ids) else f"{', '.join(ids)}: {kind}"
            for kind, ids in runs]


def _numbered(ids: list[str]) -> bool:
    """Whether the ids are three or more of one prefix, numbered on: rmdq_1, rmdq_2, ..."""
    found = [re.fullmatch(r"(.*?)(\d+)", i) for i in ids]
    if len(ids) < 3 or not all(found):
        return False
    prefix, first = found[0].group(1), int(found[0].group(2))
    return all(m.group(1) == prefix and int(m.group(2)) == first + n
               for n, m in enumerate(found))


def echo_module(module: DiseaseModule) -> None:
    """One module as `telemon modules` shows it."""
    click.echo(f"{module.name} {module.version}: {module.title}")
    rows = [(f"  {code}", KNOWN[code].display, KNOWN[code].unit,
             describe_limits(module.default_limits[code])
             if code in module.default_limits else "no default limits")
            for code in module.codes]
    echo_table(("  CODE", "MEASURE", "UNIT", "DEFAULT LIMITS"), rows)
    click.echo("  rules (each on the watched code's readings of its window, at every new one):")
    for rule in module.rules:
        click.echo(f"    {rule.name} [{', '.join(rule.codes)}; {_span(rule.window)}]: "
                   f"{rule.description}")
    if not module.rules:
        click.echo("    none: limits only")
    schedule = module.schedule
    click.echo("  schedule: " + (
        f"{', '.join(schedule.codes)} every {_span(schedule.every)} by "
        f"{schedule.deadline:%H:%M} local time" if schedule.codes
        else "none (no missing-measurement alarms)"))
    if module.questionnaires:
        click.echo("  questionnaires:")
    for q in module.questionnaires:
        scores = ", ".join(f"{name} -> {key}" for name, key in q.scores.items()) or "none"
        click.echo(f"    {q.id} v{q.version} ({q.title}), scores: {scores}")
        for line in _item_lines(q):
            click.echo(f"      {line}")
        click.echo(f"      source: {q.source}")
    click.echo("  sources:")
    for source in module.sources:
        click.echo(f"    {source}")


def describe_module(module: DiseaseModule) -> dict[str, Any]:
    """One module as `telemon modules --json` gives it."""
    return {
        "name": module.name, "version": module.version, "title": module.title,
        "codes": [{"key": code, "display": KNOWN[code].display, "unit": KNOWN[code].unit,
                   "code": KNOWN[code].code, "default_limits": module.default_limits.get(code)}
                  for code in module.codes],
        "rules": [{"name": rule.name, "description": rule.description,
                   "codes": list(rule.codes), "window_seconds": rule.window.total_seconds(),
                   "records": rule.records} for rule in module.rules],
        "schedule": {"codes": list(module.schedule.codes),
                     "every_seconds": module.schedule.every.total_seconds(),
                     "deadline": module.schedule.deadline.strftime("%H:%M")},
        "questionnaires": [{
            "id": q.id, "version": q.version, "title": q.title, "source": q.source,
            "items": [{"id": item.id, "kind": item.kind, "options": list(item.options),
                       "low": item.low, "high": item.high,
                       "optional": item.id in q.optional,
                       "significance": [{"answer": answer, "severity": level.label}
                                        for answer, level in item.significance.items()]}
                      for item in q.items],
            "scores": dict(q.scores)} for q in module.questionnaires],
        "sources": list(module.sources),
    }


@modules_group.command(name="enable")
@click.argument("patient_id", metavar="PATIENT")
@click.argument("module", metavar="MODULE")
@reason_option('"heart failure diagnosed, GP referral"')
@config_option
@by_option
@reports_errors
def modules_enable(patient_id: str, module: str, reason: str, config_path: str,
                   actor: str) -> None:
    """Monitor PATIENT with the installed disease MODULE too."""
    with open_central(config_path) as central:
        enrolment = enable_module(central.db, patient=patient_id, module=module, actor=actor,
                                  installed_modules=central.installed_modules, reason=reason)
    click.echo(f"{patient_id}: modules {', '.join(enrolment.modules)}")


@modules_group.command(name="disable")
@click.argument("patient_id", metavar="PATIENT")
@click.argument("module", metavar="MODULE")
@reason_option('"monitoring ended at the team conference"')
@config_option
@by_option
@reports_errors
def modules_disable(patient_id: str, module: str, reason: str, config_path: str,
                    actor: str) -> None:
    """Stop monitoring PATIENT with MODULE (their data and limits are kept)."""
    with open_central(config_path) as central:
        enrolment = disable_module(central.db, patient=patient_id, module=module, actor=actor,
                                   reason=reason)
    click.echo(f"{patient_id}: modules {', '.join(enrolment.modules) or 'none'}")


@click.group(name="gateway")
def gateway_group() -> None:
    """Bind the gateways that report for a patient (one home's gateway may serve several)."""


@gateway_group.command(name="bind")
@click.argument("patient_id", metavar="PATIENT")
@click.argument("gateway", metavar="GATEWAY")
@reason_option('"new gateway installed at home visit"')
@config_option
@by_option
@reports_errors
def gateway_bind(patient_id: str, gateway: str, reason: str, config_path: str,
                 actor: str) -> None:
    """Let GATEWAY report readings for PATIENT."""
    with open_central(config_path) as central:
        enrolment = bind_gateway(central.db, patient=patient_id, gateway=gateway, actor=actor,
                                 reason=reason)
    click.echo(f"{patient_id}: gateways {', '.join(enrolment.gateways)}")


@gateway_group.command(name="unbind")
@click.argument("patient_id", metavar="PATIENT")
@click.argument("gateway", metavar="GATEWAY")
@reason_option('"gateway returned, replaced by gw-0107"')
@config_option
@by_option
@reports_errors
def gateway_unbind(patient_id: str, gateway: str, reason: str, config_path: str,
                   actor: str) -> None:
    """Stop GATEWAY reporting for PATIENT."""
    with open_central(config_path) as central:
        enrolment = unbind_gateway(central.db, patient=patient_id, gateway=gateway,
                                   actor=actor, reason=reason)
    click.echo(f"{patient_id}: gateways {', '.join(enrolment.gateways) or 'none'}")


# made absolute: a config's file: references and TLS files must be absolute paths
_FILE = click.Path(dir_okay=False, resolve_path=True, path_type=Path)
_FOLDER = click.Path(file_okay=False, resolve_path=True, path_type=Path)


@gateway_group.command(name="provision")
@click.argument("gateway", metavar="GATEWAY")
@click.option("--password-file", type=_FILE,
              metavar="OUT", help="Write the password here, owner-only, for the gateway's "
              'password = "file:OUT" (without it the password is printed, once).')
@click.option("--cert", is_flag=True,
              help="A client certificate instead of a password (needs --ca-cert, --ca-key, "
                   "--cert-dir).")
@click.option("--ca-cert", type=_FILE,
              help="With --cert: the organisation's gateway CA certificate (PEM).")
@click.option("--ca-key", type=_FILE,
              help="With --cert: that CA's private key (PEM, unencrypted).")
@click.option("--cert-dir", type=_FOLDER,
              help="With --cert: where GATEWAY.pem and GATEWAY.key are written (owner-only).")
@click.option("--reason", default="", metavar="TEXT",
              help="Why (kept in the audit log), e.g. \"new home, replaces gw-0042\".")
@config_option
@by_option
@reports_errors
def gateway_provision(gateway: str, password_file: Path | None, cert: bool,
                      ca_cert: Path | None, ca_key: Path | None, cert_dir: Path | None,
                      reason: str, config_path: str, actor: str) -> None:
    """Make GATEWAY's broker credential and print the broker's lines for it: Mosquitto
    password file and ACL, and the EMQX 5 authorization rules (docs/provisioning.md)."""
    _check_id(gateway, "gateway")
    if cert and (password_file or None in (ca_cert, ca_key, cert_dir)):
        raise click.UsageError("--cert needs --ca-cert, --ca-key and --cert-dir, and no "
                               "--password-file")
    if not cert and (ca_cert or ca_key or cert_dir):
        raise click.UsageError("--ca-cert, --ca-key and --cert-dir are used with --cert only")
    with open_central(config_path) as central:
        require(central.db, actor, "enrolment.change", "gateway.provision")
        topics = provision.gateway_topics(central.config.organisation, gateway)
        password = None if cert else provision.new_password()
        try:
            with store.transaction(central.db):  # the audit entry only if the files are there
                if cert:
                    issued = provision.issue_client_certificate(
                        gateway, ca_cert=ca_cert, ca_key=ca_key, folder=cert_dir)
                    detail = {"method": "certificate", "serial": issued.serial,
                              "sha256": issued.sha256, "expires": issued.expires.isoformat()}
                else:
                    if password_file is not None:
                        provision.write_secret(password_file, password)
                    detail = {"method": "password"} | (
                        {"password_file": str(password_file)} if password_file else {})
                audit(central.db, actor=actor, action="gateway.provision",
                      gateway=gateway, reason=reason.strip(),
                      **detail)  # never the secret or its hash
        except provision.ProvisionError as exc:
            raise AdminError(str(exc)) from None
    if cert:
        click.echo(f"# client certificate {issued.certificate} and key {issued.key} "
                   f"(owner-only; expires {issued.expires:%Y-%m-%d})\n"
                   f"# the gateway's [broker]: client_cert = \"{issued.certificate}\", "
                   f"client_key = \"{issued.key}\"\n"
                   f"# Mosquitto TLS listener: cafile {ca_cert}, require_certificate true, "
                   "use_identity_as_username true")
    else:
        click.echo("# Mosquitto password file (password_file):\n"
                   + provision.mosquitto_password_line(gateway, password))
    click.echo("# Mosquitto ACL file (acl_file):\n" + provision.mosquitto_acl(topics, gateway)
               + "# EMQX 5 built-in database authorization, POST "
               "/api/v5/authorization/sources/built_in_database/username:\n"
               + provision.emqx_json(topics, gateway))
    if password_file is not None:
        click.echo(f'# password written to {password_file} (owner-only); the gateway\'s '
                   f'[broker]: username = "{gateway}", password = "file:{password_file}"')
    elif password is not None:
        click.echo(f"# the password, shown only now (the gateway's [broker]: username = "
                   f'"{gateway}", password = "env:..." or "file:..." holding it):\n{password}')


@click.group(name="consent")
def consent_group() -> None:
    """Record consent given or withdrawn, per purpose (an append-only stream of events)."""


def _consent_command(granted: bool) -> click.Command:
    verb, done = ("grant", "granted") if granted else ("withdraw", "withdrawn")

    @click.argument("patient_id", metavar="PATIENT")
    @click.argument("purpose", metavar="PURPOSE", type=click.Choice(CONSENT_PURPOSES))
    @reason_option('"signed form at enrolment"' if granted else '"withdrawn by phone"')
    @config_option
    @by_option
    @reports_errors
    def command(patient_id: str, purpose: str, reason: str, config_path: str,
                actor: str) -> None:
        with open_central(config_path) as central:
            event = record_consent(central.db, patient=patient_id, purpose=purpose,
                                   granted=granted, actor=actor, reason=reason)
            zone = get_patient(central.db, patient_id).timezone
        click.echo(f"{patient_id}: consent to {purpose} {done} at {local(event.at, zone)}")

    command.__doc__ = (f"Record that PATIENT {'gives' if granted else 'withdraws'} consent "
                       f"to PURPOSE ({', '.join(CONSENT_PURPOSES)}).")
    return consent_group.command(name=verb)(command)


consent_grant = _consent_command(granted=True)
consent_withdraw = _consent_command(granted=False)


@click.command(name="audit")
@click.option("--patient", "patient_id", default=None, help="Only entries about this patient.")
@click.option("--since", default=None, metavar="TIME",
              help="Only entries from this ISO 8601 date or time (local without an offset).")
@json_option
@purpose_option
@config_option
@by_option
@reports_errors
def audit_query(patient_id: str | None, since: str | None, as_json: bool, purpose: str,
                config_path: str, actor: str) -> None:
    """Query the audit log: who changed or read what, when and why (oldest first, in the
    patient's, else the central's, time zone). Needs the right audit.read (team leads,
    administrators); the query is audited itself."""
    with open_central(config_path) as central:
        if patient_id is not None:
            _check_id(patient_id, "patient")
        zone = (get_patient(central.db, patient_id).timezone if patient_id
                else central.config.timezone)
        start = parse_time(since, zone, "--since") if since else None
        entries = read_audit(central.db, actor=actor, patient=patient_id, since=start,
                             purpose=purpose)
    if as_json:
        echo_json([{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
                    "patient": e.patient, "why": e.why, "detail": e.detail} for e in entries])
        return
    echo_table(("TIME", "ACTOR", "ACTION", "PATIENT", "WHY", "DETAIL"), [
        (local(e.at, zone), e.actor, e.action, e.patient or "-", e.why or "-",
         JSON.encode({k: v for k, v in e.detail.items()
                      if not (k in WHY_KEYS and v == e.why)}).decode())
        for e in entries])


# --- command line: staff ---------------------------------------------------------------------


@click.group(name="staff")
def staff_group() -> None:
    """Register staff and their roles; once any are, each change needs a role holding its
    right (nurse, team_lead, administrator: docs/roles-and-consent.md)."""


@staff_group.command(name="add")
@click.argument("name", metavar="NAME")
@click.option("--role", required=True, type=click.Choice(roles.ROLES),
              help="What they may do (the first one registered must be an administrator).")
@reason_option('"hired as monitoring nurse"')
@config_option
@by_option
@reports_errors
def staff_add(name: str, role: str, reason: str, config_path: str, actor: str) -> None:
    """Register NAME (as they sign with --by or TELEMON_USER) with a role."""
    with open_central(config_path) as central:
        member = add_staff(central.db, name=name, role=role, actor=actor, reason=reason)
    click.echo(f"added {member.name} as {member.role}")


@staff_group.command(name="remove")
@click.argument("name", metavar="NAME")
@reason_option('"left the team"')
@config_option
@by_option
@reports_errors
def staff_remove(name: str, reason: str, config_path: str, actor: str) -> None:
    """Unregister NAME (the audit log keeps who they were and what they did)."""
    with open_central(config_path) as central:
        remove_staff(central.db, name=name, actor=actor, reason=reason)
    click.echo(f"removed {name.strip()}")


@staff_group.command(name="list")
@json_option
@config_option
@reports_errors
def staff_list(as_json: bool, config_path: str) -> None:
    """The registered staff and their roles (none: rights are not checked)."""
    with open_central(config_path) as central:
        members = roles.staff(central.db)
        zone = central.config.timezone
    if as_json:
        echo_json(members)
    elif not members:
        click.echo("no staff registered: rights are not checked (telemon staff add NAME "
                   "--role administrator)")
    else:
        echo_table(("NAME", "ROLE", "ADDED", "ADDED BY"), [
            (m.name, m.role, local(m.added, zone), m.added_by) for m in members])


# --- command line: quarantine ----------------------------------------------------------------


@click.command(name="quarantine")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="The newest N entries.")
@click.option("--id", "entry_id", type=int, default=None,
              help="One entry, with its whole payload (hex and, when it is text, as text).")
@json_option
@config_option
@reports_errors
def quarantine_command(limit: int, entry_id: int | None, as_json: bool,
                       config_path: str) -> None:
    """What the central could not use, why, and the exact bytes (newest first)."""
    with open_central(config_path) as central:
        where, args = ("WHERE id = ?", [entry_id]) if entry_id is not None else ("", [])
        rows = central.db.execute(
            f"SELECT id, received, source, reason, payload FROM quarantine {where} "
            "ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
        zone = central.config.timezone
    if entry_id is not None and not rows:
        raise CommandError(f"no quarantine entry {entry_id}", 1)
    entries = [{"id": id_, "received": received, "source": source, "reason": reason,
                "bytes": len(payload), "payload_hex": bytes(payload).hex()}
               for id_, received, source, reason, payload in rows]
    if as_json:
        echo_json(entries)
    elif entry_id is not None:
        (entry,) = entries
        for key in ("id", "received", "source", "reason", "bytes"):
            click.echo(f"{key:<9} {entry[key]}")
        payload = bytes(rows[0][4])
        try:
            click.echo(f"text      {payload.decode('utf-8')}")
        except UnicodeDecodeError:
            click.echo(f"hex       {payload.hex()}")
    else:
        echo_table(("ID", "RECEIVED", "SOURCE", "BYTES", "REASON"), [
            (str(e["id"]), local(datetime.fromisoformat(e["received"]), zone), e["source"],
             str(e["bytes"]), e["reason"]) for e in entries])


COMMANDS = (patient_group, limits_group, modules_group, gateway_group, consent_group,
            staff_group, audit_query, quarantine_command)
"""The groups to add to the `telemon` command line."""
