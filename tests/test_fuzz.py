"""Bad input at every boundary, property-based (hypothesis): every driver's parser, every
serial framer, the wire decoder, the config loader and the central's ingest, on random and on
mutated valid inputs. What each boundary must do is in fuzz/targets.py (shared with the long
coverage-guided run, fuzz/run.py, documented in docs/fuzzing.md): reject with a reason, or
accept; a check raises `Violation` (or the boundary's own exception escapes) otherwise.

Examples are derandomized, so the suite is deterministic; the long run explores further.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from datetime import UTC

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemon import wire

sys.path.insert(0, str(ROOT))
from fuzz import targets  # a folder at the repo root (not installed): see docs/fuzzing.md

FAST = settings(derandomize=True, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
PARSERS = targets.parsers()
FRAMERS = targets.framers()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A valid input with a few bytes flipped, inserted, deleted, or the end cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        at = draw(st.integers(0, len(data)))
        if operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "cut":
            del data[at:]
        elif at < len(data):
            if operation == "flip":
                data[at] ^= draw(st.integers(1, 255))
            else:
                del data[at]
    return bytes(data)


# --- driver parsers ---------------------------------------------------------------------------

def test_the_seeds_are_accepted():
    """The valid inputs the mutations start from are accepted: the checks can tell."""
    for driver in PARSERS.values():
        seeds = targets.parser_seeds(driver)
        assert seeds, f"{driver.name} has no valid frame to start from"
        for seed in seeds:
            ctx, frame = targets.context_from_bytes(driver, seed)
            assert driver.parse(frame, ctx), driver.name
            assert targets.check_parser(driver, frame, ctx) == []


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_parser_returns_observations_or_a_reason(name):
    driver = PARSERS[name]
    contexts = st.builds(
        lambda source, features: dataclasses.replace(targets.CONTEXT, source=source,
                                                     features=features),
        st.sampled_from(targets.sources(driver)),
        st.dictionaries(st.sampled_from(targets.FEATURE_UUIDS), st.binary(max_size=6)))

    @FAST
    @given(frame=st.binary(max_size=48), ctx=contexts)
    def random_frames(frame, ctx):
        targets.check_parser(driver, frame, ctx)

    @FAST
    @given(data=mutated(targets.parser_seeds(driver)))
    def mutated_frames(data):
        ctx, frame = targets.context_from_bytes(driver, data)
        targets.check_parser(driver, frame, ctx)

    random_frames()
    mutated_frames()


def test_a_parser_violation_is_caught():
    """A parser that crashes, rejects without a reason, or returns another patient's
    observation fails the check."""
    driver = PARSERS["ble_weight_scale"]
    frame = targets.context_from_bytes(driver, targets.parser_seeds(driver)[0])[1]

    def crashes(frame, ctx):
        return frame[99]

    def mute(frame, ctx):
        raise targets.FrameError(" ")

    def wrong_patient(frame, ctx):
        return driver.parse(frame, dataclasses.replace(ctx, patient="p-0002"))

    for broken, error in ((crashes, IndexError), (mute, targets.Violation),
                          (wrong_patient, targets.Violation)):
        with pytest.raises(error):
            targets.check_parser(dataclasses.replace(driver, parse=broken), frame,
                                 targets.CONTEXT)


# --- serial framers ---------------------------------------------------------------------------

@st.composite
def chunked(draw, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@pytest.mark.parametrize("name", sorted(FRAMERS))
def test_a_framer_never_raises_loses_or_hoards_bytes(name):
    driver = FRAMERS[name]
    seeds = targets.stream_seeds(driver)

    @settings(FAST, max_examples=40)
    @given(data=st.data())
    def streams(data):
        stream = data.draw(st.one_of(st.binary(max_size=600), mutated(seeds)))
        targets.check_framer(driver, data.draw(chunked(stream)))

    assert targets.check_framer(driver, [seeds[0]]) == []  # a valid second: no rejection
    streams()


@pytest.mark.parametrize("name", sorted(FRAMERS))
def test_a_framer_fed_noise_stays_bounded(name):
    """64 KiB of noise, then a valid second: bounded all along, every byte accounted for,
    and the valid data still comes through after the noise."""
    noise = bytes((i * 167 + (i >> 7) * 13) % 256 for i in range(64 * 1024))
    stream = noise + targets.stream_seeds(FRAMERS[name])[0] * 2
    reasons = targets.check_framer(FRAMERS[name], [stream[i:i + 997]
                                                   for i in range(0, len(stream), 997)])
    assert reasons, "noise must be reported"
    framer = FRAMERS[name].stream.framer()
    frames = [item for item in framer.feed(stream) + framer.flush()
              if isinstance(item, bytes)]
    assert frames, f"{name}: nothing framed after the noise"


# --- the wire form ----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)


@st.composite
def bent_messages(draw) -> bytes:
    """A valid message with one field of one record replaced, removed or added."""
    message = json.loads(draw(st.sampled_from(targets.wire_seeds())))
    record = draw(st.sampled_from(message.get("items") or [message]))
    key = draw(st.sampled_from([*record, "extra"]))
    if draw(st.booleans()):
        record.pop(key, None)
    else:
        record[key] = draw(JSON_VALUES)
    return json.dumps(record if draw(st.booleans()) else message).encode()


@FAST
@given(payload=st.binary(max_size=200) | mutated(targets.wire_seeds()) | bent_messages())
def test_the_wire_decoder_never_raises(payload):
    targets.check_wire(payload)


def test_a_string_that_is_not_utf8_is_a_wire_error():
    """Found by fuzz/run.py: msgspec raised UnicodeDecodeError out of decode_message."""
    bad_item = b'{"type":"observation","v":1,"id":"\xff"}'
    for payload, path in ((b'{"type":"obs\x9e"}', "$"),
                          (b'{"type":"batch","v":1,"items":[' + bad_item + b"]}", "$.items[0]")):
        [error] = wire.decode_message(payload).errors
        assert "not valid UTF-8" in error.reason and error.path == path


# --- the config loader ------------------------------------------------------------------------

TOML_VALUES = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
    | st.datetimes(timezones=st.just(UTC) | st.none()) | st.dates() | st.times(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                               max_size=4),
    max_leaves=16)


@st.composite
def bent_configs(draw) -> dict:
    """A valid config with values replaced, keys removed or added, at any depth."""
    config = tomllib.loads(draw(st.sampled_from(targets.config_seeds(ROOT / "tmp"))).decode())
    for _ in range(draw(st.integers(1, 4))):
        table = config
        while (keys := [k for k, v in table.items() if isinstance(v, dict)]) and draw(
                st.booleans()):
            table = table[draw(st.sampled_from(keys))]
        key = draw(st.sampled_from([*table, "surplus"]))
        if draw(st.integers(0, 3)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(TOML_VALUES)
    return config


@FAST
@given(data=st.dictionaries(st.text(max_size=10), TOML_VALUES, max_size=6) | bent_configs())
def test_config_validate_never_raises_and_names_every_key(data):
    targets.check_validate(data)


@settings(FAST, max_examples=80)
@given(content=st.binary(max_size=300) | mutated(targets.config_seeds(ROOT / "tmp")))
def test_config_read_gives_a_dict_or_a_config_error(tmp_path, content):
    targets.check_read(tmp_path / "fuzz.toml", content)


def test_a_valid_config_has_no_problems(tmp_path):
    for seed in targets.config_seeds(tmp_path):
        assert targets.check_read(tmp_path / "ok.toml", seed) == []


# --- the central's ingest ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def ingest(tmp_path_factory):
    opened = targets.Ingest.open(tmp_path_factory.mktemp("central"))
    yield opened
    opened.close()


@st.composite
def mixed_batches(draw) -> bytes:
    """A batch of good readings, readings of unbound patients or other gateways, and junk."""
    items = []
    for number in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(("good", "unbound", "stranger", "junk")))
        if kind == "junk":
            items.append(draw(JSON_VALUES))
            continue
        patient, gateway = {"good": ("p-0001", "gw-1"), "unbound": ("p-0002", "gw-1"),
                            "stranger": ("p-0009", "gw-1")}[kind]
        record = targets.observation(patient, gateway, draw(st.integers(0, 10_000)) + number)
        items.append(json.loads(wire.encode(record)))
    return json.dumps({"type": "batch", "v": 1, "items": items}).encode()


@settings(FAST, max_examples=150)
@given(topic=st.sampled_from(targets.TOPICS),
       payload=st.binary(max_size=200) | mutated(targets.wire_seeds()) | bent_messages()
       | mixed_batches())
def test_the_central_quarantines_every_rejection(ingest, topic, payload):
    targets.check_ingest(ingest, topic, payload)


def test_a_mixed_batch_keeps_the_good_and_quarantines_each_bad_item(ingest):
    good = [targets.observation("p-0001", "gw-1", 90_000 + n, value) for n, value
            in enumerate(("95", "91"))]
    unbound = targets.observation("p-0002", "gw-1", 90_010)
    other_gateway = targets.observation("p-0001", "gw-2", 90_011)
    items = [json.loads(wire.encode(r)) for r in (*good, unbound, other_gateway)]
    items.append({"type": "observation", "v": 1, "id": "x"})
    payload = json.dumps({"type": "batch", "v": 1, "items": items}).encode()
    before = ingest.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
    reasons = targets.check_ingest(ingest, targets.TOPICS[0], payload)
    assert len(reasons) == 3
    assert any("not bound to gateway gw-1" in r for r in reasons)
    assert any("names gateway gw-2" in r for r in reasons)
    assert any("invalid wire form" in r for r in reasons)
    assert ingest.db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == before + 3
    stored = {row[0] for row in ingest.db.execute("SELECT id FROM observations")}
    assert {o.id for o in good} <= stored and unbound.id not in stored

