"""Serial pulse oximeters: Nonin data formats 2, 7, 8 and the Contec CMS50D+ (old and new
firmware). Framers and parsers on recorded and hand-assembled streams, documented byte by
byte; random chunking, corruption, garbage and arbitrary bytes; and a real pty read with
pyserial at each driver's serial settings."""

from __future__ import annotations

import os
import select
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemon.codes import KNOWN
from telemon.drivers import FrameError, ParseContext
from telemon.models import AbsentReason
from telemon.plugins.drivers import serial_contec as contec
from telemon.plugins.drivers import serial_nonin as nonin

CTX = ParseContext(patient="p-0001", device="oxi-1", gateway="gw-0001",
                   received=datetime(2026, 3, 1, 9, 0, tzinfo=UTC), source="/dev/ttyUSB0")
SPO2, PULSE = KNOWN["spo2"].code, KNOWN["pulse"].code


# ----------------------------------------------------------------------------- builders


def nonin_frame(fmt: int, status: int, value: int, pleth: int = 0x0140) -> bytes:
    """Format 2: 01 | STATUS | PLETH | FLOAT | CHK. Format 7: STATUS | PLETH MSB | PLETH LSB |
    FLOAT | CHK. CHK = sum of the first four bytes mod 256."""
    if fmt == 2:
        body = bytes([0x01, status, pleth & 0xFF, value])
    else:
        body = bytes([status, pleth >> 8 & 0xFF, pleth & 0xFF, value])
    return body + bytes([sum(body) & 0xFF])


def nonin_packet(fmt: int, *, spo2: int = 97, hr: int = 72, status: int = 0x80,
                 stat2: int = 0x00, firmware: int = 0x29) -> bytes:
    """25 frames; FLOAT bytes: 0 HR MSB (HR bits 8-7), 1 HR LSB (bits 6-0), 2 SpO2,
    3 firmware revision, 7 STAT2, and the display/extended copies a device sends too.
    SYNC (status bit 0) on frame 0 only."""
    floats = [0] * nonin.FRAMES_PER_PACKET
    floats[0], floats[1], floats[2], floats[3], floats[7] = (
        hr >> 7 & 0x03, hr & 0x7F, spo2, firmware, stat2)
    for k in (8, 9, 10, 15, 16):
        floats[k] = spo2
    for msb, lsb in ((13, 14), (19, 20), (21, 22)):
        floats[msb], floats[lsb] = floats[0], floats[1]
    return b"".join(nonin_frame(fmt, status | (1 if k == 0 else 0), floats[k], 0x0140 + 7 * k)
                    for k in range(nonin.FRAMES_PER_PACKET))


def format8(*, spo2: int = 97, hr: int = 72, status: int = 0x80, status2: int = 0x00) -> bytes:
    """STATUS (bit 7 set, bits 1-0 = HR bits 8-7) | HR LSB | SpO2 | STATUS2."""
    return bytes([status | hr >> 7 & 0x03, hr & 0x7F, spo2, status2])


def legacy(*, spo2: int = 97, pulse: int = 72, signal: int = 5, pleth: int = 0x40,
           first: int = 0, third: int = 0) -> bytes:
    """Byte 1: sync | beep 0x40 | SpO2 dropping 0x20 | finger out 0x10 | signal strength;
    2: pleth; 3: PR bit 7 (as 0x40) | searching 0x20 | probe error 0x10 | bar graph 3;
    4: PR bits 6-0; 5: SpO2."""
    return bytes([0x80 | first | signal, pleth, (pulse & 0x80) >> 1 | third | 0x03,
                  pulse & 0x7F, spo2])


def v2(*, spo2: int = 97, pulse: int = 65, signal: int = 5, pleth: int = 0x33,
       flags: int = 0) -> bytes:
    """01 | high byte (0x80 | bit 7 of data byte j in bit j, finger out 0x01, searching 0x02)
    | 7 data bytes, each with bit 7 set on the wire: signal, pleth, ?, PR, SpO2, FF, FF."""
    data = [signal, pleth, 0x16, pulse, spo2, 0xFF, 0xFF]
    high = 0x80 | flags
    for j, value in enumerate(data):
        if value & 0x80:
            high |= 1 << j
    return bytes([0x01, high, *(0x80 | d & 0x7F for d in data)])


def feed_all(framer, stream: bytes, chunks: list[int] | None = None) -> list:
    out, pos = [], 0
    for size in chunks or []:
        out += framer.feed(stream[pos:pos + size])
        pos += size
    return out + framer.feed(stream[pos:])


def frames_of(out: list) -> list[bytes]:
    return [item for item in out if isinstance(item, bytes)]


def errors_of(out: list) -> list[FrameError]:
    return [item for item in out if isinstance(item, FrameError)]


def shape(out: list) -> list:
    """Outputs in a comparable form (FrameErrors compare by identity)."""
    return [("frame", item) if isinstance(item, bytes) else ("error", str(item), item.raw)
            for item in out]


def values(observations) -> dict:
    return {o.code.code: (o.value, o.absent, o.flags) for o in observations}


# ----------------------------------------------------------------------------- Nonin format 2

