"""The edge outbox: durable, ordered, idempotent, bounded (refuse new, keep old, loudly)."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from telemon import wire
from telemon.codes import KNOWN
from telemon.models import Component, Observation, QuestionnaireResponse
from telemon.mqtt import batch_message
from telemon.outbox import Outbox, outbox_path

T0 = datetime(2026, 3, 1, 7, 45, tzinfo=UTC)


def obs(i: int, device: str = "dev-1", *, raw: bytes = b"\x01\x02", value: int = 95,
        prefix: str = "obs") -> Observation:
    return Observation(id=f"{prefix}-{i}", patient="pt-1", device=device, gateway="gw-1",
                       code=KNOWN["spo2"].code, unit="%", value=Decimal(value),
                       effective=T0 + timedelta(minutes=i), raw=raw, driver="sim",
                       driver_version="1")


@pytest.fixture
def outbox(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


def test_put_peek_delete(outbox):
    records = [obs(i) for i in range(5)]
    result = outbox.put(records)
    assert result.stored == tuple(r.id for r in records)
    assert result.accepted and not result.duplicates and not result.refused

    entries = outbox.peek(3)
    assert [e.id for e in entries] == ["obs-0", "obs-1", "obs-2"]
    assert [wire.decode(e.payload) for e in entries] == records[:3]  # the exact record
    assert outbox.peek(10, after=entries[-1].seq)[0].id == "obs-3"

    assert outbox.delete([entries[0].seq, entries[2].seq]) == 2
    assert [e.id for e in outbox.peek(10)] == ["obs-1", "obs-3", "obs-4"]
    assert outbox.delete([entries[0].seq]) == 0  # already gone
    stats = outbox.stats()
    assert (stats.depth, stats.delivered) == (3, 2)
    assert stats.last_delivery is not None and stats.oldest_stored is not None
    assert stats.payload_bytes == sum(len(e.payload) for e in outbox.peek(10))


def test_put_of_nothing_and_of_other_records(outbox):
    assert outbox.put([]).stored == ()
    qr = QuestionnaireResponse(id="qr-1", patient="pt-1", gateway="gw-1",
                               questionnaire="cat", version="1", authored=T0, answers=())
    assert outbox.put([qr]).stored == ("qr-1",)
    entry = outbox.peek(1)[0]
    assert entry.device == "" and wire.decode(entry.payload) == qr


def test_a_record_sent_again_is_stored_once(outbox):
    outbox.put([obs(0), obs(1)])
    result = outbox.put([obs(1), obs(2), obs(0)])
    assert result.stored == ("obs-2",)
    assert set(result.duplicates) == {"obs-0", "obs-1"}
    assert result.accepted
    assert [e.id for e in outbox.peek(10)] == ["obs-0", "obs-1", "obs-2"]


def test_order_is_kept_per_device_across_puts_and_after_emptying(outbox):
    rng = random.Random(3)
    sent: dict[str, list[str]] = {}
    for batch in range(20):
        records = [obs(batch * 10 + i, device=rng.choice(["a", "b", "c"])) for i in range(10)]
        outbox.put(records)
        for r in records:
            sent.setdefault(r.device, []).append(r.id)
    entries = outbox.peek(1000)
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    for device, ids in sent.items():
        assert [e.id for e in entries if e.device == device] == ids

    # the publisher's cursor relies on seq never being reused, even once the outbox is empty
    last = entries[-1].seq
    outbox.delete(e.seq for e in entries)
    outbox.put([obs(1000)])
    assert [e.id for e in outbox.peek(10, after=last)] == ["obs-1000"]


def test_survives_reopen_with_counters(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        box.put([obs(i) for i in range(10)])
        box.delete([e.seq for e in box.peek(4)])
        box.quarantine(source="driver:x", reason="too short", raw=b"\x00")
    with Outbox(path) as box:
        assert [e.id for e in box.peek(100)] == [f"obs-{i}" for i in range(4, 10)]
        stats = box.stats()
        assert (stats.depth, stats.delivered, stats.quarantined) == (6, 4, 1)
        box.put([obs(10)])
        assert box.peek(100)[-1].id == "obs-10"


def test_file_is_owner_only_wal_and_synchronous_full(tmp_path):
    path = outbox_path(tmp_path / "new" / "storage")
    with Outbox(path) as box:
        box.put([obs(0)])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        wal = path.with_name(path.name + "-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_existing_file_is_not_loosened(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    Outbox(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        Outbox(path)


def test_readonly_view(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with pytest.raises(FileNotFoundError, match="has the gateway run"):
        Outbox(path, readonly=True)
    with Outbox(path) as writer:
        writer.put([obs(0)])
        with Outbox(path, readonly=True) as reader:
            assert reader.stats().depth == 1
            with pytest.raises(PermissionError):
                reader.put([obs(1)])


def test_last_reading_per_device(outbox):
    bp = KNOWN["bp"]
    components = tuple(Component(code=KNOWN[k].code, unit="mm[Hg]", value=Decimal(v))
                       for k, v in (("bp_sys", 120), ("bp_dia", 80), ("bp_mean", 93)))
    pressure = Observation(id="bp-1", patient="pt-1", device="bpm", gateway="gw-1",
                           code=bp.code, unit="mm[Hg]", effective=T0, components=components)
    pulse = Observation(id="pulse-1", patient="pt-1", device="bpm", gateway="gw-1",
                        code=KNOWN["pulse_bp"].code, unit="/min", effective=T0,
                        value=Decimal(64))
    outbox.put([obs(0, "oxi"), obs(1, "oxi", value=97), pressure, pulse])
    readings = {(r.device, r.display): r for r in outbox.last_readings()}
    assert set(readings) == {("oxi", "SpO2"), ("bpm", "Blood pressure"),
                             ("bpm", "Pulse rate (BP monitor)")}
    oxi = readings["oxi", "SpO2"]
    assert (oxi.summary, oxi.readings, oxi.last_id) == ("97 %", 2, "obs-1")
    assert oxi.code == f"{KNOWN['spo2'].code.system}|{KNOWN['spo2'].code.code}"
    assert readings["bpm", "Blood pressure"].summary == "120/80/93 mm[Hg]"
    assert readings["bpm", "Pulse rate (BP monitor)"].summary == "64 /min"
    assert readings["bpm", "Blood pressure"].effective == T0
    outbox.put([obs(2, "oxi", value=91), obs(1, "oxi", value=97)])  # obs-1: sent again
    assert [(r.summary, r.readings) for r in outbox.last_readings() if r.device == "oxi"] == [
        ("91 %", 3)]


def test_quarantine_keeps_the_exact_bytes(outbox):
    raw = bytes(range(256))
    qid = outbox.quarantine(source="driver:ble_blood_pressure:bpm-1", reason="frame ends early",
                            raw=raw)
    [kept] = outbox.quarantined()
    assert (kept.id, kept.raw, kept.source, kept.reason) == (
        qid, raw, "driver:ble_blood_pressure:bpm-1", "frame ends early")
    assert outbox.stats().quarantined == 1
    assert outbox.peek(10) == []  # quarantine is never published


# --- the disk bound -----------------------------------------------------------------------

def fill(box: Outbox, raw_size: int = 2000) -> tuple[list[str], list[str]]:
    """Put batches of 10 until a put refuses something; (stored ids, refused ids)."""
    stored, refused, i = [], [], 0
    while not refused:
        result = box.put([obs(i + k, raw=os.urandom(raw_size)) for k in range(10)])
        stored += result.stored
        refused += result.refused
        i += 10
        assert i < 100_000, "the outbox never filled"
    return stored, refused


def test_full_outbox_keeps_what_it_has_and_refuses_new_readings_loudly(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_megabytes=0.5)
    stored, refused = fill(box)
    # nothing stored was dropped, and what was refused is exactly what is not there
    assert [e.id for e in box.peek(10_000)] == stored
    stats = box.stats()
    assert stats.full and box.is_full()
    assert stats.refused == len(refused)
    assert stats.used_bytes <= stats.max_bytes
    assert path.stat().st_size <= stats.max_bytes + 4 * 4096
    assert "outbox full" in caplog.text

    # new readings keep being refused (and counted); a reading already waiting is not
    again = box.put([obs(i, raw=os.urandom(2000)) for i in range(10**6, 10**6 + 40)])
    assert again.refused and again.refused == tuple(f"obs-{i}" for i in range(
        10**6 + len(again.stored), 10**6 + 40))
    assert box.put([obs(0, raw=b"")]).duplicates == ("obs-0",)
    assert [e.id for e in box.peek(10_000)][:len(stored)] == stored
    assert box.stats().refused > stats.refused

    # deliveries below 90 % of the bound clear the mark; then readings are taken again
    entries = box.peek(10_000)
    box.delete(e.seq for e in entries[: len(entries) // 2])
    assert not box.is_full() and box.stats().full_since is None
    assert box.put([obs(2 * 10**6, raw=os.urandom(2000))]).stored == ("obs-2000000",)
    box.close()


def test_a_refusal_stops_the_rest_of_the_put(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", max_megabytes=0.25) as box:
        fill(box, raw_size=1000)
        box.delete(e.seq for e in box.peek(3))  # room for a small reading, not a large one
        result = box.put([obs(10**6, raw=os.urandom(100_000)), obs(10**6 + 1)])
        # the small one would fit, but must not overtake the refused one of the same device
        assert result.refused == ("obs-1000000", "obs-1000001")


def test_a_larger_bound_clears_the_full_mark(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_megabytes=0.25) as box:
        fill(box)
        assert box.is_full()
    with Outbox(path, max_megabytes=0.25) as box:
        assert box.is_full()
    with Outbox(path, max_megabytes=1) as box:
        assert not box.is_full()
        assert box.put([obs(10**6)]).stored


def test_quarantine_when_full_counts_but_does_not_store(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", max_megabytes=0.25) as box:
        fill(box)
        assert box.quarantine(source="s", reason="r", raw=os.urandom(50_000)) is None
        stats = box.stats()
        assert (stats.quarantined, stats.quarantine_refused) == (0, 1)


# --- a killed writer ----------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from decimal import Decimal
    from telemon.codes import KNOWN
    from telemon.models import Observation
    from telemon.outbox import Outbox

    box = Outbox(sys.argv[1])
    start = int(sys.argv[2])
    t = datetime(2026, 3, 1, tzinfo=UTC)
    for batch in range(start, start + 100_000):
        box.put([Observation(id=f"w-{batch}-{k}", patient="pt-1", device="dev-1",
                             gateway="gw-1", code=KNOWN["spo2"].code, unit="%",
                             value=Decimal(95), effective=t, raw=bytes(200))
                 for k in range(50)])
        print(batch, flush=True)  # acknowledged: put has returned
""")


