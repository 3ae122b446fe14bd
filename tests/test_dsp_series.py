"""telemon.dsp series primitives: known answers on hand-made series, input checks, the compiled
core against its NumPy reference (the specification), and streaming against batch.

Kernel-level tests that need the compiled module take the `compiled` fixture (skipped when it
is not built); everything through `telemon.dsp` runs with whichever implementation the
environment selects, so the suite is run both with and without TELEMON_PUREPYTHON=1.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemon import dsp
from telemon.cext import series_reference as reference
from telemon.dsp import _select
from telemon.dsp import series as series_api

nan = math.nan
DAY, HOUR, MINUTE = dsp.DAY, dsp.HOUR, dsp.MINUTE
LIMITS = dict(red_low=88.0, yellow_low=90.0, yellow_high=100.0, red_high=110.0)
ORDER = ("red_low", "yellow_low", "yellow_high", "red_high")


@pytest.fixture(scope="module")
def compiled():
    return pytest.importorskip("telemon.cext._series", reason="compiled kernels not built")


@pytest.fixture(scope="module", params=["reference", "compiled"])
def kernels(request):
    """Each kernel module in turn (the compiled one skipped when it is not built)."""
    if request.param == "reference":
        return reference
    return pytest.importorskip("telemon.cext._series", reason="compiled kernels not built")


def arr(values):
    return np.asarray(values, dtype=np.float64)


# --- which implementation ------------------------------------------------------------------------


def test_the_process_uses_the_implementation_its_environment_asks_for():
    if os.environ.get("TELEMON_PUREPYTHON") == "1":
        assert _select.CHOSEN["series"] == "reference"
        assert series_api._k is reference
    else:
        module = pytest.importorskip("telemon.cext._series")
        assert _select.CHOSEN["series"] == "compiled"
        assert series_api._k is module


@pytest.mark.parametrize("switch, expected", [("1", "reference"), ("0", "compiled")])
def test_telemon_purepython_switch(switch, expected):
    if expected == "compiled":
        pytest.importorskip("telemon.cext._series")
    out = subprocess.run(
        [sys.executable, "-c",
         "import telemon.dsp, telemon.dsp._select as s; print(s.CHOSEN['series'])"],
        env={**os.environ, "TELEMON_PUREPYTHON": switch}, capture_output=True, text=True,
        check=True).stdout.strip()
    assert out == expected


# --- limit_bands ---------------------------------------------------------------------------------


def both(compiled, values, **limits):
    args = [math.nan if limits.get(k) is None else float(limits[k]) for k in ORDER]
    values = np.ascontiguousarray(values, dtype=np.float64)
    return compiled.limit_bands(values, *args), reference.limit_bands(values, *args)


@pytest.mark.parametrize("values, expected", [
    ([], []),
    ([95.0], [0]),
    ([87.9, 88.0, 89.9, 90.0, 100.0, 100.1, 110.0, 110.1], [-2, -1, -1, 0, 0, 1, 1, 2]),
    ([math.nan, 95.0, math.nan], [dsp.NO_VALUE, 0, dsp.NO_VALUE]),
    ([-math.inf, math.inf, 1e308, -1e308], [-2, 2, 2, -2]),
])
def test_edge_cases_match_between_implementations(compiled, values, expected):
    got_compiled, got_reference = both(compiled, values, **LIMITS)
    assert got_compiled.tolist() == expected
    assert got_reference.tolist() == expected
    assert dsp.limit_bands(values, **LIMITS).tolist() == expected


def test_unset_limits_are_not_checked(compiled):
    got_compiled, got_reference = both(compiled, [0.0, 50.0, 1e9], yellow_high=100.0)
    assert got_compiled.tolist() == got_reference.tolist() == [0, 0, 1]


finite_or_nan = st.floats(allow_infinity=True, allow_nan=True, width=64)


@given(st.lists(finite_or_nan, max_size=200),
       st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=4, max_size=4))
def test_property_compiled_equals_reference(compiled, values, raw_limits):
    present = sorted(v for v in raw_limits if v is not None)
    limits = {}
    for key, value in zip(ORDER, raw_limits, strict=True):
        limits[key] = None if value is None else present.pop(0)
    got_compiled, got_reference = both(compiled, values, **limits)
    assert got_compiled.dtype == got_reference.dtype == np.int8
    assert got_compiled.tolist() == got_reference.tolist()


@pytest.mark.parametrize("values, message", [
    ([[1.0, 2.0]], "one-dimensional"),
    (["a", "b"], "values: must be numbers"),
    (object(), "values: must be numbers"),
])
def test_bad_values_are_rejected_with_a_reason(values, message):
    with pytest.raises(ValueError, match=message):
        dsp.limit_bands(values, red_low=1.0)


def test_limits_out_of_order_are_rejected():
    with pytest.raises(ValueError, match=r"limits out of order: yellow_low=95\.0 > yellow_high=90"):
        dsp.limit_bands([1.0], yellow_low=95.0, yellow_high=90.0)


def test_a_nan_limit_is_rejected():
    with pytest.raises(ValueError, match="red_low: must be a number or None"):
        dsp.limit_bands([1.0], red_low=math.nan)


# --- threshold: known answers --------------------------------------------------------------------

MINUTES = arr([0, 60, 120, 180, 240])


def test_a_short_excursion_does_not_reach_the_sustain_time():
    # Above 100 at 60 s and 120 s only: 60 s of a required 120 s.
    got = dsp.threshold(MINUTES, [95, 101, 101, 99, 95], high=100, sustain=120)
    assert got.tolist() == [0, 0, 0, 0, 0]


def test_the_alarm_comes_on_at_the_first_sample_sustained_long_enough():
    got = dsp.threshold(MINUTES, [95, 101, 101, 101, 95], high=100, sustain=120)
    assert got.dtype == np.int8
    assert got.tolist() == [0, 0, 0, 1, 0]  # run from 60 s; 180 - 60 >= 120


def test_a_dip_below_the_threshold_restarts_the_sustain_clock():
    t = arr([0, 60, 120, 180, 240, 300])
    got = dsp.threshold(t, [101, 101, 99.5, 101, 101, 101], high=100, sustain=120)
    assert got.tolist() == [0, 0, 0, 0, 0, 1]  # new run from 180 s


def test_hysteresis_keeps_the_alarm_on_between_threshold_minus_h_and_threshold():
    got = dsp.threshold(MINUTES, [101, 99, 98.5, 98, 101], high=100, hysteresis=2)
    assert got.tolist() == [1, 1, 1, 0, 1]  # off at exactly 100 - 2


def test_without_hysteresis_the_alarm_goes_off_at_the_threshold():
    got = dsp.threshold(MINUTES[:3], [101, 100, 101], high=100)
    assert got.tolist() == [1, 0, 1]  # the threshold itself is inside (strictly above alarms)


def test_the_low_alarm_mirrors_the_high_one():
    got = dsp.threshold(MINUTES, [89, 91, 92, 89.5, 95], low=90, hysteresis=2)
    assert got.tolist() == [-1, -1, 0, -1, 0]  # off at exactly 90 + 2


def test_high_and_low_together():
    t = arr(range(6))
    got = dsp.threshold(t, [101, 95, 89, 92, 101, 99.5], low=90, high=100, hysteresis=1)
    assert got.tolist() == [1, 0, -1, 0, 1, 1]


def test_nan_samples_neither_start_nor_break_nor_end_an_alarm():
    t = arr([0, 30, 60, 90, 120])
    # The NaN at 30 s does not break the run that began at 0 s: on at 60 s.
    assert dsp.threshold(t, [101, nan, 101, 101, 101], high=100,
                         sustain=60).tolist() == [0, 0, 1, 1, 1]
    # NaN does not end an alarm that is on, and the output there is the state so far.
    assert dsp.threshold(t, [101, nan, nan, 95, nan], high=100).tolist() == [1, 1, 1, 0, 0]
    # NaN alone never starts one.
    assert dsp.threshold(t, [nan] * 5, high=100, low=90).tolist() == [0] * 5


def test_the_sustain_time_is_measured_on_sample_times_across_a_gap():
    got = dsp.threshold([0, 3600], [101, 101], high=100, sustain=600)
    assert got.tolist() == [0, 1]


def test_duplicate_times_do_not_add_up_to_a_sustained_run():
    assert dsp.threshold([5, 5, 5], [101] * 3, high=100, sustain=1).tolist() == [0, 0, 0]
    assert dsp.threshold([5, 5, 5], [101] * 3, high=100, sustain=0).tolist() == [1, 1, 1]


# --- rolling: known answers ----------------------------------------------------------------------


def test_rolling_window_is_open_at_its_old_end_and_skips_nan():
    stats = dsp.rolling([0, 10, 20, 30], [1, 2, nan, 4], window=20)
    assert isinstance(stats, dsp.RollingStats)
    assert stats.count.dtype == np.int64
    assert stats.count.tolist() == [1, 2, 1, 1]  # at 30 s, the sample at 10 s is out
    np.testing.assert_allclose(stats.mean, [1, 1.5, 2, 4])
    np.testing.assert_allclose(stats.sd, [nan, math.sqrt(0.5), nan, nan])
    assert stats.min.tolist() == [1, 1, 2, 4]
    assert stats.max.tolist() == [1, 2, 2, 4]


def test_rolling_sd_is_the_sample_sd():
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    stats = dsp.rolling(np.arange(8.0), values, window=100)
    assert stats.sd[-1] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert stats.mean[-1] == pytest.approx(5.0, rel=1e-12)


def test_rolling_with_an_empty_window_gives_nan_and_count_zero():
    stats = dsp.rolling([0, 100, 200], [5, nan, nan], window=50)
    assert stats.count.tolist() == [1, 0, 0]
    assert np.isnan(stats.mean[1:]).all() and np.isnan(stats.min[1:]).all()
    assert np.isnan(stats.max[1:]).all() and np.isnan(stats.sd).all()


def test_rolling_includes_earlier_samples_with_the_same_time_only():
    stats = dsp.rolling([0, 0, 0], [1, 3, 8], window=1)
    assert stats.count.tolist() == [1, 2, 3]
    assert stats.mean.tolist() == [1, 2, 4]


def test_an_infinite_window_is_everything_so_far():
    stats = dsp.rolling([0, 1e6, 2e9], [1, 2, 6], window=math.inf)
    assert stats.count.tolist() == [1, 2, 3]
    assert stats.max.tolist() == [1, 2, 6]


def test_an_evicted_huge_value_leaves_no_trace():
    t = arr(range(6))
    stats = dsp.rolling(t, [1e300, 1, 2, 3, 4, 5], window=2.5)
    assert stats.sd[1] == math.inf  # 1e300 and 1 together: the variance overflows
    np.testing.assert_allclose(stats.mean[3:], [2, 3, 4], rtol=1e-15)
    np.testing.assert_allclose(stats.sd[3:], [1, 1, 1], rtol=1e-15)


# --- spc band: known answers ---------------------------------------------------------------------


def test_spc_band_comes_from_the_preceding_samples_only():
    band = dsp.spc_band([0, 1, 2, 3, 4], [10, 12, 14, nan, 30], window=10, k=1, min_count=3)
    assert isinstance(band, dsp.ControlBand)
    assert band.count.tolist() == [0, 1, 2, 3, 3]
    assert np.isnan(band.lower[:3]).all() and np.isnan(band.mean[:3]).all()
    # At 4 s, the band of 10, 12, 14 is 12 +/- 2: the outlier 30 does not widen its own band.
    np.testing.assert_allclose(band.mean[3:], [12, 12])
    np.testing.assert_allclose(band.sd[3:], [2, 2])
    np.testing.assert_allclose(band.lower[3:], [10, 10])
    np.testing.assert_allclose(band.upper[3:], [14, 14])


def test_spc_band_forgets_samples_older_than_the_window():
    t = arr([0, 1, 2, 10, 11])
    band = dsp.spc_band(t, [1, 2, 3, 100, 100], window=9.5, k=2, min_count=2)
    assert band.count.tolist() == [0, 1, 2, 2, 2]  # at 10 s only 1 s and 2 s remain
    np.testing.assert_allclose(band.mean[3], 2.5)
    np.testing.assert_allclose(band.upper[3], 2.5 + 2 * math.sqrt(0.5))
    np.testing.assert_allclose(band.mean[4], 51.5)  # 2 s and 10 s


def test_copd_fev1_below_its_7_day_band():
    days = np.arange(9) * DAY
    fev1 = arr([1.50, 1.55, 1.45, 1.52, 1.48, 1.50, 1.53, 1.49, 1.20])
    band = dsp.spc_band(days, fev1, window=7 * DAY, k=1.645, min_count=5)
    below = fev1 < band.lower
    assert below.tolist() == [False] * 8 + [True]


# --- change: known answers -----------------------------------------------------------------------


def test_weight_gain_over_three_days_with_a_missing_day():
    at7 = 7 * HOUR
    t = arr([0 * DAY + at7, 2 * DAY + at7, 3 * DAY + at7, 4 * DAY + at7])  # day 1 missing
    w = arr([80.0, 80.9, 81.5, 82.1])
    got = dsp.change(t, w, lag=3 * DAY, tolerance=DAY)
    assert isinstance(got, dsp.Changes)
    # Day 4: 3 days back is day 1 (missing); day 0 is within a day of tolerance.
    assert got.delta[3] == pytest.approx(2.1, abs=1e-12)
    assert got.reference_time[3] == t[0]
    # Day 3: 3 days back is day 0 itself.
    assert got.delta[2] == pytest.approx(1.5, abs=1e-12)
    assert np.isnan(got.delta[:2]).all() and np.isnan(got.reference_time[:2]).all()
    # Without tolerance, day 4 has no reference.
    strict = dsp.change(t, w, lag=3 * DAY)
    assert np.isnan(strict.delta[3]) and strict.delta[2] == pytest.approx(1.5, abs=1e-12)


def test_change_skips_a_nan_reference_and_is_nan_for_a_nan_value():
    got = dsp.change([0, 1, 2, 10, 11], [1, 2, nan, 5, nan], lag=8, tolerance=5)
    # At 10 s: latest at or before 2 s is NaN, so 1 s (value 2) is the reference.
    assert got.delta.tolist()[3] == 3.0 and got.reference_time[3] == 1.0
    assert np.isnan(got.delta[4])  # the value itself is NaN


def test_change_tolerance_boundaries_are_inclusive():
    got = dsp.change([0, 10, 15], [1, 5, 7], lag=10, tolerance=5)
    assert got.delta.tolist()[1:] == [4.0, 6.0]  # at 15 s: cut 5 s, reference 0 s = 5 - 5
    just_out = dsp.change([0, 15.5], [1, 7], lag=10, tolerance=5)
    assert np.isnan(just_out.delta[1])


def test_change_uses_the_last_of_equal_reference_times():
    got = dsp.change([0, 0, 5], [1, 2, 10], lag=5)
    assert got.delta[2] == 8.0


# --- EWMA, MACD: known answers -------------------------------------------------------------------


def test_ewma_starts_at_the_first_value_and_carries_over_nan():
    got = dsp.ewma(range(5), [nan, 2, 4, nan, 8], alpha=0.5)
    np.testing.assert_array_equal(got, [nan, 2, 3, 3, 5.5])
    np.testing.assert_array_equal(dsp.ewma(range(5), [nan, 2, 4, nan, 8], span=3), got)


def test_ewma_alpha_one_is_the_series_itself():
    np.testing.assert_array_equal(dsp.ewma([0, 1, 2], [3, nan, 5], alpha=1), [3, 3, 5])


def test_macd_lines():
    lines = dsp.macd(range(3), [2, 4, 8], fast=1, slow=3, signal=3)
    assert isinstance(lines, dsp.MACDLines)
    # fast = x (alpha 1); slow (alpha 1/2): 2, 3, 5.5; MACD 0, 1, 2.5; signal 0, .5, 1.5
    np.testing.assert_allclose(lines.macd, [0, 1, 2.5])
    np.testing.assert_allclose(lines.signal, [0, 0.5, 1.5])
    np.testing.assert_allclose(lines.histogram, [0, 0.5, 1.0])


def test_macd_before_the_first_value_is_nan_and_nan_samples_repeat_the_lines():
    lines = dsp.macd(range(4), [nan, 2, nan, 4], fast=1, slow=3, signal=3)
    assert np.isnan(lines.macd[0]) and np.isnan(lines.signal[0])
    np.testing.assert_allclose(lines.macd[1:], [0, 0, 1])
    np.testing.assert_allclose(lines.signal[1:], [0, 0, 0.5])


# --- CUSUM: known answers ------------------------------------------------------------------------


def test_cusum_alarms_and_restarts_at_the_right_index():
    stats = dsp.cusum(range(5), [1.5, 1.5, 1.5, 1.5, 1.5], mu=0, sigma=1, k=0.5, h=2)
    assert isinstance(stats, dsp.CUSUMStats)
    assert stats.upper.tolist() == [1, 2, 3, 1, 2]  # 2 is not > h; 3 is, then restart
    assert stats.alarm.tolist() == [0, 0, 1, 0, 0]
    assert stats.alarm.dtype == np.int8
    assert stats.lower.tolist() == [0] * 5


def test_cusum_lower_side_and_sigma_scaling():
    stats = dsp.cusum(range(4), [7, 7, 7, 7], mu=10, sigma=2, k=0.5, h=2)
    assert stats.lower.tolist() == [1, 2, 3, 1]  # z = -1.5 each time
    assert stats.alarm.tolist() == [0, 0, -1, 0]


def test_one_sided_cusum_ignores_the_other_side():
    down = [-3.0] * 4
    assert dsp.cusum(range(4), down, mu=0, sigma=1, k=0.5, h=4,
                     side="upper").alarm.tolist() == [0] * 4
    stats = dsp.cusum(range(4), down, mu=0, sigma=1, k=0.5, h=4, side="lower")
    assert stats.lower.tolist() == [2.5, 5, 2.5, 5]
    assert stats.alarm.tolist() == [0, -1, 0, -1] and stats.upper.tolist() == [0] * 4


def test_cusum_drifts_back_to_zero_and_skips_nan():
    stats = dsp.cusum(range(5), [2, nan, -1, -1, 5], mu=0, sigma=1, k=0.5, h=4)
    assert stats.upper.tolist() == [1.5, 1.5, 0, 0, 4.5]
    assert stats.lower.tolist() == [0, 0, 0.5, 1.0, 0]
    assert stats.alarm.tolist() == [0, 0, 0, 0, 1]


# --- missed deadlines: known answers -------------------------------------------------------------


def test_missed_deadlines_daily_by_ten_with_an_hour_of_grace():
    t = arr([0 * DAY + 8 * HOUR,    # day 0 on time
             1 * DAY + 11.5 * HOUR,  # day 1 late (after 11:00): missed
             3 * DAY + 9 * HOUR,    # day 3 measured, but the value is NaN
             4 * DAY + 11 * HOUR])  # day 4 exactly at the cut-off: counts
    x = arr([1, 1, nan, 1])
    got = dsp.missed_deadlines(t, x, start=0, period=DAY, deadline=10 * HOUR, grace=HOUR,
                               now=5 * DAY + 12 * HOUR)
    assert got.tolist() == [d * DAY + 10 * HOUR for d in (1, 2, 3, 5)]
    # Without values, the NaN measurement on day 3 counts.
    got = dsp.missed_deadlines(t, start=0, period=DAY, deadline=10 * HOUR, grace=HOUR,
                               now=5 * DAY + 12 * HOUR)
    assert got.tolist() == [d * DAY + 10 * HOUR for d in (1, 2, 5)]


def test_a_deadline_is_not_missed_until_its_cut_off_has_passed():
    kw = dict(start=0, period=DAY, deadline=10 * HOUR, grace=HOUR)
    assert dsp.missed_deadlines([], now=11 * HOUR, **kw).tolist() == []
    assert dsp.missed_deadlines([], now=11 * HOUR + 1, **kw).tolist() == [10 * HOUR]
    assert dsp.missed_deadlines([], now=-5 * DAY, **kw).tolist() == []


def test_samples_before_the_period_do_not_count_and_cut_offs_may_overlap_the_next_period():
    # Every 10 s, deadline 8 s in, 5 s grace: period 0 accepts [0, 13], period 1 [10, 23].
    got = dsp.missed_deadlines([-1, 12], start=0, period=10, deadline=8, grace=5, now=100)
    assert got.tolist() == [28, 38, 48, 58, 68, 78, 88]  # 12 s covers periods 0 and 1


def test_schedule_stream_reports_each_deadline_once():
    schedule = dsp.Schedule(start=0, period=DAY, deadline=10 * HOUR)
    schedule.update([8 * HOUR])
    assert schedule.missed(DAY).tolist() == []
    assert schedule.missed(3 * DAY).tolist() == [DAY + 10 * HOUR, 2 * DAY + 10 * HOUR]
    assert schedule.missed(3 * DAY).tolist() == []
    schedule.update([3 * DAY + 9 * HOUR, 4 * DAY + 9 * HOUR], [nan, 70.0])
    assert schedule.missed(5 * DAY).tolist() == [3 * DAY + 10 * HOUR]


def test_a_late_sample_does_not_retract_a_missed_report():
    schedule = dsp.Schedule(start=0, period=DAY, deadline=10 * HOUR)
    assert schedule.missed(DAY).tolist() == [10 * HOUR]
    schedule.update(9 * HOUR)  # arrives late, timestamped before the report
    assert schedule.missed(2 * DAY).tolist() == [DAY + 10 * HOUR]


# --- input checks --------------------------------------------------------------------------------

BATCH = {
    "threshold": lambda t, x: dsp.threshold(t, x, high=1),
    "rolling": lambda t, x: dsp.rolling(t, x, window=1),
    "spc_band": lambda t, x: dsp.spc_band(t, x, window=1, k=1, min_count=2),
    "change": lambda t, x: dsp.change(t, x, lag=1),
    "ewma": lambda t, x: dsp.ewma(t, x, alpha=0.5),
    "macd": lambda t, x: dsp.macd(t, x, fast=2, slow=3, signal=2),
    "cusum": lambda t, x: dsp.cusum(t, x, mu=0, sigma=1, k=0.5, h=4),
    "missed_deadlines": lambda t, x: dsp.missed_deadlines(t, x, start=0, period=1,
                                                          deadline=1, now=3),
}


@pytest.mark.parametrize("name", sorted(BATCH))
def test_unsorted_time_is_rejected_naming_the_first_offending_index(name):
    with pytest.raises(ValueError, match=r"times must be non-decreasing: times\[3\]=1\.5 is "
                                         r"before times\[2\]=2\.0"):
        BATCH[name]([0, 1, 2, 1.5, 0.5], [1, 2, 3, 4, 5])


@pytest.mark.parametrize("name", sorted(BATCH))
@pytest.mark.parametrize("times, values, message", [
    ([0, nan, 2], [1, 2, 3], r"times\[1\] is nan: times must be finite"),
    ([0, 1, math.inf], [1, 2, 3], r"times\[2\] is inf: times must be finite"),
    ([0, 1, 2], [1, -math.inf, 3], r"values\[1\] is -inf: values must be finite"),
    ([0, 1], [1, 2, 3], r"times and values: lengths differ \(2 != 3\)"),
    ([[0, 1]], [[1, 2]], "times: must be one-dimensional"),
    ([0, 1], ["a", "b"], "values: must be numbers"),
])
def test_bad_series_are_rejected_with_a_reason(name, times, values, message):
    with pytest.raises(ValueError, match=message):
        BATCH[name](times, values)


@pytest.mark.parametrize("name", sorted(BATCH))
def test_empty_and_duplicate_times_are_accepted(name):
    def lengths(result):
        return {len(column) for column in (result if isinstance(result, tuple) else [result])}

    missed = name == "missed_deadlines"  # deadlines at 1 s and 2 s, before any sample
    assert lengths(BATCH[name]([], [])) == ({2} if missed else {0})
    assert lengths(BATCH[name]([5, 5, 5], [1, nan, 2])) == ({2} if missed else {3})


@pytest.mark.parametrize("times, values, expected", [
    ([], [], (0, -1)),
    ([0, 0, 1], [nan, 1e300, -1e300], (0, -1)),
    ([0, 1, 2], [1, 2, math.inf], (3, 2)),
    ([0, 2, 1], [1, math.inf, 1], (3, 1)),  # a sample's value comes before the next's time
    ([0, 2, 1], [1, 2, math.inf], (2, 2)),
    ([0, nan, 1], [1, 2, 3], (1, 1)),
    ([-math.inf, 0], [1, 2], (1, 0)),
])
def test_check_series_reports_the_first_problem(kernels, times, values, expected):
    assert kernels.check_series(arr(times), arr(values)) == expected


@pytest.mark.parametrize("at", [0, 1, 2, 3, 4, 1022, 1023, 1024, 1025, 2047, 2048, 4998, 4999])
@pytest.mark.parametrize("times_at, value_at, code", [
    (nan, 1.0, 1), (math.inf, 1.0, 1), (-math.inf, 1.0, 1), (-1.0, 1.0, 2),
    (None, math.inf, 3), (None, -math.inf, 3),
])
def test_check_series_finds_a_problem_anywhere_in_a_long_series(kernels, at, times_at, value_at,
                                                                code):
    """The compiled check scans blocks of samples with vector instructions and rescans only
    the block with a problem: a problem at a block's edges is still the one reported."""
    times, values = np.arange(5000.0), np.full(5000, 93.0)
    values[::7] = nan
    if times_at is not None:
        times[at] = times_at
    values[at] = value_at
    if code == 2 and at == 0:  # nothing before the first sample: the next one is earlier
        at = 1
        times[0] = 1.5
    assert kernels.check_series(times, values) == (code, at)


