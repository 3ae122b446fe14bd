"""NumPy reference of the compiled series kernels (_series.pyx): same functions, same answers.

This file is the specification. It is written to be read, not to be fast: the compiled twin in
_series.pyx must give the same answers (exactly, except the rolling mean and SD and the EWMA,
which agree to rounding because the compiled code computes them differently). Selected with
TELEMON_PUREPYTHON=1; the suite runs both ways and compares them directly.

Conventions shared by every kernel (telemon.dsp checks them before calling):

* `times` are seconds, finite, non-decreasing (duplicates allowed); `values` are float64 of
  the same length, finite or NaN. NaN means "no value" (a failed or missing measurement).
* A batch function `f(times, values, ...)` gives the same answers as its streaming class
  `FState(...)` fed the same samples in chunks of any size through `update`.
* A sample's window `(t - w, t]` holds the samples up to and including it (by position)
  whose time is greater than `t - w`: a later sample with the same time is not yet known
  when this one is processed, exactly as in a stream.
"""

import math
from collections import deque

import numpy as np

NO_VALUE = -128

# Time-check outcomes of check_series: (code, index of the first offending sample).
OK, TIME_NOT_FINITE, TIME_DECREASING, VALUE_INFINITE = 0, 1, 2, 3


def limit_bands(values, red_low, yellow_low, yellow_high, red_high):
    band = np.zeros(len(values), dtype=np.int8)
    # Later assignments win, so the order mirrors the compiled if/elif chain in reverse.
    band[values > yellow_high] = 1
    band[values < yellow_low] = -1
    band[values > red_high] = 2
    band[values < red_low] = -2
    band[np.isnan(values)] = NO_VALUE
    return band


def check_series(times, values):
    """(code, index) of the first problem, scanning samples in order; (OK, -1) when none.

    A sample's problems are checked in the order: time not finite, time before the previous
    sample's, value infinite."""
    decreasing = np.zeros(len(times), dtype=bool)
    decreasing[1:] = times[1:] < times[:-1]
    code = np.select([~np.isfinite(times), decreasing, np.isinf(values)],
                     [TIME_NOT_FINITE, TIME_DECREASING, VALUE_INFINITE], OK)
    bad = np.flatnonzero(code)
    return (OK, -1) if len(bad) == 0 else (int(code[bad[0]]), int(bad[0]))


# --- threshold with hysteresis and a sustain time ----------------------------------------


class ThresholdState:
    """Alarm state per sample: 1 high alarm, -1 low alarm, 0 none.

    A high alarm switches on at the first sample at which the value has been above `high`
    (strictly) at every sample since a run began at least `sustain` seconds earlier
    (measured on sample times; `sustain=0` switches on at the first sample above). It
    switches off at the first sample at or below `high - hysteresis`; between that and
    `high` it stays on. A sample at or below `high` before the alarm is on ends the run.
    The low alarm mirrors this below `low` (off at or above `low + hysteresis`). `high` or
    `low` NaN = not checked.

    NaN samples are skipped: they neither start, extend, break nor end anything, and the
    output there is the state so far. A dropout (probe off) during a real excursion must
    not silence an alarm that is on, nor restart the sustain clock of one that is coming;
    missing data is reported by the schedule check instead.
    """

    def __init__(self, high, low, hysteresis, sustain):
        self.high, self.low = high, low
        self.hysteresis, self.sustain = hysteresis, sustain
        self.high_on = self.low_on = False
        self.high_since = self.low_since = None  # start time of the current run
        self.last_time = -math.inf

    def update(self, times, values):
        out = np.zeros(len(values), dtype=np.int8)
        for i, (t, x) in enumerate(zip(times, values, strict=True)):
            if t < self.last_time:
                raise ValueError(f"time went backwards: {t} after {self.last_time}")
            self.last_time = t
            if not math.isnan(x):
                self._step_high(t, x)
                self._step_low(t, x)
            out[i] = 1 if self.high_on else (-1 if self.low_on else 0)
        return out

    def _step_high(self, t, x):
        if math.isnan(self.high):
            return
        if self.high_on:
            if x <= self.high - self.hysteresis:
                self.high_on, self.high_since = False, None
        elif x > self.high:
            if self.high_since is None:
                self.high_since = t
            if t - self.high_since >= self.sustain:
                self.high_on = True
        else:
            self.high_since = None

    def _step_low(self, t, x):
        if math.isnan(self.low):
            return
        if self.low_on:
            if x >= self.low + self.hysteresis:
                self.low_on, self.low_since = False, None
        elif x < self.low:
            if self.low_since is None:
                self.low_since = t
            if t - self.low_since >= self.sustain:
                self.low_on = True
        else:
            self.low_since = None


