"""What an exporter declares: its options and how to open a target that takes batches.

The core keeps each exporter's durable cursor and hands it batches in order; a target must
be idempotent (delivering the same batch twice leaves the same result), because delivery is
at least once: a crash between delivering and saving the cursor repeats the batch.

An exporter that hands data on beyond the organisation declares the consent purpose it needs
(`purpose`, one of telemon.models.ConsentPurpose): the runner then delivers only the records
of patients whose consent to it is in force, and audits what it skipped (telemon.export).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

from telemon.drivers import NAME_PATTERN
from telemon.models import ConsentPurpose, Record

OPTION_TYPES = {"str": str, "int": int, "bool": bool, "float": float}


@dataclass(frozen=True)
class Option:
    type: str  # one of OPTION_TYPES
    help: str
    required: bool = False
    default: Any = None


class ExportTarget(Protocol):
    def deliver(self, records: Sequence[Record]) -> None:
        """Hand over one batch; must be idempotent."""

    def close(self) -> None:
        """Release files or connections."""


@dataclass(frozen=True)
class Exporter:
    name: str
    version: str
    description: str
    open: Callable[[Mapping[str, Any]], ExportTarget]
    options: Mapping[str, Option] = field(default_factory=dict)
    # the consent a patient's records need to be delivered; None: none beyond being monitored
    # (the target stays within the organisation, as the central's own database does)
    purpose: str | None = None

    def problems(self) -> list[str]:
        found = []
        if not NAME_PATTERN.match(self.name):
            found.append(f"name {self.name!r} must be lower-case letters, digits and _")
        if not callable(self.open):
            found.append("open must be a function of the exporter's options")
        for key, option in self.options.items():
            if option.type not in OPTION_TYPES:
                found.append(f"option {key!r}: type {option.type!r} is not one of "
                             f"{', '.join(OPTION_TYPES)}")
        if self.purpose is not None and self.purpose not in get_args(ConsentPurpose):
            found.append(f"purpose {self.purpose!r} is not a consent purpose (one of "
                         f"{', '.join(get_args(ConsentPurpose))})")
        return found
