"""What a disease module declares: codes, default limits, trend rules, schedule, summary.

Limits are checked by the core for every code a module declares, against the patient's own
limits (or the module's defaults); rules add what a single value cannot show (trends).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta

import numpy as np

from telemon.codes import KNOWN
from telemon.drivers import NAME_PATTERN
from telemon.models import LimitSet, Triage


@dataclass(frozen=True)
class Series:
    """One patient's readings of one code, oldest first: what a rule evaluates."""

    patient: str
    code: str
    times: np.ndarray  # float64 seconds since the epoch (UTC), ascending
    values: np.ndarray  # float64, NaN where the reading had no value
    ids: tuple[str, ...]
    limits: LimitSet


@dataclass(frozen=True)
class Finding:
    """What a rule found: a triage level, a sentence for the nurse, the readings behind it."""

    severity: Triage
    message: str
    observations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """A trend rule: evaluated on the recent series of each code it watches whenever a new
    reading of that code arrives; a finding raises (or is folded into) this rule's alarm."""

    name: str
    description: str  # cites the clinical source
    codes: tuple[str, ...]
    evaluate: Callable[[Series], Sequence[Finding]]
    window: timedelta = timedelta(days=30)  # how much history the series holds


@dataclass(frozen=True)
class Schedule:
    """The codes a patient is asked to measure every `every`, by `deadline` local time."""

    codes: tuple[str, ...]
    every: timedelta = timedelta(days=1)
    deadline: time = time(12, 0)


@dataclass(frozen=True)
class DiseaseModule:
    name: str
    version: str
    title: str
    codes: tuple[str, ...]
    default_limits: Mapping[str, LimitSet]
    schedule: Schedule
    summarise: Callable[[Mapping[str, float]], str]  # latest value per code -> one line
    rules: tuple[Rule, ...] = ()
    questionnaires: tuple[str, ...] = field(default=())
    sources: tuple[str, ...] = ()  # the clinical sources of its defaults and rules

    def problems(self) -> list[str]:
        """Everything wrong with this declaration (empty when it is valid)."""
        found = []
        if not NAME_PATTERN.match(self.name):
            found.append(f"name {self.name!r} must be lower-case letters, digits and _")
        found += [f"code {c!r} is not a known measure" for c in self.codes if c not in KNOWN]
        for key in self.default_limits:
            if key not in self.codes:
                found.append(f"default limits for {key!r}, which is not among its codes")
        for code in self.schedule.codes:
            if code not in self.codes:
                found.append(f"schedule asks for {code!r}, which is not among its codes")
        names = [rule.name for rule in self.rules]
        found += [f"rule name {name!r} is used by more than one rule"
                  for name in dict.fromkeys(names) if names.count(name) > 1]
        for rule in self.rules:
            if not NAME_PATTERN.match(rule.name) or rule.name == "missing":
                found.append(f"rule name {rule.name!r} must be lower-case letters, digits and "
                             "_, and not 'missing' (the core's schedule check)")
            if not callable(rule.evaluate):
                found.append(f"rule {rule.name!r}: evaluate must be a function of Series")
            found += [f"rule {rule.name!r} watches {c!r}, which is not among its codes"
                      for c in rule.codes if c not in self.codes]
        if not self.sources:
            found.append("no clinical sources: cite where the defaults and rules come from")
        return found
