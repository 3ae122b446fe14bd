"""Simulated patients and devices (telemon.sim, telemon.testing): the physiological model and
its events, the frame encoders against the REAL parsers (round trips over hypothesis values),
SimTransport at a speed-up, the sim drivers and config keys, a pty serial device read with
pyserial, and a simulated BLE device over the virtual radio."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from telemon import config as config_module
from telemon import dsp, sim
from telemon.codes import KNOWN
from telemon.config import DeviceConfig, check_file, load
from telemon.drivers import Driver, FrameError, ParseContext, Simulator
from telemon.gatt import float32 as parse_float32
from telemon.gatt import sfloat as parse_sfloat
from telemon.gatt import uuid128
from telemon.models import AbsentReason
from telemon.plugin_manager import make_plugin_manager
from telemon.plugins.drivers import (
    ble_blood_pressure,
    ble_glucose,
    ble_heart_rate,
    ble_pulse_oximeter,
    ble_thermometer,
    ble_weight_scale,
    serial_contec,
    serial_nonin,
    sim_devices,
)

CPH = ZoneInfo("Europe/Copenhagen")
START = datetime(2026, 3, 2, tzinfo=CPH)  # a Monday at midnight, Copenhagen
DAY = timedelta(days=1)
SIM = {driver.name: driver for driver in sim_devices.DRIVERS}
CODE = {key: KNOWN[key].code.code for key in KNOWN}


def ctx(source: str = "", features=None, received: datetime = START) -> ParseContext:
    return ParseContext(patient="p-1", device="d-1", gateway="gw-1", received=received,
                        device_tz=CPH, source=source, features=features or {})


def by_code(observations) -> dict:
    return {o.code.code: o for o in observations}


# =========================================================================================
# The model
# =========================================================================================


def test_same_seed_same_patient_in_any_order():
    times = [START + timedelta(hours=7 * i, minutes=13 * i) for i in range(40)]
    first = sim.PatientModel(11)
    forward = [first.sample(code, t) for t in times for code in ("spo2", "weight", "bp_sys")]
    second = sim.PatientModel(11)
    backward = [second.sample(code, t) for t in reversed(times)
                for code in ("bp_sys", "weight", "spo2")]
    assert forward == list(reversed(backward))
    other = sim.PatientModel(12)
    assert forward != [other.sample(code, t) for t in times for code in ("spo2", "weight",
                                                                         "bp_sys")]
    # the beat timeline too: from a fresh model, or from one that computed other days first
    window = (START + timedelta(hours=9), START + timedelta(hours=9, minutes=2))
    first.rr_intervals(START + 5 * DAY, START + 5 * DAY + timedelta(minutes=1))
    assert first.rr_intervals(*window) == sim.PatientModel(11).rr_intervals(*window)


def test_sample_is_true_value_plus_bounded_noise():
    model = sim.PatientModel(3)
    quiet = sim.PatientModel(3, noise=False)
    t = START + timedelta(hours=8)
    for code in ("spo2", "pulse", "weight", "bp_sys", "bp_dia", "temperature", "glucose",
                 "resp_rate", "fev1"):
        assert quiet.sample(code, t) == model.true_value(code, t)
        values = [model.sample(code, t + timedelta(seconds=s)) for s in range(200)]
        spread = np.std(np.array(values) - model.true_value(code, t))
        assert 0.5 * sim.NOISE[code] < spread < 1.5 * sim.NOISE[code], code
        assert max(abs(v - model.true_value(code, t)) for v in values) <= (
            3 * sim.NOISE[code] + 1e-6)
    assert model.sample("bp_mean", t) == pytest.approx(
        model.sample("bp_dia", t) + (model.sample("bp_sys", t) - model.sample("bp_dia", t)) / 3)
    with pytest.raises(ValueError, match="timezone-aware"):
        model.sample("spo2", datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="has no 'cholesterol'"):
        model.true_value("cholesterol", t)


@pytest.mark.parametrize("code, low, high", [
    ("spo2", 89, 100), ("pulse", 50, 100), ("weight", 79.5, 84.5), ("bp_sys", 105, 165),
    ("bp_dia", 60, 100), ("temperature", 36.0, 37.5), ("glucose", 3.5, 11.0),
    ("resp_rate", 10, 24), ("fev1", 1.1, 1.9)])
def test_a_stable_patient_stays_plausible_for_90_days(code, low, high):
    model = sim.PatientModel.for_scenario("stable", start=START, seed=2)
    times = [START + timedelta(days=d, hours=h) for d in range(90) for h in (7.5, 13, 20)]
    values = [model.sample(code, t) for t in times]
    plausible = KNOWN[code].plausible
    assert all(plausible[0] <= v <= plausible[1] for v in values)
    assert low <= min(values) and max(values) <= high, (min(values), max(values))
    assert np.std(values) > 0  # it does vary


def test_circadian_rhythm():
    model = sim.PatientModel(0, noise=False)
    day = START + 10 * DAY

    def at(hour):
        return day + timedelta(hours=hour)

    # Mackowiak 1992: nadir around 6 AM, peak 4-6 PM, 0.5 C between them
    assert model.true_value("temperature", at(17)) - model.true_value("temperature", at(6)) \
        == pytest.approx(0.47, abs=0.05)
    # a dipper: sleep systolic 10-20 % below awake
    asleep = np.mean([model.true_value("bp_sys", at(h)) for h in (1, 2, 3, 4, 5)])
    awake = np.mean([model.true_value("bp_sys", at(h)) for h in (10, 12, 14, 16, 18)])
    assert 0.8 < asleep / awake < 0.92
    # glucose rises after a meal (breakfast at 08:00) and is back before lunch
    assert model.true_value("glucose", at(9)) > model.true_value("glucose", at(7.5)) + 1.5


def test_event_envelope_and_validation():
    event = sim.Event("copd-exacerbation", START, severity=0.5)
    assert (event.onset, event.duration, event.recovery) == (2 * DAY, 5 * DAY, 7 * DAY)
    assert event.level(START - timedelta(seconds=1)) == 0
    assert event.level(START + DAY) == pytest.approx(0.25)
    assert event.level(START + 3 * DAY) == 0.5
    assert event.level(START + 5 * DAY + 3.5 * DAY) == pytest.approx(0.25)
    assert event.level(event.end) == 0 and event.end == START + 12 * DAY
    with pytest.raises(ValueError, match="unknown event kind"):
        sim.Event("flu", START)
    with pytest.raises(ValueError, match="timezone-aware"):
        sim.Event("af", datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="duration >= onset"):
        sim.Event("hf-decompensation", START, duration=DAY)
    with pytest.raises(ValueError, match="unknown scenario"):
        sim.PatientModel.for_scenario("zombie", start=START)


@pytest.mark.parametrize("kind", sim.EVENT_KINDS)
def test_events_add_exactly_their_documented_effects(kind):
    stable = sim.PatientModel(4, noise=False)
    event = sim.Event(kind, START + DAY)
    sick = sim.PatientModel(4, events=[event], noise=False)
    for hours in range(0, 24 * 16, 7):
        t = START + timedelta(hours=hours)
        for code, effect in sim.EFFECTS[kind].items():
            base = getattr(stable.baseline, code) if code in sim.RELATIVE else 1.0
            expected = stable.true_value(code, t) + effect * event.level(t) * base
            assert sick.true_value(code, t) == pytest.approx(expected), (code, t)
        assert sick.true_value("bp_sys", t) == stable.true_value("bp_sys", t)


def weights(model, start, days) -> dict:
    """Morning weights by day through the real scale parser, as the gateway gets them."""
    out = {}
    for moment, frame in sim.frames("weight_scale", model, start, start + days * DAY):
        [weight] = ble_weight_scale.parse(frame, ctx(features=sim.WEIGHT_FEATURES))
        out[(moment - start).days] = float(weight.value)
    return out


def test_hf_decompensation_gains_over_2_kg_in_3_days_and_trips_the_esc_rule():
    model = sim.PatientModel.for_scenario("hf-decompensation", start=START, seed=8)
    [event] = model.events
    assert event.start == START + 3 * DAY
    quiet = sim.PatientModel(8, events=model.events, noise=False)
    morning = timedelta(hours=7, minutes=30)
    gain = (quiet.true_value("weight", event.start + 3 * DAY + morning)
            - quiet.true_value("weight", event.start + morning))
    assert 2.0 < gain < 3.5  # the documented +3 kg over the 3-day onset, with drift
    daily = weights(model, START, 16)
    assert len(daily) == 16
    three_day = {d: daily[d] - daily[d - 3] for d in range(3, 16)}
    esc = {d for d, change in three_day.items() if change > 2.0}  # ESC: > 2 kg in 3 days
    assert esc and min(esc) in (5, 6, 7)  # during the onset (days 3-6) or just after
    assert all(three_day[d] < 1.5 for d in (3, 4))
    assert max(daily[d] for d in range(6, 10)) - np.mean([daily[0], daily[1], daily[2]]) > 2.5
    # recovered (diuresis over 4 days after day 10): back near the baseline by day 15
    assert abs(daily[15] - np.mean([daily[0], daily[1], daily[2]])) < 1.2


def test_a_stable_patient_never_trips_the_esc_weight_rule_in_90_days():
    daily = weights(sim.PatientModel.for_scenario("stable", start=START, seed=8), START, 90)
    assert max(daily[d] - daily[d - 3] for d in range(3, 90)) < 1.6


def test_copd_exacerbation_lowers_spo2_raises_pulse_and_temperature_then_recovers():
    model = sim.PatientModel.for_scenario("copd-exacerbation", start=START, seed=5)
    [event] = model.events

    def mean(code, first, last):
        return np.mean([model.sample(code, START + timedelta(days=d, hours=h))
                        for d in range(first, last) for h in (8, 15)])

    before, height, after = (0, 3), (5, 8), (16, 20)  # event: days 3 to 15 (recovered)
    assert 2.5 < mean("spo2", *before) - mean("spo2", *height) < 5.5
    assert mean("spo2", *height) < 91.5  # around Cooper 2020's 90 % line
    assert mean("pulse", *height) - mean("pulse", *before) > 6
    assert mean("temperature", *height) - mean("temperature", *before) > 0.35
    assert mean("fev1", *height) < 0.9 * mean("fev1", *before)
    assert abs(mean("spo2", *after) - mean("spo2", *before)) < 1.2
    assert event.level(START + 16 * DAY) == 0


def test_af_episode_makes_rr_irregular_and_flags_the_bp_monitor():
    model = sim.PatientModel.for_scenario("af", start=START, seed=5)
    [event] = model.events
    assert (event.start, event.end) == (START + DAY, START + 3 * DAY)

    def features(t):
        rr = np.array(model.rr_intervals(t, t + timedelta(minutes=6)))
        assert 300 < rr.size < 900 and np.all((rr > 0.25) & (rr < 2.5))
        return rr, dsp.af_features(rr)

    sinus, quiet = features(START + timedelta(hours=10))
    fib, irregular = features(START + DAY + timedelta(hours=10))
    assert np.std(sinus) / np.mean(sinus) < 0.05 and not quiet.af_suspect.any()
    assert np.std(fib) / np.mean(fib) > 0.15 and irregular.af_suspect.all()
    assert np.mean(fib) < np.mean(sinus)  # faster in AF
    # the blood-pressure monitor flags the irregular pulse only during the episode
    flags = {}
    for moment, frame in sim.frames("blood_pressure", model, START, START + 4 * DAY):
        bp, _ = ble_blood_pressure.parse(frame, ctx())
        flags[moment] = bp.flags
    assert {m for m, f in flags.items() if "irregular-pulse" in f} == {
        m for m in flags if event.start <= m < event.end}


# =========================================================================================
# Encoders against the real parsers
# =========================================================================================

specials = st.sampled_from(list(AbsentReason))
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)) \
    .map(lambda d: d.replace(microsecond=0, tzinfo=CPH))


def decimals(mantissa: int, exponents: tuple[int, int]):
    return st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-mantissa, mantissa),
                     st.integers(*exponents))


sfloats = decimals(2045, (-8, 7))
floats32 = decimals((1 << 23) - 3, (-128, 127))


@given(st.one_of(sfloats, specials))
def test_sfloat_round_trip(value):
    decoded, absent = parse_sfloat(sim.sfloat(value))
    assert (absent == value) if isinstance(value, AbsentReason) else (decoded == value)


@given(st.one_of(floats32, specials))
def test_float32_round_trip(value):
    decoded, absent = parse_float32(sim.float32(value))
    assert (absent == value) if isinstance(value, AbsentReason) else (decoded == value)


@pytest.mark.parametrize("value, expected", [
    (36.6, "6ef1"),  # mantissa 366, exponent -1: 0xF16E
    ("-0.5", "fbff"), (Decimal("120"), "7800"),
    (1200000, "b034"),  # trailing zeros move into the exponent: 1200 x 10^3
    (AbsentReason.NOT_A_NUMBER, "ff07"), (np.float64(36.6), "6ef1"), (np.int64(-3), "fd0f")])
def test_sfloat_exact_encodings(value, expected):
    assert sim.sfloat(value).hex() == expected


@pytest.mark.parametrize("value", [2046, "0.123456789", Decimal("1E+20"), math.inf])
def test_sfloat_refuses_what_it_cannot_encode_exactly(value):
    with pytest.raises(ValueError):
        sim.sfloat(value)


BP_STATUS = {0: "body-movement", 1: "cuff-loose", 2: "irregular-pulse", 5: "improper-position"}


@settings(max_examples=150)
@given(pressures=st.tuples(*[st.one_of(sfloats, specials)] * 3), kpa=st.booleans(),
       moment=st.none() | moments, pulse=st.none() | sfloats | specials,
       user=st.none() | st.integers(0, 255), status=st.none() | st.integers(0, 0xFFFF))
def test_blood_pressure_round_trip(pressures, kpa, moment, pulse, user, status):
    frame = sim.blood_pressure(*pressures, kpa=kpa, time=moment, pulse=pulse, user=user,
                               status=status)
    bp, *rest = ble_blood_pressure.parse(frame, ctx())
    assert bp.unit == ("kPa" if kpa else "mm[Hg]")
    for component, value in zip(bp.components, pressures, strict=True):
        assert (component.absent if isinstance(value, AbsentReason) else component.value) \
            == value
    assert bp.effective == (moment or START)
    assert bp.context.get("user") == (None if user is None else
                                      "unknown" if user == 0xFF else str(user))
    named = [n for bit, n in BP_STATUS.items() if status and status >> bit & 1]
    rng = {1: "pulse-above-range", 2: "pulse-below-range", 3: "pulse-range-reserved"}
    assert list(bp.flags) == named + ([rng[status >> 3 & 3]] if status and status >> 3 & 3
                                      else [])
    if pulse is None:
        assert rest == []
    else:
        [rate] = rest
        assert (rate.absent if isinstance(pulse, AbsentReason) else rate.value) == pulse


@settings(max_examples=150)
@given(raw=st.none() | st.integers(0, 0xFFFE), imperial=st.booleans(),
       moment=st.none() | moments, user=st.none() | st.integers(0, 255),
       body=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
def test_weight_round_trip(raw, imperial, moment, user, body):
    if raw is None and body is not None:
        body = None  # the service forbids BMI and height with an unsuccessful measurement
    step = sim.WEIGHT_STEP[imperial]
    weight = None if raw is None else raw * step
    bmi, height = (None, None) if body is None else (
        body[0] * Decimal("0.1"), body[1] * sim.HEIGHT_STEP[imperial])
    frame = sim.weight_measurement(weight, imperial=imperial, time=moment, user=user,
                                   bmi=bmi, height=height)
    found = by_code(ble_weight_scale.parse(frame, ctx()))
    mass = found[CODE["weight"]]
    if raw is None:
        assert (mass.value, mass.absent, mass.flags) == (
            None, AbsentReason.ERROR, ("measurement-unsuccessful",))
    else:
        assert mass.value == weight and mass.unit == ("[lb_av]" if imperial else "kg")
    assert mass.effective == (moment or START)
    if body is not None:
        assert found[CODE["bmi"]].value == bmi and found[CODE["height"]].value == height
    else:
        assert set(found) == {CODE["weight"]}


def test_weight_rounds_to_the_field_resolution():
    assert sim.weight_measurement(82.437)[1:3] == (16487).to_bytes(2, "little")
    with pytest.raises(ValueError, match="together"):
        sim.weight_measurement(80, bmi=25)
    with pytest.raises(ValueError, match="outside"):
        sim.weight_measurement(400)


MEASUREMENT = {5: "measurement-ongoing", 6: "early-estimated-data", 15: "invalid-measurement"}


@settings(max_examples=120)
@given(spo2=sfloats | specials, pulse=sfloats | specials, moment=st.none() | moments,
       unset=st.booleans(), measurement=st.none() | st.integers(0, 0xFFFF),
       sensor=st.none() | st.integers(0, 0xFFFFFF), pai=st.none() | sfloats)
def test_plx_spot_check_round_trip(spo2, pulse, moment, unset, measurement, sensor, pai):
    frame = sim.plx_spot_check(spo2, pulse, time=moment, clock_not_set=unset,
                               measurement_status=measurement, sensor_status=sensor, pai=pai)
    found = by_code(ble_pulse_oximeter.parse(frame, ctx(uuid128(0x2A5E))))
    for key, value in (("spo2", spo2), ("pulse", pulse)):
        o = found[CODE[key]]
        assert (o.absent if isinstance(value, AbsentReason) else o.value) == value
        assert o.effective == (moment if moment and not unset else START)
    assert (CODE["perfusion_index"] in found) == (pai is not None)
    flags = found[CODE["spo2"]].flags
    for bit, name in MEASUREMENT.items():
        assert (name in flags) == bool(measurement and measurement >> bit & 1)
    assert ("sensor-disconnected" in flags) == bool(sensor and sensor >> 15 & 1)


@settings(max_examples=80)
@given(spo2=sfloats, pulse=sfloats, fast=st.none() | st.tuples(sfloats, sfloats),
       slow=st.none() | st.tuples(sfloats, sfloats), pai=st.none() | sfloats)
def test_plx_continuous_round_trip(spo2, pulse, fast, slow, pai):
    frame = sim.plx_continuous(spo2, pulse, fast=fast, slow=slow, pai=pai)
    found = by_code(ble_pulse_oximeter.parse(frame, ctx(uuid128(0x2A5F))))
    assert (found[CODE["spo2"]].value, found[CODE["pulse"]].value) == (spo2, pulse)
    context = found[CODE["spo2"]].context
    assert context["mode"] == "continuous"
    for name, pair in (("fast", fast), ("slow", slow)):
        assert (context.get(f"spo2_{name}"), context.get(f"pulse_{name}")) == (
            (None, None) if pair is None else (str(pair[0]), str(pair[1])))


@settings(max_examples=120)
@given(rate=st.integers(0, 0xFFFF), counts=st.lists(st.integers(0, 0xFFFF), max_size=9),
       energy=st.none() | st.integers(0, 0xFFFF), contact=st.sampled_from([None, True, False]))
def test_heart_rate_round_trip(rate, counts, energy, contact):
    rr = [Decimal(c) / 1024 for c in counts]
    frame = sim.heart_rate_measurement(rate, rr=rr, energy=energy, contact=contact)
    observations = ble_heart_rate.parse(frame, ctx(uuid128(0x2A37)))
    assert observations[0].value == rate
    intervals = [o.value for o in observations if o.code.code == CODE["rr_interval"]]
    assert intervals == rr
    energies = [o.value for o in observations if o.code.code == CODE["energy_expended"]]
    assert energies == ([] if energy is None else [energy])
    assert observations[0].context["sensor_contact"] == {
        None: "not-supported", True: "detected", False: "not-detected"}[contact]


@settings(max_examples=100)
@given(value=floats32 | specials, fahrenheit=st.booleans(), moment=st.none() | moments,
       site=st.none() | st.integers(1, 9))
def test_temperature_round_trip(value, fahrenheit, moment, site):
    frame = sim.temperature_measurement(value, fahrenheit=fahrenheit, time=moment, site=site)
    [o] = ble_thermometer.parse(frame, ctx(uuid128(0x2A1C)))
    assert (o.absent if isinstance(value, AbsentReason) else o.value) == value
    assert o.unit == ("[degF]" if fahrenheit else "Cel")
    assert o.effective == (moment or START)
    assert o.context.get("body_site") == (None if site is None
                                          else ble_thermometer.SITES[site][0])


@settings(max_examples=120)
@given(sequence=st.integers(0, 0xFFFF), moment=st.none() | moments,
       concentration=st.none() | decimals(2045, (-3, 3)), mmol=st.booleans(),
       sample_type=st.integers(1, 10), offset=st.none() | st.integers(-600, 600),
       status=st.none() | st.integers(0, 0x0FFF))
def test_glucose_round_trip(sequence, moment, concentration, mmol, sample_type, offset,
                            status):
    frame = sim.glucose_measurement(sequence, moment, concentration, mmol=mmol,
                                    sample_type=sample_type, time_offset=offset, status=status)
    [o] = ble_glucose.parse(frame, ctx(uuid128(0x2A18)))
    assert o.context["sequence"] == str(sequence)
    assert o.value == concentration
    assert o.unit == ("mmol/L" if mmol else "mg/dL")
    if moment is not None:
        assert o.effective == moment + timedelta(minutes=offset or 0)
    if concentration is not None:
        key = ble_glucose.TYPES[sample_type][1]
        assert o.code.code == CODE[key]


def stream_values(driver, stream: bytes, source: str = "/dev/ttyUSB0") -> list[tuple]:
    """Feed a byte stream through the driver's real framer and parser."""
    framer = driver.stream.framer()
    out = framer.feed(stream) + framer.flush()
    assert not [item for item in out if isinstance(item, FrameError)]
    values = []
    for frame in out:
        spo2, pulse = driver.parse(frame, ctx(source))
        values.append((spo2.value, pulse.value, spo2.flags))
    return values


