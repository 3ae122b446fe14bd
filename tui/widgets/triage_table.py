"""The triage overview table: every patient, worst first, drawn one visible line at a time.

A ScrollView that renders only the lines on screen, so 10,000 patients cost no more to show
than twenty (Textual's DataTable measures every cell of every row when rows are added:
seconds for 10,000). The cursor belongs to a patient, not to a line: when rows are read
again and re-sorted (a new red arrives), it stays on the same patient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar
from zoneinfo import ZoneInfo

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from telemon import alarms
from telemon.models import Triage
from telemon.nursing import OverviewChange, OverviewFilter, OverviewRow

LABELS = {Triage.RED: "RED", Triage.YELLOW: "YELLOW", Triage.MISSING: "MISSING",
          Triage.GREEN: "GREEN"}
"""Triage in words: the text says it, colour only repeats it (monochrome terminals)."""


def fit(text: str, width: int) -> str:
    """`text` in exactly `width` cells: padded, or cut with an ellipsis."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, width - 1) + "…"


def local_time(moment: datetime | None, zone: ZoneInfo, now: datetime) -> str:
    """A stored (UTC) time as the nurse reads it, local: "09:14" today, "Mon 09:14" this
    week, "01 Mar" before that."""
    if moment is None:
        return "-"
    here, today = moment.astimezone(zone), now.astimezone(zone)
    if here.date() == today.date():
        return here.strftime("%H:%M")
    if 0 < (today.date() - here.date()).days < 7:
        return here.strftime("%a %H:%M")
    return here.strftime("%d %b")


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # 0: takes the width left over
    from_width: int = 0  # shown only when the table is at least this wide


COLUMNS = (Column("TRIAGE", 7), Column("PATIENT", 22), Column("MODULES", 10, from_width=100),
           Column("WHAT", 0), Column("WHEN", 9), Column("WHO", 9))
MIN_WHAT = 12


def column_widths(width: int) -> list[int]:
    """Each column's width in a table `width` cells wide (0: the column is left out)."""
    shown = [c for c in COLUMNS if width >= c.from_width]
    fixed = sum(c.width for c in shown) + len(shown) - 1
    return [0 if c not in shown else c.width or max(MIN_WHAT, width - fixed) for c in COLUMNS]


SHORT_BAND_WORDS = {words: f"{'<' if band < 0 else '>'} {'red' if abs(band) == 2 else 'yellow'}"
                    for band, words in alarms.BAND_WORDS.items()}


def short_message(message: str) -> str:
    """The engine's sentence for a narrow column: "SpO2 86 % below the red limit 88 % (module
    limits)" becomes "SpO2 86 % < red 88 %" (the detail line shows it in full)."""
    for words, short in SHORT_BAND_WORDS.items():
        if words in message:
            return message.replace(words, short).split(" (", 1)[0]
    return message


