"""Core objects: what is measured, answered, alarmed and agreed, as immutable typed records.

Each record is a `msgspec.Struct`; `telemon.wire` gives them one versioned JSON form.
Ids are minted where the thing happens (an observation on the edge) and never change.
Times are timezone-aware; the wire form and the database keep UTC.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from telemon import dsp

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+\Z")]
"""Pseudonymous identifiers only: never a CPR number or a name (they travel in MQTT topics)."""


def new_id() -> str:
    """A UUIDv7 (RFC 9562): unique without coordination and sortable by creation time."""
    unix_ms = time.time_ns() // 1_000_000
    rand_a = int.from_bytes(os.urandom(2), "big") & 0xFFF
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    version, variant = 0x7, 0b10
    value = unix_ms << 80 | version << 76 | rand_a << 64 | variant << 62 | rand_b
    return str(uuid.UUID(int=value))


_READING_NAMESPACE = uuid.UUID("5b6e3f7e-2f4c-4d0e-9a51-6c1f0e7d2a10")


def reading_id(*, device: str, patient: str, code: str, effective: datetime, raw: bytes) -> str:
    """The id of a device reading, derived from what identifies it (device, patient, type,
    time, bytes; as the PHD IG's identifier), so a reading a device sends again (meters
    re-send their memory on every connection) gets the same id and is stored once."""
    key = f"{device}|{patient}|{code}|{effective.isoformat()}|{raw.hex()}"
    return str(uuid.uuid5(_READING_NAMESPACE, key))


class Triage(enum.IntEnum):
    """Per-patient triage, ordered so that max() is the worst (OpenTele's overview order)."""

    GREEN = 0
    MISSING = 1
    YELLOW = 2
    RED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class AbsentReason(enum.StrEnum):
    """Why a reading has no number: FHIR data-absent-reason codes (PHD IG special values)."""

    NOT_A_NUMBER = "not-a-number"
    ERROR = "error"  # IEEE 11073 NRes: not at this resolution
    POSITIVE_INFINITY = "positive-infinity"
    NEGATIVE_INFINITY = "negative-infinity"
    UNSUPPORTED = "unsupported"  # reserved special value


# gc=False on every struct here: they hold only values (strings, numbers, times, tuples and
# dicts of those, other such structs), so they can never be part of a reference cycle, and
# the collector need not track them. Ingest makes tens of thousands a second; tracked, the
# collections they set off took a tenth of the central's time (benchmarks/test_ingest.py).
class Record(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type",
    gc=False,
):
    """A top-level wire record: `{"type": "<tag>", "v": 1, ...}` (see telemon.wire)."""

    v: Literal[1] = 1


class Code(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A coded concept; the canonical system for measurements is IEEE 11073 MDC."""

    system: str
    code: str
    display: str = ""


class Component(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One part of a compound reading (systolic, diastolic, mean of a blood pressure)."""

    code: Code
    unit: str
    value: Decimal | None = None
    absent: AbsentReason | None = None


class Observation(Record, tag="observation"):
    """One reading by one device for one patient, with the context it was taken in.

    `value` keeps the device's precision as a Decimal; a special value has `absent` instead.
    `effective` is the device's clock (or the gateway's, then context["time_source"] says so);
    `received` is set by the central when it stores the reading.
    """

    id: Id
    patient: Id
    device: Id
    gateway: Id
    code: Code
    unit: str
    effective: AwareDatetime
    value: Decimal | None = None
    absent: AbsentReason | None = None
    components: tuple[Component, ...] = ()
    flags: tuple[str, ...] = ()
    context: dict[str, str] = {}
    raw: bytes = b""
    driver: str = ""
    driver_version: str = ""
    received: AwareDatetime | None = None

    def __post_init__(self) -> None:
        if self.value is not None and self.absent is not None:
            raise ValueError("an observation has either a value or an absent reason, not both")
        if self.value is None and self.absent is None and not self.components:
            raise ValueError("an observation needs a value, an absent reason or components")


class Answer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One answered item: the item id and the chosen option or number (never item wording)."""

    item: str
    value: str | int | float | bool


class QuestionnaireResponse(Record, tag="questionnaire_response"):
    """A completed questionnaire with the scores computed from it."""

    id: Id
    patient: Id
    gateway: Id
    questionnaire: str
    version: str
    authored: AwareDatetime
    answers: tuple[Answer, ...]
    scores: dict[str, Decimal] = {}
    received: AwareDatetime | None = None


class LimitSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Four alarm limits for one code: outside red = red, outside yellow = yellow.

    Any limit may be unset. Set limits are ordered red_low <= yellow_low <= yellow_high
    <= red_high (OpenTele's alert-low < warning-low < warning-high < alert-high).
    """

    red_low: Decimal | None = None
    yellow_low: Decimal | None = None
    yellow_high: Decimal | None = None
    red_high: Decimal | None = None

    def __post_init__(self) -> None:
        if problem := dsp.limit_order_problem({f: getattr(self, f)
                                               for f in self.__struct_fields__}):
            raise ValueError(problem)

    def as_floats(self) -> dict[str, float | None]:
        """The limits as keyword arguments for telemon.dsp.limit_bands."""
        return {f: None if getattr(self, f) is None else float(getattr(self, f))
                for f in self.__struct_fields__}

    def classify(self, value: Decimal | float | None) -> Triage:
        """The triage of one value against these limits; no value counts as green here."""
        if value is None:
            return Triage.GREEN
        return BAND_TRIAGE[int(dsp.limit_bands([float(value)], **self.as_floats())[0])]


BAND_TRIAGE = {-2: Triage.RED, -1: Triage.YELLOW, 0: Triage.GREEN, 1: Triage.YELLOW,
               2: Triage.RED, dsp.NO_VALUE: Triage.GREEN}
"""Triage of each band telemon.dsp.limit_bands returns."""


class LimitVersion(Record, tag="limit_version"):
    """One version of a patient's limits for one code. Versions are added, never overwritten."""

    patient: Id
    code: Code
    limits: LimitSet
    valid_from: AwareDatetime
    author: str
    reason: str
    version: int = 1
    valid_to: AwareDatetime | None = None


ConsentPurpose = Literal["monitoring", "share-hospital", "share-gp", "national-export", "research"]


class ConsentEvent(Record, tag="consent_event"):
    """A consent given or withdrawn. Consent is the stream of these, not a flag."""

    id: Id
    patient: Id
    purpose: ConsentPurpose
    granted: bool
    at: AwareDatetime
    recorded_by: str


class Enrolment(Record, tag="enrolment"):
    """A patient monitored by one organisation with some disease modules, via some gateways."""

    patient: Id
    organisation: Id
    modules: tuple[str, ...]
    gateways: tuple[Id, ...] = ()
    enrolled: AwareDatetime | None = None


class Evaluation(Record, tag="evaluation"):
    """One observation checked against one module's limits for one code: the severity found
    and the limits in force, kept with it (the national infrastructure copies the ranges into
    every observation). `code` is the measure key (telemon.codes), e.g. "bp_sys" for the
    systolic component of a blood pressure. `limits_source` says where the limits came from:
    "patient v<N>" (the patient's own, version N), "organisation v<N>" (the organisation's
    default, version N: `telemon limits defaults`) or "module" (the module's defaults)."""

    observation: Id
    patient: Id
    module: str
    code: str
    severity: Literal["red", "yellow", "green"]
    limits: LimitSet
    limits_source: str
    evaluated: AwareDatetime


AlarmState = Literal["open", "acknowledged", "resolved"]


class AlarmEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One step in an alarm's audit trail: who did what, when, with what note."""

    at: AwareDatetime
    action: Literal["raised", "acknowledged", "resolved", "escalated", "note"]
    by: str
    note: str = ""


class Alarm(Record, tag="alarm"):
    """A finding of a module's rule for a patient, with the observations behind it."""

    id: Id
    patient: Id
    module: str
    rule: str
    severity: Literal["red", "yellow", "missing"]
    raised: AwareDatetime
    message: str
    observations: tuple[Id, ...] = ()
    limits: LimitSet | None = None
    state: AlarmState = "open"
    events: tuple[AlarmEvent, ...] = ()
    code: str | None = None  # the measure key the rule watched, when it watched one
    repeats: int = 0  # findings of the same rule folded into this alarm while it was open