NONIN = {driver.name: driver for driver in serial_nonin.DRIVERS}
CONTEC = {driver.name: driver for driver in serial_contec.DRIVERS}
oxygen = st.none() | st.integers(0, 100)


@settings(max_examples=60)
@given(fmt=st.sampled_from([2, 7]), seconds=st.lists(
    st.tuples(oxygen, st.none() | st.integers(0, 510), st.sampled_from([0, 0x20, 0x08])),
    min_size=1, max_size=3))
def test_nonin_format2_and_7_round_trip_through_the_framer(fmt, seconds):
    stream = b"".join(sim.nonin_packet(s, p, data_format=fmt, status=status)
                      + sim.nonin_packet(s, p, data_format=fmt) * 2
                      for s, p, status in seconds)
    values = stream_values(NONIN[f"serial_nonin_format{fmt}"], stream)
    assert [(v[0], v[1]) for v in values] == [
        (None if s is None else Decimal(s), None if p is None else Decimal(p))
        for s, p, _ in seconds]
    for (_, _, status), (_, _, flags) in zip(seconds, values, strict=True):
        assert ("artifact" in flags) == (status == 0x20)
        assert ("sensor-alarm" in flags) == (status == 0x08)


@given(spo2=oxygen, pulse=st.none() | st.integers(0, 510))
def test_nonin_format8_round_trip(spo2, pulse):
    stream = sim.nonin_format8(spo2, pulse) + sim.nonin_format8(spo2, pulse)
    values = stream_values(NONIN["serial_nonin_format8"], stream)
    assert values[0][:2] == (None if spo2 is None else Decimal(spo2),
                             None if pulse is None else Decimal(pulse))