# A format 2 capture from a Nonin oximeter, printed in mattjlewis/NoninPulseOx's
# DataFormat2FrameSerialiser.java: the last 4 frames of one packet, one whole packet (SYNC
# frame "01 81 43 00 C5"), and the first frame of the next. Every checksum holds. The FLOAT
# bytes of the whole packet: HR MSB 00, HR LSB 4A (74/min), SpO2 60 (96 %), firmware 94,
# reserved 00, timer 00 17, STAT2 04 (no low battery, no SmartPoint), SpO2-D/fast/B-B 60 ...
RECORDED_FORMAT2 = bytes.fromhex(
    "01804900CA 0180464A11 01804400C5 01804300C4"  # tail of an earlier packet
    "01814300C5 0180434A0E 0180436024 0180439458 01804300C4 01804100C2 01803E17D6"
    "01803C04C1 018039601A 0180366017 0180356016 01803400B5 01803400B5 01803400B5"
    "0180354A00 0180366017 0180376018 01803A00BB 01804000C1 01804A00CB 0180574A22"
    "01806900EA 01807C4A47 0180900011 0180A10022"  # frames 1-25 of one packet
    "0181AF0031")  # SYNC frame of the next packet


def test_recorded_format2_capture_decodes():
    framer = nonin.NoninFramer(2, packets_per_frame=1)
    first, packet = framer.feed(RECORDED_FORMAT2)
    assert isinstance(first, FrameError) and first.raw == RECORDED_FORMAT2[:20]
    assert "before the first packet start" in str(first)
    assert packet == RECORDED_FORMAT2[20:145]
    assert framer.pending() == RECORDED_FORMAT2[145:]
    assert framer.stats["frames"] == 26 and framer.stats["packets"] == 1
    spo2, pulse = nonin.parse_format2(packet, CTX)
    assert (spo2.code, spo2.value, spo2.unit, spo2.absent) == (SPO2, Decimal(96), "%", None)
    assert (pulse.code, pulse.value, pulse.unit) == (PULSE, Decimal(74), "/min")
    assert spo2.flags == pulse.flags == ()
    assert spo2.context == {"time_source": "gateway", "method": "self-measured",
                            "data_format": "2", "packets": "1", "firmware_revision": "148"}
    assert spo2.effective == CTX.received and spo2.raw == packet
    assert spo2.driver == "serial_nonin_format2" and spo2.id != pulse.id


def test_format2_frame_layout_byte_by_byte():
    frame = nonin_frame(2, 0x81, 0x00, 0x0140)
    # 01 start | 81 status: bit 7 always, bit 0 SYNC | 40 pleth | 00 HR MSB | C2 checksum
    assert frame == bytes.fromhex("01 81 40 00 c2")
    assert nonin.frame_problem(2, frame) is None
    assert nonin.frame_problem(2, bytes.fromhex("01 81 40 00 c3"))[0] == "bad_checksum"
    assert nonin.frame_problem(2, bytes.fromhex("02 81 40 00 c3"))[0] == "lost_sync"
    assert nonin.frame_problem(2, bytes.fromhex("01 01 40 00 42"))[0] == "lost_sync"


def test_one_second_is_three_packets_by_default():
    stream = b"".join(nonin_packet(2, spo2=90 + i) for i in range(7))
    framer = nonin.NoninFramer(2)
    out = feed_all(framer, stream)
    assert out == [stream[:375], stream[375:750]]  # the 7th packet waits for its second
    assert framer.pending() == stream[750:]
    spo2, _ = nonin.parse_format2(out[1], CTX)
    assert spo2.value == Decimal(95) and spo2.context["packets"] == "3"  # the last packet's
    assert framer.flush() == [stream[750:]] and framer.pending() == b""


# ----------------------------------------------------------------------------- Nonin format 7


def test_format7_packet_with_nine_bit_pulse_rate():
    # Frame 0 of the packet, byte by byte: 81 status (bit 7, SYNC) | 01 40 pleth MSB, LSB |
    # 02 HR MSB (HR bits 8-7 = 10) | C4 checksum; frame 1's FLOAT byte: 2C (HR bits 6-0).
    packet = nonin_packet(7, spo2=93, hr=300)
    assert packet[:5] == bytes.fromhex("81 01 40 02 c4") and packet[8] == 0x2C
    framer = nonin.NoninFramer(7, packets_per_frame=1)
    [frame] = framer.feed(packet + nonin_packet(7)[:5])
    spo2, pulse = nonin.parse_format7(frame, CTX)
    assert (spo2.value, pulse.value) == (Decimal(93), Decimal(300))
    assert spo2.context["data_format"] == "7" and spo2.driver == "serial_nonin_format7"


def test_format2_packet_is_not_format7():
    # the 01 start byte lands where format 7 has STATUS, whose bit 7 is always set
    with pytest.raises(FrameError, match="packet 1, frame 1: status byte 0x01 has bit 7 clear"):
        nonin.parse_format7(nonin_packet(2), CTX)


# ----------------------------------------------------------------------------- Nonin format 8