@given(st.lists(st.tuples(finite_or_nan, finite_or_nan), max_size=30))
def test_property_check_series_compiled_equals_reference(compiled, pairs):
    times = arr([p[0] for p in pairs])
    values = arr([p[1] for p in pairs])
    if len(pairs) > 3:  # mostly sorted, so later problems are reached too
        times = np.sort(times)
    assert compiled.check_series(times, values) == reference.check_series(times, values)


@pytest.mark.parametrize("call, message", [
    (lambda: dsp.threshold([0], [1]), "give high, low or both"),
    (lambda: dsp.threshold([0], [1], high=nan), "high: must be a number"),
    (lambda: dsp.threshold([0], [1], high=math.inf), "high: must be finite"),
    (lambda: dsp.threshold([0], [1], high="1"), "high: must be a number"),
    (lambda: dsp.threshold([0], [1], high=1, hysteresis=-1), "hysteresis: must be >= 0"),
    (lambda: dsp.threshold([0], [1], high=1, sustain=-1), "sustain: must be >= 0"),
    (lambda: dsp.threshold([0], [1], high=100, low=95, hysteresis=3), "alarms would overlap"),
    (lambda: dsp.rolling([0], [1], window=0), "window: must be > 0"),
    (lambda: dsp.rolling([0], [1], window=nan), "window: must be a number"),
    (lambda: dsp.rolling([0], [1], window=True), "window: must be a number"),
    (lambda: dsp.spc_band([0], [1], window=1, k=-1, min_count=2), "k: must be >= 0"),
    (lambda: dsp.spc_band([0], [1], window=1, k=1, min_count=1), "min_count: must be an int"),
    (lambda: dsp.spc_band([0], [1], window=1, k=1, min_count=2.5), "min_count"),
    (lambda: dsp.change([0], [1], lag=0), "lag: must be > 0"),
    (lambda: dsp.change([0], [1], lag=math.inf), "lag: must be finite"),
    (lambda: dsp.change([0], [1], lag=1, tolerance=-1), "tolerance: must be >= 0"),
    (lambda: dsp.ewma([0], [1]), "exactly one of alpha and span"),
    (lambda: dsp.ewma([0], [1], alpha=0.5, span=3), "exactly one of alpha and span"),
    (lambda: dsp.ewma([0], [1], alpha=0), r"alpha: must be in \(0, 1\]"),
    (lambda: dsp.ewma([0], [1], alpha=1.5), r"alpha: must be in \(0, 1\]"),
    (lambda: dsp.ewma([0], [1], span=0.5), "span: must be >= 1"),
    (lambda: dsp.macd([0], [1], fast=26, slow=12, signal=9), "fast .* must be shorter"),
    (lambda: dsp.macd([0], [1], fast=2, slow=3, signal=0), "signal: must be >= 1"),
    (lambda: dsp.cusum([0], [1], mu=0, sigma=0, k=0.5, h=4), "sigma: must be > 0"),
    (lambda: dsp.cusum([0], [1], mu=nan, sigma=1, k=0.5, h=4), "mu: must be a number"),
    (lambda: dsp.cusum([0], [1], mu=0, sigma=1, k=-0.5, h=4), "k: must be >= 0"),
    (lambda: dsp.cusum([0], [1], mu=0, sigma=1, k=0.5, h=-1), "h: must be >= 0"),
    (lambda: dsp.cusum([0], [1], mu=0, sigma=1, k=0.5, h=4, side="up"), "side: must be one"),
    (lambda: dsp.missed_deadlines([0], start=0, period=0, deadline=0, now=1),
     "period: must be > 0"),
    (lambda: dsp.missed_deadlines([0], start=0, period=1, deadline=2, now=1),
     r"deadline \(2.0\) must lie within the period"),
    (lambda: dsp.missed_deadlines([0], start=0, period=1, deadline=1, now=nan),
     "now: must be a number"),
    (lambda: dsp.missed_deadlines([0], start=0, period=1e-3, deadline=0, now=1e9),
     "is the period in seconds"),
])
def test_bad_parameters_are_rejected_with_a_reason(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- streaming through the API -------------------------------------------------------------------


def test_a_stream_takes_scalars_and_returns_scalars():
    rolling = dsp.Rolling(window=10)
    first = rolling.update(0.0, 4.0)
    assert first == dsp.RollingStats(1, 4.0, first.sd, 4.0, 4.0) and math.isnan(first.sd)
    assert isinstance(first.count, int) and isinstance(first.mean, float)
    second = rolling.update(5, 6)
    assert second.count == 2 and second.mean == 5.0
    threshold = dsp.Threshold(high=100, sustain=60)
    assert [threshold.update(t, 101) for t in (0, 30, 60)] == [0, 0, 1]
    assert isinstance(threshold.update(90, 101), int)
    assert dsp.EWMA(alpha=0.5).update(0, 3) == 3.0
    assert dsp.CUSUM(mu=0, sigma=1, k=0, h=0.5).update(0, 1) == dsp.CUSUMStats(1.0, 0.0, 1)


@pytest.mark.parametrize("make", [
    lambda: dsp.Threshold(high=1), lambda: dsp.Rolling(1),
    lambda: dsp.SPCBand(window=1, k=1, min_count=2), lambda: dsp.Change(lag=1),
    lambda: dsp.EWMA(alpha=0.5), lambda: dsp.MACD(fast=2, slow=3, signal=2),
    lambda: dsp.CUSUM(mu=0, sigma=1, k=0.5, h=4),
])
def test_a_stream_rejects_time_going_backwards_across_calls(make):
    stream = make()
    stream.update([1, 2, 3], [1, 2, 3])
    stream.update([3], [1])  # the same time again is fine
    with pytest.raises(ValueError, match=r"times\[0\]=2\.5 is before the last sample seen "
                                         r"\(3\.0\): a stream cannot go back in time"):
        stream.update([2.5, 4], [1, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        stream.update([5, 4], [1, 1])
    stream.update([], [])
    stream.update(4, 1.0)


def test_schedule_rejects_time_and_now_going_backwards():
    schedule = dsp.Schedule(start=0, period=10, deadline=5)
    schedule.update([1, 2])
    with pytest.raises(ValueError, match="cannot go back in time"):
        schedule.update([1.5])
    schedule.missed(30)
    with pytest.raises(ValueError, match=r"now=20\.0 is before the previous now \(30\.0\)"):
        schedule.missed(20)


def test_the_kernels_reject_time_going_backwards_too(kernels):
    for state in (kernels.RollingState(1.0), kernels.ThresholdState(1.0, nan, 0.0, 0.0),
                  kernels.SPCBandState(1.0, 1.0, 2), kernels.ChangeState(1.0, 0.0)):
        state.update(arr([5.0]), arr([1.0]))
        with pytest.raises(ValueError, match="time went backwards"):
            state.update(arr([4.0]), arr([1.0]))
    schedule = kernels.ScheduleState(0.0, 1.0, 1.0, 0.0)
    schedule.update(arr([5.0]))
    with pytest.raises(ValueError, match="time went backwards"):
        schedule.update(arr([4.0]))
    schedule.missed(3.0)
    with pytest.raises(ValueError, match="now went backwards"):
        schedule.missed(2.0)


# --- compiled == reference, streaming == batch ---------------------------------------------------
#
# Each primitive as a kernel call: batch(kernels, t, x, params) -> tuple of arrays, and
# stream(kernels, params) -> object with feed(state, t, x) -> tuple of arrays.


@st.composite
def timed_series(draw, max_size=60, start=None):
    n = draw(st.integers(0, max_size))
    steps = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 30.0, 60.0, 3600.0]),
                                    st.floats(0, 1000)), min_size=n, max_size=n))
    if start is None:
        start = st.one_of(st.just(0.0), st.floats(-1e6, 1.7e9))
    start = draw(start)
    t = start + np.cumsum(arr(steps)) if n else arr([])
    return t, arr(draw(st.lists(values_strategy, min_size=n, max_size=n)))