def threshold(times, values, high, low, hysteresis, sustain):
    return ThresholdState(high, low, hysteresis, sustain).update(times, values)


# --- rolling statistics over a time window ------------------------------------------------


def _stats(window):
    """(count, mean, sd, min, max) of the non-NaN values in `window`; SD with ddof=1.

    Two-pass, with the mean taken relative to the first value, so that identical values
    have SD exactly 0 even at 1e300. The variance of values more than ~1e154 apart
    overflows: the SD is then inf, in the compiled code too."""
    w = np.asarray(window, dtype=np.float64)
    w = w[~np.isnan(w)]
    n = len(w)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    with np.errstate(over="ignore", invalid="ignore"):
        mean = w[0] + np.mean(w - w[0])
        sd = math.sqrt(np.sum((w - mean) ** 2) / (n - 1)) if n >= 2 else math.nan
    return n, float(mean), sd, float(w.min()), float(w.max())


def _empty_stats(n):
    return (np.zeros(n, dtype=np.int64), *(np.full(n, math.nan) for _ in range(4)))


def rolling(times, values, window):
    """Per sample i: (count, mean, sd, min, max) of the non-NaN values of the samples
    j <= i with times[j] > times[i] - window. Mean/min/max NaN when count is 0, SD when < 2."""
    out = _empty_stats(len(values))
    for i in range(len(values)):
        first = np.searchsorted(times, times[i] - window, side="right")
        for column, stat in zip(out, _stats(values[first:i + 1]), strict=True):
            column[i] = stat
    return out


class RollingState:
    """Streaming `rolling`: keeps the samples still inside the window."""

    def __init__(self, window):
        self.window = window
        self.kept = deque()  # (time, value) of non-NaN samples, oldest first
        self.last_time = -math.inf

    def _advance(self, t):
        if t < self.last_time:
            raise ValueError(f"time went backwards: {t} after {self.last_time}")
        self.last_time = t
        while self.kept and self.kept[0][0] <= t - self.window:
            self.kept.popleft()

    def update(self, times, values):
        out = _empty_stats(len(values))
        for i, (t, x) in enumerate(zip(times, values, strict=True)):
            self._advance(t)
            if not math.isnan(x):
                self.kept.append((t, x))
            for column, stat in zip(out, _stats([v for _, v in self.kept]), strict=True):
                column[i] = stat
        return out


# --- statistical-process-control band from the preceding window ----------------------------


def _band(count, mean, sd, k, min_count):
    if count < min_count:
        return count, math.nan, math.nan, math.nan, math.nan
    return count, mean, sd, mean - k * sd, mean + k * sd


def spc_band(times, values, window, k, min_count):
    """Per sample i: (count, mean, sd, lower, upper) of the non-NaN values of the samples
    j < i with times[j] > times[i] - window (the sample itself excluded); lower/upper =
    mean -/+ k·sd. Everything but count is NaN while count < min_count (min_count >= 2)."""
    out = _empty_stats(len(values))
    for i in range(len(values)):
        first = np.searchsorted(times, times[i] - window, side="right")
        count, mean, sd, _, _ = _stats(values[first:i])
        for column, stat in zip(out, _band(count, mean, sd, k, min_count), strict=True):
            column[i] = stat
    return out


