"""A measure's history as a character plot with the patient's limits drawn across it.

Drawn here rather than with a plotting package: a few dozen lines give exactly what the
nurse needs in an 80-column terminal (the readings, the red and yellow limit lines, the
value of each limit on the axis), in plain characters that read the same in monochrome:
a red limit is a line of "=", a yellow limit a line of "-", readings are "o" (each reading's
colour repeats what the lines already show).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from rich.segment import Segment
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from telemon.models import LimitSet, Triage

LIMIT_MARK = {"red_low": "=", "red_high": "=", "yellow_low": "-", "yellow_high": "-"}
POINT_STYLE = {Triage.RED: "bold red", Triage.YELLOW: "bold yellow", Triage.GREEN: "green"}
LABEL_WIDTH = 6


@dataclass(frozen=True)
class PlotData:
    times: np.ndarray  # seconds since the epoch, UTC
    values: np.ndarray
    limits: LimitSet | None
    start: datetime  # local: the axis is labelled with these dates
    end: datetime


def value_range(values: np.ndarray, limits: LimitSet | None) -> tuple[float, float]:
    """The values' range, widened to the limits that lie near it (a limit far away, a pulse
    red-high of 130 under readings around 70, would squash the readings into one line; it is
    named in the plot's title instead)."""
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    reach = max(high - low, abs(high) * 0.05, 1.0) * 1.5
    for limit in (limits.as_floats().values() if limits else ()):
        if limit is not None and low - reach <= limit <= high + reach:
            low, high = min(low, limit), max(high, limit)
    if high == low:
        low, high = low - 1, high + 1
    return low, high


def plot_lines(data: PlotData, width: int, height: int) -> list[Text]:
    """The plot as `height` lines of `width` cells plus a time axis line."""
    plot_width = max(10, width - LABEL_WIDTH - 1)
    finite = np.isfinite(data.values)
    if not finite.any():
        return [Text("no readings in this period", style="italic")]
    low, high = value_range(data.values, data.limits)

    def row_of(value: float) -> int:
        return round((high - value) / (high - low) * (height - 1))

    grid = [[(" ", "")] * plot_width for _ in range(height)]
    labels: dict[int, float] = {0: high, height - 1: low}
    for name, limit in (data.limits.as_floats().items() if data.limits else ()):
        if limit is not None and low <= limit <= high:
            row = row_of(limit)
            grid[row] = [(LIMIT_MARK[name], "red" if name.startswith("red") else "yellow")
                         ] * plot_width
            labels[row] = limit
    span = max((data.end - data.start).total_seconds(), 1.0)
    start = data.start.timestamp()
    for moment, value in zip(data.times[finite], data.values[finite], strict=True):
        column = min(plot_width - 1, max(0, int((moment - start) / span * (plot_width - 1))))
        triage = data.limits.classify(value) if data.limits else Triage.GREEN
        grid[row_of(value)][column] = ("o", POINT_STYLE[triage])
    lines = []
    for row, cells in enumerate(grid):
        line = Text(f"{labels[row]:>{LABEL_WIDTH}.4g}" if row in labels else " " * LABEL_WIDTH,
                    style="dim")
        line.append("┤" if row in labels else "│", style="dim")
        for char, style in cells:
            line.append(char, style=style)
        lines.append(line)
    first, last = data.start.strftime("%d %b"), data.end.strftime("%d %b")
    axis = " " * (LABEL_WIDTH + 1) + first + last.rjust(plot_width - len(first))
    lines.append(Text(axis, style="dim"))
    return lines


class HistoryPlot(Widget):
    """One measure's plot; its height is the widget's."""

    DEFAULT_CSS = """
    HistoryPlot { height: 8; }
    """

    def __init__(self, data: PlotData) -> None:
        super().__init__()
        self.data = data
        self._drawn: tuple[tuple[int, int], list[Text]] | None = None

    def render_line(self, y: int) -> Strip:
        """Line `y` of the plot, drawn for the widget's current size (and kept for it)."""
        width, height = self.size
        if self._drawn is None or self._drawn[0] != (width, height):
            self._drawn = ((width, height), plot_lines(self.data, width, max(2, height - 1)))
        lines = self._drawn[1]
        if y >= len(lines):
            return Strip.blank(width, self.rich_style)
        line = lines[y]
        line.end = ""
        segments = [Segment(s.text, self.rich_style + s.style if s.style else self.rich_style)
                    for s in line.render(self.app.console)]
        return Strip(segments).crop_extend(0, width, self.rich_style)