def test_a_killed_writer_loses_no_acknowledged_put_and_leaves_no_half_put(tmp_path):
    path = tmp_path / "outbox.sqlite"
    rng = random.Random(11)
    acknowledged: set[int] = set()
    start = 0
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)],
                                  stdout=subprocess.PIPE, text=True)
        lines = rng.randint(5, 60)
        for _ in range(lines):  # let it acknowledge a random number of puts, then kill it
            acknowledged.add(int(writer.stdout.readline()))
        writer.kill()
        writer.wait()
        acknowledged.update(int(line) for line in writer.stdout.read().split())
        writer.stdout.close()
        with Outbox(path) as box:
            ids = [e.id for e in box.peek(10**7)]
        batches = {}
        for id_ in ids:
            _, batch, k = id_.split("-")
            batches.setdefault(int(batch), []).append(int(k))
        assert acknowledged <= set(batches), "an acknowledged put was lost"
        assert all(ks == list(range(50)) for ks in batches.values()), "a put was half kept"
        assert len(batches) - len(acknowledged) <= 1  # at most the put being made when killed
        start = max(batches) + 1


def test_batch_message_is_the_wire_batch(outbox):
    records = [obs(i) for i in range(3)]
    outbox.put(records)
    message = batch_message([e.payload for e in outbox.peek(10)])
    assert message == wire.encode_batch(records)
    assert wire.decode_message(message).records == records
