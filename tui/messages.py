"""Messages the dashboard's worker threads post back to the app (`post_message` is safe from
any thread); the app hands them on to its screens."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from telemon.nursing import OverviewChange, OverviewRow, PatientRecord


@dataclass
class OverviewLoaded(Message):
    """The whole overview, read again."""

    rows: list[OverviewRow]


@dataclass
class OverviewChanged(Message):
    """The rows of some patients, read again after something about them was committed."""

    change: OverviewChange


@dataclass
class DatabaseStatus(Message):
    """The database could (problem None) or could not be read; the workers keep retrying."""

    problem: str | None


@dataclass
class BrokerStatus(Message):
    """The live connection to the organisation's alarms topic; the dashboard works from the
    database without it."""

    connected: bool
    detail: str


@dataclass
class RecordLoaded(Message):
    """A patient's record for the patient view."""

    record: PatientRecord


@dataclass
class ActionDone(Message):
    """An action was saved (text: what, for the nurse) or refused (error: why)."""

    text: str
    error: bool = False
