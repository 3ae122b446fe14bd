"""Small modal dialogs: a note for an action, a yes/no question, new limits, the filter."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from telemon import admin
from telemon.codes import KNOWN
from telemon.models import LimitSet, Triage
from telemon.nursing import LimitChoice, OverviewFilter
from telemon.tui.widgets.triage_table import LABELS


class NoteDialog(ModalScreen[str | None]):
    """One line of note for an action; Enter saves, Esc cancels (None). A `required` note
    (why an alarm is acknowledged or resolved: it is the audit entry's reason) is asked for
    again until one is typed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    REQUIRED_HINT = "A note is required: say why (it is kept in the audit log)."

    def __init__(self, title: str, detail: str, *,
                 placeholder: str = "note (optional)", required: bool = False) -> None:
        super().__init__()
        self.title_text, self.detail, self.placeholder = title, detail, placeholder
        self.required = required

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title")
            yield Static(self.detail, classes="dialog-detail", markup=False)
            yield Input(placeholder=self.placeholder, id="note")
            yield Static("Enter: save   Esc: cancel", classes="dialog-hint", id="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.required and not event.value.strip():
            self.query_one("#hint", Static).update(
                f"{self.REQUIRED_HINT}   Enter: save   Esc: cancel")
            return
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: y or Enter for yes, n or Esc for no."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y,enter", "answer(True)", "Yes"),
                Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-title")
            yield Static("y / Enter: yes   n / Esc: no", classes="dialog-hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True)
class LimitsChange:
    key: str
    limits: LimitSet
    reason: str
    before: LimitSet | None
    before_source: str


LIMIT_FIELDS = ("red_low", "yellow_low", "yellow_high", "red_high")


class LimitsDialog(ModalScreen[LimitsChange | None]):
    """New limits for one of the patient's codes: the limits in force now are filled in, the
    line at the bottom shows before -> after, and a reason is required (it is kept with the
    version). Empty fields are no limit. Enter in a field saves; Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, patient: str, choices: list[LimitChoice]) -> None:
        super().__init__()
        self.patient = patient
        self.choices = {choice.key: choice for choice in choices}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="limits-dialog"):
            yield Static(f"New limits for {self.patient}", classes="dialog-title")
            yield Select([(f"{KNOWN[key].display} ({KNOWN[key].unit})", key)
                          for key in self.choices], prompt="measure", id="code")
            with Grid(id="limit-fields"):
                for name in LIMIT_FIELDS:
                    yield Label(name.replace("_", " "))
                for name in LIMIT_FIELDS:
                    yield Input(id=name, restrict=r"[0-9.]*")
            yield Input(placeholder="reason (required), e.g. the doctor's order", id="reason")
            yield Static("choose a measure", id="preview", markup=False)
            yield Static("Tab: next field   Enter: save   Esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#code", Select).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        choice = self.choices.get(event.value) if isinstance(event.value, str) else None
        for name in LIMIT_FIELDS:
            value = getattr(choice.limits, name) if choice and choice.limits else None
            self.query_one(f"#{name}", Input).value = "" if value is None else str(value)
        self._preview()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._preview()

    def _read(self) -> tuple[LimitChoice | None, LimitSet | None, str | None]:
        """The chosen code, the limits typed, or why they cannot be used."""
        key = self.query_one("#code", Select).value
        choice = self.choices.get(key) if isinstance(key, str) else None
        if choice is None:
            return None, None, "choose a measure"
        values: dict[str, Decimal | None] = {}
        for name in LIMIT_FIELDS:
            text = self.query_one(f"#{name}", Input).value.strip()
            try:
                values[name] = Decimal(text) if text else None
            except InvalidOperation:
                return choice, None, f"{name.replace('_', ' ')}: {text!r} is not a number"
        try:
            return choice, LimitSet(**values), None
        except ValueError as exc:  # out of order
            return choice, None, str(exc)

    def _preview(self) -> None:
        choice, limits, problem = self._read()
        preview = self.query_one("#preview", Static)
        if problem or choice is None or limits is None:
            preview.update(problem or "")
            return
        before = admin.describe_limits(choice.limits) if choice.limits else "no limits"
        preview.update(f"before ({choice.source}): {before}\n"
                       f"after: {admin.describe_limits(limits)}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        choice, limits, problem = self._read()
        reason = self.query_one("#reason", Input).value.strip()
        if problem is None and not reason:
            problem = "a reason is required (it is kept with the new version)"
        if problem or choice is None or limits is None:
            self.query_one("#preview", Static).update(f"cannot save: {problem}")
            return
        self.dismiss(LimitsChange(choice.key, limits, reason, choice.limits, choice.source))

    def action_cancel(self) -> None:
        self.dismiss(None)


class FilterDialog(ModalScreen[OverviewFilter | None]):
    """Narrow the overview by module, triage and organisation (the search text stays)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: OverviewFilter, modules: list[str],
                 organisations: list[str]) -> None:
        super().__init__()
        self.current, self.modules, self.organisations = current, modules, organisations

    def compose(self) -> ComposeResult:
        current = self.current
        with Vertical(classes="dialog"):
            yield Static("Filter the overview", classes="dialog-title")
            yield Select([(name, name) for name in self.modules], prompt="any module",
                         id="module", value=current.module or Select.NULL)
            yield Select([(LABELS[t], t.label) for t in sorted(Triage, reverse=True)],
                         prompt="any triage", id="triage",
                         value=current.triage.label if current.triage is not None
                         else Select.NULL)
            yield Select([(name, name) for name in self.organisations],
                         prompt="any organisation", id="organisation",
                         value=current.organisation or Select.NULL)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Clear", id="clear")
            yield Static("Tab: next   Enter: choose   Esc: cancel", classes="dialog-hint")

    def chosen(self) -> OverviewFilter:
        def value(widget_id: str) -> str | None:
            selected = self.query_one(f"#{widget_id}", Select).value
            return selected if isinstance(selected, str) else None

        triage = value("triage")
        return OverviewFilter(module=value("module"),
                              triage=Triage[triage.upper()] if triage else None,
                              organisation=value("organisation"), text=self.current.text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.dismiss(self.chosen())
        else:
            self.dismiss(OverviewFilter(text=self.current.text))

    def action_cancel(self) -> None:
        self.dismiss(None)