@dataclass(frozen=True)
class Primitive:
    batch: Any
    state: Any
    feed: Any
    params: Any  # hypothesis strategy of the kernel's parameter tuple
    exact: bool = True
    series: Any = None  # strategy of (times, values); None: timed_series()


# Values on the thresholds the parameters draw (exact boundary cases), near them, anywhere,
# missing, huge.
values_strategy = st.one_of(st.sampled_from([88.0, 89.0, 90.0, 91.0, 92.0, 95.0, 98.0, 99.0,
                                             100.0, 101.0, 102.0]),
                            st.floats(80, 110), st.floats(-1e6, 1e6), st.just(nan),
                            st.sampled_from([1e300, -1e300]))
# Schedules start near the data, so a period decides a few thousand deadlines at most.
schedule_series = timed_series(start=st.one_of(st.just(0.0), st.floats(-1e4, 1e4)))


def _usable(t, x):
    return np.ascontiguousarray(t[~np.isnan(x)])


def _now(t):
    return float(t[-1]) if len(t) else -math.inf


def _feed_schedule(state, t, x):
    state.update(_usable(t, x))
    return (state.missed(float(t[-1])) if len(t) else np.empty(0),)


@st.composite
def threshold_params(draw):
    level = st.one_of(st.just(nan), st.sampled_from([90.0, 95.0, 100.0]), st.floats(80, 110))
    high, low = draw(level), draw(level)
    hysteresis = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0, 5)))
    if low + hysteresis > high - hysteresis:
        low = nan
    sustain = draw(st.one_of(st.sampled_from([0.0, 1.0, 30.0, 60.0, 600.0]),
                             st.floats(0, 5000)))
    return high, low, hysteresis, sustain


