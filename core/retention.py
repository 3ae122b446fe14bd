"""Retention: drop, after the organisation's time, what the central may drop (`[retention]`).

Two kinds, each off unless its key is set (telemon.config.RetentionConfig):

* `raw_after_days`: the raw device bytes of observations the central received more than N
  days ago are emptied - in the `raw` column and in the stored wire form alike, which also
  gets context["raw_removed"] = the UTC time of the run, so an empty `raw` that was removed
  is told apart from a device that sent none. The values, components, flags and context are
  kept: they are the clinical record. Waveforms (a pulse oximeter's pleth in every second's
  frames) are by far the largest part of a database, and raw bytes are what a vendor needs
  to check a parser, which is done in the first weeks or not at all.
* `quarantine_after_days`: quarantined input received more than N days ago is deleted (its
  bytes may hold personal data and it is kept for inspection, not as a record).

Never deleted: observations, questionnaire responses, evaluations, alarms and their events,
limits, consent events, the audit log. Rows of observations are updated in place, so their
rowids and the exporters' cursors (telemon.export) stay where they are; an exporter that is
behind delivers the stripped form. Ages count from `received` (the central's clock), not
`effective`: a device clock may be years off.

A run works in transactions of at most `batch_size` rows, each with its own `retention.run`
audit entry (kind, cut-off, rows, bytes, oldest and newest time affected; no patient), so a
run killed part-way leaves every change it made audited, and the next run does the rest.
A run is idempotent: what was removed no longer matches.

Disk space: the central's database is created without auto_vacuum and nothing here runs
VACUUM (it rewrites the whole file under an exclusive lock, stopping ingest). Freed pages go
to SQLite's free list and are reused by new data, so the file stops growing rather than
shrinks. If a database was created with `PRAGMA auto_vacuum = INCREMENTAL`, a run ends with
`PRAGMA incremental_vacuum`, which returns the free pages to the file system. Either way the
run has `secure_delete` on, so the removed bytes are overwritten with zeros rather than left
in free pages, and ends with a write-ahead-log checkpoint (TRUNCATE) so that no older copy
stays in the log (done only when no reader holds it; the report says whether it was).

The edge needs none of this: its outbox (telemon.outbox) deletes a reading as soon as the
broker has acknowledged it, and its quarantine is bounded by `[outbox] max_megabytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
import msgspec
import sqlite_utils

from telemon import admin, store, wire
from telemon.admin import (
    by_option,
    config_option,
    echo_table,
    local,
    open_central,
    reports_errors,
)
from telemon.config import RetentionConfig
from telemon.models import Observation

RAW = "observation-raw"
QUARANTINE = "quarantine"
DEFAULT_BATCH_SIZE = 1000  # rows per transaction: short enough not to hold up ingest


class RetentionError(RuntimeError):
    """A stored row retention cannot rewrite (a corrupt wire form); names it by rowid."""


@dataclass(frozen=True)
class Removal:
    """What was (or, in a dry run, would be) removed of one kind."""

    kind: str  # RAW or QUARANTINE
    cutoff: datetime  # rows received before this
    rows: int
    bytes: int  # raw device bytes emptied, or quarantined payload bytes deleted
    oldest: datetime | None  # received time of the oldest and newest row affected
    newest: datetime | None


@dataclass(frozen=True)
class Space:
    """The database's space after a run."""

    free_pages: int  # pages on SQLite's free list, reused by new data
    page_size: int
    incremental_vacuum: bool  # the free pages were returned to the file system
    log_truncated: bool  # the write-ahead log was checkpointed and truncated


def cutoffs(retention: RetentionConfig, now: datetime) -> dict[str, datetime]:
    """The cut-off time of each kind the policy sets (rows received before it go)."""
    days = {RAW: retention.raw_after_days, QUARANTINE: retention.quarantine_after_days}
    return {kind: now - timedelta(days=n) for kind, n in days.items() if n is not None}


