"""The triage overview: every monitored patient, worst first, live."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from telemon.models import Triage
from telemon.nursing import OverviewFilter, OverviewRow
from telemon.tui.screens.dialogs import FilterDialog
from telemon.tui.widgets.status import StatusBar
from telemon.tui.widgets.triage_table import LABELS, TriageTable, local_time

if TYPE_CHECKING:
    from telemon.tui.app import DashboardApp


class OverviewScreen(Screen):
    AUTO_FOCUS = "TriageTable"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "acknowledge", "Ack", tooltip="acknowledge worst alarm"),
        Binding("r", "resolve", "Resolve", tooltip="resolve worst alarm"),
        Binding("m", "assign", "Me", tooltip="assign to me / release"),
        Binding("c", "contacted", "Contacted", tooltip="contacted, with a note"),
        Binding("l", "limits", "Limits", tooltip="new limits (with a reason)"),
        Binding("g", "review_greens", "Greens ok", tooltip="greens shown: reviewed"),
        Binding("slash", "search", "Search", show=False, tooltip="search name or id"),
        Binding("f", "filter", "Filter", show=False,
                tooltip="filter module/triage/org"),
        Binding("escape", "clear", "Clear filter", show=False,
                tooltip="clear search and filter"),
    ]

    @property
    def dashboard(self) -> DashboardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-bar"):
            yield Label("/", id="search-label")
            yield Input(placeholder="search name or id", id="search")
            yield Static(f"{self.dashboard.config.organisation}  f: filter", id="filter-text")
        yield TriageTable(self.dashboard.zone, self.dashboard.clock, id="triage")
        yield Static("", id="detail", markup=False)
        yield StatusBar()
        yield Footer()

    @property
    def table(self) -> TriageTable:
        return self.query_one(TriageTable)

    def on_mount(self) -> None:
        self.table.focus()

    def loaded(self) -> None:
        """The overview was read: say so where it is empty."""
        table = self.table
        if not table.rows:
            table.empty_text = ("No patients are enrolled in this central yet "
                                "(telemon patient add).")
        elif table.row_filter.active:
            table.empty_text = "No patient matches the filter (Esc clears it)."
        table.refresh()

    # --- the row under the cursor ------------------------------------------------------------

    def on_triage_table_highlighted(self, message: TriageTable.Highlighted) -> None:
        self.query_one("#detail", Static).update(self.describe(message.row))

    def describe(self, row: OverviewRow | None) -> str:
        """The cursor row in full: what the columns cut short."""
        if row is None:
            return ""
        zone, now = self.dashboard.zone, self.dashboard.clock()
        parts = [f"{row.patient} {LABELS[row.triage]}"]
        if row.alarm is not None:
            parts.append(f"{row.rule}: {row.message}")
            state = row.state or ""
            if row.acknowledged_by:
                state += f" by {row.acknowledged_by}"
            parts.append(state + (", escalated" if row.escalated else ""))
            if row.unresolved > 1:
                parts.append(f"{row.unresolved} unresolved alarms")
        else:
            parts.append(row.message)
        if row.assigned_to:
            parts.append(f"assigned to {row.assigned_to}")
        if row.contacted:
            parts.append(f"contacted {local_time(row.contacted, zone, now)}")
        return " | ".join(parts)

    # --- actions ------------------------------------------------------------------------------

    def _row(self, needs_alarm: bool = False) -> OverviewRow | None:
        row = self.table.current
        if row is None:
            self.notify("no patient selected", severity="warning")
            return None
        if needs_alarm and row.alarm is None:
            self.notify(f"{row.patient} is green: no alarm (g marks greens reviewed)",
                        severity="warning")
            return None
        return row

    def action_acknowledge(self) -> None:
        if row := self._row(needs_alarm=True):
            assert row.alarm is not None
            self.dashboard.acknowledge(row.alarm, row.patient, self.describe(row))

    def action_resolve(self) -> None:
        if row := self._row(needs_alarm=True):
            assert row.alarm is not None
            self.dashboard.resolve(row.alarm, row.patient, self.describe(row))

    def action_assign(self) -> None:
        if row := self._row():
            self.dashboard.toggle_assignment(row.patient, row.assigned_to)

    def action_contacted(self) -> None:
        if row := self._row():
            self.dashboard.contacted(row.patient)

    def action_limits(self) -> None:
        if row := self._row():
            self.dashboard.edit_limits(row.patient)

    def action_review_greens(self) -> None:
        shown = {row.patient: row.latest_reading for row in self.table.shown
                 if row.triage == Triage.GREEN and row.unreviewed}
        self.dashboard.review_greens(shown)

    def on_triage_table_selected(self, message: TriageTable.Selected) -> None:
        self.dashboard.open_patient(message.row.patient)

    # --- search and filter --------------------------------------------------------------------

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            self._set_filter(OverviewFilter(
                module=self.table.row_filter.module, triage=self.table.row_filter.triage,
                organisation=self.table.row_filter.organisation, text=event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self.table.focus()

    def action_filter(self) -> None:
        rows = self.table.rows.values()
        modules = sorted({*self.dashboard.modules, *(m for r in rows for m in r.modules)})
        organisations = sorted({row.organisation for row in rows})

        def chosen(overview_filter: OverviewFilter | None) -> None:
            if overview_filter is not None:
                self._set_filter(overview_filter)
        self.app.push_screen(FilterDialog(self.table.row_filter, modules, organisations), chosen)

    def action_clear(self) -> None:
        search = self.query_one("#search", Input)
        search.value = ""
        self._set_filter(OverviewFilter())
        self.table.focus()

    def _set_filter(self, overview_filter: OverviewFilter) -> None:
        self.table.set_filter(overview_filter)
        parts = [overview_filter.module, LABELS[overview_filter.triage]
                 if overview_filter.triage is not None else None, overview_filter.organisation]
        shown = " ".join(p for p in parts if p)
        self.query_one("#filter-text", Static).update(
            f"filter: {shown} ({len(self.table.shown)})  Esc: clear" if shown
            else f"{self.dashboard.config.organisation}  f: filter")
        self.loaded()