windows = st.one_of(st.sampled_from([1.0, 30.0, 60.0, 600.0, 3600.0, math.inf]),
                    st.floats(0.01, 1e4))
alphas = st.one_of(st.sampled_from([1.0, 0.5, 2 / 13, 2 / 27]), st.floats(1e-3, 1.0))


@st.composite
def schedule_params(draw):
    period = draw(st.one_of(st.sampled_from([60.0, 600.0, 3600.0]), st.floats(60, 5000)))
    deadline = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1))) * period
    return (draw(st.one_of(st.sampled_from([0.0, -30.0, 60.0]), st.floats(-1e4, 1e4))), period,
            deadline, draw(st.one_of(st.sampled_from([0.0, 30.0, 60.0]), st.floats(0, 2000))))


PRIMITIVES = {
    "threshold": Primitive(
        batch=lambda k, t, x, p: (k.threshold(t, x, *p),),
        state=lambda k, p: k.ThresholdState(*p),
        feed=lambda s, t, x: (s.update(t, x),),
        params=threshold_params()),
    "rolling": Primitive(
        batch=lambda k, t, x, p: k.rolling(t, x, *p),
        state=lambda k, p: k.RollingState(*p),
        feed=lambda s, t, x: s.update(t, x),
        params=st.tuples(windows), exact=False),
    "spc_band": Primitive(
        batch=lambda k, t, x, p: k.spc_band(t, x, *p),
        state=lambda k, p: k.SPCBandState(*p),
        feed=lambda s, t, x: s.update(t, x),
        params=st.tuples(windows, st.floats(0, 3), st.integers(2, 6)), exact=False),
    "change": Primitive(
        batch=lambda k, t, x, p: k.change(t, x, *p),
        state=lambda k, p: k.ChangeState(*p),
        feed=lambda s, t, x: s.update(t, x),
        params=st.tuples(
            st.one_of(st.sampled_from([1.0, 30.0, 60.0, 3600.0]), st.floats(0.01, 5e3)),
            st.one_of(st.sampled_from([0.0, 1.0, 30.0, 60.0]), st.floats(0, 5e3)))),
    "ewma": Primitive(
        batch=lambda k, t, x, p: (k.ewma(x, *p),),
        state=lambda k, p: k.EWMAState(*p),
        feed=lambda s, t, x: (s.update(x),),
        params=st.tuples(alphas), exact=False),
    "macd": Primitive(
        batch=lambda k, t, x, p: k.macd(x, *p),
        state=lambda k, p: k.MACDState(*p),
        feed=lambda s, t, x: s.update(x),
        params=st.tuples(alphas, alphas, alphas)),
    "cusum": Primitive(
        batch=lambda k, t, x, p: k.cusum(x, *p),
        state=lambda k, p: k.CUSUMState(*p),
        feed=lambda s, t, x: s.update(x),
        params=st.tuples(st.floats(-100, 100), st.floats(0.1, 100), st.floats(0, 2),
                         st.floats(0, 10), st.booleans(), st.booleans())),
    "missed_deadlines": Primitive(
        batch=lambda k, t, x, p: (k.missed_deadlines(_usable(t, x), *p, _now(t)),),
        state=lambda k, p: k.ScheduleState(*p),
        feed=_feed_schedule,
        params=schedule_params(), series=schedule_series),
}