class SPCBandState(RollingState):
    """Streaming `spc_band`."""

    def __init__(self, window, k, min_count):
        super().__init__(window)
        self.k, self.min_count = k, min_count

    def update(self, times, values):
        out = _empty_stats(len(values))
        for i, (t, x) in enumerate(zip(times, values, strict=True)):
            self._advance(t)
            count, mean, sd, _, _ = _stats([v for _, v in self.kept])
            band = _band(count, mean, sd, self.k, self.min_count)
            for column, stat in zip(out, band, strict=True):
                column[i] = stat
            if not math.isnan(x):
                self.kept.append((t, x))
        return out


# --- change over a time lag ----------------------------------------------------------------


def change(times, values, lag, tolerance):
    """Per sample i: (values[i] - values[j], times[j]) where j is the latest non-NaN sample
    with times[j] <= times[i] - lag (the last such by position when times tie), provided
    times[j] >= times[i] - lag - tolerance; (NaN, NaN) when there is none or values[i] is NaN.
    lag > 0, so j is always an earlier sample."""
    n = len(values)
    delta, since = np.full(n, math.nan), np.full(n, math.nan)
    for i in range(n):
        if math.isnan(values[i]):
            continue
        cut = times[i] - lag
        j = np.searchsorted(times, cut, side="right") - 1  # last sample at or before cut
        while j >= 0 and math.isnan(values[j]):
            j -= 1
        if j >= 0 and times[j] >= cut - tolerance:
            delta[i], since[i] = values[i] - values[j], times[j]
    return delta, since


class ChangeState:
    """Streaming `change`: keeps the samples not yet `lag` old, and the latest one that is."""

    def __init__(self, lag, tolerance):
        self.lag, self.tolerance = lag, tolerance
        self.pending = deque()  # (time, value) of non-NaN samples newer than t - lag
        self.ref = None  # (time, value): the latest non-NaN sample at or before t - lag
        self.last_time = -math.inf

    def update(self, times, values):
        n = len(values)
        delta, since = np.full(n, math.nan), np.full(n, math.nan)
        for i, (t, x) in enumerate(zip(times, values, strict=True)):
            if t < self.last_time:
                raise ValueError(f"time went backwards: {t} after {self.last_time}")
            self.last_time = t
            cut = t - self.lag
            while self.pending and self.pending[0][0] <= cut:
                self.ref = self.pending.popleft()
            if not math.isnan(x):
                if self.ref is not None and self.ref[0] >= cut - self.tolerance:
                    delta[i], since[i] = x - self.ref[1], self.ref[0]
                self.pending.append((t, x))
        return delta, since


# --- exponentially weighted averages -------------------------------------------------------


class EWMAState:
    """z = alpha·x + (1 - alpha)·z per non-NaN sample, starting at the first value.

    Per sample, not per second: a missed day does not decay the average. A NaN sample leaves
    z unchanged and the output there is z (NaN before the first value)."""

    def __init__(self, alpha):
        self.alpha, self.beta = alpha, 1.0 - alpha
        self.z = math.nan

    def step(self, x):
        if not math.isnan(x):
            self.z = x if math.isnan(self.z) else self.alpha * x + self.beta * self.z
        return self.z

    def update(self, values):
        return np.array([self.step(x) for x in values], dtype=np.float64)


def ewma(values, alpha):
    return EWMAState(alpha).update(values)


class MACDState:
    """MACD = EWMA(fast) - EWMA(slow); signal = EWMA(signal) of MACD; histogram = MACD -
    signal. All three averages skip NaN samples (the outputs there repeat the last ones)."""

    def __init__(self, fast_alpha, slow_alpha, signal_alpha):
        self.fast, self.slow = EWMAState(fast_alpha), EWMAState(slow_alpha)
        self.signal = EWMAState(signal_alpha)

    def update(self, values):
        n = len(values)
        macd, signal, hist = np.full(n, math.nan), np.full(n, math.nan), np.full(n, math.nan)
        for i, x in enumerate(values):
            m = self.fast.step(x) - self.slow.step(x)
            s = self.signal.step(m if not math.isnan(x) else math.nan)
            macd[i], signal[i], hist[i] = m, s, m - s
        return macd, signal, hist


