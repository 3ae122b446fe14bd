"""Every key of the dashboard, screen by screen, and what the overview's words mean."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from telemon.tui.widgets.triage_table import TriageTable

KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "Esc", "enter": "Enter",
             "pageup": "PgUp", "pagedown": "PgDn", "home": "Home", "end": "End",
             "up": "↑", "down": "↓"}

MEANING = ("Triage is written out: RED, YELLOW, MISSING (no scheduled reading by the "
           "deadline), GREEN; colour only repeats it. RED! = escalated (not acknowledged in "
           "time). WHO = the nurse assigned, else who acknowledged. Plots: \"=\" red limit, "
           "\"-\" yellow limit, \"o\" a reading.")


def key_lines(title: str, bindings: list[BindingType]) -> Text:
    """One line per key, keys that do the same thing on one line."""
    merged: dict[str, list[str]] = {}
    for binding in bindings:
        assert isinstance(binding, Binding)
        what = binding.tooltip or binding.description
        keys = [KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(",")]
        if binding.key.isdigit() and merged.get(what):  # 1 2 3 4 5 -> 1-5
            keys, merged[what] = [f"{merged[what][0].split('-')[0]}-{binding.key}"], []
        merged.setdefault(what, []).extend(keys)
    text = Text(f"{title}\n", style="bold")
    for what, keys in merged.items():
        shown = " ".join(keys)
        if len(shown) > 6:  # many keys: on a line of their own
            text.append(f" {shown}\n", style="bold")
            shown = ""
        text.append(f" {shown:<7}", style="bold")
        text.append(f"{what}\n")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        from telemon.tui.app import DashboardApp
        from telemon.tui.screens.overview import OverviewScreen
        from telemon.tui.screens.patient import PatientScreen

        app: DashboardApp = self.app  # type: ignore[assignment]
        overview = key_lines("Overview", [*OverviewScreen.BINDINGS, *TriageTable.BINDINGS])
        patient = key_lines("Patient", PatientScreen.BINDINGS)
        patient.append_text(key_lines("Everywhere", DashboardApp.BINDINGS))
        with VerticalScroll(classes="dialog", id="help") as box:
            box.border_title = "Keys (Esc closes)"
            with Horizontal(id="help-columns"):
                yield Static(overview, classes="help-column")
                yield Static(patient, classes="help-column")
            yield Static(MEANING, id="help-meaning")
            yield Static(f"Database: {app.database_problem or 'ok'}\n"
                         f"Broker: {app.broker_text}", id="help-status")

    def action_close(self) -> None:
        self.dismiss(None)
