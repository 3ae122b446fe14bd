"""What a disease module declares: codes, default limits, trend rules, schedule, summary.

Limits are checked by the core for every code a module declares, against the patient's own
limits (or the module's defaults); rules add what a single value cannot show (trends).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta
from decimal import Decimal
from typing import Literal

import numpy as np

from telemon.codes import KNOWN
from telemon.drivers import NAME_PATTERN
from telemon.models import LimitSet, Observation, Triage


@dataclass(frozen=True)
class Series:
    """One patient's readings of one code, oldest first: what a rule evaluates."""

    patient: str
    code: str
    times: np.ndarray  # float64 seconds since the epoch (UTC), ascending
    values: np.ndarray  # float64, NaN where the reading had no value
    ids: tuple[str, ...]
    limits: LimitSet
    observations: tuple[Observation, ...] = ()  # the whole readings, for rules with records


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
    records: bool = False  # the series also carries the whole observations (components)


@dataclass(frozen=True)
class Schedule:
    """The codes a patient is asked to measure every `every`, by `deadline` local time."""

    codes: tuple[str, ...]
    every: timedelta = timedelta(days=1)
    deadline: time = time(12, 0)


AnswerValue = str | int | float | bool


@dataclass(frozen=True)
class Item:
    """One questionnaire item: its id, the answers it takes, and which of them need the
    nurse (`significance`: answer -> Triage.YELLOW or Triage.RED; others are green). The
    wording is not here unless its licence allows: the municipality supplies it."""

    id: str
    kind: Literal["choice", "integer", "boolean"]
    options: tuple[str, ...] = ()  # kind "choice": the option ids
    low: int | None = None  # kind "integer": the range
    high: int | None = None
    significance: Mapping[AnswerValue, Triage] = field(default_factory=dict)
    text: str = ""  # the wording, only where its licence allows shipping it

    def problem(self, value: AnswerValue) -> str | None:
        """Why `value` is not an answer to this item, or None."""
        if self.kind == "boolean":
            return None if isinstance(value, bool) else f"{self.id}: expected true or false"
        if self.kind == "choice":
            return None if value in self.options else (
                f"{self.id}: {value!r} is not one of {', '.join(self.options)}")
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{self.id}: expected a whole number"
        if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high):
            return f"{self.id}: {value} is outside {self.low}..{self.high}"
        return None


@dataclass(frozen=True)
class Questionnaire:
    """A questionnaire a module uses: items, scoring, and the measure each score is stored
    as (the central derives an observation per score, so limits and trend rules apply to
    scores as to any reading). `score` gets complete, valid answers by item id."""

    id: str
    version: str
    title: str
    items: tuple[Item, ...]
    score: Callable[[Mapping[str, AnswerValue]], Mapping[str, Decimal]]
    scores: Mapping[str, str]  # score name -> measure key (telemon.codes) it is stored as
    source: str  # the published scoring (and its licence)
    optional: tuple[str, ...] = ()  # items that may be left out

    def problems(self, answers: Mapping[str, AnswerValue]) -> list[str]:
        """Everything wrong with a set of answers (empty when they can be scored)."""
        items = {item.id: item for item in self.items}
        found = [f"{key}: not an item of {self.id}" for key in answers if key not in items]
        found += [f"{item.id}: not answered" for item in self.items
                  if item.id not in answers and item.id not in self.optional]
        found += [problem for key, value in answers.items() if key in items
                  if (problem := items[key].problem(value))]
        return found

    def significance(self, answers: Mapping[str, AnswerValue]) -> list[tuple[Item, Triage]]:
        """The items whose answer is yellow or red."""
        return [(item, item.significance[answers[item.id]]) for item in self.items
                if item.id in answers and answers[item.id] in item.significance]


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
    questionnaires: tuple[Questionnaire, ...] = ()
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
        for questionnaire in self.questionnaires:
            found += [f"questionnaire {questionnaire.id!r}: score {name!r} is stored as "
                      f"{key!r}, which is not among its codes"
                      for name, key in questionnaire.scores.items() if key not in self.codes]
        if not self.sources:
            found.append("no clinical sources: cite where the defaults and rules come from")
        return found