def _window_scale(t, x, window, include_self):
    """max |value| in each sample's window: the scale of its rounding error."""
    scale = np.zeros(len(x))
    for i in range(len(x)):
        first = np.searchsorted(t, t[i] - window, side="right")
        w = x[first:i + 1] if include_self else x[first:i]
        w = w[~np.isnan(w)]
        scale[i] = np.abs(w).max() if len(w) else 0.0
    return scale


def _assert_close(got, want, scale, what):
    """Equal NaN/inf pattern; finite values within 1e-9 relative or 1e-11 of the window's
    largest |value| (incremental vs two-pass summation round differently)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.where(np.isinf(want), want, 0),
                                  np.where(np.isinf(got), got, 0), err_msg=f"{what}: inf")
    ok = np.isfinite(want)
    err = np.abs(got[ok] - want[ok])
    bound = 1e-9 * np.abs(want[ok]) + 1e-11 * scale[ok]
    assert (err <= bound).all(), f"{what}: {got[ok][err > bound]} != {want[ok][err > bound]}"


EWMA_TOLERANCE = 1e-12
"""The compiled EWMA runs in segments (see _series.pyx) and rounds differently from the
sequential reference: outputs agree within this fraction of the largest |value| so far
(measured: under 1e-14), with the same NaN pattern."""


def assert_ewma_close(got, want, x):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN")
    scale = np.fmax.accumulate(np.where(np.isnan(x), 0.0, np.abs(x))) if len(x) else x
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    bound = EWMA_TOLERANCE * scale[ok]
    assert (err <= bound).all(), f"{got[ok][err > bound]} != {want[ok][err > bound]}"


def assert_same(name, got, want, t, x, params):
    assert len(got) == len(want)
    if PRIMITIVES[name].exact:
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
        return
    if name == "ewma":
        assert_ewma_close(got[0], want[0], x)
        return
    include_self = name == "rolling"
    scale = _window_scale(t, x, params[0], include_self)
    columns = ("count", "mean", "sd", "min", "max") if include_self else \
        ("count", "mean", "sd", "lower", "upper")
    for column, g, w in zip(columns, got, want, strict=True):
        if column in ("count", "min", "max"):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w, err_msg=column)
        else:
            k = 0 if include_self else params[1]
            _assert_close(g, w, scale * (1 + k), column)


EDGE_SERIES = {
    "empty": ([], []),
    "one sample": ([5.0], [97.0]),
    "one nan": ([5.0], [nan]),
    "all nan": ([0, 1, 2], [nan, nan, nan]),
    "nan inside": ([0, 60, 120, 180, 240], [96, nan, 101, nan, 89]),
    "gaps": ([0, 1, 2, 86400, 86401, 5 * 86400], [101, 102, 99, 89, 88, 95]),
    "duplicate times": ([0, 0, 0, 60, 60, 120], [101, 89, nan, 101, 101, 95]),
    "huge values": ([0, 1, 2, 3, 4, 700, 701], [1e300, 95, -1e300, 1e300, 1e300, 92, 93]),
    "large times": ([1.7e9, 1.7e9 + 0.25, 1.7e9 + 3600], [101, 100, 99]),
    # With EDGE_PARAMS: high alarm on at 60 s, held at 99.5, off at exactly 100 - 1; low on
    # at 300 s, off at exactly 90 + 1; at 1020 s the change reference (360 s) is exactly
    # lag + tolerance old.
    "exact boundaries": ([0, 60, 120, 180, 240, 300, 360, 1020, 1080, 1140],
                         [101, 101, 99.5, 99, 89, 89, 91, 100, 90, 95]),
}
EDGE_PARAMS = {
    "threshold": (100.0, 90.0, 1.0, 60.0),
    "rolling": (600.0,),
    "spc_band": (600.0, 1.645, 2),
    "change": (60.0, 600.0),
    "ewma": (0.25,),
    "macd": (2 / 13, 2 / 27, 0.2),
    "cusum": (95.0, 3.0, 0.5, 2.0, True, True),
    # starts two minutes before the first sample
    "missed_deadlines": lambda t: ((t[0] if len(t) else 0.0) - 120.0, 60.0, 30.0, 10.0),
}


@pytest.mark.parametrize("case", sorted(EDGE_SERIES))
@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_edge_cases_compiled_equals_reference(compiled, name, case):
    t, x = (np.ascontiguousarray(v, dtype=np.float64) for v in EDGE_SERIES[case])
    params = EDGE_PARAMS[name]
    params = params(t) if callable(params) else params
    prim = PRIMITIVES[name]
    want = prim.batch(reference, t, x, params)
    assert_same(name, prim.batch(compiled, t, x, params), want, t, x, params)
    assert_same(name, prim.feed(prim.state(compiled, params), t, x), want, t, x, params)


def test_huge_values_overflow_the_sd_alike_in_both_kernels(kernels):
    # Equal 1e300s have SD exactly 0; 1e300 with another value overflows the variance.
    count, mean, sd, _, _ = kernels.rolling(arr([0, 1, 2, 3, 9]), arr([1e300, 1e300, 1e300, 5, 7]),
                                            5.0)
    np.testing.assert_array_equal(sd, [nan, 0, 0, math.inf, nan])
    np.testing.assert_array_equal(mean[:3], [1e300] * 3)
    assert count.tolist() == [1, 2, 3, 4, 1]


@pytest.mark.parametrize("window", [5.0, 300.0, 20_000.0])
def test_long_series_grow_and_compact_the_window_buffers(compiled, window):
    # Thousands of samples: the compiled buffers grow, slide their live part to the front and
    # cross the 4096-sample blocks, batch and streamed in uneven chunks.
    rng = np.random.default_rng(11)
    n = 12_000
    t = np.cumsum(rng.choice([0.0, 0.5, 1.0, 3.0, 60.0], n, p=[0.1, 0.3, 0.4, 0.18, 0.02]))
    x = rng.normal(93, 3, n)
    x[rng.random(n) < 0.05] = nan
    sizes = itertools.cycle([1, 4095, 7, 5000, 2, 300])
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(min(n, bounds[-1] + next(sizes)))
    for name, params in [("rolling", (window,)), ("spc_band", (window, 2.0, 3)),
                         ("change", (window, window / 2)),
                         ("ewma", (2 / (window % 97 + 2),)),
                         ("missed_deadlines", (0.0, window, window / 2, 1.0))]:
        prim = PRIMITIVES[name]
        want = prim.batch(compiled, t, x, params)
        assert_same(name, want, prim.batch(reference, t, x, params), t, x, params)
        state = prim.state(compiled, params)
        pieces = [prim.feed(state, t[a:b], x[a:b]) for a, b in itertools.pairwise(bounds)]
        for i, w in enumerate(want):
            np.testing.assert_array_equal(np.concatenate([p[i] for p in pieces]), w)


def test_compiled_ewma_keeps_the_reference_nan_semantics_exactly(compiled):
    # The segmented EWMA: a NaN sample repeats the previous output bit for bit, NaN before
    # the first value, and the first segment (SEG = 16 samples, starting before any value)
    # is the reference recurrence itself.
    rng = np.random.default_rng(5)
    x = rng.normal(93, 3, 5000)
    x[rng.random(5000) < 0.2] = nan
    x[:3] = nan
    z = compiled.ewma(x, 2 / 13)
    assert np.isnan(z[:3]).all() and not np.isnan(z[3:]).any()
    after = np.flatnonzero(np.isnan(x))
    after = after[after > 3]
    np.testing.assert_array_equal(z[after], z[after - 1])
    np.testing.assert_array_equal(z[:16], reference.ewma(x[:16], 2 / 13))
    assert_ewma_close(z, reference.ewma(x, 2 / 13), x)


@pytest.mark.parametrize("nan_share", [0.0, 0.01, 0.2, 0.9])
def test_compiled_ewma_paths_give_the_same_bits(compiled, nan_share):
    # With AVX2 the segments run 16 a group, else 8 (SSE2): the same operations per lane,
    # so the same bits, batch or fed in chunks that cut groups and segments anywhere.
    rng = np.random.default_rng(6)
    x = rng.normal(93, 3, 20_011)
    x[rng.random(x.size) < nan_share] = nan
    x[5000:5040] = nan  # whole segments without a value
    x[7000:7003] = [1e300, -1e300, 1e300]
    try:
        compiled._ewma_avx2(True)
        with_avx2 = compiled.ewma(x, 2 / 13)
        compiled._ewma_avx2(False)
        without = compiled.ewma(x, 2 / 13)
        state = compiled.EWMAState(2 / 13)
        chunked = np.concatenate([state.update(x[a:b]) for a, b in
                                  itertools.pairwise([0, 1, 17, 300, 301, 9000, x.size])])
    finally:
        compiled._ewma_avx2(True)
    np.testing.assert_array_equal(with_avx2, without)
    np.testing.assert_array_equal(chunked, without)
    assert_ewma_close(without, reference.ewma(x, 2 / 13), x)


SLOW = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@SLOW
@given(data=st.data())
def test_property_compiled_equals_reference_for_every_primitive(compiled, name, data):
    prim = PRIMITIVES[name]
    t, x = data.draw(timed_series() if prim.series is None else prim.series, label="series")
    params = data.draw(prim.params, label="params")
    assert_same(name, prim.batch(compiled, t, x, params), prim.batch(reference, t, x, params),
                t, x, params)


def _chunks(data, n):
    sizes = data.draw(st.lists(st.integers(0, 8), max_size=n + 3), label="chunk sizes")
    bounds, at = [0], 0
    for size in sizes:
        at = min(n, at + size)
        bounds.append(at)
    if bounds[-1] != n:
        bounds.append(n)
    return list(itertools.pairwise(bounds))


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@SLOW
@given(data=st.data())
def test_property_streaming_in_random_chunks_equals_batch(kernels, name, data):
    prim = PRIMITIVES[name]
    t, x = data.draw(timed_series() if prim.series is None else prim.series, label="series")
    params = data.draw(prim.params, label="params")
    state = prim.state(kernels, params)
    pieces = [prim.feed(state, np.ascontiguousarray(t[a:b]), np.ascontiguousarray(x[a:b]))
              for a, b in _chunks(data, len(t))]
    want = prim.batch(kernels, t, x, params)
    got = tuple(np.concatenate([p[i] for p in pieces]) if pieces else w[:0]
                for i, w in enumerate(want))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


API_STREAMS = {
    "threshold": (lambda: dsp.Threshold(high=100, low=90, hysteresis=1, sustain=60),
                  lambda t, x: dsp.threshold(t, x, high=100, low=90, hysteresis=1, sustain=60)),
    "rolling": (lambda: dsp.Rolling(600), lambda t, x: dsp.rolling(t, x, window=600)),
    "spc_band": (lambda: dsp.SPCBand(window=600, k=2, min_count=3),
                 lambda t, x: dsp.spc_band(t, x, window=600, k=2, min_count=3)),
    "change": (lambda: dsp.Change(lag=60, tolerance=600),
               lambda t, x: dsp.change(t, x, lag=60, tolerance=600)),
    "ewma": (lambda: dsp.EWMA(span=5), lambda t, x: dsp.ewma(t, x, span=5)),
    "macd": (lambda: dsp.MACD(fast=3, slow=7, signal=4),
             lambda t, x: dsp.macd(t, x, fast=3, slow=7, signal=4)),
    "cusum": (lambda: dsp.CUSUM(mu=95, sigma=3, k=0.5, h=3),
              lambda t, x: dsp.cusum(t, x, mu=95, sigma=3, k=0.5, h=3)),
}


@pytest.mark.parametrize("name", sorted(API_STREAMS))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_property_api_streams_sample_by_sample_equal_batch(name, data):
    make, batch = API_STREAMS[name]
    t, x = data.draw(timed_series(max_size=30), label="series")
    stream = make()
    one_by_one = [stream.update(float(ti), float(xi)) for ti, xi in zip(t, x, strict=True)]
    want = batch(t, x)
    if isinstance(want, tuple):
        for column, w in zip(want._fields, want, strict=True):
            got = np.array([getattr(o, column) for o in one_by_one], dtype=w.dtype)
            np.testing.assert_array_equal(got, w, err_msg=column)
    else:
        np.testing.assert_array_equal(np.array(one_by_one, dtype=want.dtype), want)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_property_schedule_stream_equals_batch(data):
    t, x = data.draw(schedule_series, label="series")
    start, period, deadline, grace = data.draw(schedule_params(), label="schedule")
    kw = dict(start=start, period=period, deadline=deadline, grace=grace)
    schedule = dsp.Schedule(**kw)
    reports = []
    for a, b in _chunks(data, len(t)):
        schedule.update(t[a:b], x[a:b])
        if b:
            reports.append(schedule.missed(t[b - 1]))
    now = float(t[-1]) if len(t) else 0.0
    reports.append(schedule.missed(now))
    want = dsp.missed_deadlines(t, x, now=now, **kw)
    np.testing.assert_array_equal(np.concatenate(reports), want)