@settings(max_examples=60)
@given(firmware=st.sampled_from(["legacy", "v2"]), spo2=st.integers(1, 100),
       pulse=st.integers(1, 254), pleth=st.integers(0, 127), finger_out=st.booleans())
def test_contec_round_trip_through_the_framer(firmware, spo2, pulse, pleth, finger_out):
    if firmware == "legacy":
        packets = [sim.contec_legacy_packet(spo2, pulse, pleth=pleth, finger_out=finger_out)]
        packets *= serial_contec.PACKETS_PER_FRAME
        driver = CONTEC["serial_contec_cms50d_legacy"]
    else:
        packets = [sim.contec_v2_package(spo2, pulse, pleth=pleth, finger_out=finger_out)]
        packets *= serial_contec.PACKETS_PER_FRAME
        driver = CONTEC["serial_contec_cms50d_v2"]
    [(value, rate, flags)] = stream_values(driver, b"".join(packets))
    if finger_out:
        assert (value, rate) == (None, None) and "finger-out" in flags
    else:
        assert (value, rate, flags) == (Decimal(spo2), Decimal(pulse), ())


@pytest.mark.parametrize("profile", list(sim.SIMULATORS))
def test_every_simulated_device_decodes_with_its_real_driver(profile):
    """A week of every device's frames (a COPD exacerbation on the way), through the real
    framer and parser: nothing is rejected and the values are the model's."""
    model = sim.PatientModel.for_scenario("copd-exacerbation", start=START, seed=9)
    simulator = sim.SIMULATORS[profile]
    real = SIM[f"sim_{profile}"]
    sent = sim.frames(profile, model, START, START + (2 if simulator.session else 7) * DAY)
    assert sent and all(START <= t < START + 7 * DAY for t, _ in sent)
    framer = real.stream.framer() if real.stream else None
    count = 0
    for moment, frame in sent:
        items = framer.feed(frame) if framer else [frame]
        for item in items:
            assert isinstance(item, bytes), item
            found = by_code(real.parse(item, ctx(simulator.source, simulator.features,
                                                 received=moment)))
            count += 1
            spo2 = found.get(CODE["spo2"])
            if spo2 is not None:
                assert spo2.value == min(100, round(model.sample("spo2", moment)))
            if CODE["weight"] in found:
                assert found[CODE["weight"]].value == sim.rounded(
                    model.sample("weight", moment), "0.1")
                assert str(found[CODE["weight"]].value).count(".") == 1
            if CODE["temperature"] in found:
                assert found[CODE["temperature"]].value == sim.rounded(
                    model.sample("temperature", moment), "0.1")
            if CODE["heart_rate"] in found:
                rr = [o.value for o in found.values() if o.code.code == CODE["rr_interval"]]
                assert 40 < found[CODE["heart_rate"]].value < 130
                assert len(rr) <= 1 or all(0.3 < x < 1.6 for x in rr)
    assert count == len(sent)


