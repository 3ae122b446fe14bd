"""Staff roles and the rights each holds: who may read a patient's detail, set limits, enrol.

Three roles: a nurse follows patients (reads them, records consent, sets a patient's own
limits, handles alarms in the dashboard); a team lead can do all of that too, answers for the
organisation's default limits and reads the audit log; an administrator manages enrolment
(patients, modules, gateways) and the staff list, reads patients to do so and reads the audit
log, but sets no clinical limits and handles no alarms.

Rights are enforced once the organisation has registered staff (`telemon staff add`): from
then on every change and audited read through telemon.admin needs a registered name with a
role holding the right, and a refusal is audited. A central with no staff registered (a new
installation, the demo, tests) checks nothing, so the first member added must be an
administrator, who can then add the others.

The name is who the person says they are (`--by`, $TELEMON_USER, the dashboard's nurse): this
keeps honest people within their role and makes every refusal visible in the audit log; it is
no defence against someone who can write the database file, which the file's owner-only
permissions are (SECURITY.md, docs/roles-and-consent.md). What the operating system did
authenticate is recorded beside the name (`identity`): under sudo, the account that ran sudo
(SUDO_USER) and the account the process runs as.

This module holds the model and reads the `staff` table; telemon.admin changes it and checks
the rights, so that a refusal is an AdminError like any other (the dashboard shows those).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

ROLES = ("nurse", "team_lead", "administrator")

RIGHTS: Mapping[str, frozenset[str]] = {
    "patient.read": frozenset(ROLES),  # patient show / list, limits history, the dashboard
    "consent.record": frozenset(ROLES),
    "limits.set": frozenset({"nurse", "team_lead"}),  # a patient's own limits
    "limits.defaults": frozenset({"team_lead"}),  # the organisation's default limits
    "alarm.handle": frozenset({"nurse", "team_lead"}),  # acknowledge, resolve, assign,
    # contacted, greens reviewed (the dashboard)
    "audit.read": frozenset({"team_lead", "administrator"}),  # telemon audit
    "enrolment.change": frozenset({"administrator"}),  # patients, modules, gateways
    "staff.manage": frozenset({"administrator"}),
    "citizen.export": frozenset({"team_lead", "administrator"}),  # telemon export citizen:
    # everything held about one citizen, on a request under GDPR art. 15/20
    "retention.run": frozenset({"administrator"}),  # removes data (its dry run needs none)
}
"""Each right and the roles holding it."""


@dataclass(frozen=True)
class StaffMember:
    name: str
    role: str
    added: datetime
    added_by: str


def holders(right: str) -> list[str]:
    """The roles holding `right`, in the order of ROLES."""
    return [role for role in ROLES if role in RIGHTS[right]]


def staff(db: sqlite_utils.Database) -> list[StaffMember]:
    """The registered staff, by name."""
    rows = db.execute("SELECT name, role, added, added_by FROM staff ORDER BY name")
    return [StaffMember(name, role, datetime.fromisoformat(added), added_by)
            for name, role, added, added_by in rows]


def role_of(db: sqlite_utils.Database, name: str) -> str | None:
    """The role of a registered staff member; None for a name that is not registered."""
    row = db.execute("SELECT role FROM staff WHERE name = ?", [name.strip()]).fetchone()
    return None if row is None else row[0]


def enforced(db: sqlite_utils.Database) -> bool:
    """Whether rights are checked: once any staff member is registered."""
    return db.execute("SELECT 1 FROM staff LIMIT 1").fetchone() is not None


def missing_right(db: sqlite_utils.Database, actor: str, right: str) -> str | None:
    """Why `actor` may not use `right`, in one line; None when they may."""
    if right not in RIGHTS:
        raise ValueError(f"unknown right {right!r} (rights: {', '.join(RIGHTS)})")
    if not enforced(db):
        return None
    held_by = f"the right {right} is held by {', '.join(holders(right))}"
    role = role_of(db, actor)
    if role is None:
        return f"{actor.strip()} is not registered staff (telemon staff add); {held_by}"
    if role not in RIGHTS[right]:
        return f"{actor.strip()} ({role}) lacks the right {right}: {held_by}"
    return None


def os_account() -> str | None:
    """The name of the account this process runs as, from its real user id (not from
    $USER or $LOGNAME, which anyone can set); None if the id has no name."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def sudo_user() -> str | None:
    """The account that started this process through sudo ($SUDO_USER, which sudo sets after
    authenticating it), or None when not run through sudo."""
    return os.environ.get("SUDO_USER", "").strip() or None


def identity() -> dict[str, str]:
    """What the operating system authenticated, for an audit entry beside the claimed name:
    under sudo, {"sudo_user": who ran sudo, "os_user": the account it runs as}; else nothing.

    sudo sets SUDO_USER itself, so it is the authenticated person whenever the process could
    only have been started through sudo (the database owned by a service account, 0600).
    A process started without sudo can set any SUDO_USER: `os_user`, from the kernel, is
    recorded with it so such an entry shows the account that really wrote it."""
    invoker = sudo_user()
    if invoker is None:
        return {}
    return {"sudo_user": invoker, "os_user": os_account() or str(os.getuid())}