def test_format8_frames_byte_by_byte():
    # 80 status (bit 7; HR bits 8-7 = 00) | 48 HR LSB (72) | 61 SpO2 (97) | 00 STATUS2
    assert format8() == bytes.fromhex("80 48 61 00")
    # 82 status (HR bits 8-7 = 10) | 2C HR LSB -> 256 + 44 = 300 | 5D SpO2 93 | 21 STATUS2:
    # SmartPoint (bit 5), low battery (bit 0)
    second = bytes.fromhex("82 2c 5d 21")
    framer = nonin.NoninFormat8Framer()
    assert framer.feed(format8() + second + format8()[:1]) == [format8(), second]
    spo2, pulse = nonin.parse_format8(second, CTX)
    assert (spo2.value, pulse.value) == (Decimal(93), Decimal(300))
    assert spo2.flags == ("low-battery",) and spo2.context["smartpoint"] == "yes"
    assert spo2.context["data_format"] == "8" and spo2.raw == second


def test_format8_first_frame_waits_for_the_next_to_confirm_sync():
    framer = nonin.NoninFormat8Framer()
    assert framer.feed(format8()) == []
    assert framer.feed(format8()[:1]) == [format8()]


# ----------------------------------------------------------------------------- Contec


# A live capture of a CMS50D+ with firmware 4.6, from headrotor/contec_data stream_data.py
# (after the host sent 7D 81 A1 ...): 01 type | E0 high byte (bits 5, 6: data bytes 6, 7
# have bit 7 set) | 85 signal 5 | B3.. pleth | 96 | C1 pulse 65 | E1 SpO2 97 | FF FF.
RECORDED_V2 = bytes.fromhex(
    "01E085B396C1E1FFFF 01E085B096C1E1FFFF 01E085AE95C1E1FFFF 01E085AC95C1E1FFFF"
    "01E085AB95C1E1FFFF 01E085AA95C1E1FFFF 01E085AA95C1E1FFFF")


def test_recorded_v2_capture_decodes():
    assert RECORDED_V2[:9] == v2(pleth=0x33)
    framer = contec.ContecV2Framer(packets_per_frame=7)
    [frame] = framer.feed(RECORDED_V2)
    spo2, pulse = contec.parse_v2(frame, CTX)
    assert (spo2.value, pulse.value, spo2.flags) == (Decimal(97), Decimal(65), ())
    assert spo2.context == {"time_source": "gateway", "method": "self-measured",
                            "firmware": "v2", "packets": "7", "signal_strength": "5"}
    assert spo2.driver == "serial_contec_cms50d_v2" and pulse.raw == RECORDED_V2


def test_v2_high_byte_restores_bit_7():
    package = v2(pulse=200)  # 200 = 0xC8: sent as C8 with high-byte bit 3 set
    assert package[1] == 0xE8 and package[5] == 0xC8
    assert contec.v2_data(package)[3] == 200
    framer = contec.ContecV2Framer(packets_per_frame=1)
    [frame] = framer.feed(package)
    assert contec.parse_v2(frame, CTX)[1].value == Decimal(200)


def test_v2_command_replies_are_counted_not_handed_on():
    # replies seen by headrotor: 0C 80 (to A7) and 06 80 80 87 (to A0), then live data
    framer = contec.ContecV2Framer(packets_per_frame=1)
    out = framer.feed(bytes.fromhex("0c80 06808087") + v2())
    assert out == [v2()]
    assert framer.stats["ignored_packages"] == 2 and framer.stats["ignored_bytes"] == 6


def test_v2_overlong_live_package_is_lost_sync_after_nine_bytes():
    framer = contec.ContecV2Framer(packets_per_frame=1)
    out = framer.feed(v2() + b"\xff\xfe" + v2(spo2=90))
    assert out[0] == v2() and out[2] == v2(spo2=90)
    assert str(out[1]) == ("byte 0xff (bit 7 set) where a package type was due; "
                           "resynchronised after dropping 2 byte(s)")
    assert out[1].raw == b"\xff\xfe" and framer.stats["lost_sync"] == 1


def test_legacy_packet_byte_by_byte():
    # 85 sync + signal 5 | 40 pleth | 03 bar graph 3 | 48 pulse 72 | 61 SpO2 97
    assert legacy() == bytes.fromhex("85 40 03 48 61")
    # pulse 200: bit 7 of the pulse rate travels in bit 6 of byte 3 (43 = 40 | bar graph 3)
    high = legacy(pulse=200)
    assert high == bytes.fromhex("85 40 43 48 61")
    framer = contec.ContecLegacyFramer(packets_per_frame=2)
    [frame] = framer.feed(legacy() + high + legacy()[:1])
    spo2, pulse = contec.parse_legacy(frame, CTX)
    assert (spo2.value, pulse.value) == (Decimal(97), Decimal(200))
    assert spo2.context == {"time_source": "gateway", "method": "self-measured",
                            "firmware": "legacy", "packets": "2", "signal_strength": "5"}


def test_contec_hands_on_one_frame_per_60_packets():
    stream = legacy() * 130
    framer = contec.ContecLegacyFramer()
    assert feed_all(framer, stream, [1] * 50 + [77] * 4) == [stream[:300], stream[300:600]]
    stream = v2() * 61
    assert contec.ContecV2Framer().feed(stream) == [stream[:540]]