# =========================================================================================
# Sim drivers, config, SimTransport
# =========================================================================================


def test_sim_driver_declarations():
    assert sorted(SIM) == sorted(f"sim_{p}" for p in sim.SIMULATORS)
    for driver in sim_devices.DRIVERS:
        assert driver.transport == "sim" and driver.problems() == []
        real = sim_devices._REAL[sim.REAL_DRIVERS[driver.name[4:]]]
        assert driver.parse is real.parse and driver.codes == real.codes
    registered = []
    sim_devices.register_drivers(register=registered.append)
    assert registered == list(sim_devices.DRIVERS)
    bare = Driver(name="sim_x", version="1", transport="sim", parse=lambda f, c: [],
                  description="d")
    assert bare.problems() == ["a sim driver needs a Simulator (simulate=...)"]
    bad = dataclasses.replace(bare, simulate=Simulator(lambda m, t: b"", ("8:00", "24:00"),
                                                       every=0))
    assert bad.problems() == ["simulate.schedule time '8:00' is not HH:MM",
                              "simulate.schedule time '24:00' is not HH:MM",
                              "simulate.session and jitter must be >= 0, every > 0"]


REGISTRY = make_plugin_manager()[1]
SIM_REGISTRY = dataclasses.replace(REGISTRY, drivers={**REGISTRY.drivers, **SIM})
EDGE = ('role = "edge"\norganisation = "org-1"\ngateway = "gw-1"\n[broker]\n'
        'url = "mqtt://localhost"\n[storage]\npath = "/var/lib/telemon"\n')