# `length(raw)` of a blob column is read from the record header: the bytes are not loaded
_WHERE = {RAW: "received < ? AND length(raw) > 0", QUARANTINE: "received < ?"}
_TABLE = {RAW: "observations", QUARANTINE: "quarantine"}
_SIZE = {RAW: "length(raw)", QUARANTINE: "length(payload)"}


def plan(db: sqlite_utils.Database, retention: RetentionConfig, *,
         now: datetime | None = None) -> list[Removal]:
    """What a run would remove now, per kind the policy sets; changes nothing."""
    removals = []
    for kind, cutoff in cutoffs(retention, now or datetime.now(UTC)).items():
        rows, size, oldest, newest = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM({_SIZE[kind]}), 0), MIN(received), MAX(received) "
            f"FROM {_TABLE[kind]} WHERE {_WHERE[kind]}", [store.utc_text(cutoff)]).fetchone()
        removals.append(Removal(kind, cutoff, rows, size, _time(oldest), _time(newest)))
    return removals


def run(db: sqlite_utils.Database, retention: RetentionConfig, *, actor: str,
        now: datetime | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[str, int], None] | None = None) -> tuple[list[Removal], Space]:
    """Remove what the policy says is no longer kept, in audited transactions of at most
    `batch_size` rows; what was removed per kind, and the database's space after.
    `progress(kind, rows)` is called after each transaction."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not actor.strip():
        raise ValueError("a retention run needs the name of who runs it")
    admin.require(db, actor, "retention.run", "retention.run")
    now = now or datetime.now(UTC)
    removals = []
    secure_delete = db.execute("PRAGMA secure_delete").fetchone()[0]
    db.execute("PRAGMA secure_delete = ON")  # removed bytes are zeroed, not left on disk
    try:
        for kind, cutoff in cutoffs(retention, now).items():
            batches = []
            while batch := _remove_batch(db, kind, cutoff, now, actor, batch_size):
                batches.append(batch)
                if progress:
                    progress(kind, batch.rows)
            removals.append(Removal(
                kind, cutoff, sum(b.rows for b in batches), sum(b.bytes for b in batches),
                min((b.oldest for b in batches if b.oldest), default=None),
                max((b.newest for b in batches if b.newest), default=None)))
        return removals, _reclaim(db)
    finally:
        db.execute(f"PRAGMA secure_delete = {('OFF', 'ON', 'FAST')[secure_delete]}")


def _remove_batch(db: sqlite_utils.Database, kind: str, cutoff: datetime, now: datetime,
                  actor: str, batch_size: int) -> Removal | None:
    """Remove one batch of a kind in one transaction with its audit entry; None when no
    row is left. Each batch starts from the lowest matching rowid: done rows no longer
    match, so the query needs no cursor."""
    with store.transaction(db):
        rows = db.execute(
            f"SELECT rowid, {_SIZE[kind]}, received FROM {_TABLE[kind]} "
            f"WHERE {_WHERE[kind]} ORDER BY rowid LIMIT ?",
            [store.utc_text(cutoff), batch_size]).fetchall()
        if not rows:
            return None
        rowids = [rowid for rowid, _, _ in rows]
        if kind == RAW:
            _empty_raw(db, rowids, store.utc_text(now))
        else:
            db.conn.executemany("DELETE FROM quarantine WHERE rowid = ?",
                                [(rowid,) for rowid in rowids])
        received = [text for _, _, text in rows]
        removal = Removal(kind, cutoff, len(rows), sum(size for _, size, _ in rows),
                          _time(min(received)), _time(max(received)))
        admin.audit(db, actor=actor, action="retention.run", kind=kind,
                    cutoff=store.utc_text(cutoff), rows=removal.rows, bytes=removal.bytes,
                    oldest=min(received), newest=max(received))
    return removal


def _empty_raw(db: sqlite_utils.Database, rowids: list[int], removed_at: str) -> None:
    """Empty the raw bytes of these observations in both the column and the wire form."""
    updates = []
    for rowid in rowids:
        (text,) = db.execute("SELECT wire FROM observations WHERE rowid = ?", [rowid]).fetchone()
        try:
            record = wire.decode(text.encode())
        except wire.WireError as exc:
            raise RetentionError(f"observations row {rowid}: its stored wire form cannot be "
                                 f"decoded ({exc}); nothing of this batch was changed") from None
        if not isinstance(record, Observation):
            raise RetentionError(f"observations row {rowid}: its stored wire form is a "
                                 f"{type(record).__name__}, not an observation")
        stripped = msgspec.structs.replace(
            record, raw=b"", context={**record.context, "raw_removed": removed_at})
        updates.append((msgspec.json.encode(stripped.context).decode(),
                        wire.encode(stripped).decode(), rowid))
    db.conn.executemany("UPDATE observations SET raw = X'', context = ?, wire = ? "
                        "WHERE rowid = ?", updates)


def _reclaim(db: sqlite_utils.Database) -> Space:
    """Return free pages to the file system when the database allows it, and checkpoint
    and truncate the write-ahead log (see the module's docstring)."""
    incremental = db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # 2: INCREMENTAL
    if incremental:
        # Python's sqlite3 steps this pragma once, and each step frees one page: so one
        # execution per free page, in one transaction (one sync, not one per page)
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        with store.transaction(db):
            for _ in range(free):
                db.execute("PRAGMA incremental_vacuum(1)")
    busy = 0
    if db.journal_mode == "wal":
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return Space(free_pages=db.execute("PRAGMA freelist_count").fetchone()[0],
                 page_size=db.execute("PRAGMA page_size").fetchone()[0],
                 incremental_vacuum=incremental,
                 log_truncated=db.journal_mode == "wal" and busy == 0)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# --- command line -----------------------------------------------------------------------------


KIND_NAMES = {RAW: "raw device bytes of observations", QUARANTINE: "quarantined input"}


@click.group(name="retention")
def retention_command() -> None:
    """Remove what the organisation's [retention] policy no longer keeps."""


@retention_command.command(name="run")
@config_option
@click.option("--dry-run", is_flag=True,
              help="Only show what would be removed (rows, bytes, oldest and newest).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Rows per transaction (each audited).")
@by_option
@reports_errors
def retention_run(config_path: str, dry_run: bool, batch_size: int, actor: str) -> None:
    """Empty old observations' raw device bytes (keeping their values) and delete old
    quarantined input, as [retention] in the config says. Times are shown in the central's
    time zone."""
    with open_central(config_path) as central:
        retention, zone = central.config.retention, central.config.timezone
        if not cutoffs(retention, datetime.now(UTC)):
            click.echo(f"{config_path}: [retention] sets neither raw_after_days nor "
                       "quarantine_after_days: nothing is removed")
            return
        if dry_run:
            removals, space = plan(central.db, retention), None
        else:
            def progress(kind: str, rows: int) -> None:
                click.echo(f"{KIND_NAMES[kind]}: {rows} row(s) done", err=True)

            removals, space = run(central.db, retention, actor=actor, batch_size=batch_size,
                                  progress=progress)
    echo_table(("KIND", "RECEIVED BEFORE", "ROWS", "BYTES", "OLDEST", "NEWEST"), [
        (KIND_NAMES[r.kind], local(r.cutoff, zone), str(r.rows), str(r.bytes),
         local(r.oldest, zone), local(r.newest, zone)) for r in removals])
    if space is None:
        click.echo("dry run: nothing was changed")
        return
    freed = space.free_pages * space.page_size
    click.echo("space: " + (
        "returned to the file system (incremental vacuum)" if space.incremental_vacuum
        else f"{freed} byte(s) in free pages, reused by new data (the file does not shrink)"))
    if not space.log_truncated:
        click.echo("write-ahead log not truncated (another process is reading): it is "
                   "overwritten by later checkpoints", err=True)