# ----------------------------------------------------------------------------- streams

STREAMS = {
    "nonin2": (lambda: nonin.NoninFramer(2, packets_per_frame=1), nonin.parse_format2,
               b"".join(nonin_packet(2, spo2=90 + i, hr=60 + i) for i in range(6))),
    "nonin7": (lambda: nonin.NoninFramer(7, packets_per_frame=1), nonin.parse_format7,
               b"".join(nonin_packet(7, spo2=90 + i, hr=250 + i) for i in range(6))),
    "nonin8": (nonin.NoninFormat8Framer, nonin.parse_format8,
               b"".join(format8(spo2=88 + i, hr=100 + 20 * i) for i in range(12))),
    "legacy": (lambda: contec.ContecLegacyFramer(packets_per_frame=1), contec.parse_legacy,
               b"".join(legacy(spo2=90 + i, pulse=60 + 20 * i) for i in range(10))),
    "v2": (lambda: contec.ContecV2Framer(packets_per_frame=1), contec.parse_v2,
           b"".join(v2(spo2=90 + i, pulse=60 + 20 * i) for i in range(10))),
}
UNIT = {"nonin2": 125, "nonin7": 125, "nonin8": 4, "legacy": 5, "v2": 9}


def units(name: str) -> list[bytes]:
    stream, size = STREAMS[name][2], UNIT[name]
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def recovered(name: str, stream: bytes):
    framer = STREAMS[name][0]()
    out = framer.feed(stream)
    return framer, out


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_clean_streams_decode_every_unit(name):
    _, parse, stream = STREAMS[name]
    framer, out = recovered(name, stream)  # once locked, the last unit goes on at once
    assert out == units(name) and framer.stats["resyncs"] == 0
    readings = [values(parse(frame, CTX)) for frame in out]
    assert len({r[SPO2.code][0] for r in readings}) == len(out)  # each unit its own SpO2