class TriageTable(ScrollView, can_focus=True):
    """Overview rows, sorted worst first, filtered; a header line that does not scroll."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Move", show=False, tooltip="move"),
        Binding("down,j", "cursor(1)", "Move", show=False, tooltip="move"),
        Binding("pageup", "page(-1)", "Move", show=False, tooltip="move"),
        Binding("pagedown", "page(1)", "Move", show=False, tooltip="move"),
        Binding("home", "jump(0)", "Move", show=False, tooltip="move"),
        Binding("end", "jump(-1)", "Move", show=False, tooltip="move"),
        Binding("enter", "select", "Open patient", show=False, tooltip="open the patient"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "triage-table--header", "triage-table--cursor", "triage-table--empty",
        "triage--red", "triage--yellow", "triage--missing", "triage--green"}
    DEFAULT_CSS = """
    TriageTable { height: 1fr; scrollbar-size-vertical: 1; }
    """

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    @dataclass
    class Highlighted(Message):
        """The cursor moved to a row (None: no rows)."""

        row: OverviewRow | None

    @dataclass
    class Selected(Message):
        """Enter (or a click) on a row: open the patient."""

        row: OverviewRow

    def __init__(self, zone: ZoneInfo, clock: Callable[[], datetime], *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.zone, self.clock = zone, clock
        self.rows: dict[str, OverviewRow] = {}
        self.shown: list[OverviewRow] = []
        self.row_filter = OverviewFilter()
        self.empty_text = "Reading the central database…"
        self._index: dict[str, int] = {}
        self._moved = False  # until the nurse moves it, the cursor stays on the worst row

    # --- the data ------------------------------------------------------------------------------

    def replace(self, rows: Iterable[OverviewRow]) -> None:
        """Show these rows instead of the ones shown."""
        self.rows = {row.patient: row for row in rows}
        self._rebuild()

    def apply(self, change: OverviewChange) -> list[OverviewRow]:
        """Take some patients' rows read again; return the rows whose triage got worse."""
        before = {patient: self.rows.pop(patient, None) for patient in change.patients}
        worse = []
        for row in change.rows:
            old = before.get(row.patient)
            if old is not None and row.triage > old.triage:
                worse.append(row)
            self.rows[row.patient] = row
        self._rebuild()
        return worse

    def set_filter(self, overview_filter: OverviewFilter) -> None:
        self.row_filter = overview_filter
        self._rebuild()

    @property
    def current(self) -> OverviewRow | None:
        return self.shown[self.cursor] if 0 <= self.cursor < len(self.shown) else None

    def _rebuild(self) -> None:
        """Filter and sort again; the cursor stays on its patient (or its place, if the
        patient is gone; on the worst row until the nurse first moves it), and a view at the
        top stays at the top, where new reds arrive."""
        kept = self.current.patient if self.current else None
        at_top = self.scroll_offset.y == 0
        self.shown = sorted((row for row in self.rows.values() if self.row_filter.matches(row)),
                              key=lambda row: row.sort_key)
        self._index = {row.patient: i for i, row in enumerate(self.shown)}
        self.virtual_size = Size(self.size.width, len(self.shown) + 1)
        cursor = self._index.get(kept, self.cursor) if kept and self._moved else 0
        self.cursor = max(0, min(cursor, len(self.shown) - 1))
        if at_top:
            self.scroll_to(y=0, animate=False, immediate=True)
        self._show_cursor()
        self.refresh()

    # --- the cursor ----------------------------------------------------------------------------

    def watch_cursor(self) -> None:
        self.post_message(self.Highlighted(self.current))

    def _page(self) -> int:
        return max(1, self.size.height - 1)  # the lines below the header

    def _show_cursor(self) -> None:
        top = round(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + self._page():
            self.scroll_to(y=self.cursor - self._page() + 1, animate=False, immediate=True)

    def move_to(self, index: int) -> None:
        if not self.shown:
            return
        self._moved = True
        self.cursor = max(0, min(index, len(self.shown) - 1))
        self._show_cursor()
        self.refresh()

    def action_cursor(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * self._page())

    def action_jump(self, index: int) -> None:
        self.move_to(len(self.shown) - 1 if index < 0 else index)

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self.current))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            index = round(self.scroll_offset.y) + event.y - 1
            if index < len(self.shown):
                if index == self.cursor and event.chain >= 2:
                    self.action_select()
                self.move_to(index)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.shown) + 1)
        self._show_cursor()

    # --- drawing -------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            style = self.get_component_rich_style("triage-table--header")
            titles = " ".join(fit(c.title, w) for c, w in zip(COLUMNS, column_widths(width),
                                                               strict=True) if w)
            return Strip([Segment(fit(titles, width), base + style)], width)
        index = round(self.scroll_offset.y) + y - 1
        if not self.shown:
            if y == 2:
                style = self.get_component_rich_style("triage-table--empty")
                return Strip([Segment(fit(" " + self.empty_text, width), base + style)], width)
            return Strip.blank(width, base)
        if index >= len(self.shown):
            return Strip.blank(width, base)
        row = self.shown[index]
        style = base
        if index == self.cursor:
            style = base + self.get_component_rich_style("triage-table--cursor")
        return Strip(self._cells(row, width, style), width)

    def _cells(self, row: OverviewRow, width: int, style: Style) -> list[Segment]:
        label = LABELS[row.triage] + ("!" if row.escalated else "")
        texts = (label, f"{row.patient} {row.display_name}", ",".join(row.modules),
                 short_message(row.message), local_time(row.when, self.zone, self.clock()),
                 row.who or "-")
        triage = self.get_component_rich_style(f"triage--{row.triage.label}")
        segments: list[Segment] = []
        for i, (text, cell_width) in enumerate(zip(texts, column_widths(width), strict=True)):
            if not cell_width:
                continue
            if segments:
                segments.append(Segment(" ", style))
            segments.append(Segment(fit(text, cell_width), style + triage if i == 0 else style))
        return list(Segment.adjust_line_length(segments, width, style))