def device(driver: str, extra: str = "") -> str:
    return f'[[devices]]\ndriver = "{driver}"\npatient = "pt-1"\ndevice = "d-{driver}"\n{extra}'


def test_config_sim_keys(tmp_path):
    assert config_module.SIM_SCENARIOS == sim.SCENARIOS
    path = tmp_path / "edge.toml"
    path.write_text(EDGE + device("sim_weight_scale", 'scenario = "hf-decompensation"\n'
                                  "seed = 7\nspeed = 3600\n") + device("sim_glucose"))
    config = load(path, SIM_REGISTRY)
    scale, meter = config.devices
    assert (scale.scenario, scale.seed, scale.speed) == ("hf-decompensation", 7, 3600.0)
    assert isinstance(scale.speed, float)
    assert (meter.scenario, meter.seed, meter.speed) == (None, None, None)
    path.write_text(EDGE + device("sim_weight_scale", 'scenario = "zombie"\nseed = -1\n'
                                  'speed = 0\naddress = "/dev/ttyUSB0"\n')
                    + device("ble_blood_pressure", 'scenario = "stable"\nseed = 1\n'))
    assert [str(p) for p in check_file(path, SIM_REGISTRY)] == [
        'devices[0].scenario: must be "stable" or "copd-exacerbation" or "hf-decompensation" '
        'or "af", got "zombie"',
        "devices[0].seed: must be an integer between 0 and 9223372036854775807, got -1",
        "devices[0].speed: must be a number above 0, got 0",
        "devices[1].scenario: is only used by sim drivers (driver ble_blood_pressure is ble)",
        "devices[1].seed: is only used by sim drivers (driver ble_blood_pressure is ble)"]
    path.write_text(EDGE + device("sim_weight_scale", 'address = "/dev/ttyUSB0"\n'))
    assert [str(p) for p in check_file(path, SIM_REGISTRY)] == [
        "devices[0].address: is not used by sim drivers"]