@pytest.mark.parametrize("name", sorted(STREAMS))
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_random_chunks_give_the_same_frames_and_errors(name, data):
    stream = STREAMS[name][2]
    # with a garbage prefix and a corrupted byte, so errors must be chunk-independent too
    bad = bytearray(b"\x13\x01\x81\x40" + stream)
    bad[len(bad) // 2] ^= 0x84
    whole = shape(STREAMS[name][0]().feed(bytes(bad)))
    sizes = data.draw(st.lists(st.integers(1, 60), max_size=len(bad)))
    assert shape(feed_all(STREAMS[name][0](), bytes(bad), sizes)) == whole


CORRUPT = {  # which byte of the 2nd unit to damage, and how; what the framer counts
    "nonin2": (4 * 5 + 3, 0x01, "bad_checksum", "frame 5 of a packet: checksum"),
    "nonin7": (4 * 5 + 3, 0x01, "bad_checksum", "frame 5 of a packet: checksum"),
    "nonin8": (2, 0x80, "lost_sync", "SpO2 byte"),
    "legacy": (1, 0x80, "lost_sync", "byte 2 0xc0 has bit 7 set"),
    "v2": (4, 0x80, "lost_sync", "live package cut short after 4 of 9 bytes"),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_corrupted_byte_is_counted_and_the_following_units_decode(name):
    offset, mask, counter, reason = CORRUPT[name]
    clean = units(name)
    damaged = bytearray(clean[1])
    damaged[offset] ^= mask
    stream = clean[0] + bytes(damaged) + b"".join(clean[2:])
    framer, out = recovered(name, stream)
    assert framer.stats[counter] == 1
    [error] = errors_of(out)
    assert reason in str(error)
    assert frames_of(out) == [clean[0], *clean[2:]]  # only the damaged unit is lost
    assert out.index(error) == 1  # reported in stream order
    if name != "v2":  # v2 reads the damaged package's tail as a reply package (ignored)
        assert error.raw == bytes(damaged) and framer.stats["resyncs"] == 1
    for frame in frames_of(out):
        assert STREAMS[name][1](frame, CTX)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_garbage_prefix_is_reported_then_sync_is_found(name):
    garbage = bytes.fromhex("00 ff 13 80 01 81 40 7f")
    if name == "v2":  # there, bytes with bit 7 clear are package types: join mid-package
        garbage = bytes.fromhex("85 b3 96 c1 e1 ff ff")
    framer, out = recovered(name, garbage + STREAMS[name][2])
    [error] = errors_of(out)
    assert out[0] is error and error.raw == garbage
    assert "before the first packet start" in str(error) or name == "nonin8"
    assert frames_of(out) == units(name)
    assert framer.stats["resyncs"] == 1 and framer.stats["dropped_bytes"] == len(garbage)


@pytest.mark.parametrize("name", sorted(STREAMS))
@given(garbage=st.binary(max_size=300))
@settings(max_examples=60, deadline=None)
def test_any_garbage_prefix_loses_at_most_the_first_unit(name, garbage):
    clean = units(name)
    _, out = recovered(name, garbage + STREAMS[name][2])
    assert frames_of(out)[-(len(clean) - 1):] == clean[1:]


FAKE_START = {  # a unit that is valid on its own, then noise: no confirming second unit
    "nonin2": (lambda: nonin.NoninFramer(2, packets_per_frame=1),
               nonin_frame(2, 0x81, 0x00) + bytes(5)),
    "nonin7": (lambda: nonin.NoninFramer(7, packets_per_frame=1),
               nonin_frame(7, 0x81, 0x00) + bytes(5)),
    "nonin8": (nonin.NoninFormat8Framer, bytes.fromhex("80 00 00 00 00")),
    "legacy": (lambda: contec.ContecLegacyFramer(packets_per_frame=1),
               bytes.fromhex("80 00 00 00 00 00")),
}


@pytest.mark.parametrize("name", sorted(FAKE_START))
def test_while_searching_a_unit_needs_the_next_to_confirm_it(name):
    make, fake = FAKE_START[name]
    framer = make()
    out = framer.feed(fake + STREAMS[name][2])
    assert frames_of(out) == units(name)  # the lone look-alike is not taken for data
    [error] = errors_of(out)
    assert error.raw == fake and out[0] is error
    assert "bytes before the first" in str(error)  # never locked on the look-alike
    assert framer.stats["lost_sync"] == 0 and framer.stats["resyncs"] == 1


@pytest.mark.parametrize("framer, good, bad", [
    (lambda: nonin.NoninFramer(2, packets_per_frame=3), nonin_packet(2),
     nonin_packet(2)[:7] + b"\x00" + nonin_packet(2)[8:]),
    (lambda: contec.ContecLegacyFramer(packets_per_frame=3), legacy(), legacy()[:2] + b"\x80"),
    (lambda: contec.ContecV2Framer(packets_per_frame=3), v2(), v2()[:4] + b"\x00"),
])
def test_complete_packets_of_a_partial_second_go_on_before_the_loss(framer, good, bad):
    framer = framer()
    out = framer.feed(good * 2 + bad + good * 4)
    assert isinstance(out[0], bytes) and out[0] == good * 2
    assert isinstance(out[1], FrameError)
    assert frames_of(out)[1:] == [good * 3]
    assert framer.pending() == good


def test_noise_is_reported_in_bounded_pieces():
    framer = nonin.NoninFramer(2)
    # a window needs 5 bytes: the last 4 wait in the buffer
    out = feed_all(framer, bytes(10 * nonin.MAX_DROPPED + 4), [100] * 50)
    assert len(errors_of(out)) == 10 and not frames_of(out)
    assert all("no packet start found yet" in str(e) for e in out)
    assert len(framer.pending()) < nonin.MAX_DROPPED


def test_a_packet_cut_short_by_a_sync_frame_is_lost_sync():
    packet = nonin_packet(2)
    framer = nonin.NoninFramer(2, packets_per_frame=1)
    out = framer.feed(packet[:60] + packet + packet[:5])
    [error, frame] = out
    assert "frame 13 of a packet: packet start (SYNC bit set)" in str(error)
    assert error.raw == packet[:60] and frame == packet
    assert framer.stats["lost_sync"] == 1


def test_twenty_six_frames_without_sync_is_lost_sync():
    packet = nonin_packet(2)
    framer = nonin.NoninFramer(2, packets_per_frame=1)
    out = framer.feed(packet + packet[5:10] + packet)
    assert "SYNC bit clear where a packet should start" in str(out[1])
    assert frames_of(out) == [packet, packet] and framer.stats["lost_sync"] == 1
    assert out[1].raw == packet[5:10]


# ----------------------------------------------------------------------------- properties

# Chunks of real packets, damaged packets and noise, for the framers to chew on.
def pieces(name: str):
    good = st.sampled_from(units(name))
    damaged = st.tuples(good, st.integers(0, 200), st.integers(1, 255)).map(
        lambda t: bytes(b ^ t[2] if i == t[1] % len(t[0]) else b for i, b in enumerate(t[0])))
    return st.lists(st.one_of(good, damaged, st.binary(max_size=12)), max_size=12).map(
        b"".join)


@pytest.mark.parametrize("name", sorted(STREAMS))
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_any_stream_yields_frames_or_frame_errors_and_loses_no_byte(name, data):
    stream = data.draw(pieces(name))
    sizes = data.draw(st.lists(st.integers(1, 50), max_size=40))
    framer = STREAMS[name][0]()
    out = feed_all(framer, stream, sizes)
    assert all(isinstance(item, bytes | FrameError) for item in out)
    assert all(str(e) for e in errors_of(out))
    handed = b"".join(item if isinstance(item, bytes) else item.raw for item in out)
    if name == "v2":  # replies of other package types are counted and dropped
        assert len(handed) + len(framer.pending()) + framer.stats["ignored_bytes"] == len(stream)
    else:
        assert handed + framer.pending() == stream
    for frame in frames_of(out):
        try:
            observations = STREAMS[name][1](frame, CTX)
        except FrameError as exc:
            assert "SpO2" in str(exc)  # the only thing a framed unit can still get wrong
        else:
            assert [o.code for o in observations] == [SPO2, PULSE]
            assert all(o.raw == frame for o in observations)


@pytest.mark.parametrize("name", sorted(STREAMS))
@given(frame=st.binary(max_size=400))
@settings(max_examples=150, deadline=None)
def test_parse_of_any_bytes_decodes_or_is_rejected_with_a_reason(name, frame):
    try:
        observations = STREAMS[name][1](frame, CTX)
    except FrameError as exc:
        assert str(exc)
    else:
        assert observations and all(o.raw == frame for o in observations)


@given(status=st.integers(0, 127), stat2=st.integers(0, 255), spo2=st.integers(0, 255),
       hr=st.integers(0, 511), fmt=st.sampled_from([2, 7]))
@settings(max_examples=100, deadline=None)
def test_any_nonin_packet_content_decodes_or_names_the_bad_spo2(status, stat2, spo2, hr, fmt):
    packet = nonin_packet(fmt, spo2=spo2, hr=hr, status=0x80 | status & 0x7E, stat2=stat2)
    parse = nonin.parse_format2 if fmt == 2 else nonin.parse_format7
    try:
        _, pulse_obs = parse(packet, CTX)
    except FrameError as exc:
        assert spo2 > 100 and spo2 != 127 and f"SpO2 {spo2}" in str(exc)
    else:
        assert pulse_obs.value == (None if hr == 511 else Decimal(hr))


# ----------------------------------------------------------------------------- flags, absent


@pytest.mark.parametrize("fmt", [2, 7])
@pytest.mark.parametrize("status, stat2, flags, perfusion", [
    (0x80, 0x00, (), None),
    (0xA0, 0x00, ("artifact",), None),
    (0x90, 0x00, ("out-of-track",), None),
    (0x88, 0x00, ("sensor-alarm",), None),
    (0x82, 0x00, (), "green"),
    (0x84, 0x00, ("low-perfusion",), "red"),
    (0x86, 0x00, ("marginal-perfusion",), "yellow"),
    (0x80, 0x01, ("low-battery",), None),
    (0xBC, 0x01, ("sensor-alarm", "out-of-track", "artifact", "low-perfusion",
                  "low-battery"), "red"),
])
def test_nonin_status_bits_become_flags(fmt, status, stat2, flags, perfusion):
    parse = nonin.parse_format2 if fmt == 2 else nonin.parse_format7
    spo2, pulse = parse(nonin_packet(fmt, status=status, stat2=stat2), CTX)
    assert spo2.flags == pulse.flags == flags
    assert spo2.context.get("perfusion") == perfusion
    assert spo2.value == Decimal(97)  # status bits alone do not remove a value


def test_nonin_sensor_disconnect_bit_is_decoded_in_format2_only():
    assert nonin.parse_format2(nonin_packet(2, status=0xC0), CTX)[0].flags == (
        "sensor-disconnected",)
    assert nonin.parse_format7(nonin_packet(7, status=0xC0), CTX)[0].flags == ()


def test_nonin_flags_cover_the_whole_second_and_values_the_last_packet():
    second = (nonin_packet(2, status=0xA0, spo2=88) + nonin_packet(2, status=0x84, spo2=89)
              + nonin_packet(2, status=0x86, spo2=90))
    spo2, _ = nonin.parse_format2(second, CTX)
    assert spo2.value == Decimal(90)
    assert spo2.flags == ("artifact", "low-perfusion") and spo2.context["perfusion"] == "red"


@pytest.mark.parametrize("status, status2, flags", [
    (0xC0, 0x00, ("sensor-disconnected",)),
    (0xA0, 0x00, ("out-of-track",)),
    (0x90, 0x00, ("low-perfusion",)),
    (0x88, 0x00, ("marginal-perfusion",)),
    (0x84, 0x00, ("artifact",)),
    (0x80, 0x08, ("sensor-alarm",)),
    (0x80, 0x01, ("low-battery",)),
])
def test_format8_status_bits_become_flags(status, status2, flags):
    spo2, pulse = nonin.parse_format8(format8(status=status, status2=status2), CTX)
    assert spo2.flags == pulse.flags == flags


@pytest.mark.parametrize("frame, parse", [
    (nonin_packet(2, spo2=127, hr=511, status=0x88), nonin.parse_format2),
    (nonin_packet(7, spo2=127, hr=511, status=0x88), nonin.parse_format7),
    (format8(spo2=127, hr=511, status2=0x08), nonin.parse_format8),
])
def test_nonin_missing_data_codes_are_absent_not_numbers(frame, parse):
    spo2, pulse = parse(frame, CTX)
    for obs in (spo2, pulse):
        assert obs.value is None and obs.absent is AbsentReason.ERROR
        assert obs.flags == ("missing-data", "sensor-alarm")


def test_nonin_one_missing_value_leaves_the_other():
    spo2, pulse = nonin.parse_format8(format8(spo2=127, hr=64), CTX)
    assert (spo2.value, spo2.absent, spo2.flags) == (None, AbsentReason.ERROR, ("missing-data",))
    assert (pulse.value, pulse.absent, pulse.flags) == (Decimal(64), None, ())


@pytest.mark.parametrize("frame, parse, reason", [
    (nonin_packet(2, spo2=110), nonin.parse_format2, "SpO2 110 is neither"),
    (format8(spo2=101), nonin.parse_format8, "SpO2 101 is neither"),
    (legacy(spo2=120), contec.parse_legacy, "SpO2 120 is neither"),
    (nonin_packet(2)[:-5], nonin.parse_format2, "not whole packets"),
    (nonin_packet(2)[5:] + nonin_packet(2)[:5], nonin.parse_format2,
     "packet 1, frame 1: SYNC bit clear"),
    (format8()[:3], nonin.parse_format8, "has 4 bytes, not 3"),
    (bytes.fromhex("00 48 61 00"), nonin.parse_format8, "status byte 0x00 has bit 7 clear"),
    (legacy() + legacy()[:4], contec.parse_legacy, "not whole 5-byte packets"),
    (legacy()[1:] + legacy()[:1], contec.parse_legacy, "packet 1: byte 1 0x40"),
    (v2()[:1] + bytes([0x60]) + v2()[2:], contec.parse_v2, "byte 2 0x60 has bit 7 clear"),
    (bytes([0x02]) + v2()[1:], contec.parse_v2, "type byte 0x02 is not 0x01"),
])
def test_bad_frames_are_rejected_with_a_reason(frame, parse, reason):
    with pytest.raises(FrameError, match=reason):
        parse(frame, CTX)


@pytest.mark.parametrize("packet, flags", [
    (legacy(first=0x10), ("finger-out",)),
    (legacy(third=0x20), ("searching",)),
    (legacy(third=0x10), ("sensor-error",)),
    (legacy(spo2=127, pulse=255, first=0x10, third=0x20), ("missing-data", "finger-out",
                                                           "searching")),
])
def test_contec_legacy_invalid_readings_are_absent_with_the_reason(packet, flags):
    for obs in contec.parse_legacy(packet, CTX):
        assert (obs.value, obs.absent, obs.flags) == (None, AbsentReason.ERROR, flags)


def test_contec_legacy_spo2_dropping_is_a_flag_on_a_valid_value():
    spo2, pulse = contec.parse_legacy(legacy(first=0x20), CTX)
    assert (spo2.value, spo2.flags) == (Decimal(97), ("spo2-dropping",))
    assert pulse.value == Decimal(72)


@pytest.mark.parametrize("package, flags", [
    (v2(flags=0x01), ("finger-out",)),  # high byte E1 (headrotor: pulse, SpO2 not valid)
    (v2(flags=0x02), ("searching",)),  # high byte E2 (headrotor: no valid data)
    (v2(spo2=127, pulse=255, flags=0x03), ("missing-data", "finger-out", "searching")),
])
def test_contec_v2_invalid_readings_are_absent_with_the_reason(package, flags):
    for obs in contec.parse_v2(package, CTX):
        assert (obs.value, obs.absent, obs.flags) == (None, AbsentReason.ERROR, flags)


def test_contec_zero_and_no_value_codes_are_absent():
    spo2, pulse = contec.parse_v2(v2(spo2=0, pulse=255), CTX)
    assert spo2.absent is pulse.absent is AbsentReason.ERROR
    assert spo2.flags == pulse.flags == ("missing-data",)


def test_contec_flags_cover_the_second_and_values_the_last_packet():
    frame = legacy(first=0x10, spo2=127) + legacy(spo2=95, pulse=70)
    spo2, pulse = contec.parse_legacy(frame, CTX)
    assert (spo2.value, pulse.value) == (Decimal(95), Decimal(70))
    assert spo2.flags == ("finger-out",)


def test_the_same_frame_gives_the_same_ids():
    first = [o.id for o in nonin.parse_format2(nonin_packet(2), CTX)]
    assert first == [o.id for o in nonin.parse_format2(nonin_packet(2), CTX)]
    assert first != [o.id for o in nonin.parse_format2(nonin_packet(2, spo2=96), CTX)]


# ----------------------------------------------------------------------------- declarations


def registered() -> dict:
    found = []
    nonin.register_drivers(register=found.append)
    contec.register_drivers(register=found.append)
    return {driver.name: driver for driver in found}


def test_every_driver_declaration_is_valid():
    drivers = registered()
    assert sorted(drivers) == ["serial_contec_cms50d_legacy", "serial_contec_cms50d_v2",
                               "serial_nonin_format2", "serial_nonin_format7",
                               "serial_nonin_format8"]
    for driver in drivers.values():
        assert driver.problems() == [] and driver.transport == "serial"
        assert driver.codes == ("spo2", "pulse")
        assert hasattr(driver.stream.framer(), "feed")


def test_serial_settings_and_commands():
    drivers = registered()
    legacy_driver, v2_driver = (drivers["serial_contec_cms50d_legacy"],
                                drivers["serial_contec_cms50d_v2"])
    assert (legacy_driver.serial.baudrate, legacy_driver.serial.parity) == (19200, "O")
    assert legacy_driver.stream.on_open == b"" and legacy_driver.stream.keep_alive == b""
    assert (v2_driver.serial.baudrate, v2_driver.serial.parity) == (115200, "N")
    assert v2_driver.stream.on_open == bytes.fromhex("7d 81 a1 80 80 80 80 80 80")
    assert v2_driver.stream.keep_alive.endswith(bytes.fromhex("7d 81 af 80 80 80 80 80 80"))
    assert 0 < v2_driver.stream.keep_alive_every < 30  # the device stops after ~30 s
    assert {(u.vid, u.pid) for u in v2_driver.usb} == {(0x10C4, 0xEA60)}
    assert {(u.vid, u.pid) for u in drivers["serial_nonin_format2"].usb} == {(0x0403, 0x6001)}
    for name in ("serial_nonin_format2", "serial_nonin_format7", "serial_nonin_format8"):
        assert (drivers[name].serial.baudrate, drivers[name].serial.parity) == (9600, "N")


# ----------------------------------------------------------------------------- real pty


@pytest.fixture
def pty_port():
    """A pty pair: (master fd the test writes as the device, pyserial port on the slave
    opened at the driver's settings)."""
    serial = pytest.importorskip("serial")  # pyserial: only these tests need it
    opened = []

    def open_port(settings):
        master, slave = os.openpty()
        port = serial.Serial(port=os.ttyname(slave), baudrate=settings.baudrate,
                             bytesize=settings.bytesize, parity=settings.parity,
                             stopbits=settings.stopbits, timeout=0.2)
        os.close(slave)
        opened.append((master, port))
        return master, port

    yield open_port
    for master, port in opened:
        port.close()
        os.close(master)


def device_writes(master: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(master, view):]


def gateway_reads(port, framer, wanted: int, seconds: float = 5.0) -> list:
    """Read as the edge would (whatever arrives, in the sizes it arrives) until `wanted`
    frames came out of the framer."""
    out, deadline = [], time.monotonic() + seconds
    while len(frames_of(out)) < wanted and time.monotonic() < deadline:
        out += framer.feed(port.read(max(1, port.in_waiting)))
    return out


def test_contec_legacy_over_a_real_pty_at_19200_8o1(pty_port):
    driver = registered()["serial_contec_cms50d_legacy"]
    master, port = pty_port(driver.serial)
    assert (port.baudrate, port.parity, port.bytesize) == (19200, "O", 8)
    second = b"".join(legacy(spo2=94, pulse=80 + i % 3) for i in range(60))
    device_writes(master, b"\x03\x7f" + second + legacy(spo2=127, pulse=255, first=0x10) * 60
                  + legacy()[:1])
    framer = driver.stream.framer()
    out = gateway_reads(port, framer, 2)
    assert [str(e) for e in errors_of(out)] == [
        "bytes before the first packet start; synchronised after dropping 2 byte(s)"]
    first, then = frames_of(out)
    assert first == second
    assert values(driver.parse(first, CTX)) == {SPO2.code: (Decimal(94), None, ()),
                                                PULSE.code: (Decimal(80 + 59 % 3), None, ())}
    assert values(driver.parse(then, CTX)) == {
        SPO2.code: (None, AbsentReason.ERROR, ("missing-data", "finger-out")),
        PULSE.code: (None, AbsentReason.ERROR, ("missing-data", "finger-out"))}


def test_contec_v2_over_a_real_pty_with_start_and_keep_alive(pty_port):
    driver = registered()["serial_contec_cms50d_v2"]
    master, port = pty_port(driver.serial)
    assert (port.baudrate, port.parity) == (115200, "N")
    port.write(driver.stream.on_open)  # what the edge writes once the port is open
    port.flush()
    assert select.select([master], [], [], 2.0)[0]
    assert os.read(master, 64) == bytes.fromhex("7d81a1808080808080")
    device_writes(master, bytes.fromhex("0c80") + RECORDED_V2 * 9 + v2(spo2=96) * 60)
    framer = driver.stream.framer()
    out = gateway_reads(port, framer, 2)
    assert errors_of(out) == [] and framer.stats["ignored_packages"] == 1
    first, second = frames_of(out)
    assert values(driver.parse(first, CTX)) == {SPO2.code: (Decimal(97), None, ()),
                                                PULSE.code: (Decimal(65), None, ())}
    assert values(driver.parse(second, CTX))[SPO2.code] == (Decimal(96), None, ())
    port.write(driver.stream.keep_alive)
    port.flush()
    assert select.select([master], [], [], 2.0)[0]
    assert os.read(master, 64) == driver.stream.keep_alive


def test_nonin_format2_over_a_real_pty_at_9600_8n1(pty_port):
    driver = registered()["serial_nonin_format2"]
    master, port = pty_port(driver.serial)
    assert (port.baudrate, port.parity, port.stopbits) == (9600, "N", 1)
    second = (nonin_packet(2, spo2=95, hr=130) + nonin_packet(2, spo2=94, hr=131, status=0xA0)
              + nonin_packet(2, spo2=93, hr=132))
    device_writes(master, RECORDED_FORMAT2[20:145] * 3 + second + nonin_packet(2)[:5])
    framer = driver.stream.framer()
    out = gateway_reads(port, framer, 2)
    assert errors_of(out) == []
    recorded, ours = frames_of(out)
    assert values(driver.parse(recorded, CTX))[PULSE.code] == (Decimal(74), None, ())
    assert values(driver.parse(ours, CTX)) == {SPO2.code: (Decimal(93), None, ("artifact",)),
                                               PULSE.code: (Decimal(132), None, ("artifact",))}