def macd(values, fast_alpha, slow_alpha, signal_alpha):
    return MACDState(fast_alpha, slow_alpha, signal_alpha).update(values)


# --- CUSUM -----------------------------------------------------------------------------------


class CUSUMState:
    """Tabular CUSUM on z = (x - mu) / sigma per non-NaN sample:

        upper = max(0, upper + (z - k)),   lower = max(0, lower - (z + k))

    (z - k and z + k first, off the statistics' dependency chains, which are then one add
    and one max a sample; the compiled kernel does the same, bit for bit.)

    When a statistic exceeds h the sample's alarm is 1 (upper) or -1 (lower), the output
    shows the exceeding value, and the statistic restarts from 0 at the next sample. A side
    that is switched off stays 0. NaN samples change nothing (outputs repeat the state)."""

    def __init__(self, mu, sigma, k, h, upper, lower):
        self.mu, self.sigma, self.k, self.h = mu, sigma, k, h
        self.use_upper, self.use_lower = upper, lower
        self.upper = self.lower = 0.0

    def update(self, values):
        n = len(values)
        upper, lower = np.zeros(n), np.zeros(n)
        alarm = np.zeros(n, dtype=np.int8)
        for i, x in enumerate(values):
            if math.isnan(x):
                upper[i], lower[i] = self.upper, self.lower
                continue
            z = (x - self.mu) / self.sigma
            if self.use_upper:
                self.upper = max(0.0, self.upper + (z - self.k))
            if self.use_lower:
                self.lower = max(0.0, self.lower - (z + self.k))
            upper[i], lower[i] = self.upper, self.lower
            if self.upper > self.h:
                alarm[i], self.upper = 1, 0.0
            if self.lower > self.h:
                alarm[i], self.lower = -1, 0.0
        return upper, lower, alarm


def cusum(values, mu, sigma, k, h, upper, lower):
    return CUSUMState(mu, sigma, k, h, upper, lower).update(values)


# --- missed measurements against a schedule --------------------------------------------------


def _deadlines(start, period, deadline, grace, k):
    """(period start, deadline, cut-off) of period k."""
    begin = start + k * period
    due = begin + deadline
    return begin, due, due + grace


def missed_deadlines(times, start, period, deadline, grace, now):
    """Deadlines `start + k·period + deadline` (k = 0, 1, ...) whose cut-off (deadline +
    grace) is before `now` and with no sample time in [period start, cut-off]."""
    missed = []
    k = 0
    while True:
        begin, due, cutoff = _deadlines(start, period, deadline, grace, k)
        if not cutoff < now:
            break
        first = np.searchsorted(times, begin, side="left")  # first sample at or after begin
        if first == len(times) or times[first] > cutoff:
            missed.append(due)
        k += 1
    return np.array(missed, dtype=np.float64)


class ScheduleState:
    """Streaming `missed_deadlines`: `update(times)` records samples, `missed(now)` returns
    the deadlines newly passed without one. A sample that arrives after its period was
    already reported (its time before the `now` of that report) does not retract it."""

    def __init__(self, start, period, deadline, grace):
        self.start, self.period, self.deadline, self.grace = start, period, deadline, grace
        self.k = 0  # next period to decide
        self.times = deque()  # sample times that may still cover period k or later
        self.last_time = -math.inf
        self.last_now = -math.inf

    def update(self, times):
        for t in times:
            if t < self.last_time:
                raise ValueError(f"time went backwards: {t} after {self.last_time}")
            self.last_time = t
            self.times.append(t)

    def missed(self, now):
        if now < self.last_now:
            raise ValueError(f"now went backwards: {now} after {self.last_now}")
        self.last_now = now
        missed = []
        while True:
            begin, due, cutoff = _deadlines(self.start, self.period, self.deadline,
                                            self.grace, self.k)
            if not cutoff < now:
                break
            while self.times and self.times[0] < begin:
                self.times.popleft()
            if not (self.times and self.times[0] <= cutoff):
                missed.append(due)
            self.k += 1
        return np.array(missed, dtype=np.float64)
