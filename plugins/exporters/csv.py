"""CSV export: one file per patient and measure, `<directory>/<patient>/<measure>.csv`.

Long format, one row per value: a blood pressure gives a row for each component under the
same observation id. Times are UTC (RFC 3339). Delivery is idempotent: a row already in the
file (same observation id and code) is not written again, and a file is replaced atomically
so a crash never leaves half a row. Questionnaire responses and alarms are not written here
(the citizen export holds them).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from telemon import __version__
from telemon.codes import lookup
from telemon.exporters import Exporter, Option
from telemon.files import write_atomically
from telemon.hookspecs import hookimpl
from telemon.models import Code, Observation, Record

COLUMNS = ("id", "effective", "code_system", "code", "display", "value", "unit", "absent",
           "flags", "device", "gateway", "driver")


def measure_name(code: Code) -> str:
    known = lookup(code)
    return known.key if known else f"{code.code}".replace("/", "_")


def rows(obs: Observation) -> list[dict[str, str]]:
    common = {"id": obs.id, "effective": obs.effective.astimezone(UTC).isoformat(),
              "flags": " ".join(obs.flags), "device": obs.device, "gateway": obs.gateway,
              "driver": obs.driver}
    parts = obs.components or [obs]
    return [{**common, "code_system": part.code.system, "code": part.code.code,
             "display": part.code.display,
             "value": "" if part.value is None else str(part.value),
             "unit": part.unit, "absent": part.absent or ""} for part in parts]


class CsvTarget:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def deliver(self, records: Sequence[Record]) -> None:
        by_file: dict[Path, list[dict[str, str]]] = defaultdict(list)
        for record in records:
            if isinstance(record, Observation):
                path = self.directory / record.patient / f"{measure_name(record.code)}.csv"
                by_file[path].extend(rows(record))
        for path, new_rows in by_file.items():
            self._merge(path, new_rows)

    def _merge(self, path: Path, new_rows: list[dict[str, str]]) -> None:
        existing: list[dict[str, str]] = []
        if path.exists():
            with path.open(newline="", encoding="utf-8") as f:
                existing = list(csv.DictReader(f))
        seen = {(r["id"], r["code"]) for r in existing}
        added = [r for r in new_rows if (r["id"], r["code"]) not in seen]
        if not added:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(existing + added, key=lambda r: (r["effective"], r["id"])))
        write_atomically(path, buffer.getvalue().encode("utf-8"))

    def close(self) -> None:
        pass


def open_target(options: Mapping[str, Any]) -> CsvTarget:
    return CsvTarget(Path(options["directory"]))


EXPORTER = Exporter(
    name="csv",
    version=__version__,
    description="CSV files per patient and measure, one row per value",
    open=open_target,
    options={"directory": Option("str", "folder the CSV files are written to", required=True)},
    purpose=None,  # the organisation's own files, as its database: no consent beyond monitoring
)


@hookimpl
def register_exporters(register):
    register(EXPORTER)
