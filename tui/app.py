"""The monitoring nurse's dashboard: `telemon tui --config central.toml [--as NURSE]`.

The app owns the work that is not on screen, in worker threads (each opens its own database
connection: SQLite's rule):

* `follow_database` reads the overview once, then polls the database (`PRAGMA data_version`,
  every `poll` seconds: a cheap read) and reads again only the rows of patients something was
  committed about (telemon.nursing.OverviewFeed), so a new red is on screen well within a
  second without the nurse touching anything.
* `follow_broker` subscribes to the organisation's alarms topic; an alarm message wakes the
  database poll at once. Without a broker the dashboard works the same from the database.
* `save_action` saves what the nurse does (acknowledge, resolve, assign, contacted, limits,
  greens reviewed) through telemon.alarms / telemon.admin / telemon.nursing, each audited
  with the nurse's name (acknowledge and resolve with a required note: the why). Another
  nurse's earlier action is reported, never overwritten; an action the nurse's role lacks
  the right to (telemon.roles) is refused there, audited, and said like any other error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import click
import paho.mqtt.client as paho
import sqlite_utils
from textual import work
from textual.app import App
from textual.binding import Binding, BindingType

from telemon import admin, alarms, mqtt, nursing, plugin_manager, store, wire
from telemon.backoff import Backoff
from telemon.config import CentralConfig, load_or_exit
from telemon.models import Alarm, Triage, new_id
from telemon.modules import DiseaseModule
from telemon.tui.messages import (
    ActionDone,
    BrokerStatus,
    DatabaseStatus,
    OverviewChanged,
    OverviewLoaded,
)
from telemon.tui.screens.dialogs import ConfirmDialog, LimitsChange, LimitsDialog, NoteDialog
from telemon.tui.screens.help import HelpScreen
from telemon.tui.screens.overview import OverviewScreen
from telemon.tui.screens.patient import PatientScreen
from telemon.tui.widgets.status import StatusBar
from telemon.tui.widgets.triage_table import LABELS

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
"""How often the database is asked whether anything was committed (PRAGMA data_version)."""
RETRY_SECONDS = 2.0
"""How soon a database that could not be read is tried again."""
LOCK_WAIT_MS = 250
"""How long the overview's reads wait for a lock before the dashboard says the database is
locked (and tries again): short, so the nurse sees it at once."""


class DashboardApp(App):
    """The nurse's dashboard over one central database."""

    TITLE = "telemon"
    ENABLE_COMMAND_PALETTE = False  # every command has its key (the help screen lists them)
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        # Ctrl-C quits too (Textual's default only says how to quit): over SSH it is what
        # people press; not a priority binding, so a text field still copies with it
        Binding("ctrl+c", "quit", "Quit", show=False),
    ]

    def __init__(self, config: CentralConfig, *, nurse: str,
                 modules: Mapping[str, DiseaseModule], database: str | None = None,
                 clock: Callable[[], datetime] | None = None, poll: float = POLL_SECONDS,
                 broker: bool = True) -> None:
        super().__init__()
        if not nurse.strip():
            raise ValueError("the dashboard needs the nurse's name")
        self.config, self.nurse, self.modules = config, nurse.strip(), modules
        self.database = database or os.path.join(config.storage.path, store.CENTRAL_DATABASE)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.zone = config.timezone
        self.poll, self.use_broker = poll, broker
        self.database_problem: str | None = None
        self.broker_connected = False
        self.broker_text = "connecting" if broker else "off (working from the database)"
        self.counts_text = "reading the database"
        self.loaded = threading.Event()  # the overview has been read once (tests, benchmark)
        self._stop = threading.Event()
        self._wake = threading.Event()

    def on_mount(self) -> None:
        self._overview = OverviewScreen()
        self.push_screen(self._overview)
        self.follow_database()
        if self.use_broker:
            self.follow_broker()

    def on_unmount(self) -> None:
        self._stop.set()
        self._wake.set()

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite_utils.Database]:
        """A connection of this thread's own, closed afterwards."""
        db = nursing.open_existing(self.database)  # waits up to 5 s for a lock (store)
        try:
            yield db
        finally:
            db.close()

    # --- following the database and the broker -----------------------------------------------

    @work(thread=True, group="database", exit_on_error=False)
    def follow_database(self) -> None:
        db: sqlite_utils.Database | None = None
        feed: nursing.OverviewFeed | None = None
        while not self._stop.is_set():
            try:
                if db is None or feed is None:
                    db = nursing.open_existing(self.database)
                    db.execute(f"PRAGMA busy_timeout = {LOCK_WAIT_MS}")
                    if not self.loaded.is_set():  # the names of every patient: a read of
                        # personal data, checked and audited as `telemon patient list` is
                        admin.require(db, self.nurse, "patient.read", "dashboard.open")
                    feed = nursing.OverviewFeed(db)
                    rows = feed.load()
                    if not self.loaded.is_set():
                        admin.audit(db, actor=self.nurse, action="dashboard.open",
                                    patients=len(rows))
                    self.post_message(OverviewLoaded(rows))
                    self.post_message(DatabaseStatus(None))
                else:
                    change = feed.poll()
                    if isinstance(change, list):
                        self.post_message(OverviewLoaded(change))
                    elif change is not None:
                        self.post_message(OverviewChanged(change))
                    if self.database_problem:
                        self.post_message(DatabaseStatus(None))
            except admin.Refused as exc:  # shown; not tried again (each try is audited)
                self.post_message(DatabaseStatus(str(exc)))
                return
            except Exception as exc:  # sqlite3.Error, DatabaseMissing; a bug too: shown, retried
                if not isinstance(exc, (sqlite3.Error, nursing.DatabaseMissing)):
                    logger.exception("reading the overview failed")
                self.post_message(DatabaseStatus(nursing.readable_error(exc)))
                if db is not None:
                    with contextlib.suppress(sqlite3.Error):
                        db.close()
                db = feed = None
                self._stop.wait(RETRY_SECONDS)
                continue
            self._wake.wait(self.poll)
            self._wake.clear()
        if db is not None:
            db.close()

    @work(thread=True, group="broker", exit_on_error=False)
    def follow_broker(self) -> None:
        broker = self.config.broker
        topic = mqtt.alarms_topic(self.config.organisation)
        name = re.sub(r"[^A-Za-z0-9._:-]", "_", self.nurse)[:30]
        client_id = f"dashboard-{name}-{new_id()[-12:]}"  # one per dashboard
        where = f"{broker.host}:{broker.port}"
        try:
            client = mqtt.make_client(broker, client_id)
        except (LookupError, OSError) as exc:  # the password's variable or file is missing
            self.post_message(BrokerStatus(False, f"cannot log in: {exc}"))
            return

        def on_connect(client: paho.Client, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Any) -> None:
            if reason.is_failure:
                self.post_message(BrokerStatus(False, f"{where} refused: {reason}"))
                return
            client.subscribe(topic, qos=1)
            self.post_message(BrokerStatus(True, f"live from {where}"))

        def on_disconnect(*_args: Any) -> None:
            self.post_message(BrokerStatus(False, f"{where} disconnected; the dashboard "
                                                  "reads the database"))

        def on_message(_client: paho.Client, _userdata: Any, message: Any) -> None:
            with contextlib.suppress(Exception):  # only a wake-up: the database says what
                if isinstance(wire.decode(message.payload), Alarm):
                    self._wake.set()

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_message = on_message
        backoff, connected = Backoff(0.5, 30.0), False
        while not self._stop.is_set():
            if not connected:
                # a session of its own that ends with the dashboard (expiry 0)
                try:
                    client.connect(**mqtt.connect_arguments(broker, session_expiry=0))
                    connected = True
                    backoff.reset()
                except OSError as exc:
                    self.post_message(BrokerStatus(
                        False, f"{where} unreachable ({exc.strerror or exc}); the dashboard "
                               "reads the database"))
                    self._stop.wait(backoff.next())
                    continue
            if client.loop(0.2) != paho.MQTT_ERR_SUCCESS:
                connected = False
                self._stop.wait(backoff.next())
        with contextlib.suppress(Exception):
            client.disconnect()

    def on_overview_loaded(self, message: OverviewLoaded) -> None:
        self._overview.table.replace(message.rows)
        self._overview.loaded()
        self._counts_changed()
        self.loaded.set()

    def on_overview_changed(self, message: OverviewChanged) -> None:
        reds = [row for row in self._overview.table.apply(message.change)
                if row.triage == Triage.RED]
        if reds:
            self.bell()
        if len(reds) > 2:  # a burst (the central catching up): one message, not a pile
            self.notify(f"{len(reds)} patients turned red: "
                        f"{', '.join(row.patient for row in reds)}", title="New red",
                        severity="error", timeout=8)
        else:
            for row in reds:
                self.notify(f"{LABELS[row.triage]}: {row.patient} {row.display_name}: "
                            f"{row.message}", title="New red", severity="error", timeout=8)
        self._counts_changed()
        for screen in self.screen_stack:
            if isinstance(screen, PatientScreen) and screen.patient in message.change.patients:
                screen.reload()

    def on_database_status(self, message: DatabaseStatus) -> None:
        self.database_problem = message.problem
        if message.problem and not self._overview.table.rows:
            self._overview.table.empty_text = (f"Cannot read the central database: "
                                               f"{message.problem}")
            self._overview.table.refresh()
        self._refresh_status()

    def on_broker_status(self, message: BrokerStatus) -> None:
        self.broker_connected, self.broker_text = message.connected, message.detail
        self._refresh_status()

    def _counts_changed(self) -> None:
        counts = Counter(row.triage for row in self._overview.table.rows.values())
        self.counts_text = " ".join(f"{counts[t]} {LABELS[t].lower()}" for t in
                                    (Triage.RED, Triage.YELLOW, Triage.MISSING, Triage.GREEN))
        self._refresh_status()

    def _refresh_status(self) -> None:
        for screen in self.screen_stack:
            for bar in screen.query(StatusBar):
                bar.refresh()

    # --- actions ------------------------------------------------------------------------------

    @work(thread=True, group="actions", exit_on_error=False)
    def save_action(self, action: Callable[[sqlite_utils.Database], str]) -> None:
        """Save one action on a connection of its own; say what was done, or why not."""
        try:
            with self.connect() as db:
                text = action(db)
        except (alarms.AlarmConflict, admin.AdminError) as exc:
            self.post_message(ActionDone(str(exc), error=True))
        except sqlite3.Error as exc:
            self.post_message(ActionDone(f"not saved: {nursing.readable_error(exc)}; try "
                                         "again", error=True))
        except Exception as exc:  # a bug: said, not swallowed by the worker
            logger.exception("action failed")
            self.post_message(ActionDone(f"not saved: unexpected error {exc!r}", error=True))
        else:
            self.post_message(ActionDone(text))
        self._wake.set()  # show it now

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="error" if message.error else "information",
                    timeout=6 if message.error else 3)

    def acknowledge(self, alarm_id: str, patient: str, describe: str) -> None:
        """Ask for a note, then acknowledge the alarm (AlarmConflict: someone was first)."""
        def save(note: str | None) -> None:
            def acknowledge(db: sqlite_utils.Database) -> str:
                alarms.acknowledge(db, alarm_id, by=self.nurse, note=note or "")
                return f"acknowledged {patient}'s alarm"
            if note is not None:
                self.save_action(acknowledge)
        self.push_screen(NoteDialog(f"Acknowledge the alarm of {patient}", describe,
                                    placeholder="why, what you do (required)", required=True),
                         save)

    def resolve(self, alarm_id: str, patient: str, describe: str) -> None:
        """Ask for a note, then resolve the alarm."""
        def save(note: str | None) -> None:
            def resolve(db: sqlite_utils.Database) -> str:
                alarms.resolve(db, alarm_id, by=self.nurse, note=note or "")
                return f"resolved {patient}'s alarm"
            if note is not None:
                self.save_action(resolve)
        self.push_screen(NoteDialog(f"Resolve the alarm of {patient}", describe,
                                    placeholder="why it is resolved (required)",
                                    required=True), save)

    def toggle_assignment(self, patient: str, assigned_to: str | None) -> None:
        """Assign the patient to me, or release them if they are mine."""
        if assigned_to == self.nurse:
            def release(db: sqlite_utils.Database) -> str:
                nursing.release(db, patient, nurse=self.nurse)
                return f"{patient} released"
            self.save_action(release)
        else:
            def assign(db: sqlite_utils.Database) -> str:
                nursing.assign(db, patient, nurse=self.nurse)
                return f"{patient} assigned to you"
            self.save_action(assign)

    def contacted(self, patient: str) -> None:
        """Ask for a note, then mark the patient contacted."""
        def save(note: str | None) -> None:
            def mark(db: sqlite_utils.Database) -> str:
                nursing.mark_contacted(db, patient, nurse=self.nurse, note=note or "")
                return f"{patient} marked contacted"
            if note is not None:
                self.save_action(mark)
        self.push_screen(NoteDialog(f"Mark {patient} contacted", "How, and what was agreed?",
                                    placeholder="e.g. phoned, advised rescue pack"), save)

    @work(thread=True, group="actions", exit_on_error=False)
    def edit_limits(self, patient: str) -> None:
        """Read the limits in force for the patient's codes, then open the limits dialog."""
        try:
            with self.connect() as db:
                choices = nursing.limit_choices(db, self.config, self.modules, patient)
        except Exception as exc:  # unknown patient, database trouble; a bug is said too
            self.post_message(ActionDone(nursing.readable_error(exc), error=True))
            return

        def save(change: LimitsChange | None) -> None:
            if change is not None:
                self.save_action(lambda db: self._save_limits(db, patient, change))
        self.call_from_thread(self.push_screen, LimitsDialog(patient, choices), save)

    def _save_limits(self, db: sqlite_utils.Database, patient: str,
                     change: LimitsChange) -> str:
        version = admin.set_limits(db, patient=patient, code_key=change.key,
                                   limits=change.limits, reason=change.reason,
                                   actor=self.nurse)
        return (f"{patient} {change.key}: limits version {version.version}: "
                f"{admin.describe_limits(change.limits)}")

    def review_greens(self, shown: dict[str, int]) -> None:
        """Ask, then mark the shown green patients' readings reviewed."""
        if not shown:
            self.notify("no green patient here has new readings to review")
            return

        def review(db: sqlite_utils.Database) -> str:
            outcome = nursing.review_green(db, shown, nurse=self.nurse)
            text = f"{len(outcome.reviewed)} green patient(s) reviewed"
            if outcome.skipped:
                reasons = Counter(outcome.skipped.values())
                text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in reasons.items())
            return text

        def save(yes: bool | None) -> None:
            if yes:
                self.save_action(review)
        self.push_screen(ConfirmDialog(
            f"Mark the new readings of {len(shown)} green patient(s) reviewed?"), save)

    # --- screens ------------------------------------------------------------------------------

    def open_patient(self, patient: str) -> None:
        self.push_screen(PatientScreen(patient))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


# --- the command ------------------------------------------------------------------------------


@click.command(name="tui")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              metavar="CENTRAL_TOML", help="The central's config (its storage.path holds the "
                                           "database).")
@click.option("--as", "nurse", metavar="NURSE", default=admin._default_actor,
              callback=admin._nonblank_actor, show_default="$TELEMON_USER, else the login name",
              help="Who is working (every action is audited with this name).")
def tui_command(config_path: str, nurse: str) -> None:
    """The monitoring nurse's dashboard: triage overview, patients, alarms, limits."""
    config = load_or_exit(config_path, CentralConfig)
    database = os.path.join(config.storage.path, store.CENTRAL_DATABASE)
    if not os.path.exists(database):
        raise click.ClickException(f"no central database at {database}: start the central "
                                   "(telemon central) or check storage.path in the config")
    _, registry = plugin_manager.get()
    DashboardApp(config, nurse=nurse, modules=registry.modules, database=database).run()
