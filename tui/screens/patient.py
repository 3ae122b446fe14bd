"""One patient: plots of each measure with the limits, the latest values, questionnaire
answers, open and past alarms with their notes, the limits history and consent."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from telemon import admin, nursing
from telemon.codes import KNOWN
from telemon.models import Alarm
from telemon.tui.messages import ActionDone, RecordLoaded
from telemon.tui.widgets.plot import HistoryPlot, PlotData
from telemon.tui.widgets.status import StatusBar
from telemon.tui.widgets.triage_table import LABELS, local_time

if TYPE_CHECKING:
    from telemon.tui.app import DashboardApp

PERIODS = (7, 30, 90)
"""The history the plots show, in days ("d" cycles through them)."""


class PatientScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="back to the overview"),
        Binding("a", "acknowledge", "Ack", tooltip="acknowledge chosen alarm"),
        Binding("r", "resolve", "Resolve", tooltip="resolve chosen alarm"),
        Binding("m", "assign", "Me", tooltip="assign to me / release"),
        Binding("c", "contacted", "Contacted", tooltip="contacted, with a note"),
        Binding("l", "limits", "Limits", tooltip="new limits (with a reason)"),
        Binding("d", "period", "Days", tooltip="plot 7, 30 or 90 days"),
        *(Binding(str(n), f"tab('{tab}')", "Tabs", show=False, tooltip="show that tab")
          for n, tab in enumerate(("readings", "alarms", "answers", "limits", "consent"),
                                  start=1)),
    ]

    def __init__(self, patient: str) -> None:
        super().__init__()
        self.patient = patient
        self.days = PERIODS[1]
        self.record: nursing.PatientRecord | None = None

    @property
    def dashboard(self) -> DashboardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(f"{self.patient}: reading…", id="patient-title", markup=False)
        with TabbedContent(id="tabs"):
            with TabPane("1 Readings", id="readings"):
                yield VerticalScroll(id="measures")
            with TabPane("2 Alarms", id="alarms"):
                yield DataTable(id="alarm-table", cursor_type="row")
                yield Static("", id="alarm-trail", markup=False)
            with TabPane("3 Answers", id="answers"):
                yield DataTable(id="answer-table", cursor_type="row")
            with TabPane("4 Limits", id="limits"):
                yield DataTable(id="limit-table", cursor_type="row")
            with TabPane("5 Consent", id="consent"):
                yield DataTable(id="consent-table", cursor_type="row")
        yield StatusBar()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#alarm-table", DataTable).add_columns(
            "TRIAGE", "STATE", "RAISED", "RULE", "WHAT")
        self.query_one("#answer-table", DataTable).add_columns(
            "WHEN", "QUESTIONNAIRE", "SCORES", "ANSWERS")
        self.query_one("#limit-table", DataTable).add_columns(
            "CODE", "V", "LIMITS", "FROM", "TO", "BY", "REASON")
        self.query_one("#consent-table", DataTable).add_columns("WHEN", "WHAT", "BY", "NOTE")
        self.load(audited=True)

    def reload(self) -> None:
        """Read the record again (something about the patient was committed)."""
        self.load(audited=False)

    @work(thread=True, group="record", exclusive=True, exit_on_error=False)
    def load(self, audited: bool) -> None:
        app = self.dashboard
        try:
            with app.connect() as db:
                record = nursing.patient_record(
                    db, self.patient, nurse=app.nurse, config=app.config, modules=app.modules,
                    days=self.days, now=app.clock(), audited=audited)
        except Exception as exc:  # unknown patient, database trouble; a bug is said too
            self.post_message(ActionDone(nursing.readable_error(exc), error=True))
            return
        self.post_message(RecordLoaded(record))

    def on_action_done(self, message: ActionDone) -> None:
        self.query_one("#patient-title", Static).update(f"{self.patient}: {message.text}")

    # --- showing the record --------------------------------------------------------------------

    def on_record_loaded(self, message: RecordLoaded) -> None:
        record = self.record = message.record
        zone, now = self.dashboard.zone, self.dashboard.clock()
        patient = record.patient
        title = (f"{patient.id} {patient.display_name} | {LABELS[record.triage]} | "
                 f"{', '.join(patient.enrolment.modules)}")
        if record.assigned_to:
            title += f" | assigned to {record.assigned_to}"
        if record.contacts:
            title += f" | contacted {local_time(record.contacts[0].at, zone, now)}"
        self.query_one("#patient-title", Static).update(title)
        self._show_measures(record, now)
        self._show_alarms(record)
        self._fill("#answer-table", [
            (admin.local(r.authored, zone), f"{r.questionnaire} {r.version}",
             " ".join(f"{k} {v}" for k, v in r.scores.items()) or "-",
             " ".join(f"{a.item}={a.value}" for a in r.answers)) for r in record.responses])
        self._fill("#limit-table", [
            (admin.code_key(v.code), str(v.version), admin.describe_limits(v.limits),
             admin.local(v.valid_from, zone),
             admin.local(v.valid_to, zone) if v.valid_to else "", v.author, v.reason)
            for v in record.limits])
        consent = [(e.at, ("consent " if e.granted else "withdrawn ") + e.purpose,
                    e.recorded_by, "") for e in record.consent]
        contacts = [(c.at, "contacted", c.nurse, c.note) for c in record.contacts]
        self._fill("#consent-table", [
            (admin.local(at, zone), what, by, note)
            for at, what, by, note in sorted(consent + contacts, key=lambda e: e[0],
                                             reverse=True)])

    def _show_measures(self, record: nursing.PatientRecord, now: datetime) -> None:
        zone = self.dashboard.zone
        box = self.query_one("#measures", VerticalScroll)
        box.remove_children()
        start = (now - timedelta(days=record.days)).astimezone(zone)
        widgets = []
        for measure in record.measures:
            known = KNOWN[measure.key]
            latest = measure.latest
            line = f"{known.display} ({known.unit})  latest {measure.latest_value}"
            if latest is not None:
                line += f" at {local_time(latest.effective, zone, now)} ({latest.device})"
            limits = (admin.describe_limits(measure.limits) if measure.limits
                      else "no limits")
            line += f"\n  limits ({measure.limits_source}): {limits}"
            widgets.append(Static(line, classes="measure-title", markup=False))
            if measure.is_panel:
                continue  # its parts have their own plots (or, an audiogram, none)
            if len(measure.times):
                widgets.append(HistoryPlot(PlotData(measure.times, measure.values,
                                                    measure.limits, start,
                                                    now.astimezone(zone))))
            else:
                widgets.append(Static(f"  no readings in the last {record.days} days",
                                      classes="measure-empty"))
        if not widgets:
            widgets.append(Static("No measures: the patient's modules are not installed."))
        box.mount_all(widgets)

    def _show_alarms(self, record: nursing.PatientRecord) -> None:
        zone = self.dashboard.zone
        table = self.query_one("#alarm-table", DataTable)
        selected = self.selected_alarm()
        table.clear()
        for alarm in record.alarms:
            table.add_row(LABELS[nursing.TRIAGE_OF_SEVERITY[alarm.severity]], alarm.state,
                          admin.local(alarm.raised, zone), alarm.rule, Text(alarm.message),
                          key=alarm.id)
        if selected is not None and selected.id in {a.id for a in record.alarms}:
            table.move_cursor(row=table.get_row_index(selected.id))
        self._show_trail()

    def _fill(self, selector: str, rows: list[tuple[str, ...]]) -> None:
        table = self.query_one(selector, DataTable)
        table.clear()
        table.add_rows([[Text(cell) for cell in row] for row in rows])  # data, not markup

    def selected_alarm(self) -> Alarm | None:
        """The alarm under the Alarms tab's cursor, else the worst unresolved one."""
        if self.record is None or not self.record.alarms:
            return None
        table = self.query_one("#alarm-table", DataTable)
        if table.row_count and self.query_one(TabbedContent).active == "alarms":
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            return next((a for a in self.record.alarms if a.id == key), None)
        first = self.record.alarms[0]
        return first if first.state != "resolved" else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "alarm-table":
            self._show_trail()

    def _show_trail(self) -> None:
        """The highlighted alarm's whole trail: who did what, when, with which note."""
        table = self.query_one("#alarm-table", DataTable)
        trail = self.query_one("#alarm-trail", Static)
        if self.record is None or not table.row_count:
            trail.update("No alarms.")
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        alarm = next((a for a in self.record.alarms if a.id == key), None)
        if alarm is None:
            return
        zone = self.dashboard.zone
        trail.update("\n".join(
            f"{admin.local(e.at, zone)}  {e.action} by {e.by}" + (f": {e.note}" if e.note
                                                                   else "")
            for e in alarm.events))

    # --- actions ------------------------------------------------------------------------------

    def _alarm_for_action(self) -> Alarm | None:
        alarm = self.selected_alarm()
        if alarm is None:
            self.notify("no unresolved alarm to act on", severity="warning")
        return alarm

    def action_acknowledge(self) -> None:
        if alarm := self._alarm_for_action():
            self.dashboard.acknowledge(alarm.id, self.patient, f"{alarm.rule}: {alarm.message}")

    def action_resolve(self) -> None:
        if alarm := self._alarm_for_action():
            self.dashboard.resolve(alarm.id, self.patient, f"{alarm.rule}: {alarm.message}")

    def action_assign(self) -> None:
        if self.record is not None:
            self.dashboard.toggle_assignment(self.patient, self.record.assigned_to)

    def action_contacted(self) -> None:
        self.dashboard.contacted(self.patient)

    def action_limits(self) -> None:
        self.dashboard.edit_limits(self.patient)

    def action_period(self) -> None:
        self.days = PERIODS[(PERIODS.index(self.days) + 1) % len(PERIODS)]
        self.notify(f"showing the last {self.days} days")
        self.reload()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_back(self) -> None:
        self.app.pop_screen()

