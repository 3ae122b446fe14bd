"""The BLE transport and the virtual radio: real bleak API, real bumble GATT server.

Each test builds its own VirtualRadio inside its own event loop (bumble objects stay bound
to their loop) and runs under a hard timeout, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import (
    BleakDBusError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)

from telemon.backoff import Backoff
from telemon.ble import (
    BleDeviceConfig,
    BleTransport,
    OutOfRange,
    classify,
)
from telemon.drivers import BleMatch, Driver, ParseContext
from telemon.plugins.drivers import ble_blood_pressure
from telemon.testing.ble import (
    PROFILES,
    GattCharacteristic,
    GattService,
    VirtualPeripheral,
    VirtualRadio,
    health_peripheral,
    uuid_str,
)

BP_SERVICE = uuid_str("1810")
BP_MEASUREMENT = uuid_str("2A35")
# 120/80/93 mmHg, 2026-03-01 07:45:12, pulse 72, user 1, cuff loose + irregular pulse
FRAME = bytes.fromhex("1e 7800 5000 5d00 ea07 03 01 07 2d 0c 4800 01 0600")
CPH = timezone(timedelta(hours=1))
VENDOR_SERVICE = "8d5a0001-4b1e-4e8e-9d3c-0c6a0e2f7a11"


def run(test: Callable[[], object], timeout: float = 10.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()
    asyncio.run(bounded())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


class Sink:
    """submit / reject / on_status of a transport, recorded."""

    def __init__(self) -> None:
        self.observations: list = []
        self.rejected: list[tuple[str, str, bytes]] = []
        self.statuses: list[str] = []

    def submit(self, observations: list) -> None:
        self.observations.extend(observations)

    def reject(self, source: str, reason: str, raw: bytes) -> None:
        self.rejected.append((source, reason, raw))


def transport(radio: VirtualRadio, sink: Sink, driver: Driver = ble_blood_pressure.DRIVER,
              **config) -> BleTransport:
    return BleTransport(
        driver, BleDeviceConfig(device="bpm-1", patient="p-1", gateway="gw-1", **config),
        submit=sink.submit, reject=sink.reject, backend=radio.backend, scan_timeout=0.25,
        connect_timeout=1.0, backoff=Backoff(0.01, 0.05, random.Random(7)),
        on_status=sink.statuses.append)


# ---------------------------------------------------------------------------------------
# bleak over the virtual link
# ---------------------------------------------------------------------------------------


def test_scan_by_service_uuid_finds_the_blood_pressure_monitor_only():
    async def test():
        async with VirtualRadio() as radio:
            bp = await health_peripheral(radio, "blood_pressure").start()
            hr = await health_peripheral(radio, "heart_rate", name="strap").start()
            found = await BleakScanner.discover(timeout=0.2, return_adv=True,
                                                service_uuids=[BP_SERVICE],
                                                backend=radio.backend.scanner)
            assert list(found) == [bp.address]
            device, adv = found[bp.address]
            assert adv.local_name == device.name == "blood-pressure"
            assert adv.service_uuids == [BP_SERVICE]  # de-duplicated scan response
            everything = await BleakScanner.discover(timeout=0.2,
                                                     backend=radio.backend.scanner)
            assert {d.address for d in everything} == {bp.address, hr.address}
    run(test)


def test_connect_read_write_notify_indicate_through_bleak():
    async def test():
        async with VirtualRadio() as radio:
            written: list[bytes] = []
            chars = [
                GattCharacteristic("8d5a0002-4b1e-4e8e-9d3c-0c6a0e2f7a11", ("read",),
                                   value=b"fw 1.2"),
                GattCharacteristic("8d5a0003-4b1e-4e8e-9d3c-0c6a0e2f7a11",
                                   ("write", "write-without-response"),
                                   on_write=written.append),
                GattCharacteristic("8d5a0004-4b1e-4e8e-9d3c-0c6a0e2f7a11", ("notify",),
                                   frames=[b"n1", b"n2"]),
                GattCharacteristic("8d5a0005-4b1e-4e8e-9d3c-0c6a0e2f7a11", ("indicate",),
                                   frames=[b"i1"]),
            ]
            peripheral = await VirtualPeripheral(
                radio, "acme", [GattService(VENDOR_SERVICE, chars)],
                manufacturer_data={0x0A0B: b"\x01\x02"}).start()
            device = await BleakScanner.find_device_by_filter(
                lambda d, adv: VENDOR_SERVICE in adv.service_uuids
                and adv.manufacturer_data == {0x0A0B: b"\x01\x02"},
                timeout=2, backend=radio.backend.scanner)
            assert device is not None
            got: list[tuple[str, bytes]] = []
            async with BleakClient(device, backend=radio.backend.client) as client:
                assert client.mtu_size == 517  # asked for 517 as BlueZ does
                service = client.services.get_service(VENDOR_SERVICE)
                assert [c.properties for c in service.characteristics] == [
                    ["read"], ["write-without-response", "write"], ["notify"], ["indicate"]]
                assert await client.read_gatt_char(chars[0].uuid) == b"fw 1.2"
                await client.write_gatt_char(chars[1].uuid, b"\x01", response=True)
                await client.write_gatt_char(chars[1].uuid, b"\x02", response=False)
                for char in chars[2:]:
                    await client.start_notify(
                        char.uuid, lambda c, data: got.append((c.uuid, bytes(data))))
                await until(lambda: len(got) == 3 and len(written) == 2)
                assert written == [b"\x01", b"\x02"]
                assert [v for u, v in got if u == chars[2].uuid] == [b"n1", b"n2"]
                assert [v for u, v in got if u == chars[3].uuid] == [b"i1"]
                assert peripheral.pending(chars[2].uuid) == []
                with pytest.raises(BleakGATTProtocolError) as refused:
                    await client.read_gatt_char(chars[2].uuid)  # notify-only
                assert refused.value.code == BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
                await client.stop_notify(chars[2].uuid)
                peripheral.push(chars[2].uuid, b"late")
                await asyncio.sleep(0.05)
                assert b"late" not in [v for _, v in got]
    run(test)


@pytest.mark.parametrize("security, code", [
    ("authentication", BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION),
    ("encryption", BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION),
])
def test_a_secured_characteristic_refuses_until_paired(security, code):
    async def test():
        async with VirtualRadio() as radio:
            char = GattCharacteristic("2A35", ("read", "indicate"), value=b"v",
                                      frames=[b"m1"], security=security)
            peripheral = await VirtualPeripheral(
                radio, "bpm", [GattService("1810", [char])]).start()
            device = await BleakScanner.find_device_by_address(
                peripheral.address, timeout=2, backend=radio.backend.scanner)
            got: list[bytes] = []
            async with BleakClient(device, backend=radio.backend.client) as client:
                with pytest.raises(BleakGATTProtocolError) as read:
                    await client.read_gatt_char(char.uuid)
                with pytest.raises(BleakGATTProtocolError) as subscribe:
                    await client.start_notify(char.uuid, lambda c, d: got.append(bytes(d)))
                assert read.value.code == subscribe.value.code == code
                assert classify(subscribe.value)[0] == "needs-pairing"
                await client.pair()
                assert await client.read_gatt_char(char.uuid) == b"v"
                await client.start_notify(char.uuid, lambda c, d: got.append(bytes(d)))
                await until(lambda: got)
                peripheral.push(char.uuid, b"m2")
                await until(lambda: len(got) >= 2)
                await asyncio.sleep(0.02)
                assert got == [b"m1", b"m2"]  # once each: the refused subscription is gone
    run(test)


def test_a_long_value_is_cut_at_the_default_mtu_and_whole_at_517():
    long_value = bytes(range(100))

    async def receive(max_mtu: int) -> tuple[int, bytes, VirtualPeripheral, bytes]:
        async with VirtualRadio() as radio:
            char = GattCharacteristic(uuid_str("8d5a0004-4b1e-4e8e-9d3c-0c6a0e2f7a11"),
                                      ("read", "notify"), value=long_value,
                                      frames=[long_value])
            peripheral = await VirtualPeripheral(
                radio, "acme", [GattService(VENDOR_SERVICE, [char])], max_mtu=max_mtu).start()
            device = await BleakScanner.find_device_by_address(
                peripheral.address, timeout=2, backend=radio.backend.scanner)
            got: list[bytes] = []
            async with BleakClient(device, backend=radio.backend.client) as client:
                read = bytes(await client.read_gatt_char(char.uuid))
                await client.start_notify(char.uuid, lambda c, d: got.append(bytes(d)))
                await until(lambda: got)
                return client.mtu_size, got[0], peripheral, read

    async def test():
        mtu, value, peripheral, read = await receive(max_mtu=23)
        assert mtu == 23
        assert value == long_value[:20]  # what BLE allows in one notification at MTU 23
        assert [(t.length, t.mtu) for t in peripheral.truncated] == [(100, 23)]
        assert read == long_value  # a read is long (read blob), a notification is not
        mtu, value, peripheral, read = await receive(max_mtu=517)
        assert (mtu, value, peripheral.truncated) == (517, long_value, [])
    run(test)


@pytest.mark.parametrize("profile, service, measurements, reads", [
    ("blood_pressure", "1810", {"2A35": "indicate"}, {"2A49": b"\x00\x00"}),
    ("weight_scale", "181D", {"2A9D": "indicate"}, {"2A9E": bytes(4)}),
    ("pulse_oximeter", "1822", {"2A5E": "indicate", "2A5F": "notify"}, {"2A60": b"\0\0"}),
    ("heart_rate", "180D", {"2A37": "notify"}, {"2A38": b"\x01"}),
    ("health_thermometer", "1809", {"2A1C": "indicate"}, {"2A1D": b"\x02"}),
    ("glucose", "1808", {"2A18": "notify"}, {"2A51": b"\x00\x00"}),
])
def test_each_health_profile_serves_its_standard_service(profile, service, measurements,
                                                         reads):
    assert PROFILES[profile].service == service

    async def test():
        async with VirtualRadio() as radio:
            uuids = [uuid_str(u) for u in measurements]
            frames = {u: [f"{profile}:{u}".encode()] for u in uuids}
            await health_peripheral(radio, profile, frames).start()
            device = await BleakScanner.find_device_by_filter(
                lambda d, adv: True, timeout=2, service_uuids=[uuid_str(service)],
                backend=radio.backend.scanner)
            got: dict[str, bytes] = {}
            async with BleakClient(device, backend=radio.backend.client) as client:
                served = client.services.get_service(uuid_str(service))
                assert {c.uuid: c.properties for c in served.characteristics} == {
                    **{uuid_str(u): [kind] for u, kind in measurements.items()},
                    **{uuid_str(u): ["read"] for u in reads}}
                for uuid, value in reads.items():
                    assert await client.read_gatt_char(uuid) == value
                for uuid in uuids:
                    await client.start_notify(
                        uuid, lambda c, d: got.__setitem__(c.uuid, bytes(d)))
                await until(lambda: len(got) == len(uuids))
            assert got == {u: f[0] for u, f in frames.items()}
    run(test)


def test_connecting_to_a_vanished_device_times_out_and_the_radio_still_connects():
    async def test():
        async with VirtualRadio() as radio:
            bp = await health_peripheral(radio, "blood_pressure").start()
            device = await BleakScanner.find_device_by_address(
                bp.address, timeout=2, backend=radio.backend.scanner)
            await bp.vanish()
            client = BleakClient(device, timeout=0.2, backend=radio.backend.client)
            with pytest.raises(TimeoutError):
                await client.connect()
            assert not client.is_connected
            await bp.reappear()
            # the pending connection was cancelled: a new one is not COMMAND_DISALLOWED
            async with BleakClient(device, timeout=2, backend=radio.backend.client) as again:
                assert again.is_connected
    run(test)


def test_disconnected_callback_on_link_loss_only():
    async def test():
        async with VirtualRadio() as radio:
            bp = await health_peripheral(radio, "blood_pressure").start()
            device = await BleakScanner.find_device_by_address(
                bp.address, timeout=2, backend=radio.backend.scanner)
            calls: list[str] = []
            client = BleakClient(device, lambda c: calls.append("lost"),
                                 backend=radio.backend.client)
            await client.connect()
            await client.disconnect()  # asked for: no callback
            await asyncio.sleep(0.02)
            assert calls == [] and not client.is_connected
            await client.connect()
            await bp.vanish()
            await until(lambda: calls == ["lost"])
            assert not client.is_connected
    run(test)


# ---------------------------------------------------------------------------------------
# the transport with the real blood-pressure driver
# ---------------------------------------------------------------------------------------


def test_transport_delivers_the_observations_of_an_indicated_frame():
    async def test():
        async with VirtualRadio() as radio:
            await health_peripheral(radio, "blood_pressure", [FRAME]).start()
            sink = Sink()
            bpm = transport(radio, sink, device_tz=CPH)
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2 and bpm.status == "connected")
            assert bpm.status == "connected"
            bp, pulse = sink.observations
            assert [(c.code.code, c.value, c.unit) for c in bp.components] == [
                ("150021", Decimal(120), "mm[Hg]"), ("150022", Decimal(80), "mm[Hg]"),
                ("150023", Decimal(93), "mm[Hg]")]
            assert bp.effective == datetime(2026, 3, 1, 7, 45, 12, tzinfo=CPH)
            assert bp.flags == ("cuff-loose", "irregular-pulse")
            assert bp.context["user"] == "1" and bp.context["time_source"] == "device"
            assert (bp.patient, bp.device, bp.gateway, bp.raw) == ("p-1", "bpm-1", "gw-1",
                                                                   FRAME)
            assert (pulse.value, pulse.unit) == (Decimal(72), "/min")
            assert sink.rejected == []
            bpm.stop()
            await task
            assert bpm.status == "stopped"
            assert sink.statuses[:3] == ["scanning", "connecting", "connected"]
    run(test)


def test_a_malformed_frame_is_rejected_and_the_next_one_still_arrives():
    async def test():
        async with VirtualRadio() as radio:
            bad = bytes.fromhex("1e 7800")
            await health_peripheral(radio, "blood_pressure", [bad, FRAME]).start()
            sink = Sink()
            bpm = transport(radio, sink)
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2 and bpm.status == "connected")
            assert sink.rejected == [
                (BP_MEASUREMENT, "frame ends before diastolic: needs bytes 3..4, has 3", bad)]
            assert bpm.counters.rejected == 1 and bpm.counters.frames == 2
            assert bpm.status == "connected"
            bpm.stop()
            await task
    run(test)


def test_readings_of_another_user_of_a_shared_monitor_go_to_quarantine():
    # the same frame as FRAME, but user 2, and one without a user id field (flags 0x16)
    user_2 = FRAME[:-3] + b"\x02" + FRAME[-2:]
    no_user = bytes([0x16]) + FRAME[1:-3] + FRAME[-2:]

    async def test():
        async with VirtualRadio() as radio:
            await health_peripheral(radio, "blood_pressure", [user_2, no_user, FRAME]).start()
            sink = Sink()
            bpm = transport(radio, sink, user=1)
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2 and bpm.status == "connected")
            assert {o.context["user"] for o in sink.observations} == {"1"}
            assert sink.rejected == [
                (BP_MEASUREMENT, "a reading of device user 2, not this patient's user 1",
                 user_2),
                (BP_MEASUREMENT, "a reading of device user none given, not this patient's "
                                 "user 1", no_user)]
            bpm.stop()
            await task
    run(test)


def test_a_crashing_parser_or_submit_does_not_stop_the_transport():
    calls = []

    def flaky(frame: bytes, ctx: ParseContext):
        calls.append(frame)
        if len(calls) == 1:
            raise ZeroDivisionError("driver bug")
        return ble_blood_pressure.parse(frame, ctx)

    async def test():
        async with VirtualRadio() as radio:
            await health_peripheral(radio, "blood_pressure", [FRAME, FRAME, FRAME]).start()
            sink = Sink()
            submits = []

            def submit(observations):
                submits.append(observations)
                if len(submits) == 1:
                    raise OSError("outbox full")
                sink.submit(observations)

            bpm = transport(radio, sink, dataclasses.replace(ble_blood_pressure.DRIVER,
                                                             parse=flaky))
            bpm.submit = submit
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2)
            reasons = [reason for _, reason, _ in sink.rejected]
            assert reasons == ["driver ble_blood_pressure crashed: ZeroDivisionError: driver bug",
                               "submit failed: OSError: outbox full"]
            assert all(raw == FRAME for _, _, raw in sink.rejected)
            bpm.stop()
            await task
    run(test)


def test_reads_go_to_the_parser_as_features_with_the_source():
    seen: list[tuple[str, dict]] = []

    def parse(frame: bytes, ctx: ParseContext):
        seen.append((ctx.source, dict(ctx.features)))
        return []

    scale = Driver(name="test_scale", version="1", transport="ble", parse=parse,
                   description="d", ble=BleMatch(service_uuids=("181D",),
                                                 characteristics=("2A9D",),
                                                 reads=("2A9E",)))

    async def test():
        async with VirtualRadio() as radio:
            await health_peripheral(radio, "weight_scale", [b"\x00\x10\x27"],
                                    features={"2A9E": b"\x01\x02\x03\x04"}).start()
            sink = Sink()
            t = transport(radio, sink, scale)
            task = asyncio.create_task(t.run())
            await until(lambda: seen)
            assert seen == [(uuid_str("2A9D"), {uuid_str("2A9E"): b"\x01\x02\x03\x04"})]
            t.stop()
            await task
    run(test)


def test_a_device_advertising_no_service_is_found_by_name_and_pinned_by_address():
    named = dataclasses.replace(
        ble_blood_pressure.DRIVER, ble=dataclasses.replace(ble_blood_pressure.DRIVER.ble,
                                                           local_name=r"^BPM-\d+$"))

    def quiet_bpm(radio: VirtualRadio, name: str, frame: bytes) -> VirtualPeripheral:
        measurement = GattCharacteristic("2A35", ("indicate",), frames=[frame])
        return VirtualPeripheral(radio, name, [GattService("1810", [measurement],
                                                           advertise=False)])

    async def test():
        async with VirtualRadio() as radio:
            await quiet_bpm(radio, "Other-1", FRAME).start()
            second = FRAME[:10] + bytes([0x02]) + FRAME[11:]
            await quiet_bpm(radio, "BPM-41", FRAME).start()
            wanted = await quiet_bpm(radio, "BPM-42", second).start()
            sink = Sink()
            bpm = transport(radio, sink, named, address=wanted.address.lower())
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2)
            assert {o.raw for o in sink.observations} == {second}
            bpm.stop()
            await task
            plain = transport(radio, Sink())  # by service UUID only: none advertises one
            task = asyncio.create_task(plain.run())
            await until(lambda: plain.status == "out-of-range")
            plain.stop()
            await task
    run(test)


def test_out_of_range_then_back_reconnects_and_receives_again(caplog):
    caplog.set_level(logging.INFO, logger="telemon.ble")

    async def test():
        async with VirtualRadio() as radio:
            bp = await health_peripheral(radio, "blood_pressure", [FRAME]).start()
            sink = Sink()
            bpm = transport(radio, sink)
            task = asyncio.create_task(bpm.run())
            await until(lambda: len(sink.observations) == 2)
            await bp.vanish()
            await until(lambda: bpm.status == "out-of-range")
            assert bpm.reason == "connection lost"
            await until(lambda: "not found in a 0.25 s scan" in bpm.reason)
            assert bpm.status == "out-of-range"  # not "scanning" while it looks again
            later = FRAME[:10] + bytes([0x02]) + FRAME[11:]  # the next day's reading
            bp.push(BP_MEASUREMENT, later)
            await bp.reappear()
            await until(lambda: len(sink.observations) == 4 and bpm.status == "connected")
            assert sink.observations[2].raw == later
            assert sink.observations[2].effective.day == 2
            assert bpm.status == "connected" and bpm.counters.connections == 2
            bpm.stop()
            await task
            statuses = sink.statuses
            assert statuses.index("out-of-range") < len(statuses) - statuses[::-1].index(
                "connected") - 1
            assert "needs-pairing" not in statuses

    run(test)
    messages = [r.getMessage() for r in caplog.records if r.name == "telemon.ble"]
    assert any("OUT OF RANGE: connection lost" in m for m in messages)
    assert not any("NEEDS PAIRING" in m for m in messages)


def test_a_device_that_needs_pairing_is_told_apart_from_out_of_range(caplog):
    caplog.set_level(logging.INFO, logger="telemon.ble")

    async def test():
        async with VirtualRadio() as radio:
            bp = await health_peripheral(radio, "blood_pressure", [FRAME],
                                         security="authentication").start()
            sink = Sink()
            unpaired = transport(radio, sink, address=bp.address)
            task = asyncio.create_task(unpaired.run())
            await until(lambda: unpaired.status == "needs-pairing")
            assert unpaired.reason == "insufficient authentication (ATT 0x05)"
            await asyncio.sleep(0.1)  # it retries, and stays needs-pairing
            assert "out-of-range" not in sink.statuses and sink.observations == []
            unpaired.stop()
            await task
            paired = transport(radio, sink, address=bp.address, pair=True)
            task = asyncio.create_task(paired.run())
            await until(lambda: len(sink.observations) == 2 and paired.status == "connected")
            assert paired.status == "connected"
            paired.stop()
            await task

    run(test)
    messages = [r.getMessage() for r in caplog.records if r.name == "telemon.ble"]
    assert any("NEEDS PAIRING" in m and "insufficient authentication" in m for m in messages)
    assert not any("OUT OF RANGE" in m for m in messages)


def test_no_device_with_the_service_is_out_of_range_and_stop_ends_a_long_scan():
    async def test():
        async with VirtualRadio() as radio:
            await health_peripheral(radio, "heart_rate").start()  # another service only
            sink = Sink()
            bpm = transport(radio, sink)
            task = asyncio.create_task(bpm.run())
            await until(lambda: bpm.status == "out-of-range")
            assert bpm.reason.startswith("not found in a 0.25 s scan for services "
                                         + BP_SERVICE)
            assert bpm.counters.connections == 0
            bpm.scan_timeout = 60
            await asyncio.sleep(0.4)  # the 0.25 s scan and a backoff are over: a long scan
            assert radio.central.scanning
            bpm.stop()
            async with asyncio.timeout(1):
                await task
            assert bpm.status == "stopped"
    run(test)


def test_a_value_cut_by_the_default_mtu_is_rejected_not_misread():
    async def test():
        async with VirtualRadio() as radio:
            too_long = FRAME + bytes(6)  # 25 bytes: more than 20 fit at ATT_MTU 23
            bp = await health_peripheral(radio, "blood_pressure", [FRAME, too_long],
                                         max_mtu=23).start()
            sink = Sink()
            bpm = transport(radio, sink)
            task = asyncio.create_task(bpm.run())
            await until(lambda: sink.rejected)
            assert len(sink.observations) == 2  # the 19-byte frame fits
            _source, reason, raw = sink.rejected[0]
            assert raw == too_long[:20] and "1 unexpected byte" in reason
            assert [(t.length, t.mtu) for t in bp.truncated] == [(25, 23)]
            bpm.stop()
            await task
    run(test)


# ---------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc, status", [
    (BleakGATTProtocolError(0x05), "needs-pairing"),
    (BleakGATTProtocolError(0x0F), "needs-pairing"),
    (BleakGATTProtocolError(0x0C), "needs-pairing"),
    (BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"]), "needs-pairing"),
    (BleakDBusError("org.bluez.Error.AuthenticationFailed", []), "needs-pairing"),
    (BleakGATTProtocolError(0x02), "error"),
    (TimeoutError(), "out-of-range"),
    (OutOfRange("connection lost"), "out-of-range"),
    (BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]), "error"),
])
def test_classify_tells_pairing_from_range_from_errors(exc, status):
    assert classify(exc)[0] == status