class Sink:
    def __init__(self) -> None:
        self.observations: list = []
        self.rejected: list[tuple[str, str, bytes]] = []

    def submit(self, observations) -> None:
        self.observations.extend(observations)

    def reject(self, source: str, reason: str, raw: bytes) -> None:
        self.rejected.append((source, reason, raw))


def transport(name: str, sink: Sink, *, scenario: str | None = "stable", seed: int | None = 3,
              speed: float | None = 2e6, days: float = 2.0, **options) -> sim.SimTransport:
    config = DeviceConfig(driver=name, patient="pt-1", device=f"dev-{name}", address=None,
                          user=None, scenario=scenario, seed=seed, speed=speed)
    return sim.SimTransport(SIM[name], config, gateway_id="gw-1", tz=CPH, submit=sink.submit,
                            reject=sink.reject, start=START, until=START + days * DAY,
                            **options)


def run(coroutine, timeout: float = 20.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coroutine
    return asyncio.run(bounded())


def test_sim_transport_reads_at_the_schedule_through_the_real_parser():
    sink = Sink()
    reader = transport("sim_blood_pressure", sink, days=3)
    assert reader.status == "idle"
    began = time.monotonic()
    run(reader.run())
    elapsed = time.monotonic() - began
    assert 0.12 < elapsed < 5  # 3 days at 2,000,000x: ~0.13 s, plus work
    assert reader.status == "stopped" and sink.rejected == []
    assert reader.counters == sim.Counters(connections=6, frames=6, observations=12,
                                           rejected=0)
    bps = [o for o in sink.observations if o.code.code == CODE["bp"]]
    assert len(bps) == 6 and all(o.driver == "ble_blood_pressure" for o in bps)
    expected = list(sim.reading_times(sim.SIMULATORS["blood_pressure"], START, START + 3 * DAY,
                                      seed=3, tz=CPH, salt="sim_blood_pressure"))
    assert [o.effective for o in bps] == [t.replace(microsecond=0) for t in expected]
    for o, hour in zip(bps, [8, 20] * 3, strict=True):  # morning and evening, +-15 min
        local = o.effective.astimezone(CPH)
        assert abs(local.hour * 60 + local.minute - hour * 60) <= 16
        assert o.context["simulated"] == "stable" and o.context["time_source"] == "device"
    model = sim.PatientModel(3)
    first = bps[0]
    assert [c.value for c in first.components[:2]] == [
        round(model.sample(c, expected[0])) for c in ("bp_sys", "bp_dia")]


def test_sim_transport_is_deterministic_per_seed():
    def readings(seed):
        sink = Sink()
        run(transport("sim_weight_scale", sink, seed=seed, scenario="hf-decompensation",
                      days=8).run())
        return [(o.id, o.value, o.effective) for o in sink.observations]

    first, again, other = readings(5), readings(5), readings(6)
    assert len(first) == 8 and first == again
    assert [v for _, v, _ in first] != [v for _, v, _ in other]
    assert first[7][1] - first[2][1] > 2  # the decompensation (from day 3) shows


def test_sim_transport_streams_serial_frames_through_the_real_framer():
    sink = Sink()
    reader = transport("sim_nonin_format2", sink, days=1, speed=5e5)
    run(reader.run())
    assert reader.counters.connections == 1 and reader.counters.frames == 60
    assert reader.counters.observations == 120 and sink.rejected == []
    times = sorted({o.effective for o in sink.observations})
    assert len(times) == 60 and times[-1] - times[0] == timedelta(seconds=59)
    assert all(o.driver == "serial_nonin_format2" and o.context["packets"] == "3"
               for o in sink.observations)


def test_sim_transport_rejects_what_does_not_decode_and_keeps_going():
    sink = Sink()
    reader = transport("sim_thermometer", sink, days=4, corrupt=1.0)
    run(reader.run())
    assert reader.counters.rejected == 4 and sink.observations == []
    source, reason, raw = sink.rejected[0]
    assert source == uuid128(0x2A1C) and "frame ends before" in reason and len(raw) == 12

    def broken(frame, context):
        raise KeyError("bug")

    crashing = dataclasses.replace(SIM["sim_glucose"], parse=broken)
    sink = Sink()
    config = DeviceConfig("sim_glucose", "pt-1", "g-1", None, None, seed=1, speed=1e6)
    reader = sim.SimTransport(crashing, config, gateway_id="gw", tz=CPH, submit=sink.submit,
                              reject=sink.reject, start=START, until=START + 2 * DAY)
    run(reader.run())
    assert [r[1] for r in sink.rejected] == ["driver sim_glucose crashed: KeyError: 'bug'"] * 2


def test_sim_transport_stops_from_another_thread_and_before_it_runs():
    sink = Sink()
    reader = transport("sim_blood_pressure", sink, speed=1.0, days=30)  # nothing for hours

    async def stop_soon():
        threading.Timer(0.2, reader.stop).start()
        began = time.monotonic()
        await reader.run()
        return time.monotonic() - began

    assert 0.15 < run(stop_soon(), timeout=5) < 2
    assert reader.status == "stopped" and sink.observations == []
    assert reader.now() is not None and reader.now() - START < timedelta(seconds=5)
    early = transport("sim_blood_pressure", sink, speed=1e6)
    early.stop()
    began = time.monotonic()
    run(early.run(), timeout=5)
    assert time.monotonic() - began < 0.5 and early.counters.frames == 0


def test_sim_transport_defaults_from_the_device_config():
    sink = Sink()
    reader = transport("sim_pulse_oximeter", sink, scenario=None, seed=None, speed=None)
    assert (reader.scenario, reader.seed, reader.speed) == (
        "stable", sim.device_seed("dev-sim_pulse_oximeter"), 1.0)
    zoneless = sim.SimTransport(SIM["sim_glucose"], DeviceConfig("x", "p", "d", None, None),
                                gateway_id="g", tz=None, submit=sink.submit,
                                reject=sink.reject)
    assert zoneless.tz == CPH  # the edge's default zone when the gateway gives none
    with pytest.raises(ValueError, match="not a sim driver"):
        sim.SimTransport(ble_blood_pressure.DRIVER, DeviceConfig("x", "p", "d", None, None),
                         gateway_id="g", tz=CPH, submit=sink.submit, reject=sink.reject)


# =========================================================================================
# telemon.testing: a pty serial device, a BLE device on the virtual radio
# =========================================================================================

def open_port(device, driver) -> serial.Serial:
    settings = driver.serial
    return serial.Serial(device.port, baudrate=settings.baudrate, bytesize=settings.bytesize,
                         parity=settings.parity, stopbits=settings.stopbits, timeout=0.1)


def gateway_reads(port, framer, wanted: int, seconds: float = 6.0) -> tuple[list, float]:
    out, began = [], time.monotonic()
    while sum(isinstance(i, bytes) for i in out) < wanted and time.monotonic() - began < seconds:
        out += framer.feed(port.read(max(1, port.in_waiting)))
    return out, time.monotonic() - began


@pytest.mark.parametrize("driver", [NONIN["serial_nonin_format2"],
                                    CONTEC["serial_contec_cms50d_legacy"]],
                         ids=lambda d: d.name)
def test_pty_device_streams_at_the_real_rate_and_decodes(driver):
    from telemon.testing import serial_device

    model = sim.PatientModel.for_scenario("copd-exacerbation", start=START, seed=4)
    with serial_device(driver.name, model, start=START + 5 * DAY, speed=60) as device:
        port = open_port(device, driver)
        try:
            out, elapsed = gateway_reads(port, driver.stream.framer(), 3)
        finally:
            port.close()
    frames = [item for item in out if isinstance(item, bytes)]
    errors = [item for item in out if isinstance(item, FrameError)]
    assert len(frames) == 3
    assert all("synchronised" in str(e) for e in errors) and len(errors) <= 1
    assert 1.5 < elapsed < 4.5  # a second a frame (the first may be partly read)
    expected = {(min(100, round(model.sample("spo2", START + 5 * DAY + timedelta(minutes=n)))),
                 round(model.sample("pulse", START + 5 * DAY + timedelta(minutes=n))))
                for n in range(8)}
    for frame in frames:
        spo2, pulse = driver.parse(frame, ctx(device.port))
        assert (int(spo2.value), int(pulse.value)) in expected
        assert spo2.value < 93  # the exacerbation's height: SpO2 down from 94
    assert device.sent >= 3 * len(frames[0])


def test_pty_contec_v2_streams_only_after_start_and_stops_without_keep_alive():
    from telemon.testing import serial_device

    driver = CONTEC["serial_contec_cms50d_v2"]
    with serial_device("contec_v2", seed=2, keep_alive_timeout=1.6) as device:
        port = open_port(device, driver)
        try:
            time.sleep(0.4)
            assert port.in_waiting == 0 and not device.streaming
            port.write(driver.stream.on_open)
            port.flush()
            out, _ = gateway_reads(port, driver.stream.framer(), 1, seconds=3)
            assert device.streaming and bytes(device.written) == driver.stream.on_open
            [frame] = [item for item in out if isinstance(item, bytes)]
            spo2, _ = driver.parse(frame, ctx(device.port))
            assert 85 <= spo2.value <= 100
            time.sleep(1.0)  # no keep-alive: the device falls silent, as the firmware does
            port.reset_input_buffer()
            time.sleep(0.3)
            assert port.in_waiting == 0 and not device.streaming
        finally:
            port.close()
    with pytest.raises(ValueError, match="unknown serial profile"):
        serial_device("acme")


def test_ble_device_over_the_virtual_radio_with_the_real_driver():
    pytest.importorskip("bumble")
    from telemon.backoff import Backoff
    from telemon.ble import BleDeviceConfig, BleTransport
    from telemon.testing import ble_device
    from telemon.testing.ble import VirtualRadio

    model = sim.PatientModel.for_scenario("hf-decompensation", start=START, seed=6)
    mornings = [START + timedelta(days=d, hours=7, minutes=30, seconds=17 + d) for d in range(8)]
    sink = Sink()

    async def test():
        async with VirtualRadio() as radio:
            scale = await ble_device(radio, "weight_scale", model, times=mornings).start()
            reader = BleTransport(
                ble_weight_scale.DRIVER,
                BleDeviceConfig(device="scale-1", patient="pt-1", gateway="gw-1",
                                device_tz=CPH),
                submit=sink.submit, reject=sink.reject, backend=radio.backend,
                scan_timeout=1.0, connect_timeout=2.0, backoff=Backoff(0.01, 0.05))
            task = asyncio.ensure_future(reader.run())
            async with asyncio.timeout(8):
                while len(sink.observations) < len(mornings):
                    await asyncio.sleep(0.01)
            reader.stop()
            await task
            assert scale.pending(uuid128(0x2A9D)) == []

    run(test(), timeout=15)
    assert sink.rejected == []
    assert [o.effective for o in sink.observations] == mornings
    assert [o.value for o in sink.observations] == [
        sim.rounded(model.sample("weight", t), "0.1") for t in mornings]
    assert all(o.context["weight_resolution"] == "0.1" for o in sink.observations)
    assert sink.observations[-1].value - sink.observations[2].value > 2  # decompensating
