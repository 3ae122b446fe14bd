"""Outbox throughput, observations per second in and out, against named peers in the same run:

* `jsonl+fsync`: a plain append-only JSON Lines file, fsync per batch (the simplest durable
  queue; "out" advances a persisted read offset, fsynced too);
* `sqlite NORMAL`: the same outbox with `synchronous = NORMAL` (what FULL's power-loss
  durability costs).

Two groups: `put` (100 observations per call, durable on return) and `cycle` (put 100,
peek 100, delete 100 - a reading's whole life in the outbox). The last test prints the rates
and the ratios to the telemon outbox (run with `-s` to see them; with --benchmark-disable
they are skipped).
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from telemon import wire
from telemon.codes import KNOWN
from telemon.models import Component, Observation
from telemon.outbox import Outbox

BATCH = 100
ROUNDS = 300
RESULTS: dict[tuple[str, str], tuple[float, float]] = {}  # (group, peer) -> (mean, median) s

_numbers = itertools.count()


def reading() -> Observation:
    """A blood-pressure reading as the BLE driver makes it (about 700 bytes of wire JSON)."""
    components = tuple(Component(code=KNOWN[k].code, unit="mm[Hg]", value=Decimal(v))
                       for k, v in (("bp_sys", 128), ("bp_dia", 84), ("bp_mean", 99)))
    return Observation(id="x", patient="pt-000042", device="bpm-a1b2c3", gateway="gw-7f3a2c",
                       code=KNOWN["bp"].code, unit="mm[Hg]", components=components,
                       effective=datetime(2026, 3, 1, 7, 45, tzinfo=UTC),
                       raw=bytes.fromhex("1e80005400630000ea07030107"
                                         "2d00480001"), context={"method": "self-measured"},
                       driver="ble_blood_pressure", driver_version="0.1.0")


TEMPLATE = reading()


def batch() -> tuple[tuple[list[Observation]], dict]:
    """A fresh batch (new ids), made outside the timed call."""
    return ([msgspec.structs.replace(TEMPLATE, id=f"obs-{next(_numbers)}")
             for _ in range(BATCH)],), {}


class JsonLines:
    """The peer: append-only JSON Lines, fsync per batch; a persisted offset marks what
    has been delivered."""

    def __init__(self, folder) -> None:
        self.log = open(folder / "queue.jsonl", "ab+")  # noqa: SIM115
        self.offset_path = folder / "offset"
        self.offset = 0

    def put(self, records: list[Observation]) -> None:
        self.log.write(b"".join(wire.encode(r) + b"\n" for r in records))
        self.log.flush()
        os.fsync(self.log.fileno())

    def peek(self, n: int) -> list[bytes]:
        self.log.seek(self.offset)
        return [self.log.readline() for _ in range(n)]

    def delete(self, lines: list[bytes]) -> None:
        self.offset += sum(len(line) for line in lines)
        with open(self.offset_path, "w") as f:
            f.write(str(self.offset))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.log.close()


@pytest.fixture
def outbox(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", max_megabytes=4096) as box:
        yield box


@pytest.fixture
def outbox_normal(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite", max_megabytes=4096) as box:
        box._db.execute("PRAGMA synchronous = NORMAL")
        yield box


@pytest.fixture
def jsonl(tmp_path):
    queue = JsonLines(tmp_path)
    yield queue
    queue.close()


def record(benchmark, group: str, peer: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[group, peer] = (stats.stats.mean, stats.stats.median)
        benchmark.extra_info["observations_per_second"] = round(BATCH / stats.stats.mean)


# --- put --------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="outbox put 100 observations")
def test_put_outbox(benchmark, outbox):
    benchmark.pedantic(outbox.put, setup=batch, rounds=ROUNDS)
    assert outbox.stats().depth >= BATCH
    record(benchmark, "put", "telemon outbox (FULL)")


@pytest.mark.benchmark(group="outbox put 100 observations")
def test_put_sqlite_normal(benchmark, outbox_normal):
    benchmark.pedantic(outbox_normal.put, setup=batch, rounds=ROUNDS)
    record(benchmark, "put", "sqlite NORMAL")


@pytest.mark.benchmark(group="outbox put 100 observations")
def test_put_jsonl_fsync(benchmark, jsonl):
    benchmark.pedantic(jsonl.put, setup=batch, rounds=ROUNDS)
    record(benchmark, "put", "jsonl+fsync")


# --- put, peek, delete ------------------------------------------------------------------------

def cycle(box: Outbox, records: list[Observation]) -> None:
    box.put(records)
    box.delete([entry.seq for entry in box.peek(BATCH)])


def cycle_jsonl(queue: JsonLines, records: list[Observation]) -> None:
    queue.put(records)
    queue.delete(queue.peek(BATCH))


@pytest.mark.benchmark(group="outbox put+peek+delete 100 observations")
def test_cycle_outbox(benchmark, outbox):
    benchmark.pedantic(cycle, setup=lambda: ((outbox, batch()[0][0]), {}), rounds=ROUNDS)
    assert outbox.stats().depth == 0
    record(benchmark, "cycle", "telemon outbox (FULL)")


@pytest.mark.benchmark(group="outbox put+peek+delete 100 observations")
def test_cycle_sqlite_normal(benchmark, outbox_normal):
    benchmark.pedantic(cycle, setup=lambda: ((outbox_normal, batch()[0][0]), {}),
                       rounds=ROUNDS)
    record(benchmark, "cycle", "sqlite NORMAL")


@pytest.mark.benchmark(group="outbox put+peek+delete 100 observations")
def test_cycle_jsonl_fsync(benchmark, jsonl):
    benchmark.pedantic(cycle_jsonl, setup=lambda: ((jsonl, batch()[0][0]), {}),
                       rounds=ROUNDS)
    record(benchmark, "cycle", "jsonl+fsync")


def test_report_ratios():
    """Print observations/s and the ratio of each peer to the telemon outbox."""
    if not RESULTS:
        pytest.skip("benchmarks disabled: no timings to compare")
    print()
    print("group  peer                   obs/s (mean)  obs/s (median)  ratio to the outbox "
          "(mean, median)")
    for group in ("put", "cycle"):
        ours = RESULTS.get((group, "telemon outbox (FULL)"))
        for (g, peer), (mean, median) in sorted(RESULTS.items()):
            if g != group:
                continue
            ratio = f"{ours[0] / mean:.2f}x, {ours[1] / median:.2f}x" if ours else ""
            print(f"{group:5}  {peer:22} {BATCH / mean:12,.0f}  {BATCH / median:14,.0f}  "
                  f"{ratio}")
