"""The status line at the bottom of every screen: who is working, the triage counts, and
whether the database and the broker can be reached (the dashboard keeps working from the
database when the broker is down)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

if TYPE_CHECKING:
    from telemon.tui.app import DashboardApp


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def render(self) -> Text:
        app: DashboardApp = self.app  # type: ignore[assignment]
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(app.nurse, style="bold")
        if app.database_problem:
            line.append(" | ")
            line.append(f"DATABASE: {app.database_problem}", style="bold reverse")
        else:
            line.append(f" | {app.counts_text}")
        line.append(" | ")
        if app.broker_connected:
            line.append("live")
        else:  # the reason is on the help screen (?)
            line.append("no broker: database only", style="italic")
        return line
